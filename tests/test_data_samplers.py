"""Negative samplers: exclusion of positives, probabilities, logQ, fixed evaluation negatives."""

import numpy as np
import pytest

from jaxrec.data import samplers
from jaxrec.data.errors import DataError


def _positives(num_users, num_items, rng):
    """Mixed users: none, few, most (dense) and all-but-two positives."""
    pos = {}
    for u in range(num_users):
        k = [0, 3, int(0.9 * num_items), num_items - 2][u % 4]
        pos[u] = rng.choice(np.arange(1, num_items + 1), size=k, replace=False)
    return pos


def test_uniform_sampler_excludes_positives_and_padding():
    rng = np.random.default_rng(0)
    V = 50
    pos = _positives(12, V, rng)
    s = samplers.UniformSampler(V, pos)
    users = np.repeat(np.arange(12), 5)
    neg = s.sample(users, 200, rng=1)
    assert neg.shape == (60, 200) and neg.dtype == np.int64
    assert neg.min() >= 1 and neg.max() <= V
    for b, u in enumerate(users):
        assert not np.isin(neg[b], pos[u]).any()
    # a user with all but two items positive gets exactly those two
    u3 = 3
    rest = np.setdiff1d(np.arange(1, V + 1), pos[u3])
    assert set(np.unique(neg[users == u3])) == set(rest)
    assert np.array_equal(s.num_positives([0, 1, 2, 3, 99]), [0, 3, 45, 48, 0])


def test_uniform_sampler_is_uniform_over_negatives():
    V = 20
    s = samplers.UniformSampler(V, {0: [1, 2, 3, 4, 5]})
    neg = s.sample(np.zeros(1, int), 150_000, rng=0)[0]
    freq = np.bincount(neg, minlength=V + 1)[6:] / neg.size
    np.testing.assert_allclose(freq, 1 / 15, atol=0.004)


def test_uniform_sampler_deterministic_and_errors():
    s = samplers.UniformSampler(10, [[1, 2], [3]])
    a = s.sample([0, 1, 0], 7, rng=5)
    b = s.sample([0, 1, 0], 7, rng=np.random.default_rng(5))
    assert np.array_equal(a, b)
    full = samplers.UniformSampler(3, {0: [1, 2, 3]})
    with pytest.raises(DataError, match="every item"):
        full.sample([0], 2, rng=0)
    with pytest.raises(DataError, match="out of range"):
        samplers.UniformSampler(3, {0: [4]})


def test_popularity_probs_logq_and_sampling():
    counts = np.array([7, 10, 0, 30, 60], np.int64)  # index 0 (padding) ignored
    s = samplers.PopularitySampler(counts, alpha=1.0)
    assert s.probs[0] == 0 and s.probs[2] == 0
    np.testing.assert_allclose(s.probs.sum(), 1.0)
    np.testing.assert_allclose(s.probs[[1, 3, 4]], [0.1, 0.3, 0.6])
    np.testing.assert_allclose(s.log_probs[[1, 3, 4]], np.log(s.probs[[1, 3, 4]]))
    assert np.isneginf(s.log_probs[0]) and np.isneginf(s.log_probs[2])

    draws = s.sample((200_000,), rng=0)
    freq = np.bincount(draws, minlength=5) / draws.size
    np.testing.assert_allclose(freq, s.probs, atol=0.005)

    nr = s.sample((1000, 3), rng=1, replace=False)
    assert nr.shape == (1000, 3)
    assert all(len(set(row)) == 3 for row in nr.tolist())
    assert set(np.unique(nr)) == {1, 3, 4}
    with pytest.raises(DataError):
        s.sample((2, 4), rng=0, replace=False)

    sm = samplers.PopularitySampler(counts, alpha=0.5, smoothing=1.0)
    w = np.array([0, 11, 1, 31, 61]) ** 0.5
    w[0] = 0
    np.testing.assert_allclose(sm.probs, w / w.sum())
    np.testing.assert_allclose(sm.probs.sum(), 1.0)


def test_popularity_without_replacement_first_draw_matches_probs():
    s = samplers.PopularitySampler(np.array([0, 1, 2, 3, 4]), alpha=1.0)
    first = s.sample((40_000, 2), rng=3, replace=False)[:, 0]
    freq = np.bincount(first, minlength=5) / first.size
    np.testing.assert_allclose(freq, s.probs, atol=0.01)


def test_fixed_eval_negatives_are_fixed_and_exclude_positives():
    rng = np.random.default_rng(0)
    V, N = 300, 99
    users = np.arange(40)
    pos = [rng.choice(np.arange(1, V + 1), size=rng.integers(1, 200), replace=False) for _ in users]
    pos[5] = np.arange(1, V - N + 1)  # exactly N negatives left: all of them
    neg = samplers.fixed_eval_negatives(users, pos, V, N, seed=42)
    assert neg.shape == (40, N)
    for b in range(40):
        assert len(set(neg[b].tolist())) == N
        assert neg[b].min() >= 1 and neg[b].max() <= V
        assert not np.isin(neg[b], pos[b]).any()
    assert set(neg[5].tolist()) == set(range(V - N + 1, V + 1))

    # identical across calls, batch orders and batch splits
    again = samplers.fixed_eval_negatives(users, pos, V, N, seed=42)
    assert np.array_equal(neg, again)
    perm = rng.permutation(40)
    shuffled = samplers.fixed_eval_negatives(users[perm], [pos[i] for i in perm], V, N, seed=42)
    assert np.array_equal(shuffled, neg[perm])
    halves = np.concatenate([samplers.fixed_eval_negatives(users[s], pos[s.start:s.stop], V, N, seed=42)
                             for s in (slice(0, 13), slice(13, 40))])
    assert np.array_equal(halves, neg)
    # padded 2-D positives give the same result as ragged lists
    M = max(len(p) for p in pos)
    padded = np.zeros((40, M), np.int64)
    for b, p in enumerate(pos):
        padded[b, :len(p)] = p
    assert np.array_equal(samplers.fixed_eval_negatives(users, padded, V, N, seed=42), neg)
    # another seed gives other negatives
    assert not np.array_equal(samplers.fixed_eval_negatives(users, pos, V, N, seed=43), neg)
    with pytest.raises(DataError, match="not enough negatives"):
        samplers.fixed_eval_negatives([0], [np.arange(1, V - N + 2)], V, N, seed=0)


def test_item_frequencies_and_user_positives():
    src = [
        {"user_id": 0, "items": np.array([1, 2, 2]), "target": 3},
        {"user_id": 1, "items": np.array([3]), "target": 4},
        {"user_id": 0, "items": np.array([5, 1]), "target": 2},
    ]
    f = samplers.item_frequencies(src)
    assert np.array_equal(f, [0, 2, 3, 2, 1, 1])
    assert samplers.item_frequencies(src, num_items=7).shape == (8,)
    with pytest.raises(DataError):
        samplers.item_frequencies(src, num_items=4)
    up = samplers.user_positives(src)
    assert np.array_equal(up[0], [1, 2, 3, 5]) and np.array_equal(up[1], [3, 4])
