"""CDSRNP: cross-domain sequential recommendation for non-overlapped users via neural processes (Li, Cao, Gao,
Liu, Pang; WSDM 2025; arXiv 2410.13588), model ``cdsrnp`` and task ``cdsrnp``.

Spec: ../shared/papers/cdsrnp.md. Confidence **low**: only the abstract is verified; everything below that is
not the abstract's wording is a reconstruction [R] (spec §3) on top of the C2DSR port
(:mod:`jaxrec.models.c2dsr`, spec ../shared/papers/c2dsr.md). Every choice is listed here with its config key;
the alternatives of the spec's §6 are options.

Setting [P]: episodes (meta-learning). Support set = sampled *overlapped* users (both domains); query set =
users to predict, overlapped and non-overlapped. A neural process aligns the prior over a cross-domain latent
``z`` (from the support set) with the posterior (support ∪ query); a fine-grained interest adaptive layer
conditions the query user's item-level representation on ``z``.

Architecture (``E`` episodes, ``Ns`` support users, ``Nq`` query users, ``T`` = ``max_len``, ``d``)::

    F, F_X, F_Y [R, T, d]  = C2DSR encoders (mixed, X-only, Y-only streams; GCN item tables), one pass over all
                             R = E*(Nq+Ns) users of the step (``self.base`` is a :class:`C2DSR`)
    x_i  = [h_i^X ; h_i^Y ; e(y_i)]    per-user set-encoder input (``model.set_input`` ["single"]):
           h^X = F_X at the X stream's last slot (0 if the stream is empty), h^Y likewise;
           "mixed": [F[:, -1]]; "both": [F[:, -1]; h^X; h^Y]. e(y_i) = the mixed raw item table row of the
           user's next item (its target), appended when ``model.set_targets`` [True]: NP context points are
           (sequence, target) pairs
    r_i  = MLP(x_i)  (2 layers, ReLU, ``set_hidden_dim``);  r_S = masked mean_i r_i  (permutation- and
           padding-invariant, ``kernels.losses.masked_mean_pool``)
    (mu, logvar) = MLP(r_S)  -> ``latent_dim`` (a log-variance head, TaNP)
    prior      p(z | S)       = set encoder over the support set
    posterior  q(z | S ∪ Q)   = the same set encoder over support ∪ query (with the query targets)
                              (``model.posterior`` ["support_query" | "query": Q only]); with the query set
                              empty/masked the posterior *is* the prior
    z    = mu_q + exp(logvar_q / 2) * eps  (training, reparameterised); inference: z = mu_p (prior mean)
    ``model.latent_scope`` ["episode"]: one z per episode shared by its query users; "user": one posterior per
           query user, q(z | S ∪ {u}) (the prior is the same for all)
    Episodes are batched by ``nn.vmap`` of :class:`EpisodeLatent` (set encoder + prior/posterior) over E.

    Fine-grained interest adaptive layer (:class:`InterestAdapter`, one per stream F, F_X, F_Y), item level:
      ``model.adapt`` ["film"]: A_t = (1 + γ(z)) ⊙ H_t + β(z) per item position (TaNP-style FiLM);
                      "gate": A_t = 2σ(W_h H_t + W_z z + b) ⊙ H_t;  "add": A_t = H_t + W z (plain NP decoder,
                      the "without adaptive layer" ablation with pool "last")
      ``model.adapt_pool`` ["attention"]: A_t += α · Σ_{s≤t} softmax_s(q(z)·k(A_s)) A_s  -- a z-conditioned
                      causal attention pooling of the adapted item states into the user vector at t
                      (``kernels.attention.self_attention``, causal + key padding); "last": none
      All adapter output weights and α start at 0: at initialisation CDSRNP scores exactly as C2DSR.
    Scoring = C2DSR heads on the adapted states: training ``lin_X(A + A_X)`` per position (and the shared
    ``lin_X(A)``), evaluation ``lin_X(A[:, -1] + A_X[x_last])`` (likewise Y; :meth:`C2DSR.score_states`).

Objective (per step; the CE and infomax terms are C2DSR's own composition, :meth:`C2DSR.loss_terms`, called
on the adapted states with the query/support row weights; only the KL term is added here)::

    L = λ (L_sx + L_sy + L_x + L_y) + (1 − λ)(L_mi_X + L_mi_Y) + β · KL(q ‖ p) / N_slots
      * the four CE terms over the *query* rows, last ``task.loss_positions`` [10] positions, averaged over
        all ``B·P`` slots (C2DSR); non-overlapped users only have their own domain's targets;
        ``task.support_loss_weight`` [0.0]: the support rows are decoded too (with z ~ p(z|S)), this weight
        ``task.head_slots`` ["masked"]: C2DSR's masked vocabulary heads (:func:`c2dsr.masked_head_terms`: the
        heads run only on weighted slots -- non-overlapped users have none in the other domain -- compacted
        to a static capacity from the training table, exact dense fallback above it; same sums as "all")
      * speed options shared with C2DSR (same states and losses): ``task.gcn_rows`` ["all" | "batch"] computes
        the GCN only at the item rows the step's query + support rows reach (``task.gcn_edge_capacity``
        ["auto" | int]; :meth:`C2DSR.row_tables`), ``model.dropout_impl`` ["threefry" | "hash"] the dropout
        mask generator (:mod:`jaxrec.kernels.dropout`), ``task.encoder_tokens`` ["all" | "packed"] the encoders'
        position-wise work on the real tokens only (``task.token_capacity`` ["auto" | int]; capacities for the
        step's query rows plus its support rows; c2dsr module docstring)
      * infomax (``kernels.losses.bilinear_infomax_loss``) on the un-adapted encoder states, only over
        overlapped query rows (it needs both streams; ``loss_terms``' ``infomax_states`` / ``infomax_rows``);
        ``task.lambda_`` [0.7]
      * KL with ``kernels.losses.gaussian_kl`` (log-variances), summed over episodes (or over query users for
        the "user" scope), ``task.kl_weight`` β [1.0]; ``task.kl_normalise`` ["slots"]: divided by the CE
        denominator ``N_slots = #query rows · P`` so that CE + KL is the per-slot negative ELBO; "episode":
        mean KL per episode (per user for the "user" scope) instead

With ``model.use_np = False`` the NP branch is gone (no set encoder, adapter or KL): the model is the C2DSR
port (same parameters under ``base``, same losses and scores; tested).

Episodes and data (:mod:`jaxrec.data.cdsrnp_transforms`): ``train.batch_size = E · Nq`` shuffled training
users are the queries (``task.query_size`` Nq [64]); each episode gets ``task.support_size`` Ns [32]
overlapped users, sampled without replacement, excluding the episode's queries (``task.exclude_query``
[True]), seeded by the query user ids (``task.episode_seed``). Non-overlapped users train on their
single-domain sequence. ``task.overlap_ratio`` ρ [1.0] (< 1: only a fraction ρ of overlapped training users
keep both domains), ``task.overlap_seed``.

Inference (:meth:`CDSRNP.infer`) takes the support set and the query users' *input streams only* (its
signature has no target argument): a fixed support set of ``eval.support_size`` [= Ns] overlapped training
users (drawn once, ``eval.support_seed``), z = prior mean.

Evaluation: C2DSR's protocol (999 fixed negatives + full ranking; MRR, NDCG@5/10, HR@1/5/10). Every valid/test
history holds both domains, so two views: the full history (metric names ``X/...``, ``Y/...``, ``all/...`` as
C2DSR: the *overlapped* group) and the non-overlapped view with items hidden (``eval.nonoverlap_keep``
["target_domain": keep only the target domain's items | "other_domain"], names ``nonoverlap/X/...``,
``nonoverlap/Y/...``, ``nonoverlap/all/...``; full ranking ``.../full/...``).

Parameters: ``base`` (the C2DSR tree), ``latent`` (``set_encoder``: ``embed1, embed2, lat, mu, logvar``
Dense layers), ``adapt_f, adapt_x, adapt_y`` (FiLM / gate / add Dense layers, ``pool_query``,
``pool_key``, ``pool_gate``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import attention, losses
from jaxrec.models.c2dsr import (C2DSR, accumulate_two_views, build_model, device_graphs, eval_protocol,
                                gcn_row_options, head_capacity, head_slot_counts, load_train_records,
                                nonoverlap_keep_option, rank_two_views, resolve_gcn_capacities,
                                resolve_token_capacities, supervised_positions, token_counts, token_options,
                                take_at, train_protocol, two_domain_sizes, two_view_inputs)
from jaxrec.registry import register_model, register_task

QUERY_INPUT_KEYS = ("seq", "x_seq", "y_seq", "pos", "x_pos", "y_pos", "x_last", "y_last")
STREAM_INPUT_KEYS = ("seq", "x_seq", "y_seq", "pos", "x_pos", "y_pos")
SUPPORT_KEYS = STREAM_INPUT_KEYS + ("x_last", "y_last", "has_x", "has_y", "last_item", "keep")
ADAPT_MODES = ("film", "gate", "add")
POOL_MODES = ("attention", "last")
SET_INPUTS = ("single", "mixed", "both")
POSTERIORS = ("support_query", "query")
SCOPES = ("episode", "user")


def set_mean(r, mask):
    """Masked mean over the set axis: ``r [..., N, h]``, ``mask [..., N]`` -> ``[..., h]`` (0 for an empty set)."""
    lead = r.shape[:-2]
    flat = losses.masked_mean_pool(r.reshape((-1,) + r.shape[-2:]), jnp.reshape(mask, (-1, r.shape[-2])))
    return flat.reshape(lead + r.shape[-1:])


class SetEncoder(nn.Module):
    """Permutation-invariant set encoder: ``x [..., N, din]``, ``mask [..., N]`` -> ``(mu, logvar) [..., Z]``."""

    hidden_dim: int
    latent_dim: int

    def setup(self):
        self.embed1 = nn.Dense(self.hidden_dim)
        self.embed2 = nn.Dense(self.hidden_dim)
        self.lat = nn.Dense(self.hidden_dim)
        self.mu = nn.Dense(self.latent_dim)
        self.logvar = nn.Dense(self.latent_dim)

    def embed(self, x):
        """Per-element representation ``r_i``."""
        return self.embed2(nn.relu(self.embed1(x)))

    def latent(self, r):
        """``(mu, logvar)`` from an aggregated representation."""
        h = nn.relu(self.lat(r))
        return self.mu(h), self.logvar(h)

    def __call__(self, x, mask):
        return self.latent(set_mean(self.embed(x), jnp.asarray(mask, jnp.float32)))


class EpisodeLatent(nn.Module):
    """Prior and posterior of one episode (vmapped over episodes by :class:`CDSRNP`).

    ``s_x [Ns, din], s_mask [Ns], q_x [Nq, din], q_mask [Nq]`` -> ``(mu_p, lv_p [Z], mu_q, lv_q)`` with
    ``mu_q [Z]`` (scope "episode") or ``[Nq, Z]`` (scope "user")."""

    hidden_dim: int
    latent_dim: int
    posterior: str = "support_query"
    latent_scope: str = "episode"  # (``scope`` is a reserved Flax attribute)

    def setup(self):
        self.set_encoder = SetEncoder(self.hidden_dim, self.latent_dim)

    def prior(self, s_x, s_mask):
        return self.set_encoder(s_x, s_mask)

    def __call__(self, s_x, s_mask, q_x, q_mask):
        enc = self.set_encoder
        sm, qm = jnp.asarray(s_mask, jnp.float32), jnp.asarray(q_mask, jnp.float32)
        r_s, r_q = enc.embed(s_x), enc.embed(q_x)
        mu_p, lv_p = enc.latent(set_mean(r_s, sm))
        if self.latent_scope == "episode":
            if self.posterior == "support_query":
                r = set_mean(jnp.concatenate([r_s, r_q], 0), jnp.concatenate([sm, qm], 0))
            else:
                r = set_mean(r_q, qm)
            mu_q, lv_q = enc.latent(r)
            if self.posterior == "query":  # an empty query set adds nothing: posterior = prior
                empty = qm.sum() == 0
                mu_q, lv_q = jnp.where(empty, mu_p, mu_q), jnp.where(empty, lv_p, lv_q)
            return mu_p, lv_p, mu_q, lv_q
        if self.posterior == "support_query":
            r = (jnp.einsum("n,nh->h", sm, r_s)[None] + r_q) / (sm.sum() + 1.0)
        else:
            r = r_q
        mu_q, lv_q = enc.latent(r)
        real = qm[:, None] > 0  # masked query users: posterior = prior (they contribute nothing)
        return mu_p, lv_p, jnp.where(real, mu_q, mu_p[None]), jnp.where(real, lv_q, lv_p[None])


class InterestAdapter(nn.Module):
    """Fine-grained interest adaptive layer: item-level states ``h [B, T, d]`` conditioned on ``z [B, Z]``.
    ``valid [B, T]`` marks real items (keys of the attention pooling)."""

    embed_dim: int
    mode: str = "film"
    pool: str = "attention"

    @nn.compact
    def __call__(self, h, valid, z):
        d = self.embed_dim
        zeros = nn.initializers.zeros_init()
        if self.mode == "film":
            gamma = nn.Dense(d, kernel_init=zeros, name="film_gamma")(z)[:, None]
            beta = nn.Dense(d, kernel_init=zeros, name="film_beta")(z)[:, None]
            a = h * (1.0 + gamma) + beta
        elif self.mode == "gate":
            g = nn.Dense(d, use_bias=False, kernel_init=zeros, name="gate_h")(h)
            g = g + nn.Dense(d, kernel_init=zeros, name="gate_z")(z)[:, None]
            a = 2.0 * nn.sigmoid(g) * h
        elif self.mode == "add":
            a = h + nn.Dense(d, kernel_init=zeros, name="add_z")(z)[:, None]
        else:
            raise ValueError(f"config key 'model.adapt': expected one of {ADAPT_MODES}, got {self.mode!r}")
        if self.pool == "attention":
            b, t = h.shape[:2]
            q = nn.Dense(d, name="pool_query")(z)
            k = nn.Dense(d, name="pool_key")(a)
            qb = jnp.broadcast_to(q[:, None, None, :], (b, t, 1, d))
            pooled = attention.self_attention(qb, k[:, :, None], a[:, :, None], valid, causal=True)[:, :, 0]
            a = a + self.param("pool_gate", zeros, ()) * pooled
        elif self.pool != "last":
            raise ValueError(f"config key 'model.adapt_pool': expected one of {POOL_MODES}, got {self.pool!r}")
        return a


@register_model("cdsrnp")
class CDSRNP(nn.Module):
    """CDSRNP (module docstring). C2DSR attributes plus the NP options."""

    num_x: int
    num_y: int
    embed_dim: int = 256
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 15
    dropout_rate: float = 0.2
    gnn_layers: int = 1
    use_graph: bool = True
    key_padding_mask: bool = False
    layer_norm_eps: float = 1e-8
    dropout_impl: str = "threefry"
    use_np: bool = True
    latent_dim: int = 64
    set_hidden_dim: int = 256
    latent_scope: str = "episode"
    posterior: str = "support_query"
    set_input: str = "single"
    set_targets: bool = True
    adapt: str = "film"
    adapt_pool: str = "attention"

    @property
    def pad_id(self) -> int:
        return self.num_x + self.num_y

    def setup(self):
        for key, val, allowed in (("latent_scope", self.latent_scope, SCOPES),
                                  ("posterior", self.posterior, POSTERIORS),
                                  ("set_input", self.set_input, SET_INPUTS), ("adapt", self.adapt, ADAPT_MODES),
                                  ("adapt_pool", self.adapt_pool, POOL_MODES)):
            if val not in allowed:
                raise ValueError(f"config key 'model.{key}': expected one of {allowed}, got {val!r}")
        self.base = C2DSR(num_x=self.num_x, num_y=self.num_y, embed_dim=self.embed_dim,
                          num_blocks=self.num_blocks, num_heads=self.num_heads, max_len=self.max_len,
                          dropout_rate=self.dropout_rate, gnn_layers=self.gnn_layers, use_graph=self.use_graph,
                          key_padding_mask=self.key_padding_mask, layer_norm_eps=self.layer_norm_eps,
                          dropout_impl=self.dropout_impl)
        if self.use_np:
            vmapped = nn.vmap(EpisodeLatent, variable_axes={"params": None}, split_rngs={"params": False},
                              in_axes=0, out_axes=0, methods=["__call__", "prior"])
            self.latent = vmapped(hidden_dim=self.set_hidden_dim, latent_dim=self.latent_dim,
                                  posterior=self.posterior, latent_scope=self.latent_scope)
            ad = dict(embed_dim=self.embed_dim, mode=self.adapt, pool=self.adapt_pool)
            self.adapt_f = InterestAdapter(**ad)
            self.adapt_x = InterestAdapter(**ad)
            self.adapt_y = InterestAdapter(**ad)

    # ------------------------------------------------------------------------------------ pieces
    def user_features(self, st, rows):
        """Set-encoder inputs ``[R, din]`` from encoder states and ``x_last, y_last, has_x, has_y`` (+
        ``last_item`` when ``set_targets``)."""
        hx = take_at(st["F_X"], rows["x_last"]) * jnp.asarray(rows["has_x"], st["F_X"].dtype)[:, None]
        hy = take_at(st["F_Y"], rows["y_last"]) * jnp.asarray(rows["has_y"], st["F_Y"].dtype)[:, None]
        h = st["F"][:, -1]
        parts = {"single": [hx, hy], "mixed": [h], "both": [h, hx, hy]}[self.set_input]
        if self.set_targets:
            parts.append(self.base.item_emb[jnp.asarray(rows["last_item"], jnp.int32)])
        return jnp.concatenate(parts, -1)

    def adapt_states(self, st, z, rows):
        """Adapted ``{"F", "F_X", "F_Y"}`` for per-row latents ``z [R, Z]``."""
        pad = self.pad_id
        return {"F": self.adapt_f(st["F"], rows["seq"] != pad, z),
                "F_X": self.adapt_x(st["F_X"], rows["x_seq"] != pad, z),
                "F_Y": self.adapt_y(st["F_Y"], rows["y_seq"] != pad, z)}

    def score_states(self, st, x_last, y_last):
        """C2DSR's evaluation scoring (:meth:`C2DSR.score_states`): ``lin_X(F[:, -1] + F_X[x_last])``,
        ``lin_Y(F[:, -1] + F_Y[y_last])``."""
        return self.base.score_states(st, x_last, y_last)

    def _noise(self, shape, sample: bool):
        if not sample:
            return jnp.zeros(shape, jnp.float32)
        return jax.random.normal(self.make_rng("latent"), shape)

    # ------------------------------------------------------------------------------------ training
    def episode_latents(self, batch, feats_q, feats_s, num_episodes: int):
        """``(mu_p, lv_p, mu_q, lv_q)`` of every episode (vmapped)."""
        e = num_episodes
        q_x = feats_q.reshape((e, -1) + feats_q.shape[1:])
        s_x = feats_s.reshape((e, -1) + feats_s.shape[1:])
        qm = jnp.asarray(batch["keep"], jnp.float32).reshape(e, -1)
        sm = jnp.asarray(batch["s_keep"], jnp.float32).reshape(e, -1)
        return self.latent(s_x, sm, q_x, qm)

    def training_losses(self, batch, graphs, *, num_episodes: int = 1, train: bool = True, sample: bool = True,
                        lambda_: float = 0.7, loss_positions: int = 10, support_loss_weight: float = 0.0,
                        kl_weight: float = 1.0, kl_normalise: str = "slots", head_slots: str = "all",
                        head_capacity=None, gcn_capacity=None, token_capacity=None):
        """Loss terms (scalars) of one step of ``num_episodes`` episodes. ``batch``: query rows unprefixed
        (C2DSR training keys + ``keep, overlap, last_item, x_last, y_last, has_x, has_y``), support rows
        prefixed ``s_``. ``sample``: reparameterised z (False: posterior mean). ``gcn_capacity``: C2DSR's
        row-restricted GCN over the step's query + support rows; ``token_capacity``: its packed encoder
        tokens over the same rows (:meth:`C2DSR.__call__`)."""
        infomax = lambda_ != 1.0
        rq = batch["seq"].shape[0]
        with_support = self.use_np or support_loss_weight > 0
        if with_support:
            rows = {k: jnp.concatenate([jnp.asarray(batch[k]), jnp.asarray(batch["s_" + k])], 0)
                    for k in batch if ("s_" + k) in batch}
        else:
            rows = batch
        st = self.base(rows, graphs, train=train, corrupted=infomax, gcn_capacity=gcn_capacity,
                       token_capacity=token_capacity)
        if self.use_np:
            feats = self.user_features(st, rows)
            mu_p, lv_p, mu_q, lv_q = self.episode_latents(batch, feats[:rq], feats[rq:], num_episodes)
            if mu_q.ndim == 3:  # one posterior per query user: [E, Nq, Z] against the episode prior
                kl = losses.gaussian_kl(mu_q, lv_q, mu_p[:, None], lv_p[:, None])  # [E, Nq]
            else:
                kl = losses.gaussian_kl(mu_q, lv_q, mu_p, lv_p)  # [E]
            e = num_episodes
            nq, ns = rq // e, (rows["seq"].shape[0] - rq) // e
            z_q = mu_q + jnp.exp(0.5 * lv_q) * self._noise(mu_q.shape, sample)
            if z_q.ndim == 2:  # one z per episode, shared by its queries
                z_q = jnp.broadcast_to(z_q[:, None], (e, nq, z_q.shape[-1]))
            z_s = mu_p + jnp.exp(0.5 * lv_p) * self._noise(mu_p.shape, sample)
            z_s = jnp.broadcast_to(z_s[:, None], (e, ns, z_s.shape[-1]))
            z = jnp.concatenate([z_q.reshape(rq, -1), z_s.reshape(e * ns, -1)], 0)
            adapted = self.adapt_states(st, z, rows)
        else:
            adapted = st
        keep_q = jnp.asarray(batch["keep"], jnp.float32)
        roww = keep_q
        if with_support:
            roww = jnp.concatenate([keep_q, support_loss_weight * jnp.asarray(batch["s_keep"], jnp.float32)])
        denom = jnp.maximum(keep_q.sum(), 1.0) * supervised_positions(adapted["F"].shape[1], loss_positions)
        mi_rows = keep_q > 0  # infomax: un-adapted encoder states of the overlapped query rows
        if "overlap" in batch:
            mi_rows = mi_rows & jnp.asarray(batch["overlap"], bool)
        terms = self.base.loss_terms(adapted, rows, roww, lambda_=lambda_, loss_positions=loss_positions,
                                     head_slots=head_slots, head_capacity=head_capacity, denom=denom,
                                     infomax_states={k: v[:rq] for k, v in st.items()}, infomax_targets=batch,
                                     infomax_rows=mi_rows)
        loss = terms.pop("loss")
        if self.use_np:
            if kl.ndim == 2:  # per query user
                qm = keep_q.reshape(kl.shape)
                kl_sum, kl_count = (kl * qm).sum(), jnp.maximum(qm.sum(), 1.0)
            else:
                kl_sum, kl_count = kl.sum(), float(kl.shape[0])
            if kl_normalise == "slots":
                kl_term = kl_sum / denom
            elif kl_normalise == "episode":
                kl_term = kl_sum / kl_count
            else:
                raise ValueError(f"config key 'task.kl_normalise': expected 'slots' or 'episode', got "
                                 f"{kl_normalise!r}")
            terms["kl"] = kl_sum / kl_count
            loss = loss + kl_weight * kl_term
        else:
            terms["kl"] = jnp.zeros((), adapted["F"].dtype)
        terms["loss"] = loss
        return terms

    # ------------------------------------------------------------------------------------ inference
    def infer(self, support, graphs, seq, x_seq, y_seq, pos, x_pos, y_pos, x_last, y_last):
        """Evaluation scores ``(scores_x [B, NX], scores_y [B, NY])`` of query users from their input streams
        only (no target can be passed). ``support``: the support set's training rows (keys
        :data:`SUPPORT_KEYS`; their targets are training data). z = the prior mean p(z | support)."""
        q = dict(seq=seq, x_seq=x_seq, y_seq=y_seq, pos=pos, x_pos=x_pos, y_pos=y_pos)
        if not self.use_np:
            st = self.base(q, graphs, train=False, corrupted=False)
            return self.score_states(st, x_last, y_last)
        rs = support["seq"].shape[0]
        rows = {k: jnp.concatenate([jnp.asarray(support[k]), jnp.asarray(q[k])], 0) for k in STREAM_INPUT_KEYS}
        st = self.base(rows, graphs, train=False, corrupted=False)
        feats = self.user_features({k: v[:rs] for k, v in st.items()}, support)
        mu_p, _ = self.latent.prior(feats[None], jnp.asarray(support["keep"], jnp.float32)[None])
        z = jnp.broadcast_to(mu_p, (seq.shape[0], mu_p.shape[-1]))
        adapted = self.adapt_states({k: v[rs:] for k, v in st.items()}, z, q)
        return self.score_states(adapted, x_last, y_last)

    def prior_posterior(self, batch, graphs, *, num_episodes: int = 1):
        """``(mu_p, lv_p, mu_q, lv_q)`` of a training batch in eval mode (for tests and analysis)."""
        rq = batch["seq"].shape[0]
        rows = {k: jnp.concatenate([jnp.asarray(batch[k]), jnp.asarray(batch["s_" + k])], 0)
                for k in batch if ("s_" + k) in batch}
        st = self.base(rows, graphs, train=False, corrupted=False)
        feats = self.user_features(st, rows)
        return self.episode_latents(batch, feats[:rq], feats[rq:], num_episodes)


# ---------------------------------------------------------------------------------------------- task

class CDSRNPTask:
    """The CDSRNP task (engine protocol of :class:`jaxrec.train.state.Task`); config keys in the module
    docstring. ``train_records``: the training split's records (default: read from the prepared dataset)."""

    name = "cdsrnp"

    def __init__(self, cfg, data_info, train_records=None):
        from jaxrec.config import ConfigError
        from jaxrec.data import c2dsr_transforms as ct
        from jaxrec.data import cdsrnp_transforms as nt

        self.cfg = cfg
        self.data_info = data_info
        self.num_x, self.num_y = two_domain_sizes(data_info, "cdsrnp")
        self.model = build_model(cfg, self.num_x, self.num_y)
        self.max_len = int(self.model.max_len)
        task = cfg.task
        self.lambda_, self.loss_positions, corrupt_seed, y_final_strict = train_protocol(task)
        self.query_size = int(task.get("query_size", 64))
        self.support_size = int(task.get("support_size", 32))
        self.support_loss_weight = float(task.get("support_loss_weight", 0.0))
        self.kl_weight = float(task.get("kl_weight", 1.0))
        self.kl_normalise = task.get("kl_normalise", "slots")
        if self.kl_normalise not in ("slots", "episode"):
            raise ConfigError(f"config key 'task.kl_normalise': expected 'slots' or 'episode', got "
                              f"{self.kl_normalise!r}")
        batch = int(cfg.train.batch_size)
        if self.query_size < 1 or batch % self.query_size:
            raise ConfigError(f"config key 'train.batch_size': {batch} is not a multiple of task.query_size="
                              f"{self.query_size} (one step = batch_size / query_size episodes)")
        self.num_episodes = batch // self.query_size
        ev = cfg.eval
        self.num_negatives, self.negatives_seed, self.exclude_history, self.full_ranking = eval_protocol(ev)
        self.nonoverlap_keep = nonoverlap_keep_option(ev)

        if train_records is None:
            train_records = load_train_records(data_info)
        self.table = nt.build_train_table(
            train_records, self.num_x, self.num_y, self.max_len, corrupt_seed, y_final_strict,
            float(task.get("overlap_ratio", 1.0)),
            int(task.get("overlap_seed", 0)))
        if self.table.support_rows.size < self.support_size:
            raise ConfigError(f"config key 'task.support_size': {self.support_size} > the "
                              f"{self.table.support_rows.size} overlapped training users")
        self.graphs_np = ct.build_graphs(self.table.sequences, self.num_x, self.num_y)
        eval_ns = int(ev.get("support_size", self.support_size))
        rows = nt.eval_support_rows(self.table, eval_ns, int(ev.get("support_seed", 2040)))
        self.eval_support_np = {k: self.table.arrays[k][rows] for k in SUPPORT_KEYS}
        self.head_slots = task.get("head_slots", "masked")
        if self.head_slots not in ("masked", "all"):
            raise ConfigError(f"config key 'task.head_slots': expected 'masked' or 'all', got {self.head_slots!r}")
        self.gcn_rows, self.gcn_edge_capacity_mode = gcn_row_options(task, self.model)
        self.gcn_capacities = self._gcn_capacities()
        self.encoder_tokens, self.token_capacity_mode = token_options(task)
        self.token_capacities = self._token_capacities()
        self.train_kwargs = dict(num_episodes=self.num_episodes, lambda_=self.lambda_,
                                 loss_positions=self.loss_positions, support_loss_weight=self.support_loss_weight,
                                 kl_weight=self.kl_weight, kl_normalise=self.kl_normalise,
                                 head_slots=self.head_slots, head_capacity=self._head_capacities(batch),
                                 gcn_capacity=self.gcn_capacities, token_capacity=self.token_capacities)

    def _token_capacities(self):
        """Packed-encoder capacities ``(C_mixed, C_x, C_y)`` (``task.encoder_tokens="packed"``) for one step's
        rows: C2DSR's :func:`resolve_token_capacities` of the kept rows for the ``batch_size`` queries plus that
        of the overlapped rows for the ``episodes * support_size`` support rows (when encoded); None for
        ``"all"``."""
        a = self.table.arrays
        counts = token_counts(a, self.num_x + self.num_y)  # the PAD id
        q = resolve_token_capacities(self.encoder_tokens, self.token_capacity_mode,
                                     {k: v[a["keep"]] for k, v in counts.items()}, int(self.cfg.train.batch_size),
                                     float(self.cfg.task.get("head_capacity_sigmas", 4.0)))
        if q is None or isinstance(self.token_capacity_mode, int):
            return q
        if not (self.model.use_np or self.support_loss_weight > 0):
            return q
        s = resolve_token_capacities(self.encoder_tokens, self.token_capacity_mode,
                                     {k: v[self.table.support_rows] for k, v in counts.items()},
                                     self.num_episodes * self.support_size,
                                     float(self.cfg.task.get("head_capacity_sigmas", 4.0)))
        return tuple(a_ + b_ for a_, b_ in zip(q, s))

    def _head_capacities(self, batch_size: int):
        """``(C_X, C_Y)`` static row capacities of the masked heads (C2DSR's :func:`head_capacity`: batch mean
        + ``task.head_capacity_sigmas`` [4] std over the decoded rows; a rarer batch runs the exact dense
        fallback), None for ``head_slots="all"`` or when support rows are decoded (their weight differs)."""
        if self.head_slots == "all" or self.support_loss_weight > 0:
            return None
        a = self.table.arrays
        counts = head_slot_counts(a, supervised_positions(self.max_len, self.loss_positions))
        sig = float(self.cfg.task.get("head_capacity_sigmas", 4.0))
        return tuple(head_capacity(counts[d][a["keep"]], batch_size, sigmas=sig) for d in ("x", "y"))

    def _gcn_capacities(self):
        """Edge capacities of the row-restricted GCN (``task.gcn_rows="batch"``) for the ``batch_size +
        episodes * support_size`` rows a step encodes, sampled from the kept training rows (C2DSR's
        :func:`gcn_edge_capacity`), or ``task.gcn_edge_capacity`` when an int; None for ``"all"``."""
        a = self.table.arrays
        kept = {k: a[k][a["keep"]] for k in ("seq", "corru_x", "corru_y", "x_seq", "y_seq")}
        rows_per_step = int(self.cfg.train.batch_size) + self.num_episodes * self.support_size
        return resolve_gcn_capacities(self.gcn_rows, self.gcn_edge_capacity_mode, self.model, kept, self.graphs_np,
                                      rows_per_step, corrupted=self.lambda_ != 1.0)

    # ----------------------------------------------------------------------------------- data
    def counts(self) -> dict:
        a = self.table.arrays
        return {"rows": int(a["keep"].size), "kept": int(a["keep"].sum()),
                "overlapped": int(self.table.support_rows.size),
                "non_overlapped": int((a["keep"] & ~a["overlap"]).sum())}

    def train_transform(self):
        from jaxrec.data import cdsrnp_transforms as nt

        t = self.cfg.task
        return nt.CDSRNPTrainTransform(self.table, self.query_size, self.support_size,
                                       int(t.get("episode_seed", 0)), bool(t.get("exclude_query", True)))

    def eval_transform(self, split: str):
        from jaxrec.data import cdsrnp_transforms as nt

        return nt.CDSRNPEvalTransform(self.num_x, self.num_y, self.max_len, self.num_negatives,
                                      self.negatives_seed, split, self.nonoverlap_keep)

    def dummy_batch(self, batch_size: int) -> dict:
        n = self.table.num_rows
        e = max(batch_size // self.query_size, 1)
        out = self.table.take(np.arange(batch_size) % n)
        sup = self.table.support_rows
        out.update(self.table.take(sup[np.arange(e * self.support_size) % sup.size], "s_"))
        return out

    def graphs(self) -> dict:
        """C2DSR's graphs with CSR offsets (:func:`jaxrec.models.c2dsr.device_graphs`)."""
        return device_graphs(self.graphs_np, self.num_x + self.num_y + 1)

    def eval_support(self) -> dict:
        return {k: jnp.asarray(v) for k, v in self.eval_support_np.items()}

    # ----------------------------------------------------------------------------------- model
    def init(self, rng, batch):
        params_rng, dropout_rng, latent_rng = jax.random.split(rng, 3)
        kw = dict(self.train_kwargs, num_episodes=max(batch["seq"].shape[0] // self.query_size, 1))
        return self.model.init({"params": params_rng, "dropout": dropout_rng, "latent": latent_rng}, batch,
                               self.graphs(), train=False, sample=False, method="training_losses", **kw)

    def loss(self, params, model_state, batch, rng):
        dropout_rng, latent_rng = jax.random.split(rng)
        terms = self.model.apply({"params": params, **model_state}, batch, self.graphs(), train=True,
                                 sample=True, method="training_losses",
                                 rngs={"dropout": dropout_rng, "latent": latent_rng}, **self.train_kwargs)
        loss = terms.pop("loss")
        return loss, (terms, model_state)

    def scores(self, params, model_state, batch, prefix: str = ""):
        """``(scores_x, scores_y)`` of the view ``prefix`` ("" full history, "nv_" hidden); reads only
        :data:`QUERY_INPUT_KEYS` of the batch."""
        args = [jnp.asarray(batch[prefix + k]) for k in QUERY_INPUT_KEYS]
        return self.model.apply({"params": params, **model_state}, self.eval_support(), self.graphs(), *args,
                                method="infer")

    def evaluate(self, params, model_state, batch):
        both = two_view_inputs(batch, QUERY_INPUT_KEYS)  # both views in one pass (one GCN)
        sx, sy = self.model.apply({"params": params, **model_state}, self.eval_support(), self.graphs(),
                                  *[both[k] for k in QUERY_INPUT_KEYS], method="infer")
        return rank_two_views(sx, sy, batch, num_negatives=self.num_negatives, full_ranking=self.full_ranking,
                              exclude_history=self.exclude_history)

    def accumulate(self, acc, outputs, batch) -> None:
        accumulate_two_views(acc, outputs, batch)


@register_task("cdsrnp")
def make_cdsrnp_task(cfg, data_info) -> CDSRNPTask:
    return CDSRNPTask(cfg, data_info)


__all__ = ["CDSRNP", "CDSRNPTask", "EpisodeLatent", "InterestAdapter", "SetEncoder", "set_mean",
           "QUERY_INPUT_KEYS", "SUPPORT_KEYS", "make_cdsrnp_task"]
