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
    lab = np.abs(labels) % 6

    @jax.jit
    def run(logits, labels, mask, lab):
        out = {}
        for a in (0.0, 0.1):
            for red in ("mean", "none", "sum"):
                out[str((a, red))] = L.softmax_cross_entropy(logits, labels, mask, a, reduction=red)
        out["plain"] = L.softmax_cross_entropy(logits, lab)
        return out

    got = run(logits, labels, mask, lab)
    for a in (0.0, 0.1):
        per = np.zeros((3, 4))
        for i in range(3):
            for j in range(4):
                if mask[i, j]:
                    lp = _log_softmax(logits[i, j])
                    t = np.full(6, a / 6)
                    t[labels[i, j]] += 1 - a
                    per[i, j] = -(t * lp).sum()
        np.testing.assert_allclose(got[str((a, "mean"))], per.sum() / mask.sum(), rtol=1e-5)
        np.testing.assert_allclose(got[str((a, "none"))], per, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[str((a, "sum"))], per.sum(), rtol=1e-5)
    # no mask: plain mean
    want = np.mean([-_log_softmax(logits[i, j])[lab[i, j]] for i in range(3) for j in range(4)])
    np.testing.assert_allclose(got["plain"], want, rtol=1e-5)


def test_softmax_cross_entropy_all_masked_is_zero_with_finite_grad():
    logits = jnp.ones((2, 5))
    m = jnp.zeros((2,), bool)
    val, g = jax.jit(jax.value_and_grad(lambda x: L.softmax_cross_entropy(x, jnp.array([0, 1]), m)))(logits)
    assert float(val) == 0.0
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
    nmask = rng.random(nid.shape) < 0.5

    @jax.jit
    def run(q, pe, ne, plq, nlq, pid, nid, mask, nmask):
        out = {}
        for rm in (True, False):
            out[str(("mean", rm))] = L.sampled_softmax_loss(q, pe, ne, plq, nlq, pid, nid, 0.5, rm, mask)
            out[str(("none", rm))] = L.sampled_softmax_loss(q, pe, ne, plq, nlq, pid, nid, 0.5, rm, reduction="none")
        out["plain"] = L.sampled_softmax_loss(q, pe, ne)  # no correction, no ids
        out["negmask"] = L.sampled_softmax_loss(q, pe, ne, plq, nlq, pid, nid, neg_mask=nmask)
        return out

    got = run(q, pe, ne, plq, nlq, pid, nid, mask, nmask)
    for rm in (True, False):
        want, per = _ref_sampled(q, pe, ne, plq, nlq, pid, nid, 0.5, rm, mask)
        np.testing.assert_allclose(got[str(("mean", rm))], want, rtol=1e-5)
        np.testing.assert_allclose(got[str(("none", rm))], per, rtol=1e-5)
    _, per = _ref_sampled(q, pe, ne, None, None, pid, None, 1.0, True, None)
    np.testing.assert_allclose(got["plain"], np.mean(per), rtol=1e-5)
    _, per = _ref_sampled(q, pe, ne, plq, nlq, pid, nid, 1.0, True, None, nmask)
    np.testing.assert_allclose(got["negmask"], np.mean(per), rtol=1e-5)


def test_sampled_softmax_all_negatives_hit_and_all_masked():
    q = jnp.ones((2, 3))
    pe = jnp.ones((2, 3))
    ne = jnp.ones((4, 3))
    pid = jnp.array([7, 7])
    nid = jnp.full((4,), 7)
    loss, g = jax.jit(jax.value_and_grad(lambda q: L.sampled_softmax_loss(q, pe, ne, pos_ids=pid, neg_ids=nid)))(q)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)  # only the positive is left
    assert np.all(np.isfinite(g))
    assert float(jax.jit(L.sampled_softmax_loss)(q, pe, ne, mask=jnp.zeros(2, bool))) == 0.0


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
    u = rng.normal(size=(b, 3, d)).astype(np.float32)
    mi = np.einsum("bkd,cd->bck", u, e).max(-1)  # multi-interest max scoring through the logits form
    combos = [(a, rm, m) for a in (0.0, 0.2) for rm in (True, False) for m in (False, True)]

    @jax.jit
    def run(q, e, ids, logq, mask, mi):
        out = {}
        for a, rm, m in combos:
            out[str((a, rm, m))] = L.in_batch_softmax_loss(
                q, e, ids, logq, 0.7, a, mask if m else None, rm, smoothing=variant
            )
        out["mi"] = L.in_batch_softmax_from_logits(mi, ids, logq, label_smoothing=0.1, smoothing=variant)
        return out

    got = run(q, e, ids, logq, mask, mi)
    for a, rm, m in combos:
        want = _ref_in_batch(logits, ids, logq, 0.7, a, variant, mask if m else None, rm)
        np.testing.assert_allclose(got[str((a, rm, m))], want, rtol=2e-5, err_msg=f"a={a} rm={rm} mask={m}")
    want = _ref_in_batch(mi, ids, logq, 1.0, 0.1, variant, None, True)
    np.testing.assert_allclose(got["mi"], want, rtol=2e-5)


def test_in_batch_logq_is_shift_invariant_and_edge_cases():
    rng = np.random.default_rng(3)
    lg = rng.normal(size=(5, 5)).astype(np.float32)
    ids = np.arange(5)
    logq = rng.normal(size=5).astype(np.float32)
    same = np.zeros(5, np.int32)

    @jax.jit
    def run(lg, logq):
        out = {
            "a": L.in_batch_softmax_from_logits(lg, ids, logq),
            "b": L.in_batch_softmax_from_logits(lg, ids, logq + 3.0),
            "ce": L.softmax_cross_entropy(lg - logq[None], ids),
            "masked": L.in_batch_softmax_from_logits(lg, ids, mask=jnp.zeros(5, bool)),
        }
        for variant in ("standard", "paper"):
            # every row has the same item: nothing but the positive is left -> 0 loss, finite grads
            out[str(("same", variant))] = jax.value_and_grad(
                lambda x: L.in_batch_softmax_from_logits(x, same, label_smoothing=0.3, smoothing=variant)
            )(lg)
            out[str(("big", variant))] = jax.grad(
                lambda x: L.in_batch_softmax_from_logits(x, ids, label_smoothing=0.3, smoothing=variant)
            )(lg * 50)
        return out

    got = run(lg, logq)
    np.testing.assert_allclose(got["a"], got["b"], rtol=1e-5)  # invariant to a constant shift of log Q
    np.testing.assert_allclose(got["a"], got["ce"], rtol=1e-5)  # logQ loss == CE on shifted logits
    assert float(got["masked"]) == 0.0
    for variant in ("standard", "paper"):
        val, g = got[str(("same", variant))]
        np.testing.assert_allclose(val, 0.0, atol=1e-6)
        assert np.all(np.isfinite(g)) and np.all(np.isfinite(got[str(("big", variant))]))
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

    xs = np.array([0.3, -1.2], np.float32)
    pos = rng.normal(size=4).astype(np.float32)
    neg = rng.normal(size=(4, 5)).astype(np.float32)
    bm = np.array([1, 0, 1, 1], bool)

    @jax.jit
    def run(x, y, m, pw, xs, pos, neg, bm):
        return {
            "masked": L.bce_with_logits(x, y, m, pw),
            "plain": L.bce_with_logits(x, y),
            "small": L.bce_with_logits(xs, jnp.array([1.0, 0.0])),
            "huge": L.bce_with_logits(jnp.array([1e4, -1e4]), jnp.array([0.0, 1.0])),
            "none": L.bce_with_logits(x, y, jnp.zeros_like(m)),
            "bpr": L.bpr_loss(pos, neg, bm),
            "bpr1": L.bpr_loss(pos, neg[:, 0]),
        }

    got = run(x, y, m, pw, xs, pos, neg, bm)
    np.testing.assert_allclose(got["masked"], ref(x, y, pw)[m].mean(), rtol=1e-5)
    np.testing.assert_allclose(got["plain"], ref(x, y, 1.0).mean(), rtol=1e-5)
    np.testing.assert_allclose(
        got["small"], np.mean([-np.log(_sigmoid(0.3)), -np.log(1 - _sigmoid(-1.2))]), rtol=1e-5
    )
    np.testing.assert_allclose(got["huge"], 1e4, rtol=1e-6)
    assert float(got["none"]) == 0.0
    want = np.mean([-np.log(_sigmoid(pos[i] - neg[i, j])) for i in range(4) if bm[i] for j in range(5)])
    np.testing.assert_allclose(got["bpr"], want, rtol=1e-5)
    np.testing.assert_allclose(got["bpr1"], np.mean(-np.log(_sigmoid(pos - neg[:, 0]))), rtol=1e-5)


def test_info_nce_soft_targets():
    rng = np.random.default_rng(5)
    b, d = 6, 5
    a = rng.normal(size=(b, d)).astype(np.float32)
    p = rng.normal(size=(b, d)).astype(np.float32)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    s = an @ pn.T / 0.2
    hard = np.mean([-_log_softmax(s[i])[i] for i in range(b)])
    # i-Mix soft labels: lam * I + (1 - lam) * I[perm]
    lam = np.maximum(rng.beta(1, 1, b), 0.5)
    perm = rng.permutation(b)
    y = lam[:, None] * np.eye(b) + (1 - lam)[:, None] * np.eye(b)[perm]
    assert np.allclose(y.sum(1), 1)

    @jax.jit
    def run(a, p, y):
        return (
            L.info_nce(a, p, 0.2),
            L.info_nce(a, p, 0.2, soft_targets=jnp.eye(b)),
            L.info_nce(a, p, 0.2, y),
            L.info_nce(a, p, 1.0, normalize=False, symmetric=True),
        )

    got_hard, got_eye, got_soft, got_sym = run(a, p, y.astype(np.float32))
    np.testing.assert_allclose(got_hard, hard, rtol=1e-5)
    np.testing.assert_allclose(got_eye, hard, rtol=1e-5)  # soft_targets = I == hard InfoNCE
    want = np.mean([lam[i] * -_log_softmax(s[i])[i] + (1 - lam[i]) * -_log_softmax(s[i])[perm[i]] for i in range(b)])
    np.testing.assert_allclose(got_soft, want, rtol=1e-5)
    # unnormalised and symmetric forms
    s2 = a @ p.T
    want2 = 0.5 * (
        np.mean([-_log_softmax(s2[i])[i] for i in range(b)]) + np.mean([-_log_softmax(s2.T[i])[i] for i in range(b)])
    )
    np.testing.assert_allclose(got_sym, want2, rtol=1e-5)


def test_gaussian_kl_closed_form_and_monte_carlo():
    rng = np.random.default_rng(6)
    mq, mp = rng.normal(size=(2, 3, 4))
    lq, lp = rng.normal(size=(2, 3, 4)) * 0.5
    vq, vp = np.exp(lq), np.exp(lp)
    want = 0.5 * np.sum(np.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1, axis=-1)
    mq, lq, mp, lp = (v.astype(np.float32) for v in (mq, lq, mp, lp))
    got, same, prior = jax.jit(
        lambda mq, lq, mp, lp: (L.gaussian_kl(mq, lq, mp, lp), L.gaussian_kl(mq, lq, mq, lq), L.gaussian_kl(mq, lq))
    )(mq, lq, mp, lp)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.asarray(got) >= 0)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    np.testing.assert_allclose(prior, 0.5 * np.sum(vq + mq**2 - 1 - lq, axis=-1), rtol=1e-5)  # N(0, I) prior
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
    a = rng.normal(size=(3, 2)).astype(np.float32)
    b = rng.normal(size=(3, 5)).astype(np.float32)
    w = rng.normal(size=(2, 5)).astype(np.float32)
    pooled, score = jax.jit(lambda x, m, a, b, w: (L.masked_mean_pool(x, m), L.bilinear_score(a, b, w, 0.3)))(
        x, m, a, b, w
    )
    np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(score, [a[i] @ w @ b[i] + 0.3 for i in range(3)], rtol=1e-5)


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
    eye = np.eye(D, dtype=np.float32)

    @jax.jit
    def run(F, FX, FY, FCX, FCY, xm, ym, WX, WY, s_x, cc_y):
        lx, ly = L.c2dsr_infomax_loss(F, FX, FY, FCX, FCY, xm, ym, WX, bx, WY, by)
        tot = L.c2dsr_total_loss((1.0, 2.0, 3.0, 4.0), (lx, ly), 0.7)
        # more similar positive pairs -> lower loss (with W = I)
        far = L.bilinear_infomax_loss(-s_x, cc_y, s_x, eye)
        near = L.bilinear_infomax_loss(s_x, cc_y, s_x, eye)
        return lx, ly, tot, far, near

    lx, ly, tot, far, near = run(F, FX, FY, FCX, FCY, xm, ym, WX, WY, s_x.astype(np.float32), cc_y.astype(np.float32))
    np.testing.assert_allclose([lx, ly], [want_x, want_y], rtol=1e-5)
    np.testing.assert_allclose(tot, 0.7 * 10 + 0.3 * (want_x + want_y), rtol=1e-5)
    assert float(near) < float(far)
    # row_mask: the BCE means run over the kept rows only (= the reference on those rows)
    keep = np.array([True, False, True, True])
    mx, my = L.c2dsr_infomax_loss(F, FX, FY, FCX, FCY, xm, ym, WX, bx, WY, by, row_mask=keep)
    k = keep
    want_mx = bce(disc(c_y[k], s_x[k], WX, bx), 1) + bce(disc(cc_y[k], s_x[k], WX, bx), 0)
    want_my = bce(disc(c_x[k], s_y[k], WY, by), 1) + bce(disc(cc_x[k], s_y[k], WY, by), 0)
    np.testing.assert_allclose([mx, my], [want_mx, want_my], rtol=1e-5)
