"""From a config to a trained, evaluated model: what ``jaxrec train`` and ``jaxrec eval`` call.

``train_from_config(cfg, workdir)``:
  1. opens the dataset splits through the catalogue (``cfg.data.name``),
  2. builds the task by name (``cfg.task.name``, which builds the model named by ``cfg.model.name``),
  3. builds the mesh / partitioner from ``cfg.mesh`` and the input iterator (each process reads its shard),
  4. runs :func:`jaxrec.train.loop.fit` (resuming from ``workdir`` if it holds this model's checkpoints),
  5. evaluates the best checkpoint (by ``cfg.train.best_metric`` on validation) on the test split, and writes
     ``workdir/results.json``; with ``cfg.train.select_metrics`` (validation metrics, maximised) it also keeps,
     per metric, the test evaluation made at the step where that metric was best (``results.json["selected"]``:
     per-domain model selection as the official C2DSR code, in one run).
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax

from jaxrec import registry
from jaxrec.config import ConfigError


def build_partitioner(cfg):
    """The mesh and logical-axis rules of ``cfg.mesh`` (defaults: data parallel over all devices)."""
    from jaxrec.parallel.partitioner import Partitioner

    return Partitioner.from_config(cfg.get("mesh", None))


class Experiment:
    """Everything a run needs, built once from a config: data sources, task, optimizer, partitioner."""

    def __init__(self, cfg, *, data_dir=None):
        from jaxrec.data import catalog

        self.cfg = cfg
        self.data_info = catalog.info(cfg.data.name, raw_dir=data_dir)
        self.sources = {s: catalog.load(cfg.data.name, s, raw_dir=data_dir) for s in self.data_info.split_sizes}
        self.task = registry.get_task(cfg.task.name)(cfg, self.data_info)
        self._eval_sources = {}  # split -> records (eval_source)
        self.partitioner = build_partitioner(cfg)
        self.partitioner.check_batch_size(cfg.train.batch_size)
        if cfg.eval.batch_size % self.partitioner.num_data_shards:
            raise ConfigError(f"config key 'eval.batch_size': {cfg.eval.batch_size} is not divisible by the "
                              f"{self.partitioner.num_data_shards} data-parallel shards")

    @property
    def local_batch_size(self) -> int:
        return self.cfg.train.batch_size // jax.process_count()

    def train_source(self):
        """The training records: the ``train`` split, or what the task makes of it (``task.train_source``),
        e.g. a protocol that skips or re-weights records; the task then reports what it dropped."""
        if not hasattr(self, "_train_source"):
            hook = getattr(self.task, "train_source", None)
            self._train_source = hook(self.sources["train"]) if hook is not None else self.sources["train"]
        return self._train_source

    def train_iterator(self):
        from jaxrec.data import pipeline

        train = self.train_source()
        return pipeline.make_train_iterator(
            train, self.task.train_transform(), batch_size=self.local_batch_size, seed=int(self.cfg.train.seed),
            shard_index=jax.process_index(), shard_count=jax.process_count(),
            cache=bool(self.cfg.data.get("cache", True)))

    def steps_per_epoch(self) -> int:
        from jaxrec.data import pipeline

        n = len(self.train_source())
        spe = pipeline.steps_per_epoch(n, self.local_batch_size, jax.process_count())
        if spe == 0:
            raise ConfigError(f"config key 'train.batch_size': {self.cfg.train.batch_size} is larger than the "
                              f"{n} training examples")
        return spe

    def eval_source(self, split: str):
        """The records of a held-out split: the split itself, or what the task makes of it (``task.eval_source``,
        e.g. several held-out positions per record)."""
        if split not in self._eval_sources:
            hook = getattr(self.task, "eval_source", None)
            self._eval_sources[split] = hook(split, self.sources[split]) if hook is not None else self.sources[split]
        return self._eval_sources[split]

    def eval_batches(self, split: str):
        from jaxrec.data import pipeline

        if split not in self.sources:
            raise ConfigError(f"split {split!r} not in dataset {self.cfg.data.name!r} ({sorted(self.sources)})")
        return pipeline.make_eval_batches(self.eval_source(split), self.task.eval_transform(split),
                                          batch_size=self.cfg.eval.batch_size // jax.process_count(),
                                          shard_index=jax.process_index(), shard_count=jax.process_count())

    def optimizer(self, total_steps=None):
        from jaxrec.train.steps import build_optimizer

        return build_optimizer(self.cfg.optimizer, total_steps)


def train_from_config(cfg, workdir, *, data_dir=None, progress: bool = True, stop_after: int | None = None) -> dict:
    from jaxrec.train import steps as steps_lib
    from jaxrec.train.checkpoint import Checkpointer
    from jaxrec.train.loop import evaluate, fit

    t0 = time.time()
    exp = Experiment(cfg, data_dir=data_dir)
    spe = exp.steps_per_epoch()
    total = cfg.train.get("num_steps") or cfg.train.num_epochs * spe
    tx = exp.optimizer(total)
    valid_split = cfg.eval.get("valid_split", "valid")
    eval_fn = (lambda: exp.eval_batches(valid_split)) if valid_split in exp.sources else None
    test_split = cfg.eval.get("test_split", "test")
    select_fn = None
    if cfg.train.get("select_metrics", ()):
        if test_split not in exp.sources or eval_fn is None:
            raise ConfigError(f"config key 'train.select_metrics': needs the {valid_split!r} and {test_split!r} "
                              f"splits; dataset {cfg.data.name!r} has {sorted(exp.sources)}")
        select_fn = lambda: exp.eval_batches(test_split)  # noqa: E731
    result = fit(exp.task, tx, partitioner=exp.partitioner, train_iter=exp.train_iterator(), steps_per_epoch=spe,
                 train_cfg=cfg.train, workdir=workdir, eval_batches=eval_fn,
                 init_batch=exp.task.dummy_batch(cfg.train.batch_size), model_name=cfg.model.name,
                 config_json=cfg.to_json(), progress=progress, stop_after=stop_after, select_batches=select_fn)
    out = {"model": cfg.model.name, "data": cfg.data.name, "steps": int(result.step), "total_steps": int(total),
           "epochs": result.step / spe, "train_seconds": round(result.train_seconds, 2),
           "train_examples_per_second": round(result.examples_per_second, 1), "best_valid": result.best}
    if result.selected:
        out["selected"] = result.selected
    if result.step >= total and test_split in exp.sources:
        state = result.state
        ckpt = Checkpointer(workdir, best_metric=cfg.train.get("best_metric") if eval_fn else None)
        if ckpt.best_step() is not None:
            state, _ = ckpt.restore_best(state)
            out["test_from_step"] = int(ckpt.best_step())
        else:
            out["test_from_step"] = int(result.step)
        ckpt.close()
        eval_step = steps_lib.make_eval_step(exp.task, exp.partitioner,
                                             jax.tree.map(lambda x: x.sharding, state))
        out["test"] = evaluate(eval_step, state, exp.eval_batches(test_split), exp.partitioner, exp.task)
    out["wall_seconds"] = round(time.time() - t0, 1)
    out["devices"] = f"{jax.device_count()} x {jax.devices()[0].platform}"
    if jax.process_index() == 0:
        pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(workdir) / "results.json").write_text(json.dumps(out, indent=1, default=float))
    return out


def evaluate_from_config(cfg, workdir, split: str, *, data_dir=None, which: str = "best") -> dict:
    """Evaluate the best (or latest) checkpoint in ``workdir`` on ``split``."""
    from jaxrec.train import steps as steps_lib
    from jaxrec.train.loop import evaluate

    exp, state, shardings, step = restore_from_config(cfg, workdir, data_dir=data_dir, which=which)
    eval_step = steps_lib.make_eval_step(exp.task, exp.partitioner, shardings)
    metrics = evaluate(eval_step, state, exp.eval_batches(split), exp.partitioner, exp.task)
    return {"split": split, "step": int(step), **metrics}


def restore_from_config(cfg, workdir, *, data_dir=None, which: str = "best"):
    """``(experiment, train state, shardings, step)`` of the best (or latest) checkpoint in ``workdir``."""
    from jaxrec.train import steps as steps_lib
    from jaxrec.train.checkpoint import Checkpointer, claim_workdir

    if not (pathlib.Path(workdir) / "run.json").exists():
        raise FileNotFoundError(f"{workdir}: no jaxrec run here (run.json missing)")
    exp = Experiment(cfg, data_dir=data_dir)
    tx = exp.optimizer(cfg.train.get("num_steps") or cfg.train.num_epochs * exp.steps_per_epoch())
    state, shardings = steps_lib.build_train_state(exp.task, tx, exp.partitioner, int(cfg.train.seed),
                                                   exp.task.dummy_batch(cfg.train.batch_size))
    claim_workdir(workdir, cfg.model.name, state.params)
    ckpt = Checkpointer(workdir, best_metric=cfg.train.get("best_metric"))
    if which == "best" and ckpt.best_step() is not None:
        state, _ = ckpt.restore_best(state)
        step = ckpt.best_step()
    else:
        state, _, _ = ckpt.restore(state)
        step = ckpt.latest_step()
    ckpt.close()
    return exp, state, shardings, step


def default_workdir(cfg) -> str:
    return os.path.join("runs", f"{cfg.model.name}_{cfg.data.name.replace('/', '_')}")
