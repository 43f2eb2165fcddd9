"""Batched expert banks, feature-gates, gate networks and one generic multi-gate MoE level (Flax Linen).

The parameterised side of multi-gate mixture-of-experts models (MMoE, CGC, PLE, HoME); the gating itself --
masked softmax gates, self-gates, mixing -- is :mod:`jaxrec.kernels.moe` (one implementation for every model).

Every bank holds the parameters of its ``E`` experts stacked on a leading expert axis and computes all of them
with one ``einsum`` per layer (no Python loop over experts, no ``nn.vmap``):

- :class:`BatchedDense`: ``x [B, E, Din]`` (or ``[B, Din]`` shared by all experts) -> ``[B, E, F]`` with
  ``kernel [E, Din, F]`` and ``bias [E, F]``.
- :class:`ExpertBank`: per-expert MLP ``Din -> hidden... -> out_dim`` -> norm -> activation. The norm is
  BatchNorm with **per-expert statistics** (``nn.BatchNorm(axis=(-2, -1))`` on ``[B, E, H]``: mean/variance over
  the batch axis only, one (mean, var, scale, bias) per expert and unit, held in the ``batch_stats`` collection)
  or a per-expert LayerNorm, or none; activation Swish (SiLU) or ReLU. HoME's expert is ``MLP -> BN -> Swish``;
  the classic MMoE expert is ``MLP -> ReLU``.
- :class:`FeatureGate`: HoME's LoRA-style input gate ``x_k = x ⊙ 2·sigmoid(x B_k A_k)`` per expert (or per
  expert group), ``B_k [Din, r]`` zero-initialised (the gate is exactly 1 at init), ``A_k [r, Din]``.
- :class:`GateNetwork`: one linear gate per task/gate, ``logits [B, G, E] = x_g W_g + b_g``.
- :func:`self_gate_weights`: HoME's self-gate over a gate's own experts: ``sigmoid`` for one expert,
  ``softmax`` (the kernel's masked softmax) for several.
- :class:`MoELevel`: one level of any of the four models, given static routing tables (which input each expert
  reads, which inputs each gate reads, the ``[G, E]`` gate mask, the ``[G, E]`` self-gate mask, the feature-gate
  grouping). Output: ``[B, G, out_dim]`` gate mixtures.

Logical axis names (mapped to mesh axes by ``logical_axis_rules`` in config): expert kernels
``("expert", "embed", "mlp")`` for the first layer, then alternating ``("expert", "mlp", "embed")``, ...;
biases and norm parameters ``("expert", <out axis>)``; feature-gate factors ``("expert", "embed", None)`` and
``("expert", None, "embed")``; gate kernels ``(None, "embed", None)`` (small, replicated).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import moe as moe_kernels

Array = jax.Array

__all__ = [
    "ACTIVATIONS",
    "expert_kernel_init",
    "BatchedDense",
    "expert_loop_reference",
    "ExpertBank",
    "FeatureGate",
    "GateNetwork",
    "self_gate_weights",
    "MoELevel",
    "as_static_mask",
]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "identity": lambda x: x,
}


def _activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def expert_kernel_init(scale: float = 1.0, distribution: str = "truncated_normal"):
    """LeCun-style init of a stacked kernel ``[E, Din, F]``: fan-in ``Din`` per expert (the expert axis is a batch
    axis of the initialiser, so each expert is initialised as a separate ``Dense(Din -> F)``)."""
    return nn.initializers.variance_scaling(scale, "fan_in", distribution, in_axis=-2, out_axis=-1, batch_axis=(0,))


def _axis_chain(n: int) -> list[str]:
    """Logical names of the widths ``Din, F1, F2, ...`` of an expert MLP: embed, mlp, embed, mlp, ..."""
    return ["embed" if i % 2 == 0 else "mlp" for i in range(n)]


_EXPERT_IMPL = ["einsum"]


class expert_loop_reference:
    """Context manager: inside it, :class:`BatchedDense` traces a Python loop over experts (one matmul per
    expert, stacked) instead of one batched ``einsum`` -- the same parameters and result, the straightforward
    formulation the benchmark compares against (``benchmarks/bench_multitask.py``). Trace-time only: functions
    jitted inside keep the loop."""

    def __enter__(self):
        _EXPERT_IMPL.append("loop")
        return self

    def __exit__(self, *exc):
        _EXPERT_IMPL.pop()
        return False


class BatchedDense(nn.Module):
    """``E`` independent dense layers in one einsum.

    Attributes:
      num: number of experts ``E``.
      features: output width ``F``.
      use_bias: add a per-expert bias ``[E, F]``.
      in_axis, out_axis: logical names of ``Din`` and ``F`` (the kernel is ``("expert", in_axis, out_axis)``).

    Call: ``x [B, E, Din]`` (each expert its own input) or ``[B, Din]`` (one input shared by every expert) ->
    ``[B, E, F]``.
    """

    num: int
    features: int
    use_bias: bool = True
    in_axis: str | None = "embed"
    out_axis: str | None = "mlp"
    kernel_init: Callable = expert_kernel_init()
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        din = x.shape[-1]
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, ("expert", self.in_axis,
                                                                                      self.out_axis)),
                            (self.num, din, self.features), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
        x = jnp.asarray(x, dtype)
        kernel = jnp.asarray(kernel, dtype)
        loop = _EXPERT_IMPL[-1] == "loop"
        if x.ndim == 2:
            y = (jnp.stack([x @ kernel[e] for e in range(self.num)], 1) if loop
                 else jnp.einsum("bd,edf->bef", x, kernel))
        elif x.ndim == 3:
            if x.shape[1] != self.num:
                raise ValueError(f"BatchedDense: input has {x.shape[1]} experts, expected {self.num}")
            y = (jnp.stack([x[:, e] @ kernel[e] for e in range(self.num)], 1) if loop
                 else jnp.einsum("bed,edf->bef", x, kernel))
        else:
            raise ValueError(f"BatchedDense expects [B, Din] or [B, E, Din], got {x.shape}")
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, ("expert", self.out_axis)),
                              (self.num, self.features), self.param_dtype)
            y = y + jnp.asarray(bias, dtype)
        return y


class ExpertBank(nn.Module):
    """``E`` MLP experts computed together: ``Dense -> act -> ... -> Dense -> norm -> act``.

    Attributes:
      num_experts: ``E``.
      out_dim: expert output width ``De``.
      hidden: hidden widths of the expert MLP (``()`` = a single dense layer ``Din -> De``).
      act: activation after the last layer's norm: ``"swish"`` (HoME) or ``"relu"`` (classic MMoE experts).
      hidden_act: activation of the hidden layers (None = ``act``); HoME leaves it unspecified [U].
      norm: ``"batch"`` (per-expert BatchNorm statistics), ``"layer"`` (per-expert LayerNorm parameters) or
        ``"none"``; applied to the last layer's pre-activation.
      norm_hidden: also normalise every hidden layer (HoME's ambiguity 8; default: last layer only).
      bn_momentum, norm_epsilon: BatchNorm running-average momentum (flax convention: new = m·old + (1-m)·batch)
        and epsilon.
      dropout_rate: dropout on the hidden activations (training only).

    Call: ``x [B, E, Din]`` or ``[B, Din]`` -> ``(out [B, E, De], pre [B, E, De])`` where ``pre`` is the
    normalised pre-activation of the last layer (for diagnostics). With ``norm="batch"`` the caller passes
    ``mutable=["batch_stats"]`` in training.
    """

    num_experts: int
    out_dim: int
    hidden: tuple[int, ...] = ()
    act: str = "swish"
    hidden_act: str | None = None
    norm: str = "batch"
    norm_hidden: bool = False
    bn_momentum: float = 0.9
    norm_epsilon: float = 1e-5
    dropout_rate: float = 0.0
    dtype: Any = None

    def _norm(self, y: Array, axis_name: str, train: bool, name: str) -> Array:
        axes = ("expert", axis_name)
        if self.norm == "batch":
            return nn.BatchNorm(use_running_average=not train, axis=(-2, -1), momentum=self.bn_momentum,
                                epsilon=self.norm_epsilon, dtype=jnp.float32,
                                scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), axes),
                                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes),
                                name=name)(y.astype(jnp.float32))
        if self.norm == "layer":
            return nn.LayerNorm(epsilon=self.norm_epsilon, reduction_axes=-1, feature_axes=(-2, -1),
                                dtype=jnp.float32,
                                scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), axes),
                                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes),
                                name=name)(y.astype(jnp.float32))
        if self.norm == "none":
            return y
        raise ValueError(f"ExpertBank.norm: expected 'batch', 'layer' or 'none', got {self.norm!r}")

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, Array]:
        widths = (*self.hidden, self.out_dim)
        axes = _axis_chain(len(widths) + 1)
        hidden_act = _activation(self.hidden_act or self.act)
        y = x
        for i, w in enumerate(widths):
            y = BatchedDense(self.num_experts, w, in_axis=axes[i], out_axis=axes[i + 1], dtype=self.dtype,
                             name=f"dense_{i}")(y)
            last = i == len(widths) - 1
            if last or self.norm_hidden:
                y = self._norm(y, axes[i + 1], train, f"norm_{i}")
            if not last:
                y = hidden_act(y)
                if self.dropout_rate > 0:
                    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        pre = y
        return _activation(self.act)(y), pre


class FeatureGate(nn.Module):
    """HoME feature-gate: ``gate_k(x) = scale · sigmoid(x B_k A_k)``, ``x_k = x ⊙ gate_k(x)``.

    ``B_k [Din, r·L]`` (zero-initialised, so every gate is exactly ``scale/2 = 1`` at init and the expert sees
    its unmodified input), ``A_k [r·L, Din]``; ``L = num_lora`` sums ``L`` rank-``r`` products, which is the same
    function as one rank ``r·L`` product (so it is implemented as one). Output in ``(0, scale)``.

    Attributes:
      num_gates: number of gates ``K`` (one per expert, or one per expert group).
      rank: LoRA rank ``r``; num_lora: ``L``; scale: 2.0 (HoME); zero_init: zero-init ``B`` (else normal).

    Call: ``x [B, E, Din]`` (or ``[B, Din]``), ``gate_index`` static sequence of length ``E`` mapping each expert
    to its gate (None = gate ``e`` for expert ``e``; requires ``K == E``) -> ``(x_gated [B, E, Din], gate
    [B, E, Din])``.
    """

    num_gates: int
    rank: int = 64
    num_lora: int = 1
    scale: float = 2.0
    zero_init: bool = True

    @nn.compact
    def __call__(self, x: Array, gate_index: Sequence[int] | None = None) -> tuple[Array, Array]:
        din = x.shape[-1]
        r = int(self.rank) * int(self.num_lora)
        b_init = nn.initializers.zeros_init() if self.zero_init else nn.initializers.normal(0.01)
        a_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1,
                                                  batch_axis=(0,))
        lora_b = self.param("lora_b", nn.with_logical_partitioning(b_init, ("expert", "embed", None)),
                            (self.num_gates, din, r))
        lora_a = self.param("lora_a", nn.with_logical_partitioning(a_init, ("expert", None, "embed")),
                            (self.num_gates, r, din))
        if gate_index is None:
            if x.ndim == 3 and x.shape[1] != self.num_gates:
                raise ValueError(f"FeatureGate: {x.shape[1]} experts but {self.num_gates} gates; pass gate_index")
            n = x.shape[1] if x.ndim == 3 else self.num_gates
            idx = np.arange(n)
        else:
            idx = np.asarray(gate_index, np.int32)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_gates):
            raise ValueError(f"FeatureGate: gate_index {idx.tolist()} outside 0..{self.num_gates - 1}")
        b_e, a_e = lora_b[idx], lora_a[idx]  # [E, Din, r], [E, r, Din] (static gather)
        if x.ndim == 2:
            low = jnp.einsum("bd,edr->ber", x, b_e)
            x = jnp.broadcast_to(x[:, None, :], (x.shape[0], idx.size, din))
        else:
            low = jnp.einsum("bed,edr->ber", x, b_e)
        gate = self.scale * jax.nn.sigmoid(jnp.einsum("ber,erd->bed", low, a_e).astype(jnp.float32))
        return x * gate.astype(x.dtype), gate


class GateNetwork(nn.Module):
    """``G`` linear gates over ``E`` experts: ``logits[b, g, e] = x[b, g] @ W[g, :, e] + bias[g, e]``.

    With a static ``mask [G, E]`` each gate only holds weights for its allowed experts (``K = max_g |allowed_g|``
    slots per gate, ``W [G, Dg, K]``, scattered onto the ``E`` experts by a static one-hot map); logits of
    masked experts are 0 and are excluded by the masked softmax. Without a mask, ``W [G, Dg, E]``.

    Call: ``x [B, G, Dg]`` (each gate its own input) or ``[B, Dg]`` (shared) -> float32 logits ``[B, G, E]``.
    Feed them to :func:`jaxrec.kernels.moe.softmax_gate` with the same mask.
    """

    num_gates: int
    num_experts: int
    mask: tuple[tuple[bool, ...], ...] | None = None
    use_bias: bool = True
    kernel_init: Callable = expert_kernel_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dg = x.shape[-1]
        g, n = self.num_gates, self.num_experts
        if self.mask is None:
            scatter, k = None, n
        else:
            m = as_static_mask(self.mask)
            if m.shape != (g, n):
                raise ValueError(f"GateNetwork: mask {m.shape}, expected [{g}, {n}]")
            k = max(int(m.sum(-1).max(initial=0)), 1)
            scatter = np.zeros((g, k, n), np.float32)
            for gi in range(g):
                for slot, e in enumerate(np.nonzero(m[gi])[0]):
                    scatter[gi, slot, e] = 1.0
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, (None, "embed", None)),
                            (g, dg, k))
        x = x.astype(jnp.float32)
        if x.ndim == 2:
            logits = jnp.einsum("bd,gdk->bgk", x, kernel)
        else:
            logits = jnp.einsum("bgd,gdk->bgk", x, kernel)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None)),
                              (g, k))
            logits = logits + bias
        if scatter is not None:
            logits = jnp.einsum("bgk,gkn->bgn", logits, scatter)
        return logits


def as_static_mask(mask) -> np.ndarray:
    """A nested tuple / array mask -> bool NumPy ``[G, E]``."""
    return np.asarray(mask, bool).reshape(len(mask), -1) if len(mask) else np.zeros((0, 0), bool)


def self_gate_weights(logits: Array, self_mask) -> Array:
    """HoME self-gate weights over each gate's own experts.

    ``Self_Gate = sigmoid(logit)`` when the gate's group has exactly one expert, ``softmax`` over the group
    (:func:`jaxrec.kernels.moe.softmax_gate`, masked) when it has several; zero outside the group and for gates
    with an empty group.

    Args:
      logits: ``[B, G, E]`` self-gate logits.
      self_mask: static bool ``[G, E]``, True on the experts of gate ``g``'s own group.

    Returns:
      float32 ``[B, G, E]``.
    """
    m = as_static_mask(self_mask)
    counts = m.sum(-1)
    soft = moe_kernels.softmax_gate(logits, m)
    sig = jnp.where(m, jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)), 0.0)
    return jnp.where((counts == 1)[:, None], sig, soft)


def _grouped_gate_logits(gate_in: Array, mask: np.ndarray, name: str) -> Array:
    """Logits ``[B, G, N]`` of gates with static ``mask [G, N]``, one :class:`GateNetwork` per distinct number of
    allowed experts (named ``name`` when all gates allow the same number, else ``f"{name}_k{K}"``), so every
    weight belongs to an allowed (gate, expert) pair. Gates with no allowed expert get no parameters (logits 0).
    Must be called inside a compact module."""
    g, n = mask.shape
    counts = mask.sum(-1)
    kinds = sorted({int(c) for c in counts if c > 0})
    b = gate_in.shape[0]
    logits = jnp.zeros((b, g, n), jnp.float32)
    for k in kinds:
        rows = np.nonzero(counts == k)[0]
        sub_mask = tuple(tuple(bool(v) for v in mask[r]) for r in rows)
        sub_in = gate_in if gate_in.ndim == 2 else gate_in[:, rows]
        net = GateNetwork(rows.size, n, sub_mask, name=name if len(kinds) == 1 else f"{name}_k{k}")
        if rows.size == g:
            logits = net(sub_in)
        else:
            logits = logits.at[:, rows].set(net(sub_in))
    return logits


class MoELevel(nn.Module):
    """One multi-gate MoE level with static routing (the building block of MMoE, CGC, PLE and HoME).

    Inputs: ``inputs [B, J, Din]``, the ``J`` candidate inputs of this level (``J = 1`` for the first level:
    the shared embedding ``v``; PLE level 2: the ``T`` task mixtures and the shared mixture; HoME task layer: the
    per-category and shared meta mixtures).

    Computation (``N`` experts, ``G`` gates)::

        X_n   = inputs[:, expert_inputs[n]]                           [B, N, Din]  (static gather)
        X_n  ← X_n ⊙ 2σ(X_n B_k(n) A_k(n))          (feature gates)    [B, N, Din]
        E     = ExpertBank(X)                                          [B, N, De]   (one einsum per layer)
        g_in  = concat_j inputs[:, gate_inputs[g][j]]                  [B, G, k·Din]
        w     = softmax_gate(GateNetwork(g_in), gate_mask)             [B, G, N]    (exactly 0 outside the mask)
        mix   = combine(E, w)                                          [B, G, De]
        mix  += combine(E, self_gate_weights(SelfGate(g_in), self_gate_mask))   (self-gates, if any)

    Attributes (all static; masks as nested tuples of bools so the module stays hashable):
      num_experts: ``N``.
      expert_inputs: length ``N``, index into ``J`` of the input each expert reads.
      gate_inputs: length ``G``, each a tuple of input indices concatenated as the gate's input (all gates the
        same number of indices).
      gate_mask: ``[G, N]``.
      self_gate_mask: ``[G, N]`` or None (no self-gates); rows may be empty (no residual for that gate).
      feature_gate_index: length ``N``, the feature gate of each expert (experts sharing a gate share its
        parameters), or None (no feature gates). feature_gate_rank, feature_gate_num_lora: LoRA rank, terms.
      expert_dim, expert_hidden, expert_act, expert_hidden_act, expert_norm, norm_hidden, bn_momentum,
        expert_dropout: :class:`ExpertBank` settings.

    Returns ``(mix [B, G, De], aux)``; ``aux`` holds ``expert_out [B, N, De]``, ``expert_pre [B, N, De]``,
    ``gate_weights [B, G, N]`` and ``self_weights [B, G, N]`` (zeros without self-gates).
    """

    num_experts: int
    expert_inputs: tuple[int, ...]
    gate_inputs: tuple[tuple[int, ...], ...]
    gate_mask: tuple[tuple[bool, ...], ...]
    self_gate_mask: tuple[tuple[bool, ...], ...] | None = None
    feature_gate_index: tuple[int, ...] | None = None
    feature_gate_rank: int = 64
    feature_gate_num_lora: int = 1
    expert_dim: int = 256
    expert_hidden: tuple[int, ...] = ()
    expert_act: str = "swish"
    expert_hidden_act: str | None = None
    expert_norm: str = "batch"
    norm_hidden: bool = False
    bn_momentum: float = 0.9
    expert_dropout: float = 0.0
    dtype: Any = None

    def check(self) -> None:
        n, g = self.num_experts, len(self.gate_inputs)
        if len(self.expert_inputs) != n:
            raise ValueError(f"MoELevel: expert_inputs has {len(self.expert_inputs)} entries for {n} experts")
        mask = as_static_mask(self.gate_mask)
        if mask.shape != (g, n):
            raise ValueError(f"MoELevel: gate_mask {mask.shape}, expected [G={g}, N={n}]")
        if len({len(gi) for gi in self.gate_inputs}) > 1:
            raise ValueError("MoELevel: every gate must concatenate the same number of inputs")
        if self.self_gate_mask is not None and as_static_mask(self.self_gate_mask).shape != (g, n):
            raise ValueError(f"MoELevel: self_gate_mask must be [G={g}, N={n}]")
        if self.feature_gate_index is not None and len(self.feature_gate_index) != n:
            raise ValueError("MoELevel: feature_gate_index needs one entry per expert")

    @nn.compact
    def __call__(self, inputs: Array, *, train: bool = False) -> tuple[Array, dict]:
        self.check()
        if inputs.ndim == 2:
            inputs = inputs[:, None, :]
        b, j, din = inputs.shape
        n, g = self.num_experts, len(self.gate_inputs)
        e_idx = np.asarray(self.expert_inputs, np.int32)
        if e_idx.max(initial=0) >= j:
            raise ValueError(f"MoELevel: an expert reads input {e_idx.max()} but only {j} inputs were given")
        # expert inputs: one shared input is passed as [B, Din] (no copy per expert)
        x = inputs[:, 0] if j == 1 else inputs[:, e_idx]
        if self.feature_gate_index is not None:
            fg_idx = np.asarray(self.feature_gate_index, np.int32)
            x, _ = FeatureGate(int(fg_idx.max()) + 1, self.feature_gate_rank, self.feature_gate_num_lora,
                               name="feature_gate")(x, fg_idx)
        expert_out, expert_pre = ExpertBank(
            n, self.expert_dim, self.expert_hidden, self.expert_act, self.expert_hidden_act, self.expert_norm,
            self.norm_hidden, self.bn_momentum, dropout_rate=self.expert_dropout, dtype=self.dtype,
            name="experts")(x, train=train)
        g_idx = np.asarray(self.gate_inputs, np.int32)  # [G, k]
        if j == 1 and g_idx.shape[1] == 1:
            gate_in = inputs[:, 0]  # [B, Din], shared by all gates
        else:
            gate_in = inputs[:, g_idx.reshape(-1)].reshape(b, g, g_idx.shape[1] * din)
        mask = as_static_mask(self.gate_mask)
        logits = _grouped_gate_logits(gate_in, mask, "gates")
        weights = moe_kernels.softmax_gate(logits, mask)  # [B, G, N] float32
        mix = moe_kernels.combine(expert_out.astype(jnp.float32), weights)
        self_w = jnp.zeros_like(weights)
        smask = None if self.self_gate_mask is None else as_static_mask(self.self_gate_mask)
        if smask is not None and smask.any():
            self_w = self_gate_weights(_grouped_gate_logits(gate_in, smask, "self_gates"), smask)
            mix = mix + moe_kernels.combine(expert_out.astype(jnp.float32), self_w)
        aux = {"expert_out": expert_out, "expert_pre": expert_pre, "gate_weights": weights, "self_weights": self_w}
        return mix, aux
