"""Errors raised by jaxrec's strict data readers.

Every reader problem is a :class:`DataError` that names the file, the line (1-based, where the problem is
on a line), the field, and what was expected, so a user can open the file at that line and see it.
"""

from __future__ import annotations

import os


class DataError(ValueError):
    """A problem with input data: a malformed line, an id out of range, a missing file, a bad checksum.

    Attributes:
      path: file (or directory) the problem is in.
      line: 1-based line/record number, or None when the problem is not on one line.
      field: the field (column, key) concerned, or None.
      expected: what the reader expected to find.
      got: what it found instead (repr-truncated), or None.
    """

    def __init__(self, path, message: str = "", *, line: int | None = None, field: str | None = None,
                 expected: str | None = None, got=None):
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.expected = expected
        self.got = got
        where = self.path + (f":{line}" if line is not None else "")
        parts = [where]
        if field is not None:
            parts.append(f"field {field!r}")
        head = ", ".join(parts)
        body = message
        if expected is not None:
            body = (body + "; " if body else "") + f"expected {expected}"
        if got is not None:
            g = repr(got)
            body += f", got {g[:80] + '...' if len(g) > 80 else g}"
        super().__init__(f"{head}: {body}")
