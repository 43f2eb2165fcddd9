"""CDSRNP's host-side data: per-user training rows (overlapped *and* single-domain users), the episode sampler,
training episodes and the two evaluation views. Spec: ../shared/papers/cdsrnp.md (§3-§5, all [R]).

Everything builds on :mod:`jaxrec.data.c2dsr_transforms` (C2DSR ids: X ``0..NX-1``, Y ``NX..NX+NY-1``,
``PAD = NX+NY``; domain-local head targets).

Users and rows
--------------
Every record of the ``train`` split is one user. **Overlapped** = the user's full sequence (history + target)
holds items of both domains (derived from the ids, which equals the catalogue's ``overlap`` field by its
definition; derived so that the overlapped-ratio sweep below can turn users non-overlapped).

* overlapped users: C2DSR's official training example (:func:`c2dsr_transforms.train_example`, with its
  "delete the last X/Y item" and skip rules). Lines C2DSR skips (no X or no Y target after the T-cut) become
  zero-weight rows (``keep=False``) and never enter a support set.
* non-overlapped users (single-domain sequence, e.g. LLMCDSR's ``train_A`` / ``train_B``): the same tensors
  with the other stream empty: ``seq = x_seq`` (for a Food user), positions 1..L, ``share_x_tgt = x_tgt`` =
  next item (mask 1), the Y targets masked, ``y_seq`` all PAD. ``corru_*`` are set to ``seq`` (their infomax
  term is masked out in the loss: it needs both streams).

Extra per-row fields (all rows): ``overlap`` bool (both streams have inputs), ``last_item`` (C2DSR id of the
record's final item = the target of the last input position), ``x_last`` / ``y_last`` (index of the last
non-PAD slot of each stream after the deletion rule, ``T-1`` if the stream is empty, as C2DSR's evaluation),
``has_x`` / ``has_y`` (stream non-empty), ``keep``, ``user_id``.

Episodes
--------
The engine draws ``B = E * Nq`` shuffled records per step (``train.batch_size``); they are the **query set**
(all users: overlapped and non-overlapped), split in order into ``E`` episodes of ``Nq``. For each episode,
:class:`EpisodeSampler` draws a **support set** of ``Ns`` rows *only from overlapped kept users*, without
replacement, by default excluding the episode's own query users (``exclude_query``); its seed is
``(seed, user ids of the episode's queries)``, so an episode is reproducible and resumes identically, and a
reshuffled epoch gives new support sets. Batch keys: query rows unprefixed ``[E*Nq, ...]``, support rows
prefixed ``s_`` ``[E*Ns, ...]`` (flat, so that both shard over the data axis; the model reshapes).

Overlapped-ratio sweep (abxi/afk, spec §4.1): ``overlap_ratio = ρ < 1`` keeps both domains for a fraction ρ of
the overlapped training users (hash of ``(overlap_seed, user_id)``) and drops one domain (X or Y, at random
per user) from the others' training sequences; the graphs are built from these (modified) sequences.

Evaluation views
----------------
Every valid/test history of the prepared datasets holds both domains, so the non-overlapped group is
evaluated by **hiding** items from the history [R]: ``nonoverlap_keep = "target_domain"`` (default) keeps only
the items of the target's domain (a single-domain user predicting its next item in its domain);
``"other_domain"`` keeps only the other domain's items (cold-start bridging). A batch carries the C2DSR
evaluation keys of the full history (:class:`C2DSREvalTransform`, same negatives) and the hidden view's stream
keys prefixed ``nv_`` plus ``nv_valid`` (the hidden history is not empty).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from jaxrec.data import c2dsr_transforms as ct
from jaxrec.data.errors import DataError

__all__ = ["ROW_KEYS", "SUPPORT_PREFIX", "NV_PREFIX", "STREAM_KEYS", "is_overlapped", "single_domain_example",
           "row_extras", "apply_overlap_ratio", "CDSRNPTrainTable", "build_train_table", "EpisodeSampler",
           "CDSRNPTrainTransform", "CDSRNPEvalTransform", "hide_domain", "eval_support_rows"]

EXTRA_KEYS = ("last_item", "x_last", "y_last")
FLAG_KEYS = ("overlap", "has_x", "has_y", "keep")
ROW_KEYS = ct.TRAIN_KEYS + EXTRA_KEYS + FLAG_KEYS + ("user_id",)
STREAM_KEYS = ("seq", "x_seq", "y_seq", "pos", "x_pos", "y_pos", "x_last", "y_last")
SUPPORT_PREFIX = "s_"
NV_PREFIX = "nv_"


def is_overlapped(seq: np.ndarray, num_x: int) -> bool:
    """A full C2DSR-id sequence holds items of both domains."""
    seq = np.asarray(seq)
    return bool((seq < num_x).any() and (seq >= num_x).any())


def _pad_left(a, width, fill):
    out = np.full((width,), fill, np.int64)
    if len(a):
        out[width - len(a):] = a
    return out


def single_domain_example(s, num_x: int, num_y: int, max_len: int) -> dict | None:
    """Training tensors (keys ``c2dsr_transforms.TRAIN_KEYS``) of a single-domain line ``s`` (C2DSR ids);
    ``None`` when it has fewer than 2 items. Only the last ``max_len`` items are used (as C2DSR)."""
    s = np.asarray(s, np.int64)[-max_len:]
    if s.shape[0] < 2:
        return None
    pad = num_x + num_y
    d, g = s[:-1], s[1:]
    in_x = bool(d[0] < num_x)
    if ((s < num_x) != in_x).any():
        raise DataError("single_domain_example", "line holds items of both domains", field="items")
    n = d.shape[0]
    T = max_len
    pos = np.arange(1, n + 1)
    local = g - (0 if in_x else num_x)
    own, other = ("x", "y") if in_x else ("y", "x")
    n_own, n_other = (num_x, num_y) if in_x else (num_y, num_x)
    out = {"seq": _pad_left(d, T, pad), "pos": _pad_left(pos, T, 0),
           f"{own}_seq": _pad_left(d, T, pad), f"{own}_pos": _pad_left(pos, T, 0),
           f"{other}_seq": np.full((T,), pad, np.int64), f"{other}_pos": np.zeros((T,), np.int64),
           f"share_{own}_tgt": _pad_left(local, T, n_own), f"share_{own}_mask": _pad_left(np.ones(n), T, 0),
           f"share_{other}_tgt": np.full((T,), n_other, np.int64), f"share_{other}_mask": np.zeros((T,), np.int64),
           f"{own}_tgt": _pad_left(local, T, n_own), f"{own}_mask": _pad_left(np.ones(n), T, 0),
           f"{other}_tgt": np.full((T,), n_other, np.int64), f"{other}_mask": np.zeros((T,), np.int64),
           "corru_x": _pad_left(d, T, pad), "corru_y": _pad_left(d, T, pad)}
    return out


def row_extras(ex: dict, last_item: int, num_x: int, num_y: int) -> dict:
    """``last_item, x_last, y_last, has_x, has_y, overlap`` of one training example."""
    pad = num_x + num_y
    out = {"last_item": int(last_item)}
    for k in ("x", "y"):
        real = np.nonzero(ex[f"{k}_seq"] != pad)[0]
        out[f"{k}_last"] = int(real[-1]) if real.size else ex[f"{k}_seq"].shape[0] - 1
        out[f"has_{k}"] = bool(real.size)
    out["overlap"] = out["has_x"] and out["has_y"]
    return out


def apply_overlap_ratio(seqs: list, user_ids: Sequence[int], num_x: int, ratio: float, seed: int) -> list:
    """Keeps both domains for a fraction ``ratio`` of the overlapped users (by a hash of ``(seed, user)``) and
    drops one domain (X or Y, chosen per user) from the others' sequences."""
    if ratio >= 1.0:
        return list(seqs)
    out = []
    for s, u in zip(seqs, user_ids):
        if is_overlapped(s, num_x):
            r = np.random.default_rng([int(seed), int(u)])
            if r.random() >= ratio:
                keep_x = bool(r.random() < 0.5)
                s = s[(s < num_x) == keep_x]
        out.append(s)
    return out


@dataclasses.dataclass(frozen=True)
class CDSRNPTrainTable:
    """One row per training record (source order): ``arrays[key] [N, ...]`` (keys :data:`ROW_KEYS`).
    ``row_of_user`` user id -> row; ``support_rows`` rows eligible for a support set (overlapped, kept);
    ``sequences``: the (possibly ratio-modified) full sequences, for the graphs."""

    arrays: dict
    row_of_user: dict
    support_rows: np.ndarray
    sequences: list

    @property
    def num_rows(self) -> int:
        return int(self.arrays["keep"].shape[0])

    def take(self, rows, prefix: str = "") -> dict:
        rows = np.asarray(rows, np.int64)
        return {prefix + k: v[rows] for k, v in self.arrays.items()}


def build_train_table(records: Iterable[dict], num_x: int, num_y: int, max_len: int, seed: int = 2040,
                      y_final_strict: bool = True, overlap_ratio: float = 1.0,
                      overlap_seed: int = 0) -> CDSRNPTrainTable:
    records = list(records)
    users = [int(r["user_id"]) for r in records]
    if len(set(users)) != len(users):
        raise DataError("CDSRNP training data", "user ids repeat across training records", field="user_id")
    seqs = [ct.record_sequence(r) for r in records]
    for s in seqs:
        if s.size and (s.min() < 0 or s.max() >= num_x + num_y):
            raise DataError("CDSRNP training data", "item id outside the two domains", field="items")
    seqs = apply_overlap_ratio(seqs, users, num_x, overlap_ratio, overlap_seed)
    T, pad = max_len, num_x + num_y
    fills = dict(ct.train_fills(num_x, num_y), last_item=pad, x_last=T - 1, y_last=T - 1)
    n = len(records)
    arrays = {k: np.full((n, T), fills[k], np.int32) for k in ct.TRAIN_KEYS}
    for k in EXTRA_KEYS:
        arrays[k] = np.full((n,), fills[k], np.int32)
    for k in FLAG_KEYS:
        arrays[k] = np.zeros((n,), bool)
    arrays["user_id"] = np.asarray(users, np.int32)
    for i, (s, u) in enumerate(zip(seqs, users)):
        if is_overlapped(s[-max_len:], num_x):
            rng = np.random.default_rng([int(seed), int(u)])
            ex = ct.train_example(s, num_x, num_y, max_len, rng, y_final_strict)
        else:
            ex = single_domain_example(s, num_x, num_y, max_len)
        if ex is None:
            continue
        for k in ct.TRAIN_KEYS:
            arrays[k][i] = ex[k]
        extra = row_extras(ex, s[-1], num_x, num_y)
        for k in EXTRA_KEYS + ("overlap", "has_x", "has_y"):
            arrays[k][i] = extra[k]
        arrays["keep"][i] = True
    support = np.nonzero(arrays["keep"] & arrays["overlap"])[0]
    if support.size == 0:
        raise DataError("CDSRNP training data", "no overlapped user to draw support sets from",
                        expected="training lines with items of both domains")
    return CDSRNPTrainTable(arrays, dict(zip(users, range(n))), support, seqs)


class EpisodeSampler:
    """Draws support sets of ``support_size`` rows from ``pool`` (the overlapped users' rows), without
    replacement within a set, optionally excluding given rows (the episode's queries)."""

    def __init__(self, pool, support_size: int):
        self.pool = np.asarray(pool, np.int64)
        self.support_size = int(support_size)
        if self.support_size < 1:
            raise DataError("EpisodeSampler", "support size must be >= 1", field="support_size",
                            got=support_size)
        if self.pool.size < self.support_size:
            raise DataError("EpisodeSampler", "fewer overlapped users than the support size",
                            field="support_size", expected=f"<= {self.pool.size}", got=self.support_size)

    def sample(self, rng: np.random.Generator, exclude=None) -> np.ndarray:
        pool = self.pool
        if exclude is not None and len(exclude):
            allowed = pool[~np.isin(pool, np.asarray(exclude, np.int64))]
            if allowed.size >= self.support_size:
                pool = allowed
        return pool[rng.choice(pool.size, self.support_size, replace=False)]


class CDSRNPTrainTransform:
    """Engine records (``B = E * Nq``, shuffled) -> one training batch of ``E`` episodes (module docstring)."""

    def __init__(self, table: CDSRNPTrainTable, query_size: int, support_size: int, seed: int = 0,
                 exclude_query: bool = True):
        self.table = table
        self.query_size = int(query_size)
        self.sampler = EpisodeSampler(table.support_rows, support_size)
        self.seed = int(seed)
        self.exclude_query = bool(exclude_query)

    def map_batch(self, records: Sequence[dict]) -> dict:
        try:
            rows = np.array([self.table.row_of_user[int(r["user_id"])] for r in records], np.int64)
        except KeyError as e:
            raise DataError("CDSRNPTrainTransform", "record not in the training table", field="user_id",
                            got=e.args[0]) from None
        if rows.size % self.query_size:
            raise DataError("CDSRNPTrainTransform", "batch is not a whole number of episodes", field="batch_size",
                            expected=f"a multiple of query_size={self.query_size}", got=rows.size)
        support = []
        for q in rows.reshape(-1, self.query_size):
            users = self.table.arrays["user_id"][q].astype(np.int64)
            rng = np.random.default_rng([self.seed, *[int(u) for u in users]])
            support.append(self.sampler.sample(rng, q if self.exclude_query else None))
        out = self.table.take(rows)
        out.update(self.table.take(np.concatenate(support), SUPPORT_PREFIX))
        return out

    def map(self, rec: dict) -> dict:  # pragma: no cover -- episodes need whole batches
        raise DataError("CDSRNPTrainTransform", "episodes are built from whole batches (map_batch)")


def hide_domain(rec: dict, num_x: int, keep: str = "target_domain") -> dict:
    """The record with its history restricted to the target's domain (``keep="target_domain"``) or to the
    other domain (``"other_domain"``)."""
    items = np.asarray(rec["items"], np.int64)
    tgt_x = int(rec["target"]) - 1 < num_x
    item_x = items - 1 < num_x
    mask = item_x == tgt_x if keep == "target_domain" else item_x != tgt_x
    out = dict(rec)
    out["items"] = items[mask]
    return out


@dataclasses.dataclass(frozen=True)
class CDSRNPEvalTransform:
    """Valid/test records -> C2DSR evaluation keys (full history) + the hidden view (``nv_*``)."""

    num_x: int
    num_y: int
    max_len: int
    num_negatives: int = 999
    seed: int = 2040
    split: str = "valid"
    nonoverlap_keep: str = "target_domain"

    def map_batch(self, records: Sequence[dict]) -> dict:
        base = ct.C2DSREvalTransform(self.num_x, self.num_y, self.max_len, self.num_negatives, self.seed,
                                     self.split)
        out = base.map_batch(records)
        hidden = [hide_domain(r, self.num_x, self.nonoverlap_keep) for r in records]
        nv = ct.C2DSREvalTransform(self.num_x, self.num_y, self.max_len, 0, self.seed, self.split).map_batch(hidden)
        for k in STREAM_KEYS + ("history",):
            out[NV_PREFIX + k] = nv[k]
        out[NV_PREFIX + "valid"] = np.array([len(r["items"]) > 0 for r in hidden], bool)
        return out

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}


def eval_support_rows(table: CDSRNPTrainTable, support_size: int, seed: int) -> np.ndarray:
    """The fixed support set used at inference: ``support_size`` overlapped rows drawn once with ``seed``."""
    return EpisodeSampler(table.support_rows, support_size).sample(np.random.default_rng([int(seed), 0x5E7]))
