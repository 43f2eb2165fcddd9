"""Small helpers shared by test modules."""

import numpy as np


def rand(seed, *shape):
    """Standard-normal float32 array of ``shape`` from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
