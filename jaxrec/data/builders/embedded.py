"""``kuairand_embedded``: the small default dataset shipped inside the package (kind ``"sequence"``).

KuaiRand-Pure (Gao et al., CIKM 2022; CC BY-SA 4.0) clicks of 2022-04-25..2022-05-08, one chronological
sequence per user, split leave-one-out (SASRec protocol). It needs nothing outside the package, so the
Quickstart and the default tests run on a fresh clone::

    from jaxrec.data import catalog
    train = catalog.load("kuairand_embedded", "train")   # len(train) == number of users
    train[0]  # {"user_id", "items", "domains", "timestamps", "target", "target_domain", "overlap",
              #  "tabs", "target_tab"}

Package data (``jaxrec/data/embedded/``, written by ``scripts/make_embedded_dataset.py``; see its README):

* ``kuairand_pure_clicks.csv.gz``: ``user_id,item_id,tab,timestamp``; one row per positive interaction,
  sorted by user then chronologically; ``user_id`` dense 0..U-1, ``item_id`` dense 1..V, ``tab`` the
  KuaiRand scenario id (0..14), ``timestamp`` unix seconds. Every user has >= 5 distinct items.
* ``item_map.csv.gz`` (``item_id,video_id``), ``user_map.csv.gz`` (``user_id,kuairand_user_id``):
  the dense ids back to KuaiRand's.
* ``metadata.json``: positive definition, filtering counts, statistics, sha256 of source and files.

Splits (one record per user in each; a user's sequence ``s`` of length ``n >= 5``):

* ``train``: ``items = s[:n-3]``, ``target = s[n-3]`` (so training uses ``concat(items, [target]) = s[:n-2]``),
* ``valid``: ``items = s[:n-2]``, ``target = s[n-2]``,
* ``test``:  ``items = s[:n-1]``, ``target = s[n-1]``.

Single domain: ``domains`` and ``target_domain`` are 0 and ``overlap`` is False. Extra fields beyond the
normalised schema: ``tabs`` int32 [n] (scenario id of each history event) and ``target_tab`` int32.
Records are stored in user order (``disable_shuffling``), but always use ``user_id``, not the index.

Bump ``VERSION`` whenever the shipped files change: prepared copies are cached per version.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import pathlib
from typing import Iterator

import numpy as np

from jaxrec.data import catalog
from jaxrec.data.errors import DataError

NAME = "kuairand_embedded"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "embedded"
EVENTS_FILE = "kuairand_pure_clicks.csv.gz"
ITEM_MAP_FILE = "item_map.csv.gz"
USER_MAP_FILE = "user_map.csv.gz"
METADATA_FILE = "metadata.json"
EVENT_COLUMNS = ("user_id", "item_id", "tab", "timestamp")
SPLITS = ("train", "valid", "test")
MIN_SEQ_LEN = 5
NUM_TABS = 15  # KuaiRand scenario ids 0..14

CITATION = """@inproceedings{gao2022kuairand,
  title     = {KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed Videos},
  author    = {Gao, Chongming and Li, Shijun and Zhang, Yuan and Chen, Jiawei and Li, Biao and Lei, Wenqiang
               and Jiang, Peng and He, Xiangnan},
  booktitle = {Proceedings of the 31st ACM International Conference on Information and Knowledge Management},
  series    = {CIKM '22},
  pages     = {3953--3957},
  year      = {2022},
  doi       = {10.1145/3511808.3557624}
}"""

# Figures quoted from jaxrec/data/embedded/README.md; tests check them against the shipped files.
STATS = {"users": 7807, "items": 4564, "interactions": 69085}


@dataclasses.dataclass(frozen=True)
class Events:
    """Positive interactions, sorted by (user_id, position). All arrays int64 [E]."""

    user_id: np.ndarray
    item_id: np.ndarray
    tab: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return int(self.user_id.shape[0])

    @property
    def num_users(self) -> int:
        return int(self.user_id.max()) + 1 if len(self) else 0

    @property
    def num_items(self) -> int:
        return int(self.item_id.max()) if len(self) else 0

    def user_bounds(self) -> np.ndarray:
        """[U+1] offsets: user u's events are rows ``bounds[u]:bounds[u+1]``."""
        return np.searchsorted(self.user_id, np.arange(self.num_users + 1), side="left")


def _open_text(path: pathlib.Path):
    if not path.is_file():
        raise DataError(path, "file not found", expected="the embedded dataset file (run scripts/make_embedded_dataset.py)")
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _read_int_table(path: pathlib.Path, columns: tuple[str, ...]) -> np.ndarray:
    """Strict reader of an all-integer CSV with a fixed header: int64 [rows, len(columns)]."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != columns:
            raise DataError(path, "bad header", line=1, expected=",".join(columns), got=header)
        out = []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(columns):
                raise DataError(path, "wrong number of fields", line=line_no, expected=f"{len(columns)} fields",
                                got=row)
            try:
                out.append([int(v) for v in row])
            except ValueError:
                bad = next(i for i, v in enumerate(row) if not v.lstrip("-").isdigit())
                raise DataError(path, "not an integer", line=line_no, field=columns[bad], expected="an integer",
                                got=row[bad]) from None
    return np.asarray(out, dtype=np.int64).reshape(-1, len(columns))


def read_events(raw_dir: str | os.PathLike | None = None) -> Events:
    """Read and validate the shipped events file (default: the package folder).

    Raises DataError naming the file, line and field for: a bad header or field, ids out of range, users
    not dense/sorted, timestamps going backwards within a user, a repeated item within a user, or a user
    with fewer than ``MIN_SEQ_LEN`` events.
    """
    path = pathlib.Path(raw_dir or PACKAGE_DIR) / EVENTS_FILE
    t = _read_int_table(path, EVENT_COLUMNS)
    if t.shape[0] == 0:
        raise DataError(path, "no events", expected="at least one row")
    user, item, tab, ts = (t[:, i] for i in range(4))

    def fail(row: int, field: str, expected: str, got):
        raise DataError(path, "invalid value", line=int(row) + 2, field=field, expected=expected, got=got)

    if user[0] != 0:
        fail(0, "user_id", "user ids to start at 0", int(user[0]))
    du = np.diff(user)
    bad = np.flatnonzero((du != 0) & (du != 1))
    if bad.size:
        fail(bad[0] + 1, "user_id", "rows sorted by user_id with dense ids (step 0 or 1)", int(user[bad[0] + 1]))
    bad = np.flatnonzero(item < 1)
    if bad.size:
        fail(bad[0], "item_id", "item ids >= 1 (0 is padding)", int(item[bad[0]]))
    bad = np.flatnonzero((tab < 0) | (tab >= NUM_TABS))
    if bad.size:
        fail(bad[0], "tab", f"a tab id in 0..{NUM_TABS - 1}", int(tab[bad[0]]))
    bad = np.flatnonzero((du == 0) & (np.diff(ts) < 0))
    if bad.size:
        fail(bad[0] + 1, "timestamp", "non-decreasing timestamps within a user", int(ts[bad[0] + 1]))
    order = np.lexsort((item, user))
    dup = np.flatnonzero((np.diff(user[order]) == 0) & (np.diff(item[order]) == 0))
    if dup.size:
        r = int(max(order[dup[0]], order[dup[0] + 1]))
        fail(r, "item_id", "distinct items within a user (repeat clicks are removed)", int(item[r]))
    events = Events(user, item, tab, ts)
    lengths = np.diff(events.user_bounds())
    short = np.flatnonzero(lengths < MIN_SEQ_LEN)
    if short.size:
        fail(events.user_bounds()[short[0]], "user_id", f"at least {MIN_SEQ_LEN} events per user",
             f"user {int(short[0])} has {int(lengths[short[0]])}")
    if np.unique(item).size != item.max():
        raise DataError(path, "item ids are not dense", field="item_id", expected=f"every id in 1..{int(item.max())}")
    return events


def split_records(events: Events, split: str) -> Iterator[dict]:
    """Leave-one-out records of one split in the normalised sequence schema, in user order."""
    if split not in SPLITS:
        raise DataError(NAME, "unknown split", field="split", expected=f"one of {SPLITS}", got=split)
    cut = {"train": 3, "valid": 2, "test": 1}[split]
    bounds = events.user_bounds()
    for u in range(events.num_users):
        lo, hi = int(bounds[u]), int(bounds[u + 1])
        t = hi - cut  # row of the target
        yield {
            "user_id": np.int64(u),
            "items": events.item_id[lo:t].astype(np.int64),
            "domains": np.zeros(t - lo, np.int32),
            "timestamps": events.timestamp[lo:t].astype(np.int64),
            "tabs": events.tab[lo:t].astype(np.int32),
            "target": np.int64(events.item_id[t]),
            "target_domain": np.int32(0),
            "target_tab": np.int32(events.tab[t]),
            "overlap": False,
        }


def compute_stats(events: Events) -> dict:
    """Users, items, interactions, sequence-length summary and split sizes of ``events``."""
    lengths = np.diff(events.user_bounds())
    users, items, inter = events.num_users, events.num_items, len(events)
    return {
        "users": users,
        "items": items,
        "interactions": inter,
        "density": round(inter / (users * items), 6),
        "seq_len_min": int(lengths.min()),
        "seq_len_median": float(np.median(lengths)),
        "seq_len_mean": round(float(lengths.mean()), 3),
        "seq_len_max": int(lengths.max()),
        "split_sizes": {s: users for s in SPLITS},
        "train_interactions": int((lengths - 2).sum()),
    }


def metadata(raw_dir: str | os.PathLike | None = None) -> dict:
    """The shipped ``metadata.json`` (positive definition, filtering counts, statistics, checksums)."""
    path = pathlib.Path(raw_dir or PACKAGE_DIR) / METADATA_FILE
    if not path.is_file():
        raise DataError(path, "file not found", expected="metadata.json of the embedded dataset")
    return json.loads(path.read_text())


def builder_metadata(raw_dir: str | os.PathLike | None = None, events: Events | None = None) -> dict:
    """The catalogue's builder-metadata convention (``num_users``, ``num_items``, ``stats``, ``drops``, ...)
    for the files in ``raw_dir``; checks the files against the sha256 sums in ``metadata.json`` when present."""
    src = pathlib.Path(raw_dir or PACKAGE_DIR)
    events = events if events is not None else read_events(src)
    st = compute_stats(events)
    md = {
        "num_users": events.num_users,
        "num_items": events.num_items,
        "domain_names": [],
        "domain_item_ranges": None,
        "stats": {"users": st["users"], "items": st["items"], "interactions": st["interactions"],
                  "seq_len_min": st["seq_len_min"], "seq_len_mean": st["seq_len_mean"],
                  "seq_len_max": st["seq_len_max"],
                  "splits": {s: {"records": st["users"]} for s in SPLITS}},
        "drops": {},
        "checksums": {},
    }
    if (src / METADATA_FILE).is_file():
        meta = metadata(src)
        for name, digest in meta.get("files", {}).items():
            got = hashlib.sha256((src / name).read_bytes()).hexdigest()
            if got != digest:
                raise DataError(src / name, "checksum mismatch", expected=f"sha256 {digest} (metadata.json)", got=got)
            md["checksums"][name] = digest
        f = meta.get("filtering", {})
        k = f.get("min_positives_per_user", MIN_SEQ_LEN)
        src_file = meta.get("source", {}).get("file", "KuaiRand-Pure log")
        reasons = {"repeat click on the same video (first kept)": f.get("repeat_clicks_removed", 0),
                   "user without any click": f.get("users_without_positive", 0),
                   f"user with fewer than {k} distinct clicked videos": f.get(f"users_dropped_fewer_than_{k}_positives", 0)}
        md["drops"] = {src_file: {r: {"count": int(c), "examples": []} for r, c in reasons.items() if c}}
        md["positive_definition"] = meta.get("positive_definition")
    return md


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def _builder_class():
    tfds = _tfds()

    class KuairandEmbedded(tfds.core.GeneratorBasedBuilder):
        """KuaiRand-Pure clicks, leave-one-out sequences (see ``jaxrec.data.builders.embedded``)."""

        VERSION = tfds.core.Version("1.1.0")
        RELEASE_NOTES = {"1.0.0": "KuaiRand-Pure 2022-04-25..05-08 clicks, users with >= 5 distinct clicked videos.",
                         "1.1.0": "Builder metadata (num_users, num_items, stats, drops, checksums)."}
        # No download checksums file. Also avoids tfds 4.9.10's code_path lookup, which imports the
        # `importlib_resources` backport (absent here) for builders defined in an installed package.
        code_path = None

        def __init__(self, *, raw_dir: str | os.PathLike | None = None, **kwargs):
            self._raw_dir = pathlib.Path(raw_dir) if raw_dir is not None else PACKAGE_DIR
            super().__init__(**kwargs)

        def _info(self):
            seq = lambda dt: tfds.features.Tensor(shape=(None,), dtype=dt)  # noqa: E731
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__,
                features=tfds.features.FeaturesDict({
                    "user_id": tfds.features.Scalar(dtype=np.int64),
                    "items": seq(np.int64),
                    "domains": seq(np.int32),
                    "timestamps": seq(np.int64),
                    "tabs": seq(np.int32),
                    "target": tfds.features.Scalar(dtype=np.int64),
                    "target_domain": tfds.features.Scalar(dtype=np.int32),
                    "target_tab": tfds.features.Scalar(dtype=np.int32),
                    "overlap": tfds.features.Scalar(dtype=np.bool_),
                }),
                homepage="https://kuairand.com",
                citation=CITATION,
                license="CC BY-SA 4.0 (derived from KuaiRand-Pure; see jaxrec/data/embedded/README.md)",
                metadata=tfds.core.MetadataDict(),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            events = read_events(self._raw_dir)
            self.info.metadata.update(builder_metadata(self._raw_dir, events))
            return {s: self._generate_examples(events, s) for s in SPLITS}

        def _generate_examples(self, events, split):
            for rec in split_records(events, split):
                yield int(rec["user_id"]), rec

    return KuairandEmbedded


# The TFDS builder class, created once on first use (so importing the catalogue stays cheap).
builder_class = functools.cache(_builder_class)


def make_builder(raw_dir: str | None, data_dir: str):
    """Builder reading the package data; ``raw_dir`` is used only if it holds the events file itself."""
    src = PACKAGE_DIR
    if raw_dir is not None and (pathlib.Path(raw_dir) / EVENTS_FILE).is_file():
        src = pathlib.Path(raw_dir)
    return builder_class()(raw_dir=src, data_dir=data_dir, file_format="array_record")


catalog.register(catalog.DatasetSpec(
    name=NAME,
    kind="sequence",
    make_builder=make_builder,
    raw_subdir=str(PACKAGE_DIR),
    licence="CC BY-SA 4.0 (derived from KuaiRand-Pure, Gao et al. CIKM 2022; shipped in the package)",
    source_stats=dict(STATS),
    description="KuaiRand-Pure clicks (2022-04-25..05-08), leave-one-out sequences; shipped in the package.",
))
