"""Builders of the jit-compiled train and eval steps, with explicit shardings and a donated state.

``build_train_state(task, tx, partitioner, rng, batch)`` initialises the whole ``TrainState`` born sharded
(abstract state -> logical specs -> shardings -> ``jit(init, out_shardings=...)``).
``make_train_step`` returns ``step(state, batch) -> (state, metrics)``: ``jax.jit`` with
``in_shardings=(state_shardings, batch_sharding)``, ``out_shardings=(state_shardings, replicated)`` and
``donate_argnums=0``; metrics include the loss, the task's own metrics, and the global norms of the
gradients, parameters and updates. ``make_eval_step`` returns ``eval(state, batch) -> per-example dict``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrec.parallel.partitioner import Partitioner
from jaxrec.train.state import TrainState, split_variables


def build_optimizer(opt_cfg, total_steps: int | None = None) -> optax.GradientTransformation:
    """optax optimizer from the ``optimizer`` config group.

    Keys: ``name`` (adam | adamw | sgd | adagrad), ``learning_rate``, optional ``weight_decay``, ``b1``, ``b2``,
    ``eps``, ``grad_clip_norm`` (0 = off), ``schedule`` (constant | cosine | linear_warmup_cosine), ``warmup_steps``.
    """
    lr = float(opt_cfg.learning_rate)
    schedule = opt_cfg.get("schedule", "constant")
    warmup = int(opt_cfg.get("warmup_steps", 0))
    if schedule == "constant":
        lr_fn = optax.constant_schedule(lr) if not warmup else optax.linear_schedule(0.0, lr, warmup)
    elif schedule in ("cosine", "linear_warmup_cosine"):
        if not total_steps:
            raise ValueError("optimizer.schedule='cosine' needs a known number of training steps")
        lr_fn = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(total_steps, warmup + 1))
    else:
        raise ValueError(f"config key 'optimizer.schedule': expected constant|cosine, got {schedule!r}")
    name = opt_cfg.name
    b1, b2, eps = float(opt_cfg.get("b1", 0.9)), float(opt_cfg.get("b2", 0.999)), float(opt_cfg.get("eps", 1e-8))
    wd = float(opt_cfg.get("weight_decay", 0.0))
    if name == "adam":
        tx = optax.adam(lr_fn, b1=b1, b2=b2, eps=eps)
        if wd:  # L2 regularisation added to the gradient (torch.optim.Adam(weight_decay=...) semantics)
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
    elif name == "adamw":
        tx = optax.adamw(lr_fn, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    elif name == "sgd":
        tx = optax.sgd(lr_fn, momentum=float(opt_cfg.get("momentum", 0.0)) or None)
    elif name == "adagrad":
        tx = optax.adagrad(lr_fn)
    else:
        raise ValueError(f"config key 'optimizer.name': expected adam|adamw|sgd|adagrad, got {name!r}")
    clip = float(opt_cfg.get("grad_clip_norm", 0.0))
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx


def build_train_state(task, tx: optax.GradientTransformation, partitioner: Partitioner, seed: int,
                      batch: dict) -> tuple[TrainState, Any]:
    """Initialise a sharded ``TrainState``; returns (state, state_shardings)."""
    rng = jax.random.PRNGKey(seed)
    batch = jax.tree.map(jnp.asarray, batch)

    def init_fn(rng):
        init_rng, state_rng = jax.random.split(rng)
        variables = task.init(init_rng, batch)
        params, model_state = split_variables(variables)
        return TrainState.create(params, tx, state_rng, model_state)

    return partitioner.init(init_fn, rng)


def train_step_fn(task, tx: optax.GradientTransformation):
    """The pure (unjitted) step ``(state, batch) -> (new_state, metrics)``."""

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            return task.loss(params, state.model_state, batch, rng)

        (loss, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                       update_norm=optax.tree.norm(updates))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=new_model_state)
        return new_state, metrics

    return step


def make_train_step(task, tx: optax.GradientTransformation, partitioner: Partitioner, state_shardings):
    """``step(state, batch) -> (new_state, metrics)``, jitted, sharded, state donated."""
    return partitioner.partition(train_step_fn(task, tx), in_shardings=(state_shardings, partitioner.data_sharding),
                                 out_shardings=(state_shardings, partitioner.replicated), donate_argnums=(0,))


def make_eval_step(task, partitioner: Partitioner, state_shardings):
    """``eval(state, batch) -> dict of per-example [B] arrays`` (sharded over the batch axis)."""

    def eval_step(state: TrainState, batch):
        return task.evaluate(state.params, state.model_state, batch)

    return partitioner.partition(eval_step, in_shardings=(state_shardings, partitioner.data_sharding),
                                 out_shardings=partitioner.data_sharding)
