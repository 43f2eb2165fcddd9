"""KuaiRand-1K (AutoCDSR TFRecords) builder: crafted TFRecord folders, mock_data, and the real files."""

import gzip
import hashlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrec.data import catalog, tfrecord
from jaxrec.data.builders import kuairand1k as K
from jaxrec.data.errors import DataError

W = K.WINDOW


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _example(items, doms) -> bytes:
    """tf.train.Example with two packed int64 lists (hand-encoded protobuf)."""
    feats = {K.ITEM_FEATURE: items, K.DOMAIN_FEATURE: doms}
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, _ld(3, _ld(1, b"".join(_varint(int(x)) for x in v)))))
                       for k, v in feats.items())
    return _ld(1, entries)


def _source_md(root):
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SOURCE.md")
    rows = [f"| {p.relative_to(root).as_posix()} | {p.stat().st_size} | `{hashlib.sha256(p.read_bytes()).hexdigest()}` |  |"
            for p in files]
    (root / "SOURCE.md").write_text("## Files\n| file | bytes | sha256 | lines |\n|---|---:|---|---:|\n" + "\n".join(rows) + "\n")


def _row(start, dom_pattern=(9, 4)):
    items = np.arange(start, start + W, dtype=np.int64)
    doms = np.resize(np.array(dom_pattern, np.int64), W)
    return items, doms


def _crafted(tmp_path, *, mutate=None, checksums=True):
    """training: partition_9 (2 rows) + partition_10 (1 row); evaluation: partition_0; testing: partition_100."""
    root = tmp_path / "kuairand1k_autocdsr"
    r0 = _row(100)
    r0[0][[3, 799]] = -1   # OOV, including the last event
    r0[0][5] = 0           # AutoCDSR padding id
    r1 = _row(2000)
    r1[0][5:] = -1         # only 5 events left: dropped (< 10)
    r2 = _row(5000, dom_pattern=(9,))
    files = {"training/partition_9.tfrecord.gz": [r0, r1], "training/partition_10.tfrecord.gz": [r2],
             "evaluation/partition_0.tfrecord.gz": [_row(7000, (4, 4, 0))],
             "testing/partition_100.tfrecord.gz": [_row(9000)]}
    if mutate:
        mutate(files)
    for rel, rows in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tfrecord.write_tfrecord(p, [_example(i, d) for i, d in rows])
    if checksums:
        _source_md(root)
    return root


def _by_user(ds):
    return {int(r["user_id"]): r for r in (ds[i] for i in range(len(ds)))}


def test_builder_on_crafted_tfrecords(tmp_path):
    root = _crafted(tmp_path)
    b = K.make_builder(str(root), str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 2, "valid": 1, "test": 1}
    tr = _by_user(b.as_data_source("train"))
    assert sorted(tr) == [0, 2]  # window ids by partition number (9 before 10); row 1 dropped (too short)
    r = tr[0]
    kept = [x for x in range(100, 100 + W) if x not in (103, 105, 899)]
    assert r["items"].tolist() == kept[:-1] and int(r["target"]) == kept[-1]
    assert r["timestamps"].tolist() == list(range(len(kept) - 1))
    assert r["domains"][:5].tolist() == [9, 4, 9, 9, 9] and r["overlap"]  # positions 3 and 5 removed
    assert not tr[2]["overlap"] and int(tr[2]["target"]) == 5000 + W - 1
    assert list(_by_user(b.as_data_source("valid"))) == [3]
    te = _by_user(b.as_data_source("test"))
    assert list(te) == [4] and int(te[4]["target_domain"]) == 4
    md = dict(b.info.metadata)
    drops = md["drops"]["training"]
    counts = {k.split(" (")[0]: v["count"] for k, v in drops.items()}
    assert counts == {"events with video id -1": 2 + (W - 5), "events with video id 0": 1,
                      "rows with < 10 events after removal": 1}
    assert md["stats"]["raw_splits"]["train"] == {"files": 2, "rows": 3, "events": 3 * W,
                                                  "distinct_ids": (W - 3) + 2 + 5 + W,  # row0 + {-1, 0} + row1 + row2
                                                  "domain_counts": {"4": W, "9": 2 * W}}
    assert md["num_items"] == 999_999 and md["domain_item_ranges"] is None
    assert md["num_users"] == 5
    text = catalog.format_stats({"name": K.NAME, "drops": md["drops"], "splits": {}})
    assert "rows with < 10 events" in text
    fresh = tfds.builder_from_directory(b.data_dir)
    assert dict(fresh.info.metadata) == md and len(fresh.as_data_source("train")) == 2


def test_wrong_window_length(tmp_path):
    def m(files):
        i, d = files["evaluation/partition_0.tfrecord.gz"][0]
        files["evaluation/partition_0.tfrecord.gz"] = [(i, d), (i[:-1], d[:-1])]
    root = _crafted(tmp_path, mutate=m)
    with pytest.raises(DataError, match="wrong window length") as e:
        K.read_kuairand1k(root)
    assert e.value.path.endswith("evaluation/partition_0.tfrecord.gz") and e.value.line == 2
    assert e.value.field == K.ITEM_FEATURE


@pytest.mark.parametrize("feature,value,msg", [(K.ITEM_FEATURE, -5, "video id out of range"),
                                               (K.ITEM_FEATURE, 1_000_000, "video id out of range"),
                                               (K.DOMAIN_FEATURE, 15, "domain \\(tab\\) id out of range")])
def test_out_of_range_ids(tmp_path, feature, value, msg):
    def m(files):
        i, d = files["testing/partition_100.tfrecord.gz"][0]
        (i if feature == K.ITEM_FEATURE else d)[17] = value
    root = _crafted(tmp_path, mutate=m)
    with pytest.raises(DataError, match=msg) as e:
        K.read_kuairand1k(root)
    assert e.value.path.endswith("partition_100.tfrecord.gz") and e.value.field == f"{feature}[17]"


def test_corrupted_crc_names_file(tmp_path):
    root = _crafted(tmp_path, checksums=False)
    p = root / "training" / "partition_10.tfrecord.gz"
    blob = bytearray(gzip.decompress(p.read_bytes()))
    blob[40] ^= 0xFF
    p.write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(DataError, match="data CRC mismatch") as e:
        K.read_kuairand1k(root, verify_checksums=False)
    assert e.value.path.endswith("partition_10.tfrecord.gz") and e.value.line == 1


def test_missing_split_file_and_checksum(tmp_path):
    root = _crafted(tmp_path)
    (root / "training" / "partition_10.tfrecord.gz").unlink()
    with pytest.raises(DataError, match="split file missing") as e:
        K.read_kuairand1k(root)
    assert e.value.path.endswith("partition_10.tfrecord.gz")
    root = _crafted(tmp_path / "b")
    tfrecord.write_tfrecord(root / "testing" / "partition_100.tfrecord.gz", [_example(*_row(1))])
    with pytest.raises(DataError, match="sha256 checksum mismatch"):
        K.read_kuairand1k(root)
    root = _crafted(tmp_path / "c")
    for p in (root / "evaluation").iterdir():
        p.unlink()
    (root / "evaluation").rmdir()
    with pytest.raises(DataError, match="split folder"):
        K.read_kuairand1k(root)


def test_mock_data_schema():
    K.builder_class()
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = tfds.data_source("jaxrec_kuairand1k_autocdsr", split="train")
        r = ds[1]
    assert len(ds) == 3 and set(r) == set(catalog.SEQUENCE_FIELDS)
    assert r["items"].dtype == np.int64 and r["domains"].dtype == np.int32


# ----------------------------------------------------------------------------------------- real files


def _source_table(root):
    """Per-split figures parsed from kuairand1k_autocdsr/SOURCE.md's statistics table."""
    out = {}
    names = {"training": "train", "evaluation": "valid", "testing": "test"}
    for line in (root / "SOURCE.md").read_text().splitlines():
        m = re.match(r"^\| (training|evaluation|testing) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \| (.*) \|$", line)
        if m:
            n = lambda s: int(s.replace(",", ""))  # noqa: E731
            dc = {k: n(v) for k, v in (kv.split(":") for kv in m.group(6).split())}
            out[names[m.group(1)]] = {"files": n(m.group(2)), "rows": n(m.group(3)), "events": n(m.group(4)),
                                      "distinct_ids": n(m.group(5)), "domain_counts": dc}
    return out


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    return catalog.builder(K.NAME, data_dir=tmp_path_factory.getbasetemp() / "tfds")


@pytest.mark.shared_data
def test_real_kuairand1k(real, shared_data):
    want = _source_table(shared_data / K.RAW_SUBDIR)
    assert set(want) == {"train", "valid", "test"}
    st = catalog.stats(K.NAME)
    assert st["raw_splits"] == want
    for s, w in want.items():
        quoted = K.SOURCE_STATS[s]  # the module's copy of the same SOURCE.md figures
        assert quoted | {"domain_counts": {str(k): v for k, v in quoted["domain_counts"].items()}} == w
        drops = st["drops"].get(K.SPLIT_DIRS[s], {})
        removed = sum(v["count"] for k, v in drops.items() if k.startswith("events"))
        assert st["splits"][s]["interactions"] + removed == w["events"]  # kept + removed = all events
        assert st["splits"][s]["records"] == w["rows"]  # no row falls under 10 events
    assert {k: v.num_examples for k, v in real.info.splits.items()} == {"train": 3101, "valid": 1000, "test": 1000}
    inf = catalog.info(K.NAME)
    assert inf.num_items == 999_999 and inf.num_users == 5101 and inf.domain_item_ranges is None
    assert len(inf.metadata["checksums"]) == 511
    fresh = tfds.builder_from_directory(real.data_dir).as_data_source("valid")
    r = fresh[0]
    assert 10 <= len(r["items"]) + 1 <= W and r["items"].min() >= 1 and 3101 <= int(r["user_id"]) < 4101
    assert "OOV" in catalog.format_stats(st)
