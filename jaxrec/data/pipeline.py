"""grain input pipelines over random-access sources, for sequential recommendation.

Sources are TFDS data sources (``catalog.load(name, split)``) or anything with ``__len__`` and
``__getitem__`` (optionally ``__getitems__``) returning records of the catalogue's sequence schema.

Training::

    src = catalog.load("kuairand_embedded", "train")
    it = make_train_iterator(src, SeqTrainTransform(max_len=50), batch_size=256, seed=0,
                             shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = next(it)          # {"input_ids" [B, L] int32, "target_ids" [B, L] int32, "mask" [B, L] bool, ...}
    state = it.get_state()    # JSON-able dict; save it with the checkpoint
    it.set_state(state)       # (on a fresh iterator) resume: the next batch is the one that would have come

Evaluation::

    neg = fixed_negatives_fn(num_items, 999, seed=1)
    for batch in make_eval_batches(catalog.load(name, "test"), SeqEvalTransform(50, 999, neg), 512):
        ...  # every example exactly once; padded rows have batch["valid"] == False

Determinism and sharding: process ``shard_index`` of ``shard_count`` owns the fixed examples
``shard_index, shard_index + shard_count, ...`` of the source and reads only those. Each epoch is a fresh
permutation of the shard (seeded by ``(seed, shard_index, epoch)``), cut to ``steps_per_epoch * batch_size``
examples, where ``steps_per_epoch = (len(source) // shard_count) // batch_size`` is the same on every process
(so collectives line up); which few examples are cut differs from epoch to epoch. Shards are disjoint and
together cover the source. Batch ``k`` depends only on the seed, the sharding, the batch size and ``k``:
never on threads, timing, caching, or where a run was resumed.

Design: the grain datasets here are batch-level ``grain.MapDataset`` s (element ``k`` = batch ``k``; each
reads its records with one ``__getitems__`` call and transforms them in one ``map_batch`` call), turned
into iterators with ``to_iter_dataset``; grain's iterator state is just the next batch index. A per-element
grain pipeline (``shuffle().map().batch()``) was 3-5x slower here, its per-element bookkeeping costing more
than the transform itself.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
from typing import Any, Callable, Sequence

import grain
import numpy as np

from jaxrec.data import samplers
from jaxrec.data.errors import DataError

PAD_ID = 0
# per-step side features of the sequence schema: history key -> key of the target's value
SIDE_KEYS = {"domains": "target_domain", "tabs": "target_tab", "ratings": "target_rating"}


def _check_max_len(max_len: int) -> int:
    if int(max_len) < 1:
        raise DataError("pipeline", "bad max_len", field="max_len", expected=">= 1", got=max_len)
    return int(max_len)


def _target_key(k: str) -> str:
    return SIDE_KEYS.get(k, "target_" + k)


def _squeeze(batch: dict) -> dict:
    return {k: v[0] for k, v in batch.items()}


def stack_examples(examples: Sequence[dict]) -> dict:
    """Stack example dicts of arrays into a batch dict (leading dimension len(examples))."""
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def apply_batch(transform, records: Sequence[dict]) -> dict:
    """``transform.map_batch(records)`` where available, else the stacked per-record transform."""
    if hasattr(transform, "map_batch"):
        return transform.map_batch(records)
    f = transform.map if isinstance(transform, grain.transforms.Map) else transform
    return stack_examples([f(r) for r in records])


@dataclasses.dataclass(frozen=True)
class SeqTrainTransform(grain.transforms.Map):
    """Next-item training example (SASRec style) from a ``train`` record.

    With ``seq = concat(items, [target])`` (length n), the inputs are ``seq[:-1]`` and the targets
    ``seq[1:]``; both keep the last ``max_len`` steps and are left-padded with 0.

    Output (L = max_len):
      ``input_ids`` int32 [L], ``target_ids`` int32 [L], ``mask`` bool [L] (True where a target exists),
      ``user_id`` int32; for each side key (``domains``, ``tabs``) present in the record: the key int32 [L]
      aligned with ``input_ids`` and ``target_<key>`` int32 [L] aligned with ``target_ids``
      (``target_domains``, ``target_tabs``).
    """

    max_len: int
    side_keys: tuple[str, ...] = ("domains",)

    def __post_init__(self):
        _check_max_len(self.max_len)

    def map(self, rec: dict) -> dict:
        return _squeeze(self.map_batch([rec]))

    def map_batch(self, records: Sequence[dict]) -> dict:
        """The transform of each record, stacked: arrays [B, L] (``user_id`` [B])."""
        B, L = len(records), self.max_len
        sides = [k for k in self.side_keys if k in records[0]]
        inp = np.zeros((B, L), np.int32)
        tgt = np.zeros((B, L), np.int32)
        side_in = {k: np.zeros((B, L), np.int32) for k in sides}
        side_tgt = {k: np.zeros((B, L), np.int32) for k in sides}
        user = np.zeros(B, np.int32)
        for b, r in enumerate(records):
            user[b] = r["user_id"]
            items = np.asarray(r["items"])
            n = items.shape[0]
            if n == 0:  # a lone target has no input to predict it from
                continue
            k = min(n, L)
            # inputs = seq[:-1] = items; targets = seq[1:] = items[1:] + [target]
            inp[b, L - k:] = items[n - k:]
            tgt[b, L - k:L - 1] = items[n - k + 1:]
            tgt[b, L - 1] = r["target"]
            for key in sides:
                s = np.asarray(r[key])
                side_in[key][b, L - k:] = s[n - k:]
                side_tgt[key][b, L - k:L - 1] = s[n - k + 1:]
                side_tgt[key][b, L - 1] = r[_target_key(key)]
        out = {"input_ids": inp, "target_ids": tgt, "mask": tgt != PAD_ID, "user_id": user}
        for key in sides:
            out[key] = side_in[key]
            out["target_" + key] = side_tgt[key]
        return out


def fixed_negatives_fn(num_items: int, num_negatives: int, seed: int) -> Callable[[int, np.ndarray], np.ndarray]:
    """``negatives_fn`` for :class:`SeqEvalTransform`: :func:`samplers.fixed_eval_negatives` for one example."""

    def fn(user_id: int, positives: np.ndarray) -> np.ndarray:
        return samplers.fixed_eval_negatives([user_id], [positives], num_items, num_negatives, seed)[0]

    return fn


@dataclasses.dataclass(frozen=True)
class SeqEvalTransform(grain.transforms.Map):
    """Evaluation example from a ``valid``/``test`` record.

    Output (L = max_len, N = num_negatives, M = history_len or max_len):
      ``input_ids`` int32 [L]: the last L history items, left-padded;
      ``target`` int32;
      ``negatives`` int32 [N] (only if N > 0): ``negatives_fn(user_id, concat(items, [target]))``, fixed per
      example (see :func:`fixed_negatives_fn`);
      ``history`` int32 [M]: the distinct history items other than the target, most recent first (the
      M most recent), right-padded with 0; mask these in full-catalogue ranking;
      ``user_id`` int32, ``target_domain`` int32, ``overlap`` bool; and for each side key present
      (``domains``, ``tabs``) the key int32 [L] aligned with ``input_ids``.
    """

    max_len: int
    num_negatives: int = 0
    negatives_fn: Callable[[int, np.ndarray], np.ndarray] | None = None
    history_len: int | None = None
    side_keys: tuple[str, ...] = ("domains",)

    def __post_init__(self):
        _check_max_len(self.max_len)
        if self.num_negatives > 0 and self.negatives_fn is None:
            raise DataError("SeqEvalTransform", "num_negatives > 0 needs a negatives_fn", field="negatives_fn",
                            expected="e.g. fixed_negatives_fn(num_items, num_negatives, seed)")

    def map(self, rec: dict) -> dict:
        return _squeeze(self.map_batch([rec]))

    def map_batch(self, records: Sequence[dict]) -> dict:
        B, L, N = len(records), self.max_len, self.num_negatives
        M = self.history_len or L
        sides = [k for k in self.side_keys if k in records[0]]
        out = {
            "input_ids": np.zeros((B, L), np.int32),
            "target": np.zeros(B, np.int32),
            "history": np.zeros((B, M), np.int32),
            "user_id": np.zeros(B, np.int32),
            "target_domain": np.zeros(B, np.int32),
            "overlap": np.zeros(B, bool),
        }
        if N > 0:
            out["negatives"] = np.zeros((B, N), np.int32)
        for key in sides:
            out[key] = np.zeros((B, L), np.int32)
        for b, r in enumerate(records):
            items = np.asarray(r["items"], np.int64)
            n = items.shape[0]
            target = int(r["target"])
            k = min(n, L)
            if k:
                out["input_ids"][b, L - k:] = items[n - k:]
            out["target"][b] = target
            out["user_id"][b] = r["user_id"]
            out["target_domain"][b] = r.get("target_domain", 0)
            out["overlap"][b] = bool(r.get("overlap", False))
            if n:
                rev = items[::-1]
                _, first = np.unique(rev, return_index=True)
                hist = rev[np.sort(first)]
                hist = hist[(hist != target) & (hist != PAD_ID)][:M]
                out["history"][b, :hist.size] = hist
            if N > 0:
                neg = np.asarray(self.negatives_fn(int(r["user_id"]), np.append(items, target)))
                if neg.shape != (N,):
                    raise DataError("SeqEvalTransform", "negatives_fn returned a wrong shape", field="negatives",
                                    expected=f"[{N}]", got=neg.shape)
                out["negatives"][b] = neg
            for key in sides:
                if k:
                    out[key][b, L - k:] = np.asarray(r[key])[n - k:]
        return out


def read_records(source, indices=None, chunk: int = 1024) -> list:
    """Decoded records ``source[i]`` for ``indices`` (default all), read in chunks with ``__getitems__``."""
    indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    out = []
    for lo in range(0, len(indices), chunk):
        part = indices[lo:lo + chunk]
        out.extend(getitems(part) if getitems is not None else [source[i] for i in part])
    return out


def _derive_seed(seed: int, shard_index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), int(shard_index), 0x6A78]).generate_state(1)[0])


def steps_per_epoch(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
    """Batches per epoch and process of :func:`make_train_iterator` (the same on every process)."""
    return (num_examples // shard_count) // batch_size


class _TrainBatches(grain.MapDataset):
    """Element k = training batch k of one shard (epoch k // steps_per_epoch)."""

    def __init__(self, source, transform, shard_indices: np.ndarray, batch_size: int, spe: int,
                 num_epochs: int | None, seed: int):
        super().__init__()
        self._source = source
        self._transform = transform
        self._indices = shard_indices  # source indices owned by this shard, int64 [S]
        self._batch_size = batch_size
        self._spe = spe
        self._len = sys.maxsize if num_epochs is None else spe * num_epochs
        self._seed = seed
        self._lock = threading.Lock()
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return self._len

    def __getstate__(self):  # picklable for grain worker processes (mp_prefetch)
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_perm_epoch"], state["_perm"] = -1, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Source indices of this shard in the order of ``epoch`` (all of them; batches use the first
        ``steps_per_epoch * batch_size``)."""
        with self._lock:
            if self._perm_epoch != epoch:
                rng = np.random.default_rng([self._seed, int(epoch)])
                self._perm, self._perm_epoch = self._indices[rng.permutation(self._indices.size)], epoch
            return self._perm

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        if not 0 <= k < self._len:
            raise IndexError(k)
        epoch, j = divmod(int(k), self._spe)
        idx = self.epoch_order(epoch)[j * self._batch_size:(j + 1) * self._batch_size]
        return apply_batch(self._transform, read_records(self._source, idx))


class TrainIterator(grain.DatasetIterator):
    """A grain iterator over fixed-shape training batches with a checkpointable state.

    ``get_state()`` is a JSON-able dict: grain's position (the next batch index) plus the pipeline
    settings; ``set_state`` refuses a state from a pipeline with other settings (seed, batch size,
    sharding, source length), where the same position would mean other data. Works with
    ``grain.checkpoint.CheckpointHandler`` (orbax).
    """

    def __init__(self, parent: grain.DatasetIterator, settings: dict[str, int], steps_per_epoch: int):
        super().__init__(parent)
        self._settings = dict(settings)
        self.steps_per_epoch = steps_per_epoch

    def __next__(self) -> dict:
        return next(self._parent)

    @property
    def step(self) -> int:
        """Batches consumed so far, including those before a restored state."""
        return int(self._parent.get_state()["next_index"])

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self.step // self.steps_per_epoch

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._parent.get_state(), **self._settings}

    def set_state(self, state: dict[str, Any]) -> None:
        for k, v in self._settings.items():
            if state.get(k) != v:
                raise DataError("TrainIterator.set_state", "state is from a different pipeline", field=k,
                                expected=repr(v), got=state.get(k))
        self._parent.set_state(state["grain"])


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)


def make_train_iterator(source, transform: Callable[[dict], dict] | grain.transforms.Map, batch_size: int,
                        seed: int, shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                        *, cache: bool = False, num_threads: int = 0, prefetch: int = 2) -> TrainIterator:
    """Shuffled, sharded, fixed-shape training batches as a checkpointable iterator.

    Args:
      source: random-access records (``len``, ``__getitem__``; ``__getitems__`` is used when present).
      transform: record -> example dict of fixed-shape arrays, e.g. :class:`SeqTrainTransform` (its
        ``map_batch`` is used when present).
      batch_size: per-process batch size B; every batch has exactly B examples.
      seed: shuffle seed; each epoch is shuffled differently but deterministically.
      shard_index, shard_count: this process's shard (``jax.process_index()``, ``jax.process_count()``).
      num_epochs: None for an endless iterator, else StopIteration after that many epochs.
      cache: decode this shard's records once and keep them in memory (fast epochs for small data; the
        batches are identical with and without it).
      num_threads: grain threads computing batches ahead (0 = in the calling thread); ``prefetch``: batches
        buffered.

    Returns:
      :class:`TrainIterator` yielding dicts of numpy arrays with leading dimension B.
    """
    n = len(source)
    if not (0 <= shard_index < shard_count):
        raise DataError("make_train_iterator", "bad shard", field="shard_index",
                        expected=f"0 <= shard_index < shard_count={shard_count}", got=shard_index)
    if batch_size < 1:
        raise DataError("make_train_iterator", "bad batch size", field="batch_size", expected=">= 1", got=batch_size)
    spe = steps_per_epoch(n, batch_size, shard_count)
    if spe == 0:
        raise DataError("make_train_iterator", "source too small for one batch per shard", field="batch_size",
                        expected=f"batch_size * shard_count <= {n} examples", got=batch_size)
    if num_epochs is not None and num_epochs < 1:
        raise DataError("make_train_iterator", "bad num_epochs", field="num_epochs", expected="None or >= 1",
                        got=num_epochs)
    indices = np.arange(shard_index, n, shard_count, dtype=np.int64)
    if cache:
        source, indices = read_records(source, indices), np.arange(indices.size, dtype=np.int64)
    ds = _TrainBatches(source, transform, indices, batch_size, spe, num_epochs, _derive_seed(seed, shard_index))
    it = iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))
    settings = {"seed": int(seed), "batch_size": int(batch_size), "shard_index": int(shard_index),
                "shard_count": int(shard_count), "num_examples": int(n)}
    return TrainIterator(it, settings, spe)


class _EvalBatchDataset(grain.MapDataset):
    """Element k = evaluation batch k; rows with index -1 are padding."""

    def __init__(self, source, transform, indices: np.ndarray, batch_size: int):
        super().__init__()
        self._source = source
        self._transform = transform
        self._indices = indices  # int64 [num_batches * B], -1 = padding
        self._batch_size = batch_size
        self._pad_rec = None

    def __len__(self) -> int:
        return self._indices.size // self._batch_size

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        if not 0 <= k < len(self):
            raise IndexError(k)
        idx = self._indices[k * self._batch_size:(k + 1) * self._batch_size]
        valid = idx >= 0
        real = idx[valid]
        if self._pad_rec is None:
            self._pad_rec = read_records(self._source, [0])[0]
        recs = read_records(self._source, real)
        # padding rows: transform a real record (for shapes), then zero them
        rows = iter(recs)
        batch = apply_batch(self._transform, [next(rows) if v else self._pad_rec for v in valid])
        for v in batch.values():
            v[~valid] = 0
        batch["valid"] = valid
        batch["example_index"] = idx.copy()
        return batch


class EvalBatches:
    """Fixed-shape evaluation batches (see :func:`make_eval_batches`): ``len``, ``[k]`` and iteration."""

    def __init__(self, batches: _EvalBatchDataset, num_examples: int, num_threads: int, prefetch: int):
        self._batches = batches
        self.num_examples = num_examples  # real examples in this shard
        self._read_options = _read_options(num_threads, prefetch)

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, k: int) -> dict:
        return self._batches[k + len(self) if k < 0 else k]

    def __iter__(self):
        return iter(self._batches.to_iter_dataset(self._read_options))


def make_eval_batches(source, transform: Callable[[dict], dict] | grain.transforms.Map, batch_size: int,
                      shard_index: int = 0, shard_count: int = 1, *, num_threads: int = 0,
                      prefetch: int = 2) -> EvalBatches:
    """Fixed-shape evaluation batches covering every example exactly once.

    Examples keep their source order; the last batch is padded with all-zero rows. Each batch has
    ``valid`` bool [B] (False on padding) and ``example_index`` int64 [B] (source index, -1 on padding):
    average metrics over ``valid`` rows only. With ``shard_count > 1`` process ``shard_index`` gets every
    ``shard_count``-th example, and every process gets the same number of batches (collectives line up).
    """
    n = len(source)
    if n == 0:
        raise DataError("make_eval_batches", "empty source", expected="at least one example")
    if not (0 <= shard_index < shard_count):
        raise DataError("make_eval_batches", "bad shard", field="shard_index",
                        expected=f"0 <= shard_index < shard_count={shard_count}", got=shard_index)
    if batch_size < 1:
        raise DataError("make_eval_batches", "bad batch size", field="batch_size", expected=">= 1", got=batch_size)
    num_batches = math.ceil(math.ceil(n / shard_count) / batch_size)
    idx = np.arange(shard_index, n, shard_count, dtype=np.int64)
    real = int(idx.size)
    idx = np.concatenate([idx, np.full(num_batches * batch_size - idx.size, -1, np.int64)])
    return EvalBatches(_EvalBatchDataset(source, transform, idx, batch_size), real, num_threads, prefetch)
