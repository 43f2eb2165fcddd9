"""Task x expert gate-usage heatmaps (and per-expert zero-activation fraction / output scale) of multi-task MoE
runs, from the diagnostics their evaluation saved (``jaxrec.models.multitask``: ``diag/<level>/usage/<gate>/
<expert>`` = mean gate weight over the split; masked (gate, expert) pairs are absent and drawn blank).

    python experiments/plot_expert_usage.py runs/mmoe_kuairand_pure_s0 runs/home_kuairand_pure_s0 --out usage.png
    python experiments/plot_expert_usage.py RUN... --source valid      # last validation eval (metrics.jsonl)
    python experiments/plot_expert_usage.py RUN... --level meta        # another level (default: the task level)

A RUN is a work directory (``results.json`` "test" metrics, else the last ``eval/`` row of ``metrics.jsonl``)
or a JSON file holding a flat metrics dict. One column per run: the gate-usage heatmap of the task level (the
level whose gates are the tasks: ``experts`` for MMoE/CGC, ``level2`` for PLE, ``task`` for HoME) and below it the
zero-activation fraction and mean |output| of each expert of that level. Matplotlib with the Agg backend (no
display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_KEY = re.compile(r"^diag/(?P<level>[^/]+)/(?P<stat>[^/]+)/(?P<a>[^/]+)(?:/(?P<b>[^/]+))?$")
_TASK_LEVELS = ("task", "level2", "experts")  # HoME, PLE (2 levels), MMoE/CGC


def load_metrics(run: str, source: str = "test") -> dict[str, float]:
    """Flat metrics dict of a run directory (or a JSON file). ``source``: "test" (results.json, falling back to
    the last eval row) or "valid" (the last ``eval/`` row of metrics.jsonl)."""
    path = pathlib.Path(run)
    if path.is_file():
        data = json.loads(path.read_text())
        return data.get("test", data)
    res = path / "results.json"
    if source == "test" and res.exists():
        data = json.loads(res.read_text())
        if data.get("test"):
            return data["test"]
    jl = path / "metrics.jsonl"
    if not jl.exists():
        raise FileNotFoundError(f"{run}: neither results.json with test metrics nor metrics.jsonl")
    last = None
    for line in jl.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if any(k.startswith("eval/") for k in row):
            last = row
    if last is None:
        raise ValueError(f"{run}: metrics.jsonl has no evaluation row")
    return {k[len("eval/"):]: v for k, v in last.items() if k.startswith("eval/")}


def _ordered(names):
    """Sort ``NN_name`` keys by their index prefix; return (sorted keys, display names)."""
    keys = sorted(set(names), key=lambda s: (int(s.split("_", 1)[0]) if s.split("_", 1)[0].isdigit() else 1 << 30, s))
    return keys, [k.split("_", 1)[1] if "_" in k and k.split("_", 1)[0].isdigit() else k for k in keys]


def usage_matrix(metrics: dict, level: str | None = None):
    """``(level, U [G, N] with NaN on masked pairs, gate names, expert names, per-expert stats dict)``."""
    by_level: dict[str, dict] = {}
    for k, v in metrics.items():
        m = _KEY.match(k)
        if m:
            by_level.setdefault(m["level"], {})[(m["stat"], m["a"], m["b"])] = v
    if not by_level:
        raise ValueError("no diag/... metrics (was the run evaluated with task.diagnostics=True?)")
    if level is None:
        level = next((lv for lv in _TASK_LEVELS if lv in by_level), sorted(by_level)[-1])
    if level not in by_level:
        raise ValueError(f"level {level!r} not in the diagnostics; levels: {sorted(by_level)}")
    d = by_level[level]
    usage = {(a, b): v for (s, a, b), v in d.items() if s == "usage"}
    gate_keys, gate_names = _ordered([a for a, _ in usage])
    expert_keys, expert_names = _ordered([k[1] for k in d if k[0] == "zero_frac"] + [b for _, b in usage])
    U = np.full((len(gate_keys), len(expert_keys)), np.nan)
    for (a, b), v in usage.items():
        U[gate_keys.index(a), expert_keys.index(b)] = float(v)
    stats = {s: np.array([float(d.get((s, e, None), np.nan)) for e in expert_keys])
             for s in ("zero_frac", "near_zero_frac", "scale")}
    return level, U, gate_names, expert_names, stats


def plot(runs: list[str], out: str, source: str = "test", level: str | None = None, labels=None) -> None:
    cols = []
    for r in runs:
        cols.append(usage_matrix(load_metrics(r, source), level))
    labels = labels or [pathlib.Path(r).name for r in runs]
    n = len(cols)
    width = max(5.0, max(len(c[3]) for c in cols) * 0.45 + 2.5)
    fig, axes = plt.subplots(2, n, figsize=(width * n, 7.5), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.3]})
    for j, ((lv, U, gates, experts, stats), label) in enumerate(zip(cols, labels)):
        ax = axes[0, j]
        masked = np.ma.masked_invalid(U)
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("#dddddd")
        im = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=max(float(np.nanmax(U)), 1e-6), aspect="auto")
        ax.set_xticks(range(len(experts)), experts, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(gates)), gates, fontsize=8)
        for (g, e), v in np.ndenumerate(U):
            if not math.isnan(v):
                ax.text(e, g, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 * np.nanmax(U) else "black")
        ax.set_title(f"{label}: gate usage ({lv} level; grey = masked)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.03)
        ax2 = axes[1, j]
        x = np.arange(len(experts))
        ax2.bar(x - 0.2, stats["zero_frac"], 0.4, label="zero-activation fraction", color="tab:red")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("zero fraction", fontsize=8)
        ax3 = ax2.twinx()
        ax3.bar(x + 0.2, stats["scale"], 0.4, label="mean |output|", color="tab:blue")
        ax3.set_ylabel("mean |output|", fontsize=8)
        ax2.set_xticks(x, experts, rotation=60, ha="right", fontsize=7)
        h1, l1 = ax2.get_legend_handles_labels()
        h2, l2 = ax3.get_legend_handles_labels()
        ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
                   frameon=False)
    fig.tight_layout()
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run work directories (or JSON metric files)")
    p.add_argument("--out", default="expert_usage.png")
    p.add_argument("--source", choices=("test", "valid"), default="test")
    p.add_argument("--level", default=None, help="diagnostics level (default: the task level)")
    p.add_argument("--labels", nargs="*", default=None, help="column titles (default: run directory names)")
    a = p.parse_args(argv)
    plot(a.runs, a.out, a.source, a.level, a.labels)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
