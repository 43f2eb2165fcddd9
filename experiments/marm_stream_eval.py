"""MARM: static vs time-ordered streaming evaluation of a finished run (the cache written as impressions are scored).

    python experiments/marm_stream_eval.py --config experiments/marm_kuairand_pure.py --workdir runs/marm_kp_s0
    python experiments/marm_stream_eval.py --config experiments/marm_kuairand_pure.py:kv --workdir runs/marm_kp_kv_s0

The engine's evaluation (``results.json['test']``) scores the test impressions in shuffled batches and only
*reads* the cache, so every history entry from the validation and test periods is a miss (masked): on
KuaiRand-Pure about 29 % of the test impressions' history entries. A deployed MARM writes each impression's
entry when it is scored. This script restores the run's best checkpoint (parameters and the cache as training
left it) and scores the test split twice:

* ``static``: the engine's evaluation (reads only) -- must reproduce ``results.json['test']``;
* ``stream``: :func:`jaxrec.models.marm.stream_evaluate` over the validation period and then the test period,
  each in causal rounds (at most one impression per user per batch, every user's impressions in time order),
  reading, scoring and writing -- so a test impression finds its in-period history in the cache.

Both with the same parameters (no training on validation or test labels: the cache holds the label *features*
of exposures already scored, as in serving). Writes ``<workdir>/stream_eval.json`` and prints it. For
``cache_mode="none"`` (the oracle) the two protocols give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="the run's config (with its variant argument)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--batch_size", type=int, default=0, help="streaming batch size (default: eval.batch_size)")
    p.add_argument("--which", choices=("best", "latest"), default="best")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--out", default=None, help="default <workdir>/stream_eval.json")
    a, overrides = p.parse_known_args(argv)

    from jaxrec.config import load_config
    from jaxrec.data.pipeline import read_records
    from jaxrec.models.marm import stream_evaluate
    from jaxrec.train import steps as steps_lib
    from jaxrec.train.loop import evaluate
    from jaxrec.train.run import restore_from_config

    cfg = load_config(a.config, overrides)
    if cfg.task.name != "marm_ranking":
        p.error(f"--config: a marm_ranking config is needed, got task {cfg.task.name!r}")
    exp, state, shardings, step = restore_from_config(cfg, a.workdir, data_dir=a.data_dir, which=a.which)
    task = exp.task
    valid_split, test_split = cfg.eval.get("valid_split", "valid"), cfg.eval.get("test_split", "test")
    out = {"workdir": a.workdir, "config": a.config, "overrides": overrides, "step": int(step),
           "cache_mode": task.mode}
    t0 = time.time()
    eval_step = steps_lib.make_eval_step(task, exp.partitioner, shardings)
    out["static"] = {test_split: evaluate(eval_step, state, exp.eval_batches(test_split), exp.partitioner, task)}
    out["static_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    phases = [(s, read_records(exp.sources[s])) for s in (valid_split, test_split) if s in exp.sources]
    batch = a.batch_size or int(cfg.eval.batch_size)
    res, _ = stream_evaluate(task, state.params, dict(state.model_state), phases, batch)
    out["stream"] = res
    out["stream_batch_size"] = batch
    out["stream_seconds"] = round(time.time() - t0, 1)
    path = pathlib.Path(a.out or pathlib.Path(a.workdir) / "stream_eval.json")
    path.write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
