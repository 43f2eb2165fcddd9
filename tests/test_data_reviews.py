"""Amazon 2018 5-core review builder and the internal-only MovieLens 100K builder."""

import gzip
import json
import pathlib
import subprocess

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import movielens, reviews
from jaxrec.data.errors import DataError

tfds.disable_progress_bar()

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _review(**kw):
    d = {"overall": 5.0, "verified": True, "reviewTime": "09 4, 2015", "reviewerID": "U1", "asin": "I1",
         "reviewerName": "A", "reviewText": "Great", "summary": "Five Stars", "unixReviewTime": 1441324800}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None}


def _write_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for ln in lines:
            f.write((ln if isinstance(ln, str) else json.dumps(ln)) + "\n")
    return path


def _reviews_config(root, **changes):
    base = dict(name="toy", file="toy.json.gz", checksums={"toy.json.gz": readers.sha256_file(root / "toy.json.gz")},
                catalog_name="toy")
    base.update(changes)
    return reviews.ReviewsConfig(**base)


def test_mock_data_schemas(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        b = reviews.JaxrecAmazonReviews(config="beauty", data_dir=str(tmp_path))
        b.download_and_prepare()
        rec = b.as_data_source("full")[0]
        assert set(rec) == {"review_id", "user_id", "item_id", "rating", "timestamp", "review_text", "summary",
                            "verified", "votes"}
        assert isinstance(rec["review_text"], (bytes, str))
        b = movielens.JaxrecMovieLens(config="ml_100k", data_dir=str(tmp_path))
        b.download_and_prepare()
        assert set(b.as_data_source("train")[0]) == {"user_id", "item_id", "rating", "timestamp"}


def test_reviews_build_crafted(tmp_path):
    root = tmp_path / "raw"
    _write_gz(root / "toy.json.gz", [
        _review(style={"Size:": " 7"}),
        _review(style={"Size:": " 8"}),  # same review, other variant: dropped and counted
        _review(reviewerID="U2", asin="I0", overall=3.0, reviewText=None, vote="1,234", unixReviewTime=1441411200),
        _review(reviewerID="U2", asin="I1", summary=None, verified=False, image=["http://x"]),
    ])
    b = reviews.JaxrecAmazonReviews(config=_reviews_config(root), raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    src = b.as_data_source("full")
    recs = {int(src[i]["review_id"]): src[i] for i in range(len(src))}
    assert sorted(recs) == [1, 3, 4]
    r = recs[3]
    assert (int(r["user_id"]), int(r["item_id"]), float(r["rating"]), int(r["votes"])) == (1, 1, 3.0, 1234)
    assert r["review_text"] == b"" and r["summary"] == b"Five Stars"
    assert recs[4]["summary"] == b"" and not recs[4]["verified"] and recs[1]["review_text"] == b"Great"
    md = b.info.metadata
    assert md["user_keys"] == ["U1", "U2"] and md["item_keys"] == ["I0", "I1"]
    st = reviews.dataset_stats(b)
    assert st["interactions"] == 3 and st["missing_review_text"] == 1 and st["missing_summary"] == 1
    assert st["file_stats"]["reviews"] == 4
    drop = st["drops"]["toy.json.gz"]["duplicate review (same reviewerID, asin, unixReviewTime, reviewText)"]
    assert drop == {"count": 1, "examples": ["line 2 = line 1"]}
    assert reviews.dataset_stats(tfds.builder_from_directory(b.data_dir))["drops"] == st["drops"]

    strict = _reviews_config(root, name="toy_strict", on_duplicate="error")
    with pytest.raises(DataError, match="duplicate record") as e:
        reviews.JaxrecAmazonReviews(config=strict, raw_dir=root, data_dir=str(tmp_path / "t"))._split_generators(None)
    assert e.value.line == 2 and "same as line 1" in str(e.value)


@pytest.mark.parametrize("line, msg, field", [
    ('{"overall": 5.0,', "malformed JSON", "column 17"),
    ("", "empty record", None),
    ("{}", "empty record", None),
    ("[1, 2]", "not a JSON object", None),
    (_review(helpful=3), "unknown key", "helpful"),
    ({k: v for k, v in _review().items() if k != "asin"}, "missing key", "asin"),
    (_review(overall=6.0), "outside the declared range", "overall"),
    (_review(overall=4.5), "outside the declared range", "overall"),
    (_review(overall="5"), "wrong type", "overall"),
    (_review(verified=1), "wrong type", "verified"),
    (_review(reviewerID=" "), "empty id", "reviewerID"),
    (_review(unixReviewTime=99), "outside the declared range", "unixReviewTime"),
    (_review(vote="many"), "malformed vote", "vote"),
])
def test_reviews_reader_errors(tmp_path, line, msg, field):
    p = _write_gz(tmp_path / "bad.json.gz", [_review(), line])
    with pytest.raises(DataError) as e:
        reviews.read_reviews(p, time_range=(946684800, 1546300799))
    assert msg in str(e.value) and e.value.path == str(p)
    assert e.value.line == 2 and e.value.field == field and e.value.expected


def test_reviews_file_errors(tmp_path):
    p = tmp_path / "corrupt.json.gz"
    p.write_bytes(gzip.compress(json.dumps(_review()).encode())[:-6])
    with pytest.raises(DataError, match="corrupt gzip"):
        reviews.read_reviews(p, time_range=(0, 2**40))
    root = tmp_path / "raw"
    _write_gz(root / "toy.json.gz", [_review()])
    cfg = _reviews_config(root)
    _write_gz(root / "toy.json.gz", [_review(overall=1.0)])
    with pytest.raises(DataError, match="checksum") as e:
        reviews.JaxrecAmazonReviews(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t"))._split_generators(None)
    assert e.value.field == "sha256"
    (root / "toy.json.gz").unlink()
    with pytest.raises(DataError, match="missing"):
        reviews.JaxrecAmazonReviews(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t"))._split_generators(None)


@pytest.fixture(scope="module")
def real_reviews(shared_data, tmp_path_factory):
    root = shared_data
    d = str(tmp_path_factory.mktemp("reviews_tfds"))
    return {n: catalog.builder(n, raw_dir=root, data_dir=d)
            for n in ("amazon_reviews_2018_5core/fashion", "amazon_reviews_2018_5core/beauty")}


@pytest.mark.parametrize("name", ["amazon_reviews_2018_5core/fashion", "amazon_reviews_2018_5core/beauty"])
def test_reviews_real_stats(real_reviews, shared_data, name):
    b = real_reviews[name]
    spec = catalog.spec(name)
    want = spec.source_stats
    assert spec.kind == "reviews" and "research" in spec.licence
    sums = readers.source_checksums(shared_data / "amazon_reviews_2018_5core" / "SOURCE.md")
    assert all(sums[k] == v for k, v in b.builder_config.checksums.items())
    st = reviews.dataset_stats(b)
    fs = st["file_stats"]
    assert (fs["reviews"], fs["users"], fs["items"]) == (want["reviews"], want["users"], want["items"])
    assert fs["ratings_1_to_5"] == want["ratings_1_to_5"] and fs["missing_review_text"] == want["missing_review_text"]
    assert (fs["first_day"], fs["last_day"]) == (want["first_day"], want["last_day"])
    assert int(fs["mean_text_length"]) == want["mean_text_length"]
    (drop,) = st["drops"][b.builder_config.file].values()
    assert drop["count"] == want["exact_duplicates"]
    assert st["splits"]["full"]["records"] == want["reviews"] - want["exact_duplicates"] == st["interactions"]
    src = b.as_data_source("full")
    r = src[0]
    assert 0 <= r["user_id"] < st["users"] and 1 <= r["item_id"] <= st["items"] and 1 <= r["rating"] <= 5


# ------------------------------------------------------------------------------------------------- MovieLens

def _write_ml(root, data_lines, n_users=3, n_items=4):
    d = root / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    genres = ["unknown", "Action"] + [f"g{i}" for i in range(17)]
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    (d / "u.occupation").write_text("student\nwriter\n")
    (d / "u.item").write_text("".join(
        f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|" + "|".join("1" if g == i % 2 else "0" for g in range(19)) + "\n"
        for i in range(1, n_items + 1)), encoding="latin-1")
    (d / "u.user").write_text("".join(f"{u}|{20 + u}|{'MF'[u % 2]}|{['student', 'writer'][u % 2]}|0000{u}\n"
                                      for u in range(1, n_users + 1)))
    (d / "u.data").write_text("".join(data_lines))
    rels = ["ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.user", "ml-100k/u.occupation", "ml-100k/u.genre"]
    return movielens.MovieLensConfig(name="toy", num_users=n_users, num_items=n_items, time_range=(0, 10**10),
                                     checksums={r: readers.sha256_file(root / r) for r in rels})


_ML_DATA = ["1\t1\t5\t100\n", "1\t2\t4\t300\n", "1\t3\t3\t200\n", "1\t4\t1\t400\n",
            "2\t1\t2\t50\n", "2\t2\t2\t50\n", "2\t3\t5\t10\n", "3\t4\t4\t1\n", "3\t1\t1\t2\n"]


def test_movielens_build_synthetic(tmp_path):
    """Synthetic files in the ml-100k format (no MovieLens data in the repository or the tests)."""
    root = tmp_path / "raw"
    cfg = _write_ml(root, _ML_DATA)
    b = movielens.JaxrecMovieLens(config=cfg, raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()

    def rows(split):
        src = b.as_data_source(split)
        recs = (src[i] for i in range(len(src)))
        return sorted((int(r["user_id"]), int(r["item_id"]), int(r["timestamp"])) for r in recs)

    # leave-one-out by (timestamp, line): user 2's ties at t=50 are ordered by line (item 1 then item 2)
    assert rows("test") == [(1, 4, 400), (2, 2, 50)]
    assert rows("valid") == [(1, 2, 300), (2, 1, 50)]
    assert rows("train") == [(1, 1, 100), (1, 3, 200), (2, 3, 10), (3, 1, 2), (3, 4, 1)]  # user 3: < 3 ratings
    st = movielens.dataset_stats(b)
    (drop,) = st["drops"]["leave-one-out"].values()
    assert drop["count"] == 1
    md = b.info.metadata
    assert md["user_gender"][1:] == [0, 1, 0] and md["user_occupation"][1:] == [1, 0, 1]
    assert md["item_genres"][1] == [1] and md["genre_names"][1] == "Action" and md["internal_only"]


def test_movielens_sequence_view_synthetic(tmp_path):
    """``movielens-100k/seq``: one chronological record per user and split, leave-one-out like the flat view."""
    root = tmp_path / "raw"
    cfg = _write_ml(root, _ML_DATA)
    b = movielens.JaxrecMovieLensSeq(config=cfg, raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()

    def recs(split):
        src = b.as_data_source(split)
        return {int(r["user_id"]): (list(r["items"]), int(r["target"]), list(r["ratings"]), int(r["target_rating"]),
                                    list(r["timestamps"]))
                for r in (src[i] for i in range(len(src)))}

    # user 1 by time: items 1 (t100, r5), 3 (t200, r3), 2 (t300, r4), 4 (t400, r1); user 2: 3 (t10), then the t=50
    # tie in line order 1, 2; user 3 has 2 ratings: a train record only (counted)
    assert recs("train") == {1: ([1], 3, [5], 3, [100]), 2: ([], 3, [], 5, []), 3: ([4], 1, [4], 1, [1])}
    assert recs("valid") == {1: ([1, 3], 2, [5, 3], 4, [100, 200]), 2: ([3], 1, [5], 2, [10])}
    assert recs("test") == {1: ([1, 3, 2], 4, [5, 3, 4], 1, [100, 200, 300]), 2: ([3, 1], 2, [5, 2], 2, [10, 50])}
    r = b.as_data_source("test")[0]
    assert set(r) == set(catalog.SEQUENCE_FIELDS) | {"ratings", "target_rating"}
    assert not r["overlap"] and int(r["target_domain"]) == 0 and not np.asarray(r["domains"]).any()
    md = b.info.metadata
    assert md["catalog_name"] == "movielens-100k/seq" and md["internal_only"] and md["num_items"] == 4
    (drop,) = md["drops"]["leave-one-out"].values()
    assert drop["count"] == 1
    spec = catalog.spec("movielens-100k/seq")
    assert spec.kind == "sequence" and spec.internal_only


@pytest.mark.parametrize("bad, msg, line, field", [
    ("1\t1\t5\n", "malformed line", 2, "line"),
    ("1\t9\t5\t7\n", "outside the declared range", 2, "item"),
    ("1\t2\t0\t7\n", "outside the declared range", 2, "rating"),
    ("1\t1\t5\t7\n", "duplicate rating", 2, "user+item"),
    ("\n", "empty record", 2, None),
])
def test_movielens_reader_errors(tmp_path, bad, msg, line, field):
    root = tmp_path / "raw"
    cfg = _write_ml(root, ["1\t1\t5\t100\n", bad, "2\t2\t4\t300\n"])
    with pytest.raises(DataError) as e:
        movielens.JaxrecMovieLens(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t"))._split_generators(None)
    assert msg in str(e.value) and e.value.path.endswith("u.data")
    assert (e.value.line, e.value.field) == (line, field)


def test_movielens_is_internal_only_and_not_in_repo():
    spec = catalog.spec("movielens-100k")
    assert spec.internal_only and "no redistribution" in spec.licence
    tracked = subprocess.run(["git", "ls-files"], cwd=_REPO, capture_output=True, text=True).stdout.split("\n")
    assert not [p for p in tracked if p.rsplit("/", 1)[-1] in ("u.data", "u.item", "u.user", "u1.base", "ml-100k.zip")]


def test_movielens_real_stats(shared_data, tmp_path):
    """Real files read and checked against SOURCE.md (dry preparation: no ArrayRecord copy is written)."""
    b = catalog.spec("movielens-100k").make_builder(str(shared_data), str(tmp_path))
    gens = b._split_generators(None)
    sums = readers.source_checksums(shared_data / "movielens-100k" / "SOURCE.md")
    assert all(sums[k] == v for k, v in b.builder_config.checksums.items())
    st = b.info.metadata["stats"]
    want = catalog.spec("movielens-100k").source_stats
    assert (st["users"], st["items"], st["interactions"]) == (want["users"], want["items"], want["ratings"])
    assert st["ratings_1_to_5"] == want["ratings_1_to_5"]
    assert {k: v["interactions"] for k, v in st["splits"].items()} == {"train": 98114, "valid": 943, "test": 943}
    key, rec = next(gens["test"])
    assert set(rec) == {"user_id", "item_id", "rating", "timestamp"}
    b.info.features.encode_example(rec)


def test_movielens_sequence_view_real(shared_data, tmp_path):
    """The real ratings as sequences (dry preparation): every rating is in each user's test record, in time order."""
    b = catalog.spec("movielens-100k/seq").make_builder(str(shared_data), str(tmp_path))
    gens = b._split_generators(None)
    test = [rec for _, rec in gens["test"]]
    assert len(test) == 943 and sum(len(r["items"]) + 1 for r in test) == 100000
    assert all(np.all(np.diff(r["timestamps"]) >= 0) for r in test)
    train = {int(r["user_id"]): r for _, r in gens["train"]}
    assert all(list(train[int(r["user_id"])]["items"]) == list(r["items"][:-2]) for r in test)
    b.info.features.encode_example(test[0])
