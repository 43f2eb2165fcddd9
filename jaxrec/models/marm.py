"""MARM: memory-augmented multi-layer target attention with a cache of per-layer results (model ``marm``, task
``marm_ranking``).

Paper: Lv et al., *MARM: Unlocking the Recommendation Cache Scaling-Law through Memory Augmentation and Scalable
Complexity*, arXiv 2411.09425 (CIKM 2025); spec ../shared/papers/marm.md. No official code exists; the formal
model below is the spec's reconstruction ([R], §2.2), with every open choice ([U], §7) a config option.

Mechanism. User ``u`` has an exposure sequence ``i_1 .. i_n`` (times ``t_1 < .. < t_n``); the candidate ``c`` is
scored at ``t > t_n``. ``h^0_x`` = item embedding of ``x``. Layer ``l = 1..L`` is a pre-norm Transformer block
whose attention is *target attention* of the candidate over the history::

    h^l_c = TA_l(query = h^{l-1}_c, keys/values = {h^{l-1}_{i_j}: j = 1..n} [+ h^{l-1}_c itself])
    TA_l(x, S) = x' + FFN(LN2(x')),  x' = x + W_O · MHA(W_Q LN1(x), W_K LN1(S) + lab_K, W_V LN1(S) + lab_V)

The history states ``h^{l-1}_{i_j}`` are **not recomputed**: they were computed when ``i_j`` itself was scored
(with its own history) and written to the cache then; scoring ``c`` writes ``c``'s per-layer results for later
requests. With frozen parameters this *is* an L-layer causal Transformer over the exposure stream evaluated
incrementally (each position attending to its own last ``n`` predecessors and itself), at the cost of one target
row per layer: :meth:`MARMEncoder.oracle` computes that Transformer in full, and the tests check the two agree to
float tolerance. With parameters that move (training), cached entries are **stale**
(:func:`measure_staleness`).

What is cached (``cache_mode``; spec §7.1):

- ``"kv"``: each layer's projected keys and values of the scored item, ``K^l_c = W_K^l LN1(h^{l-1}_c)``
  and ``V^l_c``, for ``l = 1..L`` -- value ``[L, 2, H, Dh]`` per entry. A request reads ``[n, L, 2, H, Dh]`` and
  does no history projection: **O(L·n·d)**.
- ``"kv_fresh1"`` [default]: as ``"kv"`` for layers 2..L (value ``[L-1, 2, H, Dh]``), while layer 1 projects the fresh
  history embeddings per request: one projected layer plus ``L - 1`` cached ones, **O(n·d² + L·n·d)** -- "an
  L-layer model at about one layer's FLOPs". Unlike ``"kv"``, gradients reach the history embeddings and
  layer 1's K/V projections through the history (spec §3: "gradients reach ... the layer-0 embeddings of
  history items"); with ``"kv"`` the K/V weights learn only through the candidate's self-term, and trained
  from scratch it learned far less on the synthetic benchmark (``jaxrec.cache.bench``: GAUC 0.69 vs 0.83 for
  ``kv_fresh1`` and 0.83 for ``"h"`` at L = 2, n = 16), hence the default.
- ``"h"``: the layer outputs ``h^1_c .. h^{L-1}_c`` -- value ``[L-1, d]``; layer 1 uses fresh embeddings, and
  K/V are projected at read time: **O(L·n·d²)**.
- ``"none"``: no cache -- the *oracle*: the L-layer causal Transformer over ``(i_1..i_n, c)`` recomputed per
  request, **O(L·n²·d + L·n·d²)**.

``L = 1`` gives the single-layer target-attention baselines: DIN-style (``"kv"``: cached K/V, no projection of
the history per request) and with per-request projections (``"h"`` or ``"kv_fresh1"``, which then cache
nothing).

Shapes (``B`` batch, ``n`` history length, ``d`` width, ``H`` heads, ``Dh = d/H``, ``T`` tasks)::

    batch   user_id [B], item [B] (video id + 1), time [B] (ms since the data's base), labels [B, T]
            hist_ids, hist_time, hist_code [B, n], hist_mask [B, n]   (last n exposures before ``time``,
            oldest first, left-padded; ``hist_code`` = the history exposures' feedback bits)
            (+ video_id, sparse [B, F], tags [B, M] with ``side_features``)
    cached  kv: [B, n, L, 2, H, Dh] (kv_fresh1: L-1); h: [B, n, L-1, d]; hit [B, n] (from the CacheStore)
    writes  kv: [B, L, 2, H, Dh]    (kv_fresh1: L-1); h: [B, L-1, d]     (the candidate's entry)
    logits  [B, T]:  towers(concat(user_emb, item_emb, LN_f(h^L_c) [, side features]))

Forward FLOPs per target (one multiply-add = 2; ``r`` = FFN ratio; matmuls only, dense attention;
:func:`sequence_flops`)::

    kv         L · [(8 + 4r)·d² + 4·(n + 1)·d]
    kv_fresh1  L · [(8 + 4r)·d² + 4·(n + 1)·d] + 4·n·d²
    h          L · [(8 + 4r)·d² + 4·n·d² + 4·(n + 1)·d]
    none       L · [(8 + 4r)·(n + 1)·d² + 4·(n + 1)²·d]

(``8d²`` = query, output and the candidate's own K/V projections -- the latter are needed for the cache write
and the self-term, so they are counted; the spec's table (§2.3) omits them, i.e. writes ``(4 + 4r)d²`` and
``4nd``. The self column is computed even with ``self_attend=False`` (then masked). ``miss_policy="embed"``
adds ``4nd²`` per cached layer in the ``"kv"`` modes. Read-time label biases are additions, O(n·d), not counted.) These
are exactly the ``dot_general`` FLOPs of the traced program (:func:`dot_sequence_flops`, tested); XLA's
``cost_analysis`` adds element-wise work (:func:`xla_sequence_flops`).
Cache values per user: ``n · L · 2d`` (kv), ``n · (L-1) · 2d`` (kv_fresh1), ``n · (L-1) · d`` (h)
(:func:`cache_values_per_user`).

Choices ([R] = reconstruction, default in brackets; all config keys):

- sub-block [R]: pre-norm LayerNorm, multi-head attention with biases, GELU FFN of width ``r·d`` [r = 4],
  residuals, a final LayerNorm -- the parameter layout of :class:`jaxrec.nn.transformer.TransformerStack`
  (``pre_norm=True, norm="layer", ffn_kind="gelu"``), so the oracle *is* that stack (tested).
- self-term ``self_attend`` [True]: the candidate is among its own keys (as in a causal Transformer).
- label features ``task.history_label_features`` [("is_click", "long_view")] [R] (spec §2.2 "important"): the
  feedback of a *history* exposure was unknown when its entry was written, so it is injected at read time as
  a learned per-layer bias of its keys and values, ``lab_K^l[code], lab_V^l[code]`` (``code`` = the feedback
  bits; O(n·d) per layer, no projection). ``()`` disables it. The oracle applies the same bias to the same
  (earlier) positions, so exactness holds with labels too.
- cache key ``task.cache_key`` [``"user_item_time"``]: ``(user, item, time)`` -- one entry per exposure. With
  ``"user_item"`` (the spec's key) a repeated exposure overwrites the earlier one; under shuffled multi-epoch
  training that entry can be from a *later* exposure whose history holds the current candidate and its label (a
  leak through the label features), hence the per-exposure default.
- misses ``miss_policy`` [``"mask"``]: a history item without a cache entry (never written, evicted) is left
  out of every cached layer (``"kv"``: all layers; ``"kv_fresh1"`` and ``"h"``: layers >= 2, layer 1 uses fresh
  embeddings and never misses). ``"embed"``: use its layer-0 embedding instead (free in ``"h"`` mode; in the
  ``"kv"`` modes it projects every history embedding, + 4nd² per cached layer).
- batch order ([R] spec §3 option 2): reads see the cache as it was at the start of the step (a snapshot);
  the step's writes land after its reads, so two events of one user in one batch do not see each other.
  :func:`round_batches` builds batches with at most one event per user (option 1) for exact streaming.
- writes: the training step writes every scored (training) impression; evaluation (``evaluate``) only reads
  (write path = the trainer, [R]); :meth:`MARMRankingTask.serve` reads, scores and writes (serving/streaming).
- gradients: cached entries are constants (no gradient); the written entry is ``stop_gradient``-ed.
- training order: the engine shuffles impressions (stale entries up to an epoch old, misses in the first
  epoch). For exact streaming use :func:`round_batches` (one event per user per batch, causal per user);
  ``stagger=True`` mixes users at different positions in every batch -- in plain round order the label
  distribution drifts with the position (longer histories later) and training chased the drift (synthetic
  benchmark).
- labels and tasks: impressions with real feedback (KuaiRand-Pure ``is_click``, ``long_view`` [default
  ``task.tasks``]); per-task BCE summed; a shared-bottom MLP with ``T`` outputs (the spec's MoE towers are
  [U]; MARM changes only the sequence-interest input). Sequence datasets (positives only, one record per
  user, e.g. ``kuairand_embedded``) are refused: their history items are never scored, so nothing would be
  cached.
- history ``task.history_source`` [``"all"``]: the exposure sequence is the user's impressions of the train,
  valid and test logs strictly before the impression (labels of *earlier* impressions only); ``"train"``
  keeps train-period exposures only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.cache.store import CacheStore
from jaxrec.kernels import attention as attn_kernels
from jaxrec.kernels import flops as flops_lib
from jaxrec.kernels import losses
from jaxrec.kernels import metrics as metrics_lib
from jaxrec.nn.transformer import FeedForward, make_norm
from jaxrec.registry import register_model, register_task

__all__ = [
    "CACHE_MODES", "MARM", "MARMEncoder", "MARMLayer", "ExposureHistory", "MARMTransform", "MARMRankingTask",
    "sequence_flops", "tower_flops", "cache_values_per_user", "cache_value_shape", "cache_keys",
    "round_batches", "synthetic_stream", "stream_scores", "measure_staleness", "TIME_BASE_MS", "xla_sequence_flops",
    "dot_sequence_flops",
    "label_codes", "stream_records", "pad_batch",
]

CACHE_MODES = ("kv", "kv_fresh1", "h", "none")
TIME_BASE_MS = 1650758400000  # 2022-04-24T00:00Z: KuaiRand-Pure times fit int32 milliseconds after it
_TIME_BITS = 41


def _part(init, axes):
    return nn.with_logical_partitioning(init, axes)


# ============================================================================================ layers

class _InProj(nn.Module):
    """``[..., D] -> [..., H, Dh]``; kernel ``[D, H, Dh]`` ("embed", "heads", "kv"), bias ``[H, Dh]`` (the layout
    of :class:`jaxrec.nn.transformer.MultiHeadAttention`'s query/key/value)."""

    num_heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _part(nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                                            ("embed", "heads", "kv")), (x.shape[-1], self.num_heads, self.head_dim))
        bias = self.param("bias", _part(nn.initializers.zeros_init(), ("heads", "kv")), (self.num_heads, self.head_dim))
        return jnp.einsum("...d,dhk->...hk", x, kernel) + bias


class _OutProj(nn.Module):
    """``[..., H, Dh] -> [..., D]``; kernel ``[H, Dh, D]`` ("heads", "kv", "embed"), bias ``[D]``."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _part(nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                                            ("heads", "kv", "embed")), (x.shape[-2], x.shape[-1], self.features))
        bias = self.param("bias", _part(nn.initializers.zeros_init(), ("embed",)), (self.features,))
        return jnp.einsum("...hk,hkd->...d", x, kernel) + bias


class _Attn(nn.Module):
    num_heads: int
    head_dim: int
    features: int

    def setup(self):
        self.query = _InProj(self.num_heads, self.head_dim)
        self.key = _InProj(self.num_heads, self.head_dim)
        self.value = _InProj(self.num_heads, self.head_dim)
        self.out = _OutProj(self.features)


class MARMLayer(nn.Module):
    """One pre-norm block, usable row by row (target attention) or over a whole sequence (the oracle).

    Parameters (same names and shapes as ``TransformerBlock(pre_norm=True, norm="layer", ffn_kind="gelu")``):
    ``attn_norm``, ``attn/{query,key,value}`` ``[D, H, Dh]``, ``attn/out`` ``[H, Dh, D]``, ``ffn_norm``,
    ``ffn/{wi [D, F], wo [F, D]}``.
    """

    d_model: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    norm_epsilon: float = 1e-6

    def setup(self):
        self.attn_norm = make_norm("layer", self.norm_epsilon)
        self.attn = _Attn(self.num_heads, self.d_model // self.num_heads, self.d_model)
        self.ffn_norm = make_norm("layer", self.norm_epsilon)
        self.ffn = FeedForward(hidden=self.mlp_dim, kind="gelu", dropout_rate=self.dropout_rate)
        self.drop = nn.Dropout(self.dropout_rate)

    def kv(self, h):
        """``h [..., D]`` -> keys, values ``[..., H, Dh]`` (what the ``"kv"`` cache stores)."""
        hn = self.attn_norm(h)
        return self.attn.key(hn), self.attn.value(hn)

    def qkv(self, h):
        hn = self.attn_norm(h)
        return self.attn.query(hn), self.attn.key(hn), self.attn.value(hn)

    def finish(self, x, att, deterministic: bool = True):
        """Output projection, residual, FFN sub-block: ``x [..., D]``, ``att [..., H, Dh]`` -> ``[..., D]``."""
        x = x + self.drop(self.attn.out(att), deterministic=deterministic)
        return x + self.drop(self.ffn(self.ffn_norm(x), deterministic=deterministic), deterministic=deterministic)

    def __call__(self, h):  # init helper: touches every parameter
        q, k, v = self.qkv(h)
        return self.finish(h, v)


class MARMEncoder(nn.Module):
    """The ``L`` target-attention layers (``layer_0 ..``) and ``final_norm``; the parameter tree equals
    ``TransformerStack(num_layers=L, pre_norm=True, norm="layer", ffn_kind="gelu")``'s.

    :meth:`target`: one candidate per row over cached history states (MARM); :meth:`oracle`: the causal
    Transformer over whole sequences (the reference, and the ``"none"`` mode).
    """

    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    cache_mode: str = "kv"
    self_attend: bool = True
    miss_policy: str = "mask"
    dropout_rate: float = 0.0
    norm_epsilon: float = 1e-6

    def setup(self):
        for i in range(self.num_layers):
            setattr(self, f"layer_{i}", MARMLayer(self.d_model, self.num_heads, self.mlp_dim, self.dropout_rate,
                                                  self.norm_epsilon))
        self.final_norm = make_norm("layer", self.norm_epsilon)

    def _layer(self, i) -> MARMLayer:
        return getattr(self, f"layer_{i}")

    def __call__(self, h):  # init helper
        for i in range(self.num_layers):
            h = self._layer(i)(h)
        return self.final_norm(h)

    def normalize(self, h):
        return self.final_norm(h)

    def target(self, x, hist_h0, cached, hit, hist_mask, lab=None, deterministic: bool = True):
        """MARM forward of one candidate per row.

        Args:
          x: ``[B, D]`` the candidate's layer-0 state ``h^0_c``.
          hist_h0: ``[B, n, D]`` history embeddings (used by ``"h"`` mode's layer 1 and by ``miss_policy="embed"``;
            may be None in ``"kv"`` mode with ``"mask"``).
          cached: ``kv``: ``[B, n, L, 2, H, Dh]`` (``kv_fresh1``: ``L-1``); ``h``: ``[B, n, L-1, D]`` (None when
            nothing is cached).
          hit: ``[B, n]`` bool, entry found.
          hist_mask: ``[B, n]`` bool, real history positions.
          lab: ``[B, n, L, 2, H, Dh]`` read-time label biases of the history keys/values, or None.

        Returns:
          ``(h^L_c [B, D], writes)``: ``kv``: ``[B, L, 2, H, Dh]`` (``kv_fresh1``: ``L-1``); ``h``:
          ``[B, L-1, D]`` (None when nothing is cached).
        """
        mode, embed_fallback = self.cache_mode, self.miss_policy == "embed"
        fresh = 1 if mode == "kv_fresh1" else 0
        hit = jnp.asarray(hit, bool) if hit is not None else jnp.zeros(hist_mask.shape, bool)
        hist_mask = jnp.asarray(hist_mask, bool)
        writes = []
        b = x.shape[0]
        for l in range(self.num_layers):
            layer = self._layer(l)
            q, k_self, v_self = layer.qkv(x)  # [B, H, Dh]
            if mode in ("kv", "kv_fresh1"):
                if l < fresh:
                    k_h, v_h = layer.kv(hist_h0)  # first layer from fresh embeddings (gradient to them)
                    valid = hist_mask
                else:
                    c = cached[:, :, l - fresh].astype(x.dtype)  # [B, n, 2, H, Dh]
                    k_h, v_h = c[:, :, 0], c[:, :, 1]
                    valid = hist_mask & hit
                    if embed_fallback:
                        kf, vf = layer.kv(hist_h0)
                        sel = hit[..., None, None]
                        k_h, v_h = jnp.where(sel, k_h, kf), jnp.where(sel, v_h, vf)
                        valid = hist_mask
                    writes.append(jnp.stack([k_self, v_self], axis=1))  # [B, 2, H, Dh]
            elif mode == "h":
                if l == 0:
                    hh, valid = hist_h0, hist_mask
                else:
                    hh = cached[:, :, l - 1].astype(x.dtype)
                    if embed_fallback:
                        hh, valid = jnp.where(hit[..., None], hh, hist_h0), hist_mask
                    else:
                        valid = hist_mask & hit
                k_h, v_h = layer.kv(hh)
            else:
                raise ValueError(f"MARMEncoder.target: cache_mode must be 'kv', 'kv_fresh1' or 'h', got {mode!r}")
            if lab is not None:
                k_h = k_h + lab[:, :, l, 0].astype(k_h.dtype)
                v_h = v_h + lab[:, :, l, 1].astype(v_h.dtype)
            keys = jnp.concatenate([k_h, k_self[:, None]], axis=1)  # [B, n+1, H, Dh]
            vals = jnp.concatenate([v_h, v_self[:, None]], axis=1)
            mask = jnp.concatenate([valid, jnp.full((b, 1), self.self_attend)], axis=1)
            att = attn_kernels.target_attention(q[:, None], keys, vals, mask)[:, 0]  # [B, H, Dh]
            x = layer.finish(x, att, deterministic)
            if mode == "h" and l < self.num_layers - 1:
                writes.append(x)  # h^{l+1}
        w = jnp.stack(writes, axis=1) if writes else None
        return x, w

    def oracle(self, h0, valid, lab=None, window: int | None = None, deterministic: bool = True):
        """The L-layer causal Transformer over whole sequences (no cache).

        Args:
          h0: ``[B, P, D]`` layer-0 states of the sequence (history then candidate).
          valid: ``[B, P]`` bool.
          lab: ``[B, P, L, 2, H, Dh]`` label biases; position ``i``'s bias applies when a *later* position
            attends to it (never to its own self-term), as in :meth:`target`.
          window: position ``p`` attends to ``p - window .. p - 1`` (and ``p`` itself when ``self_attend``);
            None = all earlier positions.

        Returns:
          ``[B, P, D]`` top-layer states (before ``final_norm``).
        """
        P = h0.shape[1]
        pos = jnp.arange(P)
        earlier = pos[None, :] < pos[:, None]  # [q, k] strictly earlier
        allowed = earlier | (jnp.eye(P, dtype=bool) if self.self_attend else False)
        if window is not None:
            allowed = allowed & (pos[None, :] >= pos[:, None] - int(window))
        mask = allowed[None, None] & jnp.asarray(valid, bool)[:, None, None, :]  # [B, 1, P, P]
        eye = jnp.eye(P, dtype=h0.dtype)[None, None]
        x = h0
        for l in range(self.num_layers):
            layer = self._layer(l)
            q, k, v = layer.qkv(x)  # [B, P, H, Dh]
            scale = 1.0 / math.sqrt(q.shape[-1])
            if lab is not None:
                # keys/values of earlier positions carry their label bias, a position's own (self) key and value
                # do not: add the bias everywhere, then take it out of the diagonal (O(P·d), no extra matmul).
                lk, lv = lab[:, :, l, 0].astype(q.dtype), lab[:, :, l, 1].astype(v.dtype)
                k, v = k + lk, v + lv
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
            if lab is not None:
                self_bias = jnp.swapaxes(jnp.sum(q * lk, axis=-1), 1, 2)  # [B, H, P] (element-wise)
                logits = logits - eye * self_bias[..., None]
            w = attn_kernels.masked_softmax(logits * scale, mask)
            att = jnp.einsum("bhqk,bkhd->bqhd", w.astype(v.dtype), v)
            if lab is not None:
                w_self = jnp.diagonal(w, axis1=-2, axis2=-1)  # [B, H, P]
                att = att - jnp.swapaxes(w_self, 1, 2)[..., None].astype(v.dtype) * lv
            x = layer.finish(x, att, deterministic)
        return x


# ============================================================================================ model

@register_model("marm")
class MARM(nn.Module):
    """MARM ranking model (see the module docstring).

    Attributes:
      num_items: item ids ``1..num_items`` (0 = padding). num_users: user ids ``0..num_users-1``.
      embed_dim: ``d``. num_layers: ``L``. num_heads: ``H`` (``d % H == 0``). mlp_ratio: ``r``.
      cache_mode: ``"kv"`` | ``"kv_fresh1"`` | ``"h"`` | ``"none"`` (oracle). self_attend, miss_policy: see the
        module docstring.
      num_label_codes: size of the read-time label-feature table (``2^#labels``; 0 = no label features).
      num_tasks: ``T``. tower_hidden: tower MLP widths. tower_features: which of ``"user"`` (user embedding),
        ``"item"`` (candidate embedding), ``"seq"`` (MARM output ``LN_f(h^L_c)``) the towers read.
        dropout_rate: attention-output / FFN dropout.
      side_features: also feed :class:`jaxrec.models.multitask.MultiTaskEmbedding` (``history="none"``) of the
        impression's context/user/video fields to the towers (needs ``sparse``, ``tags``, ``video_id``);
        field_vocab, tag_vocab, side_embed_dim: its schema.
    """

    num_items: int
    num_users: int
    embed_dim: int = 32
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: int = 4
    cache_mode: str = "kv_fresh1"
    self_attend: bool = True
    miss_policy: str = "mask"
    num_label_codes: int = 4
    num_tasks: int = 2
    tower_hidden: tuple[int, ...] = (64,)
    tower_features: tuple[str, ...] = ("user", "item", "seq")
    dropout_rate: float = 0.0
    norm_epsilon: float = 1e-6
    side_features: bool = False
    field_vocab: tuple[int, ...] = ()
    tag_vocab: int = 70
    side_embed_dim: int = 8

    def setup(self):
        if self.cache_mode not in CACHE_MODES:
            raise ValueError(f"MARM.cache_mode: expected one of {CACHE_MODES}, got {self.cache_mode!r}")
        if self.miss_policy not in ("mask", "embed"):
            raise ValueError(f"MARM.miss_policy: expected 'mask' or 'embed', got {self.miss_policy!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"MARM: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        d = self.embed_dim
        init = _part(nn.initializers.normal(stddev=1.0 / math.sqrt(d)), ("vocab", "embed"))
        self.item_embed = nn.Embed(self.num_items + 1, d, embedding_init=init)
        self.user_embed = nn.Embed(self.num_users + 1, d, embedding_init=init)
        self.encoder = MARMEncoder(d, self.num_layers, self.num_heads, self.mlp_ratio * d, self.cache_mode,
                                   self.self_attend, self.miss_policy, self.dropout_rate, self.norm_epsilon)
        if self.num_label_codes:
            self.label_kv = self.param(
                "label_kv", _part(nn.initializers.normal(0.1), (None, None, None, "heads", "kv")),
                (self.num_layers, self.num_label_codes, 2, self.num_heads, d // self.num_heads))
        if self.side_features:
            from jaxrec.models.multitask import MultiTaskEmbedding

            self.side = MultiTaskEmbedding(tuple(self.field_vocab), self.num_users, self.num_items,
                                           self.tag_vocab, self.side_embed_dim, "none")
        self.tower_layers = [nn.Dense(w, kernel_init=_part(nn.initializers.lecun_normal(), (None, "mlp")))
                             for w in self.tower_hidden]
        self.tower_out = nn.Dense(self.num_tasks, kernel_init=_part(nn.initializers.lecun_normal(), (None, None)))
        self.tower_drop = nn.Dropout(self.dropout_rate)

    # ------------------------------------------------------------------------------------------ pieces
    def _labels(self, codes):
        """``codes [B, n]`` -> ``[B, n, L, 2, H, Dh]`` or None."""
        if not self.num_label_codes:
            return None
        codes = jnp.clip(jnp.asarray(codes, jnp.int32), 0, self.num_label_codes - 1)
        return jnp.moveaxis(self.label_kv[:, codes], 0, 2)

    def _hist(self, batch):
        ids = jnp.clip(jnp.asarray(batch["hist_ids"], jnp.int32), 0, self.num_items)
        mask = jnp.asarray(batch["hist_mask"], bool) & (ids > 0)
        codes = batch.get("hist_code")
        codes = jnp.zeros(ids.shape, jnp.int32) if codes is None else codes
        return ids, mask, codes

    def encode(self, batch, cached=None, hit=None, *, train: bool = False):
        """Sequence module only: ``(h^L_c [B, d] (before the final norm), writes or None)``."""
        det = not train
        ids, hmask, codes = self._hist(batch)
        item = jnp.clip(jnp.asarray(batch["item"], jnp.int32), 0, self.num_items)
        x = self.item_embed(item)
        lab = self._labels(codes)
        if self.cache_mode == "none":
            seq = jnp.concatenate([self.item_embed(ids), x[:, None]], axis=1)
            valid = jnp.concatenate([hmask, jnp.ones((x.shape[0], 1), bool)], axis=1)
            lab_seq = None if lab is None else jnp.concatenate([lab, jnp.zeros_like(lab[:, :1])], axis=1)
            return self.encoder.oracle(seq, valid, lab_seq, deterministic=det)[:, -1], None
        need_h0 = self.cache_mode in ("h", "kv_fresh1") or self.miss_policy == "embed"
        hist_h0 = self.item_embed(ids) if need_h0 else None
        return self.encoder.target(x, hist_h0, cached, hit, hmask, lab, deterministic=det)

    def __call__(self, batch, cached=None, hit=None, *, train: bool = False):
        """``(logits [B, T], writes, aux)``; ``aux = {"h_top": LN_f(h^L_c) [B, d]}``."""
        h, writes = self.encode(batch, cached, hit, train=train)
        h_top = self.encoder.normalize(h)
        user = self.user_embed(jnp.clip(jnp.asarray(batch["user_id"], jnp.int32) + 1, 0, self.num_users))
        item = self.item_embed(jnp.clip(jnp.asarray(batch["item"], jnp.int32), 0, self.num_items))
        avail = {"user": user, "item": item, "seq": h_top}
        feats = [avail[k] for k in self.tower_features]
        if self.side_features:
            feats.append(self.side(batch))
        y = jnp.concatenate(feats, axis=-1)
        for dense in self.tower_layers:
            y = self.tower_drop(jax.nn.relu(dense(y)), deterministic=not train)
        logits = self.tower_out(y).astype(jnp.float32)
        if writes is not None:
            writes = jax.lax.stop_gradient(writes)
        return logits, writes, {"h_top": h_top}

    def oracle_states(self, items, codes, valid, window: int | None = None):
        """The reference: top states ``LN_f(h^L) [B, P, d]`` of the causal Transformer over whole item
        sequences ``items [B, P]`` (1..V), ``codes [B, P]`` (feedback bits), ``valid [B, P]``; position ``p``
        attends to its last ``window`` predecessors (and itself)."""
        items = jnp.clip(jnp.asarray(items, jnp.int32), 0, self.num_items)
        h = self.encoder.oracle(self.item_embed(items), valid, self._labels(codes), window)
        return self.encoder.normalize(h)


# ============================================================================================ cost model

def sequence_flops(n: int, d: int, num_layers: int, mlp_ratio: int = 4, mode: str = "kv", *,
                   self_attend: bool = True, miss_policy: str = "mask", causal_half: bool = False) -> float:
    """Analytic forward FLOPs of the sequence module for one target (see the module docstring).

    ``mode``: ``"kv"`` | ``"kv_fresh1"`` | ``"h"`` | ``"none"`` (oracle). ``causal_half`` halves the oracle's
    attention term (MaxText convention; the default counts dense attention, as XLA does). The candidate's own
    key column is computed (and masked) also with ``self_attend=False``, so it is always counted;
    ``self_attend`` is kept for the signature's stability. Read-time label biases are additions (not counted).
    """
    L, r = num_layers, mlp_ratio
    if mode in ("kv", "kv_fresh1"):
        f = 1 if mode == "kv_fresh1" else 0
        per = (8 + 4 * r) * d * d + 4 * (n + 1) * d
        extra = 4 * n * d * d * (f + (max(L - f, 0) if miss_policy == "embed" else 0))
        return float(L * per + extra)
    if mode == "h":
        per = (8 + 4 * r) * d * d + 4 * n * d * d + 4 * (n + 1) * d
    elif mode == "none":
        p = n + 1
        att = flops_lib.attention(p, p, 1, d, causal_half=causal_half)
        per = (8 + 4 * r) * p * d * d + att
    else:
        raise ValueError(f"sequence_flops: mode must be one of {CACHE_MODES}, got {mode!r}")
    return float(L * per)


def tower_flops(d: int, tower_hidden: Sequence[int], num_tasks: int, side_width: int = 0,
                num_features: int = 3) -> float:
    """Forward FLOPs of the towers for one target (input ``num_features·d + side_width``)."""
    f, w_in = 0.0, num_features * d + side_width
    for w in tower_hidden:
        f += flops_lib.dense(1, w_in, w)
        w_in = w
    return f + flops_lib.dense(1, w_in, num_tasks)


def _abstract_encode(model: "MARM", history_len: int, batch_size: int):
    b, n = batch_size, history_len
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
    batch = {"user_id": i32(b), "item": i32(b), "time": i32(b), "hist_ids": i32(b, n), "hist_time": i32(b, n),
             "hist_code": i32(b, n), "hist_mask": jax.ShapeDtypeStruct((b, n), bool)}
    shape = cache_value_shape(model.cache_mode, model.num_layers, model.embed_dim, model.num_heads)
    cached = None if shape is None else jax.ShapeDtypeStruct((b, n) + shape, jnp.float32)
    hit = jax.ShapeDtypeStruct((b, n), bool)
    params = jax.eval_shape(lambda bt, c, h: nn.meta.unbox(model.init(jax.random.PRNGKey(0), bt, c, h)["params"]),
                            batch, cached, hit)

    def fn(p, bt, c, h):
        return model.apply({"params": p}, bt, c, h, method="encode")[0]

    return fn, (params, batch, cached, hit)


def xla_sequence_flops(model: "MARM", history_len: int, batch_size: int = 4) -> float | None:
    """Per-target FLOPs XLA's cost model assigns to the sequence module (:meth:`MARM.encode`; the cache read is
    a gather, bytes only). Abstract shapes only (nothing is allocated or initialised). The layers are an
    unrolled Python loop (no ``scan``), so XLA counts every one. XLA also counts element-wise work (LayerNorm,
    softmax, the exact-erf GELU: ~80 FLOPs per hidden unit), which :func:`sequence_flops` leaves out."""
    fn, args = _abstract_encode(model, history_len, batch_size)
    f = flops_lib.xla_flops(fn, *args)
    return None if f is None else f / batch_size


def _dot_flops_jaxpr(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * float(np.prod([lhs[i] for i in lc]))
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
            total += _dot_flops_jaxpr(sub)
        for v in eqn.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                total += _dot_flops_jaxpr(inner)
            elif hasattr(v, "eqns"):
                total += _dot_flops_jaxpr(v)
    return total


def dot_sequence_flops(model: "MARM", history_len: int, batch_size: int = 4) -> float:
    """Per-target matmul FLOPs of the traced sequence module: ``2·M·N·K`` summed over every ``dot_general`` of
    its jaxpr (the program actually run, matmuls only -- the convention of :func:`sequence_flops`)."""
    fn, args = _abstract_encode(model, history_len, batch_size)
    return _dot_flops_jaxpr(jax.make_jaxpr(fn)(*args).jaxpr) / batch_size


def cache_value_shape(mode: str, num_layers: int, d: int, num_heads: int) -> tuple[int, ...] | None:
    """Per-entry value shape: kv ``(L, 2, H, d/H)``, kv_fresh1 ``(L-1, 2, H, d/H)``, h ``(L-1, d)``; None when
    nothing is cached."""
    if mode == "kv":
        return (num_layers, 2, num_heads, d // num_heads)
    if mode == "kv_fresh1":
        return (num_layers - 1, 2, num_heads, d // num_heads) if num_layers > 1 else None
    if mode == "h":
        return (num_layers - 1, d) if num_layers > 1 else None
    return None


def cache_values_per_user(n: int, d: int, num_layers: int, mode: str = "kv") -> int:
    """The "cache size" of the scaling law: stored values for one user's ``n`` history entries."""
    shape = cache_value_shape(mode, num_layers, d, 1)
    return 0 if shape is None else int(n * np.prod(shape))


# ============================================================================================ cache keys

def cache_keys(user, item, time, key_kind: str = "user_item_time"):
    """int32 ``[..., K]`` keys: ``(user, item, time)`` or ``(user, item)``; broadcasts ``user`` over history."""
    user = jnp.asarray(user, jnp.int32)
    item = jnp.asarray(item, jnp.int32)
    user = jnp.broadcast_to(user.reshape(user.shape + (1,) * (item.ndim - user.ndim)), item.shape)
    parts = [user, item]
    if key_kind == "user_item_time":
        parts.append(jnp.broadcast_to(jnp.asarray(time, jnp.int32), item.shape))
    elif key_kind != "user_item":
        raise ValueError(f"cache key must be 'user_item_time' or 'user_item', got {key_kind!r}")
    return jnp.stack(parts, axis=-1)


def _hist_keys(batch, key_kind):
    return cache_keys(batch["user_id"], batch["hist_ids"], batch.get("hist_time", 0), key_kind)


def _target_keys(batch, key_kind):
    return cache_keys(batch["user_id"], batch["item"], batch.get("time", 0), key_kind)


# ============================================================================================ data

@dataclasses.dataclass(frozen=True, eq=False)
class ExposureHistory:
    """Sorted index of exposures ``(user, time_ms, video, feedback code)`` for leak-free history lookups.

    ``lookup(user, time_ms, n)`` -> the ``n`` most recent exposures of each user strictly before ``time_ms``
    (oldest first, left-padded): ``ids [B, n]`` (video + 1; 0 = pad), ``times [B, n]`` (int64 ms),
    ``codes [B, n]``, ``mask [B, n]``.
    """

    keys: np.ndarray  # int64 [N] sorted (user << 41 | time_ms)
    videos: np.ndarray  # int32 [N] video + 1
    times: np.ndarray  # int64 [N]
    codes: np.ndarray  # int32 [N]

    @classmethod
    def from_columns(cls, user, time_ms, video, codes=None) -> "ExposureHistory":
        user, time_ms = np.asarray(user, np.int64), np.asarray(time_ms, np.int64)
        if time_ms.size and (time_ms.min() < 0 or time_ms.max() >= 1 << _TIME_BITS):
            raise ValueError(f"ExposureHistory: time_ms must lie in [0, 2^{_TIME_BITS}), got "
                             f"[{time_ms.min()}, {time_ms.max()}]")
        keys = (user << _TIME_BITS) | time_ms
        order = np.argsort(keys, kind="stable")
        codes = np.zeros(user.shape, np.int32) if codes is None else np.asarray(codes, np.int32)
        return cls(keys=keys[order], videos=(np.asarray(video, np.int64)[order] + 1).astype(np.int32),
                   times=time_ms[order], codes=codes[order])

    def __len__(self) -> int:
        return int(self.keys.size)

    def lookup(self, user, time_ms, n: int):
        user = np.asarray(user, np.int64)
        b = user.shape[0]
        if n <= 0 or self.keys.size == 0:
            z = np.zeros((b, max(n, 0)), np.int32)
            return z, np.zeros((b, max(n, 0)), np.int64), z.copy(), np.zeros((b, max(n, 0)), bool)
        end = np.searchsorted(self.keys, (user << _TIME_BITS) | np.asarray(time_ms, np.int64), side="left")
        start = np.searchsorted(self.keys, user << _TIME_BITS, side="left")
        idx = end[:, None] - n + np.arange(n)[None, :]
        mask = idx >= start[:, None]
        safe = np.clip(idx, 0, self.keys.size - 1)
        ids = np.where(mask, self.videos[safe], 0).astype(np.int32)
        times = np.where(mask, self.times[safe], 0)
        codes = np.where(mask, self.codes[safe], 0).astype(np.int32)
        return ids, times, codes, mask


def label_codes(labels: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """Feedback bits ``sum_t [labels[..., index[t]] > 0] << t`` (int32)."""
    labels = np.asarray(labels)
    code = np.zeros(labels.shape[:-1], np.int32)
    for t, i in enumerate(index):
        code |= (labels[..., i] > 0).astype(np.int32) << t
    return code


@dataclasses.dataclass(frozen=True, eq=False)
class MARMTransform:
    """Impression records (``user_id, video_id, time_ms, labels``; KuaiRand-Pure schema) -> MARM batches (see
    the module docstring's batch shapes). ``side`` (a
    :class:`jaxrec.data.multitask_transforms.MultiTaskTransform` with ``history_len=0``) adds ``sparse`` and
    ``tags``."""

    history: ExposureHistory
    history_len: int
    label_index: tuple[int, ...]
    time_base_ms: int = TIME_BASE_MS
    side: Any = None

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        from jaxrec.data.errors import DataError

        b = len(records)
        col = lambda k: np.fromiter((r[k] for r in records), np.int64, b)  # noqa: E731
        user, video, time_ms = col("user_id"), col("video_id"), col("time_ms")
        labels = np.stack([np.asarray(r["labels"]) for r in records])
        ids, htime, codes, mask = self.history.lookup(user, time_ms, self.history_len)
        rel = time_ms - self.time_base_ms
        if b and (rel.min() < 0 or rel.max() >= 2 ** 31):
            raise DataError("marm", "time_ms outside the int32 range after the base", field="time_ms",
                            expected=f"{self.time_base_ms} <= time_ms < {self.time_base_ms} + 2^31",
                            got=f"[{time_ms.min()}, {time_ms.max()}]")
        out = {
            "user_id": user.astype(np.int32),
            "video_id": video.astype(np.int32),
            "item": (video + 1).astype(np.int32),
            "time": rel.astype(np.int32),
            "hist_ids": ids,
            "hist_time": np.where(mask, htime - self.time_base_ms, 0).astype(np.int32),
            "hist_code": codes,
            "hist_mask": mask,
            "labels": (labels[:, list(self.label_index)] > 0).astype(np.float32),
        }
        if self.side is not None:
            s = self.side.map_batch(records)
            out["sparse"], out["tags"] = s["sparse"], s["tags"]
        return out


def synthetic_stream(num_users: int = 256, events_per_user: int = 32, num_items: int = 400,
                     num_categories: int = 8, pattern_window: int = 32, signal: float = 3.0, user_bias: float = 0.5,
                     seed: int = 0) -> dict:
    """A synthetic exposure stream whose clicks depend on the *order* of history items (so depth can help).

    Item ``i`` has category ``i % K``; ``partner(k) = (k + 1) % K``. The exposure at position ``p`` of category
    ``k`` is clicked with probability ``sigmoid(signal·(pattern - 1/2) + b_u)``, ``b_u ~ N(0, user_bias²)``,
    ``pattern`` = some earlier
    exposure (within ``pattern_window``) of category ``k`` was itself preceded by one of category
    ``partner(k)``. A single target-attention layer sees the history as a set and cannot see the order; a
    second layer sees each history item's own earlier context. ``long_view`` = click and a coin flip.

    Returns columns ``user, video (0-based), time_ms (= position), labels [N, 2] (click, long_view)``,
    ``pattern [N]`` (the hidden cause, for the ceiling of the achievable GAUC) in per-user time order, plus
    ``num_users``, ``num_items``.
    """
    rng = np.random.default_rng(seed)
    K = num_categories
    users, videos, times, labels, patterns = [], [], [], [], []
    for u in range(num_users):
        pref = rng.dirichlet(np.full(K, 0.5))
        cats = rng.choice(K, size=events_per_user, p=pref)
        items = cats + K * rng.integers(0, num_items // K, size=events_per_user)
        bias = rng.normal(0, user_bias)
        for p in range(events_per_user):
            k = cats[p]
            pat = False
            lo = max(0, p - pattern_window)
            for j in range(lo, p):
                if cats[j] == k and np.any(cats[max(0, j - pattern_window):j] == (k + 1) % K):
                    pat = True
                    break
            prob = 1.0 / (1.0 + math.exp(-(signal * (pat - 0.5) + bias)))
            click = rng.random() < prob
            users.append(u)
            videos.append(int(items[p]))
            times.append(p)
            labels.append((int(click), int(click and rng.random() < 0.5)))
            patterns.append(pat)
    return {"user": np.asarray(users, np.int64), "video": np.asarray(videos, np.int64),
            "time_ms": np.asarray(times, np.int64), "labels": np.asarray(labels, np.int64),
            "pattern": np.asarray(patterns, bool), "num_users": num_users, "num_items": num_items}


def stream_records(cols: dict, index=None) -> list[dict]:
    """Records (``user_id, video_id, time_ms, labels``) of stream columns (optionally a subset)."""
    idx = np.arange(cols["user"].size) if index is None else np.asarray(index)
    return [{"user_id": int(cols["user"][i]), "video_id": int(cols["video"][i]), "time_ms": int(cols["time_ms"][i]),
             "labels": cols["labels"][i]} for i in idx]


def round_batches(user, time_ms, batch_size: int, rounds: Sequence[int] | None = None, *,
                  stagger: bool = False, seed: int = 0) -> list[np.ndarray]:
    """Event indices grouped into batches with **at most one event per user**, in causal order.

    Event ``e`` of user ``u`` has rank ``k`` in ``u``'s time order. Without ``stagger`` it goes to round ``k``;
    with ``stagger`` to round ``k + offset_u`` (``offset_u`` uniform in ``[0, #ranks)``, seeded), so every round
    mixes early and late positions of different users -- a stationary stream for training, still causal per
    user. Rounds are processed in order and each is cut into batches of ``batch_size`` (the last one shorter;
    pad it with ``valid`` False). Every history entry a batch reads was written by an earlier batch.
    ``rounds``: keep only events of these ranks (e.g. the training prefix or a held-out tail).
    """
    user, time_ms = np.asarray(user), np.asarray(time_ms)
    order = np.lexsort((time_ms, user))
    first = np.searchsorted(user[order], user[order], side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - first
    keep = np.ones(rank.shape, bool) if rounds is None else np.isin(rank, np.asarray(list(rounds)))
    slot = rank.copy()
    if stagger and rank.size:
        uniq, inv = np.unique(user, return_inverse=True)
        span = int(rank[keep].max()) + 1 if keep.any() else 1
        slot = rank + np.random.default_rng(seed).integers(0, span, uniq.size)[inv]
    out = []
    for k in np.unique(slot[keep]):
        idx = np.nonzero(keep & (slot == k))[0]
        for s in range(0, idx.size, batch_size):
            out.append(idx[s:s + batch_size])
    return out


def pad_batch(batch: dict, size: int) -> dict:
    """Pads every ``[b, ...]`` array to ``[size, ...]`` (zeros) and adds ``valid [size]``."""
    b = len(next(iter(batch.values())))
    out = {k: np.concatenate([v, np.zeros((size - b,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    out["valid"] = np.arange(size) < b
    return out


# ============================================================================================ task

def _hit_rate(hits, reads):
    r = float(np.sum(reads))
    return float(np.sum(hits)) / r if r > 0 else math.nan


_auc_jit = jax.jit(metrics_lib.auc)
_gauc_jit = jax.jit(metrics_lib.gauc)


def _mean_auc(scores, labels, user_ids=None):
    vals = []
    for c in range(scores.shape[1] if scores.ndim == 2 else 0):
        v = (float(_auc_jit(scores[:, c], labels[:, c])) if user_ids is None
             else float(_gauc_jit(scores[:, c], labels[:, c], user_ids)))
        if not math.isnan(v):
            vals.append(v)
    return float(np.mean(vals)) if vals else math.nan


def _gauc_mean(scores, labels, user_ids):
    return _mean_auc(scores, labels, user_ids)


def _auc_mean(scores, labels):
    return _mean_auc(scores, labels)


class MARMRankingTask:
    """MARM ranking on impressions: per-task BCE, AUC / GAUC over the whole split, cache statistics.

    Config (``task``): ``tasks`` [("is_click", "long_view")], ``history_len`` n [32], ``history_source``
    ["all" | "train"], ``history_label_features`` [("is_click", "long_view")], ``cache_key``
    ["user_item_time" | "user_item"], ``cache_capacity`` [262144 entries], ``cache_ways`` [16], ``cache_dtype``
    ["float32" | "bfloat16"]. Model config (``model``): the :class:`MARM` attributes (``num_items``,
    ``num_users``, ``num_label_codes``, ``num_tasks`` and the side-feature schema are filled in here).

    The cache lives in ``model_state["marm_cache"]`` (a :class:`~jaxrec.cache.store.CacheStore`): the train
    step reads it (snapshot), then writes the batch's entries; it is donated with the state and saved/restored
    with every checkpoint. Train metrics: ``loss/<task>``, ``cache/hit_rate`` (of the step's history reads),
    ``cache/occupancy``. Evaluation metrics: ``auc/<task>``, ``gauc/<task>``, ``logloss/<task>``, ``auc/mean``,
    ``gauc/mean``, ``cache/hit_rate`` (eval reads; eval does not write).
    """

    name = "marm_ranking"

    def __init__(self, cfg, data_info, *, history: ExposureHistory | None = None, side_transform=None):
        from jaxrec import registry
        from jaxrec.config import ConfigError

        if data_info.kind != "impressions":
            raise ConfigError(f"config key 'data.name': task 'marm_ranking' needs an impressions dataset (real "
                              f"exposures with feedback), {data_info.name!r} is {data_info.kind!r}")
        self.cfg, self.data_info = cfg, data_info
        t = cfg.task
        from jaxrec.data import multitask_transforms as mtt

        label_names = tuple(data_info.metadata.get("label_names", mtt.LABEL_NAMES))
        self.tasks = tuple(t.get("tasks", ("is_click", "long_view")))
        feats = tuple(t.get("history_label_features", ("is_click", "long_view")))
        for key, names in (("task.tasks", self.tasks), ("task.history_label_features", feats)):
            for n in names:
                if n not in label_names:
                    raise ConfigError(f"config key {key!r}: unknown label {n!r}; expected one of {label_names}")
        self.label_index = tuple(label_names.index(n) for n in self.tasks)
        self.code_index = tuple(label_names.index(n) for n in feats)
        self.history_len = int(t.get("history_len", 32))
        if self.history_len < 1:
            raise ConfigError(f"config key 'task.history_len': expected >= 1, got {self.history_len}")
        self.history_source = t.get("history_source", "all")
        if self.history_source not in ("all", "train"):
            raise ConfigError(f"config key 'task.history_source': expected 'all' or 'train', got "
                              f"{self.history_source!r}")
        self.key_kind = t.get("cache_key", "user_item_time")
        if self.key_kind not in ("user_item_time", "user_item"):
            raise ConfigError(f"config key 'task.cache_key': expected 'user_item_time' or 'user_item', got "
                              f"{self.key_kind!r}")
        self.capacity = int(t.get("cache_capacity", 1 << 18))
        self.ways = int(t.get("cache_ways", 16))
        dt = t.get("cache_dtype", "float32")
        if dt not in ("float32", "bfloat16"):
            raise ConfigError(f"config key 'task.cache_dtype': expected 'float32' or 'bfloat16', got {dt!r}")
        self.cache_dtype = jnp.dtype(dt)
        self.time_base_ms = int(t.get("time_base_ms", TIME_BASE_MS))
        md = data_info.metadata
        num_users = int(data_info.num_users or md.get("num_users") or mtt.KUAIRAND_PURE_SCHEMA.num_users)
        num_videos = int(data_info.num_items or md.get("num_items") or mtt.KUAIRAND_PURE_SCHEMA.num_videos)
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.model.items() if k != "name"}
        for k in ("tower_hidden", "tower_features"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k])
        self.side_transform = side_transform
        if kwargs.get("side_features"):
            self.schema = (mtt.schema_from_metadata(md, 3) if "user_feature_max" in md
                           else mtt.KUAIRAND_PURE_SCHEMA)
            kwargs.update(field_vocab=self.schema.field_vocab, tag_vocab=self.schema.tag_vocab)
        else:
            self.schema = None
        self.model = registry.get_model(cfg.model.name)(
            num_items=num_videos, num_users=num_users, num_label_codes=2 ** len(feats) if feats else 0,
            num_tasks=len(self.tasks), **kwargs)
        self.mode = self.model.cache_mode
        self.value_shape = cache_value_shape(self.mode, self.model.num_layers, self.model.embed_dim,
                                             self.model.num_heads)
        self._history = history

    # ----------------------------------------------------------------------------------- data
    def history_index(self) -> ExposureHistory:
        """The :class:`ExposureHistory` of ``task.history_source`` (built once from the dataset's splits)."""
        if self._history is None:
            from jaxrec.data import catalog
            from jaxrec.data import multitask_transforms as mtt

            splits = ["train"] if self.history_source == "train" else [
                s for s in ("train", "valid", "test") if s in self.data_info.split_sizes]
            cols = []
            for s in splits:
                src = catalog.load(self.data_info.name, s)
                key = f"{self.data_info.name}|{self.data_info.data_dir}|{s}|{len(src)}"
                base = None
                code = np.zeros(len(src), np.int32)
                for bit, li in enumerate(self.code_index):
                    c = mtt.load_click_columns(src, cache_key=key, label_index=li)
                    base = c
                    code |= (np.asarray(c["positive"]) > 0).astype(np.int32) << bit
                if base is None:
                    base = mtt.load_click_columns(src, cache_key=key, label_index=self.label_index[0])
                cols.append({"user": base["user"], "time_ms": base["time_ms"], "video": base["video"],
                             "code": code})
            cat = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
            self._history = ExposureHistory.from_columns(cat["user"], cat["time_ms"], cat["video"], cat["code"])
        return self._history

    def _side(self):
        if self.schema is None:
            return None
        if self.side_transform is None:
            from jaxrec.data import multitask_transforms as mtt

            self.side_transform = mtt.MultiTaskTransform(self.schema, self.label_index, mtt.ClickHistory.empty(), 0)
        return self.side_transform

    def transform(self) -> MARMTransform:
        return MARMTransform(self.history_index(), self.history_len, self.label_index, self.time_base_ms,
                             self._side())

    def train_transform(self):
        return self.transform()

    def eval_transform(self, split: str):
        return self.transform()

    def dummy_batch(self, batch_size: int) -> dict:
        b, n = batch_size, self.history_len
        z = lambda *s: np.zeros(s, np.int32)  # noqa: E731
        out = {"user_id": z(b), "video_id": z(b), "item": z(b), "time": z(b), "hist_ids": z(b, n),
               "hist_time": z(b, n), "hist_code": z(b, n), "hist_mask": np.zeros((b, n), bool),
               "labels": np.zeros((b, len(self.tasks)), np.float32)}
        if self.schema is not None:
            out["sparse"] = z(b, len(self.schema.field_vocab))
            out["tags"] = z(b, self.schema.max_tags)
        return out

    # ----------------------------------------------------------------------------------- cache
    def new_cache(self) -> CacheStore | None:
        """An empty store for this model (None for modes that cache nothing)."""
        if self.value_shape is None:
            return None
        return CacheStore.create(self.capacity, self.value_shape, ways=self.ways,
                                 key_size=3 if self.key_kind == "user_item_time" else 2, dtype=self.cache_dtype)

    def read_cache(self, model_state, batch):
        """``(cached [B, n, ...] or None, hit [B, n], store with counted reads or None)``."""
        store = model_state.get("marm_cache")
        mask = jnp.asarray(batch["hist_mask"], bool) & (jnp.asarray(batch["hist_ids"]) > 0)
        if store is None:
            return None, jnp.zeros(mask.shape, bool), None
        vals, hit, store = store.lookup(_hist_keys(batch, self.key_kind), mask)
        return vals, hit, store

    def write_cache(self, store, batch, writes, mask=None):
        if store is None or writes is None:
            return store
        return store.write(_target_keys(batch, self.key_kind), writes, mask=mask)

    # ----------------------------------------------------------------------------------- model
    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        b, n = np.shape(batch["hist_ids"])
        cached = None if self.value_shape is None else jnp.zeros((b, n) + self.value_shape, jnp.float32)
        variables = dict(self.model.init({"params": params_rng, "dropout": dropout_rng}, batch, cached,
                                         jnp.zeros((b, n), bool), train=False))
        store = self.new_cache()
        if store is not None:
            variables["marm_cache"] = store
        return variables

    def loss(self, params, model_state, batch, rng):
        cached, hit, store = self.read_cache(model_state, batch)
        logits, writes, _ = self.model.apply({"params": params}, batch, cached, hit, train=True,
                                             rngs={"dropout": rng})
        valid = batch.get("valid")  # padded rows (streaming batches) are neither trained on nor written
        w = jnp.ones(logits.shape[:1], jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)
        per_ex = losses.bce_with_logits(logits, batch["labels"], reduction="none")  # [B, T]
        per_task = jnp.sum(per_ex * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)  # [T]
        loss = jnp.sum(per_task)
        new_state = dict(model_state)
        metrics = {f"loss/{t}": per_task[i] for i, t in enumerate(self.tasks)}
        if store is not None:
            reads = jnp.sum(jnp.asarray(batch["hist_mask"], bool) & (jnp.asarray(batch["hist_ids"]) > 0))
            metrics["cache/hit_rate"] = jnp.sum(hit) / jnp.maximum(reads, 1)
            store = self.write_cache(store, batch, writes, mask=valid)
            metrics["cache/occupancy"] = store.occupancy()
            new_state["marm_cache"] = store
        return loss, (metrics, new_state)

    def _outputs(self, logits, hit, batch, h_top):
        labels = batch["labels"]
        reads = jnp.sum(jnp.asarray(batch["hist_mask"], bool) & (jnp.asarray(batch["hist_ids"]) > 0), axis=-1)
        return {"logits": logits, "labels": labels, "user_id": batch["user_id"], "h_top": h_top,
                "logloss": losses.bce_with_logits(logits, labels, reduction="none"),
                "cache_hits": jnp.sum(hit, axis=-1).astype(jnp.int32), "cache_reads": reads.astype(jnp.int32)}

    def evaluate(self, params, model_state, batch):
        """Per-example outputs; reads the cache (no counters, no writes)."""
        store = model_state.get("marm_cache")
        mask = jnp.asarray(batch["hist_mask"], bool) & (jnp.asarray(batch["hist_ids"]) > 0)
        cached, hit = (None, jnp.zeros(mask.shape, bool)) if store is None else store.read(
            _hist_keys(batch, self.key_kind), mask)
        logits, _, aux = self.model.apply({"params": params}, batch, cached, hit, train=False)
        return self._outputs(logits, hit, batch, aux["h_top"])

    def serve(self, params, model_state, batch):
        """Serving / streaming step: read (counted), score, write the scored rows (``batch["valid"]`` if
        present). Returns ``(outputs as evaluate, new model_state)``; jit it with the state donated."""
        cached, hit, store = self.read_cache(model_state, batch)
        logits, writes, aux = self.model.apply({"params": params}, batch, cached, hit, train=False)
        new_state = dict(model_state)
        if store is not None:
            new_state["marm_cache"] = self.write_cache(store, batch, writes, mask=batch.get("valid"))
        return self._outputs(logits, hit, batch, aux["h_top"]), new_state

    def jitted(self, name: str):
        """``jax.jit`` of ``serve`` / ``evaluate`` / ``loss``, built once per task (compilations are shared)."""
        fns = self.__dict__.setdefault("_jitted", {})
        if name not in fns:
            fns[name] = jax.jit(getattr(self, name))
        return fns[name]

    # ----------------------------------------------------------------------------------- metrics
    def accumulate(self, acc: metrics_lib.MetricAccumulator, out: dict, batch: dict) -> None:
        valid = np.asarray(batch["valid"], bool)
        logits, labels, users = np.asarray(out["logits"]), np.asarray(out["labels"]), np.asarray(out["user_id"])
        for i, t in enumerate(self.tasks):
            acc.add_auc(f"auc/{t}", logits[:, i], labels[:, i], mask=valid)
            acc.add_gauc(f"gauc/{t}", logits[:, i], labels[:, i], users, mask=valid)
            acc.add(f"logloss/{t}", np.asarray(out["logloss"])[:, i], mask=valid)
        acc.collect("auc/mean", _auc_mean, valid, scores=logits, labels=labels)
        acc.collect("gauc/mean", _gauc_mean, valid, scores=logits, labels=labels, user_ids=users)
        acc.collect("cache/hit_rate", _hit_rate, valid, hits=np.asarray(out["cache_hits"]),
                    reads=np.asarray(out["cache_reads"]))

    # ----------------------------------------------------------------------------------- cost
    def forward_flops_per_example(self) -> float:
        m = self.model
        side = 0
        if m.side_features:
            side = m.side_embed_dim * (len(m.field_vocab) + 4)
        return (sequence_flops(self.history_len, m.embed_dim, m.num_layers, m.mlp_ratio, m.cache_mode,
                               self_attend=m.self_attend, miss_policy=m.miss_policy)
                + tower_flops(m.embed_dim, m.tower_hidden, m.num_tasks, side, len(m.tower_features)))

    def train_flops_per_example(self) -> float:
        return flops_lib.training(self.forward_flops_per_example())


@register_task("marm_ranking")
def make_marm_task(cfg, data_info) -> MARMRankingTask:
    return MARMRankingTask(cfg, data_info)


# ============================================================================================ streaming

def stream_scores(task: MARMRankingTask, params, model_state, batches, *, jit_fn=None):
    """Scores padded batches in order with :meth:`MARMRankingTask.serve` (read, score, write).

    Returns ``(outputs concatenated over the valid rows, final model_state)``; ``jit_fn`` reuses a jitted
    ``serve``.
    """
    fn = jit_fn or task.jitted("serve")
    outs = []
    for b in batches:
        out, model_state = fn(params, model_state, b)
        v = np.asarray(b["valid"], bool)
        outs.append({k: np.asarray(x)[v] for k, x in out.items()})
    cat = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} if outs else {}
    return cat, model_state


def stream_evaluate(task: MARMRankingTask, params, model_state, phases, batch_size: int, *, jit_fn=None):
    """Time-ordered evaluation *with cache writes*, as a deployed MARM serves: each phase's impressions are cut
    into causal rounds (:func:`round_batches`: at most one impression per user per batch, every user's
    impressions in time order) and scored with :meth:`MARMRankingTask.serve` (read, score, write), so an
    evaluation impression's history entries from earlier in the evaluation period are in the cache -- unlike
    :meth:`MARMRankingTask.evaluate` (the engine's static evaluation, reads only), where every exposure of the
    evaluation period is a miss.

    ``phases``: ``[(name, records)]`` scored in order, e.g. ``[("valid", ...), ("test", ...)]`` from the cache
    at the end of training (the validation period written before the test period is scored). Returns
    ``({name: metrics}, final model_state)``; metrics are :meth:`MARMRankingTask.accumulate`'s (AUC / GAUC /
    logloss per task, ``cache/hit_rate``) plus ``examples``. With no cache (``cache_mode="none"``) this equals
    the static evaluation.
    """
    fn = jit_fn or task.jitted("serve")
    tr = task.transform()
    results = {}
    for name, records in phases:
        col = lambda k: np.fromiter((r[k] for r in records), np.int64, len(records))  # noqa: E731
        acc = metrics_lib.MetricAccumulator()
        n = 0
        for idx in round_batches(col("user_id"), col("time_ms"), batch_size):
            b = pad_batch(tr.map_batch([records[i] for i in idx]), batch_size)
            out, model_state = fn(params, model_state, b)
            task.accumulate(acc, out, b)
            n += len(idx)
        results[name] = {**acc.result(), "examples": n}
    return results, model_state


def measure_staleness(task: MARMRankingTask, params_old, params_new, model_state, batches) -> dict:
    """Staleness of cached entries when parameters move from ``params_old`` to ``params_new``.

    The stream ``batches`` (causal order, e.g. :func:`round_batches`) is scored twice under ``params_new``:
    (a) *stale*: reading a cache filled by streaming the same events under ``params_old`` (what a deployed
    cache holds after a parameter update); (b) *fresh*: a cache filled under ``params_new`` (what a full
    recomputation gives -- equal to the oracle Transformer by the exactness property). Returns the mean / max
    absolute differences of the top state ``h_top`` and of the logits, the mean stale/fresh logloss, and the
    parameter change ``param_delta`` (global L2 norm). Expected direction (tested): 0 for equal parameters,
    growing with the parameter change.
    """
    empty = dict(model_state)
    if "marm_cache" in empty:
        empty["marm_cache"] = empty["marm_cache"].clear()
    fn = task.jitted("serve")
    _, old_state = stream_scores(task, params_old, empty, batches, jit_fn=fn)

    ro = task.jitted("evaluate")
    stale = []
    for b in batches:
        o = ro(params_new, old_state, b)
        v = np.asarray(b["valid"], bool)
        stale.append({k: np.asarray(x)[v] for k, x in o.items()})
    stale = {k: np.concatenate([o[k] for o in stale]) for k in stale[0]}
    fresh, _ = stream_scores(task, params_new, empty, batches, jit_fn=fn)
    dh = np.abs(stale["h_top"] - fresh["h_top"])
    dl = np.abs(stale["logits"] - fresh["logits"])
    delta = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), params_new, params_old)
    return {"h_mean_abs": float(dh.mean()), "h_max_abs": float(dh.max()), "logit_mean_abs": float(dl.mean()),
            "logit_max_abs": float(dl.max()), "logloss_stale": float(stale["logloss"].mean()),
            "logloss_fresh": float(fresh["logloss"].mean()),
            "param_delta": float(np.sqrt(sum(float(x) for x in jax.tree.leaves(delta))))}
