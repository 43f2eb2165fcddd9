"""Retrieval serving: user-tower export and top-K over a whole item table, per interest, merged.

KuaiFormer-style multi-interest retrieval (../shared/papers/kuaiformer.md §4): a user tower maps a history to
``k`` interest vectors ``U [B, Q, d]`` (``Q`` = number of interests); each interest retrieves its own quota of
items from the item table ``E [N, d]`` by brute-force inner product (the paper's GPU brute-force search); the
union is de-duplicated, ranked by score and truncated to a global top-K.

Functions (all pure and jit-able; ``k``, ``top_k``, ``chunk_size``, ``method`` are static):

* :func:`topk_per_interest` -- ``scores [B, Q, K']``, ``ids [B, Q, K']`` for every interest, with
  ``method="exact"`` (``lax.top_k``), ``"approx"`` (``lax.approx_max_k``) or ``"binned"`` (the TPU
  approximate top-k algorithm written in plain JAX, see below); optional chunking over the table (a
  ``lax.scan`` keeping a running top-K', so ``[B, Q, N]`` is never materialised);
* :func:`update_topk` -- merge one chunk of scores into a running top-K (for callers with their own scan);
* :func:`merge_dedup` -- merge per-interest lists into a global top-K without duplicates;
* :func:`retrieve` -- both, with the per-interest quota ``"split"`` (``K' = ceil(K / Q)``, the paper's
  serving rule) or ``"full"`` (``K' = K``; then the merged list *is* the exact top-K of
  ``max_j <u_j, e_x>``, since that top-K is contained in the union of the per-interest top-Ks);
* :func:`brute_force_max_topk` -- the reference: exact top-K of ``max_j <u_j, e_x>`` in one matmul;
* :func:`recall` -- per query, the fraction of the reference's (valid) ids present in another list;
* :func:`export_user_tower` / :func:`load_user_tower` -- serialise a user-tower function with its weights
  closed over as a ``jax.export.Exported`` (StableHLO, batch dimension symbolic), and load it back.

Conventions: returned ``ids`` are ``row_offset + row`` (so a table slice ``E[2:]`` can report catalogue ids);
slots that hold no item (catalogue smaller than K', rows excluded by ``item_mask``, duplicates removed by the
merge) have ``id = -1`` and ``score = -inf``. An empty catalogue (``N = 0``) returns only such slots; it is
never an error. Ties are broken towards the lower index (``lax.top_k``'s rule).

Approximation on CPU/GPU: XLA lowers ``lax.approx_max_k`` to its ``ApproxTopK`` op, which is native on TPU
only; on CPU and GPU it is an exact fallback (``is_fallback=true`` in the HLO), so its recall is 1.0 there.
``method="binned"`` is the TPU algorithm (Chern et al., 2022, "TPU-KNN") in plain JAX, so its speed/recall
trade-off can be measured on any backend: element ``i`` of ``N`` goes to bin ``i mod L``, each bin keeps its
maximum, and an exact top-K runs over the ``L`` bin winners; ``L = ceil((K - 1) / (1 - recall_target))``
bins (capped at ``N``) give an expected recall of at least ``recall_target`` when the top-K items are spread
uniformly over the bins. With ``L >= N`` it is exact.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "METHODS",
    "binned_max_k",
    "topk_per_interest",
    "update_topk",
    "merge_dedup",
    "retrieve",
    "brute_force_max_topk",
    "recall",
    "export_user_tower",
    "load_user_tower",
]

METHODS = ("exact", "approx", "binned")
NO_ID = -1


def _check_k(name: str, k) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive int, got {k!r}")
    return int(k)


def _check_method(method: str, recall_target: float) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 < float(recall_target) <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target!r}")


def _as_interests(interests) -> tuple[jax.Array, bool]:
    u = jnp.asarray(interests)
    if u.ndim == 2:
        return u[:, None, :], True
    if u.ndim != 3:
        raise ValueError(f"interests must be [B, Q, d] or [B, d], got shape {u.shape}")
    return u, False


def _check_table(item_table, d: int) -> jax.Array:
    e = jnp.asarray(item_table)
    if e.ndim != 2 or e.shape[1] != d:
        raise ValueError(f"item_table must be [N, {d}] (N >= 0), got shape {e.shape}")
    return e


def binned_max_k(x, k: int, recall_target: float = 0.95):
    """Approximate top-``k`` over the last axis by bin maxima (the TPU ApproxTopK algorithm, plain JAX).

    Args: ``x [..., N]`` scores, ``k`` static, ``recall_target`` in ``(0, 1]``.
    Returns ``(values [..., k], indices [..., k])`` sorted descending; ``k > N`` is padded with
    ``(-inf, -1)``.
    """
    k = _check_k("k", k)
    n = x.shape[-1]
    if n == 0:
        return _empty(x.shape[:-1], k, x.dtype)
    bins = n if recall_target >= 1.0 else min(n, max(k, math.ceil((k - 1) / (1.0 - recall_target))))
    if bins >= n:
        return _pad_topk(*jax.lax.top_k(x, min(k, n)), k)
    per_bin = math.ceil(n / bins)
    pad = per_bin * bins - n
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
    xr = xp.reshape(x.shape[:-1] + (per_bin, bins))  # element i -> bin i mod L
    arg = jnp.argmax(xr, axis=-2)  # [..., L]
    best = jnp.max(xr, axis=-2)
    idx = arg * bins + jnp.arange(bins)
    vals, pos = jax.lax.top_k(best, min(k, bins))
    return _pad_topk(vals, jnp.take_along_axis(idx, pos, axis=-1), k)


def _empty(batch_shape, k: int, dtype=jnp.float32):
    return (jnp.full(tuple(batch_shape) + (k,), -jnp.inf, dtype),
            jnp.full(tuple(batch_shape) + (k,), NO_ID, jnp.int32))


def _pad_topk(vals, idx, k: int):
    """Pad ``[..., k0]`` results to ``k`` slots; slots with ``-inf`` score get id ``-1``."""
    k0 = vals.shape[-1]
    if k0 < k:
        widths = [(0, 0)] * (vals.ndim - 1) + [(0, k - k0)]
        vals = jnp.pad(vals, widths, constant_values=-jnp.inf)
        idx = jnp.pad(idx, widths, constant_values=NO_ID)
    idx = jnp.where(jnp.isneginf(vals), NO_ID, idx.astype(jnp.int32))
    return vals, idx


def _select(scores, k: int, method: str, recall_target: float):
    """Top-``k`` of ``scores [..., n]`` (``k`` may exceed ``n``: padded)."""
    n = scores.shape[-1]
    kk = min(k, n)
    if method == "exact":
        v, i = jax.lax.top_k(scores, kk)
    elif method == "approx":
        v, i = jax.lax.approx_max_k(scores, kk, recall_target=recall_target)
    else:
        v, i = binned_max_k(scores, kk, recall_target)
    return _pad_topk(v, i, k)


def update_topk(best_scores, best_ids, chunk_scores, chunk_start, k: int, *, method: str = "exact",
                recall_target: float = 0.95):
    """Merge one chunk of scores into a running top-``k`` (the body of chunked retrieval).

    Args:
      best_scores, best_ids: running ``[..., k]`` lists (start from ``-inf`` / ``-1``).
      chunk_scores: ``[..., C]`` scores of table rows ``chunk_start .. chunk_start + C - 1`` (``-inf`` = not
        retrievable).
      chunk_start: int (may be traced). method, recall_target: selection within the chunk.

    Returns the updated ``(scores [..., k], ids [..., k])``, sorted descending.
    """
    cs, ci = _select(chunk_scores, min(k, chunk_scores.shape[-1]), method, recall_target)
    ci = jnp.where(ci >= 0, ci + chunk_start, NO_ID)
    alls = jnp.concatenate([best_scores, cs], axis=-1)
    alli = jnp.concatenate([best_ids, ci], axis=-1)
    top_s, pos = jax.lax.top_k(alls, k)
    top_i = jnp.take_along_axis(alli, pos, axis=-1)
    return top_s, jnp.where(jnp.isneginf(top_s), NO_ID, top_i)


def topk_per_interest(interests, item_table, k: int, *, method: str = "exact", recall_target: float = 0.95,
                      chunk_size: int | None = None, row_offset: int = 0, item_mask=None, precision=None):
    """Top-``k`` items of each interest by inner product over the whole table.

    Args:
      interests: ``[B, Q, d]`` (or ``[B, d]``, treated as ``Q = 1``).
      item_table: ``[N, d]``; ``N = 0`` is allowed (every slot comes back empty).
      k: items per interest (static).
      method: ``"exact"`` | ``"approx"`` | ``"binned"`` (module docstring).
      recall_target: for the approximate methods.
      chunk_size: score the table in chunks of this many rows inside a ``lax.scan`` with a running top-``k``
        (memory ``B*Q*chunk`` instead of ``B*Q*N``); None = one matmul. With chunks, the approximate
        methods approximate within each chunk and the running merge is exact.
      row_offset: added to returned row indices (ids of ``item_table[0]``).
      item_mask: optional ``[N]`` bool, False = never retrieved (padding / OOV rows).
      precision: for the score matmul.

    Returns:
      ``(scores [B, Q, k] float32, ids [B, Q, k] int32)`` sorted by score, descending; empty slots
      ``(-inf, -1)``. ``[B, k]`` each when ``interests`` was ``[B, d]``.
    """
    k = _check_k("k", k)
    _check_method(method, recall_target)
    u, squeeze = _as_interests(interests)
    e = _check_table(item_table, u.shape[-1])
    n = e.shape[0]
    bq = u.shape[:2]
    if item_mask is not None:
        item_mask = jnp.asarray(item_mask, bool)
        if item_mask.shape != (n,):
            raise ValueError(f"item_mask must be [{n}] bool, got shape {item_mask.shape}")
    if n == 0:
        s, i = _empty(bq, k)
    elif chunk_size is None or chunk_size >= n:
        scores = jnp.einsum("bqd,nd->bqn", u, e.astype(u.dtype), precision=precision).astype(jnp.float32)
        if item_mask is not None:
            scores = jnp.where(item_mask, scores, -jnp.inf)
        s, i = _select(scores, k, method, recall_target)
    else:
        c = _check_k("chunk_size", chunk_size)
        n_chunks = -(-n // c)
        pad = n_chunks * c - n
        mask = jnp.ones((n,), bool) if item_mask is None else item_mask
        e_p = jnp.pad(e, ((0, pad), (0, 0))).reshape(n_chunks, c, e.shape[1])
        m_p = jnp.pad(mask, (0, pad)).reshape(n_chunks, c)

        def body(carry, xs):
            e_c, m_c, start = xs
            sc = jnp.einsum("bqd,cd->bqc", u, e_c.astype(u.dtype), precision=precision).astype(jnp.float32)
            sc = jnp.where(m_c, sc, -jnp.inf)
            return update_topk(*carry, sc, start, k, method=method, recall_target=recall_target), None

        init = _empty(bq, k)
        starts = jnp.arange(n_chunks, dtype=jnp.int32) * c
        (s, i), _ = jax.lax.scan(body, init, (e_p, m_p, starts))
        i = jnp.where(jnp.isneginf(s), NO_ID, i)
    i = jnp.where(i >= 0, i + row_offset, NO_ID).astype(jnp.int32)
    if squeeze:
        return s[:, 0], i[:, 0]
    return s, i


def merge_dedup(scores, ids, top_k: int):
    """Merge candidate lists into a global top-``top_k`` without duplicate ids.

    Args:
      scores: ``[B, M]`` or ``[B, Q, K']`` (flattened to ``M = Q*K'``), float.
      ids: same shape, int; ``-1`` marks an empty slot.
      top_k: output length (static); longer than the number of distinct ids -> trailing ``(-inf, -1)``.

    An id listed by several interests keeps its highest score. Output sorted by score, descending (ties:
    lower id first). Returns ``(scores [B, top_k], ids [B, top_k])``.
    """
    top_k = _check_k("top_k", top_k)
    s = jnp.asarray(scores, jnp.float32)
    i = jnp.asarray(ids, jnp.int32)
    if s.shape != i.shape or s.ndim not in (2, 3):
        raise ValueError(f"scores and ids must both be [B, M] or [B, Q, K'], got {s.shape} and {i.shape}")
    b = s.shape[0]
    s, i = s.reshape(b, -1), i.reshape(b, -1)
    if s.shape[1] == 0:
        return _empty((b,), top_k)
    s = jnp.where(i < 0, -jnp.inf, s)
    # sort by (id ascending, score descending): the first slot of each id holds its best score
    i_sorted, neg_s = jax.lax.sort((i, -s), dimension=1, num_keys=2)
    s_sorted = -neg_s
    dup = jnp.concatenate([jnp.zeros((b, 1), bool), i_sorted[:, 1:] == i_sorted[:, :-1]], axis=1)
    s_sorted = jnp.where(dup | (i_sorted < 0), -jnp.inf, s_sorted)
    return _merge_select(s_sorted, i_sorted, top_k)


def _merge_select(s, i, top_k: int):
    v, pos = jax.lax.top_k(s, min(top_k, s.shape[-1]))
    return _pad_topk(v, jnp.take_along_axis(i, pos, axis=-1), top_k)


def _quota(quota, top_k: int, q: int) -> int:
    if quota == "split":
        return -(-top_k // q)
    if quota == "full":
        return top_k
    return _check_k("quota", quota)


def retrieve(interests, item_table, top_k: int, *, quota: str | int = "split", method: str = "exact",
             recall_target: float = 0.95, chunk_size: int | None = None, row_offset: int = 0, item_mask=None,
             precision=None) -> dict:
    """Per-interest retrieval, merged and de-duplicated to a global top-``top_k``.

    Args:
      interests: ``[B, Q, d]`` (or ``[B, d]``); item_table ``[N, d]``; top_k: the global K (static).
      quota: items each interest retrieves: ``"split"`` = ``ceil(K / Q)`` (KuaiFormer serving: each interest
        its own share; duplicates across interests can leave fewer than K distinct items), ``"full"`` = K
        (the merge then equals the exact top-K of ``max_j <u_j, e_x>`` when ``method="exact"``), or an int.
      method, recall_target, chunk_size, row_offset, item_mask, precision: as :func:`topk_per_interest`.

    Returns a dict: ``scores [B, K]``, ``ids [B, K]`` (global list), ``interest_scores [B, Q, K']``,
    ``interest_ids [B, Q, K']`` (per-interest lists).
    """
    top_k = _check_k("top_k", top_k)
    u, _ = _as_interests(interests)
    kq = _quota(quota, top_k, u.shape[1])
    ps, pi = topk_per_interest(u, item_table, kq, method=method, recall_target=recall_target,
                               chunk_size=chunk_size, row_offset=row_offset, item_mask=item_mask,
                               precision=precision)
    s, i = merge_dedup(ps, pi, top_k)
    return {"scores": s, "ids": i, "interest_scores": ps, "interest_ids": pi}


def brute_force_max_topk(interests, item_table, top_k: int, *, row_offset: int = 0, item_mask=None,
                         precision=None):
    """Reference: exact top-``top_k`` of ``score(x) = max_j <u_j, e_x>`` (one ``[B, Q, N]`` matmul).

    Returns ``(scores [B, top_k], ids [B, top_k])`` with ``(-inf, -1)`` padding.
    """
    top_k = _check_k("top_k", top_k)
    u, _ = _as_interests(interests)
    e = _check_table(item_table, u.shape[-1])
    if e.shape[0] == 0:
        return _empty(u.shape[:1], top_k)
    s = jnp.einsum("bqd,nd->bqn", u, e.astype(u.dtype), precision=precision).max(axis=1).astype(jnp.float32)
    if item_mask is not None:
        s = jnp.where(jnp.asarray(item_mask, bool), s, -jnp.inf)
    v, i = _select(s, top_k, "exact", 1.0)
    return v, jnp.where(i >= 0, i + row_offset, NO_ID)


def recall(ids, reference_ids):
    """Per query, the fraction of the reference's valid ids (``>= 0``) that ``ids`` also contains.

    Args: ``ids [B, K1]``, ``reference_ids [B, K2]`` (e.g. approximate vs exact lists).
    Returns ``[B]`` float32; 1.0 for a query whose reference list is empty.
    """
    a = jnp.asarray(ids)
    r = jnp.asarray(reference_ids)
    found = jnp.any((r[:, :, None] == a[:, None, :]) & (r[:, :, None] >= 0), axis=-1)
    n_ref = jnp.sum(r >= 0, axis=-1)
    return jnp.where(n_ref > 0, found.sum(-1) / jnp.maximum(n_ref, 1), 1.0).astype(jnp.float32)


# ------------------------------------------------------------------------------------------- export

def export_user_tower(fn: Callable[..., Any], *example_args, polymorphic_batch: bool = True):
    """Serialise a pure user-tower function (weights closed over) with ``jax.export``.

    Args:
      fn: ``fn(*arrays) -> interests [B, Q, d]``, e.g. ``KuaiFormerTask.user_tower(params, model_state)``.
      example_args: arrays or ``jax.ShapeDtypeStruct`` s giving shapes and dtypes; with
        ``polymorphic_batch`` their leading dimension is exported as a symbolic ``b`` (any batch size).

    Returns a ``jax.export.Exported``: ``.call(*args)`` runs it, ``.serialize()`` gives bytes for
    :func:`load_user_tower`.
    """
    from jax import export

    if not example_args:
        raise ValueError("export_user_tower needs at least one example argument (for shapes and dtypes)")
    if polymorphic_batch:
        (b,) = export.symbolic_shape("b")
        specs = [jax.ShapeDtypeStruct((b,) + tuple(np.shape(a)[1:]), a.dtype) for a in example_args]
    else:
        specs = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in example_args]
    return export.export(jax.jit(fn))(*specs)


def load_user_tower(blob: bytes | bytearray):
    """``jax.export.deserialize`` of :func:`export_user_tower`'s ``.serialize()`` output."""
    from jax import export

    return export.deserialize(bytearray(blob))
