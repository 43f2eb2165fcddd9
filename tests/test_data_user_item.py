"""User-item builders: DisenCDR (dual-user-intra), CDRIB (dual-user-inter), Douban Book/Music ratings."""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import user_item as ui
from jaxrec.data.errors import DataError

tfds.disable_progress_bar()

NAMES = ["disencdr/sport_cloth", "disencdr/phone_sport", "disencdr/electronic_phone", "disencdr/cloth_electronic",
         "cdrib/game_video", "cdrib/sport_cloth", "douban_gadtcdr"]


def _write(root, files: dict):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {rel: readers.sha256_file(root / rel) for rel in files}


_INTRA = {  # domain a (dir a_b): items 0..3, domain b (dir b_a): items 0..2; users 0..2 in both
    "dataset/a_b/train.txt": "0\t0\t1\n0\t1\t1\n1\t2\t1\n2\t1\t1\n",
    "dataset/a_b/test.txt": "0\t2\t1\n1\t3\t1\n",  # item 3 never in a's train -> dropped (UniCDR)
    "dataset/b_a/train.txt": "0\t0\t1\n1\t1\t1\n2\t2\t1\n",
    "dataset/b_a/test.txt": "2\t0\t1\n",
}


def _intra_config(root, files=None, **changes):
    sums = _write(root, files or _INTRA)
    base = dict(name="toy_intra", layout=ui.LAYOUT_INTRA, domains=("a", "b"),
                domain_paths=("dataset/a_b", "dataset/b_a"), user_ranges=((0, 2), (0, 2)),
                item_ranges=((0, 3), (0, 2)), checksums=sums, catalog_name="toy/a_b")
    base.update(changes)
    return ui.UserItemConfig(**base)


def _records(src):
    return sorted((int(r["domain"]), int(r["user_id"]), int(r["item_id"]), float(r["rating"]))
                  for r in (src[i] for i in range(len(src))))


def test_mock_data_schema(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        b = ui.JaxrecUserItem(config="disencdr_phone_sport", data_dir=str(tmp_path))
        b.download_and_prepare()
        rec = b.as_data_source("train")[0]
    assert set(rec) == {"user_id", "item_id", "domain", "rating", "negatives"}
    assert rec["user_id"].dtype == np.int64 and rec["domain"].dtype == np.int32
    assert rec["rating"].dtype == np.float32 and rec["negatives"].dtype == np.int64 and rec["negatives"].ndim == 1


def test_intra_build_crafted(tmp_path):
    root = tmp_path / "raw"
    cfg = _intra_config(root)
    b = ui.JaxrecUserItem(config=cfg, raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 7, "valid": 2, "test": 2}
    # global ids: domain a items 0..3 -> 1..4, domain b items 0..2 -> 5..7
    assert _records(b.as_data_source("train")) == [
        (0, 0, 1, 1.0), (0, 0, 2, 1.0), (0, 1, 3, 1.0), (0, 2, 2, 1.0), (1, 0, 5, 1.0), (1, 1, 6, 1.0), (1, 2, 7, 1.0)]
    assert _records(b.as_data_source("test")) == [(0, 0, 3, 1.0), (1, 2, 5, 1.0)]
    assert _records(b.as_data_source("valid")) == _records(b.as_data_source("test"))
    rec = b.as_data_source("test")[0]
    assert rec["negatives"].shape == (0,)
    md = b.info.metadata
    assert md["domain_item_ranges"] == {"a": [1, 4], "b": [5, 7]} and md["num_items"] == 7 and md["num_users"] == 3
    assert md["provided_negatives"] == 0 and md["users_in_both_domains"] == 3
    st = ui.dataset_stats(b)
    assert st["drops"]["test/a"]["eval item never in this domain's train.txt (UniCDR)"]["count"] == 1
    assert st["drops"]["test/a"]["eval item never in this domain's train.txt (UniCDR)"]["examples"] == [
        "dataset/a_b/test.txt:2"]
    assert st["splits"]["test"]["by_domain"]["a"] == {
        "file": "dataset/a_b/test.txt", "raw_rows": 2, "interactions": 1,
        "users": {"count": 1, "range": [0, 0]}, "items": {"count": 1, "range": [3, 3]}}
    assert st["splits"]["train"]["records"] == 7 and st["interactions"] == 9
    b2 = tfds.builder_from_directory(b.data_dir)
    assert ui.dataset_stats(b2)["drops"] == st["drops"]


def test_inter_and_ratings_build_crafted(tmp_path):
    files = {
        "dataset/x_y/train.txt": "2\t0\n2\t1\n3\t1\n",
        "dataset/x_y/valid.txt": "0\t1\n",
        "dataset/x_y/test.txt": "0\t0\n1\t1\n",
        "dataset/y_x/train.txt": "0\t0\n1\t0\n4\t1\n",
        "dataset/y_x/valid.txt": "2\t1\n",
        "dataset/y_x/test.txt": "3\t0\n",
    }
    root = tmp_path / "inter"
    cfg = ui.UserItemConfig(name="toy_inter", layout=ui.LAYOUT_INTER, domains=("x", "y"),
                            domain_paths=("dataset/x_y", "dataset/y_x"), user_ranges=((0, 3), (0, 4)),
                            item_ranges=((0, 1), (0, 1)), checksums=_write(root, files), catalog_name="toy/x_y")
    b = ui.JaxrecUserItem(config=cfg, raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert _records(b.as_data_source("valid")) == [(0, 0, 2, 1.0), (1, 2, 4, 1.0)]
    md = b.info.metadata
    assert md["shared_user"] == 0 and md["eval_users_in_own_train"] == [0, 0]
    assert md["eval_users_in_other_train"] == [2, 2] and md["num_users"] == 5

    root = tmp_path / "ratings"
    files = {"Data/b.dat": "1\t1\t5\n2\t2\t3\n", "Data/m.dat": "2\t1\t4\n3\t1\t1\n"}
    cfg = ui.UserItemConfig(name="toy_ratings", layout=ui.LAYOUT_RATINGS, domains=("book", "music"),
                            domain_paths=("Data/b.dat", "Data/m.dat"), user_ranges=((1, 3), (1, 3)),
                            item_ranges=((1, 2), (1, 1)), checksums=_write(root, files), catalog_name="toy")
    b = ui.JaxrecUserItem(config=cfg, raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert list(b.info.splits) == ["full"]
    assert _records(b.as_data_source("full")) == [(0, 1, 1, 5.0), (0, 2, 2, 3.0), (1, 2, 3, 4.0), (1, 3, 3, 1.0)]
    assert b.info.metadata["overlapping_users"] == 1 and b.info.metadata["ratings_1_to_5"]["music"] == [1, 0, 0, 1, 0]


@pytest.mark.parametrize("text, msg, line, field", [
    ("0\t0\t1\n0\t1\n", "malformed line", 2, "line"),
    ("0\t0\t1\n0\tx\t1\n", "malformed value", 2, "item"),
    ("0\t0\t1\n7\t1\t1\n", "outside the declared range", 2, "user"),
    ("0\t0\t1\n0\t9\t1\n", "outside the declared range", 2, "item"),
    ("0\t0\t1\n\n0\t1\t1\n", "empty record", 2, None),
    ("0\t0\t1\n0\t1\t1\n0\t0\t1\n", "duplicate (user, item) record (same as line 1)", 3, "user+item"),
    ("0\t0\t2\n", "unexpected value", 1, "label"),
    ("", "too few records", None, None),
])
def test_reader_errors(tmp_path, text, msg, line, field):
    cfg = _intra_config(tmp_path / "raw")
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        ui.read_domain_file(p, cfg, 0)
    assert msg in str(e.value) and e.value.path == str(p)
    assert (e.value.line, e.value.field) == (line, field) and e.value.expected


def test_missing_split_file_and_checksum(tmp_path):
    root = tmp_path / "raw"
    cfg = _intra_config(root)
    (root / "dataset/b_a/test.txt").unlink()
    with pytest.raises(DataError, match="split file missing") as e:
        ui.JaxrecUserItem(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t"))._split_generators(None)
    assert e.value.path.endswith("dataset/b_a/test.txt") and e.value.expected

    root = tmp_path / "raw2"
    cfg = _intra_config(root)
    (root / "dataset/a_b/train.txt").write_text(_INTRA["dataset/a_b/train.txt"] + "2\t3\t1\n")
    with pytest.raises(DataError, match="checksum") as e:
        ui.JaxrecUserItem(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t"))._split_generators(None)
    assert e.value.field == "sha256" and e.value.expected == cfg.checksums["dataset/a_b/train.txt"]

    cfg = dataclasses.replace(_intra_config(tmp_path / "raw3"), checksums={})
    with pytest.raises(DataError, match="no sha256 pinned"):
        ui.JaxrecUserItem(config=cfg, raw_dir=tmp_path / "raw3", data_dir=str(tmp_path / "t"))._split_generators(None)

    with pytest.raises(DataError, match="does not exist"):
        ui.JaxrecUserItem(config=cfg, raw_dir=tmp_path / "nowhere",
                          data_dir=str(tmp_path / "t"))._split_generators(None)


def test_catalog_registration():
    names = catalog.names()
    for n in NAMES:
        assert n in names
        s = catalog.spec(n)
        assert s.kind == "user_item" and s.licence and s.stats_fn is ui.dataset_stats and not s.internal_only
    assert "cdrib/cell_electronic" not in names  # partner folder electronic_cell is missing upstream


# --------------------------------------------------------------------------------------------------- real data

def _source_table(shared_data, family):
    """``{file: (rows, users, (lo, hi), items, (lo, hi))}`` parsed from the SOURCE.md statistics block."""
    text = (shared_data / family / "SOURCE.md").read_text()
    pat = (r"(dataset/\w+/\w+\.txt): rows=(\d+) cols=\[\d\] users=(\d+) \(id (\d+)\.\.(\d+)\) "
           r"items=(\d+) \(id (\d+)\.\.(\d+)\)")
    return {m[0]: (int(m[1]), int(m[2]), (int(m[3]), int(m[4])), int(m[5]), (int(m[6]), int(m[7])))
            for m in re.findall(pat, text)}


@pytest.fixture(scope="module")
def real_dry(shared_data, tmp_path_factory):
    """Every real user-item dataset read and checked (no ArrayRecord writing): {name: (builder, generators)}."""
    root = shared_data
    out = {}
    for name in NAMES:
        b = catalog.spec(name).make_builder(str(root), str(tmp_path_factory.mktemp("ui_dry")))
        out[name] = (b, b._split_generators(None))
    return out


def test_pinned_figures_match_source_md(shared_data):
    for family in ("disencdr", "cdrib"):
        sums = readers.source_checksums(shared_data / family / "SOURCE.md")
        table = _source_table(shared_data, family)
        for cfg in ui.BUILDER_CONFIGS:
            if cfg.raw_subdir != family:
                continue
            assert cfg.checksums and all(sums[k] == v for k, v in cfg.checksums.items())
            assert cfg.source_stats and all(table[k] == tuple(v) for k, v in cfg.source_stats.items())
    sums = readers.source_checksums(shared_data / "douban_gadtcdr" / "SOURCE.md")
    assert all(sums[k] == v for k, v in ui._DOUBAN_CONFIG.checksums.items())


@pytest.mark.parametrize("family", ["disencdr", "cdrib"])
def test_real_files_match_source_md(real_dry, shared_data, family):
    table = _source_table(shared_data, family)
    checked = 0
    for name, (b, _) in real_dry.items():
        cfg = b.builder_config
        if cfg.raw_subdir != family:
            continue
        split_stats = b.info.metadata["stats"]["splits"]
        for split, per_domain in split_stats.items():
            for d, dname in enumerate(cfg.domains):
                s = per_domain["by_domain"][dname]
                rows, users, urange, items, irange = table[s["file"]]
                assert s["raw_rows"] == rows, (name, s["file"])
                off = cfg.item_offsets[d]
                if s["interactions"] == rows:  # nothing dropped: the figures describe the same records
                    assert s["users"] == {"count": users, "range": list(urange)}
                    assert s["items"] == {"count": items, "range": [irange[0] + off, irange[1] + off]}
                checked += 1
        assert b.info.metadata["raw_rows"] == {k: v[0] for k, v in table.items() if k in b.info.metadata["raw_rows"]}
    assert checked == (24 if family == "disencdr" else 12)


def test_real_protocol_facts(real_dry):
    for name in NAMES[:4]:
        md = real_dry[name][0].info.metadata
        assert md["users_in_both_domains"] == md["num_users"]  # DisenCDR: every user in both domains
        assert md["drops"] == {}  # test.txt only holds items seen in train
    for name in NAMES[4:6]:
        md = real_dry[name][0].info.metadata
        assert md["eval_users_in_own_train"] == [0, 0]  # cold-start in the evaluated domain (SOURCE.md)
        assert md["eval_users_in_other_train"] == [s["count"] for s in md["eval_users"].values()]
    gv = real_dry["cdrib/game_video"][0].info.metadata
    assert gv["eval_users"]["game"]["range"] == [1953, 2178] and gv["shared_user"] == 1736


def test_real_douban_matches_source_md(real_dry):
    b, _ = real_dry["douban_gadtcdr"]
    md = b.info.metadata
    want = catalog.spec("douban_gadtcdr").source_stats
    for d in ("book", "music"):
        s = md["stats"]["splits"]["full"]["by_domain"][d]
        assert s["raw_rows"] == s["interactions"] == want[d]["rows"]
        assert s["users"] == {"count": want[d]["users"], "range": list(want[d]["user_id_range"])}
        assert s["items"]["count"] == want[d]["items"]
        assert md["ratings_1_to_5"][d] == list(want[d]["ratings_1_to_5"])
    assert md["overlapping_users"] == want["overlapping_users"] and md["stats"]["users"] == want["union_users"]
    assert md["domain_item_ranges"] == {"book": [1, 6777], "music": [6778, 12344]}


def test_real_build_phone_sport(shared_data, tmp_path_factory):
    """One real dataset end to end (ArrayRecord written, read back in a fresh builder)."""
    d = str(tmp_path_factory.mktemp("ui_real"))
    b = catalog.builder("disencdr/phone_sport", data_dir=d)
    st = catalog.stats("disencdr/phone_sport", data_dir=d)
    assert st["splits"]["train"]["records"] == 42446 + 50558
    assert st["splits"]["test"]["records"] == 3999 + 3698 == st["splits"]["valid"]["records"]
    ro = tfds.builder_from_directory(b.data_dir)
    src = ro.as_data_source("test")
    recs = [src[i] for i in range(0, len(src), 97)]
    lo, hi = ro.info.metadata["domain_item_ranges"]["sport"]
    for r in recs:
        if r["domain"] == 1:
            assert lo <= r["item_id"] <= hi
        assert 0 <= r["user_id"] < 4998
