"""A bounded, device-resident key -> value store with batched, jit-able reads and writes (MARM's memory).

:class:`CacheStore` is a pytree (``flax.struct.dataclass``): it can be passed through ``jax.jit`` (donate it
to update in place), kept in ``TrainState.model_state`` (then orbax saves and restores it with every
checkpoint, as a part of the state), or saved on its own with :meth:`CacheStore.save` /
:meth:`CacheStore.restore`.

Layout (``S`` sets, ``W`` ways, capacity ``S·W`` entries, ``K`` key components, value shape ``V...``)::

    keys    int32 [S, W, K]   the full key of each slot (compared exactly: no false hits)
    valid   bool  [S, W]      slot holds an entry
    stamp   int32 [S, W]      write time of the entry (the store's clock, or a caller-given stamp)
    values  dtype [S, W, V...] e.g. MARM: [S, W, L, 2, H, Dh] (per-layer K/V) or [S, W, L-1, d] (layer outputs)
    clock   int32 []          number of write batches so far
    stats   dict of int32 []  reads, hits, misses, writes, inserts, updates, evictions, dropped

A key is ``K`` int32 components, e.g. ``(user, item)`` or ``(user, item, time)`` -- the layer axis of a
multi-layer model lives *inside* the value (``values[..., layer, ...]``), so one read fetches every layer.

Placement: **set-associative hashing**. A key's set is ``hash(key) mod S`` (a multiplicative hash mixing all
components); it may sit in any of the set's ``W`` ways. ``W = 1`` is a direct-mapped cache.

Eviction (documented behaviour, tested): a write of a key already present overwrites it in place (an
*update*; its stamp is refreshed). A new key takes a free way of its set, else evicts the way with the
**oldest stamp** (least recently *written*; reads do not refresh stamps, so ``read`` stays a pure function).
Within one write batch: duplicate keys keep their **last** occurrence; ways updated by this batch are never
evicted by it; when more new keys land in one set than it has evictable ways, the **latest** ones (by batch
position) are stored and the earlier ones are dropped (counted in ``stats["dropped"]``). Results never depend
on XLA's scatter order.

Reads: :meth:`read` returns ``(values, hit)``; a key that was never written (or was evicted, or is masked out)
is a **miss**: ``hit = False`` and its values are exactly zero -- never garbage, never NaN. :meth:`count_reads`
adds the reads, hits and misses of one lookup to the counters (:meth:`lookup` = both). Masked-out lookups
(padding) are neither read nor counted.

Counters are int32 (they wrap after 2^31 events); :meth:`stats_dict` returns them as Python ints plus the hit
rate and occupancy.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["CacheStore", "STAT_NAMES", "hash_keys", "entry_bytes"]

STAT_NAMES = ("reads", "hits", "misses", "writes", "inserts", "updates", "evictions", "dropped")
_EMPTY_KEY = -1  # key component of an empty slot (never matches: lookups of negative keys are masked)


def hash_keys(keys: Array, num_sets: int) -> Array:
    """Set index ``[...]`` of int32 keys ``[..., K]``: a multiplicative (Fibonacci / murmur-finaliser) hash of all
    components, modulo ``num_sets``."""
    k = jnp.asarray(keys).astype(jnp.uint32)
    h = jnp.full(k.shape[:-1], 0x811C9DC5, jnp.uint32)
    for c in range(k.shape[-1]):
        h = (h ^ k[..., c]) * jnp.uint32(0x9E3779B1)
        h = h ^ (h >> 16)
    h = (h ^ (h >> 13)) * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 16)
    return (h % jnp.uint32(num_sets)).astype(jnp.int32)


def entry_bytes(value_shape: Sequence[int], dtype, key_size: int) -> int:
    """Bytes per slot: values + key components (int32) + valid flag (1 byte) + stamp (int32)."""
    return int(np.prod(value_shape, dtype=np.int64)) * np.dtype(dtype).itemsize + 4 * key_size + 1 + 4


@flax.struct.dataclass
class CacheStore:
    """Fixed-capacity set-associative store (see the module docstring for layout, eviction and misses)."""

    keys: Array
    valid: Array
    stamp: Array
    values: Array
    clock: Array
    stats: dict

    # ------------------------------------------------------------------------------------------ creation
    @classmethod
    def create(cls, capacity: int, value_shape: Sequence[int], *, ways: int = 8, key_size: int = 2,
               dtype: Any = jnp.float32) -> "CacheStore":
        """An empty store with at least ``capacity`` slots (``ceil(capacity / ways)`` sets of ``ways``)."""
        if int(capacity) < 1 or int(ways) < 1 or int(key_size) < 1:
            raise ValueError(f"CacheStore.create: capacity, ways and key_size must be >= 1, got "
                             f"{capacity}, {ways}, {key_size}")
        ways = min(int(ways), int(capacity))
        sets = int(math.ceil(int(capacity) / ways))
        value_shape = tuple(int(s) for s in value_shape)
        return cls(
            keys=jnp.full((sets, ways, int(key_size)), _EMPTY_KEY, jnp.int32),
            valid=jnp.zeros((sets, ways), bool),
            stamp=jnp.zeros((sets, ways), jnp.int32),
            values=jnp.zeros((sets, ways) + value_shape, dtype),
            clock=jnp.zeros((), jnp.int32),
            stats={k: jnp.zeros((), jnp.int32) for k in STAT_NAMES},
        )

    # ------------------------------------------------------------------------------------------ shape info
    @property
    def num_sets(self) -> int:
        return int(self.valid.shape[0])

    @property
    def ways(self) -> int:
        return int(self.valid.shape[1])

    @property
    def capacity(self) -> int:
        return self.num_sets * self.ways

    @property
    def key_size(self) -> int:
        return int(self.keys.shape[-1])

    @property
    def value_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[2:])

    def nbytes(self) -> int:
        """Bytes held by the arrays (values, keys, flags, stamps; counters excluded)."""
        return int(sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in (self.keys, self.valid, self.stamp,
                                                                          self.values)))

    def value_bytes(self) -> int:
        """Bytes of the value array alone (the "cache size" of the MARM scaling law, at full occupancy)."""
        return int(np.prod(self.values.shape)) * self.values.dtype.itemsize

    # ------------------------------------------------------------------------------------------ internals
    def _check_keys(self, keys) -> Array:
        keys = jnp.asarray(keys)
        if keys.ndim < 1 or keys.shape[-1] != self.key_size:
            raise ValueError(f"CacheStore: keys must have shape [..., {self.key_size}] (one int per key component), "
                             f"got {keys.shape}")
        if not jnp.issubdtype(keys.dtype, jnp.integer):
            raise ValueError(f"CacheStore: keys must be integers, got {keys.dtype}")
        return keys.astype(jnp.int32)

    def _find(self, keys: Array) -> tuple[Array, Array, Array]:
        """``keys [N, K]`` -> (set [N], way [N] of the match (0 if none), found [N])."""
        s = hash_keys(keys, self.num_sets)
        slot_keys = self.keys[s]  # [N, W, K]
        match = jnp.all(slot_keys == keys[:, None, :], axis=-1) & self.valid[s]  # [N, W]
        found = jnp.any(match, axis=-1)
        way = jnp.argmax(match, axis=-1).astype(jnp.int32)
        return s, way, found

    # ------------------------------------------------------------------------------------------ reads
    def read(self, keys, mask=None) -> tuple[Array, Array]:
        """Batched lookup (pure; does not touch the counters).

        Args:
          keys: int ``[..., K]``.
          mask: bool ``[...]`` or None; False entries are not looked up (``hit = False``, zeros). Keys with a
            negative component are treated as masked.

        Returns:
          ``values [..., V...]`` (zeros where missed, in the store's dtype) and ``hit`` bool ``[...]``.
        """
        keys = self._check_keys(keys)
        lead = keys.shape[:-1]
        flat = keys.reshape(-1, self.key_size)
        s, way, found = self._find(flat)
        ok = found & jnp.all(flat >= 0, axis=-1)
        if mask is not None:
            ok = ok & jnp.broadcast_to(jnp.asarray(mask, bool), lead).reshape(-1)
        vals = self.values[s, way]  # [N, V...]
        vals = jnp.where(ok.reshape((-1,) + (1,) * len(self.value_shape)), vals, jnp.zeros((), vals.dtype))
        return vals.reshape(lead + self.value_shape), ok.reshape(lead)

    def count_reads(self, hit, mask=None) -> "CacheStore":
        """Adds one lookup's ``reads`` (unmasked entries), ``hits`` and ``misses`` to the counters."""
        hit = jnp.asarray(hit, bool)
        m = jnp.ones(hit.shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), hit.shape)
        reads = jnp.sum(m, dtype=jnp.int32)
        hits = jnp.sum(hit & m, dtype=jnp.int32)
        st = dict(self.stats)
        st["reads"] = st["reads"] + reads
        st["hits"] = st["hits"] + hits
        st["misses"] = st["misses"] + (reads - hits)
        return self.replace(stats=st)

    def lookup(self, keys, mask=None) -> tuple[Array, Array, "CacheStore"]:
        """:meth:`read` plus :meth:`count_reads`: ``(values, hit, store with updated counters)``."""
        keys = self._check_keys(keys)
        valid_key = jnp.all(keys >= 0, axis=-1)
        m = valid_key if mask is None else valid_key & jnp.asarray(mask, bool)
        vals, hit = self.read(keys, m)
        return vals, hit, self.count_reads(hit, m)

    # ------------------------------------------------------------------------------------------ writes
    def write(self, keys, values, mask=None, stamp=None) -> "CacheStore":
        """Batched insert/overwrite with the documented eviction policy.

        Args:
          keys: int ``[N, K]`` (or ``[..., K]``; flattened).
          values: ``[N, V...]`` (cast to the store's dtype).
          mask: bool ``[N]`` or None; False rows are not written. Keys with a negative component are skipped.
          stamp: int32 scalar or ``[N]`` write times (e.g. event time); default ``clock + 1``. Eviction
            removes the oldest stamp first.

        Returns:
          The new store (``clock += 1``).
        """
        keys = self._check_keys(keys)
        lead = keys.shape[:-1]
        n = int(np.prod(lead)) if lead else 1
        flat = keys.reshape(n, self.key_size)
        vals = jnp.asarray(values).reshape((n,) + self.value_shape).astype(self.values.dtype)
        active = jnp.all(flat >= 0, axis=-1)
        if mask is not None:
            active = active & jnp.broadcast_to(jnp.asarray(mask, bool), lead).reshape(n)
        clock = self.clock + 1
        st_new = (jnp.broadcast_to(clock, (n,)) if stamp is None
                  else jnp.broadcast_to(jnp.asarray(stamp, jnp.int32), lead).reshape(n))
        pos = jnp.arange(n, dtype=jnp.int32)

        # 1. duplicates inside the batch: keep the last active occurrence of each key.
        sort_cols = [pos] + [flat[:, c] for c in reversed(range(self.key_size))] + [~active]
        order = jnp.lexsort(sort_cols)  # by (inactive last), key, then position
        sk, sa = flat[order], active[order]
        same_next = jnp.concatenate([jnp.all(sk[1:] == sk[:-1], axis=-1) & sa[1:], jnp.zeros((1,), bool)])
        superseded = jnp.zeros((n,), bool).at[order].set(same_next)
        active = active & ~superseded

        # 2. keys already present -> update in place.
        s, way_hit, found = self._find(flat)
        upd = active & found
        new = active & ~found
        S, W = self.num_sets, self.ways
        touched = jnp.zeros((S, W), bool).at[jnp.where(upd, s, S), way_hit].set(True, mode="drop")

        # 3. new keys: rank within their set, latest first; the r-th gets the r-th eviction candidate.
        rsort = jnp.lexsort([-pos, jnp.where(new, s, S)])  # by set (non-new last), then latest first
        sorted_set = jnp.where(new, s, S)[rsort]
        first = jnp.searchsorted(sorted_set, sorted_set, side="left").astype(jnp.int32)
        rank = jnp.zeros((n,), jnp.int32).at[rsort].set(jnp.arange(n, dtype=jnp.int32) - first)
        big = jnp.iinfo(jnp.int32).max
        # eviction order within each written set (only those rows are gathered: O(N·W), not O(capacity)):
        # free ways, then oldest stamp; ways touched by this batch are never victims.
        t_rows, v_rows, st_rows = touched[s], self.valid[s], self.stamp[s]  # [N, W]
        prio = jnp.where(t_rows, big, jnp.where(v_rows, st_rows, jnp.iinfo(jnp.int32).min))
        cand = jnp.argsort(prio, axis=-1, stable=True).astype(jnp.int32)  # [N, W]
        r_safe = jnp.clip(rank, 0, W - 1)
        victim = jnp.take_along_axis(cand, r_safe[:, None], axis=1)[:, 0]
        ok_new = new & (rank < W) & ~jnp.take_along_axis(t_rows, victim[:, None], axis=1)[:, 0]
        dropped = new & ~ok_new
        evicted = ok_new & jnp.take_along_axis(v_rows, victim[:, None], axis=1)[:, 0]

        do = upd | ok_new
        way = jnp.where(upd, way_hit, victim)
        row = jnp.where(do, s, S)  # out of range -> dropped by the scatter
        keys_a = self.keys.at[row, way].set(flat, mode="drop")
        valid_a = self.valid.at[row, way].set(True, mode="drop")
        stamp_a = self.stamp.at[row, way].set(st_new, mode="drop")
        values_a = self.values.at[row, way].set(vals, mode="drop")

        st = dict(self.stats)
        i32 = lambda x: jnp.sum(x, dtype=jnp.int32)  # noqa: E731
        st["writes"] = st["writes"] + i32(active)
        st["inserts"] = st["inserts"] + i32(ok_new)
        st["updates"] = st["updates"] + i32(upd)
        st["evictions"] = st["evictions"] + i32(evicted)
        st["dropped"] = st["dropped"] + i32(dropped)
        return self.replace(keys=keys_a, valid=valid_a, stamp=stamp_a, values=values_a, clock=clock, stats=st)

    # ------------------------------------------------------------------------------------------ maintenance
    def clear(self) -> "CacheStore":
        """Same shapes, no entries, counters kept."""
        return self.replace(keys=jnp.full_like(self.keys, _EMPTY_KEY), valid=jnp.zeros_like(self.valid),
                            stamp=jnp.zeros_like(self.stamp), values=jnp.zeros_like(self.values))

    def reset_stats(self) -> "CacheStore":
        return self.replace(stats={k: jnp.zeros((), jnp.int32) for k in STAT_NAMES})

    def occupancy(self) -> Array:
        """Number of valid entries (int32 scalar)."""
        return jnp.sum(self.valid, dtype=jnp.int32)

    def stats_dict(self) -> dict:
        """Counters as Python ints, plus ``hit_rate`` (hits / reads; NaN before any read), ``occupancy``,
        ``capacity`` and ``value_bytes``."""
        st = {k: int(v) for k, v in jax.device_get(self.stats).items()}
        st["hit_rate"] = st["hits"] / st["reads"] if st["reads"] else math.nan
        st["occupancy"] = int(self.occupancy())
        st["capacity"] = self.capacity
        st["value_bytes"] = self.value_bytes()
        return st

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Saves the store with orbax (``StandardCheckpointer``) under ``directory`` (created; must not exist).

        Inside a training run the store usually lives in ``TrainState.model_state`` and is saved with every
        checkpoint by :class:`jaxrec.train.checkpoint.Checkpointer`; this is for stand-alone stores (serving).
        """
        import orbax.checkpoint as ocp

        path = pathlib.Path(directory).absolute()
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, self)
            ckptr.wait_until_finished()
        return path

    @classmethod
    def restore(cls, directory: str | os.PathLike, like: "CacheStore | None" = None) -> "CacheStore":
        """Restores a store written by :meth:`save`. ``like`` (a store of the same shapes, e.g.
        ``CacheStore.create(...)``) gives the target structure and shardings; without it the saved metadata is
        used."""
        import orbax.checkpoint as ocp

        path = pathlib.Path(directory).absolute()
        if not path.exists():
            raise FileNotFoundError(f"CacheStore.restore: {path} does not exist")
        with ocp.StandardCheckpointer() as ckptr:
            if like is not None:
                target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
                out = ckptr.restore(path, target)
            else:
                out = ckptr.restore(path)
        if isinstance(out, cls):
            return out
        return cls(keys=out["keys"], valid=out["valid"], stamp=out["stamp"], values=out["values"],
                   clock=out["clock"], stats=dict(out["stats"]))
