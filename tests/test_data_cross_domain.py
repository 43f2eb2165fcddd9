"""Cross-domain sequential builders (LLMCDSR, ABXI, C2DSR): crafted raw folders, mock_data, and the real files."""

import hashlib
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrec.data import catalog
from jaxrec.data.builders import cross_domain_seq as C
from jaxrec.data.errors import DataError


def _source_md(root, files=None):
    """Write root/SOURCE.md listing the sha256 of every file below root (as the shared data does)."""
    files = files or sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SOURCE.md")
    rows = [f"| {p.relative_to(root).as_posix()} | {p.stat().st_size} | `{hashlib.sha256(p.read_bytes()).hexdigest()}` |  |"
            for p in files]
    (root / "SOURCE.md").write_text("## Files\n| file | bytes | sha256 | lines |\n|---|---:|---|---:|\n" + "\n".join(rows) + "\n")


# --------------------------------------------------------------------------------------------- LLMCDSR

LLM_FILES = {
    "num.txt": "4\n6\n",                       # A items 0..3, B items 4..9
    "instance_num.txt": "2\n1\n2\n",
    "train_A.txt": "1\t0,1,2\n2\t3,0\n",
    "train_B.txt": "1\t4,5,6\n",
    "train_overlap.txt": "1\t0,4,1,5\n2\t9,3\n",
    "valid.txt": "1\t0,4,2,6\n",
    "test.txt": "1\t1,5,9\n2\t2,3,7\n",
}


def _llm_dir(tmp_path, files=LLM_FILES, drop=(), checksums=True):
    root = tmp_path / "llmcdsr"
    pair = root / "pair"
    pair.mkdir(parents=True)
    for name, text in files.items():
        if name not in drop:
            (pair / name).write_text(text)
    if checksums:
        _source_md(root)
    return pair


def _by_user(ds):
    return {int(r["user_id"]): r for r in (ds[i] for i in range(len(ds)))}


def test_llmcdsr_builder_on_crafted_files(tmp_path):
    pair = _llm_dir(tmp_path)
    b = C.make_builder("llmcdsr_food_kitchen", raw_dir=str(pair), data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 5, "valid": 1, "test": 2}
    train = _by_user(b.as_data_source("train"))
    assert sorted(train) == [0, 1, 2, 3, 4]  # A users 0-1, B user 2, overlap users 3-4
    r = train[0]  # train_A line "1\t0,1,2"
    assert r["items"].tolist() == [1, 2] and int(r["target"]) == 3
    assert r["domains"].tolist() == [0, 0] and int(r["target_domain"]) == 0 and not r["overlap"]
    assert r["timestamps"].tolist() == [0, 1]
    assert r["items"].dtype == np.int64 and r["domains"].dtype == np.int32
    r = train[2]  # train_B "1\t4,5,6"
    assert r["items"].tolist() == [5, 6] and int(r["target"]) == 7 and r["domains"].tolist() == [1, 1]
    r = train[4]  # overlap "2\t9,3"
    assert r["items"].tolist() == [10] and int(r["target"]) == 4 and int(r["target_domain"]) == 0 and r["overlap"]
    valid = _by_user(b.as_data_source("valid"))
    assert list(valid) == [5] and valid[5]["items"].tolist() == [1, 5, 3] and int(valid[5]["target"]) == 7
    test = _by_user(b.as_data_source("test"))
    assert sorted(test) == [6, 7] and int(test[7]["target"]) == 8 and int(test[7]["target_domain"]) == 1
    md = dict(b.info.metadata)
    assert md["num_items"] == 10 and md["num_users"] == 8
    assert md["domain_item_ranges"] == {"food": [1, 4], "kitchen": [5, 10]}
    assert md["stats"]["files"]["train_overlap.txt"] == {"rows": 2, "interactions": 6, "by_domain": [3, 3]}
    assert set(md["checksums"]) == {f"pair/{n}" for n in LLM_FILES}

    # a fresh builder from the directory (no raw files needed) sees the same records and metadata
    fresh = tfds.builder_from_directory(b.data_dir)
    assert dict(fresh.info.metadata) == md
    assert _by_user(fresh.as_data_source("train"))[0]["items"].tolist() == [1, 2]


def test_llmcdsr_partial_pair_reserves_train_b_ids(tmp_path):
    pair = _llm_dir(tmp_path, drop=("train_B.txt",))
    data = C.read_config("llmcdsr_movie_book", pair)
    assert set(data.tables) == {"train_a", "train_overlap", "valid", "test"}
    assert data.tables["train_a"].user_id.tolist() == [0, 1]
    assert data.tables["train_overlap"].user_id.tolist() == [3, 4]  # id 2 kept for the missing train_B user
    # asking for the full train split of the partial pair names the missing file
    with pytest.raises(DataError, match="train_B.txt"):
        C.read_config("llmcdsr_food_kitchen", pair)


def _bad(tmp_path, **changes):
    files = dict(LLM_FILES)
    files.update(changes)
    return _llm_dir(tmp_path, files=files)


@pytest.mark.parametrize("changes,file,line,field,msg", [
    ({"train_A.txt": "1\t0,1,2\n2\t3,4\n"}, "train_A.txt", 2, "items[1]", "out of range"),      # B item in train_A
    ({"valid.txt": "1\t0,4,2,10\n"}, "valid.txt", 1, "items[3]", "out of range"),                # id >= nA + nB
    ({"test.txt": "1\t1,5,9\n2\t\n"}, "test.txt", 2, "items", "empty sequence"),
    ({"train_overlap.txt": "1\t0,4,1,5\n1\t9,3\n"}, "train_overlap.txt", 2, "user", "duplicate record"),
    ({"train_B.txt": "1\t4;5,6\n"}, "train_B.txt", 1, "items[0]", "malformed item id"),
    ({"valid.txt": "1 0,4,2,6\n"}, "valid.txt", 1, "line", "malformed line"),
    ({"test.txt": "1\t1,5,9\n3\t2,3,7\n"}, "test.txt", 2, "user", "user id out of range"),
])
def test_llmcdsr_bad_files(tmp_path, changes, file, line, field, msg):
    pair = _bad(tmp_path, **changes)
    with pytest.raises(DataError) as e:
        C.read_config("llmcdsr_food_kitchen", pair)
    err = e.value
    assert err.path.endswith(file) and err.line == line and err.field == field and msg in str(err)
    assert "expected" in str(err)


def test_llmcdsr_missing_split_file(tmp_path):
    pair = _llm_dir(tmp_path, drop=("valid.txt",))
    with pytest.raises(DataError, match="required file valid.txt") as e:
        C.read_config("llmcdsr_food_kitchen", pair)
    assert e.value.path.endswith("valid.txt")


def test_llmcdsr_checksum_mismatch_and_line_count(tmp_path):
    pair = _llm_dir(tmp_path)
    (pair / "train_A.txt").write_text("1\t0,1,2\n2\t3,1\n")  # changed after SOURCE.md
    with pytest.raises(DataError, match="sha256 checksum mismatch") as e:
        C.read_config("llmcdsr_food_kitchen", pair)
    assert e.value.path.endswith("train_A.txt")
    pair2 = _bad(tmp_path / "x", **{"instance_num.txt": "3\n1\n2\n"})
    with pytest.raises(DataError, match="wrong number of records") as e:
        C.read_config("llmcdsr_food_kitchen", pair2)
    assert e.value.path.endswith("train_A.txt")


def test_builder_propagates_data_error(tmp_path):
    pair = _bad(tmp_path, **{"train_A.txt": "1\t0,1,2\n2\t3,4\n"})
    b = C.make_builder("llmcdsr_food_kitchen", raw_dir=str(pair), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="out of range"):
        b.download_and_prepare()


# ------------------------------------------------------------------------------------------------ ABXI


def _abxi_dir(tmp_path, seq_lines, items=None):
    d = tmp_path / "abxi" / "data" / "afk"
    d.mkdir(parents=True)
    items = items or {"a": [1, 0], "b": [2, 0], "c": [3, 1], "d": [4, 1], "e": [5, 1]}
    (d / "map_item_50.txt").write_text(json.dumps(items))
    (d / "map_user_50.txt").write_text(json.dumps({f"U{i}": i for i in range(len(seq_lines))}))
    (d / "afk_50_preprocessed.txt").write_text("".join(ln + "\n" for ln in seq_lines))
    _source_md(tmp_path / "abxi")
    return d


def test_abxi_leave_last_out_and_truncation(tmp_path):
    long = " ".join(f"{1 + i % 5}|{1000 + i}" for i in range(53))  # 53 events: ABXI keeps the last 50
    d = _abxi_dir(tmp_path, ["0 1|10 3|20 2|30 4|40 5|50", "1 " + long])
    b = C.make_builder("abxi_afk", raw_dir=str(d), data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    tr, va, te = (_by_user(b.as_data_source(s)) for s in ("train", "valid", "test"))
    assert tr[0]["items"].tolist() == [1, 3] and int(tr[0]["target"]) == 2
    assert va[0]["items"].tolist() == [1, 3, 2] and int(va[0]["target"]) == 4
    assert te[0]["items"].tolist() == [1, 3, 2, 4] and int(te[0]["target"]) == 5
    assert te[0]["domains"].tolist() == [0, 1, 0, 1] and int(te[0]["target_domain"]) == 1 and te[0]["overlap"]
    assert te[0]["timestamps"].tolist() == [10, 20, 30, 40]
    assert len(te[1]["items"]) == 49 and te[1]["timestamps"][0] == 1003
    md = dict(b.info.metadata)
    assert md["domain_item_ranges"] == {"food": [1, 2], "kitchen": [3, 5]}
    drops = md["drops"]["afk_50_preprocessed.txt"]
    assert list(drops.values())[0]["count"] == 3
    st = catalog.format_stats({"name": "abxi/afk", "drops": md["drops"], "splits": {}})
    assert "3 events before the last 50" in st


def test_abxi_bad_inputs(tmp_path):
    d = _abxi_dir(tmp_path / "t", ["0 1|10 3|20 2|5 4|40"])
    with pytest.raises(DataError, match="chronological") as e:
        C.read_config("abxi_afk", d)
    assert e.value.line == 1 and e.value.field == "items[2].timestamp"
    d = _abxi_dir(tmp_path / "r", ["0 1|10 3|20 6|30 4|40"])
    with pytest.raises(DataError, match="out of range") as e:
        C.read_config("abxi_afk", d)
    assert e.value.field == "items[2]"
    d = _abxi_dir(tmp_path / "s", ["0 1|10 3|20 2|30"])
    with pytest.raises(DataError, match="too short"):
        C.read_config("abxi_afk", d)
    d = _abxi_dir(tmp_path / "n", ["0 1|10 3|20 2|30 4|40"], items={"a": [1, 0], "b": [2, 1], "c": [3, 0]})
    with pytest.raises(DataError, match="contiguous"):
        C.read_config("abxi_afk", d)


# ----------------------------------------------------------------------------------------------- C2DSR


def _c2dsr_dir(tmp_path, valid, test):
    d = tmp_path / "c2dsr" / "Pair"
    d.mkdir(parents=True)
    (d / "Alist.txt").write_text("10\tA0\t0\n11\tA1\t1\n12\tA2\t2\n")
    (d / "Blist.txt").write_text("20\tB0\t0\n21\tB1\t1\n")
    (d / "userlist.txt").write_text("R0\t0\nR1\t1\nR2\t2\n")
    rec = lambda i, t: f"{i}|{t}|2014-01-01 08:00:00|"  # noqa: E731
    (d / "validdata_new.txt").write_text("".join(f"{u}\t9\t" + "\t".join(rec(i, t) for i, t in rs) + "\n" for u, rs in valid))
    (d / "testdata_new.txt").write_text("".join(f"{u}\t9\t" + "\t".join(rec(i, t) for i, t in rs) + "\n" for u, rs in test))
    _source_md(tmp_path / "c2dsr")
    return d


def test_c2dsr_sorts_by_time_stably(tmp_path):
    d = _c2dsr_dir(tmp_path, valid=[(0, [(2, 20), (0, 10), (3, 10), (4, 30)])],
                   test=[(1, [(0, 5), (1, 6)]), (2, [(4, 1), (3, 2), (1, 3)])])
    b = C.make_builder("c2dsr_food_kitchen", raw_dir=str(d), data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert set(b.info.splits) == {"valid", "test"}
    v = _by_user(b.as_data_source("valid"))[0]
    assert v["items"].tolist() == [1, 4, 3] and v["timestamps"].tolist() == [10, 10, 20]  # tie keeps file order
    assert int(v["target"]) == 5 and int(v["target_domain"]) == 1 and v["overlap"]
    t = _by_user(b.as_data_source("test"))
    assert t[1]["items"].tolist() == [1] and int(t[1]["target"]) == 2 and not t[1]["overlap"]
    assert t[2]["domains"].tolist() == [1, 1] and int(t[2]["target_domain"]) == 0
    md = dict(b.info.metadata)
    assert md["unavailable_splits"]["train"].startswith("traindata_new.txt is missing")
    assert md["stats"]["splits"]["valid"]["targets_by_domain"] == [0, 1]


def test_c2dsr_vt_holds_out_valid_users_and_keeps_test(tmp_path):
    valid = [(u, [(u % 3, 10 + u), (3 + u % 2, 20 + u), (u % 3, 30 + u)]) for u in range(10)]
    d = _c2dsr_dir(tmp_path, valid=valid, test=[(10, [(0, 5), (1, 6)]), (11, [(4, 1), (3, 2), (1, 3)])])
    (d / "userlist.txt").write_text("".join(f"R{u}\t{u}\n" for u in range(12)))
    _source_md(tmp_path / "c2dsr")
    data = C.read_config("c2dsr_food_kitchen_vt", d)
    tr, va, te = (data.tables[k] for k in ("train", "valid", "test"))
    assert (len(tr), len(va), len(te)) == (9, 1, 2)  # round(0.1 * 10) held out
    assert sorted(tr.user_id.tolist() + va.user_id.tolist()) == list(range(10))  # a partition of the valid users
    assert te.user_id.tolist() == [10, 11] and te.target.tolist() == [2, 2]
    for t in (tr, va):
        for i in range(len(t)):  # each record still its user's time-sorted line: history -> last target
            u = int(t.user_id[i])
            assert t.example(i)["items"].tolist() == [u % 3 + 1, 3 + u % 2 + 1] and int(t.target[i]) == u % 3 + 1
    again = C.read_config("c2dsr_food_kitchen_vt", d)
    assert again.tables["valid"].user_id.tolist() == va.user_id.tolist()  # seeded


def test_c2dsr_user_in_both_valid_and_test(tmp_path):
    d = _c2dsr_dir(tmp_path, valid=[(0, [(0, 1), (1, 2)])], test=[(0, [(2, 1), (3, 2)])])
    with pytest.raises(DataError, match="already has a sequence") as e:
        C.read_config("c2dsr_food_kitchen", d)
    assert e.value.path.endswith("testdata_new.txt") and e.value.line == 1


def test_c2dsr_item_out_of_range(tmp_path):
    d = _c2dsr_dir(tmp_path, valid=[(0, [(0, 1), (5, 2)])], test=[(1, [(2, 1), (3, 2)])])
    with pytest.raises(DataError, match="out of range") as e:
        C.read_config("c2dsr_food_kitchen", d)
    assert e.value.path.endswith("validdata_new.txt") and e.value.field == "items[1]"


# ------------------------------------------------------------------------------------------ mock_data


def test_mock_data_sequence_schema():
    C.builder_class()  # registers the TFDS name
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = tfds.data_source("jaxrec_cross_domain_seq/llmcdsr_food_kitchen", split="train")
        assert len(ds) == 6
        r = ds[0]
    assert set(r) == set(catalog.SEQUENCE_FIELDS)
    assert r["items"].dtype == np.int64 and r["domains"].dtype == np.int32 and r["timestamps"].dtype == np.int64
    assert r["items"].ndim == r["domains"].ndim == r["timestamps"].ndim == 1  # (mock lengths are random)
    assert np.asarray(r["target"]).shape == () and np.asarray(r["overlap"]).dtype == np.bool_


# ----------------------------------------------------------------------------------------- real files

NAMES = ["llmcdsr/food_kitchen", "llmcdsr/movie_book", "abxi/afk", "c2dsr/food_kitchen", "c2dsr/movie_book"]


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    """Prepare each real dataset once (into the session's TFDS dir, where catalog.load looks too)."""
    data_dir = tmp_path_factory.getbasetemp() / "tfds"
    return {n: catalog.builder(n, data_dir=data_dir) for n in NAMES}


@pytest.mark.shared_data
def test_real_llmcdsr_food_kitchen(real, monkeypatch):
    b = real["llmcdsr/food_kitchen"]
    cfg = C.CONFIGS["llmcdsr_food_kitchen"]
    st = catalog.stats("llmcdsr/food_kitchen")
    for f, want in cfg.source_stats["files"].items():
        got = st["files"][f]
        assert (got["rows"], got["interactions"], tuple(got["by_domain"])) == (want["rows"], want["interactions"],
                                                                                 want["by_domain"]), f
    assert {s: d["records"] for s, d in st["splits"].items()} == {"train": 51164, "valid": 960, "test": 937}
    inf = catalog.info("llmcdsr/food_kitchen")
    assert inf.num_items == 8661 + 27637 and inf.domain_item_ranges == {"food": (1, 8661), "kitchen": (8662, 36298)}
    assert inf.num_users == 5472 + 38191 + 7501 + 960 + 937 and st["users"] == inf.num_users
    assert len(inf.metadata["checksums"]) == 7
    # first line of train_A.txt is "1\t0,1,...,12": user 0, items 1..12, target 13
    fresh = tfds.builder_from_directory(b.data_dir).as_data_source("train")
    r = next(fresh[i] for i in range(3) if int(fresh[i]["user_id"]) == 0)
    assert r["items"].tolist() == list(range(1, 13)) and int(r["target"]) == 13 and not r["overlap"]
    ds = catalog.load("llmcdsr/food_kitchen", "valid")
    assert all(ds[i]["overlap"] for i in range(0, len(ds), 97))
    assert "51,164" in catalog.format_stats(st)


@pytest.mark.shared_data
def test_real_llmcdsr_movie_book(real):
    st = catalog.stats("llmcdsr/movie_book")
    for f, want in C.CONFIGS["llmcdsr_movie_book"].source_stats["files"].items():
        got = st["files"][f]
        assert (got["rows"], got["interactions"], tuple(got["by_domain"])) == (want["rows"], want["interactions"],
                                                                                 want["by_domain"]), f
    assert {s: d["records"] for s, d in st["splits"].items()} == {"train_a": 12185, "train_overlap": 6652,
                                                                  "valid": 829, "test": 836}
    assert "train_B.txt" in st["unavailable_splits"]["train"]
    with pytest.raises(DataError, match="train_B.txt"):
        catalog.load("llmcdsr/movie_book", "train")
    assert catalog.info("llmcdsr/movie_book").num_items == 12875 + 93860
    assert "UNAVAILABLE" in catalog.format_stats(st)


@pytest.mark.shared_data
def test_real_abxi_afk(real):
    want = C.CONFIGS["abxi_afk"].source_stats
    st = catalog.stats("abxi/afk")
    assert (st["users"], st["items"], st["interactions"]) == (want["users"], want["items"], want["interactions"])
    f = st["files"]["afk_50_preprocessed.txt"]
    assert tuple(f["by_domain"]) == want["interactions_by_domain"]
    te = st["splits"]["test"]  # the test split holds every full sequence
    assert (te["seq_len_min"], round(te["seq_len_mean"], 2), te["seq_len_max"]) == want["seq_len"]
    assert tuple(te["interactions_by_domain"]) == want["interactions_by_domain"]
    inf = catalog.info("abxi/afk")
    rng = inf.domain_item_ranges
    assert (rng["food"][1] - rng["food"][0] + 1, rng["kitchen"][1] - rng["kitchen"][0] + 1) == want["items_by_domain"]
    assert inf.split_sizes == {"train": 7144, "valid": 7144, "test": 7144}
    assert st["drops"] == {}
    ds = catalog.load("abxi/afk", "test")
    r = next(ds[i] for i in range(5) if int(ds[i]["user_id"]) == 0)  # line 1: "0 821|1381536000 1860|..."
    assert r["items"][:2].tolist() == [821, 1860] and r["timestamps"][0] == 1381536000


@pytest.mark.parametrize("name", ["c2dsr/food_kitchen", "c2dsr/movie_book"])
@pytest.mark.shared_data
def test_real_c2dsr(real, name):
    want = C.CONFIGS[name.replace("/", "_")].source_stats
    st = catalog.stats(name)
    assert st["users"] == want["users"] and st["items"] == sum(want["num_items"])
    for split, w in want["splits"].items():
        got = st["splits"][split]
        assert got["records"] == w["records"] and tuple(got["targets_by_domain"]) == w["targets_by_domain"]
        assert got["interactions"] == w["interactions"]
        assert (got["seq_len_min"], got["seq_len_max"]) == want["seq_len"]
    assert "traindata_new.txt" in st["unavailable_splits"]["train"]
    with pytest.raises(DataError, match="traindata_new.txt"):
        catalog.load(name, "train")


@pytest.mark.shared_data
def test_real_c2dsr_vt(real, tmp_path):
    b = catalog.builder("c2dsr/food_kitchen_vt", data_dir=tmp_path / "tfds")
    sizes = {s: b.info.splits[s].num_examples for s in ("train", "valid", "test")}
    assert sizes == C.CONFIGS["c2dsr_food_kitchen_vt"].source_stats["records"]
    full = catalog.load("c2dsr/food_kitchen", "valid")
    users = lambda ds: {int(ds[i]["user_id"]) for i in range(len(ds))}  # noqa: E731
    tr, va = (users(b.as_data_source(s)) for s in ("train", "valid"))
    assert not tr & va and tr | va == users(full)


# ------------------------------------------------------------------------- catalog info/stats/load (crafted)


def test_catalog_info_stats_load_on_crafted(tmp_path, monkeypatch):
    pair = _llm_dir(tmp_path)
    catalog.names()  # import every builder first, then add a throw-away entry
    spec = catalog.DatasetSpec(
        name="test/llm_tiny", kind="sequence", raw_subdir="unused", licence="test only",
        make_builder=lambda raw_dir, data_dir: C.make_builder("llmcdsr_food_kitchen", str(pair), data_dir),
        unavailable_splits={"extra": "not in this tiny fixture"})
    monkeypatch.setitem(catalog._REGISTRY, spec.name, spec)
    data_dir = tmp_path / "tfds"
    inf = catalog.info(spec.name, data_dir=data_dir)
    assert inf.split_sizes == {"train": 5, "valid": 1, "test": 2}
    assert (inf.num_users, inf.num_items, inf.domain_names) == (8, 10, ("food", "kitchen"))
    assert inf.domain_item_ranges == {"food": (1, 4), "kitchen": (5, 10)} and inf.drops == {}
    st = catalog.stats(spec.name, data_dir=data_dir)
    assert (st["users"], st["items"], st["interactions"]) == (8, 10, 3 + 2 + 3 + 4 + 2 + 4 + 3 + 3)
    assert st["splits"]["train"]["records"] == 5 and st["splits"]["train"]["targets_by_domain"] == [3, 2]
    text = catalog.format_stats(st)
    assert "test/llm_tiny" in text and "records=5" in text and "nothing" in text
    assert len(catalog.load(spec.name, "test", data_dir=data_dir)) == 2
    with pytest.raises(DataError, match="unknown split"):
        catalog.load(spec.name, "nope", data_dir=data_dir)
    with pytest.raises(DataError, match="not in this tiny fixture"):
        catalog.load(spec.name, "extra", data_dir=data_dir)


def test_sequence_table_from_sequences_and_concat():
    vals = np.array([1, 2, 3, 4, 5, 6, 7])
    offs = np.array([0, 4, 7])
    dom = np.array([0, 1, 0, 1, 1, 1, 0])
    t = catalog.SequenceTable.from_sequences([5, 9], vals, dom, np.arange(7), offs, [True, True], cut=1)
    assert t.offsets.tolist() == [0, 2, 3] and t.items.tolist() == [1, 2, 5] and t.target.tolist() == [3, 6]
    assert t.target_domain.tolist() == [0, 1] and t.example(1)["items"].tolist() == [5]
    c = catalog.SequenceTable.concat([t, t])
    assert len(c) == 4 and c.offsets.tolist() == [0, 2, 3, 5, 6] and c.example(3)["timestamps"].tolist() == [4]
    s = c.stats(num_domains=2)
    assert s["records"] == 4 and s["users"] == 2 and s["interactions"] == 10 and s["targets_by_domain"] == [2, 2]
    with pytest.raises(ValueError):
        catalog.SequenceTable.from_sequences([0], [1, 2], [0, 0], [0, 1], [0, 2], [False], cut=1)
    with pytest.raises(DataError, match="outside 1..5"):
        catalog.SequenceTable.from_sequences([0], [1, 6], [0, 0], [0, 1], [0, 2], [False]).check(5)
    assert catalog.count_distinct(np.array([3, -1, 3, 10**12, 0])) == 4 and catalog.count_distinct([]) == 0
