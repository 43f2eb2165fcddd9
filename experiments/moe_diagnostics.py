#!/usr/bin/env python
"""Expert-collapse diagnostics of multi-task MoE runs (MMoE / CGC / PLE / HoME), summarised per model over seeds,
as a Markdown table (for experiments/RESULTS.md).

    python experiments/moe_diagnostics.py --runs runs --group home=home_kp_s mmoe=mmoe_kp_s cgc=cgc_kp_s ple=ple_kp_s

Reads the ``diag/<level>/...`` test metrics each finished run wrote to ``results.json`` (see
:class:`jaxrec.models.multitask.MultiTaskRankingTask`), at the *task level* -- the level whose gates are the tasks
(``experts`` for MMoE/CGC, ``level2`` for PLE, ``task`` for HoME; ``--level`` overrides) -- and for every run:

* ``zero`` -- per-expert fraction of exactly-zero output activations: mean and max over experts (a collapsed
  ReLU expert is near 1; Swish outputs are never exactly 0);
* ``scale`` -- per-expert mean |output|: max / min over experts (how unequal the experts' output scales are);
* ``H(gate)`` -- per-sample gate entropy / log(#allowed experts), mean over task gates (1 = uniform);
* ``own`` -- gate mass of each sparse (interaction) task on its own task-specific experts, mean over those tasks
  (CGC/PLE/HoME; MMoE has none);
* ``top-occ`` -- for each shared expert, the largest share of its total gate usage coming from one task: max over
  shared experts (1 = one task monopolises it).

Each entry is the mean over seeds (± sample std when there are several).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import numpy as np

TASK_LEVEL = {"mmoe": "experts", "cgc": "experts", "ple": "level2", "home": "task"}
SPARSE = ("is_like", "is_follow", "is_comment", "is_forward", "is_profile_enter")


def _level(metrics: dict, model: str, override: str | None) -> str:
    if override:
        return override
    if model in TASK_LEVEL:
        return TASK_LEVEL[model]
    levels = sorted({k.split("/")[1] for k in metrics if k.startswith("diag/")})
    return levels[-1]


def run_stats(metrics: dict, level: str) -> dict:
    def per(kind):
        pat = re.compile(rf"^diag/{re.escape(level)}/{kind}/(\d+)_(.+)$")
        return {m.group(2): v for k, v in metrics.items() if (m := pat.match(k))}

    zero, scale, ent = per("zero_frac"), per("scale"), per("gate_entropy")
    own, top = per("own_share"), per("occupancy_top_share")
    if not zero:
        raise KeyError(f"no diag/{level}/zero_frac metrics; levels present: "
                       f"{sorted({k.split('/')[1] for k in metrics if k.startswith('diag/')})}")
    sparse_own = [own[t] for t in SPARSE if t in own]
    return {
        "zero_mean": float(np.mean(list(zero.values()))), "zero_max": float(np.max(list(zero.values()))),
        "scale_ratio": float(np.max(list(scale.values())) / max(np.min(list(scale.values())), 1e-12)),
        "gate_entropy": float(np.mean(list(ent.values()))) if ent else float("nan"),
        "own_sparse": float(np.mean(sparse_own)) if sparse_own else float("nan"),
        "top_occupancy": float(np.max(list(top.values()))) if top else float("nan"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--group", nargs="+", required=True, help="NAME=PREFIX; NAME's model picks the task level")
    p.add_argument("--level", default=None)
    p.add_argument("--split", default="test", choices=("test", "best_valid"))
    a = p.parse_args(argv)
    cols = ("zero_mean", "zero_max", "scale_ratio", "gate_entropy", "own_sparse", "top_occupancy")
    print("| model | n | zero (mean) | zero (max) | scale max/min | H(gate) | own (sparse tasks) | top-occ |")
    print("|---|---|---|---|---|---|---|---|")
    for g in a.group:
        name, prefix = g.split("=", 1)
        stats = []
        for d in sorted(pathlib.Path(a.runs).glob(prefix + "*")):
            if not d.is_dir():
                continue
            f = d / "results.json"
            if not f.exists():
                print(f"{name}: {d.name} unfinished, left out", file=sys.stderr)
                continue
            m = json.loads(f.read_text())[a.split]
            model = json.loads(f.read_text())["model"]
            stats.append(run_stats(m, _level(m, model, a.level)))
        if not stats:
            continue

        def cell(c):
            v = np.array([s[c] for s in stats])
            if np.isnan(v).all():
                return "–"
            return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")

        print(f"| {name} | {len(stats)} | " + " | ".join(cell(c) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
