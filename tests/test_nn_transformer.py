"""jaxrec.nn.transformer: shapes, references, causality, padding, decode == full forward, logical axes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrec.kernels import attention as A
from jaxrec.nn import transformer as T

from helpers import rand

B, L, D = 2, 5, 8
ATOL = 2e-5


pytestmark = pytest.mark.usefixtures("fast_compile")


def ref_attention(q, k, v, mask):
    """Loop reference: q [B,Lq,H,Dh], k/v [B,Lk,H,*], mask broadcastable to [B,H,Lq,Lk]."""
    b_, lq, h_, dh = q.shape
    lk = k.shape[1]
    mask = np.broadcast_to(np.asarray(mask), (b_, h_, lq, lk))
    out = np.zeros((b_, lq, h_, v.shape[-1]))
    for b in range(b_):
        for h in range(h_):
            for i in range(lq):
                js = [j for j in range(lk) if mask[b, h, i, j]]
                if js:
                    s = np.array([q[b, i, h] @ k[b, j, h] for j in js], np.float64) / np.sqrt(dh)
                    w = np.exp(s - s.max())
                    w /= w.sum()
                    out[b, i, h] = sum(wj * v[b, j, h] for wj, j in zip(w, js))
    return out


def unbox(tree):
    return nn.meta.unbox(tree)


def init_apply(module, x, *args, **kwargs):
    variables = jax.jit(lambda r, x: module.init(r, x, *args, **kwargs))(jax.random.PRNGKey(0), x)
    return variables, jax.jit(lambda v, x: module.apply(v, x, *args, **kwargs))


CONFIGS = {
    "pre_layer_gelu": dict(num_heads=2, head_dim=4, mlp_dim=16, pre_norm=True, norm="layer", ffn_kind="gelu"),
    "post_layer_relu": dict(num_heads=2, head_dim=4, mlp_dim=16, pre_norm=False, norm="layer", ffn_kind="relu"),
    "llama": T.llama_config(D, num_heads=2, num_layers=2, mlp_dim=16),
    "sasrec": T.sasrec_config(D, num_heads=1, num_layers=2),
}


def stack(name, **over):
    cfg = dict(CONFIGS[name])
    cfg.setdefault("num_layers", 2)
    cfg.update(over)
    return T.TransformerStack(**cfg)


# ---------------------------------------------------------------------------------------------- norms


def test_rmsnorm_and_layernorm():
    x = rand(0, B, L, D) * 3 + 1
    m = T.RMSNorm(epsilon=1e-6)
    v = m.init(jax.random.PRNGKey(0), x)
    assert nn.get_partition_spec(v)["params"]["scale"] == P("embed")
    p = unbox(v)["params"]
    p = {"scale": jnp.asarray(rand(1, D))}
    got = np.asarray(m.apply({"params": p}, x))
    ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6) * p["scale"]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    ln = T.make_norm("layer", 1e-8)
    vl = ln.init(jax.random.PRNGKey(0), x)
    spec = nn.get_partition_spec(vl)["params"]
    assert spec["scale"] == P("embed") and spec["bias"] == P("embed")
    y = np.asarray(ln.apply(vl, x))
    np.testing.assert_allclose(y, (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-8), atol=1e-4)
    with pytest.raises(ValueError):
        T.make_norm("batch")


# ------------------------------------------------------------------------------------------ attention


def ref_mha(p, xq, xkv, mask, use_rope=False, pos_q=None, pos_k=None):
    """NumPy reference from the parameters: projections, (RoPE), loop attention, output projection."""
    proj = lambda x, name: np.einsum("bld,dhk->blhk", x, p[name]["kernel"]) + (p[name]["bias"] if "bias" in p[name] else 0)
    q, k, v = proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value")
    if use_rope:
        q, k = np.asarray(A.rope(q, pos_q)), np.asarray(A.rope(k, pos_k))
    o = ref_attention(q, k, v, mask)
    return np.einsum("blhk,hkd->bld", o, p["out"]["kernel"]) + (p["out"]["bias"] if "bias" in p["out"] else 0)


@pytest.mark.parametrize("use_bias,use_rope", [(True, False), (False, True)])
def test_mha_self_and_cross_match_reference(use_bias, use_rope):
    mha = T.MultiHeadAttention(num_heads=2, head_dim=4, use_bias=use_bias, use_rope=use_rope)
    x = rand(2, B, L, D)
    valid = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], bool)
    v = mha.init(jax.random.PRNGKey(1), x)
    p = jax.tree.map(np.asarray, unbox(v)["params"])
    assert p["query"]["kernel"].shape == (D, 2, 4) and p["out"]["kernel"].shape == (2, 4, D)
    out = np.asarray(jax.jit(lambda v, x: mha.apply(v, x, valid=valid, causal=True))(v, x))
    mask = np.asarray(A.combine_masks(A.padding_mask(valid), A.causal_mask(L)))
    ref = ref_mha(p, x, x, mask, use_rope, np.arange(L), np.arange(L))
    np.testing.assert_allclose(out, ref, atol=ATOL)
    # cross-attention: separate kv input of another length and width
    kv = rand(3, B, 7, 6)
    vc = mha.init(jax.random.PRNGKey(2), x, kv)
    pc = jax.tree.map(np.asarray, unbox(vc)["params"])
    assert pc["key"]["kernel"].shape == (6, 2, 4)
    kvalid = np.array([[1] * 7, [1, 1, 0, 0, 0, 0, 0]], bool)
    out_c = np.asarray(mha.apply(vc, x, kv, valid=kvalid))
    ref_c = ref_mha(pc, x, kv, kvalid[:, None, None], use_rope, np.arange(L), np.arange(7))
    assert out_c.shape == (B, L, D)
    np.testing.assert_allclose(out_c, ref_c, atol=ATOL)


def test_mha_logical_axes_and_torch_init():
    mha = T.MultiHeadAttention(num_heads=2, head_dim=4, use_bias=True, **T.torch_mha_inits(D))
    v = mha.init(jax.random.PRNGKey(0), rand(0, B, L, D))
    spec = nn.get_partition_spec(v)["params"]
    for name in ("query", "key", "value"):
        assert spec[name]["kernel"] == P("embed", "heads", "kv")
        assert spec[name]["bias"] == P("heads", "kv")
    assert spec["out"]["kernel"] == P("heads", "kv", "embed") and spec["out"]["bias"] == P("embed")
    p = unbox(v)["params"]
    assert float(jnp.max(jnp.abs(p["query"]["kernel"]))) <= np.sqrt(6 / (4 * D))
    assert float(jnp.max(jnp.abs(p["out"]["kernel"]))) <= 1 / np.sqrt(D)
    assert float(jnp.max(jnp.abs(p["out"]["bias"]))) == 0.0


# ------------------------------------------------------------------------------------------------ FFN


@pytest.mark.parametrize("kind", ["gelu", "relu", "swiglu"])
def test_feed_forward(kind):
    ff = T.FeedForward(hidden=12, kind=kind, use_bias=kind != "swiglu")
    x = rand(4, B, L, D)
    v = ff.init(jax.random.PRNGKey(0), x)
    spec = nn.get_partition_spec(v)["params"]
    assert spec["wi"]["kernel"] == P("embed", "mlp") and spec["wo"]["kernel"] == P("mlp", "embed")
    p = jax.tree.map(np.asarray, unbox(v)["params"])
    h = x @ p["wi"]["kernel"] + p["wi"].get("bias", 0)
    if kind == "relu":
        h = np.maximum(h, 0)
    elif kind == "gelu":
        h = np.asarray(jax.nn.gelu(h, approximate=False))
    else:
        assert spec["wi_gate"]["kernel"] == P("embed", "mlp") and "bias" not in p["wi"]
        g = x @ p["wi_gate"]["kernel"]
        h = g / (1 + np.exp(-g)) * h
    ref = h @ p["wo"]["kernel"] + p["wo"].get("bias", 0)
    np.testing.assert_allclose(np.asarray(ff.apply(v, x)), ref, atol=ATOL)
    with pytest.raises(ValueError):
        T.FeedForward(hidden=4, kind="tanh").init(jax.random.PRNGKey(0), x)


# -------------------------------------------------------------------------------------------- blocks


def test_sasrec_block_matches_c2dsr_equations():
    """One SASRec-style block + final LN, checked against the C2DSR §5 equations in NumPy."""
    eps = 1e-8
    model = stack("sasrec", num_layers=1)
    x = rand(5, B, L, D)
    valid = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    x = x * valid[..., None]
    v = model.init(jax.random.PRNGKey(3), x, valid, causal=True)
    p = jax.tree.map(np.asarray, unbox(v)["params"])
    got = np.asarray(model.apply(v, x, valid, causal=True))

    def ln(z, prm):
        return (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + eps) * prm["scale"] + prm["bias"]

    blk = p["layer_0"]
    q = ln(x, blk["attn_norm"])
    causal_only = np.asarray(A.causal_mask(L))  # no key padding mask
    z = q + ref_mha(blk["attn"], q, x, causal_only)
    z = ln(z, blk["ffn_norm"])
    f = blk["ffn"]
    z = z + (np.maximum(z @ f["wi"]["kernel"] + f["wi"]["bias"], 0) @ f["wo"]["kernel"] + f["wo"]["bias"])
    z = z * valid[..., None]
    ref = ln(z, p["final_norm"])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # PAD keys are attended (parity): changing a padded input changes valid outputs
    x2 = x.copy()
    x2[0, 0] += 5.0
    assert not np.allclose(np.asarray(model.apply(v, x2, valid, causal=True))[0, 2:], got[0, 2:])


VALID = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)  # example 1 left-padded


@functools.lru_cache(maxsize=None)
def stack_variables(name):
    """(model, variables) for a config, initialised once (jitted) and shared by the tests below."""
    model = stack(name)
    x = rand(6, B, L, D) * VALID[..., None]
    return model, jax.jit(lambda r, x: model.init(r, x, VALID, causal=True))(jax.random.PRNGKey(4), x)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stack_causality_padding_and_decode(name):
    model, variables = stack_variables(name)
    params = variables["params"]
    fwd = jax.jit(lambda x: model.apply({"params": params}, x, VALID, causal=True))
    x = rand(10, B, L, D) * VALID[..., None]
    full = np.asarray(fwd(x))
    assert full.shape == (B, L, D) and np.all(np.isfinite(full))

    # causality: perturbing positions >= t leaves outputs < t unchanged
    t = 3
    x2 = x.copy()
    x2[:, t:] += rand(7, B, L - t, D) * 3
    y2 = np.asarray(fwd(x2))
    np.testing.assert_allclose(y2[:, :t], full[:, :t], atol=ATOL)
    assert not np.allclose(y2[:, t:], full[:, t:])

    # padding: with the key-padding mask, padded inputs do not reach valid positions
    x3 = np.where(VALID[..., None], x, rand(9, B, L, D) * 10)
    y3 = np.asarray(fwd(x3))
    if model.mask_keys_with_valid:
        np.testing.assert_allclose(y3[VALID], full[VALID], atol=ATOL)
    else:  # SASRec / C2DSR parity: PAD slots are attended (causal mask only)
        assert not np.allclose(y3[1, 2:], full[1, 2:])

    # decode with the KV cache == full causal forward (cache shapes from eval_shape: no extra compile)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, VALID, causal=True, decode=True))["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    assert (B, L) in [a.shape for a in jax.tree.leaves(cache)]  # Lmax = L

    @jax.jit
    def step(cache, xt, vt):
        out, mut = model.apply({"params": params, "cache": cache}, xt, vt, causal=True, decode=True, mutable=["cache"])
        return out, mut["cache"]

    outs, s = [], 0
    for n in (2, 1, 1, 1):  # a 2-token prefill chunk, then token by token
        o, cache = step(cache, x[:, s : s + n], VALID[:, s : s + n])
        outs.append(np.asarray(o))
        s += n
    dec = np.concatenate(outs, axis=1)
    np.testing.assert_allclose(dec[VALID], full[VALID], atol=1e-4)
    if not model.zero_padding_outputs:  # SASRec zeroes padded rows before the final LN; elsewhere they match too
        np.testing.assert_allclose(dec, full, atol=1e-4)


def test_bidirectional_padding():
    model, variables = stack_variables("pre_layer_gelu")
    fwd = jax.jit(lambda x: model.apply(variables, x, VALID, causal=False))
    x = rand(8, B, L, D)
    y = np.asarray(fwd(x))
    y2 = np.asarray(fwd(np.where(VALID[..., None], x, rand(9, B, L, D) * 10)))
    np.testing.assert_allclose(y2[VALID], y[VALID], atol=ATOL)
    x3 = x.copy()
    x3[:, 3] += rand(12, D)  # the future influences the past (not a constant shift: LayerNorm would remove it)
    assert not np.allclose(np.asarray(fwd(x3))[:, 2], y[:, 2])


def test_stack_logical_axes_and_dropout():
    model = stack("llama", dropout_rate=0.5, num_layers=1)
    x = rand(11, B, L, D)
    v = jax.jit(lambda r, x: model.init(r, x, causal=True))(jax.random.PRNGKey(0), x)
    spec = nn.get_partition_spec(v)["params"]
    blk = spec["layer_0"]
    assert blk["attn"]["query"]["kernel"] == P("embed", "heads", "kv")
    assert blk["attn"]["out"]["kernel"] == P("heads", "kv", "embed")
    assert blk["ffn"]["wi_gate"]["kernel"] == P("embed", "mlp") and blk["ffn"]["wo"]["kernel"] == P("mlp", "embed")
    assert blk["attn_norm"]["scale"] == P("embed") and spec["final_norm"]["scale"] == P("embed")
    assert "bias" not in blk["attn"]["query"]
    for leaf in jax.tree.leaves(spec, is_leaf=lambda s: isinstance(s, P)):
        assert isinstance(leaf, P) and all(a in ("embed", "mlp", "heads", "kv") for a in leaf)
    det = jax.jit(lambda v, x: model.apply(v, x, causal=True))(v, x)
    fwd = jax.jit(lambda v, x, r: model.apply(v, x, causal=True, deterministic=False, rngs={"dropout": r}))
    d1 = fwd(v, x, jax.random.PRNGKey(1))
    d2 = fwd(v, x, jax.random.PRNGKey(1))
    d3 = fwd(v, x, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d2))
    assert not np.allclose(np.asarray(d1), np.asarray(d3)) and not np.allclose(np.asarray(d1), np.asarray(det))


@pytest.mark.parametrize("key_mask", [False, True])
def test_packed_rows_equal_the_dense_stack(key_mask):
    """``pack_capacity``: the position-wise work on the real tokens only gives the dense stack's output, padding
    rows included, and its gradients -- in eval mode against the plain stack, in training (hash dropout) against
    its own dense fallback (a capacity below the token count); threefry draws other masks for packed rows."""
    B, L, D = 4, 6, 16
    cfg = T.sasrec_config(D, num_heads=2, dropout_rate=0.3)
    cfg["mask_keys_with_valid"] = key_mask
    rng = np.random.default_rng(0)
    lens = np.array([6, 2, 0, 4])  # 12 real tokens
    valid = jnp.asarray(np.arange(L)[None, :] >= L - lens[:, None])
    x = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32) * valid[..., None]
    for impl in ("hash", "threefry"):
        m = T.TransformerStack(**dict(cfg, dropout_impl=impl))
        params = m.init(jax.random.PRNGKey(0), x, valid, causal=True)
        # non-zero norm biases so that the padding rows' final norm is checked
        params = jax.tree_util.tree_map_with_path(
            lambda p, a: a + 0.1 if "bias" in jax.tree_util.keystr(p) else a, params)

        def run(cap, det):
            f = lambda p: m.apply(p, x, valid, causal=True, deterministic=det, pack_capacity=cap,  # noqa: E731
                                  rngs={"dropout": jax.random.PRNGKey(5)})
            return jax.jit(f)(params), jax.jit(jax.grad(lambda p: (f(p) ** 2).sum()))(params)

        def close(a, b):
            np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-5)
            jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5),
                         a[1], b[1])

        ref = run(None, True)
        for cap in (12, 32, 5):  # exact fit, slack, dense fallback
            close(run(cap, True), ref)
        packed, fallback = run(12, False), run(5, False)
        assert np.abs(np.asarray(packed[0]) - np.asarray(ref[0])).max() > 1e-3  # dropout is on
        if impl == "hash":
            close(packed, fallback)
        else:
            assert np.abs(np.asarray(packed[0]) - np.asarray(fallback[0])).max() > 1e-3
    with pytest.raises(ValueError, match="pack_capacity"):
        T.TransformerStack(**T.llama_config(D, 2, 1)).init(jax.random.PRNGKey(0), x, valid, causal=True,
                                                           pack_capacity=8)


def test_pack_rows_roundtrip():
    valid = jnp.asarray([[False, True, True], [True, False, True]])
    index, count = T.pack_rows(valid, 6)
    assert int(count) == 4 and index.tolist() == [1, 2, 3, 5, 6, 6]
    x = jnp.arange(6 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    rows = T.take_rows(x, index)
    np.testing.assert_array_equal(np.asarray(rows[4:]), 0)
    back = T.unpack_rows(rows, index, (2, 3), jnp.asarray([-1.0, -2.0]))
    np.testing.assert_array_equal(np.asarray(back), np.where(np.asarray(valid)[..., None], np.asarray(x),
                                                             [-1.0, -2.0]))
