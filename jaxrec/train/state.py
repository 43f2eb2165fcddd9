"""The training state pytree and the task protocol the engine trains.

``TrainState`` holds everything a step changes and a checkpoint must save: ``step``, ``params``,
``opt_state``, ``model_state`` (non-trainable collections such as BatchNorm statistics; ``{}`` if none) and
the base ``rng`` (a raw ``uint32[2]`` key; the step's key is ``fold_in(rng, step)``, so a resumed run draws
the same randomness as an uninterrupted one). The optimizer (``optax.GradientTransformation``) is not part of
the pytree: it is static and lives in the step closure.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, rng, model_state=None) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   model_state={} if model_state is None else model_state, rng=rng)


class Task(Protocol):
    """What a model brings to the engine: pure functions of ``(params, model_state, batch, rng)``.

    * ``init(rng, batch) -> variables`` -- Flax variables ``{"params": ..., other collections}``;
    * ``loss(params, model_state, batch, rng) -> (loss, (metrics: dict[str, scalar], new_model_state))``;
    * ``evaluate(params, model_state, batch) -> dict[str, [B] array]`` -- per-example metrics; the batch's
      ``valid`` [B] mask marks real (not padding) rows;
    * ``dummy_batch(batch_size) -> dict`` -- a numpy batch with the train step's shapes (for init/AOT);
    * ``train_flops_per_example()`` (optional) -- analytic training FLOPs;
    * ``train_source(train_split) -> random-access source`` (optional) -- the records to train on, when the
      task's protocol skips or rebuilds records of the ``train`` split;
    * ``eval_source(split, source) -> random-access source`` (optional) -- likewise for a held-out split;
    * ``accumulate(acc, outputs, batch)`` (optional) -- custom evaluation accumulation (per-domain masks,
      AUC/GAUC over the whole split); default: mean of each output over ``batch["valid"]``.
    """

    name: str

    def init(self, rng, batch) -> dict: ...

    def loss(self, params, model_state, batch, rng): ...

    def evaluate(self, params, model_state, batch) -> dict: ...

    def dummy_batch(self, batch_size: int) -> dict: ...


def split_variables(variables: dict) -> tuple[Any, dict]:
    """Flax variables -> (params, other collections)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def tree_signature(tree) -> dict[str, list[int]]:
    """``{"path/to/leaf": shape}`` -- identifies a model's parameter layout (for checkpoint ownership checks)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): list(getattr(x, "shape", ())) for p, x in flat}
