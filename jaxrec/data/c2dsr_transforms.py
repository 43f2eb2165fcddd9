"""C2DSR's host-side preprocessing (official code ``cjx96/C2DSR`` @ 89d4b926), on the catalogue's sequence records.

Spec: ../shared/papers/c2dsr.md §2-§4. Everything here is numpy, run once at start-up (training table, item
graphs) or per evaluation batch (``map_batch``, like :mod:`jaxrec.data.pipeline`'s transforms).

Id space
--------
C2DSR's own layout (not jaxrec's): X items ``0 .. NX-1``, Y items ``NX .. NX+NY-1``, padding
``PAD = NX + NY``, tables with ``V = NX + NY + 1`` rows. A catalogue record with global ids ``1..NX+NY``
(domain 0 = X first, domain 1 = Y after it; see :func:`jaxrec.data.catalog.info` ``domain_item_ranges``) maps
by ``c2dsr_id = global_id - 1``. Heads use *domain-local* ids: X target = id, Y target = id - NX; the extra
class ``NX`` (resp. ``NY``) is the "PAD" logit.

Training example (one per record; ``s = concat(items, [target])`` in C2DSR ids, the last ``T = max_len``
items kept; C2DSR's position table has ``T`` rows with row 0 = padding, so at most ``T - 1`` inputs), all
``[T]`` int32, left-padded (ids with PAD, positions with 0, targets with NX/NY, masks with 0):

  ``seq, x_seq, y_seq``   mixed stream and the two single-domain streams (not compacted: the X stream holds
                          PAD where the mixed stream has Y items);
  ``pos, x_pos, y_pos``   1-based positions (mixed: t; X / Y: running count of that domain's items);
  ``share_x_tgt, share_y_tgt, share_x_mask, share_y_mask``  next mixed item as an X- or Y-local target
                          (the other head gets the PAD class with mask 0);
  ``x_tgt, y_tgt, x_mask, y_mask``  next item of the same domain (scan from the right; the last X position
                          targets the final item if it is X, otherwise that X item is *deleted* from the X
                          stream: ``x_seq = PAD, x_pos = 0``, mask 0; likewise Y);
  ``corru_x, corru_y``    ``seq`` with every Y (resp. X) item replaced by a uniform random Y (resp. X) item;
                          drawn from ``default_rng([seed, user_id])``, so fixed for the whole run;
  ``keep`` bool scalar    False when the official loader would skip the line (no X target or no Y target,
                          "pass sequence x/y"); such rows carry all-zero masks;
  ``user_id``.

Quirks reproduced (each a flag where one exists): the Y "final item" test is ``s_n > NX`` (strict; item
``NX`` is treated as not-Y, ``y_final_strict=True``); corruption and evaluation negatives are drawn once;
evaluation negatives are drawn *with replacement* from the target domain, rejecting only the ground truth
(history items may be drawn).

Evaluation example (``history`` = the record's items, last ``T - 1`` kept; ``target``): the streams and
positions as above without any deletion; ``x_last, y_last`` = index in ``[0, T)`` of the last non-PAD slot of
each stream (``T - 1`` when the stream is empty, which is the official ``-1`` offset); ``is_y`` = target is a
Y item (``>= NX``); ``gt`` domain-local target; ``negatives [N]`` domain-local, 999 in C2DSR;
``history`` ``[T]`` domain-local ids of the history items of the target's domain, ``-1`` elsewhere (for the
optional history exclusion of full ranking); ``target_domain``, ``user_id``.

Graphs (§4): ``A`` counts every consecutive transition ``prev -> cur`` of the (full, untruncated) training
sequences, ``A_s`` the consecutive transitions *within* each domain's subsequence (one matrix for both
domains); duplicates summed, no symmetrisation or self-loops; row-normalised ``Â = D^-1 A``. Returned as
edge lists in :mod:`jaxrec.kernels.graph`'s convention (``receivers = prev``, ``senders = cur``, so
``spmm(senders, receivers, w, E) = Â @ E``).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Iterable, Sequence

import grain
import numpy as np

from jaxrec.data.errors import DataError
from jaxrec.kernels.graph import transition_edges

__all__ = [
    "TRAIN_KEYS",
    "EVAL_KEYS",
    "to_c2dsr_ids",
    "record_sequence",
    "train_example",
    "eval_example",
    "eval_negatives",
    "C2DSRTrainTransform",
    "C2DSRTrainTable",
    "C2DSRResampledTrainTransform",
    "C2DSRKeptTrainTransform",
    "KeptRecords",
    "C2DSREvalTransform",
    "build_train_table",
    "build_graphs",
    "row_normalise",
]

TRAIN_KEYS = ("seq", "x_seq", "y_seq", "pos", "x_pos", "y_pos", "share_x_tgt", "share_y_tgt", "x_tgt", "y_tgt",
              "share_x_mask", "share_y_mask", "x_mask", "y_mask", "corru_x", "corru_y")
EVAL_KEYS = ("seq", "x_seq", "y_seq", "pos", "x_pos", "y_pos")


def to_c2dsr_ids(global_ids) -> np.ndarray:
    """Catalogue ids ``1..NX+NY`` (X first) -> C2DSR ids ``0..NX+NY-1``."""
    return np.asarray(global_ids, np.int64) - 1


def record_sequence(rec: dict) -> np.ndarray:
    """The record's full chronological sequence ``concat(items, [target])`` in C2DSR ids, int64."""
    return to_c2dsr_ids(np.append(np.asarray(rec["items"], np.int64), int(rec["target"])))


def _check_ids(s: np.ndarray, num_x: int, num_y: int, where: str) -> None:
    if s.size and (s.min() < 0 or s.max() >= num_x + num_y):
        raise DataError(where, "item id outside the two domains", field="items",
                        expected=f"catalogue ids 1..{num_x + num_y}", got=(int(s.min()) + 1, int(s.max()) + 1))


def _streams(d: np.ndarray, num_x: int, num_y: int):
    """Mixed inputs ``d [L]`` -> (is_x, x_seq, y_seq, pos, x_pos, y_pos), unpadded, int64."""
    pad = num_x + num_y
    is_x = d < num_x
    length = d.shape[0]
    pos = np.arange(1, length + 1, dtype=np.int64)
    x_seq = np.where(is_x, d, pad)
    y_seq = np.where(is_x, pad, d)
    x_pos = np.cumsum(is_x) * is_x
    y_pos = np.cumsum(~is_x) * ~is_x
    return is_x, x_seq, y_seq, pos, x_pos.astype(np.int64), y_pos.astype(np.int64)


def _left_pad(a: np.ndarray, width: int, fill) -> np.ndarray:
    out = np.full((width,), fill, np.int64)
    if a.shape[0]:
        out[width - a.shape[0]:] = a
    return out


def train_example(s, num_x: int, num_y: int, max_len: int, rng: np.random.Generator,
                  y_final_strict: bool = True) -> dict | None:
    """The official training preprocessing of one chronological line ``s`` (C2DSR ids).

    Returns a dict of ``[max_len]`` int64 arrays (keys :data:`TRAIN_KEYS`), or ``None`` when the line is
    skipped (fewer than 2 items, or no X target or no Y target). Only the last ``max_len`` items of ``s`` are
    used (the official loader has no truncation: its data are pre-cut to <= T items).
    """
    s = np.asarray(s, np.int64)[-max_len:]
    if s.shape[0] < 2:
        return None
    pad = num_x + num_y
    d, g = s[:-1], s[1:]
    if (d < num_x).all() or (d >= num_x).all():
        return None  # a stream without inputs has no target: "pass sequence x/y" (shortcut, same result)
    length = d.shape[0]
    is_x, x_seq, y_seq, pos, x_pos, y_pos = _streams(d, num_x, num_y)
    corru_x = np.where(is_x, d, rng.integers(num_x, num_x + num_y, size=length))
    corru_y = np.where(is_x, rng.integers(0, num_x, size=length), d)

    gx = g < num_x
    share_x_tgt = np.where(gx, g, num_x)
    share_y_tgt = np.where(gx, num_y, g - num_x)
    share_x_mask, share_y_mask = gx.astype(np.int64), (~gx).astype(np.int64)

    final = int(s[-1])
    final_is_x = final < num_x
    final_is_y = final > num_x if y_final_strict else final >= num_x  # official: `ground[-1] > source_item_num`

    def single(stream, stream_pos, offset, n_classes, final_in_domain):
        tgt = np.full((length,), n_classes, np.int64)
        mask = np.zeros((length,), np.int64)
        now = -1
        for i in range(length - 1, -1, -1):  # scan from the right, as the official loop
            if stream_pos[i]:
                if now == -1:
                    now = int(stream[i]) - offset
                    if final_in_domain:
                        tgt[i] = final - offset
                        mask[i] = 1
                    else:  # delete the last item of this stream: it has no same-domain successor
                        stream[i] = pad
                        stream_pos[i] = 0
                else:
                    tgt[i] = now
                    mask[i] = 1
                    now = int(stream[i]) - offset
        return tgt, mask

    x_tgt, x_mask = single(x_seq, x_pos, 0, num_x, final_is_x)
    if not x_mask.any():
        return None  # "pass sequence x"
    y_tgt, y_mask = single(y_seq, y_pos, num_x, num_y, final_is_y)
    if not y_mask.any():
        return None  # "pass sequence y"

    T = max_len
    return {
        "seq": _left_pad(d, T, pad), "x_seq": _left_pad(x_seq, T, pad), "y_seq": _left_pad(y_seq, T, pad),
        "pos": _left_pad(pos, T, 0), "x_pos": _left_pad(x_pos, T, 0), "y_pos": _left_pad(y_pos, T, 0),
        "share_x_tgt": _left_pad(share_x_tgt, T, num_x), "share_y_tgt": _left_pad(share_y_tgt, T, num_y),
        "x_tgt": _left_pad(x_tgt, T, num_x), "y_tgt": _left_pad(y_tgt, T, num_y),
        "share_x_mask": _left_pad(share_x_mask, T, 0), "share_y_mask": _left_pad(share_y_mask, T, 0),
        "x_mask": _left_pad(x_mask, T, 0), "y_mask": _left_pad(y_mask, T, 0),
        "corru_x": _left_pad(corru_x, T, pad), "corru_y": _left_pad(corru_y, T, pad),
    }


def eval_negatives(rng: np.random.Generator, gt: int, domain_size: int, num_negatives: int) -> np.ndarray:
    """Official sampler: ``num_negatives`` uniform draws *with replacement* over ``0..domain_size-1`` other
    than ``gt`` (rejection of the ground truth only == uniform over the other ``domain_size - 1`` ids)."""
    if domain_size < 2:
        raise DataError("C2DSREvalTransform", "a domain needs >= 2 items to draw negatives", field="num_items",
                        expected=">= 2", got=domain_size)
    draws = rng.integers(0, domain_size - 1, size=num_negatives)
    return draws + (draws >= gt)


def eval_example(history, target: int, num_x: int, num_y: int, max_len: int) -> dict:
    """Official evaluation preprocessing (no negatives): history ``[n]`` and target in C2DSR ids."""
    pad = num_x + num_y
    T = max_len
    h = np.asarray(history, np.int64)[-(T - 1):] if T > 1 else np.zeros((0,), np.int64)
    _, x_seq, y_seq, pos, x_pos, y_pos = _streams(h, num_x, num_y)
    out = {"seq": _left_pad(h, T, pad), "x_seq": _left_pad(x_seq, T, pad), "y_seq": _left_pad(y_seq, T, pad),
           "pos": _left_pad(pos, T, 0), "x_pos": _left_pad(x_pos, T, 0), "y_pos": _left_pad(y_pos, T, 0)}
    for name, stream in (("x_last", out["x_seq"]), ("y_last", out["y_seq"])):
        real = np.nonzero(stream != pad)[0]
        out[name] = int(real[-1]) if real.size else T - 1  # official: negative offset, -1 when none
    is_y = int(target) >= num_x
    out["is_y"] = is_y
    out["gt"] = int(target) - num_x if is_y else int(target)
    own = (h >= num_x) if is_y else (h < num_x)
    local = np.where(own, h - (num_x if is_y else 0), -1)
    out["history"] = _left_pad(local, T, -1)
    return out


def _stack(rows: Sequence[dict], keys, width: int, fills: dict) -> dict:
    out = {k: np.full((len(rows), width), fills[k], np.int32) for k in keys}
    for b, r in enumerate(rows):
        if r is None:
            continue
        for k in keys:
            out[k][b] = r[k]
    return out


def train_fills(num_x: int, num_y: int) -> dict:
    """The padding value of every training key (:data:`TRAIN_KEYS`): PAD ids, position 0, the PAD class as
    target, mask 0."""
    pad = num_x + num_y
    return {"seq": pad, "x_seq": pad, "y_seq": pad, "pos": 0, "x_pos": 0, "y_pos": 0,
            "share_x_tgt": num_x, "share_y_tgt": num_y, "x_tgt": num_x, "y_tgt": num_y,
            "share_x_mask": 0, "share_y_mask": 0, "x_mask": 0, "y_mask": 0, "corru_x": pad, "corru_y": pad}


@dataclasses.dataclass(frozen=True)
class C2DSRTrainTransform(grain.transforms.Map):
    """Catalogue ``train`` records -> C2DSR training batches (keys :data:`TRAIN_KEYS` ``[B, T]`` int32,
    ``keep [B]`` bool, ``user_id [B]`` int32). Records the official loader skips become ``keep=False`` rows
    (padding, all masks 0). Corruption is drawn from ``default_rng([seed, user_id])``: fixed per record."""

    num_x: int
    num_y: int
    max_len: int
    seed: int = 2040
    y_final_strict: bool = True

    def example(self, rec: dict) -> dict | None:
        s = record_sequence(rec)
        _check_ids(s, self.num_x, self.num_y, "C2DSRTrainTransform")
        rng = np.random.default_rng([int(self.seed), int(rec["user_id"])])
        return train_example(s, self.num_x, self.num_y, self.max_len, rng, self.y_final_strict)

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        rows = [self.example(r) for r in records]
        out = _stack(rows, TRAIN_KEYS, self.max_len, train_fills(self.num_x, self.num_y))
        out["keep"] = np.array([r is not None for r in rows], bool)
        out["user_id"] = np.array([int(r["user_id"]) for r in records], np.int32)
        return out


@dataclasses.dataclass(frozen=True)
class C2DSRTrainTable:
    """Every kept training example, precomputed: ``arrays[key] [K, T]`` int32 (plus ``user_id [K]``).

    ``row_of_user``: user id -> row used for that record by :class:`C2DSRResampledTrainTransform` (the
    ``drop_policy="resample"`` stand-in from before the engine's ``train_source`` hook): kept
    records map to their own row; records the official loader skips are spread round-robin over the kept
    rows (in source order), so within one pass over the full source each kept example appears
    ``1 + floor or ceil(skipped / kept)`` times.
    """

    arrays: dict
    row_of_user: dict
    num_records: int
    num_kept: int
    sequences: list  # full C2DSR-id sequences of every record (for the graphs), in source order
    kept_flags: np.ndarray  # bool [num_records]


def build_train_table(records: Iterable[dict], num_x: int, num_y: int, max_len: int, seed: int = 2040,
                      y_final_strict: bool = True) -> C2DSRTrainTable:
    """Preprocess every training record once (the official start-up pass). User ids must be unique."""
    tf = C2DSRTrainTransform(num_x, num_y, max_len, seed, y_final_strict)
    rows, users, seqs, kept = [], [], [], []
    for rec in records:
        seqs.append(record_sequence(rec))
        ex = tf.example(rec)
        users.append(int(rec["user_id"]))
        kept.append(ex is not None)
        if ex is not None:
            rows.append(ex)
    if not rows:
        raise DataError("C2DSR training data", "every training line is skipped (no X or no Y target)",
                        expected="some lines with items of both domains")
    if len(set(users)) != len(users):
        raise DataError("C2DSR training data", "user ids repeat across training records", field="user_id",
                        expected="one training record per user id (or task.drop_policy='mask')")
    arrays = _stack(rows, TRAIN_KEYS, max_len, train_fills(num_x, num_y))
    kept_flags = np.array(kept, bool)
    kept_users = np.array(users, np.int64)[kept_flags]
    arrays["user_id"] = kept_users.astype(np.int32)
    row_of_user = {}
    k = j = 0
    for u, f in zip(users, kept):
        if f:
            row_of_user[u] = k
            k += 1
        else:
            row_of_user[u] = j % len(rows)
            j += 1
    return C2DSRTrainTable(arrays, row_of_user, len(users), len(rows), seqs, kept_flags)


class KeptRecords:
    """Random-access view of the ``train`` split holding only the records the official loader keeps
    (``table.kept_flags``, in source order), padded to a multiple of ``batch_size`` as the official loader pads
    its last batch (``N mod B != 0``: it appends already-seen examples; here a fixed random subset of the kept
    records, drawn with ``default_rng(seed)``). ``len = ceil(kept / B) * B``, so the engine's epoch is the
    official epoch of ``ceil(kept / B)`` steps. ``split`` must be the split the table was built from (same
    length and order; :class:`C2DSRKeptTrainTransform` checks every record's user id)."""

    def __init__(self, split, table: "C2DSRTrainTable", batch_size: int, seed: int = 2040):
        if len(split) != table.num_records:
            raise DataError("KeptRecords", "the train split differs from the one the C2DSR table was built from",
                            field="len", expected=table.num_records, got=len(split))
        self.split = split
        kept = np.nonzero(table.kept_flags)[0]
        b = max(int(batch_size), 1)
        extra = (-len(kept)) % b
        rng = np.random.default_rng([int(seed), 0x6B6570])
        fill = rng.choice(len(kept), size=extra, replace=extra > len(kept))
        self.indices = np.concatenate([kept, kept[np.sort(fill)]]).astype(np.int64)
        self.num_kept = len(kept)
        # same order as the table's source: spot-check user ids at up to 64 evenly spaced kept records
        probe = np.unique(np.linspace(0, len(kept) - 1, min(64, len(kept))).astype(np.int64))
        got = np.array([int(r["user_id"]) for r in self.__getitems__(probe)], np.int64)
        want = np.asarray(table.arrays["user_id"], np.int64)[probe]
        if not np.array_equal(got, want):
            raise DataError("KeptRecords", "the train split's record order differs from the C2DSR table's",
                            field="user_id", expected=want[:4].tolist(), got=got[:4].tolist())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.split[int(self.indices[i])]

    def __getitems__(self, idx):
        rows = [int(self.indices[i]) for i in idx]
        getitems = getattr(self.split, "__getitems__", None)
        return list(getitems(rows)) if getitems is not None else [self.split[r] for r in rows]


class C2DSRKeptTrainTransform(grain.transforms.Map):
    """Training batches of kept records (:class:`KeptRecords`) from the precomputed :class:`C2DSRTrainTable`:
    each record's own preprocessed row, looked up by user id (identical to :class:`C2DSRTrainTransform` on
    that record). A record the official loader skips is an error (``keep`` is all True)."""

    def __init__(self, table: "C2DSRTrainTable"):
        self.table = table
        self.row_of_user = {int(u): i for i, u in enumerate(table.arrays["user_id"])}

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        try:
            rows = np.array([self.row_of_user[int(r["user_id"])] for r in records], np.int64)
        except KeyError as e:
            raise DataError("C2DSRKeptTrainTransform", "record skipped by the official loader (or not in the "
                            "precomputed training table)", field="user_id", got=e.args[0]) from None
        out = {k: v[rows] for k, v in self.table.arrays.items()}
        out["keep"] = np.ones((len(records),), bool)
        return out


class C2DSRResampledTrainTransform(grain.transforms.Map):
    """Training batches from a :class:`C2DSRTrainTable`: each incoming record is replaced by its row
    (``row_of_user``), so every batch holds ``B`` kept examples (``keep`` all True). This stands in for the
    official loader's dropping of skipped lines under an engine that iterates over the full source."""

    def __init__(self, table: C2DSRTrainTable):
        self.table = table

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        try:
            rows = np.array([self.table.row_of_user[int(r["user_id"])] for r in records], np.int64)
        except KeyError as e:
            raise DataError("C2DSRResampledTrainTransform", "record not in the precomputed training table",
                            field="user_id", got=e.args[0]) from None
        out = {k: v[rows] for k, v in self.table.arrays.items()}
        out["keep"] = np.ones((len(records),), bool)
        return out


@dataclasses.dataclass(frozen=True)
class C2DSREvalTransform(grain.transforms.Map):
    """Catalogue ``valid``/``test`` records -> C2DSR evaluation batches (see the module docstring).

    Negatives: ``num_negatives`` per example from ``default_rng([seed, crc32(split), user_id])``: fixed for
    the run (the official code draws them once at start-up) and independent of batching.
    """

    num_x: int
    num_y: int
    max_len: int
    num_negatives: int = 999
    seed: int = 2040
    split: str = "valid"

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        B, T, N = len(records), self.max_len, self.num_negatives
        pad = self.num_x + self.num_y
        fills = {"seq": pad, "x_seq": pad, "y_seq": pad, "pos": 0, "x_pos": 0, "y_pos": 0, "history": -1}
        rows = []
        for r in records:
            hist = to_c2dsr_ids(r["items"])
            target = int(r["target"]) - 1
            _check_ids(np.append(hist, target), self.num_x, self.num_y, "C2DSREvalTransform")
            rows.append(eval_example(hist, target, self.num_x, self.num_y, T))
        out = _stack(rows, EVAL_KEYS + ("history",), T, fills)
        for k in ("x_last", "y_last", "gt"):
            out[k] = np.array([r[k] for r in rows], np.int32)
        out["is_y"] = np.array([r["is_y"] for r in rows], bool)
        out["target_domain"] = out["is_y"].astype(np.int32)
        out["user_id"] = np.array([int(r["user_id"]) for r in records], np.int32)
        if N > 0:
            salt = zlib.crc32(self.split.encode())
            negs = np.zeros((B, N), np.int32)
            for b, (r, ex) in enumerate(zip(records, rows)):
                rng = np.random.default_rng([int(self.seed), salt, int(r["user_id"])])
                negs[b] = eval_negatives(rng, ex["gt"], self.num_y if ex["is_y"] else self.num_x, N)
            out["negatives"] = negs
        return out


def row_normalise(senders, receivers, counts, num_nodes: int):
    """``Â = D^-1 A`` as per-edge weights ``count / rowsum[receiver]`` (float32, numpy)."""
    deg = np.bincount(np.asarray(receivers, np.int64), weights=np.asarray(counts, np.float64), minlength=num_nodes)
    w = np.asarray(counts, np.float64) / np.where(deg > 0, deg, 1.0)[receivers]
    return w.astype(np.float32)


def build_graphs(sequences: Iterable[np.ndarray], num_x: int, num_y: int) -> dict:
    """C2DSR's two item graphs from chronological training lines (C2DSR ids, unpadded).

    Returns ``{"mixed": (senders, receivers, weight), "single": (...)}`` numpy edge lists (int32, int32,
    float32 row-normalised), ``V = NX + NY + 1`` nodes (PAD has no edge). ``mixed`` = every consecutive
    transition; ``single`` = consecutive transitions within the X subsequence and within the Y subsequence.
    """
    seqs = [np.asarray(s, np.int64) for s in sequences]
    v = num_x + num_y + 1
    split = []
    for s in seqs:
        split.append(s[s < num_x])
        split.append(s[s >= num_x])
    out = {}
    for name, lines in (("mixed", seqs), ("single", split)):
        snd, rcv, cnt = transition_edges(lines, v)
        out[name] = (snd.astype(np.int32), rcv.astype(np.int32), row_normalise(snd, rcv, cnt, v))
    return out
