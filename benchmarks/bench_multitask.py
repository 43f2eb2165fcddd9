#!/usr/bin/env python
"""Multi-task MoE training speed: HoME vs MMoE / CGC / PLE at the experiment configs, and the batched expert
computation (one ``einsum`` per layer over all experts) against a per-expert Python loop.

    python benchmarks/bench_multitask.py                 # -> benchmarks/results/multitask.json
    python benchmarks/bench_multitask.py --repeats 3 --batch 1024

For each model (the default configs of ``experiments/<model>_kuairand_pure.py``: same input, towers and expert
budget; parameter counts from :func:`jaxrec.models.multitask.parameter_counts`), on a synthetic batch with the
KuaiRand-Pure schema (random ids inside every vocabulary, random labels):

* ``step_ms``: median wall time of the jitted, donated train step (forward + backward + Adam; the engine's
  ``make_train_step``), ``examples_per_s`` = batch / step time;
* ``xla_gflop``: ``compiled.cost_analysis()`` FLOPs of that step, ``achieved_gflops`` = xla_gflop / step time and
  its share of the f32 matmul rate measured in the same run (:func:`jaxrec.bench.matmul_gflops`);
* ``loop_step_ms``: the same step traced under :class:`jaxrec.nn.experts.expert_loop_reference` (each expert's
  dense layers as their own matmul, stacked) -- identical parameters and losses (checked), and the ratio
  ``loop / einsum``.

Timings on the shared 2-core machine depend on its load; the JSON records the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import jax
import numpy as np

OUT = pathlib.Path(__file__).resolve().parent / "results"


def synthetic_batch(task, batch: int, seed: int = 0) -> dict:
    from jaxrec.models.multitask import dummy_batch

    s = task.schema
    rng = np.random.default_rng(seed)
    b = dummy_batch(batch, len(s.field_vocab), len(task.tasks), task.history_len, s.max_tags)
    b["user_id"] = rng.integers(0, s.num_users, batch).astype(np.int32)
    b["video_id"] = rng.integers(0, s.num_videos, batch).astype(np.int32)
    b["sparse"] = (rng.random((batch, len(s.field_vocab))) * np.asarray(s.field_vocab)).astype(np.int32)
    b["tags"] = rng.integers(0, s.tag_vocab, (batch, s.max_tags)).astype(np.int32)
    b["hist_ids"] = rng.integers(1, s.num_videos + 1, (batch, task.history_len)).astype(np.int32)
    b["hist_mask"] = rng.random((batch, task.history_len)) < 0.7
    b["labels"] = (rng.random((batch, len(task.tasks))) < 0.2).astype(np.float32)
    return b


def _info():
    from jaxrec.data.catalog import DatasetInfo

    return DatasetInfo(name="synthetic_kuairand_pure", kind="impressions", licence="", num_users=27285,
                       num_items=7583, domain_names=(), domain_item_ranges=None, split_sizes={},
                       unavailable_splits={}, drops={}, data_dir="", metadata={})


def bench_model(model: str, batch: int, repeats: int, loop: bool = True) -> dict:
    import optax

    from jaxrec import bench
    from jaxrec.kernels import flops as flops_lib
    from jaxrec.models import multitask as mt
    from jaxrec.nn.experts import expert_loop_reference
    from jaxrec.parallel.mesh import make_mesh
    from jaxrec.parallel.partitioner import Partitioner
    from jaxrec.train import steps as steps_lib

    cfg = mt.experiment_config(model)
    task = mt.MultiTaskRankingTask(cfg, _info())
    host = synthetic_batch(task, batch)
    part = Partitioner(make_mesh((("data", 1),), devices=jax.devices()[:1]))
    tx = optax.adam(1e-3)
    counts = mt.parameter_counts(task.model)
    row = {"model": model, "batch": batch, "params": counts}

    def time_step(reference: bool) -> tuple[float, float, float, float | None]:
        ctx = expert_loop_reference() if reference else _Null()
        with ctx:
            state, shardings = steps_lib.build_train_state(task, tx, part, 0, host)
            step = steps_lib.make_train_step(task, tx, part, shardings)
            b = part.shard_inputs(host)
            t0 = time.perf_counter()
            state, m = step(state, b)  # compile (traced inside the context) + first step
            jax.block_until_ready(m["loss"])
            compile_s = time.perf_counter() - t0
            loss0 = float(m["loss"])
            gflop = None
            try:
                gflop = flops_lib.xla_flops(steps_lib.train_step_fn(task, tx), state, b) / 1e9
            except Exception:  # noqa: BLE001 -- the cost model is optional
                gflop = None
        holder = [state]

        def run():
            holder[0], mm = step(holder[0], b)
            jax.block_until_ready(mm["loss"])

        return bench.median_time(run, repeats), compile_s, loss0, gflop

    t, c, loss, gflop = time_step(False)
    row.update(step_ms=1e3 * t, compile_s=c, examples_per_s=batch / t, first_loss=loss, xla_gflop=gflop,
               achieved_gflops=(gflop / t if gflop else None))
    if loop:
        tl, cl, loss_l, _ = time_step(True)
        row.update(loop_step_ms=1e3 * tl, loop_compile_s=cl, loop_first_loss=loss_l,
                   loop_over_einsum=tl / t)
        if not np.isclose(loss, loss_l, rtol=1e-4):
            raise AssertionError(f"{model}: einsum and loop formulations disagree: {loss} vs {loss_l}")
    return row


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> int:
    from jaxrec import bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mmoe,cgc,ple,home")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no_loop", action="store_true", help="skip the per-expert loop reference")
    p.add_argument("--out", default=str(OUT / "multitask.json"))
    a = p.parse_args(argv)
    res = {"benchmark": "multitask", "machine": {**bench._machine(), "loadavg_start": os.getloadavg()},
           "repeats": a.repeats}
    res["matmul_peak_gflops"] = bench.matmul_gflops()
    rows = []
    for m in a.models.split(","):
        r = bench_model(m.strip(), a.batch, a.repeats, loop=not a.no_loop)
        if r.get("achieved_gflops"):
            r["share_of_matmul_peak"] = r["achieved_gflops"] / res["matmul_peak_gflops"]
        rows.append(r)
        print(f"{r['model']:5s} params={r['params']['total']:,} experts={r['params']['experts']:,}: "
              f"{r['step_ms']:.0f} ms/step, {r['examples_per_s']:.0f} ex/s"
              + (f", {r['achieved_gflops']:.1f} GFLOP/s" if r.get("achieved_gflops") else "")
              + (f"; loop {r['loop_step_ms']:.0f} ms (x{r['loop_over_einsum']:.2f})" if "loop_step_ms" in r else ""),
              flush=True)
    res["rows"] = rows
    base = {r["model"]: r for r in rows}
    if "home" in base and "mmoe" in base:
        res["home_over_mmoe_step_time"] = base["home"]["step_ms"] / base["mmoe"]["step_ms"]
    res["machine"]["loadavg_end"] = os.getloadavg()
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    print(f"matmul peak {res['matmul_peak_gflops']:.1f} GFLOP/s; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
