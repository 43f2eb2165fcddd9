"""Graph builders: TU IMDB (DGCNN format + folds) and Planetoid Cora (restricted unpickler)."""

import collections
import dataclasses
import os
import pickle
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import graphs
from jaxrec.data.errors import DataError

tfds.disable_progress_bar()


def _with_checksums(cfg, root, name, **changes):
    sums = {rel: readers.sha256_file(root / rel) for rel in cfg.checksums if (root / rel).exists()}
    return dataclasses.replace(cfg, name=name, checksums=sums, **changes)


# ----------------------------------------------------------------------------------------------- TU format

_TU_TEXT = """3
3 0
0 2 1 2
0 1 0
0 1 0
2 1
0 1 1
0 1 0
4 1
0 1 1
0 3 0 2 3
0 1 1
0 1 1
"""


def _write_tu(root, text=_TU_TEXT, folds=(([0, 1], [2]), ([2, 0], [1]), ([1, 2], [0]))):
    d = root / "TOY"
    (d / "10fold_idx").mkdir(parents=True, exist_ok=True)
    (d / "TOY.txt").write_text(text)
    for k, (train, test) in enumerate(folds, 1):
        (d / "10fold_idx" / f"train_idx-{k}.txt").write_text("".join(f"{i}\n" for i in train))
        (d / "10fold_idx" / f"test_idx-{k}.txt").write_text("".join(f"{i}\n" for i in test))
    return root


def _tu_config(root, **changes):
    rels = ["TOY/TOY.txt"] + [f"TOY/10fold_idx/{s}_idx-{k}.txt" for k in (1, 2, 3) for s in ("train", "test")]
    sums = {rel: readers.sha256_file(root / rel) for rel in rels if (root / rel).exists()}
    base = dict(name="toy", prefix="TOY", num_graphs=3, num_classes=2, num_folds=3, checksums=sums,
                catalog_name="toy")
    base.update(changes)
    return graphs.TuConfig(**base)


def _tu_dry(root, **changes):
    b = graphs.JaxrecTuGraphs(config=_tu_config(root, **changes), raw_dir=root, data_dir=str(root / "_tfds"))
    return b, b._split_generators(None)


def test_mock_data_schemas(tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        for cls, cfg in ((graphs.JaxrecTuGraphs, "imdb_binary"), (graphs.JaxrecPlanetoid, "cora")):
            b = cls(config=cfg, data_dir=str(tmp_path))
            b.download_and_prepare()
            split = "full"
            src = b.as_data_source(split)
            assert len(src) == 5
            rec = src[0]
            assert set(rec) == set(b.info.features.keys())
    assert set(rec) == {"node_id", "label", "feature_indices", "neighbors", "is_train", "is_val", "is_test"}


def test_tu_build_crafted(tmp_path):
    root = _write_tu(tmp_path / "raw")
    b = graphs.JaxrecTuGraphs(config=_tu_config(root), raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    src = b.as_data_source("full")
    recs = {int(src[i]["graph_id"]): src[i] for i in range(len(src))}
    assert sorted(recs) == [0, 1, 2]
    g = recs[2]
    assert g["num_nodes"] == 4 and g["label"] == 1
    assert g["node_degrees"].tolist() == [1, 3, 1, 1]
    assert sorted(zip(g["senders"].tolist(), g["receivers"].tolist())) == [
        (0, 1), (1, 0), (1, 2), (1, 3), (2, 1), (3, 1)]
    assert [int(recs[i]["test_fold"]) for i in range(3)] == [3, 2, 1]
    st = graphs.dataset_stats(b)
    assert st["graphs"] == 3 and st["nodes"] == 9 and st["edges"] == 6 and st["class_counts"] == [1, 2]
    assert st["splits"]["full"]["records"] == 3
    # read back in a fresh builder from the directory, metadata included
    b2 = tfds.builder_from_directory(b.data_dir)
    assert graphs.dataset_stats(b2)["edges"] == 6


@pytest.mark.parametrize("text, msg, line, field", [
    ("3\n3 0\n0 2 1 2\n0 1 0\n", "truncated", None, None),
    ("3\n3 0\n0 2 1 5\n0 1 0\n0 1 0\n", "outside the declared range", 3, "graph[0].node[0].nbr"),
    ("3\n3 0\n0 2 1 2\n0 1 0\n0 0\n", "one end only", 3, "graph[0].node[0].nbr"),
    ("3\n3 0\n0 2 1 1\n0 1 0\n0 0\n", "duplicate record", 3, "graph[0].node[0].nbr"),
    ("3\n3 7\n0 2 1 2\n", "outside the declared range", 2, "graph[0].label"),
    ("4\n", "graph count", 1, "num_graphs"),
    ("3\n\n", "empty record", 2, None),
    ("3\n3 0\n0 2 1\n", "neighbour count", 3, "graph[0].node[0]"),
    ("3\n3 0\n0 2 1 x\n", "malformed value", 3, "graph[0].node[0].nbr"),
    ("3\nthree 0\n", "malformed value", 2, "graph[0].num_nodes"),
])
def test_tu_reader_errors(tmp_path, text, msg, line, field):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        graphs.read_tu_file(p, num_graphs=3, num_classes=2)
    assert msg in str(e.value) and str(p) in str(e.value)
    assert e.value.line == line and e.value.field == field
    if line is not None:
        assert e.value.expected


def test_tu_trailing_content_is_an_error(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text(_TU_TEXT + "1 0\n")
    with pytest.raises(DataError, match="after the last graph") as e:
        graphs.read_tu_file(p, num_graphs=3, num_classes=2)
    assert e.value.line == 14


def test_tu_fold_and_file_errors(tmp_path):
    root = _write_tu(tmp_path / "a", folds=(([0, 1], [2]), ([2, 0], [1]), ([1], [0])))  # fold 3 misses graph 2
    with pytest.raises(DataError, match="not a partition") as e:
        _tu_dry(root)
    assert e.value.path.endswith("train_idx-3.txt") and e.value.field == "graph_index"

    root = _write_tu(tmp_path / "b", folds=(([0, 1], [2]), ([2, 0], [1]), ([0, 1], [2])))  # graph 2 tested twice
    with pytest.raises(DataError, match="two test folds"):
        _tu_dry(root)

    root = _write_tu(tmp_path / "c", folds=(([0, 1], [2]), ([2, 0], [1]), ([1, 2], [7])))
    with pytest.raises(DataError, match="outside the declared range") as e:
        _tu_dry(root)
    assert e.value.line == 1 and e.value.field == "graph_index"

    root = _write_tu(tmp_path / "d", folds=(([0, 1], [2]), ([2, 0], [1]), ([1, 1, 2], [0])))
    with pytest.raises(DataError, match="duplicate record") as e:
        _tu_dry(root)
    assert e.value.line == 2

    root = _write_tu(tmp_path / "e")
    cfg = _tu_config(root)
    os.remove(root / "TOY/10fold_idx/test_idx-2.txt")
    b = graphs.JaxrecTuGraphs(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t"))
    with pytest.raises(DataError, match="fold file missing") as e:
        b._split_generators(None)
    assert e.value.path.endswith("test_idx-2.txt")

    root = _write_tu(tmp_path / "f")
    cfg = _tu_config(root)
    (root / "TOY/TOY.txt").write_text(_TU_TEXT.replace("2 1\n", "2 0\n", 1))
    with pytest.raises(DataError, match="checksum") as e:
        graphs.JaxrecTuGraphs(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t2"))._split_generators(None)
    assert e.value.field == "sha256" and e.value.path.endswith("TOY.txt")


# ------------------------------------------------------------------------------------- restricted unpickler

class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("make", [
    lambda marker: f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),  # protocol 0, os.system
    lambda marker: pickle.dumps(_Evil(f"touch {marker}"), protocol=2),  # posix.system
    lambda marker: pickle.dumps(_Evil(f"touch {marker}"), protocol=5),
    lambda marker: f"cbuiltins\neval\n(S'open({str(marker)!r}, \"w\")'\ntR.".encode(),
])
def test_restricted_unpickler_refuses_malicious_pickle(tmp_path, make):
    marker = tmp_path / "PWNED"
    p = tmp_path / "ind.cora.x"
    p.write_bytes(make(marker))
    with pytest.raises(DataError) as e:
        graphs.load_restricted_pickle(p)
    assert not marker.exists()
    assert e.value.path == str(p) and e.value.field == "pickle global"
    assert "system" in e.value.got or "eval" in e.value.got
    assert str(p) in str(e.value) and "refused" in str(e.value)


def test_restricted_unpickler_malformed_and_allowed(tmp_path):
    p = tmp_path / "trunc"
    p.write_bytes(pickle.dumps([1, 2, 3], protocol=2)[:-3])
    with pytest.raises(DataError, match="malformed pickle"):
        graphs.load_restricted_pickle(p)
    p = tmp_path / "ok"
    # protocol 3 (bytes as BINBYTES); protocol 2 from Python 3 would need _codecs.encode, which is refused
    p.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.int32)}, protocol=3))
    out = graphs.load_restricted_pickle(p)
    assert out["a"].tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------- tiny Planetoid files

class _FakeCsr:
    """Pickles as ``scipy.sparse.csr.csr_matrix`` (the global name in the real Python 2 Planetoid files)."""


def _dump_planetoid(root, *, features, labels, test_index, graph, num_train):
    """Write ind.toy.* pickles shaped like Planetoid's (allx = all rows but the test ones, in node order)."""
    fake_mod = types.ModuleType("scipy.sparse.csr")
    fake_mod.csr_matrix = _FakeCsr
    _FakeCsr.__module__, _FakeCsr.__qualname__, _FakeCsr.__name__ = "scipy.sparse.csr", "csr_matrix", "csr_matrix"
    saved = sys.modules.get("scipy.sparse.csr")
    sys.modules["scipy.sparse.csr"] = fake_mod
    try:
        def csr(dense):
            m = _FakeCsr()
            rows, cols = np.nonzero(dense)
            m.__dict__.update(format="csr", _shape=dense.shape, maxprint=50,
                              indptr=np.searchsorted(rows, np.arange(dense.shape[0] + 1)).astype(np.int32),
                              indices=cols.astype(np.int32), data=dense[rows, cols].astype(np.float32))
            return m

        n_test = len(test_index)
        n_rest = len(features) - n_test
        onehot = np.eye(labels.max() + 1, dtype=np.int32)[labels]
        (root / "data").mkdir(parents=True, exist_ok=True)
        objs = {"x": csr(features[:num_train]), "y": onehot[:num_train], "allx": csr(features[:n_rest]),
                "ally": onehot[:n_rest], "tx": csr(features[test_index]), "ty": onehot[test_index],
                "graph": graph}
        for k, v in objs.items():
            # protocol 3: Python 3 writes protocol-2 bytes via _codecs.encode (refused); the globals are the same
            (root / "data" / f"ind.toy.{k}").write_bytes(pickle.dumps(v, protocol=3))
        (root / "data" / "ind.toy.test.index").write_text("".join(f"{i}\n" for i in test_index))
    finally:
        if saved is None:
            del sys.modules["scipy.sparse.csr"]
        else:
            sys.modules["scipy.sparse.csr"] = saved
    return root


def _toy_planetoid(root, **overrides):
    rng = np.random.default_rng(0)
    n = 10
    feats = (rng.random((n, 6)) < 0.4).astype(np.float32)
    labels = np.arange(n) % 3
    graph = collections.defaultdict(list)
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 0)]:
        graph[a].append(b)
        graph[b].append(a)
    graph[0].append(1)  # a repeated neighbour entry, collapsed and counted
    args = dict(features=feats, labels=labels, test_index=np.array([9, 7, 8, 6]), graph=graph, num_train=2)
    args.update(overrides)
    _dump_planetoid(root, **args)
    rels = [f"data/ind.toy.{s}" for s in ("x", "y", "allx", "ally", "tx", "ty", "graph", "test.index")]
    cfg = graphs.PlanetoidConfig(name="toy", dataset="toy", num_nodes=n, num_features=6, num_classes=3,
                                 num_train=2, num_val=3, num_test=4, catalog_name="toy",
                                 checksums={r: readers.sha256_file(root / r) for r in rels})
    return cfg, feats, labels


def test_planetoid_build_crafted(tmp_path):
    root = tmp_path / "raw"
    cfg, feats, labels = _toy_planetoid(root)
    b = graphs.JaxrecPlanetoid(config=cfg, raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"full": 10, "train": 2, "validation": 3,
                                                                   "test": 4}
    arr = graphs.planetoid_arrays(b.as_data_source("full"), num_features=6)
    np.testing.assert_array_equal(arr["features"], feats.astype(np.uint8))
    np.testing.assert_array_equal(arr["labels"], labels)
    assert arr["train_mask"].nonzero()[0].tolist() == [0, 1]
    assert arr["val_mask"].nonzero()[0].tolist() == [2, 3, 4]
    assert arr["test_mask"].nonzero()[0].tolist() == [6, 7, 8, 9]
    assert len(arr["senders"]) == 20
    pairs = set(zip(arr["senders"].tolist(), arr["receivers"].tolist()))
    assert all((b_, a) in pairs for a, b_ in pairs)
    st = graphs.dataset_stats(b)
    assert st["edges"] == 10 and st["adjacency_entries"] == 21
    assert st["drops"]["graph"]["repeated neighbour entry (collapsed)"]["count"] == 1


def test_planetoid_content_errors(tmp_path):
    cfg, _, _ = _toy_planetoid(tmp_path / "a", test_index=np.array([9, 7, 8, 8]))
    with pytest.raises(DataError, match="duplicate record") as e:
        graphs.JaxrecPlanetoid(config=cfg, raw_dir=tmp_path / "a", data_dir=str(tmp_path / "t"))._split_generators(None)
    assert e.value.path.endswith("ind.toy.test.index") and e.value.line == 4

    feats = np.zeros((10, 6), np.float32)
    feats[3, 2] = 0.5
    cfg, _, _ = _toy_planetoid(tmp_path / "b", features=feats)
    with pytest.raises(DataError, match="non-binary") as e:
        graphs.JaxrecPlanetoid(config=cfg, raw_dir=tmp_path / "b", data_dir=str(tmp_path / "t"))._split_generators(None)
    assert e.value.field == "data" and e.value.path.endswith("ind.toy.allx")

    g = collections.defaultdict(list, {0: [1, 42], 1: [0]})
    cfg, _, _ = _toy_planetoid(tmp_path / "c", graph=g)
    with pytest.raises(DataError, match="outside the declared range") as e:
        graphs.JaxrecPlanetoid(config=cfg, raw_dir=tmp_path / "c", data_dir=str(tmp_path / "t"))._split_generators(None)
    assert e.value.path.endswith("ind.toy.graph") and e.value.got == 42


# --------------------------------------------------------------------------------------------------- real data

def _source_checksums(shared_data, sub):
    return readers.source_checksums(shared_data / sub / "SOURCE.md")


@pytest.fixture(scope="module")
def real_builds(shared_data, tmp_path_factory):
    root = shared_data
    data_dir = str(tmp_path_factory.mktemp("graphs_tfds"))
    return {name: catalog.builder(name, raw_dir=root, data_dir=data_dir)
            for name in ("tu_imdb/binary", "tu_imdb/multi", "cora_planetoid")}


def test_pinned_checksums_match_source_md(shared_data):
    for cfg in graphs.TU_CONFIGS:
        src = _source_checksums(shared_data, "tu_imdb")
        assert cfg.checksums and all(src[k] == v for k, v in cfg.checksums.items())
        assert len(cfg.checksums) == 21
    cfg = graphs.PLANETOID_CONFIGS[0]
    src = _source_checksums(shared_data, "cora_planetoid")
    assert len(cfg.checksums) == 8 and all(src[k] == v for k, v in cfg.checksums.items())


@pytest.mark.parametrize("name", ["tu_imdb/binary", "tu_imdb/multi"])
def test_tu_imdb_real_stats(real_builds, name):
    b = real_builds[name]
    st = graphs.dataset_stats(b)
    want = catalog.spec(name).source_stats
    assert st["graphs"] == want["graphs"] == st["splits"]["full"]["records"]
    assert st["class_counts"] == want["class_counts"]
    assert st["nodes"] == want["nodes"] and st["edges"] == want["edges"]
    assert all(f == {"train": want["fold_train"], "test": want["fold_test"]} for f in st["folds"].values())
    assert st["self_loops"] == 0 and st["drops"] == {}
    src = b.as_data_source("full")
    r = src[0]
    assert len(r["senders"]) == r["node_degrees"].sum() and len(r["node_degrees"]) == r["num_nodes"]
    folds = np.array([src[i]["test_fold"] for i in range(len(src))])
    assert np.bincount(folds).tolist() == [0] + [want["fold_test"]] * 10


def test_cora_real_stats_and_arrays(real_builds):
    b = real_builds["cora_planetoid"]
    st = graphs.dataset_stats(b)
    want = catalog.spec("cora_planetoid").source_stats
    assert (st["nodes"], st["features"], st["classes"]) == (want["nodes"], want["features"], want["classes"])
    assert st["adjacency_entries"] == want["adjacency_entries"] and st["edges"] == want["edges"]
    assert st["self_loops"] == want["self_loops"]
    assert st["drops"]["graph"]["repeated neighbour entry (collapsed)"]["count"] == want["repeated_neighbours"]
    sizes = {k: v["records"] for k, v in st["splits"].items()}
    assert sizes == {"full": 2708, "train": want["train"], "validation": want["validation"], "test": want["test"]}
    arr = graphs.planetoid_arrays(b.as_data_source("full"))
    assert arr["features"].shape == (2708, 1433) and set(np.unique(arr["features"])) <= {0, 1}
    assert len(arr["senders"]) == 2 * want["edges"]
    assert np.bincount(arr["labels"]).tolist() == st["class_counts"]
    assert (arr["train_mask"].sum(), arr["val_mask"].sum(), arr["test_mask"].sum()) == (140, 500, 1000)
    test_ids = np.loadtxt(b.raw_folder() / "data/ind.cora.test.index", dtype=int)
    assert arr["test_mask"][test_ids].all()
