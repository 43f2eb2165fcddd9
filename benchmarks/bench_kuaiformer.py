#!/usr/bin/env python
"""KuaiFormer benchmarks: compute of compressed-256 vs raw-256 vs raw-64, and retrieval queries/s exact vs approx.

    python benchmarks/bench_kuaiformer.py            # both parts (a few minutes on 2 CPU cores)
    python benchmarks/bench_kuaiformer.py --quick    # fewer repeats, N = 1e5 only

Part 1, ``compute`` (spec §8 / B4): for raw-64 (64 tokens), raw-256 (256 tokens) and compressed-256 (2x64 + 5x16
groups through a 1-layer bidirectional encoder + 48 raw = 55 tokens), each followed by k query tokens and a
4-layer Llama-style causal stack, per user:

* ``spec_formula_mflops``: the spec's §8 count, ``(8 + 4r) T d^2 + 4 T^2 d`` per layer (plain FFN, r = 4) plus
  the compressor -- reproduces its 111 / 539 / 181 MFLOPs at d = 128, k = 1;
* ``analytic_mflops``: :func:`jaxrec.models.kuaiformer.kuaiformer_forward_flops` for our blocks (SwiGLU FFN of
  width round(8d/3), token MLP), causal attention counted at half; ``analytic_full_attn_mflops`` counts it in
  full (what XLA counts);
* ``xla_mflops``: ``compiled.cost_analysis()`` of the jitted forward (the stack is a Python loop, so unrolled);
* ``forward_ms`` / ``users_per_s``: the jitted user tower on a batch of ``--batch`` users (default 32; median of
  repeats);
* ``train_step_ms``: forward + backward + Adam on the same batch (in-batch softmax loss over the batch's
  targets, 1,000-item table so the transformer dominates); ``train_examples_per_s``; ``train_xla_mflops_per_user``
  (XLA's count for the whole train step / batch);
* ``forward_gflops_per_s`` / ``train_gflops_per_s`` achieved, and their share of the f32 matmul rate measured in
  the same run (``matmul_peak_gflops_f32``: best of 1024^3 and 2048^3, :func:`jaxrec.bench.matmul_gflops`);
* ratios to raw-64, next to the paper's claims (raw-256 ~6x, compressed-256 ~+10%).

Two settings: the spec's (d = 128, 4 heads, L = 4, k = 1) and our experiment's (d = 64, 4 heads, L = 4, k = 6,
tab side feature).

Part 2, ``retrieval`` (B6): per-interest brute force over a random item table ``[N, 64]`` for 32 users with
``Q`` interests, global K = 100 (per-interest quota ceil(K/Q), merge, de-duplicate), ``method`` exact
(``lax.top_k``), approx (``lax.approx_max_k``; an exact fallback off TPU) and binned (the TPU algorithm in plain
JAX, recall target 0.95): queries/s and the recall of the merged list against the exact one.

Results go to ``benchmarks/results/kuaiformer.json`` with the machine and its load average (timings on a shared,
loaded machine are noisy; the FLOP counts are not).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.bench import median_time
from jaxrec.kernels import flops as flops_lib
from jaxrec.kernels import losses
from jaxrec.models import kuaiformer as KF
from jaxrec.serving import retrieval as R

OUT = pathlib.Path(__file__).resolve().parent / "results" / "kuaiformer.json"
VARIANTS = {"raw64": (64, ()), "raw256": (256, ()), "compressed256": (256, KF.DEFAULT_COMPRESS)}
SETTINGS = {
    "spec_d128_k1": dict(embed_dim=128, num_heads=4, num_layers=4, num_queries=1, num_domains=0),
    "experiment_d64_k6": dict(embed_dim=64, num_heads=4, num_layers=4, num_queries=6, num_domains=15,
                              side_dim=16),
}
PAPER = {"raw256_vs_raw64": 6.0, "compressed256_vs_raw64": 1.10}


def spec_formula_flops(max_len: int, compress, d: int, layers: int, k: int, r: int = 4) -> float:
    """The spec's §8 count: per layer ``(8 + 4r) T d^2 + 4 T^2 d`` over ``T = tokens + k``, plus one compressor
    layer per group of ``size`` positions."""
    t = KF.compressed_length(max_len, compress) + k
    total = layers * ((8 + 4 * r) * t * d * d + 4 * t * t * d)
    for size, count in compress:
        total += count * ((8 + 4 * r) * size * d * d + 4 * size * size * d)
    return float(total)


def bench_compute(repeats: int, batch: int = 32, peak_gflops: float | None = None) -> dict:
    out = {}
    for sname, setting in SETTINGS.items():
        rows = {}
        for vname, (max_len, compress) in VARIANTS.items():
            cfg = dict(num_items=1000, max_len=max_len, compress=compress, dropout_rate=0.0, **setting)
            model = KF.KuaiFormer(**cfg)
            d, k = setting["embed_dim"], setting["num_queries"]
            token_in = d + (setting.get("side_dim", 16) if setting["num_domains"] else 0)
            rng = np.random.default_rng(0)
            ids = jnp.asarray(rng.integers(2, 1001, size=(batch, max_len)), jnp.int32)
            side = jnp.asarray(rng.integers(0, 15, size=(batch, max_len)), jnp.int32)
            target = jnp.asarray(rng.integers(2, 1001, size=(batch,)), jnp.int32)
            variables = jax.jit(model.init)(jax.random.PRNGKey(0), ids, side)
            params = nn.meta.unbox(variables)["params"]

            one = jax.ShapeDtypeStruct((1, max_len), jnp.int32)
            xla = flops_lib.xla_flops(lambda p, i, s: model.apply({"params": p}, i, s), params, one, one)
            fwd = jax.jit(lambda p, i, s: model.apply({"params": p}, i, s))
            t_fwd = median_time(lambda: fwd(params, ids, side).block_until_ready(), repeats)

            tx = optax.adam(1e-3)

            def loss_fn(p, i, s, t):
                u = model.apply({"params": p}, i, s)
                e = model.apply({"params": p}, t, method="item_embeddings")
                return losses.in_batch_softmax_from_logits(KF.interest_logits(u, e), item_ids=t)

            @jax.jit
            def train_step(p, o, i, s, t):
                loss, g = jax.value_and_grad(loss_fn)(p, i, s, t)
                upd, o = tx.update(g, o, p)
                return optax.apply_updates(p, upd), o, loss

            opt = tx.init(params)
            holder = {"p": params, "o": opt}

            def run_step():
                holder["p"], holder["o"], loss = train_step(holder["p"], holder["o"], ids, side, target)
                loss.block_until_ready()

            t_step = median_time(run_step, repeats)
            shp = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
            xla_train = flops_lib.xla_flops(train_step,
                                            *jax.tree_util.tree_map(shp, (params, opt, ids, side, target)))
            analytic = KF.kuaiformer_forward_flops(max_len, d, setting["num_layers"], setting["num_heads"], k,
                                                   compress, token_in=token_in)
            analytic_full = KF.kuaiformer_forward_flops(max_len, d, setting["num_layers"], setting["num_heads"], k,
                                                        compress, token_in=token_in, causal_half=False)
            rows[vname] = {
                "tokens": KF.compressed_length(max_len, compress) + k,
                "spec_formula_mflops": round(spec_formula_flops(max_len, compress, d, setting["num_layers"], k) / 1e6,
                                             1),
                "analytic_mflops": round(analytic / 1e6, 1),
                "analytic_full_attn_mflops": round(analytic_full / 1e6, 1),
                "xla_mflops": None if xla is None else round(xla / 1e6, 1),
                "xla_over_analytic_full": None if xla is None else round(xla / analytic_full, 3),
                "forward_ms": round(t_fwd * 1e3, 1),
                "users_per_s": round(batch / t_fwd, 1),
                "train_step_ms": round(t_step * 1e3, 1),
                "train_examples_per_s": round(batch / t_step, 1),
                "train_xla_mflops_per_user": None if xla_train is None else round(xla_train / batch / 1e6, 1),
            }
            r = rows[vname]
            if xla is not None:
                r["forward_gflops_per_s"] = round(xla * batch / t_fwd / 1e9, 2)
            if xla_train is not None:
                r["train_gflops_per_s"] = round(xla_train / t_step / 1e9, 2)
            if peak_gflops:
                for key in ("forward_gflops_per_s", "train_gflops_per_s"):
                    if key in r:
                        r[key.replace("gflops_per_s", "share_of_matmul_peak")] = round(r[key] / peak_gflops, 3)
            print(f"compute {sname} {vname}: {rows[vname]}", flush=True)
        ratios = {}
        for v in ("raw256", "compressed256"):
            ratios[f"{v}_vs_raw64"] = {
                key: round(rows[v][key] / rows["raw64"][key], 3)
                for key in ("spec_formula_mflops", "analytic_mflops", "xla_mflops", "forward_ms", "train_step_ms")
                if rows[v][key] is not None}
            ratios[f"{v}_vs_raw64"]["paper"] = PAPER[f"{v}_vs_raw64"]
        out[sname] = {"setting": setting, "batch": batch, "variants": rows, "ratios": ratios}
    return out


def bench_retrieval(repeats: int, sizes, batch: int = 32, d: int = 64, top_k: int = 100) -> dict:
    rows = []
    rng = np.random.default_rng(1)
    for n in sizes:
        table = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32))
        chunk = None if n <= 200_000 else 131_072
        for q in (1, 4, 6):
            u = jnp.asarray(rng.normal(size=(batch, q, d)).astype(np.float32))
            ids = {}
            for method in R.METHODS:
                fn = jax.jit(lambda u, e, m=method: R.retrieve(u, e, top_k, quota="split", method=m,
                                                               recall_target=0.95, chunk_size=chunk)["ids"])
                t = median_time(lambda: fn(u, table).block_until_ready(), repeats)
                ids[method] = fn(u, table)
                rec = float(R.recall(ids[method], ids["exact"]).mean())
                row = {"num_items": n, "interests": q, "method": method, "top_k": top_k, "batch": batch,
                       "chunk_size": chunk, "ms_per_batch": round(t * 1e3, 2), "queries_per_s": round(batch / t, 1),
                       "recall_vs_exact": round(rec, 4)}
                rows.append(row)
                print(f"retrieval {row}", flush=True)
    return {"rows": rows, "backend": jax.default_backend(),
            "note": "approx = lax.approx_max_k (XLA ApproxTopK: exact fallback off TPU); binned = TPU algorithm in "
                    "plain JAX, recall_target 0.95"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repeats, N = 1e5 only")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=32, help="users per batch in the compute timings")
    p.add_argument("--skip", choices=("compute", "retrieval"), default=None)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    load0 = os.getloadavg()
    t0 = time.time()
    res = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                       "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                       "loadavg_start": [round(x, 2) for x in load0]},
           "repeats": repeats}
    if args.skip != "compute":
        from jaxrec.bench import matmul_gflops

        res["matmul_peak_gflops_f32"] = round(max(matmul_gflops(n) for n in (1024, 2048)), 1)
        print(f"f32 matmul peak (1024^3 / 2048^3, best): {res['matmul_peak_gflops_f32']} GFLOP/s", flush=True)
        res["compute"] = bench_compute(repeats, args.batch, res["matmul_peak_gflops_f32"])
    if args.skip != "retrieval":
        res["retrieval"] = bench_retrieval(repeats, (100_000,) if args.quick else (100_000, 1_000_000))
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_s"] = round(time.time() - t0, 1)
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
