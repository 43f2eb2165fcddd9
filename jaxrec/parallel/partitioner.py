"""Partitioner: owns input placement, sharded initialisation and the jitted step (RecML-style).

``Partitioner(mesh, rules)`` (or ``Partitioner.from_config(cfg.mesh)``):

* ``shard_inputs(batch)`` -- host (process-local) numpy batch -> global ``jax.Array`` sharded over the batch
  axis with ``jax.make_array_from_process_local_data`` (each process passes only its own rows);
* ``init(init_fn, *args)`` -- parameters born sharded: ``jax.eval_shape`` -> logical specs -> shardings ->
  ``jax.jit(init_fn, out_shardings=...)``; never materialised unsharded on the host;
* ``abstract(init_fn, *args)`` -- the same shapes and shardings as ``jax.ShapeDtypeStruct`` s, nothing allocated
  (for restoring checkpoints onto this mesh, ahead-of-time lowering and ``memory_analysis``);
* ``partition(fn, in_shardings, out_shardings, donate_argnums)`` -- ``jax.jit`` with explicit shardings, run
  under ``jax.set_mesh`` and the logical-axis rules;
* ``gather(tree)`` -- global arrays -> full numpy arrays on every process (metrics, evaluation outputs, tests).

Models never name physical axes: only the logical ones, mapped by ``rules`` (merged over
:data:`jaxrec.parallel.mesh.DEFAULT_RULES`; rules naming axes the mesh lacks mean "replicated").
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)


class Partitioner:
    def __init__(self, mesh: Mesh | None = None, rules=mesh_lib.DEFAULT_RULES):
        self.mesh = mesh if mesh is not None else mesh_lib.make_mesh()
        self.rules = mesh_lib.rules_for_mesh(mesh_lib.merge_rules(rules), self.mesh)
        self.data_sharding = mesh_lib.batch_sharding(self.mesh, self.rules)
        self.replicated = mesh_lib.replicated(self.mesh)

    @classmethod
    def from_config(cls, mesh_cfg=None, devices=None) -> "Partitioner":
        """From the ``mesh`` config group (``axes``, ``rules``); None = data parallel over all devices."""
        return cls(mesh_lib.mesh_from_config(mesh_cfg, devices), mesh_lib.rules_from_config(mesh_cfg))

    def __repr__(self) -> str:
        return f"Partitioner({mesh_lib.describe(self.mesh)}, rules={self.rules})"

    # ------------------------------------------------------------------------------------------ inputs
    @property
    def batch_axes(self) -> tuple[str, ...]:
        axis = self.data_sharding.spec[0] if len(self.data_sharding.spec) else None
        return () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)

    @property
    def num_data_shards(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.batch_axes)

    def check_batch_size(self, global_batch_size: int) -> None:
        if global_batch_size % self.num_data_shards:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the {self.num_data_shards} "
                             f"data-parallel shards of the mesh {dict(self.mesh.shape)}")
        if global_batch_size % jax.process_count():
            raise ValueError(f"batch size {global_batch_size} is not divisible by the {jax.process_count()} "
                             f"processes (each reads batch_size / process_count rows)")

    def shard_inputs(self, batch: Any) -> Any:
        """Process-local numpy batch (leading dim = local rows) -> globally sharded jax arrays.

        With P processes each passes its own ``global_batch / P`` rows; the global array is their concatenation
        in process order (the order of the ``data`` axis over processes).
        """

        def place(x):
            x = np.asarray(x)
            if x.ndim == 0:
                return jax.device_put(x, self.replicated)
            return jax.make_array_from_process_local_data(self.data_sharding, x)

        return jax.tree.map(place, batch)

    # ------------------------------------------------------------------------------------------ params
    def logical_specs(self, abstract_tree: Any) -> Any:
        """Logical PartitionSpecs of a (possibly boxed) abstract pytree; unboxed leaves are replicated."""
        return nn.get_partition_spec(abstract_tree)

    def shardings_of(self, abstract_tree: Any) -> Any:
        """NamedShardings of a (possibly boxed) abstract pytree.

        A dimension whose size does not divide by its mesh axes (a 41-row table over ``model=2``) is replicated
        along them instead -- ``jax.jit`` needs even shards -- and a warning names it; pad such tables
        (``jaxrec.nn.embeddings.ShardedEmbed(pad_to_multiple_of=...)``) to get their memory split.
        """
        specs = self.logical_specs(abstract_tree)
        shardings = nn.logical_to_mesh_sharding(specs, self.mesh, list(self.rules))
        shapes = nn.meta.unbox(abstract_tree)
        flat_sh, treedef = jax.tree_util.tree_flatten(shardings)
        flat_shapes = treedef.flatten_up_to(shapes)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(shardings)[0]]
        fitted = [_fit(sh, getattr(x, "shape", ()), path) for sh, x, path in zip(flat_sh, flat_shapes, paths)]
        return jax.tree_util.tree_unflatten(treedef, fitted)

    def sharding(self, logical_axes) -> NamedSharding:
        """NamedSharding of one array with the given logical axes, e.g. ``("vocab", "embed")``."""
        return mesh_lib.logical_sharding(logical_axes, self.mesh, self.rules)

    def abstract(self, init_fn: Callable[..., Any], *args) -> tuple[Any, Any]:
        """(``ShapeDtypeStruct`` pytree carrying the shardings ``init`` would produce, the shardings)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            boxed = jax.eval_shape(init_fn, *args)
        shardings = self.shardings_of(boxed)
        shapes = nn.meta.unbox(boxed)
        tree = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
        return tree, shardings

    def init(self, init_fn: Callable[..., Any], *args) -> tuple[Any, Any]:
        """Run ``init_fn(*args)`` born sharded. Returns (unboxed pytree, its shardings)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            abstract = jax.eval_shape(init_fn, *args)
        shardings = self.shardings_of(abstract)

        def init_unboxed(*a):
            return nn.meta.unbox(init_fn(*a))

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            out = jax.jit(init_unboxed, out_shardings=shardings)(*args)
        return out, shardings

    # ------------------------------------------------------------------------------------------ steps
    def partition(self, fn: Callable, in_shardings, out_shardings, donate_argnums=()) -> Callable:
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
        mesh, rules = self.mesh, self.rules

        def call(*args):
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                return jitted(*args)

        call.jitted = jitted
        call.lower = lambda *a: _lower(jitted, mesh, rules, *a)
        return call

    # ------------------------------------------------------------------------------------------ outputs
    def gather(self, tree: Any) -> Any:
        """Global (possibly multi-process) arrays -> full numpy arrays on every process.

        Single process: ``jax.device_get``. Several processes: ``process_allgather`` (a collective: every
        process must call it, in the same order).
        """
        if jax.process_count() == 1:
            return jax.device_get(tree)

        def one(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return np.asarray(multihost_utils.process_allgather(x, tiled=True))
            return np.asarray(x)

        return jax.tree.map(one, tree)

    def local_rows(self, tree: Any) -> Any:
        """Batch-sharded global arrays -> this process's rows as numpy (the inverse of ``shard_inputs``)."""
        if jax.process_count() == 1:
            return jax.device_get(tree)
        spec = self.data_sharding.spec
        return jax.tree.map(
            lambda x: np.asarray(multihost_utils.global_array_to_host_local_array(x, self.mesh, spec)
                                 if x.ndim else x), tree)


def _fit(sharding: NamedSharding, shape, path: str = "") -> NamedSharding:
    """Replicate the dimensions of ``shape`` that its mesh axes do not divide evenly."""
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    changed = False
    for d, axes in enumerate(spec[: len(shape)]):
        if axes is None:
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        n = math.prod(sharding.mesh.shape[a] for a in names)
        if shape[d] % n:
            log.warning("parameter %s %s: dimension %d (%d) does not split over mesh axes %s (%d shards); "
                        "replicated along it", path, tuple(shape), d, shape[d], names, n)
            spec[d] = None
            changed = True
    return NamedSharding(sharding.mesh, P(*spec[: len(shape)])) if changed else sharding


def _lower(jitted, mesh, rules, *args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jitted.lower(*args)
