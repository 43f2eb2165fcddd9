"""A training run killed with SIGKILL mid-epoch and restarted reaches exactly the parameters of an
uninterrupted run with the same seed (checkpointed TrainState + RNG + input-iterator position)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

NUM_STEPS = 300  # > 2 epochs of 121 steps at batch 64: the kill lands mid-epoch, the resume crosses epochs
ARGS = ["--config", "sasrec_embedded:tiny", "--no_progress", f"--config.train.num_steps={NUM_STEPS}",
        "--config.train.checkpoint_every=7", "--config.train.eval_every=1000", "--config.train.log_every=10",
        "--config.eval.num_negatives=0"]


def _cmd(workdir):
    return [sys.executable, "-m", "jaxrec.cli", "train", "--workdir", str(workdir), *ARGS]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


def _final_params(workdir):
    path = pathlib.Path(workdir) / "checkpoints" / str(NUM_STEPS) / "state"
    assert path.exists(), f"no final checkpoint at {path}"
    with ocp.StandardCheckpointer() as ck:
        state = ck.restore(path.absolute())
    return state["params"], int(state["step"])


def _steps_present(workdir):
    d = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.mark.slow
def test_kill9_and_resume_matches_uninterrupted(tmp_path):
    env = _env()
    # 1. uninterrupted reference
    ref = tmp_path / "ref"
    subprocess.run(_cmd(ref), env=env, check=True, timeout=600, capture_output=True)
    ref_params, ref_step = _final_params(ref)
    assert ref_step == NUM_STEPS

    # 2. start, wait for a checkpoint mid-epoch, SIGKILL
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not _steps_present(run) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _steps_present(run)
    assert killed_at and max(killed_at) < NUM_STEPS, killed_at

    # 3. the same command resumes from the last checkpoint and finishes
    out = subprocess.run(_cmd(run), env=env, check=True, timeout=600, capture_output=True, text=True)
    assert "resumed from" in out.stdout, out.stdout[-2000:]
    params, step = _final_params(run)
    assert step == NUM_STEPS
    flat_ref = {k: np.asarray(v) for k, v in _flatten(ref_params)}
    flat = {k: np.asarray(v) for k, v in _flatten(params)}
    assert flat_ref.keys() == flat.keys()
    for k in flat_ref:
        np.testing.assert_array_equal(flat[k], flat_ref[k], err_msg=k)
    # metrics.jsonl reads as one run: each logged step once
    import json

    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == NUM_STEPS


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}")
    else:
        yield prefix, tree
