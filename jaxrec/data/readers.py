"""Strict readers for raw data files, shared by the dataset builders.

Every problem raises :class:`~jaxrec.data.errors.DataError` naming the file, the 1-based line, the field
and what was expected: a malformed line, an id outside the declared range, an empty sequence, a duplicate
record, a missing file, a checksum mismatch. Nothing is skipped silently: where a *protocol* drops records
(e.g. out-of-vocabulary events), the builder counts them in a :class:`DropReport`, which is logged and stored
in the prepared dataset's metadata (and printed by ``jaxrec data stats``).

Main entry points:

* :func:`verify_sha256` / :func:`sha256_file` / :func:`source_checksums` / :class:`ChecksumVerifier` —
  check raw files against the sha256 table of the dataset's ``SOURCE.md``.
* :func:`read_id_sequence_file` — ``user \\t item,item,...`` lines (LLMCDSR layout).
* :func:`read_timed_sequence_file` — ``user item|ts item|ts ...`` lines (ABXI layout) and
  ``user \\t x \\t item|ts|date| \\t ...`` lines (C2DSR layout).
* :func:`read_int_lines`, :func:`read_json_strict`, :func:`read_csv_strict`.
* :class:`Sequences` — the ragged result (users, flat item values, offsets, line numbers, optional times).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrec.data.errors import DataError

__all__ = [
    "Sequences",
    "DropReport",
    "ChecksumVerifier",
    "sha256_file",
    "verify_sha256",
    "source_checksums",
    "find_source_md",
    "require_file",
    "read_lines",
    "read_int_lines",
    "read_json_strict",
    "read_id_sequence_file",
    "read_timed_sequence_file",
    "read_csv_strict",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- checksums

def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> pathlib.Path:
    """The path, or DataError naming it when it does not exist."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise DataError(p, f"{what} missing", expected="an existing file")
    return p


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise DataError when the file's sha256 differs from ``expected`` (hex)."""
    require_file(path)
    got = sha256_file(path)
    if got.lower() != expected.strip().lower():
        raise DataError(path, "sha256 checksum mismatch (file differs from the one described in SOURCE.md)",
                        field="sha256", expected=expected.strip().lower(), got=got)


_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*\d+\s*\|\s*`?([0-9a-fA-F]{64})`?\s*\|")


def source_checksums(source_md: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` parsed from the ``| file | bytes | sha256 | ... |`` table of a SOURCE.md."""
    require_file(source_md, "SOURCE.md")
    out: dict[str, str] = {}
    with open(source_md, encoding="utf-8") as f:
        for line in f:
            m = _ROW.match(line.strip())
            if m:
                out[m.group(1).strip().strip("`")] = m.group(2).lower()
    return out


def find_source_md(raw_dir: str | os.PathLike, max_up: int = 2) -> pathlib.Path | None:
    """The nearest ``SOURCE.md`` in ``raw_dir`` or up to ``max_up`` parents (paths in it are relative to it)."""
    p = pathlib.Path(raw_dir).resolve()
    for _ in range(max_up + 1):
        cand = p / "SOURCE.md"
        if cand.is_file():
            return cand
        if p.parent == p:
            break
        p = p.parent
    return None


class ChecksumVerifier:
    """Verifies raw files against the sha256 table of the dataset's SOURCE.md.

    ``expected`` maps paths relative to ``root`` to sha256; when omitted it is read from the nearest
    SOURCE.md of ``raw_dir`` (``root`` is then that file's folder). A file without a listed checksum is an
    error too (strict: every raw file the builders read is pinned). ``enabled=False`` turns checking off
    (for crafted test fixtures); the verifier then records nothing.
    """

    def __init__(self, raw_dir: str | os.PathLike, *, expected: Mapping[str, str] | None = None,
                 root: str | os.PathLike | None = None, enabled: bool = True):
        self.enabled = enabled
        self.raw_dir = pathlib.Path(raw_dir)
        self.verified: dict[str, str] = {}
        if not enabled:
            self.expected, self.root, self.source = {}, self.raw_dir, None
            return
        if expected is not None:
            self.expected = dict(expected)
            self.root = pathlib.Path(root) if root is not None else self.raw_dir
            self.source = None
        else:
            src = find_source_md(self.raw_dir)
            if src is None:
                raise DataError(self.raw_dir, "no SOURCE.md with sha256 checksums found in the raw folder or its parents",
                                expected="SOURCE.md listing every raw file (or verify_checksums=False)")
            self.source = src
            self.root = src.parent
            self.expected = source_checksums(src)

    def verify(self, path: str | os.PathLike) -> None:
        if not self.enabled:
            return
        p = pathlib.Path(path)
        require_file(p)
        try:
            rel = p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            rel = p.name
        if rel not in self.expected:
            raise DataError(p, f"no sha256 listed for {rel!r}", field="sha256",
                            expected=f"an entry in {self.source or 'the checksum table'}")
        verify_sha256(p, self.expected[rel])
        self.verified[rel] = self.expected[rel]


# ----------------------------------------------------------------------------------------- drop report

class DropReport:
    """Counts records (or events) a protocol drops, by (scope, reason), with the first few locations.

    ``add("train_B.txt", "oov item", n=3, where="line 17")``; ``as_dict()`` is JSON-able and is stored in
    the dataset metadata under ``"drops"``; :meth:`log` writes one warning per non-zero counter.
    """

    def __init__(self, max_examples: int = 5):
        self._counts: dict[tuple[str, str], int] = {}
        self._examples: dict[tuple[str, str], list[str]] = {}
        self._max = max_examples

    def add(self, scope: str, reason: str, n: int = 1, where: str | None = None) -> None:
        n = int(n)
        if n <= 0:
            return
        k = (str(scope), str(reason))
        self._counts[k] = self._counts.get(k, 0) + n
        if where is not None:
            ex = self._examples.setdefault(k, [])
            if len(ex) < self._max:
                ex.append(str(where))

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def count(self, scope: str | None = None, reason: str | None = None) -> int:
        return sum(v for (s, r), v in self._counts.items()
                   if (scope is None or s == scope) and (reason is None or r == reason))

    def as_dict(self) -> dict:
        out: dict[str, dict] = {}
        for (s, r), v in sorted(self._counts.items()):
            out.setdefault(s, {})[r] = {"count": v, "examples": self._examples.get((s, r), [])}
        return out

    def log(self, name: str = "") -> None:
        for (s, r), v in sorted(self._counts.items()):
            log.warning("%s%s: dropped %d (%s)", f"{name}: " if name else "", s, v, r)

    def __repr__(self) -> str:
        return f"DropReport({self.as_dict()})"


# ----------------------------------------------------------------------------------------- sequences

@dataclasses.dataclass
class Sequences:
    """Ragged integer sequences read from one file.

    Attributes:
      path: source file.
      users: ``int64 [n]`` user id as written in the file.
      values: ``int64 [total]`` all sequence elements, concatenated.
      offsets: ``int64 [n + 1]`` sequence ``i`` is ``values[offsets[i]:offsets[i+1]]``.
      lines: ``int64 [n]`` 1-based line number of each sequence.
      times: ``int64 [total]`` or None: per-element timestamps (timed formats).
      extra: ``int64 [n]`` or None: an extra per-line integer column (C2DSR's second column).
    """

    path: str
    users: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    lines: np.ndarray
    times: np.ndarray | None = None
    extra: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def seq(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a UTF-8 text file without terminators (``\\n`` or ``\\r\\n``); a final newline is optional.

    An empty line anywhere except as the file's final terminator is a DataError.
    """
    p = require_file(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(p, f"not UTF-8 text ({e})", expected="a UTF-8 text file") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    return lines


def read_int_lines(path: str | os.PathLike, n: int, *, field: str = "count", allow_trailing_blank: bool = True,
                   min_value: int = 0) -> list[int]:
    """The first ``n`` lines as non-negative ints (e.g. LLMCDSR's num.txt / instance_num.txt)."""
    lines = read_lines(path)
    while allow_trailing_blank and lines and lines[-1].strip() == "" and len(lines) > n:
        lines.pop()
    if len(lines) != n:
        raise DataError(path, "wrong number of lines", expected=f"{n} lines, one integer each", got=len(lines))
    out = []
    for i, ln in enumerate(lines):
        try:
            v = int(ln.strip())
        except ValueError:
            raise DataError(path, "malformed integer", line=i + 1, field=f"{field}[{i}]",
                            expected="a decimal integer", got=ln) from None
        if v < min_value:
            raise DataError(path, "value out of range", line=i + 1, field=f"{field}[{i}]",
                            expected=f">= {min_value}", got=v)
        out.append(v)
    return out


def read_json_strict(path: str | os.PathLike) -> Any:
    p = require_file(path)
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(p, f"malformed JSON ({e.msg})", line=e.lineno, field=f"column {e.colno}",
                        expected="valid JSON") from None


def _parse_int(tok: str, path, line: int, field: str) -> int:
    try:
        if not tok or tok != tok.strip():
            raise ValueError
        return int(tok)
    except ValueError:
        raise DataError(path, "malformed integer", line=line, field=field, expected="a decimal integer",
                        got=tok) from None


def _check_range(values: np.ndarray, offsets: np.ndarray, lines: np.ndarray, id_range, path, field: str,
                 what: str = "item id") -> None:
    if id_range is None or values.size == 0:
        return
    lo, hi = id_range
    bad = np.nonzero((values < lo) | (values >= hi))[0]
    if bad.size:
        k = int(bad[0])
        row = int(np.searchsorted(offsets, k, side="right") - 1)
        raise DataError(path, f"{what} out of range", line=int(lines[row]),
                        field=f"{field}[{k - int(offsets[row])}]", expected=f"{what} in [{lo}, {hi})",
                        got=int(values[k]))


def _check_users(users, line_no, path, user_range, unique_users: bool) -> None:
    """User ids within ``user_range`` (``[lo, hi)``, None = any) and, if asked, each on one line only."""
    if user_range is not None and users.size:
        lo, hi = user_range
        bad = np.nonzero((users < lo) | (users >= hi))[0]
        if bad.size:
            i = int(bad[0])
            raise DataError(path, "user id out of range", line=int(line_no[i]), field="user",
                            expected=f"user id in [{lo}, {hi})", got=int(users[i]))
    if unique_users:
        _check_unique_users(users, line_no, path)


def _check_unique_users(users: np.ndarray, lines: np.ndarray, path) -> None:
    if users.size == 0:
        return
    order = np.argsort(users, kind="stable")
    su = users[order]
    dup = np.nonzero(su[1:] == su[:-1])[0]
    if dup.size:
        first, second = order[dup[0]], order[dup[0] + 1]
        raise DataError(path, f"duplicate record for user {int(users[second])} (first seen on line {int(lines[first])})",
                        line=int(lines[second]), field="user", expected="each user at most once per file",
                        got=int(users[second]))


def read_id_sequence_file(path: str | os.PathLike, *, id_range: tuple[int, int] | None = None,
                          user_range: tuple[int, int] | None = None, unique_users: bool = True,
                          min_len: int = 1, expected_lines: int | None = None,
                          sep: str = "\t", item_sep: str = ",") -> Sequences:
    """Read ``user<sep>item<item_sep>item...`` lines (LLMCDSR ``train_*.txt``/``valid.txt``/``test.txt``).

    Checks: two fields per line, integer user and items, at least ``min_len`` items, item ids in
    ``[id_range[0], id_range[1])``, user ids in ``user_range``, each user once (``unique_users``), and the
    line count (``expected_lines``). Returns :class:`Sequences` (ids as written; no offsetting).
    """
    path = os.fspath(path)
    lines = read_lines(path)
    if expected_lines is not None and len(lines) != expected_lines:
        raise DataError(path, "wrong number of records", expected=f"{expected_lines} lines (as declared)",
                        got=len(lines))
    n = len(lines)
    users = np.empty(n, dtype=np.int64)
    lens = np.empty(n, dtype=np.int64)
    chunks: list[list[str]] = []
    for i, ln in enumerate(lines):
        parts = ln.split(sep)
        if len(parts) != 2:
            raise DataError(path, "malformed line", line=i + 1, field="line",
                            expected=f"'user{sep!r}item{item_sep}item...' (2 fields)", got=ln)
        users[i] = _parse_int(parts[0], path, i + 1, "user")
        toks = parts[1].split(item_sep) if parts[1] else []
        if len(toks) < max(min_len, 1):
            raise DataError(path, "empty sequence" if not toks else "sequence too short", line=i + 1, field="items",
                            expected=f"at least {max(min_len, 1)} item ids", got=parts[1])
        lens[i] = len(toks)
        chunks.append(toks)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = [t for toks in chunks for t in toks]
    try:
        values = np.array([int(t) for t in flat], dtype=np.int64) if flat else np.zeros(0, np.int64)
        # int() accepts ' 5' and '+5' and '5_0'; be strict about the exact text
        bad_text = any((not t) or (not t.isdigit() and not (t[0] == "-" and t[1:].isdigit())) for t in flat)
    except ValueError:
        bad_text = True
    if bad_text:
        for i, toks in enumerate(chunks):
            for j, t in enumerate(toks):
                if not t or not (t.isdigit() or (t[0] == "-" and t[1:].isdigit())):
                    raise DataError(path, "malformed item id", line=i + 1, field=f"items[{j}]",
                                    expected="a decimal integer", got=t)
    line_no = np.arange(1, n + 1, dtype=np.int64)
    _check_range(values, offsets, line_no, id_range, path, "items")
    _check_users(users, line_no, path, user_range, unique_users)
    return Sequences(path=path, users=users, values=values, offsets=offsets, lines=line_no)


def read_timed_sequence_file(path: str | os.PathLike, *, layout: str, id_range: tuple[int, int] | None = None,
                             user_range: tuple[int, int] | None = None, unique_users: bool = True,
                             min_len: int = 1, time_range: tuple[int, int] = (0, 2**62)) -> Sequences:
    """Read per-user sequences of ``item|unix_ts`` records.

    layouts:
      ``"abxi"``  ``user item|ts item|ts ...`` (space separated; ABXI ``*_preprocessed.txt``)
      ``"c2dsr"`` ``user \\t x \\t item|ts|YYYY-MM-DD hh:mm:ss| \\t ...`` (tab separated, every record ends
                 with ``|``, an optional trailing tab; C2DSR ``validdata_new.txt`` / ``testdata_new.txt``);
                 the integer ``x`` is kept in :attr:`Sequences.extra`.
    The elements are returned in file order (callers sort by time where their protocol does).
    """
    if layout not in ("abxi", "c2dsr"):
        raise ValueError(f"unknown layout {layout!r}")
    path = os.fspath(path)
    lines = read_lines(path)
    n = len(lines)
    users = np.empty(n, dtype=np.int64)
    extra = np.empty(n, dtype=np.int64) if layout == "c2dsr" else None
    lens = np.empty(n, dtype=np.int64)
    items: list[int] = []
    times: list[int] = []
    for i, ln in enumerate(lines):
        if layout == "abxi":
            parts = ln.split(" ")
            head, recs = parts[:1], parts[1:]
        else:
            parts = ln.split("\t")
            if parts and parts[-1] == "":
                parts = parts[:-1]
            if len(parts) < 2:
                raise DataError(path, "malformed line", line=i + 1, field="line",
                                expected="'user\\tx\\titem|ts|date|\\t...'", got=ln)
            head, recs = parts[:2], parts[2:]
        users[i] = _parse_int(head[0], path, i + 1, "user")
        if extra is not None:
            extra[i] = _parse_int(head[1], path, i + 1, "column 2")
        if len(recs) < max(min_len, 1):
            raise DataError(path, "empty sequence" if not recs else "sequence too short", line=i + 1, field="items",
                            expected=f"at least {max(min_len, 1)} item|timestamp records", got=ln[:80])
        for j, r in enumerate(recs):
            f = r.split("|")
            if layout == "abxi":
                ok = len(f) == 2
                expect = "'item|unix_ts'"
            else:
                ok = len(f) == 4 and f[3] == ""
                expect = "'item|unix_ts|YYYY-MM-DD hh:mm:ss|'"
            if not ok:
                raise DataError(path, "malformed record", line=i + 1, field=f"items[{j}]", expected=expect, got=r)
            items.append(_parse_int(f[0], path, i + 1, f"items[{j}].item"))
            times.append(_parse_int(f[1], path, i + 1, f"items[{j}].timestamp"))
        lens[i] = len(recs)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    values = np.asarray(items, dtype=np.int64)
    tarr = np.asarray(times, dtype=np.int64)
    line_no = np.arange(1, n + 1, dtype=np.int64)
    _check_range(values, offsets, line_no, id_range, path, "items")
    _check_range(tarr, offsets, line_no, time_range, path, "timestamps", what="timestamp")
    _check_users(users, line_no, path, user_range, unique_users)
    return Sequences(path=path, users=users, values=values, offsets=offsets, lines=line_no, times=tarr, extra=extra)


# ------------------------------------------------------------------------------------------------ CSV

_CASTS = {"int": int, "float": float, "str": str}


def read_csv_strict(path: str | os.PathLike, columns: Sequence[tuple[str, str]], *, delimiter: str = ",",
                    header: bool | Sequence[str] = False, ranges: Mapping[str, tuple[float, float]] | None = None,
                    unique: Sequence[str] | None = None, allow_empty: bool = False,
                    encoding: str = "utf-8") -> dict[str, np.ndarray]:
    """Read a delimited file with a fixed column list into ``{name: np.ndarray}``.

    Args:
      columns: ``[(name, "int" | "float" | "str"), ...]`` in file order; every row must have exactly these.
      header: False (no header row), True (skip a header row), or the exact expected header names.
      ranges: ``{name: (lo, hi)}`` half-open range checks for numeric columns.
      unique: column names whose combination must not repeat (duplicate record check).
      allow_empty: accept a file without data rows.
    """
    p = require_file(path)
    names = [c for c, _ in columns]
    casts = []
    for c, t in columns:
        if t not in _CASTS:
            raise ValueError(f"column {c!r}: unknown type {t!r}")
        casts.append(_CASTS[t])
    cols: list[list] = [[] for _ in columns]
    with open(p, newline="", encoding=encoding) as f:
        reader = csv.reader(f, delimiter=delimiter)
        first = 1
        if header:
            try:
                row = next(reader)
            except StopIteration:
                raise DataError(p, "empty file", line=1, expected="a header row") from None
            if header is not True and [h.strip() for h in row] != list(header):
                raise DataError(p, "unexpected header", line=1, field="header", expected=str(list(header)), got=row)
            first = 2
        for ln, row in enumerate(reader, start=first):
            if len(row) != len(columns):
                raise DataError(p, "malformed line", line=ln, field="line",
                                expected=f"{len(columns)} fields {names}", got=delimiter.join(row))
            for k, (tok, cast) in enumerate(zip(row, casts)):
                try:
                    cols[k].append(cast(tok))
                except ValueError:
                    raise DataError(p, f"malformed {columns[k][1]}", line=ln, field=names[k],
                                    expected=f"a {columns[k][1]}", got=tok) from None
    out = {}
    for (c, t), vals in zip(columns, cols):
        dtype = {"int": np.int64, "float": np.float64, "str": object}[t]
        out[c] = np.asarray(vals, dtype=dtype)
    n = len(cols[0]) if cols else 0
    if n == 0 and not allow_empty:
        raise DataError(p, "no data rows", expected="at least one row")
    first_data_line = 2 if header else 1
    for c, (lo, hi) in (ranges or {}).items():
        v = out[c]
        bad = np.nonzero((v < lo) | (v >= hi))[0]
        if bad.size:
            i = int(bad[0])
            raise DataError(p, "value out of range", line=first_data_line + i, field=c,
                            expected=f"{c} in [{lo}, {hi})", got=v[i].item())
    if unique:
        seen: dict[tuple, int] = {}
        keys = list(zip(*(out[c].tolist() for c in unique)))
        for i, k in enumerate(keys):
            if k in seen:
                raise DataError(p, f"duplicate record (first on line {first_data_line + seen[k]})",
                                line=first_data_line + i, field="+".join(unique),
                                expected=f"unique {tuple(unique)}", got=k)
            seen[k] = i
    return out
