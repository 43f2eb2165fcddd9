"""Small helpers shared by test modules."""

import importlib.util
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str | None = None):
    """Import a repository script that is not in a package (``experiments/...``, ``benchmarks/...``,
    ``scripts/...``) by its path relative to the repository root."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(name or "jaxrec_script_" + path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rand(seed, *shape):
    """Standard-normal float32 array of ``shape`` from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
