"""Device meshes and logical-axis shardings: the single place where shardings are decided.

Models name *logical* axes on their parameters (``"vocab"``, ``"embed"``, ``"mlp"``, ``"heads"``, ``"kv"``,
``"expert"``) with ``nn.with_logical_partitioning``; the config maps them to *mesh* axes with
``logical_axis_rules`` (e.g. ``(("vocab", "model"), ("batch", "data"))``). Meshes are built with
``AxisType.Auto`` because Linen's logical partitioning relies on sharding propagation (an Explicit mesh makes a
row-sharded ``nn.Embed`` lookup raise ``ShardingTypeError``; see ../shared/papers/anchors.md §2.2).

The ``mesh`` config group::

    c.mesh = ConfigDict(dict(
        axes=(("data", -1), ("model", 2)),     # named axes and sizes; one -1 = "the rest of the devices"
        rules=(("vocab", "model"),),           # logical -> mesh axis; merged over DEFAULT_RULES
    ))

:func:`mesh_from_config` and :func:`rules_from_config` turn it into a :class:`jax.sharding.Mesh` and a rule
tuple (``Partitioner.from_config`` does both). Rules are *merged*: the config's rules come first, then the
defaults for every logical axis the config does not mention, so ``rules=(("vocab", "model"),)`` is enough to
row-shard embedding tables. A rule naming a mesh axis the mesh does not have (``"model"`` on a pure data-parallel
mesh) means "replicated": the same config runs on 1 device, 8 devices and a pod slice, only ``mesh.axes``
changes.

Device order: the last mesh axis varies fastest; on TPU ``mesh_utils.create_device_mesh`` lays the axes along
the physical torus so the last axes connect neighbouring chips. Put the axes that communicate most (``model``,
``expert``) last and ``data`` first. In a multi-process run the ``data`` axis spans processes, so each process
feeds only its own rows.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

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

# Ready-made rule sets (merged over DEFAULT_RULES like any config rules).
MODEL_PARALLEL_EMBEDDINGS = (("vocab", "model"),)
EXPERT_PARALLEL = (("expert", "expert"),)


def resolve_axis_sizes(axes: Sequence[tuple[str, int]], num_devices: int) -> tuple[tuple[str, int], ...]:
    """Replace one ``-1`` size by "the rest of the devices"; check the product equals ``num_devices``."""
    axes = [tuple(a) for a in axes]
    if not axes:
        raise ValueError("config key 'mesh.axes': at least one (name, size) axis is required")
    for a in axes:
        if len(a) != 2 or not isinstance(a[0], str):
            raise ValueError(f"config key 'mesh.axes': expected (name, size) pairs, got {a!r}")
    names = [a for a, _ in axes]
    try:
        sizes = [int(s) for _, s in axes]
    except (TypeError, ValueError):
        raise ValueError(f"config key 'mesh.axes': sizes must be ints (or -1), got {axes}") from None
    if len(set(names)) != len(names):
        raise ValueError(f"mesh axes {names}: names must be unique")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh axes {list(axes)}: at most one size may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axes {list(axes)}: sizes must be positive (or one -1)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh axes {list(axes)}: {num_devices} devices not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh axes {list(zip(names, sizes))}: product {math.prod(sizes)} != {num_devices} devices")
    return tuple(zip(names, sizes))


def make_mesh(axes: Sequence[tuple[str, int]] = (("data", -1),), devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all) with Auto axis types, e.g. ``(("data", -1), ("model", 2))``.

    On TPU ``mesh_utils.create_device_mesh`` orders devices along the physical torus; elsewhere (CPU, fake
    devices, subsets of devices) a plain reshape keeps ``jax.devices()`` order, which is process-major, so the
    first axis spans processes and the last stays within one process.
    """
    devices = list(jax.devices() if devices is None else devices)
    resolved = resolve_axis_sizes(axes, len(devices))
    names = tuple(a for a, _ in resolved)
    shape = tuple(s for _, s in resolved)
    dev_array = None
    if devices[0].platform == "tpu":
        try:
            dev_array = mesh_utils.create_device_mesh(shape, devices=devices)
        except Exception as e:  # odd shapes / subsets: fall back to jax.devices() order
            log.warning("create_device_mesh(%s) failed (%s); using jax.devices() order", shape, e)
    if dev_array is None:
        dev_array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(dev_array, names, axis_types=(AxisType.Auto,) * len(names))


def merge_rules(rules=(), defaults=DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
    """Config rules first, then the defaults for logical axes the config does not name."""
    rules = tuple(_check_rule(r) for r in (rules or ()))
    named = {r[0] for r in rules}
    return rules + tuple(tuple(r) for r in defaults if r[0] not in named)


def _check_rule(r) -> tuple[str, Any]:
    r = tuple(r)
    if len(r) != 2 or not isinstance(r[0], str):
        raise ValueError(f"config key 'mesh.rules': expected (logical_axis, mesh_axis) pairs, got {r!r}")
    target = r[1]
    if isinstance(target, list):
        target = tuple(target)
    if not (target is None or isinstance(target, str)
            or (isinstance(target, tuple) and all(isinstance(t, str) for t in target))):
        raise ValueError(f"config key 'mesh.rules': mesh axis of {r[0]!r} must be a name, a tuple of names or "
                         f"None, got {target!r}")
    return (r[0], target)


def rules_for_mesh(rules, mesh: Mesh) -> tuple[tuple[str, Any], ...]:
    """Drop mesh axes the mesh does not have (that logical axis is then replicated), so one set of rules serves
    every mesh shape; each dropped axis is logged once."""
    out = []
    for logical, target in (_check_rule(r) for r in rules):
        if target is None:
            out.append((logical, None))
            continue
        names = (target,) if isinstance(target, str) else tuple(target)
        kept = tuple(n for n in names if n in mesh.shape)
        if len(kept) != len(names):
            log.info("logical axis %r -> %r: mesh %s has no axis %s; replicated over it", logical, target,
                     dict(mesh.shape), [n for n in names if n not in mesh.shape])
        out.append((logical, None if not kept else kept[0] if len(kept) == 1 else kept))
    return tuple(out)


def mesh_from_config(mesh_cfg=None, devices=None) -> Mesh:
    """``mesh.axes`` (default ``(("data", -1),)``) -> Mesh with Auto axis types."""
    axes = mesh_cfg.get("axes") if mesh_cfg is not None else None
    axes = tuple(tuple(a) for a in axes) if axes else (("data", -1),)
    return make_mesh(axes, devices)


def rules_from_config(mesh_cfg=None) -> tuple[tuple[str, Any], ...]:
    """``mesh.rules`` merged over :data:`DEFAULT_RULES`."""
    rules = mesh_cfg.get("rules") if mesh_cfg is not None else None
    return merge_rules(rules or ())


def logical_to_sharding(logical_specs, mesh: Mesh, rules) -> object:
    """Pytree of logical PartitionSpecs -> pytree of NamedShardings on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules_for_mesh(rules, mesh)))


def logical_sharding(logical_axes: Sequence[str | None], mesh: Mesh, rules) -> NamedSharding:
    """NamedSharding of one array whose dimensions carry ``logical_axes``, e.g. ``("vocab", "embed")``."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), list(rules_for_mesh(rules, mesh)))
    return NamedSharding(mesh, spec)


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of the leading (batch) dimension of every input array."""
    mesh_axis = dict(rules_for_mesh(merge_rules(rules), mesh)).get("batch")
    return NamedSharding(mesh, P(mesh_axis))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def describe(mesh: Mesh) -> str:
    """``"data=4 x model=2 over 8 cpu devices in 1 process(es)"``."""
    axes = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
    procs = len({d.process_index for d in mesh.devices.flat})
    return f"{axes} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices in {procs} process(es)"
