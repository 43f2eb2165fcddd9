"""Multi-task ranking with multi-gate mixtures of experts: MMoE, CGC, PLE and HoME as one module family,
and the ``multitask_ranking`` task (KuaiRand-Pure feedback labels, per-task AUC/GAUC, expert diagnostics).

HoME: Wang et al., *HoME: Hierarchy of Multi-Gate Experts for Multi-Task Learning at Kuaishou*, arXiv
2408.05430 (KDD 2025); spec ../shared/papers/home.md. MMoE (Ma et al., KDD 2018), CGC / PLE (Tang et al.,
RecSys 2020) are configurations of the same module.

Shapes (``B`` batch, ``T`` tasks, ``d`` embedding width, ``F`` categorical fields, ``K`` history length,
``D = d·(F + 4)`` shared input width, ``De`` expert width)::

    batch: user_id, video_id [B]; sparse [B, F]; tags [B, M]; hist_ids, hist_mask [B, K]; labels [B, T]
    v     = MultiTaskEmbedding(batch)                                   [B, D]
            = concat(user, video, F field embeddings, mean tag embedding,
                     target attention of the video over the click history)    (each [B, d])
    x     = v[:, None]                                                   [B, 1, D]
    for level in plan:  x, aux = MoELevel(level)(x)                      [B, G_level, De]
    h     = x[:, :T]                                                     [B, T, De]
    logit = Towers(h)                                                    [B, T]   (T MLPs in one einsum/layer)

The shared input: user id, video id, context (``tab``, ``hour``), the 30 user and 10 video categorical features
(bucketised / hashed by :mod:`jaxrec.data.multitask_transforms`), the video's tags (mean-pooled), and the user's
last ``K`` clicked videos before this impression, summarised by target attention
(:func:`jaxrec.kernels.attention.target_attention`; query = projected candidate video embedding, keys =
projected history embeddings, values = history embeddings). ``history="mean"`` pools instead, ``"none"`` drops
it (the width stays ``D``; the slot is zeros).

Levels (static routing tables; :func:`plan_levels`; expert order in each bank as
:func:`jaxrec.kernels.moe.hierarchy_layout`: ``[global shared | category c... | task t...]``):

- ``mmoe``: one level, ``num_shared`` experts on ``v``, ``T`` softmax gates over all of them.
- ``cgc``: one level, ``num_shared`` shared + ``experts_per_task`` per task; task ``t``'s gate sees shared + own
  (:func:`~jaxrec.kernels.moe.cgc_mask`).
- ``ple``: ``num_levels`` CGC levels; every level but the last also has a shared gate over all experts; level
  ``l > 0``: task ``t``'s experts read task ``t``'s mixture, shared experts the shared mixture, task gates read
  their task's mixture (:func:`~jaxrec.kernels.moe.ple_mask`).
- ``home``: meta level: ``meta_shared`` global + ``meta_per_group`` per category experts on ``v``; one gate per
  category (global + own category) and a shared gate (all) -> ``z^c``, ``z^sh``. Task level: ``num_shared``
  global experts read ``z^sh``, ``experts_per_group`` per category read ``z^c``, ``experts_per_task`` per task
  read ``z^{c(t)}``; task ``t``'s gate reads ``[z^sh ‖ z^{c(t)}]`` (``gate_input="concat"``) or ``z^{c(t)}``
  (``"cat"``) and sees only global-shared, own-category and own-task experts
  (:func:`~jaxrec.kernels.moe.hierarchy_mask`: one flat bank, static ``[T, N]`` mask).

Options (model config keys; defaults of the four registered models below):

- expert: ``expert_dim``, ``expert_hidden`` (hidden widths), ``expert_act`` ("swish" | "relu"),
  ``expert_hidden_act``, ``expert_norm`` ("batch": per-expert BatchNorm statistics | "layer" | "none"),
  ``norm_hidden``, ``bn_momentum``, ``expert_dropout``.
- HoME components, each can be switched off (ablations): ``expert_norm``/``expert_act`` (-BN/Swish:
  "none"/"relu"); ``hierarchy_mask`` (False: every gate of every level sees all experts of its level; the experts
  and the routing of their inputs are unchanged, the gates gain weights for the newly visible experts: +31,676
  at the default); ``feature_gate`` ("per_expert" | "per_group" | "none"),
  ``feature_gate_rank``, ``feature_gate_num_lora``, ``feature_gate_levels`` ("all" | "first" | "last");
  ``self_gate`` ("both" | "task" | "meta" | "none"); ``gate_input`` ("concat" | "cat").
  These switches work for every arch (e.g. ``mmoe`` with ``expert_norm="batch", expert_act="swish"`` is
  "MMoE + BN + Swish"); ``self_gate`` "task" acts on task-specific experts of the last level (CGC/PLE/HoME),
  "meta" on HoME's category meta experts.
- towers: ``tower_hidden`` (128, 64), ``tower_act`` ("relu").
- input: ``embed_dim`` (16), ``history`` ("attention" | "mean" | "none").

[R]/[U] choices of the spec (home.md) taken here: gates are dense softmax gates, one linear layer per gate
(§2.0 [R]); HoME expert = MLP -> BatchNorm (batch statistics in training, running averages at inference,
per-expert statistics, affine kept) -> Swish, on the last layer only (ambiguity 8 [U]; ``norm_hidden`` for
all layers); hidden activations Swish (§2.1 [U]); meta layer has a PLE-style shared gate and ``z^sh`` feeds only
the global task-layer experts (ambiguity 2 [R]); task gate input ``[z^sh ‖ z^c]`` (§2.2 [R] default); feature
gate ``2·sigmoid(x B A)`` with ``B`` zero-initialised (gate = 1 at init), one gate per expert in both levels, rank
64 (§2.3 [R]); ``num_lora`` L sums L rank-r products = one rank r·L product (implemented as such); self-gates
on both the task-specific experts (task level) and the category meta experts (residual added to ``z^c``),
sigmoid for one expert / softmax for several, fed the gate's input (§2.3 [R] default "both"); click is in the
watch-time category (§5.2 [R]); loss = sum of per-task BCEs, optional per-task weights (§3 [R]); counts from
the unofficial KuaiRand config (§4 [R]): meta 4 global + 2 per category, task 2 global + 2 per category + 1 per
task, expert width 256, towers [128, 64]. Baselines (MMoE/CGC/PLE) default to the classic ReLU experts without
normalisation, feature gates or self-gates.

Parameter counts at the default configs on ``kuairand_pure`` (D = 736: d = 16, F = 42; T = 7 tasks in 2
categories; :func:`parameter_counts`; :data:`DEFAULT_PARAM_COUNTS`). The expert budget is matched: MMoE 9
experts ``736 -> 256 -> 256``; CGC 2 shared + 7 task experts of the same shape; PLE 2 levels x (2 shared + 7
task) experts, ``736 -> 256`` then ``256 -> 256``; HoME 8 meta experts ``736 -> 256`` and 13 task experts
``256 -> 256`` (+3.3%)::

    model   experts(MLP)  expert-norm  feature-gates  gates    self-gates  towers   input     total
    mmoe    2,290,176     0            0              46,431   0           288,519  928,976   3,554,102
    cgc     2,290,176     0            0              15,477   0           288,519  928,976   3,523,148
    ple     2,290,176     0            0              27,507   0           288,519  928,976   3,535,178
    home    2,364,672     10,752       1,179,648      32,695   6,539       288,519  928,976   4,811,801

("input" = embedding tables 928,464 -- user 436,576, video 121,344, the 42 fields 369,424, tags 1,120 -- plus the
two 16x16 attention projections, 512.) Each gate holds weights only for its allowed experts (gates with the same
number of allowed experts share one batched :class:`~jaxrec.nn.experts.GateNetwork`), so masked-out experts
cost no gate parameters. HoME's extra parameters are its components: feature gates (rank 64, 2·D·64 per meta
expert, 2·256·64 per task expert), per-expert BatchNorm scale/bias and the self-gates.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.kernels import attention as attn_kernels
from jaxrec.kernels import losses
from jaxrec.kernels import metrics as metrics_lib
from jaxrec.kernels import moe as moe_kernels
from jaxrec.data import multitask_transforms as mtt
from jaxrec.nn.experts import ACTIVATIONS, BatchedDense, MoELevel, as_static_mask
from jaxrec.registry import register_model, register_task

__all__ = [
    "DEFAULT_TASKS", "DEFAULT_GROUPS", "LevelPlan", "plan_levels", "MultiTaskEmbedding", "Towers",
    "MultiTaskMoE", "MMoE", "CGC", "PLE", "HoME", "parameter_counts", "DEFAULT_PARAM_COUNTS",
    "MultiTaskRankingTask", "per_example_diagnostics", "experiment_config", "ABLATIONS",
]

DEFAULT_TASKS = ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward", "is_profile_enter")
DEFAULT_GROUPS = ("watch", "watch", "interact", "interact", "interact", "interact", "interact")

# parameter_counts() of the four registered models at their defaults on kuairand_pure (checked by the tests).
DEFAULT_PARAM_COUNTS = {
    "mmoe": {"experts": 2290176, "expert_norm": 0, "feature_gates": 0, "gates": 46431, "self_gates": 0,
             "towers": 288519, "input": 928976, "total": 3554102},
    "cgc": {"experts": 2290176, "expert_norm": 0, "feature_gates": 0, "gates": 15477, "self_gates": 0,
            "towers": 288519, "input": 928976, "total": 3523148},
    "ple": {"experts": 2290176, "expert_norm": 0, "feature_gates": 0, "gates": 27507, "self_gates": 0,
            "towers": 288519, "input": 928976, "total": 3535178},
    "home": {"experts": 2364672, "expert_norm": 10752, "feature_gates": 1179648, "gates": 32695,
             "self_gates": 6539, "towers": 288519, "input": 928976, "total": 4811801},
}


# ---------------------------------------------------------------------------------------------- level plans

@dataclasses.dataclass(frozen=True)
class LevelPlan:
    """Static description of one :class:`~jaxrec.nn.experts.MoELevel` (see its docstring for the fields).

    ``own_experts[g]``: the experts specific to gate ``g`` (its task's or category's own experts; used for the
    own-share diagnostic and the self-gates); ``shared_experts``: experts that more than one gate may use.
    """

    name: str
    input_names: tuple[str, ...]
    expert_names: tuple[str, ...]
    expert_inputs: tuple[int, ...]
    expert_group: tuple[int, ...]  # feature-gate group of each expert (shared / category c / task t)
    gate_names: tuple[str, ...]
    gate_inputs: tuple[tuple[int, ...], ...]
    gate_mask: tuple[tuple[bool, ...], ...]
    own_experts: tuple[tuple[int, ...], ...]
    self_gate_mask: tuple[tuple[bool, ...], ...] | None = None
    feature_gate_index: tuple[int, ...] | None = None

    @property
    def num_experts(self) -> int:
        return len(self.expert_names)

    @property
    def occupancy_gates(self) -> tuple[int, ...]:
        """Gates that stand for a task (or, in HoME's meta level, a category): all but PLE/HoME shared gates."""
        return tuple(g for g, n in enumerate(self.gate_names) if n != "shared")

    @property
    def shared_experts(self) -> tuple[int, ...]:
        """Experts that more than one task (category) gate may use."""
        m = as_static_mask(self.gate_mask)[list(self.occupancy_gates)]
        return tuple(int(e) for e in np.nonzero(m.sum(0) > 1)[0])

    def mask_array(self) -> np.ndarray:
        return as_static_mask(self.gate_mask)


def _tuple_mask(m: np.ndarray) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(bool(v) for v in row) for row in np.asarray(m, bool))


def _names_from_layout(layout: dict, tasks: Sequence[str], shared_name: str = "shared") -> tuple[list, list]:
    """Expert names and feature-gate group ids of a flat bank laid out by ``moe.hierarchy_layout``."""
    names, group = [""] * layout["num_experts"], [0] * layout["num_experts"]
    gid = 0
    for i, e in enumerate(range(layout["shared"].start, layout["shared"].stop)):
        names[e], group[e] = f"{shared_name}{i}", gid
    for key, sl in layout["groups"].items():
        gid += 1
        for i, e in enumerate(range(sl.start, sl.stop)):
            names[e], group[e] = f"{key}{i}", gid
    for t, sl in enumerate(layout["tasks"]):
        gid += 1
        for i, e in enumerate(range(sl.start, sl.stop)):
            names[e], group[e] = f"{tasks[t]}{i}", gid
    return names, group


def _finish(plan: LevelPlan, *, hierarchy: bool, self_gates: bool, feature_gate: str) -> LevelPlan:
    mask = plan.mask_array()
    if not hierarchy:
        mask = np.ones_like(mask)
    self_mask = None
    if self_gates and any(plan.own_experts):
        sm = np.zeros_like(mask)
        for g, own in enumerate(plan.own_experts):
            sm[g, list(own)] = True
        self_mask = _tuple_mask(sm)
    if feature_gate == "per_expert":
        fg = tuple(range(plan.num_experts))
    elif feature_gate == "per_group":
        fg = tuple(plan.expert_group)
    elif feature_gate == "none":
        fg = None
    else:
        raise ValueError(f"feature_gate: expected 'per_expert', 'per_group' or 'none', got {feature_gate!r}")
    return dataclasses.replace(plan, gate_mask=_tuple_mask(mask), self_gate_mask=self_mask, feature_gate_index=fg)


def plan_levels(arch: str, tasks: Sequence[str], task_groups: Sequence[str], *, num_shared: int = 2,
                experts_per_task: int = 1, experts_per_group: int = 2, meta_shared: int = 4,
                meta_per_group: int = 2, num_levels: int = 2, hierarchy_mask: bool = True,
                feature_gate: str = "none", feature_gate_levels: str = "all", self_gate: str = "none",
                gate_input: str = "concat") -> list[LevelPlan]:
    """The static level plans of one architecture (``mmoe`` | ``cgc`` | ``ple`` | ``home``).

    The gates of the last level are the ``T`` task gates, in task order (the towers read the first ``T``
    mixtures of the last level).
    """
    tasks, task_groups = tuple(tasks), tuple(task_groups)
    T = len(tasks)
    if len(task_groups) != T:
        raise ValueError(f"task_groups has {len(task_groups)} entries for {T} tasks")
    if self_gate not in ("both", "task", "meta", "none"):
        raise ValueError(f"self_gate: expected 'both', 'task', 'meta' or 'none', got {self_gate!r}")
    if feature_gate_levels not in ("all", "first", "last"):
        raise ValueError(f"feature_gate_levels: expected 'all', 'first' or 'last', got {feature_gate_levels!r}")
    task_self = self_gate in ("both", "task")
    plans: list[tuple[LevelPlan, bool]] = []  # (plan, self gates on)
    if arch == "mmoe":
        if num_shared < 1:
            raise ValueError("mmoe needs num_shared >= 1 experts")
        n = num_shared
        plans.append((LevelPlan(
            name="experts", input_names=("v",), expert_names=tuple(f"e{i}" for i in range(n)),
            expert_inputs=(0,) * n, expert_group=(0,) * n, gate_names=tasks, gate_inputs=((0,),) * T,
            gate_mask=_tuple_mask(moe_kernels.mmoe_mask(n, T)), own_experts=((),) * T), False))
    elif arch in ("cgc", "ple"):
        levels = 1 if arch == "cgc" else int(num_levels)
        if levels < 1:
            raise ValueError("ple needs num_levels >= 1")
        layout = moe_kernels.hierarchy_layout(num_shared, {}, [None] * T, experts_per_task)
        names, group = _names_from_layout(layout, tasks)
        own = tuple(tuple(range(sl.start, sl.stop)) for sl in layout["tasks"])
        for lvl in range(levels):
            last = lvl == levels - 1
            shared_gate = not last
            mask = moe_kernels.ple_mask(num_shared, experts_per_task, T, include_shared_gate=shared_gate)
            if lvl == 0:
                inputs, e_in = ("v",), (0,) * layout["num_experts"]
                g_in = ((0,),) * (T + shared_gate)
            else:
                inputs = tasks + ("shared",)
                e_in = [T] * layout["num_experts"]
                for t, sl in enumerate(layout["tasks"]):
                    for e in range(sl.start, sl.stop):
                        e_in[e] = t
                e_in = tuple(e_in)
                g_in = tuple((t,) for t in range(T)) + (((T,),) if shared_gate else ())
            plans.append((LevelPlan(
                name="experts" if arch == "cgc" else f"level{lvl + 1}", input_names=inputs,
                expert_names=tuple(names), expert_inputs=e_in, expert_group=tuple(group),
                gate_names=tasks + (("shared",) if shared_gate else ()), gate_inputs=g_in,
                gate_mask=_tuple_mask(mask), own_experts=own + (((),) if shared_gate else ())), task_self))
    elif arch == "home":
        cats = tuple(dict.fromkeys(task_groups))
        C = len(cats)
        meta_layout = moe_kernels.hierarchy_layout(meta_shared, {c: meta_per_group for c in cats}, list(cats), 0)
        meta_names, meta_group = _names_from_layout(meta_layout, cats, "shared")
        meta_mask = np.concatenate([
            moe_kernels.hierarchy_mask(meta_shared, {c: meta_per_group for c in cats}, list(cats), 0),
            np.ones((1, meta_layout["num_experts"]), bool)])
        meta_own = tuple(tuple(range(meta_layout["groups"][c].start, meta_layout["groups"][c].stop))
                         for c in cats) + ((),)
        plans.append((LevelPlan(
            name="meta", input_names=("v",), expert_names=tuple(meta_names),
            expert_inputs=(0,) * meta_layout["num_experts"], expert_group=tuple(meta_group),
            gate_names=cats + ("shared",), gate_inputs=((0,),) * (C + 1), gate_mask=_tuple_mask(meta_mask),
            own_experts=meta_own), self_gate in ("both", "meta")))
        counts = {c: experts_per_group for c in cats}
        layout = moe_kernels.hierarchy_layout(num_shared, counts, list(task_groups), experts_per_task)
        names, group = _names_from_layout(layout, tasks, "shared")
        e_in = [C] * layout["num_experts"]  # global shared experts read z^sh (input C)
        for c, sl in layout["groups"].items():
            for e in range(sl.start, sl.stop):
                e_in[e] = cats.index(c)
        for t, sl in enumerate(layout["tasks"]):
            for e in range(sl.start, sl.stop):
                e_in[e] = cats.index(task_groups[t])
        if gate_input == "concat":
            g_in = tuple((C, cats.index(task_groups[t])) for t in range(T))
        elif gate_input == "cat":
            g_in = tuple((cats.index(task_groups[t]),) for t in range(T))
        else:
            raise ValueError(f"gate_input: expected 'concat' or 'cat', got {gate_input!r}")
        plans.append((LevelPlan(
            name="task", input_names=cats + ("shared",), expert_names=tuple(names), expert_inputs=tuple(e_in),
            expert_group=tuple(group), gate_names=tasks, gate_inputs=g_in,
            gate_mask=_tuple_mask(moe_kernels.hierarchy_mask(num_shared, counts, list(task_groups),
                                                             experts_per_task)),
            own_experts=tuple(tuple(range(sl.start, sl.stop)) for sl in layout["tasks"])), task_self))
    else:
        raise ValueError(f"arch: expected 'mmoe', 'cgc', 'ple' or 'home', got {arch!r}")
    out = []
    for i, (p, self_on) in enumerate(plans):
        fg_here = (feature_gate_levels == "all" or (feature_gate_levels == "first" and i == 0)
                   or (feature_gate_levels == "last" and i == len(plans) - 1))
        self_here = self_on and (i == len(plans) - 1 or arch == "home")  # PLE: task self-gates on the last level
        out.append(_finish(p, hierarchy=hierarchy_mask, self_gates=self_here,
                           feature_gate=feature_gate if fg_here else "none"))
    return out


# ---------------------------------------------------------------------------------------------- modules

class MultiTaskEmbedding(nn.Module):
    """The shared input ``v [B, D]``, ``D = embed_dim · (F + 4)`` (see module docstring).

    Tables (logical axes ``("vocab", "embed")``): ``user_embed [num_users + 1, d]`` (row ``user_id + 1``; 0 =
    unknown), ``video_embed [num_videos + 1, d]`` (shared by the candidate and the history; row 0 = padding),
    ``field_embed [sum(field_vocab), d]`` (all ``F`` fields in one table at static offsets: one gather),
    ``tag_embed [tag_vocab, d]``.
    """

    field_vocab: tuple[int, ...]
    num_users: int
    num_videos: int
    tag_vocab: int
    embed_dim: int = 16
    history: str = "attention"

    @nn.compact
    def __call__(self, batch: dict) -> jax.Array:
        d = self.embed_dim
        init = nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
                                            ("vocab", "embed"))
        embed = functools.partial(nn.Embed, features=d, embedding_init=init)
        user_tab = embed(self.num_users + 1, name="user_embed")
        video_tab = embed(self.num_videos + 1, name="video_embed")
        field_tab = embed(int(sum(self.field_vocab)), name="field_embed")
        tag_tab = embed(self.tag_vocab, name="tag_embed")

        # ``user_key`` / ``video_key`` (row ids, 0 = out-of-vocabulary) come from the transform under
        # ``task.unseen="oov"``; otherwise every raw id has its own row (``id + 1``)
        ukey = batch["user_key"] if "user_key" in batch else batch["user_id"] + 1
        vkey = batch["video_key"] if "video_key" in batch else batch["video_id"] + 1
        user = user_tab(jnp.clip(ukey, 0, self.num_users))
        video = video_tab(jnp.clip(vkey, 0, self.num_videos))
        offsets = np.concatenate([[0], np.cumsum(self.field_vocab)[:-1]]).astype(np.int32)
        vocab = np.asarray(self.field_vocab, np.int32)
        sparse = jnp.clip(batch["sparse"], 0, vocab - 1) + offsets  # [B, F]
        fields = field_tab(sparse)  # [B, F, d]
        b = fields.shape[0]
        tags = batch["tags"]
        tmask = (tags > 0).astype(jnp.float32)[..., None]
        tag = jnp.sum(tag_tab(jnp.clip(tags, 0, self.tag_vocab - 1)) * tmask, 1) / jnp.maximum(tmask.sum(1), 1.0)
        if self.history == "none":
            hist = jnp.zeros((b, d), fields.dtype)
        else:
            hist_ids = jnp.clip(batch["hist_ids"], 0, self.num_videos)
            hmask = batch["hist_mask"].astype(bool) & (hist_ids > 0)
            hist_emb = video_tab(hist_ids)  # [B, K, d]
            if self.history == "attention":
                q = nn.Dense(d, use_bias=False, name="hist_query",
                             kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                      ("embed", None)))(video)
                k = nn.Dense(d, use_bias=False, name="hist_key",
                             kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                      ("embed", None)))(hist_emb)
                hist = attn_kernels.target_attention(q[:, None, :], k, hist_emb, hmask)[:, 0]  # [B, d]
            elif self.history == "mean":
                m = hmask.astype(jnp.float32)[..., None]
                hist = jnp.sum(hist_emb * m, 1) / jnp.maximum(m.sum(1), 1.0)
            else:
                raise ValueError(f"history: expected 'attention', 'mean' or 'none', got {self.history!r}")
        return jnp.concatenate([user, video, fields.reshape(b, -1), tag, hist], axis=-1)


class Towers(nn.Module):
    """``T`` task towers in one einsum per layer: ``h [B, T, De] -> logits [B, T]`` (MLP ``hidden`` -> 1)."""

    num_tasks: int
    hidden: tuple[int, ...] = (128, 64)
    act: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.act]
        y = h
        for i, w in enumerate(self.hidden):
            y = act(BatchedDense(self.num_tasks, w, in_axis="embed" if i == 0 else "mlp", out_axis="mlp"
                                 if i == 0 else None, name=f"dense_{i}")(y))
            if self.dropout_rate > 0:
                y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        y = BatchedDense(self.num_tasks, 1, in_axis=None, out_axis=None, name="out")(y)
        return y[..., 0].astype(jnp.float32)


class MultiTaskMoE(nn.Module):
    """The module family (see module docstring). ``__call__(batch, train=False, return_aux=False)`` ->
    ``logits [B, T]`` (and ``aux``: ``{level name: {expert_out [B, N, De], expert_pre, gate_weights [B, G, N],
    self_weights [B, G, N]}}`` with ``return_aux``). BatchNorm statistics live in ``batch_stats``: pass
    ``mutable=["batch_stats"]`` with ``train=True``."""

    # input schema (the task fills these from the dataset)
    field_vocab: tuple[int, ...] = mtt.KUAIRAND_PURE_SCHEMA.field_vocab
    num_users: int = mtt.KUAIRAND_PURE_SCHEMA.num_users
    num_videos: int = mtt.KUAIRAND_PURE_SCHEMA.num_videos
    tag_vocab: int = mtt.KUAIRAND_PURE_SCHEMA.tag_vocab
    embed_dim: int = 16
    history: str = "attention"
    # tasks
    tasks: tuple[str, ...] = DEFAULT_TASKS
    task_groups: tuple[str, ...] = DEFAULT_GROUPS
    # architecture
    arch: str = "home"
    num_levels: int = 2
    num_shared: int = 2
    experts_per_task: int = 1
    experts_per_group: int = 2
    meta_shared: int = 4
    meta_per_group: int = 2
    # experts
    expert_dim: int = 256
    expert_hidden: tuple[int, ...] = ()
    expert_act: str = "swish"
    expert_hidden_act: str | None = None
    expert_norm: str = "batch"
    norm_hidden: bool = False
    bn_momentum: float = 0.9
    expert_dropout: float = 0.0
    # HoME components
    hierarchy_mask: bool = True
    feature_gate: str = "per_expert"
    feature_gate_rank: int = 64
    feature_gate_num_lora: int = 1
    feature_gate_levels: str = "all"
    self_gate: str = "both"
    gate_input: str = "concat"
    # towers
    tower_hidden: tuple[int, ...] = (128, 64)
    tower_act: str = "relu"
    tower_dropout: float = 0.0

    def plan(self) -> list[LevelPlan]:
        return plan_levels(
            self.arch, self.tasks, self.task_groups, num_shared=self.num_shared,
            experts_per_task=self.experts_per_task, experts_per_group=self.experts_per_group,
            meta_shared=self.meta_shared, meta_per_group=self.meta_per_group, num_levels=self.num_levels,
            hierarchy_mask=self.hierarchy_mask, feature_gate=self.feature_gate,
            feature_gate_levels=self.feature_gate_levels, self_gate=self.self_gate, gate_input=self.gate_input)

    @nn.compact
    def __call__(self, batch: dict, *, train: bool = False, return_aux: bool = False):
        v = MultiTaskEmbedding(tuple(self.field_vocab), self.num_users, self.num_videos, self.tag_vocab,
                               self.embed_dim, self.history, name="input")(batch)
        x = v[:, None, :]
        aux = {}
        for p in self.plan():
            x, aux[p.name] = MoELevel(
                num_experts=p.num_experts, expert_inputs=p.expert_inputs, gate_inputs=p.gate_inputs,
                gate_mask=p.gate_mask, self_gate_mask=p.self_gate_mask, feature_gate_index=p.feature_gate_index,
                feature_gate_rank=self.feature_gate_rank, feature_gate_num_lora=self.feature_gate_num_lora,
                expert_dim=self.expert_dim, expert_hidden=tuple(self.expert_hidden), expert_act=self.expert_act,
                expert_hidden_act=self.expert_hidden_act, expert_norm=self.expert_norm,
                norm_hidden=self.norm_hidden, bn_momentum=self.bn_momentum, expert_dropout=self.expert_dropout,
                name=p.name)(x, train=train)
        h = x[:, :len(self.tasks)]
        logits = Towers(len(self.tasks), tuple(self.tower_hidden), self.tower_act, self.tower_dropout,
                        name="towers")(h, train=train)
        return (logits, aux) if return_aux else logits


_BASELINE = dict(expert_act="relu", expert_norm="none", feature_gate="none", self_gate="none")


@register_model("mmoe")
class MMoE(MultiTaskMoE):
    """MMoE: 9 ReLU experts ``D -> 256 -> 256`` on the shared input, one softmax gate per task."""

    arch: str = "mmoe"
    num_shared: int = 9
    expert_hidden: tuple[int, ...] = (256,)
    expert_act: str = "relu"
    expert_norm: str = "none"
    feature_gate: str = "none"
    self_gate: str = "none"


@register_model("cgc")
class CGC(MultiTaskMoE):
    """CGC (one PLE level): 2 shared + 1 per task ReLU experts ``D -> 256 -> 256``."""

    arch: str = "cgc"
    num_shared: int = 2
    experts_per_task: int = 1
    expert_hidden: tuple[int, ...] = (256,)
    expert_act: str = "relu"
    expert_norm: str = "none"
    feature_gate: str = "none"
    self_gate: str = "none"


@register_model("ple")
class PLE(MultiTaskMoE):
    """PLE, 2 levels of (2 shared + 1 per task) ReLU experts ``D -> 256``, ``256 -> 256``."""

    arch: str = "ple"
    num_levels: int = 2
    num_shared: int = 2
    experts_per_task: int = 1
    expert_hidden: tuple[int, ...] = ()
    expert_act: str = "relu"
    expert_norm: str = "none"
    feature_gate: str = "none"
    self_gate: str = "none"


@register_model("home")
class HoME(MultiTaskMoE):
    """HoME: meta level (4 global + 2 per category) and task level (2 global + 2 per category + 1 per task),
    experts ``Linear -> BatchNorm -> Swish`` of width 256, hierarchy mask, feature-gates, self-gates."""

    arch: str = "home"


# ---------------------------------------------------------------------------------------------- parameters

def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def parameter_counts(model: MultiTaskMoE, batch: dict | None = None) -> dict[str, int]:
    """Parameter counts by component: ``experts`` (expert MLP kernels and biases), ``expert_norm``,
    ``feature_gates``, ``gates``, ``self_gates``, ``towers``, ``input`` (embeddings, attention projections),
    ``total``. Shapes only (``jax.eval_shape``); ``batch`` defaults to a dummy batch."""
    if batch is None:
        batch = dummy_batch(2, len(model.field_vocab), len(model.tasks))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))
    params = nn.meta.unbox(variables["params"])
    out = {k: 0 for k in ("experts", "expert_norm", "feature_gates", "gates", "self_gates", "towers", "input")}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        keys = [getattr(p, "key", str(p)) for p in path]
        n = int(np.prod(leaf.shape))
        if keys[0] == "input":
            out["input"] += n
        elif keys[0] == "towers":
            out["towers"] += n
        elif "feature_gate" in keys:
            out["feature_gates"] += n
        elif any(k.startswith("self_gates") for k in keys):
            out["self_gates"] += n
        elif any(k.startswith("gates") for k in keys):
            out["gates"] += n
        elif "experts" in keys and any(k.startswith("norm_") for k in keys):
            out["expert_norm"] += n
        elif "experts" in keys:
            out["experts"] += n
        else:  # pragma: no cover - a new parameter must be classified
            raise KeyError(f"unclassified parameter {'/'.join(keys)}")
    out["total"] = _count(params)
    return out


def dummy_batch(batch_size: int, num_fields: int, num_tasks: int, hist_len: int = 20, max_tags: int = 3) -> dict:
    """All-zero numpy batch with the training shapes (see :mod:`jaxrec.data.multitask_transforms`)."""
    b = batch_size
    return {"user_id": np.zeros((b,), np.int32), "video_id": np.zeros((b,), np.int32),
            "sparse": np.zeros((b, num_fields), np.int32), "tags": np.zeros((b, max_tags), np.int32),
            "hist_ids": np.zeros((b, hist_len), np.int32), "hist_mask": np.zeros((b, hist_len), bool),
            "labels": np.zeros((b, num_tasks), np.float32)}


# ---------------------------------------------------------------------------------------------- diagnostics

def per_example_diagnostics(aux: dict, plans: Sequence[LevelPlan], near_zero: float = 1e-6) -> dict:
    """Per-example expert/gate statistics (averaged over examples by the accumulator).

    For each level ``L``: ``L/zero_frac [B, N]`` (fraction of exactly-zero expert outputs --
    :func:`~jaxrec.kernels.moe.zero_activation_fraction` of ``|E|`` at threshold 0; the dead-ReLU statistic),
    ``L/near_zero_frac [B, N]`` (``|E| <= near_zero``), ``L/scale [B, N]`` (mean ``|E|``,
    :func:`~jaxrec.kernels.moe.expert_output_scale`), ``L/gate [B, G, N]`` (gate weights),
    ``L/gate_entropy [B, G]`` (:func:`~jaxrec.kernels.moe.gate_entropy` / log(#allowed experts)),
    ``L/self_gate [B, G, N]``.
    """
    out = {}
    for p in plans:
        a = aux[p.name]
        e = jnp.abs(a["expert_out"].astype(jnp.float32))[:, :, None, :]  # [B, N, 1, De]: per-example reduction
        out[f"{p.name}/zero_frac"] = jax.vmap(lambda x: moe_kernels.zero_activation_fraction(x, 0.0), 0)(
            jnp.swapaxes(e, 1, 2))
        out[f"{p.name}/near_zero_frac"] = jax.vmap(
            lambda x: moe_kernels.zero_activation_fraction(x, near_zero), 0)(jnp.swapaxes(e, 1, 2))
        out[f"{p.name}/scale"] = jax.vmap(lambda x: moe_kernels.expert_output_scale(x, "mean_abs"), 0)(
            jnp.swapaxes(e, 1, 2))
        w = a["gate_weights"]
        allowed = np.maximum(p.mask_array().sum(-1), 2)
        out[f"{p.name}/gate"] = w
        out[f"{p.name}/gate_entropy"] = moe_kernels.gate_entropy(w) / np.log(allowed)[None, :]
        out[f"{p.name}/self_gate"] = a["self_weights"]
    return out


_auc_jit = jax.jit(metrics_lib.auc)
_gauc_jit = jax.jit(metrics_lib.gauc)


def _entropy_np(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class _UsageStat:
    """A derived (non-linear) statistic of the usage matrix ``U = sum(w) / n``, computed once at the end of
    an evaluation from per-batch sums collected with ``MetricAccumulator.collect``."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, wsum, count):
        n = float(np.sum(count))
        if n <= 0:
            return math.nan
        return self.fn(np.asarray(wsum, np.float64).sum(0) / n)


# ---------------------------------------------------------------------------------------------- task

def _cfg_tuple(x):
    if isinstance(x, (list, tuple)):
        return tuple(_cfg_tuple(v) for v in x)
    return x


class MultiTaskRankingTask:
    """Multi-task ranking on impressions: per-task BCE, per-task AUC and GAUC, expert diagnostics.

    Config: ``task.tasks`` (label names, default :data:`DEFAULT_TASKS`), ``task.task_groups`` (category of each
    task, default watch = {click, long_view}, interact = the rest), ``task.loss_weights`` (one per task, () = all
    1), ``task.history_len`` (K = 20), ``task.history_source`` ("train" | "all"), ``task.history_label``
    ("is_click"), ``task.max_tags`` (3), ``task.diagnostics`` (True), ``task.near_zero`` (1e-6),
    ``task.unseen`` ("keep" | "oov"): what a user or video id that never occurs in the training split gets at
    evaluation -- "keep" (default): its own embedding row, which no gradient ever reached (its initial value);
    "oov": the shared out-of-vocabulary row 0 (the transform emits ``user_key`` / ``video_key``; history entries of
    unseen videos are masked). Either way the number of such impressions per split is logged when the evaluation
    transform is made (:meth:`unseen_counts`). Categorical feature values outside the schema's vocabulary are a
    :class:`~jaxrec.data.errors.DataError` (:func:`jaxrec.data.multitask_transforms.encode_fields`); label values
    outside {0, 1} and impressions without a user or video feature row are rejected by the reader.

    Evaluation metrics (``accumulate``): ``auc/<task>``, ``gauc/<task>`` (per-user, impression-weighted, users
    with one label class skipped), ``logloss/<task>``, means ``auc/mean``, ``gauc/mean`` and per category
    ``gauc/mean_<category>``; diagnostics ``diag/<level>/...`` (experts and gates are named
    ``<index:02d>_<name>`` so their order survives JSON): ``zero_frac``, ``near_zero_frac``, ``scale`` per
    expert; ``usage/<gate>/<expert>`` (mean gate weight, allowed pairs only; the gate-usage matrix),
    ``gate_entropy/<gate>`` (mean per-sample entropy / log #allowed), ``usage_entropy/<gate>`` (entropy of the
    mean usage / log #allowed), ``occupancy/<gate>/<expert>`` (share of a shared expert's total usage coming from
    each gate), ``occupancy_top_share/<expert>``, ``own_share/<gate>`` (gate mass on the gate's own specific
    experts), ``self_gate/<gate>`` (mean total self-gate weight).
    """

    name = "multitask_ranking"

    def __init__(self, cfg, data_info):
        from jaxrec import registry
        from jaxrec.config import ConfigError

        if data_info.kind != "impressions":
            raise ConfigError(f"config key 'data.name': task 'multitask_ranking' needs an impressions dataset, "
                              f"{data_info.name!r} is {data_info.kind!r}")
        self.cfg = cfg
        self.data_info = data_info
        t = cfg.task
        self.tasks = tuple(t.get("tasks", DEFAULT_TASKS))
        self.task_groups = tuple(t.get("task_groups", DEFAULT_GROUPS))
        if len(self.task_groups) != len(self.tasks):
            raise ConfigError(f"config key 'task.task_groups': {len(self.task_groups)} groups for "
                              f"{len(self.tasks)} tasks")
        label_names = tuple(data_info.metadata.get("label_names", mtt.LABEL_NAMES))
        for name in self.tasks:
            if name not in label_names:
                raise ConfigError(f"config key 'task.tasks': unknown label {name!r}; expected of {label_names}")
        self.label_index = tuple(label_names.index(n) for n in self.tasks)
        weights = tuple(t.get("loss_weights", ()) or ())
        if weights and len(weights) != len(self.tasks):
            raise ConfigError(f"config key 'task.loss_weights': {len(weights)} weights for {len(self.tasks)} tasks")
        self.loss_weights = np.asarray(weights or (1.0,) * len(self.tasks), np.float32)
        self.history_len = int(t.get("history_len", 20))
        self.history_source = t.get("history_source", "train")
        if self.history_source not in ("train", "all"):
            raise ConfigError(f"config key 'task.history_source': expected 'train' or 'all', "
                              f"got {self.history_source!r}")
        hl = t.get("history_label", "is_click")
        if hl not in label_names:
            raise ConfigError(f"config key 'task.history_label': unknown label {hl!r}")
        self.history_label_index = label_names.index(hl)
        self.diagnostics = bool(t.get("diagnostics", True))
        self.near_zero = float(t.get("near_zero", 1e-6))
        md = data_info.metadata
        self.schema = (mtt.schema_from_metadata(md, int(t.get("max_tags", 3))) if "user_feature_max" in md
                       else dataclasses.replace(mtt.KUAIRAND_PURE_SCHEMA, max_tags=int(t.get("max_tags", 3))))
        model_kwargs = {k: _cfg_tuple(v) for k, v in cfg.model.items() if k != "name"}
        if model_kwargs.get("expert_hidden_act") == "":
            model_kwargs["expert_hidden_act"] = None
        self.model = registry.get_model(cfg.model.name)(
            field_vocab=self.schema.field_vocab, num_users=self.schema.num_users, num_videos=self.schema.num_videos,
            tag_vocab=self.schema.tag_vocab, tasks=self.tasks, task_groups=self.task_groups, **model_kwargs)
        self.plans = self.model.plan()
        self.unseen = t.get("unseen", "keep")
        if self.unseen not in ("keep", "oov"):
            raise ConfigError(f"config key 'task.unseen': expected 'keep' or 'oov', got {self.unseen!r}")
        self._history = None
        self._train_ids = None
        self._unseen: dict = {}
        self._stat_fns: dict[str, _UsageStat] = {}
        self._mean_fns = {}

    # ----------------------------------------------------------------------------------- data
    def _split_source(self, split):
        from jaxrec.data import catalog

        return catalog.load(self.data_info.name, split)

    def history_index(self) -> mtt.ClickHistory:
        """The :class:`ClickHistory` of ``task.history_source`` (built once; see the transforms module)."""
        if self._history is None:
            if self.history_len <= 0:
                self._history = mtt.ClickHistory.empty()
                return self._history
            splits = ["train"] if self.history_source == "train" else [
                s for s in ("train", "valid", "test") if s in self.data_info.split_sizes]
            cols = []
            for s in splits:
                src = self._split_source(s)
                key = f"{self.data_info.name}|{self.data_info.data_dir}|{s}|{len(src)}"
                cols.append(mtt.load_click_columns(src, cache_key=key, label_index=self.history_label_index))
            cat = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
            self._history = mtt.ClickHistory.from_columns(cat["user"], cat["time_ms"], cat["video"],
                                                          cat["positive"])
        return self._history

    def train_id_columns(self) -> dict:
        """``user, video`` ids of every training impression (cached columns; used for the unseen-id rule)."""
        if self._train_ids is None:
            src = self._split_source("train")
            key = f"{self.data_info.name}|{self.data_info.data_dir}|train|{len(src)}"
            cols = mtt.load_click_columns(src, cache_key=key, label_index=self.history_label_index)
            self._train_ids = {"user": cols["user"], "video": cols["video"]}
        return self._train_ids

    def seen_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(seen_users [num_users], seen_videos [num_videos])``: ids with at least one training impression."""
        ids = self.train_id_columns()
        su = np.zeros(self.schema.num_users, bool)
        sv = np.zeros(self.schema.num_videos, bool)
        su[ids["user"]] = True
        sv[ids["video"]] = True
        return su, sv

    def unseen_counts(self, split: str) -> dict:
        """Impressions of ``split`` whose user / video never occurs in the training split (logged once per split
        by :meth:`eval_transform`; ``task.unseen`` says what the model gets for them)."""
        if split not in self._unseen:
            su, sv = self.seen_masks()
            src = self._split_source(split)
            key = f"{self.data_info.name}|{self.data_info.data_dir}|{split}|{len(src)}"
            cols = mtt.load_click_columns(src, cache_key=key, label_index=self.history_label_index)
            self._unseen[split] = {"impressions": int(cols["user"].size),
                                   "unseen_user": int((~su[cols["user"]]).sum()),
                                   "unseen_video": int((~sv[cols["video"]]).sum())}
        return self._unseen[split]

    def _transform(self):
        seen = self.seen_masks() if self.unseen == "oov" else (None, None)
        return mtt.MultiTaskTransform(self.schema, self.label_index, self.history_index(), self.history_len,
                                      seen_users=seen[0], seen_videos=seen[1])

    def train_transform(self):
        return self._transform()

    def eval_transform(self, split: str):
        import logging

        c = self.unseen_counts(split)
        rule = ("embedded as the out-of-vocabulary row 0" if self.unseen == "oov" else
                "keep their own (never trained) embedding rows")
        logging.getLogger("jaxrec.models.multitask").warning(
            "%s: %d of %d impressions have a user unseen in train, %d a video unseen in train (task.unseen=%r: "
            "%s)", split, c["unseen_user"], c["impressions"], c["unseen_video"], self.unseen, rule)
        return self._transform()

    def dummy_batch(self, batch_size: int) -> dict:
        return dummy_batch(batch_size, len(self.schema.field_vocab), len(self.tasks), self.history_len,
                           self.schema.max_tags)

    # ----------------------------------------------------------------------------------- model
    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch, train=False)

    def loss(self, params, model_state, batch, rng):
        variables = {"params": params, **model_state}
        logits, updates = self.model.apply(variables, batch, train=True, rngs={"dropout": rng},
                                           mutable=["batch_stats"])
        per_task = losses.bce_with_logits(logits, batch["labels"], reduction="none").mean(0)  # [T]
        loss = jnp.sum(per_task * self.loss_weights)
        metrics = {f"loss/{t}": per_task[i] for i, t in enumerate(self.tasks)}
        return loss, (metrics, {**model_state, **updates})

    def evaluate(self, params, model_state, batch):
        variables = {"params": params, **model_state}
        logits, aux = self.model.apply(variables, batch, train=False, return_aux=True)
        labels = batch["labels"]
        out = {"logits": logits, "labels": labels, "user_id": batch["user_id"],
               "logloss": losses.bce_with_logits(logits, labels, reduction="none")}
        if self.diagnostics:
            out.update(per_example_diagnostics(aux, self.plans, self.near_zero))
        return out

    # ----------------------------------------------------------------------------------- metrics
    def _mean_fn(self, kind: str, cols: tuple[int, ...]):
        key = (kind, cols)
        if key not in self._mean_fns:
            def fn(scores, labels, user_ids=None):
                vals = []
                for c in cols:
                    if len(scores) == 0:
                        continue
                    if kind == "auc":
                        vals.append(float(_auc_jit(scores[:, c], labels[:, c])))
                    else:
                        vals.append(float(_gauc_jit(scores[:, c], labels[:, c], user_ids)))
                vals = [v for v in vals if not math.isnan(v)]
                return float(np.mean(vals)) if vals else math.nan

            self._mean_fns[key] = fn
        return self._mean_fns[key]

    def _stat(self, name: str, fn) -> _UsageStat:
        if name not in self._stat_fns:
            self._stat_fns[name] = _UsageStat(fn)
        return self._stat_fns[name]

    def accumulate(self, acc: metrics_lib.MetricAccumulator, out: dict, batch: dict) -> None:
        valid = np.asarray(batch["valid"], bool)
        logits, labels, users = np.asarray(out["logits"]), np.asarray(out["labels"]), np.asarray(out["user_id"])
        for i, t in enumerate(self.tasks):
            # same computation as acc.add_auc / add_gauc, through the jitted kernels the means use (one
            # compilation per split size instead of two)
            acc.collect(f"auc/{t}", self._mean_fn("auc", (i,)), valid, scores=logits, labels=labels)
            acc.collect(f"gauc/{t}", self._mean_fn("gauc", (i,)), valid, scores=logits, labels=labels,
                        user_ids=users)
            acc.add(f"logloss/{t}", np.asarray(out["logloss"])[:, i], valid)
        all_cols = tuple(range(len(self.tasks)))
        acc.collect("auc/mean", self._mean_fn("auc", all_cols), valid, scores=logits, labels=labels)
        acc.collect("gauc/mean", self._mean_fn("gauc", all_cols), valid, scores=logits, labels=labels,
                    user_ids=users)
        for g in dict.fromkeys(self.task_groups):
            cols = tuple(i for i, x in enumerate(self.task_groups) if x == g)
            acc.collect(f"gauc/mean_{g}", self._mean_fn("gauc", cols), valid, scores=logits, labels=labels,
                        user_ids=users)
        if self.diagnostics:
            for p in self.plans:
                self._accumulate_level(acc, p, out, valid)

    def _accumulate_level(self, acc, p: LevelPlan, out: dict, valid: np.ndarray) -> None:
        L = f"diag/{p.name}"
        en = [f"{i:02d}_{n}" for i, n in enumerate(p.expert_names)]
        gn = [f"{i:02d}_{n}" for i, n in enumerate(p.gate_names)]
        mask = p.mask_array()
        for stat in ("zero_frac", "near_zero_frac", "scale"):
            v = np.asarray(out[f"{p.name}/{stat}"])
            for e, name in enumerate(en):
                acc.add(f"{L}/{stat}/{name}", v[:, e], valid)
        w = np.asarray(out[f"{p.name}/gate"], np.float64)  # [B, G, N]
        ent = np.asarray(out[f"{p.name}/gate_entropy"])
        sw = np.asarray(out[f"{p.name}/self_gate"])
        for g, gname in enumerate(gn):
            for e in np.nonzero(mask[g])[0]:
                acc.add(f"{L}/usage/{gname}/{en[e]}", w[:, g, e], valid)
            acc.add(f"{L}/gate_entropy/{gname}", ent[:, g], valid)
            if p.own_experts[g]:
                acc.add(f"{L}/own_share/{gname}", w[:, g, list(p.own_experts[g])].sum(-1), valid)
            if p.self_gate_mask is not None and any(p.self_gate_mask[g]):
                acc.add(f"{L}/self_gate/{gname}", sw[:, g].sum(-1), valid)
        # non-linear functions of the usage matrix: from per-batch sums
        wsum = (w * valid[:, None, None]).sum(0)[None]  # [1, G, N]
        count = np.array([valid.sum()], np.float64)
        for g, gname in enumerate(gn):
            allowed = max(int(mask[g].sum()), 2)
            fn = self._stat(f"{L}/usage_entropy/{gname}",
                            lambda U, g=g, a=allowed: _entropy_np(U[g]) / math.log(a))
            acc.collect(f"{L}/usage_entropy/{gname}", fn, None, wsum=wsum, count=count)
        for e in p.shared_experts:
            occ = list(p.occupancy_gates)
            users_of_e = [g for g in occ if mask[g, e]]
            for g in users_of_e:
                fn = self._stat(f"{L}/occupancy/{gn[g]}/{en[e]}",
                                lambda U, g=g, e=e, o=tuple(occ): float(U[g, e] / max(U[list(o), e].sum(), 1e-30)))
                acc.collect(f"{L}/occupancy/{gn[g]}/{en[e]}", fn, None, wsum=wsum, count=count)
            fn = self._stat(f"{L}/occupancy_top_share/{en[e]}",
                            lambda U, e=e, o=tuple(occ): float(U[list(o), e].max() / max(U[list(o), e].sum(),
                                                                                          1e-30)))
            acc.collect(f"{L}/occupancy_top_share/{en[e]}", fn, None, wsum=wsum, count=count)


@register_task("multitask_ranking")
def make_multitask_task(cfg, data_info) -> MultiTaskRankingTask:
    return MultiTaskRankingTask(cfg, data_info)


# ---------------------------------------------------------------------------------------------- configs

# Named variants for ``experiment_config(model, arg)`` (``--config experiments/<model>_kuairand_pure.py:ARG``):
ABLATIONS = {
    "home": {
        "no_bn_swish": dict(expert_norm="none", expert_act="relu"),  # -expert normalisation + Swish
        "no_mask": dict(hierarchy_mask=False),  # -hierarchy mask (every gate sees its whole level)
        "no_feature_gate": dict(feature_gate="none"),
        "no_self_gate": dict(self_gate="none"),
        "feature_gate_per_group": dict(feature_gate="per_group"),
        "gate_input_cat": dict(gate_input="cat"),
    },
    "mmoe": {"bn_swish": dict(expert_norm="batch", expert_act="swish"),  # "MMoE + BN + Swish"
             "stress": dict(expert_hidden=(256, 256))},  # deeper experts (run with a 5x learning rate)
    "cgc": {"bn_swish": dict(expert_norm="batch", expert_act="swish")},
    "ple": {"bn_swish": dict(expert_norm="batch", expert_act="swish")},
}


def experiment_config(model: str, arg: str | None = None):
    """The ``kuairand_pure`` experiment config of ``model`` (mmoe | cgc | ple | home) -- used by
    ``experiments/<model>_kuairand_pure.py``.

    ``arg``: None (the default model), ``"tiny"`` (a smoke run: small widths, 20 steps), a name of
    :data:`ABLATIONS` ``[model]``, or several joined with commas (e.g. ``"no_mask,tiny"``; applied left to
    right). ``model`` holds every attribute of the registered model (its defaults) except the dataset schema and
    the task list, so any option can be overridden with ``--config.model.KEY=VALUE``.
    """
    import ml_collections

    from jaxrec.config import ConfigError

    from jaxrec import registry

    cls = registry.get_model(model)
    schema_keys = {"field_vocab", "num_users", "num_videos", "tag_vocab", "tasks", "task_groups", "parent", "name"}
    defaults = {f.name: getattr(cls, f.name) for f in dataclasses.fields(cls)
                if f.name not in schema_keys and f.init}
    if "expert_hidden_act" in defaults and defaults["expert_hidden_act"] is None:
        defaults["expert_hidden_act"] = ""  # "" = same as expert_act (a str key, so it can be overridden)
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(name=model, **defaults))
    c.task = ml_collections.ConfigDict(dict(
        name="multitask_ranking", tasks=DEFAULT_TASKS, task_groups=DEFAULT_GROUPS, loss_weights=(),
        history_len=20, history_source="train", history_label="is_click", max_tags=3, diagnostics=True,
        near_zero=1e-6))
    c.data = ml_collections.ConfigDict(dict(name="kuairand_pure", cache=True))
    c.train = ml_collections.ConfigDict(dict(
        seed=0, batch_size=2048, num_epochs=4, num_steps=0, log_every=20, eval_every=0, checkpoint_every=0,
        best_metric="gauc/mean", best_mode="max"))
    c.eval = ml_collections.ConfigDict(dict(batch_size=4096, valid_split="valid", test_split="test"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip_norm=0.0,
        schedule="constant", warmup_steps=0))
    c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),), rules=()))
    for part in [p.strip() for p in (arg or "").split(",") if p.strip()]:
        if part == "tiny":
            c.model.embed_dim, c.model.expert_dim, c.model.tower_hidden = 8, 32, (16,)
            if model in ("mmoe", "cgc"):
                c.model.expert_hidden = (32,)
            if model == "home":
                c.model.feature_gate_rank = 8
            c.train.num_steps, c.train.batch_size, c.train.log_every, c.train.eval_every = 20, 512, 5, 20
        elif part in ABLATIONS.get(model, {}):
            for k, v in ABLATIONS[model][part].items():
                c.model[k] = v
        else:
            raise ConfigError(f"config arg {part!r}: expected 'tiny' or one of {sorted(ABLATIONS.get(model, {}))}")
    return c
