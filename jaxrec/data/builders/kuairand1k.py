"""``kuairand1k_autocdsr``: KuaiRand-1K as processed by AutoCDSR (Ju et al., KDD 2025), sequence schema.

Raw files (``kuairand1k_autocdsr/{training,evaluation,testing}/partition_*.tfrecord.gz``; CC BY-SA 4.0,
derived from KuaiRand, Gao et al. CIKM 2022): gzip TFRecord files of ``tf.train.Example`` rows with two
int64 lists of length 800 (a fixed window of events, oldest first): ``sequence_data`` (video ids, ``-1`` =
out-of-vocabulary) and ``sequence_event_type`` (the KuaiRand scenario/"tab" id of each event). They are read
with :mod:`jaxrec.data.tfrecord` (no TensorFlow; both CRCs of every record verified) after checking every
file's sha256 against ``SOURCE.md`` (a listed file that is absent is a DataError naming it).

Protocol (AutoCDSR's ``kuairand_dataset.yaml`` preprocessing, reproduced):

1. ``remove_oov_tokens``: events whose id is ``-1`` are removed (with their domain id);
2. raw id ``0`` is AutoCDSR's padding token (its ``add_placeholder_tokens`` shifts only ids > 0 by 100,
   leaving 0 as padding), so the single event with id 0 is removed as well;
3. ``filter_sequence_length_row``: rows left with fewer than 10 events are dropped (none are, on these files).

All three are counted in the drop report (metadata ``"drops"``; printed by ``jaxrec data stats``).

Records (``"sequence"`` schema, one per remaining row; splits ``train`` = training/, ``valid`` =
evaluation/, ``test`` = testing/):

* ``items`` = the row's events except the last, ``target`` = the last event (AutoCDSR evaluates next-token
  prediction of the last item; for training the schema's ``concat(items, [target])`` is the whole row).
* Item ids are the raw video ids unchanged (``1..999,999``; 0 = padding as in AutoCDSR; AutoCDSR's model id
  is ours + 100 placeholder tokens, its vocab 1,000,100). ``num_items = 999,999``.
* ``domains`` / ``target_domain``: the raw KuaiRand tab id (``0..14``; present: 0, 1, 4, 7, 8, 9, 11).
  Items are shared across tabs, so there are no per-domain item ranges (``domain_item_ranges`` is None).
* ``overlap``: the row has events in both tabs of AutoCDSR's cross-domain pair, 9 and 4.
* ``user_id``: the data has **no user id**; rows are windows (5,101 of them for ~1,000 users). ``user_id``
  is a dataset-wide *window* id: training rows ``0..3100`` (partition number order, then record order),
  then evaluation, then testing rows.
* ``timestamps``: no times in the data: positions ``0..n-1`` of the kept events.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re

import numpy as np

from jaxrec.data import catalog, paths
from jaxrec.data.catalog import SequenceTable
from jaxrec.data.errors import DataError
from jaxrec.data.readers import ChecksumVerifier, DropReport
from jaxrec.data.tfrecord import parse_example, read_tfrecords

__all__ = ["NAME", "RAW_SUBDIR", "SPLIT_DIRS", "KuaiRandData", "read_kuairand1k", "split_files",
           "builder_class", "make_builder"]

NAME = "kuairand1k_autocdsr"
RAW_SUBDIR = "kuairand1k_autocdsr"
SPLIT_DIRS = {"train": "training", "valid": "evaluation", "test": "testing"}
WINDOW = 800
OOV_ID = -1
PAD_ID = 0
NUM_RAW_IDS = 1_000_000          # raw video ids 0..999,999 (AutoCDSR vocab 1,000,100 = 1M + 100 placeholders)
NUM_ITEMS = NUM_RAW_IDS - 1      # stored ids 1..999,999 (raw 0 = padding)
NUM_TABS = 15                    # KuaiRand tab ids 0..14
CROSS_DOMAIN_PAIR = (9, 4)       # AutoCDSR's cross-domain model config
MIN_SEQ_LEN = 10                 # AutoCDSR min_sequence_length
ITEM_FEATURE = "sequence_data"
DOMAIN_FEATURE = "sequence_event_type"
LICENCE = ("CC BY-SA 4.0 (KuaiRand-1K, Gao et al. CIKM 2022; processed by AutoCDSR, Ju et al. KDD 2025); "
           "attribute both, share derivatives alike")

SOURCE_STATS = {
    "train": {"files": 311, "rows": 3101, "events": 2480800, "distinct_ids": 729828,
              "domain_counts": {0: 95069, 1: 10, 4: 354787, 7: 19433, 8: 29999, 9: 1980615, 11: 887}},
    "valid": {"files": 100, "rows": 1000, "events": 800000, "distinct_ids": 354708,
              "domain_counts": {0: 30468, 1: 2, 4: 113408, 7: 6188, 8: 9459, 9: 640187, 11: 288}},
    "test": {"files": 100, "rows": 1000, "events": 800000, "distinct_ids": 358633,
             "domain_counts": {0: 31019, 1: 5, 4: 113503, 7: 6125, 8: 9473, 9: 639545, 11: 330}},
}

_PART = re.compile(r"^partition_(\d+)\.tfrecord\.gz$")


@dataclasses.dataclass
class KuaiRandData:
    tables: dict          # split -> SequenceTable
    raw_stats: dict       # split -> {files, rows, events, distinct_ids, domain_counts} of the raw rows
    drops: DropReport
    checksums: dict

    def metadata(self) -> dict:
        splits = {s: t.stats(num_domains=NUM_TABS) for s, t in self.tables.items()}
        for s in splits:
            bd = splits[s]["interactions_by_domain"]
            splits[s]["interactions_by_domain"] = {str(i): c for i, c in enumerate(bd) if c}
            tg = splits[s]["targets_by_domain"]
            splits[s]["targets_by_domain"] = {str(i): c for i, c in enumerate(tg) if c}
        all_items = np.concatenate([np.concatenate([t.items, t.target]) for t in self.tables.values()])
        stats = {
            "users": int(sum(len(t) for t in self.tables.values())),  # kept windows
            "users_note": "windows (rows), not users: the data has no user id",
            "items": NUM_ITEMS,
            "interactions": int(sum(v["interactions"] for v in splits.values())),
            "items_seen": catalog.count_distinct(all_items),
            "raw_splits": self.raw_stats,
            "splits": splits,
        }
        return catalog.to_jsonable({
            "catalog_name": NAME,
            "num_users": int(sum(v["rows"] for v in self.raw_stats.values())),  # window-id space
            "num_items": NUM_ITEMS,
            "domain_names": [f"tab{i}" for i in range(NUM_TABS)],
            "domain_item_ranges": None,
            "cross_domain_pair": list(CROSS_DOMAIN_PAIR),
            "stats": stats,
            "drops": self.drops.as_dict(),
            "unavailable_splits": {},
            "checksums": self.checksums,
        })


def split_files(raw_dir: str | os.PathLike, split: str, verifier: ChecksumVerifier | None = None) -> list[pathlib.Path]:
    """The partition files of one split, in partition-number order.

    With a verifier holding SOURCE.md checksums, the set is the one SOURCE.md lists (a listed file that is
    missing, or a present one that is not listed, is a DataError); otherwise the files present.
    """
    folder = pathlib.Path(raw_dir) / SPLIT_DIRS[split]
    if not folder.is_dir():
        raise DataError(folder, f"split folder for {split!r} missing", expected="a folder of partition_*.tfrecord.gz")
    present = {p.name: p for p in folder.iterdir() if p.is_file() and p.name.endswith(".tfrecord.gz")}
    for n in present:
        if not _PART.match(n):
            raise DataError(folder / n, "unexpected file name", expected="partition_<N>.tfrecord.gz", got=n)
    names = set(present)
    if verifier is not None and verifier.enabled:
        prefix = (folder.resolve().relative_to(verifier.root.resolve()).as_posix() + "/")
        listed = {k[len(prefix):] for k in verifier.expected if k.startswith(prefix) and "/" not in k[len(prefix):]}
        missing = sorted(listed - names, key=lambda n: int(_PART.match(n).group(1)) if _PART.match(n) else -1)
        if missing:
            raise DataError(folder / missing[0], f"split file missing ({len(missing)} of {len(listed)} listed in "
                            "SOURCE.md are absent)", expected="every file listed in SOURCE.md")
        names = listed | names  # extra unlisted files fail checksum verification ("no sha256 listed")
    if not names:
        raise DataError(folder, f"no partition files for split {split!r}", expected="partition_*.tfrecord.gz files")
    return [folder / n for n in sorted(names, key=lambda n: int(_PART.match(n).group(1)))]


def read_kuairand1k(raw_dir: str | os.PathLike | None = None, *, verify_checksums: bool = True,
                    splits=("train", "valid", "test")) -> KuaiRandData:
    """Read, verify and convert the AutoCDSR TFRecords (protocol in the module docstring)."""
    rd = paths.raw_dir(subdir=RAW_SUBDIR) if raw_dir is None else pathlib.Path(raw_dir)
    ver = ChecksumVerifier(rd, enabled=verify_checksums)
    drops = DropReport()
    tables, raw_stats = {}, {}
    next_uid = 0
    for split in splits:
        files = split_files(rd, split, ver)
        for f in files:
            ver.verify(f)
        per_file = read_tfrecords(files, compression="gzip")
        rows_items, rows_doms, where = [], [], []
        for f, recs in zip(files, per_file):
            for i, r in enumerate(recs):
                ex = parse_example(r, path=f, index=i)
                for key in (ITEM_FEATURE, DOMAIN_FEATURE):
                    v = ex.get(key)
                    if not isinstance(v, np.ndarray) or v.dtype != np.int64:
                        raise DataError(f, f"record {i} (0-based): feature {key!r} missing or not an int64 list",
                                        line=i + 1, field=key, expected="int64_list", got=type(v).__name__)
                    if len(v) != WINDOW:
                        raise DataError(f, f"record {i} (0-based): wrong window length", line=i + 1, field=key,
                                        expected=f"{WINDOW} values", got=len(v))
                rows_items.append(ex[ITEM_FEATURE])
                rows_doms.append(ex[DOMAIN_FEATURE])
                where.append((f, i))
        if not rows_items:
            raise DataError(rd / SPLIT_DIRS[split], f"split {split!r} has no records", expected=">= 1 record")
        seq = np.stack(rows_items)
        dom = np.stack(rows_doms)
        bad = np.nonzero(((seq < 0) & (seq != OOV_ID)) | (seq >= NUM_RAW_IDS))
        if bad[0].size:
            r, c = int(bad[0][0]), int(bad[1][0])
            f, i = where[r]
            raise DataError(f, f"record {i} (0-based): video id out of range", line=i + 1, field=f"{ITEM_FEATURE}[{c}]",
                            expected=f"-1 (OOV) or 0..{NUM_RAW_IDS - 1}", got=int(seq[r, c]))
        bad = np.nonzero((dom < 0) | (dom >= NUM_TABS))
        if bad[0].size:
            r, c = int(bad[0][0]), int(bad[1][0])
            f, i = where[r]
            raise DataError(f, f"record {i} (0-based): domain (tab) id out of range", line=i + 1,
                            field=f"{DOMAIN_FEATURE}[{c}]", expected=f"0..{NUM_TABS - 1}", got=int(dom[r, c]))
        dc = np.bincount(dom.ravel(), minlength=NUM_TABS)
        raw_stats[split] = {"files": len(files), "rows": int(seq.shape[0]), "events": int(seq.size),
                            "distinct_ids": catalog.count_distinct(seq),
                            "domain_counts": {str(k): int(c) for k, c in enumerate(dc) if c}}
        scope = SPLIT_DIRS[split]
        n_oov = int((seq == OOV_ID).sum())
        n_pad = int((seq == PAD_ID).sum())
        if n_oov:
            r = int(np.nonzero((seq == OOV_ID).any(1))[0][0])
            drops.add(scope, "events with video id -1 (OOV; AutoCDSR remove_oov_tokens)", n_oov,
                      where=f"{where[r][0].name} record {where[r][1]}")
        if n_pad:
            r = int(np.nonzero((seq == PAD_ID).any(1))[0][0])
            drops.add(scope, "events with video id 0 (AutoCDSR padding token)", n_pad,
                      where=f"{where[r][0].name} record {where[r][1]}")
        keep = (seq != OOV_ID) & (seq != PAD_ID)
        lens = keep.sum(1)
        row_idx = np.arange(seq.shape[0], dtype=np.int64)
        short = lens < MIN_SEQ_LEN
        if short.any():
            r = int(np.nonzero(short)[0][0])
            drops.add(scope, f"rows with < {MIN_SEQ_LEN} events after removal (AutoCDSR min_sequence_length)",
                      int(short.sum()), where=f"{where[r][0].name} record {where[r][1]}")
            keep &= ~short[:, None]
            seq, dom, keep, lens, row_idx = seq[~short], dom[~short], keep[~short], lens[~short], row_idx[~short]
        values, doms = seq[keep], dom[keep].astype(np.int32)
        offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
        rec = np.repeat(np.arange(len(lens)), lens)
        positions = np.arange(len(values)) - offsets[rec]
        a, b = CROSS_DOMAIN_PAIR
        overlap = np.zeros(len(lens), bool)
        if len(values):
            has_a = np.add.reduceat((doms == a).astype(np.int64), offsets[:-1]) > 0
            has_b = np.add.reduceat((doms == b).astype(np.int64), offsets[:-1]) > 0
            overlap = has_a & has_b
        uid = next_uid + row_idx  # window id = raw row index (dropped rows keep their slot)
        next_uid += raw_stats[split]["rows"]
        tables[split] = SequenceTable.from_sequences(uid, values, doms, positions, offsets, overlap, cut=0)
        tables[split].check(NUM_ITEMS, where=f"{NAME}:{split}")
    drops.log(NAME)
    return KuaiRandData(tables=tables, raw_stats=raw_stats, drops=drops, checksums=dict(ver.verified))


# ------------------------------------------------------------------------------------------ TFDS builder

def _builder_class():
    import tensorflow_datasets as tfds

    class JaxrecKuairand1kAutocdsr(tfds.core.GeneratorBasedBuilder):
        """KuaiRand-1K AutoCDSR windows in the sequence schema; see ``jaxrec.data.builders.kuairand1k``."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "AutoCDSR TFRecords (commit d62039bf), OOV/padding removed, last event = target."}
        code_path = None

        def __init__(self, *, raw_dir: str | os.PathLike | None = None, verify_checksums: bool = True, **kwargs):
            self._raw_dir = raw_dir
            self._verify = verify_checksums
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__,
                features=catalog.sequence_features(),
                homepage="https://github.com/snap-research/AutoCDSR",
                license=LICENCE,
                metadata=tfds.core.MetadataDict(),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            data = read_kuairand1k(self._raw_dir, verify_checksums=self._verify)
            self.info.metadata.update(data.metadata())
            return {s: self._generate_examples(t) for s, t in data.tables.items()}

        def _generate_examples(self, table):
            yield from table.examples()

    return JaxrecKuairand1kAutocdsr


# The TFDS builder class, created once on first use (so importing the catalogue stays cheap).
builder_class = functools.cache(_builder_class)


def make_builder(raw_dir: str | None = None, data_dir: str | None = None, *, verify_checksums: bool = True):
    """``raw_dir``: the ``kuairand1k_autocdsr`` folder or a raw-data root holding it (None: default root)."""
    if raw_dir is not None and (pathlib.Path(raw_dir) / RAW_SUBDIR).is_dir():
        raw_dir = os.fspath(pathlib.Path(raw_dir) / RAW_SUBDIR)
    kw = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
    return builder_class()(raw_dir=raw_dir, verify_checksums=verify_checksums, file_format="array_record", **kw)


catalog.register(catalog.DatasetSpec(
    name=NAME,
    kind="sequence",
    make_builder=lambda raw_dir, data_dir: make_builder(raw_dir, data_dir),
    raw_subdir=RAW_SUBDIR,
    licence=LICENCE,
    source_stats={"splits": SOURCE_STATS},
    description="KuaiRand-1K 800-event windows with tab ids as domains (AutoCDSR preprocessing).",
))
