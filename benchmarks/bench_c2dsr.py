#!/usr/bin/env python
"""C2DSR training-step and evaluation benchmark on llmcdsr/food_kitchen (official hyperparameters); also CDSRNP.

    python benchmarks/bench_c2dsr.py                 # a few minutes on 2 loaded CPU cores
    python benchmarks/bench_c2dsr.py --repeats 3 --all_repeats 2
    python benchmarks/bench_c2dsr.py --config experiments/cdsrnp_food_kitchen.py --variants masked,fast --skip eval

Config: ``experiments/c2dsr_food_kitchen.py`` (d = 256, 2 blocks, T = 15, batch 256, λ = 0.7, last 10
positions supervised). Skipped with a message when ``../shared/data`` (or ``--data_dir``) has no food_kitchen.

Training (side by side in one run, same real batches, same initial parameters), variants (``--variants``):

* ``all``: the straightforward formulation as the official code writes it -- every vocabulary head at every
  ``B x P`` slot, the GCN over the whole item tables, threefry dropout masks (``task.head_slots="all"``,
  ``task.gcn_rows="all"``, ``model.dropout_impl="threefry"``);
* ``masked``: each vocabulary head evaluated on the weighted slots only, compacted into the task's static
  capacities ``(C_X, C_Y)`` (``head_slots="masked"``);
* ``masked+hash``: plus the counter-hash dropout masks (``dropout_impl="hash"``, :mod:`jaxrec.kernels.dropout`);
* ``masked+rows``: plus the GCN only at the rows the batch reaches (``gcn_rows="batch"``);
* ``fast``: masked heads + hash dropout + row-restricted GCN (the experiment config's default);
* ``fast+packed``: plus the encoders' position-wise work on the real tokens only (``task.encoder_tokens=
  "packed"``, capacities from the training table).

All variants compute the same loss (the masks of ``hash`` differ from ``threefry``'s, the rate is the same; the
tests check equality of loss and gradients for the heads and the GCN rows).

Per variant (compiled first, then timed interleaved): median jitted train-step time (forward + backward + Adam,
the engine's step), compile time, train examples/s, projected epoch time (``steps_per_epoch`` x step; the
official epoch is 29 steps), analytic training GFLOP (``task.train_flops_per_example() x B``) and the achieved
GFLOP/s against the f32 matmul rate measured in the same run; the ratio of every variant's step to ``fast``'s.
Also the weighted-row counts per batch over one engine epoch against the head capacities (how often the exact
dense fallback would run) and the GCN edge capacities.

Evaluation: the whole validation split through the engine's evaluation (jitted eval step + host transforms
and per-domain accumulation), both protocols in one pass (999 sampled negatives + full ranking), wall time
and examples/s (first pass: with compilation; then the median of warm passes); also the sampled-only
protocol.

Results: ``benchmarks/results/c2dsr_food_kitchen.json`` with the machine and its load average (another job
may be using the cores: timings are noisy; FLOP counts are not).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "c2dsr_food_kitchen.json"
CONFIG = ROOT / "experiments" / "c2dsr_food_kitchen.py"


VARIANTS = {
    "all": dict(head_slots="all", dropout_impl="threefry", gcn_rows="all"),
    "masked": dict(head_slots="masked", dropout_impl="threefry", gcn_rows="all"),
    "masked+hash": dict(head_slots="masked", dropout_impl="hash", gcn_rows="all"),
    "masked+rows": dict(head_slots="masked", dropout_impl="threefry", gcn_rows="batch"),
    "fast": dict(head_slots="masked", dropout_impl="hash", gcn_rows="batch"),
    "fast+packed": dict(head_slots="masked", dropout_impl="hash", gcn_rows="batch", encoder_tokens="packed"),
}


def _variant(task, head_slots, dropout_impl, gcn_rows, encoder_tokens="all"):
    """A copy of the C2DSR or CDSRNP task with the variant's options (capacities recomputed by the task)."""
    t = copy.copy(task)
    t.head_slots = head_slots
    t.head_capacities = t._head_capacities(int(t.cfg.train.batch_size))
    t.model = t.model.clone(dropout_impl=dropout_impl)
    t.gcn_rows = gcn_rows
    t.gcn_capacities = t._gcn_capacities()
    t.encoder_tokens, t.token_capacity_mode = encoder_tokens, "auto"
    t.token_capacities = (t._token_capacities(int(t.cfg.train.batch_size)) if not hasattr(t, "train_kwargs")
                          else t._token_capacities())
    if hasattr(t, "train_kwargs"):  # CDSRNP passes its options to the model through train_kwargs
        t.train_kwargs = dict(t.train_kwargs, head_slots=head_slots, head_capacity=t.head_capacities,
                              gcn_capacity=t.gcn_capacities, token_capacity=t.token_capacities)
    return t


def bench_train(exp, repeats: int, all_repeats: int, variants=tuple(VARIANTS), num_batches: int = 3) -> dict:
    """Every variant compiled first, then timed *interleaved* (one step of each in turn), so that a changing
    background load hits all alike; medians per variant. ``all`` runs ``all_repeats`` steps, the rest
    ``repeats``."""
    from jaxrec.train import steps as steps_lib

    task, part = exp.task, exp.partitioner
    it = exp.train_iterator()
    host = [next(it) for _ in range(num_batches)]
    batches = [part.shard_inputs(b) for b in host]
    B = int(host[0]["seq"].shape[0])
    spe = exp.steps_per_epoch()
    tx = exp.optimizer(1000)
    out = {"batch_size": B, "steps_per_epoch": spe, "variants": {}}
    runners, times, info = {}, {}, {}
    for name in variants:
        t = _variant(task, **VARIANTS[name])
        state, shardings = steps_lib.build_train_state(t, tx, part, 0, host[0])
        step = steps_lib.make_train_step(t, tx, part, shardings)
        holder = {"state": state, "i": 0}

        def run(step=step, holder=holder):
            s, m = step(holder["state"], batches[holder["i"] % num_batches])
            holder["state"], holder["i"] = s, holder["i"] + 1
            jax.block_until_ready(m["loss"])
            return m

        c0 = time.perf_counter()
        m = run()  # compiles
        info[name] = (t, time.perf_counter() - c0, float(m["loss"]))
        runners[name], times[name] = run, []
    for r in range(max(repeats, all_repeats)):
        for name in variants:
            if r < (all_repeats if name == "all" else repeats):
                t0 = time.perf_counter()
                runners[name]()
                times[name].append(time.perf_counter() - t0)
                print(name, round(times[name][-1], 3), os.getloadavg()[0], flush=True)
    for name in variants:
        t, compile_s, loss0 = info[name]
        sec = float(np.median(times[name]))
        # CDSRNP has no analytic FLOP count (its set encoder and adapters vary with the options): no GFLOP/s
        flops = t.train_flops_per_example() * B if hasattr(t, "train_flops_per_example") else None
        out["variants"][name] = {
            **VARIANTS[name], "head_capacities": list(t.head_capacities) if t.head_capacities else None,
            "gcn_edge_capacities": list(t.gcn_capacities) if t.gcn_capacities else None,
            "token_capacities": list(t.token_capacities) if t.token_capacities else None,
            "first_step_incl_compile_s": round(compile_s, 2), "step_s": round(sec, 4),
            "step_s_all_repeats": [round(x, 3) for x in times[name]],
            "train_examples_per_s": round(B / sec, 1), "projected_epoch_s": round(spe * sec, 1),
            "analytic_gflop_per_step": None if flops is None else round(flops / 1e9, 1),
            "achieved_gflops": None if flops is None else round(flops / sec / 1e9, 1),
            "first_loss": loss0}
        print(name, out["variants"][name], flush=True)
    v = out["variants"]
    ref = "fast" if "fast" in v else variants[-1]
    out["step_ratio_over_" + ref] = {n: round(v[n]["step_s"] / v[ref]["step_s"], 2) for n in variants}
    if v[ref]["analytic_gflop_per_step"]:
        out["gflop_ratio_over_" + ref] = {
            n: round(v[n]["analytic_gflop_per_step"] / v[ref]["analytic_gflop_per_step"], 2) for n in variants}
    if hasattr(task, "train_kwargs"):  # CDSRNP: episodes of query + support rows, no per-batch row statistics
        return out
    # weighted rows per engine batch over one epoch vs the static capacities
    it2 = exp.train_iterator()
    p = task.supervised_positions
    rows = {"x": [], "y": []}
    from jaxrec.models.c2dsr import GCN_STREAMS, gcn_edge_capacity

    nv = task.model.num_nodes
    degs = {g: np.bincount(np.asarray(task.graphs_np[g][1]), minlength=nv) for g in ("mixed", "single")}
    edges = {"mixed": [], "x": [], "y": []}
    tokens = {"mixed": [], "x": [], "y": []}
    pad = task.model.pad_id
    for _ in range(spe):
        b = next(it2)
        for name, key in (("mixed", "seq"), ("x", "x_seq"), ("y", "y_seq")):
            tokens[name].append(int((np.asarray(b[key]) != pad).sum()))
        keep = np.asarray(b["keep"], bool)[:, None]
        for d in ("x", "y"):
            n = ((b[f"share_{d}_mask"][:, -p:] != 0) & keep).sum() + ((b[f"{d}_mask"][:, -p:] != 0) & keep).sum()
            rows[d].append(int(n))
        for (name, g), keys in zip((("mixed", "mixed"), ("x", "single"), ("y", "single")), GCN_STREAMS):
            ids = np.unique(np.concatenate([np.asarray(b[k]).ravel() for k in keys]))
            edges[name].append(int(degs[g][ids].sum()))
    caps = task.head_capacities
    out["weighted_rows_per_batch"] = {
        d: {"candidate_rows": 2 * B * p, "capacity": int(caps[i]), "mean": round(float(np.mean(rows[d])), 1),
            "max": int(np.max(rows[d])), "batches_over_capacity": int(np.sum(np.array(rows[d]) > caps[i]))}
        for i, d in enumerate(("x", "y"))}
    gcaps = gcn_edge_capacity(task.table.arrays, task.graphs_np, nv, B, corrupted=task.lambda_ != 1.0)
    out["gcn_edges_per_batch"] = {
        name: {"graph_edges": len(task.graphs_np["mixed" if name == "mixed" else "single"][0]),
               "capacity": gcaps[i], "mean": round(float(np.mean(edges[name])), 1), "max": int(np.max(edges[name])),
               "batches_over_capacity": int(np.sum(np.array(edges[name]) > gcaps[i]))}
        for i, name in enumerate(("mixed", "x", "y"))}
    from jaxrec.models.c2dsr import resolve_token_capacities, token_counts

    tcaps = resolve_token_capacities("packed", "auto", token_counts(task.table.arrays, pad), B,
                                     task.head_capacity_sigmas)
    out["real_tokens_per_batch"] = {
        name: {"tokens": B * task.max_len, "capacity": tcaps[i], "mean": round(float(np.mean(tokens[name])), 1),
               "max": int(np.max(tokens[name])),
               "batches_over_capacity": int(np.sum(np.array(tokens[name]) > tcaps[i]))}
        for i, name in enumerate(("mixed", "x", "y"))}
    return out


def bench_eval(exp, repeats: int) -> dict:
    from jaxrec.bench import median_time
    from jaxrec.train import steps as steps_lib
    from jaxrec.train.loop import evaluate

    task, part, cfg = exp.task, exp.partitioner, exp.cfg
    tx = exp.optimizer(1000)
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, task.dummy_batch(cfg.train.batch_size))
    split = cfg.eval.get("valid_split", "valid")
    n = len(exp.sources[split])
    out = {"split": split, "examples": n, "eval_batch_size": int(cfg.eval.batch_size)}
    for name, full in (("sampled999_and_full", True), ("sampled999_only", False)):
        t = copy.copy(task)
        t.full_ranking = full
        eval_step = steps_lib.make_eval_step(t, part, shardings)
        holder = {}

        def run(eval_step=eval_step, t=t):
            holder["res"] = evaluate(eval_step, state, exp.eval_batches(split), part, t)

        t0 = time.perf_counter()
        run()  # compiles
        first = time.perf_counter() - t0
        warm = median_time(run, repeats, warmup=0)
        res = holder["res"]
        out[name] = {"first_pass_incl_compile_s": round(first, 2), "wall_s": round(warm, 3),
                     "examples_per_s": round(n / warm, 1), "metric_keys": len(res)}
        print(name, out[name], flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed steps of the masked variant")
    p.add_argument("--all_repeats", type=int, default=3, help="timed steps of the (slow) all-slots variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    p.add_argument("--eval_repeats", type=int, default=2)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--skip", choices=("train", "eval"), default=None)
    p.add_argument("--config", default=str(CONFIG), help="a C2DSR or CDSRNP experiment config (default: C2DSR "
                   "on food_kitchen), e.g. experiments/cdsrnp_food_kitchen.py")
    p.add_argument("--out", default=None, help=f"default {OUT.relative_to(ROOT)} (results/<config stem>.json for "
                   "another --config)")
    a = p.parse_args(argv)

    from jaxrec.bench import _machine, matmul_gflops
    from jaxrec.config import load_config
    from jaxrec.train.run import Experiment

    config = pathlib.Path(a.config).resolve()
    out_path = a.out or str(OUT if config == CONFIG.resolve() else OUT.parent / f"{config.stem}.json")
    cfg = load_config(str(config), [])
    try:
        exp = Experiment(cfg, data_dir=a.data_dir)
    except Exception as e:  # noqa: BLE001 -- no shared data on a fresh clone
        print(f"bench_c2dsr: skipped, {cfg.data.name} not available ({type(e).__name__}: {e})")
        return {}
    load0 = os.getloadavg()
    res = {"config": os.path.relpath(config, ROOT), "data": cfg.data.name, "machine": _machine(),
           "loadavg_start": [round(x, 2) for x in load0], "kept_lines": getattr(exp.task, "num_kept", None),
           "train_source_len": len(exp.train_source())}
    res["matmul_gflops_f32"] = {str(n): round(matmul_gflops(n), 1) for n in (1024, 2048)}
    peak = max(res["matmul_gflops_f32"].values())
    if a.skip != "train":
        names = tuple(v for v in a.variants.split(",") if v)
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or not names:
            p.error(f"--variants: unknown {unknown}, expected a subset of {list(VARIANTS)}")
        res["train"] = bench_train(exp, a.repeats, a.all_repeats, names)
        for v in res["train"]["variants"].values():
            if v["achieved_gflops"] is not None:
                v["fraction_of_matmul_peak"] = round(v["achieved_gflops"] / peak, 3)
    if a.skip != "eval":
        res["eval"] = bench_eval(exp, a.eval_repeats)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out_path).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
