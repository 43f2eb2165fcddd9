"""Strict raw readers: every problem is a DataError naming file, line, field and what was expected."""

import hashlib
import logging

import numpy as np
import pytest

from jaxrec.data import readers as R
from jaxrec.data.errors import DataError


def _write(p, text):
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------- id sequence files


def test_read_id_sequence_file_ok(tmp_path):
    p = _write(tmp_path / "train_A.txt", "1\t0,1,2\n2\t5\n3\t4,3\n")
    s = R.read_id_sequence_file(p, id_range=(0, 6))
    assert s.users.tolist() == [1, 2, 3]
    assert s.values.tolist() == [0, 1, 2, 5, 4, 3]
    assert s.offsets.tolist() == [0, 3, 4, 6]
    assert s.lengths.tolist() == [3, 1, 2]
    assert s.seq(2).tolist() == [4, 3]
    assert s.lines.tolist() == [1, 2, 3]


def test_crlf_and_missing_final_newline_accepted(tmp_path):
    p = _write(tmp_path / "a.txt", "1\t0,1\r\n2\t3")
    s = R.read_id_sequence_file(p)
    assert s.values.tolist() == [0, 1, 3]


@pytest.mark.parametrize("text,line,field,msg", [
    ("1\t0,1\n2 0,1\n", 2, "line", "malformed line"),             # no tab
    ("1\t0,1\n2\t0,x\n", 2, "items[1]", "malformed item id"),      # not an int
    ("1\t0,1\n2\t0,,1\n", 2, "items[1]", "malformed item id"),     # empty token
    ("u\t0,1\n", 1, "user", "malformed integer"),
    ("1\t0,1\n\n2\t1\n", 2, "line", "malformed line"),             # blank line in the middle
])
def test_malformed_lines(tmp_path, text, line, field, msg):
    p = _write(tmp_path / "bad.txt", text)
    with pytest.raises(DataError) as e:
        R.read_id_sequence_file(p)
    err = e.value
    assert err.path == str(p) and err.line == line and err.field == field and msg in str(err)
    assert "expected" in str(err)


def test_out_of_range_id(tmp_path):
    p = _write(tmp_path / "train_A.txt", "1\t0,1\n2\t2,9,3\n")
    with pytest.raises(DataError) as e:
        R.read_id_sequence_file(p, id_range=(0, 5))
    err = e.value
    assert (err.line, err.field, err.got) == (2, "items[1]", 9)
    assert "[0, 5)" in str(err)


def test_empty_sequence(tmp_path):
    p = _write(tmp_path / "valid.txt", "1\t0,1\n2\t\n")
    with pytest.raises(DataError, match="empty sequence") as e:
        R.read_id_sequence_file(p)
    assert e.value.line == 2 and e.value.field == "items"


def test_too_short(tmp_path):
    p = _write(tmp_path / "valid.txt", "1\t0,1\n2\t3\n")
    with pytest.raises(DataError, match="too short") as e:
        R.read_id_sequence_file(p, min_len=2)
    assert e.value.line == 2


def test_duplicate_user(tmp_path):
    p = _write(tmp_path / "train_B.txt", "1\t0\n2\t1\n1\t2\n")
    with pytest.raises(DataError, match="duplicate record") as e:
        R.read_id_sequence_file(p)
    assert e.value.line == 3 and e.value.field == "user" and "line 1" in str(e.value)
    # allowed when the file may repeat users
    assert len(R.read_id_sequence_file(p, unique_users=False)) == 3


def test_expected_lines_and_user_range(tmp_path):
    p = _write(tmp_path / "train_A.txt", "1\t0\n2\t1\n")
    with pytest.raises(DataError, match="wrong number of records"):
        R.read_id_sequence_file(p, expected_lines=3)
    with pytest.raises(DataError, match="user id out of range") as e:
        R.read_id_sequence_file(p, user_range=(1, 2))
    assert e.value.line == 2


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing") as e:
        R.read_id_sequence_file(tmp_path / "test.txt")
    assert e.value.path.endswith("test.txt")


# -------------------------------------------------------------------------------------- timed formats


def test_timed_abxi_layout(tmp_path):
    p = _write(tmp_path / "afk.txt", "0 5|100 7|200\n1 3|50 4|60 2|70\n")
    s = R.read_timed_sequence_file(p, layout="abxi", id_range=(1, 8))
    assert s.users.tolist() == [0, 1]
    assert s.values.tolist() == [5, 7, 3, 4, 2]
    assert s.times.tolist() == [100, 200, 50, 60, 70]
    p2 = _write(tmp_path / "bad.txt", "0 5|100 7-200\n")
    with pytest.raises(DataError, match="malformed record") as e:
        R.read_timed_sequence_file(p2, layout="abxi")
    assert e.value.field == "items[1]" and e.value.line == 1


def test_timed_c2dsr_layout(tmp_path):
    rec = lambda i, t: f"{i}|{t}|2014-01-01 08:00:00|"  # noqa: E731
    p = _write(tmp_path / "validdata_new.txt",
               f"7\t10\t{rec(3, 20)}\t{rec(1, 10)}\n9\t4\t{rec(0, 5)}\t{rec(2, 6)}\t\n")
    s = R.read_timed_sequence_file(p, layout="c2dsr", id_range=(0, 4))
    assert s.users.tolist() == [7, 9] and s.extra.tolist() == [10, 4]
    assert s.values.tolist() == [3, 1, 0, 2] and s.times.tolist() == [20, 10, 5, 6]
    bad = _write(tmp_path / "b.txt", f"7\t10\t{rec(3, 20)}\t3|20|x\n")
    with pytest.raises(DataError, match="malformed record"):
        R.read_timed_sequence_file(bad, layout="c2dsr")
    oor = _write(tmp_path / "o.txt", f"7\t10\t{rec(3, 20)}\t{rec(4, 21)}\n")
    with pytest.raises(DataError, match="item id out of range") as e:
        R.read_timed_sequence_file(oor, layout="c2dsr", id_range=(0, 4))
    assert e.value.field == "items[1]"


# ------------------------------------------------------------------------------------------ checksums


def _source_md(folder, files):
    rows = [f"| {rel} | {p.stat().st_size} | `{hashlib.sha256(p.read_bytes()).hexdigest()}` | 1 |" for rel, p in files]
    (folder / "SOURCE.md").write_text("# x\n\n## Files\n| file | bytes | sha256 | lines |\n|---|---:|---|---:|\n"
                                      + "\n".join(rows) + "\n")


def test_verify_sha256(tmp_path):
    p = _write(tmp_path / "f.txt", "abc")
    R.verify_sha256(p, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(DataError, match="sha256 checksum mismatch") as e:
        R.verify_sha256(p, "0" * 64)
    assert e.value.field == "sha256" and e.value.expected == "0" * 64


def test_checksum_verifier_reads_source_md_above(tmp_path):
    sub = tmp_path / "pair"
    sub.mkdir()
    a = _write(sub / "a.txt", "1\t2\n")
    b = _write(sub / "b.txt", "x")
    _source_md(tmp_path, [("pair/a.txt", a)])
    assert R.source_checksums(tmp_path / "SOURCE.md") == {"pair/a.txt": hashlib.sha256(a.read_bytes()).hexdigest()}
    v = R.ChecksumVerifier(sub)
    v.verify(a)
    assert v.verified == {"pair/a.txt": hashlib.sha256(a.read_bytes()).hexdigest()}
    with pytest.raises(DataError, match="no sha256 listed"):
        v.verify(b)
    a.write_text("1\t3\n")  # modified after SOURCE.md was written
    with pytest.raises(DataError, match="checksum mismatch"):
        v.verify(a)
    R.ChecksumVerifier(sub, enabled=False).verify(a)  # disabled: no check


def test_checksum_verifier_without_source_md(tmp_path):
    d = tmp_path / "x" / "y" / "z"
    d.mkdir(parents=True)
    with pytest.raises(DataError, match="SOURCE.md"):
        R.ChecksumVerifier(d)


# ------------------------------------------------------------------------------------- misc readers


def test_read_int_lines(tmp_path):
    assert R.read_int_lines(_write(tmp_path / "num.txt", "8661\n27637\n"), 2) == [8661, 27637]
    assert R.read_int_lines(_write(tmp_path / "inst.txt", "1\n2\n3\n\n"), 3) == [1, 2, 3]
    with pytest.raises(DataError, match="malformed integer") as e:
        R.read_int_lines(_write(tmp_path / "bad.txt", "1\nx\n"), 2)
    assert e.value.line == 2
    with pytest.raises(DataError, match="wrong number of lines"):
        R.read_int_lines(_write(tmp_path / "short.txt", "1\n"), 2)


def test_read_json_strict(tmp_path):
    assert R.read_json_strict(_write(tmp_path / "m.json", '{"a": [1, 0]}')) == {"a": [1, 0]}
    with pytest.raises(DataError, match="malformed JSON") as e:
        R.read_json_strict(_write(tmp_path / "b.json", '{"a": \n [1, 0}'))
    assert e.value.line == 2


def test_read_csv_strict(tmp_path):
    cols = [("user", "int"), ("item", "int"), ("rating", "float")]
    p = _write(tmp_path / "r.csv", "user,item,rating\n0,1,5\n1,2,3.5\n")
    t = R.read_csv_strict(p, cols, header=["user", "item", "rating"], ranges={"rating": (1, 6)}, unique=["user", "item"])
    assert t["user"].tolist() == [0, 1] and t["rating"].dtype == np.float64
    with pytest.raises(DataError, match="unexpected header"):
        R.read_csv_strict(p, cols, header=["u", "i", "r"])
    bad = _write(tmp_path / "bad.csv", "0,1,5\n1,2\n")
    with pytest.raises(DataError, match="malformed line") as e:
        R.read_csv_strict(bad, cols)
    assert e.value.line == 2
    bad = _write(tmp_path / "bad2.csv", "0,1,5\n1,x,3\n")
    with pytest.raises(DataError) as e:
        R.read_csv_strict(bad, cols)
    assert (e.value.line, e.value.field) == (2, "item")
    oor = _write(tmp_path / "oor.csv", "0,1,5\n1,2,7\n")
    with pytest.raises(DataError, match="out of range") as e:
        R.read_csv_strict(oor, cols, ranges={"rating": (1, 6)})
    assert (e.value.line, e.value.field) == (2, "rating")
    dup = _write(tmp_path / "dup.csv", "0,1,5\n1,2,3\n0,1,4\n")
    with pytest.raises(DataError, match="duplicate record") as e:
        R.read_csv_strict(dup, cols, unique=["user", "item"])
    assert e.value.line == 3
    with pytest.raises(DataError, match="no data rows"):
        R.read_csv_strict(_write(tmp_path / "e.csv", ""), cols)


# ------------------------------------------------------------------------------------------ drop report


def test_drop_report(caplog):
    d = R.DropReport(max_examples=2)
    d.add("train.txt", "oov item", 3, where="line 4")
    d.add("train.txt", "oov item", 2, where="line 9")
    d.add("train.txt", "oov item", 1, where="line 11")
    d.add("test.txt", "short", 0)  # zero counts are not recorded
    assert d.total == 6 and d.count(reason="oov item") == 6
    assert d.as_dict() == {"train.txt": {"oov item": {"count": 6, "examples": ["line 4", "line 9"]}}}
    with caplog.at_level(logging.WARNING):
        d.log("ds")
    assert "dropped 6 (oov item)" in caplog.text
