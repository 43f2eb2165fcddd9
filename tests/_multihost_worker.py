"""One process of a local multi-process jaxrec job (used by tests/test_multihost.py; not a test itself).

    python tests/_multihost_worker.py --multihost --coordinator 127.0.0.1:PORT --num_processes 2 --process_id I \
        --local_devices 2 --out DIR [--mode train|toy] [--steps N] [--ckpt DIR]

``train``: SASRec on a (data x model=2) mesh over every process's devices, fed by the real input pipeline (each
process reads only its shard of the records), for ``--steps`` steps; process 0 writes the final parameters to
``DIR/params.npz``, every process the source indices it read to ``DIR/read_<i>.json``; with ``--ckpt`` all
processes save an orbax checkpoint there. ``toy``: a cross-process reduction every 50 ms, forever (for the
failure tests: kill one process and watch the other stop).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jaxrec.parallel.distributed import add_multihost_args, initialize_from_args, shutdown  # noqa: E402

GLOBAL_BATCH = 8
NUM_ITEMS = 47
RULES = (("vocab", "model"),)


def records(n: int = 64, seed: int = 0) -> list[dict]:
    """Synthetic next-item records ``{"user_id", "items", "target"}`` (ids 1..40)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        k = int(rng.integers(1, 9))
        out.append({"user_id": u, "items": rng.integers(1, 41, size=k).astype(np.int32),
                    "target": int(rng.integers(1, 41))})
    return out


class RecordingSource:
    """A list of records that remembers which indices were read."""

    def __init__(self, recs):
        self.recs, self.read = recs, set()

    def __len__(self):
        return len(self.recs)

    def __getitem__(self, i):
        self.read.add(int(i))
        return self.recs[int(i)]


def sasrec_setup(partitioner):
    """(task, optimizer, state, state_shardings, train_step) -- identical in the workers and the reference."""
    import optax

    from jaxrec.models.sasrec import SeqRecTask
    from jaxrec.train import steps as steps_lib
    from test_sasrec import fake_info, small_cfg

    cfg = small_cfg()
    cfg.model.num_blocks = 1
    task = SeqRecTask(cfg, fake_info(num_items=NUM_ITEMS))
    tx = optax.sgd(0.5)
    state, shardings = steps_lib.build_train_state(task, tx, partitioner, 0, task.dummy_batch(GLOBAL_BATCH))
    return task, tx, state, shardings, steps_lib.make_train_step(task, tx, partitioner, shardings)


def train(args) -> None:
    import jax
    import numpy as np

    from jaxrec.data.pipeline import make_train_iterator
    from jaxrec.parallel.mesh import make_mesh
    from jaxrec.parallel.partitioner import Partitioner

    pid, nproc = jax.process_index(), jax.process_count()
    part = Partitioner(make_mesh((("data", -1), ("model", 2))), RULES)
    part.check_batch_size(GLOBAL_BATCH)
    task, tx, state, shardings, step = sasrec_setup(part)
    source = RecordingSource(records())
    it = make_train_iterator(source, task.train_transform(), batch_size=GLOBAL_BATCH // nproc, seed=0,
                             shard_index=pid, shard_count=nproc)
    for k in range(args.steps):
        state, m = step(state, part.shard_inputs(next(it)))
        print(f"process {pid}: step {k + 1} loss {float(m['loss']):.6f}", flush=True)
    # shard_inputs / local_rows / gather round trips of a process-local batch
    local = next(it)
    placed = part.shard_inputs(local)
    back = part.local_rows(placed)
    full = part.gather(placed)
    for k in local:
        np.testing.assert_array_equal(back[k], local[k])
        rows = local[k].shape[0]
        np.testing.assert_array_equal(full[k][pid * rows:(pid + 1) * rows], local[k])
    out = pathlib.Path(args.out)
    params = part.gather(state.params)  # a collective: every process calls it
    if pid == 0:
        flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(out / "params.npz", **flat)
    (out / f"read_{pid}.json").write_text(json.dumps(sorted(source.read)))
    if args.ckpt:
        from jaxrec.train.checkpoint import Checkpointer

        ck = Checkpointer(args.ckpt, async_save=False)
        ck.save(args.steps, state, it.get_state(), {"processes": nproc})
        ck.wait()
        ck.close()


def toy(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrec.parallel.mesh import make_mesh
    from jaxrec.parallel.partitioner import Partitioner

    part = Partitioner(make_mesh((("data", -1),)))
    total = part.partition(jnp.sum, part.data_sharding, part.replicated)
    x = part.shard_inputs(np.ones((jax.local_device_count(),), np.float32))
    k = 0
    while True:
        k += 1
        v = float(total(x))
        print(f"process {jax.process_index()}: step {k} sum {v}", flush=True)
        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    add_multihost_args(p)
    p.add_argument("--out", default=".")
    p.add_argument("--mode", choices=("train", "toy"), default="train")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--ckpt", default=None)
    args = p.parse_args()
    initialize_from_args(args)
    if args.mode == "train":
        train(args)
    else:
        toy(args)
    shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main()
