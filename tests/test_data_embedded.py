"""The embedded default dataset (kuairand_embedded): files, statistics, splits, loading without ../shared."""

import csv
import fnmatch
import gzip
import hashlib
import pathlib
import re
import tomllib

import numpy as np
import pytest
from helpers import load_script

from jaxrec.data import catalog
from jaxrec.data.builders import embedded as emb
from jaxrec.data.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = [emb.EVENTS_FILE, emb.ITEM_MAP_FILE, emb.USER_MAP_FILE, emb.METADATA_FILE, "README.md", "LICENSE"]


@pytest.fixture(scope="module")
def events():
    return emb.read_events()


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Prepared from the package alone: the raw-data root points at an empty folder (a fresh clone)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("JAXREC_RAW_DATA", str(tmp_path_factory.mktemp("no_shared_data")))
    data_dir = tmp_path_factory.mktemp("tfds_embedded")
    try:
        out = {s: catalog.load("kuairand_embedded", s, data_dir=data_dir) for s in emb.SPLITS}
    finally:
        mp.undo()
    out["data_dir"] = data_dir
    return out


def test_shipped_files_small_licensed_and_packaged():
    d = emb.PACKAGE_DIR
    sizes = {f: (d / f).stat().st_size for f in SHIPPED}
    assert sum(sizes.values()) < 1_500_000, sizes
    assert (d / "LICENSE").read_text().startswith("Attribution-ShareAlike 4.0 International")
    readme = (d / "README.md").read_text()
    for needle in ("CC BY-SA 4.0", "Gao", "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly "
                   "Exposed Videos", "CIKM", "is_click == 1", "What was changed"):
        assert needle in readme, needle
    meta = emb.metadata()
    for name, digest in meta["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest, name
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "jaxrec.data.embedded"]
    for f in SHIPPED:
        assert any(fnmatch.fnmatch(f, p) for p in patterns), f"{f} not in package-data {patterns}"


def test_statistics_match_readme_metadata_and_catalog(events):
    stats = emb.compute_stats(events)
    meta = emb.metadata()
    assert meta["stats"] == stats
    assert {k: stats[k] for k in ("users", "items", "interactions")} == emb.STATS
    assert catalog.spec("kuairand_embedded").source_stats == emb.STATS
    assert catalog.spec("kuairand_embedded").kind == "sequence"
    readme = (emb.PACKAGE_DIR / "README.md").read_text()
    row = re.search(r"^\| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|", readme, re.M)
    assert row, "statistics row missing from README"
    assert [int(x.replace(",", "")) for x in row.groups()] == [stats["users"], stats["items"], stats["interactions"]]
    f = meta["filtering"]
    assert f["users_kept"] == stats["users"]
    assert f["users_with_positives"] == f["users_kept"] + f["users_dropped_fewer_than_5_positives"]
    assert f["positive_rows"] - f["repeat_clicks_removed"] - f["events_dropped_with_those_users"] == stats["interactions"]
    assert f"{f['users_dropped_fewer_than_5_positives']:,} dropped with fewer than 5" in readme
    assert sum(meta["tab_counts"].values()) == stats["interactions"]


def test_id_maps_dense(events):
    def read(name):
        with gzip.open(emb.PACKAGE_DIR / name, "rt") as fh:
            r = csv.reader(fh)
            next(r)
            return np.array([[int(x) for x in row] for row in r])

    items, users = read(emb.ITEM_MAP_FILE), read(emb.USER_MAP_FILE)
    assert items[:, 0].tolist() == list(range(1, events.num_items + 1))
    assert users[:, 0].tolist() == list(range(events.num_users))
    assert np.unique(items[:, 1]).size == items.shape[0] and np.unique(users[:, 1]).size == users.shape[0]


def test_leave_one_out_splits(splits, events):
    bounds = events.user_bounds()
    for s in emb.SPLITS:
        assert len(splits[s]) == emb.STATS["users"]
    for u in range(0, events.num_users, 7):  # a sample of users, checked against the raw events
        tr, va, te = (splits[s][u] for s in emb.SPLITS)
        assert tr["user_id"] == va["user_id"] == te["user_id"] == u  # stored in user order (disable_shuffling)
        seq = events.item_id[bounds[u]:bounds[u + 1]]
        tabs = events.tab[bounds[u]:bounds[u + 1]]
        assert np.array_equal(np.append(tr["items"], tr["target"]), va["items"])
        assert np.array_equal(np.append(va["items"], va["target"]), te["items"])
        assert np.array_equal(np.append(te["items"], te["target"]), seq)
        assert np.array_equal(np.append(te["tabs"], te["target_tab"]), tabs)
        assert te["timestamps"].shape == te["items"].shape and (np.diff(te["timestamps"]) >= 0).all()
        assert not te["domains"].any() and te["target_domain"] == 0 and not te["overlap"]
        assert len(tr["items"]) >= 2


def test_catalog_info_and_stats(splits):
    i = catalog.info("kuairand_embedded", data_dir=splits["data_dir"])
    assert (i.num_users, i.num_items) == (emb.STATS["users"], emb.STATS["items"])
    assert i.split_sizes == {s: emb.STATS["users"] for s in emb.SPLITS}
    assert set(i.metadata["checksums"]) == {emb.EVENTS_FILE, emb.ITEM_MAP_FILE, emb.USER_MAP_FILE, "LICENSE"}
    st = catalog.stats("kuairand_embedded", data_dir=splits["data_dir"])
    assert {k: st[k] for k in ("users", "items", "interactions")} == emb.STATS
    drops = next(iter(st["drops"].values()))
    f = emb.metadata()["filtering"]
    assert drops["user with fewer than 5 distinct clicked videos"]["count"] == f["users_dropped_fewer_than_5_positives"]


def _write_events(path, rows):
    with gzip.open(path / emb.EVENTS_FILE, "wt") as fh:
        fh.write("user_id,item_id,tab,timestamp\n")
        for r in rows:
            fh.write(",".join(map(str, r)) + "\n")


def test_strict_reader_names_line_and_field(tmp_path):
    good = [(0, i, 1, 100 + i) for i in range(1, 6)]
    _write_events(tmp_path, good)
    assert len(emb.read_events(tmp_path)) == 5
    cases = [
        (good[:2] + [(0, 1, 1, 103)] + good[3:], "item_id", 4),   # repeated item
        (good[:2] + [(0, 3, 1, 50)] + good[3:], "timestamp", 4),  # time going backwards
        (good[:4] + [(0, 5, 99, 105)], "tab", 6),
        (good[:4] + [(2, 6, 1, 106)], "user_id", 6),              # user ids not dense
        (good + [(1, 1, 1, 1)], "user_id", 7),                    # user with 1 event
    ]
    for rows, field, line in cases:
        _write_events(tmp_path, rows)
        with pytest.raises(DataError) as e:
            emb.read_events(tmp_path)
        assert e.value.field == field and e.value.line == line, (field, str(e.value))
    with gzip.open(tmp_path / emb.EVENTS_FILE, "wt") as fh:
        fh.write("user_id,item_id,tab,timestamp\n0,x,1,2\n")
    with pytest.raises(DataError, match=r":2.*'item_id'"):
        emb.read_events(tmp_path)


def test_make_script_reproduces_shipped_files(shared_data, tmp_path):
    mod = load_script("scripts/make_embedded_dataset.py")
    mod.build(shared_data / mod.SOURCE_REL, shared_data / mod.LICENSE_REL, tmp_path)
    for f in SHIPPED:
        assert (tmp_path / f).read_bytes() == (emb.PACKAGE_DIR / f).read_bytes(), f
