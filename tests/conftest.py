"""Test setup: 8 fake CPU devices (before jax is imported) and the ../shared/data skip marker."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
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


@pytest.fixture(scope="module")
def fast_compile():
    """For modules of tiny-shape kernel tests: XLA's optimisation passes cost more than they save there.

    Use with ``pytestmark = pytest.mark.usefixtures("fast_compile")``; the setting is restored afterwards.
    """
    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", prev)
