"""Dropout masks: JAX's ``threefry`` Bernoulli draw, or a counter-based hash that is ~100x cheaper on CPU.

Dropout is a large share of a small model's CPU train step: ``jax.random.bernoulli`` runs the 20-round
threefry2x32 cipher per element (about 20 ns per element on one core here, ``benchmarks/bench_c2dsr.py``), and
C2DSR draws ~50M of them per step (three 36k x 256 item tables for the GCN plus five encoder passes). The
``"hash"`` implementation instead derives two 32-bit words from the key once (one threefry call) and maps each
element's *flat index* through a stateless integer hash (two rounds of the ``lowbias32`` finaliser of
C. Wellons' hash-prospector, seeded by the two words); the top 24 bits are compared with
``round(keep_prob * 2**24)``, so an element is kept with probability ``round(keep_prob * 2**24) / 2**24``
(within 6e-8 of ``keep_prob``). Two properties follow that a cipher stream does not give for free:

* it is a pure function of ``(key, index)``: the mask of any subset of elements (e.g. only the table rows a
  batch reaches, :func:`jaxrec.kernels.graph.c2dsr_propagate_rows`) equals the corresponding part of the full
  mask -- pass ``index`` explicitly;
* its cost is a handful of vectorised integer ops per element.

It is not a cryptographic generator; tests/test_dropout.py checks the keep rate, independence of
neighbouring elements and of different keys. ``"threefry"`` (default everywhere) is bit-identical to
``flax.linen.Dropout`` / ``jax.random.bernoulli``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["IMPLS", "hash_bits", "keep_mask", "dropout", "check_impl"]

IMPLS = ("threefry", "hash")
_GOLDEN = np.uint32(0x9E3779B9)


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"dropout impl: expected one of {IMPLS}, got {impl!r}")
    return impl


def _lowbias32(x):
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_bits(key, index):
    """32 pseudo-random bits per element of ``index`` (uint32 array of flat element indices), a pure function of
    ``(key, index)``: ``lowbias32(lowbias32(index * φ + s0) ^ s1)`` with ``(s0, s1)`` drawn from ``key``."""
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    x = jnp.asarray(index, jnp.uint32) * _GOLDEN + seeds[0]
    return _lowbias32(_lowbias32(x) ^ seeds[1])


def _threshold(keep_prob: float):
    return jnp.uint32(min(int(round(float(keep_prob) * (1 << 24))), 1 << 24))


def keep_mask(key, shape, keep_prob: float, impl: str = "threefry", index=None):
    """Bool keep mask of ``shape`` with ``P(True) = keep_prob``.

    ``impl="threefry"``: ``jax.random.bernoulli(key, keep_prob, shape)`` (``index`` not allowed). ``"hash"``:
    :func:`hash_bits` of ``index`` (default: the row-major flat index of each element of ``shape``, which must
    have fewer than 2**32 elements); an explicit ``index`` (uint32, broadcast to ``shape``) selects elements of
    a larger virtual array, e.g. ``row * d + col`` for the rows of a ``[V, d]`` table.
    """
    check_impl(impl)
    shape = tuple(shape)
    if impl == "threefry":
        if index is not None:
            raise ValueError("keep_mask: index= needs impl='hash' (a threefry draw is not indexable)")
        return jax.random.bernoulli(key, keep_prob, shape)
    if index is None:
        size = int(np.prod(shape, dtype=np.int64))
        if size >= 1 << 32:
            raise ValueError(f"keep_mask(impl='hash'): {size} elements, at most 2**32 - 1 can be indexed")
        index = jax.lax.iota(jnp.uint32, size).reshape(shape) if size else jnp.zeros(shape, jnp.uint32)
    else:
        index = jnp.broadcast_to(jnp.asarray(index, jnp.uint32), shape)
    return (hash_bits(key, index) >> 8) < _threshold(keep_prob)


def dropout(x, rate: float, key, *, deterministic: bool = False, impl: str = "threefry", index=None):
    """Inverted dropout: ``where(keep, x / (1 - rate), 0)`` (``flax.linen.Dropout``'s formula); identity when
    ``deterministic`` or ``rate == 0``, zeros when ``rate == 1``. ``index``: as :func:`keep_mask` (hash only)."""
    check_impl(impl)
    if deterministic or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    if key is None:
        raise ValueError("dropout: a PRNG key is required when dropout is active")
    keep_prob = 1.0 - rate
    keep = keep_mask(key, x.shape, keep_prob, impl, index=index)
    return jax.lax.select(keep, x / keep_prob, jnp.zeros_like(x))
