"""Markdown tables from a MARM benchmark result (``benchmarks/bench_marm.py`` / ``jaxrec bench marm``).

    python benchmarks/marm_tables.py benchmarks/results/marm_medium.json            # every table
    python benchmarks/marm_tables.py benchmarks/results/marm_small.json --tables flops,quality --d 32 --n 512
    python benchmarks/marm_tables.py benchmarks/results/marm_medium.quality.jsonl   # quality rows so far (a run
                                                                                     # in progress)
    python benchmarks/marm_tables.py benchmarks/results/marm_medium.quality.jsonl --seeds 0,1   # those seeds only

Tables: ``flops`` (analytic per-sample forward FLOPs of the sequence module against effective depth L, cached
variants next to full recomputation, at one width ``--d`` and history ``--n``), ``check`` (analytic vs traced
``dot_general`` vs XLA ``cost_analysis`` FLOPs), ``latency`` (serve step per configuration), ``quality`` (AUC /
GAUC mean ± sample std over the seeds of each (variant, L, n) point, with FLOPs, cache size and the staleness
cost). Reads only the JSON the benchmark wrote; computes nothing but means, standard deviations and ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

MODES = ("kv", "kv_fresh1", "h", "none")


def _ms(vals, digits: int = 4) -> str:
    """``mean ± sample std`` (just the value for one)."""
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def flops_table(res: dict, d: int, n: int) -> list[str]:
    rows = [r for r in res["flops"] if r["d"] == d and r["n"] == n]
    if not rows:
        raise SystemExit(f"marm_tables: no flops rows with d={d}, n={n} (grid d {res['grid']['flops_d']}, "
                         f"n {res['grid']['flops_n']})")
    by = {(r["mode"], r["L"]): r for r in rows}
    Ls = sorted({r["L"] for r in rows})
    out = [f"Per-sample forward FLOPs of the sequence module (analytic; d = {d}, history n = {n}), and cache values "
           "per user:", "",
           "| L | " + " | ".join(f"{m} FLOPs" for m in MODES) + " | none / kv | kv cache values / user |",
           "|---|" + "---|" * (len(MODES) + 2)]
    for L in Ls:
        f = {m: by[(m, L)]["flops"] for m in MODES if (m, L) in by}
        ratio = f["none"] / f["kv"] if "none" in f and "kv" in f else float("nan")
        out.append(f"| {L} | " + " | ".join(f"{f[m]:,.0f}" if m in f else "—" for m in MODES)
                   + f" | {ratio:.1f} | {by[('kv', L)]['cache_values_per_user']:,} |")
    return out


def check_table(res: dict) -> list[str]:
    rows = res.get("flops_check", [])
    if not rows:
        return ["(no flops_check rows)"]
    dot = [r["dot_over_analytic"] for r in rows]
    xla = [r["xla_over_analytic"] for r in rows if r["xla_over_analytic"] is not None]  # None: no cost analysis
    xla_txt = f"min {min(xla):.3f} max {max(xla):.3f}" if xla else "not available"
    out = [f"FLOPs cross-check over {len(rows)} unrolled configurations: traced dot_general / analytic "
           f"min {min(dot):.4f} max {max(dot):.4f}; XLA cost_analysis / analytic {xla_txt}.", "",
           "| mode | L | n | d | analytic | traced dots | XLA | XLA / analytic |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        x = "— | —" if r["xla"] is None else f"{r['xla']:,.0f} | {r['xla_over_analytic']:.3f}"
        out.append(f"| {r['mode']} | {r['L']} | {r['n']} | {r['d']} | {r['analytic']:,.0f} | {r['traced_dot']:,.0f} "
                   f"| {x} |")
    return out


def latency_table(res: dict) -> list[str]:
    rows = res.get("latency", [])
    if not rows:
        return ["(no latency rows)"]
    out = [f"Serve step (lookup, score, write; batch {rows[0]['batch']}), median of the repeats:", "",
           "| mode | L | n | d | median ms | µs / request | FLOPs / request | store MiB | hit rate |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mib = f"{r['store_total_bytes'] / 2**20:.1f}" if "store_total_bytes" in r else "—"
        hit = f"{r['hit_rate']:.3f}" if "hit_rate" in r else "—"
        out.append(f"| {r['mode']} | {r['L']} | {r['n']} | {r['d']} | {r['median_ms']:.2f} | "
                   f"{r['us_per_request']:.1f} | {r['flops_per_request']:,.0f} | {mib} | {hit} |")
    return out


def quality_table(res: dict) -> list[str]:
    rows = res.get("quality", [])
    if not rows:
        return ["(no quality rows)"]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["mode"], r["L"], r["n"])].append(r)
    ceil = sorted({round(r["gauc_ceiling"], 4) for r in rows})
    out = [f"Quality on the synthetic stream (d = {rows[0]['d']}; GAUC of the stream's hidden cause: "
           f"{', '.join(map(str, ceil))}), mean ± sample std over seeds:", "",
           "| mode | L | n | seeds | FLOPs / sample | cache values / user | AUC | GAUC | staleness cost (GAUC refreshed − "
           "GAUC) |", "|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(MODES)}
    for (mode, L, n), g in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1], kv[0][2])):
        stale = [r["staleness_gauc_cost"] for r in g if "staleness_gauc_cost" in r]
        out.append(f"| {mode} | {L} | {n} | {len(g)} | {g[0]['flops_per_sample']:,.0f} | "
                   f"{g[0]['cache_values_per_user']:,} | {_ms([r['auc'] for r in g])} | "
                   f"{_ms([r['gauc'] for r in g])} | {_ms(stale) if stale else '—'} |")
    return out


TABLES = {"flops": lambda res, a: flops_table(res, a.d, a.n), "check": lambda res, a: check_table(res),
          "latency": lambda res, a: latency_table(res), "quality": lambda res, a: quality_table(res)}


def _rows(f) -> list[dict]:
    """Rows of a JSON-lines file; a line cut by a kill mid-write is skipped."""
    out = []
    for line in f:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", help="a benchmark JSON (benchmarks/results/marm*.json)")
    p.add_argument("--tables", default="flops,check,latency,quality", help=f"comma-separated of {list(TABLES)}")
    p.add_argument("--d", type=int, default=64, help="width of the flops table")
    p.add_argument("--n", type=int, default=256, help="history length of the flops table")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of the quality rows to use (default all)")
    a = p.parse_args(argv)
    with open(a.result) as f:
        if a.result.endswith(".jsonl"):  # the quality rows file of a run in progress: the quality table only
            res = {"quality": _rows(f)}
            a.tables = "quality"
        else:
            res = json.load(f)
    if a.seeds is not None and "quality" in res:
        keep = {int(x) for x in a.seeds.split(",") if x.strip()}
        res["quality"] = [r for r in res["quality"] if r["seed"] in keep]
    for name in [t.strip() for t in a.tables.split(",") if t.strip()]:
        if name not in TABLES:
            raise SystemExit(f"marm_tables: unknown table {name!r}; expected some of {list(TABLES)}")
        lines = TABLES[name](res, a)
        print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
