"""Checkpoints: orbax ``CheckpointManager`` saving the TrainState, the input-iterator state and run metadata.

Layout of a work directory::

    workdir/
      run.json             model name, task, parameter signature (who owns this directory), config
      checkpoints/<step>/  latest checkpoints (state = params + opt_state + step + rng + model_state;
                           data = input iterator state; meta = epoch, metrics)
      best/<step>/         the best checkpoint by the configured metric (state + meta)
      metrics.jsonl        one JSON object per logged step / evaluation
      tb/                  TensorBoard event files

Restores use abstract targets carrying the current shardings (``ocp.utils.to_shape_dtype_struct``), so a
checkpoint saved on one mesh restores onto another. A directory whose ``run.json`` names another model or a
different parameter layout is refused with one clear error, and nothing in it is overwritten.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxrec.train.state import tree_signature


class CheckpointOwnershipError(RuntimeError):
    """The work directory holds checkpoints of a different model (nothing was overwritten)."""


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def claim_workdir(workdir: str | os.PathLike, model_name: str, params, config_json: str | None = None) -> None:
    """Write ``run.json`` for a new run, or check an existing one belongs to this model and layout."""
    workdir = pathlib.Path(workdir)
    run_file = workdir / "run.json"
    signature = tree_signature(params)
    if run_file.exists():
        try:
            owner = json.loads(run_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointOwnershipError(f"{run_file}: unreadable run metadata ({e}); refusing to overwrite") from None
        if owner.get("model") != model_name:
            raise CheckpointOwnershipError(
                f"{workdir} holds checkpoints of model {owner.get('model')!r}, not {model_name!r}; "
                f"choose another --workdir (nothing was overwritten)")
        if owner.get("param_signature") != signature:
            theirs, ours = owner.get("param_signature", {}), signature
            diff = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
            raise CheckpointOwnershipError(
                f"{workdir} holds a {model_name!r} checkpoint with a different parameter layout "
                f"(first differing: {diff[:3]}); choose another --workdir (nothing was overwritten)")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = workdir / "checkpoints"
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise CheckpointOwnershipError(f"{workdir} holds checkpoints without run.json (not made by jaxrec?); "
                                       f"choose another --workdir (nothing was overwritten)")
    run = {"model": model_name, "param_signature": signature}
    if config_json is not None:
        run["config"] = json.loads(config_json)
    tmp = run_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=1))
    os.replace(tmp, run_file)


class Checkpointer:
    """Latest-N checkpoints for resume plus a best-by-metric checkpoint."""

    def __init__(self, workdir, *, max_to_keep: int = 2, best_metric: str | None = None, best_mode: str = "max",
                 async_save: bool = True):
        self.workdir = pathlib.Path(workdir).absolute()
        self.latest = ocp.CheckpointManager(
            self.workdir / "checkpoints", item_names=("state", "data", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                                 create=True))
        self.best_metric = best_metric
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                self.workdir / "best", item_names=("state", "meta"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, best_fn=lambda m: float(m[best_metric]), best_mode=best_mode,
                    keep_checkpoints_without_metrics=False, enable_async_checkpointing=False, create=True))

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state, data_state: dict | None, meta: dict, force: bool = False) -> None:
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, state_like, step: int | None = None) -> tuple[Any, dict, dict]:
        """Restore (state, data_state, meta) from ``step`` (default latest) onto ``state_like``'s shardings."""
        step = self.latest.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.workdir / 'checkpoints'}")
        out = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_like)),
            data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        return out.state, dict(out.data or {}), dict(out.meta or {})

    def save_best(self, step: int, state, metrics: dict) -> None:
        if self.best is None:
            return
        if self.best_metric not in metrics:
            raise KeyError(f"config key 'train.best_metric': {self.best_metric!r} is not among the eval metrics "
                           f"{sorted(metrics)}")
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(clean)), metrics=clean)

    def best_step(self) -> int | None:
        return None if self.best is None else self.best.best_step()

    def restore_best(self, state_like) -> tuple[Any, dict]:
        step = self.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint in {self.workdir / 'best'}")
        out = self.best.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_like)), meta=ocp.args.JsonRestore()))
        return out.state, dict(out.meta or {})

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()
