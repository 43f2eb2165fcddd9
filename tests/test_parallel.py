"""parallel/ + nn/embeddings: meshes and rules from config, row-sharded embedding tables (equal lookups, memory
falling as 1/N), model- and expert-parallel steps equal to one device, checkpoints restored across topologies.

All on the 8 fake CPU devices of conftest.py; nothing large is allocated (the 10M-row table is only lowered).
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from jaxrec.models.sasrec import SeqRecTask
from jaxrec.nn.embeddings import ShardedEmbed, lookup_memory_analysis, padded_rows, sharded_lookup
from jaxrec.nn.experts import MoELevel
from jaxrec.parallel import mesh as mesh_lib
from jaxrec.parallel.mesh import make_mesh, mesh_from_config, merge_rules, rules_from_config, rules_for_mesh
from jaxrec.parallel.partitioner import Partitioner
from jaxrec.train import steps as steps_lib
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.state import TrainState, split_variables

from test_sasrec import fake_info, random_batch, small_cfg

EMB_RULES = (("vocab", "model"),)
NUM_ITEMS = 47  # SASRec's table has V + 1 = 48 rows: splits over model = 2, 4, 8 (batches use ids <= 40)


@pytest.fixture(autouse=True, scope="module")
def _fast_xla():
    """Tiny shapes: XLA's optimisation passes cost more than they save (restored afterwards)."""
    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", prev)


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


# ------------------------------------------------------------------------------------------------ mesh / rules
def test_mesh_and_rules_from_config():
    cfg = ml_collections.ConfigDict(dict(axes=(("data", -1), ("model", 2)), rules=EMB_RULES))
    part = Partitioner.from_config(cfg)
    assert dict(part.mesh.shape) == {"data": 4, "model": 2}
    assert part.mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    # the model axis is the fast one: each row of the device array is one data shard
    assert part.mesh.devices[0].tolist() == jax.devices()[:2]
    assert part.num_data_shards == 4 and part.data_sharding.spec == P("data")
    # config rules first, defaults for the rest
    rules = rules_from_config(cfg)
    assert rules[0] == ("vocab", "model") and ("batch", "data") in rules and ("vocab", None) not in rules
    assert part.sharding(("vocab", "embed")).spec == P("model", None)
    assert part.sharding(("expert", "embed", "mlp")).spec == P(None, None, None)
    # the same rules on a mesh without a model axis: replicated, no error
    dp = Partitioner(make_mesh((("data", -1),)), EMB_RULES)
    assert dp.sharding(("vocab", "embed")).spec == P(None, None)
    assert rules_for_mesh((("expert", ("expert", "model")),), part.mesh) == (("expert", "model"),)
    # defaults and errors
    assert dict(mesh_from_config(None).shape) == {"data": 8}
    assert merge_rules() == mesh_lib.DEFAULT_RULES
    for bad in [(("data", 0),), (("data", 3),), (("data", -1), ("data", 2)), (("data",),)]:
        with pytest.raises(ValueError, match="mesh"):
            make_mesh(bad)
    with pytest.raises(ValueError, match="mesh.rules"):
        merge_rules((("vocab", 3),))
    with pytest.raises(ValueError, match="not divisible by the 4 data-parallel shards"):
        part.check_batch_size(6)
    assert "data=4 x model=2 over 8 cpu devices in 1 process(es)" in repr(part)


def test_uneven_dimension_is_replicated_with_a_warning(caplog):
    part = Partitioner(make_mesh((("data", 4), ("model", 2))), EMB_RULES)
    ids = jnp.zeros((4, 3), jnp.int32)
    for rows, spec in [(41, P(None, None)), (42, P("model", None))]:
        abstract = jax.eval_shape(ShardedEmbed(rows, 8).init, jax.random.PRNGKey(0), ids)
        with caplog.at_level("WARNING"):
            sh = part.shardings_of(abstract)["params"]["embedding"]
        assert sh.spec == spec
    assert "(41, 8): dimension 0 (41) does not split over mesh axes ('model',)" in caplog.text


# ------------------------------------------------------------------------------------------------ embeddings
@pytest.mark.parametrize("lookup", ["auto", "shard_map"])
def test_row_sharded_embedding_equals_unsharded(lookup):
    V, D = 60, 8
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(8, 5)).astype(np.int32)
    ids[0, :2] = [0, V - 1]
    w = rng.normal(size=(8, 5, D)).astype(np.float32)
    q = rng.normal(size=(8, D)).astype(np.float32)
    model = ShardedEmbed(V, D, lookup=lookup, pad_to_multiple_of=8)
    part = Partitioner(make_mesh((("data", 2), ("model", 4))), EMB_RULES)
    variables, shardings = part.init(lambda r: model.init(r, jnp.asarray(ids)), jax.random.PRNGKey(0))
    table = variables["params"]["embedding"]
    # born row-sharded: each device holds 64 / 4 rows
    assert table.shape == (padded_rows(V, 8), D) == (64, D)
    assert table.sharding.spec == P("model", None)
    assert {s.data.shape for s in table.addressable_shards} == {(16, D)}

    def fwd_grad(v, ids, w, q):
        out = model.apply(v, ids)
        grad = jax.grad(lambda v_: jnp.sum(model.apply(v_, ids) * w))(v)
        return out, grad, model.apply(v, q, method="attend")

    step = part.partition(fwd_grad, (shardings, part.data_sharding, part.data_sharding, part.data_sharding),
                          (part.data_sharding, shardings, part.data_sharding))
    out, grad, scores = step(variables, *part.shard_inputs((ids, w, q)))
    T = np.asarray(table)
    np.testing.assert_array_equal(np.asarray(out), T[ids])  # a gather: exactly equal
    expected = np.zeros_like(T)
    np.add.at(expected, ids, w)
    np.testing.assert_allclose(np.asarray(grad["params"]["embedding"]), expected, rtol=1e-6, atol=1e-6)
    assert grad["params"]["embedding"].sharding.spec == P("model", None)
    np.testing.assert_allclose(np.asarray(scores), q @ T[:V].T, rtol=1e-5, atol=1e-5)
    # the gather is partitioned, the table never assembled on one device: no all-gather of table rows in the
    # compiled step (the only all-gather allowed is the small [B/2, V] attend output)
    hlo = step.lower(variables, *part.shard_inputs((ids, w, q))).compile().as_text()
    gathered = re.findall(r"= f32\[([\d,]+)\]\S* all-gather\(", hlo)
    assert all(not shape.endswith(f",{D}") for shape in gathered), gathered


def test_sharded_lookup_function_checks_divisibility():
    mesh = make_mesh((("model", 4),), devices=jax.devices()[:4])
    table = jnp.arange(12 * 3, dtype=jnp.float32).reshape(12, 3)
    ids = jnp.asarray([[11, 0, 5], [3, 3, 7]])
    out = jax.jit(lambda t, i: sharded_lookup(t, i, mesh=mesh))(table, ids)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(table)[np.asarray(ids)])
    with pytest.raises(ValueError, match="pad the table to 12 rows"):
        sharded_lookup(table[:10], ids, mesh=mesh)


def test_embedding_memory_per_device_falls_as_one_over_n():
    """A 10M x 64 float32 table (2.56 GB) is only lowered and compiled; memory_analysis() per device."""
    rows, dim = 10_000_000, 64
    full = rows * dim * 4
    for lookup in ("shard_map", "auto"):
        totals = {}
        for n in (1, 2, 4, 8):
            mesh = make_mesh((("model", n),), devices=jax.devices()[:n])
            m = lookup_memory_analysis(rows, dim, mesh, lookup=lookup, train=True)
            # the table argument is 1/N of the table (+ 4 kB of ids); the updated table is donated (aliased)
            assert abs(m["argument"] - full / n) <= 16 * 1024, (lookup, n, m)
            assert m["alias"] == full // n
            totals[n] = m["total"]
        # lookup + dense gradient + SGD update: about 2 x table / N per device
        for n in (2, 4, 8):
            assert totals[n] == pytest.approx(totals[1] / n, rel=0.01), (lookup, totals)
        assert totals[8] < 2.05 * full / 8


# ------------------------------------------------------------------------------------------------ SASRec
def _sasrec(mesh, rules, batch, steps=2):
    cfg = small_cfg()
    cfg.model.num_blocks = 1
    task = SeqRecTask(cfg, fake_info(num_items=NUM_ITEMS))
    part = Partitioner(mesh, rules)
    tx = optax.sgd(0.5)  # see test_engine: Adam would amplify last-bit differences of near-zero gradients
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, batch)
    step = steps_lib.make_train_step(task, tx, part, shardings)
    losses = []
    for _ in range(steps):
        state, m = step(state, part.shard_inputs(batch))
        losses.append(float(m["loss"]))
    return state, losses, (task, tx, part)


@pytest.fixture(scope="module")
def sasrec_runs():
    batch = random_batch(np.random.default_rng(0), B=8)
    one = _sasrec(make_mesh((("data", 1),), devices=jax.devices()[:1]), EMB_RULES, batch)
    eight = _sasrec(make_mesh((("data", 4), ("model", 2))), EMB_RULES, batch)
    return batch, one, eight


def test_sasrec_model_parallel_embeddings_equal_single_device(sasrec_runs):
    _, (s1, l1, _), (s8, l8, _) = sasrec_runs
    table = s8.params["item_embed"]["embedding"]
    assert table.sharding.spec == P("model", None) and len(table.sharding.device_set) == 8
    assert {s.data.shape for s in table.addressable_shards} == {(24, 16)}
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    _close(jax.device_get(s1.params), jax.device_get(s8.params), rtol=1e-4)


def test_checkpoint_restores_on_other_topologies(sasrec_runs, tmp_path):
    """Saved from the 8-device (data 4 x model 2) mesh; restored onto 4 devices (data 2 x model 2) and 1 device
    through abstract sharded targets (nothing initialised on the target meshes)."""
    batch, _, (s8, _, (task, tx, _)) = sasrec_runs
    saved = jax.device_get(s8)
    ck = Checkpointer(tmp_path, async_save=False)
    ck.save(2, s8, {"next_index": 16}, {"epoch": 0.5})
    ck.wait()

    def init_fn(rng):
        init_rng, state_rng = jax.random.split(rng)
        params, model_state = split_variables(task.init(init_rng, jax.tree.map(jnp.asarray, batch)))
        return TrainState.create(params, tx, state_rng, model_state)

    for axes, devices in [((("data", 2), ("model", 2)), jax.devices()[:4]), ((("data", 1),), jax.devices()[:1])]:
        part = Partitioner(make_mesh(axes, devices=devices), EMB_RULES)
        target, shardings = part.abstract(init_fn, jax.random.PRNGKey(0))
        assert isinstance(target.params["item_embed"]["embedding"], jax.ShapeDtypeStruct)
        restored, data_state, meta = ck.restore(target)
        assert data_state == {"next_index": 16} and meta["epoch"] == 0.5
        jax.tree.map(lambda r, s: np.testing.assert_array_equal(np.asarray(r), np.asarray(s)), restored, saved)
        jax.tree.map(lambda r, sh: r.sharding.is_equivalent_to(sh, r.ndim) or pytest.fail(f"{r.sharding} {sh}"),
                     restored, shardings)
        assert len(restored.params["item_embed"]["embedding"].sharding.device_set) == len(devices)
    ck.close()


# ------------------------------------------------------------------------------------------------ experts
def _moe_step(mesh, rules, x, w):
    level = MoELevel(num_experts=4, expert_inputs=(0,) * 4, gate_inputs=((0,), (0,)),
                     gate_mask=((True,) * 4, (True, True, False, True)), expert_dim=8, expert_hidden=(16,),
                     expert_norm="batch")
    part = Partitioner(mesh, rules)
    variables, shardings = part.init(lambda r: level.init(r, jnp.asarray(x)), jax.random.PRNGKey(0))

    def step(v, x, w):
        def loss(params):
            (mix, aux), new = level.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(jnp.sum(mix * w, -1)), (mix, new)

        (l, (mix, new)), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
        params = jax.tree.map(lambda p, g_: p - 0.1 * g_, v["params"], g)
        return {**v, "params": params, **new}, mix, l

    run = part.partition(step, (shardings, part.data_sharding, part.data_sharding),
                         (shardings, part.data_sharding, part.replicated))
    new, mix, loss = run(variables, *part.shard_inputs((x, w)))
    return new, mix, loss


def test_expert_parallel_moe_equals_single_device():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    w = rng.normal(size=(8, 2, 8)).astype(np.float32)
    v1, mix1, l1 = _moe_step(make_mesh((("data", 1),), devices=jax.devices()[:1]), (), x, w)
    v8, mix8, l8 = _moe_step(make_mesh((("data", 2), ("expert", 4))), (("expert", "expert"),), x, w)
    kernel = v8["params"]["experts"]["dense_0"]["kernel"]  # [E=4, Din, H]
    assert kernel.sharding.spec == P("expert", None, None)
    assert {s.data.shape for s in kernel.addressable_shards} == {(1, 6, 16)}  # one expert per device
    # (BatchNorm statistics [E, De] carry no logical axes in flax, so they stay replicated: small)
    np.testing.assert_allclose(np.asarray(mix1), np.asarray(mix8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(l1), float(l8), rtol=1e-5, atol=1e-6)
    _close(jax.device_get(v1), jax.device_get(v8), rtol=1e-4, atol=1e-6)
