"""Per-metric model selection in one run (``train.select_metrics``): for each named validation metric, the test
evaluation made at the step where it was best -- the official C2DSR per-domain protocol -- surviving a resume."""

import json

import pytest

from jaxrec.config import load_config
from jaxrec.train.run import train_from_config

METRICS = ("full/mrr", "full/hr@10")


def _cfg(**kw):
    over = ["--config.train.num_steps=12", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
            "--config.train.log_every=3", "--config.eval.num_negatives=0"]
    cfg = load_config("sasrec_embedded:tiny", over)
    with cfg.unlocked():  # experiment configs that use it declare the key (e.g. experiments/c2dsr_*.py)
        cfg.train.select_metrics = METRICS
    return cfg


def _rows(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_select_metrics_keep_the_test_eval_of_each_metrics_best_step_and_survive_resume(tmp_path):
    # killed after 7 steps (last checkpoint at step 6), then resumed to step 12: the selections made before the
    # kill come back from the checkpoint and the final ones are those of the whole eval history
    train_from_config(_cfg(), str(tmp_path), progress=False, stop_after=7)
    out = train_from_config(_cfg(), str(tmp_path), progress=False)
    rows = _rows(tmp_path)
    evals = [r for r in rows if "eval/full/mrr" in r]
    assert [r["step"] for r in evals] == [3, 6, 9, 12]
    tests = {r["step"]: r for r in rows if any(k.startswith("select_test/") for k in r)}
    for m in METRICS:
        sel = out["selected"][m]
        best = max(evals, key=lambda r: r[f"eval/{m}"])  # first maximum: later ties do not replace it
        assert sel["step"] == best["step"] and sel["valid"][m] == pytest.approx(best[f"eval/{m}"])
        row = tests[sel["step"]]
        for k, v in sel["test"].items():
            assert row[f"select_test/{k}"] == pytest.approx(v)
    # the test split is evaluated only at steps where some selected metric improved
    improved = set()
    for m in METRICS:
        top = -1.0
        for r in evals:
            if r[f"eval/{m}"] > top:
                top = r[f"eval/{m}"]
                improved.add(r["step"])
    assert set(tests) == improved
    assert json.loads((tmp_path / "results.json").read_text())["selected"].keys() == set(METRICS)


def test_select_metrics_need_valid_and_test_splits(tmp_path):
    from jaxrec.config import ConfigError

    cfg = _cfg()
    cfg.eval.test_split = "nope"
    with pytest.raises(ConfigError, match="select_metrics"):
        train_from_config(cfg, str(tmp_path), progress=False)
