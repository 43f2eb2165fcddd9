"""jaxrec.kernels.graph against naive NumPy / python references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from jaxrec.kernels import graph as G


def _rand_graph(rng, n, e, d=3):
    x = rng.normal(size=(n, d)).astype(np.float32)
    s = rng.integers(0, n, size=e).astype(np.int32)
    r = rng.integers(0, n, size=e).astype(np.int32)
    w = rng.uniform(0.1, 2.0, size=e).astype(np.float32)
    return x, s, r, w


def _ref_propagate(x, s, r, w, n, reduce, edge_mask=None):
    d = x.shape[1]
    out = np.zeros((n, d), np.float64)
    for i in range(n):
        msgs = [
            (1.0 if w is None else w[e]) * x[s[e]].astype(np.float64)
            for e in range(len(s))
            if r[e] == i and (edge_mask is None or edge_mask[e])
        ]
        if not msgs:
            continue
        m = np.stack(msgs)
        out[i] = {"sum": m.sum(0), "mean": m.mean(0), "max": m.max(0)}[reduce]
    return out


REDUCES = ("sum", "mean", "max")


def test_propagate_matches_reference():
    rng = np.random.default_rng(0)
    n = 7
    x, s, r, w = _rand_graph(rng, n, 15)
    # node 6 isolated (no incoming edges), node 5 only a sender
    r = np.where(r >= 5, 0, r).astype(np.int32)
    s[0] = 5
    em = rng.random(15) < 0.6

    @jax.jit
    def run(x, s, r, w, em):  # every variant in one compilation (keeps the test fast)
        return {
            (red, kind): G.propagate(x, s, r, weight=ww, num_nodes=n, reduce=red, edge_mask=mm)
            for red in REDUCES
            for kind, ww, mm in (("none", None, None), ("w", w, None), ("w+mask", w, em))
        }

    got = run(x, s, r, w, em)
    for red in REDUCES:
        for kind, weight, mask in (("none", None, None), ("w", w, None), ("w+mask", w, em)):
            out = np.asarray(got[(red, kind)])
            np.testing.assert_allclose(out, _ref_propagate(x, s, r, weight, n, red, mask), rtol=1e-5, atol=1e-5)
            assert np.all(np.isfinite(out))
            if kind != "w+mask":
                assert np.all(out[5:] == 0)


def test_propagate_zero_edges():
    x = np.ones((4, 2), np.float32)
    e = np.zeros((0,), np.int32)
    got = jax.jit(lambda x, e, w: [G.propagate(x, e, e, ww, 4, red) for red in REDUCES for ww in (None, w)])(
        x, e, np.zeros((0,), np.float32)
    )
    for out in got:
        np.testing.assert_array_equal(out, np.zeros((4, 2)))
    with pytest.raises(ValueError):
        G.propagate(x, e, e, None, 4, "min")


def test_propagate_gradient_finite_for_max_with_isolated_nodes():
    x, s, r, _ = _rand_graph(np.random.default_rng(1), 5, 4)
    r = np.zeros_like(r)
    g = jax.jit(jax.grad(lambda x: G.propagate(x, s, r, None, 5, "max").sum()))(jnp.asarray(x))
    assert np.all(np.isfinite(g))


def test_spmm_equals_dense_and_coo_roundtrip():
    rng = np.random.default_rng(2)
    dense = (rng.random((6, 6)) < 0.4) * rng.uniform(0.5, 2.0, (6, 6))
    dense[3] = 0  # an empty row
    x = rng.normal(size=(6, 4)).astype(np.float32)
    # duplicate COO entries are summed
    coo = sp.coo_matrix(dense)
    dup = sp.coo_matrix(
        (np.concatenate([coo.data / 2, coo.data / 2]), (np.tile(coo.row, 2), np.tile(coo.col, 2))), shape=(6, 6)
    )
    spmm = jax.jit(G.spmm, static_argnums=4)
    for m in (dense, coo, dup, sp.csr_matrix(dense)):
        s, r, w, n = G.edges_from_coo(m)
        assert n == 6 and len(s) == np.count_nonzero(dense)
        np.testing.assert_allclose(spmm(s, r, w, x, n), dense @ x, rtol=1e-5, atol=1e-5)
    s, r, w, n = G.edges_from_coo(np.zeros((3, 3)))
    assert s.shape == (0,)
    np.testing.assert_array_equal(spmm(s, r, w, np.ones((3, 2), np.float32), n), np.zeros((3, 2)))


def _dense(s, r, w, n):
    a = np.zeros((n, n))
    for e in range(len(s)):
        a[r[e], s[e]] += 1.0 if w is None else w[e]
    return a


def test_row_and_symmetric_norm_vs_dense():
    rng = np.random.default_rng(3)
    n = 6
    _, s, r, w = _rand_graph(rng, n, 12)
    r = np.where(r == 5, 0, r).astype(np.int32)  # node 5 has zero (row) degree

    @jax.jit
    def run(s, r, w):
        out = {}
        for kind, ww in (("none", None), ("w", w)):
            for loops in (False, True):
                out[(kind, "row", loops)] = G.row_norm_weights(s, r, n, ww, add_self_loops=loops)
                out[(kind, "sym", loops)] = G.symmetric_norm_weights(s, r, n, ww, add_self_loops=loops)
        return out

    got = run(s, r, w)
    for kind, weight in (("none", None), ("w", w)):
        a = _dense(s, r, weight, n)
        for loops in (False, True):
            al = a + np.eye(n) if loops else a
            deg = al.sum(1)
            dinv = np.where(deg > 0, 1 / np.where(deg > 0, deg, 1), 0)
            dis = np.sqrt(dinv)
            for norm, want in (("row", dinv[:, None] * al), ("sym", dis[:, None] * al * dis[None, :])):
                s2, r2, nw = map(np.asarray, got[(kind, norm, loops)])
                assert nw.shape == (len(s) + n * loops,) and np.all(np.isfinite(nw))
                np.testing.assert_allclose(_dense(s2, r2, nw, n), want, rtol=1e-5, err_msg=f"{kind} {norm} {loops}")


def test_norm_zero_edges_and_jit():
    e = np.zeros((0,), np.int32)
    f = jax.jit(G.symmetric_norm_weights, static_argnames=("num_nodes", "add_self_loops"))
    s, r, w = f(e, e, num_nodes=3)
    assert w.shape == (0,)
    s, r, w = f(e, e, num_nodes=3, add_self_loops=True)
    np.testing.assert_allclose(w, np.ones(3))


def test_c2dsr_graph_matches_official_construction():
    """C2DSR: directed consecutive-pair counts, row-normalised, H = (E + Â E + b) / 2."""
    V = 6  # PAD = 5
    seqs = [[0, 1, 2, 1, 2], [3, 1, 2], [5, 5, 4, 0], [2]]
    s, r, c = G.transition_edges(seqs, V, pad_id=5)
    a = np.zeros((V, V))
    for seq in seqs:
        seq = [i for i in seq if i != 5]
        for p, q in zip(seq[:-1], seq[1:]):
            a[p, q] += 1  # official: adj[prev][cur] += 1 for every occurrence
    np.testing.assert_allclose(_dense(s, r, c, V), a)
    rs = a.sum(1, keepdims=True)
    a_hat = np.where(rs > 0, a / np.where(rs > 0, rs, 1), 0)
    emb = np.random.default_rng(4).normal(size=(V, 4)).astype(np.float32)
    b = np.random.default_rng(5).normal(size=(1, 4)).astype(np.float32)
    b2 = np.stack([b[0], -b[0]])

    @jax.jit
    def run(s, r, c, emb, b, b2):
        s2, r2, nw = G.c2dsr_norm_weights(s, r, V, c)
        return (s2, r2, nw), G.c2dsr_propagate(emb, s2, r2, nw, b), G.c2dsr_propagate(emb, s2, r2, nw, b2)

    (s2, r2, nw), got, got2 = run(s, r, c, emb, b, b2)
    np.testing.assert_allclose(_dense(np.asarray(s2), np.asarray(r2), np.asarray(nw), V), a_hat, rtol=1e-6)
    # same COO as the official row-normalised scipy matrix
    off = sp.coo_matrix(a_hat)
    s3, r3, w3, _ = G.edges_from_coo(off)
    np.testing.assert_allclose(_dense(s3, r3, w3, V), a_hat, rtol=1e-6)
    np.testing.assert_allclose(got, (emb + a_hat @ emb + b[0]) / 2, rtol=1e-5, atol=1e-5)
    h1 = a_hat @ emb + b2[0]
    h2 = a_hat @ h1 + b2[1]
    np.testing.assert_allclose(got2, (emb + h1 + h2) / 3, rtol=1e-5, atol=1e-5)
    es, er, ec = G.transition_edges([[1], []], V)
    assert es.shape == er.shape == ec.shape == (0,)
    with pytest.raises(ValueError):
        G.transition_edges([[0, 9]], V)


def test_gcn_and_gin_aggregate():
    rng = np.random.default_rng(6)
    n = 5
    a = np.triu((rng.random((n, n)) < 0.5).astype(float), 1)
    a = a + a.T
    a[4, :] = a[:, 4] = 0  # isolated node
    s, r, w, _ = G.edges_from_coo(a)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    at = a + np.eye(n)
    d = at.sum(1)
    want = (at / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]) @ x
    e = np.zeros((0,), np.int32)

    @jax.jit
    def run(x, s, r, e):
        return (
            G.gcn_aggregate(x, s, r, n),
            G.gcn_aggregate(x, s, r, n, add_self_loops=False),
            [G.gin_aggregate(x, s, r, n, eps=eps) for eps in (0.0, 0.3)],
            G.gin_aggregate(x, e, e, n, eps=0.5),
            G.gcn_aggregate(x, e, e, n),
        )

    gcn, gcn_noloop, gins, gin_empty, gcn_empty = run(x, s, r, e)
    np.testing.assert_allclose(gcn, want, rtol=1e-5, atol=1e-6)
    d0 = a.sum(1)
    dis = np.where(d0 > 0, 1 / np.sqrt(np.where(d0 > 0, d0, 1)), 0)
    np.testing.assert_allclose(gcn_noloop, (dis[:, None] * a * dis[None]) @ x, rtol=1e-5, atol=1e-6)
    for eps, got in zip((0.0, 0.3), gins):
        np.testing.assert_allclose(got, (1 + eps) * x + a @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gin_empty, 1.5 * x, rtol=1e-6)
    np.testing.assert_allclose(gcn_empty, x, rtol=1e-6)


def _small_graphs(rng):
    gs = []
    for n_i, e_i in [(3, 4), (1, 0), (4, 6), (2, 1)]:
        x = rng.normal(size=(n_i, 2)).astype(np.float32)
        s = rng.integers(0, n_i, e_i)
        r = rng.integers(0, n_i, e_i)
        gs.append((x, s, r))
    return gs


def test_batch_graphs_layout_and_padding_changes_nothing():
    rng = np.random.default_rng(7)
    gs = _small_graphs(rng)
    gb = G.batch_graphs(gs, max_nodes=16, max_edges=20, max_graphs=6)
    assert gb.nodes.shape == (16, 2) and gb.senders.shape == (20,) and gb.n_node.shape == (6,)
    np.testing.assert_array_equal(gb.n_node, [3, 1, 4, 2, 0, 0])
    np.testing.assert_array_equal(gb.n_edge, [4, 0, 6, 1, 0, 0])
    np.testing.assert_array_equal(gb.graph_index[:10], [0, 0, 0, 1, 2, 2, 2, 2, 3, 3])
    assert np.all(gb.graph_index[10:] == 6)
    assert gb.node_mask.sum() == 10 and gb.edge_mask.sum() == 11
    assert np.all(gb.senders[11:] == 10) and np.all(gb.receivers[11:] == 10) and np.all(gb.edge_weight[11:] == 0)
    np.testing.assert_array_equal(gb.graph_mask, [1, 1, 1, 1, 0, 0])

    # message passing on the batch == per-graph message passing
    @jax.jit
    def step(gb):
        h = G.gin_aggregate(gb.nodes, gb.senders, gb.receivers, eps=0.1, weight=gb.edge_weight)
        h2 = G.gcn_aggregate(h, gb.senders, gb.receivers, weight=gb.edge_weight)
        h3 = G.propagate(h2, gb.senders, gb.receivers, None, reduce="max", edge_mask=gb.edge_mask)
        return G.graph_readout(h3, gb.graph_index, gb.num_graphs, gb.node_mask, "sum")

    got = np.asarray(step(gb))
    for gi, (x, s, r) in enumerate(gs):  # per-graph NumPy reference
        n_i = x.shape[0]
        a = _dense(s, r, None, n_i)
        h = 1.1 * x + a @ x
        at = a + np.eye(n_i)
        d = at.sum(1)
        h2 = (at / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]) @ h
        h3 = _ref_propagate(h2, s, r, None, n_i, "max")
        np.testing.assert_allclose(got[gi], h3.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[4:], 0)


def test_batch_graphs_errors_and_weights():
    x = np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match="max_nodes"):
        G.batch_graphs([(x, [0], [1])], max_nodes=2, max_edges=4)
    with pytest.raises(ValueError, match="max_edges"):
        G.batch_graphs([(x, [0, 1], [1, 0])], max_nodes=3, max_edges=1)
    with pytest.raises(ValueError, match="out of range"):
        G.batch_graphs([(x, [0], [2])], max_nodes=3, max_edges=1)
    with pytest.raises(ValueError, match="max_graphs"):
        G.batch_graphs([(x, [], []), (x, [], [])], max_nodes=8, max_edges=1, max_graphs=1)
    gb = G.batch_graphs([(x, [0], [1], [0.5]), (x, [1], [0], [2.0])], max_nodes=5, max_edges=3)
    np.testing.assert_allclose(gb.edge_weight, [0.5, 2.0, 0.0])
    np.testing.assert_array_equal(gb.senders, [0, 3, 4])


def test_graph_readout_reference():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    gi = np.array([0, 0, 2, 2, 2, 3, 0, 5, 4])  # graph 1 empty, graph 4 only masked nodes, node 7 out of range
    mask = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0], bool)
    got = jax.jit(lambda x, gi, m: {red: G.graph_readout(x, gi, 5, m, red) for red in REDUCES})(x, gi, mask)
    for red in REDUCES:
        want = np.zeros((5, 3))
        for g in range(5):
            rows = x[(gi == g) & mask]
            if len(rows):
                want[g] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0)}[red]
        np.testing.assert_allclose(got[red], want, rtol=1e-5, atol=1e-6, err_msg=red)


def test_readout_permutation_invariant():
    rng = np.random.default_rng(9)
    x, s, r, _ = _rand_graph(rng, 6, 10)
    perm = rng.permutation(6)
    inv = np.argsort(perm)
    gi = np.zeros(6, np.int32)
    f = jax.jit(lambda x, s, r: G.graph_readout(G.gin_aggregate(x, s, r), gi, 1))
    np.testing.assert_allclose(f(x, s, r), f(x[perm], inv[s], inv[r]), rtol=1e-5)


def _sorted_random_graph(n, e, seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, n, e)
    r = np.sort(rng.integers(0, n - 1, e))  # node n - 1 (a "PAD") has no incoming edge
    w = rng.random(e).astype(np.float32)
    return s.astype(np.int32), r.astype(np.int32), w


def test_propagate_rows_equals_full_propagation_rows_and_gradients():
    """Only the edges into the requested rows (static capacity, repeats and an edgeless row included) give the
    full propagation's rows and the same gradient w.r.t. the table; below capacity the exact fallback runs."""
    n, d = 40, 6
    s, r, w = _sorted_random_graph(n, 300, 0)
    ptr = G.csr_row_ptr(r, n)
    np.testing.assert_array_equal(np.diff(ptr), np.bincount(r, minlength=n))
    x = jax.random.normal(jax.random.PRNGKey(0), (n, d))
    rows = jnp.array([5, 0, 39, 5, 17, 39, 3])
    need = int(np.bincount(r, minlength=n)[np.asarray(rows)].sum())
    dense = _dense(s, r, w, n)
    msg = lambda h, ids: h * (1.0 + ids[:, None].astype(h.dtype))  # noqa: E731  (a per-sender message transform)
    ref_fn = lambda x: (dense @ msg(x, jnp.arange(n)))[rows]  # noqa: E731
    for cap in (need, need + 50, need - 1, 1):  # exact, larger, fallback, fallback
        f = jax.jit(lambda x, cap=cap: G.propagate_rows(x, rows, s, r, w, ptr, edge_capacity=cap, message_fn=msg))
        np.testing.assert_allclose(f(x), ref_fn(x), rtol=1e-5, atol=1e-5, err_msg=str(cap))
        g = jax.grad(lambda x: (f(x) ** 2).sum())(x)
        np.testing.assert_allclose(g, jax.grad(lambda x: (ref_fn(x) ** 2).sum())(x), rtol=1e-4, atol=1e-5)
    # C2DSR's one-layer GCN at the rows
    b = jnp.arange(d, dtype=jnp.float32) / 10
    full = G.c2dsr_propagate(x, s, r, w, b[None])
    got = G.c2dsr_propagate_rows(x, rows, s, r, w, ptr, b, edge_capacity=need)
    np.testing.assert_allclose(got, full[rows], rtol=1e-5, atol=1e-5)
    # messages from a separate source table (e.g. a dropped-out copy)
    src = x * 2
    got = G.c2dsr_propagate_rows(x, rows, s, r, w, ptr, b, edge_capacity=need, source=src)
    np.testing.assert_allclose(got, ((x + dense @ src + b) / 2)[rows], rtol=1e-5, atol=1e-5)
    # no edges / no rows
    e0 = np.zeros((0,), np.int32)
    assert G.propagate_rows(x, rows, e0, e0, np.zeros((0,), np.float32), np.zeros(n + 1, np.int32),
                            edge_capacity=8).shape == (7, d)
    assert G.propagate_rows(x, jnp.zeros((0,), jnp.int32), s, r, w, ptr, edge_capacity=8).shape == (0, d)
    with pytest.raises(ValueError, match="sorted"):
        G.csr_row_ptr(r[::-1], n)
