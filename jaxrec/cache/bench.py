"""MARM benchmark: FLOPs versus cache size (spec marm.md §9 B1-B3), serve latency, cache bytes, and quality with and
without the cache.

``run(small=True)`` (minutes on 2 CPU cores) / ``run(small=False)`` (the full grid) measures:

1. **FLOPs** (``"flops"`` rows): analytic per-sample forward FLOPs of the sequence module
   (:func:`jaxrec.models.marm.sequence_flops`, matmuls only, dense attention) for every (layers L, history n,
   width d) of the grid and every variant -- ``kv`` (MARM caching every layer's K/V), ``kv_fresh1`` (layer 1
   projects fresh history embeddings, layers 2..L cached K/V), ``h`` (MARM caching layer outputs), ``none`` (no
   cache: causal Transformer recomputed per request); ``L = 1`` rows are the single-layer target-attention
   baselines (``kv``: DIN-style, ``h`` / ``kv_fresh1``: with per-request projections). With the cache values per
   user (``n·L·2d`` kv, ``n·(L-1)·2d`` kv_fresh1, ``n·(L-1)·d`` h) and bytes per user (fp32 / bf16).
2. **Cross-check** (``"flops_check"``): on small unrolled configs, the analytic figure against the ``dot_general``
   FLOPs of the traced program (must be equal) and against XLA's ``cost_analysis`` (which adds element-wise work
   -- LayerNorm, softmax, exact GELU -- so its ratio is ``1 + O(1/d)``; the layers are a Python loop, not a
   ``scan``, so XLA counts all of them).
3. **Serve latency and bytes** (``"latency"``): one jitted serving step (cache lookup, score, write the scored
   rows; store donated) for a batch of ``B`` requests, median of repeats, per variant and (L, n); the store's
   actual array bytes against the formula ``capacity x entry values x dtype size``.
4. **Quality** (``"quality"``): on a synthetic exposure stream whose clicks depend on the *order* of history
   items (:func:`jaxrec.models.marm.synthetic_stream`; ``gauc_ceiling`` = GAUC of its hidden cause), each
   (variant, L, n) is trained on the first rounds of the stream in causal, *staggered* order
   (:func:`~jaxrec.models.marm.round_batches` with ``stagger=True``: one event per user per batch, users at
   different positions, so the stream is stationary; cache carried across steps and epochs; the engine's train
   step), then the held-out last rounds are scored in serving order (read, score, write), giving
   AUC and GAUC of ``is_click`` *with the cache* (``kv``) and *without* (``none``: full recomputation per
   request). For cached variants the same evaluation with a **refreshed** cache (all entries recomputed under
   the final parameters) gives the staleness cost (``gauc_refreshed - gauc``, ``stale_logit_mean_abs``).
5. A PNG (``plot``): quality vs cache size with the FLOPs of each point, FLOPs vs effective depth with and
   without the cache, FLOPs vs cache size per variant.

Results: ``<out_dir>/marm.json`` and ``marm.png`` (``marm_small.*`` / ``marm_medium.*`` for the small / medium
grids); quality rows are also appended to ``<name>.quality.jsonl`` as they finish and the finished cross-check and
latency sections are kept in ``<name>.sections.json``, so a rerun after an interruption resumes from them.
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["run", "flops_grid", "flops_check", "latency", "quality", "plot", "SMALL", "MEDIUM", "FULL", "GRIDS"]

_STREAM_SMALL = dict(num_users=384, events_per_user=40, num_items=48, num_categories=6, pattern_window=32, signal=6.0)
_STREAM_FULL = dict(num_users=2048, events_per_user=96, num_items=96, num_categories=6, pattern_window=48, signal=6.0)
SMALL = dict(
    flops_L=(1, 2, 4, 8), flops_n=(32, 128, 512), flops_d=(32, 64),
    check=[(m, L, n, 32) for m in ("kv", "kv_fresh1", "h", "none") for L in (1, 2) for n in (16, 64)],
    latency=[(m, L, 64, 32) for m in ("kv", "kv_fresh1", "h", "none") for L in (1, 4)], latency_batch=256,
    latency_repeats=10, stream=_STREAM_SMALL, eval_rounds=8,
    quality=[("kv_fresh1", 1, 8), ("kv_fresh1", 2, 8), ("kv_fresh1", 1, 16), ("kv_fresh1", 2, 16), ("kv", 2, 16),
             ("none", 2, 16)],
    quality_d=16, epochs=8, batch=128, lr=5e-3, seeds=(0,), fast_compile=True,
)
FULL = dict(
    flops_L=(1, 2, 4, 8), flops_n=(32, 64, 128, 256, 512, 1024), flops_d=(32, 64),
    check=[(m, L, n, d) for m in ("kv", "kv_fresh1", "h", "none") for L in (1, 2, 4) for n in (32, 128)
           for d in (32, 64)],
    latency=[(m, L, n, 64) for m in ("kv", "kv_fresh1", "h", "none") for L in (1, 2, 4, 8) for n in (64, 256)],
    latency_batch=256, latency_repeats=20, stream=_STREAM_FULL, eval_rounds=16,
    quality=([("kv_fresh1", L, n) for L in (1, 2, 4) for n in (8, 16, 32, 64)]
             + [("kv", L, 32) for L in (1, 2, 4)] + [("h", 2, 32)]
             + [("none", L, n) for L in (2, 4) for n in (16, 32)]),
    quality_d=32, epochs=8, batch=256, lr=3e-3, seeds=(0, 1, 2), fast_compile=False,
)
# between the two: the FULL FLOPs/latency/check grids, a 2.5x smaller stream than FULL and 13 quality points
# x 3 seeds (about an hour on 2 loaded CPU cores)
_STREAM_MEDIUM = dict(num_users=1024, events_per_user=64, num_items=64, num_categories=6, pattern_window=32, signal=6.0)
MEDIUM = dict(
    FULL, stream=_STREAM_MEDIUM, eval_rounds=12, batch=256, lr=3e-3, quality_d=32, epochs=8, seeds=(0, 1, 2),
    fast_compile=True,
    quality=([("kv_fresh1", L, n) for L in (1, 2, 4) for n in (8, 16, 32)] + [("kv", 2, 16), ("h", 2, 16)]
             + [("none", L, 16) for L in (2, 4)]),
)
GRIDS = {"small": SMALL, "medium": MEDIUM, "full": FULL}


def _machine() -> dict:
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average_1min": load,
            "jax": jax.__version__, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


# ============================================================================================ FLOPs

def flops_grid(Ls, ns, ds, mlp_ratio: int = 4) -> list[dict]:
    """Analytic per-sample forward FLOPs and cache sizes over the grid (see the module docstring)."""
    from jaxrec.models import marm as M

    rows = []
    for d in ds:
        for n in ns:
            for L in Ls:
                for mode in M.CACHE_MODES:
                    vals = M.cache_values_per_user(n, d, L, mode)
                    rows.append({"mode": mode, "L": L, "n": n, "d": d,
                                 "flops": M.sequence_flops(n, d, L, mlp_ratio, mode),
                                 "flops_causal_half": M.sequence_flops(n, d, L, mlp_ratio, mode, causal_half=True),
                                 "cache_values_per_user": vals, "cache_bytes_per_user_fp32": 4 * vals,
                                 "cache_bytes_per_user_bf16": 2 * vals, "cache_size_Lnd": L * n * d})
    return rows


def flops_check(configs) -> list[dict]:
    """Analytic vs traced ``dot_general`` vs XLA ``cost_analysis`` FLOPs on small unrolled configs."""
    from jaxrec.models import marm as M

    rows = []
    for mode, L, n, d in configs:
        m = M.MARM(num_items=100, num_users=10, embed_dim=d, num_layers=L, num_heads=2, cache_mode=mode,
                   num_label_codes=0)
        a = M.sequence_flops(n, d, L, 4, mode)
        dot = M.dot_sequence_flops(m, n)
        x = M.xla_sequence_flops(m, n)
        rows.append({"mode": mode, "L": L, "n": n, "d": d, "analytic": a, "traced_dot": dot, "xla": x,
                     "dot_over_analytic": dot / a, "xla_over_analytic": None if x is None else x / a})
    return rows


# ============================================================================================ latency

def _synthetic_info(num_users: int, num_items: int):
    from jaxrec.data.catalog import DatasetInfo

    return DatasetInfo(name="synthetic_marm", kind="impressions", licence="synthetic", num_users=num_users,
                       num_items=num_items, domain_names=(), domain_item_ranges=None, split_sizes={},
                       unavailable_splits={}, drops={}, data_dir="", metadata={"label_names": ("is_click",
                                                                                             "long_view")})


def _cfg(mode: str, L: int, n: int, d: int, *, capacity: int, ways: int = 16, heads: int = 2,
         tower_features=("user", "item", "seq")):
    import ml_collections

    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(name="marm", embed_dim=d, num_layers=L, num_heads=heads,
                                             cache_mode=mode, tower_hidden=(64,),
                                             tower_features=tuple(tower_features)))
    c.task = ml_collections.ConfigDict(dict(name="marm_ranking", history_len=n, cache_capacity=capacity,
                                            cache_ways=ways, time_base_ms=0))
    c.train = ml_collections.ConfigDict(dict(seed=0))
    return c


def latency(configs, batch: int = 256, repeats: int = 10, seed: int = 0, log=None) -> list[dict]:
    """Median wall time of one jitted serving step (lookup, score, write; store donated) for ``batch`` requests
    whose ``n`` history entries are all in the store, plus the store's bytes against the formula. Each row also
    has ``compile_s`` (the first call: trace + compile + one step), logged per configuration with ``log``."""
    from jaxrec.models import marm as M
    from jaxrec.models.marm import MARMRankingTask

    rows = []
    rng = np.random.default_rng(seed)
    num_items, num_users = 10000, batch
    info = _synthetic_info(num_users, num_items)
    params_cache: dict = {}
    for mode, L, n, d in configs:
        cap = batch * (n + 1) * 2
        task = MARMRankingTask(_cfg(mode, L, n, d, capacity=cap), info, history=M.ExposureHistory.from_columns(
            [0], [0], [0]))
        key = (L, d)
        b = {"user_id": np.arange(batch, dtype=np.int32), "video_id": np.zeros(batch, np.int32),
             "item": rng.integers(1, num_items + 1, batch).astype(np.int32),
             "time": np.full(batch, n + 1, np.int32),
             "hist_ids": rng.integers(1, num_items + 1, (batch, n)).astype(np.int32),
             "hist_time": np.tile(np.arange(1, n + 1, dtype=np.int32), (batch, 1)),
             "hist_code": rng.integers(0, 4, (batch, n)).astype(np.int32), "hist_mask": np.ones((batch, n), bool),
             "labels": np.zeros((batch, 2), np.float32)}
        b = jax.tree.map(jnp.asarray, b)
        if key not in params_cache:
            import flax.linen as nn

            v = jax.jit(task.init)(jax.random.PRNGKey(seed), b)
            params_cache[key] = nn.meta.unbox(v["params"])
        params = params_cache[key]
        state = {}
        store = task.new_cache()
        if store is not None:
            keys = M.cache_keys(b["user_id"], b["hist_ids"], b["hist_time"]).reshape(-1, 3)
            vals = jnp.asarray(rng.standard_normal((keys.shape[0],) + task.value_shape), store.values.dtype)
            store = jax.jit(lambda s, k, v: s.write(k, v))(store, keys, vals)
            state = {"marm_cache": store}
        serve = jax.jit(task.serve, donate_argnums=1)
        t0 = time.perf_counter()
        out, state = serve(params, state, b)  # compile + warm-up
        jax.block_until_ready(out)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out, state = serve(params, state, b)
            jax.block_until_ready((out, state))
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        row = {"mode": mode, "L": L, "n": n, "d": d, "batch": batch, "compile_s": compile_s, "median_ms": 1e3 * med,
               "us_per_request": 1e6 * med / batch, "requests_per_s": batch / med,
               "flops_per_request": M.sequence_flops(n, d, L, 4, mode)}
        if "marm_cache" in state:
            st = state["marm_cache"]
            formula = st.capacity * int(np.prod(st.value_shape)) * st.values.dtype.itemsize
            row.update(store_value_bytes=st.value_bytes(), store_value_bytes_formula=formula,
                       store_total_bytes=st.nbytes(), hit_rate=st.stats_dict()["hit_rate"],
                       cache_bytes_per_user_fp32=4 * M.cache_values_per_user(n, d, L, mode))
        rows.append(row)
        if log is not None:
            log(f"marm bench: latency {mode} L={L} n={n} d={d}: compile {compile_s:.1f} s, median {1e3 * med:.2f} ms")
    return rows


# ============================================================================================ quality

def _auc_gauc(scores, labels, users) -> tuple[float, float]:
    from jaxrec.kernels import metrics

    return float(metrics.auc(scores, labels)), float(metrics.gauc(scores, labels, users))


def quality(configs, stream_kw: dict, *, d: int = 16, eval_rounds: int = 8, epochs: int = 3, batch: int = 128,
            seeds=(0,), lr: float = 3e-3, tower_features=("seq",), log=print, rows_path=None) -> list[dict]:
    """Train each ``(mode, L, n)`` on the synthetic stream's first rounds (causal order), evaluate the last
    ``eval_rounds`` rounds in serving order; see the module docstring.

    ``rows_path``: a JSON-lines file; every finished row is appended to it, and rows already there (same seed,
    mode, L, n, d) are taken from it instead of being recomputed -- an interrupted run resumes where it stopped
    (each row is computed from its own seed, so a resumed run gives the rows an uninterrupted one would)."""
    import optax

    from jaxrec.models import marm as M
    from jaxrec.train import steps as steps_lib
    from jaxrec.parallel.mesh import make_mesh
    from jaxrec.parallel.partitioner import Partitioner

    rows = []
    done: dict = {}
    if rows_path is not None:
        rows_path = pathlib.Path(rows_path)
        if rows_path.exists():
            for i, line in enumerate(rows_path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    done[(r["seed"], r["mode"], r["L"], r["n"], r["d"])] = r
                except (ValueError, KeyError) as e:  # a line cut by a kill: recompute that row
                    log(f"  {rows_path}:{i}: unreadable row ({e}); it is recomputed")
    partitioner = Partitioner(make_mesh((("data", 1),), devices=jax.devices()[:1]))
    for seed in seeds:
        cols = M.synthetic_stream(**stream_kw, seed=seed)
        hist = M.ExposureHistory.from_columns(cols["user"], cols["time_ms"], cols["video"],
                                              M.label_codes(cols["labels"], (0, 1)))
        E = int(stream_kw["events_per_user"])
        train_r, eval_r = list(range(E - eval_rounds)), list(range(E - eval_rounds, E))
        info = _synthetic_info(int(cols["num_users"]), int(cols["num_items"]))
        ev = np.isin(np.asarray(cols["time_ms"]), eval_r)  # time = position: the held-out tail
        ceiling = float(_auc_gauc(cols["pattern"][ev].astype(np.float32), cols["labels"][ev, 0],
                                  cols["user"][ev])[1])
        for mode, L, n in configs:
            if (seed, mode, L, n, d) in done:
                rows.append(done[(seed, mode, L, n, d)])
                log(f"  quality {mode} L={L} n={n} seed={seed}: from {rows_path}")
                continue
            t0 = time.perf_counter()
            cap = 1 << int(math.ceil(math.log2(cols["user"].size * 1.5)))
            task = M.MARMRankingTask(_cfg(mode, L, n, d, capacity=cap, tower_features=tower_features), info,
                                     history=hist)
            tr = task.transform()

            def make(idx_list):
                return [M.pad_batch(tr.map_batch(M.stream_records(cols, i)), batch) for i in idx_list]

            train_b = make(M.round_batches(cols["user"], cols["time_ms"], batch, train_r, stagger=True, seed=seed))
            all_b = make(M.round_batches(cols["user"], cols["time_ms"], batch))
            n_eval_b = len(M.round_batches(cols["user"], cols["time_ms"], batch, eval_r))
            tx = optax.adam(lr)
            state, shardings = steps_lib.build_train_state(task, tx, partitioner, seed, train_b[0])
            step = jax.jit(steps_lib.train_step_fn(task, tx), donate_argnums=0)
            losses = []
            for _ in range(epochs):
                for b in train_b:  # padded rows (valid False) are neither trained on nor written
                    state, m = step(state, b)
                    losses.append(m["loss"])
            losses = [float(x) for x in jax.device_get(losses)]
            t_train = time.perf_counter() - t0
            serve = task.jitted("serve")
            # serving: the eval rounds continue the stream on the training cache (stale entries + new writes)
            out, _ = M.stream_scores(task, state.params, state.model_state, all_b[-n_eval_b:], jit_fn=serve)
            auc, gauc = _auc_gauc(out["logits"][:, 0], out["labels"][:, 0], out["user_id"])
            row = {"seed": seed, "mode": mode, "L": L, "n": n, "d": d, "auc": auc, "gauc": gauc,
                   "logloss": float(out["logloss"][:, 0].mean()), "train_loss_first": float(np.mean(losses[:5])),
                   "train_loss_last": float(np.mean(losses[-5:])), "train_steps": len(losses),
                   "flops_per_sample": M.sequence_flops(n, d, L, 4, mode),
                   "cache_values_per_user": M.cache_values_per_user(n, d, L, mode),
                   "eval_hit_rate": float(out["cache_hits"].sum() / max(out["cache_reads"].sum(), 1)),
                   "gauc_ceiling": ceiling}
            if "marm_cache" in state.model_state:
                # refreshed: every entry recomputed under the final parameters (= the exact causal Transformer)
                empty = {"marm_cache": state.model_state["marm_cache"].clear().reset_stats()}
                fresh, _ = M.stream_scores(task, state.params, empty, all_b, jit_fn=serve)
                k = out["logits"].shape[0]
                f_logits, f_labels, f_users = fresh["logits"][-k:], fresh["labels"][-k:], fresh["user_id"][-k:]
                fa, fg = _auc_gauc(f_logits[:, 0], f_labels[:, 0], f_users)
                row.update(auc_refreshed=fa, gauc_refreshed=fg, staleness_gauc_cost=fg - gauc,
                           stale_logit_mean_abs=float(np.abs(f_logits - out["logits"]).mean()))
            row["seconds"] = time.perf_counter() - t0
            row["train_seconds"] = t_train
            rows.append(row)
            if rows_path is not None:
                with open(rows_path, "a") as f:
                    f.write(json.dumps(row, default=float) + "\n")
            log(f"  quality {mode} L={L} n={n} seed={seed}: gauc={gauc:.4f} auc={auc:.4f}"
                + (f" refreshed={row['gauc_refreshed']:.4f}" if "gauc_refreshed" in row else "")
                + f" ({row['seconds']:.0f}s)")
    return rows


# ============================================================================================ plot

def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(17, 5))
    q = result.get("quality", [])
    # (a) quality vs cache size, FLOPs annotated
    a = ax[0]
    styles = {"kv_fresh1": ("o", "-"), "kv": ("^", "--"), "h": ("D", "-."), "none": ("s", ":")}
    names = {"kv_fresh1": "MARM kv_fresh1", "kv": "MARM kv (all cached)", "h": "MARM h",
             "none": "no cache (recompute)"}
    for mode in ("kv_fresh1", "kv", "h", "none"):
        rows = [r for r in q if r["mode"] == mode]
        for L in sorted({r["L"] for r in rows}):
            pts: dict = {}
            for r in rows:
                if r["L"] == L:
                    pts.setdefault(r["n"], []).append(r)
            ns = sorted(pts)
            d = pts[ns[0]][0]["d"]
            x = [n * L * 2 * d for n in ns]  # the n·L·2d "cache size" of an L-layer K/V cache
            y = [float(np.mean([r["gauc"] for r in pts[n]])) for n in ns]
            marker, ls = styles[mode]
            a.plot(x, y, marker=marker, linestyle=ls, label=f"{names[mode]} L={L}",
                   fillstyle="none" if mode == "none" else "full")
            for xi, yi, n in zip(x, y, ns):
                f = pts[n][0]["flops_per_sample"]
                a.annotate(f"n={n}, {f / 1e3:.0f}k", (xi, yi), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ceil = [r["gauc_ceiling"] for r in q if "gauc_ceiling" in r]
    if ceil:
        a.axhline(float(np.mean(ceil)), color="gray", linestyle="--", linewidth=0.8, label="generator ceiling")
    a.set_xscale("log")
    a.set_xlabel("cache size n x L x 2d (values per user of an L-layer K/V cache)")
    a.set_ylabel("GAUC (is_click, held-out rounds)")
    a.set_title("quality vs cache size (annotated: FLOPs/sample)")
    a.legend(fontsize=6)
    # (b) FLOPs vs effective depth
    b = ax[1]
    fl = result["flops"]
    d0 = max(r["d"] for r in fl)
    n0 = 256 if any(r["n"] == 256 for r in fl) else max(r["n"] for r in fl if r["n"] <= 512)
    for mode, label in (("kv", "MARM, all K/V cached"), ("kv_fresh1", "MARM, layer 1 fresh + cached K/V"),
                        ("h", "MARM, cached layer outputs"), ("none", "no cache (causal recompute)")):
        rows = sorted((r for r in fl if r["mode"] == mode and r["n"] == n0 and r["d"] == d0), key=lambda r: r["L"])
        b.plot([r["L"] for r in rows], [r["flops"] for r in rows], marker="o", label=label)
    one = next(r["flops"] for r in fl if r["mode"] == "h" and r["L"] == 1 and r["n"] == n0 and r["d"] == d0)
    b.axhline(one, color="gray", linestyle="--", linewidth=0.8, label="one target-attention layer with projections")
    b.set_yscale("log")
    b.set_xlabel("effective depth L")
    b.set_ylabel("forward FLOPs per sample (sequence module)")
    b.set_title(f"FLOPs vs depth (n={n0}, d={d0})")
    b.legend(fontsize=7)
    # (c) FLOPs vs cache size (B1)
    c = ax[2]
    for mode in ("kv", "kv_fresh1", "h", "none"):
        rows = [r for r in fl if r["mode"] == mode and r["d"] == d0]
        c.scatter([r["cache_size_Lnd"] for r in rows], [r["flops"] for r in rows], s=12, label=mode)
    c.set_xscale("log")
    c.set_yscale("log")
    c.set_xlabel("cache size L x n x d")
    c.set_ylabel("forward FLOPs per sample")
    c.set_title(f"FLOPs vs cache size (d={d0}; grid over L, n)")
    c.legend(fontsize=7)
    fig.suptitle(f"MARM cache scaling ({result['machine']['devices']}, load {result['machine']['load_average_1min']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================================ entry

_SECTION_KEYS = {"check": "flops_check", "latency": "latency"}  # grid section -> result key


def _section_setting(g: dict, sec: str) -> dict:
    """What a section's rows depend on (JSON-comparable): its configurations, and batch / repeats for latency."""
    out = {"configs": [list(c) for c in g[sec]]}
    if sec == "latency":
        out.update(batch=g["latency_batch"], repeats=g["latency_repeats"])
    return out


def _load_sections(path, g: dict, log) -> dict:
    """Finished non-quality sections of an earlier, interrupted run (``{"flops_check": {...}, "latency": {...}}``)
    whose configurations equal this grid's; anything unreadable or from another grid is ignored (and logged)."""
    if path is None or not path.exists():
        return {}
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log(f"marm bench: {path}: unreadable ({e}); those sections are measured again")
        return {}
    keep = {}
    for sec, key in _SECTION_KEYS.items():
        entry = done.get(key)
        if not isinstance(entry, dict) or "rows" not in entry:
            continue
        if entry.get("setting") != _section_setting(g, sec):
            log(f"marm bench: {path}: {key} was measured with another setting; measured again")
            continue
        keep[key] = entry
    return keep


def run(small: bool = True, out_dir: str | pathlib.Path | None = "benchmarks/results", name: str | None = None,
        sections=("flops", "check", "latency", "quality"), log=print, grid: str | None = None) -> dict:
    """Runs the benchmark (``small``: minutes on 2 CPU cores) and writes ``<out_dir>/<name>.json`` and ``.png``
    (``name`` defaults to ``marm_<grid>`` -- ``marm_small`` / ``marm_medium`` / ``marm`` for the full grid;
    ``out_dir=None`` writes nothing). ``grid`` ("small" | "medium" | "full") overrides ``small``. With an
    ``out_dir``, quality rows are appended to ``<name>.quality.jsonl`` as they finish and the finished cross-check
    and latency sections are kept in ``<name>.sections.json``; a rerun resumes from both (delete them to start
    over). Returns the result dict."""
    grid = grid or ("small" if small else "full")
    if grid not in GRIDS:
        raise ValueError(f"marm bench: grid must be one of {sorted(GRIDS)}, got {grid!r}")
    g = GRIDS[grid]
    stem = name or {"small": "marm_small", "medium": "marm_medium", "full": "marm"}[grid]
    rows_path = None
    if out_dir is not None:
        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
        rows_path = pathlib.Path(out_dir) / f"{stem}.quality.jsonl"
    t0 = time.perf_counter()
    res = {"benchmark": "marm", "grid_name": grid, "small": grid == "small", "machine": _machine(), "grid": {
        k: v for k, v in g.items() if k not in ("check", "latency", "quality")}}
    res["flops"] = flops_grid(g["flops_L"], g["flops_n"], g["flops_d"])
    # finished sections are kept in <name>.sections.json, so a rerun after an interruption goes straight on to
    # the quality rows (which resume from their own file); reused only for the same grid configurations
    done_path = None if out_dir is None else pathlib.Path(out_dir) / f"{stem}.sections.json"
    done = _load_sections(done_path, g, log)
    for sec, title, fn in (
            ("check", "FLOPs cross-check (analytic / traced dots / XLA)", lambda: flops_check(g["check"])),
            ("latency", "serve latency",
             lambda: latency(g["latency"], g["latency_batch"], g["latency_repeats"], log=log))):
        if sec not in sections:
            continue
        key = _SECTION_KEYS[sec]
        if key in done:
            log(f"marm bench: {title}: {len(done[key]['rows'])} rows from {done_path} (measured "
                f"{done[key]['when']}; delete the file to measure again)")
            res[key] = done[key]["rows"]
            res.setdefault("sections_reused", {})[key] = done[key]["when"]  # measured by an earlier run, then
            continue
        log(f"marm bench: {title}")
        res[key] = fn()
        if done_path is not None:
            done[key] = {"setting": _section_setting(g, sec), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "rows": res[key]}
            done_path.write_text(json.dumps(done, indent=1, default=float))
    if "quality" in sections:
        log("marm bench: quality on the synthetic stream")
        prev = jax.config.read("jax_disable_most_optimizations")
        jax.config.update("jax_disable_most_optimizations", bool(g["fast_compile"]))  # tiny models: compile-bound
        try:
            res["quality"] = quality(g["quality"], g["stream"], d=g["quality_d"], eval_rounds=g["eval_rounds"],
                                     epochs=g["epochs"], batch=g["batch"], lr=g["lr"], seeds=g["seeds"], log=log,
                                     rows_path=rows_path)
        finally:
            jax.config.update("jax_disable_most_optimizations", prev)
    res["machine"]["load_average_1min_end"] = _machine()["load_average_1min"]
    res["wall_seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float))
        if "quality" in res:
            plot(res, out / f"{stem}.png")
        res["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.png")]
    return res
