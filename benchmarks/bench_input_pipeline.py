#!/usr/bin/env python
"""Input-pipeline throughput: examples/s of ``jaxrec.data.pipeline`` training batches (median of repeats).

    python benchmarks/bench_input_pipeline.py                 # embedded + the ../shared sequence datasets
    python benchmarks/bench_input_pipeline.py --quick         # fewer batches and repeats

For each dataset (``train`` split, ``SeqTrainTransform(max_len)``, batch 256) and each configuration
(records decoded from ArrayRecord on every read vs ``cache=True``, whose one-off decode is timed
separately as ``cache_fill_s``; 0 or 2 grain threads) it times
``--batches`` consecutive batches after one warm-up batch, ``--repeats`` times with fresh iterators and
seeds, and reports the median examples/s. It also times the raw TFDS decode (``__getitems__``) and the
evaluation pipeline (``SeqEvalTransform`` with 999 fixed negatives). Results go to
``benchmarks/results/input_pipeline.json``. Datasets absent here (no ../shared/data) are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

from jaxrec.data import catalog, paths, pipeline

OUT = pathlib.Path(__file__).resolve().parent / "results" / "input_pipeline.json"
# the embedded dataset, then the largest sequence datasets of ../shared (by records and by events)
DATASETS = ["kuairand_embedded", "llmcdsr/food_kitchen", "kuairand1k_autocdsr"]


def _time_train(src, transform, batch_size, batches, repeats, **kw):
    rates, setup = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        it = pipeline.make_train_iterator(src, transform, batch_size, seed=100 + r, **kw)
        next(it)  # warm-up (thread start, first epoch permutation)
        t1 = time.perf_counter()
        for _ in range(batches):
            next(it)
        t2 = time.perf_counter()
        it.close()
        setup.append(t1 - t0)
        rates.append(batches * batch_size / (t2 - t1))
    return {"examples_per_s": round(statistics.median(rates), 1), "repeats": [round(x, 1) for x in rates],
            "setup_s_median": round(statistics.median(setup), 3)}


def _time_decode(src, n, repeats):
    rates = []
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        idx = rng.choice(len(src), size=min(n, len(src)), replace=False).tolist()
        t0 = time.perf_counter()
        pipeline.read_records(src, idx)
        rates.append(len(idx) / (time.perf_counter() - t0))
    return round(statistics.median(rates), 1)


def _time_eval(src, num_items, max_len, batch_size, repeats, num_examples):
    sub = pipeline.read_records(src, range(min(num_examples, len(src))))
    tr = pipeline.SeqEvalTransform(max_len, 999, pipeline.fixed_negatives_fn(num_items, 999, seed=0))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(int(b["valid"].sum()) for b in pipeline.make_eval_batches(sub, tr, batch_size))
        rates.append(n / (time.perf_counter() - t0))
    return round(statistics.median(rates), 1)


def bench(name, args):
    t0 = time.perf_counter()
    src = catalog.load(name, "train")
    inf = catalog.info(name)
    prep = time.perf_counter() - t0
    lens = [len(src[i]["items"]) + 1 for i in range(0, len(src), max(1, len(src) // 500))]
    res = {"dataset": name, "split": "train", "records": len(src), "num_items": inf.num_items,
           "mean_seq_len_sampled": round(float(np.mean(lens)), 1), "prepare_or_open_s": round(prep, 2),
           "batch_size": args.batch_size, "max_len": args.max_len, "configs": []}
    batches = max(2, min(args.batches, len(src) // args.batch_size - 1))
    res["batches_timed"] = batches
    res["decode_records_per_s"] = _time_decode(src, min(2000, len(src)), args.repeats)
    tr = pipeline.SeqTrainTransform(args.max_len)
    # cache=True decodes the shard once inside make_train_iterator; time that once, then iterate over the
    # decoded list (what cache=True iterates over) so the repeats do not re-decode.
    t0 = time.perf_counter()
    cached = pipeline.read_records(src)
    res["cache_fill_s"] = round(time.perf_counter() - t0, 2)
    for cache in (False, True):
        for threads in (0, 2):
            r = _time_train(cached if cache else src, tr, args.batch_size, batches, args.repeats,
                            num_threads=threads)
            r.update(cache=cache, num_threads=threads)
            print(f"{name:24s} cache={cache!s:5s} threads={threads}: {r['examples_per_s']:>10,.0f} ex/s", flush=True)
            res["configs"].append(r)
    if inf.num_items and inf.num_items > 1000:
        test = catalog.load(name, "test")
        res["eval_999neg_examples_per_s"] = _time_eval(test, inf.num_items, args.max_len, 256, args.repeats,
                                                      min(1000, len(test)))
        print(f"{name:24s} eval (999 fixed negatives): {res['eval_999neg_examples_per_s']:,.0f} ex/s", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--max_len", type=int, default=50)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--datasets", nargs="*", default=DATASETS)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.repeats = 5, 3
    results, skipped = [], {}
    load_start = os.getloadavg()
    for name in args.datasets:
        try:
            results.append(bench(name, args))
        except Exception as e:  # a ../shared dataset absent on this machine
            if name == "kuairand_embedded":
                raise
            skipped[name] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"{name}: skipped ({skipped[name]})", flush=True)
    import grain
    import tensorflow_datasets as tfds

    out = {
        "benchmark": "input_pipeline",
        "command": "python benchmarks/bench_input_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "loadavg_at_start": load_start,
                    "loadavg_at_end": os.getloadavg(),
                    "note": "CPUs shared with other jobs: a load average above cpu_count means lower figures"},
        "versions": {"grain": getattr(grain, "__version__", "?"), "tensorflow_datasets": tfds.__version__,
                     "numpy": np.__version__},
        "raw_data_root": str(paths.default_raw_dir()),
        "metric": "median examples/s over repeats; each repeat times `batches_timed` batches after a warm-up batch",
        "results": results,
        "skipped": skipped,
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
