"""Message passing on edge lists: propagation, normalisation, GCN/GIN aggregation, graph batching, readout.

Serves C2DSR's item-transition GNN, UniCDR+'s item GNN and ID-MixGCL's GIN/GCN encoders. Everything except the
host-side builders (`edges_from_coo`, `transition_edges`, `batch_graphs`) is a pure, jit-able function of arrays.

Conventions
-----------
* A graph on ``N`` nodes is an edge list ``senders [E]``, ``receivers [E]`` (int) with optional ``weight [E]``.
  A message flows from ``senders[e]`` to ``receivers[e]``.
* As a matrix the edge list is ``A [N, N]`` with ``A[receivers[e], senders[e]] += weight[e]`` (duplicate edges
  add up), so ``propagate(x, senders, receivers, weight, N, "sum") == A @ x``. ``edges_from_coo(M)`` returns the
  edge list of a (scipy / numpy) matrix ``M`` in this convention, i.e. ``senders = M.col``, ``receivers = M.row``.
* Node degree ``deg[i]`` is the weighted *row sum* of ``A``: ``deg[i] = sum of weight[e] over edges with
  receivers[e] == i`` (the in-degree in message-flow terms). Undirected graphs list each edge in both directions.
* Zero-weight edges change nothing under ``"sum"`` and do not enter degrees. Edges can also be switched off with
  ``edge_mask [E]`` (bool), which excludes them from every reduction (``"mean"`` counts and ``"max"`` included).
* Nodes without incoming (unmasked) edges get 0 from every reduction, never ``-inf`` or NaN.
* Padded graph batches (`GraphBatch`) point padded edges at a padding node and give them weight 0 and
  ``edge_mask = False``, so they change no real node.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "propagate",
    "spmm",
    "degree",
    "add_self_loops",
    "row_norm_weights",
    "symmetric_norm_weights",
    "c2dsr_norm_weights",
    "c2dsr_propagate",
    "csr_row_ptr",
    "propagate_rows",
    "c2dsr_propagate_rows",
    "gcn_aggregate",
    "gin_aggregate",
    "edges_from_coo",
    "transition_edges",
    "GraphBatch",
    "batch_graphs",
    "graph_readout",
]

_REDUCES = ("sum", "mean", "max")


def _edge_weight(weight, num_edges, dtype):
    if weight is None:
        return jnp.ones((num_edges,), dtype)
    return jnp.asarray(weight, dtype)


def propagate(x, senders, receivers, weight=None, num_nodes=None, reduce="sum", edge_mask=None):
    """Aggregates neighbour features: ``out[r] = reduce_{e: receivers[e] = r} weight[e] * x[senders[e]]``.

    Args:
      x: node features ``[N, D]`` (or ``[N]``).
      senders, receivers: int ``[E]``; ``E`` may be 0.
      weight: optional ``[E]`` edge weights (message scale); ``None`` means 1.
      num_nodes: ``N_out``, number of output rows (static); defaults to ``x.shape[0]``.
      reduce: ``"sum"`` (``= A @ x``), ``"mean"`` (sum divided by the number of unmasked incoming edges, i.e. the
        mean of the weighted messages) or ``"max"`` (elementwise max of the weighted messages).
      edge_mask: optional bool ``[E]``; masked edges are ignored by every reduction.

    Returns:
      ``[N_out, D]``; rows with no incoming (unmasked) edge are 0 for all reductions.
    """
    if reduce not in _REDUCES:
        raise ValueError(f"reduce must be one of {_REDUCES}, got {reduce!r}")
    x = jnp.asarray(x)
    senders = jnp.asarray(senders, jnp.int32)
    receivers = jnp.asarray(receivers, jnp.int32)
    n = x.shape[0] if num_nodes is None else num_nodes
    num_edges = senders.shape[0]
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x = x.astype(dtype)
    msg = x[senders]
    trail = (1,) * (x.ndim - 1)
    if weight is not None:
        msg = msg * jnp.asarray(weight, dtype).reshape((num_edges,) + trail)
    emask = None if edge_mask is None else jnp.asarray(edge_mask, bool).reshape((num_edges,) + trail)

    if reduce == "sum":
        if emask is not None:
            msg = jnp.where(emask, msg, 0)
        return jax.ops.segment_sum(msg, receivers, n)

    ones = jnp.ones((num_edges,), dtype) if edge_mask is None else jnp.asarray(edge_mask, dtype)
    count = jax.ops.segment_sum(ones, receivers, n).reshape((n,) + trail)
    if reduce == "mean":
        if emask is not None:
            msg = jnp.where(emask, msg, 0)
        total = jax.ops.segment_sum(msg, receivers, n)
        return total / jnp.maximum(count, 1)
    # max
    if emask is not None:
        msg = jnp.where(emask, msg, -jnp.inf)
    out = jax.ops.segment_max(msg, receivers, n)
    return jnp.where(count > 0, out, 0)


def spmm(senders, receivers, weight, x, num_nodes=None):
    """Sparse adjacency times dense: ``A @ x`` with ``A[receivers[e], senders[e]] += weight[e]``.

    Args: ``senders, receivers [E]``, ``weight [E]`` or ``None`` (ones), ``x [N, D]``; ``num_nodes`` = rows of A.
    Returns ``[num_nodes, D]``. Same as ``propagate(..., reduce="sum")``.
    """
    return propagate(x, senders, receivers, weight, num_nodes, reduce="sum")


def degree(receivers, num_nodes, weight=None, dtype=jnp.float32):
    """Weighted row-sum degree ``deg [N]``: sum of ``weight[e]`` over edges with ``receivers[e] == i``."""
    receivers = jnp.asarray(receivers, jnp.int32)
    w = _edge_weight(weight, receivers.shape[0], dtype)
    return jax.ops.segment_sum(w, receivers, num_nodes)


def add_self_loops(senders, receivers, num_nodes, weight=None, fill_value=1.0):
    """Appends one self-loop ``i -> i`` per node.

    Args: ``senders, receivers [E]``, ``weight [E]`` or ``None`` (ones), ``num_nodes = N`` (static).
    Returns ``(senders [E+N], receivers [E+N], weight [E+N])``; the last ``N`` entries are the loops with
    ``fill_value``. Existing self-loops are kept (so a node may then carry two).
    """
    senders = jnp.asarray(senders, jnp.int32)
    receivers = jnp.asarray(receivers, jnp.int32)
    w = _edge_weight(weight, senders.shape[0], jnp.float32 if weight is None else jnp.asarray(weight).dtype)
    loop = jnp.arange(num_nodes, dtype=jnp.int32)
    return (
        jnp.concatenate([senders, loop]),
        jnp.concatenate([receivers, loop]),
        jnp.concatenate([w, jnp.full((num_nodes,), fill_value, w.dtype)]),
    )


_append_self_loops = add_self_loops  # the normalisers' keyword argument shadows the name


def _inv(d, power):
    safe = jnp.where(d > 0, d, 1.0)
    return jnp.where(d > 0, safe**power, 0.0)


def row_norm_weights(senders, receivers, num_nodes, weight=None, add_self_loops=False):
    """Row normalisation ``D^-1 A`` as per-edge weights: ``w_e / deg[receivers[e]]``.

    Propagating with these weights (``reduce="sum"``) averages each node's incoming messages with weights
    ``w_e``. Zero-degree rows stay 0 (no division by zero).

    Args: ``senders, receivers [E]``; ``num_nodes = N`` (static); ``weight [E]`` or ``None`` (ones; padded edges
      should carry 0); ``add_self_loops``: normalise ``A + I`` instead.
    Returns: ``(senders, receivers, norm_weight)``, each ``[E]`` (``[E + N]`` with self-loops appended last).
    """
    if add_self_loops:
        senders, receivers, weight = _append_self_loops(senders, receivers, num_nodes, weight)
    senders = jnp.asarray(senders, jnp.int32)
    receivers = jnp.asarray(receivers, jnp.int32)
    w = _edge_weight(weight, senders.shape[0], jnp.float32)
    deg = jax.ops.segment_sum(w, receivers, num_nodes)
    return senders, receivers, w * _inv(deg, -1.0)[receivers]


def symmetric_norm_weights(senders, receivers, num_nodes, weight=None, add_self_loops=False):
    """Symmetric normalisation ``D^-1/2 A D^-1/2`` as per-edge weights (Kipf & Welling).

    ``norm_w_e = deg[receivers[e]]^-1/2 * w_e * deg[senders[e]]^-1/2`` with ``deg`` the weighted row sum of ``A``
    (the two coincide with column sums for symmetric graphs; for directed ones this is PyG's ``gcn_norm``).
    Zero-degree nodes get factor 0.

    Args: ``senders, receivers [E]``; ``num_nodes = N`` (static); ``weight [E]`` or ``None`` (ones; padded edges
      should carry 0); ``add_self_loops``: normalise ``A + I`` (GCN's renormalisation trick).
    Returns: ``(senders, receivers, norm_weight)``, each ``[E]`` (``[E + N]`` with self-loops appended last).
    """
    if add_self_loops:
        senders, receivers, weight = _append_self_loops(senders, receivers, num_nodes, weight)
    senders = jnp.asarray(senders, jnp.int32)
    receivers = jnp.asarray(receivers, jnp.int32)
    w = _edge_weight(weight, senders.shape[0], jnp.float32)
    deg = jax.ops.segment_sum(w, receivers, num_nodes)
    inv_sqrt = _inv(deg, -0.5)
    return senders, receivers, inv_sqrt[receivers] * w * inv_sqrt[senders]


def c2dsr_norm_weights(senders, receivers, num_nodes, weight=None):
    """C2DSR's adjacency normalisation: directed, count-weighted, row-normalised ``Â = D^-1 A``, no self-loops.

    In C2DSR, ``A[i, j]`` counts the transitions ``i -> j`` (item ``j`` right after item ``i``) over all training
    sequences, and ``Â @ E`` gives item ``i`` the mean of its successors' embeddings weighted by transition
    frequency (row ``i`` of ``Â`` is the empirical successor distribution; empty rows stay 0). No
    symmetrisation. Build the edge list with `transition_edges` (which already puts row ``i`` = receiver,
    column ``j`` = sender) or `edges_from_coo` on C2DSR's COO matrix.

    Returns ``(senders, receivers, norm_weight)`` each ``[E]``: identical to `row_norm_weights` without loops.
    """
    return row_norm_weights(senders, receivers, num_nodes, weight, add_self_loops=False)


def c2dsr_propagate(emb, senders, receivers, norm_weight, biases, num_nodes=None, dropout_fn=None):
    """C2DSR's GCN (official code): layer mean of LightGCN-style propagation with a bias per layer.

    ``h_0 = emb``; ``h_l = Â @ dropout(h_{l-1}) + b_l``; returns ``(h_0 + ... + h_L) / (L + 1)``. The
    allocated weight matrix and LeakyReLU of the official code are never applied, so they are absent here.

    Args:
      emb: item table ``[V, D]``.
      senders, receivers, norm_weight: ``[E]`` normalised edge list (`c2dsr_norm_weights`).
      biases: ``[L, D]`` (one bias per layer; ``L = 1`` in C2DSR) or a sequence of ``[D]``.
      num_nodes: ``V`` (static); default ``emb.shape[0]``.
      dropout_fn: optional ``f(h, layer_index) -> h`` applied to each layer's input (feature dropout, p = 0.2
        in training); ``None`` = eval mode.
    Returns: ``[V, D]``.
    """
    h = emb
    total = emb
    num_layers = len(biases)
    for layer in range(num_layers):  # a handful of layers, not examples
        inp = h if dropout_fn is None else dropout_fn(h, layer)
        h = spmm(senders, receivers, norm_weight, inp, num_nodes) + biases[layer]
        total = total + h
    return total / (num_layers + 1)


def csr_row_ptr(receivers, num_nodes: int) -> np.ndarray:
    """Host-side CSR offsets of an edge list *sorted by receiver*: ``ptr [N + 1]`` with the edges of row ``r`` at
    ``ptr[r]:ptr[r + 1]`` (:func:`propagate_rows`). Raises if ``receivers`` is not sorted."""
    r = np.asarray(receivers, np.int64)
    if r.size and (np.any(np.diff(r) < 0) or r[0] < 0 or r[-1] >= num_nodes):
        raise ValueError("csr_row_ptr: receivers must be sorted and in [0, num_nodes)")
    return np.searchsorted(r, np.arange(num_nodes + 1), side="left").astype(np.int32)


def propagate_rows(source, rows, senders, receivers, weight, row_ptr, *, edge_capacity: int, message_fn=None):
    """Rows ``rows`` of ``A @ msg(source)`` (``"sum"`` propagation) touching only the edges into those rows.

    ``out[u] = sum_{e: receivers[e] = rows[u]} weight[e] * msg(source[senders[e]])`` where ``msg`` is
    ``message_fn(gathered [n, D], sender_ids [n]) -> [n, D]`` (default identity; e.g. a dropout whose mask is
    a pure function of the sender row, :mod:`jaxrec.kernels.dropout` ``impl="hash"``). The edges must be sorted
    by receiver with CSR offsets ``row_ptr [N + 1]`` (:func:`csr_row_ptr`); ``rows [U]`` (int, repeats allowed
    but each repeat costs its edges again) picks the output rows.

    The edges of the requested rows are gathered into a static buffer of ``edge_capacity`` slots (owner of slot
    ``k`` by ``searchsorted`` over the cumulative row degrees), so the cost is ``edge_capacity x D`` instead of
    ``E x D``. A call whose rows hold more edges than ``edge_capacity`` runs the exact full propagation
    instead (``lax.cond``; ``message_fn`` then sees the whole table with ``sender_ids = arange(N)``): no edge is
    ever dropped, the capacity only sets the speed. Returns ``[U, D]``; equal to
    ``propagate(msg(source), senders, receivers, weight)[rows]`` up to float summation order.
    """
    source = jnp.asarray(source)
    rows = jnp.asarray(rows, jnp.int32)
    senders = jnp.asarray(senders, jnp.int32)
    receivers = jnp.asarray(receivers, jnp.int32)
    weight = jnp.asarray(weight, source.dtype)
    row_ptr = jnp.asarray(row_ptr, jnp.int32)
    n, u_len = source.shape[0], rows.shape[0]
    msg = message_fn if message_fn is not None else (lambda h, ids: h)
    cap = int(edge_capacity)
    if u_len == 0 or senders.shape[0] == 0:
        return jnp.zeros((u_len,) + source.shape[1:], source.dtype)
    deg = row_ptr[rows + 1] - row_ptr[rows]
    ends = jnp.cumsum(deg)
    starts = ends - deg
    total = ends[-1]

    def restricted(source):
        k = jnp.arange(cap, dtype=jnp.int32)
        owner = jnp.clip(jnp.searchsorted(ends, k, side="right"), 0, u_len - 1).astype(jnp.int32)
        live = k < total
        e = jnp.where(live, row_ptr[rows[owner]] + (k - starts[owner]), 0)
        src = senders[e]
        m = msg(source[src], src)
        w = jnp.where(live, weight[e], 0).reshape((cap,) + (1,) * (source.ndim - 1))
        return jax.ops.segment_sum(m * w, owner, u_len, indices_are_sorted=True)

    def full(source):
        return propagate(msg(source, jnp.arange(n, dtype=jnp.int32)), senders, receivers, weight, n)[rows]

    if cap <= 0:
        return full(source)
    return jax.lax.cond(total <= cap, restricted, full, source)


def c2dsr_propagate_rows(emb, rows, senders, receivers, norm_weight, row_ptr, bias, *, edge_capacity: int,
                         message_fn=None, source=None):
    """Rows ``rows`` of the one-layer :func:`c2dsr_propagate`: ``(emb[rows] + (Â @ msg(source))[rows] + b) / 2``
    through :func:`propagate_rows` (only the edges into ``rows``; exact full fallback above ``edge_capacity``).

    ``source`` (default ``emb``): the table messages are gathered from (e.g. an already dropped-out table);
    ``message_fn``: per-message transform (e.g. hash dropout of the sender rows); ``bias [D]`` or ``[1, D]``.
    Equal to ``c2dsr_propagate(emb, ..., [bias], dropout_fn)[rows]`` when ``msg(source)`` equals the dropout of
    the whole table at the same rows. Returns ``[U, D]``.
    """
    bias = jnp.asarray(bias).reshape(emb.shape[1:])
    agg = propagate_rows(emb if source is None else source, rows, senders, receivers, norm_weight, row_ptr,
                         edge_capacity=edge_capacity, message_fn=message_fn)
    return (jnp.asarray(emb)[jnp.asarray(rows, jnp.int32)] + agg + bias) / 2


def gcn_aggregate(x, senders, receivers, num_nodes=None, add_self_loops=True, weight=None):
    """GCN propagation ``D̃^-1/2 Ã D̃^-1/2 x`` with ``Ã = A + I`` (Kipf & Welling; no weight matrix here).

    Args: ``x [N, D]``; ``senders, receivers [E]`` (undirected graphs: both directions listed); ``num_nodes`` (static,
      default ``N``); ``add_self_loops``; ``weight [E]`` or ``None`` (padded edges: 0).
    Returns: ``[N, D]``.
    """
    n = x.shape[0] if num_nodes is None else num_nodes
    s, r, w = symmetric_norm_weights(senders, receivers, n, weight, add_self_loops=add_self_loops)
    return spmm(s, r, w, x, n)


def gin_aggregate(x, senders, receivers, num_nodes=None, eps=0.0, weight=None, edge_mask=None):
    """GIN aggregation ``(1 + eps) * x_v + sum_{u in N(v)} x_u`` (the MLP lives in nn/).

    Args: ``x [N, D]``; ``senders, receivers [E]``; ``num_nodes`` (static, default ``N``); ``eps`` scalar (may be a
      learned parameter); ``weight [E]`` or ``None``; ``edge_mask [E]`` or ``None``.
    Returns: ``[N, D]``.
    """
    n = x.shape[0] if num_nodes is None else num_nodes
    neigh = propagate(x, senders, receivers, weight, n, reduce="sum", edge_mask=edge_mask)
    return (1.0 + eps) * x + neigh


# ----------------------------------------------------------------------------------------------------------
# Host-side builders (numpy)


def edges_from_coo(matrix, sum_duplicates=True):
    """Edge list of a matrix ``M [N, N]`` (scipy sparse of any format, or a dense numpy array).

    Returns numpy ``(senders [E], receivers [E], weight [E], num_nodes)`` with ``senders = col``,
    ``receivers = row``, ``weight = data``, so that ``spmm(senders, receivers, weight, x, N) == M @ x``.
    Duplicate entries of a COO matrix are summed first (``sum_duplicates``); explicit zeros are dropped.
    For a dense array, its non-zero entries become the edges (row-major order).
    """
    if hasattr(matrix, "tocoo"):
        coo = matrix.tocoo(copy=True)
        if sum_duplicates:
            coo.sum_duplicates()
        keep = coo.data != 0
        rows, cols, data = coo.row[keep], coo.col[keep], coo.data[keep]
        n_rows, n_cols = coo.shape
    else:
        arr = np.asarray(matrix)
        if arr.ndim != 2:
            raise ValueError(f"edges_from_coo: expected a 2-D matrix, got shape {arr.shape}")
        rows, cols = np.nonzero(arr)
        data = arr[rows, cols]
        n_rows, n_cols = arr.shape
    return (
        cols.astype(np.int32),
        rows.astype(np.int32),
        data.astype(np.float32),
        int(max(n_rows, n_cols)),
    )


def transition_edges(sequences, num_nodes, pad_id=None):
    """Directed transition-count edge list of item sequences (C2DSR's graph construction, on host).

    Every consecutive pair ``(prev, cur)`` of every sequence adds 1 to ``A[prev, cur]`` (duplicates summed, no
    symmetrisation, no self-loops added; a repeated item ``a, a`` does add ``A[a, a]``). ``pad_id`` entries are
    dropped from a sequence before pairing. In edge-list form ``receivers = prev`` (row) and ``senders = cur``
    (column), so ``spmm`` with `c2dsr_norm_weights` computes ``Â @ E`` exactly as C2DSR.

    Args: ``sequences``: iterable of 1-D int sequences (or a 2-D padded array); ``num_nodes = V``; ``pad_id``.
    Returns numpy ``(senders [E], receivers [E], counts [E] float32)``, sorted by (receiver, sender).
    """
    prev_all, cur_all = [], []
    for seq in sequences:  # host-side preprocessing, once per dataset
        s = np.asarray(seq).ravel()
        if pad_id is not None:
            s = s[s != pad_id]
        if s.size >= 2:
            prev_all.append(s[:-1])
            cur_all.append(s[1:])
    if not prev_all:
        empty_i = np.zeros((0,), np.int32)
        return empty_i, empty_i.copy(), np.zeros((0,), np.float32)
    prev = np.concatenate(prev_all).astype(np.int64)
    cur = np.concatenate(cur_all).astype(np.int64)
    if prev.min() < 0 or cur.min() < 0 or max(prev.max(), cur.max()) >= num_nodes:
        raise ValueError(f"transition_edges: item ids must lie in [0, {num_nodes}) (pad_id={pad_id})")
    key = prev * num_nodes + cur
    uniq, counts = np.unique(key, return_counts=True)
    return (uniq % num_nodes).astype(np.int32), (uniq // num_nodes).astype(np.int32), counts.astype(np.float32)


class GraphBatch(NamedTuple):
    """A padded disjoint union of graphs with static shapes (a pytree).

    Fields (``N = max_nodes``, ``E = max_edges``, ``G = max_graphs``):
      nodes: ``[N, F]`` node features, 0 on padding nodes.
      senders, receivers: int32 ``[E]``, global node indices; padded edges point to the first padding node.
      edge_weight: float32 ``[E]``, given weights (or 1) on real edges, 0 on padded edges.
      node_mask: bool ``[N]``; edge_mask: bool ``[E]``; graph_mask: bool ``[G]`` (real graphs).
      graph_index: int32 ``[N]`` node -> graph id; padding nodes carry ``G`` (out of range, so segment ops with
        ``num_segments = G`` drop them).
      n_node, n_edge: int32 ``[G]`` per-graph counts (0 for padding graphs).
    """

    nodes: jax.Array
    senders: jax.Array
    receivers: jax.Array
    edge_weight: jax.Array
    node_mask: jax.Array
    edge_mask: jax.Array
    graph_mask: jax.Array
    graph_index: jax.Array
    n_node: jax.Array
    n_edge: jax.Array

    @property
    def num_graphs(self) -> int:
        return self.n_node.shape[0]


def batch_graphs(graphs: Sequence[tuple], max_nodes: int, max_edges: int, max_graphs: int | None = None) -> GraphBatch:
    """Concatenates graphs into one padded `GraphBatch` (host side, numpy).

    Args:
      graphs: sequence of ``(node_feats [n_i, F], senders [e_i], receivers [e_i])`` or with a 4th entry
        ``edge_weight [e_i]``; indices are local to each graph (``0 <= idx < n_i``).
      max_nodes: padded node count; must be ``>= sum(n_i) + 1`` (at least one padding node, which padded
        edges point to).
      max_edges: padded edge count, ``>= sum(e_i)``.
      max_graphs: padded graph count, ``>= len(graphs)``; default ``len(graphs)``.
    Returns: numpy-backed `GraphBatch`; feed to jit as is (shapes depend only on the max_* arguments).
    Raises ValueError when a graph does not fit or an index is out of its graph's range.
    """
    num_real = len(graphs)
    g_pad = num_real if max_graphs is None else max_graphs
    if g_pad < num_real:
        raise ValueError(f"batch_graphs: {num_real} graphs exceed max_graphs={g_pad}")
    feats, snd, rcv, wts, n_node, n_edge = [], [], [], [], [], []
    offset = 0
    feat_shape, feat_dtype = None, None
    for gi, g in enumerate(graphs):
        if len(g) not in (3, 4):
            raise ValueError(f"batch_graphs: graph {gi} must be (nodes, senders, receivers[, weight])")
        x = np.asarray(g[0])
        s = np.asarray(g[1], np.int64).ravel()
        r = np.asarray(g[2], np.int64).ravel()
        w = np.ones(s.shape, np.float32) if len(g) == 3 else np.asarray(g[3], np.float32).ravel()
        n_i = x.shape[0]
        if s.shape != r.shape or s.shape != w.shape:
            raise ValueError(f"batch_graphs: graph {gi}: senders/receivers/weight lengths differ")
        if s.size and (min(s.min(), r.min()) < 0 or max(s.max(), r.max()) >= n_i):
            raise ValueError(f"batch_graphs: graph {gi}: edge index out of range [0, {n_i})")
        if feat_shape is None:
            feat_shape, feat_dtype = x.shape[1:], x.dtype
        elif x.shape[1:] != feat_shape:
            raise ValueError(f"batch_graphs: graph {gi}: feature shape {x.shape[1:]} != {feat_shape}")
        feats.append(x)
        snd.append(s + offset)
        rcv.append(r + offset)
        wts.append(w)
        n_node.append(n_i)
        n_edge.append(s.size)
        offset += n_i
    total_nodes, total_edges = offset, int(sum(n_edge))
    if max_nodes < total_nodes + 1:
        raise ValueError(f"batch_graphs: max_nodes={max_nodes} must be >= total nodes + 1 = {total_nodes + 1}")
    if max_edges < total_edges:
        raise ValueError(f"batch_graphs: max_edges={max_edges} < total edges {total_edges}")
    if feat_shape is None:
        feat_shape, feat_dtype = (1,), np.float32
    nodes = np.zeros((max_nodes,) + tuple(feat_shape), feat_dtype)
    if feats:
        nodes[:total_nodes] = np.concatenate(feats, axis=0)
    pad_node = total_nodes
    senders = np.full((max_edges,), pad_node, np.int32)
    receivers = np.full((max_edges,), pad_node, np.int32)
    edge_weight = np.zeros((max_edges,), np.float32)
    if total_edges:
        senders[:total_edges] = np.concatenate(snd)
        receivers[:total_edges] = np.concatenate(rcv)
        edge_weight[:total_edges] = np.concatenate(wts)
    node_mask = np.arange(max_nodes) < total_nodes
    edge_mask = np.arange(max_edges) < total_edges
    graph_index = np.full((max_nodes,), g_pad, np.int32)
    graph_index[:total_nodes] = np.repeat(np.arange(num_real, dtype=np.int32), np.asarray(n_node, np.int64))
    n_node_arr = np.zeros((g_pad,), np.int32)
    n_edge_arr = np.zeros((g_pad,), np.int32)
    n_node_arr[:num_real] = n_node
    n_edge_arr[:num_real] = n_edge
    return GraphBatch(
        nodes=nodes,
        senders=senders,
        receivers=receivers,
        edge_weight=edge_weight,
        node_mask=node_mask,
        edge_mask=edge_mask,
        graph_mask=np.arange(g_pad) < num_real,
        graph_index=graph_index,
        n_node=n_node_arr,
        n_edge=n_edge_arr,
    )


def graph_readout(x, graph_index, num_graphs, node_mask=None, reduce="sum"):
    """Pools node features per graph.

    Args:
      x: ``[N, D]`` node features.
      graph_index: int ``[N]`` node -> graph id; ids outside ``[0, num_graphs)`` are dropped.
      num_graphs: ``G`` (static).
      node_mask: bool ``[N]`` or ``None``; masked (padding) nodes are ignored.
      reduce: ``"sum"``, ``"mean"`` or ``"max"``.
    Returns: ``[G, D]``; graphs without (unmasked) nodes get 0.
    """
    if reduce not in _REDUCES:
        raise ValueError(f"reduce must be one of {_REDUCES}, got {reduce!r}")
    x = jnp.asarray(x)
    n = x.shape[0]
    trail = (1,) * (x.ndim - 1)
    graph_index = jnp.asarray(graph_index, jnp.int32)
    mask = jnp.ones((n,), bool) if node_mask is None else jnp.asarray(node_mask, bool)
    m = mask.reshape((n,) + trail)
    if reduce == "max":
        out = jax.ops.segment_max(jnp.where(m, x, -jnp.inf), graph_index, num_graphs)
        cnt = jax.ops.segment_sum(mask.astype(jnp.int32), graph_index, num_graphs).reshape((num_graphs,) + trail)
        return jnp.where(cnt > 0, out, 0)
    total = jax.ops.segment_sum(jnp.where(m, x, 0), graph_index, num_graphs)
    if reduce == "sum":
        return total
    cnt = jax.ops.segment_sum(mask.astype(x.dtype), graph_index, num_graphs).reshape((num_graphs,) + trail)
    return total / jnp.maximum(cnt, 1)
