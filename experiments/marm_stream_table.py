"""Markdown table of static vs streaming evaluation over seeds, from the ``stream_eval.json`` files that
``experiments/marm_stream_eval.py`` writes into each run directory (experiments/RESULTS.md, MARM section).

    python experiments/marm_stream_table.py --runs runs
    python experiments/marm_stream_table.py --runs runs --group "MARM=marm_kp_s" "oracle=marm_kp_oracle_s"

A group ``NAME=PREFIX`` collects ``<runs>/<PREFIX><digits>/stream_eval.json``; mean ± sample std over them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

DEFAULT_GROUPS = ("oracle (no cache)=marm_kp_oracle_s", "MARM, L = 2, layer 1 fresh (default)=marm_kp_s",
                  "MARM-KV, L = 2=marm_kp_kv_s", "MARM, L = 4, layer 1 fresh=marm_kp_L4_s",
                  "MARM-h, L = 2=marm_kp_h_s", "target attention, 1 layer=marm_kp_ta1_s")
METRICS = (("GAUC click", "gauc/is_click"), ("GAUC long-view", "gauc/long_view"), ("AUC click", "auc/is_click"))


def _ms(v) -> str:
    v = np.asarray(v, np.float64)
    return f"{v.mean():.4f}" if v.size == 1 else f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def table(runs: str, groups, split: str = "test") -> str:
    head = ["model", "n"] + [f"{p} {m}" for m, _ in METRICS for p in ("static", "stream")] + [
        "static hit rate", "stream hit rate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        name, prefix = g.rsplit("=", 1)  # names may hold "=" ("L = 2"), prefixes do not
        files = sorted(f for f in glob.glob(os.path.join(runs, prefix + "*", "stream_eval.json"))
                       if re.fullmatch(re.escape(prefix) + r"\d+", os.path.basename(os.path.dirname(f))))
        if not files:
            print(f"{name}: no stream_eval.json under {runs}/{prefix}*", file=sys.stderr)
            continue
        rs = [json.load(open(f)) for f in files]
        st, sm = [r["static"][split] for r in rs], [r["stream"][split] for r in rs]
        row = [name, str(len(rs))]
        for _, k in METRICS:
            row += [_ms([x[k] for x in st]), _ms([x[k] for x in sm])]
        hits = [x.get("cache/hit_rate", float("nan")) for x in st + sm]
        # no cache, or nothing cached (one fresh layer): no hits anywhere -> "—"
        if all(r["cache_mode"] == "none" for r in rs) or not np.nansum(hits):
            row += ["—", "—"]
        else:
            row += [f"{np.mean([x['cache/hit_rate'] for x in xs]):.3f}" for xs in (st, sm)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--group", nargs="*", default=list(DEFAULT_GROUPS), help="NAME=PREFIX ...")
    p.add_argument("--split", default="test")
    a = p.parse_args(argv)
    print(table(a.runs, a.group, a.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
