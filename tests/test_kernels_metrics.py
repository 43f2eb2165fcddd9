"""jaxrec.kernels.metrics against naive python references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels import metrics as M


def _ref_rank(pos, negs, valid, tie_w, margin):
    r = 1.0
    for c, ok in zip(negs, valid):
        if not ok:
            continue
        if c > pos + margin:
            r += 1
        elif c >= pos - margin:
            r += tie_w
    return r


def test_rank_against_negatives_c2dsr_rule():
    # C2DSR: rank = 1 + #{neg > gt + 1e-5}; ties (within 1e-5) favour the ground truth; duplicates count twice
    pos = np.array([1.0, 1.0, 0.5], np.float32)
    negs = np.array(
        [[2.0, 2.0, 1.0, 1.000001, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [0.6, 0.6, 0.6, 0.6, 0.6]], np.float32
    )
    np.testing.assert_array_equal(M.rank_against_negatives(pos, negs), [3.0, 1.0, 6.0])
    np.testing.assert_array_equal(M.rank_against_negatives(pos, negs, ties="pessimistic"), [5.0, 1.0, 6.0])
    np.testing.assert_array_equal(M.rank_against_negatives(pos, negs, ties="half"), [4.0, 1.0, 6.0])
    np.testing.assert_array_equal(M.rank_against_negatives(pos, negs, margin=0.0), [4.0, 1.0, 6.0])
    # all negatives masked -> rank 1
    np.testing.assert_array_equal(M.rank_against_negatives(pos, negs, np.zeros((3, 5), bool)), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        M.rank_against_negatives(pos, negs, ties="random")


def test_rank_and_metrics_random_vs_reference():
    rng = np.random.default_rng(0)
    b, n = 16, 40
    pos = rng.integers(0, 6, b).astype(np.float32)  # integer scores: many exact ties
    neg = rng.integers(0, 6, (b, n)).astype(np.float32)
    mask = rng.random((b, n)) < 0.8
    mask[3] = False
    f = jax.jit(M.sampled_ranking_metrics, static_argnames=("hr_ks", "ndcg_ks", "ties", "margin"))
    for ties, tw in (("optimistic", 0.0), ("half", 0.5), ("pessimistic", 1.0)):
        out = f(pos, neg, mask, ties=ties)
        want = np.array([_ref_rank(pos[i], neg[i], mask[i], tw, 1e-5) for i in range(b)])
        np.testing.assert_allclose(out["rank"], want)
        np.testing.assert_allclose(out["mrr"], 1 / want, rtol=1e-6)
        for k in (5, 10):
            np.testing.assert_allclose(
                out[f"ndcg@{k}"], [1 / math.log2(r + 1) if r <= k else 0.0 for r in want], rtol=1e-6
            )
        for k in (1, 5, 10):
            np.testing.assert_allclose(out[f"hr@{k}"], [float(r <= k) for r in want])
    assert sorted(out) == ["hr@1", "hr@10", "hr@5", "mrr", "ndcg@10", "ndcg@5", "rank"]
    # K beyond N: everything hits
    np.testing.assert_array_equal(M.hit_rate_at_k(out["rank"], n + 100), np.ones(b))


def test_rank_in_catalogue_with_exclusions():
    rng = np.random.default_rng(1)
    b, v, m = 6, 12, 4
    scores = rng.integers(0, 5, (b, v)).astype(np.float32)
    target = rng.integers(0, v, b)
    hist = rng.integers(0, v, (b, m))
    hist[0, :] = -1  # no history
    hist[1, 0] = target[1]  # target in history: still ranked
    hist[2, 2:] = -1
    xmask = np.zeros(v, bool)
    xmask[v - 1] = True  # e.g. the PAD item

    def ref(ties_w, margin, use_hist, use_mask):
        out = []
        for i in range(b):
            excl = set()
            if use_hist:
                excl |= {int(h) for h in hist[i] if h >= 0}
            if use_mask:
                excl |= set(np.nonzero(xmask)[0].tolist())
            excl.discard(int(target[i]))
            cand = [scores[i, j] for j in range(v) if j != target[i] and j not in excl]
            out.append(_ref_rank(scores[i, target[i]], cand, [True] * len(cand), ties_w, margin))
        return np.array(out)

    f = jax.jit(M.rank_in_catalogue, static_argnames=("exclude_pad_id", "ties", "margin"))
    for ties, tw in (("optimistic", 0.0), ("half", 0.5), ("pessimistic", 1.0)):
        np.testing.assert_allclose(f(scores, target, ties=ties), ref(tw, 1e-5, False, False))
        np.testing.assert_allclose(
            f(scores, target, xmask, hist, ties=ties, margin=0.0), ref(tw, 0.0, True, True)
        )
    # 0-padded history with pad id 0 (item 0 then never excluded)
    hist0 = np.where(hist < 0, 0, hist)
    got = M.rank_in_catalogue(scores, target, exclude_ids=hist0, exclude_pad_id=0)
    hist_bak = hist.copy()
    hist[:] = np.where(hist0 == 0, -1, hist0)
    np.testing.assert_allclose(got, ref(0.0, 1e-5, True, False))
    hist[:] = hist_bak
    # [B, V] exclusion mask
    bm = rng.random((b, v)) < 0.3
    want = []
    for i in range(b):
        cand = [scores[i, j] for j in range(v) if j != target[i] and not bm[i, j]]
        want.append(_ref_rank(scores[i, target[i]], cand, [True] * len(cand), 0.0, 1e-5))
    np.testing.assert_allclose(M.rank_in_catalogue(scores, target, bm), want)


def test_topk_hits_including_k_beyond_catalogue():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.2, 0.8, 0.6]], np.float32)
    target = np.array([2, 1])
    np.testing.assert_array_equal(M.topk_hits(scores, target, 1), [0.0, 0.0])
    np.testing.assert_array_equal(M.topk_hits(scores, target, 2), [1.0, 0.0])
    np.testing.assert_array_equal(M.topk_hits(scores, target, 100), [1.0, 1.0])
    # excluding the better items moves the target up; the target itself is never excluded
    np.testing.assert_array_equal(M.topk_hits(scores, target, 1, exclude_ids=np.array([[1, 2], [2, 3]])), [1.0, 0.0])
    # consistent with ranks when there are no ties
    rng = np.random.default_rng(2)
    s = rng.normal(size=(8, 10)).astype(np.float32)
    t = rng.integers(0, 10, 8)
    for k in (1, 3, 10, 50):
        np.testing.assert_array_equal(
            jax.jit(M.topk_hits, static_argnames="k")(s, t, k=k), M.hit_rate_at_k(M.rank_in_catalogue(s, t, margin=0.0), k)
        )


def _ref_auc(s, y, w=None):
    w = np.ones(len(s)) if w is None else w
    num = den = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if y[i] == 1 and y[j] == 0:
                den += w[i] * w[j]
                num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den if den > 0 else math.nan


def test_auc_vs_pairwise_reference():
    rng = np.random.default_rng(3)
    f = jax.jit(M.auc)
    for trial in range(3):
        n = 50
        s = rng.integers(0, 8, n).astype(np.float32) if trial < 2 else rng.normal(size=n).astype(np.float32)
        y = (rng.random(n) < 0.4).astype(np.int32)
        w = rng.uniform(0.1, 3.0, n).astype(np.float32)
        mask = rng.random(n) < 0.7
        np.testing.assert_allclose(f(s, y), _ref_auc(s, y), rtol=1e-5)
        np.testing.assert_allclose(M.auc(s, y, weights=w), _ref_auc(s, y, w), rtol=1e-5)
        np.testing.assert_allclose(M.auc(s, y, mask=mask), _ref_auc(s[mask], y[mask]), rtol=1e-5)
    # perfect, reversed, all tied
    np.testing.assert_allclose(M.auc([0.1, 0.2, 0.9], [0, 0, 1]), 1.0)
    np.testing.assert_allclose(M.auc([0.9, 0.2, 0.1], [0, 0, 1]), 0.0)
    np.testing.assert_allclose(M.auc([0.5, 0.5, 0.5], [0, 1, 1]), 0.5)
    # undefined
    assert np.isnan(M.auc([0.1, 0.2], [1, 1]))
    assert np.isnan(M.auc([0.1, 0.2], [0, 1], mask=[False, False]))


def _ref_gauc(s, y, u, w=None, mask=None):
    w = np.ones(len(s)) if w is None else w
    mask = np.ones(len(s), bool) if mask is None else mask
    num = den = 0.0
    for user in sorted(set(u.tolist())):
        idx = [i for i in range(len(s)) if u[i] == user and mask[i]]
        ys = y[idx]
        if len(idx) == 0 or ys.min() == ys.max():
            continue
        a = _ref_auc(s[idx], ys, w[idx])
        nu = w[idx].sum()
        num += nu * a
        den += nu
    return num / den if den > 0 else math.nan


def test_gauc_vs_reference():
    rng = np.random.default_rng(4)
    n = 60
    f = jax.jit(M.gauc)
    for trial in range(3):
        s = rng.integers(0, 5, n).astype(np.float32) if trial != 1 else rng.normal(size=n).astype(np.float32)
        y = (rng.random(n) < 0.4).astype(np.int32)
        u = rng.choice([3, 17, 42, 5, 99, 1000], n)  # arbitrary, non-dense ids
        y[u == 99] = 1  # a single-class user: skipped
        w = rng.uniform(0.5, 2.0, n).astype(np.float32)
        mask = rng.random(n) < 0.8
        np.testing.assert_allclose(f(s, y, u), _ref_gauc(s, y, u), rtol=1e-5)
        np.testing.assert_allclose(M.gauc(s, y, u, weights=w), _ref_gauc(s, y, u, w), rtol=1e-5)
        np.testing.assert_allclose(M.gauc(s, y, u, mask=mask), _ref_gauc(s, y, u, None, mask), rtol=1e-5)
    # per-user values
    auc_u, wu, valid, gid = M.grouped_auc(s, y, u)
    k = int(np.sum(np.asarray(gid) >= 0))
    assert k == len(set(u.tolist()))
    for slot in range(k):
        user = int(gid[slot])
        sel = u == user
        assert wu[slot] == sel.sum()
        if valid[slot]:
            np.testing.assert_allclose(auc_u[slot], _ref_auc(s[sel], y[sel]), rtol=1e-5)
        else:
            assert user == 99 or y[sel].min() == y[sel].max()
    # one user == plain AUC; nobody qualifies -> NaN
    np.testing.assert_allclose(M.gauc(s, y, np.zeros(n, np.int32)), _ref_auc(s, y), rtol=1e-5)
    assert np.isnan(M.gauc(s, np.ones(n), u))


def test_mae_rmse():
    p = np.array([1.0, 2.0, 4.0, 10.0], np.float32)
    t = np.array([1.5, 2.0, 2.0, 0.0], np.float32)
    m = np.array([1, 1, 1, 0], bool)
    np.testing.assert_allclose(M.mae(p, t, m), (0.5 + 0 + 2) / 3, rtol=1e-6)
    np.testing.assert_allclose(M.rmse(p, t, m), math.sqrt((0.25 + 4) / 3), rtol=1e-6)
    np.testing.assert_allclose(M.rmse(p, t), math.sqrt((0.25 + 4 + 100) / 4), rtol=1e-6)
    assert np.isnan(M.mae(p, t, np.zeros(4, bool)))


def test_metric_accumulator_padding_and_concat_mode():
    rng = np.random.default_rng(5)
    acc = M.MetricAccumulator()
    all_rank, all_s, all_y, all_u, all_err = [], [], [], [], []
    for step in range(3):
        b = 8
        valid = np.ones(b, bool)
        if step == 2:
            valid[5:] = False  # padded final batch
        pos = rng.normal(size=b).astype(np.float32)
        neg = rng.normal(size=(b, 20)).astype(np.float32)
        mets = M.sampled_ranking_metrics(jnp.asarray(pos), jnp.asarray(neg))
        acc.update({k: v for k, v in mets.items() if k != "rank"}, mask=jnp.asarray(valid), prefix="x/")
        all_rank.append(np.asarray(mets["rank"])[valid])
        s = rng.normal(size=b).astype(np.float32)
        y = (rng.random(b) < 0.5).astype(np.int32)
        u = rng.integers(0, 3, b)
        acc.add_auc("auc", jnp.asarray(s), y, mask=valid)
        acc.add_gauc("gauc", s, y, u, mask=valid)
        err = rng.normal(size=b)
        acc.add("rmse", err**2, valid, kind="rmse")
        acc.add("per_task", np.stack([err, 2 * err], 1), valid)  # [B] mask on [B, K] values
        all_s.append(s[valid])
        all_y.append(y[valid])
        all_u.append(u[valid])
        all_err.append(err[valid])
    res = acc.result()
    rank = np.concatenate(all_rank)
    assert acc.counts["x/mrr"] == len(rank) == 21 and acc.counts["auc"] == 21
    np.testing.assert_allclose(res["x/mrr"], np.mean(1 / rank), rtol=1e-6)
    np.testing.assert_allclose(res["x/hr@10"], np.mean(rank <= 10), rtol=1e-6)
    s, y, u, e = map(np.concatenate, (all_s, all_y, all_u, all_err))
    np.testing.assert_allclose(res["auc"], _ref_auc(s, y), rtol=1e-5)
    np.testing.assert_allclose(res["gauc"], _ref_gauc(s, y, u), rtol=1e-5)
    np.testing.assert_allclose(res["rmse"], np.sqrt(np.mean(e**2)), rtol=1e-6)
    np.testing.assert_allclose(res["per_task"], np.mean(1.5 * e), rtol=1e-6)
    # a name that never saw an unmasked example -> NaN; kind clash raises
    acc.add("empty", np.ones(3), np.zeros(3, bool))
    assert math.isnan(acc.result()["empty"])
    with pytest.raises(ValueError):
        acc.add("rmse", np.ones(2))
    acc.reset()
    assert acc.result() == {}
