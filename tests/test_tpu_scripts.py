"""tpu/ scripts: valid bash, and a dry run prints the gcloud commands (create, install on every worker, launch
`jaxrec train --multihost` with --worker=all, gather logs, tear down) without running any of them.

A fake ``gcloud``/``gsutil``/``git`` first on PATH records any call: dry runs must make none. Nothing here can
reach the network, and no real gcloud is ever run.
"""

import os
import pathlib
import shlex
import subprocess

import pytest

TPU = pathlib.Path(__file__).resolve().parent.parent / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "launch.sh", "logs.sh", "stop.sh", "teardown.sh"]

ENV = {"PROJECT": "proj-x", "ZONE": "us-west4-a", "TPU_NAME": "tpu-x", "ACCELERATOR_TYPE": "v5litepod-16",
       "BUCKET": "gs://bucket-x", "RUN_NAME": "run-x"}


@pytest.fixture
def fake_bin(tmp_path):
    """Fake gcloud / gsutil / git that append their argv to calls.log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    for name in ("gcloud", "gsutil", "git"):
        f = bindir / name
        f.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 0\n')
        f.chmod(0o755)
    return bindir, log


def _run(script, fake_bin, *args, dry=True, **env):
    bindir, _ = fake_bin
    e = {k: v for k, v in os.environ.items() if k not in ENV}
    e.update(ENV, PATH=f"{bindir}:{os.environ['PATH']}", **env)
    e.pop("DRY_RUN", None)
    if dry:
        e["DRY_RUN"] = "1"
    return subprocess.run(["bash", str(TPU / script), *args], env=e, capture_output=True, text=True, timeout=30)


def _complete(cmd):
    try:
        shlex.split(cmd)
        return True
    except ValueError:  # inside a quoted multi-line argument
        return False


def _commands(stdout):
    """The printed commands ("+ ..." lines with their continuation lines, up to the next "+ "/"# " line that
    starts outside any quote), shlex-split."""
    cmds, cur = [], None
    for line in stdout.split("\n"):
        if (line.startswith("+ ") or line.startswith("# ")) and (cur is None or _complete(cur)):
            if cur is not None:
                cmds.append(cur)
            cur = line[2:] if line.startswith("+ ") else None
        elif cur is not None:
            cur += "\n" + line
    if cur is not None:
        cmds.append(cur)
    return [shlex.split(c) for c in cmds]


def test_scripts_are_valid_bash():
    for name in SCRIPTS + ["common.sh"]:
        r = subprocess.run(["bash", "-n", str(TPU / name)], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, (name, r.stderr)
    for name in SCRIPTS:
        assert os.access(TPU / name, os.X_OK), f"{name} is not executable"
    assert (TPU / "README.md").read_text().count("## Scaling out") == 1


def test_dry_runs_print_the_commands_and_run_none(fake_bin):
    _, log = fake_bin
    out = {}
    for name in SCRIPTS:
        r = _run(name, fake_bin)
        assert r.returncode == 0, (name, r.stdout, r.stderr)
        out[name] = _commands(r.stdout)
    assert not log.exists(), log.read_text()  # nothing was executed

    create, = [c for c in out["create.sh"] if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
    assert create[4:6] == ["create", "tpu-x"]
    assert {"--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--zone=us-west4-a",
            "--project=proj-x"} <= set(create)

    setup = out["setup.sh"]
    assert setup[0][:2] == ["git", "-C"] and "archive" in setup[0]
    scp, ssh = setup[1], setup[2]
    assert scp[4] == "scp" and "--worker=all" in scp
    assert ssh[4:6] == ["ssh", "tpu-x"] and "--worker=all" in ssh
    remote = [a for a in ssh if a.startswith("--command=")][0]
    assert "pip install -q 'jax[tpu]==0.10.2'" in remote and "pip install -q -e ." in remote
    assert "gcsfuse --implicit-dirs bucket-x /mnt/gcs" in remote

    launch, = out["launch.sh"]
    assert launch[4:6] == ["ssh", "tpu-x"] and "--worker=all" in launch
    remote = [a for a in launch if a.startswith("--command=")][0][len("--command="):]
    train_line = [ln for ln in remote.splitlines() if "jaxrec train" in ln][0]
    argv = shlex.split(train_line.split("setsid", 1)[1].split(">", 1)[0])
    assert argv[:3] == ["jaxrec", "train", "--multihost"]
    assert argv[argv.index("--workdir") + 1] == "/mnt/gcs/runs/run-x"
    assert '--config.mesh.axes=(("data", -1), ("model", 4))' in argv
    assert '--config.mesh.rules=(("vocab", "model"),)' in argv
    assert "export JAXREC_INIT_TIMEOUT=600 JAXREC_HEARTBEAT_TIMEOUT=120" in remote
    assert "~/logs/run-x.pid" in remote

    logs = out["logs.sh"]
    workers = sorted(a for c in logs if c[4:5] == ["scp"] for a in c if a.startswith("--worker="))
    assert workers == [f"--worker={i}" for i in range(4)]  # v5litepod-16: 4 hosts
    assert any("/mnt/gcs/runs/run-x/logs/" in " ".join(c) for c in logs)

    teardown, = out["teardown.sh"]
    assert teardown[4:6] == ["delete", "tpu-x"] and "--quiet" in teardown


def test_dry_run_flag_queued_spot_and_extra_args(fake_bin):
    _, log = fake_bin
    r = _run("create.sh", fake_bin, "--dry-run", dry=False, QUEUED="1", SPOT="1")
    assert r.returncode == 0, r.stderr
    qr = _commands(r.stdout)[0]
    assert qr[:4] == ["gcloud", "compute", "tpus", "queued-resources"] and "--spot" in qr
    assert "--node-id=tpu-x" in qr and "--runtime-version=v2-alpha-tpuv5-lite" in qr
    r = _run("launch.sh", fake_bin, "-n", "--config.train.num_epochs=5", dry=False,
             EXTRA_ARGS="--config.train.batch_size=4096", ACCELERATOR_TYPE="v5litepod-8")
    assert r.returncode == 0, r.stderr
    assert "launching on all 1 worker(s)" in r.stdout
    assert "--config.train.batch_size=4096 --config.train.num_epochs=5" in r.stdout
    assert not log.exists()


def test_real_mode_calls_gcloud_with_the_printed_arguments(fake_bin):
    """Without DRY_RUN the same commands run (here: the fake gcloud); the placeholders are refused."""
    _, log = fake_bin
    r = _run("teardown.sh", fake_bin, dry=False, PROJECT="my-gcp-project")
    assert r.returncode == 2 and "set PROJECT and BUCKET" in r.stderr and not log.exists()
    r = _run("teardown.sh", fake_bin, dry=False)
    assert r.returncode == 0, r.stderr
    printed = " ".join(_commands(r.stdout)[0])
    assert log.read_text().strip() == printed
