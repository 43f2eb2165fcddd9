"""jaxrec.kernels.moe against naive NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels import moe

from helpers import rand


pytestmark = pytest.mark.usefixtures("fast_compile")


def ref_softmax(row, allowed):
    out = np.zeros(len(row))
    idx = [i for i in range(len(row)) if allowed[i]]
    if idx:
        e = np.exp(np.array([row[i] for i in idx], np.float64) - max(row[i] for i in idx))
        out[idx] = e / e.sum()
    return out


# ---------------------------------------------------------------------------------------------- gates


def test_softmax_gate():
    B, T, E = 3, 2, 5
    logits = rand(0, B, T, E)
    mask = np.array([[1, 1, 0, 0, 1], [0, 0, 0, 0, 0]], bool)  # task 1: no expert allowed
    w = np.asarray(jax.jit(moe.softmax_gate)(logits, mask))
    assert w.shape == (B, T, E) and w.dtype == np.float32
    for b in range(B):
        for t in range(T):
            np.testing.assert_allclose(w[b, t], ref_softmax(logits[b, t], mask[t]), atol=1e-6)
    assert np.all(w[:, 1] == 0.0) and np.all(w[:, 0, 2:4] == 0.0)
    g = jax.jit(jax.grad(lambda x: jnp.sum(moe.softmax_gate(x, mask) ** 2)))(logits)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(moe.softmax_gate(logits)), np.asarray(jax.nn.softmax(logits)), atol=1e-6)


def ref_top_k(row, k, allowed, renormalize):
    """Loop reference: stable sort by (-logit, index) among allowed, then masked ones by index."""
    E = len(row)
    order = sorted(range(E), key=lambda i: (0 if allowed[i] else 1, -row[i] if allowed[i] else 0, i))
    kk = min(k, E)
    idx = order[:kk]
    sel = [i for i in idx if allowed[i]]
    w = np.zeros(E)
    if renormalize:
        sel_mask = np.zeros(E, bool)
        sel_mask[sel] = True
        w = ref_softmax(row, sel_mask)
    else:
        full = ref_softmax(row, allowed)
        w[sel] = full[sel]
    return w, idx


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_top_k_gate_matches_reference(k, renormalize):
    B, E = 4, 6
    logits = rand(1, B, E)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    w, idx = moe.top_k_gate(logits, k, mask, renormalize=renormalize)
    assert w.shape == (B, E) and idx.shape == (B, min(k, E))
    for b in range(B):
        rw, ridx = ref_top_k(logits[b], k, mask[b], renormalize)
        np.testing.assert_allclose(np.asarray(w)[b], rw, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(idx)[b], ridx)
    assert np.all(np.asarray(w)[~mask] == 0.0) and np.all(np.asarray(w)[3] == 0.0)
    if renormalize:
        np.testing.assert_allclose(np.asarray(w).sum(-1), [1, 1, 1, 0], atol=1e-6)


def test_top_k_gate_ties_lowest_index_and_no_mask():
    logits = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    w, idx = jax.jit(moe.top_k_gate, static_argnums=1)(logits, 2)
    np.testing.assert_array_equal(np.asarray(idx), [[1, 2], [0, 1]])
    np.testing.assert_allclose(np.asarray(w), [[0, 0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0, 0]], atol=1e-6)
    # same order as lax.top_k
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(jax.lax.top_k(logits, 2)[1]))
    # masked tie: lowest *allowed* index wins
    _, idx2 = moe.top_k_gate(logits[:1], 1, np.array([[1, 0, 1, 1, 1]], bool))
    np.testing.assert_array_equal(np.asarray(idx2), [[2]])
    w3, _ = moe.top_k_gate(rand(2, 2, 3, 4), 2)
    np.testing.assert_allclose(np.asarray(w3).sum(-1), np.ones((2, 3)), atol=1e-6)
    assert np.all((np.asarray(w3) > 0).sum(-1) == 2)


# ---------------------------------------------------------------------------------------------- masks


def test_mmoe_cgc_ple_masks():
    assert moe.mmoe_mask(4, 3).shape == (3, 4) and moe.mmoe_mask(4, 3).all()
    m = moe.cgc_mask(2, 1, num_tasks=3)
    expected = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 0, 1]], bool)
    np.testing.assert_array_equal(m, expected)
    m2 = moe.cgc_mask(1, [2, 1])
    np.testing.assert_array_equal(m2, [[1, 1, 1, 0], [1, 0, 0, 1]])
    p = moe.ple_mask(2, 1, num_tasks=3)
    np.testing.assert_array_equal(p, np.concatenate([expected, np.ones((1, 5), bool)]))
    np.testing.assert_array_equal(moe.ple_mask(2, 1, 3, include_shared_gate=False), expected)
    with pytest.raises(ValueError):
        moe.cgc_mask(2, 1)
    with pytest.raises(ValueError):
        moe.cgc_mask(2, [1, 1], num_tasks=3)


def ref_hierarchy(num_shared, group_counts, task_groups, task_counts):
    """Loop reference over (task, expert), with expert owners listed explicitly."""
    owners = [("shared", None)] * num_shared
    for g, c in group_counts.items():
        owners += [("group", g)] * c
    for t, c in enumerate(task_counts):
        owners += [("task", t)] * c
    m = np.zeros((len(task_groups), len(owners)), bool)
    for t, g in enumerate(task_groups):
        for e, (kind, who) in enumerate(owners):
            m[t, e] = kind == "shared" or (kind == "group" and who == g) or (kind == "task" and who == t)
    return m


def test_hierarchy_mask_and_layout():
    # HoME task layer: 2 shared, categories watch (2 experts) / interact (3), 4 tasks, 1 own expert each.
    groups = {"watch": 2, "interact": 3}
    tasks = ["watch", "watch", "interact", "interact"]
    m = moe.hierarchy_mask(2, groups, tasks, 1)
    ref = ref_hierarchy(2, groups, tasks, [1, 1, 1, 1])
    assert m.shape == (4, 2 + 5 + 4) and m.dtype == bool
    np.testing.assert_array_equal(m, ref)
    lay = moe.hierarchy_layout(2, groups, tasks, 1)
    assert lay["shared"] == slice(0, 2)
    assert lay["groups"] == {"watch": slice(2, 4), "interact": slice(4, 7)}
    assert lay["tasks"] == [slice(7, 8), slice(8, 9), slice(9, 10), slice(10, 11)]
    assert lay["num_experts"] == 11
    # int / list group counts, per-task counts, a task with no group
    m2 = moe.hierarchy_mask(1, 2, [0, 1, 1, None], [0, 2, 1, 1])
    np.testing.assert_array_equal(m2, ref_hierarchy(1, {0: 2, 1: 2}, [0, 1, 1, None], [0, 2, 1, 1]))
    m3 = moe.hierarchy_mask(0, [1, 3], [1, 0], 0)
    np.testing.assert_array_equal(m3, ref_hierarchy(0, {0: 1, 1: 3}, [1, 0], [0, 0]))
    # meta layer: one gate per category over shared + own category
    meta = moe.hierarchy_mask(4, [2, 2], [0, 1])
    np.testing.assert_array_equal(meta, [[1] * 4 + [1, 1, 0, 0], [1] * 4 + [0, 0, 1, 1]])
    # no groups == CGC
    np.testing.assert_array_equal(moe.hierarchy_mask(2, [], [None] * 3, 1), moe.cgc_mask(2, 1, 3))
    with pytest.raises(ValueError):
        moe.hierarchy_mask(1, {"a": 1}, ["b"], 1)
    with pytest.raises(ValueError):
        moe.hierarchy_mask(1, 1, [0, 0], [1])


def test_mask_drives_gate():
    m = moe.hierarchy_mask(1, [1, 1], [0, 1], 1)  # [2, 5]
    w = np.asarray(moe.softmax_gate(rand(3, 4, 2, 5), m))
    assert np.all(w[:, 0][:, ~m[0]] == 0.0)
    assert np.all(w[:, 1][:, ~m[1]] == 0.0)
    np.testing.assert_allclose(w.sum(-1), np.ones((4, 2)), atol=1e-6)


# -------------------------------------------------------------------------------------------- combine


def test_combine():
    B, T, E, D = 3, 2, 4, 5
    outs = rand(4, B, E, D)
    w = np.asarray(moe.softmax_gate(rand(5, B, T, E)))
    got = np.asarray(jax.jit(moe.combine)(outs, w))
    ref = np.zeros((B, T, D))
    for b in range(B):
        for t in range(T):
            for e in range(E):
                ref[b, t] += w[b, t, e] * outs[b, e]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(moe.combine(outs, w[:, 0])), ref[:, 0], atol=1e-5)
    with pytest.raises(ValueError):
        moe.combine(outs[0], w)
    with pytest.raises(ValueError):
        moe.combine(outs, w[None])


# ---------------------------------------------------------------------------------------- diagnostics


def test_zero_activation_fraction():
    B, E, H = 6, 3, 4
    acts = np.maximum(rand(6, B, E, H), 0.0)
    acts[:, 1] = 0.0  # dead expert
    acts[:, 2] = np.abs(acts[:, 2]) + 1.0  # never zero
    ex = np.array([1, 1, 0, 1, 1, 0], bool)
    got = np.asarray(jax.jit(moe.zero_activation_fraction)(acts, 0.0, ex))
    ref = np.zeros(E)
    for e in range(E):
        vals = [acts[b, e, h] <= 0 for b in range(B) if ex[b] for h in range(H)]
        ref[e] = np.mean(vals)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got[1] == 1.0 and got[2] == 0.0
    np.testing.assert_allclose(np.asarray(moe.zero_activation_fraction(acts, threshold=1.5))[2], np.mean(acts[:, 2] <= 1.5))
    np.testing.assert_allclose(np.asarray(moe.zero_activation_fraction(acts)), (acts <= 0).mean(axis=(0, 2)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(moe.zero_activation_fraction(acts, example_mask=np.zeros(B))), np.zeros(E))


def test_expert_output_scale():
    B, E, D = 5, 3, 4
    x = rand(7, B, E, D) * np.array([1.0, 10.0, 0.1], np.float32)[None, :, None]
    ex = np.array([1, 0, 1, 1, 0], bool)
    mean_abs = np.asarray(moe.expert_output_scale(x, "mean_abs", ex))
    rms = np.asarray(moe.expert_output_scale(x, kind="rms"))
    for e in range(E):
        np.testing.assert_allclose(mean_abs[e], np.mean([abs(x[b, e, d]) for b in range(B) if ex[b] for d in range(D)]), rtol=1e-5)
        np.testing.assert_allclose(rms[e], np.sqrt(np.mean(x[:, e] ** 2)), rtol=1e-5)
    assert mean_abs[1] > mean_abs[0] > mean_abs[2]
    with pytest.raises(ValueError):
        moe.expert_output_scale(x, "max")


def test_gate_entropy():
    w = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], np.float32)
    got = np.asarray(jax.jit(moe.gate_entropy)(w))
    ref = [-sum(p * np.log(p) for p in row if p > 0) for row in w]
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got[0], np.log(4), atol=1e-6)
    assert got[1] == 0.0 and got[2] == 0.0
    assert moe.gate_entropy(np.ones((2, 3, 5)) / 5).shape == (2, 3)
    g = jax.jit(jax.grad(lambda x: jnp.sum(moe.gate_entropy(x))))(w)
    assert np.all(np.isfinite(np.asarray(g)))


def test_usage_matrix():
    B, T, E = 5, 2, 3
    w = np.asarray(moe.softmax_gate(rand(8, B, T, E)))
    ex = np.array([1, 1, 0, 1, 0], bool)
    got = np.asarray(jax.jit(moe.usage_matrix)(w, ex))
    ref = np.zeros((T, E))
    for t in range(T):
        for e in range(E):
            ref[t, e] = np.mean([w[b, t, e] for b in range(B) if ex[b]])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(np.asarray(moe.usage_matrix(w)), w.mean(0), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(moe.usage_matrix(w, np.zeros(B, bool))), np.zeros((T, E)))
