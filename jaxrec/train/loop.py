"""``fit()``: the training loop -- by epochs or steps, with evaluation, checkpoints and resume.

The loop is model-agnostic: it drives a :class:`jaxrec.train.state.Task` through the jitted steps of
:mod:`jaxrec.train.steps`, on batches from a checkpointable iterator (``next()``, ``get_state()``,
``set_state()``), placing each host batch on the mesh with the partitioner.

Every ``checkpoint_every`` steps (and at the end) it saves the TrainState together with the iterator state,
so a run killed at any point and restarted with the same command continues from the last checkpoint and
reaches exactly the parameters of an uninterrupted run (the step RNG is ``fold_in(rng, step)`` and the
iterator resumes at the same example). Evaluation runs every ``eval_every`` steps (0 = at each epoch end);
the best checkpoint by ``best_metric`` is kept in ``workdir/best``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np

from jaxrec.kernels.metrics import MetricAccumulator
from jaxrec.parallel.partitioner import Partitioner
from jaxrec.train.checkpoint import Checkpointer, claim_workdir
from jaxrec.train.metric_writer import MetricWriter
from jaxrec.train.state import TrainState


@dataclasses.dataclass
class FitResult:
    state: TrainState
    step: int
    history: list[dict]
    best: dict | None
    train_seconds: float
    examples_per_second: float
    selected: dict = dataclasses.field(default_factory=dict)  # ``train.select_metrics`` (see fit)


def evaluate(eval_step, state, batches: Iterable[dict], partitioner: Partitioner, task=None) -> dict:
    """Run ``eval_step`` over fixed-shape batches and accumulate on the host.

    By default each per-example output is averaged over the batch's ``valid`` rows. A task with an
    ``accumulate(acc: MetricAccumulator, outputs, batch)`` method decides itself (per-domain masks, AUC/GAUC
    collected over the whole split, ...).
    """
    acc = MetricAccumulator()
    custom = getattr(task, "accumulate", None)
    multiprocess = jax.process_count() > 1
    for batch in batches:
        sharded = partitioner.shard_inputs(batch)
        out = partitioner.gather(eval_step(state, sharded))  # every process sees the global batch
        if multiprocess:
            batch = partitioner.gather(sharded)
        if custom is not None:
            custom(acc, out, batch)
        else:
            acc.update(out, mask=np.asarray(batch["valid"], bool))
    return acc.result()


def fit(task, tx, *, partitioner: Partitioner, train_iter, steps_per_epoch: int, train_cfg,
        workdir, eval_batches: Callable[[], Iterable[dict]] | None = None, init_batch: dict,
        model_name: str, config_json: str | None = None, progress: bool = True,
        stop_after: int | None = None, select_batches: Callable[[], Iterable[dict]] | None = None) -> FitResult:
    """Train ``task`` and return the final state, history and best evaluation.

    Args:
      train_iter: checkpointable iterator of process-local numpy batches (global batch / process count rows).
      steps_per_epoch: optimizer steps in one pass over the training data.
      train_cfg: config group with ``seed``, ``num_epochs`` or ``num_steps``, ``log_every``, ``eval_every``,
        ``checkpoint_every``, ``best_metric``, ``best_mode``.
      eval_batches: returns a fresh iterable of validation batches (with ``valid`` masks); None = no eval.
      init_batch: numpy batch with the training shapes, used to initialise parameters.
      stop_after: stop (as if killed) after this many steps of *this* call -- for tests of resume.
      select_batches: the held-out (test) batches for ``train_cfg.select_metrics``: a tuple of validation
        metric names (maximised), each selecting its own step -- whenever one of them improves on validation,
        the model is evaluated on these batches and that evaluation is kept for the metric (the official C2DSR
        protocol: per-domain model selection, test evaluated when a domain's validation MRR improves). Saved
        with the checkpoints (resume keeps them) and returned in ``FitResult.selected``:
        ``{metric: {"step", "valid": <valid metrics>, "test": <metrics on select_batches>}}``.
    """
    from jaxrec.train import steps as steps_lib

    num_steps = train_cfg.get("num_steps") or 0
    if not num_steps:
        num_steps = int(train_cfg.num_epochs) * steps_per_epoch
    if num_steps <= 0:
        raise ValueError("nothing to train: config keys 'train.num_steps' and 'train.num_epochs' give 0 steps "
                         f"(steps_per_epoch={steps_per_epoch})")
    eval_every = int(train_cfg.get("eval_every", 0)) or steps_per_epoch
    ckpt_every = int(train_cfg.get("checkpoint_every", 0)) or steps_per_epoch
    log_every = max(1, int(train_cfg.get("log_every", 50)))
    best_metric = train_cfg.get("best_metric", None) if eval_batches is not None else None
    select_metrics = tuple(train_cfg.get("select_metrics", ()) or ()) if eval_batches is not None else ()
    if select_metrics and select_batches is None:
        raise ValueError("config key 'train.select_metrics' needs held-out batches (the test split) to evaluate")

    state, state_shardings = steps_lib.build_train_state(task, tx, partitioner, int(train_cfg.seed), init_batch)
    claim_workdir(workdir, model_name, state.params, config_json)
    ckpt = Checkpointer(workdir, best_metric=best_metric, best_mode=train_cfg.get("best_mode", "max"))
    writer = MetricWriter(workdir)
    history: list[dict] = []
    best: dict | None = None
    selected: dict = {}

    start = ckpt.latest_step()
    if start is not None:
        state, data_state, meta = ckpt.restore(state, start)
        if data_state:
            train_iter.set_state(data_state)
        best = meta.get("best")
        selected = dict(meta.get("selected") or {})
        writer.truncate_after(start)
        print(f"resumed from {workdir}/checkpoints/{start} (step {start} of {num_steps})")
    start = int(start or 0)

    train_step = steps_lib.make_train_step(task, tx, partitioner, state_shardings)
    eval_step = steps_lib.make_eval_step(task, partitioner, state_shardings) if eval_batches else None
    global_batch = int(jax.tree.leaves(init_batch)[0].shape[0])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)
    t0 = last_log = time.perf_counter()
    pending: list[Any] = []

    def run_eval(step):
        nonlocal best
        metrics = evaluate(eval_step, state, eval_batches(), partitioner, task)
        row = writer.write(step, metrics, prefix="eval/")
        row["epoch"] = step / steps_per_epoch
        history.append(row)
        if best_metric:
            if best_metric not in metrics:
                raise KeyError(f"config key 'train.best_metric': {best_metric!r} is not an eval metric; "
                               f"expected one of {sorted(metrics)}")
            better = (best is None or (metrics[best_metric] > best[best_metric]
                                       if train_cfg.get("best_mode", "max") == "max"
                                       else metrics[best_metric] < best[best_metric]))
            if better:
                best = dict(metrics, step=step)
                ckpt.save_best(step, state, metrics)
        improved = []
        for m in select_metrics:
            if m not in metrics:
                raise KeyError(f"config key 'train.select_metrics': {m!r} is not an eval metric; "
                               f"expected of {sorted(metrics)}")
            if m not in selected or metrics[m] > selected[m]["valid"][m]:
                improved.append(m)
        if improved:
            held_out = evaluate(eval_step, state, select_batches(), partitioner, task)
            for m in improved:
                selected[m] = {"step": step, "valid": dict(metrics), "test": held_out}
            writer.write(step, held_out, prefix="select_test/")
        if bar is not None:
            bar.write(f"step {step} (epoch {step / steps_per_epoch:.2f}) eval: "
                      + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        return metrics

    step = start
    try:
        for step in range(start + 1, num_steps + 1):
            batch = next(train_iter)
            state, metrics = train_step(state, partitioner.shard_inputs(batch))
            pending.append(metrics)
            if step % log_every == 0 or step == num_steps:
                host = jax.device_get(pending)
                now = time.perf_counter()
                mean = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
                mean["examples_per_second"] = len(host) * global_batch / max(now - last_log, 1e-9)
                last_log = now
                writer.write(step, mean, prefix="train/")
                pending.clear()
                if bar is not None:
                    bar.set_postfix(loss=f"{mean['loss']:.4f}", ex_s=f"{mean['examples_per_second']:.0f}")
            if bar is not None:
                bar.update(1)
            if eval_step is not None and (step % eval_every == 0 or step == num_steps):
                run_eval(step)
            if step % ckpt_every == 0 or step == num_steps:
                ckpt.save(step, state, train_iter.get_state(), {"epoch": step / steps_per_epoch, "best": best,
                                                          "selected": selected},
                          force=True)
            if stop_after is not None and step - start >= stop_after:
                break
    finally:
        ckpt.wait()
        writer.flush()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    trained = step - start
    ckpt.close()
    writer.close()
    return FitResult(state=state, step=step, history=history, best=best, train_seconds=elapsed,
                     examples_per_second=trained * global_batch / max(elapsed, 1e-9), selected=selected)
