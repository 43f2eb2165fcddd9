"""Cross-domain sequential recommendation datasets (Amazon domain pairs) in the normalised sequence schema.

One TFDS builder, ``JaxrecCrossDomainSeq`` (ArrayRecord; no TensorFlow), with one BuilderConfig per
catalogue name. Every record follows :mod:`jaxrec.data.catalog`'s ``"sequence"`` schema: global item ids
``1..num_items`` with domain A first (``domain 0``) and domain B after it (``domain 1``), ``0`` = padding
(never stored); ``user_id`` unique across the whole dataset; ``overlap`` = the user's full sequence
(history + target) touches both domains. Per-domain item ranges, user/item counts, per-file statistics,
verified checksums and anything a protocol dropped are stored in the prepared dataset's metadata
(:func:`jaxrec.data.catalog.info` / :func:`~jaxrec.data.catalog.stats`).

Every raw file read is first checked against the sha256 listed in the dataset's ``SOURCE.md`` (the
nearest one above the raw folder); every reader problem is a :class:`DataError` naming file, line, field.

``llmcdsr/food_kitchen`` (LLMCDSR, Xin et al. TOIS 2025; raw ``llmcdsr/food-kitchen``)
    ``num.txt`` = (nA, nB); raw global ids A ``0..nA-1``, B ``nA..nA+nB-1`` -> stored ``+1``.
    ``train`` = ``train_A.txt`` + ``train_B.txt`` + ``train_overlap.txt`` (one record per line, in that
    order): ``items`` = the line's sequence without its last item, ``target`` = its last item.
    ``valid`` / ``test``: last item of the line is the target (LLMCDSR ``load_eval``).
    User ids restart at 1 in every file; dataset-wide ids are ``offset + (u - 1)`` with blocks in the order
    train_A, train_B, train_overlap, valid, test (block sizes from ``instance_num.txt`` and the valid/test
    line counts). Line counts are checked against ``instance_num.txt``; train_A items must be in domain A,
    train_B items in domain B. No timestamps in the data: ``timestamps`` are positions ``0..n-1``.
``llmcdsr/movie_book`` (raw ``llmcdsr/movie-book``): ``train_B.txt`` (124,889 users) is missing upstream
    (>= 4 MiB, not in the snapshot), so the ``train`` split cannot be built faithfully and is not
    registered (``catalog.load(..., "train")`` raises a DataError saying so). What the files present allow:
    ``train_a`` (train_A.txt), ``train_overlap`` (train_overlap.txt), ``valid``, ``test``. The train_B user
    id block is still reserved (from instance_num.txt) so ids stay stable should the file appear.
``abxi/afk`` (ABXI, Bian et al. WWW 2025; raw ``abxi/data/afk``)
    ``afk_50_preprocessed.txt``: ``user item|ts ...`` chronological, item ids already ``1..N``;
    ``map_item_50.txt`` gives each item's domain (domain-0 ids are ``1..nA``, checked). ABXI's
    leave-last-out protocol on each user's sequence ``s`` (truncated to its last 50 events, ABXI
    ``len_max``; anything cut is counted in the drop report): ``train`` items ``s[:-3]`` target ``s[-3]``
    (i.e. ABXI trains on ``s[:-2]``), ``valid`` items ``s[:-2]`` target ``s[-2]``, ``test`` items ``s[:-1]``
    target ``s[-1]``. Unix timestamps; user ids as in the file (0-based, = ``map_user_50.txt``).
``c2dsr/food_kitchen``, ``c2dsr/movie_book`` (C2DSR, Cao et al. CIKM 2022; raw ``c2dsr/<Pair>``)
    ``traindata_new.txt`` is missing upstream (>= 4 MiB), so only ``valid`` and ``test`` exist; the train
    split is registered as unavailable. ``Alist.txt``/``Blist.txt`` give nA/nB (local index column must be
    ``0..n-1``); raw global ids as LLMCDSR (stored ``+1``). Each line's ``item|ts|date|`` records are
    stably sorted by ``ts`` (C2DSR's loader), the last one is the target. User ids = ``userlist.txt``
    indices (each user in exactly one of valid/test, checked). Unix timestamps.
``c2dsr/food_kitchen_vt`` (the same files) -- a trainable stand-in: ``train`` = 90 % of the users of
    ``validdata_new.txt`` (whole sequences; the official loader trains on every next item of a train line),
    ``valid`` = the other 10 % (seeded permutation, :func:`holdout_split`), ``test`` = ``testdata_new.txt``
    unchanged (the official test users, targets and, in the C2DSR task, the official 999-negative protocol).
    Much less training data than the missing ``traindata_new.txt``; numbers on it are not the paper's setting.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import numpy as np

from jaxrec.data import catalog, paths
from jaxrec.data.catalog import SequenceTable
from jaxrec.data.errors import DataError
from jaxrec.data.readers import (
    ChecksumVerifier,
    DropReport,
    Sequences,
    read_csv_strict,
    read_id_sequence_file,
    read_int_lines,
    read_json_strict,
    read_timed_sequence_file,
    require_file,
)

__all__ = ["CONFIGS", "CrossDomainData", "read_llmcdsr", "read_abxi", "read_c2dsr", "read_config",
           "builder_class", "make_builder"]

ABXI_LEN_MAX = 50

_AMAZON = "Amazon review data (McAuley lab, UCSD), research use only"


@dataclasses.dataclass(frozen=True)
class PairConfig:
    """Static description of one catalogue entry (mirrored in the TFDS BuilderConfig)."""

    config_name: str
    catalog_name: str
    family: str              # "llmcdsr" | "abxi" | "c2dsr"
    raw_subdir: str
    domain_names: tuple
    splits: tuple
    unavailable_splits: dict
    licence: str
    description: str
    source_stats: dict
    valid_holdout: float = 0.0   # c2dsr "_vt" configs: share of the valid file's users kept as ``valid``
    holdout_seed: int = 0


CONFIGS: dict[str, PairConfig] = {}


def _cfg(**kw):
    c = PairConfig(**kw)
    CONFIGS[c.config_name] = c
    return c


_cfg(config_name="llmcdsr_food_kitchen", catalog_name="llmcdsr/food_kitchen", family="llmcdsr",
     raw_subdir="llmcdsr/food-kitchen", domain_names=("food", "kitchen"), splits=("train", "valid", "test"),
     unavailable_splits={}, licence=f"no licence stated (LLMCDSR data); {_AMAZON}; cite LLMCDSR (TOIS 2025)",
     description="LLMCDSR Food-Kitchen: single-domain A/B users + overlapping users; valid/test overlap users.",
     source_stats={"num_items": (8661, 27637), "files": {
         "train_A.txt": {"rows": 5472, "interactions": 37281, "by_domain": (37281, 0)},
         "train_B.txt": {"rows": 38191, "interactions": 265817, "by_domain": (0, 265817)},
         "train_overlap.txt": {"rows": 7501, "interactions": 99170, "by_domain": (45849, 53321)},
         "valid.txt": {"rows": 960, "interactions": 18133, "by_domain": (8739, 9394)},
         "test.txt": {"rows": 937, "interactions": 15726, "by_domain": (6447, 9279)}}})
_cfg(config_name="llmcdsr_movie_book", catalog_name="llmcdsr/movie_book", family="llmcdsr",
     raw_subdir="llmcdsr/movie-book", domain_names=("movie", "book"),
     splits=("train_a", "train_overlap", "valid", "test"),
     unavailable_splits={"train": "llmcdsr/movie-book/train_B.txt (124,889 book-only users) is missing upstream "
                                  "(>= 4 MiB, not in the data snapshot); the full train split cannot be built. "
                                  "Use 'train_a' / 'train_overlap' for what is present."},
     licence=f"no licence stated (LLMCDSR data); {_AMAZON}; cite LLMCDSR (TOIS 2025)",
     description="LLMCDSR Movie-Book (partial: train_B missing upstream).",
     source_stats={"num_items": (12875, 93860), "files": {
         "train_A.txt": {"rows": 12185, "interactions": 142887, "by_domain": (142887, 0)},
         "train_overlap.txt": {"rows": 6652, "interactions": 104642, "by_domain": (57611, 47031)},
         "valid.txt": {"rows": 829, "interactions": 11310, "by_domain": (6161, 5149)},
         "test.txt": {"rows": 836, "interactions": 10604, "by_domain": (5610, 4994)}}})
_cfg(config_name="abxi_afk", catalog_name="abxi/afk", family="abxi", raw_subdir="abxi/data/afk",
     domain_names=("food", "kitchen"), splits=("train", "valid", "test"), unavailable_splits={},
     licence=f"no licence stated (ABXI data); {_AMAZON}; cite ABXI (WWW 2025)",
     description="ABXI Food-Kitchen (afk): full timestamped mixed-domain sequences, leave-last-out splits.",
     source_stats={"users": 7144, "items": 28095, "items_by_domain": (11837, 16258), "interactions": 173548,
                   "interactions_by_domain": (83663, 89885), "seq_len": (10, 24.29, 50)})
_C2DSR_TRAIN_MISSING = ("traindata_new.txt is missing upstream (>= 4 MiB in every copy found; see "
                        "c2dsr/SOURCE.md); only valid/test can be built.")
_cfg(config_name="c2dsr_food_kitchen", catalog_name="c2dsr/food_kitchen", family="c2dsr",
     raw_subdir="c2dsr/Food-Kitchen", domain_names=("food", "kitchen"), splits=("valid", "test"),
     unavailable_splits={"train": _C2DSR_TRAIN_MISSING},
     licence=f"C2DSR code MIT; data no licence stated; {_AMAZON}; cite C2DSR (CIKM 2022) and pi-net",
     description="C2DSR Food-Kitchen (valid/test only: traindata_new.txt missing upstream).",
     source_stats={"num_items": (29207, 34886), "users": 16579, "splits": {
         "valid": {"records": 8173, "targets_by_domain": (2722, 5451), "interactions": 80447},
         "test": {"records": 8406, "targets_by_domain": (2747, 5659), "interactions": 82787}},
         "seq_len": (6, 15)})
_C2DSR_VT = ("train = {train} of the {valid} users of validdata_new.txt (their whole sequences, seeded user "
             "permutation), valid = the other {hold} ({pct} %), test = testdata_new.txt; a stand-in for the missing "
             "traindata_new.txt: train and test users are disjoint, so no test user's earlier lines are trained on.")
_cfg(config_name="c2dsr_food_kitchen_vt", catalog_name="c2dsr/food_kitchen_vt", family="c2dsr",
     raw_subdir="c2dsr/Food-Kitchen", domain_names=("food", "kitchen"), splits=("train", "valid", "test"),
     unavailable_splits={},
     licence=f"C2DSR code MIT; data no licence stated; {_AMAZON}; cite C2DSR (CIKM 2022) and pi-net",
     description="C2DSR Food-Kitchen, valid file split into train / valid by user: " + _C2DSR_VT.format(
         train="7,356", valid="8,173", hold="817", pct=10),
     source_stats={"num_items": (29207, 34886), "users": 16579, "records": {"train": 7356, "valid": 817,
                                                                          "test": 8406}},
     valid_holdout=0.1, holdout_seed=0)
_cfg(config_name="c2dsr_movie_book", catalog_name="c2dsr/movie_book", family="c2dsr",
     raw_subdir="c2dsr/Movie-Book", domain_names=("movie", "book"), splits=("valid", "test"),
     unavailable_splits={"train": _C2DSR_TRAIN_MISSING},
     licence=f"C2DSR code MIT; data no licence stated; {_AMAZON}; cite C2DSR (CIKM 2022) and pi-net",
     description="C2DSR Movie-Book (valid/test only: traindata_new.txt missing upstream).",
     source_stats={"num_items": (36845, 63937), "users": 15352, "splits": {
         "valid": {"records": 7644, "targets_by_domain": (2032, 5612), "interactions": 73476},
         "test": {"records": 7708, "targets_by_domain": (1978, 5730), "interactions": 74729}},
         "seq_len": (6, 15)})


# ------------------------------------------------------------------------------------ shared helpers

@dataclasses.dataclass
class CrossDomainData:
    """Everything a config's raw files yield: split tables plus the metadata stored with them."""

    tables: dict                # split -> SequenceTable
    num_users: int              # user-id space (ids 0..num_users-1)
    num_items: int              # ids 1..num_items
    domain_names: tuple
    domain_item_ranges: dict    # domain -> (first, last) inclusive
    file_stats: dict            # raw file -> {rows, interactions, by_domain}
    drops: DropReport
    checksums: dict             # raw file (relative to its SOURCE.md) -> sha256 verified

    def metadata(self, cfg: PairConfig) -> dict:
        splits = {s: t.stats(num_domains=len(self.domain_names)) for s, t in self.tables.items()}
        all_users = np.unique(np.concatenate([t.user_id for t in self.tables.values()])) if self.tables else []
        all_items = np.concatenate([np.concatenate([t.items, t.target]) for t in self.tables.values()])
        stats = {
            "users": int(len(all_users)),
            "items": int(self.num_items),
            "interactions": int(sum(v["interactions"] for v in self.file_stats.values())),
            "items_seen": catalog.count_distinct(all_items),
            "files": self.file_stats,
            "splits": splits,
        }
        return catalog.to_jsonable({
            "catalog_name": cfg.catalog_name,
            "family": cfg.family,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "domain_names": list(self.domain_names),
            "domain_item_ranges": {k: list(v) for k, v in self.domain_item_ranges.items()},
            "stats": stats,
            "drops": self.drops.as_dict(),
            "unavailable_splits": dict(cfg.unavailable_splits),
            "checksums": self.checksums,
        })


def _record_index(offsets: np.ndarray) -> np.ndarray:
    """``[t]`` record index of each flat element."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def _overlap(domains: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per record: both domain 0 and domain 1 occur (records non-empty)."""
    n_b = np.add.reduceat(domains.astype(np.int64), offsets[:-1]) if len(offsets) > 1 else np.zeros(0, np.int64)
    return (n_b > 0) & (n_b < np.diff(offsets))


def _tail_split(user_id, values, domains, times, offsets, overlap, cut: int) -> SequenceTable:
    """Record ``i`` = sequence ``i`` without its last ``cut`` elements: target = last kept, items = the rest."""
    return SequenceTable.from_sequences(user_id, values, domains, times, offsets, overlap, cut=cut)


def _file_stats(seqs: Sequences, domains: np.ndarray) -> dict:
    return {"rows": len(seqs), "interactions": int(len(seqs.values)),
            "by_domain": [int((domains == 0).sum()), int((domains == 1).sum())]}


def _positions(offsets: np.ndarray) -> np.ndarray:
    rec = _record_index(offsets)
    return (np.arange(offsets[-1]) - offsets[rec]).astype(np.int64)


def _check_permutation_users(seqs: Sequences, start: int = 1) -> None:
    """Users (unique, checked by the reader) must be exactly start..start+n-1."""
    n = len(seqs)
    bad = np.nonzero((seqs.users < start) | (seqs.users >= start + n))[0]
    if bad.size:
        i = int(bad[0])
        raise DataError(seqs.path, "user id out of range", line=int(seqs.lines[i]), field="user",
                        expected=f"user ids {start}..{start + n - 1} (one per line)", got=int(seqs.users[i]))


def _verified_file_getter(raw: pathlib.Path, cfg: "PairConfig", ver: ChecksumVerifier):
    """``get(name)``: the path of a required raw file, checked to exist and to match its SOURCE.md sha256."""

    def get(name: str) -> pathlib.Path:
        p = require_file(raw / name, f"{cfg.catalog_name}: required file {name}")
        ver.verify(p)
        return p

    return get



# ------------------------------------------------------------------------------------------- LLMCDSR

def read_llmcdsr(raw_dir: str | os.PathLike, cfg: PairConfig, *, verify_checksums: bool = True) -> CrossDomainData:
    """Read an LLMCDSR pair folder into split tables (see module docstring for the protocol)."""
    raw = pathlib.Path(raw_dir)
    ver = ChecksumVerifier(raw, enabled=verify_checksums)
    drops = DropReport()
    get = _verified_file_getter(raw, cfg, ver)

    n_a, n_b = read_int_lines(get("num.txt"), 2, field="num_items", min_value=1)
    inst = read_int_lines(get("instance_num.txt"), 3, field="instance_num")
    n_items = n_a + n_b
    needs = {"train": ("train_A", "train_B", "train_overlap"), "train_a": ("train_A",),
             "train_overlap": ("train_overlap",), "valid": ("valid",), "test": ("test",)}
    wanted = [f for s in cfg.splits for f in needs[s]]
    ranges = {"train_A": (0, n_a), "train_B": (n_a, n_items), "train_overlap": (0, n_items),
              "valid": (0, n_items), "test": (0, n_items)}
    declared = {"train_A": inst[0], "train_B": inst[1], "train_overlap": inst[2]}

    seqs: dict[str, Sequences] = {}
    for f in ("train_A", "train_B", "train_overlap", "valid", "test"):
        if f not in wanted:
            continue
        seqs[f] = read_id_sequence_file(get(f + ".txt"), id_range=ranges[f], min_len=2,
                                        expected_lines=declared.get(f))
        _check_permutation_users(seqs[f], start=1)

    # dataset-wide user ids: blocks train_A, train_B, train_overlap, valid, test
    n_valid = len(seqs["valid"]) if "valid" in seqs else 0
    n_test = len(seqs["test"]) if "test" in seqs else 0
    base = {"train_A": 0, "train_B": inst[0], "train_overlap": inst[0] + inst[1],
            "valid": inst[0] + inst[1] + inst[2], "test": inst[0] + inst[1] + inst[2] + n_valid}
    num_users = inst[0] + inst[1] + inst[2] + n_valid + n_test

    tables: dict[str, SequenceTable] = {}
    file_stats: dict[str, dict] = {}
    for f, s in seqs.items():
        dom = (s.values >= n_a).astype(np.int32)
        file_stats[f + ".txt"] = _file_stats(s, dom)
        tables[f] = _tail_split(base[f] + s.users - 1, s.values + 1, dom, _positions(s.offsets), s.offsets,
                                _overlap(dom, s.offsets), cut=0)
    out: dict[str, SequenceTable] = {}
    for split in cfg.splits:
        out[split] = SequenceTable.concat([tables[f] for f in needs[split]])
        out[split].check(n_items, where=f"{cfg.catalog_name}:{split}")
    return CrossDomainData(tables=out, num_users=num_users, num_items=n_items, domain_names=cfg.domain_names,
                           domain_item_ranges={cfg.domain_names[0]: (1, n_a), cfg.domain_names[1]: (n_a + 1, n_items)},
                           file_stats=file_stats, drops=drops, checksums=dict(ver.verified))


# ---------------------------------------------------------------------------------------------- ABXI

def read_abxi(raw_dir: str | os.PathLike, cfg: PairConfig, *, verify_checksums: bool = True,
              prefix: str = "afk", len_max: int = ABXI_LEN_MAX) -> CrossDomainData:
    """Read ABXI ``<prefix>_50_preprocessed.txt`` + maps into leave-last-out split tables."""
    raw = pathlib.Path(raw_dir)
    ver = ChecksumVerifier(raw, enabled=verify_checksums)
    drops = DropReport()
    get = _verified_file_getter(raw, cfg, ver)

    item_path = get(f"map_item_{len_max}.txt")
    m = read_json_strict(item_path)
    if not isinstance(m, dict) or not m:
        raise DataError(item_path, "malformed item map", expected="a JSON object {ASIN: [item_id, domain]}")
    ids = np.empty(len(m), np.int64)
    doms = np.empty(len(m), np.int64)
    for k, (asin, v) in enumerate(m.items()):
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)):
            raise DataError(item_path, "malformed item map entry", field=asin, expected="[item_id, domain] integers", got=v)
        ids[k], doms[k] = v
    n_items = len(m)
    order = np.argsort(ids)
    if not np.array_equal(ids[order], np.arange(1, n_items + 1)):
        raise DataError(item_path, "item ids are not exactly 1..N", field="item_id", expected=f"1..{n_items}, each once",
                        got=(int(ids.min()), int(ids.max()), len(np.unique(ids))))
    dom_of = np.zeros(n_items + 1, np.int32)
    dom_of[ids] = doms
    if not np.isin(doms, (0, 1)).all():
        raise DataError(item_path, "domain out of range", field="domain", expected="0 or 1", got=sorted(set(doms.tolist())))
    n_a = int((doms == 0).sum())
    if not ((dom_of[1:n_a + 1] == 0).all() and (dom_of[n_a + 1:] == 1).all()):
        raise DataError(item_path, "domain-0 item ids are not contiguous", field="domain",
                        expected=f"domain 0 = ids 1..{n_a}, domain 1 = ids {n_a + 1}..{n_items}")

    user_path = get(f"map_user_{len_max}.txt")
    mu = read_json_strict(user_path)
    if not isinstance(mu, dict) or not all(isinstance(v, int) for v in mu.values()):
        raise DataError(user_path, "malformed user map", expected="a JSON object {reviewer id: user_idx}")
    uvals = np.sort(np.fromiter(mu.values(), np.int64, len(mu)))
    n_users = len(mu)
    if not np.array_equal(uvals, np.arange(n_users)):
        raise DataError(user_path, "user indices are not exactly 0..U-1", field="user_idx",
                        expected=f"0..{n_users - 1}, each once")

    seq_path = get(f"{prefix}_{len_max}_preprocessed.txt")
    s = read_timed_sequence_file(seq_path, layout="abxi", id_range=(1, n_items + 1), user_range=(0, n_users),
                                 min_len=4)
    # chronological order within each line
    rec = _record_index(s.offsets)
    dec = np.nonzero((np.diff(s.times) < 0) & (rec[1:] == rec[:-1]))[0]
    if dec.size:
        k = int(dec[0]) + 1
        r = int(rec[k])
        raise DataError(seq_path, "timestamps not in chronological order", line=int(s.lines[r]),
                        field=f"items[{k - int(s.offsets[r])}].timestamp", expected=f">= {int(s.times[k - 1])}",
                        got=int(s.times[k]))
    values, times, offsets = s.values, s.times, s.offsets
    lens = np.diff(offsets)
    if (lens > len_max).any():
        # ABXI keeps the last len_max events of each line; count what that cuts
        over = np.nonzero(lens > len_max)[0]
        drops.add(seq_path.name, f"events before the last {len_max} of a user (ABXI len_max)",
                  n=int((lens[over] - len_max).sum()), where=f"line {int(s.lines[over[0]])}")
        pos = np.arange(len(values)) - offsets[rec]
        keep = pos >= (lens - len_max)[rec]
        values, times = values[keep], times[keep]
        lens = np.minimum(lens, len_max)
        offsets = np.concatenate(([0], np.cumsum(lens)))
    dom = dom_of[values]
    file_stats = {seq_path.name: {"rows": len(s), "interactions": int(len(values)),
                                  "by_domain": [int((dom == 0).sum()), int((dom == 1).sum())]}}
    ov = _overlap(dom, offsets)
    tables = {split: _tail_split(s.users, values, dom, times, offsets, ov, cut=cut)
              for split, cut in (("train", 2), ("valid", 1), ("test", 0))}
    for split, t in tables.items():
        t.check(n_items, where=f"{cfg.catalog_name}:{split}")
    return CrossDomainData(tables={k: tables[k] for k in cfg.splits}, num_users=n_users, num_items=n_items,
                           domain_names=cfg.domain_names,
                           domain_item_ranges={cfg.domain_names[0]: (1, n_a), cfg.domain_names[1]: (n_a + 1, n_items)},
                           file_stats=file_stats, drops=drops, checksums=dict(ver.verified))


# --------------------------------------------------------------------------------------------- C2DSR

def _read_item_list(path: pathlib.Path) -> int:
    t = read_csv_strict(path, [("orig_index", "int"), ("asin", "str"), ("local_index", "int")], delimiter="\t",
                        unique=["asin"])
    bad = np.nonzero(t["local_index"] != np.arange(len(t["local_index"])))[0]
    if bad.size:
        i = int(bad[0])
        raise DataError(path, "local item index out of sequence", line=i + 1, field="local_index",
                        expected=str(i), got=int(t["local_index"][i]))
    return len(t["local_index"])


def read_c2dsr(raw_dir: str | os.PathLike, cfg: PairConfig, *, verify_checksums: bool = True) -> CrossDomainData:
    """Read a C2DSR pair folder (valid/test; the train file is missing upstream)."""
    raw = pathlib.Path(raw_dir)
    ver = ChecksumVerifier(raw, enabled=verify_checksums)
    drops = DropReport()
    get = _verified_file_getter(raw, cfg, ver)

    n_a = _read_item_list(get("Alist.txt"))
    n_b = _read_item_list(get("Blist.txt"))
    n_items = n_a + n_b
    ul_path = get("userlist.txt")
    ul = read_csv_strict(ul_path, [("reviewer_id", "str"), ("user_index", "int")], delimiter="\t",
                         unique=["user_index"])
    n_users = len(ul["user_index"])
    bad = np.nonzero((ul["user_index"] < 0) | (ul["user_index"] >= n_users))[0]
    if bad.size:
        i = int(bad[0])
        raise DataError(ul_path, "user index out of range", line=i + 1, field="user_index",
                        expected=f"0..{n_users - 1}", got=int(ul["user_index"][i]))

    files = {"valid": "validdata_new.txt", "test": "testdata_new.txt", "train": "traindata_new.txt"}
    seen_user: dict[int, tuple[str, int]] = {}
    tables, file_stats = {}, {}
    raw_splits = ("valid", "test") if cfg.valid_holdout else cfg.splits
    for split in raw_splits:
        s = read_timed_sequence_file(get(files[split]), layout="c2dsr", id_range=(0, n_items),
                                     user_range=(0, n_users), min_len=2)
        for u, ln in zip(s.users.tolist(), s.lines.tolist()):
            if u in seen_user:
                f0, l0 = seen_user[u]
                raise DataError(s.path, f"user {u} already has a sequence in {f0} line {l0}", line=ln, field="user",
                                expected="each user in exactly one of valid/test", got=u)
            seen_user[u] = (files[split], ln)
        rec = _record_index(s.offsets)
        order = np.lexsort((s.times, rec))  # stable: by record, then timestamp, ties in file order
        values, times = s.values[order], s.times[order]
        dom = (values >= n_a).astype(np.int32)
        file_stats[files[split]] = _file_stats(s, dom)
        tables[split] = _tail_split(s.users, values + 1, dom, times, s.offsets, _overlap(dom, s.offsets), cut=0)
        tables[split].check(n_items, where=f"{cfg.catalog_name}:{split}")
    if cfg.valid_holdout:
        tables = dict(holdout_split(tables["valid"], cfg.valid_holdout, cfg.holdout_seed), test=tables["test"])
    return CrossDomainData(tables=tables, num_users=n_users, num_items=n_items, domain_names=cfg.domain_names,
                           domain_item_ranges={cfg.domain_names[0]: (1, n_a), cfg.domain_names[1]: (n_a + 1, n_items)},
                           file_stats=file_stats, drops=drops, checksums=dict(ver.verified))


def holdout_split(table: SequenceTable, fraction: float, seed: int) -> dict:
    """``{"train", "valid"}``: ``round(fraction * n)`` records of ``table`` drawn by a seeded permutation of its
    records become ``valid``, the rest ``train`` (both kept in file order); every record lands in exactly one."""
    n = len(table)
    n_hold = int(round(float(fraction) * n))
    if not 0 < n_hold < n:
        raise ValueError(f"holdout fraction {fraction} of {n} records leaves an empty split")
    hold = np.zeros(n, bool)
    hold[np.random.default_rng(int(seed)).permutation(n)[:n_hold]] = True
    return {"train": table.take(np.nonzero(~hold)[0]), "valid": table.take(np.nonzero(hold)[0])}


_READERS = {"llmcdsr": read_llmcdsr, "abxi": read_abxi, "c2dsr": read_c2dsr}


def read_config(config_name: str, raw_dir: str | os.PathLike | None = None, *,
                verify_checksums: bool = True) -> CrossDomainData:
    """Read the raw files of one config (``raw_dir`` None -> ``paths.raw_dir(subdir=cfg.raw_subdir)``)."""
    cfg = CONFIGS[config_name]
    rd = paths.raw_dir(subdir=cfg.raw_subdir) if raw_dir is None else pathlib.Path(raw_dir)
    if not rd.is_dir():
        raise DataError(rd, "raw dataset folder does not exist", expected=f"the folder holding {cfg.raw_subdir}")
    data = _READERS[cfg.family](rd, cfg, verify_checksums=verify_checksums)
    data.drops.log(cfg.catalog_name)
    return data


# ------------------------------------------------------------------------------------------ TFDS builder

def _builder_class():
    import tensorflow_datasets as tfds

    @dataclasses.dataclass(eq=False)
    class CrossDomainSeqConfig(tfds.core.BuilderConfig):
        catalog_name: str = ""

    class JaxrecCrossDomainSeq(tfds.core.GeneratorBasedBuilder):
        """Cross-domain sequential datasets (LLMCDSR, ABXI, C2DSR); see ``jaxrec.data.builders.cross_domain_seq``."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "LLMCDSR food-kitchen/movie-book, ABXI afk, C2DSR food-kitchen/movie-book."}
        BUILDER_CONFIGS = [CrossDomainSeqConfig(name=c.config_name, description=c.description,
                                                catalog_name=c.catalog_name) for c in CONFIGS.values()]
        code_path = None  # no checksums file / importlib_resources lookup (see builders/embedded.py)

        def __init__(self, *, raw_dir: str | os.PathLike | None = None, verify_checksums: bool = True, **kwargs):
            self._raw_dir = raw_dir
            self._verify = verify_checksums
            super().__init__(**kwargs)

        def _info(self):
            cfg = CONFIGS[self.builder_config.name]
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"{cfg.description}\n\n{__doc__}",
                features=catalog.sequence_features(),
                license=cfg.licence,
                metadata=tfds.core.MetadataDict(),
                disable_shuffling=True,  # records in file order; always use user_id, not the index
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            cfg = CONFIGS[self.builder_config.name]
            data = read_config(cfg.config_name, self._raw_dir, verify_checksums=self._verify)
            self.info.metadata.update(data.metadata(cfg))
            return {split: self._generate_examples(table) for split, table in data.tables.items()}

        def _generate_examples(self, table):
            yield from table.examples()

    return JaxrecCrossDomainSeq


# The TFDS builder class, created once on first use (so importing the catalogue stays cheap).
builder_class = functools.cache(_builder_class)


def _resolve_raw(raw_dir: str | None, cfg: PairConfig) -> str | None:
    """``raw_dir`` may be the pair folder itself or a raw-data root holding ``cfg.raw_subdir``."""
    if raw_dir is None:
        return None
    p = pathlib.Path(raw_dir)
    return os.fspath(p / cfg.raw_subdir) if (p / cfg.raw_subdir).is_dir() else os.fspath(p)


def make_builder(config_name: str, raw_dir: str | None = None, data_dir: str | None = None, *,
                 verify_checksums: bool = True):
    cfg = CONFIGS[config_name]
    kw = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
    return builder_class()(config=config_name, raw_dir=_resolve_raw(raw_dir, cfg), verify_checksums=verify_checksums,
                           file_format="array_record", **kw)


for _c in CONFIGS.values():
    catalog.register(catalog.DatasetSpec(
        name=_c.catalog_name,
        kind="sequence",
        make_builder=(lambda raw_dir, data_dir, _n=_c.config_name: make_builder(_n, raw_dir, data_dir)),
        raw_subdir=_c.raw_subdir,
        licence=_c.licence,
        source_stats=dict(_c.source_stats),
        unavailable_splits=dict(_c.unavailable_splits),
        description=_c.description,
    ))
