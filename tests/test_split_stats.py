"""experiments/cdsr_split_stats.py: per-split target popularity, history lengths and the most-popular MRR."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "cdsr_split_stats.py"
_spec = importlib.util.spec_from_file_location("jaxrec_experiments_split_stats", _PATH)
ss = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ss)


def _write(root, name, seqs):
    (root / name).write_text("".join(f"{u}\t{','.join(map(str, s))}\n" for u, s in enumerate(seqs)))


def test_popularity_history_and_most_popular_mrr(tmp_path):
    # X items 0..3, Y items 4..9; item 0 is the most popular X item, item 3 never trained
    (tmp_path / "num.txt").write_text("4\n6\n")
    _write(tmp_path, "train_overlap.txt", [[0, 0, 4], [0, 1, 5]])
    _write(tmp_path, "train_A.txt", [[0, 1]])
    _write(tmp_path, "train_B.txt", [[4, 4]])
    _write(tmp_path, "valid.txt", [[1, 5, 0], [4, 4]])  # X target 0 (pop 4); Y target 4 (pop 4)
    _write(tmp_path, "test.txt", [[2, 3], [0, 9]])  # X target 3 (pop 0); Y target 9 (pop 0)
    rows = {(r["split"], r["domain"]): r for r in ss.split_stats(tmp_path, num_negatives=3, seed=0)}
    vx, tx = rows["valid", "X"], rows["test", "X"]
    assert (vx["users"], vx["pop_median"], vx["hist_median"], vx["same_domain_hist_median"]) == (1, 4, 2, 1)
    assert (tx["pop_median"], tx["unseen"], tx["hist_median"]) == (0, 1.0, 1)
    # the most popular item ranks first among any negatives; an untrained one ranks behind every trained negative
    assert vx["pop_mrr"] == 1.0 and rows["valid", "Y"]["pop_mrr"] == 1.0
    assert tx["pop_mrr"] < 0.5 and rows["test", "Y"]["pop_mrr"] < 1.0


def test_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "valid.txt").write_text("0\t1,2\n1\t3,x\n")
    with pytest.raises(ValueError, match=r"valid.txt:2: item ids must be integers"):
        ss.read_sequences(tmp_path / "valid.txt")
