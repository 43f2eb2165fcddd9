#!/usr/bin/env python
"""Mean ± std over seeds of finished jaxrec runs, as a Markdown table (for experiments/RESULTS.md).

    python experiments/aggregate.py --runs runs --group home=home_kp_s mmoe=mmoe_kp_s \\
        --metrics gauc/mean auc/is_click gauc/is_click --split test

Each ``NAME=PREFIX`` groups the run directories ``<runs>/<PREFIX>*`` that hold a ``results.json`` (written by
``jaxrec train`` when a run finishes; unfinished runs are listed as such and left out). The standard deviation is the
sample std (ddof = 1) over the seeds; ``n`` is the number of finished seeds. ``--split`` picks ``test`` (the test
metrics of the best-validation checkpoint) or ``best_valid``. ``--select X/=X/mrr Y/=Y/mrr`` reads the metrics
starting with ``X/`` from the test evaluation made when ``X/mrr`` was best on validation (``train.select_metrics``,
``results.json["selected"]``: C2DSR's per-domain model selection), the longest matching prefix winning. A metric
missing from a run is an error naming the run and the metrics it has.

    python experiments/aggregate.py --group c2dsr=c2dsr_fk10_s sasrec_x=sasrec_fk10_x_s \
        --metrics X/mrr X/ndcg@10 --select X/=X/mrr Y/=Y/mrr nonoverlap/X/=X/mrr nonoverlap/Y/=Y/mrr

``--eval_json NAME`` reads each run's metrics from ``<run>/NAME`` instead, the JSON ``jaxrec eval`` prints (e.g. a
re-evaluation of the best checkpoint with more cut-offs); a run without that file counts as unfinished.

    jaxrec eval --config ... --workdir runs/kfe_k6_s0 --config.eval.hr_ks="(50,100,500,1000)" > runs/kfe_k6_s0/test_hr1000.json
    python experiments/aggregate.py --group k6=kfe_k6_s --metrics full/hr@500 --eval_json test_hr1000.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np


def load_group(runs: pathlib.Path, prefix: str, eval_json: str | None = None) -> tuple[list[dict], list[str]]:
    done, unfinished = [], []
    for d in sorted(runs.glob(prefix + "*")):
        if not d.is_dir():
            continue
        f = d / (eval_json or "results.json")
        if f.exists():
            try:
                r = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not JSON ({e})") from None
            r = {"test": r} if eval_json else r
            r["_dir"], r["_file"] = d.name, f.name
            done.append(r)
        else:
            unfinished.append(d.name)
    return done, unfinished


def source_of(metric: str, split: str, select: dict) -> tuple[str, str | None]:
    """``(split, selecting metric or None)`` a metric is read from: the longest ``--select`` prefix it starts
    with names the validation metric whose best step's test evaluation holds it, else ``split``."""
    hits = [p for p in select if metric.startswith(p)]
    return ("selected", select[max(hits, key=len)]) if hits else (split, None)


def value_of(r: dict, metric: str, split: str, select: dict) -> float:
    where, by = source_of(metric, split, select)
    if by is None:
        table, what = r.get(split, {}), f"{split!r} metric {metric!r}"
    else:
        sel = r.get("selected", {})
        if by not in sel:
            raise KeyError(f"{r['_dir']}/{r['_file']}: no test evaluation selected by {by!r}; selected metrics: "
                           f"{sorted(sel)}")
        table, what = sel[by]["test"], f"metric {metric!r} in the test evaluation selected by {by!r}"
    if metric not in table:
        raise KeyError(f"{r['_dir']}/{r['_file']}: no {what}; it has {sorted(table)}")
    return float(table[metric])


def summarize(results: list[dict], metrics: list[str], split: str, select: dict | None = None) -> dict:
    out = {}
    for m in metrics:
        vals = [value_of(r, m, split, select or {}) for r in results]
        v = np.asarray(vals)
        out[m] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size))
    return out


def fmt(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" if np.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--group", nargs="+", required=True, help="NAME=PREFIX (run dirs <runs>/<PREFIX>*)")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--split", default="test", choices=("test", "best_valid"))
    p.add_argument("--select", nargs="*", default=[], metavar="PREFIX=METRIC",
                   help="per-metric model selection (train.select_metrics): metrics starting with PREFIX are read "
                        "from the test evaluation made when METRIC was best on validation, e.g. X/=X/mrr Y/=Y/mrr")
    p.add_argument("--digits", type=int, default=4)
    p.add_argument("--eval_json", default=None, metavar="NAME",
                   help="read each run's test metrics from <run>/NAME (the JSON `jaxrec eval` prints) instead of "
                        "results.json")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    runs = pathlib.Path(a.runs)
    select = {}
    for x in a.select:
        if "=" not in x:
            p.error(f"--select {x!r}: expected PREFIX=METRIC")
        k, v = x.split("=", 1)
        select[k] = v
    if a.eval_json and (select or a.split != "test"):
        p.error("--eval_json holds one evaluation: it takes neither --select nor --split")
    header = "| model | n | " + " | ".join(a.metrics) + " |"
    lines = [header, "|" + "---|" * (len(a.metrics) + 2)]
    dump = {}
    for g in a.group:
        if "=" not in g:
            p.error(f"--group {g!r}: expected NAME=PREFIX")
        name, prefix = g.split("=", 1)
        res, unfinished = load_group(runs, prefix, a.eval_json)
        if unfinished:
            print(f"{name}: unfinished (left out): {', '.join(unfinished)}", file=sys.stderr)
        if not res:
            print(f"{name}: no finished run under {runs}/{prefix}*", file=sys.stderr)
            continue
        s = summarize(res, a.metrics, a.split, select)
        dump[name] = {"runs": [r["_dir"] for r in res], "metrics": {k: dict(zip(("mean", "std", "n"), v))
                                                                   for k, v in s.items()}}
        n = len(res)
        lines.append(f"| {name} | {n} | " + " | ".join(fmt(m, sd, a.digits) for m, sd, _ in s.values()) + " |")
    print("\n".join(lines))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
