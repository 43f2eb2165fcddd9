"""Device meshes and logical-axis shardings: the single place where shardings are decided.

Models name *logical* axes on their parameters (``"vocab"``, ``"embed"``, ``"mlp"``, ``"heads"``, ``"kv"``,
``"expert"``) with ``nn.with_logical_partitioning``; the config maps them to *mesh* axes with
``logical_axis_rules`` (e.g. ``(("vocab", "model"), ("batch", "data"))``). Meshes are built with
``AxisType.Auto`` because Linen's logical partitioning relies on sharding propagation (an Explicit mesh makes a
row-sharded ``nn.Embed`` lookup raise ``ShardingTypeError``; see ../shared/papers/anchors.md §2.2).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Default logical -> mesh axis rules: pure data parallelism, parameters replicated. Configs override
# (e.g. add ("vocab", "model") for row-sharded embedding tables, ("expert", "expert") for expert parallelism).
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", None),
    ("embed", None),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("expert", None),
)


def resolve_axis_sizes(axes: Sequence[tuple[str, int]], num_devices: int) -> tuple[tuple[str, int], ...]:
    """Replace one ``-1`` size by "the rest of the devices"; check the product equals ``num_devices``."""
    names = [a for a, _ in axes]
    sizes = [int(s) for _, s in axes]
    if len(set(names)) != len(names):
        raise ValueError(f"mesh axes {names}: names must be unique")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh axes {list(axes)}: at most one size may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh axes {list(axes)}: {num_devices} devices not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh axes {list(zip(names, sizes))}: product {math.prod(sizes)} != {num_devices} devices")
    return tuple(zip(names, sizes))


def make_mesh(axes: Sequence[tuple[str, int]] = (("data", -1),), devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all) with Auto axis types, e.g. ``(("data", -1), ("model", 2))``."""
    devices = list(jax.devices() if devices is None else devices)
    resolved = resolve_axis_sizes(axes, len(devices))
    names = tuple(a for a, _ in resolved)
    shape = tuple(s for _, s in resolved)
    try:
        dev_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # fake CPU devices / odd shapes: plain reshape keeps process-local order
        dev_array = np.asarray(devices).reshape(shape)
    return Mesh(dev_array, names, axis_types=(AxisType.Auto,) * len(names))


def logical_to_sharding(logical_specs, mesh: Mesh, rules) -> object:
    """Pytree of logical PartitionSpecs -> pytree of NamedShardings on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of the leading (batch) dimension of every input array."""
    mesh_axis = dict(rules).get("batch", "data")
    return NamedSharding(mesh, P(mesh_axis))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
