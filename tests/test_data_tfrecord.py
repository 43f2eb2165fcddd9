"""TF-free TFRecord reader and tf.train.Example parser, against hand-built bytes (independent encoder here)."""

import gzip
import struct

import numpy as np
import pytest

from jaxrec.data import tfrecord as T
from jaxrec.data.errors import DataError

# ------------------------------------------------------------------ independent reference implementations


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(records) -> bytes:
    out = b""
    for r in records:
        ln = struct.pack("<Q", len(r))
        out += ln + struct.pack("<I", _masked(_crc32c_bitwise(ln))) + r + struct.pack("<I", _masked(_crc32c_bitwise(r)))
    return out


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # two's complement for negative int64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _feature(value, packed=True) -> bytes:
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        inner = b"".join(_ld(1, v) for v in value)
        return _ld(1, inner)  # bytes_list
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        if packed:
            inner = _ld(1, arr.astype("<f4").tobytes())
        else:
            inner = b"".join(_key(1, 5) + struct.pack("<f", float(x)) for x in arr)
        return _ld(2, inner)  # float_list
    if packed:
        inner = _ld(1, b"".join(_varint(int(x)) for x in arr))
    else:
        inner = b"".join(_key(1, 0) + _varint(int(x)) for x in arr)
    return _ld(3, inner)  # int64_list


def encode_example(features: dict, packed=True) -> bytes:
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, _feature(v, packed))) for k, v in features.items())
    return _ld(1, entries)


# ------------------------------------------------------------------------------------------------ CRC


def test_crc32c_known_vectors():
    assert T.crc32c(b"123456789") == 0xE3069283
    assert T.crc32c(b"") == 0
    # RFC 3720 (iSCSI) appendix B.4 vectors
    assert T.crc32c(bytes(32)) == 0x8A9136AA
    assert T.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert T.crc32c(bytes(range(32))) == 0x46DD794E
    assert T.crc32c(b"6789", T.crc32c(b"12345")) == 0xE3069283  # continuation


def test_crc32c_many_matches_scalar():
    rng = np.random.default_rng(0)
    bufs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in [0, 1, 7, 8, 300, 33, 0, 1000, 5]]
    got = T.crc32c_many(bufs, chunk_rows=4)
    assert got.dtype == np.uint32
    assert [int(x) for x in got] == [_crc32c_bitwise(b) for b in bufs]
    assert T.masked_crc32c(b"abc") == _masked(_crc32c_bitwise(b"abc"))


# ------------------------------------------------------------------------------------------- framing


@pytest.mark.parametrize("gz", [True, False])
def test_read_hand_framed_records(tmp_path, gz):
    recs = [b"", b"hello", bytes(range(256)) * 3]
    blob = _frame(recs)
    p = tmp_path / ("a.tfrecord.gz" if gz else "a.tfrecord")
    p.write_bytes(gzip.compress(blob) if gz else blob)
    assert T.read_tfrecord(p) == recs
    assert list(T.iter_tfrecord(p, compression="gzip" if gz else None)) == recs


def test_write_then_read_roundtrip(tmp_path):
    recs = [encode_example({"x": [1, 2, 3]}), encode_example({"y": [0.5]})]
    p = tmp_path / "w.tfrecord.gz"
    T.write_tfrecord(p, recs)
    assert gzip.decompress(p.read_bytes()) == _frame(recs)  # same bytes as the reference framing
    assert T.read_tfrecord(p) == recs


def _corrupt(tmp_path, which: str, index: int = 1):
    recs = [b"first record", b"second record", b"third"]
    blob = bytearray(_frame(recs))
    pos = 0
    for i, r in enumerate(recs):
        if i == index:
            break
        pos += 12 + len(r) + 4
    if which == "data":
        blob[pos + 12] ^= 0x01  # flip a payload bit
    else:
        blob[pos + 8] ^= 0x01  # flip a bit of the stored length CRC
    p = tmp_path / f"bad_{which}.tfrecord.gz"
    p.write_bytes(gzip.compress(bytes(blob)))
    return p


def test_corrupted_data_crc_names_file_record_and_crc(tmp_path):
    good = tmp_path / "good.tfrecord.gz"
    T.write_tfrecord(good, [b"ok"] * 3)
    bad = _corrupt(tmp_path, "data", index=1)
    with pytest.raises(DataError) as e:
        T.read_tfrecords([good, bad])
    err = e.value
    assert err.path == str(bad) and err.field == "data_crc" and err.line == 2
    assert "record 1" in str(err) and "data CRC" in str(err)


def test_corrupted_length_crc(tmp_path):
    bad = _corrupt(tmp_path, "length", index=2)
    with pytest.raises(DataError) as e:
        T.read_tfrecord(bad)
    assert e.value.field == "length_crc" and e.value.line == 3 and "record 2" in str(e.value)


def test_truncated_and_not_gzip(tmp_path):
    blob = _frame([b"abcdef"])
    p = tmp_path / "t.tfrecord"
    p.write_bytes(blob[:-3])
    with pytest.raises(DataError, match="truncated"):
        T.read_tfrecord(p, compression=None)
    q = tmp_path / "n.tfrecord.gz"
    q.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="gzip"):
        T.read_tfrecord(q, compression="gzip")
    with pytest.raises(DataError, match="missing"):
        T.read_tfrecord(tmp_path / "absent.tfrecord.gz")


def test_verify_false_skips_crc(tmp_path):
    bad = _corrupt(tmp_path, "data", index=0)
    recs = T.read_tfrecord(bad, verify=False)
    assert len(recs) == 3


# ------------------------------------------------------------------------------------------ Example


@pytest.mark.parametrize("packed", [True, False])
def test_parse_example_all_kinds(packed):
    ints = [0, 1, 127, 128, 300, 2**40, -1, -(2**63), 2**63 - 1, 999999]
    floats = np.array([0.0, -1.5, 3.25e10], np.float32)
    buf = encode_example({"ids": ints, "w": floats, "s": [b"a", b"", b"\xff\x00"]}, packed=packed)
    ex = T.parse_example(buf)
    assert ex["ids"].dtype == np.int64 and ex["ids"].tolist() == ints
    assert ex["w"].dtype == np.float32 and np.array_equal(ex["w"], floats)
    assert ex["s"] == [b"a", b"", b"\xff\x00"]


def test_decode_varints_vectorised():
    vals = np.array([5, 0, 1, 2**35 + 7, -1, -12345, 127, 128], np.int64)
    buf = b"".join(_varint(int(v)) for v in vals)
    assert np.array_equal(T.decode_varints(buf), vals)
    assert np.array_equal(T.decode_varints(bytes([1, 2, 3])), [1, 2, 3])
    assert T.decode_varints(b"").size == 0


def test_parse_example_empty_and_unknown_fields():
    assert T.parse_example(b"") == {}
    # an unknown top-level field (number 7, varint) is skipped
    buf = _key(7, 0) + _varint(42) + encode_example({"a": [3]})
    assert T.parse_example(buf)["a"].tolist() == [3]


def test_malformed_example_raises(tmp_path):
    good = encode_example({"ids": [1, 2, 3]})
    with pytest.raises(DataError) as e:
        T.parse_example(good[:-2], path=tmp_path / "f.tfrecord.gz", index=4)
    assert e.value.line == 5 and "malformed tf.train.Example" in str(e.value)
    with pytest.raises(DataError):
        T.parse_example(b"\x0b\x00")  # wire type 3 (groups) unsupported
