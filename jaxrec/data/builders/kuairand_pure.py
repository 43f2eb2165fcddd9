"""KuaiRand-Pure impressions with every feedback label (``kuairand_pure``), for multi-task ranking (HoME/MMoE).

Data: KuaiRand (Gao et al., CIKM 2022, https://kuairand.com), licence **CC BY-SA 4.0** - attribution: "KuaiRand:
An Unbiased Sequential Recommendation Dataset with Randomly Exposed Videos", Chongming Gao, Shijun Li, Yuan
Zhang, Jiawei Chen, Biao Li, Wenqiang Lei, Peng Jiang, Xiangnan He; derived data must stay under CC BY-SA 4.0.
Raw files (``../shared/data/kuairand_pure``; only the CSVs are read - pyarrow/parquet is not needed):
``derived/log_standard_4_25_to_5_08_pure.csv`` (228,329 standard-policy impressions, 2022-04-25..05-08, 19
columns, sorted by user and time) joined with ``KuaiRand-Pure/data/user_features_pure.csv`` and
``KuaiRand-Pure/data/video_features_basic_pure.csv``. The official train period (04-08..04-24) and the
random-exposure log are not available (see SOURCE.md), so all three splits come from 04-25..05-08.

Splits by the log's ``date`` column; the windows are config parameters (inclusive YYYYMMDD; a window set to
None omits that split). Default config ``default``: ``train`` 2022-04-25..05-04 (10 days), ``valid``
05-05..05-06, ``test`` 05-07..05-08 - i.e. 167,281 / 26,683 / 28,905 impressions after the duplicate drop. Use
:func:`make_config` for other windows (``JaxrecKuaiRandPure(config=make_config("mine", valid_dates=...))``).
Impressions outside every window are dropped and counted.

One record per impression:

``impression_id``   int64        line number of the impression in the log CSV (header = line 1)
``user_id``         int64        KuaiRand user id (0..27284)
``video_id``        int64        KuaiRand video id (0..7582)
``time_ms``         int64        unix time in ms
``date``            int32        YYYYMMDD
``hour``            int32        0..23 (``hourmin // 100``; the log has hour resolution)
``tab``             int32        page/scenario id 0..14
``is_rand``         int32        1 for random exposure (always 0 here: standard policy only)
``labels``          int64 [12]   :data:`LABEL_NAMES`: the 8 binary feedbacks ``is_click, is_like, is_follow,
                                 is_comment, is_forward, is_hate, long_view, is_profile_enter`` then the 4 times
                                 ``play_time_ms, duration_ms, profile_stay_time, comment_stay_time``
``user_features``   int64 [30]   :data:`USER_FEATURE_NAMES` (user_features_pure.csv without user_id)
``video_features``  int64 [10]   :data:`VIDEO_FEATURE_NAMES` (video_features_basic_pure.csv without video_id/tag)
``video_tags``      int32 [k]    the video's tag ids (``tag`` is a comma-separated list; [] when missing)

Feature encoding: categorical string columns (``*_range``, ``user_active_degree``, ``video_type``,
``upload_type``) are replaced by their index in the sorted vocabulary stored in
``metadata["vocabularies"][column]``; ``upload_dt`` becomes YYYYMMDD; integral floats ("1.0") become ints; an
empty cell becomes -1 (``metadata["missing_value"]``; only in the columns SOURCE.md shows with gaps). The source's
own placeholder ``-124`` (``is_live_streamer``) is kept.

Protocol drops (``metadata["drops"]``): exact duplicate log rows (all 19 columns equal; 5,460 in this file) are
dropped with ``on_duplicate="drop"`` (default; ``"error"`` raises), and rows outside the split windows.
Statistics quoted by SOURCE.md are computed on the file as read (``stats["file_stats"]``) and per split after the
drops.

Strictness: missing file, sha256 differing from SOURCE.md, a header other than the official one, an empty or
malformed line, a non-integer, a value outside its declared range (ids, dates, hour, tab, binary labels,
negative times), an unknown user/video id in the log, duplicate ids in the feature files, an empty cell where
none is allowed -> :class:`~jaxrec.data.errors.DataError` naming file, line, field and expectation.
"""

from __future__ import annotations

import csv
import dataclasses
import re

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import _strict_io as sio
from jaxrec.data.errors import DataError

__all__ = ["KuaiRandConfig", "JaxrecKuaiRandPure", "make_config", "dataset_stats", "LABEL_NAMES",
           "USER_FEATURE_NAMES", "VIDEO_FEATURE_NAMES", "LOG_COLUMNS"]

LICENCE = ("CC BY-SA 4.0 (KuaiRand, kuairand.com); attribution: Gao et al., \"KuaiRand: An Unbiased Sequential "
           "Recommendation Dataset with Randomly Exposed Videos\", CIKM 2022; share derived data alike")

LOG_FILE = "derived/log_standard_4_25_to_5_08_pure.csv"
USER_FILE = "KuaiRand-Pure/data/user_features_pure.csv"
VIDEO_FILE = "KuaiRand-Pure/data/video_features_basic_pure.csv"
_CHECKSUMS = {
    LOG_FILE: "12990247677614badd52f0a66d7023ffbc5b51be9fffe1ceb5540a071a4f0880",
    USER_FILE: "dc729a656301b4c6d07f713fe41d05ec9bfaab670b90e531c70037caf033c011",
    VIDEO_FILE: "a6f7ee02684c5777422306cdc416e170302288aa89aca9dfea995edbd625bcc2",
}

LOG_COLUMNS = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
               "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
               "comment_stay_time", "is_profile_enter", "is_rand", "tab")
BINARY_LABELS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
                 "is_profile_enter")
TIME_LABELS = ("play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time")
LABEL_NAMES = BINARY_LABELS + TIME_LABELS
MISSING = -1

# (column, kind, nullable); kinds: int (integral number, "1.0" accepted), cat (string vocabulary), date
# (YYYY-MM-DD), tags (comma-separated ints)
_USER_COLUMNS = (
    ("user_active_degree", "cat", False), ("is_lowactive_period", "int", False), ("is_live_streamer", "int", False),
    ("is_video_author", "int", False), ("follow_user_num", "int", False), ("follow_user_num_range", "cat", False),
    ("fans_user_num", "int", False), ("fans_user_num_range", "cat", False), ("friend_user_num", "int", False),
    ("friend_user_num_range", "cat", False), ("register_days", "int", False), ("register_days_range", "cat", False),
) + tuple((f"onehot_feat{i}", "int", i in (4, 12, 13, 14, 15, 16, 17)) for i in range(18))
_VIDEO_COLUMNS = (
    ("author_id", "int", False), ("video_type", "cat", False), ("upload_dt", "date", False),
    ("upload_type", "cat", False), ("visible_status", "int", False), ("video_duration", "int", True),
    ("server_width", "int", False), ("server_height", "int", False), ("music_id", "int", False),
    ("music_type", "int", True),
)
USER_FEATURE_NAMES = tuple(c for c, _, _ in _USER_COLUMNS)
VIDEO_FEATURE_NAMES = tuple(c for c, _, _ in _VIDEO_COLUMNS)


@dataclasses.dataclass(eq=False, kw_only=True)
class KuaiRandConfig(sio.RawConfig):
    """Split windows (inclusive YYYYMMDD pairs; None = no such split), duplicate policy, declared ranges."""

    train_dates: tuple[int, int] | None = (20220425, 20220504)
    valid_dates: tuple[int, int] | None = (20220505, 20220506)
    test_dates: tuple[int, int] | None = (20220507, 20220508)
    on_duplicate: str = "drop"  # "drop" (count in metadata) | "error"
    num_users: int = 27285
    num_videos: int = 7583
    date_range: tuple[int, int] = (20220425, 20220508)
    time_ms_range: tuple[int, int] = (1650758400000, 1652140799999)  # 2022-04-24T00:00Z .. 2022-05-09T23:59:59Z
    num_tabs: int = 15
    source_stats: dict = dataclasses.field(default_factory=dict)

    def windows(self) -> dict[str, tuple[int, int]]:
        wins = {"train": self.train_dates, "valid": self.valid_dates, "test": self.test_dates}
        return {k: tuple(v) for k, v in wins.items() if v is not None}


SOURCE_STATS = {
    "rows": 228329, "val_rows": 94784, "test_rows": 133545, "users": 25156, "videos": 6361,
    "positive_rates": {"is_click": 0.4419, "long_view": 0.3108, "is_like": 0.01715, "is_profile_enter": 0.01853,
                       "is_comment": 0.00254, "is_follow": 0.00133, "is_forward": 0.00085, "is_hate": 0.00083,
                       "is_rand": 0.0},
    "median_play_time_ms": 4611, "median_duration_ms": 70600,
    "tab_counts": {1: 173008, 0: 20254, 4: 13647, 6: 11208, 2: 6909, 8: 1083, 5: 658, 12: 533, 3: 350, 11: 239,
                   9: 148, 7: 138, 13: 76, 10: 59, 14: 19},
    "user_feature_rows": 27285, "video_feature_rows": 7583,
}


def make_config(name: str = "default", **kwargs) -> KuaiRandConfig:
    """A config with this dataset's files and checksums; ``kwargs`` override windows / duplicate policy."""
    kwargs.setdefault("description", "KuaiRand-Pure standard-log impressions 2022-04-25..05-08 with all labels")
    return KuaiRandConfig(name=name, raw_subdir="kuairand_pure", checksums=dict(_CHECKSUMS),
                          source_stats=SOURCE_STATS, **kwargs)


CONFIGS = [make_config("default")]


# ----------------------------------------------------------------------------------------------------- readers

def _csv_rows(path, header: tuple[str, ...]) -> tuple[list[list[str]], list[int]]:
    """Rows of a CSV with exactly ``header`` (checked) and that many fields per row; empty lines are errors."""
    rows, lines = [], []
    with open(readers.require_file(path), newline="", encoding="utf-8") as f:
        reader = csv.reader(f, strict=True)
        try:
            got = next(reader)
        except StopIteration:
            raise DataError(path, "empty file", line=1, expected="a header row") from None
        except csv.Error as e:
            raise DataError(path, f"malformed CSV ({e})", line=1, expected="a header row") from None
        if tuple(got) != header:
            raise DataError(path, "unexpected header", line=1, field="header", expected=",".join(header),
                            got=",".join(got))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(path, f"malformed CSV ({e})", line=reader.line_num,
                                expected=f"{len(header)} comma-separated fields") from None
            if not row or (len(row) == 1 and not row[0].strip()):
                raise DataError(path, "empty record", line=reader.line_num, expected=f"{len(header)} fields")
            if len(row) != len(header):
                raise DataError(path, "malformed line", line=reader.line_num, field="line",
                                expected=f"{len(header)} comma-separated fields", got=",".join(row))
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise DataError(path, "no data rows", expected="at least one row")
    return rows, lines


_INT_RE = re.compile(r"-?[0-9]+")
_INTLIKE_RE = re.compile(r"-?[0-9]+(\.0)?")


def _read_int_csv(path, header: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A CSV of integers only (no quoting) with exactly ``header``: int64 [n, c] and the line numbers.

    Structure (empty lines, field counts) is checked line by line; the numbers are parsed by ``np.loadtxt``,
    and on failure the offending cell is located and reported.
    """
    try:
        text = readers.require_file(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text ({e.reason})", expected="a UTF-8 CSV") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise DataError(path, "empty file", line=1, expected="a header row")
    if tuple(lines[0].split(",")) != header:
        raise DataError(path, "unexpected header", line=1, field="header", expected=",".join(header), got=lines[0])
    body = lines[1:]
    if not body:
        raise DataError(path, "no data rows", expected="at least one row")
    ncomma = len(header) - 1
    for i, ln in enumerate(body):
        if ln.count(",") != ncomma:
            if not ln.strip():
                raise DataError(path, "empty record", line=i + 2, expected=f"{len(header)} fields")
            raise DataError(path, "malformed line", line=i + 2, field="line",
                            expected=f"{len(header)} comma-separated fields", got=ln)
    line_no = np.arange(2, len(body) + 2, dtype=np.int64)
    try:
        return np.loadtxt(body, delimiter=",", dtype=np.int64, ndmin=2), line_no
    except ValueError:
        pass
    for i, ln in enumerate(body):
        for j, tok in enumerate(ln.split(",")):
            if not _INT_RE.fullmatch(tok):
                raise DataError(path, "malformed value", line=i + 2, field=header[j], expected="a decimal integer",
                                got=tok)
    raise DataError(path, "malformed values", expected="64-bit decimal integers")  # pragma: no cover


def _check_col_range(path, values: np.ndarray, lines, field: str, lo: int, hi: int) -> None:
    bad = np.nonzero((values < lo) | (values > hi))[0]
    if bad.size:
        i = int(bad[0])
        raise DataError(path, "value outside the declared range", line=lines[i], field=field,
                        expected=f"{field} in {lo}..{hi}", got=int(values[i]))


def read_log(path, cfg: KuaiRandConfig) -> tuple[np.ndarray, np.ndarray]:
    """The impression log as int64 [n, 19] (columns :data:`LOG_COLUMNS`) and its line numbers, range-checked."""
    a, lines = _read_int_csv(path, LOG_COLUMNS)
    col = {c: a[:, j] for j, c in enumerate(LOG_COLUMNS)}
    _check_col_range(path, col["user_id"], lines, "user_id", 0, cfg.num_users - 1)
    _check_col_range(path, col["video_id"], lines, "video_id", 0, cfg.num_videos - 1)
    _check_col_range(path, col["date"], lines, "date", *cfg.date_range)
    _check_col_range(path, col["time_ms"], lines, "time_ms", *cfg.time_ms_range)
    _check_col_range(path, col["hourmin"], lines, "hourmin", 0, 2300)
    bad = np.nonzero(col["hourmin"] % 100 != 0)[0]
    if bad.size:
        raise DataError(path, "hourmin is not on the hour", line=lines[bad[0]], field="hourmin",
                        expected="HH00 (hour resolution)", got=int(col["hourmin"][bad[0]]))
    for c in BINARY_LABELS + ("is_rand",):
        _check_col_range(path, col[c], lines, c, 0, 1)
    for c in TIME_LABELS:
        _check_col_range(path, col[c], lines, c, 0, 2**53)
    _check_col_range(path, col["tab"], lines, "tab", 0, cfg.num_tabs - 1)
    return a, lines


_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _encode_column(path, lines, field: str, kind: str, nullable: bool, values: list[str]):
    """One feature column as int64 [n] (empty -> MISSING) and its sorted vocabulary (``cat`` columns)."""
    out = np.full(len(values), MISSING, np.int64)
    idx = [i for i, v in enumerate(values) if v != ""]
    if len(idx) != len(values) and not nullable:
        i = next(i for i, v in enumerate(values) if v == "")
        raise DataError(path, "empty value", line=lines[i], field=field, expected="a value (column has no gaps)")
    vals = [values[i] for i in idx]
    vocab = None
    if kind == "int":
        if not all(map(_INTLIKE_RE.fullmatch, vals)):
            k = next(k for k, v in enumerate(vals) if not _INTLIKE_RE.fullmatch(v))
            raise DataError(path, "malformed value", line=lines[idx[k]], field=field,
                            expected="an integer (an integral float like 1.0 is accepted)", got=vals[k])
        out[idx] = [int(v[:-2]) if v.endswith(".0") else int(v) for v in vals]
    elif kind == "date":
        if not all(map(_DATE_RE.fullmatch, vals)):
            k = next(k for k, v in enumerate(vals) if not _DATE_RE.fullmatch(v))
            raise DataError(path, "malformed date", line=lines[idx[k]], field=field, expected="YYYY-MM-DD", got=vals[k])
        out[idx] = [int(v.replace("-", "")) for v in vals]
    elif kind == "cat":
        vocab = sorted(set(vals))
        index = {v: k for k, v in enumerate(vocab)}
        out[idx] = [index[v] for v in vals]
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    return out, vocab


def read_feature_table(path, id_column: str, columns, num_ids: int, *, tags_column: str | None = None):
    """A feature CSV as (int64 [num_ids, c] indexed by id, ids seen, vocabularies, tags per id or None, rows).

    Rows for ids never listed stay -1; a duplicate id is a DataError.
    """
    header = (id_column,) + tuple(c for c, _, _ in columns) + ((tags_column,) if tags_column else ())
    rows, lines = _csv_rows(path, header)
    cols = list(zip(*rows))
    ids, _ = _encode_column(path, lines, id_column, "int", False, list(cols[0]))
    _check_col_range(path, ids, lines, id_column, 0, num_ids - 1)
    sio.check_unique(path, (ids,), (id_column,), np.asarray(lines), what="duplicate record")
    table = np.full((num_ids, len(columns)), MISSING, np.int64)
    vocabs = {}
    for j, (c, kind, nullable) in enumerate(columns):
        values, vocab = _encode_column(path, lines, c, kind, nullable, list(cols[1 + j]))
        table[ids, j] = values
        if vocab is not None:
            vocabs[c] = vocab
    seen = np.zeros(num_ids, bool)
    seen[ids] = True
    tags = None
    if tags_column:
        tags = [np.zeros(0, np.int32)] * num_ids
        for i, s, line in zip(ids, cols[-1], lines):
            toks = s.split(",") if s else []
            if not all(map(_INT_RE.fullmatch, toks)):
                raise DataError(path, "malformed tag list", line=line, field=tags_column,
                                expected="comma-separated integers (or empty)", got=s)
            tags[i] = np.array([int(t) for t in toks], np.int32)
    return table, seen, vocabs, tags, len(rows)


# ----------------------------------------------------------------------------------------------------- builder

class JaxrecKuaiRandPure(sio.RawBuilder):
    """KuaiRand-Pure impressions with all labels and joined user/video features; schema in the module doc."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First jaxrec release."}
    BUILDER_CONFIGS = CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        vec = lambda n, dt=np.int64: tfds.features.Tensor(shape=(n,), dtype=dt)  # noqa: E731
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description, license=LICENCE,
            homepage="https://kuairand.com",
            citation="Gao et al., KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed "
                     "Videos, CIKM 2022",
            features=tfds.features.FeaturesDict({
                "impression_id": np.int64, "user_id": np.int64, "video_id": np.int64, "time_ms": np.int64,
                "date": np.int32, "hour": np.int32, "tab": np.int32, "is_rand": np.int32,
                "labels": vec(len(LABEL_NAMES)), "user_features": vec(len(USER_FEATURE_NAMES)),
                "video_features": vec(len(VIDEO_FEATURE_NAMES)), "video_tags": vec(None, np.int32),
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        if cfg.on_duplicate not in ("drop", "error"):
            raise DataError(cfg.name, "unknown duplicate policy", field="on_duplicate", expected="'drop' or 'error'",
                            got=cfg.on_duplicate)
        wins = cfg.windows()
        if not wins:
            raise DataError(cfg.name, "no split window", field="train_dates/valid_dates/test_dates",
                            expected="at least one (start, end) window")
        for s, (lo, hi) in wins.items():
            if lo > hi:
                raise DataError(cfg.name, "empty date window", field=f"{s}_dates", expected="start <= end",
                                got=(lo, hi))
        ordered = sorted(wins.items(), key=lambda kv: kv[1])
        for (s1, w1), (s2, w2) in zip(ordered, ordered[1:]):
            if w2[0] <= w1[1]:
                raise DataError(cfg.name, "split date windows overlap", field=f"{s1}_dates/{s2}_dates",
                                expected="disjoint windows", got=(w1, w2))

        user_table, user_seen, user_vocab, _, n_user_rows = read_feature_table(
            self.raw_file(USER_FILE), "user_id", _USER_COLUMNS, cfg.num_users)
        video_table, video_seen, video_vocab, video_tags, n_video_rows = read_feature_table(
            self.raw_file(VIDEO_FILE), "video_id", _VIDEO_COLUMNS, cfg.num_videos, tags_column="tag")
        log_path = self.raw_file(LOG_FILE)
        log, lines = read_log(log_path, cfg)
        col = {c: log[:, j] for j, c in enumerate(LOG_COLUMNS)}
        for c, seen, what in (("user_id", user_seen, USER_FILE), ("video_id", video_seen, VIDEO_FILE)):
            bad = np.nonzero(~seen[col[c]])[0]
            if bad.size:
                raise DataError(log_path, f"{c} not in {what}", line=int(lines[bad[0]]), field=c,
                                expected=f"an id listed in {what}", got=int(col[c][bad[0]]))
        file_stats = _log_stats(col)
        file_stats["rows"] = int(len(log))

        drops = readers.DropReport()
        keep = np.ones(len(log), bool)
        dup = _exact_duplicates(log)
        if dup.any():
            first = int(np.nonzero(dup)[0][0])
            if cfg.on_duplicate == "error":
                same = int(np.nonzero((log == log[first]).all(1))[0][0])
                raise DataError(log_path, f"duplicate record (same as line {int(lines[same])})", line=int(lines[first]),
                                field="all columns", expected="unique impressions", got=log[first, :5].tolist())
            drops.add(LOG_FILE, "exact duplicate row (all 19 columns equal)", n=int(dup.sum()),
                      where=f"line {int(lines[first])}")
            keep &= ~dup
        split_of = np.full(len(log), -1, np.int8)
        names = list(wins)
        for s, name in enumerate(names):
            lo, hi = wins[name]
            split_of[(col["date"] >= lo) & (col["date"] <= hi)] = s
        outside = keep & (split_of < 0)
        if outside.any():
            drops.add(LOG_FILE, "date outside every split window", n=int(outside.sum()),
                      where=f"line {int(lines[np.nonzero(outside)[0][0]])}")
            keep &= ~outside
        drops.log("kuairand_pure")

        key = col["user_id"] * (cfg.num_videos + 1) + col["video_id"]
        same_key = _duplicate_mask(np.stack([key, col["time_ms"]], 1)[keep])
        split_stats = {}
        for s, name in enumerate(names):
            m = keep & (split_of == s)
            st = _log_stats({c: v[m] for c, v in col.items()})
            st.update(records=int(m.sum()), date_window=list(wins[name]))
            split_stats[name] = st
        stats = {
            "users": int(np.unique(col["user_id"][keep]).size), "items": int(np.unique(col["video_id"][keep]).size),
            "interactions": int(keep.sum()),
            "same_user_video_time_kept": int(same_key.sum()),  # not exact duplicates: kept (labels differ)
            "file_stats": file_stats, "user_feature_rows": n_user_rows, "video_feature_rows": n_video_rows,
            "splits": split_stats,
        }
        self.set_metadata({
            "catalog_name": "kuairand_pure", "num_users": cfg.num_users, "num_items": cfg.num_videos,
            "label_names": LABEL_NAMES, "binary_labels": list(BINARY_LABELS), "time_labels": list(TIME_LABELS),
            "user_feature_names": USER_FEATURE_NAMES, "video_feature_names": VIDEO_FEATURE_NAMES,
            "vocabularies": {**user_vocab, **video_vocab}, "missing_value": MISSING,
            "user_feature_max": user_table.max(0), "video_feature_max": video_table.max(0),
            "max_video_tag": int(max((t.max() for t in video_tags if t.size), default=-1)),
            "split_windows": {k: list(v) for k, v in wins.items()}, "on_duplicate": cfg.on_duplicate,
            "stats": stats, "drops": drops.as_dict(), "licence": LICENCE,
        })
        label_idx = [LOG_COLUMNS.index(c) for c in LABEL_NAMES]

        def records(s: int):
            for i in np.nonzero(keep & (split_of == s))[0]:
                r = log[i]
                u, v = int(r[0]), int(r[1])
                yield int(lines[i]), {
                    "impression_id": lines[i], "user_id": u, "video_id": v, "time_ms": r[4],
                    "date": np.int32(r[2]), "hour": np.int32(r[3] // 100), "tab": np.int32(r[18]),
                    "is_rand": np.int32(r[17]), "labels": r[label_idx], "user_features": user_table[u],
                    "video_features": video_table[v], "video_tags": video_tags[v],
                }

        return {name: self._generate_examples(records(s)) for s, name in enumerate(names)}


def _duplicate_mask(a: np.ndarray) -> np.ndarray:
    """True for every row equal to an earlier row of ``a`` (int64 [n, c])."""
    if len(a) == 0:
        return np.zeros(0, bool)
    _, first = np.unique(a, axis=0, return_index=True)
    mask = np.ones(len(a), bool)
    mask[first] = False
    return mask


def _exact_duplicates(log: np.ndarray) -> np.ndarray:
    return _duplicate_mask(log)


def _log_stats(col: dict[str, np.ndarray]) -> dict:
    n = len(col["user_id"])
    if n == 0:
        return {"rows": 0}
    tabs, counts = np.unique(col["tab"], return_counts=True)
    return {
        "rows": int(n), "users": int(np.unique(col["user_id"]).size), "videos": int(np.unique(col["video_id"]).size),
        "user_id_range": sio.id_stats(col["user_id"])["range"], "video_id_range": sio.id_stats(col["video_id"])["range"],
        "positive_rates": {c: round(float(col[c].mean()), 5) for c in BINARY_LABELS + ("is_rand",)},
        "median_play_time_ms": float(np.median(col["play_time_ms"])),
        "median_duration_ms": float(np.median(col["duration_ms"])),
        "tab_counts": {int(t): int(k) for t, k in zip(tabs, counts)},
        "dates": [int(col["date"].min()), int(col["date"].max())],
        "rows_by_date": {int(d): int(k) for d, k in zip(*np.unique(col["date"], return_counts=True))},
    }


def dataset_stats(builder) -> dict:
    """Split sizes plus the statistics stored at preparation (per split rows/users/videos/rates, drops)."""
    return sio.builder_stats(builder)


def _make_builder(raw_dir: str | None, data_dir: str):
    return JaxrecKuaiRandPure(config="default", data_dir=data_dir, raw_root=raw_dir)


catalog.register(catalog.DatasetSpec(
    name="kuairand_pure", kind="impressions", make_builder=_make_builder, raw_subdir="kuairand_pure",
    licence=LICENCE, source_stats=SOURCE_STATS, stats_fn=dataset_stats,
    description="KuaiRand-Pure impressions 2022-04-25..05-08, all labels, user/video features; date splits "
                "train 04-25..05-04 / valid 05-05..05-06 / test 05-07..05-08",
    unavailable_splits={
        "random_exposure": "log_random_4_22_to_5_08_pure.csv (is_rand=1) is not in ../shared/data (>= 4 MiB, no "
                           "snapshot; see kuairand_pure/SOURCE.md)",
        "official_train_4_08_to_4_24": "the standard logs of 2022-04-08..04-24 are not in ../shared/data; the "
                                       "splits here all come from 04-25..05-08",
    }))
