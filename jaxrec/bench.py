"""Benchmarks behind ``jaxrec bench``: ratios measured side by side in one run, medians of repeats.

``sasrec`` (any config whose task is ``seqrec``):
  * train step: the jitted, sharded step vs the same step run op by op (``jax.disable_jit``) -- steps/s and the
    ratio;
  * achieved GFLOP/s of the jitted step (analytic training FLOPs per example x batch / median step time)
    against this machine's f32 matmul rate measured in the same run;
  * evaluation: the vectorised full-catalogue + sampled-negative evaluation (jitted, batched) vs a
    per-example Python loop (one example's catalogue scores at a time, ranked with NumPy) -- examples/s and
    the ratio.
``marm``: MARM's FLOPs / serve latency / cache bytes / quality versus cache size on a small grid
(:func:`jaxrec.cache.bench.run`; writes ``marm_small.json`` and ``.png``).
``matmul``: the f32 matmul rate alone.
"""

from __future__ import annotations

import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Median f32 ``[n, n] @ [n, n]`` rate through XLA in GFLOP/s."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    t = median_time(lambda: f(a, b).block_until_ready(), repeats)
    return 2 * n ** 3 / t / 1e9


def _machine() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def bench_sasrec(config: str, overrides=(), repeats: int = 5, data_dir=None, train_steps_per_repeat: int = 10,
                 eval_loop_examples: int = 200) -> dict:
    from jaxrec.config import load_config
    from jaxrec.train import steps as steps_lib
    from jaxrec.train.loop import evaluate
    from jaxrec.train.run import Experiment

    cfg = load_config(config, list(overrides))
    exp = Experiment(cfg, data_dir=data_dir)
    task, part = exp.task, exp.partitioner
    tx = exp.optimizer(1000)
    it = exp.train_iterator()
    host_batch = next(it)
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, host_batch)
    step = steps_lib.make_train_step(task, tx, part, shardings)
    batch = part.shard_inputs(host_batch)
    B = int(host_batch["input_ids"].shape[0])

    holder = {"state": state}

    def run_jit():
        s = holder["state"]
        for _ in range(train_steps_per_repeat):
            s, m = step(s, batch)
        jax.block_until_ready(m["loss"])
        holder["state"] = s

    t_jit = median_time(run_jit, repeats) / train_steps_per_repeat

    raw_step = steps_lib.train_step_fn(task, tx)
    eager_state = jax.device_get(holder["state"])
    eager_batch = jax.device_get(host_batch)

    def run_eager():
        with jax.disable_jit():
            _, m = raw_step(eager_state, eager_batch)
            jax.block_until_ready(m["loss"])

    t_eager = median_time(run_eager, max(2, repeats // 2))

    flops_per_example = task.train_flops_per_example()
    peak = matmul_gflops()
    achieved = flops_per_example * B / t_jit / 1e9

    # --- evaluation: vectorised vs per-example loop
    eval_step = steps_lib.make_eval_step(task, part, jax.tree.map(lambda x: x.sharding, holder["state"]))
    valid_split = cfg.eval.get("valid_split", "valid")
    batches = exp.eval_batches(valid_split)
    n_eval = batches.num_examples
    first = [batches[k] for k in range(len(batches))]  # decoded once: time the model, not the reader
    t_vec = median_time(lambda: evaluate(eval_step, holder["state"], first, part, task), max(2, repeats // 2))

    params, model_state = holder["state"].params, holder["state"].model_state
    scores_one = jax.jit(lambda p, ids: task.scores(p, model_state, ids))
    rows = []
    for b in first:
        for r in range(b["input_ids"].shape[0]):
            if b["valid"][r] and len(rows) < eval_loop_examples:
                rows.append({k: v[r] for k, v in b.items()})

    def run_loop():
        out = []
        for ex in rows:
            s = np.array(scores_one(params, ex["input_ids"][None]))[0]
            s[0] = -np.inf
            t = ex["target"]
            excl = set(ex["history"].tolist()) - {0, int(t)}
            others = np.array([s[i] for i in range(1, s.shape[0]) if i != t and i not in excl])
            rank = 1 + np.sum(others > s[t]) + 0.5 * np.sum(others == s[t])
            out.append(1.0 / rank)
        return out

    t_loop = median_time(run_loop, max(2, repeats // 2))
    vec_eps = n_eval / t_vec
    loop_eps = len(rows) / t_loop
    return {
        "benchmark": "sasrec", "config": config, "overrides": list(overrides), "data": cfg.data.name,
        "batch_size": B, "max_len": int(cfg.model.max_len), "num_items": int(task.num_items),
        "repeats": repeats, "machine": _machine(),
        "train": {"jit_step_seconds": t_jit, "jit_steps_per_second": 1 / t_jit,
                  "op_by_op_step_seconds": t_eager, "op_by_op_steps_per_second": 1 / t_eager,
                  "speedup_jit_vs_op_by_op": t_eager / t_jit,
                  "train_examples_per_second": B / t_jit,
                  "analytic_train_flops_per_example": flops_per_example,
                  "achieved_gflops": achieved, "matmul_f32_peak_gflops": peak,
                  "fraction_of_matmul_peak": achieved / peak},
        "eval": {"vectorised_examples_per_second": vec_eps, "vectorised_examples": n_eval,
                 "python_loop_examples_per_second": loop_eps, "python_loop_examples": len(rows),
                 "speedup_vectorised_vs_loop": vec_eps / loop_eps},
    }


def run(what: str, *, config: str, overrides=(), repeats: int = 5, data_dir=None, out_dir=None) -> dict:
    if what == "marm":  # FLOPs / latency / bytes / quality versus cache size, small grid (minutes)
        from jaxrec.cache.bench import run as marm_run

        return marm_run(small=True, out_dir=out_dir or "benchmarks/results")
    if what == "matmul":
        return {"benchmark": "matmul", "matmul_f32_gflops": matmul_gflops(repeats=repeats), "machine": _machine()}
    if what == "sasrec":
        return bench_sasrec(config, overrides, repeats, data_dir)
    raise ValueError(f"unknown benchmark {what!r}")
