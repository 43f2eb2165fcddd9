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
    got = jax.jit(
        lambda p, n: (
            M.rank_against_negatives(p, n),
            M.rank_against_negatives(p, n, ties="pessimistic"),
            M.rank_against_negatives(p, n, ties="half"),
            M.rank_against_negatives(p, n, margin=0.0),
            M.rank_against_negatives(p, n, jnp.zeros((3, 5), bool)),  # all negatives masked -> rank 1
        )
    )(pos, negs)
    for g, want in zip(got, ([3, 1, 6], [5, 1, 6], [4, 1, 6], [4, 1, 6], [1, 1, 1])):
        np.testing.assert_array_equal(g, np.asarray(want, np.float32))
    with pytest.raises(ValueError):
        M.rank_against_negatives(pos, negs, ties="random")


def test_rank_and_metrics_random_vs_reference():
    rng = np.random.default_rng(0)
    b, n = 16, 40
    pos = rng.integers(0, 6, b).astype(np.float32)  # integer scores: many exact ties
    neg = rng.integers(0, 6, (b, n)).astype(np.float32)
    mask = rng.random((b, n)) < 0.8
    mask[3] = False
    got = jax.jit(
        lambda p, n, m: {t: M.sampled_ranking_metrics(p, n, m, ties=t) for t in ("optimistic", "half", "pessimistic")}
    )(pos, neg, mask)
    for ties, tw in (("optimistic", 0.0), ("half", 0.5), ("pessimistic", 1.0)):
        out = got[ties]
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

    hist0 = np.where(hist < 0, 0, hist)
    bm = rng.random((b, v)) < 0.3
    tie_rules = (("optimistic", 0.0), ("half", 0.5), ("pessimistic", 1.0))

    @jax.jit
    def run(scores, target, xmask, hist, hist0, bm):
        out = {}
        for ties, _ in tie_rules:
            out[ties] = M.rank_in_catalogue(scores, target, ties=ties)
            out[ties + "/excl"] = M.rank_in_catalogue(scores, target, xmask, hist, ties=ties, margin=0.0)
        out["pad0"] = M.rank_in_catalogue(scores, target, exclude_ids=hist0, exclude_pad_id=0)
        out["bv"] = M.rank_in_catalogue(scores, target, bm)
        return out

    res = run(scores, target, xmask, hist, hist0, bm)
    for ties, tw in tie_rules:
        np.testing.assert_allclose(res[ties], ref(tw, 1e-5, False, False))
        np.testing.assert_allclose(res[ties + "/excl"], ref(tw, 0.0, True, True))
    # 0-padded history with pad id 0 (item 0 then never excluded)
    got = res["pad0"]
    hist_bak = hist.copy()
    hist[:] = np.where(hist0 == 0, -1, hist0)
    np.testing.assert_allclose(got, ref(0.0, 1e-5, True, False))
    hist[:] = hist_bak
    # [B, V] exclusion mask
    want = []
    for i in range(b):
        cand = [scores[i, j] for j in range(v) if j != target[i] and not bm[i, j]]
        want.append(_ref_rank(scores[i, target[i]], cand, [True] * len(cand), 0.0, 1e-5))
    np.testing.assert_allclose(res["bv"], want)


def test_topk_hits_including_k_beyond_catalogue():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.2, 0.8, 0.6]], np.float32)
    target = np.array([2, 1])
    rng = np.random.default_rng(2)
    s = rng.normal(size=(8, 10)).astype(np.float32)
    t = rng.integers(0, 10, 8)
    ks = (1, 3, 10, 50)

    @jax.jit
    def run(scores, target, s, t):
        rank = M.rank_in_catalogue(s, t, margin=0.0)
        return (
            [M.topk_hits(scores, target, k) for k in (1, 2, 100)],
            # excluding the better items moves the target up; the target itself is never excluded
            M.topk_hits(scores, target, 1, exclude_ids=jnp.array([[1, 2], [2, 3]])),
            [(M.topk_hits(s, t, k), M.hit_rate_at_k(rank, k)) for k in ks],
        )

    small, excl, pairs = run(scores, target, s, t)
    for got, want in zip(small, ([0, 0], [1, 0], [1, 1])):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(excl, [1.0, 0.0])
    for hits, hr in pairs:  # consistent with ranks when there are no ties
        np.testing.assert_array_equal(hits, hr)


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
    f = jax.jit(lambda s, y, w, m: (M.auc(s, y), M.auc(s, y, weights=w), M.auc(s, y, mask=m)))
    for trial in range(3):
        n = 50
        s = rng.integers(0, 8, n).astype(np.float32) if trial < 2 else rng.normal(size=n).astype(np.float32)
        y = (rng.random(n) < 0.4).astype(np.int32)
        w = rng.uniform(0.1, 3.0, n).astype(np.float32)
        mask = rng.random(n) < 0.7
        plain, weighted, masked = f(s, y, w, mask)
        np.testing.assert_allclose(plain, _ref_auc(s, y), rtol=1e-5)
        np.testing.assert_allclose(weighted, _ref_auc(s, y, w), rtol=1e-5)
        np.testing.assert_allclose(masked, _ref_auc(s[mask], y[mask]), rtol=1e-5)
    # perfect, reversed, all tied; undefined (one class, or everything masked)
    cases = jax.jit(
        lambda: (
            M.auc(jnp.array([0.1, 0.2, 0.9]), jnp.array([0, 0, 1])),
            M.auc(jnp.array([0.9, 0.2, 0.1]), jnp.array([0, 0, 1])),
            M.auc(jnp.array([0.5, 0.5, 0.5]), jnp.array([0, 1, 1])),
            M.auc(jnp.array([0.1, 0.2, 0.3]), jnp.array([1, 1, 1])),
            M.auc(jnp.array([0.1, 0.2, 0.3]), jnp.array([0, 1, 1]), mask=jnp.zeros(3, bool)),
        )
    )()
    np.testing.assert_allclose(cases[:3], [1.0, 0.0, 0.5])
    assert np.isnan(cases[3]) and np.isnan(cases[4])


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
    @jax.jit
    def run(s, y, u, w, mask):
        return {
            "plain": M.gauc(s, y, u),
            "weighted": M.gauc(s, y, u, weights=w),
            "masked": M.gauc(s, y, u, mask=mask),
            "grouped": M.grouped_auc(s, y, u),
            "one_user": M.gauc(s, y, jnp.zeros_like(u)),
            "nobody": M.gauc(s, jnp.ones_like(y), u),
        }

    for trial in range(3):
        s = rng.integers(0, 5, n).astype(np.float32) if trial != 1 else rng.normal(size=n).astype(np.float32)
        y = (rng.random(n) < 0.4).astype(np.int32)
        u = rng.choice([3, 17, 42, 5, 99, 1000], n)  # arbitrary, non-dense ids
        y[u == 99] = 1  # a single-class user: skipped
        w = rng.uniform(0.5, 2.0, n).astype(np.float32)
        mask = rng.random(n) < 0.8
        res = run(s, y, u, w, mask)
        np.testing.assert_allclose(res["plain"], _ref_gauc(s, y, u), rtol=1e-5)
        np.testing.assert_allclose(res["weighted"], _ref_gauc(s, y, u, w), rtol=1e-5)
        np.testing.assert_allclose(res["masked"], _ref_gauc(s, y, u, None, mask), rtol=1e-5)
    # per-user values
    auc_u, wu, valid, gid = map(np.asarray, res["grouped"])
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
    np.testing.assert_allclose(res["one_user"], _ref_auc(s, y), rtol=1e-5)
    assert np.isnan(res["nobody"])


def test_mae_rmse():
    p = np.array([1.0, 2.0, 4.0, 10.0], np.float32)
    t = np.array([1.5, 2.0, 2.0, 0.0], np.float32)
    m = np.array([1, 1, 1, 0], bool)
    got = jax.jit(
        lambda p, t, m: (M.mae(p, t, m), M.rmse(p, t, m), M.rmse(p, t), M.mae(p, t, jnp.zeros(4, bool)))
    )(p, t, m)
    want = [(0.5 + 0 + 2) / 3, math.sqrt((0.25 + 4) / 3), math.sqrt((0.25 + 4 + 100) / 4)]
    np.testing.assert_allclose(got[:3], want, rtol=1e-6)
    assert np.isnan(got[3])


def test_metric_accumulator_padding_and_concat_mode():
    rng = np.random.default_rng(5)
    acc = M.MetricAccumulator()
    metrics_fn = jax.jit(M.sampled_ranking_metrics)
    all_rank, all_s, all_y, all_u, all_err = [], [], [], [], []
    for step in range(3):
        b = 8
        valid = np.ones(b, bool)
        if step == 2:
            valid[5:] = False  # padded final batch
        pos = rng.normal(size=b).astype(np.float32)
        neg = rng.normal(size=(b, 20)).astype(np.float32)
        mets = metrics_fn(jnp.asarray(pos), jnp.asarray(neg))
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
