"""MovieLens 100K (``movielens-100k``) - INTERNAL TESTS ONLY.

GroupLens licence: research use only and **no redistribution**. The catalogue entry is ``internal_only=True``;
nothing from ``ml-100k`` is (or may be) copied into the repository - the builder reads ``../shared/data`` and
tests that must ship publicly use synthetic files in the same format.

Reads ``ml-100k/u.data`` (ratings), ``u.item`` (19 genre flags), ``u.user`` (age, gender, occupation),
``u.occupation`` and ``u.genre``. One record per rating:

``user_id``    int64 scalar  1..943 as in the files
``item_id``    int64 scalar  1..1682 as in the files (0 = padding)
``rating``     float32       1..5
``timestamp``  int64 scalar  unix seconds

Splits - leave-one-out by time, the SASRec protocol: per user, ratings ordered by (timestamp, line in u.data);
the last one is ``test``, the one before ``valid``, the rest ``train`` (a user with fewer than 3 ratings would
keep all in ``train``, counted in ``metadata["drops"]``; ML-100K has none: every user rated >= 20 movies).

Side tables in metadata (indexed by id, entry 0 unused): ``user_age``, ``user_gender`` (0 = F, 1 = M),
``user_occupation`` (index into ``occupation_names``), ``item_genres`` (lists of indices into ``genre_names``).

A second view, ``movielens-100k/seq`` (:class:`JaxrecMovieLensSeq`), holds the same ratings as one chronological
sequence per user in the normalised ``"sequence"`` schema (history -> next-item records, same leave-one-out).

Strictness: missing file, sha256 differing from SOURCE.md, empty/malformed line, id/rating/timestamp outside the
declared range, duplicate (user, item) rating, genre flags other than 0/1, unknown occupation or gender ->
:class:`~jaxrec.data.errors.DataError` naming file, line, field and expectation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import _strict_io as sio
from jaxrec.data.errors import DataError

__all__ = ["MovieLensConfig", "JaxrecMovieLens", "JaxrecMovieLensSeq", "dataset_stats"]

SPLITS = ("train", "valid", "test")

_LICENCE = ("GroupLens MovieLens 100K licence: research use only, no redistribution, no commercial use without "
            "permission - internal tests only, never exported")


@dataclasses.dataclass(eq=False, kw_only=True)
class MovieLensConfig(sio.RawConfig):
    num_users: int = 943
    num_items: int = 1682
    time_range: tuple[int, int] = (874724710, 893286638)  # first/last u.data timestamps (Sep 1997 .. Apr 1998)
    source_stats: dict = dataclasses.field(default_factory=dict)


CONFIGS = [
    MovieLensConfig(
        name="ml_100k", description="MovieLens 100K ratings, leave-one-out by time (internal tests only)",
        raw_subdir="movielens-100k",
        checksums={
            "ml-100k/u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "ml-100k/u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "ml-100k/u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            "ml-100k/u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
            "ml-100k/u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
        },
        source_stats={"users": 943, "items": 1682, "ratings": 100000,
                      "ratings_1_to_5": [6110, 11370, 27145, 34174, 21201]},
    ),
]


def _read_names(path, *, sep: str | None = None) -> list[str]:
    """``u.occupation`` (one name a line) or ``u.genre`` (``name|index``, indices 0..n-1 in order).

    A single trailing empty line (as GroupLens ships u.genre) is accepted; other empty lines are errors.
    """
    lines = list(sio.iter_lines(path, encoding="latin-1"))
    while lines and not lines[-1][1] and len(lines) > 1 and lines[-1][0] == len(lines):
        lines.pop()
        break
    names = []
    for lineno, text in lines:
        if not text.strip():
            raise DataError(path, "empty record", line=lineno, expected="a name" + (f"{sep}index" if sep else ""))
        if sep is None:
            names.append(text)
            continue
        parts = text.split(sep)
        if len(parts) != 2:
            raise DataError(path, "malformed line", line=lineno, expected=f"'name{sep}index'", got=text)
        idx = sio.parse_int(path, lineno, "index", parts[1])
        if idx != len(names):
            raise DataError(path, "genre index out of order", line=lineno, field="index", expected=str(len(names)),
                            got=idx)
        names.append(parts[0])
    if len(set(names)) != len(names):
        raise DataError(path, "duplicate record: repeated name", expected="distinct names")
    return names


def _read_items(path, num_items: int, num_genres: int) -> list[list[int]]:
    genres: list[list[int] | None] = [None] * (num_items + 1)
    genres[0] = []
    for lineno, text in sio.iter_lines(path, encoding="latin-1"):
        if not text.strip():
            raise DataError(path, "empty record", line=lineno, expected="'id|title|date|video date|url|19 flags'")
        parts = text.split("|")
        if len(parts) != 5 + num_genres:
            raise DataError(path, "malformed line", line=lineno, expected=f"{5 + num_genres} '|'-separated fields",
                            got=text)
        iid = sio.parse_int(path, lineno, "movie id", parts[0])
        sio.check_range(path, lineno, "movie id", iid, 1, num_items)
        if genres[iid] is not None:
            raise DataError(path, "duplicate record", line=lineno, field="movie id", expected="each movie once",
                            got=iid)
        flags = parts[5:]
        for g, f in enumerate(flags):
            if f not in ("0", "1"):
                raise DataError(path, "malformed genre flag", line=lineno, field=f"genre[{g}]", expected="0 or 1",
                                got=f)
        genres[iid] = [g for g, f in enumerate(flags) if f == "1"]
    missing = [i for i, g in enumerate(genres) if g is None]
    if missing:
        raise DataError(path, "movie missing", field="movie id", expected=f"every id 1..{num_items}", got=missing[0])
    return genres  # type: ignore[return-value]


def _read_users(path, num_users: int, occupations: list[str]):
    age = [0] * (num_users + 1)
    gender = [-1] * (num_users + 1)
    occ = [-1] * (num_users + 1)
    occ_idx = {o: i for i, o in enumerate(occupations)}
    seen = set()
    for lineno, text in sio.iter_lines(path, encoding="latin-1"):
        if not text.strip():
            raise DataError(path, "empty record", line=lineno, expected="'id|age|gender|occupation|zip'")
        parts = text.split("|")
        if len(parts) != 5:
            raise DataError(path, "malformed line", line=lineno, expected="5 '|'-separated fields", got=text)
        uid = sio.parse_int(path, lineno, "user id", parts[0])
        sio.check_range(path, lineno, "user id", uid, 1, num_users)
        if uid in seen:
            raise DataError(path, "duplicate record", line=lineno, field="user id", expected="each user once", got=uid)
        seen.add(uid)
        age[uid] = sio.parse_int(path, lineno, "age", parts[1])
        sio.check_range(path, lineno, "age", age[uid], 1, 120)
        if parts[2] not in ("F", "M"):
            raise DataError(path, "unknown gender", line=lineno, field="gender", expected="F or M", got=parts[2])
        gender[uid] = int(parts[2] == "M")
        if parts[3] not in occ_idx:
            raise DataError(path, "unknown occupation", line=lineno, field="occupation",
                            expected="a name from u.occupation", got=parts[3])
        occ[uid] = occ_idx[parts[3]]
    if len(seen) != num_users:
        raise DataError(path, "users missing", field="user id", expected=f"every id 1..{num_users}", got=len(seen))
    return age, gender, occ


def _read_and_split(b: "sio.RawBuilder", catalog_name: str = "movielens-100k"):
    """Read and check every file of ``b``'s config; leave-one-out split of the ratings.

    Returns ``(t, order, split_of, metadata)``: ``t`` the u.data columns (``user``, ``item``, ``rating``,
    ``timestamp``, ``_line``), ``order`` the ratings sorted by (user, timestamp, line), ``split_of[i]`` 0 train /
    1 valid / 2 test of rating ``i``, and the builder metadata (side tables, statistics, drops).
    """
    cfg = b.builder_config
    genre_names = _read_names(b.raw_file("ml-100k/u.genre"), sep="|")
    occupations = _read_names(b.raw_file("ml-100k/u.occupation"))
    item_genres = _read_items(b.raw_file("ml-100k/u.item"), cfg.num_items, len(genre_names))
    age, gender, occ = _read_users(b.raw_file("ml-100k/u.user"), cfg.num_users, occupations)
    path = b.raw_file("ml-100k/u.data")
    t = sio.read_int_table(path, ("user", "item", "rating", "timestamp"), bounds={
        "user": (1, cfg.num_users), "item": (1, cfg.num_items), "rating": (1, 5), "timestamp": cfg.time_range})
    sio.check_unique(path, (t["user"], t["item"]), ("user", "item"), t["_line"], what="duplicate rating")

    # leave-one-out by (timestamp, line): rank from the end within each user
    order = np.lexsort((t["_line"], t["timestamp"], t["user"]))
    users_sorted = t["user"][order]
    counts = np.bincount(users_sorted, minlength=cfg.num_users + 1)
    ends = np.cumsum(counts)[users_sorted]
    rank_from_end = ends - 1 - np.arange(len(order))  # 0 = last rating of that user
    split_of = np.empty(len(order), dtype=np.int8)  # 0 train, 1 valid, 2 test
    split_of[order] = np.where(rank_from_end == 0, 2, np.where(rank_from_end == 1, 1, 0))
    short = counts[t["user"]] < 3
    split_of[short] = 0
    drops = readers.DropReport()
    drops.add("leave-one-out", "user with < 3 ratings kept wholly in train (no valid/test record)",
              n=int((counts[1:] < 3).sum()))

    split_stats = {}
    for s, name in enumerate(SPLITS):
        m = split_of == s
        split_stats[name] = {"users": int(np.unique(t["user"][m]).size), "items": int(np.unique(t["item"][m]).size),
                             "interactions": int(m.sum()), "user_id_range": sio.id_stats(t["user"][m])["range"],
                             "item_id_range": sio.id_stats(t["item"][m])["range"]}
    stats = {
        "users": int(np.unique(t["user"]).size), "items": int(np.unique(t["item"]).size),
        "interactions": int(len(order)), "ratings_1_to_5": np.bincount(t["rating"], minlength=6)[1:],
        "min_ratings_per_user": int(counts[1:].min()),
        "time_range": [int(t["timestamp"].min()), int(t["timestamp"].max())],
        "splits": split_stats,
    }
    md = {
        "catalog_name": catalog_name, "internal_only": True, "num_users": cfg.num_users + 1,
        "num_items": cfg.num_items, "genre_names": genre_names, "occupation_names": occupations,
        "user_age": age, "user_gender": gender, "user_occupation": occ, "item_genres": item_genres,
        "stats": stats, "drops": drops.as_dict(), "licence": _LICENCE}
    return t, order, split_of, md


class JaxrecMovieLens(sio.RawBuilder):
    """MovieLens 100K ratings (internal tests only); schema in the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First jaxrec release."}
    BUILDER_CONFIGS = CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description, license=_LICENCE,
            redistribution_info={"license": _LICENCE},
            features=tfds.features.FeaturesDict({
                "user_id": np.int64, "item_id": np.int64, "rating": np.float32, "timestamp": np.int64}),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager
        t, order, split_of, md = _read_and_split(self)
        self.set_metadata(md)

        def records(s: int):
            for i in np.nonzero(split_of == s)[0]:
                yield int(t["_line"][i]), {"user_id": t["user"][i], "item_id": t["item"][i],
                                           "rating": np.float32(t["rating"][i]), "timestamp": t["timestamp"][i]}

        return {name: self._generate_examples(records(s)) for s, name in enumerate(SPLITS)}


class JaxrecMovieLensSeq(sio.RawBuilder):
    """MovieLens 100K as one chronological rating sequence per user (internal tests only), catalogue name
    ``movielens-100k/seq``, kind ``"sequence"`` (the normalised schema of :func:`jaxrec.data.catalog.sequence_features`
    plus ``ratings`` int32 [n] and ``target_rating``).

    Same files, checks and leave-one-out order as :class:`JaxrecMovieLens` (per user by (timestamp, line in u.data));
    a user's sequence ``s`` of ``n >= 3`` ratings gives one record per split, the SASRec protocol:
    ``train`` ``items = s[:n-3]``, ``target = s[n-3]``; ``valid`` ``s[:n-2]`` -> ``s[n-2]``; ``test`` ``s[:n-1]`` ->
    ``s[n-1]``. A user with ``n < 3`` has only a train record (``s[:n-1]`` -> ``s[n-1]``), counted in
    ``metadata["drops"]`` (ML-100K has none). Every rating counts as an interaction (no rating threshold); the rating
    of each history event is the ``ratings`` side field. Single domain: ``domains``/``target_domain`` 0, ``overlap``
    False.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First jaxrec release."}
    BUILDER_CONFIGS = CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        feats = dict(catalog.sequence_features())
        feats["ratings"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        feats["target_rating"] = tfds.features.Scalar(dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self, description=(self.builder_config.description or "MovieLens 100K") + " - one sequence per user",
            license=_LICENCE, redistribution_info={"license": _LICENCE},
            features=tfds.features.FeaturesDict(feats), metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        t, order, _, md = _read_and_split(self, catalog_name="movielens-100k/seq")
        self.set_metadata(md)
        users = t["user"][order]
        bounds = np.flatnonzero(np.diff(np.r_[-1, users, -1]))  # start of each user's run, then the end

        def records(split: int):
            for a, e in zip(bounds[:-1], bounds[1:]):
                idx = order[a:e]
                n = len(idx)
                cut = n - 3 + split if n >= 3 else (n - 1 if split == 0 else -1)
                if cut < 0:
                    continue
                h, c = idx[:cut], idx[cut]
                yield int(users[a]), {
                    "user_id": np.int64(users[a]), "items": t["item"][h].astype(np.int64),
                    "domains": np.zeros(cut, np.int32), "timestamps": t["timestamp"][h].astype(np.int64),
                    "ratings": t["rating"][h].astype(np.int32), "target": np.int64(t["item"][c]),
                    "target_domain": np.int32(0), "target_rating": np.int32(t["rating"][c]),
                    "overlap": False}

        return {name: self._generate_examples(records(s)) for s, name in enumerate(SPLITS)}


def dataset_stats(builder) -> dict:
    """Split sizes plus the statistics stored at preparation."""
    return sio.builder_stats(builder)


def _make_builder(raw_dir: str | None, data_dir: str):
    return JaxrecMovieLens(config="ml_100k", data_dir=data_dir, raw_root=raw_dir)


catalog.register(catalog.DatasetSpec(
    name="movielens-100k", kind="user_item", make_builder=_make_builder, raw_subdir="movielens-100k",
    licence=_LICENCE, internal_only=True, source_stats=CONFIGS[0].source_stats, stats_fn=dataset_stats,
    description=CONFIGS[0].description))


def _make_seq_builder(raw_dir: str | None, data_dir: str):
    return JaxrecMovieLensSeq(config="ml_100k", data_dir=data_dir, raw_root=raw_dir)


catalog.register(catalog.DatasetSpec(
    name="movielens-100k/seq", kind="sequence", make_builder=_make_seq_builder, raw_subdir="movielens-100k",
    licence=_LICENCE, internal_only=True, source_stats=CONFIGS[0].source_stats, stats_fn=dataset_stats,
    description="MovieLens 100K, one rating sequence per user, leave-one-out (internal tests only)"))
