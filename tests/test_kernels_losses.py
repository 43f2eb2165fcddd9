"""jaxrec.kernels.losses against naive NumPy / python references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels import losses as L


def _log_softmax(v):
    v = np.asarray(v, np.float64)
    m = v.max()
    return v - m - np.log(np.exp(v - m).sum())


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_softmax_cross_entropy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=(3, 4))
    mask = rng.random((3, 4)) < 0.6
    mask[1] = False  # an all-masked row
    labels[~mask] = -100  # garbage where masked
    for a in (0.0, 0.1):
        per = np.zeros((3, 4))
        for i in range(3):
            for j in range(4):
                if mask[i, j]:
                    lp = _log_softmax(logits[i, j])
                    t = np.full(6, a / 6)
                    t[labels[i, j]] += 1 - a
                    per[i, j] = -(t * lp).sum()
        got = jax.jit(L.softmax_cross_entropy, static_argnames="reduction")(logits, labels, mask, a)
        np.testing.assert_allclose(got, per.sum() / mask.sum(), rtol=1e-5)
        np.testing.assert_allclose(L.softmax_cross_entropy(logits, labels, mask, a, reduction="none"), per, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(L.softmax_cross_entropy(logits, labels, mask, a, reduction="sum"), per.sum(), rtol=1e-5)
    # no mask: plain mean
    lab = np.abs(labels) % 6
    want = np.mean([-_log_softmax(logits[i, j])[lab[i, j]] for i in range(3) for j in range(4)])
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, lab), want, rtol=1e-5)


def test_softmax_cross_entropy_all_masked_is_zero_with_finite_grad():
    logits = jnp.ones((2, 5))
    m = jnp.zeros((2,), bool)
    assert float(L.softmax_cross_entropy(logits, jnp.array([0, 1]), m)) == 0.0
    g = jax.grad(lambda x: L.softmax_cross_entropy(x, jnp.array([0, 1]), m))(logits)
    assert np.all(np.isfinite(g)) and np.all(g == 0)
    with pytest.raises(ValueError):
        L.softmax_cross_entropy(logits, jnp.array([0, 1]), reduction="avg")


def _ref_sampled(q, pe, ne, plq, nlq, pid, nid, t, rm, mask, nmask=None):
    b = q.shape[0]
    out = np.zeros(b)
    for i in range(b):
        negs = ne if ne.ndim == 2 else ne[i]
        nl = None if nlq is None else (nlq if nlq.ndim == 1 else nlq[i])
        ni = None if nid is None else (nid if nid.ndim == 1 else nid[i])
        lg = [q[i] @ pe[i] / t - (0 if plq is None else plq[i])]
        for j in range(negs.shape[0]):
            if rm and ni is not None and ni[j] == pid[i]:
                continue
            if nmask is not None and not (nmask if nmask.ndim == 1 else nmask[i])[j]:
                continue
            lg.append(q[i] @ negs[j] / t - (0 if nl is None else nl[j]))
        out[i] = -_log_softmax(lg)[0]
    return out if mask is None else out[mask].mean() if mask.any() else 0.0, out


@pytest.mark.parametrize("per_row", [False, True])
def test_sampled_softmax_reference(per_row):
    rng = np.random.default_rng(1)
    b, n, d = 5, 6, 4
    q = rng.normal(size=(b, d)).astype(np.float32)
    pe = rng.normal(size=(b, d)).astype(np.float32)
    pid = rng.integers(0, 5, b)
    if per_row:
        ne = rng.normal(size=(b, n, d)).astype(np.float32)
        nid = rng.integers(0, 5, (b, n))
        nlq = np.log(rng.uniform(0.01, 0.5, (b, n))).astype(np.float32)
    else:
        ne = rng.normal(size=(n, d)).astype(np.float32)
        nid = rng.integers(0, 5, n)
        nlq = np.log(rng.uniform(0.01, 0.5, n)).astype(np.float32)
    plq = np.log(rng.uniform(0.01, 0.5, b)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1], bool)
    f = jax.jit(L.sampled_softmax_loss, static_argnames=("remove_accidental_hits", "reduction"))
    for rm in (True, False):
        want, per = _ref_sampled(q, pe, ne, plq, nlq, pid, nid, 0.5, rm, mask)
        got = f(q, pe, ne, plq, nlq, pid, nid, 0.5, rm, mask)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(
            L.sampled_softmax_loss(q, pe, ne, plq, nlq, pid, nid, 0.5, rm, reduction="none"), per, rtol=1e-5
        )
    # no correction, no ids
    want, _ = _ref_sampled(q, pe, ne, None, None, pid, None, 1.0, True, None)
    np.testing.assert_allclose(L.sampled_softmax_loss(q, pe, ne), np.mean(_), rtol=1e-5)
    # negative mask (padding negatives)
    nmask = rng.random(nid.shape) < 0.5
    want, _ = _ref_sampled(q, pe, ne, plq, nlq, pid, nid, 1.0, True, None, nmask)
    np.testing.assert_allclose(
        L.sampled_softmax_loss(q, pe, ne, plq, nlq, pid, nid, neg_mask=nmask), np.mean(_), rtol=1e-5
    )


def test_sampled_softmax_all_negatives_hit_and_all_masked():
    q = jnp.ones((2, 3))
    pe = jnp.ones((2, 3))
    ne = jnp.ones((4, 3))
    pid = jnp.array([7, 7])
    nid = jnp.full((4,), 7)
    loss = L.sampled_softmax_loss(q, pe, ne, pos_ids=pid, neg_ids=nid)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)  # only the positive is left
    g = jax.grad(lambda q: L.sampled_softmax_loss(q, pe, ne, pos_ids=pid, neg_ids=nid))(q)
    assert np.all(np.isfinite(g))
    assert float(L.sampled_softmax_loss(q, pe, ne, mask=jnp.zeros(2, bool))) == 0.0


def _ref_in_batch(logits, ids, logq, t, a, variant, mask, rm):
    b = logits.shape[0]
    out = np.zeros(b)
    for i in range(b):
        if mask is not None and not mask[i]:
            continue
        cols = [i]
        for c in range(b):
            if c == i:
                continue
            if mask is not None and not mask[c]:
                continue
            if rm and ids is not None and ids[c] == ids[i]:
                continue
            cols.append(c)
        z = np.array([logits[i, c] / t - (0 if logq is None else logq[c]) for c in cols])
        lp = _log_softmax(z)
        loss = -(1 - a) * lp[0]
        if len(cols) > 1 and a:
            if variant == "standard":
                loss += -(a / (len(cols) - 1)) * lp[1:].sum()
            else:
                loss += -(a / (len(cols) - 1)) * np.log(1 - np.exp(lp[1:])).sum()
        elif a:
            loss = -(1 - a) * lp[0]
        out[i] = loss
    m = np.ones(b, bool) if mask is None else mask
    return out[m].mean() if m.any() else 0.0


@pytest.mark.parametrize("variant", ["standard", "paper"])
def test_in_batch_softmax_reference(variant):
    rng = np.random.default_rng(2)
    b, d = 6, 4
    q = rng.normal(size=(b, d)).astype(np.float32)
    e = rng.normal(size=(b, d)).astype(np.float32)
    ids = np.array([3, 1, 3, 2, 1, 3])  # duplicates = accidental hits
    logq = np.log(rng.uniform(0.05, 0.5, b)).astype(np.float32)
    mask = np.array([1, 1, 1, 0, 1, 1], bool)
    logits = q @ e.T
    f = jax.jit(L.in_batch_softmax_loss, static_argnames=("smoothing", "remove_accidental_hits", "reduction"))
    for a in (0.0, 0.2):
        for rm in (True, False):
            for m in (None, mask):
                want = _ref_in_batch(logits, ids, logq, 0.7, a, variant, m, rm)
                got = f(q, e, ids, logq, 0.7, a, m, rm, smoothing=variant)
                np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=f"a={a} rm={rm} mask={m is not None}")
    # multi-interest max scoring through the logits form
    u = rng.normal(size=(b, 3, d)).astype(np.float32)
    mi = np.einsum("bkd,cd->bck", u, e).max(-1)
    want = _ref_in_batch(mi, ids, logq, 1.0, 0.1, variant, None, True)
    np.testing.assert_allclose(
        L.in_batch_softmax_from_logits(mi, ids, logq, label_smoothing=0.1, smoothing=variant), want, rtol=2e-5
    )


def test_in_batch_logq_is_shift_invariant_and_edge_cases():
    rng = np.random.default_rng(3)
    lg = rng.normal(size=(5, 5)).astype(np.float32)
    ids = np.arange(5)
    logq = rng.normal(size=5).astype(np.float32)
    a = L.in_batch_softmax_from_logits(lg, ids, logq)
    b = L.in_batch_softmax_from_logits(lg, ids, logq + 3.0)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # logQ loss == CE on shifted logits
    np.testing.assert_allclose(a, L.softmax_cross_entropy(lg - logq[None], ids), rtol=1e-5)
    # every row has the same item: nothing but the positive is left -> 0 loss, finite grads, any smoothing
    same = np.zeros(5, np.int32)
    for variant in ("standard", "paper"):
        val, g = jax.value_and_grad(
            lambda x: L.in_batch_softmax_from_logits(x, same, label_smoothing=0.3, smoothing=variant)
        )(jnp.asarray(lg))
        np.testing.assert_allclose(val, 0.0, atol=1e-6)
        assert np.all(np.isfinite(g))
        g = jax.grad(lambda x: L.in_batch_softmax_from_logits(x, ids, label_smoothing=0.3, smoothing=variant))(
            jnp.asarray(lg) * 50
        )
        assert np.all(np.isfinite(g))
    assert float(L.in_batch_softmax_from_logits(lg, ids, mask=np.zeros(5, bool))) == 0.0
    with pytest.raises(ValueError):
        L.in_batch_softmax_from_logits(lg, ids, smoothing="other")


def test_bce_and_bpr_reference():
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(4, 3)) * 30).astype(np.float32)  # large logits: stability
    y = (rng.random((4, 3)) < 0.5).astype(np.float32)
    m = rng.random((4, 3)) < 0.7
    pw = np.array([1.0, 2.0, 0.5], np.float32)

    def ref(x, y, pw):
        x = x.astype(np.float64)
        # log(1+exp(-x)) computed stably in float64
        sp_neg = np.logaddexp(0, -x)
        sp_pos = np.logaddexp(0, x)
        return pw * y * sp_neg + (1 - y) * sp_pos

    np.testing.assert_allclose(L.bce_with_logits(x, y, m, pw), ref(x, y, pw)[m].mean(), rtol=1e-5)
    np.testing.assert_allclose(L.bce_with_logits(x, y), ref(x, y, 1.0).mean(), rtol=1e-5)
    xs = np.array([0.3, -1.2], np.float32)
    np.testing.assert_allclose(
        L.bce_with_logits(xs, [1.0, 0.0]),
        np.mean([-np.log(_sigmoid(0.3)), -np.log(1 - _sigmoid(-1.2))]),
        rtol=1e-5,
    )
    assert np.isfinite(float(L.bce_with_logits(np.float32([1e4, -1e4]), [0.0, 1.0])))
    assert float(L.bce_with_logits(x, y, np.zeros_like(m))) == 0.0

    pos = rng.normal(size=4).astype(np.float32)
    neg = rng.normal(size=(4, 5)).astype(np.float32)
    bm = np.array([1, 0, 1, 1], bool)
    want = np.mean([-np.log(_sigmoid(pos[i] - neg[i, j])) for i in range(4) if bm[i] for j in range(5)])
    np.testing.assert_allclose(L.bpr_loss(pos, neg, bm), want, rtol=1e-5)
    np.testing.assert_allclose(L.bpr_loss(pos, neg[:, 0]), np.mean(-np.log(_sigmoid(pos - neg[:, 0]))), rtol=1e-5)


def test_info_nce_soft_targets():
    rng = np.random.default_rng(5)
    b, d = 6, 5
    a = rng.normal(size=(b, d)).astype(np.float32)
    p = rng.normal(size=(b, d)).astype(np.float32)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    s = an @ pn.T / 0.2
    hard = np.mean([-_log_softmax(s[i])[i] for i in range(b)])
    np.testing.assert_allclose(L.info_nce(a, p, 0.2), hard, rtol=1e-5)
    np.testing.assert_allclose(L.info_nce(a, p, 0.2, soft_targets=np.eye(b, dtype=np.float32)), hard, rtol=1e-5)
    # i-Mix soft labels: lam * I + (1 - lam) * I[perm]
    lam = np.maximum(rng.beta(1, 1, b), 0.5)
    perm = rng.permutation(b)
    y = lam[:, None] * np.eye(b) + (1 - lam)[:, None] * np.eye(b)[perm]
    assert np.allclose(y.sum(1), 1)
    want = np.mean([lam[i] * -_log_softmax(s[i])[i] + (1 - lam[i]) * -_log_softmax(s[i])[perm[i]] for i in range(b)])
    got = jax.jit(L.info_nce, static_argnames=("normalize", "symmetric"))(a, p, 0.2, y.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # unnormalised and symmetric forms
    s2 = a @ p.T
    want2 = 0.5 * (np.mean([-_log_softmax(s2[i])[i] for i in range(b)]) + np.mean([-_log_softmax(s2.T[i])[i] for i in range(b)]))
    np.testing.assert_allclose(L.info_nce(a, p, 1.0, normalize=False, symmetric=True), want2, rtol=1e-5)


def test_gaussian_kl_closed_form_and_monte_carlo():
    rng = np.random.default_rng(6)
    mq, mp = rng.normal(size=(2, 3, 4))
    lq, lp = rng.normal(size=(2, 3, 4)) * 0.5
    vq, vp = np.exp(lq), np.exp(lp)
    want = 0.5 * np.sum(np.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1, axis=-1)
    got = L.gaussian_kl(mq.astype(np.float32), lq.astype(np.float32), mp.astype(np.float32), lp.astype(np.float32))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(L.gaussian_kl(mq, lq, mq, lq), 0.0, atol=1e-6)
    assert np.all(np.asarray(L.gaussian_kl(mq, lq, mp, lp)) >= 0)
    # standard normal prior
    np.testing.assert_allclose(
        L.gaussian_kl(mq, lq), 0.5 * np.sum(vq + mq**2 - 1 - lq, axis=-1), rtol=1e-5
    )
    # Monte Carlo: E_q[log q(z) - log p(z)]
    n = 200_000
    z = mq[0] + np.sqrt(vq[0]) * rng.normal(size=(n, 4))

    def logpdf(z, m, v):
        return -0.5 * (np.log(2 * np.pi * v) + (z - m) ** 2 / v)

    mc = np.mean(np.sum(logpdf(z, mq[0], vq[0]) - logpdf(z, mp[0], vp[0]), axis=-1))
    np.testing.assert_allclose(float(got[0]), mc, atol=3e-2, rtol=3e-2)


def test_masked_mean_pool_and_bilinear():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 4, 2)).astype(np.float32)
    m = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]], np.float32)
    want = np.stack([x[i][m[i] > 0].mean(0) if m[i].any() else np.zeros(2) for i in range(3)])
    np.testing.assert_allclose(L.masked_mean_pool(x, m), want, rtol=1e-5, atol=1e-7)
    a = rng.normal(size=(3, 2)).astype(np.float32)
    b = rng.normal(size=(3, 5)).astype(np.float32)
    w = rng.normal(size=(2, 5)).astype(np.float32)
    np.testing.assert_allclose(
        L.bilinear_score(a, b, w, 0.3), [a[i] @ w @ b[i] + 0.3 for i in range(3)], rtol=1e-5
    )


def test_c2dsr_infomax_reference():
    rng = np.random.default_rng(8)
    B, T, D = 4, 5, 3
    F, FX, FY, FCX, FCY = (rng.normal(size=(B, T, D)).astype(np.float32) for _ in range(5))
    xm = (rng.random((B, T)) < 0.6).astype(np.float32)
    ym = (rng.random((B, T)) < 0.6).astype(np.float32)
    xm[:, 0] = ym[:, 1] = 1
    WX, WY = (rng.normal(size=(D, D)).astype(np.float32) * 0.3 for _ in range(2))
    bx, by = 0.1, -0.2

    def pool(f, m):
        w = m / m.sum(1, keepdims=True)
        return (w[..., None] * f).sum(1)

    def bce(s, y):
        p = _sigmoid(s)
        return np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def disc(a, b, W, bias):
        return np.einsum("bi,ij,bj->b", a, W, b) + bias

    s_x, s_y = pool(FX, xm), pool(FY, ym)
    c_x, c_y = pool(F, xm), pool(F, ym)
    cc_x, cc_y = pool(FCX, xm), pool(FCY, ym)
    want_x = bce(disc(c_y, s_x, WX, bx), 1) + bce(disc(cc_y, s_x, WX, bx), 0)
    want_y = bce(disc(c_x, s_y, WY, by), 1) + bce(disc(cc_x, s_y, WY, by), 0)
    lx, ly = jax.jit(L.c2dsr_infomax_loss)(F, FX, FY, FCX, FCY, xm, ym, WX, bx, WY, by)
    np.testing.assert_allclose([lx, ly], [want_x, want_y], rtol=1e-5)
    tot = L.c2dsr_total_loss((1.0, 2.0, 3.0, 4.0), (lx, ly), 0.7)
    np.testing.assert_allclose(tot, 0.7 * 10 + 0.3 * (want_x + want_y), rtol=1e-5)
    # more similar positive pairs -> lower loss (with W = I)
    eye = np.eye(D, dtype=np.float32)
    far = L.bilinear_infomax_loss(-s_x, cc_y, s_x, eye)
    near = L.bilinear_infomax_loss(s_x, cc_y, s_x, eye)
    assert float(near) < float(far)
