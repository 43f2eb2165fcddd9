"""Test setup: 8 fake CPU devices (before jax is imported) and the ../shared/data skip marker."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from jaxrec.data.paths import default_raw_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data; skips the test cleanly when absent (a fresh clone has none)."""
    root = default_raw_dir()
    if root is None or not root.is_dir():
        pytest.skip("../shared/data not present (fresh clone): skipping real-data test")
    return root


@pytest.fixture(autouse=True)
def _isolated_tfds_dir(tmp_path_factory, monkeypatch):
    """Prepared TFDS datasets go to a per-session temp dir, never to the user's cache."""
    d = tmp_path_factory.getbasetemp() / "tfds"
    monkeypatch.setenv("JAXREC_TFDS_DIR", str(d))
