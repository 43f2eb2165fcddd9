"""Loss kernels: softmax CE, sampled / in-batch softmax with logQ correction, BCE, BPR, InfoNCE with soft
targets, Gaussian KL and C2DSR's bilinear infomax.

All functions are pure and jit-able. Conventions:

* ``mask`` arguments are bool (or 0/1) arrays over the example dimensions; masked examples contribute nothing.
* ``reduction="mean"`` (default) averages over *unmasked* examples and returns 0 (not NaN) when every example is
  masked; ``"sum"`` sums them; ``"none"`` returns per-example losses with 0 at masked positions. Code that needs a
  different denominator (C2DSR averages over all ``B * 10`` slots, masked ones included) uses ``"sum"`` and
  divides itself.
* Logits that must not take part in a softmax are set to a large finite negative number (not ``-inf``), so
  gradients stay finite even for rows with nothing left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "softmax_cross_entropy",
    "sampled_softmax_loss",
    "in_batch_softmax_from_logits",
    "in_batch_softmax_loss",
    "bce_with_logits",
    "bpr_loss",
    "info_nce",
    "gaussian_kl",
    "masked_mean_pool",
    "bilinear_score",
    "bilinear_infomax_loss",
    "c2dsr_infomax_loss",
    "c2dsr_total_loss",
]

_REDUCTIONS = ("mean", "sum", "none")


def _neg_big(dtype):
    return jnp.asarray(-0.5 * jnp.finfo(dtype).max, dtype)


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _is_static_zero(x):
    """True for a Python/numpy zero (skips work); traced values are never treated as zero."""
    return isinstance(x, (int, float)) and x == 0


def _reduce(per_example, mask, reduction):
    """Applies ``mask`` (broadcast to ``per_example``) and the reduction."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if mask is None:
        m = jnp.ones(per_example.shape, per_example.dtype)
    else:
        m = jnp.broadcast_to(jnp.asarray(mask), per_example.shape).astype(per_example.dtype)
    loss = jnp.where(m > 0, per_example, 0) * m
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    count = m.sum()
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1), 0.0).astype(per_example.dtype)


def softmax_cross_entropy(logits, labels, mask=None, label_smoothing=0.0, reduction="mean"):
    """Softmax cross-entropy with integer labels and optional label smoothing.

    Target distribution ``(1 - a) * onehot(label) + a / V`` (Szegedy et al.; optax convention), ``a =
    label_smoothing``.

    Args:
      logits: ``[..., V]``.
      labels: int ``[...]`` in ``[0, V)``.
      mask: optional ``[...]``; masked entries are ignored (their labels may be anything, e.g. padding).
      label_smoothing: ``a`` in ``[0, 1)``.
      reduction: ``"mean"`` over unmasked entries (0 when all are masked), ``"sum"`` or ``"none"`` (``[...]``).
    """
    logits = _float(logits)
    labels = jnp.asarray(labels, jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    v = logits.shape[-1]
    safe = jnp.clip(labels, 0, v - 1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    if not _is_static_zero(label_smoothing):
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
    return _reduce(nll, mask, reduction)


def _log1mexp(x):
    """``log(1 - exp(x))`` for ``x < 0``, stable (Maechler 2012); ``x`` is clipped just below 0."""
    x = jnp.minimum(x, -1e-7)
    return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def sampled_softmax_loss(
    query,
    pos_emb,
    neg_emb,
    pos_logq=None,
    neg_logq=None,
    pos_ids=None,
    neg_ids=None,
    temperature=1.0,
    remove_accidental_hits=True,
    mask=None,
    neg_mask=None,
    reduction="mean",
):
    """Sampled softmax with logQ correction (Jean et al. 2015; Yi et al. 2019) and accidental-hit removal.

    ``logit(x) = <q, e_x> / temperature - log Q(x)`` for the positive and each negative; the loss is
    ``-log softmax`` of the positive among ``[positive, negatives]``. A negative whose id equals the row's
    positive id (an accidental hit) is dropped from the softmax. The temperature divides the dot product only
    (TFRS convention), the logQ shift is applied after it.

    Args:
      query: ``[B, D]``.
      pos_emb: ``[B, D]`` positive item embeddings.
      neg_emb: ``[N, D]`` negatives shared by the batch, or ``[B, N, D]`` per-row negatives.
      pos_logq: ``[B]`` log sampling probability of each positive, or ``None`` (no correction).
      neg_logq: ``[N]`` or ``[B, N]``, or ``None``.
      pos_ids: int ``[B]``; neg_ids: int ``[N]`` or ``[B, N]``; both needed for accidental-hit removal.
      temperature: scalar.
      remove_accidental_hits: drop negatives with ``neg_id == pos_id``.
      mask: ``[B]`` examples to include; neg_mask: ``[N]`` or ``[B, N]`` negatives to include (padding).
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (``[B]``).
    """
    query = _float(query)
    pos_logit = jnp.sum(query * pos_emb, axis=-1) / temperature
    if neg_emb.ndim == 2:
        neg_logit = query @ jnp.asarray(neg_emb, query.dtype).T / temperature
    else:
        neg_logit = jnp.einsum("bd,bnd->bn", query, neg_emb) / temperature
    if pos_logq is not None:
        pos_logit = pos_logit - pos_logq
    if neg_logq is not None:
        neg_logit = neg_logit - jnp.broadcast_to(neg_logq, neg_logit.shape)
    valid = jnp.ones(neg_logit.shape, bool)
    if neg_mask is not None:
        valid &= jnp.broadcast_to(jnp.asarray(neg_mask, bool), neg_logit.shape)
    if remove_accidental_hits and pos_ids is not None and neg_ids is not None:
        nid = jnp.broadcast_to(neg_ids, neg_logit.shape)
        valid &= nid != jnp.asarray(pos_ids)[:, None]
    neg_logit = jnp.where(valid, neg_logit, _neg_big(neg_logit.dtype))
    logits = jnp.concatenate([pos_logit[:, None], neg_logit], axis=1)
    nll = -jax.nn.log_softmax(logits, axis=-1)[:, 0]
    return _reduce(nll, mask, reduction)


def in_batch_softmax_from_logits(
    logits,
    item_ids=None,
    logq=None,
    temperature=1.0,
    label_smoothing=0.0,
    smoothing="standard",
    mask=None,
    remove_accidental_hits=True,
    reduction="mean",
):
    """In-batch softmax on precomputed scores ``[B, B]`` (row = query, column = in-batch item; label = diagonal).

    Use this form for multi-interest models: ``logits[b, c] = max_j <u_{b,j}, e_{item_c}>`` (KuaiFormer Eq. 9).

    ``z[b, c] = logits[b, c] / temperature - logq[c]`` (logQ correction, Yi et al. 2019; KuaiFormer Eq. 11).
    Excluded from row ``b``'s softmax: columns ``c != b`` with ``item_ids[c] == item_ids[b]`` (accidental hits,
    if ``remove_accidental_hits``) and columns of masked rows (padding items are nobody's negative). The valid
    negatives of row ``b`` are the set ``𝔅_b``; with ``p = softmax(z[b])`` and ``a = label_smoothing``:

    * ``smoothing="standard"``: ``-(1 - a) log p_b - (a / |𝔅_b|) sum_{c in 𝔅_b} log p_c``
      (standard label-smoothed CE, the smoothing mass spread over the valid negatives);
    * ``smoothing="paper"``: ``-(1 - a) log p_b - (a / |𝔅_b|) sum_{c in 𝔅_b} log(1 - p_c)``
      (KuaiFormer Eq. 12 as printed).

    Both equal the plain loss at ``a = 0``. Rows with no valid negative get only the first term.

    Args:
      logits: ``[B, B]``.
      item_ids: int ``[B]`` positive item id of each row, or ``None`` (no accidental-hit removal).
      logq: ``[B]`` log sampling probability of each row's positive, or ``None``.
      temperature, label_smoothing: scalars; smoothing: ``"standard"`` | ``"paper"``.
      mask: ``[B]`` real rows (bool).
      reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (``[B]``).
    """
    if smoothing not in ("standard", "paper"):
        raise ValueError(f"smoothing must be 'standard' or 'paper', got {smoothing!r}")
    logits = _float(logits)
    b = logits.shape[0]
    z = logits / temperature
    if logq is not None:
        z = z - jnp.asarray(logq, z.dtype)[None, :]
    eye = jnp.eye(b, dtype=bool)
    valid = jnp.ones((b, b), bool)
    if mask is not None:
        valid &= jnp.asarray(mask, bool)[None, :]
    if remove_accidental_hits and item_ids is not None:
        ids = jnp.asarray(item_ids)
        valid &= ~((ids[:, None] == ids[None, :]) & ~eye)
    valid |= eye
    z = jnp.where(valid, z, _neg_big(z.dtype))
    logp = jax.nn.log_softmax(z, axis=-1)
    nll = -jnp.diagonal(logp)
    if not _is_static_zero(label_smoothing):
        neg = valid & ~eye
        n_neg = neg.sum(axis=-1).astype(z.dtype)
        if smoothing == "standard":
            term = jnp.where(neg, logp, 0.0).sum(axis=-1)
        else:
            term = jnp.where(neg, _log1mexp(logp), 0.0).sum(axis=-1)
        smooth = -term / jnp.maximum(n_neg, 1.0)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    return _reduce(nll, mask, reduction)


def in_batch_softmax_loss(
    query,
    item_emb,
    item_ids=None,
    logq=None,
    temperature=1.0,
    label_smoothing=0.0,
    mask=None,
    remove_accidental_hits=True,
    smoothing="standard",
    reduction="mean",
):
    """In-batch softmax: each row's negatives are the other rows' positives (see `in_batch_softmax_from_logits`).

    Args: ``query [B, D]``, ``item_emb [B, D]`` (row ``b``'s positive), ``item_ids [B]``, ``logq [B]`` or ``None``;
      the rest as in `in_batch_softmax_from_logits`. Logits are ``query @ item_emb.T`` ``[B, B]``.
    """
    logits = _float(query) @ jnp.asarray(item_emb).T
    return in_batch_softmax_from_logits(
        logits,
        item_ids,
        logq,
        temperature=temperature,
        label_smoothing=label_smoothing,
        smoothing=smoothing,
        mask=mask,
        remove_accidental_hits=remove_accidental_hits,
        reduction=reduction,
    )


def bce_with_logits(logits, labels, mask=None, pos_weight=None, reduction="mean"):
    """Binary cross-entropy on logits, numerically stable (softplus form).

    ``loss = pos_weight * y * softplus(-x) + (1 - y) * softplus(x)``; ``y`` may be soft (in ``[0, 1]``).

    Args: ``logits [...]``, ``labels [...]`` (0/1 or soft), ``mask [...]`` or ``None``, ``pos_weight`` scalar or
      broadcastable to ``[...]`` (e.g. per task ``[T]``) or ``None`` (= 1);
      reduction ``"mean"`` (over unmasked) | ``"sum"`` | ``"none"``.
    """
    x = _float(logits)
    y = jnp.asarray(labels, x.dtype)
    pos_term = jax.nn.softplus(-x)
    if pos_weight is not None:
        pos_term = pos_term * pos_weight
    loss = y * pos_term + (1.0 - y) * jax.nn.softplus(x)
    return _reduce(loss, mask, reduction)


def bpr_loss(pos_scores, neg_scores, mask=None, reduction="mean"):
    """Bayesian personalised ranking: ``-log sigmoid(pos - neg) = softplus(neg - pos)``.

    Args: ``pos_scores [B]``; ``neg_scores [B]`` or ``[B, N]`` (then each of the ``N`` pairs is an example);
      ``mask`` broadcastable to ``neg_scores``' shape; reduction ``"mean"`` | ``"sum"`` | ``"none"``.
    """
    pos = _float(pos_scores)
    neg = jnp.asarray(neg_scores, pos.dtype)
    if neg.ndim == pos.ndim + 1:
        pos = pos[..., None]
    loss = jax.nn.softplus(neg - pos)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.ndim < loss.ndim:
            mask = mask.reshape(mask.shape + (1,) * (loss.ndim - mask.ndim))
    return _reduce(loss, mask, reduction)


def _l2_normalize(x, eps=1e-12):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def info_nce(anchors, positives, temperature=1.0, soft_targets=None, normalize=True, symmetric=False):
    """N-pair / InfoNCE loss with optional soft identity targets (i-Mix, ID-MixGCL).

    ``S = a p^T / temperature`` ``[B, B]`` (rows L2-normalised first if ``normalize``: cosine similarity);
    ``L = -(1/B) sum_i sum_j Y_ij log softmax_j(S_ij)``. ``Y = soft_targets`` (rows summing to 1), default the
    identity, which gives the hard N-pair loss (the positive stays in the denominator). With identity mixup,
    ``Y = Λ I + (1 - Λ) I[π]``. ``symmetric=True`` averages with the loss of ``S^T`` against ``Y^T`` (for soft
    targets, mix both views accordingly before relying on this).

    Args: ``anchors [B, D]``, ``positives [B, D]``, ``temperature`` scalar, ``soft_targets [B, B]`` or ``None``.
    Returns: scalar.
    """
    a = _float(anchors)
    p = jnp.asarray(positives, a.dtype)
    if normalize:
        a, p = _l2_normalize(a), _l2_normalize(p)
    s = a @ p.T / temperature
    y = jnp.eye(s.shape[0], dtype=s.dtype) if soft_targets is None else jnp.asarray(soft_targets, s.dtype)
    loss = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(s, axis=-1), axis=-1))
    if symmetric:
        loss_t = -jnp.mean(jnp.sum(y.T * jax.nn.log_softmax(s.T, axis=-1), axis=-1))
        loss = 0.5 * (loss + loss_t)
    return loss


def gaussian_kl(mu_q, logvar_q, mu_p=None, logvar_p=None):
    """``KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p)))``, summed over the last dimension.

    Parametrised by **log-variances** (``logvar = log sigma^2``; from ``sigma`` pass ``2 * log(sigma)``).
    ``KL = 1/2 sum_d [ exp(lq - lp) + (mu_q - mu_p)^2 exp(-lp) - 1 + lp - lq ]`` (CDRNP's formula).
    ``mu_p, logvar_p = None`` means the standard normal prior.

    Args: ``[..., Z]`` each (broadcastable). Returns ``[...]``.
    """
    mu_q = _float(mu_q)
    lq = jnp.asarray(logvar_q, mu_q.dtype)
    mu_p = jnp.zeros_like(mu_q) if mu_p is None else jnp.asarray(mu_p, mu_q.dtype)
    lp = jnp.zeros_like(lq) if logvar_p is None else jnp.asarray(logvar_p, mu_q.dtype)
    kl = jnp.exp(lq - lp) + jnp.square(mu_q - mu_p) * jnp.exp(-lp) - 1.0 + lp - lq
    return 0.5 * jnp.sum(kl, axis=-1)


def masked_mean_pool(x, mask):
    """Mean of ``x [B, T, D]`` over positions with ``mask [B, T]`` (weights ``mask / sum_t mask``) -> ``[B, D]``.

    Rows with an all-zero mask give 0 (C2DSR would divide by zero; its data never contain such rows).
    """
    x = _float(x)
    m = jnp.asarray(mask, x.dtype)
    den = m.sum(axis=-1, keepdims=True)
    w = m / jnp.where(den > 0, den, 1.0)
    return jnp.einsum("bt,btd->bd", w, x)


def bilinear_score(a, b, weight, bias=0.0):
    """Bilinear discriminator ``s = a^T W b + bias`` per row.

    Args: ``a [B, D1]``, ``b [B, D2]``, ``weight [D1, D2]`` (PyTorch ``nn.Bilinear(D1, D2, 1).weight[0]``), ``bias``
      scalar. Returns ``[B]``.
    """
    a = _float(a)
    return jnp.einsum("bi,ij,bj->b", a, jnp.asarray(weight, a.dtype), jnp.asarray(b, a.dtype)) + bias


def bilinear_infomax_loss(real_context, fake_context, summary, weight, bias=0.0, mask=None):
    """Deep-infomax style discriminator loss (C2DSR's contrastive cross-domain infomax term for one domain).

    ``BCE(D(real_context, summary), 1) + BCE(D(fake_context, summary), 0)`` with ``D(a, b) = a^T W b + bias``,
    each BCE averaged over the (unmasked) batch. For C2DSR's domain X: ``real_context = c_Y`` (mixed-sequence
    states pooled at Y target positions), ``fake_context = c~_Y`` (the same pooling over the sequence whose X
    items were randomised, ``corru_y``), ``summary = s_X`` (X-only encoder pooled at X target positions).

    Args: ``real_context, fake_context [B, D1]``, ``summary [B, D2]``, ``weight [D1, D2]``, ``bias`` scalar,
      ``mask [B]`` or ``None``. Returns scalar.
    """
    pos = bilinear_score(real_context, summary, weight, bias)
    neg = bilinear_score(fake_context, summary, weight, bias)
    return bce_with_logits(pos, jnp.ones_like(pos), mask) + bce_with_logits(neg, jnp.zeros_like(neg), mask)


def c2dsr_infomax_loss(
    seq_states,
    x_states,
    y_states,
    corrupt_x_states,
    corrupt_y_states,
    x_mask,
    y_mask,
    weight_x,
    bias_x,
    weight_y,
    bias_y,
    row_mask=None,
):
    """C2DSR's two infomax terms (official code), returned as ``(L_mi_X, L_mi_Y)``.

    Pooling (full-length target masks, before the last-10 slice): ``w_X = x_mask / sum x_mask``, likewise ``w_Y``;
    ``s_X = pool_X(F_X)``, ``s_Y = pool_Y(F_Y)``, ``c_X = pool_X(F)``, ``c_Y = pool_Y(F)``,
    ``c~_X = pool_X(F_cx)``, ``c~_Y = pool_Y(F_cy)``;
    ``L_mi_X = BCE(D_X(c_Y, s_X), 1) + BCE(D_X(c~_Y, s_X), 0)``;
    ``L_mi_Y = BCE(D_Y(c_X, s_Y), 1) + BCE(D_Y(c~_X, s_Y), 0)``.

    Args:
      seq_states: ``F [B, T, D]`` mixed encoder; x_states ``F_X``, y_states ``F_Y`` ``[B, T, D]``;
      corrupt_x_states: ``F_cx [B, T, D]`` (encoder on ``corru_x``: X items kept, Y items randomised);
      corrupt_y_states: ``F_cy [B, T, D]`` (encoder on ``corru_y``);
      x_mask, y_mask: ``[B, T]`` target masks; weight_x, weight_y: ``[D, D]``; bias_x, bias_y: scalars;
      row_mask: ``[B]`` bool or None -- the rows the BCE means run over (e.g. real, non-padding examples).
    """
    s_x = masked_mean_pool(x_states, x_mask)
    s_y = masked_mean_pool(y_states, y_mask)
    c_x = masked_mean_pool(seq_states, x_mask)
    c_y = masked_mean_pool(seq_states, y_mask)
    cc_x = masked_mean_pool(corrupt_x_states, x_mask)
    cc_y = masked_mean_pool(corrupt_y_states, y_mask)
    l_x = bilinear_infomax_loss(c_y, cc_y, s_x, weight_x, bias_x, mask=row_mask)
    l_y = bilinear_infomax_loss(c_x, cc_x, s_y, weight_y, bias_y, mask=row_mask)
    return l_x, l_y


def c2dsr_total_loss(prediction_losses, infomax_losses, lam=0.7):
    """C2DSR's combination ``lam * sum(prediction_losses) + (1 - lam) * sum(infomax_losses)``.

    ``prediction_losses = (L_sx, L_sy, L_x, L_y)``, ``infomax_losses = (L_mi_X, L_mi_Y)``; ``lam = 0.7`` by default.
    """
    return lam * sum(prediction_losses) + (1.0 - lam) * sum(infomax_losses)
