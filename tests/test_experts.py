"""jaxrec.nn.experts: batched expert bank vs a per-expert loop, per-expert BatchNorm, feature-gate and self-gate
against NumPy, masked gates, one MoE level against a NumPy reference, diagnostics on crafted activations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels import moe
from jaxrec.nn.experts import (BatchedDense, ExpertBank, FeatureGate, GateNetwork, MoELevel, as_static_mask,
                               expert_loop_reference, self_gate_weights)

pytestmark = pytest.mark.usefixtures("fast_compile")  # tiny shapes: skip XLA optimisation passes


def _np(x):
    return np.asarray(jax.device_get(x), np.float64)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _silu(x):
    return x * _sigmoid(x)


@pytest.mark.parametrize("shared_input", [True, False])
def test_batched_dense_equals_per_expert_loop(shared_input):
    rng = np.random.default_rng(0)
    B, E, Din, F = 5, 4, 6, 3
    x = rng.normal(size=(B, Din) if shared_input else (B, E, Din)).astype(np.float32)
    layer = BatchedDense(E, F, bias_init=nn.initializers.normal(1.0))
    params = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
    y = _np(jax.jit(layer.apply)(params, x))
    k = _np(nn.meta.unbox(params)["params"]["kernel"])
    b = _np(nn.meta.unbox(params)["params"]["bias"])
    assert k.shape == (E, Din, F) and b.shape == (E, F)
    for e in range(E):
        xe = x if shared_input else x[:, e]
        np.testing.assert_allclose(y[:, e], xe @ k[e] + b[e], rtol=1e-5, atol=1e-5)
    with expert_loop_reference():  # the benchmark's per-expert loop formulation gives the same result
        y_loop = _np(layer.apply(params, x))
    np.testing.assert_allclose(y_loop, y, rtol=1e-5, atol=1e-5)
    # logical axes ("expert", "embed", "mlp")
    spec = nn.get_partition_spec(params)["params"]["kernel"]
    assert tuple(spec) == ("expert", "embed", "mlp")


def test_expert_bank_batchnorm_swish_matches_loop_with_per_expert_statistics():
    rng = np.random.default_rng(1)
    B, E, Din, H, De = 16, 3, 5, 7, 4
    x = rng.normal(size=(B, Din)).astype(np.float32)
    bank = ExpertBank(E, De, hidden=(H,), act="swish", norm="batch", bn_momentum=0.9)
    variables = jax.jit(bank.init)(jax.random.PRNGKey(1), x)
    assert variables["batch_stats"]["norm_1"]["mean"].shape == (E, De)  # one statistic per expert and unit
    p = nn.meta.unbox(variables["params"])
    # make every expert's output scale different so per-expert normalisation matters
    p["dense_1"]["kernel"] = p["dense_1"]["kernel"] * jnp.arange(1, E + 1, dtype=jnp.float32)[:, None, None] ** 2
    p["dense_1"]["bias"] = jnp.asarray(rng.normal(size=(E, De)) * 5, jnp.float32)
    train = jax.jit(lambda v, x: bank.apply(v, x, train=True, mutable=["batch_stats"]))
    (out, pre), upd = train({"params": p, "batch_stats": variables["batch_stats"]}, x)
    out, pre = _np(out), _np(pre)
    w0, b0 = _np(p["dense_0"]["kernel"]), _np(p["dense_0"]["bias"])
    w1, b1 = _np(p["dense_1"]["kernel"]), _np(p["dense_1"]["bias"])
    for e in range(E):
        z = _silu(x @ w0[e] + b0[e]) @ w1[e] + b1[e]
        mu, var = z.mean(0), z.var(0)
        zn = (z - mu) / np.sqrt(var + 1e-5)  # scale 1, bias 0 at init
        np.testing.assert_allclose(pre[:, e], zn, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out[:, e], _silu(zn), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(_np(upd["batch_stats"]["norm_1"]["mean"])[e], 0.1 * mu, rtol=1e-4, atol=1e-5)
    # every expert is standardised whatever its raw scale
    np.testing.assert_allclose(pre.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(pre.std(0), 1, atol=1e-2)
    # eval uses the running statistics: an example's output does not depend on the rest of the batch
    ev = jax.jit(lambda v, x: bank.apply(v, x, train=False)[0])
    v2 = {"params": p, "batch_stats": upd["batch_stats"]}
    np.testing.assert_allclose(_np(ev(v2, x))[:3], _np(ev(v2, x[:3])), rtol=1e-5, atol=1e-5)


def test_expert_bank_relu_without_norm_has_no_batch_stats():
    x = np.ones((2, 3), np.float32)
    v = jax.eval_shape(ExpertBank(2, 4, act="relu", norm="none").init, jax.random.PRNGKey(0), x)
    assert "batch_stats" not in v


def test_feature_gate_matches_numpy_identity_at_init_and_bounded():
    rng = np.random.default_rng(2)
    B, E, D, r = 4, 3, 6, 2
    x = rng.normal(size=(B, E, D)).astype(np.float32)
    fg = FeatureGate(num_gates=2, rank=r)
    idx = (0, 1, 1)  # experts 1 and 2 share a gate
    v = jax.jit(lambda k, x: fg.init(k, x, idx))(jax.random.PRNGKey(0), x)
    xg, gate = jax.jit(lambda v, x: fg.apply(v, x, idx))(v, x)
    np.testing.assert_allclose(_np(gate), 1.0, atol=0)  # zero-initialised B: the gate is exactly 1
    np.testing.assert_allclose(_np(xg), x, atol=0)
    p = nn.meta.unbox(v["params"])
    bmat = rng.normal(size=(2, D, r)).astype(np.float32)
    amat = _np(p["lora_a"])
    xg, gate = jax.jit(lambda v, x: fg.apply(v, x, idx))({"params": {"lora_b": bmat, "lora_a": amat}}, x)
    for e, k in enumerate(idx):
        ref = 2.0 * _sigmoid(x[:, e] @ bmat[k] @ amat[k])
        np.testing.assert_allclose(_np(gate)[:, e], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(xg)[:, e], x[:, e] * ref, rtol=1e-5, atol=1e-6)
    assert (_np(gate) > 0).all() and (_np(gate) < 2).all()


def test_self_gate_sigmoid_for_one_expert_softmax_for_several():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 3, 6)).astype(np.float32)
    mask = np.zeros((3, 6), bool)
    mask[0, 4] = True  # K = 1: sigmoid
    mask[1, [1, 2, 5]] = True  # K = 3: softmax over the three
    # row 2: no own experts -> zeros
    w = _np(jax.jit(lambda l: self_gate_weights(l, mask))(logits))
    assert w.shape == (5, 3, 6)
    np.testing.assert_allclose(w[:, 0, 4], _sigmoid(logits[:, 0, 4]), rtol=1e-6)
    np.testing.assert_allclose(np.delete(w[:, 0], 4, axis=-1), 0, atol=0)
    np.testing.assert_allclose(w[:, 1][:, [1, 2, 5]], _softmax(logits[:, 1][:, [1, 2, 5]]), rtol=1e-5)
    np.testing.assert_allclose(w[:, 1][:, [0, 3, 4]], 0, atol=0)
    np.testing.assert_allclose(w[:, 2], 0, atol=0)


def test_masked_gate_network_holds_weights_only_for_allowed_experts():
    rng = np.random.default_rng(4)
    mask = moe.cgc_mask(2, 1, 3)  # 3 gates over 5 experts, 3 allowed each
    x = rng.normal(size=(6, 3, 4)).astype(np.float32)
    net = GateNetwork(3, 5, tuple(map(tuple, mask)))
    v = jax.jit(net.init)(jax.random.PRNGKey(0), x)
    k = _np(nn.meta.unbox(v["params"])["kernel"])
    bias = rng.normal(size=(3, 3)).astype(np.float32)
    assert k.shape == (3, 4, 3)  # 3 slots, not 5
    logits = _np(jax.jit(net.apply)({"params": {"kernel": k, "bias": bias}}, x))
    for g in range(3):
        allowed = np.nonzero(mask[g])[0]
        np.testing.assert_allclose(logits[:, g, allowed], x[:, g] @ k[g] + bias[g], rtol=1e-5, atol=1e-5)
    w = _np(moe.softmax_gate(logits, mask))
    assert (w[:, ~mask] == 0).all()
    np.testing.assert_allclose(w.sum(-1), 1, rtol=1e-6)


def _numpy_level(p, inputs, level: MoELevel):
    """Per-expert / per-gate Python loop reference of MoELevel (no norm, swish experts of one layer)."""
    n = level.num_experts
    fgb, fga = _np(p["feature_gate"]["lora_b"]), _np(p["feature_gate"]["lora_a"])
    k, b = _np(p["experts"]["dense_0"]["kernel"]), _np(p["experts"]["dense_0"]["bias"])
    outs = []
    for e in range(n):
        xe = inputs[:, level.expert_inputs[e]]
        f = level.feature_gate_index[e]
        xe = xe * 2 * _sigmoid(xe @ fgb[f] @ fga[f])
        outs.append(_silu(xe @ k[e] + b[e]))
    E = np.stack(outs, 1)  # [B, N, De]
    mask = as_static_mask(level.gate_mask)
    smask = as_static_mask(level.self_gate_mask)
    mix = []
    for g, gi in enumerate(level.gate_inputs):
        xg = np.concatenate([inputs[:, j] for j in gi], -1)
        gk, gb = _np(p["gates"]["kernel"])[g], _np(p["gates"]["bias"])[g]
        allowed = np.nonzero(mask[g])[0]
        w = _softmax(xg @ gk + gb)
        h = np.einsum("bk,bkd->bd", w, E[:, allowed])
        own = np.nonzero(smask[g])[0]
        if own.size:
            row = list(np.nonzero(smask.any(-1))[0]).index(g)
            sk, sb = _np(p["self_gates"]["kernel"])[row], _np(p["self_gates"]["bias"])[row]
            sl = xg @ sk + sb
            sw = _sigmoid(sl) if own.size == 1 else _softmax(sl)
            h = h + np.einsum("bk,bkd->bd", sw, E[:, own])
        mix.append(h)
    return np.stack(mix, 1), E


def test_moe_level_matches_per_expert_numpy_reference():
    rng = np.random.default_rng(5)
    B, J, D, De = 4, 3, 5, 6
    # HoME-style task layer: inputs [z_c0, z_c1, z_sh]; experts: 1 shared (reads z_sh), 1 per category, 1 per task
    task_groups = [0, 0, 1]
    mask = moe.hierarchy_mask(1, 1, task_groups, 1)  # [3 tasks, 1 + 2 + 3 experts]
    own = np.zeros_like(mask)
    own[np.arange(3), 3 + np.arange(3)] = True
    level = MoELevel(num_experts=6, expert_inputs=(2, 0, 1, 0, 0, 1), gate_inputs=((2, 0), (2, 0), (2, 1)),
                     gate_mask=tuple(map(tuple, mask)), self_gate_mask=tuple(map(tuple, own)),
                     feature_gate_index=tuple(range(6)), feature_gate_rank=2, expert_dim=De, expert_act="swish",
                     expert_norm="none")
    inputs = rng.normal(size=(B, J, D)).astype(np.float32)
    v = jax.jit(level.init)(jax.random.PRNGKey(0), inputs)
    p = jax.tree.map(lambda a: np.asarray(a) + rng.normal(size=a.shape).astype(np.float32) * 0.3,
                     nn.meta.unbox(v["params"]))  # non-trivial feature gates / biases
    mix, aux = jax.jit(lambda p, x: level.apply({"params": p}, x))(p, inputs)
    ref_mix, ref_e = _numpy_level(p, inputs, level)
    np.testing.assert_allclose(_np(aux["expert_out"]), ref_e, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(mix), ref_mix, rtol=1e-4, atol=1e-5)
    w = _np(aux["gate_weights"])
    assert (w[:, ~mask] == 0).all()  # never any weight outside the mask
    np.testing.assert_allclose(w.sum(-1), 1, rtol=1e-6)


def test_diagnostics_on_crafted_collapsed_relu_expert():
    from jaxrec.models.multitask import LevelPlan, per_example_diagnostics

    rng = np.random.default_rng(6)
    B, N, De = 32, 3, 8
    x = rng.normal(size=(B, 5)).astype(np.float32)
    bank = ExpertBank(N, De, act="relu", norm="none")
    v = jax.jit(bank.init)(jax.random.PRNGKey(0), x)
    p = jax.tree.map(np.array, nn.meta.unbox(v["params"]))
    p["dense_0"]["bias"][1] = -1e3  # expert 1: dead ReLU, always 0
    p["dense_0"]["kernel"][2] *= 10.0  # expert 2: 10x the scale
    out, _ = jax.jit(bank.apply)({"params": p}, x)
    mask = ((True, True, True),)
    plan = LevelPlan(name="L", input_names=("v",), expert_names=("a", "b", "c"), expert_inputs=(0, 0, 0),
                     expert_group=(0, 0, 0), gate_names=("t",), gate_inputs=((0,),), gate_mask=mask,
                     own_experts=((),))
    onehot = jnp.zeros((B, 1, N)).at[:, 0, 0].set(1.0)
    aux = {"L": {"expert_out": out, "gate_weights": onehot, "self_weights": jnp.zeros((B, 1, N))}}
    d = {k: _np(v) for k, v in jax.jit(lambda a: per_example_diagnostics(a, [plan]))(aux).items()}
    zf = d["L/zero_frac"].mean(0)
    assert zf[1] == 1.0  # collapsed expert: every activation is zero
    assert 0.2 < zf[0] < 0.8 and 0.2 < zf[2] < 0.8  # healthy ReLU experts: about half
    np.testing.assert_allclose(zf, _np(moe.zero_activation_fraction(out)), rtol=1e-6)
    scale = d["L/scale"].mean(0)
    assert scale[1] == 0 and 8 < scale[2] / scale[0] < 12
    np.testing.assert_allclose(d["L/gate_entropy"], 0, atol=1e-7)  # one-hot gate: zero entropy
