"""CDSRNP: episode data (single-domain rows, sampler), NP mechanisms (set encoder invariances, KL, posterior ==
prior on an empty query set), inference that cannot read query targets, parity with the C2DSR port when the NP
branch is off, engine train steps and evaluation views, configs.

Spec: ../shared/papers/cdsrnp.md. Tiny synthetic data (NX = 12, NY = 15, T = 8, d = 16, one block).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_script

from jaxrec.data import c2dsr_transforms as ct
from jaxrec.data import cdsrnp_transforms as nt
from jaxrec.data.catalog import DatasetInfo
from jaxrec.kernels import losses
from jaxrec.kernels.metrics import MetricAccumulator
from jaxrec.models import c2dsr as c2dsr_lib
from jaxrec.models import cdsrnp as np_lib

pytestmark = pytest.mark.usefixtures("fast_compile")

NX, NY, T, D = 12, 15, 8, 16
PAD = NX + NY
NQ, NS, E = 8, 4, 2  # 2 episodes of 8 queries and 4 support users per step


def make_record(uid, seq):
    g = np.asarray(seq, np.int64) + 1
    return {"user_id": np.int64(uid), "items": g[:-1], "domains": (g[:-1] > NX).astype(np.int32),
            "timestamps": np.arange(len(g) - 1, dtype=np.int64), "target": np.int64(g[-1]),
            "target_domain": np.int32(g[-1] > NX), "overlap": np.bool_(((g <= NX).any() and (g > NX).any()))}


def synthetic_records(n=48, seed=0, kinds=("mixed", "x", "y")):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        kind = kinds[u % len(kinds)]
        length = int(rng.integers(4, T + 1))
        if kind == "mixed":
            dom = np.arange(length) % 2 == 0
            rng.shuffle(dom)
            items = np.where(dom, rng.integers(0, NX, length), rng.integers(NX, NX + NY, length))
        elif kind == "x":
            items = rng.integers(0, NX, length)
        else:
            items = rng.integers(NX, NX + NY, length)
        out.append(make_record(u, items))
    return out


def eval_records(n=16, seed=5):
    recs = synthetic_records(n, seed, kinds=("mixed",))
    for r in recs:
        r["user_id"] = np.int64(int(r["user_id"]) + 1000)
    return recs


def synthetic_info():
    return DatasetInfo(name="synthetic", kind="sequence", licence="", num_users=2000, num_items=NX + NY,
                       domain_names=("x", "y"), domain_item_ranges={"x": (1, NX), "y": (NX + 1, NX + NY)},
                       split_sizes={}, unavailable_splits={}, drops={}, data_dir="", metadata={})


def make_cfg(model_name="cdsrnp", task_name="cdsrnp", **model_kw):
    model = dict(name=model_name, embed_dim=D, num_blocks=1, num_heads=1, max_len=T, dropout_rate=0.2)
    if model_name == "cdsrnp":
        model.update(latent_dim=8, set_hidden_dim=16)
    model.update(model_kw)
    return ml_collections.ConfigDict(dict(
        model=model,
        task=dict(name=task_name, lambda_=0.7, loss_positions=5, query_size=NQ, support_size=NS),
        train=dict(seed=0, batch_size=E * NQ),
        eval=dict(num_negatives=20, negatives_seed=7, batch_size=16),
        optimizer=dict(name="adam", learning_rate=1e-2, b1=0.9, b2=0.98, eps=1e-8)))


@pytest.fixture(scope="module")
def engine():
    from jaxrec.parallel.partitioner import Partitioner
    from jaxrec.train import steps as steps_lib

    records = synthetic_records()
    task = np_lib.CDSRNPTask(make_cfg(), synthetic_info(), train_records=records)
    tx = steps_lib.build_optimizer(task.cfg.optimizer)
    part = Partitioner.from_config(None, devices=jax.devices()[:1])  # one device: faster compiles on CPU
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, task.dummy_batch(E * NQ))
    return {"task": task, "records": records, "tx": tx, "part": part, "state": state, "shardings": shardings}


def train_batch(task, records, offset=0):
    tf = task.train_transform()
    return tf.map_batch([records[(offset + i) % len(records)] for i in range(E * NQ)])


def jit_scores(task):
    return jax.jit(lambda p, b: task.scores(p, {}, b))


def jit_evaluate(task):
    return jax.jit(lambda p, b: task.evaluate(p, {}, b))


def eval_batch(task, records, split="valid"):
    b = task.eval_transform(split).map_batch(records)
    b["valid"] = np.ones((len(records),), bool)
    return b


# ------------------------------------------------------------------------------------------------ data

def test_train_table_rows_for_overlapped_and_single_domain_users():
    records = synthetic_records()
    table = nt.build_train_table(records, NX, NY, T)
    a = table.arrays
    for i, r in enumerate(records):
        s = ct.record_sequence(r)
        assert a["overlap"][i] == (nt.is_overlapped(s, NX) and a["keep"][i])
        if not a["keep"][i]:
            continue
        assert a["last_item"][i] == s[-1]
        if not nt.is_overlapped(s, NX):
            n = len(s) - 1
            own = "x" if s[0] < NX else "y"
            other = "y" if own == "x" else "x"
            off = 0 if own == "x" else NX
            np.testing.assert_array_equal(a["seq"][i, T - n:], s[:-1])
            np.testing.assert_array_equal(a[f"{own}_tgt"][i, T - n:], s[1:] - off)
            np.testing.assert_array_equal(a[f"share_{own}_tgt"][i, T - n:], s[1:] - off)
            assert a[f"{own}_mask"][i].sum() == n and a[f"{other}_mask"][i].sum() == 0
            assert (a[f"{other}_seq"][i] == PAD).all() and not a[f"has_{other}"][i]
            assert a[f"{own}_last"][i] == T - 1
        else:
            ex = ct.train_example(s, NX, NY, T, np.random.default_rng([2040, int(r["user_id"])]))
            for k in ct.TRAIN_KEYS:
                np.testing.assert_array_equal(a[k][i], ex[k])
    assert set(table.support_rows) == set(np.nonzero(a["keep"] & a["overlap"])[0])
    assert len(table.support_rows) > 0 and (a["keep"] & ~a["overlap"]).sum() > 0


def test_episode_sampler_draws_support_only_from_overlapped_users():
    records = synthetic_records(60)
    table = nt.build_train_table(records, NX, NY, T)
    tf = nt.CDSRNPTrainTransform(table, NQ, NS, seed=3)
    overlapped_users = {int(r["user_id"]) for r in records if nt.is_overlapped(ct.record_sequence(r), NX)}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        recs = [records[i] for i in rng.permutation(len(records))[:E * NQ]]
        b = tf.map_batch(recs)
        assert b["s_seq"].shape == (E * NS, T) and b["seq"].shape == (E * NQ, T)
        s_users = b["s_user_id"].reshape(E, NS)
        q_users = b["user_id"].reshape(E, NQ)
        for e in range(E):
            assert len(set(s_users[e])) == NS  # without replacement
            assert set(s_users[e]) <= overlapped_users
            assert not set(s_users[e]) & set(q_users[e])  # exclude_query
        assert b["s_overlap"].all() and b["s_keep"].all()
        seen |= set(b["s_user_id"].tolist())
        # deterministic given the queries
        b2 = tf.map_batch(recs)
        np.testing.assert_array_equal(b["s_user_id"], b2["s_user_id"])
    assert len(seen) > NS  # support sets vary across episodes
    # queries include non-overlapped users
    assert (~b["overlap"]).any()


def test_overlap_ratio_turns_users_single_domain():
    records = synthetic_records(90, kinds=("mixed",))
    full = nt.build_train_table(records, NX, NY, T)
    part = nt.build_train_table(records, NX, NY, T, overlap_ratio=0.25, overlap_seed=1)
    n_full, n_part = len(full.support_rows), len(part.support_rows)
    assert 0 < n_part < 0.5 * n_full
    for s_full, s_part in zip(full.sequences, part.sequences):
        assert set(s_part.tolist()) <= set(s_full.tolist())


def test_eval_views_hide_the_other_domain():
    recs = eval_records(6)
    tf = nt.CDSRNPEvalTransform(NX, NY, T, num_negatives=10, seed=1, split="test")
    b = tf.map_batch(recs)
    for i, r in enumerate(recs):
        tgt_x = int(r["target"]) - 1 < NX
        nv = b["nv_seq"][i][b["nv_seq"][i] != PAD]
        assert ((nv < NX) == tgt_x).all()
        full = b["seq"][i][b["seq"][i] != PAD]
        assert set(nv.tolist()) <= set(full.tolist())
        assert b["nv_valid"][i]
    tf_o = nt.CDSRNPEvalTransform(NX, NY, T, num_negatives=0, nonoverlap_keep="other_domain")
    bo = tf_o.map_batch(recs)
    for i, r in enumerate(recs):
        nv = bo["nv_seq"][i][bo["nv_seq"][i] != PAD]
        assert ((nv < NX) != (int(r["target"]) - 1 < NX)).all()


# ------------------------------------------------------------------------------------------------ NP

def test_set_encoder_is_permutation_and_padding_invariant():
    enc = np_lib.SetEncoder(hidden_dim=16, latent_dim=4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
    m = jnp.ones((6,))
    params = enc.init(jax.random.PRNGKey(0), x, m)
    mu, lv = enc.apply(params, x, m)
    perm = rng.permutation(6)
    mu_p, lv_p = enc.apply(params, x[perm], m[perm])
    np.testing.assert_allclose(mu_p, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lv_p, lv, rtol=1e-5, atol=1e-6)
    # padding: extra rows with arbitrary content, masked out, anywhere in the set
    junk = jnp.asarray(rng.normal(size=(3, 10)) * 100, jnp.float32)
    xp = jnp.concatenate([x[:2], junk, x[2:]])
    mp = jnp.concatenate([m[:2], jnp.zeros(3), m[2:]])
    mu_pad, lv_pad = enc.apply(params, xp, mp)
    np.testing.assert_allclose(mu_pad, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lv_pad, lv, rtol=1e-5, atol=1e-6)


def test_gaussian_kl_nonnegative_zero_for_identical_and_matches_monte_carlo():
    rng = np.random.default_rng(1)
    mq, lq, mp, lp = (rng.normal(size=(50, 3)) * 0.7 for _ in range(4))
    kl = np.asarray(losses.gaussian_kl(mq, lq, mp, lp))
    assert (kl >= 0).all()
    np.testing.assert_allclose(losses.gaussian_kl(mq, lq, mq, lq), 0.0, atol=1e-6)
    # Monte-Carlo: E_q[log q(z) - log p(z)]
    mq1, lq1, mp1, lp1 = mq[0], lq[0], mp[0], lp[0]
    z = mq1 + np.exp(0.5 * lq1) * rng.standard_normal((1_000_000, 3))

    def logpdf(z, m, lv):
        return -0.5 * (np.log(2 * np.pi) + lv + (z - m) ** 2 / np.exp(lv)).sum(-1)

    mc = float(np.mean(logpdf(z, mq1, lq1) - logpdf(z, mp1, lp1)))
    assert abs(mc - kl[0]) < 1e-2, (mc, kl[0])


@pytest.mark.parametrize("scope,posterior", [("episode", "support_query"), ("user", "support_query"),
                                             ("episode", "query"), ("user", "query")])
def test_posterior_equals_prior_when_the_query_set_is_masked(scope, posterior):
    m = np_lib.EpisodeLatent(hidden_dim=16, latent_dim=4, posterior=posterior, latent_scope=scope)
    rng = np.random.default_rng(2)
    s_x = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    q_x = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
    sm, qm = jnp.ones((5,)), jnp.zeros((3,))
    params = m.init(jax.random.PRNGKey(0), s_x, sm, q_x, jnp.ones((3,)))
    mu_p, lv_p, mu_q, lv_q = m.apply(params, s_x, sm, q_x, qm)
    np.testing.assert_allclose(jnp.broadcast_to(mu_p, mu_q.shape), mu_q, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.broadcast_to(lv_p, lv_q.shape), lv_q, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses.gaussian_kl(mu_q, lv_q, mu_p, lv_p), 0.0, atol=1e-6)
    # prior method == the prior of __call__
    mu_p2, lv_p2 = m.apply(params, s_x, sm, method="prior")
    np.testing.assert_allclose(mu_p2, mu_p, rtol=1e-6, atol=1e-6)
    # a real query set moves the posterior
    mu_p3, lv_p3, mu_q3, lv_q3 = m.apply(params, s_x, sm, q_x, jnp.ones((3,)))
    assert float(jnp.abs(mu_q3 - mu_p3).max()) > 1e-4
    assert (np.asarray(losses.gaussian_kl(mu_q3, lv_q3, mu_p3, lv_p3)) > 0).all()


# ------------------------------------------------------------------------------------------------ model

def test_inference_never_reads_query_targets(engine):
    task, state = engine["task"], engine["state"]
    params = jax.device_get(state.params)
    # perturb the zero-initialised adapter outputs so that z actually changes the scores
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda x: jnp.asarray(x + rng.normal(0, 0.05, x.shape), x.dtype), params)
    b = eval_batch(task, eval_records())
    out = jit_evaluate(task)(params, b)
    scores = jit_scores(task)
    sx, sy = scores(params, b)
    b2 = dict(b)
    b2["gt"] = (b["gt"] + 1) % NX
    b2["is_y"] = ~b["is_y"]
    b2["negatives"] = (b["negatives"] + 3) % NX
    b2["history"] = np.full_like(b["history"], -1)
    b2["user_id"] = b["user_id"] + 7
    sx2, sy2 = scores(params, b2)
    np.testing.assert_array_equal(sx, sx2)
    np.testing.assert_array_equal(sy, sy2)
    # the inference signature has no target argument
    import inspect

    sig = inspect.signature(np_lib.CDSRNP.infer).parameters
    assert not {"gt", "target", "last_item", "negatives", "x_tgt", "y_tgt"} & set(sig)
    assert set(sig) == {"self", "support", "graphs", *np_lib.QUERY_INPUT_KEYS}
    # while in training the posterior does depend on the query targets (so the check above is meaningful)
    tb = train_batch(task, engine["records"])
    fn = jax.jit(lambda p, bb: task.model.apply({"params": p}, bb, task.graphs(), num_episodes=E,
                                                method="prior_posterior"))
    mu_p, _, mu_q, _ = fn(params, tb)
    tb2 = dict(tb)
    tb2["last_item"] = (tb["last_item"] + 5) % PAD
    mu_p2, _, mu_q2, _ = fn(params, tb2)
    np.testing.assert_allclose(mu_p, mu_p2, rtol=1e-6)
    assert float(jnp.abs(mu_q - mu_q2).max()) > 1e-5
    assert {"X/mrr", "Y/full/mrr", "all/ndcg@10", "nonoverlap/X/mrr", "nonoverlap/all/full/hr@10"} <= set(
        _metrics(task, out, b))


def _metrics(task, out, batch):
    acc = MetricAccumulator()
    task.accumulate(acc, jax.device_get(out), batch)
    return acc.result()


def test_np_off_reproduces_c2dsr_scores_losses_and_metrics():
    records = synthetic_records(48, kinds=("mixed",))
    c_cfg = make_cfg("c2dsr", "c2dsr")
    c_task = c2dsr_lib.C2DSRTask(c_cfg, synthetic_info(), train_records=records)
    n_task = np_lib.CDSRNPTask(make_cfg(use_np=False), synthetic_info(), train_records=records)
    import flax.linen as nn

    c_params = nn.meta.unbox(c_task.init(jax.random.PRNGKey(0), c_task.dummy_batch(E * NQ))["params"])
    rng = np.random.default_rng(4)  # random biases: the parity also covers where biases enter
    c_params = jax.tree.map(lambda x: jnp.asarray(x + rng.normal(0, 0.05, x.shape), x.dtype), c_params)
    n_params = {"base": c_params}
    for a, b in zip(jax.tree.leaves(n_task.init(jax.random.PRNGKey(0), n_task.dummy_batch(E * NQ))["params"]),
                    jax.tree.leaves(n_params)):
        assert a.shape == b.shape
    # scores and metrics on the same eval batch
    eb = eval_batch(n_task, eval_records())
    csx, csy = jit_scores(c_task)(c_params, eb)
    nsx, nsy = jit_scores(n_task)(n_params, eb)
    np.testing.assert_allclose(nsx, csx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nsy, csy, rtol=1e-5, atol=1e-5)
    cm = _c2dsr_metrics(c_task, c_params, eb)
    nm = _metrics(n_task, jit_evaluate(n_task)(n_params, eb), eb)
    for k, v in cm.items():
        np.testing.assert_allclose(nm[k], v, rtol=1e-6, err_msg=k)
    # C2DSR's own task with eval.nonoverlap_view: the same two-view metrics as CDSRNP's task (every key)
    v_cfg = make_cfg("c2dsr", "c2dsr")
    v_cfg.eval.nonoverlap_view = True
    v_task = c2dsr_lib.C2DSRTask(v_cfg, synthetic_info(), train_records=records)
    vm = _c2dsr_metrics(v_task, c_params, eval_batch(v_task, eval_records()))
    assert set(vm) == set(nm) and any(k.startswith("nonoverlap/") for k in vm)
    assert any(abs(vm["nonoverlap/" + k] - vm[k]) > 1e-6 for k in cm)  # the hidden view does change ranks
    for k, v in vm.items():
        np.testing.assert_allclose(nm[k], v, rtol=1e-6, err_msg=k)
    # training losses on the same rows (eval mode: no dropout)
    tb = train_batch(n_task, records)
    tb["keep"] = tb["keep"].copy()
    c_terms, _ = c_task.model.apply({"params": c_params}, {k: tb[k] for k in ct.TRAIN_KEYS + ("keep",)},
                                    c_task.graphs(), train=False, lambda_=0.7, loss_positions=5,
                                    method="training_losses")
    n_terms = n_task.model.apply({"params": n_params}, tb, n_task.graphs(), train=False, sample=False,
                                 method="training_losses", **n_task.train_kwargs)
    for k in ("loss_sx", "loss_sy", "loss_x", "loss_y", "loss_mi_x", "loss_mi_y", "loss"):
        np.testing.assert_allclose(n_terms[k], c_terms[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_masked_heads_equal_all_heads(engine):
    """``task.head_slots``: masked vocabulary heads (C2DSR's) give the dense formulation's losses, also with
    a capacity small enough to force the dense fallback."""
    task = engine["task"]
    params = jax.device_get(engine["state"].params)
    tb = train_batch(task, engine["records"], offset=5)
    kw = dict(task.train_kwargs)
    assert kw["head_slots"] == "masked" and kw["head_capacity"] is not None

    def run(head_slots, cap):
        return jax.jit(lambda p, b: task.model.apply({"params": p}, b, task.graphs(), train=False, sample=False,
                                                     method="training_losses",
                                                     **dict(kw, head_slots=head_slots, head_capacity=cap)))(params, tb)

    ref = run("all", None)
    for cap in (kw["head_capacity"], (8, 8)):
        got = run("masked", cap)
        for k in ("loss_sx", "loss_sy", "loss_x", "loss_y", "loss"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} {cap}")


def _c2dsr_metrics(task, params, batch):
    acc = MetricAccumulator()
    task.accumulate(acc, jax.device_get(jit_evaluate(task)(params, batch)), batch)
    return acc.result()


def test_np_on_at_init_scores_as_c2dsr(engine):
    """Zero-initialised adapters: CDSRNP's inference equals C2DSR's scores on the ``base`` parameters."""
    task = engine["task"]
    params = jax.device_get(engine["state"].params)
    eb = eval_batch(task, eval_records())
    c_task = c2dsr_lib.C2DSRTask(make_cfg("c2dsr", "c2dsr"), synthetic_info(), train_records=engine["records"])
    csx, csy = jit_scores(c_task)(params["base"], eb)
    sx, sy = jit_scores(task)(params, eb)
    np.testing.assert_allclose(sx, csx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sy, csy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", [dict(latent_scope="user", adapt="gate", set_input="both"),
                                  dict(posterior="query", adapt="add", adapt_pool="last", set_targets=False,
                                       set_input="mixed")])
def test_options_build_and_give_finite_losses(opts):
    records = synthetic_records()
    task = np_lib.CDSRNPTask(make_cfg(**opts), synthetic_info(), train_records=records)
    b = train_batch(task, records)
    import flax.linen as nn

    variables = nn.meta.unbox(task.init(jax.random.PRNGKey(0), b))  # as the engine does
    loss, (terms, _) = jax.jit(lambda p, bb, r: task.loss(p, {}, bb, r))(variables["params"], b,
                                                                         jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and float(terms["kl"]) >= 0


def test_engine_train_steps_decrease_loss_and_evaluate(engine):
    from jaxrec.train import steps as steps_lib
    from jaxrec.train.loop import evaluate

    task, part = engine["task"], engine["part"]
    step = steps_lib.make_train_step(task, engine["tx"], part, engine["shardings"])
    state = jax.tree.map(jnp.copy, engine["state"])
    batch = train_batch(task, engine["records"])
    losses_seen = []
    for _ in range(6):
        state, m = step(state, part.shard_inputs(batch))
        losses_seen.append(float(m["loss"]))
        assert np.isfinite(float(m["kl"])) and float(m["kl"]) >= 0
    assert losses_seen[-1] < losses_seen[0]
    # the adapter left its identity initialisation (z reaches the scores)
    gate = jax.device_get(state.params["adapt_x"]["film_gamma"]["kernel"])
    assert np.abs(gate).max() > 0
    eval_step = steps_lib.make_eval_step(task, part, engine["shardings"])
    res = evaluate(eval_step, state, [eval_batch(task, eval_records())], part, task)
    assert 0 < res["all/mrr"] <= 1 and 0 < res["nonoverlap/all/mrr"] <= 1


def test_config_errors():
    from jaxrec.config import ConfigError

    cfg = make_cfg()
    cfg.train.batch_size = 12
    with pytest.raises(ConfigError, match="query_size"):
        np_lib.CDSRNPTask(cfg, synthetic_info(), train_records=synthetic_records())
    cfg = make_cfg()
    cfg.task.support_size = 1000
    with pytest.raises(ConfigError, match="support_size"):
        np_lib.CDSRNPTask(cfg, synthetic_info(), train_records=synthetic_records())


@pytest.mark.parametrize("name,arg", [("cdsrnp_food_kitchen", None), ("cdsrnp_food_kitchen", "tiny"),
                                      ("cdsrnp_afk", None), ("cdsrnp_afk", "50,0.25"), ("cdsrnp_afk", "tiny")])
def test_experiment_configs(name, arg):
    mod = load_script(f"experiments/{name}.py")
    c = mod.get_config(arg)
    assert c.model.name == "cdsrnp" and c.task.name == "cdsrnp"
    assert c.train.batch_size % c.task.query_size == 0
    if arg != "tiny":
        assert c.model.embed_dim == 256 and c.model.max_len in (15, 50) and c.optimizer.b2 == 0.98


def _training_losses(engine, task, records):
    """``run(**overrides)``: the task's training losses on one fixed batch (training mode, fixed rngs) with some
    ``train_kwargs`` replaced."""
    params = jax.device_get(engine["state"].params)
    tb = train_batch(task, records, offset=3)
    rngs = {"dropout": jax.random.PRNGKey(1), "latent": jax.random.PRNGKey(2)}

    def run(**overrides):
        kw = dict(task.train_kwargs, **overrides)
        return jax.jit(lambda p, b: task.model.apply({"params": p}, b, task.graphs(), train=True, sample=True,
                                                     method="training_losses", rngs=rngs, **kw))(params, tb)

    return run


def test_row_restricted_gcn_and_hash_dropout_keep_the_losses(engine):
    """``task.gcn_rows="batch"`` (C2DSR's row-restricted GCN over the query + support rows; auto capacity and a
    tiny one that takes the full fallback) gives the whole-table losses, in training mode with hash dropout."""
    records = engine["records"]
    cfg = make_cfg(dropout_impl="hash")
    cfg.task.gcn_rows = "batch"
    task = np_lib.CDSRNPTask(cfg, synthetic_info(), train_records=records)
    assert task.gcn_capacities is not None and task.train_kwargs["gcn_capacity"] == task.gcn_capacities
    run = _training_losses(engine, task, records)
    ref = run(gcn_capacity=None)
    for cap in (task.gcn_capacities, (4, 4, 4)):
        got = run(gcn_capacity=cap)
        for k in ("loss_sx", "loss_sy", "loss_x", "loss_y", "loss"):
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} {cap}")


def test_packed_encoder_tokens_keep_the_losses(engine):
    """``task.encoder_tokens="packed"`` over the step's query + support rows: capacities cover both, and the
    losses equal the dense fallback's (capacities of 1) in training with hash dropout."""
    records = engine["records"]
    cfg = make_cfg(dropout_impl="hash")
    cfg.task.encoder_tokens = "packed"
    task = np_lib.CDSRNPTask(cfg, synthetic_info(), train_records=records)
    caps = task.token_capacities
    assert caps is not None and task.train_kwargs["token_capacity"] == caps
    rows = int(cfg.train.batch_size) + task.num_episodes * task.support_size
    assert all(0 < c <= rows * task.max_len for c in caps)
    run = _training_losses(engine, task, records)
    got, ref = run(token_capacity=caps), run(token_capacity=(1, 1, 1))
    for k in ("loss_sx", "loss_sy", "loss_x", "loss_y", "loss"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
