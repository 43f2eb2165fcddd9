"""KuaiFormer: Transformer-based multi-interest retrieval (Liu et al., arXiv 2411.10057), its task and baselines.

Spec: ../shared/papers/kuaiformer.md (tags: [P] paper, [R] our reconstruction, [U] unknown in the paper).

Model ``kuaiformer`` (one user; B = batch, n = raw history length, d = width, k = interest query tokens)::

    item_ids [B, n] (left-padded with 0, oldest first), side ids [B, n] (e.g. the KuaiRand tab of each event)
    t = TokenMLP([X[item_ids], F[side]])                          [B, n, d]     Eq. 3-5
    early groups:  t[:, 0:128]   -> [B*2, 64, d] -> 1-layer bidirectional encoder -> masked mean -> [B, 2, d]
    middle groups: t[:, 128:208] -> [B*5, 16, d] -> 1-layer bidirectional encoder -> masked mean -> [B, 5, d]
    latest:        t[:, 208:256]                                                      [B, 48, d]
    x = concat(early, middle, latest)                              [B, 55, d]    (256 -> 55 tokens)
    h = CausalStack(concat(x, q_1..q_k))                           [B, 55+k, d]  Llama-style, causal mask
    U = h[:, 55:]                                                  [B, k, d]     the k interests
    Score(x) = max_j <U_j, e_x>                                    (Eq. 9)

The layout is ``compress = ((64, 2), (16, 5))`` (group size, number of groups, oldest first) over
``max_len = 256``; ``compress = ()`` gives the uncompressed model (n tokens), and with ``num_queries = 1`` the
Table 3 "k = 1" setting. Histories must be exactly ``max_len`` long (left-padded) when compressing.

Choices ([R] = ours, where the paper is silent; [P] = the paper's):

* [R] item table ``X [V+1, d]`` with rows ``0`` = padding, ``1`` = OOV (ids unseen in the training split,
  or outside the table), ``2..V`` = items; ids outside ``[0, V]`` are mapped to the OOV row inside the model
  (never a NaN from an out-of-bounds gather). The task builds this dense re-indexing (see below).
* [R] side features: one discrete attribute (``task.side_key``, default the event's scenario/tab id,
  ``domains``) with its own table ``F [num_domains+1, side_dim]`` (row 0 = padding/unknown, id ``s`` ->
  row ``s+1``, out-of-range ids -> row 0). The paper's ~10 watch side-infos (watch time, likes, duration
  buckets, ...) are not in this data.
* [R]/[U] Token MLP (Eq. 5, depth/activation unknown): ``token_mlp_hidden = ()`` = one linear ``Dense(d)``
  (the paper's ``MLP in R^{d x d}``); hidden SiLU layers optional.
* [P] compression 2x64 + 5x16 + 48 raw, each group through a one-layer bidirectional Transformer, then a mean.
  [R] the mean is masked (padding excluded); a group with no real item is masked out of the causal stack
  (key padding) and its token is zero. [U]->[R] early and middle groups use separate encoders
  (``share_compressor=False``); the encoders are Llama-style blocks with RoPE over positions inside the group
  (relative, so left padding inside a group does not matter), without a final norm (their output is a
  residual stream like the raw tokens).
* [P] k learnable query tokens ``q [k, d]`` after the sequence; under the causal mask q_j sees all history
  tokens and q_1..q_{j-1} (``query_attend_each_other=True``; False isolates the queries from each other).
* [P]/[R] causal stack: RMSNorm, pre-norm, SwiGLU (width ``round(8d/3)``), RoPE over token index
  ``0..T+k-1`` (``jaxrec.nn.transformer.llama_config``), final RMSNorm; dropout ``dropout_rate`` [R].
* [R]/[U] item side of the score: the tied input table ``e_x = X[x]``; the task L2-normalises ``U`` and
  ``e`` and divides by a temperature (``task.normalize``, ``task.temperature``; Yi et al. 2019 practice).

Defaults for the paper's unknowns ([U] -> [R]; ``experiments/kuaiformer_kuairand1k.py``): d = 64, 4 heads,
L = 4 (the paper's 4-5), k = 6 (its ablation's pick), dropout 0.1, temperature 0.05 with L2-normalised vectors,
label smoothing alpha = 0.1 in the printed Eq. 12 form, Q = empirical training frequency, Adam 1e-3 with global
norm clipping at 1, batch 256; position of a compressed token = its index in the 55-token sequence (§9.2);
items per interest at serving = ceil(K/k) (§9.7); HR protocol = the last view of each held-out window is the
one target (§9.8); streaming-Q prior gap = (V+1) / batch size (uniform) until an item's second occurrence.

Baselines on the same task and protocol:

* ``two_tower``: the same token embedding, masked mean over the history, an MLP -> one user vector
  ``[B, 1, d]``; items from the same tied table; the same in-batch loss.
* ``sasrec`` (:mod:`jaxrec.models.sasrec`, no side features): the last position of the SASRec encoder is the
  user vector; its own item table scores items.

Task ``kuaiformer_retrieval`` (next-action prediction on sequence data, e.g. ``kuairand1k_autocdsr``):

* [R] dense re-indexing: the item vocabulary is every id that occurs in the *training* split (history or
  target; ``task.min_item_count`` can raise the bar), numbered ``2..V`` by ascending raw id; all other ids
  (validation/test-only items, rarer items) map to OOV (1), 0 stays padding. :class:`ItemVocab` holds the
  raw->dense lookup and the training counts (used for logQ).
* [R] training samples: each training record (a window ``seq = items + [target]`` of length m) gives one
  sample per epoch: a cut ``c`` drawn uniformly from ``[min(min_history, m-1), m-1]``, target ``seq[c]``,
  history the ``max_len`` events before it. The cuts come from one generator per batch seeded by
  ``(task.seed, the user ids of the batch in order)``: a pure function of the batch (so a resumed run sees
  the same samples) that changes from epoch to epoch because the shuffle regroups records. ``min_history``
  defaults to 256, so history-length ablations (64 vs 256) predict the same targets. ``task.cut_targets =
  "in_vocab"`` draws the cut only among positions whose target is in the vocabulary (with a raised
  ``min_item_count`` most events are OOV and would otherwise be wasted masked samples); a record with no such
  position falls back to any cut (masked out of the loss).
* held-out protocol: the last event of each validation/test record is the target; ``eval.positions = P`` also
  scores the ``P - 1`` events before it, each with the history preceding it (:class:`HeldOutPositions`; more
  targets per held-out record, the same users).
* [P] loss: in-batch softmax over the batch's positives, logits ``max_j <u_j, e_c> / temperature``
  (Eq. 9-10), logQ correction (Eq. 11) ``task.logq``: ``"empirical"`` (``log Q(x)`` = log frequency of x
  in the training split), ``"streaming"`` (Yi et al. 2019 frequency estimation over the step counter, state in
  the ``logq_state`` collection) or ``"none"``; [R] accidental hits masked; label smoothing (Eq. 12)
  ``task.label_smoothing`` with ``task.smoothing = "paper"`` (Eq. 12 as printed, ``log(1-p)`` on negatives) or
  ``"standard"``. [R] hard max over interests (only the best interest gets gradient).
* metrics: training ``inbatch_acc`` (the paper's "offline accuracy": positive scored highest among the
  in-batch candidates, raw scores) and ``inbatch_acc_logq`` (logQ-corrected logits). Evaluation, per example:
  ``full/*``: rank of the target among all ``V-1`` catalogue items under ``max_j`` scoring (ties half),
  HR/NDCG@{50,100,500,1000}, MRR; ``quota/hr@K``: the serving protocol (each interest retrieves
  ``ceil(K/k)`` items, merged, de-duplicated, truncated to K; :mod:`jaxrec.serving.retrieval`);
  ``inbatch/acc``: offline accuracy within the evaluation batch; ``target_in_vocab``. A target outside
  the vocabulary is a miss. History items are not excluded by default (re-watches are rare on KuaiRand: 0.6% of
  targets); ``eval.exclude_history = True`` takes the user's other history items (the last ``max_len``, as the
  model sees them) out of both the rank and the retrieved lists -- the usual protocol where a target is never an
  item already rated (MovieLens).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import flops as flops_lib
from jaxrec.kernels import losses, metrics
from jaxrec.nn.dropout import Dropout
from jaxrec.nn.transformer import TransformerStack, llama_config
from jaxrec.registry import register_model, register_task

log = logging.getLogger(__name__)

PAD_ID = 0
OOV_ID = 1
FIRST_ITEM = 2
DEFAULT_COMPRESS = ((64, 2), (16, 5))
CUT_TARGETS = ("any", "in_vocab")

__all__ = ["PAD_ID", "OOV_ID", "FIRST_ITEM", "DEFAULT_COMPRESS", "TokenEmbed", "KuaiFormer", "TwoTower",
           "group_compress", "compressed_length", "ItemVocab", "KuaiFormerTrainTransform",
           "KuaiFormerEvalTransform", "HeldOutPositions", "KuaiFormerTask", "kuaiformer_forward_flops",
           "two_tower_forward_flops", "CUT_TARGETS", "interest_logits"]


# ------------------------------------------------------------------------------------------------ helpers

def _check_compress(compress, max_len: int) -> tuple[tuple[int, int], ...]:
    out = tuple((int(s), int(g)) for s, g in compress)
    for s, g in out:
        if s < 1 or g < 1:
            raise ValueError(f"compress: group size and count must be >= 1, got {(s, g)}")
    total = sum(s * g for s, g in out)
    if total > max_len:
        raise ValueError(f"compress {out} covers {total} positions, more than max_len={max_len}")
    return out


def compressed_length(max_len: int, compress=DEFAULT_COMPRESS) -> int:
    """Number of tokens after compression: groups + raw tail (256 with the default layout -> 55)."""
    c = _check_compress(compress, max_len)
    return sum(g for _, g in c) + max_len - sum(s * g for s, g in c)


def group_compress(tokens, valid, compress, encoders):
    """Adaptive compression: split ``tokens [B, n, D]`` into groups, encode each group, masked-mean pool.

    Args:
      tokens: ``[B, n, D]``; valid: ``[B, n]`` bool (False = padding).
      compress: ``((size, count), ...)`` oldest first; positions past the groups stay raw.
      encoders: one callable per entry, ``enc(x [G*B, size, D], valid [G*B, size]) -> [G*B, size, D]``
        (the bidirectional group encoder; an identity gives plain masked means).

    Returns:
      ``(out [B, T, D], out_valid [B, T])``: one token per group (the mean of the encoder outputs over the
      group's real positions; zero and invalid when the group has none), then the raw tail.
    """
    b, n, d = tokens.shape
    outs, vals, start = [], [], 0
    for (size, count), enc in zip(compress, encoders):
        stop = start + size * count
        seg = tokens[:, start:stop].reshape(b * count, size, d)
        seg_valid = valid[:, start:stop].reshape(b * count, size)
        h = enc(seg, seg_valid)
        m = seg_valid.astype(h.dtype)
        den = m.sum(axis=-1)
        pooled = jnp.einsum("gs,gsd->gd", m, h) / jnp.maximum(den, 1.0)[:, None]
        gvalid = den > 0
        pooled = jnp.where(gvalid[:, None], pooled, 0.0)
        outs.append(pooled.reshape(b, count, d))
        vals.append(gvalid.reshape(b, count))
        start = stop
    outs.append(tokens[:, start:])
    vals.append(valid[:, start:])
    return jnp.concatenate(outs, axis=1), jnp.concatenate(vals, axis=1)


def _safe_ids(ids, num_rows_minus_1: int, fallback: int):
    ids = jnp.asarray(ids)
    return jnp.where((ids < 0) | (ids > num_rows_minus_1), fallback, ids)


def _query_isolation_mask(t: int, k: int) -> np.ndarray:
    """``[1, 1, T+k, T+k]`` bool: query rows see every history key and themselves, not the other queries."""
    n = t + k
    m = np.ones((n, n), bool)
    m[t:, t:] = np.eye(k, dtype=bool)
    return m[None, None]


def interest_logits(user_vecs, item_vecs):
    """``Score(b, c) = max_j <u_{b,j}, e_c>``: ``user_vecs [B, k, d]``, ``item_vecs [C, d]`` -> ``[B, C]``."""
    return jnp.einsum("bkd,cd->bkc", user_vecs, item_vecs).max(axis=1)


def _l2n(x, eps=1e-12):
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


# ------------------------------------------------------------------------------------------------ modules

class TokenEmbed(nn.Module):
    """Item + side embeddings and the token MLP (Eq. 3-5): ``ids [B, n], side [B, n] -> [B, n, d]``.

    Attributes: num_items (ids ``0..num_items``; 0 padding, 1 OOV), num_domains (side ids ``0..num_domains-1``;
    0 = no side feature), embed_dim d, side_dim, hidden (token-MLP hidden widths; () = one linear layer).
    """

    num_items: int
    num_domains: int = 0
    embed_dim: int = 64
    side_dim: int = 16
    hidden: Sequence[int] = ()

    def setup(self):
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1 (row 1 is the OOV row), got {self.num_items}")
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0 / math.sqrt(self.embed_dim)),
                                            ("vocab", "embed"))
        self.item_embed = nn.Embed(self.num_items + 1, self.embed_dim, embedding_init=init, name="item_embed")
        if self.num_domains:
            self.side_embed = nn.Embed(self.num_domains + 1, self.side_dim, embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=1.0 / math.sqrt(self.side_dim)), (None, None)), name="side_embed")
        dense = lambda n, name: nn.Dense(n, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, "embed")), name=name)
        self.hidden_layers = [dense(h, f"mlp_hidden_{i}") for i, h in enumerate(self.hidden)]
        self.out_layer = dense(self.embed_dim, "mlp_out")

    def items(self, ids):
        """Item-table rows ``[..., d]`` (out-of-range ids -> OOV row)."""
        return self.item_embed(_safe_ids(ids, self.num_items, OOV_ID))

    def table(self):
        """``[num_items + 1, d]`` (row 0 padding, row 1 OOV)."""
        return self.item_embed.embedding

    def __call__(self, item_ids, side_ids=None):
        x = self.items(item_ids)
        if self.num_domains:
            if side_ids is None:
                side_ids = jnp.full(jnp.shape(item_ids), -1, jnp.int32)
            s = jnp.asarray(side_ids) + 1
            s = jnp.where((s < 1) | (s > self.num_domains) | (jnp.asarray(item_ids) == PAD_ID), 0, s)
            x = jnp.concatenate([x, self.side_embed(s)], axis=-1)
        for layer in self.hidden_layers:
            x = nn.silu(layer(x))
        return self.out_layer(x)


@register_model("kuaiformer")
class KuaiFormer(nn.Module):
    """KuaiFormer user tower (module docstring): history ``[B, n]`` -> interests ``[B, k, d]``.

    Attributes:
      num_items: ids ``0..num_items`` (0 padding, 1 OOV). num_domains, side_dim, token_mlp_hidden: side feature
        and token MLP (:class:`TokenEmbed`).
      embed_dim d, num_layers L, num_heads M, mlp_dim (SwiGLU width; None or 0 = round(8d/3)).
      max_len: n. compress: ``((size, count), ...)`` oldest first, ``()`` = no compression.
      share_compressor: one encoder for every group size (default: one per entry). compressor_layers: 1 [P].
      num_queries: k. query_attend_each_other: causal among queries [P] (False: isolated).
      dropout_rate: token dropout and every dropout in the blocks.
      dropout_impl: their mask generator, ``"threefry"`` (default; bit-identical to ``flax.linen.Dropout``) or
        ``"hash"`` (:mod:`jaxrec.kernels.dropout`; far cheaper on CPU, where the attention-weight masks of a
        256-token history dominate a step).
    """

    num_items: int
    num_domains: int = 0
    embed_dim: int = 64
    side_dim: int = 16
    token_mlp_hidden: Sequence[int] = ()
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int | None = None
    max_len: int = 256
    compress: Sequence[Sequence[int]] = DEFAULT_COMPRESS
    share_compressor: bool = False
    compressor_layers: int = 1
    num_queries: int = 6
    query_attend_each_other: bool = True
    dropout_rate: float = 0.1
    dropout_impl: str = "threefry"

    def setup(self):
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        self._compress = _check_compress(self.compress, self.max_len)
        self.token_embed = TokenEmbed(self.num_items, self.num_domains, self.embed_dim, self.side_dim,
                                      tuple(self.token_mlp_hidden), name="token_embed")
        ccfg = llama_config(self.embed_dim, self.num_heads, self.compressor_layers, self.mlp_dim or None,
                            self.dropout_rate)
        ccfg["final_norm"], ccfg["dropout_impl"] = False, self.dropout_impl
        if self.share_compressor:
            shared = TransformerStack(**ccfg, name="compressor")
            self.compressors = [shared] * len(self._compress)
        else:
            self.compressors = [TransformerStack(**ccfg, name=f"compressor_{i}") for i in range(len(self._compress))]
        self.stack = TransformerStack(**llama_config(self.embed_dim, self.num_heads, self.num_layers,
                                                     self.mlp_dim or None, self.dropout_rate),
                                      dropout_impl=self.dropout_impl, name="stack")
        self.query_tokens = self.param("query_tokens", nn.with_logical_partitioning(
            nn.initializers.normal(stddev=1.0), (None, "embed")), (self.num_queries, self.embed_dim))
        self.token_dropout = Dropout(self.dropout_rate, impl=self.dropout_impl)

    def tokens(self, item_ids, side_ids=None, *, train: bool = False):
        """Compressed token sequence: ``([B, T, d], valid [B, T])`` (T = 55 for the default layout)."""
        item_ids = jnp.asarray(item_ids)
        n = item_ids.shape[-1]
        if self._compress and n != self.max_len:
            raise ValueError(f"history length {n} != max_len={self.max_len}: compression needs left-padded "
                             f"histories of exactly max_len")
        if n > self.max_len:
            raise ValueError(f"history length {n} exceeds max_len={self.max_len}")
        valid = item_ids != PAD_ID
        t = self.token_embed(item_ids, side_ids)
        t = self.token_dropout(t, deterministic=not train)
        t = t * valid[..., None].astype(t.dtype)
        encs = [lambda x, v, enc=enc: enc(x, v, causal=False, deterministic=not train) for enc in self.compressors]
        return group_compress(t, valid, self._compress, encs)

    def __call__(self, item_ids, side_ids=None, *, train: bool = False):
        """``item_ids [B, n]`` (left-padded), ``side_ids [B, n]`` or None -> interests ``[B, k, d]``."""
        x, xv = self.tokens(item_ids, side_ids, train=train)
        b, t, d = x.shape
        q = jnp.broadcast_to(self.query_tokens[None].astype(x.dtype), (b, self.num_queries, d))
        seq = jnp.concatenate([x, q], axis=1)
        valid = jnp.concatenate([xv, jnp.ones((b, self.num_queries), bool)], axis=1)
        mask = None if self.query_attend_each_other else jnp.asarray(_query_isolation_mask(t, self.num_queries))
        h = self.stack(seq, valid, causal=True, mask=mask, deterministic=not train)
        return h[:, t:]

    def item_table(self):
        return self.token_embed.table()

    def item_embeddings(self, ids):
        return self.token_embed.items(ids)


@register_model("two_tower")
class TwoTower(nn.Module):
    """Two-tower DNN baseline: masked mean of the history tokens -> MLP -> one user vector ``[B, 1, d]``.

    Items use the tied item table (as KuaiFormer). Attributes as :class:`KuaiFormer` where shared;
    ``hidden``: MLP hidden widths (ReLU); ``max_len`` only bounds the input length.
    """

    num_items: int
    num_domains: int = 0
    embed_dim: int = 64
    side_dim: int = 16
    token_mlp_hidden: Sequence[int] = ()
    hidden: Sequence[int] = (256, 128)
    max_len: int = 256
    dropout_rate: float = 0.1
    dropout_impl: str = "threefry"

    def setup(self):
        self.token_embed = TokenEmbed(self.num_items, self.num_domains, self.embed_dim, self.side_dim,
                                      tuple(self.token_mlp_hidden), name="token_embed")
        self.layers = [nn.Dense(h, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                            (None, "mlp")), name=f"hidden_{i}")
                       for i, h in enumerate(self.hidden)]
        self.out = nn.Dense(self.embed_dim, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("mlp", "embed")), name="out")
        self.dropout = Dropout(self.dropout_rate, impl=self.dropout_impl)

    def __call__(self, item_ids, side_ids=None, *, train: bool = False):
        item_ids = jnp.asarray(item_ids)
        if item_ids.shape[-1] > self.max_len:
            raise ValueError(f"history length {item_ids.shape[-1]} exceeds max_len={self.max_len}")
        valid = item_ids != PAD_ID
        t = self.token_embed(item_ids, side_ids)
        x = losses.masked_mean_pool(t, valid)
        for layer in self.layers:
            x = self.dropout(nn.relu(layer(x)), deterministic=not train)
        return self.out(x)[:, None, :]

    def item_table(self):
        return self.token_embed.table()

    def item_embeddings(self, ids):
        return self.token_embed.items(ids)


# ------------------------------------------------------------------------------------------------ FLOPs

def kuaiformer_forward_flops(max_len: int, embed_dim: int, num_layers: int, num_heads: int, num_queries: int,
                             compress=DEFAULT_COMPRESS, mlp_dim: int | None = None, compressor_layers: int = 1,
                             token_in: int | None = None, causal_half: bool = True) -> float:
    """Analytic forward FLOPs of the user tower per example (matmuls only; MaxText convention).

    Token MLP ``[n, token_in] @ [token_in, d]`` (token_in = d + side_dim; default d), the group encoders
    (bidirectional, full attention) and the causal stack over ``T + k`` tokens (attention at half when
    ``causal_half``; XLA counts it in full). SwiGLU = 3 matmuls.
    """
    c = _check_compress(compress, max_len)
    d = embed_dim
    f = llama_config(d, num_heads, 1, mlp_dim or None)["mlp_dim"]
    hd = d // num_heads
    total = flops_lib.dense(max_len, token_in or d, d)
    for size, count in c:
        total += compressor_layers * count * flops_lib.transformer_block(size, d, num_heads, hd, f, gated_ffn=True)
    t = compressed_length(max_len, c) + num_queries
    total += num_layers * flops_lib.transformer_block(t, d, num_heads, hd, f, causal_half=causal_half,
                                                      gated_ffn=True)
    return total


def two_tower_forward_flops(max_len: int, embed_dim: int, hidden=(256, 128), token_in: int | None = None) -> float:
    widths = [embed_dim, *hidden, embed_dim]
    return flops_lib.dense(max_len, token_in or embed_dim, embed_dim) + sum(
        flops_lib.dense(1, a, b) for a, b in zip(widths[:-1], widths[1:]))


# ------------------------------------------------------------------------------------------------ data

class ItemVocab:
    """Dense re-indexing of raw item ids: 0 padding, 1 OOV, ``2..V`` the ids kept (ascending raw id).

    Args:
      counts: ``[R + 1]`` occurrences of each raw id ``0..R`` in the training split (index 0 ignored), e.g.
        :func:`jaxrec.data.samplers.item_frequencies`.
      min_count: keep raw ids with at least this many occurrences (1 = every id present).

    Attributes:
      raw_ids ``[V-1]`` int64 (dense id ``2 + i`` <-> raw ``raw_ids[i]``); num_items ``V`` (dense ids
      ``0..V``); counts ``[V+1]`` float64 (OOV row: the occurrences of dropped ids); log_q ``[V+1]`` float32,
      the log empirical frequency (zero counts smoothed to half an occurrence).
    """

    def __init__(self, counts, min_count: int = 1):
        counts = np.asarray(counts, np.int64).reshape(-1)
        if counts.size < 1 or (counts < 0).any():
            raise ValueError("ItemVocab: counts must be a non-empty array of non-negative ints")
        keep = counts >= max(int(min_count), 1)
        keep[0] = False
        self.raw_ids = np.flatnonzero(keep).astype(np.int64)
        self.num_raw = counts.size - 1
        self.num_items = int(self.raw_ids.size) + 1
        self._lookup = np.full(counts.size, OOV_ID, np.int32)
        self._lookup[0] = PAD_ID
        self._lookup[self.raw_ids] = FIRST_ITEM + np.arange(self.raw_ids.size, dtype=np.int32)
        c = np.zeros(self.num_items + 1, np.float64)
        c[FIRST_ITEM:] = counts[self.raw_ids]
        c[OOV_ID] = counts[1:].sum() - c[FIRST_ITEM:].sum()
        self.counts = c
        total = max(c.sum(), 1.0)
        self.log_q = np.log(np.maximum(c, 0.5) / total).astype(np.float32)
        self.log_q[PAD_ID] = 0.0

    def map(self, raw) -> np.ndarray:
        """Raw ids (any int array) -> dense int32; 0 -> 0, negative / out-of-range / dropped -> OOV (1)."""
        raw = np.asarray(raw, np.int64)
        inside = (raw >= 0) & (raw <= self.num_raw)
        return np.where(inside, self._lookup[np.clip(raw, 0, self.num_raw)], OOV_ID).astype(np.int32)

    @classmethod
    def from_source(cls, source, min_count: int = 1, num_raw: int | None = None) -> "ItemVocab":
        from jaxrec.data import samplers

        return cls(samplers.item_frequencies(source, num_raw), min_count)


def _left_pad(rows: Sequence[np.ndarray], length: int, dtype=np.int32) -> np.ndarray:
    out = np.zeros((len(rows), length), dtype)
    for b, r in enumerate(rows):
        r = r[len(r) - min(len(r), length):]
        if len(r):
            out[b, length - len(r):] = r
    return out


def _side(rec: dict, key: str | None, n: int) -> np.ndarray:
    if key is None or key not in rec:
        return np.zeros(n, np.int32)
    return np.asarray(rec[key], np.int32)


def _side_target(rec: dict, key: str | None) -> int:
    if key is None:
        return 0
    from jaxrec.data.pipeline import SIDE_KEYS

    return int(rec.get(SIDE_KEYS.get(key, "target_" + key), 0))


class KuaiFormerTrainTransform:
    """Training record -> one (history, next item) sample at a batch-seeded cut (module docstring).

    Output per example (L = max_len): ``item_ids [L]`` int32 dense ids (left-padded), ``side_ids [L]`` int32,
    ``target`` int32 dense, ``target_side`` int32, ``target_logq`` float32 (empirical log Q of the target),
    ``mask`` bool (target is a real item: not OOV/padding), ``user_id`` int32.
    """

    def __init__(self, vocab: ItemVocab, max_len: int, min_history: int = 256, side_key: str | None = "domains",
                 seed: int = 0, cut_targets: str = "any"):
        if int(max_len) < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if cut_targets not in CUT_TARGETS:
            raise ValueError(f"cut_targets: expected one of {CUT_TARGETS}, got {cut_targets!r}")
        self.vocab, self.max_len, self.min_history = vocab, int(max_len), max(int(min_history), 1)
        self.side_key, self.seed, self.cut_targets = side_key, int(seed), cut_targets

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def __call__(self, rec: dict) -> dict:
        return self.map(rec)

    def cuts(self, records: Sequence[dict]) -> np.ndarray:
        """Target position ``c`` in ``seq = items + [target]`` of each record (history = ``seq[:c]``)."""
        uids = [int(r["user_id"]) & 0xFFFFFFFF for r in records]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x4B46, *uids]))
        out = np.zeros(len(records), np.int64)
        for b, r in enumerate(records):
            m = len(r["items"]) + 1
            lo = min(self.min_history, m - 1)
            if self.cut_targets == "in_vocab" and m > 1:
                seq = np.append(np.asarray(r["items"], np.int64), int(r["target"]))
                ok = np.flatnonzero(self.vocab.map(seq[lo:]) >= FIRST_ITEM)
                if ok.size:  # uniform over the eligible cuts; none eligible -> any cut (masked out, no loss)
                    out[b] = lo + int(ok[rng.integers(0, ok.size)])
                    continue
            out[b] = rng.integers(lo, m) if m > 1 else 0
        return out

    def map_batch(self, records: Sequence[dict]) -> dict:
        cuts = self.cuts(records)
        hist, side, tgt, tside, uid = [], [], [], [], []
        for r, c in zip(records, cuts):
            seq = np.append(np.asarray(r["items"], np.int64), int(r["target"]))
            n = len(seq) - 1
            sd = np.append(_side(r, self.side_key, n), _side_target(r, self.side_key))
            lo = max(0, c - self.max_len)
            hist.append(seq[lo:c])
            side.append(sd[lo:c])
            tgt.append(seq[c])
            tside.append(sd[c])
            uid.append(int(r["user_id"]))
        target = self.vocab.map(np.asarray(tgt))
        return {
            "item_ids": _left_pad([self.vocab.map(h) for h in hist], self.max_len),
            "side_ids": _left_pad(side, self.max_len),
            "target": target,
            "target_side": np.asarray(tside, np.int32),
            "target_logq": self.vocab.log_q[target].astype(np.float32),
            "mask": target >= FIRST_ITEM,
            "user_id": np.asarray(uid, np.int32),
        }


class KuaiFormerEvalTransform:
    """Validation/test record -> ``item_ids [L]`` (last L history items, dense, left-padded), ``side_ids [L]``,
    ``target`` (dense; OOV if unseen in training), ``target_side``, ``user_id``."""

    def __init__(self, vocab: ItemVocab, max_len: int, side_key: str | None = "domains"):
        self.vocab, self.max_len, self.side_key = vocab, int(max_len), side_key

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def __call__(self, rec: dict) -> dict:
        return self.map(rec)

    def map_batch(self, records: Sequence[dict]) -> dict:
        items = [np.asarray(r["items"], np.int64) for r in records]
        return {
            "item_ids": _left_pad([self.vocab.map(h) for h in items], self.max_len),
            "side_ids": _left_pad([_side(r, self.side_key, len(h)) for r, h in zip(records, items)], self.max_len),
            "target": self.vocab.map(np.asarray([int(r["target"]) for r in records])),
            "target_side": np.asarray([_side_target(r, self.side_key) for r in records], np.int32),
            "user_id": np.asarray([int(r["user_id"]) for r in records], np.int32),
        }


class HeldOutPositions:
    """A held-out split read at the last ``positions`` events of each record (``eval.positions``).

    Example ``(i, j)``, ``j = 0..positions-1``, is record ``i`` cut so that its ``j``-th event from the end is the
    target: ``j = 0`` is the record unchanged (its own target), ``j >= 1`` takes ``items[n - j]`` as the target and
    ``items[:n - j]`` as the history; every per-event field (``items``, ``domains``, ``timestamps``, ...) is cut the
    same way and each one with a target field (``target_domain``, ``target_tab``, ...) gets that event's value.
    Pairs that would leave an empty history are not examples; their count is ``skipped`` (logged). Examples are
    ordered record-major, so ``positions = 1`` is the split itself.
    """

    def __init__(self, source, positions: int, split: str = "?"):
        from jaxrec.data.pipeline import SIDE_KEYS

        if int(positions) < 1:
            raise ValueError(f"eval.positions: expected >= 1, got {positions}")
        self.source, self.positions, self._side_keys = source, int(positions), SIDE_KEYS
        lengths = np.asarray([len(source[i]["items"]) for i in range(len(source))], np.int64)
        pairs = [(i, j) for i, n in enumerate(lengths.tolist()) for j in range(self.positions) if j == 0 or n - j >= 1]
        self._pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        self.skipped = len(source) * self.positions - len(pairs)
        (log.warning if self.skipped else log.info)(
            "kuaiformer eval %s: %d records x %d positions -> %d examples (%d skipped: history would be empty)",
            split, len(source), self.positions, len(pairs), self.skipped)

    def __len__(self) -> int:
        return int(self._pairs.shape[0])

    def __getitem__(self, idx: int) -> dict:
        i, j = (int(v) for v in self._pairs[int(idx)])
        rec = self.source[i]
        if j == 0:
            return rec
        items = np.asarray(rec["items"])
        n = len(items)
        out = dict(rec)
        for k, v in rec.items():
            if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == n:
                tk = "target" if k == "items" else self._side_keys.get(k, "target_" + k)
                if tk in rec:
                    out[tk] = type(rec[tk])(v[n - j]) if not isinstance(rec[tk], np.ndarray) else v[n - j]
                out[k] = v[:n - j]
        return out


# ------------------------------------------------------------------------------------------------ task

def _catalogue_scan(user_vecs, table, target_scores, target_rows, k: int, chunk_size: int, method: str = "exact",
                    tie_weight: float = 0.5, exclude_rows=None):
    """One pass over ``table [N, d]`` in chunks: the rank of ``target_scores [B]`` among
    ``max_j <u_j, e_x>`` (row ``target_rows [B]`` left out, -1 = none; ties weighted ``tie_weight``) and
    each interest's top-``k`` rows. Returns ``(rank [B], scores [B, Q, k], rows [B, Q, k])``.

    ``exclude_rows [B, H]`` (optional; -1 = none): rows taken out of the catalogue for that example -- neither
    counted above the target nor retrieved -- except the example's own target row (the usual "exclude the user's
    other history items" protocol). Built as a dense ``[B, N]`` mask, so it costs ``B * N`` bytes."""
    from jaxrec.serving import retrieval

    n, d = table.shape
    b, q = user_vecs.shape[:2]
    best = (jnp.full((b, q, k), -jnp.inf, jnp.float32), jnp.full((b, q, k), -1, jnp.int32))
    if n == 0:
        return jnp.ones((b,), jnp.float32), *best
    c = min(int(chunk_size), n)
    n_chunks = -(-n // c)
    tab = jnp.pad(table, ((0, n_chunks * c - n), (0, 0))).reshape(n_chunks, c, d)
    starts = jnp.arange(n_chunks, dtype=jnp.int32) * c
    t = target_scores[:, None]
    if exclude_rows is None:
        keep = jnp.ones((n_chunks, 1, 1), bool)  # broadcast: nothing excluded
    else:
        ex = jnp.asarray(exclude_rows, jnp.int32)
        ex = jnp.where((ex >= 0) & (ex < n) & (ex != target_rows[:, None]), ex, n_chunks * c)  # -> dropped
        drop = jnp.zeros((b, n_chunks * c), bool).at[jnp.arange(b)[:, None], ex].set(True, mode="drop")
        keep = ~drop.reshape(b, n_chunks, c).transpose(1, 0, 2)

    def body(carry, xs):
        beat, tied, bs, bi = carry
        e, start, kp = xs
        row = start + jnp.arange(c, dtype=jnp.int32)
        inside = (row < n)[None, :] & kp
        s = jnp.where(inside[:, None, :], jnp.einsum("bkd,cd->bkc", user_vecs, e), -jnp.inf)
        smax = s.max(axis=1)
        m = inside & (row[None, :] != target_rows[:, None])
        beat = beat + jnp.sum((smax > t) & m, axis=-1)
        tied = tied + jnp.sum((smax == t) & m, axis=-1)
        bs, bi = retrieval.update_topk(bs, bi, s, start, k, method=method)
        return (beat, tied, bs, bi), None

    zero = jnp.zeros((b,), jnp.int32)
    (beat, tied, bs, bi), _ = jax.lax.scan(body, (zero, zero, *best), (tab, starts, keep))
    return 1.0 + beat.astype(jnp.float32) + tie_weight * tied.astype(jnp.float32), bs, bi


class KuaiFormerTask:
    """Next-action retrieval task for ``kuaiformer``, ``two_tower`` and ``sasrec`` (module docstring).

    Config keys (defaults): ``task.logq`` ["empirical"] | "streaming" | "none"; ``task.streaming_alpha``
    [0.05]; ``task.label_smoothing`` [0.1]; ``task.smoothing`` ["paper"] | "standard"; ``task.temperature``
    [0.05]; ``task.normalize`` [True]; ``task.remove_accidental_hits`` [True]; ``task.min_history`` [256];
    ``task.min_item_count`` [1]; ``task.cut_targets`` ["any"] | "in_vocab" (training cuts only where the target is
    in the vocabulary); ``task.side_key`` ["domains"] (None/"" = no side feature); ``task.seed`` [0];
    ``eval.hr_ks`` [(50, 100, 500, 1000)]; ``eval.quota`` ["split"]; ``eval.method`` ["exact"];
    ``eval.chunk_size`` [65536]; ``eval.ties`` ["half"]; ``eval.positions`` [1] (held-out events per record,
    :class:`HeldOutPositions`); ``eval.exclude_history`` [False] (module docstring).

    Args:
      train_source: training records (default: the dataset's ``train`` split); vocab: a prebuilt
        :class:`ItemVocab` (default: from ``train_source``).
    """

    name = "kuaiformer_retrieval"
    MODELS = ("kuaiformer", "two_tower", "sasrec")

    def __init__(self, cfg, data_info, *, train_source=None, vocab: ItemVocab | None = None):
        from jaxrec import registry
        from jaxrec.config import ConfigError

        if data_info.kind != "sequence":
            raise ConfigError(f"config key 'data.name': task {self.name!r} needs a sequence dataset, "
                              f"{data_info.name!r} is {data_info.kind!r}")
        self.cfg = cfg
        self.model_name = cfg.model.name
        if self.model_name not in self.MODELS:
            raise ConfigError(f"config key 'model.name': task {self.name!r} supports {self.MODELS}, "
                              f"got {self.model_name!r}")
        t, e = cfg.task, cfg.get("eval", {})
        self.logq = t.get("logq", "empirical")
        if self.logq not in ("empirical", "streaming", "none"):
            raise ConfigError(f"config key 'task.logq': expected empirical|streaming|none, got {self.logq!r}")
        self.smoothing = t.get("smoothing", "paper")
        if self.smoothing not in ("paper", "standard"):
            raise ConfigError(f"config key 'task.smoothing': expected paper|standard, got {self.smoothing!r}")
        self.label_smoothing = float(t.get("label_smoothing", 0.1))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"config key 'task.label_smoothing': expected a value in [0, 1), "
                              f"got {self.label_smoothing}")
        self.temperature = float(t.get("temperature", 0.05))
        if self.temperature <= 0:
            raise ConfigError(f"config key 'task.temperature': expected > 0, got {self.temperature}")
        self.normalize = bool(t.get("normalize", True))
        self.remove_accidental_hits = bool(t.get("remove_accidental_hits", True))
        self.streaming_alpha = float(t.get("streaming_alpha", 0.05))
        self.min_history = int(t.get("min_history", 256))
        self.cut_targets = t.get("cut_targets", "any")
        if self.cut_targets not in CUT_TARGETS:
            raise ConfigError(f"config key 'task.cut_targets': expected one of {CUT_TARGETS}, "
                              f"got {self.cut_targets!r}")
        self.eval_positions = int(e.get("positions", 1))
        if self.eval_positions < 1:
            raise ConfigError(f"config key 'eval.positions': expected >= 1, got {self.eval_positions}")
        self.seed = int(t.get("seed", 0))
        self.side_key = t.get("side_key", "domains") or None
        self.hr_ks = tuple(int(k) for k in e.get("hr_ks", (50, 100, 500, 1000)))
        self.quota = e.get("quota", "split")
        self.method = e.get("method", "exact")
        self.chunk_size = int(e.get("chunk_size", 65536))
        self.tie_weight = {"optimistic": 0.0, "half": 0.5, "pessimistic": 1.0}[e.get("ties", "half")]
        self.exclude_history = bool(e.get("exclude_history", False))
        if vocab is None:
            if train_source is None:
                train_source = _open_split(data_info, "train")
            vocab = ItemVocab.from_source(train_source, int(t.get("min_item_count", 1)), data_info.num_items)
        self.vocab = vocab
        self.num_items = vocab.num_items
        kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
        for k, v in list(kwargs.items()):
            if isinstance(v, list):
                kwargs[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        if self.model_name == "sasrec":
            kwargs.pop("num_domains", None)
            self.side_key = None
        elif not self.side_key:
            kwargs["num_domains"] = 0
        model_cls = registry.get_model(self.model_name)
        try:
            self.model = model_cls(num_items=self.num_items, **kwargs)
        except TypeError as err:
            raise ConfigError(f"config group 'model': {err}") from None
        self.max_len = int(cfg.model.max_len)
        if self.model_name == "kuaiformer":
            try:
                _check_compress(self.model.compress, self.max_len)
            except ValueError as err:
                raise ConfigError(f"config key 'model.compress': {err}") from None

    # ------------------------------------------------------------------------------------- data
    def train_transform(self):
        return KuaiFormerTrainTransform(self.vocab, self.max_len, self.min_history, self.side_key, self.seed,
                                        self.cut_targets)

    def eval_source(self, split: str, source):
        """``source`` itself, or its last ``eval.positions`` events per record (:class:`HeldOutPositions`)."""
        return source if self.eval_positions == 1 else HeldOutPositions(source, self.eval_positions, split)

    def eval_transform(self, split: str):
        del split
        return KuaiFormerEvalTransform(self.vocab, self.max_len, self.side_key)

    def dummy_batch(self, batch_size: int) -> dict:
        z = np.zeros((batch_size, self.max_len), np.int32)
        zb = np.zeros((batch_size,), np.int32)
        return {"item_ids": z, "side_ids": z, "target": zb, "target_side": zb,
                "target_logq": np.zeros((batch_size,), np.float32), "mask": np.zeros((batch_size,), bool),
                "user_id": zb}

    # ------------------------------------------------------------------------------------- model
    def _apply_user(self, variables, item_ids, side_ids, *, train: bool, rng=None):
        rngs = {"dropout": rng} if (train and rng is not None) else {}
        item_ids = _safe_ids(item_ids, self.num_items, OOV_ID)  # every model: out-of-table ids -> OOV
        if self.model_name == "sasrec":
            h = self.model.apply(variables, item_ids, train=train, rngs=rngs)
            return h[:, -1:, :]
        return self.model.apply(variables, item_ids, side_ids, train=train, rngs=rngs)

    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        rngs = {"params": params_rng, "dropout": dropout_rng}
        if self.model_name == "sasrec":
            variables = dict(self.model.init(rngs, batch["item_ids"], train=False))
        else:
            variables = dict(self.model.init(rngs, batch["item_ids"], batch["side_ids"], train=False))
        if self.logq == "streaming":
            variables["logq_state"] = self.init_logq_state(int(np.shape(batch["target"])[0]))
        return variables

    def init_logq_state(self, batch_size: int) -> dict:
        """Streaming-frequency state: ``step`` (int32), ``last [V+1]`` (step of the last occurrence, -1 =
        never), ``gap [V+1]`` (expected steps between occurrences; prior ``(V+1) / batch_size``, uniform)."""
        rows = self.num_items + 1
        return {"step": jnp.zeros((), jnp.int32), "last": jnp.full((rows,), -1, jnp.int32),
                "gap": jnp.full((rows,), max(rows / max(batch_size, 1), 1.0), jnp.float32)}

    def user_vectors(self, params, model_state, item_ids, side_ids=None, *, train: bool = False, rng=None):
        """Interests ``[B, k, d]`` (L2-normalised when ``task.normalize``)."""
        u = self._apply_user({"params": params, **model_state}, item_ids, side_ids, train=train, rng=rng)
        return _l2n(u) if self.normalize else u.astype(jnp.float32)

    def item_table(self, params):
        """``[V+1, d]`` item vectors used for scoring (rows 0/1 = padding/OOV; normalised when configured)."""
        tab = self.model.apply({"params": params}, method="item_table")
        return _l2n(tab) if self.normalize else tab.astype(jnp.float32)

    def item_vectors(self, params, ids):
        tab = self.model.apply({"params": params}, method="item_table")
        e = jnp.take(tab, _safe_ids(ids, self.num_items, OOV_ID), axis=0)
        return _l2n(e) if self.normalize else e.astype(jnp.float32)

    def user_tower(self, params, model_state=None):
        """Pure serving function ``(item_ids [B, n], side_ids [B, n]) -> interests [B, k, d]`` (weights closed
        over; see :func:`jaxrec.serving.retrieval.export_user_tower`)."""
        state = {} if model_state is None else {k: v for k, v in model_state.items() if k != "logq_state"}

        def tower(item_ids, side_ids):
            return self.user_vectors(params, state, item_ids, side_ids, train=False)

        return tower

    def catalogue(self, params):
        """``(table [V-1, d], row_offset = 2)``: the retrievable items (padding and OOV rows left out)."""
        return self.item_table(params)[FIRST_ITEM:], FIRST_ITEM

    # ------------------------------------------------------------------------------------- loss
    def _streaming_logq(self, state, target, mask):
        """Yi et al. (2019) frequency estimation: ``Q(x) = 1 / gap(x)`` (expected steps between occurrences).

        Returns (log Q of the batch's targets, read before the update, and the updated state). Per step and
        item: ``gap <- (1-a) gap + a (step - last)`` if the item was seen before; ``last <- step``."""
        a = self.streaming_alpha
        step, last, gap = state["step"], state["last"], state["gap"]
        ids = jnp.where(mask, target, last.shape[0])  # out of range: dropped by the scatters
        g = jnp.take(gap, target, mode="clip")
        logq = -jnp.log(jnp.maximum(g, 1.0))
        prev = jnp.take(last, target, mode="clip")
        new_g = jnp.where(prev >= 0, (1 - a) * g + a * (step - prev).astype(jnp.float32), g)
        gap = gap.at[ids].set(new_g, mode="drop")
        last = last.at[ids].set(step, mode="drop")
        return logq, {"step": step + 1, "last": last, "gap": gap}

    def loss(self, params, model_state, batch, rng):
        target, mask = batch["target"], batch["mask"]
        u = self.user_vectors(params, model_state, batch["item_ids"], batch.get("side_ids"), train=True, rng=rng)
        e = self.item_vectors(params, target)
        logits = interest_logits(u, e)  # [B, B]
        new_state = dict(model_state)
        if self.logq == "empirical":
            logq = batch["target_logq"]
        elif self.logq == "streaming":
            logq, new_state["logq_state"] = self._streaming_logq(model_state["logq_state"], target, mask)
            logq = jax.lax.stop_gradient(logq)
        else:
            logq = None
        loss = losses.in_batch_softmax_from_logits(
            logits, item_ids=target, logq=logq, temperature=self.temperature,
            label_smoothing=self.label_smoothing, smoothing=self.smoothing, mask=mask,
            remove_accidental_hits=self.remove_accidental_hits)
        z = logits / self.temperature
        acc = _inbatch_accuracy(z, target, mask)
        acc_q = acc if logq is None else _inbatch_accuracy(z - logq[None, :], target, mask)
        return loss, ({"inbatch_acc": acc, "inbatch_acc_logq": acc_q, "targets": jnp.sum(mask)}, new_state)

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self, params, model_state, batch):
        from jaxrec.serving import retrieval

        u = self.user_vectors(params, model_state, batch["item_ids"], batch.get("side_ids"), train=False)
        target = batch["target"]
        in_vocab = target >= FIRST_ITEM
        table, offset = self.catalogue(params)
        e_t = self.item_vectors(params, target)
        s_t = jnp.einsum("bkd,bd->bk", u, e_t).max(axis=1)
        nq = u.shape[1]
        kmax = max(self.hr_ks)
        per_interest = -(-kmax // nq) if self.quota == "split" else kmax
        hist = batch["item_ids"]
        exclude = jnp.where(hist >= FIRST_ITEM, hist - offset, -1) if self.exclude_history else None
        rank, s_all, i_all = _catalogue_scan(u, table, s_t, jnp.where(in_vocab, target - offset, -1), per_interest,
                                             self.chunk_size, self.method, self.tie_weight, exclude)
        i_all = jnp.where(i_all >= 0, i_all + offset, -1)
        rank = jnp.where(in_vocab, rank, jnp.inf)
        out = {f"full/{k}": v for k, v in metrics.ranking_metrics(rank, hr_ks=self.hr_ks, ndcg_ks=self.hr_ks).items()}
        for k in self.hr_ks:
            kq = -(-k // nq) if self.quota == "split" else k
            _, merged = retrieval.merge_dedup(s_all[:, :, :kq], i_all[:, :, :kq], k)
            out[f"quota/hr@{k}"] = jnp.any(merged == target[:, None], axis=-1).astype(jnp.float32) * in_vocab
        valid = batch.get("valid", jnp.ones(target.shape, bool))
        z = interest_logits(u, e_t)
        out["inbatch/acc"] = _inbatch_accuracy_rows(z, target, valid & in_vocab)
        out["target_in_vocab"] = in_vocab.astype(jnp.float32)
        return out

    def train_flops_per_example(self) -> float:
        m = self.cfg.model
        d = int(m.embed_dim)
        b = int(self.cfg.train.batch_size)
        if self.model_name == "kuaiformer":
            side = int(m.get("side_dim", 16)) if self.side_key and m.get("num_domains", 0) else 0
            fwd = kuaiformer_forward_flops(self.max_len, d, int(m.num_layers), int(m.num_heads),
                                           int(m.num_queries), self.model.compress, m.get("mlp_dim"),
                                           int(m.get("compressor_layers", 1)), d + side)
            k = int(m.num_queries)
        elif self.model_name == "two_tower":
            side = int(m.get("side_dim", 16)) if self.side_key and m.get("num_domains", 0) else 0
            fwd = two_tower_forward_flops(self.max_len, d, tuple(m.get("hidden", (256, 128))), d + side)
            k = 1
        else:
            from jaxrec.models.sasrec import sasrec_forward_flops

            fwd = sasrec_forward_flops(self.num_items, self.max_len, d, int(m.num_blocks), int(m.num_heads),
                                       head_positions=0)
            k = 1
        return flops_lib.training(fwd + flops_lib.dense(k, d, b))


def _inbatch_accuracy(z, target, mask):
    """Mean over real rows of ``[z[b, b] > z[b, c]`` for every valid competitor ``c``] (ties lose)."""
    return jnp.sum(_inbatch_accuracy_rows(z, target, mask)) / jnp.maximum(jnp.sum(mask), 1)


def _inbatch_accuracy_rows(z, target, mask):
    b = z.shape[0]
    eye = jnp.eye(b, dtype=bool)
    comp = mask[None, :] & ~eye & (target[None, :] != target[:, None])
    diag = jnp.diagonal(z)[:, None]
    win = ~jnp.any(comp & (z >= diag), axis=-1)
    return (win & mask).astype(jnp.float32)


def _open_split(data_info, split: str):
    """The records of ``split`` from the prepared dataset directory (falls back to the catalogue)."""
    try:
        import tensorflow_datasets as tfds

        return tfds.builder_from_directory(data_info.data_dir).as_data_source(split=split)
    except Exception:  # noqa: BLE001 -- e.g. a fake DatasetInfo without files: ask the catalogue
        from jaxrec.data import catalog

        return catalog.load(data_info.name, split)


@register_task("kuaiformer_retrieval")
def make_kuaiformer_task(cfg, data_info) -> KuaiFormerTask:
    return KuaiFormerTask(cfg, data_info)
