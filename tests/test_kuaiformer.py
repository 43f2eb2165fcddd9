"""KuaiFormer: compression vs NumPy references, query-token causality, max-over-interests scoring, loss variants
vs a NumPy reference, streaming logQ, dense re-indexing and transforms, bad input, a real train step with the
loss decreasing, evaluation vs brute force, baselines, analytic FLOPs vs XLA, experiment configs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_script

from jaxrec.config import ConfigError
from jaxrec.data.catalog import DatasetInfo
from jaxrec.kernels import flops as flops_lib
from jaxrec.models import kuaiformer as KF
from jaxrec.nn.transformer import TransformerStack, llama_config
from jaxrec.parallel.mesh import make_mesh
from jaxrec.parallel.partitioner import Partitioner
from jaxrec.serving import retrieval as R
from jaxrec.train import steps as steps_lib

pytestmark = pytest.mark.usefixtures("fast_compile")

V = 40  # dense ids 0..V (0 pad, 1 OOV)
SMALL = dict(num_items=V, num_domains=3, embed_dim=16, side_dim=4, num_layers=2, num_heads=2, max_len=32,
             compress=((8, 2), (4, 2)), num_queries=3, dropout_rate=0.0)  # 32 -> 2 + 2 + 8 = 12 tokens


def _unbox(v):
    return nn.meta.unbox(v)


def _hist(rng, b, n, lengths):
    ids = np.zeros((b, n), np.int32)
    side = np.zeros((b, n), np.int32)
    for i, m in enumerate(lengths):
        if m:
            ids[i, n - m:] = rng.integers(FIRST, V + 1, size=m)
            side[i, n - m:] = rng.integers(0, 3, size=m)
    return jnp.asarray(ids), jnp.asarray(side)


FIRST = KF.FIRST_ITEM


@pytest.fixture(scope="module")
def small():
    model = KF.KuaiFormer(**SMALL)
    ids, side = _hist(np.random.default_rng(0), 4, 32, [32, 20, 5, 0])
    variables = _unbox(jax.jit(model.init)(jax.random.PRNGKey(0), ids, side))
    return model, variables, ids, side


# ------------------------------------------------------------------------------------------ compression

def test_shapes_256_to_55_tokens_and_k_interests():
    model = KF.KuaiFormer(num_items=100, num_domains=2, embed_dim=8, num_layers=1, num_heads=2, num_queries=6)
    ids = jax.ShapeDtypeStruct((3, 256), jnp.int32)
    variables = jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i, i), ids)
    tok, valid = jax.eval_shape(lambda v, i: model.apply(v, i, i, method="tokens"), variables, ids)
    assert tok.shape == (3, 55, 8) and valid.shape == (3, 55)
    out = jax.eval_shape(lambda v, i: model.apply(v, i, i), variables, ids)
    assert out.shape == (3, 6, 8)
    assert KF.compressed_length(256) == 55 and KF.compressed_length(64, ()) == 64
    shared = KF.KuaiFormer(num_items=100, embed_dim=8, num_layers=1, num_heads=2, share_compressor=True)
    p = jax.eval_shape(lambda i: shared.init(jax.random.PRNGKey(0), i), ids)["params"]
    assert "compressor" in p and "compressor_0" not in p and "compressor_0" in variables["params"]
    with pytest.raises(ValueError, match="more than max_len"):
        KF.compressed_length(100)


def _np_group_reference(tokens, valid, compress, enc):
    b, n, d = tokens.shape
    outs, vals = [], []
    for i in range(b):
        row, rv, start = [], [], 0
        for size, count in compress:
            for g in range(count):
                lo, hi = start + g * size, start + (g + 1) * size
                m = valid[i, lo:hi]
                h = enc(tokens[i, lo:hi])
                row.append(h[m].mean(0) if m.any() else np.zeros(d))
                rv.append(m.any())
            start += size * count
        row.extend(tokens[i, start:])
        rv.extend(valid[i, start:])
        outs.append(np.stack(row))
        vals.append(np.asarray(rv))
    return np.stack(outs), np.stack(vals)


def test_group_compress_matches_numpy_reference():
    """Group boundaries, masked means, fully padded groups (zero and invalid), raw tail passed through."""
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(4, 32, 5)).astype(np.float32)
    valid = np.zeros((4, 32), bool)
    for i, m in enumerate([32, 21, 9, 0]):  # 21: group 0 padded, group 1 partial; 9: only raw + one position
        valid[i, 32 - m:] = True
    compress = ((8, 2), (4, 2))

    def enc(x, v=None):  # position-wise nonlinearity: a mean of it is not the plain mean
        return np.tanh(x) * 2 + 1 if isinstance(x, np.ndarray) else jnp.tanh(x) * 2 + 1

    got, got_valid = KF.group_compress(jnp.asarray(tokens), jnp.asarray(valid), compress, [enc, enc])
    want, want_valid = _np_group_reference(tokens, valid, compress, enc)
    assert got.shape == (4, 12, 5)
    np.testing.assert_array_equal(got_valid, want_valid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[3, :4] == 0)  # empty history: every group token is zero


def test_compressor_equals_each_group_encoded_alone(small):
    """Model compression = each group's *real* tokens through its own bidirectional encoder, then the mean."""
    model, variables, ids, side = small
    valid = np.asarray(ids) != 0
    cases, start = [], 0  # (example, output slot, encoder, real positions of the group)
    for ci, (size, count) in enumerate(SMALL["compress"]):
        for g in range(count):
            lo = start + g * size
            for b in range(ids.shape[0]):
                pos = lo + np.flatnonzero(valid[b, lo:lo + size])
                cases.append((b, sum(c for _, c in SMALL["compress"][:ci]) + g, ci, pos))
        start += size * count

    @jax.jit
    def run(variables, ids, side):
        tok, tval = model.apply(variables, ids, side, method="tokens")
        emb = model.apply(variables, ids, side, method=lambda m, i, s: m.token_embed(i, s))
        refs = []
        for b, _, ci, pos in cases:
            if len(pos):  # padding stripped: the group's real tokens alone, at positions 0..m-1
                x = emb[b, pos][None]
                h = model.apply(variables, x, method=lambda mod, x, ci=ci: mod.compressors[ci](x, None, causal=False))
                refs.append(h[0].mean(0))
            else:
                refs.append(None)
        return tok, tval, emb, refs

    tok, tval, emb, refs = run(variables, ids, side)
    for (b, slot, _, pos), ref in zip(cases, refs):
        if ref is None:
            assert not tval[b, slot] and np.all(np.asarray(tok[b, slot]) == 0)
        else:
            assert tval[b, slot]
            np.testing.assert_allclose(tok[b, slot], ref, rtol=2e-4, atol=2e-5)
    assert any(ref is None for ref in refs) and any(0 < len(c[3]) < 8 and c[2] == 0 for c in cases)
    np.testing.assert_allclose(tok[:, 4:], np.asarray(emb)[:, 24:] * valid[:, 24:, None], rtol=1e-6)


def test_fully_padded_groups_are_masked_out_exactly(small):
    """A history shorter than the raw tail: the compressed model equals the uncompressed model over the tail
    (same weights; RoPE is relative, so the 4 masked group slots in front change nothing)."""
    model, variables, _, _ = small
    ids, side = _hist(np.random.default_rng(2), 4, 32, [5, 8, 1, 0])
    tail = KF.KuaiFormer(**{**SMALL, "max_len": 8, "compress": ()})
    params = {k: v for k, v in variables["params"].items() if not k.startswith("compressor")}
    u, u_tail = jax.jit(lambda v, p, i, s: (model.apply(v, i, s), tail.apply({"params": p}, i[:, 24:], s[:, 24:])))(
        variables, params, ids, side)
    np.testing.assert_allclose(u, u_tail, rtol=1e-4, atol=1e-5)
    # an empty history (all padding) and a history of length 1 stay finite
    assert np.isfinite(np.asarray(u)).all()  # rows 2, 3: a history of length 1 and an empty one


# ------------------------------------------------------------------------------------------ query tokens

@pytest.mark.parametrize("each_other", [True, False])
def test_query_tokens_causal_structure(small, each_other):
    model, variables, ids, side = small
    if not each_other:
        model = KF.KuaiFormer(**{**SMALL, "query_attend_each_other": False})
    fwd = jax.jit(model.apply)
    u = np.asarray(fwd(variables, ids, side))
    k = SMALL["num_queries"]
    j = 1
    p = jax.tree.map(lambda x: x, variables["params"])
    p["query_tokens"] = p["query_tokens"].at[j].add(1.0)
    u2 = np.asarray(fwd({"params": p}, ids, side))
    diff = np.abs(u2 - u).max(axis=(0, 2))  # per interest
    assert np.all(diff[:j] < 1e-6)  # q_j never reaches earlier interests
    assert diff[j] > 1e-3
    if each_other:
        assert np.all(diff[j + 1:] > 1e-4)  # later queries see q_j [P]
    else:
        assert np.all(diff[j + 1:] < 1e-6)  # isolated queries
    # any history token (an early, compressed one) reaches every interest
    ids3 = ids.at[0, 3].set(ids[0, 3] % V + 1)
    u3 = np.asarray(fwd(variables, ids3, side))
    assert np.all(np.abs(u3[0] - u[0]).max(axis=-1) > 1e-5) and k == u.shape[1]


def test_k1_uncompressed_equals_last_position_of_causal_stack():
    cfg = {**SMALL, "compress": (), "num_queries": 1, "max_len": 10}
    model = KF.KuaiFormer(**cfg)
    ids, side = _hist(np.random.default_rng(3), 3, 10, [10, 6, 1])
    stack = TransformerStack(**llama_config(16, 2, 2))

    @jax.jit
    def run(ids, side):
        variables = _unbox(model.init(jax.random.PRNGKey(1), ids, side))
        u = model.apply(variables, ids, side)
        emb = model.apply(variables, ids, side, method=lambda m, i, s: m.token_embed(i, s))
        valid = ids != 0
        q = jnp.broadcast_to(variables["params"]["query_tokens"][None], (3, 1, 16))
        seq = jnp.concatenate([emb * valid[..., None], q], axis=1)
        v_ext = jnp.concatenate([valid, jnp.ones((3, 1), bool)], axis=1)
        h = stack.apply({"params": variables["params"]["stack"]}, seq, v_ext, causal=True)
        return u[:, 0], h[:, -1]

    u, h = run(ids, side)
    np.testing.assert_allclose(u, h, rtol=1e-5, atol=1e-6)


def test_bad_ids_map_to_oov_and_stay_finite(small):
    model, variables, ids, side = small
    bad = ids.at[0, -1].set(V + 1000).at[1, -1].set(-7)
    oov = ids.at[0, -1].set(KF.OOV_ID).at[1, -1].set(KF.OOV_ID)
    bad_side = side.at[0, -2].set(99).at[1, -2].set(-5)
    fwd = jax.jit(model.apply)
    u_bad = fwd(variables, bad, bad_side)
    u_oov = fwd(variables, oov, side.at[0, -2].set(-1).at[1, -2].set(-1))
    assert np.isfinite(np.asarray(u_bad)).all()
    np.testing.assert_allclose(u_bad, u_oov, rtol=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        model.apply(variables, ids[:, :20], side[:, :20])


def test_dropout_impl_hash_same_parameters_other_masks(small):
    """``dropout_impl="hash"``: the same parameter tree and the same eval output; in training the masks differ
    from threefry's but keep the rate's scale (finite, same mean magnitude within noise)."""
    model, variables, ids, side = small
    hashed = model.clone(dropout_impl="hash", dropout_rate=0.3)
    three = model.clone(dropout_rate=0.3)
    hv = _unbox(jax.jit(hashed.init)(jax.random.PRNGKey(0), ids, side))
    assert jax.tree_util.tree_structure(hv) == jax.tree_util.tree_structure(variables)
    np.testing.assert_allclose(hashed.apply(variables, ids, side), model.apply(variables, ids, side), rtol=1e-6)
    rngs = {"dropout": jax.random.PRNGKey(4)}
    a = hashed.apply(variables, ids, side, train=True, rngs=rngs)
    b = three.apply(variables, ids, side, train=True, rngs=rngs)
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)
    assert 0.5 < float(jnp.abs(a).mean() / jnp.abs(b).mean()) < 2.0
    with pytest.raises(ValueError, match="impl"):
        model.clone(dropout_impl="bogus", dropout_rate=0.3).apply(variables, ids, side, train=True, rngs=rngs)


def test_score_is_max_over_interests():
    rng = np.random.default_rng(4)
    u = rng.normal(size=(3, 4, 5)).astype(np.float32)
    e = rng.normal(size=(6, 5)).astype(np.float32)
    want = np.array([[max(u[b, j] @ e[c] for j in range(4)) for c in range(6)] for b in range(3)])
    np.testing.assert_allclose(KF.interest_logits(u, e), want, rtol=1e-5)


# ------------------------------------------------------------------------------------------ task helpers

def fake_info(num_items=1000):
    return DatasetInfo(name="fake", kind="sequence", licence="", num_users=10, num_items=num_items,
                       domain_names=(), domain_item_ranges=None, split_sizes={}, unavailable_splits={}, drops={},
                       data_dir="", metadata={})


def make_cfg(model="kuaiformer", model_overrides=None, **task):
    if model == "kuaiformer":
        m = dict(name="kuaiformer", **{k: v for k, v in SMALL.items() if k != "num_items"})
        m.update(model_overrides or {})
    elif model == "two_tower":
        m = dict(name="two_tower", embed_dim=16, side_dim=4, num_domains=3, hidden=(32,), max_len=32,
                 dropout_rate=0.0)
    else:
        m = dict(name="sasrec", embed_dim=16, num_blocks=1, num_heads=2, max_len=32, dropout_rate=0.0)
    t = dict(name="kuaiformer_retrieval", logq="empirical", label_smoothing=0.1, smoothing="paper",
             temperature=0.1, normalize=True, remove_accidental_hits=True, min_history=8, seed=0,
             side_key="domains")
    t.update(task)
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(m)
    c.task = ml_collections.ConfigDict(t)
    c.train = ml_collections.ConfigDict(dict(batch_size=16, seed=0))
    c.eval = ml_collections.ConfigDict(dict(hr_ks=(5, 20), quota="split", method="exact", chunk_size=16,
                                            ties="half"))
    return c


def make_vocab():
    counts = np.zeros(1001, np.int64)
    counts[100:100 + V - 1] = np.arange(1, V)  # raw ids 100..138 present -> dense 2..40
    return KF.ItemVocab(counts)


def make_task(model="kuaiformer", model_overrides=None, **task):
    return KF.KuaiFormerTask(make_cfg(model, model_overrides, **task), fake_info(), vocab=make_vocab())


@pytest.fixture(scope="module")
def task_params():
    """Parameters of the small kuaiformer task (every loss/eval variant shares the layout)."""
    task = make_task()
    return _unbox(jax.jit(task.init)(jax.random.PRNGKey(0), train_batch(np.random.default_rng(0))))["params"]


def train_batch(rng, b=16, dup=True):
    ids, side = _hist(rng, b, 32, rng.integers(1, 33, size=b))
    target = rng.integers(FIRST, V + 1, size=b).astype(np.int32)
    if dup:
        target[1] = target[0]  # an accidental hit
    mask = np.ones(b, bool)
    mask[-1] = False
    vocab = make_vocab()
    return {"item_ids": ids, "side_ids": side, "target": jnp.asarray(target),
            "target_side": jnp.zeros(b, jnp.int32), "target_logq": jnp.asarray(vocab.log_q[target]),
            "mask": jnp.asarray(mask), "user_id": jnp.arange(b, dtype=jnp.int32)}


# ------------------------------------------------------------------------------------------ loss

def _np_log_softmax(v):
    m = v.max()
    return v - m - np.log(np.exp(v - m).sum())


def _np_loss(z, ids, mask, alpha, form):
    b = z.shape[0]
    per = []
    for r in range(b):
        if not mask[r]:
            continue
        keep = [c for c in range(b) if c == r or (mask[c] and ids[c] != ids[r])]
        lp = _np_log_softmax(z[r, keep])
        pos = keep.index(r)
        neg = [i for i in range(len(keep)) if i != pos]
        loss = -lp[pos]
        if alpha:
            if form == "standard":
                sm = -np.mean(lp[neg])
            else:
                sm = -np.mean(np.log1p(-np.exp(lp[neg])))
            loss = (1 - alpha) * loss + alpha * sm
        per.append(loss)
    return np.mean(per)


LOSS_VARIANTS = [("paper", 0.2, "empirical"), ("standard", 0.2, "empirical"), ("paper", 0.0, "none"),
                 ("standard", 0.1, "none"), ("paper", 0.0, "empirical"), ("standard", 0.0, "empirical")]


def test_loss_variants_match_numpy_reference(task_params):
    """Both Eq. 12 forms, with and without logQ, accidental hits and a masked row (one jitted call); the two
    forms agree at alpha = 0; a constant added to every log Q changes nothing."""
    tasks = [make_task(smoothing=f, label_smoothing=a, logq=q) for f, a, q in LOSS_VARIANTS]
    batch = train_batch(np.random.default_rng(5))
    params, state = task_params, {}

    @jax.jit
    def run(params, batch):
        out = [t.loss(params, state, batch, jax.random.PRNGKey(1)) for t in tasks]
        shifted = dict(batch, target_logq=batch["target_logq"] + 3.7)
        out_shift = tasks[1].loss(params, state, shifted, jax.random.PRNGKey(1))[0]
        u = tasks[0].user_vectors(params, state, batch["item_ids"], batch["side_ids"])
        return [(loss, m["inbatch_acc"]) for loss, (m, _) in out], u, out_shift

    got, u, got_shift = run(params, batch)
    assert abs(float(got[4][0]) - float(got[5][0])) < 1e-6  # alpha = 0: both forms are the plain loss
    assert abs(float(got_shift) - float(got[1][0])) < 1e-4
    u = np.asarray(u, np.float64)
    table = np.asarray(tasks[0].model.apply({"params": params}, method="item_table"), np.float64)
    e = table[np.asarray(batch["target"])]
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    z0 = np.einsum("bkd,cd->bkc", u, e).max(1) / tasks[0].temperature
    for (form, alpha, logq), (loss, acc) in zip(LOSS_VARIANTS, got):
        z = z0 - np.asarray(batch["target_logq"])[None, :] if logq != "none" else z0
        want = _np_loss(z, np.asarray(batch["target"]), np.asarray(batch["mask"]), alpha, form)
        np.testing.assert_allclose(loss, want, rtol=2e-4, err_msg=str((form, alpha, logq)))
        assert 0.0 <= float(acc) <= 1.0


def test_streaming_logq_matches_numpy_reference():
    task = make_task(logq="streaming", streaming_alpha=0.25)
    batch = train_batch(np.random.default_rng(7))
    state = task.init_logq_state(int(batch["target"].shape[0]))
    rows = V + 1
    last = np.full(rows, -1)
    gap = np.full(rows, float(np.asarray(state["gap"])[0]))
    rng = np.random.default_rng(8)
    fn = jax.jit(task._streaming_logq)
    for step in range(6):
        tgt = rng.integers(FIRST, FIRST + 6, size=5)
        tgt[0] = tgt[1]  # duplicate within a step
        mask = np.array([True, True, True, True, step % 2 == 0])
        logq, state = fn(state, jnp.asarray(tgt), jnp.asarray(mask))
        np.testing.assert_allclose(logq, -np.log(np.maximum(gap[tgt], 1.0)), rtol=1e-5)
        for x in set(tgt[mask].tolist()):
            if last[x] >= 0:
                gap[x] = 0.75 * gap[x] + 0.25 * (step - last[x])
            last[x] = step
        np.testing.assert_array_equal(state["last"], last)
        np.testing.assert_allclose(state["gap"], gap, rtol=1e-5)
    assert int(state["step"]) == 6


# ------------------------------------------------------------------------------------------ data

def test_item_vocab_dense_reindexing():
    counts = np.zeros(11, np.int64)
    counts[[3, 5, 9]] = [4, 1, 2]
    v = KF.ItemVocab(counts)
    assert v.num_items == 4
    np.testing.assert_array_equal(v.map([0, 3, 5, 9, 4, -1, 10, 11, 10**9]), [0, 2, 3, 4, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(np.exp(v.log_q[2:]), [4 / 7, 1 / 7, 2 / 7], rtol=1e-6)
    v2 = KF.ItemVocab(counts, min_count=2)  # id 5 (one occurrence) -> OOV, its count goes to the OOV row
    np.testing.assert_array_equal(v2.map([3, 5, 9]), [2, 1, 3])
    assert v2.counts[KF.OOV_ID] == 1


def _records():
    rng = np.random.default_rng(9)
    recs = []
    for u, n in enumerate([40, 12, 3, 1]):
        items = rng.integers(100, 140, size=n)
        recs.append({"user_id": u, "items": items, "domains": rng.integers(0, 3, size=n), "target": 120 + u,
                     "target_domain": 2})
    return recs


def test_train_transform_cuts_histories_and_targets():
    vocab = make_vocab()
    tr = KF.KuaiFormerTrainTransform(vocab, max_len=16, min_history=8, side_key="domains", seed=3)
    recs = _records()
    out = tr.map_batch(recs)
    cuts = tr.cuts(recs)
    np.testing.assert_array_equal(cuts, tr.cuts(recs))  # a pure function of the batch
    for b, (r, c) in enumerate(zip(recs, cuts)):
        seq = np.append(r["items"], r["target"])
        dom = np.append(r["domains"], r["target_domain"])
        assert min(8, len(seq) - 1) <= c <= len(seq) - 1
        h = seq[max(0, c - 16):c]
        assert out["target"][b] == vocab.map([seq[c]])[0]
        np.testing.assert_array_equal(out["item_ids"][b, 16 - len(h):], vocab.map(h))
        assert (out["item_ids"][b, :16 - len(h)] == 0).all()
        np.testing.assert_array_equal(out["side_ids"][b, 16 - len(h):], dom[max(0, c - 16):c])
        assert out["target_side"][b] == dom[c]
        assert out["target_logq"][b] == vocab.log_q[out["target"][b]]
    assert out["mask"].dtype == bool and out["item_ids"].shape == (4, 16)
    # another batch composition (another epoch's shuffle) draws other cuts for the long record
    others = [tr.cuts([recs[0], dict(recs[1], user_id=u)])[0] for u in range(50, 60)]
    assert len(set(others)) > 1
    ev = KF.KuaiFormerEvalTransform(vocab, 16, "domains").map_batch(recs)
    np.testing.assert_array_equal(ev["item_ids"][0], vocab.map(recs[0]["items"][-16:]))
    np.testing.assert_array_equal(ev["target"], vocab.map([120, 121, 122, 123]))


def test_in_vocab_cuts_pick_only_catalogue_targets_and_fall_back_when_none():
    vocab = make_vocab()  # raw 100..138 in the vocabulary, everything else OOV
    rng = np.random.default_rng(4)
    items = rng.integers(500, 900, size=60)  # OOV everywhere ...
    eligible = [20, 33, 47]  # ... except these positions (target = items[c], or the record's target at c = 60)
    items[eligible] = [101, 110, 120]
    rec = {"user_id": 7, "items": items, "domains": np.zeros(60, np.int64), "target": 130, "target_domain": 0}
    none = {"user_id": 8, "items": rng.integers(500, 900, size=30), "domains": np.zeros(30, np.int64),
            "target": 999, "target_domain": 0}
    tr = KF.KuaiFormerTrainTransform(vocab, max_len=16, min_history=25, side_key="domains", seed=1,
                                     cut_targets="in_vocab")
    seen = set()
    for u in range(200):  # other batch compositions draw other cuts
        batch = [rec, dict(none, user_id=1000 + u)]
        cuts = tr.cuts(batch)
        out = tr.map_batch(batch)
        assert cuts[0] in (33, 47, 60) and out["mask"][0]  # position 20 is below min_history
        assert 25 <= cuts[1] <= 30 and not out["mask"][1]  # nothing eligible: any cut, masked out
        seen.add(int(cuts[0]))
    assert seen == {33, 47, 60}
    plain = KF.KuaiFormerTrainTransform(vocab, max_len=16, min_history=25, side_key="domains", seed=1)
    assert not all(plain.cuts([rec, dict(none, user_id=1000 + u)])[0] in (33, 47, 60) for u in range(50))
    with pytest.raises(ValueError, match="cut_targets"):
        KF.KuaiFormerTrainTransform(vocab, max_len=16, cut_targets="bogus")
    with pytest.raises(ConfigError, match="task.cut_targets"):
        make_task(cut_targets="bogus")


def test_held_out_positions_cut_every_per_event_field():
    recs = _records()  # history lengths 40, 12, 3, 1
    for r in recs:
        r["timestamps"] = np.arange(len(r["items"])) * 10
    src = KF.HeldOutPositions(recs, 3)
    assert len(src) == 3 + 3 + 3 + 1 and src.skipped == 2  # the 1-event record cannot lose an event
    assert src[0] is recs[0] and src[9] is recs[3]
    for idx, (i, j) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]):
        r, e = recs[i], src[idx]
        n = len(r["items"])
        if j == 0:
            assert e is r
            continue
        np.testing.assert_array_equal(e["items"], r["items"][:n - j])
        np.testing.assert_array_equal(e["domains"], r["domains"][:n - j])
        np.testing.assert_array_equal(e["timestamps"], r["timestamps"][:n - j])
        assert e["target"] == r["items"][n - j] and e["target_domain"] == r["domains"][n - j]
        assert e["user_id"] == r["user_id"] and isinstance(e["target"], int)
    ev = KF.KuaiFormerEvalTransform(make_vocab(), 16, "domains").map_batch([src[i] for i in range(len(src))])
    assert ev["item_ids"].shape == (10, 16) and (ev["target"] >= 1).all()
    task = make_task()
    assert task.eval_source("valid", recs) is recs  # eval.positions = 1: the split itself
    cfg = make_cfg()
    cfg.eval.positions = 2
    t2 = KF.KuaiFormerTask(cfg, fake_info(), vocab=make_vocab())
    assert len(t2.eval_source("valid", recs)) == 2 + 2 + 2 + 1
    cfg.eval.positions = 0
    with pytest.raises(ConfigError, match="eval.positions"):
        KF.KuaiFormerTask(cfg, fake_info(), vocab=make_vocab())


# ------------------------------------------------------------------------------------------ training

def test_real_train_step_and_loss_decreases_on_a_small_batch():
    task = make_task(model_overrides={"num_layers": 1}, label_smoothing=0.1)
    part = Partitioner(make_mesh(devices=jax.devices()[:1]))
    batch = train_batch(np.random.default_rng(10))
    host = jax.tree.map(np.asarray, batch)
    import optax

    tx = optax.adam(3e-3)
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, host)
    step = steps_lib.make_train_step(task, tx, part, shardings)
    sharded = part.shard_inputs(host)
    losses = []
    for _ in range(20):
        state, m = step(state, sharded)
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0], losses
    assert float(m["inbatch_acc"]) > 0.5


def _np_eval(u, table, target, ks, nq):
    """Brute-force full ranking (ties half) and the per-interest quota protocol, catalogue = rows 2..V."""
    s = np.einsum("bkd,nd->bkn", u, table[FIRST:])
    smax = s.max(1)
    out = {}
    for b in range(len(target)):
        t = target[b] - FIRST
        beat = (smax[b] > smax[b, t]).sum()
        tied = (smax[b] == smax[b, t]).sum() - 1
        rank = 1 + beat + 0.5 * tied
        for k in ks:
            out.setdefault(f"full/hr@{k}", []).append(float(rank <= k))
            kq = -(-k // nq)
            lists = np.stack([_np_topk_desc(s[b, j], kq) for j in range(nq)])
            best = {}
            for j in range(nq):
                for i in lists[j]:
                    best[i] = max(best.get(i, -np.inf), s[b, j, i])
            top = [i for i, _ in sorted(best.items(), key=lambda x: (-x[1], x[0]))[:k]]
            out.setdefault(f"quota/hr@{k}", []).append(float(t in top))
    return {k: np.asarray(v) for k, v in out.items()}


def _np_topk_desc(x, k):
    return np.lexsort((np.arange(len(x)), -x))[:k]


def test_evaluate_matches_brute_force(task_params):
    task = make_task()
    rng = np.random.default_rng(11)
    batch = train_batch(rng, b=6, dup=False)
    variables = {"params": task_params}
    ev = {k: batch[k] for k in ("item_ids", "side_ids", "target")}
    ev["target"] = ev["target"].at[-1].set(KF.OOV_ID)  # an unseen target: a miss
    ev["valid"] = jnp.ones(6, bool)
    out, u, table = jax.jit(lambda p, ev: (task.evaluate(p, {}, ev),
                                           task.user_vectors(p, {}, ev["item_ids"], ev["side_ids"]),
                                           task.item_table(p)))(variables["params"], ev)
    u, table = np.asarray(u, np.float64), np.asarray(table, np.float64)
    want = _np_eval(u[:5], table, np.asarray(ev["target"])[:5], (5, 20), 3)
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(out[k])[:5], v, err_msg=k)
        assert float(out[k][5]) == 0.0
    np.testing.assert_array_equal(out["target_in_vocab"], [1, 1, 1, 1, 1, 0])
    for v in out.values():
        assert v.shape == (6,) and np.isfinite(np.asarray(v)).all()


def test_evaluate_exclude_history(task_params):
    """eval.exclude_history: the full rank equals the brute-force rank over the catalogue without the example's
    other history items; without the option the history items count."""
    task = make_task()
    task.exclude_history = True
    rng = np.random.default_rng(13)
    batch = train_batch(rng, b=6, dup=False)
    ev = {k: batch[k] for k in ("item_ids", "side_ids", "target")}
    ev["target"] = ev["target"].at[0].set(ev["item_ids"][0, -1])  # a re-watch: the target itself stays rankable
    out, u, table = jax.jit(lambda p, ev: (task.evaluate(p, {}, ev),
                                           task.user_vectors(p, {}, ev["item_ids"], ev["side_ids"]),
                                           task.item_table(p)))(task_params, ev)
    s = np.einsum("bkd,nd->bkn", np.asarray(u, np.float64), np.asarray(table, np.float64)).max(1)
    hist, tgt = np.asarray(ev["item_ids"]), np.asarray(ev["target"])
    for b in range(6):
        cand = [x for x in range(KF.FIRST_ITEM, s.shape[1]) if x != tgt[b] and x not in set(hist[b].tolist())]
        rank = 1 + np.sum(s[b, cand] > s[b, tgt[b]]) + 0.5 * np.sum(s[b, cand] == s[b, tgt[b]])
        np.testing.assert_allclose(float(out["full/mrr"][b]), 1.0 / rank, rtol=1e-4)
    task.exclude_history = False
    plain = jax.jit(lambda p, ev: task.evaluate(p, {}, ev))(task_params, ev)
    assert (np.asarray(plain["full/mrr"]) <= np.asarray(out["full/mrr"]) + 1e-7).all()


def test_catalogue_scan_empty_catalogue_and_bad_ids_in_the_task():
    u = jnp.ones((2, 3, 4))
    rank, s, i = KF._catalogue_scan(u, jnp.zeros((0, 4)), jnp.zeros(2), jnp.array([-1, 5]), 7, 16)
    np.testing.assert_array_equal(rank, [1.0, 1.0])
    assert s.shape == i.shape == (2, 3, 7) and (np.asarray(i) == -1).all()
    task = make_task()
    ids = jnp.asarray([[0, 5, V + 10, -3]])
    np.testing.assert_array_equal(KF._safe_ids(ids, task.num_items, KF.OOV_ID), [[0, 5, 1, 1]])


@pytest.mark.parametrize("chunk", [4, 7, 64])
def test_catalogue_scan_exclude_rows_matches_numpy(chunk):
    """``exclude_rows`` (the eval.exclude_history protocol): excluded rows neither beat the target nor are
    retrieved; the target's own row is never excluded; -1, repeats and out-of-range rows are ignored."""
    rng = np.random.default_rng(5)
    b, q, d, n, k = 3, 2, 4, 23, 5
    u = rng.normal(size=(b, q, d)).astype(np.float32)
    table = rng.normal(size=(n, d)).astype(np.float32)
    target = np.array([3, 10, -1])
    ex = np.array([[0, 1, 3, 3, -1, 22], [10, 5, 5, 40, -1, -1], [2, 4, 6, 8, 11, 13]])
    scores = np.einsum("bqd,nd->bqn", u, table)
    t = np.array([scores[i, :, target[i]].max() if target[i] >= 0 else 0.5 for i in range(b)], np.float32)
    rank, s, i = KF._catalogue_scan(jnp.asarray(u), jnp.asarray(table), jnp.asarray(t), jnp.asarray(target), k,
                                    chunk, exclude_rows=jnp.asarray(ex))
    for r in range(b):
        gone = {x for x in ex[r].tolist() if 0 <= x < n and x != target[r]}
        keep = np.array([j not in gone for j in range(n)])
        smax = scores[r].max(0)
        others = keep & (np.arange(n) != target[r])
        want = 1 + np.sum(smax[others] > t[r]) + 0.5 * np.sum(smax[others] == t[r])
        np.testing.assert_allclose(float(rank[r]), want, rtol=1e-6)
        for j in range(q):
            order = [x for x in np.argsort(-scores[r, j], kind="stable") if keep[x]][:k]
            np.testing.assert_array_equal(np.asarray(i[r, j]), order)
    rank0, _, _ = KF._catalogue_scan(jnp.asarray(u), jnp.asarray(table), jnp.asarray(t), jnp.asarray(target), k,
                                     chunk)
    assert (np.asarray(rank0) >= np.asarray(rank)).all() and (np.asarray(rank0) > np.asarray(rank)).any()


@pytest.mark.parametrize("model", ["two_tower", "sasrec"])
def test_baselines_train_and_evaluate_with_the_same_task(model):
    task = make_task(model)
    batch = train_batch(np.random.default_rng(12))

    @jax.jit
    def run(batch):
        params = task.init(jax.random.PRNGKey(3), batch)["params"]
        (loss, _), grads = jax.value_and_grad(lambda p: task.loss(p, {}, batch, jax.random.PRNGKey(0)),
                                              has_aux=True)(params)
        return loss, grads, task.user_vectors(params, {}, batch["item_ids"], batch["side_ids"])

    loss, grads, u = run(batch)
    assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert u.shape == (16, 1, 16)


def test_user_tower_export_and_catalogue_retrieval(task_params):
    task = make_task()
    batch = train_batch(np.random.default_rng(13), b=4)
    variables = {"params": task_params}
    tower = task.user_tower(variables["params"])
    exported = R.export_user_tower(tower, np.asarray(batch["item_ids"]), np.asarray(batch["side_ids"]))
    u = exported.call(np.asarray(batch["item_ids"]), np.asarray(batch["side_ids"]))
    np.testing.assert_allclose(u, tower(batch["item_ids"], batch["side_ids"]), rtol=1e-5, atol=1e-6)
    table, offset = task.catalogue(variables["params"])
    r = R.retrieve(u, table, 10, quota="full")
    ids = np.asarray(r["ids"])
    assert (ids >= FIRST).all() and (ids <= V).all()  # padding and OOV rows are never retrieved


# ------------------------------------------------------------------------------------------ FLOPs, configs

def test_analytic_flops_match_xla_on_a_tiny_unrolled_config():
    cfg = dict(num_items=50, num_domains=0, embed_dim=64, num_layers=2, num_heads=2, max_len=64,
               compress=((16, 2), (8, 2)), num_queries=2, dropout_rate=0.0)
    model = KF.KuaiFormer(**cfg)
    ids = jax.ShapeDtypeStruct((2, 64), jnp.int32)
    variables = _unbox(jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i), ids))
    xla = flops_lib.xla_flops(lambda v, i: model.apply(v, i), variables, ids)
    if xla is None:
        pytest.skip("backend has no cost model")
    analytic = 2 * KF.kuaiformer_forward_flops(64, 64, 2, 2, 2, cfg["compress"], causal_half=False)
    assert abs(xla - analytic) / analytic < 0.15, (xla, analytic)


def _experiment_module():
    return load_script("experiments/kuaiformer_kuairand1k.py")


def test_experiment_configs_build_their_models():
    mod = _experiment_module()
    expect = {"": ("kuaiformer", 6, 55), "k1": ("kuaiformer", 1, 55), "k8": ("kuaiformer", 8, 55),
              "hist64": ("kuaiformer", 1, 64), "hist256_uncompressed": ("kuaiformer", 1, 256),
              "hist256_compressed": ("kuaiformer", 1, 55), "no_logq": ("kuaiformer", 6, 55),
              "sasrec": ("sasrec", 1, 256), "two_tower": ("two_tower", 1, 1), "hist64,k6": ("kuaiformer", 6, 64),
              "k2,embedded": ("kuaiformer", 2, 64), "sasrec,embedded": ("sasrec", 1, 64),
              "hist256_uncompressed,frequent": ("kuaiformer", 1, 256), "hist64,ml100k": ("kuaiformer", 1, 64),
              "hist256_compressed,ml100k": ("kuaiformer", 1, 55), "hist256_uncompressed,ml100k": ("kuaiformer", 1, 256)}
    for arg, (name, k, tokens) in expect.items():
        cfg = mod.get_config(arg or None)
        task = KF.KuaiFormerTask(cfg, fake_info(), vocab=make_vocab())
        assert task.model_name == name
        if name == "kuaiformer":
            assert cfg.model.num_queries == k
            assert KF.compressed_length(cfg.model.max_len, cfg.model.compress) == tokens
        if arg == "no_logq":
            assert task.logq == "none"
        if arg.endswith("embedded"):
            assert cfg.data.name == "kuairand_embedded" and cfg.model.max_len == 64 and cfg.task.side_key == "tabs"
            assert task.side_key == ("tabs" if name == "kuaiformer" else None)  # SASRec has no side feature
        if arg.endswith("ml100k"):  # the history ablation on MovieLens: the variant's history length is kept
            assert cfg.data.name == "movielens-100k/seq" and task.side_key == "ratings" and task.min_history == 1
            assert cfg.model.num_domains == 6 and cfg.train.num_steps == mod.ML100K_STEPS and task.exclude_history
        if arg.endswith("frequent"):
            assert (task.cut_targets, task.eval_positions, cfg.task.min_item_count) == ("in_vocab", 4, 10)
        assert task.train_flops_per_example() > 0
    with pytest.raises(ValueError, match="unknown config arg"):
        mod.get_config("k6,bogus")
