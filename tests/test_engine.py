"""Training engine: configs, registry, sharded steps (1 vs 8 devices), checkpoints, ownership, CLI errors."""

import json

import jax
import numpy as np
import optax
import pytest

from jaxrec import cli, registry
from jaxrec.config import ConfigError, apply_override, load_config, parse_overrides
from jaxrec.models.sasrec import SeqRecTask
from jaxrec.parallel.mesh import make_mesh, resolve_axis_sizes
from jaxrec.parallel.partitioner import Partitioner
from jaxrec.train import steps as steps_lib
from jaxrec.train.checkpoint import Checkpointer, CheckpointOwnershipError, claim_workdir

from test_sasrec import fake_info, random_batch, small_cfg


# ----------------------------------------------------------------------------------------------- config
def test_overrides_are_typed():
    cfg = load_config("sasrec_embedded", ["--config.optimizer.learning_rate=3e-4", "--config.train.batch_size",
                                          "32", "--config.eval.exclude_history=false",
                                          "--config.mesh.axes=(('data', 2), ('model', -1))"])
    assert cfg.optimizer.learning_rate == 3e-4 and isinstance(cfg.optimizer.learning_rate, float)
    assert cfg.train.batch_size == 32 and cfg.eval.exclude_history is False
    assert cfg.mesh.axes == (("data", 2), ("model", -1))


@pytest.mark.parametrize("override, needle", [
    ("--config.optimizer.lrr=1", "unknown config key 'optimizer.lrr'"),
    ("--config.train.batch_size=0", "'train.batch_size': expected a positive int"),
    ("--config.train.batch_size=abc", "'train.batch_size': expected an int"),
    ("--config.model=3", "is a group"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("sasrec_embedded", [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_typo_suggests_the_key():
    cfg = load_config("sasrec_embedded")
    with pytest.raises(ConfigError, match="did you mean optimizer.learning_rate"):
        apply_override(cfg, "optimizer.learning_rat", "1")


def test_parse_overrides_rejects_other_flags():
    with pytest.raises(ConfigError):
        parse_overrides(["--lr=3"])


def test_unknown_config_and_model_names():
    with pytest.raises(ConfigError, match="unknown config"):
        load_config("no_such_config")
    with pytest.raises(ConfigError, match="model.name"):
        registry.get_model("no_such_model")
    assert "sasrec" in registry.model_names() and "seqrec" in registry.task_names()


def test_mesh_axis_sizes():
    assert resolve_axis_sizes((("data", -1), ("model", 2)), 8) == (("data", 4), ("model", 2))
    with pytest.raises(ValueError):
        resolve_axis_sizes((("data", 3),), 8)
    with pytest.raises(ValueError):
        resolve_axis_sizes((("data", -1), ("model", -1)), 8)


# ----------------------------------------------------------------------------------------------- steps
def _one_step(mesh, batch, seed=0):
    cfg = small_cfg()
    task = SeqRecTask(cfg, fake_info())
    part = Partitioner(mesh)
    # SGD: Adam's first update lr·g/(|g|+eps) turns last-bit differences of near-zero gradients (summed in
    # another order on 8 devices) into O(lr) differences, hiding whether the step itself is equal.
    tx = optax.sgd(0.5)
    state, shardings = steps_lib.build_train_state(task, tx, part, seed, batch)
    step = steps_lib.make_train_step(task, tx, part, shardings)
    state, metrics = step(state, part.shard_inputs(batch))
    return jax.device_get(state.params), jax.device_get(metrics), state


def test_data_parallel_step_equals_single_device():
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    batch = random_batch(np.random.default_rng(0), B=16)
    p1, m1, _ = _one_step(make_mesh((("data", 1),), devices=jax.devices()[:1]), batch)
    p8, m8, s8 = _one_step(make_mesh((("data", 8),)), batch)
    # the 8-device state really is laid out over 8 devices
    assert len(jax.tree.leaves(s8.params)[0].sharding.device_set) == 8
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


def test_batch_not_divisible_by_data_shards():
    part = Partitioner(make_mesh((("data", 8),)))
    with pytest.raises(ValueError, match="not divisible"):
        part.check_batch_size(12)


# ----------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_ownership(tmp_path):
    batch = random_batch(np.random.default_rng(1), B=8)
    _, _, state = _one_step(make_mesh((("data", 1),), devices=jax.devices()[:1]), batch)
    claim_workdir(tmp_path, "sasrec", state.params)
    ck = Checkpointer(tmp_path, best_metric="ndcg")
    ck.save(1, state, {"next_index": 3}, {"epoch": 0.5})
    ck.save_best(1, state, {"ndcg": 0.25})
    ck.wait()
    restored, data_state, meta = ck.restore(state)
    assert data_state == {"next_index": 3} and meta["epoch"] == 0.5
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state, restored)
    best, best_meta = ck.restore_best(state)
    assert best_meta["ndcg"] == 0.25
    ck.close()
    # another model in the same directory: one clear error, nothing overwritten
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(CheckpointOwnershipError, match="holds checkpoints of model 'sasrec', not 'two_tower'"):
        claim_workdir(tmp_path, "two_tower", state.params)
    other = jax.tree.map(lambda x: np.zeros((3,) + np.shape(x)), state.params)
    with pytest.raises(CheckpointOwnershipError, match="different parameter layout"):
        claim_workdir(tmp_path, "sasrec", other)
    assert (tmp_path / "run.json").read_text() == before


# ----------------------------------------------------------------------------------------------- CLI
def _cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_help(capsys):
    for sub in ("train", "eval", "bench", "data"):
        with pytest.raises(SystemExit) as e:
            cli.main([sub, "--help"])
        assert e.value.code == 0
        assert "usage: jaxrec " + sub in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["train", "--config.train.batch_sizee=3"], "unknown config key 'train.batch_sizee'"),
    (["train", "--config.train.batch_size=0"], "expected a positive int"),
    (["train", "--data_dir", "/nonexistent/raw"], "/nonexistent/raw"),  # embedded data: always prepared
    (["train", "--data_dir", "/nonexistent/raw", "--config.data.name=llmcdsr/food_kitchen"],
     "/nonexistent/raw"),
    (["train", "--config", "/nonexistent/cfg.py"], "does not exist"),
])
def test_cli_bad_input_one_line(args, needle, capsys):
    code, _, err = _cli(args, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("jaxrec: error:")]
    assert len(lines) == 1 and needle in lines[0], err


def test_cli_refuses_foreign_workdir(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"model": "home", "param_signature": {}}))
    code, _, err = _cli(["train", "--config", "sasrec_embedded:tiny", "--workdir", str(tmp_path),
                         "--no_progress"], capsys)
    assert code == 2 and "holds checkpoints of model 'home', not 'sasrec'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
