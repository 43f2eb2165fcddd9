"""jaxrec.kernels.attention against naive NumPy references (explicit loops over batch/head/position)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels import attention as A

from helpers import rand

ATOL = 1e-5


def ref_attention(q, k, v, mask=None, bias=None, scale=None):
    """Loop reference. q [B,Lq,H,Dh], k [B,Lk,H,Dh], v [B,Lk,H,Dv]; mask/bias broadcast to [B,H,Lq,Lk]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b_, lq, h_, dh = q.shape
    lk, dv = k.shape[1], v.shape[-1]
    scale = 1.0 / np.sqrt(dh) if scale is None else scale
    mask = np.ones((b_, h_, lq, lk), bool) if mask is None else np.broadcast_to(np.asarray(mask), (b_, h_, lq, lk))
    bias = np.zeros((b_, h_, lq, lk)) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (b_, h_, lq, lk))
    out = np.zeros((b_, lq, h_, dv))
    weights = np.zeros((b_, h_, lq, lk))
    for b in range(b_):
        for h in range(h_):
            for i in range(lq):
                allowed = [j for j in range(lk) if mask[b, h, i, j]]
                if not allowed:
                    continue
                logits = np.array([scale * q[b, i, h] @ k[b, j, h] + bias[b, h, i, j] for j in allowed])
                e = np.exp(logits - logits.max())
                w = e / e.sum()
                for wj, j in zip(w, allowed):
                    weights[b, h, i, j] = wj
                    out[b, i, h] += wj * v[b, j, h]
    return out, weights


pytestmark = pytest.mark.usefixtures("fast_compile")


def bern(seed, p, shape):
    return np.random.default_rng(seed).random(shape) < p


# ---------------------------------------------------------------------------------------------- masks


def test_padding_mask():
    valid = np.array([[1, 1, 0], [0, 1, 1]], bool)
    m = A.padding_mask(valid)
    assert m.shape == (2, 1, 1, 3) and m.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(m)[:, 0, 0], valid)
    qv = np.array([[1, 0], [1, 1]], bool)
    m2 = np.asarray(A.padding_mask(valid, qv))
    assert m2.shape == (2, 1, 2, 3)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                assert m2[b, 0, i, j] == (valid[b, j] and qv[b, i])


def test_causal_mask_square_and_offset():
    np.testing.assert_array_equal(np.asarray(A.causal_mask(4))[0, 0], np.tril(np.ones((4, 4), bool)))
    m = np.asarray(A.causal_mask(2, 5, offset=2))
    assert m.shape == (1, 1, 2, 5)
    for i in range(2):
        for j in range(5):
            assert m[0, 0, i, j] == (j <= 2 + i)
    assert A.causal_mask(2, offset=3).shape == (1, 1, 2, 5)
    offs = jnp.array([0, 3])
    mb = np.asarray(jax.jit(A.causal_mask, static_argnums=(0, 1))(3, 6, offs))
    assert mb.shape == (2, 1, 3, 6)
    for b in range(2):
        for i in range(3):
            for j in range(6):
                assert mb[b, 0, i, j] == (j <= int(offs[b]) + i)
    with pytest.raises(ValueError):
        A.causal_mask(2, None, offs)


def test_combine_masks():
    assert A.combine_masks() is None
    assert A.combine_masks(None, None) is None
    pm = A.padding_mask(np.array([[1, 1, 0]], bool))
    cm = A.causal_mask(3)
    np.testing.assert_array_equal(np.asarray(A.combine_masks(pm, None)), np.asarray(pm))
    c = np.asarray(A.combine_masks(None, pm, cm))
    assert c.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(c[0, 0], np.tril(np.ones((3, 3), bool)) & np.array([1, 1, 0], bool)[None])


# ------------------------------------------------------------------------------------- masked softmax


def test_masked_softmax_matches_reference_and_zero_rows():
    logits = rand(0, 3, 5) * 3
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    w = np.asarray(A.masked_softmax(logits, mask))
    for r in range(3):
        ref = np.zeros(5)
        idx = np.flatnonzero(mask[r])
        if idx.size:
            e = np.exp(np.asarray(logits)[r, idx] - np.asarray(logits)[r, idx].max())
            ref[idx] = e / e.sum()
        np.testing.assert_allclose(w[r], ref, atol=1e-6)
    assert np.all(w[1] == 0.0) and np.all(w[~mask] == 0.0)
    g = jax.jit(jax.grad(lambda x: jnp.sum(A.masked_softmax(x, mask) * jnp.arange(5.0))))(logits)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(A.masked_softmax(logits)), np.asarray(jax.nn.softmax(logits)), atol=1e-6)
    # extreme logits do not overflow
    big = jnp.array([[1e30, -1e30, 0.0]])
    np.testing.assert_allclose(np.asarray(A.masked_softmax(big, np.array([[0, 1, 1]], bool))), [[0, 0, 1]], atol=1e-6)


# -------------------------------------------------------------------------------- dot-product attention


@pytest.mark.parametrize("use_bias", [False, True])
def test_dot_product_attention_matches_reference(use_bias):
    B, Lq, Lk, H, Dh, Dv = 2, 3, 5, 2, 4, 3
    q, k, v = rand(1, B, Lq, H, Dh), rand(2, B, Lk, H, Dh), rand(3, B, Lk, H, Dv)
    mask = bern(4, 0.6, (B, H, Lq, Lk))
    mask[0, 1, 2, :] = False  # a fully masked row
    mask[1, :, 0, :] = False  # fully masked across heads
    bias = np.asarray(rand(5, B, 1, Lq, Lk)) if use_bias else None
    out, w = jax.jit(functools.partial(A.dot_product_attention, scale=0.7, return_weights=True))(q, k, v, mask, bias)
    ref_out, ref_w = ref_attention(q, k, v, mask, bias, scale=0.7)
    assert out.shape == (B, Lq, H, Dv) and w.shape == (B, H, Lq, Lk)
    np.testing.assert_allclose(np.asarray(out), ref_out, atol=ATOL)
    np.testing.assert_allclose(np.asarray(w), ref_w, atol=ATOL)
    assert np.all(np.asarray(out)[0, 2, 1] == 0.0) and np.all(np.asarray(out)[1, 0] == 0.0)


def test_dot_product_attention_no_mask_default_scale():
    q, k, v = rand(6, 2, 4, 3, 8), rand(7, 2, 6, 3, 8), rand(8, 2, 6, 3, 5)
    np.testing.assert_allclose(np.asarray(A.dot_product_attention(q, k, v)), ref_attention(q, k, v)[0], atol=ATOL)
    # matches jax.nn.dot_product_attention where that is defined (no fully masked rows)
    np.testing.assert_allclose(
        np.asarray(A.dot_product_attention(q, k, k)),
        np.asarray(jax.nn.dot_product_attention(q, k, k)),
        atol=ATOL,
    )


def test_fully_masked_rows_zero_output_finite_grads():
    B, L, H, D = 2, 4, 2, 4
    q, k, v = rand(9, B, L, H, D), rand(10, B, L, H, D), rand(11, B, L, H, D)
    mask = np.zeros((B, 1, L, L), bool)
    mask[0, 0, 1:, :2] = True  # example 0 row 0 fully masked; example 1 fully masked everywhere
    bias = rand(12, B, H, L, L)

    def loss(q, k, v, bias):
        return jnp.sum(A.dot_product_attention(q, k, v, mask, bias) ** 2)

    out = np.asarray(jax.jit(A.dot_product_attention)(q, k, v, mask, bias))
    assert not np.any(np.isnan(out))
    assert np.all(out[0, 0] == 0.0) and np.all(out[1] == 0.0)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, bias)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0])[1] == 0.0)


def test_bad_mask_shape_raises():
    q = rand(0, 2, 3, 1, 4)
    with pytest.raises(ValueError):
        A.dot_product_attention(q, q, q, jnp.ones((5, 2, 1, 3, 3), bool))


def test_attention_dropout():
    B, L, H, D = 2, 5, 2, 4
    q, k, v = rand(13, B, L, H, D), rand(14, B, L, H, D), rand(15, B, L, H, D)
    base, w0 = A.dot_product_attention(q, k, v, return_weights=True)
    same = A.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=True)
    np.testing.assert_allclose(np.asarray(same), np.asarray(base), atol=1e-6)
    rng = jax.random.PRNGKey(0)
    o1, w1 = A.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng, deterministic=False, return_weights=True)
    o2 = A.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng, deterministic=False)
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(o2))
    w0, w1 = np.asarray(w0), np.asarray(w1)
    kept = w1 != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(w1[kept], w0[kept] * 2.0, rtol=1e-5)
    with pytest.raises(ValueError):
        A.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=False)


# ------------------------------------------------------------------------------------- conveniences


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention(causal):
    B, L, H, D = 3, 5, 2, 4
    q, k, v = rand(16, B, L, H, D), rand(17, B, L, H, D), rand(18, B, L, H, D)
    valid = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    out = A.self_attention(q, k, v, valid, causal=causal)
    mask = np.zeros((B, 1, L, L), bool)
    for b in range(B):
        for i in range(L):
            for j in range(L):
                mask[b, 0, i, j] = valid[b, j] and (j <= i or not causal)
    np.testing.assert_allclose(np.asarray(out), ref_attention(q, k, v, mask)[0], atol=ATOL)
    if causal:  # left padding: the padded query rows of example 1 see no key -> zeros
        assert np.all(np.asarray(out)[1, :2] == 0.0)


@pytest.mark.parametrize("multihead", [False, True])
def test_target_attention(multihead):
    B, C, L, H, Dh, Dv = 2, 3, 6, 2, 4, 5
    shape = (lambda *s: s) if multihead else (lambda *s: s[:-2] + (s[-1],))
    cand = rand(19, *shape(B, C, H, Dh))
    hk, hv = rand(20, *shape(B, L, H, Dh)), rand(21, *shape(B, L, H, Dv))
    hist_mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)  # example 1: empty history
    out = A.target_attention(cand, hk, hv, hist_mask)
    assert out.shape == shape(B, C, H, Dv)
    add = (lambda x: x) if multihead else (lambda x: np.asarray(x)[..., None, :])
    ref = ref_attention(add(cand), add(hk), add(hv), hist_mask[:, None, None, :])[0]
    ref = ref if multihead else ref[..., 0, :]
    np.testing.assert_allclose(np.asarray(out), ref, atol=ATOL)
    assert np.all(np.asarray(out)[1] == 0.0)
    # per-candidate history subsets [B, C, L]
    sub = bern(22, 0.5, (B, C, L))
    out2 = A.target_attention(cand, hk, hv, sub)
    ref2 = ref_attention(add(cand), add(hk), add(hv), sub[:, None])[0]
    ref2 = ref2 if multihead else ref2[..., 0, :]
    np.testing.assert_allclose(np.asarray(out2), ref2, atol=ATOL)
    # candidates are independent: each equals attending alone
    for c in range(C):
        solo = A.target_attention(cand[:, c : c + 1], hk, hv, hist_mask)
        np.testing.assert_allclose(np.asarray(solo)[:, 0], np.asarray(out)[:, c], atol=ATOL)


def test_learned_query_attention():
    B, K, L, H, Dh, Dv = 2, 3, 5, 2, 4, 3
    queries = rand(23, K, H, Dh)
    k, v = rand(24, B, L, H, Dh), rand(25, B, L, H, Dv)
    mask = np.array([[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]], bool)
    out = jax.jit(A.learned_query_attention)(queries, k, v, mask)
    assert out.shape == (B, K, H, Dv)
    qb = np.broadcast_to(np.asarray(queries)[None], (B, K, H, Dh))
    np.testing.assert_allclose(np.asarray(out), ref_attention(qb, k, v, mask[:, None, None])[0], atol=ATOL)
    out2 = A.learned_query_attention(queries[:, 0], k[:, :, 0], v[:, :, 0], mask)
    assert out2.shape == (B, K, Dv)
    np.testing.assert_allclose(np.asarray(out2), np.asarray(out)[:, :, 0], atol=ATOL)


# ------------------------------------------------------------------------------------------- KV cache


def test_cache_update_writes_and_drops_overflow():
    cache = A.init_cache(2, 4, 1, 2, value_dim=3)
    assert cache.keys.shape == (2, 4, 1, 2) and cache.values.shape == (2, 4, 1, 3)
    k = jnp.ones((2, 3, 1, 2))
    v = jnp.ones((2, 3, 1, 3))
    c1 = A.cache_update(cache, k, v, jnp.array([[0, 1, 1], [1, 1, 1]], bool))
    np.testing.assert_array_equal(np.asarray(c1.length), [3, 3])
    np.testing.assert_array_equal(np.asarray(c1.valid), [[0, 1, 1, 0], [1, 1, 1, 0]])
    c2 = A.cache_update(c1, 2 * k, 2 * v)  # writes slots 3, 4, 5: only slot 3 fits
    np.testing.assert_array_equal(np.asarray(c2.length), [6, 6])
    np.testing.assert_array_equal(np.asarray(c2.keys)[:, :, 0, 0], [[1, 1, 1, 2], [1, 1, 1, 2]])
    assert bool(jnp.all(c2.valid[:, 3]))


@pytest.mark.parametrize("chunks", [(1,) * 6, (3, 1, 2)])
def test_decode_with_cache_equals_full_causal(chunks):
    B, L, H, Dh, Dv = 2, 6, 2, 4, 3
    q, k, v = rand(26, B, L, H, Dh), rand(27, B, L, H, Dh), rand(28, B, L, H, Dv)
    valid = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], bool)  # example 1 left-padded
    full = A.self_attention(q, k, v, valid, causal=True)
    cache = A.init_cache(B, L, H, Dh, Dv)
    step = jax.jit(A.attention_with_cache)
    outs, start = [], 0
    for t in chunks:
        sl = slice(start, start + t)
        o, cache = step(q[:, sl], k[:, sl], v[:, sl], cache, valid_new=valid[:, sl])
        outs.append(o)
        start += t
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=ATOL)
    np.testing.assert_array_equal(np.asarray(cache.length), [L, L])
    np.testing.assert_allclose(np.asarray(cache.keys), np.asarray(k), atol=0)


def test_decode_with_per_example_lengths():
    """Examples at different cache positions decode correctly in one batched step."""
    B, H, D, Lmax = 2, 1, 4, 5
    k, v, q = rand(29, B, Lmax, H, D), rand(30, B, Lmax, H, D), rand(31, B, 1, H, D)
    cache = A.init_cache(B, Lmax, H, D)
    cache = A.cache_update(cache, k[:, :3], v[:, :3], jnp.array([[1, 1, 1], [0, 0, 0]], bool))
    cache = cache._replace(length=jnp.array([3, 1]))  # example 1 holds one (padding) slot
    out, new = A.attention_with_cache(q, k[:, 3:4], v[:, 3:4], cache)
    np.testing.assert_array_equal(np.asarray(new.length), [4, 2])
    ref0 = ref_attention(q[:1], k[:1, :4], v[:1, :4])[0]
    ref1 = ref_attention(q[1:], k[1:, 3:4], v[1:, 3:4])[0]  # only its new token is valid
    np.testing.assert_allclose(np.asarray(out)[:1], ref0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out)[1:], ref1, atol=ATOL)


# ------------------------------------------------------------------------------------------------ rope


def test_rope_matches_reference_and_is_relative():
    B, L, H, Dh = 2, 5, 2, 6
    x = rand(32, B, L, H, Dh)
    pos = np.array([[0, 1, 2, 3, 4], [7, 3, 0, 11, 2]])
    out = np.asarray(A.rope(x, pos, base=100.0))
    xn = np.asarray(x, np.float64)
    ref = np.zeros_like(xn)
    half = Dh // 2
    for b in range(B):
        for l in range(L):
            for h in range(H):
                for i in range(half):
                    ang = pos[b, l] * 100.0 ** (-2 * i / Dh)
                    a, c = xn[b, l, h, i], xn[b, l, h, i + half]
                    ref[b, l, h, i] = a * np.cos(ang) - c * np.sin(ang)
                    ref[b, l, h, i + half] = c * np.cos(ang) + a * np.sin(ang)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(A.rope(x, np.arange(L))), np.asarray(A.rope(x, np.tile(np.arange(L), (B, 1)))), atol=0)
    np.testing.assert_allclose(np.asarray(A.rope(x, np.zeros(L))), np.asarray(x), atol=0)
    # <rope(q, m), rope(k, n)> depends only on m - n
    q, k = rand(33, 1, 1, 1, 8), rand(34, 1, 1, 1, 8)
    s = lambda m, n: float(jnp.sum(A.rope(q, jnp.array([m])) * A.rope(k, jnp.array([n]))))
    assert abs(s(5, 2) - s(13, 10)) < 1e-4 and abs(s(0, 0) - s(9, 9)) < 1e-4
    with pytest.raises(ValueError):
        A.rope(rand(0, 1, 2, 1, 3), np.arange(2))
