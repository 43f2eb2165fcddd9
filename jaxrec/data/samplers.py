"""Negative samplers for training (uniform, popularity with logQ) and fixed evaluation negatives.

Item ids are the catalogue's global ids ``1..num_items``; id 0 is padding and is never sampled. Randomness
comes only from an explicit ``numpy.random.Generator`` (or an int seed), so the same seed gives the same
negatives.

* :class:`UniformSampler`: uniform over ``1..num_items`` minus each user's positives (vectorised rejection
  sampling; users who own most of the catalogue are sampled from their complement directly).
* :class:`PopularitySampler`: ``p(i) ∝ count(i) ** alpha``; ``log_probs`` is the logQ correction term of
  sampled softmax (Yi et al., RecSys 2019).
* :func:`fixed_eval_negatives`: per-example negatives for sampled-metric evaluation (C2DSR ranks the target
  against 999 negatives, UniCDR against sampled negatives); they depend only on ``(seed, user_id)`` and the
  user's positives, never on batch composition or order.
* :func:`item_frequencies`, :func:`user_positives`: counts and per-user positive sets from a data source.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from jaxrec.data.errors import DataError

RngLike = np.random.Generator | int | None


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _as_item_array(items, num_items: int, where: str) -> np.ndarray:
    a = np.unique(np.asarray(items, dtype=np.int64).ravel())
    a = a[a != 0]  # padding
    if a.size and (a[0] < 1 or a[-1] > num_items):
        bad = a[0] if a[0] < 1 else a[-1]
        raise DataError(where, "item id out of range", field="positives", expected=f"ids in 1..{num_items}",
                        got=int(bad))
    return a


def _sample_excluding(rng: np.random.Generator, num_items: int, exclude: np.ndarray, n: int) -> np.ndarray:
    """``n`` distinct items of ``1..num_items`` minus sorted ``exclude``, uniformly, in random order.

    Draws ``n + len(exclude)`` distinct items (a uniformly random ordered subset), drops the excluded ones
    and keeps the first ``n``: a uniformly random ordered ``n``-subset of the allowed items.
    """
    allowed = num_items - exclude.size
    if n > allowed:
        raise DataError("fixed_eval_negatives", "not enough negatives", field="num_negatives",
                        expected=f"at most {allowed} (items {num_items} minus {exclude.size} positives)", got=n)
    if n == 0:
        return np.zeros(0, np.int64)
    cand = rng.choice(num_items, size=min(num_items, n + exclude.size), replace=False) + 1
    if exclude.size:  # membership by binary search in the sorted exclusions (np.isin is slow on small arrays)
        hit = exclude[np.minimum(np.searchsorted(exclude, cand), exclude.size - 1)] == cand
        cand = cand[~hit]
    return cand[:n].astype(np.int64)


def fixed_eval_negatives(user_ids, positives, num_items: int, num_negatives: int, seed: int) -> np.ndarray:
    """Per-example evaluation negatives, fixed regardless of batch order: int64 [B, num_negatives].

    Row ``b`` holds ``num_negatives`` distinct items of ``1..num_items`` that are not in ``positives[b]``,
    drawn from a generator seeded with ``(seed, user_ids[b])`` only. So the same user with the same positives
    gets the same negatives in any batch, at any position, on any process.

    Args:
      user_ids: int [B], non-negative.
      positives: per example, the items to exclude (typically history + target); a sequence of arrays
        or an int array [B, M] padded with 0.
      num_items: catalogue size V (items are 1..V).
      num_negatives: N, e.g. 999 (C2DSR) or 99.
      seed: evaluation seed; use a different one per split if the negatives should differ.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    if len(positives) != user_ids.size:
        raise DataError("fixed_eval_negatives", "positives and user_ids differ in length", field="positives",
                        expected=f"{user_ids.size} rows", got=len(positives))
    if (user_ids < 0).any():
        raise DataError("fixed_eval_negatives", "negative user id", field="user_ids", expected=">= 0",
                        got=int(user_ids.min()))
    out = np.zeros((user_ids.size, num_negatives), np.int64)
    for b, (u, pos) in enumerate(zip(user_ids.tolist(), positives)):
        rng = np.random.default_rng([int(seed), u])
        out[b] = _sample_excluding(rng, num_items, _as_item_array(pos, num_items, "fixed_eval_negatives"),
                                   num_negatives)
    return out


class UniformSampler:
    """Uniform negatives over ``1..num_items`` excluding each user's positives.

    Args:
      num_items: catalogue size V.
      user_positives: ``{user_id: items}`` or a sequence indexed by user id (0 padding ignored). Users not
        listed have no positives.
    """

    def __init__(self, num_items: int, user_positives: Mapping[int, Iterable[int]] | Sequence[Iterable[int]]):
        if num_items < 1:
            raise DataError("UniformSampler", "empty catalogue", field="num_items", expected=">= 1", got=num_items)
        self.num_items = int(num_items)
        pairs = user_positives.items() if isinstance(user_positives, Mapping) else enumerate(user_positives)
        users, items = [], []
        for u, pos in pairs:
            a = _as_item_array(pos, self.num_items, f"UniformSampler user {u}")
            users.append(np.full(a.size, int(u), np.int64))
            items.append(a)
        users = np.concatenate(users) if users else np.zeros(0, np.int64)
        items = np.concatenate(items) if items else np.zeros(0, np.int64)
        # Sorted membership keys user * (V + 1) + item: "is item i a positive of user u" is a searchsorted.
        self._keys = np.unique(users * (self.num_items + 1) + items)
        self._users, counts = np.unique(users, return_counts=True)
        self._counts = counts
        # Users owning more than half of the catalogue: sample from their complement instead of rejecting.
        self._dense = {int(u): None for u, c in zip(self._users, counts) if 2 * c > self.num_items}

    def num_positives(self, user_ids) -> np.ndarray:
        """Number of distinct positives of each user: int64, shape of ``user_ids``."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if self._users.size == 0:
            return np.zeros(user_ids.shape, np.int64)
        i = np.minimum(np.searchsorted(self._users, user_ids), self._users.size - 1)
        return np.where(self._users[i] == user_ids, self._counts[i], 0)

    def is_positive(self, user_ids, items) -> np.ndarray:
        """Bool array, broadcast of ``user_ids`` and ``items``: is ``item`` a positive of ``user``."""
        keys = np.asarray(user_ids, np.int64) * (self.num_items + 1) + np.asarray(items, np.int64)
        if self._keys.size == 0:
            return np.zeros(keys.shape, bool)
        i = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
        return self._keys[i] == keys

    def _complement(self, u: int) -> np.ndarray:
        if self._dense.get(u) is None:
            lo = np.searchsorted(self._keys, u * (self.num_items + 1))
            hi = np.searchsorted(self._keys, (u + 1) * (self.num_items + 1))
            pos = self._keys[lo:hi] - u * (self.num_items + 1)
            self._dense[u] = np.setdiff1d(np.arange(1, self.num_items + 1, dtype=np.int64), pos, assume_unique=True)
        return self._dense[u]

    def sample(self, user_ids, num_negatives: int, rng: RngLike = None) -> np.ndarray:
        """Negatives int64 [B, num_negatives], i.i.d. uniform over each user's non-positive items.

        Draws are with replacement (a row may repeat an item). Raises DataError for a user with no
        negative item at all.
        """
        rng = _rng(rng)
        user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        out = np.zeros((user_ids.size, num_negatives), np.int64)
        dense_rows = np.array([int(u) in self._dense for u in user_ids.tolist()], bool) if self._dense else \
            np.zeros(user_ids.size, bool)
        for b in np.flatnonzero(dense_rows):
            comp = self._complement(int(user_ids[b]))
            if comp.size == 0:
                raise DataError("UniformSampler", "user has every item as a positive", field="user_ids",
                                expected="a user with at least one negative item", got=int(user_ids[b]))
            out[b] = comp[rng.integers(0, comp.size, size=num_negatives)]
        sparse = np.flatnonzero(~dense_rows)
        if sparse.size:  # rejection: each user here has >= half the catalogue as negatives
            users = np.repeat(user_ids[sparse], num_negatives).reshape(sparse.size, num_negatives)
            cand = rng.integers(1, self.num_items + 1, size=users.shape, dtype=np.int64)
            bad = self.is_positive(users, cand)
            while bad.any():
                cand[bad] = rng.integers(1, self.num_items + 1, size=int(bad.sum()), dtype=np.int64)
                bad[bad] = self.is_positive(users[bad], cand[bad])
            out[sparse] = cand
        return out


class PopularitySampler:
    """Popularity-based negatives: ``p(i) = c_i ** alpha / sum_j c_j ** alpha`` over items 1..V.

    Args:
      item_counts: [V + 1] counts indexed by item id (index 0, the padding id, is ignored), e.g. from
        :func:`item_frequencies`.
      alpha: popularity exponent (1 = proportional to counts, 0 = uniform over items with ``count > 0``
        after smoothing; word2vec uses 0.75).
      smoothing: added to every count of items 1..V before the exponent, so unseen items get mass.

    Attributes:
      probs: float64 [V + 1], ``probs[0] == 0``, sums to 1.
      log_probs: float64 [V + 1], ``log(probs)`` (``-inf`` where the probability is 0): the logQ correction
        subtracted from sampled logits in sampled softmax.
    """

    def __init__(self, item_counts, alpha: float = 1.0, smoothing: float = 0.0):
        c = np.asarray(item_counts, dtype=np.float64).reshape(-1)
        if c.size < 2:
            raise DataError("PopularitySampler", "too few items", field="item_counts", expected="[V + 1] with V >= 1",
                            got=c.size)
        if (c < 0).any() or not np.isfinite(c).all():
            raise DataError("PopularitySampler", "bad counts", field="item_counts", expected="finite, >= 0")
        w = c.copy()
        w[0] = 0.0
        w[1:] += smoothing
        w[1:] = np.where(w[1:] > 0, w[1:] ** alpha, 0.0)
        total = w.sum()
        if total <= 0:
            raise DataError("PopularitySampler", "all counts are zero", field="item_counts",
                            expected="at least one positive count (or smoothing > 0)")
        self.num_items = c.size - 1
        self.alpha = float(alpha)
        self.probs = w / total
        with np.errstate(divide="ignore"):
            self.log_probs = np.log(self.probs)
        self._cdf = np.cumsum(self.probs)
        self._cdf[-1] = 1.0
        self._support = int((self.probs > 0).sum())

    def sample(self, shape, rng: RngLike = None, *, replace: bool = True) -> np.ndarray:
        """Items int64 of ``shape`` drawn from ``probs``.

        ``replace=True``: i.i.d. draws (inverse CDF). ``replace=False``: the items along the last axis are
        distinct (Gumbel top-k, i.e. sequential sampling without replacement); needs ``shape[-1]`` <= the
        number of items with non-zero probability. For sampled softmax without replacement, ``log_probs`` is
        the usual approximation of the log inclusion probability.
        """
        rng = _rng(rng)
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        if replace:
            u = rng.random(shape)
            # smallest i with cdf[i] > u; probs[0] == 0 so index 0 is never returned
            return np.minimum(np.searchsorted(self._cdf, u, side="right"), self.num_items).astype(np.int64)
        k = shape[-1] if shape else 1
        if k > self._support:
            raise DataError("PopularitySampler", "not enough items to sample without replacement",
                            field="shape", expected=f"last dim <= {self._support}", got=k)
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        out = np.empty((rows, k), np.int64)
        for r in range(rows):  # one [V] Gumbel vector per row keeps memory at O(V)
            g = self.log_probs[1:] - np.log(-np.log(rng.random(self.num_items)))
            top = np.argpartition(-g, k - 1)[:k]
            out[r] = top[np.argsort(-g[top])] + 1
        return out.reshape(shape)


def _records(source) -> Iterable[dict]:
    n = len(source)
    getitems = getattr(source, "__getitems__", None)
    step = 1024
    for lo in range(0, n, step):
        idx = list(range(lo, min(n, lo + step)))
        yield from (getitems(idx) if getitems is not None else (source[i] for i in idx))


def item_frequencies(source, num_items: int | None = None, *, fields: Sequence[str] = ("items", "target")) -> np.ndarray:
    """Interaction counts per item id: int64 [V + 1] (index 0, the padding id, is 0).

    Counts every id in ``fields`` of every record (for a ``train`` split of the sequence schema, the
    training interactions ``concat(items, [target])``). ``num_items`` defaults to the largest id seen.
    """
    parts = []
    for rec in _records(source):
        for f in fields:
            parts.append(np.asarray(rec[f], np.int64).reshape(-1))
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    ids = ids[ids != 0]
    if ids.size and ids.min() < 0:
        raise DataError("item_frequencies", "negative item id", field=fields[0], got=int(ids.min()))
    v = int(ids.max()) if ids.size else 0
    if num_items is None:
        num_items = v
    elif v > num_items:
        raise DataError("item_frequencies", "item id out of range", field=",".join(fields),
                        expected=f"ids in 1..{num_items}", got=v)
    return np.bincount(ids, minlength=num_items + 1).astype(np.int64)


def user_positives(source, *, fields: Sequence[str] = ("items", "target")) -> dict[int, np.ndarray]:
    """``{user_id: sorted distinct items}`` over ``fields`` of every record of ``source``."""
    acc: dict[int, list] = {}
    for rec in _records(source):
        u = int(rec["user_id"])
        acc.setdefault(u, []).extend(np.asarray(rec[f], np.int64).reshape(-1) for f in fields)
    out = {}
    for u, parts in acc.items():
        a = np.unique(np.concatenate(parts))
        out[u] = a[a != 0]
    return out
