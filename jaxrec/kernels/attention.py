"""Attention kernels: masks, masked softmax, dot-product attention, KV cache, rotary embeddings.

Pure, jit-able functions without parameters (the parameterised blocks live in ``jaxrec.nn.transformer``).
Every model that attends uses these: SASRec / C2DSR / CDSRNP (causal self-attention), KuaiFormer (causal
Llama-style stack with RoPE, learned query tokens, bidirectional group compressor), MARM (target attention
with cached per-layer states), LoID.

Layout conventions (used everywhere in this module):

- ``B`` batch, ``Lq`` query length, ``Lk`` key length, ``H`` heads, ``Dh`` query/key head width,
  ``Dv`` value head width, ``C`` candidates, ``K`` learned queries.
- ``q [B, Lq, H, Dh]``, ``k [B, Lk, H, Dh]``, ``v [B, Lk, H, Dv]`` -> ``out [B, Lq, H, Dv]``.
- Masks are **boolean, True = may attend**, broadcastable to ``[B, H, Lq, Lk]``; the builders below return
  rank-4 arrays with size-1 axes where a mask does not vary (``padding_mask -> [B, 1, 1, Lk]``,
  ``causal_mask -> [1, 1, Lq, Lk]``). ``None`` means "no constraint".
- Attention weights are computed in float32 whatever the input dtype; a query row whose keys are all masked
  gets **exactly zero** weights and output (never NaN), with finite (zero) gradients.

Incremental decoding: :class:`KVCache` holds projected keys/values ``[B, Lmax, H, Dh]`` plus a per-slot
validity flag and a per-example write position; :func:`attention_with_cache` appends the new tokens and
attends over the cache (causally), which equals full causal attention over the whole sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import dropout as dropout_lib

Array = jax.Array

__all__ = [
    "padding_mask",
    "causal_mask",
    "combine_masks",
    "masked_softmax",
    "dot_product_attention",
    "self_attention",
    "target_attention",
    "learned_query_attention",
    "KVCache",
    "init_cache",
    "cache_update",
    "attention_with_cache",
    "rope",
]


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


def padding_mask(key_valid: Array, query_valid: Array | None = None) -> Array:
    """Boolean padding mask from validity flags.

    Args:
      key_valid: ``[B, Lk]`` bool (or 0/1), True where the key position holds a real token.
      query_valid: optional ``[B, Lq]``; when given, rows of padded queries are masked too (their outputs
        become exactly zero).

    Returns:
      ``[B, 1, 1, Lk]`` bool, or ``[B, 1, Lq, Lk]`` when ``query_valid`` is given.
    """
    key_valid = jnp.asarray(key_valid).astype(bool)
    mask = key_valid[:, None, None, :]
    if query_valid is not None:
        query_valid = jnp.asarray(query_valid).astype(bool)
        mask = mask & query_valid[:, None, :, None]
    return mask


def causal_mask(q_len: int, k_len: int | None = None, offset: int | Array = 0) -> Array:
    """Causal (lower-triangular) mask; query ``i`` sits at absolute position ``offset + i``.

    Query ``i`` may attend key ``j`` iff ``j <= offset + i``. With ``k_len = None`` the key length is
    ``q_len + offset`` (the usual square mask when ``offset = 0``). For incremental decoding the new queries
    start at ``offset`` = number of tokens already in the cache.

    Args:
      q_len: static query length ``Lq``.
      k_len: static key length ``Lk`` (default ``q_len + offset``; must be given when ``offset`` is traced).
      offset: scalar or ``[B]`` int (may be traced), the absolute position of query 0.

    Returns:
      ``[1, 1, Lq, Lk]`` bool for a scalar offset, ``[B, 1, Lq, Lk]`` for a per-example offset.
    """
    if k_len is None:
        if not isinstance(offset, (int, np.integer)):
            raise ValueError("causal_mask: k_len must be given when offset is an array")
        k_len = q_len + int(offset)
    offset = jnp.asarray(offset, dtype=jnp.int32)
    q_pos = offset[..., None] + jnp.arange(q_len, dtype=jnp.int32)  # [Lq] or [B, Lq]
    mask = jnp.arange(k_len, dtype=jnp.int32) <= q_pos[..., None]  # [..., Lq, Lk]
    if mask.ndim == 2:
        return mask[None, None]
    return mask[:, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of boolean masks with broadcasting; ``None`` entries are ignored.

    Returns ``None`` when every mask is ``None``. Shapes broadcast as in NumPy (e.g. ``[B, 1, 1, Lk]`` and
    ``[1, 1, Lq, Lk]`` give ``[B, 1, Lq, Lk]``).
    """
    out = None
    for m in masks:
        if m is None:
            continue
        m = jnp.asarray(m).astype(bool)
        out = m if out is None else jnp.logical_and(out, m)
    return out


# --------------------------------------------------------------------------------------------------
# Softmax and attention
# --------------------------------------------------------------------------------------------------


def masked_softmax(logits: Array, mask: Array | None = None, axis: int = -1) -> Array:
    """Softmax over ``axis`` restricted to ``mask``; float32 result.

    Masked entries get exactly 0; a slice whose entries are all masked becomes all zeros (no NaN), and the
    gradient with respect to ``logits`` is finite everywhere (zero for masked entries).

    Args:
      logits: ``[..., N]`` (any float dtype; computed in float32).
      mask: bool broadcastable to ``logits`` (True = keep), or None.
      axis: reduction axis.

    Returns:
      float32 weights with the broadcast shape of ``logits`` and ``mask``.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if mask is None:
        return jax.nn.softmax(logits, axis=axis)
    mask = jnp.broadcast_to(jnp.asarray(mask).astype(bool), jnp.broadcast_shapes(logits.shape, jnp.shape(mask)))
    logits = jnp.broadcast_to(logits, mask.shape)
    neg = jnp.finfo(jnp.float32).min
    row_max = jnp.max(jnp.where(mask, logits, neg), axis=axis, keepdims=True)
    row_max = jax.lax.stop_gradient(row_max)
    # Double `where`: masked entries never see `logits - row_max`, so no inf/NaN in values or gradients.
    shifted = jnp.where(mask, logits - row_max, 0.0)
    unnorm = jnp.where(mask, jnp.exp(shifted), 0.0)
    denom = jnp.sum(unnorm, axis=axis, keepdims=True)
    return unnorm / jnp.where(denom > 0, denom, 1.0)


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    *,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_weights: bool = False,
    precision=None,
    dropout_impl: str = "threefry",
):
    """Scaled dot-product attention with a boolean mask and an optional additive bias.

    ``out[b, i, h] = sum_j w[b, h, i, j] v[b, j, h]`` with
    ``w = masked_softmax(scale * <q[b, i, h], k[b, j, h]> + bias, mask)``.

    Args:
      q: ``[B, Lq, H, Dh]``.
      k: ``[B, Lk, H, Dh]``.
      v: ``[B, Lk, H, Dv]``.
      mask: bool broadcastable to ``[B, H, Lq, Lk]`` (True = attend), or None. Fully masked query rows give
        exactly zero output and zero gradients.
      bias: float broadcastable to ``[B, H, Lq, Lk]`` added to the scaled logits (must be finite; use
        ``mask`` to exclude keys).
      scale: logit scale, default ``1 / sqrt(Dh)``.
      dropout_rate: dropout on the attention weights (inverted dropout, ``1 / (1 - rate)`` rescaling).
      dropout_rng: PRNG key, required when ``dropout_rate > 0`` and not ``deterministic``.
      deterministic: if True, no dropout.
      return_weights: also return the float32 weights ``[B, H, Lq, Lk]`` (after dropout).
      precision: passed to the einsums.
      dropout_impl: mask generator, ``"threefry"`` (``jax.random.bernoulli``) or ``"hash"``
        (:mod:`jaxrec.kernels.dropout`).

    Returns:
      ``out [B, Lq, H, Dv]`` in the dtype of ``v`` (and the weights when ``return_weights``).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"dot_product_attention expects rank-4 q/k/v, got {q.shape}, {k.shape}, {v.shape}")
    if scale is None:
        scale = 1.0 / (q.shape[-1] ** 0.5)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision)
    logits = logits.astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + jnp.asarray(bias, jnp.float32)
    weights = masked_softmax(logits, mask, axis=-1)
    if weights.shape != logits.shape:
        raise ValueError(f"mask {jnp.shape(mask)} does not broadcast to the logits {logits.shape} [B, H, Lq, Lk]")
    if dropout_rate > 0.0 and not deterministic:
        if dropout_rng is None:
            raise ValueError("dot_product_attention: dropout_rng is required when dropout is active")
        keep = dropout_lib.keep_mask(dropout_rng, weights.shape, 1.0 - dropout_rate, dropout_impl)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, precision=precision)
    if return_weights:
        return out, weights
    return out


def self_attention(
    q: Array,
    k: Array,
    v: Array,
    valid: Array | None = None,
    *,
    causal: bool = False,
    mask: Array | None = None,
    **kwargs,
):
    """Self-attention over one sequence: causal or bidirectional, with key padding.

    Args:
      q: ``[B, L, H, Dh]``; k: ``[B, L, H, Dh]``; v: ``[B, L, H, Dv]`` (projections of the same sequence).
      valid: ``[B, L]`` bool, True at real tokens (keys at padded positions are ignored), or None.
      causal: if True, position ``t`` attends only to positions ``<= t``; otherwise bidirectional.
      mask: extra bool mask broadcastable to ``[B, H, L, L]``, ANDed in.
      **kwargs: forwarded to :func:`dot_product_attention` (bias, scale, dropout, return_weights, ...).

    Returns:
      ``[B, L, H, Dv]`` (and weights if requested).
    """
    length = q.shape[1]
    m = combine_masks(
        None if valid is None else padding_mask(valid),
        causal_mask(length) if causal else None,
        mask,
    )
    return dot_product_attention(q, k, v, m, **kwargs)


def _add_head_axis(x: Array, ndim_with_heads: int) -> tuple[Array, bool]:
    if x.ndim == ndim_with_heads:
        return x, False
    if x.ndim == ndim_with_heads - 1:
        return x[..., None, :], True
    raise ValueError(f"expected rank {ndim_with_heads} or {ndim_with_heads - 1}, got shape {x.shape}")


def target_attention(
    cand: Array,
    hist_k: Array,
    hist_v: Array,
    hist_mask: Array | None = None,
    **kwargs,
):
    """Target attention: each of ``C`` candidates attends over the user history, independently.

    Args:
      cand: ``[B, C, H, Dh]`` (multi-head) or ``[B, C, D]`` (single head) candidate queries.
      hist_k: ``[B, L, H, Dh]`` or ``[B, L, D]`` history keys (same rank as ``cand``).
      hist_v: ``[B, L, H, Dv]`` or ``[B, L, Dv]`` history values.
      hist_mask: ``[B, L]`` bool (history validity, shared by all candidates) or ``[B, C, L]`` (a different
        history subset per candidate, e.g. SIM-style search), or None.
      **kwargs: forwarded to :func:`dot_product_attention`.

    Returns:
      ``[B, C, H, Dv]`` or ``[B, C, Dv]`` (matching the rank of ``cand``); candidates with no valid history
      get zeros.
    """
    q, squeeze = _add_head_axis(cand, 4)
    k, _ = _add_head_axis(hist_k, 4)
    v, _ = _add_head_axis(hist_v, 4)
    if hist_mask is None:
        mask = None
    else:
        hist_mask = jnp.asarray(hist_mask).astype(bool)
        mask = hist_mask[:, None, None, :] if hist_mask.ndim == 2 else hist_mask[:, None, :, :]
    res = dot_product_attention(q, k, v, mask, **kwargs)
    if not squeeze:
        return res
    if isinstance(res, tuple):
        return res[0][..., 0, :], res[1]
    return res[..., 0, :]


def learned_query_attention(
    queries: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    **kwargs,
):
    """Attention with ``K`` learned query vectors shared across the batch (multi-interest extraction).

    Args:
      queries: ``[K, H, Dh]`` or ``[K, D]`` (single head), the same for every example.
      k: ``[B, L, H, Dh]`` or ``[B, L, D]``.
      v: ``[B, L, H, Dv]`` or ``[B, L, Dv]``.
      mask: ``[B, L]`` bool key validity, or None.
      **kwargs: forwarded to :func:`dot_product_attention`.

    Returns:
      ``[B, K, H, Dv]`` or ``[B, K, Dv]``.
    """
    batch = k.shape[0]
    q = jnp.broadcast_to(queries[None], (batch,) + queries.shape)
    return target_attention(q, k, v, mask, **kwargs)


# --------------------------------------------------------------------------------------------------
# KV cache for incremental decoding
# --------------------------------------------------------------------------------------------------


class KVCache(NamedTuple):
    """Key/value cache (a pytree) for incremental decoding.

    Attributes:
      keys: ``[B, Lmax, H, Dh]`` projected (and, with RoPE, rotated) keys.
      values: ``[B, Lmax, H, Dv]`` projected values.
      valid: ``[B, Lmax]`` bool, True at slots that hold a real (non-padding) token.
      length: ``[B]`` int32, number of slots written so far per example (the next write position). May exceed
        ``Lmax`` after an overflow; writes beyond ``Lmax`` are dropped.
    """

    keys: Array
    values: Array
    valid: Array
    length: Array


def init_cache(
    batch: int, max_length: int, num_heads: int, head_dim: int, value_dim: int | None = None, dtype=jnp.float32
) -> KVCache:
    """An empty cache: zeros, nothing valid, length 0. Shapes as in :class:`KVCache`."""
    value_dim = head_dim if value_dim is None else value_dim
    return KVCache(
        keys=jnp.zeros((batch, max_length, num_heads, head_dim), dtype),
        values=jnp.zeros((batch, max_length, num_heads, value_dim), dtype),
        valid=jnp.zeros((batch, max_length), bool),
        length=jnp.zeros((batch,), jnp.int32),
    )


def cache_update(cache: KVCache, k_new: Array, v_new: Array, valid_new: Array | None = None) -> KVCache:
    """Append ``T`` new tokens per example at slots ``length[b] .. length[b] + T - 1``.

    Args:
      cache: the current :class:`KVCache`.
      k_new: ``[B, T, H, Dh]``.
      v_new: ``[B, T, H, Dv]``.
      valid_new: ``[B, T]`` bool validity of the new tokens (default all True). Left-padded prompts can be
        written in one chunk with their padding flagged invalid.

    Returns:
      The new cache (``length += T``). Slots at or beyond ``Lmax`` are dropped, not wrapped or clamped; the
      caller keeps ``length <= Lmax`` (under jit this cannot raise).
    """
    b, t = k_new.shape[:2]
    if valid_new is None:
        valid_new = jnp.ones((b, t), bool)
    pos = cache.length[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B, T]
    rows = jnp.arange(b)[:, None]
    keys = cache.keys.at[rows, pos].set(k_new.astype(cache.keys.dtype), mode="drop")
    values = cache.values.at[rows, pos].set(v_new.astype(cache.values.dtype), mode="drop")
    valid = cache.valid.at[rows, pos].set(jnp.asarray(valid_new).astype(bool), mode="drop")
    return KVCache(keys, values, valid, cache.length + t)


def attention_with_cache(
    q_new: Array,
    k_new: Array,
    v_new: Array,
    cache: KVCache,
    *,
    valid_new: Array | None = None,
    causal: bool = True,
    mask: Array | None = None,
    **kwargs,
):
    """Attend ``T`` new queries over the cache after appending the new keys/values.

    New query ``i`` of example ``b`` sits at position ``length[b] + i``; with ``causal`` it attends to the
    valid cache slots ``<= length[b] + i`` (itself included). Token-by-token decoding this way equals
    :func:`self_attention` with ``causal=True`` over the whole sequence.

    Args:
      q_new: ``[B, T, H, Dh]``; k_new: ``[B, T, H, Dh]``; v_new: ``[B, T, H, Dv]``.
      cache: :class:`KVCache` with ``Lmax`` slots.
      valid_new: ``[B, T]`` validity of the new tokens (stored in the cache; padded keys are never attended).
      causal: restrict new query ``i`` to slots ``<= length + i`` (False: all valid slots, including the
        other new tokens).
      mask: extra bool mask broadcastable to ``[B, H, T, Lmax]``.
      **kwargs: forwarded to :func:`dot_product_attention`.

    Returns:
      ``(out [B, T, H, Dv], new_cache)`` (``out`` is ``(out, weights)`` when ``return_weights=True``).
    """
    t = q_new.shape[1]
    max_length = cache.keys.shape[1]
    offset = cache.length
    new_cache = cache_update(cache, k_new, v_new, valid_new)
    m = combine_masks(
        padding_mask(new_cache.valid),
        causal_mask(t, max_length, offset) if causal else None,
        mask,
    )
    out = dot_product_attention(q_new, new_cache.keys, new_cache.values, m, **kwargs)
    return out, new_cache


# --------------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------------


def rope(x: Array, positions: Array, *, base: float = 10000.0) -> Array:
    """Rotary position embedding (RoPE, Su et al. 2021) in the "rotate-half" (GPT-NeoX / Llama-HF) layout.

    Feature pairs ``(x[..., i], x[..., i + Dh/2])`` are rotated by angle ``pos * base**(-2i/Dh)``. Scores
    ``<rope(q, m), rope(k, n)>`` depend on positions only through ``m - n``.

    Args:
      x: ``[B, L, H, Dh]`` with even ``Dh``.
      positions: ``[B, L]`` or ``[L]`` integer (or float) absolute positions.
      base: frequency base.

    Returns:
      ``[B, L, H, Dh]`` in the dtype of ``x`` (computed in float32).
    """
    dh = x.shape[-1]
    if dh % 2:
        raise ValueError(f"rope needs an even head dim, got {dh}")
    half = dh // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / dh)  # [Dh/2]
    positions = jnp.asarray(positions, jnp.float32)
    if positions.ndim == 1:
        positions = positions[None]
    angles = positions[..., None] * inv_freq  # [B|1, L, Dh/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
