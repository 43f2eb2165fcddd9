"""MARM (model ``marm``, task ``marm_ranking``): exactness of cached incremental scoring against the full causal
Transformer under frozen parameters (kv and h caches, with read-time label features), the oracle is
``TransformerStack``, the miss path, batch-snapshot semantics, FLOPs (analytic == traced matmuls, XLA cross-check,
flat-vs-linear in depth), one engine train step with the cache in the state and a decreasing loss, staleness when
parameters move."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import load_script

from jaxrec.config import ConfigError
from jaxrec.data.catalog import DatasetInfo
from jaxrec.data.errors import DataError
from jaxrec.kernels.metrics import MetricAccumulator
from jaxrec.models import marm as M
from jaxrec.nn.transformer import TransformerStack
from jaxrec.parallel.mesh import make_mesh
from jaxrec.parallel.partitioner import Partitioner
from jaxrec.train import steps as steps_lib

pytestmark = pytest.mark.usefixtures("fast_compile")  # tiny shapes: skip XLA optimisation passes

U, E, N, D, H, L = 8, 10, 4, 16, 2, 2  # users, events per user, history length, width, heads, layers


@pytest.fixture(scope="module", autouse=True)
def _rbg_prng():
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", old)


def _info(kind="impressions"):
    return DatasetInfo(name="synthetic", kind=kind, licence="", num_users=U, num_items=40, domain_names=(),
                       domain_item_ranges=None, split_sizes={}, unavailable_splits={}, drops={}, data_dir="",
                       metadata={"label_names": ("is_click", "long_view")})


def _cfg(mode="kv", layers=L, **task):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(name="marm", embed_dim=D, num_layers=layers, num_heads=H,
                                             cache_mode=mode, tower_hidden=(8,)))
    c.task = ml_collections.ConfigDict(dict(name="marm_ranking", history_len=N, cache_capacity=256, cache_ways=4,
                                            time_base_ms=0, **task))
    return c


@pytest.fixture(scope="module")
def stream():
    cols = M.synthetic_stream(num_users=U, events_per_user=E, num_items=40, num_categories=4, seed=0)
    hist = M.ExposureHistory.from_columns(cols["user"], cols["time_ms"], cols["video"],
                                          M.label_codes(cols["labels"], (0, 1)))
    return cols, hist


@pytest.fixture(scope="module")
def tasks(stream):
    _, hist = stream
    return {mode: M.MARMRankingTask(_cfg(mode), _info(), history=hist) for mode in M.CACHE_MODES}


@pytest.fixture(scope="module")
def rounds(stream, tasks):
    """One padded batch per round: round k = every user's k-th event (one event per user per batch)."""
    cols, _ = stream
    tr = tasks["kv"].transform()
    idx = M.round_batches(cols["user"], cols["time_ms"], U)
    assert len(idx) == E and all(len(i) == U for i in idx)
    return [M.pad_batch(tr.map_batch(M.stream_records(cols, i)), U) for i in idx]


def host_params(task, seed=0):
    """Random parameters made on the host (no init compilation): the same tree for every cache mode."""
    b = task.dummy_batch(2)
    shape = task.value_shape
    cached = None if shape is None else jnp.zeros((2, N) + shape)
    abstract = jax.eval_shape(lambda k: task.model.init(k, b, cached, jnp.zeros((2, N), bool)), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        names = [getattr(p, "key", "") for p in path]
        z = rng.standard_normal(s.shape).astype(np.float32)
        if names[-1] == "scale":
            return 1.0 + 0.1 * z
        if names[-1] in ("bias", "label_kv"):
            return 0.1 * z
        if names[-1] == "embedding":
            return z / np.sqrt(s.shape[-1])
        fan_in = s.shape[0] if names[-2] in ("query", "key", "value") else int(np.prod(s.shape[:-1]))
        return z / np.sqrt(fan_in)

    return jax.tree_util.tree_map_with_path(leaf, nn.meta.unbox(abstract["params"]))


@pytest.fixture(scope="module")
def params(tasks):
    return host_params(tasks["kv"])


def fresh_state(task):
    store = task.new_cache()
    return {} if store is None else {"marm_cache": store}


def stream_items(stream):
    cols, _ = stream
    items = cols["video"].reshape(U, E) + 1
    codes = M.label_codes(cols["labels"], (0, 1)).reshape(U, E)
    return items, codes


@pytest.fixture(scope="module")
def kv_stream(tasks, params, rounds):
    """The whole stream scored in causal order with writes (kv cache), once for several tests."""
    out, state = M.stream_scores(tasks["kv"], params, fresh_state(tasks["kv"]), rounds)
    return out, state


# ------------------------------------------------------------------------------------------- exactness

def _oracle(task, params, items, codes, window):
    f = jax.jit(lambda p, i, c: task.model.apply({"params": p}, i, c, jnp.ones(i.shape, bool), window,
                                                 method="oracle_states"))
    return np.asarray(f(params, items, codes))


@pytest.mark.parametrize("mode", ["kv", "kv_fresh1", "h"])
def test_cached_incremental_scoring_equals_full_recomputation(mode, tasks, params, rounds, stream, kv_stream):
    """Frozen parameters: streaming the exposures (each scored once, its per-layer results written, then read
    by later events) reproduces the L-layer causal Transformer over the whole stream (each position attending to
    its last n predecessors and itself), label features included."""
    task = tasks[mode]
    out, state = kv_stream if mode == "kv" else M.stream_scores(task, params, fresh_state(task), rounds)
    got = out["h_top"].reshape(E, U, D).transpose(1, 0, 2)  # rows are round-major
    items, codes = stream_items(stream)
    ref = _oracle(task, params, items, codes, N)
    assert np.max(np.abs(got - ref)) < 1e-5
    assert np.all(np.isfinite(out["logits"]))
    st = state["marm_cache"].stats_dict()
    reads = sum(int(np.sum(b["hist_mask"])) for b in rounds)
    assert st["reads"] == reads and st["hits"] == reads and st["misses"] == 0  # every history entry was written
    assert st["writes"] == U * E and st["occupancy"] <= U * E
    # truncation is real: the unwindowed Transformer differs from the n-window stream
    assert np.max(np.abs(_oracle(task, params, items, codes, None) - ref)) > 1e-3


def test_oracle_is_the_transformer_stack(params, stream):
    """Without label features, the reference equals jaxrec.nn.transformer.TransformerStack (pre-norm, LayerNorm,
    GELU FFN, final norm, causal) with the same parameters: MARM is a causal Transformer evaluated incrementally."""
    model = M.MARM(num_items=40, num_users=U, embed_dim=D, num_layers=L, num_heads=H, num_label_codes=0,
                   tower_hidden=(8,))
    p = {k: v for k, v in params.items() if k != "label_kv"}
    items, codes = stream_items(stream)
    ours = jax.jit(lambda p, i: model.apply({"params": p}, i, jnp.zeros_like(i), jnp.ones(i.shape, bool), None,
                                            method="oracle_states"))(p, items)
    stack = TransformerStack(num_heads=H, head_dim=D // H, mlp_dim=4 * D, num_layers=L, pre_norm=True, norm="layer",
                             ffn_kind="gelu", final_norm=True)
    h0 = np.asarray(params["item_embed"]["embedding"])[items]
    ref = jax.jit(lambda q, x: stack.apply({"params": q}, x, causal=True))(params["encoder"], h0)
    assert np.max(np.abs(np.asarray(ours) - np.asarray(ref))) < 1e-5


def test_no_cache_oracle_mode_matches_marm_when_nothing_is_truncated(tasks, params, rounds, kv_stream):
    """cache_mode="none" recomputes the Transformer over (history window, candidate) per request: equal to the
    cached model while every history item's own context fits in the window (rounds 0..n)."""
    fresh = tasks["none"].jitted("evaluate")
    kv_out, _ = kv_stream
    for k in range(N + 1):
        o = fresh(params, {}, rounds[k])
        np.testing.assert_allclose(np.asarray(o["h_top"]), kv_out["h_top"][k * U:(k + 1) * U], atol=1e-5)
    o = fresh(params, {}, rounds[E - 1])  # later rounds differ: the window truncates the history's contexts
    assert np.max(np.abs(np.asarray(o["h_top"]) - kv_out["h_top"][(E - 1) * U:])) > 1e-4


# ------------------------------------------------------------------------------------------- misses and order

def test_miss_path_is_defined_and_counted(tasks, params, rounds):
    """History entries never written: counted misses, finite outputs; with miss_policy="mask" they drop out of
    the attention, i.e. the score equals the score with no history at all."""
    task = tasks["kv"]
    batch = rounds[6]
    out, state = task.jitted("serve")(params, fresh_state(task), batch)
    st = state["marm_cache"].stats_dict()
    assert st["reads"] == int(np.sum(batch["hist_mask"])) > 0 and st["misses"] == st["reads"] and st["hits"] == 0
    assert np.all(np.isfinite(np.asarray(out["logits"]))) and int(np.sum(out["cache_hits"])) == 0
    no_hist = dict(batch, hist_mask=np.zeros_like(batch["hist_mask"]))
    ref = task.jitted("evaluate")(params, fresh_state(task), no_hist)
    np.testing.assert_allclose(np.asarray(out["h_top"]), np.asarray(ref["h_top"]), atol=1e-6)
    assert st["writes"] == U  # the scored rows were written


def test_reads_see_a_snapshot_of_the_batch_start(tasks, params, rounds, kv_stream):
    """Two events of one user in one step: the later one does not see the earlier one's write (spec §3 option
    2); evaluation reads without writing."""
    task = tasks["kv"]
    _, full = kv_stream
    b3, b4 = rounds[3], rounds[4]
    pair = M.pad_batch({k: np.concatenate([b3[k][:1], b4[k][:1]]) for k in b3 if k != "valid"}, U)
    # user 0's rounds 3 and 4 in one (padded) batch, on a store holding rounds 0..2
    state = {"marm_cache": full["marm_cache"].clear().reset_stats()}
    serve = task.jitted("serve")
    for k in range(3):
        _, state = serve(params, state, rounds[k])
    out, after = serve(params, state, pair)
    hits, reads = np.asarray(out["cache_hits"])[:2], np.asarray(out["cache_reads"])[:2]
    assert hits[0] == reads[0] == 3  # round 3 sees rounds 0..2
    assert reads[1] == 4 and hits[1] == 3  # round 4 misses round 3 (written by the same step) ...
    ev = task.jitted("evaluate")(params, after, pair)
    assert np.asarray(ev["cache_hits"])[:2].tolist() == [3, 4]  # ... which is in the store after the step
    assert after["marm_cache"].stats_dict()["writes"] == 3 * U + 2  # padded rows are not written
    ev2 = task.jitted("evaluate")(params, after, pair)
    assert after["marm_cache"].stats_dict()["writes"] == 3 * U + 2  # evaluation only reads
    acc = MetricAccumulator()
    task.accumulate(acc, jax.device_get(ev2), pair)
    assert {"auc/is_click", "gauc/is_click", "logloss/long_view", "gauc/mean", "cache/hit_rate"} <= set(acc.result())
    assert acc.result()["cache/hit_rate"] == 1.0


# ------------------------------------------------------------------------------------------- FLOPs

def test_flops_analytic_equals_traced_matmuls_and_matches_xla():
    """sequence_flops == the dot_general FLOPs of the traced program (exact); XLA's cost model (unrolled layers)
    is within the element-wise overhead above it (LayerNorm, softmax, exact GELU ~ O(d) per row)."""
    for mode, layers in (("kv", 1), ("kv", 2), ("kv_fresh1", 2), ("h", 2), ("none", 2)):
        m = M.MARM(num_items=50, num_users=10, embed_dim=32, num_layers=layers, num_heads=2, cache_mode=mode,
                   num_label_codes=4)
        a = M.sequence_flops(16, 32, layers, 4, mode)
        assert M.dot_sequence_flops(m, 16) == pytest.approx(a, rel=1e-9), mode
        if mode in ("kv", "none") and layers == 2:
            x = M.xla_sequence_flops(m, 16)
            assert 1.0 <= x / a <= 1.45, (mode, x / a)
    # the spec's worked example (n=256, d=64, L=4, r=4): causal recompute 168.7 MFLOPs exactly; the KV cache
    # 0.66 MFLOPs here vs the spec's 0.59 (+4d² + 4d per layer: the candidate's own K/V, see the docstring)
    assert M.sequence_flops(256, 64, 4, 4, "none") == pytest.approx(168.69e6, rel=1e-3)
    assert M.sequence_flops(256, 64, 4, 4, "kv") == pytest.approx(0.656e6, rel=1e-2)


def test_flops_flat_in_depth_with_cache_linear_without():
    """With the KV cache an extra layer costs one candidate row (independent of the history's own cost), so up
    to L = 8 layers cost less than ONE target-attention layer that projects the history per request (kv), or
    at most 1.3 such layers (kv_fresh1: one projected layer + cached ones); without a cache each layer
    recomputes n + 1 rows and n² attention: linear in L with an ~n-times larger slope."""
    n, d = 256, 64
    one_projected_layer = M.sequence_flops(n, d, 1, 4, "h")
    kv = [M.sequence_flops(n, d, k, 4, "kv") for k in range(1, 9)]
    kvf = [M.sequence_flops(n, d, k, 4, "kv_fresh1") for k in range(1, 9)]
    none = [M.sequence_flops(n, d, k, 4, "none") for k in range(1, 9)]
    assert max(kv) < one_projected_layer  # flat: 8 cached layers < 1 projected layer
    assert kvf[0] == one_projected_layer and max(kvf) < 1.3 * one_projected_layer  # 1 projected + 7 cached
    assert np.allclose(np.diff(none), none[0]) and np.allclose(np.diff(kv), kv[0])  # both exactly linear in L
    assert none[0] / kv[0] > n  # slope without cache > n x slope with cache
    assert M.cache_values_per_user(n, d, 4, "kv") == n * 4 * 2 * d
    assert M.cache_values_per_user(n, d, 4, "h") == n * 3 * d and M.cache_values_per_user(n, d, 1, "h") == 0
    assert M.cache_values_per_user(n, d, 4, "kv_fresh1") == n * 3 * 2 * d


# ------------------------------------------------------------------------------------------- training

def test_train_step_with_cache_in_state_and_loss_decreases(tasks, stream):
    """The engine's sharded train step (8 fake devices, state donated): the cache is written, read back on the
    next step (hit rate 0 -> 1 on a batch of consecutive events), and the loss decreases on a fixed batch."""
    cols, _ = stream
    task = tasks["kv_fresh1"]  # the default mode
    idx = np.concatenate([np.nonzero(cols["user"] == u)[0][:4] for u in range(2)])  # 2 users x rounds 0..3
    batch = task.transform().map_batch(M.stream_records(cols, idx))
    partitioner = Partitioner(make_mesh((("data", -1),)))
    tx = optax.adam(3e-2)
    state, shardings = steps_lib.build_train_state(task, tx, partitioner, 0, batch)
    assert isinstance(state.model_state["marm_cache"], type(task.new_cache()))
    step = steps_lib.make_train_step(task, tx, partitioner, shardings)
    hist = []
    for _ in range(12):
        state, m = step(state, partitioner.shard_inputs(batch))
        hist.append({k: float(v) for k, v in jax.device_get(m).items()})
    assert hist[0]["cache/hit_rate"] == 0.0 and hist[1]["cache/hit_rate"] == 1.0
    assert hist[-1]["cache/occupancy"] == len(idx)
    assert np.isfinite([h["loss"] for h in hist]).all() and hist[-1]["loss"] < 0.8 * hist[0]["loss"]
    assert task.train_flops_per_example() == pytest.approx(3 * task.forward_flops_per_example())


def test_staleness_grows_with_the_parameter_change(tasks, params, rounds):
    """Entries written under old parameters and read under new ones: zero difference for unchanged parameters,
    growing with the size of the change (the documented direction)."""
    task = tasks["kv"]
    direction = host_params(task, seed=1)
    res = {}
    for alpha in (0.0, 0.03, 0.3):
        new = jax.tree.map(lambda p, q: p + alpha * q, params, direction)
        res[alpha] = M.measure_staleness(task, params, new, fresh_state(task), rounds)
    assert res[0.0]["h_max_abs"] < 1e-5 and res[0.0]["param_delta"] == 0.0
    assert 0 < res[0.03]["h_mean_abs"] < res[0.3]["h_mean_abs"]
    assert 0 < res[0.03]["logit_mean_abs"] < res[0.3]["logit_mean_abs"]
    assert res[0.03]["param_delta"] < res[0.3]["param_delta"]


# ------------------------------------------------------------------------------------------- data and config

def test_exposure_history_is_strictly_earlier_and_times_are_validated():
    h = M.ExposureHistory.from_columns([1, 1, 1, 2], [10, 20, 20, 5], [7, 8, 9, 3], [1, 2, 3, 0])
    ids, times, codes, mask = h.lookup(np.array([1, 1, 2]), np.array([20, 21, 5]), 2)
    assert ids[0].tolist() == [0, 8] and mask[0].tolist() == [False, True]  # same-ms exposures excluded
    assert sorted(ids[1].tolist()) == [9, 10] and times[1].tolist() == [20, 20] and mask[1].all()
    assert not mask[2].any() and codes[0, 1] == 1
    tr = M.MARMTransform(h, 2, (0,), time_base_ms=100)
    with pytest.raises(DataError, match="time_ms"):
        tr.map_batch([{"user_id": 1, "video_id": 1, "time_ms": 20, "labels": np.array([1, 0])}])


def test_config_errors_are_early_and_name_the_key(stream):
    _, hist = stream
    with pytest.raises(ConfigError, match="impressions"):
        M.MARMRankingTask(_cfg(), _info("sequence"), history=hist)
    with pytest.raises(ConfigError, match="task.tasks"):
        M.MARMRankingTask(_cfg(tasks=("is_like",)), _info(), history=hist)
    with pytest.raises(ConfigError, match="task.cache_key"):
        M.MARMRankingTask(_cfg(cache_key="item"), _info(), history=hist)
    with pytest.raises(ValueError, match="cache_mode"):
        t = M.MARMRankingTask(_cfg("bogus"), _info(), history=hist)
        jax.eval_shape(lambda: t.model.init(jax.random.PRNGKey(0), t.dummy_batch(2), None, jnp.zeros((2, N), bool)))


def test_stream_evaluation_writes_the_cache_and_equals_static_without_one(tasks, params, stream):
    """``stream_evaluate``: a held-out tail scored in causal rounds with writes finds its in-period history in
    the cache (hit rate 1 here), where the engine's static evaluation misses it; without a cache the two
    protocols give the same metrics; every record is scored once."""
    cols, _ = stream
    head = M.stream_records(cols, np.nonzero(cols["time_ms"] < 6)[0])
    tail = M.stream_records(cols, np.nonzero(cols["time_ms"] >= 6)[0])
    for mode in ("kv", "none"):
        task = tasks[mode]
        # the cache as training would leave it: the head streamed with writes
        _, state = M.stream_evaluate(task, params, fresh_state(task), [("train", head)], U)
        res, _ = M.stream_evaluate(task, params, state, [("tail", tail)], U)
        assert res["tail"]["examples"] == len(tail)
        acc = M.metrics_lib.MetricAccumulator()
        tr = task.transform()
        for lo in range(0, len(tail), U):  # static: shuffled-order batches, reads only
            b = M.pad_batch(tr.map_batch(tail[lo:lo + U]), U)
            task.accumulate(acc, task.jitted("evaluate")(params, state, b), b)
        static = acc.result()
        if mode == "none":
            for k in ("auc/is_click", "gauc/is_click", "logloss/is_click", "logloss/long_view"):
                np.testing.assert_allclose(res["tail"][k], static[k], rtol=1e-5, err_msg=k)
        else:
            assert res["tail"]["cache/hit_rate"] == 1.0
            # static: only the head's entries are there; with N = 4, events at t = 6, 7, 8, 9 find 4, 3, 2, 1
            assert static["cache/hit_rate"] == pytest.approx(10 / 16)
            assert abs(res["tail"]["logloss/is_click"] - static["logloss/is_click"]) > 1e-6


def test_stream_table_means_over_seeds_and_marks_cacheless_rows(tmp_path):
    import json

    mod = load_script("experiments/marm_stream_table.py")

    def write(name, mode, g_static, g_stream, hits=(0.7, 0.97)):
        m = lambda g, h: {"gauc/is_click": g, "gauc/long_view": g, "auc/is_click": g, "cache/hit_rate": h}  # noqa
        (tmp_path / name).mkdir()
        (tmp_path / name / "stream_eval.json").write_text(json.dumps(
            {"cache_mode": mode, "static": {"test": m(g_static, hits[0])}, "stream": {"test": m(g_stream, hits[1])}}))

    write("a_s0", "kv", 0.60, 0.62)
    write("a_s1", "kv", 0.62, 0.64)
    write("a_sx", "kv", 0.0, 0.0)  # not a seed directory: ignored
    write("b_s0", "none", 0.61, 0.61, hits=(0.0, 0.0))
    t = mod.table(str(tmp_path), ["A = 1=a_s", "B=b_s"]).splitlines()
    assert t[2] == ("| A = 1 | 2 | 0.6100 ± 0.0141 | 0.6300 ± 0.0141 | 0.6100 ± 0.0141 | 0.6300 ± 0.0141 | "
                    "0.6100 ± 0.0141 | 0.6300 ± 0.0141 | 0.700 | 0.970 |")
    assert t[3] == "| B | 1 | 0.6100 | 0.6100 | 0.6100 | 0.6100 | 0.6100 | 0.6100 | — | — |"
