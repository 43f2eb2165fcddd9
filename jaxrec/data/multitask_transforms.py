"""Batch transforms for multi-task ranking on KuaiRand-Pure impressions (``kuairand_pure``): features, labels,
and a leak-free click history built once on the host.

Input records: the ``kuairand_pure`` schema (see :mod:`jaxrec.data.builders.kuairand_pure`): ``user_id``,
``video_id``, ``time_ms``, ``date``, ``hour``, ``tab``, ``labels [12]``, ``user_features [30]``,
``video_features [10]``, ``video_tags [k]``.

Output of :meth:`MultiTaskTransform.map_batch` (``B`` records, ``F`` categorical fields, ``K`` history length):

``user_id``   int32 [B]     raw user id (GAUC grouping; the model embeds ``user_id + 1``, 0 = unknown)
``video_id``  int32 [B]     raw video id (embedded as ``video_id + 1``)
``sparse``    int32 [B, F]  per-field categorical ids in ``0 .. vocab_f - 1`` (0 = missing/unknown), fields
                            :data:`FIELD_NAMES`: ``tab, hour``, the 30 user features, the 10 video features
``tags``      int32 [B, M]  video tag ids + 1 (0 = padding), the first ``M`` tags
``hist_ids``  int32 [B, K]  the user's previous clicked videos (``video_id + 1``), oldest first, left-padded
                            with 0; ``hist_mask`` bool [B, K] True on real entries
``labels``    float32 [B, T] the task labels (0/1), in the order of ``tasks``

Feature encoding (:func:`encode_fields`): categorical columns -> ``value + 1`` (missing ``-1`` and the source's
``-124`` placeholder -> 0), clipped to the field's vocabulary; the raw counts ``follow_user_num``,
``fans_user_num``, ``friend_user_num``, ``register_days`` and ``video_duration`` (in seconds) -> log2 buckets
``1 + floor(log2(1 + x))``; ``author_id``, ``music_id`` -> hashed into :data:`HASH_BUCKETS` buckets;
``upload_dt`` -> video age in days at the impression date (clipped to 0..62, + 1); ``server_width`` /
``server_height`` -> ``1 + min(x, 4095) // 16``.

Click history (what is used, exactly): a :class:`ClickHistory` index is built once on the host from the
records of the chosen splits (``history_source="train"``: the train split only, default; ``"all"``: train,
valid and test), keeping the impressions whose ``history_label`` (default ``is_click``) is 1. The history of an
impression of user ``u`` at time ``t`` is the ``K`` most recent of those indexed clicks of ``u`` with
``time_ms < t`` (strictly earlier; the impression itself and any impression logged at the same millisecond are
never included). With ``"train"`` the history of a valid/test impression holds train-period clicks only (no
label of the evaluation period is ever used as an input); with ``"all"`` it also holds earlier clicks of the
evaluation period (labels of *earlier* impressions only, as a streaming system would have them). No other label,
and nothing later than the impression, enters the inputs.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import pathlib
from typing import Sequence

import numpy as np

from jaxrec.data.errors import DataError

__all__ = [
    "USER_FEATURE_NAMES", "VIDEO_FEATURE_NAMES", "FIELD_NAMES", "LABEL_NAMES", "HASH_BUCKETS",
    "FeatureSchema", "KUAIRAND_PURE_SCHEMA", "schema_from_metadata", "encode_fields",
    "ClickHistory", "MultiTaskTransform", "click_columns", "load_click_columns",
]

# Mirrors jaxrec.data.builders.kuairand_pure (kept here so the transform works on synthetic data without TFDS).
USER_FEATURE_NAMES = (
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author", "follow_user_num",
    "follow_user_num_range", "fans_user_num", "fans_user_num_range", "friend_user_num", "friend_user_num_range",
    "register_days", "register_days_range") + tuple(f"onehot_feat{i}" for i in range(18))
VIDEO_FEATURE_NAMES = ("author_id", "video_type", "upload_dt", "upload_type", "visible_status", "video_duration",
                       "server_width", "server_height", "music_id", "music_type")
LABEL_NAMES = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
               "is_profile_enter", "play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time")
FIELD_NAMES = ("tab", "hour") + USER_FEATURE_NAMES + VIDEO_FEATURE_NAMES

HASH_BUCKETS = 10007
LOG_BUCKETS = 32  # ids 0 (missing) .. 32
AGE_DAYS = 63
SIZE_BUCKETS = 256
_LOG_USER = {"follow_user_num", "fans_user_num", "friend_user_num", "register_days"}
_HASHED = {"author_id", "music_id"}


def _field_kind(name: str) -> str:
    if name in _LOG_USER or name == "video_duration":
        return "log"
    if name in _HASHED:
        return "hash"
    if name == "upload_dt":
        return "age"
    if name in ("server_width", "server_height"):
        return "size"
    return "cat"


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
    """Vocabulary sizes of the model inputs. ``field_vocab[f]`` for ``sparse[:, f]`` (:data:`FIELD_NAMES`)."""

    field_vocab: tuple[int, ...]
    num_users: int = 27285
    num_videos: int = 7583
    tag_vocab: int = 70  # tag id + 1; 0 = padding
    max_tags: int = 3
    field_names: tuple[str, ...] = FIELD_NAMES

    def __post_init__(self):
        if len(self.field_vocab) != len(self.field_names):
            raise DataError("FeatureSchema", "field count mismatch", field="field_vocab",
                            expected=f"{len(self.field_names)} sizes", got=len(self.field_vocab))


def _vocab_for(name: str, max_value: int) -> int:
    kind = _field_kind(name)
    if kind == "log":
        return LOG_BUCKETS + 1
    if kind == "hash":
        return HASH_BUCKETS + 1
    if kind == "age":
        return AGE_DAYS + 1
    if kind == "size":
        return SIZE_BUCKETS + 1
    return int(max(max_value, 0)) + 2


def schema_from_metadata(md: dict, max_tags: int = 3) -> FeatureSchema:
    """:class:`FeatureSchema` from the ``kuairand_pure`` builder metadata (column maxima, id spaces)."""
    names = tuple(md.get("user_feature_names", USER_FEATURE_NAMES)), tuple(md.get("video_feature_names",
                                                                                  VIDEO_FEATURE_NAMES))
    if names != (USER_FEATURE_NAMES, VIDEO_FEATURE_NAMES):
        raise DataError("kuairand_pure metadata", "unexpected feature columns", field="user/video_feature_names",
                        expected=f"{USER_FEATURE_NAMES} / {VIDEO_FEATURE_NAMES}", got=names)
    umax = [int(v) for v in np.asarray(md["user_feature_max"]).ravel()]
    vmax = [int(v) for v in np.asarray(md["video_feature_max"]).ravel()]
    vocab = (16, 25) + tuple(_vocab_for(n, m) for n, m in zip(USER_FEATURE_NAMES, umax)) + tuple(
        _vocab_for(n, m) for n, m in zip(VIDEO_FEATURE_NAMES, vmax))
    return FeatureSchema(field_vocab=vocab, num_users=int(md["num_users"]), num_videos=int(md["num_items"]),
                         tag_vocab=int(md.get("max_video_tag", 68)) + 2, max_tags=int(max_tags))


# The schema of the prepared kuairand_pure dataset (column maxima of its feature files, metadata of 1.0.0).
_KP_USER_MAX = (8, 0, 1, 1, 5003, 7, 1986249, 8, 4995, 6, 3624, 7, 1, 6, 49, 1470, 14, 33, 2, 117, 453, 6, 4, 4,
                1, 1, 1, 1, 1, 1)
_KP_VIDEO_MAX = (8733983, 2, 20220411, 13, 0, 1177720, 2400, 2400, 9170219122, 11)
KUAIRAND_PURE_SCHEMA = schema_from_metadata({
    "user_feature_max": _KP_USER_MAX, "video_feature_max": _KP_VIDEO_MAX, "num_users": 27285, "num_items": 7583,
    "max_video_tag": 68})


def _day_number(yyyymmdd: np.ndarray) -> np.ndarray:
    """YYYYMMDD ints -> proleptic ordinal day numbers (via the few distinct dates)."""
    d = np.asarray(yyyymmdd, np.int64)
    uniq, inv = np.unique(d, return_inverse=True)
    days = np.array([datetime.date(int(x) // 10000, int(x) // 100 % 100, int(x) % 100).toordinal()
                     if x > 0 else 0 for x in uniq], np.int64)
    return days[inv].reshape(d.shape)


def _log_bucket(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    out = 1 + np.floor(np.log2(1.0 + np.maximum(x, 0.0)))
    return np.where(x < 0, 0, np.minimum(out, LOG_BUCKETS)).astype(np.int64)


def encode_fields(tab, hour, user_features, video_features, date, schema: FeatureSchema) -> np.ndarray:
    """Categorical ids ``int32 [B, F]`` (fields :data:`FIELD_NAMES`) from raw columns (see module doc).

    Args: ``tab, hour, date [B]``; ``user_features [B, 30]``, ``video_features [B, 10]`` (int64, -1 = missing).
    """
    u = np.asarray(user_features, np.int64)
    v = np.asarray(video_features, np.int64)
    cols = [np.asarray(tab, np.int64) + 1, np.asarray(hour, np.int64) + 1]
    raw = {**{n: u[:, j] for j, n in enumerate(USER_FEATURE_NAMES)},
           **{n: v[:, j] for j, n in enumerate(VIDEO_FEATURE_NAMES)}}
    for name in USER_FEATURE_NAMES + VIDEO_FEATURE_NAMES:
        x = raw[name]
        kind = _field_kind(name)
        if kind == "log":
            ids = _log_bucket(x / 1000.0 if name == "video_duration" else x)
        elif kind == "hash":
            ids = np.where(x < 0, 0, 1 + np.mod(x, HASH_BUCKETS))
        elif kind == "age":
            age = _day_number(date) - _day_number(np.where(x > 0, x, 0))
            ids = np.where(x > 0, 1 + np.clip(age, 0, AGE_DAYS - 1), 0)
        elif kind == "size":
            ids = np.where(x < 0, 0, 1 + np.minimum(x, 4095) // 16)
        else:
            ids = np.where(x < 0, 0, x + 1)
        cols.append(ids)
    out = np.stack(cols, axis=1)
    vocab = np.asarray(schema.field_vocab, np.int64)[None]
    bad = (out < 0) | (out >= vocab)
    if bad.any():  # the schema comes from the dataset's own column maxima: a value past it is a data mismatch
        i, f = map(int, np.argwhere(bad)[0])
        raise DataError("multitask features", "categorical value outside the schema's vocabulary",
                        field=FIELD_NAMES[f], expected=f"encoded id in 0..{int(vocab[0, f]) - 1}",
                        got=f"{int(out[i, f])} (batch row {i}; {int(bad.sum())} such values in the batch)")
    return out.astype(np.int32)


# ------------------------------------------------------------------------------------------------ history

_TIME_BITS = 41  # time_ms < 2**41 (year 2039)


def _keys(user: np.ndarray, time_ms: np.ndarray) -> np.ndarray:
    return (np.asarray(user, np.int64) << _TIME_BITS) | np.asarray(time_ms, np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class ClickHistory:
    """Sorted index of click events ``(user, time_ms, video)`` for leak-free history lookups.

    ``lookup(user, time_ms, K)`` returns the ``K`` most recent indexed events of each user strictly before
    ``time_ms`` (oldest first, left-padded): ``(ids int32 [B, K] = video_id + 1, mask bool [B, K])``.
    """

    keys: np.ndarray  # int64 [N] sorted (user << 41 | time_ms)
    videos: np.ndarray  # int32 [N] video_id + 1

    @classmethod
    def from_columns(cls, user, time_ms, video, positive) -> "ClickHistory":
        pos = np.asarray(positive).astype(bool)
        keys = _keys(np.asarray(user)[pos], np.asarray(time_ms)[pos])
        vids = np.asarray(video, np.int64)[pos] + 1
        order = np.argsort(keys, kind="stable")
        return cls(keys=keys[order], videos=vids[order].astype(np.int32))

    @classmethod
    def empty(cls) -> "ClickHistory":
        return cls(keys=np.zeros(0, np.int64), videos=np.zeros(0, np.int32))

    def __len__(self) -> int:
        return int(self.keys.size)

    def lookup(self, user, time_ms, k: int) -> tuple[np.ndarray, np.ndarray]:
        user = np.asarray(user, np.int64)
        b = user.shape[0]
        if k <= 0 or self.keys.size == 0:
            return np.zeros((b, max(k, 0)), np.int32), np.zeros((b, max(k, 0)), bool)
        end = np.searchsorted(self.keys, _keys(user, time_ms), side="left")  # first event at time >= t
        start = np.searchsorted(self.keys, user << _TIME_BITS, side="left")  # first event of the user
        idx = end[:, None] - k + np.arange(k)[None, :]
        mask = idx >= start[:, None]
        ids = np.where(mask, self.videos[np.clip(idx, 0, self.keys.size - 1)], 0).astype(np.int32)
        return ids, mask


def click_columns(records: Sequence[dict], label_index: int) -> dict[str, np.ndarray]:
    """``user, time_ms, video, positive`` columns of decoded records."""
    return {
        "user": np.fromiter((r["user_id"] for r in records), np.int64, len(records)),
        "time_ms": np.fromiter((r["time_ms"] for r in records), np.int64, len(records)),
        "video": np.fromiter((r["video_id"] for r in records), np.int64, len(records)),
        "positive": np.fromiter((int(r["labels"][label_index]) for r in records), np.int8, len(records)),
    }


def _cache_dir() -> pathlib.Path:
    from jaxrec.data import paths

    return pathlib.Path(os.environ.get("JAXREC_DERIVED_DIR", paths.tfds_dir().parent / "derived"))


def load_click_columns(source, *, cache_key: str | None = None, label_index: int = 0) -> dict[str, np.ndarray]:
    """Click columns of every record of ``source`` (read once; cached as ``.npz`` under ``JAXREC_DERIVED_DIR``
    (default ``<tfds dir>/../derived``) when ``cache_key`` -- e.g. the prepared split's directory and size --
    is given, so later runs skip the full pass over the split)."""
    path = None
    if cache_key is not None:
        digest = hashlib.sha256(f"{cache_key}|{label_index}|v1".encode()).hexdigest()[:16]
        path = _cache_dir() / f"clicks_{digest}.npz"
        if path.exists():
            with np.load(path) as z:
                cols = {k: z[k] for k in z.files}
            if cols["user"].size == len(source):
                return cols
    from jaxrec.data.pipeline import read_records

    cols = click_columns(read_records(source), label_index)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
            np.savez(tmp, **cols)
            os.replace(tmp, path)
        except OSError:
            pass
    return cols


# ------------------------------------------------------------------------------------------------ transform

@dataclasses.dataclass(frozen=True, eq=False)
class MultiTaskTransform:
    """Records -> fixed-shape multi-task ranking batch (see module docstring for the output schema)."""

    schema: FeatureSchema
    label_index: tuple[int, ...]  # index of each task in the record's ``labels``
    history: ClickHistory
    history_len: int = 20
    # ``task.unseen="oov"``: ids seen in training (bool [num_users] / [num_videos]); unseen -> row 0
    seen_users: np.ndarray | None = None
    seen_videos: np.ndarray | None = None

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        b = len(records)
        col = lambda k, dt=np.int64: np.fromiter((r[k] for r in records), dt, b)  # noqa: E731
        user, video, time_ms = col("user_id"), col("video_id"), col("time_ms")
        labels = np.stack([np.asarray(r["labels"]) for r in records])
        user_feat = np.stack([np.asarray(r["user_features"]) for r in records])
        video_feat = np.stack([np.asarray(r["video_features"]) for r in records])
        m = self.schema.max_tags
        tags = np.zeros((b, m), np.int32)
        for i, r in enumerate(records):
            t = np.asarray(r["video_tags"])[:m]
            tags[i, :t.size] = np.clip(t + 1, 0, self.schema.tag_vocab - 1)
        hist_ids, hist_mask = self.history.lookup(user, time_ms, self.history_len)
        extra = {}
        if self.seen_users is not None:
            extra["user_key"] = np.where(self.seen_users[user], user + 1, 0).astype(np.int32)
        if self.seen_videos is not None:
            extra["video_key"] = np.where(self.seen_videos[video], video + 1, 0).astype(np.int32)
            seen_hist = hist_mask & self.seen_videos[np.maximum(hist_ids - 1, 0)]
            hist_ids, hist_mask = np.where(seen_hist, hist_ids, 0).astype(np.int32), seen_hist
        return {
            **extra,
            "user_id": user.astype(np.int32),
            "video_id": video.astype(np.int32),
            "sparse": encode_fields(col("tab"), col("hour"), user_feat, video_feat, col("date"), self.schema),
            "tags": tags,
            "hist_ids": hist_ids,
            "hist_mask": hist_mask,
            "labels": (labels[:, list(self.label_index)] > 0).astype(np.float32),
        }
