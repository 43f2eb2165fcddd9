"""The ``jaxrec`` command: ``train``, ``eval``, ``bench``, ``data``. Thin: it parses, then calls the layers.

    jaxrec train [--config NAME_OR_FILE.py[:ARG]] [--workdir DIR] [--data_dir DIR] [--config.KEY=VALUE ...]
    jaxrec eval  --workdir DIR [--split test] [--config ...]
    jaxrec bench [sasrec] [--out FILE.json]
    jaxrec data  list | stats NAME | prepare NAME

Errors a user can fix (an unknown config key, a missing dataset path, a bad batch size, a work directory that
holds another model's checkpoints) print one line ``jaxrec: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_CONFIG = "sasrec_embedded"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"experiment config: a packaged name (default {DEFAULT_CONFIG!r}) or a path to a .py file "
                        "with get_config(); 'file.py:arg' passes arg to get_config. Override any key with "
                        "--config.KEY=VALUE, e.g. --config.optimizer.learning_rate=3e-4 --config.train.num_epochs=5")
    p.add_argument("--data_dir", default=None,
                   help="raw data root (default: $JAXREC_RAW_DATA, else ../shared/data beside the checkout)")


def _load(args, overrides):
    from jaxrec.config import load_config

    return load_config(args.config, overrides)


def cmd_train(args, overrides) -> int:
    from jaxrec.train.run import default_workdir, train_from_config

    cfg = _load(args, overrides)
    workdir = args.workdir or default_workdir(cfg)
    print(f"jaxrec train: model={cfg.model.name} data={cfg.data.name} workdir={workdir}")
    out = train_from_config(cfg, workdir, data_dir=args.data_dir, progress=not args.no_progress)
    print(json.dumps(out, indent=1, default=float))
    return 0


def cmd_eval(args, overrides) -> int:
    from jaxrec.train.run import evaluate_from_config

    cfg = _load(args, overrides)
    if args.workdir is None:
        from jaxrec.train.run import default_workdir

        args.workdir = default_workdir(cfg)
    out = evaluate_from_config(cfg, args.workdir, args.split, data_dir=args.data_dir, which=args.which)
    print(json.dumps(out, indent=1, default=float))
    return 0


def cmd_bench(args, overrides) -> int:
    from jaxrec import bench

    out_dir = os.path.dirname(os.path.abspath(args.out)) if args.out else None
    out = bench.run(args.what, config=args.config, overrides=overrides, repeats=args.repeats, data_dir=args.data_dir,
                    out_dir=out_dir)
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


def cmd_data(args, overrides) -> int:
    from jaxrec.data import catalog

    if overrides:
        raise SystemExit(f"jaxrec data: unexpected arguments {overrides}")
    if args.action == "list":
        for name in catalog.names():
            s = catalog.spec(name)
            print(f"{name:40s} {s.kind:12s} {s.licence}{'  [internal only]' if s.internal_only else ''}")
        return 0
    if not args.name:
        raise SystemExit(f"jaxrec data {args.action}: a dataset NAME is required (see `jaxrec data list`)")
    if args.action == "prepare":
        b = catalog.builder(args.name, raw_dir=args.data_dir)
        print(f"{args.name}: prepared at {b.data_dir}")
        return 0
    stats = catalog.stats(args.name, raw_dir=args.data_dir)
    print(catalog.format_stats(stats))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxrec", description="jaxrec: JAX/Flax recommender models -- train, "
                                "evaluate, benchmark, and inspect datasets.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate a model from a config",
                       description="Train the model named by the config on its dataset, evaluating on the "
                                   "validation split, keeping the best checkpoint, then report test metrics. "
                                   "Re-running the same command resumes from the latest checkpoint in --workdir.")
    _add_config_args(t)
    t.add_argument("--workdir", default=None, help="checkpoints, metrics.jsonl, TensorBoard files and results.json "
                                                   "(default runs/MODEL_DATA)")
    t.add_argument("--no_progress", action="store_true", help="no progress bar (logs only)")
    t.add_argument("--multihost", action="store_true",
                   help="call jax.distributed.initialize() before training (flags below or JAXREC_* environment)")
    from jaxrec.parallel.distributed import add_multihost_args

    add_multihost_args(t)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on a split",
                       description="Evaluate the best (or latest) checkpoint of a run on a data split.")
    _add_config_args(e)
    e.add_argument("--workdir", default=None, help="the run's work directory")
    e.add_argument("--split", default="test", help="split to evaluate (default test)")
    e.add_argument("--which", choices=("best", "latest"), default="best", help="which checkpoint")
    e.set_defaults(fn=cmd_eval)

    b = sub.add_parser("bench", help="benchmarks: jit vs op-by-op steps, vectorised vs looped evaluation, GFLOP/s",
                       description="Run a benchmark and print (and optionally write) its JSON report. Ratios are "
                                   "measured side by side in one run, medians of --repeats.")
    b.add_argument("what", nargs="?", default="sasrec", choices=("sasrec", "marm", "matmul"),
                   help="sasrec: train/eval speed ratios and GFLOP/s; marm: FLOPs vs cache size (small grid); "
                        "matmul: the f32 matmul rate")
    _add_config_args(b)
    b.add_argument("--repeats", type=int, default=5, help="repeats per measurement (median reported)")
    b.add_argument("--out", default=None, help="write the JSON report here")
    b.set_defaults(fn=cmd_bench)

    d = sub.add_parser("data", help="list datasets, print their statistics, or prepare them",
                       description="`list` the catalogue, print `stats NAME` (users/items/interactions/splits), "
                                   "or `prepare NAME` (write the ArrayRecord files).")
    d.add_argument("action", choices=("list", "stats", "prepare"))
    d.add_argument("name", nargs="?", default=None, help="dataset name, e.g. llmcdsr/food_kitchen")
    d.add_argument("--data_dir", default=None, help="raw data root")
    d.set_defaults(fn=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest]
    bad = [a for a in overrides if not a.startswith("--config.")]
    # values of "--config.key value" pairs are allowed after their key
    for i, a in enumerate(overrides):
        if a in bad and i > 0 and overrides[i - 1].startswith("--config.") and "=" not in overrides[i - 1]:
            bad.remove(a)
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    from jaxrec.config import ConfigError
    from jaxrec.data.errors import DataError
    from jaxrec.train.checkpoint import CheckpointOwnershipError

    try:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # one line per prepared dataset, not thousands of bar updates
        if getattr(args, "multihost", False):
            from jaxrec.parallel.distributed import initialize_from_args

            initialize_from_args(args)
        return args.fn(args, overrides)
    except (ConfigError, DataError, CheckpointOwnershipError, FileNotFoundError) as e:
        print(f"jaxrec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
