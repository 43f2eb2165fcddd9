"""Evaluation metrics: ranking (sampled negatives and full catalogue), AUC / GAUC, MAE / RMSE, host accumulator.

Device-side functions are pure, vectorised and jit-able (static shapes, no Python loops over examples). They
return **per-example** arrays where a metric is per example (the caller, or `MetricAccumulator`, averages), and
scalars where the metric is a statistic of a whole set (AUC, GAUC, MAE, RMSE).

Rank convention
---------------
Ranks are 1-based floats. For a target score ``t`` and a candidate score ``c`` (``margin >= 0``):
``c`` beats the target if ``c > t + margin``; it ties with it if ``t - margin <= c <= t + margin``.
``rank = 1 + #beat + tie_weight * #tied`` with ``ties = "optimistic"`` (tie weight 0, the default),
``"half"`` (0.5, the expected rank under random tie-breaking) or ``"pessimistic"`` (1).
The default ``ties="optimistic", margin=1e-5`` is C2DSR's official evaluation:
``rank = 1 + #{negatives with score > target score + 1e-5}``; duplicate negatives count once per copy.

From ranks: ``hit_rate_at_k = [rank <= k]``, ``ndcg_at_k = [rank <= k] / log2(rank + 1)`` (one relevant item),
``mrr = 1 / rank`` (no cut-off).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "rank_against_negatives",
    "rank_in_catalogue",
    "hit_rate_at_k",
    "ndcg_at_k",
    "mrr",
    "ranking_metrics",
    "sampled_ranking_metrics",
    "topk_hits",
    "auc",
    "grouped_auc",
    "gauc",
    "mae",
    "rmse",
    "MetricAccumulator",
]

_TIE_WEIGHT = {"optimistic": 0.0, "half": 0.5, "pessimistic": 1.0}
C2DSR_MARGIN = 1e-5


def _tie_weight(ties):
    if ties not in _TIE_WEIGHT:
        raise ValueError(f"ties must be one of {tuple(_TIE_WEIGHT)}, got {ties!r}")
    return _TIE_WEIGHT[ties]


def _rank_from(target, cand, valid, ties, margin):
    """``target [B, 1]``, ``cand [B, N]``, ``valid [B, N]`` -> rank ``[B]`` float32."""
    beat = (cand > target + margin) & valid
    rank = 1.0 + beat.sum(axis=-1).astype(jnp.float32)
    tw = _tie_weight(ties)
    if tw:
        tied = (cand >= target - margin) & ~beat & valid
        rank = rank + tw * tied.sum(axis=-1).astype(jnp.float32)
    return rank


def rank_against_negatives(pos_score, neg_scores, neg_mask=None, ties="optimistic", margin=C2DSR_MARGIN):
    """Rank of the positive among sampled negatives (1 = best). Defaults = C2DSR's official rule.

    Args:
      pos_score: ``[B]`` score of the ground-truth item.
      neg_scores: ``[B, N]`` scores of the sampled negatives (``N = 999`` in C2DSR).
      neg_mask: optional bool ``[B, N]``; False = padding negative, ignored. An all-masked row gets rank 1.
      ties: ``"optimistic"`` | ``"half"`` | ``"pessimistic"`` (see module docstring).
      margin: tolerance of the comparison (``1e-5`` in C2DSR; 0 for exact comparison).
    Returns: float32 ``[B]``.
    """
    neg_scores = jnp.asarray(neg_scores)
    pos = jnp.asarray(pos_score, neg_scores.dtype)[:, None]
    valid = jnp.ones(neg_scores.shape, bool) if neg_mask is None else jnp.asarray(neg_mask, bool)
    return _rank_from(pos, neg_scores, valid, ties, margin)


def _exclusion(shape, target, exclude_mask, exclude_ids, exclude_pad_id):
    b, v = shape
    excl = jnp.zeros((b, v), bool)
    if exclude_mask is not None:
        excl = excl | jnp.broadcast_to(jnp.asarray(exclude_mask, bool), (b, v))
    if exclude_ids is not None:
        ids = jnp.asarray(exclude_ids, jnp.int32)
        bad = (ids < 0) | (ids >= v)
        if exclude_pad_id is not None:
            bad = bad | (ids == exclude_pad_id)
        ids = jnp.where(bad, v, ids)  # out of range: dropped by the scatter
        rows = jnp.broadcast_to(jnp.arange(b)[:, None], ids.shape)
        excl = excl.at[rows, ids].set(True, mode="drop")
    is_target = jnp.arange(v)[None, :] == jnp.asarray(target, jnp.int32)[:, None]
    return excl & ~is_target, is_target


def rank_in_catalogue(
    scores,
    target,
    exclude_mask=None,
    exclude_ids=None,
    exclude_pad_id=-1,
    ties="optimistic",
    margin=C2DSR_MARGIN,
):
    """Rank of the target among all ``V`` catalogue items (full ranking), excluding e.g. history items.

    Args:
      scores: ``[B, V]``.
      target: int ``[B]`` in ``[0, V)``.
      exclude_mask: optional bool ``[B, V]`` (or ``[V]``, e.g. the PAD item) of items that do not compete.
      exclude_ids: optional int ``[B, M]`` item ids that do not compete (history), padded with
        ``exclude_pad_id``; negative or out-of-range ids are ignored too (so ``-1`` padding always works, and
        ``exclude_pad_id=0`` serves 0-padded histories).
      ties, margin: as in `rank_against_negatives` (same defaults, so both protocols share one rule).
    The target itself never counts against itself and is never excluded, even if it occurs in the history.
    Returns: float32 ``[B]``.
    """
    scores = jnp.asarray(scores)
    excl, is_target = _exclusion(scores.shape, target, exclude_mask, exclude_ids, exclude_pad_id)
    tgt = jnp.sum(jnp.where(is_target, scores, 0), axis=-1, keepdims=True)
    return _rank_from(tgt, scores, ~excl & ~is_target, ties, margin)


def hit_rate_at_k(rank, k):
    """``[rank <= k]`` as float32, per example. ``rank [B]``; returns ``[B]``."""
    return (jnp.asarray(rank) <= k).astype(jnp.float32)


def ndcg_at_k(rank, k):
    """``[rank <= k] / log2(rank + 1)`` per example (single relevant item, ideal DCG = 1). Returns ``[B]``."""
    rank = jnp.asarray(rank, jnp.float32)
    return jnp.where(rank <= k, 1.0 / jnp.log2(rank + 1.0), 0.0)


def mrr(rank):
    """Reciprocal rank ``1 / rank`` per example, no cut-off. Returns ``[B]``."""
    return 1.0 / jnp.asarray(rank, jnp.float32)


def ranking_metrics(rank, hr_ks=(1, 5, 10), ndcg_ks=(5, 10)):
    """Dict of per-example ``[B]`` arrays: ``"mrr"``, ``"ndcg@k"`` for ``ndcg_ks``, ``"hr@k"`` for ``hr_ks``.

    The defaults are C2DSR's table: MRR, NDCG@5/10, HR@1/5/10.
    """
    out = {"mrr": mrr(rank)}
    for k in ndcg_ks:
        out[f"ndcg@{k}"] = ndcg_at_k(rank, k)
    for k in hr_ks:
        out[f"hr@{k}"] = hit_rate_at_k(rank, k)
    return out


def sampled_ranking_metrics(pos_score, neg_scores, neg_mask=None, hr_ks=(1, 5, 10), ndcg_ks=(5, 10), **rank_kw):
    """`rank_against_negatives` followed by `ranking_metrics`; adds ``"rank"``. All values ``[B]``."""
    rank = rank_against_negatives(pos_score, neg_scores, neg_mask, **rank_kw)
    out = ranking_metrics(rank, hr_ks, ndcg_ks)
    out["rank"] = rank
    return out


def topk_hits(scores, target, k, exclude_mask=None, exclude_ids=None, exclude_pad_id=-1):
    """Whether the target is among the top ``k`` items (``lax.top_k``; ``k > V`` means all ``V``).

    Ties at the cut-off are broken by ``lax.top_k`` (lower index first), unlike the tie rule of the rank
    functions. Excluded items (see `rank_in_catalogue`; never the target) are pushed to ``-inf`` first.

    Args: ``scores [B, V]``, ``target`` int ``[B]``, ``k`` static int.
    Returns: ``hits [B]`` float32 (1.0 = target in the top ``k``).
    """
    scores = jnp.asarray(scores)
    v = scores.shape[-1]
    if exclude_mask is not None or exclude_ids is not None:
        excl, _ = _exclusion(scores.shape, target, exclude_mask, exclude_ids, exclude_pad_id)
        scores = jnp.where(excl, -jnp.inf, scores)
    _, idx = jax.lax.top_k(scores, min(int(k), v))
    hits = jnp.any(idx == jnp.asarray(target, idx.dtype)[:, None], axis=-1)
    return hits.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# AUC / GAUC


def _auc_inputs(scores, labels, weights, mask):
    scores = jnp.asarray(scores)
    shape = scores.shape
    s = jnp.ravel(scores)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.float32)
    y = jnp.ravel(jnp.asarray(labels)) > 0.5
    exact = weights is None  # integer counts: cumulative sums are exact
    if exact:
        w = jnp.ones(s.shape, jnp.int32)
    else:
        w = jnp.ravel(jnp.broadcast_to(jnp.asarray(weights), shape)).astype(jnp.float32)
    if mask is not None:
        w = jnp.where(jnp.ravel(jnp.broadcast_to(jnp.asarray(mask, bool), shape)), w, 0)
    pos_w = jnp.where(y, w, 0)
    neg_w = jnp.where(y, 0, w)
    return s, pos_w, neg_w, w


def auc(scores, labels, weights=None, mask=None):
    """Exact ROC AUC (Mann–Whitney U), ties counted 1/2, optionally weighted.

    ``AUC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j]) / (W_pos W_neg)``, in O(n log n) via one
    sort and segment sums over groups of equal scores. Jit-able (static shapes).

    Args: ``scores [...]``; ``labels [...]`` (positive iff ``> 0.5``); ``weights [...]`` or ``None``;
      ``mask [...]`` or ``None`` (False = ignored). All are flattened.
    Returns: float32 scalar; NaN when there is no positive or no negative (AUC undefined).
    """
    s, pos_w, neg_w, _ = _auc_inputs(scores, labels, weights, mask)
    n = s.shape[0]
    if n == 0:
        return jnp.asarray(jnp.nan, jnp.float32)
    order = jnp.argsort(s)
    s, pos_w, neg_w = s[order], pos_w[order], neg_w[order]
    new_group = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    gid = jnp.cumsum(new_group) - 1
    g_pos = jax.ops.segment_sum(pos_w, gid, n)
    g_neg = jax.ops.segment_sum(neg_w, gid, n)
    below = jnp.cumsum(g_neg) - g_neg  # negatives with strictly lower score
    num = jnp.sum(g_pos.astype(jnp.float32) * (below.astype(jnp.float32) + 0.5 * g_neg.astype(jnp.float32)))
    den = pos_w.sum().astype(jnp.float32) * neg_w.sum().astype(jnp.float32)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def grouped_auc(scores, labels, group_ids, weights=None, mask=None):
    """Per-group exact AUC (ties 1/2), jit-able: one sort by (group, score) plus segment ops.

    Args: ``scores, labels, group_ids [N]`` (int group ids, e.g. users), ``weights [N]`` or ``None``,
      ``mask [N]`` or ``None``.
    Returns ``(group_auc [N], group_weight [N], group_valid [N], group_of [N])`` indexed by dense group slot
      ``k = 0 .. #groups-1`` in ascending id order (slots past the number of groups are empty):
      ``group_auc`` (NaN where invalid), ``group_weight`` = sum of ``weights * mask`` of the group's
      impressions (its impression count when ``weights`` is None), ``group_valid`` = the group has both a
      positive and a negative, ``group_of`` = the group id of each slot (-1 for empty slots).
    """
    s, pos_w, neg_w, w = _auc_inputs(scores, labels, weights, mask)
    u = jnp.ravel(jnp.asarray(group_ids)).astype(jnp.int32)
    n = s.shape[0]
    order = jnp.lexsort((s, u))  # by group, then score
    s, u, pos_w, neg_w, w = s[order], u[order], pos_w[order], neg_w[order], w[order]
    first = jnp.ones((1,), bool)
    new_user = jnp.concatenate([first, u[1:] != u[:-1]])
    new_group = new_user | jnp.concatenate([first, s[1:] != s[:-1]])
    useg = jnp.cumsum(new_user) - 1  # dense user slot of each element
    gid = jnp.cumsum(new_group) - 1  # (user, score) tie group of each element
    g_pos = jax.ops.segment_sum(pos_w, gid, n)
    g_neg = jax.ops.segment_sum(neg_w, gid, n)
    g_user = jax.ops.segment_max(useg, gid, n)  # empty groups: very negative, dropped below
    cum = jnp.cumsum(g_neg) - g_neg  # exclusive, across users
    big = jnp.iinfo(jnp.int32).max if jnp.issubdtype(cum.dtype, jnp.integer) else jnp.inf
    user_start = jax.ops.segment_min(jnp.where(g_user >= 0, cum, big), jnp.where(g_user >= 0, g_user, n), n)
    g_user_safe = jnp.clip(g_user, 0, n - 1)
    below = cum - user_start[g_user_safe]
    contrib = g_pos.astype(jnp.float32) * (below.astype(jnp.float32) + 0.5 * g_neg.astype(jnp.float32))
    num = jax.ops.segment_sum(jnp.where(g_user >= 0, contrib, 0.0), jnp.where(g_user >= 0, g_user, n), n)
    p_u = jax.ops.segment_sum(pos_w, useg, n).astype(jnp.float32)
    n_u = jax.ops.segment_sum(neg_w, useg, n).astype(jnp.float32)
    weight_u = jax.ops.segment_sum(w, useg, n).astype(jnp.float32)
    valid = (p_u > 0) & (n_u > 0)
    den = jnp.where(valid, p_u * n_u, 1.0)
    auc_u = jnp.where(valid, num / den, jnp.nan)
    group_of = jax.ops.segment_max(u, useg, n)
    group_of = jnp.where(jnp.arange(n) <= useg[-1], group_of, -1) if n else group_of
    return auc_u, weight_u, valid, group_of


def gauc(scores, labels, user_ids, weights=None, mask=None):
    """Group AUC: ``GAUC = sum_u n_u AUC_u / sum_u n_u`` over users with both label classes (HoME's definition).

    ``n_u`` = the user's number of (unmasked) impressions, or the sum of their ``weights`` when given; users
    whose (unmasked) labels are all 0 or all 1 are skipped. ``AUC_u`` is the exact tie-corrected AUC of `auc`.

    Args: ``scores, labels, user_ids [N]`` (flattened if higher-rank), ``weights [N]`` or ``None``,
      ``mask [N]`` or ``None``.
    Returns: float32 scalar; NaN when no user qualifies.
    """
    if jnp.size(jnp.asarray(scores)) == 0:
        return jnp.asarray(jnp.nan, jnp.float32)
    auc_u, weight_u, valid, _ = grouped_auc(scores, labels, user_ids, weights, mask)
    wv = jnp.where(valid, weight_u, 0.0)
    total = wv.sum()
    num = jnp.sum(jnp.where(valid, auc_u * weight_u, 0.0))
    return jnp.where(total > 0, num / jnp.where(total > 0, total, 1.0), jnp.nan)


# ----------------------------------------------------------------------------------------------------------
# Regression


def _masked_mean(values, mask):
    values = jnp.asarray(values, jnp.float32)
    if mask is None:
        m = jnp.ones(values.shape, jnp.float32)
    else:
        m = jnp.broadcast_to(jnp.asarray(mask), values.shape).astype(jnp.float32)
    count = m.sum()
    total = jnp.sum(jnp.where(m > 0, values, 0.0) * m)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), jnp.nan)


def mae(pred, target, mask=None):
    """Mean absolute error over unmasked entries. ``pred, target, mask [...]``; NaN when nothing is unmasked."""
    return _masked_mean(jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)), mask)


def rmse(pred, target, mask=None):
    """Root mean squared error over unmasked entries. ``pred, target, mask [...]``; NaN when nothing is unmasked.

    Across batches, accumulate squared errors with ``MetricAccumulator.add(name, se, mask, kind="rmse")``.
    """
    return jnp.sqrt(_masked_mean(jnp.square(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)), mask))


# ----------------------------------------------------------------------------------------------------------
# Host-side accumulation


def _host(x):
    return np.asarray(jax.device_get(x))


class MetricAccumulator:
    """Accumulates metrics across evaluation batches on the host (numpy, float64 sums).

    Two modes:

    * **mean** (per-example metrics, e.g. ``ranking_metrics`` output, per-example losses): ``add(name, values,
      mask)`` adds ``sum(values * mask)`` and ``sum(mask)``; `result` returns ``sum / count``. ``mask`` marks real
      examples (padded final batches, examples of another domain). ``kind="rmse"`` takes squared errors and
      returns ``sqrt(sum / count)``.
    * **concatenate** (set statistics: AUC, GAUC): ``collect(name, fn, mask, **arrays)`` keeps the unmasked rows
      of every array; `result` calls ``fn(**concatenated_arrays)`` once. ``add_auc`` / ``add_gauc`` wrap it.

    A name with no unmasked example yields NaN. Values are fetched with ``jax.device_get`` (process-local data;
    combine across hosts before adding in multi-host runs).
    """

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._counts: dict[str, float] = {}
        self._kinds: dict[str, str] = {}
        self._collect_fns: dict[str, Callable] = {}
        self._collected: dict[str, dict[str, list]] = {}

    def reset(self) -> None:
        self.__init__()

    def add(self, name: str, values, mask=None, kind: str = "mean") -> None:
        """Adds per-example ``values [...]`` (a scalar counts as one example) where ``mask`` is true.

        ``mask`` has the shape of ``values`` or of its leading dimensions (``[B]`` for ``[B, K]`` values).
        """
        if kind not in ("mean", "rmse"):
            raise ValueError(f"MetricAccumulator.add: kind must be 'mean' or 'rmse', got {kind!r}")
        if self._kinds.setdefault(name, kind) != kind:
            raise ValueError(f"MetricAccumulator.add: {name!r} was added as {self._kinds[name]!r}, now {kind!r}")
        v = _host(values).astype(np.float64)
        if mask is None:
            m = np.ones(v.shape, np.float64)
        else:
            m = _host(mask).astype(np.float64)
            m = np.broadcast_to(m.reshape(m.shape + (1,) * (v.ndim - m.ndim)), v.shape)  # [B] mask, [B, K] values
        self._sums[name] = self._sums.get(name, 0.0) + float(np.sum(np.where(m > 0, v, 0.0) * m))
        self._counts[name] = self._counts.get(name, 0.0) + float(np.sum(m))

    def update(self, metrics: Mapping[str, object], mask=None, prefix: str = "") -> None:
        """``add`` for every ``(name, values)`` of a dict, with one shared ``mask``; names get ``prefix``."""
        for name, values in metrics.items():
            self.add(prefix + name, values, mask)

    def collect(self, name: str, fn: Callable, mask=None, **arrays) -> None:
        """Keeps ``arrays`` (each ``[B, ...]``) rows where ``mask [B]`` is true; `result` computes ``fn(**all)``."""
        if self._collect_fns.setdefault(name, fn) is not fn:
            raise ValueError(f"MetricAccumulator.collect: {name!r} was collected with another function")
        store = self._collected.setdefault(name, {k: [] for k in arrays})
        if set(store) != set(arrays):
            raise ValueError(
                f"MetricAccumulator.collect: {name!r} got arrays {sorted(arrays)}, expected {sorted(store)}"
            )
        host = {k: _host(a) for k, a in arrays.items()}
        keep = None if mask is None else _host(mask).astype(bool).reshape(-1)
        for k, a in host.items():
            a = a.reshape(1) if a.ndim == 0 else a
            store[k].append(a if keep is None else a[keep])

    def add_auc(self, name: str, scores, labels, weights=None, mask=None) -> None:
        """Collects ``scores, labels [B]`` (and ``weights``) for an exact `auc` at the end."""
        arrays = {"scores": scores, "labels": labels}
        if weights is not None:
            arrays["weights"] = weights
        self.collect(name, _auc_host, mask, **arrays)

    def add_gauc(self, name: str, scores, labels, user_ids, weights=None, mask=None) -> None:
        """Collects ``scores, labels, user_ids [B]`` (and ``weights``) for `gauc` at the end."""
        arrays = {"scores": scores, "labels": labels, "user_ids": user_ids}
        if weights is not None:
            arrays["weights"] = weights
        self.collect(name, _gauc_host, mask, **arrays)

    @property
    def counts(self) -> dict[str, float]:
        """Number of (unmasked) examples per name (rows for collected names)."""
        out = dict(self._counts)
        for name, store in self._collected.items():
            first = next(iter(store.values()), [])
            out[name] = float(sum(len(a) for a in first))
        return out

    def result(self) -> dict[str, float]:
        """Means (``sqrt`` of means for ``kind="rmse"``) and collected statistics as Python floats."""
        out = {}
        for name, total in self._sums.items():
            c = self._counts[name]
            mean = total / c if c > 0 else math.nan
            out[name] = math.sqrt(mean) if self._kinds[name] == "rmse" and c > 0 else mean
        for name, store in self._collected.items():
            arrays = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in store.items()}
            out[name] = float(self._collect_fns[name](**arrays))
        return out


_auc_jit = jax.jit(auc)
_gauc_jit = jax.jit(gauc)


def _auc_host(scores, labels, weights=None):
    return _auc_jit(scores, labels, weights) if len(scores) else math.nan


def _gauc_host(scores, labels, user_ids, weights=None):
    return _gauc_jit(scores, labels, user_ids, weights) if len(scores) else math.nan
