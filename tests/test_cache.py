"""jaxrec.cache.CacheStore: the miss path (never-written keys), counters, documented eviction (oldest write in
the set; in-batch duplicates, overflow and protected ways), save/restore alone and inside a checkpointed
TrainState, jit with donation, storage accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.cache import CacheStore, entry_bytes, hash_keys
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.state import TrainState

pytestmark = pytest.mark.usefixtures("fast_compile")  # tiny shapes: skip XLA optimisation passes

SETS, WAYS, VSHAPE = 8, 4, (2, 3)

# One jitted read / write for every test (shapes are padded to these sizes, so each compiles once).
N = 8


@jax.jit
def _write(store, keys, values, mask):
    return store.write(keys, values, mask=mask)


@jax.jit
def _lookup(store, keys, mask):
    return store.lookup(keys, mask)


def write(store, keys, values=None):
    keys = np.asarray(keys, np.int32).reshape(-1, 2)
    n = keys.shape[0]
    if values is None:
        values = np.stack([np.full(VSHAPE, float(k[0] * 1000 + k[1]), np.float32) for k in keys])
    pk = np.zeros((N, 2), np.int32)
    pv = np.zeros((N,) + VSHAPE, np.float32)
    pk[:n], pv[:n] = keys, values
    return _write(store, pk, pv, np.arange(N) < n)


def lookup(store, keys):
    keys = np.asarray(keys, np.int32).reshape(-1, 2)
    n = keys.shape[0]
    pk = np.zeros((N, 2), np.int32)
    pk[:n] = keys
    vals, hit, store = _lookup(store, pk, np.arange(N) < n)
    return np.asarray(vals)[:n], np.asarray(hit)[:n], store


def value_of(k):
    return float(k[0] * 1000 + k[1])


@pytest.fixture(scope="module")
def empty():
    return CacheStore.create(SETS * WAYS, VSHAPE, ways=WAYS, key_size=2)


@pytest.fixture(scope="module")
def same_set_keys():
    """Keys ``(7, item)`` that all hash to set 0 (found by hashing a range of candidates)."""
    cand = np.stack([np.full(4000, 7), np.arange(4000)], axis=1).astype(np.int32)
    sets = np.asarray(hash_keys(cand, SETS))
    return [tuple(k) for k in cand[sets == 0][:WAYS + 4]]


def test_layout_and_storage_accounting(empty):
    assert empty.capacity == SETS * WAYS and empty.ways == WAYS and empty.num_sets == SETS
    assert empty.value_shape == VSHAPE and empty.key_size == 2
    assert empty.value_bytes() == SETS * WAYS * 6 * 4
    assert empty.nbytes() == SETS * WAYS * (6 * 4 + 2 * 4 + 1 + 4)
    assert entry_bytes(VSHAPE, np.float32, 2) * empty.capacity == empty.nbytes()
    assert CacheStore.create(10, (1,), ways=4).capacity == 12  # rounded up to whole sets
    bf = CacheStore.create(16, (5,), ways=2, dtype=jnp.bfloat16)
    assert bf.value_bytes() == 16 * 5 * 2


def test_miss_path_is_defined_and_counted(empty):
    """Never-written keys: hit False, values exactly zero (no NaN), counted as misses; masked / negative keys
    are not looked up and not counted."""
    vals, hit, st = lookup(empty, [(1, 2), (3, 4), (0, 0)])
    assert not hit.any() and np.all(vals == 0) and np.isfinite(vals).all()
    s = st.stats_dict()
    assert (s["reads"], s["hits"], s["misses"]) == (3, 0, 3)
    store = write(empty, [(1, 2)])
    vals, hit, st = lookup(store, [(1, 2), (1, 3), (-1, 2)])  # negative component = padding: not counted
    assert hit.tolist() == [True, False, False]
    assert np.all(vals[0] == value_of((1, 2))) and np.all(vals[1:] == 0)
    s = st.stats_dict()
    assert (s["reads"], s["hits"], s["misses"]) == (2, 1, 1) and s["hit_rate"] == 0.5
    # the pure read does not touch the counters
    v2, h2 = jax.jit(lambda s, k: s.read(k))(store, jnp.array([[1, 2], [9, 9]], jnp.int32))
    assert np.asarray(h2).tolist() == [True, False] and int(store.stats["reads"]) == 0
    with pytest.raises(ValueError, match=r"keys must have shape \[\.\.\., 2\]"):
        store.read(jnp.zeros((3, 3), jnp.int32))
    with pytest.raises(ValueError, match="keys must be integers"):
        store.read(jnp.zeros((3, 2), jnp.float32))


def test_update_in_place_and_duplicates_keep_last(empty):
    store = write(empty, [(1, 1), (2, 2)])
    store = write(store, [(1, 1)], values=np.full((1,) + VSHAPE, -5.0, np.float32))
    vals, hit, _ = lookup(store, [(1, 1), (2, 2)])
    assert hit.all() and np.all(vals[0] == -5.0) and np.all(vals[1] == value_of((2, 2)))
    s = store.stats_dict()
    assert (s["writes"], s["inserts"], s["updates"], s["evictions"], s["occupancy"]) == (3, 2, 1, 0, 2)
    # duplicates inside one batch: the last occurrence wins, stored once
    vals_in = np.stack([np.full(VSHAPE, v, np.float32) for v in (10.0, 20.0, 30.0)])
    store = write(empty, [(4, 4), (5, 5), (4, 4)], values=vals_in)
    vals, hit, _ = lookup(store, [(4, 4), (5, 5)])
    assert hit.all() and np.all(vals[0] == 30.0) and np.all(vals[1] == 20.0)
    assert store.stats_dict()["occupancy"] == 2 and store.stats_dict()["writes"] == 2


def test_eviction_oldest_write_in_the_set(empty, same_set_keys):
    k = same_set_keys
    store = empty
    for key in k[:WAYS]:  # fill set 0, one write batch each (stamps 1..WAYS)
        store = write(store, [key])
    assert store.stats_dict()["evictions"] == 0
    store = write(store, [k[0]])  # rewrite the oldest: its stamp is refreshed, k[1] is now the oldest
    store = write(store, [k[WAYS]])  # new key -> evicts k[1]
    _, hit, _ = lookup(store, k[:WAYS + 1])
    assert hit.tolist() == [True, False] + [True] * (WAYS - 1)
    s = store.stats_dict()
    assert (s["evictions"], s["updates"], s["occupancy"]) == (1, 1, WAYS)


def test_batch_overflow_keeps_latest_and_protects_updated_ways(empty, same_set_keys):
    k = same_set_keys
    # WAYS + 2 new keys into one set in one batch: the last WAYS are stored, the first 2 dropped (counted)
    store = write(empty, k[:WAYS + 2])
    _, hit, _ = lookup(store, k[:WAYS + 2])
    assert hit.tolist() == [False, False] + [True] * WAYS
    s = store.stats_dict()
    assert (s["dropped"], s["inserts"], s["evictions"]) == (2, WAYS, 0)
    # a batch that updates k[2] (the oldest) and inserts a new key: the updated way is not the victim
    store = write(empty, k[:WAYS])
    store = write(store, [k[WAYS], k[0]])  # all WAYS entries share one stamp; k[0] updated, k[WAYS] new
    _, hit, _ = lookup(store, k[:WAYS + 1])
    assert hit[0] and hit[WAYS] and hit.sum() == WAYS  # exactly one of k[1..WAYS-1] was evicted


def test_direct_mapped_store_overwrites():
    store = CacheStore.create(4, (1,), ways=1, key_size=2)
    assert store.ways == 1 and store.num_sets == 4
    cand = np.stack([np.zeros(200), np.arange(200)], axis=1).astype(np.int32)
    sets = np.asarray(hash_keys(cand, 4))
    a, b = cand[sets == 1][:2]
    store = jax.jit(lambda s, k, v: s.write(k, v))(store, jnp.asarray(a[None]), jnp.ones((1, 1)))
    store = jax.jit(lambda s, k, v: s.write(k, v))(store, jnp.asarray(b[None]), 2 * jnp.ones((1, 1)))
    vals, hit = store.read(jnp.asarray(np.stack([a, b])))
    assert np.asarray(hit).tolist() == [False, True] and float(vals[1, 0]) == 2.0
    assert store.stats_dict()["evictions"] == 1


def test_jit_with_donation_and_caller_stamps(empty):
    step = jax.jit(lambda s, k, v, t: s.write(k, v, stamp=t), donate_argnums=0)
    store = jax.tree.map(jnp.copy, empty)
    keys = jnp.array([[1, 1], [2, 2]], jnp.int32)
    store = step(store, keys, jnp.ones((2,) + VSHAPE), jnp.array([100, 50], jnp.int32))
    s, w, found = store._find(keys)
    assert bool(found.all())
    assert store.stamp[s, w].tolist() == [100, 50] and int(store.clock) == 1


def test_save_restore_roundtrip(empty, tmp_path):
    store = write(empty, [(1, 2), (3, 4), (5, 6)])
    _, _, store = lookup(store, [(1, 2), (9, 9)])
    store.save(tmp_path / "cache")
    like = CacheStore.create(SETS * WAYS, VSHAPE, ways=WAYS, key_size=2)
    back = CacheStore.restore(tmp_path / "cache", like)
    for a, b in zip(jax.tree.leaves(store), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back.stats_dict() == store.stats_dict()
    vals, hit, _ = lookup(back, [(3, 4)])
    assert hit[0] and np.all(vals == value_of((3, 4)))
    with pytest.raises(FileNotFoundError):
        CacheStore.restore(tmp_path / "nothing_here", like)


def test_store_in_model_state_is_checkpointed_with_the_train_state(empty, tmp_path):
    """The MARM task keeps the store in TrainState.model_state: the engine's orbax Checkpointer saves and
    restores it with the parameters."""
    store = write(empty, [(1, 2), (3, 4)])
    params = {"w": jnp.ones((3,))}
    tx = optax.sgd(0.1)
    state = TrainState.create(params, tx, jax.random.PRNGKey(0), {"marm_cache": store})
    ck = Checkpointer(tmp_path / "run", async_save=False)
    ck.save(1, state, {}, {"epoch": 0}, force=True)
    ck.wait()
    fresh = TrainState.create(params, tx, jax.random.PRNGKey(0), {"marm_cache": empty})
    back, _, _ = ck.restore(fresh, 1)
    ck.close()
    assert isinstance(back.model_state["marm_cache"], CacheStore)
    vals, hit, _ = lookup(back.model_state["marm_cache"], [(1, 2), (3, 4), (5, 5)])
    assert hit.tolist() == [True, True, False] and np.all(vals[1] == value_of((3, 4)))
    assert back.model_state["marm_cache"].stats_dict() == store.stats_dict()
