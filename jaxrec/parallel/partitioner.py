"""Partitioner: owns input placement, sharded initialisation and the jitted step (RecML-style).

``Partitioner(mesh, rules)``:

* ``shard_inputs(batch)`` -- host (process-local) numpy batch -> global ``jax.Array`` sharded over the batch
  axis with ``jax.make_array_from_process_local_data`` (each process passes only its own rows);
* ``init(init_fn, *args)`` -- parameters born sharded: ``jax.eval_shape`` -> logical specs -> shardings ->
  ``jax.jit(init_fn, out_shardings=...)``; never materialised unsharded on the host;
* ``partition(fn, in_shardings, out_shardings, donate_argnums)`` -- ``jax.jit`` with explicit shardings.

Models never name physical axes: only the logical ones, mapped by ``rules``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec.parallel import mesh as mesh_lib


class Partitioner:
    def __init__(self, mesh: Mesh | None = None, rules=mesh_lib.DEFAULT_RULES):
        self.mesh = mesh if mesh is not None else mesh_lib.make_mesh()
        self.rules = tuple(tuple(r) for r in rules)
        self.data_sharding = mesh_lib.batch_sharding(self.mesh, self.rules)
        self.replicated = mesh_lib.replicated(self.mesh)

    @property
    def num_data_shards(self) -> int:
        axis = dict(self.rules).get("batch", "data")
        return self.mesh.shape[axis] if axis in self.mesh.shape else 1

    def check_batch_size(self, global_batch_size: int) -> None:
        if global_batch_size % self.num_data_shards:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the {self.num_data_shards} "
                             f"data-parallel shards of the mesh {dict(self.mesh.shape)}")

    def shard_inputs(self, batch: Any) -> Any:
        """Process-local numpy batch (leading dim = local rows) -> globally sharded jax arrays."""

        def place(x):
            x = np.asarray(x)
            if x.ndim == 0:
                return jax.device_put(x, self.replicated)
            return jax.make_array_from_process_local_data(self.data_sharding, x)

        return jax.tree.map(place, batch)

    def logical_specs(self, abstract_tree: Any) -> Any:
        """Logical PartitionSpecs of a (possibly boxed) abstract pytree; unboxed leaves are replicated."""
        return nn.get_partition_spec(abstract_tree)

    def shardings_of(self, abstract_tree: Any) -> Any:
        specs = self.logical_specs(abstract_tree)
        return nn.logical_to_mesh_sharding(specs, self.mesh, list(self.rules))

    def init(self, init_fn: Callable[..., Any], *args) -> tuple[Any, Any]:
        """Run ``init_fn(*args)`` born sharded. Returns (unboxed pytree, its shardings)."""
        abstract = jax.eval_shape(init_fn, *args)
        shardings = self.shardings_of(abstract)

        def init_unboxed(*a):
            return nn.meta.unbox(init_fn(*a))

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            out = jax.jit(init_unboxed, out_shardings=shardings)(*args)
        return out, shardings

    def partition(self, fn: Callable, in_shardings, out_shardings, donate_argnums=()) -> Callable:
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
        mesh, rules = self.mesh, self.rules

        def call(*args):
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                return jitted(*args)

        call.jitted = jitted
        call.lower = lambda *a: _lower(jitted, mesh, rules, *a)
        return call


def _lower(jitted, mesh, rules, *args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jitted.lower(*args)
