"""Where raw data lives and where prepared (ArrayRecord) datasets are written.

Raw data: ``--data_dir`` / ``JAXREC_RAW_DATA``, falling back to ``../shared/data`` beside the repository
(the checkout's parent holds ``shared/``). Prepared TFDS datasets: ``JAXREC_TFDS_DIR`` or
``~/.cache/jaxrec/tfds``.
"""

from __future__ import annotations

import os
import pathlib

from jaxrec.data.errors import DataError

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_raw_dir() -> pathlib.Path | None:
    """The raw-data root: $JAXREC_RAW_DATA, else ../shared/data beside the repo (None if neither exists)."""
    env = os.environ.get("JAXREC_RAW_DATA")
    if env:
        return pathlib.Path(env)
    for cand in (_REPO_ROOT.parent / "shared" / "data", pathlib.Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def raw_dir(data_dir: str | os.PathLike | None = None, *, subdir: str | None = None) -> pathlib.Path:
    """Resolve a raw dataset folder, raising DataError naming the path when it does not exist."""
    root = pathlib.Path(data_dir) if data_dir is not None else default_raw_dir()
    if root is None:
        raise DataError("../shared/data", "raw data root not found",
                        expected="--data_dir, $JAXREC_RAW_DATA, or ../shared/data beside the checkout")
    path = root / subdir if subdir else root
    if not path.exists():
        raise DataError(path, "raw dataset path does not exist", expected="an existing directory")
    return path


def tfds_dir() -> pathlib.Path:
    """Where prepared TFDS (ArrayRecord) datasets are written: $JAXREC_TFDS_DIR or ~/.cache/jaxrec/tfds."""
    env = os.environ.get("JAXREC_TFDS_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "jaxrec" / "tfds"


def shared_data_available() -> bool:
    return default_raw_dir() is not None
