"""Analytic FLOP counting (MaxText convention) and XLA's cost model.

Conventions: a matmul ``[M, K] @ [K, N]`` is ``2·M·K·N`` FLOPs; training = 3 × forward (backward ≈ 2 ×
forward); causal attention is counted at half (only the unmasked triangle is useful work) when
``causal_half=True``; elementwise ops, norms, softmax and gathers are not counted (they are memory-bound and
small next to the matmuls). ``xla_flops`` reads ``compiled.cost_analysis()`` -- which counts every element op
too, counts masked-out attention blocks in full, and counts a ``lax.scan`` body once -- so compare analytic
figures with XLA only on small unrolled configurations, allowing for that difference.
"""

from __future__ import annotations

from typing import Any, Callable

import jax


def dense(m: int, k: int, n: int) -> float:
    """FLOPs of ``[m, k] @ [k, n]``."""
    return 2.0 * m * k * n


def attention(q_len: int, k_len: int, num_heads: int, head_dim: int, *, causal_half: bool = False,
              v_dim: int | None = None) -> float:
    """FLOPs of scores ``QKᵀ`` plus ``softmax(·)V`` for one example (projections not included)."""
    v_dim = head_dim if v_dim is None else v_dim
    f = 2.0 * q_len * k_len * num_heads * head_dim + 2.0 * q_len * k_len * num_heads * v_dim
    return f / 2 if causal_half else f


def transformer_block(seq_len: int, d_model: int, num_heads: int, head_dim: int, ffn_hidden: int, *,
                      causal_half: bool = False, gated_ffn: bool = False) -> float:
    """Forward FLOPs of one self-attention block (QKV + output projections, attention, FFN) for one example."""
    inner = num_heads * head_dim
    proj = dense(seq_len, d_model, 3 * inner) + dense(seq_len, inner, d_model)
    ffn = dense(seq_len, d_model, ffn_hidden) * (2 if gated_ffn else 1) + dense(seq_len, ffn_hidden, d_model)
    return proj + attention(seq_len, seq_len, num_heads, head_dim, causal_half=causal_half) + ffn


def training(forward_flops: float) -> float:
    """Forward + backward ≈ 3 × forward."""
    return 3.0 * forward_flops


def xla_flops(fn: Callable, *args: Any, **kwargs: Any) -> float | None:
    """FLOPs XLA's cost model assigns to ``jax.jit(fn)(*args)`` (None where the backend has no cost model).

    ``args`` may be ``jax.ShapeDtypeStruct`` (nothing is allocated).
    """
    compiled = jax.jit(fn, **kwargs).lower(*args).compile()
    cost = compiled.cost_analysis()
    if cost is None:
        return None
    if isinstance(cost, (list, tuple)):  # older JAX returned a list with one dict per computation
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])
