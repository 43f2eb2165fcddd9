"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018) and its task.

The sequential backbone that C2DSR and KuaiFormer extend. Architecture (SASRec-pytorch, as C2DSR uses it;
see ../shared/papers/c2dsr.md §5)::

    x = E[ids] · sqrt(d) + P[0..L-1]          E: [V+1, d] item table (row 0 = padding), P: [L, d] positions
    x = Dropout(x) · valid                     valid = ids != 0 (left-padded sequences)
    x = TransformerStack(sasrec_config(...))(x, valid, causal=True)   # Q-only pre-LN blocks, final LayerNorm
    score(item) = <x_t, E[item]>               shared input/output embeddings

Shapes: ``input_ids [B, L]`` int (0 = padding) -> hidden ``[B, L, d]``; ``logits [B, L, V+1]``.

Choices (config options, defaults in brackets):
  * ``mask_keys_with_valid`` [True]: key-padding mask in attention. SASRec-pytorch and C2DSR use the causal
    mask only, so real positions also attend to left-padding slots; C2DSR sets False for parity.
  * task ``loss`` ["softmax"]: full-catalogue softmax cross-entropy at every position with a target
    (SASRec-CE, the stronger modern reading); ``"sampled_softmax"``: softmax over the target and
    ``task.num_loss_negatives`` uniform negatives shared by the batch (for large catalogues); ``"bce"``: the paper's binary cross-entropy with one uniformly
    sampled negative per position (negatives may rarely hit a positive; the original code resamples only
    against the user's history).
  * evaluation: the representation of the last position scores (a) the whole catalogue, excluding padding
    and the user's history items other than the target (``eval.exclude_history``), and (b) the target
    against ``eval.num_negatives`` fixed sampled negatives (never the user's items). Ties count half
    (``eval.ties``), so an untrained model with constant scores is not rewarded.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import flops as flops_lib
from jaxrec.kernels import losses, metrics
from jaxrec.nn.embeddings import ShardedEmbed
from jaxrec.nn.transformer import TransformerStack, sasrec_config
from jaxrec.registry import register_model, register_task

PAD_ID = 0


@register_model("sasrec")
class SASRec(nn.Module):
    """SASRec encoder with tied input/output item embeddings.

    Attributes:
      num_items: catalogue size V (item ids 1..V; 0 = padding).
      embed_dim: d. num_blocks, num_heads: transformer depth and heads. max_len: L (positional table size).
      dropout_rate: embedding, attention-weight and FFN dropout (SASRec: 0.2 for sparse data).
      mask_keys_with_valid: key-padding mask (see module docstring).
      layer_norm_eps: LayerNorm epsilon (1e-8 in SASRec-pytorch / C2DSR).
      vocab_pad_multiple: item-table rows padded to a multiple of this, so the table row-shards evenly over a
        ``model`` mesh axis of that size (padding rows are never looked up or scored).
      embed_lookup: ``"auto"`` or ``"shard_map"`` (see :class:`jaxrec.nn.embeddings.ShardedEmbed`).
    """

    num_items: int
    embed_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 50
    dropout_rate: float = 0.2
    mask_keys_with_valid: bool = True
    layer_norm_eps: float = 1e-8
    vocab_pad_multiple: int = 8
    embed_lookup: str = "auto"

    def setup(self):
        self.item_embed = ShardedEmbed(self.num_items + 1, self.embed_dim, lookup=self.embed_lookup,
                                       pad_to_multiple_of=self.vocab_pad_multiple,
                                       embedding_init=nn.initializers.normal(stddev=1.0 / math.sqrt(self.embed_dim)),
                                       name="item_embed")
        self.pos_embed = self.param("pos_embed", nn.with_logical_partitioning(
            nn.initializers.normal(stddev=1.0 / math.sqrt(self.embed_dim)), (None, "embed")),
            (self.max_len, self.embed_dim))
        cfg = sasrec_config(self.embed_dim, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                            num_layers=self.num_blocks, epsilon=self.layer_norm_eps)
        cfg["mask_keys_with_valid"] = self.mask_keys_with_valid
        self.encoder = TransformerStack(**cfg, name="encoder")
        self.input_dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, input_ids, *, train: bool = False):
        """``input_ids [B, L]`` (left-padded with 0, L <= max_len) -> hidden states ``[B, L, d]``."""
        L = input_ids.shape[-1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len={self.max_len}")
        valid = input_ids != PAD_ID
        x = self.item_embed(input_ids) * math.sqrt(self.embed_dim)
        x = x + self.pos_embed[None, -L:]
        x = self.input_dropout(x, deterministic=not train)
        x = x * valid[..., None].astype(x.dtype)
        return self.encoder(x, valid, causal=True, deterministic=not train)

    def item_table(self):
        """``[V+1, d]`` item embeddings (row 0 = padding; the table's alignment rows excluded)."""
        return self.item_embed.embedding[: self.num_items + 1]

    def logits(self, hidden):
        """``hidden [..., d] -> [..., V+1]`` scores against every item (padding column included)."""
        return self.item_embed.attend(hidden)

    def score_items(self, hidden, item_ids):
        """``hidden [B, d]``, ``item_ids [B, N]`` -> ``[B, N]`` dot-product scores."""
        return jnp.einsum("bd,bnd->bn", hidden, self.item_embed(item_ids))


def sasrec_forward_flops(num_items: int, max_len: int, embed_dim: int, num_blocks: int, num_heads: int,
                         head_positions: int | None = None) -> float:
    """Analytic forward FLOPs per example: blocks (causal attention counted at half) + the softmax head.

    ``head_positions``: positions whose catalogue logits are computed (default all ``max_len``).
    """
    blocks = num_blocks * flops_lib.transformer_block(max_len, embed_dim, num_heads, embed_dim // num_heads,
                                                      embed_dim, causal_half=True)
    head = flops_lib.dense(max_len if head_positions is None else head_positions, embed_dim, num_items + 1)
    return blocks + head


class SeqRecTask:
    """Next-item prediction with a sequence encoder (SASRec and encoders exposing ``logits``/``item_table``).

    Batches (from :mod:`jaxrec.data.pipeline`): training ``input_ids, target_ids, mask [B, L]``; evaluation
    ``input_ids [B, L], target [B], negatives [B, N], history [B, M], valid [B]``.
    """

    name = "seqrec"

    def __init__(self, cfg, data_info):
        from jaxrec import registry

        if data_info.kind != "sequence":
            from jaxrec.config import ConfigError

            raise ConfigError(f"config key 'data.name': task 'seqrec' needs a sequence dataset, "
                              f"{data_info.name!r} is {data_info.kind!r}")
        self.cfg = cfg
        self.num_items = int(data_info.num_items)
        model_kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
        self.model = registry.get_model(cfg.model.name)(num_items=self.num_items, **model_kwargs)
        self.max_len = int(cfg.model.max_len)
        self.loss_type = cfg.task.get("loss", "softmax")
        if self.loss_type not in ("softmax", "sampled_softmax", "bce"):
            from jaxrec.config import ConfigError

            raise ConfigError(f"config key 'task.loss': expected 'softmax', 'sampled_softmax' or 'bce', "
                              f"got {self.loss_type!r}")
        self.num_loss_negatives = int(cfg.task.get("num_loss_negatives", 1))
        self.num_negatives = int(cfg.eval.get("num_negatives", 100))
        self.ties = cfg.eval.get("ties", "half")
        self.exclude_history = bool(cfg.eval.get("exclude_history", True))

    # ----------------------------------------------------------------------------------- data
    def train_transform(self):
        from jaxrec.data.pipeline import SeqTrainTransform

        return SeqTrainTransform(self.max_len)

    def eval_transform(self, split: str):
        from jaxrec.data.pipeline import SeqEvalTransform, fixed_negatives_fn

        neg_fn = (fixed_negatives_fn(self.num_items, self.num_negatives, int(self.cfg.eval.negatives_seed))
                  if self.num_negatives else None)
        return SeqEvalTransform(self.max_len, self.num_negatives, neg_fn,
                                history_len=int(self.cfg.eval.get("history_len", 200)))

    def dummy_batch(self, batch_size: int) -> dict:
        z = np.zeros((batch_size, self.max_len), np.int32)
        return {"input_ids": z, "target_ids": z, "mask": np.zeros((batch_size, self.max_len), bool),
                "user_id": np.zeros((batch_size,), np.int32)}

    # ----------------------------------------------------------------------------------- model
    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch["input_ids"], train=False)

    def loss(self, params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        hidden = self.model.apply(variables, batch["input_ids"], train=True, rngs={"dropout": rng})
        mask = batch["mask"]
        if self.loss_type == "softmax":
            logits = self.model.apply(variables, hidden, method="logits")  # [B, L, V+1]
            logits = logits.at[..., PAD_ID].set(-1e9)
            loss = losses.softmax_cross_entropy(logits, batch["target_ids"], mask=mask)
        elif self.loss_type == "sampled_softmax":
            # N uniform negatives shared by every position of the batch; uniform sampling makes logQ a
            # constant, which cancels in the softmax; negatives equal to a position's target are masked.
            neg = jax.random.randint(jax.random.fold_in(rng, 1), (self.num_loss_negatives,), 1, self.num_items + 1)
            b, l, d = hidden.shape
            table = self.model.apply(variables, method="item_table")
            loss = losses.sampled_softmax_loss(
                hidden.reshape(b * l, d), table[batch["target_ids"].reshape(b * l)], table[neg],
                pos_ids=batch["target_ids"].reshape(b * l), neg_ids=neg, remove_accidental_hits=True,
                mask=mask.reshape(b * l))
        else:
            neg_rng = jax.random.fold_in(rng, 1)
            neg = jax.random.randint(neg_rng, batch["target_ids"].shape, 1, self.num_items + 1)
            b, l, d = hidden.shape
            pos_s = self.model.apply(variables, hidden.reshape(b * l, d), batch["target_ids"].reshape(b * l, 1),
                                     method="score_items").reshape(b, l)
            neg_s = self.model.apply(variables, hidden.reshape(b * l, d), neg.reshape(b * l, 1),
                                     method="score_items").reshape(b, l)
            loss = (losses.bce_with_logits(pos_s, jnp.ones_like(pos_s), mask=mask)
                    + losses.bce_with_logits(neg_s, jnp.zeros_like(neg_s), mask=mask))
        return loss, ({"targets": jnp.sum(mask)}, model_state)

    def scores(self, params, model_state, input_ids):
        """Catalogue scores ``[B, V+1]`` of the next item after ``input_ids [B, L]`` (padding column -inf)."""
        variables = {"params": params, **model_state}
        hidden = self.model.apply(variables, input_ids, train=False)[:, -1]
        s = self.model.apply(variables, hidden, method="logits")
        return s.at[:, PAD_ID].set(-jnp.inf)

    def evaluate(self, params, model_state, batch):
        scores = self.scores(params, model_state, batch["input_ids"])
        target = batch["target"]
        pad_col = jnp.arange(scores.shape[-1]) == PAD_ID
        rank = metrics.rank_in_catalogue(scores, target, exclude_mask=pad_col,
                                         exclude_ids=batch["history"] if self.exclude_history else None,
                                         exclude_pad_id=PAD_ID, ties=self.ties, margin=0.0)
        out = {f"full/{k}": v for k, v in metrics.ranking_metrics(rank, hr_ks=(1, 5, 10, 20),
                                                                  ndcg_ks=(5, 10, 20)).items()}
        if self.num_negatives:
            pos = jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
            neg = jnp.take_along_axis(scores, batch["negatives"], axis=1)
            srank = metrics.rank_against_negatives(pos, neg, ties=self.ties, margin=0.0)
            out.update({f"sampled/{k}": v for k, v in metrics.ranking_metrics(srank, hr_ks=(1, 5, 10),
                                                                              ndcg_ks=(5, 10)).items()})
        return out

    def train_flops_per_example(self) -> float:
        m = self.cfg.model
        fwd = sasrec_forward_flops(self.num_items, self.max_len, m.embed_dim, m.num_blocks, m.num_heads,
                                   head_positions=self.max_len if self.loss_type == "softmax" else 0)
        if self.loss_type == "sampled_softmax":
            fwd += flops_lib.dense(self.max_len, m.embed_dim, self.num_loss_negatives + 1)
        return flops_lib.training(fwd)


@register_task("seqrec")
def make_seqrec_task(cfg, data_info) -> SeqRecTask:
    return SeqRecTask(cfg, data_info)
