"""Multi-host on one machine: two local processes (gloo CPU collectives, 127.0.0.1, a free port) train SASRec
to the parameters of one process with the same global batch; a dead process stops the other in bounded time.

Each process runs tests/_multihost_worker.py with 2 CPU devices; every subprocess has a hard timeout.
"""

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrec.parallel import distributed

HERE = pathlib.Path(__file__).parent
WORKER = HERE / "_multihost_worker.py"
sys.path.insert(0, str(HERE))

import _multihost_worker as worker  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(pid, nproc, port, out, *extra, init_timeout=60, heartbeat_timeout=10):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # tiny shapes: compile fast (same setting as the reference)
    for k in ("JAXREC_COORDINATOR", "JAXREC_NUM_PROCESSES", "JAXREC_PROCESS_ID"):
        env.pop(k, None)
    cmd = [sys.executable, str(WORKER), "--multihost", "--coordinator", f"127.0.0.1:{port}",
           "--num_processes", str(nproc), "--process_id", str(pid), "--local_devices", "2",
           "--init_timeout", str(init_timeout), "--heartbeat_timeout", str(heartbeat_timeout), "--out", str(out),
           *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(procs, timeout):
    """Wait for every process (killing all of them at the deadline); returns [(rc, output)]."""
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            out, _ = p.communicate()
            out += "\n<killed at the test deadline>"
        results.append((p.returncode, out))
    return results


@pytest.fixture
def fast_xla():
    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", prev)


def test_two_processes_train_like_one(tmp_path, fast_xla):
    t0 = time.monotonic()
    port = _free_port()
    ckpt = tmp_path / "ckpt"
    procs = [_spawn(i, 2, port, tmp_path, "--steps", "3", "--ckpt", str(ckpt)) for i in range(2)]
    results = _finish(procs, timeout=240)
    wall = time.monotonic() - t0
    for rc, out in results:
        assert rc == 0, out[-3000:]
    assert "process 1/2: 2 local of 4 cpu devices" in results[1][1]

    # each process read only its shard of the records (the pipeline shards by jax.process_index())
    read = [set(json.loads((tmp_path / f"read_{i}.json").read_text())) for i in range(2)]
    assert read[0] and read[1] and not read[0] & read[1]
    assert all(i % 2 == 0 for i in read[0]) and all(i % 2 == 1 for i in read[1])

    # one process, 4 devices, same mesh shape, same global batches (shard 0 rows then shard 1 rows)
    from jaxrec.data.pipeline import make_train_iterator
    from jaxrec.parallel.mesh import make_mesh
    from jaxrec.parallel.partitioner import Partitioner

    part = Partitioner(make_mesh((("data", 2), ("model", 2)), devices=jax.devices()[:4]), worker.RULES)
    task, tx, state, shardings, step = worker.sasrec_setup(part)
    init_table = np.asarray(jax.device_get(state.params["item_embed"]["embedding"]))
    its = [make_train_iterator(worker.records(), task.train_transform(), batch_size=worker.GLOBAL_BATCH // 2,
                               seed=0, shard_index=s, shard_count=2) for s in range(2)]
    for _ in range(3):
        shards = [next(it) for it in its]
        batch = jax.tree.map(lambda *xs: np.concatenate(xs), *shards)
        state, m = step(state, part.shard_inputs(batch))
    ref = {jax.tree_util.keystr(p): np.asarray(x)
           for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
    got = dict(np.load(tmp_path / "params.npz"))
    assert sorted(got) == sorted(ref)
    assert not np.allclose(init_table, ref["['item_embed']['embedding']"])  # training moved the parameters
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)

    # the checkpoint both processes wrote restores in this single process, onto one device
    from jaxrec.train.checkpoint import Checkpointer

    one = Partitioner(make_mesh((("data", 1),), devices=jax.devices()[:1]), worker.RULES)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                          jax.tree.map(lambda _: one.replicated, state))
    ck = Checkpointer(ckpt)
    restored, _, meta = ck.restore(target)
    ck.close()
    assert meta == {"processes": 2} and int(restored.step) == 3
    for k, v in jax.tree_util.tree_flatten_with_path(restored.params)[0]:
        np.testing.assert_allclose(np.asarray(v), ref[jax.tree_util.keystr(k)], rtol=1e-5, atol=1e-6)
    print(f"2-process SASRec test: {wall:.1f}s for both workers")


@pytest.mark.parametrize("victim", [1, 0])
def test_dead_process_stops_the_other(tmp_path, victim):
    """SIGKILL one process mid-run: the other exits non-zero with the coordination service's error within
    about the heartbeat timeout -- it does not hang. victim 0 is the coordinator itself (noticed at once)."""
    port = _free_port()
    procs = [_spawn(i, 2, port, tmp_path, "--mode", "toy", heartbeat_timeout=5) for i in range(2)]
    survivor = procs[1 - victim]
    # wait until both have run collectives together
    lines, deadline = [], time.monotonic() + 90
    while time.monotonic() < deadline:
        line = survivor.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "step 3 " in line:
            break
    assert any("step 3 " in line for line in lines), "".join(lines)[-3000:]
    os.killpg(procs[victim].pid, signal.SIGKILL)
    t_kill = time.monotonic()
    (rc, out), = _finish([survivor], timeout=40)
    elapsed = time.monotonic() - t_kill
    _finish([procs[victim]], timeout=5)
    assert rc not in (0, None), out[-2000:]
    assert "<killed at the test deadline>" not in out
    assert "another task died" in out or "unhealthy" in out, out[-2000:]
    assert elapsed < 20, elapsed  # detection takes at most the 5 s heartbeat timeout (+ start-up jitter)


def test_missing_process_fails_after_init_timeout(tmp_path):
    """Only process 0 of 2 starts: it gives up after --init_timeout seconds instead of waiting forever."""
    port = _free_port()
    t0 = time.monotonic()
    (rc, out), = _finish([_spawn(0, 2, port, tmp_path, "--mode", "toy", init_timeout=3)], timeout=60)
    assert rc != 0 and "<killed at the test deadline>" not in out, out[-2000:]
    assert "waiting up to 3s for all processes" in out
    assert "DEADLINE_EXCEEDED" in out or "Deadline" in out, out[-2000:]
    assert time.monotonic() - t0 < 40


def test_multihost_flags():
    p = distributed.add_multihost_args(argparse.ArgumentParser())
    a = p.parse_args(["--multihost", "--coordinator", "10.0.0.1:1234", "--num_processes", "4", "--process_id", "3",
                      "--init_timeout", "60", "--heartbeat_timeout", "20"])
    assert (a.multihost, a.coordinator, a.num_processes, a.process_id, a.init_timeout, a.heartbeat_timeout) == (
        True, "10.0.0.1:1234", 4, 3, 60, 20)
    assert distributed.initialize_from_args(p.parse_args([])) is False  # single process: nothing to do
    with pytest.raises(ValueError, match="without --multihost"):
        distributed.initialize_from_args(p.parse_args(["--coordinator", "h:1"]))
    # bad combinations are refused before jax.distributed is touched
    with pytest.raises(ValueError, match="JAXREC_NUM_PROCESSES"):
        distributed.initialize(coordinator="127.0.0.1:1")
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        distributed.initialize(coordinator="127.0.0.1:1", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="host:port"):
        distributed.initialize(coordinator="localhost", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="need --coordinator"):
        distributed.initialize(num_processes=2, process_id=0)
    assert not jax.distributed.is_initialized()
    # an existing --multihost flag (cli.py's) is kept, the others are added
    q = argparse.ArgumentParser()
    q.add_argument("--multihost", action="store_true")
    distributed.add_multihost_args(q)
    assert q.parse_args(["--multihost", "--process_id", "1"]).process_id == 1
