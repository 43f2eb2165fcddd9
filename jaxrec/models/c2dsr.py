"""C2DSR: contrastive cross-domain sequential recommendation (Cao et al., CIKM 2022), model ``c2dsr`` and task
``c2dsr``. Spec: ../shared/papers/c2dsr.md (read from the official code ``cjx96/C2DSR`` @ 89d4b926).

Id space: C2DSR's own (see :mod:`jaxrec.data.c2dsr_transforms`): X items ``0..NX-1``, Y items ``NX..NX+NY-1``,
``PAD = NX+NY``, tables ``V = NX+NY+1`` rows; catalogue id ``g`` -> ``g - 1``. Heads are domain-local.

Architecture (shapes: ``B`` batch, ``T`` = ``max_len``, ``d`` = ``embed_dim``, ``P`` = loss positions)::

    E, E_X, E_Y [V, d]                   three item tables, N(0, 1) init, PAD row 0 (kept at 0: masked lookup)
    H   = GCN(E,   Â)                    Â: mixed transition graph, row-normalised (c2dsr_transforms.build_graphs)
    H_X = GCN(E_X, Â_s);  H_Y = GCN(E_Y, Â_s)      Â_s: within-domain transitions, shared by X and Y
    GCN(E, Â) = (E + Â @ Dropout(E) + b) / 2       (kernels.graph.c2dsr_propagate, 1 layer; weight/LeakyReLU unused)
    enc(s, p, G, E): z = sqrt(d) (G[s] + E[s]) + P[p]; z = Dropout(z) * (s != PAD);
                     TransformerStack(sasrec_config(d, heads, 0.2, 2, eps=1e-8)), causal  -> [B, T, d]
    F = enc(seq, pos, H, E);  F_X = enc_X(x_seq, x_pos, H_X, E_X);  F_Y = enc_Y(y_seq, y_pos, H_Y, E_Y)
    F_cx = enc(corru_x, pos, H, E);  F_cy = enc(corru_y, pos, H, E)     (same weights as F)
    heads: lin_X: d -> NX, lin_Y: d -> NY, lin_PAD: d -> 1;  D_X, D_Y: bilinear d x d -> 1

Losses (last ``P = 10`` positions; each mean over all ``B * P`` slots, masked slots count in the denominator;
as written each head runs at every slot -- ``task.head_slots="all"`` -- the default ``"masked"`` computes the
same sums on the weighted slots only, see below). :meth:`C2DSR.training_losses` runs the encoders and hands
the states to :meth:`C2DSR.loss_terms`, the one composition of the six terms (per-row weight ``keep``,
optional infomax states / row mask); CDSRNP calls it on its adapted states:
    L_sx = CE([lin_X(F); lin_PAD(F)], share_x_tgt) * share_x_mask       (NX + 1 classes, PAD class last)
    L_sy = CE([lin_Y(F); lin_PAD(F)], share_y_tgt) * share_y_mask
    L_x  = CE([lin_X(F + F_X); lin_PAD(F_X)], x_tgt) * x_mask
    L_y  = CE([lin_Y(F + F_Y); lin_PAD(F_Y)], y_tgt) * y_mask
    L_mi_X, L_mi_Y = kernels.losses.c2dsr_infomax_loss(F, F_X, F_Y, F_cx, F_cy, x_mask, y_mask, ...)
        (full-length target masks; L_mi_X = BCE(D_X(c_Y, s_X), 1) + BCE(D_X(c~_Y, s_X), 0), mirror for Y;
        with its ``row_mask``: the rows the BCE means run over -- keep > 0; CDSRNP: overlapped query rows)
    L = λ (L_sx + L_sy + L_x + L_y) + (1 - λ)(L_mi_X + L_mi_Y),   λ = 0.7 (kernels.losses.c2dsr_total_loss)

Masked heads (``task.head_slots`` ["masked"]): each loss term is a sum over slots with a non-zero weight
(``mask * keep``; ``share_x_mask`` / ``share_y_mask`` are disjoint, short sequences are left-padded with zero
masks), so each vocabulary head only needs those rows: per domain the ``2·B·P`` candidate rows (shared + single
term) are compacted with ``jnp.nonzero(size=C)`` into a static capacity ``C_X`` / ``C_Y`` and put through one
``[C, d] @ [d, N]`` matmul; the PAD class is folded in as ``logaddexp(logsumexp(logits), pad)`` instead of a
concatenated ``N + 1`` column (:func:`masked_head_terms`, :func:`pad_class_nll`). Capacities come from the
training table (:meth:`C2DSRTask.head_slot_counts`, :func:`head_capacity`): ``task.head_capacity`` ["auto"] =
batch mean + ``task.head_capacity_sigmas`` [4] standard deviations (on food_kitchen, B = 256: ``C_X = 2048``,
``C_Y = 2496`` of 5,120 candidate rows; batch means 1,795 / 2,243); a batch with more weighted rows runs an
exact dense fallback (``lax.cond``; no slot is ever dropped); ``"bound"`` = the strict sum of the ``B`` largest
per-example counts (4,288 / 4,640 of 5,120 rows on food_kitchen: little saving); an int sets both. Loss and gradients equal
the ``"all"`` formulation's up to float rounding (tests/test_c2dsr.py); ``"all"`` stays for comparison.

Row-restricted GCN (``task.gcn_rows`` ["all" | "batch"]): the encoders only read ``H`` at the ids of the
batch, so ``"batch"`` computes ``H`` at those rows only (:meth:`C2DSR.row_tables`,
:func:`jaxrec.kernels.graph.c2dsr_propagate_rows`: distinct ids by ``jnp.unique`` with a static size, the edges
into them gathered into a static capacity from :func:`gcn_edge_capacity` -- ``task.gcn_edge_capacity``
["auto" = mean + 4 sd over 64 random batches] or an int -- with an exact full fallback above it). On
food_kitchen a batch reaches ~72k of the mixed graph's 335k edges and ~15k / ~36k of the single-domain graph's
326k. Same states as the whole tables (tests), dropout included: ``model.dropout_impl`` ["threefry" | "hash"]
draws every dropout mask with JAX's threefry (the whole-table GCN mask, then gathered) or with the counter hash
of :mod:`jaxrec.kernels.dropout` (a pure function of (key, element index), so only the gathered sender rows are
drawn). Training only; evaluation uses the whole tables.

Packed encoder tokens (``task.encoder_tokens`` ["all" | "packed"]): on food_kitchen only 65 % of the mixed and
26 % / 32 % of the X / Y sequences' ``B·T`` tokens are real, yet every block's LayerNorms, Q/K/V/output
projections and FFN run on all of them. ``"packed"`` gathers the real tokens of each encoder call into a
static row capacity (``jnp.nonzero(size=C)``; capacities ``(C_mixed, C_x, C_y)`` from the kept training rows'
real-token counts, :func:`token_counts` and :func:`head_capacity` with ``task.head_capacity_sigmas``, or
``task.token_capacity`` as an int), runs that position-wise work on them only and keeps attention in the
``[B, T]`` layout, PAD keys / values being the projection of a zero input -- exactly what the dense path gives
a zeroed PAD slot, with or without ``model.key_padding_mask``; a batch above a capacity runs the dense path
(``flax.linen.cond``; :class:`jaxrec.nn.transformer.TransformerStack` ``pack_capacity``). Same states up to
float rounding (tests/test_c2dsr.py), in training too with ``model.dropout_impl="hash"`` (masks indexed by
dense position); the stack then draws its dropout keys from one key per call, so a packed run is not
bit-identical to an ``"all"`` run. Training only; evaluation encodes every token.

Evaluation (eval mode, GCN once per batch; :meth:`C2DSR.score_states` on the encoder states, shared with
CDSRNP): target X: ``lin_X(F[:, -1] + F_X[b, x_last])`` over all NX items
(no PAD logit), target Y: ``lin_Y(F[:, -1] + F_Y[b, y_last])``; the mixed state at the *last position* plus
the single-domain state at *its last non-PAD slot* (training pairs both at the same position). Two
protocols, both vectorised: (a) official: rank among 999 fixed negatives drawn with replacement from the
target domain, ``rank = 1 + #{neg > gt + 1e-5}``; (b) full ranking over every item of the target domain (same
tie rule; history items optionally excluded). MRR, NDCG@5/10, HR@1/5/10 averaged per target domain:
metric names ``X/mrr`` ... (official protocol), ``X/full/mrr`` ..., likewise ``Y/``, and ``all/`` (every
example).

Quirks of the official code reproduced (default) and the options where the paper differs or is silent:
  * GCN = propagation + bias, layer mean, no weight / nonlinearity; directed, count-weighted, row-normalised
    graphs; one single-domain graph for both domains; feature dropout 0.2 on the GCN input in training.
    ``model.use_graph`` [True]: False drops the GCN (``z = sqrt(d) E[s]``; the "without GNN" ablation).
    ``model.gnn_layers`` [1].
  * ``model.key_padding_mask`` [False]: official attention has a causal mask only, so real positions also
    attend to left-PAD slots (whose keys/values are the projection biases). True = the paper's reading.
  * ``sqrt(d)`` input scale applied to ``G[s] + E[s]``; positional table of ``T`` rows with row 0 = PAD
    (at most ``T - 1`` inputs); Q-only pre-LN blocks, LayerNorm eps 1e-8 (nn.transformer.sasrec_config).
  * ``task.loss_positions`` [10]: only the last 10 positions are supervised (0 = all ``T``); CE averaged
    over all ``B * P`` slots including masked ones (``keep``-masked rows excluded from the denominator).
  * ``task.lambda_`` [0.7]: ``L = λ·Σ prediction + (1 − λ)·Σ infomax``. ``λ = 1`` disables the infomax
    term: the official combination then is just the plain *sum* of the four CE terms (no rescaling), and the
    two corrupted encoder passes are skipped.
  * Infomax pooling uses the *target* masks (``x_mask``: X positions with a next-X target), full length;
    ``D_X`` pairs ``c_Y`` (mixed states pooled at Y target positions) with ``s_X``.
  * Training data (:mod:`jaxrec.data.c2dsr_transforms`): single-domain targets with the "delete the last X
    (Y) item if the final item is not X (Y)" rule; the strict ``> NX`` test for a final Y item
    (``task.y_final_strict`` [True]); lines without an X or a Y target are skipped; corrupted sequences and
    evaluation negatives drawn once. ``task.drop_policy`` ["kept"]: the task's ``train_source`` hook gives
    the engine only the kept records, padded to a multiple of ``B`` as the official loader pads its last
    batch (``c2dsr_transforms.KeptRecords``), so an engine epoch is the official epoch of ``ceil(kept / B)``
    steps; ``"resample"`` (the former stand-in): the whole split, skipped records replaced by kept examples
    round-robin (``C2DSRTrainTable``); ``"mask"``: the whole split, skipped records as zero-weight rows.
    ``task.graph_lines`` ["all"]: the graphs use every training line (official; skipped lines included),
    ``"kept"`` only the kept ones.
  * Not reproducible in this engine: the official batch order is fixed for all epochs (here reshuffled every
    epoch); model selection is per domain (the engine keeps one best checkpoint by ``train.best_metric``:
    run with ``X/mrr`` and with ``Y/mrr`` -- training is deterministic, so the two runs share the trajectory).
  * Init as PyTorch: tables and positions N(0, 1); Linear / Conv1d U(±1/sqrt(fan_in)); MHA xavier in-proj,
    zero biases; GCN bias U(±1/sqrt(d)); bilinear xavier U(±sqrt(6/(d²+d))), bias 0. ``disc_x`` is PyTorch's
    ``D_X.f_k.weight[0]`` (official ``D_X(S=s_X, node=c_Y)`` calls ``f_k(c_Y, s_X) = c_Yᵀ W s_X + β``).
  * Optimiser (configs): Adam(1e-3, β = (0.9, 0.98), eps 1e-8); the official weight-decay, gradient-clip and
    lr-decay flags are never used, so none is applied.

Parameters (``V = NX + NY + 1``): ``item_emb, item_emb_x, item_emb_y [V, d]``; ``gnn_bias{,_x,_y} [L, d]``;
``enc, enc_x, enc_y``: ``pos_embed [T, d]`` + ``encoder`` (TransformerStack); ``lin_x [d, NX]``, ``lin_y
[d, NY]``, ``lin_pad [d, 1]`` (+ biases); ``disc_x, disc_y [d, d]``, ``disc_x_bias, disc_y_bias`` scalars.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import dropout as dropout_lib
from jaxrec.kernels import flops as flops_lib
from jaxrec.kernels import graph as graph_lib
from jaxrec.kernels import losses, metrics
from jaxrec.nn.dropout import Dropout
from jaxrec.nn.transformer import TransformerStack, sasrec_config, torch_linear_init, uniform_init
from jaxrec.registry import register_model, register_task

HR_KS = (1, 5, 10)
DROP_POLICIES = ("kept", "resample", "mask")
NDCG_KS = (5, 10)


def _zero_row(init, row: int):
    """Wraps an initialiser so that row ``row`` (PAD / position 0) starts at 0 (``padding_idx``)."""

    def wrapped(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype).at[row].set(0)

    return wrapped


def _part(init, axes):
    return nn.with_logical_partitioning(init, axes)


class C2DSREncoder(nn.Module):
    """One SASRec-pytorch encoder with its own positional table. ``ids, positions [B, T]`` -> ``[B, T, d]``."""

    pad_id: int
    embed_dim: int
    max_len: int
    num_blocks: int = 2
    num_heads: int = 1
    dropout_rate: float = 0.2
    key_padding_mask: bool = False
    layer_norm_eps: float = 1e-8
    use_graph: bool = True
    dropout_impl: str = "threefry"

    @nn.compact
    def __call__(self, ids, positions, graph_table, table, *, train: bool = False, graph_ids=None,
                 pack_capacity=None):
        """``graph_table`` (GCN output) and ``table`` (raw item table): ``[V, d]``; with ``graph_ids [B, T]``
        the GCN rows of ``ids`` are ``graph_table[graph_ids]`` (a row-restricted table, :meth:`C2DSR.__call__`).
        ``pack_capacity``: run the blocks' position-wise work on the real tokens only, packed into that many rows
        (:class:`jaxrec.nn.transformer.TransformerStack`; exact dense fallback for a batch above it)."""
        d = self.embed_dim
        pos_table = self.param("pos_embed", _part(_zero_row(nn.initializers.normal(1.0), 0), (None, "embed")),
                               (self.max_len, d))
        valid = ids != self.pad_id
        e = table[ids] * valid[..., None]  # padding_idx: the PAD row never contributes (nor gets a gradient)
        z = (graph_table[ids if graph_ids is None else graph_ids] + e) if self.use_graph else e
        z = z * math.sqrt(d)
        z = z + pos_table[positions] * (positions != 0)[..., None]
        z = Dropout(self.dropout_rate, impl=self.dropout_impl)(z, deterministic=not train)
        z = z * valid[..., None]
        cfg = sasrec_config(d, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                            num_layers=self.num_blocks, epsilon=self.layer_norm_eps)
        cfg["mask_keys_with_valid"] = self.key_padding_mask
        cfg["dropout_impl"] = self.dropout_impl
        return TransformerStack(**cfg, name="encoder")(z, valid, causal=True, deterministic=not train,
                                                       pack_capacity=pack_capacity)


@register_model("c2dsr")
class C2DSR(nn.Module):
    """C2DSR (official-code semantics; module docstring). Graph edge lists are call arguments.

    ``graphs = {"mixed": (senders, receivers, weight), "single": (...)}``, each ``[E]`` (row-normalised,
    :func:`jaxrec.data.c2dsr_transforms.build_graphs`).

    Attributes: ``num_x``, ``num_y`` (NX, NY); ``embed_dim`` d [256]; ``num_blocks`` [2]; ``num_heads`` [1];
    ``max_len`` T [15]; ``dropout_rate`` [0.2]; ``gnn_layers`` [1]; ``use_graph`` [True];
    ``key_padding_mask`` [False]; ``layer_norm_eps`` [1e-8]; ``dropout_impl`` ["threefry" | "hash"] (every
    dropout's mask generator, :mod:`jaxrec.kernels.dropout`).
    """

    num_x: int
    num_y: int
    embed_dim: int = 256
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 15
    dropout_rate: float = 0.2
    gnn_layers: int = 1
    use_graph: bool = True
    key_padding_mask: bool = False
    layer_norm_eps: float = 1e-8
    dropout_impl: str = "threefry"

    @property
    def num_nodes(self) -> int:
        return self.num_x + self.num_y + 1

    @property
    def pad_id(self) -> int:
        return self.num_x + self.num_y

    def setup(self):
        v, d = self.num_nodes, self.embed_dim
        table_init = _part(_zero_row(nn.initializers.normal(1.0), self.pad_id), ("vocab", "embed"))
        self.item_emb = self.param("item_emb", table_init, (v, d))
        self.item_emb_x = self.param("item_emb_x", table_init, (v, d))
        self.item_emb_y = self.param("item_emb_y", table_init, (v, d))
        bias_init = _part(uniform_init(1.0 / math.sqrt(d)), (None, "embed"))
        self.gnn_bias = self.param("gnn_bias", bias_init, (self.gnn_layers, d))
        self.gnn_bias_x = self.param("gnn_bias_x", bias_init, (self.gnn_layers, d))
        self.gnn_bias_y = self.param("gnn_bias_y", bias_init, (self.gnn_layers, d))
        self.gnn_dropout = Dropout(self.dropout_rate, impl=self.dropout_impl)
        enc = dict(pad_id=self.pad_id, embed_dim=d, max_len=self.max_len, num_blocks=self.num_blocks,
                   num_heads=self.num_heads, dropout_rate=self.dropout_rate, key_padding_mask=self.key_padding_mask,
                   layer_norm_eps=self.layer_norm_eps, use_graph=self.use_graph, dropout_impl=self.dropout_impl)
        self.enc = C2DSREncoder(**enc)
        self.enc_x = C2DSREncoder(**enc)
        self.enc_y = C2DSREncoder(**enc)
        lin = torch_linear_init(d)
        dense = lambda n: nn.Dense(n, kernel_init=_part(lin, ("embed", "vocab")),  # noqa: E731
                                   bias_init=_part(lin, ("vocab",)))
        self.lin_x = dense(self.num_x)
        self.lin_y = dense(self.num_y)
        self.lin_pad = nn.Dense(1, kernel_init=_part(lin, ("embed", None)), bias_init=_part(lin, (None,)))
        bil = uniform_init(math.sqrt(6.0 / (d * d + d)))
        self.disc_x = self.param("disc_x", _part(bil, ("embed", None)), (d, d))
        self.disc_y = self.param("disc_y", _part(bil, ("embed", None)), (d, d))
        self.disc_x_bias = self.param("disc_x_bias", nn.initializers.zeros_init(), ())
        self.disc_y_bias = self.param("disc_y_bias", nn.initializers.zeros_init(), ())

    # ------------------------------------------------------------------------------------------ graph
    def tables(self, graphs, *, train: bool = False):
        """``(H, H_X, H_Y, E, E_X, E_Y)``, each ``[V, d]``: GCN outputs and the PAD-masked raw tables."""
        keep = (jnp.arange(self.num_nodes) != self.pad_id)[:, None]
        e, ex, ey = self.item_emb * keep, self.item_emb_x * keep, self.item_emb_y * keep
        if not self.use_graph:
            return e, ex, ey, e, ex, ey
        drop = None if not train else (lambda h, layer: self.gnn_dropout(h, deterministic=False))

        def gcn(table, bias, key):
            s, r, w = graphs[key][:3]
            return graph_lib.c2dsr_propagate(table, s, r, w, bias, num_nodes=self.num_nodes, dropout_fn=drop)

        return (gcn(e, self.gnn_bias, "mixed"), gcn(ex, self.gnn_bias_x, "single"),
                gcn(ey, self.gnn_bias_y, "single"), e, ex, ey)

    def row_tables(self, graphs, ids, capacities, *, train: bool = True):
        """GCN outputs at the rows a batch reaches only (``task.gcn_rows="batch"``): for each of the mixed, X and
        Y tables ``(H_rows [U, d], index [B', T])`` with ``H[ids] == H_rows[index]``, plus the three PAD-masked
        raw tables. ``ids = (mixed_ids, x_ids, y_ids)`` (the id arrays each table is looked up with; ``U`` = their
        size, unique ids first, PAD-filled); ``capacities = (C_mixed, C_x, C_y)`` edge capacities of
        :func:`jaxrec.kernels.graph.c2dsr_propagate_rows` (exact full fallback above them). Needs the CSR offsets
        as a 4th element of each graph tuple (:meth:`C2DSRTask.graphs`) and ``gnn_layers == 1``. Dropout: the
        same masks as :meth:`tables` -- threefry draws the whole table, hash only the gathered sender rows."""
        if self.gnn_layers != 1 or not self.use_graph:
            raise ValueError("C2DSR.row_tables needs gnn_layers == 1 and use_graph")
        keep = (jnp.arange(self.num_nodes) != self.pad_id)[:, None]
        e, ex, ey = self.item_emb * keep, self.item_emb_x * keep, self.item_emb_y * keep
        out = []
        for table, bias, key, idx, cap in ((e, self.gnn_bias, "mixed", ids[0], capacities[0]),
                                           (ex, self.gnn_bias_x, "single", ids[1], capacities[1]),
                                           (ey, self.gnn_bias_y, "single", ids[2], capacities[2])):
            if len(graphs[key]) < 4:
                raise ValueError(f"C2DSR.row_tables: graph {key!r} needs CSR offsets (senders, receivers, weight, "
                                 "row_ptr), see C2DSRTask.graphs")
            s, r, w, ptr = graphs[key]
            flat = jnp.asarray(idx, jnp.int32).reshape(-1)
            rows = jnp.unique(flat, size=flat.shape[0], fill_value=self.pad_id)
            source, message_fn = table, None
            if train and self.dropout_rate > 0.0:
                if self.dropout_impl == "hash":
                    message_fn = self._hash_row_dropout(self.gnn_dropout.rng_key())
                else:
                    source = self.gnn_dropout(table, deterministic=False)
            h_rows = graph_lib.c2dsr_propagate_rows(table, rows, s, r, w, ptr, bias[0], edge_capacity=cap,
                                                    message_fn=message_fn, source=source)
            out.append((h_rows, jnp.searchsorted(rows, jnp.asarray(idx, jnp.int32)).astype(jnp.int32)))
        return (*out, e, ex, ey)

    def _hash_row_dropout(self, rng):
        """``(rows [n, d], row ids [n]) -> dropped rows``: the hash mask of those rows of a whole ``[V, d]`` table
        (element index ``row * d + col``, as :meth:`tables`' full-table draw with the same key)."""
        if self.num_nodes * self.embed_dim >= 1 << 32:
            raise ValueError(f"C2DSR hash dropout: a {self.num_nodes} x {self.embed_dim} table has more than 2**32 - 1 "
                             "elements to index; use dropout_impl='threefry'")
        cols = jnp.arange(self.embed_dim, dtype=jnp.uint32)

        def message_fn(h, ids):
            index = ids.astype(jnp.uint32)[:, None] * jnp.uint32(self.embed_dim) + cols
            return dropout_lib.dropout(h, self.dropout_rate, rng, impl="hash", index=index)

        return message_fn

    # ------------------------------------------------------------------------------------------ streams
    def __call__(self, batch, graphs, *, train: bool = False, corrupted: bool = True, gcn_capacity=None,
                 token_capacity=None):
        """Encoder states ``{"F", "F_X", "F_Y"[, "F_cx", "F_cy"]}`` ``[B, T, d]`` for a batch with
        ``seq, x_seq, y_seq, pos, x_pos, y_pos`` (and ``corru_x, corru_y`` when ``corrupted``).

        ``gcn_capacity = (C_mixed, C_x, C_y)``: compute the GCN only at the rows the batch reaches
        (:meth:`row_tables`; same states as the full tables up to float rounding); None: full tables.
        ``token_capacity = (C_mixed, C_x, C_y)``: the encoders skip PAD tokens in their position-wise work
        (``task.encoder_tokens="packed"``; :class:`C2DSREncoder`; the same states up to float rounding, exact
        dense fallback for a batch above a capacity; the corrupted sequences share the mixed one's PAD
        pattern and capacity); None: every token."""
        if gcn_capacity is not None and self.use_graph:
            mixed = [batch["seq"]] + ([batch["corru_x"], batch["corru_y"]] if corrupted else [])
            (h, hi), (hx, hxi), (hy, hyi), e, ex, ey = self.row_tables(
                graphs, (jnp.concatenate(mixed, 0), batch["x_seq"], batch["y_seq"]), gcn_capacity, train=train)
            b = batch["seq"].shape[0]
            gi = {"seq": hi[:b], "x_seq": hxi, "y_seq": hyi}
            if corrupted:
                gi["corru_x"], gi["corru_y"] = hi[b:2 * b], hi[2 * b:]
        else:
            h, hx, hy, e, ex, ey = self.tables(graphs, train=train)
            gi = {}
        cm, cx, cy = (None,) * 3 if token_capacity is None else token_capacity
        out = {"F": self.enc(batch["seq"], batch["pos"], h, e, train=train, graph_ids=gi.get("seq"),
                             pack_capacity=cm),
               "F_X": self.enc_x(batch["x_seq"], batch["x_pos"], hx, ex, train=train, graph_ids=gi.get("x_seq"),
                                 pack_capacity=cx),
               "F_Y": self.enc_y(batch["y_seq"], batch["y_pos"], hy, ey, train=train, graph_ids=gi.get("y_seq"),
                                 pack_capacity=cy)}
        if corrupted:
            out["F_cx"] = self.enc(batch["corru_x"], batch["pos"], h, e, train=train, graph_ids=gi.get("corru_x"),
                                   pack_capacity=cm)
            out["F_cy"] = self.enc(batch["corru_y"], batch["pos"], h, e, train=train, graph_ids=gi.get("corru_y"),
                                   pack_capacity=cm)
        return out

    # ------------------------------------------------------------------------------------------ heads
    def logits_x(self, hidden):
        """``[..., d] -> [..., NX]``."""
        return self.lin_x(hidden)

    def logits_y(self, hidden):
        return self.lin_y(hidden)

    def logit_pad(self, hidden):
        """``[..., d] -> [..., 1]``."""
        return self.lin_pad(hidden)

    def discriminators(self):
        """``(W_X [d, d], b_X, W_Y, b_Y)``: ``D(a, b) = aᵀ W b + β`` (``nn.Bilinear(d, d, 1)``)."""
        return self.disc_x, self.disc_x_bias, self.disc_y, self.disc_y_bias

    def head_params(self, which: str):
        """``(kernel [d, N], bias [N])`` of head ``"x"``, ``"y"`` or ``"pad"`` (the bound parameters)."""
        mod = {"x": self.lin_x, "y": self.lin_y, "pad": self.lin_pad}[which]
        p = mod.variables["params"]
        return nn.meta.unbox(p["kernel"]), nn.meta.unbox(p["bias"])  # boxed when applied to raw init variables

    def training_losses(self, batch, graphs, *, train: bool = True, lambda_: float = 0.7,
                        loss_positions: int = 10, head_slots: str = "masked", head_capacity=None,
                        gcn_capacity=None, token_capacity=None):
        """All six loss terms, the total and the states. ``batch``: training keys (c2dsr_transforms).

        ``head_slots``: ``"masked"`` evaluates each vocabulary head only on the slots whose mask is set
        (:func:`masked_head_terms`; ``head_capacity = (C_X, C_Y)`` static row capacities, None = every slot);
        ``"all"`` is the original formulation (every head at every ``B * P`` slot, masked afterwards). The
        two give the same losses and gradients (up to float rounding). The losses are :meth:`loss_terms` on
        this batch's encoder states. ``gcn_capacity``: row-restricted GCN; ``token_capacity``: packed encoder
        tokens (:meth:`__call__`).
        """
        st = self(batch, graphs, train=train, corrupted=lambda_ != 1.0, gcn_capacity=gcn_capacity,
                  token_capacity=token_capacity)
        keep = batch.get("keep")
        keep = jnp.ones(st["F"].shape[:1], jnp.float32) if keep is None else keep
        terms = self.loss_terms(st, batch, keep, lambda_=lambda_, loss_positions=loss_positions,
                                head_slots=head_slots, head_capacity=head_capacity)
        return terms, st

    def loss_terms(self, states, targets, keep, *, lambda_: float = 0.7, loss_positions: int = 10,
                   head_slots: str = "masked", head_capacity=None, denom=None, infomax_states=None,
                   infomax_targets=None, infomax_rows=None):
        """C2DSR's loss composition on given encoder states: ``{"loss_sx", "loss_sy", "loss_x", "loss_y",
        "loss_mi_x", "loss_mi_y", "loss"}`` (scalars; module docstring). Shared by :meth:`training_losses` and
        CDSRNP (:mod:`jaxrec.models.cdsrnp`, which applies it to adapted states).

        ``states``: ``{"F", "F_X", "F_Y"}`` ``[R, T, d]`` fed to the heads; ``targets``: ``share_x_tgt,
        share_y_tgt, x_tgt, y_tgt`` and their ``*_mask`` ``[R, T]``; ``keep [R]``: per-row weight of the
        four CE terms; ``denom``: their denominator (default ``max(Σ keep, 1) · P``, P =
        :func:`supervised_positions`). ``head_slots`` / ``head_capacity``: as :meth:`training_losses`.

        Infomax (only for ``λ < 1``): on ``infomax_states`` (default ``states``; needs ``F_cx, F_cy`` too)
        pooled with the full-length ``x_mask, y_mask`` of ``infomax_targets`` (default ``targets``), averaged
        over the rows of ``infomax_rows`` (bool ``[R']``, default ``keep > 0``). ``λ = 1``: both terms are 0
        and the total is the plain sum of the CE terms.
        """
        if head_slots not in ("masked", "all"):
            raise ValueError(f"head_slots: expected 'masked' or 'all', got {head_slots!r}")
        f, fx, fy = states["F"], states["F_X"], states["F_Y"]
        t = f.shape[1]
        p = supervised_positions(t, loss_positions)
        keep = jnp.asarray(keep, jnp.float32)
        if denom is None:
            denom = jnp.maximum(keep.sum(), 1.0) * p
        sl = lambda a: a[:, t - p:]  # noqa: E731
        fs, fxs, fys = sl(f), sl(fx), sl(fy)
        weight = lambda mask: sl(targets[mask]).astype(jnp.float32) * keep[:, None]  # noqa: E731

        if head_slots == "all" or self.is_initializing():  # init: creates the head parameters
            pad_f = self.logit_pad(fs)

            def ce(logits, tgt, mask):
                return losses.softmax_cross_entropy(logits, sl(targets[tgt]), mask=weight(mask),
                                                    reduction="sum") / denom

            terms = {
                "loss_sx": ce(jnp.concatenate([self.logits_x(fs), pad_f], -1), "share_x_tgt", "share_x_mask"),
                "loss_sy": ce(jnp.concatenate([self.logits_y(fs), pad_f], -1), "share_y_tgt", "share_y_mask"),
                "loss_x": ce(jnp.concatenate([self.logits_x(fs + fxs), self.logit_pad(fxs)], -1), "x_tgt",
                             "x_mask"),
                "loss_y": ce(jnp.concatenate([self.logits_y(fs + fys), self.logit_pad(fys)], -1), "y_tgt",
                             "y_mask"),
            }
        else:
            cap_x, cap_y = (None, None) if head_capacity is None else head_capacity
            pad_w = self.head_params("pad")
            terms = {}
            for dom, fds, cap in (("x", fxs, cap_x), ("y", fys, cap_y)):
                shared, single = masked_head_terms(
                    fs, fds, sl(targets[f"share_{dom}_tgt"]), weight(f"share_{dom}_mask"),
                    sl(targets[f"{dom}_tgt"]), weight(f"{dom}_mask"), self.head_params(dom), pad_w, capacity=cap)
                terms[f"loss_s{dom}"] = shared / denom
                terms[f"loss_{dom}"] = single / denom
            terms = {k: terms[k] for k in ("loss_sx", "loss_sy", "loss_x", "loss_y")}
        pred = (terms["loss_sx"], terms["loss_sy"], terms["loss_x"], terms["loss_y"])
        if lambda_ != 1.0:
            mst = states if infomax_states is None else infomax_states
            mtg = targets if infomax_targets is None else infomax_targets
            rows = keep > 0 if infomax_rows is None else infomax_rows
            wx, bx, wy, by = self.discriminators()
            mi = losses.c2dsr_infomax_loss(mst["F"], mst["F_X"], mst["F_Y"], mst["F_cx"], mst["F_cy"], mtg["x_mask"],
                                           mtg["y_mask"], wx, bx, wy, by, row_mask=rows)
            terms["loss_mi_x"], terms["loss_mi_y"] = mi
        else:
            terms["loss_mi_x"] = terms["loss_mi_y"] = jnp.zeros((), f.dtype)
            mi = ()
        terms["loss"] = losses.c2dsr_total_loss(pred, mi, lam=lambda_)
        return terms

    def scores(self, batch, graphs):
        """Evaluation scores (eval mode): ``(scores_x [B, NX], scores_y [B, NY])`` from
        ``F[:, -1] + F_X[b, x_last]`` and ``F[:, -1] + F_Y[b, y_last]`` (:meth:`score_states`)."""
        st = self(batch, graphs, train=False, corrupted=False)
        return self.score_states(st, batch["x_last"], batch["y_last"])

    def score_states(self, states, x_last, y_last):
        """Evaluation scoring of given encoder states ``{"F", "F_X", "F_Y"} [B, T, d]``: ``lin_X(F[:, -1] +
        F_X[b, x_last])``, ``lin_Y(F[:, -1] + F_Y[b, y_last])`` over every item of the domain (no PAD logit)."""
        f_last = states["F"][:, -1]
        return (self.logits_x(f_last + take_at(states["F_X"], x_last)),
                self.logits_y(f_last + take_at(states["F_Y"], y_last)))


def supervised_positions(max_len: int, loss_positions: int) -> int:
    """``P``: the number of supervised (last) positions; ``loss_positions`` 0 or ``>= T`` = all ``T``."""
    return max_len if not loss_positions or loss_positions >= max_len else int(loss_positions)


def take_at(states, idx):
    """``states [B, T, d]``, ``idx [B]`` -> ``states[b, idx[b]]`` ``[B, d]``."""
    return jnp.take_along_axis(states, jnp.asarray(idx, jnp.int32)[:, None, None], axis=1)[:, 0]


# ---------------------------------------------------------------------------------------------- heads

def pad_class_nll(hidden, pad_hidden, labels, head, pad_head):
    """Per-row ``CE([hidden @ W + b ; pad_hidden @ w_pad + b_pad], label)`` without materialising the
    concatenated ``N + 1`` logits: ``logaddexp(logsumexp(logits), pad) - logit[label]``; label ``N`` is the
    PAD class. ``hidden, pad_hidden [R, d]``, ``labels [R]``, ``head = (W [d, N], b [N])``, ``pad_head = (w
    [d, 1], b [1])`` -> ``[R]``."""
    w, b = head
    logits = hidden @ w + b
    pad = (pad_hidden @ pad_head[0] + pad_head[1])[:, 0]
    n = w.shape[-1]
    labels = jnp.asarray(labels, jnp.int32)
    lse = jnp.logaddexp(jax.nn.logsumexp(logits, axis=-1), pad)
    tgt = jnp.take_along_axis(logits, jnp.clip(labels, 0, n - 1)[:, None], axis=-1)[:, 0]
    return lse - jnp.where(labels >= n, pad, tgt)


def masked_head_terms(fs, fds, share_tgt, share_w, tgt, w, head, pad_head, *, capacity=None):
    """The two masked-CE *sums* of one domain's vocabulary head, evaluated only where a weight is non-zero.

    Shared term: rows ``fs`` (mixed states) with PAD logit from ``fs``, labels ``share_tgt``, weights
    ``share_w``; single-domain term: rows ``fs + fds`` with PAD logit from ``fds``, labels ``tgt``, weights
    ``w`` (all ``[B, P(, d)]``). Returns ``(Σ share_w · nll, Σ w · nll)``, equal to the ``"all"``
    formulation's masked sums.

    The ``2·B·P`` candidate rows are compacted (``jnp.nonzero`` with a static ``size``) into ``capacity``
    rows, so the ``[rows, N]`` logits (forward and backward) cost ``capacity / (2·B·P)`` of the dense
    formulation. ``capacity = None`` (or ``>= 2·B·P``): every candidate row, no gather. When a batch holds
    more weighted rows than ``capacity`` the step falls back (``lax.cond``, only one branch runs) to every
    candidate row, rematerialised so that it stores no ``[rows, N]`` residual: no slot is ever dropped, a
    capacity only sets the speed.
    """
    d = fs.shape[-1]
    flat = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
    hidden = jnp.concatenate([flat(fs), flat(fs + fds)])
    pad_hidden = jnp.concatenate([flat(fs), flat(fds)])
    labels = jnp.concatenate([flat(share_tgt), flat(tgt)]).astype(jnp.int32)
    weights = jnp.concatenate([flat(share_w), flat(w)]).astype(hidden.dtype)
    n_shared = fs.shape[0] * fs.shape[1]
    rows = hidden.shape[0]
    assert hidden.shape == (rows, d)

    def dense(hidden, pad_hidden, labels, weights, head, pad_head):
        nll = pad_class_nll(hidden, pad_hidden, labels, head, pad_head) * weights
        return nll[:n_shared].sum(), nll[n_shared:].sum()

    if capacity is None or capacity >= rows:
        return dense(hidden, pad_hidden, labels, weights, head, pad_head)
    capacity = int(capacity)
    selected = weights != 0
    count = selected.sum()

    def compact(hidden, pad_hidden, labels, weights, head, pad_head):
        idx = jnp.nonzero(selected, size=capacity, fill_value=0)[0]
        rw = jnp.where(jnp.arange(capacity) < count, weights[idx], 0.0)
        nll = pad_class_nll(hidden[idx], pad_hidden[idx], labels[idx], head, pad_head) * rw
        is_shared = idx < n_shared
        return jnp.where(is_shared, nll, 0.0).sum(), jnp.where(is_shared, 0.0, nll).sum()

    return jax.lax.cond(count <= capacity, compact, jax.checkpoint(dense), hidden, pad_hidden, labels, weights,
                        head, pad_head)


GCN_STREAMS = (("seq", "corru_x", "corru_y"), ("x_seq",), ("y_seq",))  # ids each GCN table is looked up with


def gcn_edge_capacity(arrays, graphs_np, num_nodes: int, batch_size: int, *, corrupted: bool = True,
                      sigmas: float = 4.0, samples: int = 64, seed: int = 0, multiple: int = 1024) -> tuple:
    """Static edge capacities ``(C_mixed, C_x, C_y)`` of the row-restricted GCN (``task.gcn_rows="batch"``,
    :meth:`C2DSR.row_tables`) from ``samples`` random batches of ``batch_size`` training rows (``arrays [K,
    T]``, fixed ``seed``): per table the edges into the batch's distinct ids (mixed: ``seq`` and, when
    ``corrupted``, ``corru_x, corru_y``; X: ``x_seq`` over the single-domain graph; Y: ``y_seq``), capacity =
    ``mean + sigmas * std`` (at least the sampled maximum), rounded up to ``multiple`` and capped at the graph's
    edge count. A batch above it runs the exact full propagation (``lax.cond``), so this only sets the speed."""
    rng = np.random.default_rng(seed)
    k = len(arrays["seq"])
    degs = {g: np.bincount(np.asarray(graphs_np[g][1]), minlength=num_nodes) for g in ("mixed", "single")}
    caps = []
    for keys, g in zip(GCN_STREAMS, ("mixed", "single", "single")):
        keys = keys if corrupted else keys[:1]
        totals = []
        for _ in range(samples):
            sel = rng.choice(k, size=min(batch_size, k), replace=False)
            ids = np.unique(np.concatenate([np.asarray(arrays[key])[sel].ravel() for key in keys]))
            totals.append(int(degs[g][ids].sum()))
        t = np.asarray(totals, np.float64)
        cap = max(t.mean() + sigmas * t.std(), t.max())
        cap = -(-math.ceil(cap) // multiple) * multiple
        caps.append(int(min(cap, len(graphs_np[g][0]))))
    return tuple(caps)


def resolve_gcn_capacities(gcn_rows: str, mode, model, arrays, graphs_np, rows_per_step: int, *,
                           corrupted: bool):
    """The row-restricted GCN's ``(C_mixed, C_x, C_y)`` for a task (C2DSR and CDSRNP): None for
    ``gcn_rows="all"`` or a model without graph, ``(mode,) * 3`` for an int ``task.gcn_edge_capacity``, else
    :func:`gcn_edge_capacity` over ``arrays`` with ``rows_per_step`` rows per step."""
    if gcn_rows != "batch" or not model.use_graph:
        return None
    if mode != "auto":
        return (int(mode),) * 3
    return gcn_edge_capacity(arrays, graphs_np, model.num_x + model.num_y + 1, rows_per_step, corrupted=corrupted)


def device_graphs(graphs_np, num_nodes: int) -> dict:
    """C2DSR's item graphs as jnp arrays (inside jit: compile-time constants): ``(senders, receivers, weight,
    row_ptr)`` per graph, edges sorted by receiver (``build_graphs``), ``row_ptr [V + 1]`` their CSR offsets
    (the row-restricted GCN, ``task.gcn_rows="batch"``)."""
    return {k: tuple(jnp.asarray(a) for a in (*g, graph_lib.csr_row_ptr(g[1], num_nodes)))
            for k, g in graphs_np.items()}


def head_slot_counts(arrays, positions: int) -> dict:
    """Per training row: the weighted slots of each vocabulary head over the last ``positions`` positions,
    ``{"x": share_x_mask + x_mask, "y": share_y_mask + y_mask}`` summed per row (``[K]`` int; the counts
    :func:`head_capacity` takes). ``arrays``: a training table's ``[K, T]`` masks."""
    p = int(positions)
    return {d: arrays[f"share_{d}_mask"][:, -p:].sum(1) + arrays[f"{d}_mask"][:, -p:].sum(1) for d in ("x", "y")}


def token_counts(arrays, pad_id: int) -> dict:
    """Per training row: the real (non-PAD) tokens of each encoder's input, ``{"mixed": seq, "x": x_seq, "y":
    y_seq}`` (``[K]`` int; the corrupted sequences share ``seq``'s PAD pattern). :func:`head_capacity` turns
    them into the packed-encoder capacities (``task.encoder_tokens="packed"``)."""
    return {k: (np.asarray(arrays[key]) != pad_id).sum(1) for k, key in (("mixed", "seq"), ("x", "x_seq"),
                                                                          ("y", "y_seq"))}


def token_options(task) -> tuple:
    """``(encoder_tokens, token_capacity)`` from the ``task`` config (C2DSR and CDSRNP tasks):
    ``task.encoder_tokens`` ["all" | "packed"], ``task.token_capacity`` ["auto" | positive int]."""
    return _mode_and_capacity(task, "encoder_tokens", ("all", "packed"), "token_capacity")


def _mode_and_capacity(task, mode_key: str, modes: tuple, cap_key: str) -> tuple:
    """``(task[mode_key], task[cap_key])`` validated: the mode one of ``modes`` (default the first), the capacity
    ``"auto"`` (default) or a positive int; a ``ConfigError`` naming the key otherwise."""
    from jaxrec.config import ConfigError

    mode = task.get(mode_key, modes[0])
    if mode not in modes:
        raise ConfigError(f"config key 'task.{mode_key}': expected {' or '.join(map(repr, modes))}, got {mode!r}")
    cap = task.get(cap_key, "auto")
    if not (cap == "auto" or (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0)):
        raise ConfigError(f"config key 'task.{cap_key}': expected 'auto' or a positive int, got {cap!r}")
    return mode, cap


def resolve_token_capacities(mode: str, cap, counts: dict, rows_per_call: int, sigmas: float):
    """``(C_mixed, C_x, C_y)`` packed-token capacities, or None for ``encoder_tokens="all"``: ``(cap,) * 3`` for
    an int, else :func:`head_capacity` of each stream's per-row counts (``counts``: :func:`token_counts` over
    the rows one encoder call draws from) for ``rows_per_call`` rows per call."""
    if mode == "all":
        return None
    if isinstance(cap, int):
        return (cap,) * 3
    return tuple(head_capacity(counts[k], rows_per_call, sigmas=sigmas) for k in ("mixed", "x", "y"))


def head_capacity(counts, batch_size: int, *, sigmas: float | None = 4.0, multiple: int = 32) -> int:
    """A static row capacity for one vocabulary head from the per-example counts of weighted slots over the
    training table (``counts [K]``, kept examples).

    ``sigmas = None``: the strict bound -- the sum of the ``batch_size`` largest counts, which no batch of
    distinct examples can exceed. Otherwise ``B·mean + sigmas·std_B`` with ``std_B`` the standard deviation
    of a batch sum drawn without replacement (``sqrt(B·var·(K-B)/(K-1))``), capped at the strict bound; a
    batch above it takes :func:`masked_head_terms`' exact fallback. Rounded up to ``multiple``.
    """
    c = np.sort(np.asarray(counts, np.float64))[::-1]
    b = int(batch_size)
    k = c.shape[0]
    strict = c[:b].sum() if k >= b else c.sum() + (b - k) * (c[0] if k else 0)
    if sigmas is None:
        cap = strict
    else:
        var = c.var() * b * (max(k - b, 0) / max(k - 1, 1))
        cap = min(strict, b * c.mean() + float(sigmas) * math.sqrt(var))
    return int(max(multiple, -(-math.ceil(cap) // multiple) * multiple))


# ---------------------------------------------------------------------------------------------- task

def domain_sizes(data_info) -> tuple[int, int]:
    """``(NX, NY)`` from a two-domain catalogue whose domain 0 holds ids ``1..NX`` and domain 1 the rest."""
    from jaxrec.config import ConfigError

    ranges = data_info.domain_item_ranges
    if not ranges or len(ranges) != 2:
        raise ConfigError(f"config key 'data.name': C2DSR needs a two-domain dataset, {data_info.name!r} has "
                          f"domain_item_ranges={ranges!r}")
    names = list(data_info.domain_names) or list(ranges)
    (a0, a1), (b0, b1) = (tuple(ranges[names[0]]), tuple(ranges[names[1]]))
    n = int(data_info.num_items)
    if not (a0 == 1 and b0 == a1 + 1 and b1 == n):
        raise ConfigError(f"config key 'data.name': {data_info.name!r} must list domain 0 items as 1..NX and "
                          f"domain 1 as NX+1..{n}; got {ranges!r}")
    return int(a1), int(b1 - a1)


def two_domain_sizes(data_info, task_name: str) -> tuple[int, int]:
    """:func:`domain_sizes` of the dataset of task ``task_name``, which must be a sequence dataset."""
    from jaxrec.config import ConfigError

    if data_info.kind != "sequence":
        raise ConfigError(f"config key 'data.name': task '{task_name}' needs a sequence dataset, "
                          f"{data_info.name!r} is {data_info.kind!r}")
    return domain_sizes(data_info)


def build_model(cfg, num_x: int, num_y: int):
    """The two-domain model ``model.name`` with ``model.*`` (but ``name``) as attributes; ``max_len >= 2``."""
    from jaxrec import registry
    from jaxrec.config import ConfigError

    model_kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    model = registry.get_model(cfg.model.name)(num_x=num_x, num_y=num_y, **model_kwargs)
    if int(model.max_len) < 2:
        raise ConfigError(f"config key 'model.max_len': expected >= 2, got {int(model.max_len)}")
    return model


def train_protocol(task) -> tuple[float, int, int, bool]:
    """C2DSR's training options ``(lambda_, loss_positions, corrupt_seed, y_final_strict)`` from the ``task``
    config (shared by the C2DSR, CDSRNP and SASRec-on-C2DSR tasks): ``task.lambda_`` [0.7] in [0, 1],
    ``task.loss_positions`` [10] >= 0 (0 = every position), ``task.corrupt_seed`` [2040],
    ``task.y_final_strict`` [True]."""
    from jaxrec.config import ConfigError

    lam = float(task.get("lambda_", 0.7))
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"config key 'task.lambda_': expected a value in [0, 1], got {lam}")
    pos = int(task.get("loss_positions", 10))
    if pos < 0:
        raise ConfigError(f"config key 'task.loss_positions': expected >= 0 (0 = every position), got {pos}")
    return lam, pos, int(task.get("corrupt_seed", 2040)), bool(task.get("y_final_strict", True))


def eval_protocol(ev) -> tuple[int, int, bool, bool]:
    """C2DSR's evaluation options ``(num_negatives, negatives_seed, exclude_history, full_ranking)`` from the
    ``eval`` config: ``eval.num_negatives`` [999], ``eval.negatives_seed`` [2040], ``eval.exclude_history``
    [False], ``eval.full_ranking`` [True]."""
    return (int(ev.get("num_negatives", 999)), int(ev.get("negatives_seed", 2040)),
            bool(ev.get("exclude_history", False)), bool(ev.get("full_ranking", True)))


def gcn_row_options(task, model) -> tuple:
    """``(gcn_rows, gcn_edge_capacity)`` from the ``task`` config, validated against the model (shared by the
    C2DSR and CDSRNP tasks): ``task.gcn_rows`` ["all" | "batch"] (``"batch"`` needs ``model.gnn_layers == 1``),
    ``task.gcn_edge_capacity`` ["auto" | positive int]; also checks ``model.dropout_impl``."""
    from jaxrec.config import ConfigError

    rows, cap = _mode_and_capacity(task, "gcn_rows", ("all", "batch"), "gcn_edge_capacity")
    if rows == "batch" and model.use_graph and int(model.gnn_layers) != 1:
        raise ConfigError(f"config key 'task.gcn_rows': 'batch' supports model.gnn_layers = 1, got {model.gnn_layers}")
    if model.dropout_impl not in dropout_lib.IMPLS:
        raise ConfigError(f"config key 'model.dropout_impl': expected one of {dropout_lib.IMPLS}, got "
                          f"{model.dropout_impl!r}")
    return rows, cap


def nonoverlap_keep_option(ev) -> str:
    """``eval.nonoverlap_keep`` ["target_domain" | "other_domain"]: which domain the non-overlapped evaluation
    view keeps in the history (shared by the C2DSR and CDSRNP tasks)."""
    from jaxrec.config import ConfigError

    keep = ev.get("nonoverlap_keep", "target_domain")
    if keep not in ("target_domain", "other_domain"):
        raise ConfigError(f"config key 'eval.nonoverlap_keep': expected 'target_domain' or 'other_domain', "
                          f"got {keep!r}")
    return keep


def load_train_records(data_info) -> list:
    """The training split's records of a prepared dataset (TFDS directory, else the catalogue)."""
    from jaxrec.data.pipeline import read_records

    try:
        import tensorflow_datasets as tfds

        src = tfds.builder_from_directory(data_info.data_dir).as_data_source("train")
    except Exception:  # noqa: BLE001 -- fall back to the catalogue path
        from jaxrec.data import catalog

        src = catalog.load(data_info.name, "train")
    return read_records(src)


class C2DSRTask:
    """The C2DSR task (engine protocol of :class:`jaxrec.train.state.Task`).

    Config keys: ``model.*`` (C2DSR attributes except ``num_x, num_y``); ``task.lambda_`` [0.7],
    ``task.loss_positions`` [10], ``task.corrupt_seed`` [2040], ``task.y_final_strict`` [True],
    ``task.drop_policy`` ["kept" | "resample" | "mask"], ``task.graph_lines`` ["all" | "kept"],
    ``task.head_slots`` ["masked" | "all"], ``task.head_capacity`` ["auto" | "bound" | int],
    ``task.head_capacity_sigmas`` [4.0]; ``task.gcn_rows`` ["all" | "batch"], ``task.gcn_edge_capacity``
    ["auto" | int]; ``task.encoder_tokens`` ["all" | "packed"], ``task.token_capacity`` ["auto" | int] (module
    docstring);
    ``eval.num_negatives`` [999], ``eval.negatives_seed`` [2040], ``eval.exclude_history`` [False]
    (full ranking only), ``eval.full_ranking`` [True]; ``eval.nonoverlap_view`` [False]: also score every
    evaluation user with the other domain hidden from the history (CDSRNP's non-overlapped view,
    ``eval.nonoverlap_keep`` ["target_domain" | "other_domain"]) -> ``nonoverlap/X/...`` etc., the same metrics
    as :class:`jaxrec.models.cdsrnp.CDSRNPTask` reports, so a C2DSR run is comparable on that group.

    ``train_records``: the training split's records (default: read from the prepared dataset) -- used once
    for the item graphs and the precomputed training table.
    """

    name = "c2dsr"

    def __init__(self, cfg, data_info, train_records=None):
        from jaxrec.config import ConfigError
        from jaxrec.data import c2dsr_transforms as ct

        self.cfg = cfg
        self.data_info = data_info
        self.num_x, self.num_y = two_domain_sizes(data_info, "c2dsr")
        self.model = build_model(cfg, self.num_x, self.num_y)
        self.max_len = int(self.model.max_len)
        task = cfg.task
        self.lambda_, self.loss_positions, self.corrupt_seed, self.y_final_strict = train_protocol(task)
        self.drop_policy = task.get("drop_policy", "kept")
        if self.drop_policy not in DROP_POLICIES:
            raise ConfigError(f"config key 'task.drop_policy': expected one of {DROP_POLICIES}, got "
                              f"{self.drop_policy!r}")
        self.head_slots = task.get("head_slots", "masked")
        if self.head_slots not in ("masked", "all"):
            raise ConfigError(f"config key 'task.head_slots': expected 'masked' or 'all', got {self.head_slots!r}")
        cap = task.get("head_capacity", "auto")
        if not (cap in ("auto", "bound") or (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0)):
            raise ConfigError(f"config key 'task.head_capacity': expected 'auto', 'bound' or a positive int, "
                              f"got {cap!r}")
        self.head_capacity_mode = cap
        self.head_capacity_sigmas = float(task.get("head_capacity_sigmas", 4.0))
        self.gcn_rows, self.gcn_edge_capacity_mode = gcn_row_options(task, self.model)
        self.encoder_tokens, self.token_capacity_mode = token_options(task)
        graph_lines = task.get("graph_lines", "all")
        if graph_lines not in ("all", "kept"):
            raise ConfigError(f"config key 'task.graph_lines': expected 'all' or 'kept', got {graph_lines!r}")
        ev = cfg.eval
        self.num_negatives, self.negatives_seed, self.exclude_history, self.full_ranking = eval_protocol(ev)
        self.nonoverlap_view = bool(ev.get("nonoverlap_view", False))
        self.nonoverlap_keep = nonoverlap_keep_option(ev)

        if train_records is None:
            train_records = load_train_records(data_info)
        self.table = ct.build_train_table(train_records, self.num_x, self.num_y, self.max_len, self.corrupt_seed,
                                          self.y_final_strict)
        seqs = self.table.sequences
        if graph_lines == "kept":
            seqs = [s for s, k in zip(seqs, self.table.kept_flags) if k]
        self.graphs_np = ct.build_graphs(seqs, self.num_x, self.num_y)
        self.head_capacities = self._head_capacities(int(cfg.train.batch_size))
        self.gcn_capacities = self._gcn_capacities()
        self.token_capacities = self._token_capacities(int(cfg.train.batch_size))

    @property
    def supervised_positions(self) -> int:
        return supervised_positions(self.max_len, self.loss_positions)

    def head_slot_counts(self) -> dict:
        """Per kept example: weighted slots of each head's rows over the supervised positions, ``{"x": share_x +
        x, "y": share_y + y}`` (``[K]`` int; :func:`head_slot_counts`)."""
        return head_slot_counts(self.table.arrays, self.supervised_positions)

    def _head_capacities(self, batch_size: int):
        """``(C_X, C_Y)`` static row capacities of the masked heads (:func:`head_capacity`), or None (every
        row) for ``head_slots="all"``. ``task.head_capacity``: ``"auto"`` = batch mean + ``head_capacity_sigmas``
        standard deviations (a rarer batch above it runs the exact dense fallback), ``"bound"`` = the strict
        sum of the ``B`` largest per-example counts (no batch of distinct examples exceeds it), an int = both."""
        if self.head_slots == "all":
            return None
        if isinstance(self.head_capacity_mode, int):
            return (self.head_capacity_mode,) * 2
        sig = None if self.head_capacity_mode == "bound" else self.head_capacity_sigmas
        counts = self.head_slot_counts()
        return tuple(head_capacity(counts[d], batch_size, sigmas=sig) for d in ("x", "y"))

    def _gcn_capacities(self):
        """``(C_mixed, C_x, C_y)`` edge capacities of the row-restricted GCN for ``task.gcn_rows="batch"``
        (:func:`gcn_edge_capacity` over the kept training rows, or ``task.gcn_edge_capacity`` when an int), None
        for ``"all"`` (whole tables)."""
        return resolve_gcn_capacities(self.gcn_rows, self.gcn_edge_capacity_mode, self.model, self.table.arrays,
                                      self.graphs_np, int(self.cfg.train.batch_size), corrupted=self.lambda_ != 1.0)

    def _token_capacities(self, batch_size: int):
        """``(C_mixed, C_x, C_y)`` packed-token capacities (:func:`resolve_token_capacities` over the kept training
        rows), None for ``task.encoder_tokens="all"``."""
        return resolve_token_capacities(self.encoder_tokens, self.token_capacity_mode,
                                        token_counts(self.table.arrays, self.model.pad_id), batch_size,
                                        self.head_capacity_sigmas)

    # ----------------------------------------------------------------------------------- data
    @property
    def num_kept(self) -> int:
        return self.table.num_kept

    def c2dsr_steps_per_epoch(self, batch_size: int) -> int:
        """Official steps per epoch: ``ceil(kept / B)`` (the loader pads the last batch by wrapping)."""
        return math.ceil(self.table.num_kept / batch_size)

    def train_source(self, train_split):
        """Engine hook: the records to train on. ``drop_policy="kept"``: only the records the official loader
        keeps, padded as the official loader does to a multiple of the batch size (its last batch wraps to the
        first examples; here the repeated ones are a fixed random subset), so an engine epoch is the official
        epoch of ``ceil(kept / B)`` steps; ``"resample"`` / ``"mask"``: the whole split."""
        if self.drop_policy != "kept":
            return train_split
        from jaxrec.data import c2dsr_transforms as ct

        return ct.KeptRecords(train_split, self.table, int(self.cfg.train.batch_size), seed=self.corrupt_seed)

    def train_transform(self):
        from jaxrec.data import c2dsr_transforms as ct

        if self.drop_policy == "kept":
            return ct.C2DSRKeptTrainTransform(self.table)
        if self.drop_policy == "resample":
            return ct.C2DSRResampledTrainTransform(self.table)
        return ct.C2DSRTrainTransform(self.num_x, self.num_y, self.max_len, self.corrupt_seed, self.y_final_strict)

    def eval_transform(self, split: str):
        from jaxrec.data import c2dsr_transforms as ct

        if self.nonoverlap_view:
            from jaxrec.data import cdsrnp_transforms as nt

            return nt.CDSRNPEvalTransform(self.num_x, self.num_y, self.max_len, self.num_negatives,
                                          self.negatives_seed, split, self.nonoverlap_keep)
        return ct.C2DSREvalTransform(self.num_x, self.num_y, self.max_len, self.num_negatives, self.negatives_seed,
                                     split)

    def dummy_batch(self, batch_size: int) -> dict:
        from jaxrec.data import c2dsr_transforms as ct

        T = self.max_len
        fills = ct.train_fills(self.num_x, self.num_y)
        out = {k: np.full((batch_size, T), fills[k], np.int32) for k in ct.TRAIN_KEYS}
        out["keep"] = np.ones((batch_size,), bool)
        out["user_id"] = np.zeros((batch_size,), np.int32)
        return out

    def graphs(self) -> dict:
        """The item graphs with CSR offsets (:func:`device_graphs`)."""
        return device_graphs(self.graphs_np, self.model.num_nodes)

    # ----------------------------------------------------------------------------------- model
    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch, self.graphs(), train=False,
                               lambda_=0.7, loss_positions=self.loss_positions, method="training_losses")

    def loss(self, params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        terms, _ = self.model.apply(variables, batch, self.graphs(), train=True, lambda_=self.lambda_,
                                    loss_positions=self.loss_positions, head_slots=self.head_slots,
                                    head_capacity=self.head_capacities, gcn_capacity=self.gcn_capacities,
                                    token_capacity=self.token_capacities, method="training_losses",
                                    rngs={"dropout": rng})
        loss = terms.pop("loss")
        return loss, (terms, model_state)

    def scores(self, params, model_state, batch):
        """``(scores_x [B, NX], scores_y [B, NY])``, eval mode."""
        variables = {"params": params, **model_state}
        return self.model.apply(variables, batch, self.graphs(), method="scores")

    def evaluate(self, params, model_state, batch):
        kw = dict(num_negatives=self.num_negatives, full_ranking=self.full_ranking,
                  exclude_history=self.exclude_history)
        if not self.nonoverlap_view:
            sx, sy = self.scores(params, model_state, batch)
            return rank_outputs(sx, sy, batch, **kw)
        from jaxrec.data.cdsrnp_transforms import STREAM_KEYS

        sx, sy = self.scores(params, model_state, two_view_inputs(batch, STREAM_KEYS))
        return rank_two_views(sx, sy, batch, **kw)

    def accumulate(self, acc, outputs, batch) -> None:
        if self.nonoverlap_view:
            accumulate_two_views(acc, outputs, batch)
        else:
            accumulate_by_domain(acc, outputs, batch)

    def train_flops_per_example(self) -> float:
        m = self.model
        d, T = m.embed_dim, m.max_len
        p = supervised_positions(T, self.loss_positions)
        hd = d // m.num_heads
        block = flops_lib.transformer_block(T, d, m.num_heads, hd, d, causal_half=False)
        passes = 3 + (2 if self.lambda_ != 1.0 else 0)
        if self.token_capacities is not None:  # packed: position-wise work on C / B rows per example
            attn = flops_lib.attention(T, T, m.num_heads, hd, causal_half=False)
            def pw(rows):  # position-wise FLOPs of a block on ``rows`` tokens
                return (flops_lib.transformer_block(rows, d, m.num_heads, hd, d)
                        - flops_lib.attention(rows, rows, m.num_heads, hd, causal_half=False))
            b = max(int(self.cfg.train.batch_size), 1)
            cm, cx, cy = (c / b for c in self.token_capacities)
            enc = sum(pw(c) + attn for c in [cm, cx, cy] + ([cm, cm] if self.lambda_ != 1.0 else []))
        else:
            enc = passes * block
        if self.head_capacities is None:  # every head at every supervised slot
            heads = flops_lib.dense(p, d, 2 * (self.num_x + 1) + 2 * (self.num_y + 1))
        else:  # C_X (C_Y) compacted rows per batch through the X (Y) head
            cx, cy = self.head_capacities
            heads = flops_lib.dense(1, d, cx * (self.num_x + 1) + cy * (self.num_y + 1)) / max(
                int(self.cfg.train.batch_size), 1)
        # the GCN runs once per step over the three tables (mixed graph once, single-domain graph twice); its
        # cost is shared by the batch
        num_edges = len(self.graphs_np["mixed"][0]) + 2 * len(self.graphs_np["single"][0])
        if self.gcn_capacities is not None:  # row-restricted GCN: edge capacities (the common, in-capacity branch)
            num_edges = sum(self.gcn_capacities)
        gcn = 2.0 * d * num_edges * m.gnn_layers if m.use_graph else 0.0
        return flops_lib.training(m.num_blocks * enc + heads) + flops_lib.training(gcn) / max(
            int(self.cfg.train.batch_size), 1)


def rank_outputs(scores_x, scores_y, batch, *, num_negatives: int = 999, full_ranking: bool = True,
                 exclude_history: bool = False) -> dict:
    """Per-example ranking metrics ``[B]`` of both protocols for rows with X and Y targets.

    ``batch``: ``gt [B]`` domain-local target, ``is_y [B]``, ``negatives [B, N]`` domain-local, ``history
    [B, M]`` (domain-local, ``-1`` padding; used when ``exclude_history``). Returns ``{"sampled/<m>",
    "full/<m>", "sampled/rank", "full/rank"}`` with C2DSR's tie rule ``rank = 1 + #{s > s_gt + 1e-5}``.
    """
    is_y = jnp.asarray(batch["is_y"], bool)
    gt = jnp.asarray(batch["gt"], jnp.int32)
    nx, ny = scores_x.shape[-1], scores_y.shape[-1]
    gx, gy = jnp.clip(gt, 0, nx - 1), jnp.clip(gt, 0, ny - 1)
    out = {}
    if num_negatives:
        negs = jnp.asarray(batch["negatives"], jnp.int32)
        pos = jnp.where(is_y, jnp.take_along_axis(scores_y, gy[:, None], 1)[:, 0],
                        jnp.take_along_axis(scores_x, gx[:, None], 1)[:, 0])
        neg = jnp.where(is_y[:, None], jnp.take_along_axis(scores_y, jnp.clip(negs, 0, ny - 1), 1),
                        jnp.take_along_axis(scores_x, jnp.clip(negs, 0, nx - 1), 1))
        rank = metrics.rank_against_negatives(pos, neg)
        out.update({f"sampled/{k}": v for k, v in metrics.ranking_metrics(rank, HR_KS, NDCG_KS).items()})
        out["sampled/rank"] = rank
    if full_ranking:
        hist = jnp.asarray(batch["history"], jnp.int32) if exclude_history else None
        rx = metrics.rank_in_catalogue(scores_x, gx, exclude_ids=hist, exclude_pad_id=-1)
        ry = metrics.rank_in_catalogue(scores_y, gy, exclude_ids=hist, exclude_pad_id=-1)
        rank = jnp.where(is_y, ry, rx)
        out.update({f"full/{k}": v for k, v in metrics.ranking_metrics(rank, HR_KS, NDCG_KS).items()})
        out["full/rank"] = rank
    return out


def accumulate_by_domain(acc, outputs, batch) -> None:
    """Averages per target domain: ``X/<m>`` and ``Y/<m>`` (official protocol), ``X/full/<m>`` ...,
    and ``all/...`` over every real example; the ``rank`` entries are not averaged."""
    valid = np.asarray(batch["valid"], bool) if "valid" in batch else np.ones(np.shape(batch["is_y"]), bool)
    is_y = np.asarray(batch["is_y"], bool)
    for key, v in outputs.items():
        proto, name = key.split("/", 1)
        if name == "rank":
            continue
        suffix = name if proto == "sampled" else f"full/{name}"
        acc.add(f"X/{suffix}", v, mask=valid & ~is_y)
        acc.add(f"Y/{suffix}", v, mask=valid & is_y)
        acc.add(f"all/{suffix}", v, mask=valid)


NONOVERLAP_PREFIX = "nonoverlap/"


class PrefixedAccumulator:
    """A metric-accumulator view that prefixes every name and ANDs an extra row mask."""

    def __init__(self, acc, prefix: str, mask):
        self.acc, self.prefix, self.mask = acc, prefix, np.asarray(mask, bool)

    def add(self, name, values, mask=None, **kw):
        m = self.mask if mask is None else (np.asarray(mask, bool) & self.mask)
        self.acc.add(self.prefix + name, values, mask=m, **kw)


def two_view_inputs(batch, keys) -> dict:
    """``{k: concat(batch[k], batch["nv_" + k])}``: the full-history and the hidden-domain ("non-overlapped")
    views of an evaluation batch (:class:`jaxrec.data.cdsrnp_transforms.CDSRNPEvalTransform`) stacked on the
    batch axis, so both are scored in one pass (one GCN)."""
    return {k: jnp.concatenate([jnp.asarray(batch[k]), jnp.asarray(batch["nv_" + k])], 0) for k in keys}


def rank_two_views(scores_x, scores_y, batch, **kw) -> dict:
    """:func:`rank_outputs` of the full view (rows ``:B`` of the scores) and of the hidden view (rows ``B:``,
    ranked against the same targets and negatives, the hidden history excluded when ``exclude_history``); the
    latter's keys are prefixed ``"nonoverlap|"``."""
    b = np.shape(batch["is_y"])[0]
    out = rank_outputs(scores_x[:b], scores_y[:b], batch, **kw)
    nv_batch = {"is_y": batch["is_y"], "gt": batch["gt"], "history": batch["nv_history"]}
    if "negatives" in batch:
        nv_batch["negatives"] = batch["negatives"]
    out.update({f"nonoverlap|{k}": v for k, v in rank_outputs(scores_x[b:], scores_y[b:], nv_batch, **kw).items()})
    return out


def accumulate_two_views(acc, outputs, batch) -> None:
    """:func:`accumulate_by_domain` of :func:`rank_two_views`' outputs: ``X/..., Y/..., all/...`` (full view)
    and ``nonoverlap/X/...`` etc. over the rows whose hidden view keeps a history (``nv_valid``)."""
    full = {k: v for k, v in outputs.items() if "|" not in k}
    nv = {k.split("|", 1)[1]: v for k, v in outputs.items() if k.startswith("nonoverlap|")}
    accumulate_by_domain(acc, full, batch)
    valid = np.asarray(batch["valid"], bool) if "valid" in batch else np.ones(np.shape(batch["is_y"]), bool)
    accumulate_by_domain(PrefixedAccumulator(acc, NONOVERLAP_PREFIX, np.asarray(batch["nv_valid"], bool)), nv,
                         {"valid": valid, "is_y": batch["is_y"]})


@register_task("c2dsr")
def make_c2dsr_task(cfg, data_info) -> C2DSRTask:
    return C2DSRTask(cfg, data_info)
