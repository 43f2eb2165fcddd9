"""Dropout masks (jaxrec.kernels.dropout, jaxrec.nn.dropout): the threefry implementation is bit-identical to
flax's Dropout; the hash implementation keeps the requested rate, is independent across neighbouring elements
and keys, is a pure function of (key, index), and plugs into the attention kernel and the Transformer stack."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels import attention as attn
from jaxrec.kernels import dropout as dl
from jaxrec.nn.dropout import Dropout
from jaxrec.nn.transformer import TransformerStack, sasrec_config


def test_threefry_module_is_bit_identical_to_flax_dropout():
    class Two(nn.Module):
        ours: bool

        @nn.compact
        def __call__(self, x):
            cls = Dropout if self.ours else nn.Dropout
            return cls(0.3)(x, deterministic=False) + cls(0.5)(x * 2, deterministic=False)

    x = jax.random.normal(jax.random.PRNGKey(0), (7, 33))
    rngs = {"dropout": jax.random.PRNGKey(5)}
    a = Two(True).apply({}, x, rngs=rngs)
    b = Two(False).apply({}, x, rngs=rngs)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("keep", [0.8, 0.5, 0.1])
def test_hash_mask_rate_neighbours_and_keys(keep):
    n = 1 << 20
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    m1 = np.asarray(dl.keep_mask(k1, (n,), keep, "hash"))
    m2 = np.asarray(dl.keep_mask(k2, (n,), keep, "hash"))
    sd = np.sqrt(keep * (1 - keep) / n)
    assert abs(m1.mean() - keep) < 5 * sd
    # neighbouring elements (flat index i, i + 1 and i, i + 256: a row apart in a [*, 256] table) independent
    for lag in (1, 256):
        joint = (m1[:-lag] & m1[lag:]).mean()
        assert abs(joint - keep * keep) < 5 * np.sqrt(keep * keep * (1 - keep * keep) / n), lag
    # two keys: agreement as for independent draws
    agree = (m1 == m2).mean()
    expect = keep * keep + (1 - keep) ** 2
    assert abs(agree - expect) < 5 * np.sqrt(expect * (1 - expect) / n)
    # same key, same mask
    np.testing.assert_array_equal(m1, np.asarray(dl.keep_mask(k1, (n,), keep, "hash")))


def test_hash_mask_is_a_function_of_the_index():
    key = jax.random.PRNGKey(11)
    v, d = 50, 16
    full = np.asarray(dl.keep_mask(key, (v, d), 0.7, "hash"))
    rows = jnp.array([3, 0, 49, 3, 17])
    idx = rows.astype(jnp.uint32)[:, None] * d + jnp.arange(d, dtype=jnp.uint32)
    part = np.asarray(dl.keep_mask(key, (5, d), 0.7, "hash", index=idx))
    np.testing.assert_array_equal(part, full[np.asarray(rows)])
    x = jax.random.normal(jax.random.PRNGKey(1), (v, d))
    np.testing.assert_allclose(np.asarray(dl.dropout(x[rows], 0.3, key, impl="hash", index=idx)),
                               np.asarray(dl.dropout(x, 0.3, key, impl="hash"))[np.asarray(rows)])


def test_dropout_formula_and_edge_cases():
    x = jnp.arange(1.0, 1001.0)
    key = jax.random.PRNGKey(2)
    for impl in dl.IMPLS:
        y = np.asarray(dl.dropout(x, 0.25, key, impl=impl))
        kept = y != 0
        np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
        assert 0.6 < kept.mean() < 0.9
        np.testing.assert_array_equal(np.asarray(dl.dropout(x, 0.25, key, impl=impl, deterministic=True)), x)
        np.testing.assert_array_equal(np.asarray(dl.dropout(x, 1.0, None, impl=impl)), 0.0)
        np.testing.assert_array_equal(np.asarray(dl.dropout(x, 0.0, None, impl=impl)), x)
    with pytest.raises(ValueError, match="impl"):
        dl.keep_mask(key, (3,), 0.5, "philox")
    with pytest.raises(ValueError, match="index= needs impl='hash'"):
        dl.keep_mask(key, (3,), 0.5, "threefry", index=jnp.arange(3))
    with pytest.raises(ValueError, match="key is required"):
        dl.dropout(x, 0.5, None)
    # gradients flow through the kept elements only, scaled by 1 / keep
    g = jax.grad(lambda x: dl.dropout(x, 0.5, key, impl="hash").sum())(x)
    np.testing.assert_allclose(np.unique(np.asarray(g)), [0.0, 2.0])


def test_attention_kernel_and_stack_accept_the_hash_impl():
    q = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 1, 8))
    key = jax.random.PRNGKey(4)
    out_t = attn.dot_product_attention(q, q, q, dropout_rate=0.5, dropout_rng=key, deterministic=False)
    out_h = attn.dot_product_attention(q, q, q, dropout_rate=0.5, dropout_rng=key, deterministic=False,
                                       dropout_impl="hash")
    ref = attn.dot_product_attention(q, q, q)
    assert out_h.shape == ref.shape and np.isfinite(np.asarray(out_h)).all()
    assert not np.allclose(out_h, out_t) and not np.allclose(out_h, ref)
    cfg = sasrec_config(16, num_heads=1, dropout_rate=0.2, num_layers=1)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 16))
    valid = jnp.ones((3, 6), bool)
    outs = {}
    for impl in dl.IMPLS:
        stack = TransformerStack(**cfg, dropout_impl=impl)
        params = stack.init(jax.random.PRNGKey(0), x, valid)
        outs[impl] = stack.apply(params, x, valid, deterministic=False, rngs={"dropout": jax.random.PRNGKey(9)})
        np.testing.assert_allclose(stack.apply(params, x, valid), TransformerStack(**cfg).apply(params, x, valid),
                                   rtol=1e-6)  # eval mode: the impl does not matter
    assert not np.allclose(outs["hash"], outs["threefry"])
