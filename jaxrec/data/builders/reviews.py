"""Amazon Review Data (2018) 5-core review text: ``amazon_reviews_2018_5core/fashion`` and ``/beauty``.

Source: ``AMAZON_FASHION_5.json.gz`` / ``All_Beauty_5.json.gz`` (gzip JSON lines, Ni, Li & McAuley, EMNLP 2019).
Split ``full`` (every review kept; the source provides no held-out split), one record per review:

``review_id``    int64 scalar  1-based line number of the review in the (decompressed) file
``user_id``      int64 scalar  0-based index of ``reviewerID`` in ``metadata["user_keys"]`` (sorted)
``item_id``      int64 scalar  1-based index of ``asin`` in ``metadata["item_keys"]`` (sorted; 0 = padding)
``rating``       float32       ``overall``, 1..5
``timestamp``    int64 scalar  ``unixReviewTime`` (unix seconds, day resolution)
``review_text``  text          ``reviewText`` ("" when absent; counted in ``stats["missing_review_text"]``)
``summary``      text          ``summary`` ("" when absent; counted in ``stats["missing_summary"]``)
``verified``     bool          ``verified``
``votes``        int64 scalar  helpful votes (``vote`` "1,234" -> 1234; 0 when absent)

Protocol drops (``metadata["drops"]``): the 2018 dumps repeat a review once per product variant; a review with
the same (reviewerID, asin, unixReviewTime, reviewText) as an earlier line is dropped (SOURCE.md: 89 in Fashion,
1,053 in Beauty) with ``on_duplicate="drop"`` (default); ``on_duplicate="error"`` raises instead.

Strict reader (:func:`read_reviews`): a corrupt gzip, an empty line, a line that is not a JSON object, a missing
required key, an unknown key, a value of the wrong type, a rating outside 1..5 or not integral, a timestamp
outside the declared range -> :class:`~jaxrec.data.errors.DataError` naming file, line, field and expectation;
the gzip's sha256 must be the one in SOURCE.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import _strict_io as sio
from jaxrec.data.errors import DataError

__all__ = ["ReviewsConfig", "JaxrecAmazonReviews", "read_reviews", "dataset_stats"]

_LICENCE = ("Amazon Review Data (2018), Ni, Li & McAuley (EMNLP 2019): research use, cite the paper; no formal "
            "licence; review texts belong to their authors/Amazon - keep internal, do not republish")

# key -> (accepted python types, required)
_SCHEMA = {
    "overall": ((int, float), True),
    "verified": ((bool,), True),
    "reviewTime": ((str,), True),
    "reviewerID": ((str,), True),
    "asin": ((str,), True),
    "unixReviewTime": ((int,), True),
    "reviewerName": ((str,), False),
    "reviewText": ((str,), False),
    "summary": ((str,), False),
    "style": ((dict,), False),
    "vote": ((str,), False),
    "image": ((list,), False),
}


@dataclasses.dataclass(eq=False, kw_only=True)
class ReviewsConfig(sio.RawConfig):
    """One 5-core file. ``time_range``: declared inclusive unix-seconds range of ``unixReviewTime``."""

    file: str = ""
    time_range: tuple[int, int] = (946684800, 1546300799)  # 2000-01-01 .. 2018-12-31
    on_duplicate: str = "drop"  # "drop" (count in metadata) | "error"
    catalog_name: str = ""
    source_stats: dict = dataclasses.field(default_factory=dict)


CONFIGS = [
    ReviewsConfig(name="fashion", description="Amazon 2018 5-core AMAZON_FASHION reviews with text",
                  file="AMAZON_FASHION_5.json.gz", raw_subdir="amazon_reviews_2018_5core",
                  checksums={"AMAZON_FASHION_5.json.gz":
                             "5c73b65d0a5cc5dcd905b75a87086c37513ff0d023b02b381e729ab8a9541cb6"},
                  catalog_name="amazon_reviews_2018_5core/fashion",
                  source_stats={"reviews": 3176, "users": 406, "items": 31, "ratings_1_to_5": [117, 93, 337, 471, 2158],
                                "missing_review_text": 16, "first_day": "2009-12-25", "last_day": "2018-07-05",
                                "mean_text_length": 131, "exact_duplicates": 89}),
    ReviewsConfig(name="beauty", description="Amazon 2018 5-core All_Beauty reviews with text",
                  file="All_Beauty_5.json.gz", raw_subdir="amazon_reviews_2018_5core",
                  checksums={"All_Beauty_5.json.gz":
                             "8e49737fefaec9290187c69bf92889452df8be0ab5e36c9476520d6639683279"},
                  catalog_name="amazon_reviews_2018_5core/beauty",
                  source_stats={"reviews": 5269, "users": 991, "items": 85, "ratings_1_to_5": [115, 64, 109, 332, 4649],
                                "missing_review_text": 5, "first_day": "2004-09-21", "last_day": "2018-08-23",
                                "mean_text_length": 202, "exact_duplicates": 1053}),
]


def _parse_votes(path, lineno: int, s: str) -> int:
    t = s.replace(",", "")
    if not t.isdigit():
        raise DataError(path, "malformed vote count", line=lineno, field="vote", expected="digits with optional ','",
                        got=s)
    return int(t)


def read_reviews(path, *, time_range: tuple[int, int]) -> list[dict]:
    """Strictly read a gzip JSON-lines review file; returns one dict per line (with ``"line"``)."""
    out = []
    try:
        with gzip.open(readers.require_file(path), "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise DataError(path, f"undecodable bytes ({e.reason})", line=lineno,
                                    expected="UTF-8 JSON") from None
                if not text.strip():
                    raise DataError(path, "empty record", line=lineno, expected="one JSON object per line")
                try:
                    d = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(path, f"malformed JSON ({e.msg})", line=lineno, field=f"column {e.colno}",
                                    expected="one JSON object per line", got=text) from None
                if not isinstance(d, dict) or not d:
                    raise DataError(path, "empty record" if d == {} else "not a JSON object", line=lineno,
                                    expected="a JSON object with the review keys", got=text)
                for key, (types, required) in _SCHEMA.items():
                    if key not in d:
                        if required:
                            raise DataError(path, "missing key", line=lineno, field=key, expected="present")
                        continue
                    v = d[key]
                    if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
                        raise DataError(path, "wrong type", line=lineno, field=key,
                                        expected=" or ".join(t.__name__ for t in types), got=v)
                extra = sorted(set(d) - set(_SCHEMA))
                if extra:
                    raise DataError(path, "unknown key", line=lineno, field=extra[0],
                                    expected=f"only {sorted(_SCHEMA)}", got=extra[0])
                for key in ("reviewerID", "asin"):
                    if not d[key].strip():
                        raise DataError(path, "empty id", line=lineno, field=key, expected="a non-empty string")
                r = d["overall"]
                if r != int(r) or not 1 <= r <= 5:
                    raise DataError(path, "rating outside the declared range", line=lineno, field="overall",
                                    expected="an integral value in 1..5", got=r)
                sio.check_range(path, lineno, "unixReviewTime", d["unixReviewTime"], *time_range)
                out.append({
                    "line": lineno, "user": d["reviewerID"], "item": d["asin"], "rating": float(r),
                    "timestamp": d["unixReviewTime"], "review_text": d.get("reviewText"),
                    "summary": d.get("summary"), "verified": d["verified"],
                    "votes": _parse_votes(path, lineno, d["vote"]) if "vote" in d else 0,
                })
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(path, f"corrupt gzip ({e})", expected="a complete gzip file") from None
    if not out:
        raise DataError(path, "no records", expected="at least one review")
    return out


def _file_stats(rows: list[dict]) -> dict:
    texts = [r["review_text"] for r in rows if r["review_text"] is not None]
    times = np.array([r["timestamp"] for r in rows], np.int64)
    day = lambda t: np.datetime_as_string(np.datetime64(int(t), "s"), unit="D")  # noqa: E731
    return {"reviews": len(rows), "users": len({r["user"] for r in rows}), "items": len({r["item"] for r in rows}),
            "ratings_1_to_5": np.bincount(np.array([r["rating"] for r in rows], np.int64), minlength=6)[1:],
            "missing_review_text": len(rows) - len(texts), "first_day": day(times.min()), "last_day": day(times.max()),
            "mean_text_length": round(float(np.mean([len(t) for t in texts])), 1) if texts else 0.0}


class JaxrecAmazonReviews(sio.RawBuilder):
    """Amazon 2018 5-core reviews with text; schema in the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First jaxrec release."}
    BUILDER_CONFIGS = CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description, license=_LICENCE,
            features=tfds.features.FeaturesDict({
                "review_id": np.int64, "user_id": np.int64, "item_id": np.int64, "rating": np.float32,
                "timestamp": np.int64, "review_text": tfds.features.Text(), "summary": tfds.features.Text(),
                "verified": np.bool_, "votes": np.int64,
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        if cfg.on_duplicate not in ("drop", "error"):
            raise DataError(cfg.name, "unknown duplicate policy", field="on_duplicate", expected="'drop' or 'error'",
                            got=cfg.on_duplicate)
        path = self.raw_file(cfg.file)
        rows = read_reviews(path, time_range=cfg.time_range)
        drops = readers.DropReport()
        seen: dict[tuple, int] = {}
        kept = []
        for r in rows:
            key = (r["user"], r["item"], r["timestamp"], r["review_text"])
            if key in seen:
                if cfg.on_duplicate == "error":
                    raise DataError(path, f"duplicate record (same as line {seen[key]})", line=r["line"],
                                    field="reviewerID+asin+unixReviewTime+reviewText",
                                    expected="unique reviews", got=key[:3])
                drops.add(cfg.file, "duplicate review (same reviewerID, asin, unixReviewTime, reviewText)",
                          where=f"line {r['line']} = line {seen[key]}")
                continue
            seen[key] = r["line"]
            kept.append(r)
        drops.log(cfg.catalog_name)
        user_keys = sorted({r["user"] for r in kept})
        item_keys = sorted({r["item"] for r in kept})
        uidx = {k: i for i, k in enumerate(user_keys)}
        iidx = {k: i + 1 for i, k in enumerate(item_keys)}
        ratings = np.array([r["rating"] for r in kept], np.int64)
        times = np.array([r["timestamp"] for r in kept], np.int64)
        texts = [r["review_text"] for r in kept if r["review_text"] is not None]
        day = lambda t: np.datetime_as_string(np.datetime64(int(t), "s"), unit="D")  # noqa: E731
        stats = {
            "users": len(user_keys), "items": len(item_keys), "interactions": len(kept),
            "reviews_read": len(rows), "ratings_1_to_5": np.bincount(ratings, minlength=6)[1:],
            "missing_review_text": sum(r["review_text"] is None for r in kept),
            "missing_summary": sum(r["summary"] is None for r in kept),
            "first_day": day(times.min()), "last_day": day(times.max()),
            "mean_text_length": round(float(np.mean([len(t) for t in texts])), 1) if texts else 0.0,
            "verified": sum(r["verified"] for r in kept),
            "file_stats": _file_stats(rows),  # before the duplicate drop: the figures SOURCE.md quotes
            "splits": {"full": {"users": len(user_keys), "items": len(item_keys), "interactions": len(kept),
                                "user_id_range": [0, len(user_keys) - 1], "item_id_range": [1, len(item_keys)]}},
        }
        self.set_metadata({"catalog_name": cfg.catalog_name, "num_users": len(user_keys),
                           "num_items": len(item_keys), "user_keys": user_keys, "item_keys": item_keys,
                           "stats": stats, "drops": drops.as_dict(), "licence": _LICENCE})

        def records():
            for r in kept:
                yield r["line"], {
                    "review_id": r["line"], "user_id": uidx[r["user"]], "item_id": iidx[r["item"]],
                    "rating": np.float32(r["rating"]), "timestamp": r["timestamp"],
                    "review_text": r["review_text"] or "", "summary": r["summary"] or "",
                    "verified": r["verified"], "votes": r["votes"],
                }

        return {"full": self._generate_examples(records())}


def dataset_stats(builder) -> dict:
    """Split sizes plus the statistics stored at preparation (users, items, reviews, ratings, drops)."""
    return sio.builder_stats(builder)


def _make_builder(config_name: str):
    def make(raw_dir: str | None, data_dir: str):
        return JaxrecAmazonReviews(config=config_name, data_dir=data_dir, raw_root=raw_dir)
    return make


for _cfg in CONFIGS:
    catalog.register(catalog.DatasetSpec(
        name=_cfg.catalog_name, kind="reviews", make_builder=_make_builder(_cfg.name), raw_subdir=_cfg.raw_subdir,
        licence=_LICENCE, source_stats=_cfg.source_stats, stats_fn=dataset_stats, description=_cfg.description))
del _cfg
