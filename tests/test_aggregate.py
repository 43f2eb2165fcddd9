"""experiments/aggregate.py: mean ± std over seeds, per-metric model selection (``--select``), clear errors."""

import json

import numpy as np
import pytest
from helpers import load_script

agg = load_script("experiments/aggregate.py")


def _run(root, name, test, selected=None):
    d = root / name
    d.mkdir()
    r = {"test": test, "best_valid": {}}
    if selected is not None:
        r["selected"] = selected
    (d / "results.json").write_text(json.dumps(r))


def test_mean_std_and_per_domain_selection(tmp_path, capsys):
    for i, (x_sel, y_sel, x_best) in enumerate([(0.30, 0.50, 0.25), (0.40, 0.70, 0.35)]):
        _run(tmp_path, f"m_s{i}", {"X/mrr": x_best, "Y/mrr": 0.1, "nonoverlap/X/mrr": 0.0},
             {"X/mrr": {"step": 5, "valid": {}, "test": {"X/mrr": x_sel, "nonoverlap/X/mrr": x_sel / 2}},
              "Y/mrr": {"step": 9, "valid": {}, "test": {"Y/mrr": y_sel}}})
    (tmp_path / "m_s9").mkdir()  # unfinished: no results.json -> left out
    out = tmp_path / "o.json"
    assert agg.main(["--runs", str(tmp_path), "--group", "m=m_s", "--metrics", "X/mrr", "Y/mrr", "nonoverlap/X/mrr",
                     "--select", "X/=X/mrr", "Y/=Y/mrr", "nonoverlap/X/=X/mrr", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["m"]
    assert got["runs"] == ["m_s0", "m_s1"]
    np.testing.assert_allclose(got["metrics"]["X/mrr"]["mean"], 0.35)
    np.testing.assert_allclose(got["metrics"]["X/mrr"]["std"], np.std([0.3, 0.4], ddof=1))
    np.testing.assert_allclose(got["metrics"]["Y/mrr"]["mean"], 0.60)
    np.testing.assert_allclose(got["metrics"]["nonoverlap/X/mrr"]["mean"], 0.175)  # longest prefix wins
    assert "unfinished (left out): m_s9" in capsys.readouterr().err
    # without --select: the best-checkpoint test metrics
    agg.main(["--runs", str(tmp_path), "--group", "m=m_s", "--metrics", "X/mrr", "--json", str(out)])
    np.testing.assert_allclose(json.loads(out.read_text())["m"]["metrics"]["X/mrr"]["mean"], 0.30)


def test_missing_metric_or_selection_names_the_run(tmp_path):
    _run(tmp_path, "a_s0", {"X/mrr": 0.1}, {"X/mrr": {"step": 1, "valid": {}, "test": {"X/mrr": 0.2}}})
    with pytest.raises(KeyError, match="a_s0/results.json: no 'test' metric 'Y/mrr'"):
        agg.main(["--runs", str(tmp_path), "--group", "a=a_s", "--metrics", "Y/mrr"])
    with pytest.raises(KeyError, match="no test evaluation selected by 'Y/mrr'"):
        agg.main(["--runs", str(tmp_path), "--group", "a=a_s", "--metrics", "Y/mrr", "--select", "Y/=Y/mrr"])


def test_eval_json_reads_a_reevaluation(tmp_path, capsys):
    for i, v in enumerate([0.5, 0.7]):
        _run(tmp_path, f"k_s{i}", {"full/hr@50": 0.1})
        (tmp_path / f"k_s{i}" / "re.json").write_text(json.dumps({"full/hr@500": v}))
    _run(tmp_path, "k_s2", {"full/hr@50": 0.1})  # trained but not re-evaluated -> unfinished for this table
    out = tmp_path / "o.json"
    agg.main(["--runs", str(tmp_path), "--group", "k=k_s", "--metrics", "full/hr@500", "--eval_json", "re.json",
              "--json", str(out)])
    got = json.loads(out.read_text())["k"]
    assert got["runs"] == ["k_s0", "k_s1"]
    np.testing.assert_allclose(got["metrics"]["full/hr@500"]["mean"], 0.6)
    assert "unfinished (left out): k_s2" in capsys.readouterr().err
    with pytest.raises(KeyError, match="k_s0/re.json: no 'test' metric 'full/hr@50'"):
        agg.main(["--runs", str(tmp_path), "--group", "k=k_s", "--metrics", "full/hr@50", "--eval_json", "re.json"])
    with pytest.raises(SystemExit):
        agg.main(["--runs", str(tmp_path), "--group", "k=k_s", "--metrics", "full/hr@500", "--eval_json", "re.json",
                  "--select", "full/=full/hr@50"])
    (tmp_path / "k_s1" / "re.json").write_text("{not json")
    with pytest.raises(ValueError, match="re.json: not JSON"):
        agg.main(["--runs", str(tmp_path), "--group", "k=k_s", "--metrics", "full/hr@500", "--eval_json", "re.json"])
