"""Dataset catalogue: every dataset jaxrec can load, by name, through one validated path.

Each dataset family lives in ``jaxrec/data/builders/<family>.py`` and defines one
``tfds.core.GeneratorBasedBuilder`` subclass (ArrayRecord files; no TensorFlow) plus a call to
:func:`register` per dataset name it provides (e.g. ``llmcdsr/food_kitchen``). Users call :func:`load`,
:func:`info` and :func:`stats`; the CLI's ``jaxrec data stats NAME`` prints :func:`stats`.

Normalised record schemas (numpy dicts returned by the data source's ``__getitem__``):

* kind ``"sequence"`` (cross-domain and single-domain sequential recommendation; one record per
  (user, prediction point)):
    ``user_id``    int64 scalar   dataset-wide user id (0-based, unique across the whole dataset)
    ``items``      int64 [n]      chronological history, global item ids in 1..num_items (0 = padding, never stored)
    ``domains``    int32 [n]      domain index of each history item (0 for single-domain data)
    ``timestamps`` int64 [n]      unix seconds where the data has them, else positions 0..n-1
    ``target``     int64 scalar   the next item to predict (global id, 1..num_items)
    ``target_domain`` int32 scalar
    ``overlap``    bool scalar    user has interactions in both domains
  For the ``train`` split, ``target`` is the last item of the user's training sequence and ``items`` all
  before it, so next-item training at every position uses ``concat(items, [target])``.
* other kinds (``user_item``, ``graph``, ``reviews``, ``impressions``) document their schema in their
  builder module.

``info(name)`` returns the :class:`DatasetInfo` (item/user counts, domain item ranges, split sizes);
``stats(name)`` returns users/items/interactions/splits/drops as a dict and :func:`format_stats` prints it
(``jaxrec data stats NAME``).

Builder metadata convention. A builder may put, in its ``tfds.core.MetadataDict`` (``metadata.json`` next
to the ArrayRecord files; restored by ``tfds.builder_from_directory``), any of:

* ``"num_users"`` size of the user-id space (ids 0..num_users-1), ``"num_items"`` (ids 1..num_items),
* ``"domain_names"`` list, ``"domain_item_ranges"`` ``{domain name: [first, last]}`` (inclusive global ids)
  or None when items are shared across domains,
* ``"stats"`` ``{"users", "items", "interactions", "splits": {split: {...}}, ...}`` computed while preparing,
* ``"drops"`` :meth:`jaxrec.data.readers.DropReport.as_dict` (records a protocol dropped, by file/reason),
* ``"unavailable_splits"`` ``{split: reason}``, ``"checksums"`` ``{raw file: sha256 verified}``.

:func:`stats` uses ``"stats"`` when present, ``DatasetSpec.stats_fn`` when given, and otherwise scans the
prepared splits of a ``"sequence"`` dataset. Sequence builders build their splits as a
:class:`SequenceTable` (flat NumPy arrays + offsets), which validates the schema, yields TFDS examples and
computes those statistics.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from jaxrec.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One loadable dataset.

    Attributes:
      name: catalogue name, e.g. ``"llmcdsr/food_kitchen"``.
      kind: ``"sequence" | "user_item" | "graph" | "reviews" | "impressions"``.
      make_builder: ``(raw_dir: str | None, data_dir: str) -> tfds.core.DatasetBuilder``.
      raw_subdir: folder under the raw-data root, e.g. ``"llmcdsr/food-kitchen"``.
      licence: short licence statement (shown by ``jaxrec data stats``).
      internal_only: True for data whose licence forbids redistribution (MovieLens): never exported.
      source_stats: figures quoted from the dataset's SOURCE.md, checked by the tests.
      unavailable_splits: ``{split: reason}`` for splits the paper uses that cannot be built from the raw
        files present (e.g. a file missing upstream); :func:`load` raises a DataError quoting the reason.
      stats_fn: optional ``(builder) -> dict`` overriding how :func:`stats` computes users/items/
        interactions (default: the builder's ``metadata["stats"]``, else a scan of the splits).
      description: one line shown by ``jaxrec data list`` / ``stats``.
    """

    name: str
    kind: str
    make_builder: Callable[[str | None, str], Any]
    raw_subdir: str
    licence: str
    internal_only: bool = False
    source_stats: dict = dataclasses.field(default_factory=dict)
    unavailable_splits: dict = dataclasses.field(default_factory=dict)
    stats_fn: Callable[[Any], dict] | None = None
    description: str = ""


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _import_builders() -> None:
    import importlib
    import pkgutil

    import jaxrec.data.builders as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def names() -> list[str]:
    _import_builders()
    return sorted(_REGISTRY)


def spec(name: str) -> DatasetSpec:
    _import_builders()
    if name not in _REGISTRY:
        raise DataError(name, "unknown dataset", expected=f"one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def builder(name: str, *, raw_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None):
    """The prepared TFDS builder for ``name`` (prepares ArrayRecord files on first use)."""
    from jaxrec.data import paths

    s = spec(name)
    if raw_dir is not None and not os.path.isdir(raw_dir):
        # checked even when the dataset is already prepared: a wrong --data_dir is an error, never ignored
        raise DataError(raw_dir, "raw data directory does not exist", field="data_dir",
                        expected="an existing directory (--data_dir / $JAXREC_RAW_DATA)")
    data_dir = os.fspath(data_dir) if data_dir is not None else os.fspath(paths.tfds_dir())
    b = s.make_builder(None if raw_dir is None else os.fspath(raw_dir), data_dir)
    b.download_and_prepare()
    return b


def load(name: str, split: str, *, raw_dir=None, data_dir=None):
    """Random-access data source (``len``, ``__getitem__`` -> dict of numpy) for one split."""
    s = spec(name)
    if split in s.unavailable_splits:
        raise DataError(name, f"split {split!r} is not available: {s.unavailable_splits[split]}", field="split",
                        expected="a split that can be built from the raw files present", got=split)
    b = builder(name, raw_dir=raw_dir, data_dir=data_dir)
    if split not in b.info.splits:
        raise DataError(name, "unknown split", field="split", expected=f"one of {sorted(b.info.splits)}", got=split)
    return b.as_data_source(split=split)


# ----------------------------------------------------------------------------- normalised sequence data

SEQUENCE_FIELDS = ("user_id", "items", "domains", "timestamps", "target", "target_domain", "overlap")


def sequence_features():
    """The ``tfds.features.FeaturesDict`` of the normalised ``"sequence"`` schema (see module docstring)."""
    import numpy as np
    import tensorflow_datasets as tfds

    seq = lambda dt: tfds.features.Tensor(shape=(None,), dtype=dt)  # noqa: E731
    return tfds.features.FeaturesDict({
        "user_id": tfds.features.Scalar(dtype=np.int64),
        "items": seq(np.int64),
        "domains": seq(np.int32),
        "timestamps": seq(np.int64),
        "target": tfds.features.Scalar(dtype=np.int64),
        "target_domain": tfds.features.Scalar(dtype=np.int32),
        "overlap": tfds.features.Scalar(dtype=np.bool_),
    })


@dataclasses.dataclass
class SequenceTable:
    """One split of a ``"sequence"`` dataset as flat NumPy arrays (record ``i`` = ``offsets[i]:offsets[i+1]``).

    Attributes (``n`` records, ``t`` history events in total):
      user_id ``int64 [n]``, offsets ``int64 [n+1]``, items ``int64 [t]``, domains ``int32 [t]``,
      timestamps ``int64 [t]``, target ``int64 [n]``, target_domain ``int32 [n]``, overlap ``bool [n]``.
    """

    user_id: Any
    offsets: Any
    items: Any
    domains: Any
    timestamps: Any
    target: Any
    target_domain: Any
    overlap: Any

    def __post_init__(self):
        import numpy as np

        self.user_id = np.asarray(self.user_id, dtype=np.int64)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        self.domains = np.asarray(self.domains, dtype=np.int32)
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64)
        self.target = np.asarray(self.target, dtype=np.int64)
        self.target_domain = np.asarray(self.target_domain, dtype=np.int32)
        self.overlap = np.asarray(self.overlap, dtype=bool)
        n, t = len(self.user_id), len(self.items)
        shapes = {"offsets": (self.offsets.shape, (n + 1,)), "domains": (self.domains.shape, (t,)),
                  "timestamps": (self.timestamps.shape, (t,)), "target": (self.target.shape, (n,)),
                  "target_domain": (self.target_domain.shape, (n,)), "overlap": (self.overlap.shape, (n,))}
        for k, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"SequenceTable.{k}: shape {got}, expected {want}")
        if n and (self.offsets[0] != 0 or self.offsets[-1] != t or (self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError("SequenceTable.offsets must be non-decreasing from 0 to len(items)")

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def lengths(self):
        import numpy as np

        return np.diff(self.offsets)

    def check(self, num_items: int, where: str = "split") -> None:
        """Schema invariants: item/target ids in 1..num_items (0 = padding is never stored)."""
        for name, arr in (("items", self.items), ("target", self.target)):
            if arr.size and (arr.min() < 1 or arr.max() > num_items):
                raise DataError(where, f"{name} id outside 1..{num_items}", field=name,
                                expected=f"ids in 1..{num_items}", got=(int(arr.min()), int(arr.max())))

    def example(self, i: int) -> dict:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {
            "user_id": self.user_id[i],
            "items": self.items[a:b],
            "domains": self.domains[a:b],
            "timestamps": self.timestamps[a:b],
            "target": self.target[i],
            "target_domain": self.target_domain[i],
            "overlap": self.overlap[i],
        }

    def examples(self):
        """``(key, example)`` pairs for ``GeneratorBasedBuilder._generate_examples`` (key = record index)."""
        for i in range(len(self)):
            yield i, self.example(i)

    @staticmethod
    def from_sequences(user_id, values, domains, timestamps, offsets, overlap, *, cut: int = 0) -> "SequenceTable":
        """Records from full per-user sequences (flat ``values`` + ``offsets``), vectorised.

        Record ``i`` drops the last ``cut`` elements of sequence ``i``; of what remains, the last element is
        the ``target`` and the rest the history (``cut=0``: target = last element; leave-last-out valid/train
        splits use ``cut=1``/``2``). Every sequence must have at least ``cut + 2`` elements.
        """
        import numpy as np

        values, domains, timestamps = np.asarray(values), np.asarray(domains), np.asarray(timestamps)
        offsets = np.asarray(offsets, dtype=np.int64)
        lens = np.diff(offsets)
        if (lens < cut + 2).any():
            raise ValueError(f"every sequence needs >= {cut + 2} elements for cut={cut}")
        rec = np.repeat(np.arange(len(lens)), lens)
        pos = np.arange(len(values)) - offsets[rec]
        keep_len = lens - cut - 1
        hist = pos < keep_len[rec]
        tgt = offsets[:-1] + keep_len
        new_off = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(keep_len, out=new_off[1:])
        return SequenceTable(user_id=user_id, offsets=new_off, items=values[hist], domains=domains[hist],
                             timestamps=timestamps[hist], target=values[tgt], target_domain=domains[tgt],
                             overlap=overlap)

    def take(self, indices) -> "SequenceTable":
        """The records ``indices`` (in that order) as a new table (vectorised)."""
        import numpy as np

        idx = np.asarray(indices, dtype=np.int64)
        lens = self.lengths[idx]
        off = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        ev = np.repeat(self.offsets[idx], lens) + (np.arange(off[-1]) - np.repeat(off[:-1], lens))
        return SequenceTable(user_id=self.user_id[idx], offsets=off, items=self.items[ev], domains=self.domains[ev],
                             timestamps=self.timestamps[ev], target=self.target[idx],
                             target_domain=self.target_domain[idx], overlap=self.overlap[idx])

    @staticmethod
    def concat(tables: "list[SequenceTable]") -> "SequenceTable":
        import numpy as np

        offs = [np.zeros(1, np.int64)]
        base = 0
        for t in tables:
            offs.append(t.offsets[1:] + base)
            base += len(t.items)
        cat = lambda k: np.concatenate([getattr(t, k) for t in tables])  # noqa: E731
        return SequenceTable(user_id=cat("user_id"), offsets=np.concatenate(offs), items=cat("items"),
                             domains=cat("domains"), timestamps=cat("timestamps"), target=cat("target"),
                             target_domain=cat("target_domain"), overlap=cat("overlap"))

    def stats(self, num_domains: int | None = None) -> dict:
        """records, users, interactions (history + target), per-domain counts, length summary (JSON-able)."""
        import numpy as np

        n = len(self)
        nd = int(num_domains) if num_domains else int(max(self.domains.max(initial=-1),
                                                           self.target_domain.max(initial=-1)) + 1)
        lens = self.lengths + 1
        hist_dom = np.bincount(self.domains, minlength=nd) if self.domains.size else np.zeros(nd, np.int64)
        tgt_dom = np.bincount(self.target_domain, minlength=nd) if n else np.zeros(nd, np.int64)
        return {
            "records": n,
            "users": count_distinct(self.user_id),
            "interactions": int(len(self.items) + n),
            "interactions_by_domain": [int(x) for x in hist_dom + tgt_dom],
            "targets_by_domain": [int(x) for x in tgt_dom],
            "overlap_records": int(self.overlap.sum()),
            "items_seen": count_distinct(np.concatenate([self.items, self.target])) if n else 0,
            "seq_len_min": int(lens.min()) if n else 0,
            "seq_len_mean": round(float(lens.mean()), 3) if n else 0.0,
            "seq_len_max": int(lens.max()) if n else 0,
        }


def count_distinct(a) -> int:
    """Number of distinct values of an integer array (bincount for small ranges, sort otherwise).

    ``np.unique`` on millions of int64 (hash path in NumPy >= 2.3) is seconds; this is milliseconds.
    """
    import numpy as np

    a = np.asarray(a).ravel()
    if a.size == 0:
        return 0
    lo, hi = int(a.min()), int(a.max())
    if hi - lo < 8 * a.size + (1 << 22):
        return int(np.count_nonzero(np.bincount(a - lo, minlength=hi - lo + 1)))
    s = np.sort(a)
    return int(1 + np.count_nonzero(s[1:] != s[:-1]))


def to_jsonable(x):
    """Convert NumPy scalars/arrays and tuples inside ``x`` to plain JSON types (for MetadataDict)."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


# ------------------------------------------------------------------------------------- info and stats

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model config needs to know about a prepared dataset.

    Attributes:
      name, kind, licence: from the catalogue entry.
      num_users: size of the user-id space (ids 0..num_users-1), or None if the builder does not say.
      num_items: ids 1..num_items (0 = padding), or None.
      domain_names: names of the domains (index = domain id), () for single-domain data.
      domain_item_ranges: ``{domain: (first, last)}`` inclusive global item ids per domain, or None when
        items are not partitioned by domain.
      split_sizes: ``{split: number of records}``.
      unavailable_splits: ``{split: reason}`` (splits that cannot be built from the raw files present).
      drops: records dropped by the dataset's protocol (``DropReport.as_dict()``), {} if none.
      data_dir: where the prepared ArrayRecord files are.
      metadata: the builder's full metadata dict.
    """

    name: str
    kind: str
    licence: str
    num_users: int | None
    num_items: int | None
    domain_names: tuple
    domain_item_ranges: dict | None
    split_sizes: dict
    unavailable_splits: dict
    drops: dict
    data_dir: str
    metadata: dict


def _metadata(b) -> dict:
    md = getattr(b.info, "metadata", None)
    return dict(md) if md else {}


def info(name: str, *, raw_dir=None, data_dir=None) -> DatasetInfo:
    """:class:`DatasetInfo` of ``name`` (prepares the dataset on first use)."""
    s = spec(name)
    b = builder(name, raw_dir=raw_dir, data_dir=data_dir)
    md = _metadata(b)
    ranges = md.get("domain_item_ranges")
    return DatasetInfo(
        name=name,
        kind=s.kind,
        licence=s.licence,
        num_users=md.get("num_users"),
        num_items=md.get("num_items"),
        domain_names=tuple(md.get("domain_names", ())),
        domain_item_ranges=None if ranges is None else {k: tuple(v) for k, v in ranges.items()},
        split_sizes={k: int(v.num_examples) for k, v in b.info.splits.items()},
        unavailable_splits=dict(md.get("unavailable_splits", {}) or s.unavailable_splits),
        drops=dict(md.get("drops", {})),
        data_dir=os.fspath(b.data_dir),
        metadata=md,
    )


def _scan_sequence_stats(b) -> dict:
    """Fallback statistics for a sequence dataset without ``metadata["stats"]``: scan every split."""
    import numpy as np

    splits, users, max_item = {}, set(), 0
    for split, si in b.info.splits.items():
        src = b.as_data_source(split=split)
        uid, n_events, items = [], 0, set()
        for i in range(len(src)):
            r = src[i]
            uid.append(int(r["user_id"]))
            n_events += len(r["items"]) + 1
            items.update(np.asarray(r["items"]).tolist())
            items.add(int(r["target"]))
        users.update(uid)
        max_item = max([max_item, *items]) if items else max_item
        splits[split] = {"records": int(si.num_examples), "users": len(set(uid)), "interactions": n_events,
                         "items_seen": len(items)}
    return {"users": len(users), "items": max_item, "interactions": None, "splits": splits}


def stats(name: str, *, raw_dir=None, data_dir=None) -> dict:
    """Users, items, interactions, per-split figures and dropped records of ``name`` (a JSON-able dict).

    Keys: ``name, kind, licence, users, items, interactions, splits {split: {records, ...}},
    unavailable_splits, drops`` (+ whatever else the builder recorded under ``metadata["stats"]``).
    """
    s = spec(name)
    b = builder(name, raw_dir=raw_dir, data_dir=data_dir)
    md = _metadata(b)
    if s.stats_fn is not None:
        st = dict(s.stats_fn(b))
    elif "stats" in md:
        st = dict(md["stats"])
    elif s.kind == "sequence":
        st = _scan_sequence_stats(b)
    else:
        st = {}
    splits = {k: dict(v) for k, v in (st.pop("splits", None) or {}).items()}
    for k, v in b.info.splits.items():
        splits.setdefault(k, {})["records"] = int(v.num_examples)
    out = {"name": name, "kind": s.kind, "licence": s.licence,
           "users": st.pop("users", None), "items": st.pop("items", None),
           "interactions": st.pop("interactions", None)}
    out.update(st)
    out["splits"] = splits
    out["unavailable_splits"] = dict(md.get("unavailable_splits", {}) or s.unavailable_splits)
    out["drops"] = dict(md.get("drops", {}))
    return to_jsonable(out)


def format_stats(st: dict) -> str:
    """Human-readable text of a :func:`stats` dict (what ``jaxrec data stats NAME`` prints)."""
    def num(v):
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    lines = [f"{st.get('name', '?')}  ({st.get('kind', '?')})"]
    if st.get("licence"):
        lines.append(f"  licence: {st['licence']}")
    for k in ("users", "items", "interactions"):
        lines.append(f"  {k:13s} {num(st.get(k))}")
    skip = {"name", "kind", "licence", "users", "items", "interactions", "splits", "unavailable_splits", "drops"}
    for k, v in st.items():
        if k not in skip:
            lines.append(f"  {k:13s} {v if isinstance(v, (dict, list)) else num(v)}")
    lines.append("  splits:")
    for split, d in st.get("splits", {}).items():
        parts = [f"{k}={num(v)}" for k, v in d.items()]
        lines.append(f"    {split:14s} " + "  ".join(parts))
    for split, why in st.get("unavailable_splits", {}).items():
        lines.append(f"    {split:14s} UNAVAILABLE: {why}")
    drops = st.get("drops", {})
    if drops:
        lines.append("  dropped by protocol:")
        for scope, reasons in drops.items():
            for reason, d in reasons.items():
                ex = d.get("examples", []) if isinstance(d, dict) else []
                cnt = d.get("count", d) if isinstance(d, dict) else d
                lines.append(f"    {scope}: {num(cnt)} {reason}" + (f" (e.g. {', '.join(ex)})" if ex else ""))
    else:
        lines.append("  dropped by protocol: nothing")
    return "\n".join(lines)
