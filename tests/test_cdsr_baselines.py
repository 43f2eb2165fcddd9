"""SASRec baselines on C2DSR's data/evaluation (task ``cdsr_sasrec``): training lines per mode, C2DSR's exact
evaluation (the baseline's per-example outputs == c2dsr.rank_outputs on the same scores; per-domain
accumulation), a few engine train steps. Tiny synthetic problem (NX = 12, NY = 15, T = 8, d = 16)."""

import jax
import ml_collections
import numpy as np
import pytest
from helpers import load_script
from test_c2dsr import NX, NY, PAD, T, make_record, synthetic_info, synthetic_records

from jaxrec.data import c2dsr_transforms as ct
from jaxrec.kernels.metrics import MetricAccumulator
from jaxrec.models import c2dsr as c2dsr_lib
from jaxrec.models import cdsr_baselines as cb

D = 16


def make_cfg(mode, **task_kw):
    task = dict(name="cdsr_sasrec", mode=mode)
    task.update(task_kw)
    return ml_collections.ConfigDict(dict(
        model=dict(name="sasrec", embed_dim=D, num_blocks=1, num_heads=1, max_len=T, dropout_rate=0.2,
                   mask_keys_with_valid=False),
        task=task, train=dict(seed=0, batch_size=16),
        eval=dict(num_negatives=20, negatives_seed=7, batch_size=16),
        optimizer=dict(name="adam", learning_rate=1e-2, b1=0.9, b2=0.98, eps=1e-8)))


@pytest.fixture(scope="module")
def records():
    return synthetic_records()


def test_train_lines_per_mode(records):
    line = [0, 13, 1, 14, 2]  # C2DSR ids: X0 Y13 X1 Y14 X2
    rec = make_record(5, line)
    mixed = cb.CDSRTrainTransform("mixed", NX, T).map(rec)
    np.testing.assert_array_equal(mixed["input_ids"], [0] * 4 + [1, 14, 2, 15])
    np.testing.assert_array_equal(mixed["target_ids"], [0] * 4 + [14, 2, 15, 3])
    x = cb.CDSRTrainTransform("x", NX, T).map(rec)
    np.testing.assert_array_equal(x["input_ids"], [0] * 6 + [1, 2])
    np.testing.assert_array_equal(x["target_ids"], [0] * 6 + [2, 3])
    y = cb.CDSRTrainTransform("y", NX, T).map(rec)
    np.testing.assert_array_equal(y["input_ids"], [0] * 7 + [13 - NX + 1])
    np.testing.assert_array_equal(y["target_ids"], [0] * 7 + [14 - NX + 1])
    assert y["mask"].sum() == 1
    # kept lines only, as C2DSR (same source and epoch length)
    task = cb.CDSRSASRecTask(make_cfg("mixed"), synthetic_info(), train_records=records)
    c2 = c2dsr_lib.C2DSRTask(ml_collections.ConfigDict(dict(
        model=dict(name="c2dsr", embed_dim=D, num_blocks=1, max_len=T), task=dict(name="c2dsr"),
        train=dict(batch_size=16), eval=dict())), synthetic_info(), train_records=records)
    a, b = task.train_source(records), c2.train_source(records)
    assert len(a) == len(b) and (a.indices == b.indices).all()


@pytest.mark.parametrize("mode", ["mixed", "x", "y"])
def test_evaluation_is_c2dsr_evaluation(records, mode):
    from jaxrec.parallel.partitioner import Partitioner
    from jaxrec.train import steps as steps_lib

    task = cb.CDSRSASRecTask(make_cfg(mode), synthetic_info(), train_records=records)
    tx = steps_lib.build_optimizer(task.cfg.optimizer)
    part = Partitioner()
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, task.dummy_batch(16))
    # a few engine train steps on kept lines: finite, decreasing loss
    step = steps_lib.make_train_step(task, tx, part, shardings)
    src = task.train_source(records)
    batch = part.shard_inputs(task.train_transform().map_batch(src.__getitems__(list(range(16)))))
    seen = []
    for _ in range(8):
        state, m = step(state, batch)
        seen.append(float(m["loss"]))
    assert np.isfinite(seen).all() and seen[-1] < seen[0]
    # evaluation batch = C2DSR's evaluation batch (+ dom_seq for single-domain modes)
    recs = records[:23] + [make_record(99, [0, 13, 1, 14, 15, 3])]
    eb = task.eval_transform("valid").map_batch(recs)
    ref_b = ct.C2DSREvalTransform(NX, NY, T, 20, 7, "valid").map_batch(recs)
    for k, v in ref_b.items():
        np.testing.assert_array_equal(eb[k], v, err_msg=k)
    assert ("dom_seq" in eb) == (mode != "mixed")
    params = jax.device_get(state.params)
    out = jax.jit(lambda p, b: task.evaluate(p, {}, b))(params, eb)
    sx, sy = jax.jit(lambda p, b: task.domain_scores(p, {}, b))(params, eb)
    assert sx.shape == (len(recs), NX) and sy.shape == (len(recs), NY)
    ref = c2dsr_lib.rank_outputs(sx, sy, eb, num_negatives=20, full_ranking=True)
    assert set(out) == set(ref)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref[k]), err_msg=k)
    # the scores are SASRec's last-position catalogue scores in C2DSR's domain-local ids
    full = np.asarray(jax.jit(lambda p, ids: task.scores(p, {}, ids))(params, task.input_ids(eb)))
    if mode == "mixed":
        np.testing.assert_array_equal(np.asarray(task.input_ids(eb)), np.where(eb["seq"] == PAD, 0, eb["seq"] + 1))
        np.testing.assert_allclose(np.asarray(sx), full[:, 1:NX + 1])
        np.testing.assert_allclose(np.asarray(sy), full[:, NX + 1:])
    else:
        last = recs[-1]  # history X0 Y13 X1 Y14 Y15, target X3
        want = [1, 2] if mode == "x" else [13 - NX + 1, 14 - NX + 1, 15 - NX + 1]
        np.testing.assert_array_equal(eb["dom_seq"][-1], [0] * (T - len(want)) + want)
        np.testing.assert_allclose(np.asarray(sx if mode == "x" else sy), full[:, 1:])
        assert last["target"] == 3 + 1
    # accumulation: C2DSR's per-domain names; single-domain modes count only their domain's rows
    acc = MetricAccumulator()
    task.accumulate(acc, out, eb)
    res = acc.result()
    is_y = np.asarray(eb["is_y"])
    mrr = 1.0 / np.asarray(ref["sampled/rank"], np.float64)
    if mode == "mixed":
        np.testing.assert_allclose(res["all/mrr"], mrr.mean())
        np.testing.assert_allclose(res["X/mrr"], mrr[~is_y].mean())
    else:
        own = is_y if mode == "y" else ~is_y
        np.testing.assert_allclose(res["all/mrr"], mrr[own].mean())
        np.testing.assert_allclose(res[("Y" if mode == "y" else "X") + "/mrr"], mrr[own].mean())
        assert np.isnan(res[("X" if mode == "y" else "Y") + "/mrr"])


def test_config_errors_and_experiment_configs():
    from jaxrec.config import ConfigError

    with pytest.raises(ConfigError):
        cb.CDSRSASRecTask(make_cfg("both"), synthetic_info(), train_records=synthetic_records(8))
    mod = load_script("experiments/sasrec_cdsr_food_kitchen.py")
    for mode in ("mixed", "x", "y"):
        c = mod.get_config(mode)
        assert c.task.mode == mode and c.model.embed_dim == 256 and c.model.max_len == 15
        assert c.train.batch_size == 256 and c.train.num_epochs == 100 and c.train.eval_every == 5 * 29
        assert c.data.name == "llmcdsr/food_kitchen"
        a = mod.get_config(mode + ",afk")
        assert a.data.name == "abxi/afk" and a.task.mode == mode and a.train.eval_every == 5 * 27
    for bad in ("z", "x,fk", "x,afk,afk"):
        with pytest.raises(ValueError):
            mod.get_config(bad)


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_llmcdsr_food_kitchen_few_steps(shared_data, tmp_path):
    import pathlib

    from jaxrec.config import load_config
    from jaxrec.train.run import train_from_config

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "sasrec_cdsr_food_kitchen.py"
    cfg = load_config(f"{path}:x", [
        "--config.model.embed_dim=16", "--config.model.num_blocks=1", "--config.train.batch_size=32",
        "--config.train.num_steps=3", "--config.train.eval_every=3", "--config.eval.batch_size=512",
        "--config.eval.num_negatives=99", "--config.data.cache=false"])
    out = train_from_config(cfg, str(tmp_path), data_dir=str(shared_data), progress=False)
    assert out["steps"] == 3
    assert np.isfinite(out["best_valid"]["X/mrr"]) and np.isfinite(out["test"]["all/full/mrr"])
    assert np.isnan(out["test"]["Y/mrr"])
