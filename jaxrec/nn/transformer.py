"""Transformer blocks (Flax Linen) over ``jaxrec.kernels.attention``.

Blocks: :class:`RMSNorm` (LayerNorm is ``flax.linen.LayerNorm``, built by :func:`make_norm` with logical
axis names), :class:`MultiHeadAttention` (self / cross / decode with a KV cache, optional RoPE),
:class:`FeedForward` (gelu / relu / swiglu), :class:`TransformerBlock` and :class:`TransformerStack`.

One block class covers the sequence encoders of the papers by configuration:

- **SASRec / C2DSR** (``sasrec_style=True``, see :func:`sasrec_config`): ``q = LN(x)``;
  ``x = q + MHA(query=q, key=x, value=x)`` (keys/values *not* normalised, residual from the normalised
  query); ``x = LN(x)``; ``x = x + Dropout(W2 ReLU(Dropout(W1 x + b1)) + b2)``; ``x = x * valid`` after every
  block (``zero_padding_outputs``); final LayerNorm in the stack. C2DSR uses a causal mask only, without a
  key-padding mask (``mask_keys_with_valid=False``), LayerNorm eps 1e-8.
- **KuaiFormer / Llama** (see :func:`llama_config`): pre-norm, RMSNorm, SwiGLU, RoPE, no biases, causal.
- Classic pre-norm or post-norm Transformer (``pre_norm``), LayerNorm or RMSNorm (``norm``).

Logical axis names carried by every parameter (map them to mesh axes with ``logical_axis_rules`` in config):

- ``"embed"``: model width ``D`` (norm scales/biases, projection inputs/outputs, FFN input/output);
- ``"mlp"``: feed-forward hidden width ``F``;
- ``"heads"``: attention heads ``H``;
- ``"kv"``: per-head width ``Dh``;
- ``"vocab"``: vocabulary rows of embedding tables (used by ``jaxrec.nn`` embeddings, not here).

Parameter shapes: attention ``query/key/value/kernel [D, H, Dh]`` ("embed", "heads", "kv"), their biases
``[H, Dh]`` ("heads", "kv"); ``out/kernel [H, Dh, D]`` ("heads", "kv", "embed"), ``out/bias [D]``;
FFN ``wi``, ``wi_gate`` ``[D, F]`` ("embed", "mlp"), ``wo [F, D]`` ("mlp", "embed"); norms ``scale``,
``bias`` ``[D]`` ("embed",).

Shapes: inputs ``x [B, L, D]``; ``valid [B, L]`` bool (True at real tokens); masks are boolean, broadcastable
to ``[B, H, Lq, Lk]`` (True = may attend). Kernel initialisers are called with the *flattened 2-D* shape
``(fan_in, fan_out)`` (as ``nn.DenseGeneral`` does), so ``nn.initializers.xavier_uniform()`` etc. behave as
for a ``Dense`` layer of the same total size.

Incremental decoding (Flax ``"cache"`` collection): create the cache with
``variables = model.init(rng, jnp.zeros((B, Lmax, D)), decode=True)`` (or ``jax.eval_shape`` of it) and take
``variables["cache"]``; then call ``model.apply({"params": p, "cache": c}, x_new [B, T, D], decode=True,
causal=True, mutable=["cache"])`` repeatedly. Output equals the full causal forward over the whole
sequence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import attention as attn_kernels
from jaxrec.nn.dropout import Dropout

Array = jax.Array
Initializer = Callable[..., Array]

__all__ = [
    "uniform_init",
    "torch_mha_inits",
    "torch_linear_init",
    "RMSNorm",
    "make_norm",
    "rope",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "TransformerStack",
    "pack_rows",
    "take_rows",
    "unpack_rows",
    "sasrec_config",
    "llama_config",
]

rope = attn_kernels.rope  # re-exported: rope(x [B, L, H, Dh], positions [B, L] | [L], base=...)

default_kernel_init = nn.initializers.lecun_normal()
zeros_init = nn.initializers.zeros_init()
ones_init = nn.initializers.ones_init()


# --------------------------------------------------------------------------------------------------
# Initialisers
# --------------------------------------------------------------------------------------------------


def uniform_init(bound: float) -> Initializer:
    """U(-bound, bound) initialiser (PyTorch-style)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_mha_inits(d_model: int) -> dict:
    """Initialisers matching ``torch.nn.MultiheadAttention(d_model, ...)``.

    In-projection: xavier-uniform over the packed ``(3d, d)`` matrix, i.e. U(+-sqrt(6 / (4d))) for each of
    Q, K, V; out-projection U(+-1/sqrt(d)) (kaiming-uniform, a = sqrt 5); all biases zero. Returns kwargs
    ``kernel_init``, ``out_kernel_init``, ``bias_init`` for :class:`MultiHeadAttention` / blocks.
    """
    return {
        "kernel_init": uniform_init(math.sqrt(6.0 / (4.0 * d_model))),
        "out_kernel_init": uniform_init(1.0 / math.sqrt(d_model)),
        "bias_init": zeros_init,
    }


def torch_linear_init(fan_in: int) -> Initializer:
    """``torch.nn.Linear`` / ``Conv1d(kernel 1)`` weight and bias init: U(+-1/sqrt(fan_in))."""
    return uniform_init(1.0 / math.sqrt(fan_in))


def _flat_init(init: Initializer, n_in: int) -> Initializer:
    """Call ``init`` on the flattened ``(prod(shape[:n_in]), prod(shape[n_in:]))`` shape, then reshape."""

    def wrapped(key, shape, dtype=jnp.float32):
        flat = (int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:])))
        if n_in == 0:
            flat = (flat[1],)
        return jnp.reshape(init(key, flat, dtype), shape)

    return wrapped


def _part(init: Initializer, axes: tuple[str, ...]) -> Initializer:
    return nn.with_logical_partitioning(init, axes)


# --------------------------------------------------------------------------------------------------
# Norms
# --------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``x / sqrt(mean(x**2, -1) + eps) * scale`` (computed in float32).

    Input/output ``[..., D]``; parameter ``scale [D]`` ("embed",).
    """

    epsilon: float = 1e-6
    use_scale: bool = True
    scale_init: Initializer = ones_init
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dtype = self.dtype or x.dtype
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.epsilon)
        if self.use_scale:
            scale = self.param("scale", _part(self.scale_init, ("embed",)), (x.shape[-1],), self.param_dtype)
            y = y * scale.astype(jnp.float32)
        return y.astype(dtype)


def make_norm(kind: str = "layer", epsilon: float = 1e-6, dtype=None, param_dtype=jnp.float32, name=None) -> nn.Module:
    """``"layer"`` -> ``nn.LayerNorm`` (scale and bias tagged ("embed",)); ``"rms"`` -> :class:`RMSNorm`."""
    if kind == "layer":
        return nn.LayerNorm(
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_init=_part(ones_init, ("embed",)),
            bias_init=_part(zeros_init, ("embed",)),
            name=name,
        )
    if kind == "rms":
        return RMSNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)
    raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}")


# --------------------------------------------------------------------------------------------------
# Projections
# --------------------------------------------------------------------------------------------------


class _HeadsIn(nn.Module):
    """``[..., D] -> [..., H, Dh]``; kernel ``[D, H, Dh]`` ("embed", "heads", "kv")."""

    num_heads: int
    head_dim: int
    use_bias: bool
    kernel_init: Initializer
    bias_init: Initializer
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-1], self.num_heads, self.head_dim)
        kernel = self.param("kernel", _part(_flat_init(self.kernel_init, 1), ("embed", "heads", "kv")), shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", _part(_flat_init(self.bias_init, 0), ("heads", "kv")), shape[1:], self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("...d,dhk->...hk", x, kernel, precision=self.precision)
        return y if bias is None else y + bias


class _HeadsOut(nn.Module):
    """``[..., H, Dh] -> [..., D]``; kernel ``[H, Dh, D]`` ("heads", "kv", "embed")."""

    features: int
    use_bias: bool
    kernel_init: Initializer
    bias_init: Initializer
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-2], x.shape[-1], self.features)
        kernel = self.param("kernel", _part(_flat_init(self.kernel_init, 2), ("heads", "kv", "embed")), shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", _part(self.bias_init, ("embed",)), (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("...hk,hkd->...d", x, kernel, precision=self.precision)
        return y if bias is None else y + bias


# --------------------------------------------------------------------------------------------------
# Packed rows (skipping padding tokens in the position-wise work)
# --------------------------------------------------------------------------------------------------


def pack_rows(valid: Array, capacity: int) -> tuple[Array, Array]:
    """``valid [B, L]`` bool -> ``(index [capacity] int32, count)``: the flat positions ``b * L + l`` of the real
    tokens in row-major order, then ``B * L`` for the unused capacity rows; ``count`` = number of real tokens
    (if it exceeds ``capacity`` the index holds only the first ``capacity``; callers check ``count``)."""
    b, l = valid.shape
    flat = jnp.asarray(valid, bool).reshape(-1)
    (index,) = jnp.nonzero(flat, size=int(capacity), fill_value=b * l)
    return index.astype(jnp.int32), flat.sum()


def take_rows(x: Array, index: Array) -> Array:
    """``x [B, L, ...]`` -> ``[C, ...]``: the rows at flat positions ``index`` (zeros where ``index == B * L``)."""
    flat = x.reshape((-1,) + x.shape[2:])
    return jnp.take(flat, index, axis=0, mode="fill", fill_value=0)


def unpack_rows(rows: Array, index: Array, layout: tuple[int, int], fill) -> Array:
    """``rows [C, ...]`` -> ``[B, L, ...]``: ``fill`` (broadcast to one row) everywhere, ``rows`` at the flat
    positions ``index`` (rows with ``index == B * L`` are dropped). Inverse of :func:`take_rows` on the real
    tokens."""
    b, l = layout
    base = jnp.broadcast_to(jnp.asarray(fill, rows.dtype), (b * l,) + rows.shape[1:])
    return base.at[index].set(rows, mode="drop", indices_are_sorted=True).reshape((b, l) + rows.shape[1:])


def _row_index(index: Array, width: int) -> Array:
    """Flat element indices ``index * width + col`` (uint32) of packed rows in the unpacked ``[B * L, width]``
    layout: the hash dropout mask of a packed row equals that of its dense position."""
    return index.astype(jnp.uint32)[:, None] * jnp.uint32(width) + jnp.arange(width, dtype=jnp.uint32)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention over :func:`jaxrec.kernels.attention.dot_product_attention`.

    Self-attention (``inputs_kv=None``), cross-attention (separate ``inputs_kv``) and incremental decoding
    (``decode=True``: projected, RoPE-rotated keys/values are kept in the ``"cache"`` collection).

    Attributes:
      num_heads: ``H``.
      head_dim: ``Dh`` (query/key/value head width).
      dropout_rate: dropout on the attention weights (needs the ``"dropout"`` rng when not deterministic).
      dropout_impl: mask generator, "threefry" (flax/JAX default) or "hash" (:mod:`jaxrec.kernels.dropout`).
      use_rope: rotate queries and keys with RoPE (positions default to ``0..L-1``, or the cache offset when
        decoding).
      rope_base: RoPE frequency base.
      use_bias: biases on the Q/K/V and output projections.
      out_features: output width (default: the width of ``inputs_q``).
      kernel_init: Q/K/V kernel init (called on the flat ``(D, H*Dh)`` shape).
      out_kernel_init: output kernel init (flat ``(H*Dh, D)``); default ``kernel_init``.
      bias_init: bias init.
      dtype / param_dtype / precision: computation dtype (default: promoted input dtype), parameter dtype,
        einsum precision. Softmax is always float32.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dropout_impl: str = "threefry"
    use_rope: bool = False
    rope_base: float = 10000.0
    use_bias: bool = False
    out_features: int | None = None
    kernel_init: Initializer = default_kernel_init
    out_kernel_init: Initializer | None = None
    bias_init: Initializer = zeros_init
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        *,
        valid: Array | None = None,
        causal: bool = False,
        mask: Array | None = None,
        bias: Array | None = None,
        positions_q: Array | None = None,
        positions_kv: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        packed: tuple | None = None,
        dropout_rng: Array | None = None,
    ) -> Array:
        """Attend.

        Args:
          inputs_q: ``[B, Lq, D]``.
          inputs_kv: ``[B, Lk, Dkv]`` (default ``inputs_q``). When decoding, it holds the key/value inputs of
            the *new* tokens (``Lk = Lq = T``), e.g. the un-normalised stream of a SASRec-style block.
          valid: ``[B, Lk]`` key validity (padding keys are never attended). When decoding: validity of the
            new tokens, stored in the cache.
          causal: query ``i`` attends keys ``<= i`` (decode: ``<= cache length + i``). Self-attention only.
          mask: extra bool mask broadcastable to ``[B, H, Lq, Lk]`` (decode: ``[B, H, T, Lmax]``).
          bias: additive logit bias broadcastable to ``[B, H, Lq, Lk]``.
          positions_q / positions_kv: ``[B, L]`` or ``[L]`` RoPE positions (defaults described above).
          deterministic: disable dropout.
          decode: incremental decoding with the ``"cache"`` collection (see the module docstring). During
            ``init`` the cache is created with ``Lmax = Lq`` and the call runs as a normal forward.
          packed: ``(index [C], (B, L))``: self-attention over packed rows (:func:`pack_rows`). ``inputs_q`` and
            ``inputs_kv`` are ``[C, D]``, the real tokens of a ``[B, L]`` layout (``index`` = their flat
            positions, ``B * L`` for unused capacity rows). The Q/K/V projections and the output projection run
            on the ``C`` rows only; every other slot of the ``[B, L]`` layout gets the projection of a zero
            input (the bias), which equals the dense computation when the padding inputs are zero or padding
            keys are masked (``valid``); returns ``[C, out_features or D]``. Not with ``decode``.
          dropout_rng: key of the attention-weight dropout (default: drawn from the ``"dropout"`` rng).

        Returns:
          ``[B, Lq, out_features or D]`` (``[C, ...]`` when ``packed``).
        """
        if inputs_kv is None:
            inputs_kv = inputs_q
        if packed is not None and (decode or inputs_kv.shape[0] != inputs_q.shape[0]):
            raise ValueError("MultiHeadAttention(packed=...): packed self-attention only (no decode, same rows for "
                             "queries and keys)")
        features = self.out_features or inputs_q.shape[-1]
        proj = dict(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
        )
        projs = [_HeadsIn(name=n, **proj) for n in ("query", "key", "value")]
        q = projs[0](inputs_q)  # [B, Lq, H, Dh]
        k = projs[1](inputs_kv)  # [B, Lk, H, Dh]
        v = projs[2](inputs_kv)  # [B, Lk, H, Dh]
        if packed is not None:  # [C, H, Dh] -> [B, L, H, Dh], padding slots = projection of a zero input
            zero = jnp.zeros((1, inputs_q.shape[-1]), inputs_q.dtype)
            q, k, v = (unpack_rows(t, packed[0], packed[1], f(zero)[0]) for t, f in zip((q, k, v), projs))
        batch, q_len = q.shape[:2]
        kv_len = k.shape[1]

        if self.dropout_rate == 0.0 or deterministic:
            dropout_rng = None
        elif dropout_rng is None:
            dropout_rng = self.make_rng("dropout")
        kernel_kwargs = dict(
            dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng,
            deterministic=deterministic,
            precision=self.precision,
            dropout_impl=self.dropout_impl,
        )

        cache_ready = False
        if decode:
            cache_ready = self.has_variable("cache", "cached_key")
            if cache_ready and kv_len != q_len:
                raise ValueError("decode: inputs_kv must hold the new tokens (same length as inputs_q)")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
            cached_valid = self.variable("cache", "cached_valid", jnp.zeros, (batch, kv_len), bool)
            cache_length = self.variable("cache", "cache_length", jnp.zeros, (batch,), jnp.int32)

        if self.use_rope:
            if cache_ready:
                default_pos = cache_length.value[:, None] + jnp.arange(q_len, dtype=jnp.int32)
                pq = default_pos if positions_q is None else positions_q
                pk = default_pos if positions_kv is None else positions_kv
            else:
                pq = jnp.arange(q_len) if positions_q is None else positions_q
                pk = jnp.arange(kv_len) if positions_kv is None else positions_kv
            q = attn_kernels.rope(q, pq, base=self.rope_base)
            k = attn_kernels.rope(k, pk, base=self.rope_base)

        if cache_ready:
            cache = attn_kernels.KVCache(cached_key.value, cached_value.value, cached_valid.value, cache_length.value)
            out, cache = attn_kernels.attention_with_cache(
                q, k, v, cache, valid_new=valid, causal=causal, mask=mask, bias=bias, **kernel_kwargs
            )
            cached_key.value, cached_value.value = cache.keys, cache.values
            cached_valid.value, cache_length.value = cache.valid, cache.length
        else:
            full_mask = attn_kernels.combine_masks(
                None if valid is None else attn_kernels.padding_mask(valid),
                attn_kernels.causal_mask(q_len, kv_len) if causal else None,
                mask,
            )
            out = attn_kernels.dot_product_attention(q, k, v, full_mask, bias, **kernel_kwargs)
        if packed is not None:
            out = take_rows(out, packed[0])  # [C, H, Dh]

        return _HeadsOut(
            features=features,
            use_bias=self.use_bias,
            kernel_init=self.out_kernel_init or self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="out",
        )(out)


# --------------------------------------------------------------------------------------------------
# Feed-forward
# --------------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """Position-wise feed-forward ``[..., D] -> [..., out_features or D]``.

    - ``"relu"`` / ``"gelu"``: ``wo(drop(act(wi x + bi))) + bo`` (gelu is the exact erf form, as PyTorch);
    - ``"swiglu"``: ``wo(drop(silu(wi_gate x) * wi x))`` (Llama; usually ``use_bias=False``).

    Attributes:
      hidden: ``F``, the hidden width.
      kind: "gelu" | "relu" | "swiglu".
      dropout_rate: dropout on the hidden activations; dropout_impl: its mask generator ("threefry" | "hash").
      use_bias, kernel_init, bias_init, out_features, dtype, param_dtype, precision: as usual.
    """

    hidden: int
    kind: str = "gelu"
    dropout_rate: float = 0.0
    dropout_impl: str = "threefry"
    use_bias: bool = True
    out_features: int | None = None
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = zeros_init
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True, dropout_index: Array | None = None,
                 dropout_key: Array | None = None) -> Array:
        """``dropout_index``: flat element indices of the hidden activations for the hash dropout mask
        (:class:`jaxrec.nn.dropout.Dropout`), e.g. their positions in the unpacked layout (packed rows);
        ``dropout_key``: the hidden dropout's key (default: drawn from the ``"dropout"`` rng)."""
        if self.kind not in ("gelu", "relu", "swiglu"):
            raise ValueError(f"FeedForward kind must be 'gelu', 'relu' or 'swiglu', got {self.kind!r}")
        features = self.out_features or x.shape[-1]

        def dense(n, axes, name):
            return nn.Dense(
                n,
                use_bias=self.use_bias,
                kernel_init=_part(self.kernel_init, axes),
                bias_init=_part(self.bias_init, axes[1:]),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                precision=self.precision,
                name=name,
            )

        h = dense(self.hidden, ("embed", "mlp"), "wi")(x)
        if self.kind == "relu":
            h = jax.nn.relu(h)
        elif self.kind == "gelu":
            h = jax.nn.gelu(h, approximate=False)
        else:
            h = jax.nn.silu(dense(self.hidden, ("embed", "mlp"), "wi_gate")(x)) * h
        h = Dropout(self.dropout_rate, impl=self.dropout_impl)(h, deterministic=deterministic, index=dropout_index,
                                                                  key=dropout_key)
        return dense(features, ("mlp", "embed"), "wo")(h)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class _BlockFields(nn.Module):
    """Configuration shared by :class:`TransformerBlock` and :class:`TransformerStack`.

    Attributes:
      num_heads, head_dim: attention heads and per-head width.
      mlp_dim: feed-forward hidden width.
      pre_norm: True: ``x + f(norm(x))``; False (post-norm): ``norm(x + f(x))``. Ignored when
        ``sasrec_style``.
      norm: "layer" | "rms"; norm_epsilon: its epsilon.
      ffn_kind: "gelu" | "relu" | "swiglu".
      sasrec_style: SASRec/C2DSR block (module docstring): query normalised, keys/values raw, residuals from
        the normalised streams.
      use_rope, rope_base: rotary embedding in attention.
      use_bias: attention projection biases; ffn_use_bias: FFN biases.
      dropout_rate: default for every dropout below that is None.
      attention_dropout_rate: on attention weights.
      attention_output_dropout_rate: on the attention sub-layer output before the residual add (SASRec: 0).
      ffn_hidden_dropout_rate: inside the FFN, on the hidden activations.
      ffn_output_dropout_rate: on the FFN sub-layer output before the residual add.
      dropout_impl: mask generator of every dropout, "threefry" (flax/JAX default, bit-identical to
        ``flax.linen.Dropout``) or "hash" (:mod:`jaxrec.kernels.dropout`, far cheaper on CPU).
      mask_keys_with_valid: use ``valid`` as a key-padding mask (C2DSR parity: False, causal mask only).
      zero_padding_outputs: multiply the block output by ``valid`` (SASRec's timeline mask).
      kernel_init / out_kernel_init / bias_init: attention initialisers (see :class:`MultiHeadAttention`).
      ffn_kernel_init / ffn_bias_init: FFN initialisers.
      dtype / param_dtype: computation and parameter dtypes.
    """

    num_heads: int
    head_dim: int
    mlp_dim: int
    pre_norm: bool = True
    norm: str = "layer"
    norm_epsilon: float = 1e-6
    ffn_kind: str = "gelu"
    sasrec_style: bool = False
    use_rope: bool = False
    rope_base: float = 10000.0
    use_bias: bool = True
    ffn_use_bias: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float | None = None
    attention_output_dropout_rate: float | None = None
    ffn_hidden_dropout_rate: float | None = None
    ffn_output_dropout_rate: float | None = None
    dropout_impl: str = "threefry"
    mask_keys_with_valid: bool = True
    zero_padding_outputs: bool = False
    kernel_init: Initializer = default_kernel_init
    out_kernel_init: Initializer | None = None
    bias_init: Initializer = zeros_init
    ffn_kernel_init: Initializer = default_kernel_init
    ffn_bias_init: Initializer = zeros_init
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _rate(self, r: float | None) -> float:
        return self.dropout_rate if r is None else r


class TransformerBlock(_BlockFields):
    """One Transformer layer (attention + feed-forward); configuration in :class:`_BlockFields`."""

    @nn.compact
    def __call__(
        self,
        x: Array,
        valid: Array | None = None,
        *,
        causal: bool = False,
        mask: Array | None = None,
        positions: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        packed: tuple | None = None,
        dropout_key: Array | None = None,
    ) -> Array:
        """Apply the block.

        Args:
          x: ``[B, L, D]`` (decode: the ``T`` new tokens ``[B, T, D]``).
          valid: ``[B, L]`` bool, True at real tokens (key padding mask if ``mask_keys_with_valid``; output
            zeroing if ``zero_padding_outputs``).
          causal: causal self-attention.
          mask: extra attention mask broadcastable to ``[B, H, L, L]``.
          positions: RoPE positions ``[B, L]`` or ``[L]`` (default ``0..L-1`` / cache offset when decoding).
          deterministic: disable dropout (else needs the ``"dropout"`` rng).
          decode: incremental decoding with the attention KV cache.
          packed: ``(index [C], (B, L))`` from :func:`pack_rows`: ``x`` is ``[C, D]``, the real tokens of the
            ``[B, L]`` layout whose validity is ``valid``; norms, projections and the FFN run on the ``C`` rows
            only, attention in the ``[B, L]`` layout (padding keys / values = projection of a zero input).
            SASRec-style blocks only (their padding inputs are zero when the caller zeroes them, and
            ``zero_padding_outputs`` keeps them zero); the hash dropout masks equal the dense ones.
          dropout_key: derive every dropout key of the block from this key (``fold_in`` 0..3: attention
            weights, attention output, FFN hidden, FFN output) instead of drawing them from the ``"dropout"``
            rng (:class:`TransformerStack` uses it so that its packed path and dense fallback draw alike).

        Returns:
          ``[B, L, D]`` (``[C, D]`` when ``packed``).
        """
        if packed is not None and (not self.sasrec_style or decode):
            raise ValueError("TransformerBlock(packed=...): supported for sasrec_style blocks without decode")
        norm = lambda name: make_norm(self.norm, self.norm_epsilon, self.dtype, self.param_dtype, name=name)
        attention = MultiHeadAttention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            dropout_rate=self._rate(self.attention_dropout_rate),
            dropout_impl=self.dropout_impl,
            use_rope=self.use_rope,
            rope_base=self.rope_base,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            out_kernel_init=self.out_kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )
        ffn = FeedForward(
            hidden=self.mlp_dim,
            kind=self.ffn_kind,
            dropout_rate=self._rate(self.ffn_hidden_dropout_rate),
            dropout_impl=self.dropout_impl,
            use_bias=self.ffn_use_bias,
            kernel_init=self.ffn_kernel_init,
            bias_init=self.ffn_bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="ffn",
        )
        attn_drop = Dropout(self._rate(self.attention_output_dropout_rate), impl=self.dropout_impl)
        ffn_drop = Dropout(self._rate(self.ffn_output_dropout_rate), impl=self.dropout_impl)
        key_valid = valid if self.mask_keys_with_valid else None
        hash_rows = packed is not None and self.dropout_impl == "hash"
        out_index = _row_index(packed[0], x.shape[-1]) if hash_rows else None
        keys = [None] * 4 if dropout_key is None else [jax.random.fold_in(dropout_key, i) for i in range(4)]

        def attend(h_q, h_kv=None):
            a = attention(
                h_q,
                h_kv,
                valid=key_valid,
                causal=causal,
                mask=mask,
                positions_q=positions,
                positions_kv=positions,
                deterministic=deterministic,
                decode=decode,
                packed=packed,
                dropout_rng=keys[0],
            )
            return attn_drop(a, deterministic=deterministic, index=out_index, key=keys[1])

        def feed(h):
            hidden_index = _row_index(packed[0], self.mlp_dim) if hash_rows else None
            return ffn_drop(ffn(h, deterministic=deterministic, dropout_index=hidden_index, dropout_key=keys[2]),
                            deterministic=deterministic, index=out_index, key=keys[3])

        if self.sasrec_style:
            q = norm("attn_norm")(x)
            x = q + attend(q, x)
            x = norm("ffn_norm")(x)
            x = x + feed(x)
        elif self.pre_norm:
            x = x + attend(norm("attn_norm")(x))
            x = x + feed(norm("ffn_norm")(x))
        else:
            x = norm("attn_norm")(x + attend(x))
            x = norm("ffn_norm")(x + feed(x))
        if packed is not None:
            if self.zero_padding_outputs:  # unused capacity rows
                b, l = packed[1]
                x = x * (packed[0] < b * l).astype(x.dtype)[:, None]
        elif self.zero_padding_outputs and valid is not None:
            x = x * jnp.asarray(valid, x.dtype)[..., None]
        return x


_BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(_BlockFields) if f.name not in ("parent", "name"))


class TransformerStack(_BlockFields):
    """``num_layers`` :class:`TransformerBlock` s (``layer_0`` ...) plus an optional final norm.

    Attributes (besides the block configuration of :class:`_BlockFields`):
      num_layers: number of blocks.
      final_norm: apply a final norm (``final_norm`` submodule); default True for pre-norm and SASRec-style
        stacks, False for post-norm.
    """

    num_layers: int = 2
    final_norm: bool | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        valid: Array | None = None,
        *,
        causal: bool = False,
        mask: Array | None = None,
        positions: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        pack_capacity: int | None = None,
    ) -> Array:
        """``x [B, L, D] -> [B, L, D]``; arguments as :meth:`TransformerBlock.__call__`.

        ``pack_capacity``: skip the padding tokens (``valid == False``) in the position-wise work -- norms,
        Q/K/V/output projections, FFN -- by packing the real tokens into ``pack_capacity`` rows
        (:func:`pack_rows`); attention still runs in the ``[B, L]`` layout. A batch with more real tokens than
        the capacity runs the dense path instead (``flax.linen.cond``; both paths share the parameters). SASRec-
        style stacks with ``zero_padding_outputs`` only. The padding inputs are taken as zero (``x * valid``,
        as SASRec and C2DSR feed them); the output equals the dense path's, padding rows included (the final
        norm of a zero row), up to float rounding. Dropout in this mode: the stack draws one key from the
        ``"dropout"`` rng and layer ``i`` derives its keys from ``fold_in(key, i)`` (both paths alike); with
        ``dropout_impl="hash"`` a packed row's masks equal its dense position's, so the packed path equals its
        dense fallback in training too; ``"threefry"`` draws other masks for the packed rows.
        """
        cfg = {name: getattr(self, name) for name in _BLOCK_FIELDS}
        final = self.final_norm if self.final_norm is not None else (self.pre_norm or self.sasrec_style)
        make_final = lambda: make_norm(self.norm, self.norm_epsilon, self.dtype, self.param_dtype,  # noqa: E731
                                       name="final_norm")

        def dense(mdl, x, valid, mask, positions, key=None):
            for i in range(self.num_layers):
                x = TransformerBlock(**cfg, name=f"layer_{i}")(
                    x, valid, causal=causal, mask=mask, positions=positions, deterministic=deterministic,
                    decode=decode, dropout_key=None if key is None else jax.random.fold_in(key, i)
                )
            return make_final()(x) if final else x

        if pack_capacity is None:
            return dense(self, x, valid, mask, positions)
        if valid is None or decode or not (self.sasrec_style and self.zero_padding_outputs):
            raise ValueError("TransformerStack(pack_capacity=...): needs valid, no decode, and a sasrec_style stack "
                             "with zero_padding_outputs")
        b, l, d = x.shape
        x = x * jnp.asarray(valid, x.dtype)[..., None]
        index, count = pack_rows(valid, pack_capacity)

        def packed(mdl, x, valid, mask, positions, key=None):
            h = take_rows(x, index)
            for i in range(self.num_layers):
                h = TransformerBlock(**cfg, name=f"layer_{i}")(
                    h, valid, causal=causal, mask=mask, positions=positions, deterministic=deterministic,
                    packed=(index, (b, l)), dropout_key=None if key is None else jax.random.fold_in(key, i)
                )
            fill = jnp.zeros((d,), h.dtype)
            if final:
                norm = make_final()
                h, fill = norm(h), norm(fill[None])[0]
            return unpack_rows(h, index, (b, l), fill)

        rates = (self.attention_dropout_rate, self.attention_output_dropout_rate, self.ffn_hidden_dropout_rate,
                 self.ffn_output_dropout_rate)
        key = None if deterministic or not any(self._rate(r) > 0 for r in rates) else self.make_rng("dropout")
        if self.is_initializing():
            return dense(self, x, valid, mask, positions, key)
        return nn.cond(count <= pack_capacity, packed, dense, self, x, valid, mask, positions, key)


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


def sasrec_config(d_model: int, num_heads: int = 1, dropout_rate: float = 0.2, num_layers: int = 2, epsilon: float = 1e-8) -> dict:
    """Keyword arguments for :class:`TransformerStack` reproducing SASRec-pytorch / C2DSR's encoder.

    Pre-LN query, raw keys/values, ReLU point-wise FFN of width ``d_model`` (Conv1d k=1 == Dense) with
    biases, attention-weight dropout and FFN dropouts ``dropout_rate``, no dropout on the attention output,
    causal mask only (call with ``causal=True``, ``valid`` = non-PAD positions: used for the timeline mask, not
    as a key mask), final LayerNorm, PyTorch initialisers. Input scaling, positional embeddings, input dropout
    and the initial ``x * valid`` belong to the model.
    """
    return dict(
        num_heads=num_heads,
        head_dim=d_model // num_heads,
        mlp_dim=d_model,
        num_layers=num_layers,
        norm="layer",
        norm_epsilon=epsilon,
        ffn_kind="relu",
        sasrec_style=True,
        use_bias=True,
        ffn_use_bias=True,
        dropout_rate=dropout_rate,
        attention_output_dropout_rate=0.0,
        mask_keys_with_valid=False,
        zero_padding_outputs=True,
        final_norm=True,
        ffn_kernel_init=torch_linear_init(d_model),
        ffn_bias_init=torch_linear_init(d_model),
        **torch_mha_inits(d_model),
    )


def llama_config(d_model: int, num_heads: int, num_layers: int, mlp_dim: int | None = None, dropout_rate: float = 0.0) -> dict:
    """Keyword arguments for :class:`TransformerStack`: Llama-style (KuaiFormer default) decoder.

    Pre-norm RMSNorm (eps 1e-6), SwiGLU FFN (default width ``round(8/3 * d_model)`` to a multiple of 8), RoPE,
    no biases, final RMSNorm. Call with ``causal=True``.
    """
    if mlp_dim is None:
        mlp_dim = int(8 * ((8 * d_model / 3 + 7) // 8))
    return dict(
        num_heads=num_heads,
        head_dim=d_model // num_heads,
        mlp_dim=mlp_dim,
        num_layers=num_layers,
        pre_norm=True,
        norm="rms",
        norm_epsilon=1e-6,
        ffn_kind="swiglu",
        use_rope=True,
        use_bias=False,
        ffn_use_bias=False,
        dropout_rate=dropout_rate,
        final_norm=True,
    )
