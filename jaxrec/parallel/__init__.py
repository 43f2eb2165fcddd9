"""Meshes, logical-axis shardings, the Partitioner and multi-host initialisation (the single place where
shardings are decided).

- :mod:`jaxrec.parallel.mesh` -- ``make_mesh``, ``mesh_from_config``, ``rules_from_config``, ``merge_rules``,
  ``rules_for_mesh``, ``logical_to_sharding``, ``logical_sharding``, ``batch_sharding``, ``DEFAULT_RULES``;
- :mod:`jaxrec.parallel.partitioner` -- ``Partitioner`` (``from_config``, ``shard_inputs``, ``init``,
  ``abstract``, ``partition``, ``gather``, ``local_rows``);
- :mod:`jaxrec.parallel.distributed` -- ``initialize``, ``add_multihost_args``, ``initialize_from_args``.

Nothing is imported here, so ``jaxrec.parallel.distributed`` can be imported (for its argparse flags) without
importing JAX.
"""
