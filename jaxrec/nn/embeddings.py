"""Embedding tables row-sharded over a mesh axis, with a lookup equal to the unsharded one.

A recommender's item/user tables dominate its memory (10M items x 64 floats = 2.56 GB); with the logical rule
``("vocab", "model")`` each of the N devices of the ``model`` mesh axis holds ``V / N`` rows, so per-device
table memory falls as 1/N. Two lookups, identical in value:

* ``lookup="auto"`` -- ``jnp.take(table, ids)``, the same as ``flax.linen.Embed``: the SPMD partitioner (Shardy)
  sees the table's row sharding and partitions the gather itself (masked local gather + all-reduce over the
  ``model`` axis). Needs an ``AxisType.Auto`` mesh (see :mod:`jaxrec.parallel.mesh`).
* ``lookup="shard_map"`` -- :func:`sharded_lookup`, the same algorithm written out with ``jax.shard_map``:
  shard ``k`` holds rows ``[k·V/N, (k+1)·V/N)``, looks up the ids it owns (others masked to zero) and a ``psum``
  over the ``model`` axis assembles the rows. Explicit, independent of partitioner heuristics, and
  differentiable (the table gradient stays row-sharded: each shard scatters only into its own rows).

Neither lookup ever gathers the whole table onto one device. The table's logical axes are ``("vocab",
"embed")``; models name only those, the mesh axis comes from the config's ``logical_axis_rules``.

Shapes: ``table [V, D]``, ``ids [B, ...]`` int -> ``[B, ..., D]``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Array = jax.Array

__all__ = ["sharded_lookup", "ShardedEmbed", "padded_rows", "lookup_memory_analysis"]


def padded_rows(num_embeddings: int, multiple: int) -> int:
    """``num_embeddings`` rounded up to a multiple of ``multiple`` (rows a table needs to split evenly)."""
    multiple = max(int(multiple), 1)
    return -(-int(num_embeddings) // multiple) * multiple


def _axis_size(mesh, axis) -> int:
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    return math.prod(mesh.shape[a] for a in names)


def sharded_lookup(table: Array, ids: Array, *, vocab_axis: str | Sequence[str] = "model",
                   batch_axis: str | Sequence[str] | None = None, mesh: Mesh | None = None) -> Array:
    """Row-sharded gather with ``jax.shard_map``: ``table [V, D]``, ``ids [B, ...]`` -> ``[B, ..., D]``.

    Each shard of ``vocab_axis`` holds ``V / N`` consecutive rows, gathers the ids in its range (zeros for the
    others) and the results are summed over ``vocab_axis`` (``psum``); every id is owned by exactly one shard,
    so the sum is the row itself. Ids outside ``[0, V)`` give zero rows (``jnp.take`` would clip them).

    Args:
      table: ``[V, D]``, ``V`` divisible by the size of ``vocab_axis`` (pad it: :func:`padded_rows`).
      ids: integer ``[B, ...]``.
      vocab_axis: mesh axis (or axes) the rows are split over.
      batch_axis: mesh axis the leading dimension of ``ids`` (and of the result) is split over, or None
        (replicated). Ignored when ``B`` does not divide evenly.
      mesh: the mesh; default the one set by ``jax.set_mesh`` (what ``Partitioner`` does around every step).
    """
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        raise ValueError("sharded_lookup: no mesh (pass mesh= or call inside jax.set_mesh(mesh))")
    n = _axis_size(mesh, vocab_axis)
    if table.shape[0] % n:
        raise ValueError(f"sharded_lookup: {table.shape[0]} table rows do not split over the {n} shards of mesh "
                         f"axis {vocab_axis!r}; pad the table to {padded_rows(table.shape[0], n)} rows "
                         f"(ShardedEmbed(pad_to_multiple_of=...))")
    if batch_axis is not None and (ids.ndim == 0 or ids.shape[0] % _axis_size(mesh, batch_axis)):
        batch_axis = None
    ids_spec = P(batch_axis, *([None] * (ids.ndim - 1))) if ids.ndim else P()
    out_spec = P(batch_axis, *([None] * ids.ndim)) if ids.ndim else P(None)
    rows_per_shard = table.shape[0] // n

    def local_lookup(local_table, local_ids):
        start = lax.axis_index(vocab_axis) * rows_per_shard
        local = local_ids - start
        owned = (local >= 0) & (local < rows_per_shard)
        rows = jnp.take(local_table, jnp.where(owned, local, 0), axis=0)
        rows = jnp.where(owned[..., None], rows, jnp.zeros((), rows.dtype))
        return lax.psum(rows, vocab_axis)

    return jax.shard_map(local_lookup, mesh=mesh, in_specs=(P(vocab_axis, None), ids_spec),
                         out_specs=out_spec)(table, ids)


def _mesh_axis_of(logical: str):
    """The mesh axis the active logical rules map ``logical`` to, if the active mesh has it (else None)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None, mesh
    spec = nn.logical_to_mesh_axes((logical,))
    axis = spec[0] if len(spec) else None
    if axis is None:
        return None, mesh
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    if not all(a in mesh.shape for a in names):
        return None, mesh
    return axis, mesh


class ShardedEmbed(nn.Module):
    """Embedding table with logical axes ``("vocab", "embed")`` -- a drop-in for ``nn.Embed``.

    Attributes:
      num_embeddings: rows ``V`` addressable by ids ``0 .. V-1``.
      features: ``D``.
      lookup: ``"auto"`` (``jnp.take``; the partitioner shards the gather) or ``"shard_map"``
        (:func:`sharded_lookup` over the mesh axis the rules give ``"vocab"``; plain ``take`` when that axis is
        absent or has size 1).
      pad_to_multiple_of: allocate ``padded_rows(V, m)`` rows so the table splits evenly over ``m`` shards (pick
        the largest ``model`` axis you will use, e.g. 512); padding rows are never looked up and ``attend``
        drops them.
      logical_axes: the table's logical axes.
      embedding_init, dtype, param_dtype: as ``nn.Embed``.

    The parameter is called ``embedding``, as in ``nn.Embed``, so checkpoints of either load into the other
    (when unpadded).
    """

    num_embeddings: int
    features: int
    lookup: str = "auto"
    pad_to_multiple_of: int = 1
    logical_axes: tuple[str | None, str | None] = ("vocab", "embed")
    embedding_init: Callable = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.lookup not in ("auto", "shard_map"):
            raise ValueError(f"ShardedEmbed.lookup: expected 'auto' or 'shard_map', got {self.lookup!r}")
        rows = padded_rows(self.num_embeddings, self.pad_to_multiple_of)
        self.embedding = self.param("embedding", nn.with_logical_partitioning(self.embedding_init,
                                                                              self.logical_axes),
                                    (rows, self.features), self.param_dtype)

    def __call__(self, ids: Array) -> Array:
        """``ids [B, ...]`` int -> ``[B, ..., D]``."""
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"ShardedEmbed: ids must be integers, got {ids.dtype}")
        table = jnp.asarray(self.embedding, self.dtype or self.param_dtype)
        if self.lookup == "shard_map":
            vocab_axis, mesh = _mesh_axis_of(self.logical_axes[0])
            if vocab_axis is not None and _axis_size(mesh, vocab_axis) > 1:
                batch_axis, _ = _mesh_axis_of("batch")
                if batch_axis is not None and set(_names(batch_axis)) & set(_names(vocab_axis)):
                    batch_axis = None
                return sharded_lookup(table, ids, vocab_axis=vocab_axis, batch_axis=batch_axis, mesh=mesh)
        return jnp.take(table, ids, axis=0)

    def attend(self, query: Array) -> Array:
        """``query [..., D]`` -> ``[..., V]`` scores against every (unpadded) row."""
        table = jnp.asarray(self.embedding, self.dtype or self.param_dtype)
        scores = jnp.einsum("...d,vd->...v", query.astype(table.dtype), table)
        return scores[..., : self.num_embeddings]


def _names(axis) -> tuple[str, ...]:
    return (axis,) if isinstance(axis, str) else tuple(axis)


def lookup_memory_analysis(num_rows: int, features: int, mesh: Mesh, *, batch: int = 1024,
                           vocab_axis: str = "model", lookup: str = "shard_map", train: bool = True,
                           dtype=jnp.float32) -> dict[str, int]:
    """Per-device bytes of a table lookup (and, if ``train``, an SGD update of the table) compiled for ``mesh``.

    Nothing is allocated: the table and ids are ``jax.ShapeDtypeStruct`` s; the program is lowered, compiled and
    its ``memory_analysis()`` read. Returns ``argument``, ``output``, ``temp``, ``alias`` and ``total`` bytes
    (``total = argument + output + temp - alias``), per device.
    """
    table_sharding = NamedSharding(mesh, P(vocab_axis if vocab_axis in mesh.shape else None, None))
    ids_sharding = NamedSharding(mesh, P())
    table = jax.ShapeDtypeStruct((num_rows, features), dtype, sharding=table_sharding)
    ids = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=ids_sharding)

    def look(t, i):
        if lookup == "shard_map" and vocab_axis in mesh.shape and mesh.shape[vocab_axis] > 1:
            return sharded_lookup(t, i, vocab_axis=vocab_axis, mesh=mesh)
        return jnp.take(t, i, axis=0)

    if train:
        def fn(t, i):
            g = jax.grad(lambda t_: jnp.sum(look(t_, i) ** 2))(t)
            return t - 0.1 * g

        jitted = jax.jit(fn, out_shardings=table_sharding, donate_argnums=0)
    else:
        jitted = jax.jit(look, out_shardings=NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):
        compiled = jitted.lower(table, ids).compile()
    m = compiled.memory_analysis()
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "temp": int(m.temp_size_in_bytes), "alias": int(m.alias_size_in_bytes)}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out
