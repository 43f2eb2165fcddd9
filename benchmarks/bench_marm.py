#!/usr/bin/env python
"""MARM: FLOPs versus cache size, serve latency, cache bytes and quality with / without the cache.

    python benchmarks/bench_marm.py            # full grid -> benchmarks/results/marm.json + marm.png
    python benchmarks/bench_marm.py --small    # minutes on 2 CPU cores -> marm_small.json + marm_small.png
    python benchmarks/bench_marm.py --grid medium  # about an hour on 2 CPU cores -> marm_medium.json + .png
    python benchmarks/bench_marm.py --small --sections flops,check      # FLOPs only (seconds)

What is measured, and how, is documented in :mod:`jaxrec.cache.bench` (``run(small=...)`` is the entry point
``jaxrec bench marm`` calls). Timings depend on the machine and its load; the JSON records both
(``machine.load_average_1min`` at the start and end).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from jaxrec.cache.bench import run

OUT = pathlib.Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="small grid (minutes on 2 CPU cores)")
    p.add_argument("--grid", choices=("small", "medium", "full"), default=None,
                   help="grid size (default full, or small with --small); quality rows are appended to "
                        "<name>.quality.jsonl and a rerun resumes from them")
    p.add_argument("--out_dir", default=str(OUT))
    p.add_argument("--name", default=None, help="output file stem (default marm / marm_small)")
    p.add_argument("--sections", default="flops,check,latency,quality",
                   help="comma-separated subset of flops,check,latency,quality")
    a = p.parse_args(argv)
    res = run(small=a.small, out_dir=a.out_dir, name=a.name, sections=tuple(a.sections.split(",")), grid=a.grid)
    summary = {k: res[k] for k in ("wall_seconds", "files") if k in res}
    for r in res.get("quality", []):
        print(f"{r['mode']:4s} L={r['L']} n={r['n']:3d} seed={r['seed']}: gauc={r['gauc']:.4f} auc={r['auc']:.4f} "
              f"flops={r['flops_per_sample']:.3g} values/user={r['cache_values_per_user']}")
    for r in res.get("latency", []):
        print(f"{r['mode']:4s} L={r['L']} n={r['n']:3d} d={r['d']}: {r['us_per_request']:.1f} us/request "
              f"({r['flops_per_request']:.3g} FLOPs)")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
