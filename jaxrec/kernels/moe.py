"""Mixture-of-experts kernels: gates, static task x expert masks, mixing, diagnostics.

Pure, jit-able functions without parameters, shared by MMoE, CGC, PLE, HoME, Moment&Cross and UniCDR+
(the expert and gate parameters live in ``jaxrec.nn``).

Layout conventions:

- ``B`` batch, ``T`` tasks (or gates), ``E`` experts, ``D`` expert output width, ``Hd`` expert hidden width.
- **Expert outputs are stacked expert-second: ``[B, E, D]``** (``nn.vmap(Expert, ..., out_axes=1)`` or
  ``jnp.stack(outs, axis=1)``). Every function here that takes per-expert activations uses that layout
  (``[B, E, D]``, or more generally ``[..., E, D]`` with the expert axis second to last).
- Gate logits and weights are ``[..., E]``; per-task gates are ``[B, T, E]``.
- Expert masks are static boolean NumPy arrays ``[T, E]`` (True = task ``t`` may use expert ``e``), built
  once from the configuration; they broadcast against gate logits ``[B, T, E]``.
- Gates are computed in float32 and return float32 weights; masked experts get exactly 0, and a row with
  every expert masked gets all zeros (never NaN).

Expert ordering used by the mask builders (one flat expert bank):
``[global shared | group 0 | group 1 | ... | task 0 | task 1 | ...]``; :func:`hierarchy_layout` returns the
slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels.attention import masked_softmax

Array = jax.Array

__all__ = [
    "softmax_gate",
    "top_k_gate",
    "mmoe_mask",
    "cgc_mask",
    "ple_mask",
    "hierarchy_layout",
    "hierarchy_mask",
    "combine",
    "zero_activation_fraction",
    "expert_output_scale",
    "gate_entropy",
    "usage_matrix",
]


# --------------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------------


def softmax_gate(logits: Array, mask: Array | np.ndarray | None = None) -> Array:
    """Dense softmax gate over the allowed experts.

    Args:
      logits: ``[..., E]`` gate logits (e.g. ``[B, T, E]``).
      mask: bool broadcastable to ``[..., E]`` (e.g. a static ``[T, E]`` expert mask), True = allowed.

    Returns:
      float32 weights ``[..., E]``: softmax over allowed experts, exactly 0 for masked ones; all zeros for a
      row with no allowed expert. Gradients are finite everywhere.
    """
    return masked_softmax(logits, mask, axis=-1)


def top_k_gate(
    logits: Array,
    k: int,
    mask: Array | np.ndarray | None = None,
    renormalize: bool = True,
) -> tuple[Array, Array]:
    """Sparse top-k gate.

    The ``k`` largest allowed logits are selected (ties go to the lowest expert index, as ``lax.top_k``).
    ``k`` is clipped to ``E``. When fewer than ``k`` experts are allowed, the extra slots point at masked
    experts and get weight 0.

    Args:
      logits: ``[..., E]``.
      k: static number of experts per row.
      mask: bool broadcastable to ``[..., E]``, True = allowed, or None.
      renormalize: True: softmax over the selected experts only (weights sum to 1, as in Mixtral / the
        "softmax of the top-k logits"); False: softmax over all allowed experts, then zeroed outside the
        top-k (weights sum to the selected experts' share, as in Switch / GShard gating).

    Returns:
      ``(weights [..., E] float32, dense, zeros outside the top-k; indices [..., min(k, E)] int32)``,
      indices sorted by decreasing logit.
    """
    logits = jnp.asarray(logits, jnp.float32)
    num_experts = logits.shape[-1]
    k = int(min(max(k, 0), num_experts))
    if mask is not None:
        mask = jnp.broadcast_to(jnp.asarray(mask).astype(bool), logits.shape)
        ranked = jnp.where(mask, logits, -jnp.inf)
    else:
        ranked = logits
    _, indices = jax.lax.top_k(ranked, k)
    selected = jnp.sum(jax.nn.one_hot(indices, num_experts, dtype=jnp.int32), axis=-2) > 0  # [..., E]
    if mask is not None:
        selected = selected & mask
    if renormalize:
        weights = masked_softmax(logits, selected)
    else:
        weights = jnp.where(selected, masked_softmax(logits, mask), 0.0)
    return weights, indices.astype(jnp.int32)


# --------------------------------------------------------------------------------------------------
# Static task x expert masks
# --------------------------------------------------------------------------------------------------


def mmoe_mask(num_experts: int, num_tasks: int) -> np.ndarray:
    """MMoE: every task gates over every expert. Returns ``[T, E]`` all True."""
    return np.ones((num_tasks, num_experts), bool)


def cgc_mask(num_shared: int, experts_per_task: int | Sequence[int], num_tasks: int | None = None) -> np.ndarray:
    """CGC (one PLE level): task ``t`` sees the shared experts and its own task-specific experts.

    Expert order: ``[shared (num_shared) | task 0 | task 1 | ...]``.

    Args:
      num_shared: number of shared experts.
      experts_per_task: int (same for each task; then ``num_tasks`` is required) or one count per task.
      num_tasks: number of tasks when ``experts_per_task`` is an int.

    Returns:
      ``[T, E]`` bool with ``E = num_shared + sum(experts_per_task)``.
    """
    return hierarchy_mask(num_shared, [], [None] * _num_tasks(experts_per_task, num_tasks), experts_per_task)


def ple_mask(
    num_shared: int,
    experts_per_task: int | Sequence[int],
    num_tasks: int | None = None,
    include_shared_gate: bool = True,
) -> np.ndarray:
    """PLE extraction level: the CGC task rows plus (optionally) a last row for the shared gate, which mixes
    *all* experts to form the next level's shared input.

    Returns:
      ``[T + 1, E]`` bool (``[T, E]`` without the shared gate); expert order as :func:`cgc_mask`.
    """
    m = cgc_mask(num_shared, experts_per_task, num_tasks)
    if include_shared_gate:
        m = np.concatenate([m, np.ones((1, m.shape[1]), bool)], axis=0)
    return m


def _num_tasks(experts_per_task, num_tasks):
    if isinstance(experts_per_task, (int, np.integer)):
        if num_tasks is None:
            raise ValueError("num_tasks is required when experts_per_task is an int")
        return int(num_tasks)
    if num_tasks is not None and num_tasks != len(experts_per_task):
        raise ValueError(f"num_tasks={num_tasks} but experts_per_task has {len(experts_per_task)} entries")
    return len(experts_per_task)


def hierarchy_layout(
    num_shared: int,
    experts_per_group: int | Sequence[int] | Mapping[Any, int],
    task_groups: Sequence[Any],
    experts_per_task: int | Sequence[int] = 0,
) -> dict:
    """Positions of each expert group in the flat HoME-style expert bank.

    Expert order: ``[global shared | group g_0 | group g_1 | ... | task 0 | task 1 | ...]``.

    Args:
      num_shared: global shared experts (seen by every task).
      experts_per_group: experts per meta-category (group). An int (same count for every group, groups are
        ``0 .. max(task_groups)``), a sequence (group id = index) or a mapping ``{group key: count}`` (order =
        mapping order; ``task_groups`` then holds keys such as ``"watch"``, ``"interact"``).
      task_groups: the group of each task, length ``T``; ``None`` = the task belongs to no group.
      experts_per_task: task-specific experts, an int or one count per task.

    Returns:
      dict with ``"shared"``: slice; ``"groups"``: dict ``{group key: slice}`` (in bank order);
      ``"tasks"``: list of ``T`` slices; ``"num_experts"``: ``E``.
    """
    if isinstance(experts_per_group, Mapping):
        group_counts = dict(experts_per_group)
    elif isinstance(experts_per_group, (int, np.integer)):
        ids = [g for g in task_groups if g is not None]
        n_groups = (max(ids) + 1) if ids else 0
        group_counts = {g: int(experts_per_group) for g in range(n_groups)}
    else:
        group_counts = dict(enumerate(experts_per_group))
    num_tasks = len(task_groups)
    if isinstance(experts_per_task, (int, np.integer)):
        task_counts = [int(experts_per_task)] * num_tasks
    else:
        task_counts = [int(c) for c in experts_per_task]
        if len(task_counts) != num_tasks:
            raise ValueError(f"experts_per_task has {len(task_counts)} entries for {num_tasks} tasks")
    for t, g in enumerate(task_groups):
        if g is not None and g not in group_counts:
            raise ValueError(f"task {t} names group {g!r}, not one of {list(group_counts)}")
    counts = [num_shared, *group_counts.values(), *task_counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"expert counts must be >= 0, got {counts}")
    start = 0

    def take(n):
        nonlocal start
        s = slice(start, start + n)
        start += n
        return s

    shared = take(int(num_shared))
    groups = {g: take(int(c)) for g, c in group_counts.items()}
    tasks = [take(c) for c in task_counts]
    return {"shared": shared, "groups": groups, "tasks": tasks, "num_experts": start}


def hierarchy_mask(
    num_shared: int,
    experts_per_group: int | Sequence[int] | Mapping[Any, int],
    task_groups: Sequence[Any],
    experts_per_task: int | Sequence[int] = 0,
) -> np.ndarray:
    """HoME hierarchy mask: task ``t`` sees the global shared experts, the experts of its own group
    (meta-category) and its own task-specific experts; nothing of other groups or other tasks.

    Arguments and expert order as :func:`hierarchy_layout`. Special cases: no groups gives CGC; the HoME
    meta layer (gates per category over shared + own-category experts) is
    ``hierarchy_mask(n_s, n_c, task_groups=list(categories))`` with ``experts_per_task=0``, plus an all-True
    row for the shared meta gate.

    Returns:
      ``[T, E]`` bool NumPy array (static).
    """
    layout = hierarchy_layout(num_shared, experts_per_group, task_groups, experts_per_task)
    mask = np.zeros((len(task_groups), layout["num_experts"]), bool)
    for t, g in enumerate(task_groups):
        mask[t, layout["shared"]] = True
        if g is not None:
            mask[t, layout["groups"][g]] = True
        mask[t, layout["tasks"][t]] = True
    return mask


# --------------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------------


def combine(expert_outputs: Array, weights: Array, precision=None) -> Array:
    """Gate-weighted sum of expert outputs.

    Args:
      expert_outputs: ``[B, E, D]`` (expert axis second).
      weights: ``[B, T, E]`` (one gate per task) or ``[B, E]`` (a single gate).

    Returns:
      ``[B, T, D]`` (or ``[B, D]``) ``= sum_e weights[b, t, e] * expert_outputs[b, e]``, in the promoted
      dtype of the two inputs.
    """
    if expert_outputs.ndim != 3:
        raise ValueError(f"expert_outputs must be [B, E, D], got {expert_outputs.shape}")
    if weights.ndim == 2:
        return jnp.einsum("be,bed->bd", weights, expert_outputs, precision=precision)
    if weights.ndim == 3:
        return jnp.einsum("bte,bed->btd", weights, expert_outputs, precision=precision)
    raise ValueError(f"weights must be [B, T, E] or [B, E], got {weights.shape}")


# --------------------------------------------------------------------------------------------------
# Diagnostics (HoME's expert collapse / degradation / underfitting)
# --------------------------------------------------------------------------------------------------


def _example_weights(x: Array, example_mask: Array | None, n_lead: int) -> Array:
    """float32 weights over the leading ``n_lead`` axes of ``x`` (1 where counted)."""
    lead = x.shape[:n_lead]
    if example_mask is None:
        return jnp.ones(lead, jnp.float32)
    return jnp.broadcast_to(jnp.asarray(example_mask, jnp.float32), lead)


def _masked_mean_per_expert(values: Array, example_mask: Array | None) -> Array:
    """Mean of ``values [..., E, H]`` over every axis except the expert axis; ``example_mask [...]``."""
    values = jnp.asarray(values, jnp.float32)
    n_lead = values.ndim - 2
    w = _example_weights(values, example_mask, n_lead)[..., None, None]  # [..., 1, 1]
    axes = tuple(range(n_lead)) + (values.ndim - 1,)
    total = jnp.sum(values * w, axis=axes)
    count = jnp.sum(jnp.broadcast_to(w, values.shape), axis=axes)
    return total / jnp.maximum(count, 1.0)


def zero_activation_fraction(
    expert_acts: Array, threshold: float = 0.0, example_mask: Array | None = None
) -> Array:
    """Fraction of activations ``<= threshold`` per expert (HoME's "dead ReLU" statistic).

    With ReLU activations and the default ``threshold = 0`` this is the fraction of exact zeros.

    Args:
      expert_acts: ``[B, E, Hd]`` (or ``[..., E, Hd]``) expert activations.
      threshold: activations ``<= threshold`` count as zero.
      example_mask: optional ``[B]`` (or ``[...]``) bool/0-1, examples to count (padding excluded).

    Returns:
      ``[E]`` float32 in ``[0, 1]`` (0 when no example is counted).
    """
    return _masked_mean_per_expert(jnp.asarray(expert_acts) <= threshold, example_mask)


def expert_output_scale(expert_outputs: Array, kind: str = "mean_abs", example_mask: Array | None = None) -> Array:
    """Per-expert output magnitude, to spot experts on very different scales.

    Args:
      expert_outputs: ``[B, E, D]`` (or ``[..., E, D]``).
      kind: ``"mean_abs"`` (default): mean of ``|x|``; ``"rms"``: ``sqrt(mean(x**2))``; both over examples and
        features.
      example_mask: optional ``[B]`` examples to count.

    Returns:
      ``[E]`` float32.
    """
    x = jnp.asarray(expert_outputs, jnp.float32)
    if kind == "mean_abs":
        return _masked_mean_per_expert(jnp.abs(x), example_mask)
    if kind == "rms":
        return jnp.sqrt(_masked_mean_per_expert(jnp.square(x), example_mask))
    raise ValueError(f"kind must be 'mean_abs' or 'rms', got {kind!r}")


def gate_entropy(weights: Array) -> Array:
    """Entropy of gate distributions, natural log, with ``0 * log 0 = 0``.

    Args:
      weights: ``[..., E]`` non-negative gate weights (rows normally sum to 1).

    Returns:
      ``[...]`` float32, ``-sum_e w log w`` (0 for one-hot or all-zero rows; ``log E`` for uniform rows).
    """
    w = jnp.asarray(weights, jnp.float32)
    pos = w > 0
    return -jnp.sum(jnp.where(pos, w * jnp.log(jnp.where(pos, w, 1.0)), 0.0), axis=-1)


def usage_matrix(weights: Array, example_mask: Array | None = None) -> Array:
    """Mean gate weight per task per expert (which tasks actually use which experts).

    Args:
      weights: ``[B, T, E]`` gate weights.
      example_mask: optional ``[B]`` bool/0-1, examples to average over.

    Returns:
      ``[T, E]`` float32; zeros when no example is counted.
    """
    w = jnp.asarray(weights, jnp.float32)
    m = _example_weights(w, example_mask, 1)  # [B]
    return jnp.einsum("b,bte->te", m, w) / jnp.maximum(jnp.sum(m), 1.0)
