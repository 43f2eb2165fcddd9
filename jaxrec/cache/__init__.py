"""MARM's memory: a bounded device-resident store of per-(user, item) layer results.

:class:`~jaxrec.cache.store.CacheStore` -- set-associative, fixed capacity, jit-able batched
``read(keys) -> (values, hit)`` / ``write(keys, values) -> store``, oldest-write eviction, hit/miss counters,
save/restore (orbax). The benchmark of FLOPs versus cache size is :func:`jaxrec.cache.bench.run`.
"""

from jaxrec.cache.store import STAT_NAMES, CacheStore, entry_bytes, hash_keys

__all__ = ["CacheStore", "STAT_NAMES", "hash_keys", "entry_bytes"]
