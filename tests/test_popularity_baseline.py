"""experiments/kuairand1k_popularity.py: the most-popular HR@K with ties broken at random in expectation."""


import numpy as np
import pytest
from helpers import load_script

pop = load_script("experiments/kuairand1k_popularity.py")


def _brute(train, targets, k, trials=20000, seed=0):
    """Monte-Carlo reference: shuffle ties, rank by count, count hits."""
    counts = np.bincount(train, minlength=max(train.max(), max(targets)) + 1)
    items = np.flatnonzero(counts > 0)
    rng = np.random.default_rng(seed)
    hits = 0.0
    for _ in range(trials // len(targets)):
        order = items[np.lexsort((rng.random(items.size), -counts[items]))]
        top = set(order[:k].tolist())
        hits += sum(t in top for t in targets)
    return hits / ((trials // len(targets)) * len(targets))


def test_expected_hr_matches_random_tie_breaking_and_oov_is_a_miss():
    train = np.array([1, 1, 1, 2, 2, 3, 3, 4, 5, 6])  # counts: 1:3, 2:2, 3:2, 4..6:1
    targets = [1, 2, 4, 9]  # 9 never trained: OOV, always a miss
    for k in (1, 2, 3, 5):
        r = pop.popularity_hr(train, np.array(targets), ks=(k,))
        assert r[f"hr@{k}"] == pytest.approx(_brute(train, targets, k), abs=0.01)
    r = pop.popularity_hr(train, np.array(targets), ks=(2,))
    # item 1 always in the top 2; item 2 ties with 3 for the second slot (1/2); item 4 never; 9 a miss
    assert r["hr@2"] == pytest.approx((1 + 0.5) / 4) and r["target_in_vocab"] == 0.75 and r["catalogue"] == 6


def test_last_item_transitions_rank_successors_then_popularity():
    train = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([5, 4, 4, 4])]  # 1->2 twice; 2->3, 2->4 once
    # history ending in 2: successors 4 (popular tie-break: 4 occurs 4 times) before 3; then popularity
    hist = [np.array([7, 2]), np.array([1]), np.array([9])]
    r = pop.transition_hr(pop.transition_model(train), hist, np.array([3, 2, 4]), ks=(1, 2))
    # row 1: ranks [4, 3, ...] -> target 3 at position 2; row 2: [2, ...] -> hit@1; row 3: no successors of 9,
    # popularity order [4, 1, 2, ...] -> target 4 hit@1
    assert r == {"hr@1": 2 / 3, "hr@2": 1.0}


def test_exclude_history_takes_the_users_items_out_of_both_rankers():
    train = np.array([1, 1, 1, 2, 2, 3, 3, 4, 5, 6])  # counts: 1:3, 2:2, 3:2, 4..6:1
    hist = [np.array([1, 3]), np.array([1, 2]), np.array([4])]
    targets = np.array([2, 2, 5])
    r = pop.popularity_hr(train, targets, ks=(1, 2), exclude=hist)
    # row 1: without 1 and 3, item 2 is first; row 2: the target 2 is in its own history and stays: behind 3 only
    # after 1 goes -> tie 2/3 for the first slot; row 3: 4 goes, 5 ties with 6 behind 1, 2, 3
    assert r["hr@1"] == pytest.approx((1 + 0.5 + 0) / 3) and r["hr@2"] == pytest.approx((1 + 1 + 0) / 3)
    trans = pop.transition_model([np.array([1, 2, 3]), np.array([1, 3, 4])])  # 1 -> 2, 1 -> 3
    r = pop.transition_hr(trans, [np.array([3, 2, 1])], np.array([4]), ks=(1,), exclude_history=True)
    assert r == {"hr@1": 1.0}  # successors 2 and 3 are history; then popularity: 1 (history), 3, 2 ... 4
    assert pop.transition_hr(trans, [np.array([3, 2, 1])], np.array([4]), ks=(1,)) == {"hr@1": 0.0}
