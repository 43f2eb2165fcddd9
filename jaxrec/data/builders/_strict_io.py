"""Private helpers shared by the user-item, graph, review, MovieLens and KuaiRand builders.

Built on :mod:`jaxrec.data.readers` (checksums, ``DropReport``): a strict reader for headerless files of
integer columns (every problem is a :class:`~jaxrec.data.errors.DataError` naming file, line, field and what
was expected), a vectorised duplicate-key check, and a ``GeneratorBasedBuilder`` base that resolves the raw
folder lazily, verifies each raw file against the sha256 pinned in its config (copied from SOURCE.md; the tests
check the copy), writes ArrayRecord files and stores JSON metadata in the catalogue's convention
(``num_users``, ``num_items``, ``domain_names``, ``domain_item_ranges``, ``stats``, ``drops``, ``checksums``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import paths, readers
from jaxrec.data.catalog import to_jsonable
from jaxrec.data.errors import DataError

# ----------------------------------------------------------------------------------------------------------
# strict line readers


def iter_lines(path: str | os.PathLike, *, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its terminator) for each line; bad bytes are a DataError."""
    with open(readers.require_file(path), "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(path, f"undecodable bytes ({e.reason})", line=lineno,
                                expected=f"{encoding} text") from None
            yield lineno, text.rstrip("\r\n")


def parse_int(path, lineno: int | None, field: str, token: str) -> int:
    """``int(token)`` for a plain decimal integer (no spaces, no ``+``/``_``), else DataError."""
    t = token[1:] if token.startswith("-") else token
    if not t.isdigit() or not t.isascii():
        raise DataError(path, "malformed value", line=lineno, field=field, expected="a decimal integer", got=token)
    return int(token)


def check_range(path, lineno: int | None, field: str, value, lo, hi) -> None:
    """DataError when ``value`` is outside the declared inclusive range ``lo..hi``."""
    if value < lo or value > hi:
        raise DataError(path, "value outside the declared range", line=lineno, field=field,
                        expected=f"{field} in {lo}..{hi}", got=value)


def read_int_table(path: str | os.PathLike, columns: Sequence[str], *, sep: str = "\t",
                   bounds: Mapping[str, tuple[int, int]] | None = None,
                   fixed: Mapping[str, int] | None = None, min_rows: int = 1) -> dict[str, np.ndarray]:
    """Read a headerless file of exactly ``len(columns)`` ``sep``-separated integers per line.

    DataError for: an empty line ("empty record"), a wrong number of fields ("malformed line"), a token that is
    not a decimal integer, a value outside ``bounds[col] = (lo, hi)`` (inclusive), a column that must hold a
    constant (``fixed[col]``) holding something else, fewer than ``min_rows`` records. A final newline is
    optional; ``\r\n`` line ends are accepted.

    Returns ``{column: int64 [n]}`` plus ``"_line"`` (1-based line number of each row).
    """
    bounds = bounds or {}
    fixed = fixed or {}
    ncol = len(columns)
    raw = readers.require_file(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(path, f"undecodable bytes ({e.reason})", line=line, expected="UTF-8 text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if "\r" in text:
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    row_re = re.compile(f"-?[0-9]+(?:{re.escape(sep)}-?[0-9]+){{{ncol - 1}}}")
    if not all(map(row_re.fullmatch, lines)):  # locate and describe the first bad line
        i = next(i for i, ln in enumerate(lines) if not row_re.fullmatch(ln))
        ln = lines[i]
        if not ln.strip():
            raise DataError(path, "empty record", line=i + 1,
                            expected=f"{ncol} {sep!r}-separated integers ({', '.join(columns)})")
        toks = ln.split(sep)
        if len(toks) != ncol:
            raise DataError(path, "malformed line", line=i + 1, field="line",
                            expected=f"{ncol} {sep!r}-separated fields ({', '.join(columns)})", got=ln)
        for c, t in zip(columns, toks):
            parse_int(path, i + 1, c, t)
        raise DataError(path, "malformed line", line=i + 1, expected="decimal integers", got=ln)  # pragma: no cover
    if len(lines) < min_rows:
        raise DataError(path, "too few records", expected=f"at least {min_rows} record(s)", got=len(lines))
    flat = sep.join(lines).split(sep) if lines else []
    arr = np.fromiter(map(int, flat), dtype=np.int64, count=len(flat)).reshape(-1, ncol)
    out = {c: arr[:, j].copy() for j, c in enumerate(columns)}
    out["_line"] = np.arange(1, len(lines) + 1, dtype=np.int64)
    for c in columns:
        v = out[c]
        if c in bounds:
            lo, hi = bounds[c]
            bad = np.nonzero((v < lo) | (v > hi))[0]
            if bad.size:
                raise DataError(path, "value outside the declared range", line=int(bad[0]) + 1, field=c,
                                expected=f"{c} in {lo}..{hi}", got=int(v[bad[0]]))
        if c in fixed:
            bad = np.nonzero(v != fixed[c])[0]
            if bad.size:
                raise DataError(path, "unexpected value", line=int(bad[0]) + 1, field=c,
                                expected=f"{c} == {fixed[c]}", got=int(v[bad[0]]))
    return out


def find_duplicates(keys: Sequence[np.ndarray]) -> tuple[int, int] | None:
    """(index of an earlier occurrence, index of the first repeat in file order) of a repeated key tuple."""
    n = len(keys[0])
    if n < 2:
        return None
    order = np.lexsort(tuple(np.asarray(k) for k in reversed(keys)))  # stable: ties keep file order
    same = np.ones(n - 1, dtype=bool)
    for k in keys:
        ks = np.asarray(k)[order]
        same &= ks[1:] == ks[:-1]
    if not same.any():
        return None
    idx = np.nonzero(same)[0]
    j = idx[np.argmin(order[idx + 1])]
    return int(order[j]), int(order[j + 1])


def check_unique(path, keys: Sequence[np.ndarray], fields: Sequence[str], lines: np.ndarray | None = None,
                 what: str = "duplicate record") -> None:
    """DataError naming the line of the first repeated key tuple (and the line it repeats)."""
    dup = find_duplicates(keys)
    if dup is None:
        return
    first, second = dup
    ln = (lambda i: int(lines[i])) if lines is not None else (lambda i: i + 1)
    got = tuple(np.asarray(k)[second].item() for k in keys)
    raise DataError(path, f"{what} (same as line {ln(first)})", line=ln(second), field="+".join(fields),
                    expected=f"unique ({', '.join(fields)})", got=got)


# ----------------------------------------------------------------------------------------------------------
# statistics and metadata


def id_stats(ids: np.ndarray) -> dict:
    """``{"count": distinct ids, "range": [min, max]}`` (range [] when empty)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return {"count": 0, "range": []}
    return {"count": int(np.unique(ids).size), "range": [int(ids.min()), int(ids.max())]}


def builder_stats(builder) -> dict:
    """The prepared builder's ``metadata["stats"]`` with ``records`` per split and the ``drops`` report.

    Shaped like :func:`jaxrec.data.catalog.stats` (``users``, ``items``, ``interactions``, ``splits``, ``drops``
    plus the builder's own keys); works on the generating builder and on ``tfds.builder_from_directory``.
    """
    md = dict(builder.info.metadata or {})
    st = to_jsonable(dict(md.get("stats", {})))
    splits = {k: dict(v) for k, v in (st.pop("splits", None) or {}).items()}
    for name, s in builder.info.splits.items():
        splits.setdefault(name, {})["records"] = int(s.num_examples)
    st["splits"] = splits
    st["drops"] = to_jsonable(md.get("drops", {}))
    return st


# ----------------------------------------------------------------------------------------------------------
# builder base


@dataclasses.dataclass(eq=False, kw_only=True)
class RawConfig(tfds.core.BuilderConfig):
    """BuilderConfig naming the raw folder (under the raw-data root) and the sha256 of every file read.

    ``checksums`` maps a path relative to the raw folder to its sha256 (copied from SOURCE.md); reading a file
    without a pinned checksum is a DataError, so every input is verified.
    """

    raw_subdir: str = ""
    checksums: Mapping[str, str] = dataclasses.field(default_factory=dict)


class RawBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GeneratorBasedBuilder reading a verified raw folder; writes ArrayRecord by default.

    Args (besides TFDS's ``config``, ``data_dir``, ``version``, ``file_format``):
      raw_dir: the dataset's own raw folder (e.g. ``.../shared/data/tu_imdb``); takes precedence.
      raw_root: the raw-data root (``--data_dir``); the folder is then ``raw_root/config.raw_subdir``.
      With neither, :func:`jaxrec.data.paths.raw_dir` finds ``../shared/data``. The folder is resolved only
      when the dataset is generated, so reading an already prepared dataset needs no raw data.
    """

    # No download checksums file; also avoids tfds 4.9.10's code_path lookup, which imports the absent
    # `importlib_resources` backport for builders defined inside an installed package.
    code_path = None

    def __init__(self, *, raw_dir: str | os.PathLike | None = None, raw_root: str | os.PathLike | None = None,
                 **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._raw_dir_arg = raw_dir
        self._raw_root_arg = raw_root
        self._verified: dict[str, str] = {}
        super().__init__(**kwargs)

    def raw_folder(self) -> pathlib.Path:
        if self._raw_dir_arg is not None:
            p = pathlib.Path(self._raw_dir_arg)
            if not p.is_dir():
                raise DataError(p, "raw dataset folder does not exist", expected="an existing directory")
            return p
        return paths.raw_dir(self._raw_root_arg, subdir=self.builder_config.raw_subdir)

    def raw_file(self, rel: str, what: str = "data file") -> pathlib.Path:
        """Absolute path of ``rel`` after checking that it exists and that its sha256 is the pinned one."""
        p = readers.require_file(self.raw_folder() / rel, what)
        sums = self.builder_config.checksums
        if rel not in sums:
            raise DataError(p, "no sha256 pinned for this file", field="sha256",
                            expected=f"an entry of the config's checksums (pinned: {sorted(sums)})")
        readers.verify_sha256(p, sums[rel])
        self._verified[rel] = sums[rel]
        return p

    def set_metadata(self, md: Mapping[str, Any]) -> None:
        """Store ``md`` (plus the verified ``checksums``) in ``DatasetInfo.metadata`` (JSON-able copy)."""
        md = dict(md)
        md.setdefault("checksums", dict(self._verified))
        self.info.metadata.update(to_jsonable(md))

    def _generate_examples(self, records: Iterable[tuple[Any, dict]]):  # TFDS hook: (key, example) pairs
        yield from records
