"""jaxrec.serving.retrieval: per-interest top-K, merge + de-duplication, approximate recall, export, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.serving import retrieval as R

pytestmark = pytest.mark.usefixtures("fast_compile")


def _data(b=3, q=4, n=257, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(b, q, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32))


def _np_topk(scores, k):
    """Descending order, ties towards the lower index (lax.top_k's rule)."""
    order = np.lexsort((np.arange(scores.shape[-1]), -scores))
    return order[:k]


def test_topk_per_interest_exact_matches_numpy_chunked_or_not():
    u, e = _data()
    mask = np.ones(len(e), bool)
    mask[[0, 5, 100]] = False
    s0, i0 = R.topk_per_interest(u, e, 10, row_offset=2, item_mask=mask)
    s1, i1 = R.topk_per_interest(u, e, 10, row_offset=2, item_mask=mask, chunk_size=64)  # 257 = 4*64 + 1
    full = np.einsum("bqd,nd->bqn", u, e)
    full[:, :, ~mask] = -np.inf
    for b in range(u.shape[0]):
        for j in range(u.shape[1]):
            want = _np_topk(full[b, j], 10)
            np.testing.assert_array_equal(i0[b, j], want + 2)
            np.testing.assert_allclose(s0[b, j], full[b, j, want], rtol=1e-5)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s0, s1, rtol=1e-5)
    assert not np.isin(np.asarray(i0), [2, 7, 102]).any()  # masked rows never come back
    # [B, d] queries: one interest
    s2, i2 = R.topk_per_interest(u[:, 0], e, 3)
    assert s2.shape == i2.shape == (3, 3)


def _np_merge(scores, ids, k):
    best = {}
    for s, i in zip(scores.ravel(), ids.ravel()):
        if i >= 0 and (i not in best or s > best[i]):
            best[int(i)] = float(s)
    items = sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]
    out_i = [i for i, _ in items] + [-1] * (k - len(items))
    out_s = [s for _, s in items] + [-np.inf] * (k - len(items))
    return np.asarray(out_s), np.asarray(out_i)


def test_merge_dedup_matches_python_reference():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 12, size=(4, 3, 5)).astype(np.int32)  # many duplicates across interests
    ids[0, 1, 2] = -1  # empty slot
    ids[3] = 7  # one id everywhere
    scores = rng.normal(size=ids.shape).astype(np.float32)
    for k in (1, 6, 20):
        s, i = R.merge_dedup(scores, ids, k)
        for b in range(4):
            ws, wi = _np_merge(scores[b], ids[b], k)
            np.testing.assert_array_equal(i[b], wi)
            np.testing.assert_allclose(s[b], ws, rtol=1e-6)
    s, i = R.merge_dedup(scores, ids, 20)
    assert (np.asarray(i)[3, 1:] == -1).all() and np.isneginf(np.asarray(s)[3, 1:]).all()


def test_retrieve_full_quota_equals_brute_force_and_split_quota_matches_reference():
    u, e = _data(b=4, q=3, n=300, d=6, seed=2)
    for k in (1, 10):
        r = R.retrieve(u, e, k, quota="full", chunk_size=128)
        bs, bi = R.brute_force_max_topk(u, e, k)
        np.testing.assert_array_equal(r["ids"], bi)
        np.testing.assert_allclose(r["scores"], bs, rtol=1e-5)
        # the paper's serving quota: ceil(K / Q) items per interest, merged
        r = R.retrieve(u, e, k, quota="split")
        kq = math.ceil(k / 3)
        assert r["interest_ids"].shape == (4, 3, kq)
        full = np.einsum("bqd,nd->bqn", u, e)
        for b in range(4):
            lists = np.stack([_np_topk(full[b, j], kq) for j in range(3)])
            ws, wi = _np_merge(np.take_along_axis(full[b], lists, 1), lists, k)
            np.testing.assert_array_equal(r["ids"][b], wi)
            np.testing.assert_allclose(r["scores"][b], ws, rtol=1e-5)


def test_approximate_recall_is_reported_and_high(capsys):
    u, e = _data(b=8, q=2, n=4096, d=16, seed=3)
    exact = R.retrieve(u, e, 100, quota="full")["ids"]
    rec = {}
    for method in ("approx", "binned"):
        got = R.retrieve(u, e, 100, quota="full", method=method, recall_target=0.95)["ids"]
        rec[method] = float(R.recall(got, exact).mean())
    print(f"recall@100 vs exact (N=4096, backend {jax.default_backend()}): {rec}")
    # approx_max_k is an exact fallback off TPU; the binned TPU algorithm targets 0.95 on average
    assert rec["approx"] >= 0.95
    assert 0.85 <= rec["binned"] <= 1.0
    # chunked approximate retrieval stays close too
    got = R.retrieve(u, e, 100, quota="full", method="binned", chunk_size=1000)["ids"]
    assert float(R.recall(got, exact).mean()) >= 0.85
    assert "recall@100" in capsys.readouterr().out


def test_binned_max_k_exact_when_bins_cover_and_recall_matches_numpy():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 50)).astype(np.float32))
    v, i = R.binned_max_k(x, 10, recall_target=0.99)  # 10/0.01 bins >= 50 -> exact
    v2, i2 = jax.lax.top_k(x, 10)
    np.testing.assert_array_equal(i, i2)
    a = np.array([[1, 2, 3, -1], [4, 5, 6, 7]])
    ref = np.array([[3, 2, 9, -1], [8, 9, 10, 11]])
    np.testing.assert_allclose(R.recall(a, ref), [2 / 3, 0.0])
    np.testing.assert_allclose(R.recall(a, -np.ones((2, 3), int)), [1.0, 1.0])  # empty reference


def test_empty_catalogue_and_short_catalogue_never_nan_or_crash():
    u, _ = _data(b=2, q=3, d=4)
    empty = np.zeros((0, 4), np.float32)
    s, i = R.topk_per_interest(u, empty, 5)
    assert s.shape == (2, 3, 5) and (np.asarray(i) == -1).all() and np.isneginf(np.asarray(s)).all()
    for method in R.METHODS:
        r = R.retrieve(u, empty, 7, method=method, chunk_size=4)
        assert (np.asarray(r["ids"]) == -1).all() and not np.isnan(np.asarray(r["scores"])).any()
    s, i = R.brute_force_max_topk(u, empty, 3)
    assert (np.asarray(i) == -1).all()
    # K larger than the catalogue: every item once, then empty slots
    e = np.random.default_rng(5).normal(size=(4, 4)).astype(np.float32)
    r = R.retrieve(u, e, 10, quota="full", chunk_size=3)
    ids = np.asarray(r["ids"])
    assert (np.sort(ids[:, :4], axis=1) == np.arange(4)).all() and (ids[:, 4:] == -1).all()
    # jit with the empty table works too
    jit_r = jax.jit(lambda a, b: R.retrieve(a, b, 3)["ids"])(u, empty)
    assert (np.asarray(jit_r) == -1).all()


def test_bad_arguments_fail_early_with_clear_errors():
    u, e = _data(n=10)
    with pytest.raises(ValueError, match="k must be a positive int"):
        R.topk_per_interest(u, e, 0)
    with pytest.raises(ValueError, match="method"):
        R.topk_per_interest(u, e, 2, method="faiss")
    with pytest.raises(ValueError, match="item_table must be"):
        R.topk_per_interest(u, e[:, :3], 2)
    with pytest.raises(ValueError, match="interests must be"):
        R.topk_per_interest(u[0, 0], e, 2)
    with pytest.raises(ValueError, match="item_mask"):
        R.topk_per_interest(u, e, 2, item_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="recall_target"):
        R.retrieve(u, e, 2, method="approx", recall_target=0.0)


def test_export_user_tower_roundtrip_any_batch():
    w = jnp.asarray(np.random.default_rng(6).normal(size=(5, 2, 3)).astype(np.float32))

    def tower(ids, side):  # a toy tower: embedding lookup + side offset -> [B, 2, 3]
        return jnp.take(w, ids, axis=0, mode="clip").mean(axis=1) + side[:, :1, None].astype(jnp.float32)

    ids = np.array([[1, 2, 3], [0, 4, 4]], np.int32)
    side = np.ones((2, 3), np.int32)
    exp = R.export_user_tower(tower, ids, side)
    try:
        import flatbuffers  # noqa: F401  (jax.export serialisation needs it)

        loaded = R.load_user_tower(exp.serialize())
    except ImportError:
        loaded = exp  # serialisation unavailable here: check the exported (symbolic-batch) artefact itself
    for b in (1, 2, 5):
        i = np.tile(ids, (3, 1))[:b]
        sd = np.tile(side, (3, 1))[:b]
        np.testing.assert_allclose(loaded.call(i, sd), tower(i, sd), rtol=1e-6)
    with pytest.raises(ValueError, match="example argument"):
        R.export_user_tower(tower)
