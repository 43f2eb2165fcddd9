"""experiments/cdsr_split_stats.py: per-split target popularity, history lengths and the most-popular MRR."""

from helpers import load_script

from jaxrec.data.builders import cross_domain_seq as C

ss = load_script("experiments/cdsr_split_stats.py")


def _write(root, name, seqs):
    (root / name).write_text("".join(f"{u}\t{','.join(map(str, s))}\n" for u, s in enumerate(seqs, 1)))


def test_popularity_history_and_most_popular_mrr(tmp_path):
    # raw X items 0..3, Y items 4..9 (the reader shifts ids by +1); raw item 0 is the most popular X item,
    # raw 3 and raw 9 never occur in training
    (tmp_path / "num.txt").write_text("4\n6\n")
    (tmp_path / "instance_num.txt").write_text("1\n1\n2\n")
    _write(tmp_path, "train_A.txt", [[0, 1]])
    _write(tmp_path, "train_B.txt", [[4, 4]])
    _write(tmp_path, "train_overlap.txt", [[0, 0, 4], [0, 1, 5]])
    _write(tmp_path, "valid.txt", [[1, 5, 0], [4, 4]])  # X target raw 0 (4 occurrences); Y target raw 4 (3)
    _write(tmp_path, "test.txt", [[2, 3], [0, 9]])  # X target raw 3 (never trained); Y target raw 9 (never)
    data = C.read_config("llmcdsr_food_kitchen", tmp_path, verify_checksums=False)
    rows = {(r["split"], r["domain"]): r for r in ss.split_stats(data, num_negatives=3, seed=0)}
    vx, tx = rows["valid", "X"], rows["test", "X"]
    assert (vx["users"], vx["pop_median"], vx["hist_median"], vx["same_domain_hist_median"]) == (1, 4, 2, 1)
    assert (tx["pop_median"], tx["unseen"], tx["hist_median"]) == (0, 1.0, 1)
    # the most popular item ranks first among any negatives; an untrained one ranks behind every trained negative
    assert vx["pop_mrr"] == 1.0 and rows["valid", "Y"]["pop_mrr"] == 1.0
    assert tx["pop_mrr"] < 0.5 and rows["test", "Y"]["pop_mrr"] < 1.0
