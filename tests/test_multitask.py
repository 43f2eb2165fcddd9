"""Multi-task MoE family (MMoE / CGC / PLE / HoME) and the multitask_ranking task: hierarchy masks, parameter
counts as documented, ablation switches, leak-free history, a real train step with decreasing loss, and the
evaluation metrics / diagnostics."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest

from jaxrec.data import multitask_transforms as mtt
from jaxrec.data.catalog import DatasetInfo
from jaxrec.models import multitask as mt
from jaxrec.parallel.mesh import make_mesh
from jaxrec.parallel.partitioner import Partitioner
from jaxrec.train import steps as steps_lib
from jaxrec.train.loop import evaluate

pytestmark = pytest.mark.usefixtures("fast_compile")  # tiny shapes: skip XLA optimisation passes

TASKS, GROUPS = mt.DEFAULT_TASKS, mt.DEFAULT_GROUPS


@pytest.fixture(scope="module", autouse=True)
def _rbg_prng():
    """The counter-based ``rbg`` PRNG compiles parameter initialisation ~3x faster than threefry on CPU (this
    module only; restored afterwards). Nothing here depends on the PRNG implementation."""
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", old)


def _names(plan, gate):
    m = plan.mask_array()
    return {plan.expert_names[e] for e in np.nonzero(m[gate])[0]}


# ------------------------------------------------------------------------------------------- structure

def test_home_hierarchy_mask_gives_each_task_exactly_its_experts():
    meta, task = mt.plan_levels("home", TASKS, GROUPS, num_shared=2, experts_per_group=2, experts_per_task=1,
                                meta_shared=4, meta_per_group=2, self_gate="both")
    # meta layer: category gates see global + own category experts; the shared gate sees all
    assert meta.gate_names == ("watch", "interact", "shared")
    assert _names(meta, 0) == {"shared0", "shared1", "shared2", "shared3", "watch0", "watch1"}
    assert _names(meta, 1) == {"shared0", "shared1", "shared2", "shared3", "interact0", "interact1"}
    assert _names(meta, 2) == set(meta.expert_names) and len(meta.expert_names) == 8
    # task layer: one flat bank of 2 + 2*2 + 7 = 13 experts; task t: global shared, own category, own task
    assert task.num_experts == 13 and task.gate_names == TASKS
    for t, (name, group) in enumerate(zip(TASKS, GROUPS)):
        assert _names(task, t) == {"shared0", "shared1", f"{group}0", f"{group}1", f"{name}0"}, name
    # routing: global experts read z^sh, category and task experts read their category's meta mixture
    assert task.input_names == ("watch", "interact", "shared")
    inputs = dict(zip(task.expert_names, task.expert_inputs))
    assert inputs["shared0"] == 2 and inputs["watch1"] == 0 and inputs["interact0"] == 1
    assert inputs["is_click0"] == 0 and inputs["is_comment0"] == 1
    assert task.gate_inputs[0] == (2, 0) and task.gate_inputs[3] == (2, 1)  # [z^sh || z^c(t)]
    # self-gates: each task over its own expert, each category over its meta experts, none for the shared gate
    assert [np.nonzero(r)[0].tolist() for r in np.asarray(task.self_gate_mask)] == [[6 + t] for t in range(7)]
    assert np.asarray(meta.self_gate_mask).sum(-1).tolist() == [2, 2, 0]


def test_baseline_masks():
    (mm,) = mt.plan_levels("mmoe", TASKS, GROUPS, num_shared=9)
    assert mm.mask_array().all() and mm.mask_array().shape == (7, 9)
    (cgc,) = mt.plan_levels("cgc", TASKS, GROUPS, num_shared=2, experts_per_task=1)
    for t, name in enumerate(TASKS):
        assert _names(cgc, t) == {"shared0", "shared1", f"{name}0"}
    l1, l2 = mt.plan_levels("ple", TASKS, GROUPS, num_shared=2, experts_per_task=1, num_levels=2)
    assert l1.gate_names == TASKS + ("shared",) and l1.mask_array()[-1].all()
    assert l2.gate_names == TASKS and (l2.mask_array() == cgc.mask_array()).all()
    assert l2.expert_inputs == (7, 7) + tuple(range(7))  # shared experts read the shared mixture
    assert l2.gate_inputs == tuple((t,) for t in range(7))


def test_parameter_counts_as_documented():
    for name, cls in (("mmoe", mt.MMoE), ("cgc", mt.CGC), ("ple", mt.PLE), ("home", mt.HoME)):
        counts = mt.parameter_counts(cls())
        assert counts == mt.DEFAULT_PARAM_COUNTS[name], (name, counts)
        assert f"{counts['total']:,}" in mt.__doc__ and f"{counts['experts']:,}" in mt.__doc__
    # matched expert budgets: the three baselines equal, HoME within 5%
    e = {k: v["experts"] for k, v in mt.DEFAULT_PARAM_COUNTS.items()}
    assert e["mmoe"] == e["cgc"] == e["ple"] and abs(e["home"] / e["mmoe"] - 1) < 0.05


def _tiny(cls=mt.HoME, **kw):
    base = dict(embed_dim=4, expert_dim=8, feature_gate_rank=2, tower_hidden=(8,))
    if cls in (mt.MMoE, mt.CGC):
        base["expert_hidden"] = (8,)
    return cls(**{**base, **kw})


def test_ablation_switches_change_the_structure():
    full = mt.parameter_counts(_tiny())
    # -mask: every gate sees its whole level; same experts and routing, gates hold more weights
    no_mask = _tiny(hierarchy_mask=False)
    for p in no_mask.plan():
        assert p.mask_array().all()
    c = mt.parameter_counts(no_mask)
    assert c["experts"] == full["experts"] and c["feature_gates"] == full["feature_gates"]
    assert c["gates"] > full["gates"]
    # -feature gate / per-group feature gates
    assert mt.parameter_counts(_tiny(feature_gate="none"))["feature_gates"] == 0
    assert all(p.feature_gate_index is None for p in _tiny(feature_gate="none").plan())
    per_group = _tiny(feature_gate="per_group")
    meta, task = per_group.plan()
    assert len(set(meta.feature_gate_index)) == 3 and len(set(task.feature_gate_index)) == 2 + 7 + 1
    assert mt.parameter_counts(per_group)["feature_gates"] < full["feature_gates"]
    assert mt.parameter_counts(_tiny(feature_gate_levels="last"))["feature_gates"] < full["feature_gates"]
    # -self gate; self-gate placement
    assert mt.parameter_counts(_tiny(self_gate="none"))["self_gates"] == 0
    meta, task = _tiny(self_gate="task").plan()
    assert meta.self_gate_mask is None and task.self_gate_mask is not None
    meta, task = _tiny(self_gate="meta").plan()
    assert meta.self_gate_mask is not None and task.self_gate_mask is None
    # -BN/Swish: no batch statistics, ReLU experts
    b = mt.dummy_batch(2, 42, 7)
    v = jax.eval_shape(_tiny(expert_norm="none", expert_act="relu").init, jax.random.PRNGKey(0), b)
    assert "batch_stats" not in v and mt.parameter_counts(_tiny(expert_norm="none"))["expert_norm"] == 0
    v = jax.eval_shape(_tiny().init, jax.random.PRNGKey(0), b)
    assert v["batch_stats"]["task"]["experts"]["norm_0"]["mean"].shape == (13, 8)  # per-expert statistics
    # gate input "cat": task gates read z^c(t) only
    assert _tiny(gate_input="cat").plan()[1].gate_inputs[0] == (0,)
    with pytest.raises(ValueError):
        _tiny(feature_gate="bogus").plan()


# ------------------------------------------------------------------------------------------- data

def make_records(rng, n=256, users=12, videos=30, t0=1651000000000):
    recs = []
    for i in range(n):
        labels = np.zeros(12, np.int64)
        labels[:8] = rng.random(8) < np.array([0.45, 0.2, 0.1, 0.1, 0.1, 0.05, 0.3, 0.15])
        recs.append({
            "impression_id": i, "user_id": int(rng.integers(users)), "video_id": int(rng.integers(videos)),
            "time_ms": t0 + int(rng.integers(0, 10**8)), "date": 20220428, "hour": int(rng.integers(24)),
            "tab": int(rng.integers(15)), "is_rand": 0, "labels": labels,
            "user_features": rng.integers(-1, np.minimum(5, np.asarray(mtt._KP_USER_MAX) + 1)).astype(np.int64),
            "video_features": np.array([7851945, 1, 20220411, 5, 0, int(rng.integers(-1, 10**6)), 720, 1280,
                                        9160428979, 9], np.int64),
            "video_tags": rng.integers(0, 68, int(rng.integers(0, 4))).astype(np.int32)})
    # the click label of video v is a function of (user, video): learnable signal
    for r in recs:
        r["labels"][0] = int((r["user_id"] + r["video_id"]) % 3 == 0)
        r["labels"][6] = int((r["user_id"] * r["video_id"]) % 4 == 0)
    return recs


def test_history_is_strictly_earlier_clicks_of_the_same_user():
    user = np.array([1, 1, 1, 2, 1, 1])
    time = np.array([10, 20, 30, 15, 30, 40])
    video = np.array([5, 6, 7, 8, 9, 10])
    click = np.array([1, 1, 0, 1, 1, 1])
    h = mtt.ClickHistory.from_columns(user, time, video, click)
    ids, mask = h.lookup(np.array([1, 1, 1, 2, 3]), np.array([30, 31, 10, 100, 50]), 3)
    # user 1 at t=30: clicks at 10, 20 (the t=30 click is at the same time: excluded), oldest first
    assert ids[0].tolist() == [0, 6, 7] and mask[0].tolist() == [False, True, True]
    assert ids[1].tolist() == [6, 7, 10]  # t=31: 10, 20, 30 (the non-click at 30 is not indexed)
    assert not mask[2].any()  # nothing before the user's first click
    assert ids[3].tolist() == [0, 0, 9] and not mask[4].any()


def test_transform_shapes_ranges_and_no_label_leak():
    rng = np.random.default_rng(0)
    recs = make_records(rng, 64)
    cols = mtt.click_columns(recs, 0)
    hist = mtt.ClickHistory.from_columns(**cols)
    tr = mtt.MultiTaskTransform(mtt.KUAIRAND_PURE_SCHEMA, (0, 6, 1, 2, 3, 4, 7), hist, 5)
    b = tr.map_batch(recs)
    assert b["sparse"].shape == (64, 42) and b["labels"].shape == (64, 7) and b["hist_ids"].shape == (64, 5)
    assert (b["sparse"] >= 0).all() and (b["sparse"] < np.array(mtt.KUAIRAND_PURE_SCHEMA.field_vocab)).all()
    for i, r in enumerate(recs):  # every history entry is an earlier click of the same user
        earlier = {rr["video_id"] + 1 for rr in recs if rr["user_id"] == r["user_id"]
                   and rr["time_ms"] < r["time_ms"] and rr["labels"][0] == 1}
        assert set(b["hist_ids"][i][b["hist_mask"][i]].tolist()) <= earlier
    # flipping this impression's own labels changes nothing but the labels
    r2 = [dict(r, labels=1 - r["labels"]) if i == 0 else r for i, r in enumerate(recs)]
    b2 = tr.map_batch(r2)
    for k in b:
        if k != "labels":
            np.testing.assert_array_equal(b[k], b2[k])


# ------------------------------------------------------------------------------------------- training

def fake_info():
    return DatasetInfo(name="fake_impressions", kind="impressions", licence="", num_users=12, num_items=30,
                       domain_names=(), domain_item_ranges=None, split_sizes={}, unavailable_splits={}, drops={},
                       data_dir="", metadata={})


def small_cfg(model="home"):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(name=model, embed_dim=4, expert_dim=8, tower_hidden=(8,)))
    if model == "home":
        c.model.feature_gate_rank = 2
    if model in ("mmoe", "cgc"):
        c.model.expert_hidden = (8,)
    c.task = ml_collections.ConfigDict(dict(name="multitask_ranking", history_len=5))
    return c


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(1)
    recs = make_records(rng, 128)
    task = mt.MultiTaskRankingTask(small_cfg(), fake_info())
    task._history = mtt.ClickHistory.from_columns(**mtt.click_columns(recs, 0))
    task._split_source = lambda split: recs  # every split = these records (no prepared dataset)
    batch = task.train_transform().map_batch(recs)
    part = Partitioner(make_mesh((("data", 1),), devices=jax.devices()[:1]))
    tx = optax.adam(1e-2)
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, batch)
    stats0 = jax.tree.map(np.asarray, state.model_state)
    step = steps_lib.make_train_step(task, tx, part, shardings)
    losses = []
    for _ in range(25):
        state, m = step(state, part.shard_inputs(batch))
        losses.append(float(m["loss"]))
    return task, part, state, shardings, recs, losses, stats0, m


def test_train_step_loss_decreases_and_batch_stats_update(trained):
    task, part, state, _, _, losses, stats0, m = trained
    assert np.isfinite(losses).all() and int(state.step) == 25
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses[::4]
    assert set(m) >= {f"loss/{t}" for t in TASKS}
    mean0 = stats0["batch_stats"]["task"]["experts"]["norm_0"]["mean"]
    mean1 = np.asarray(state.model_state["batch_stats"]["task"]["experts"]["norm_0"]["mean"])
    assert mean0.shape == mean1.shape == (13, 8) and not np.allclose(mean0, mean1)


def _baseline_task(model, n=32):
    recs = make_records(np.random.default_rng(2), n)
    task = mt.MultiTaskRankingTask(small_cfg(model), fake_info())
    task._history = mtt.ClickHistory.empty()
    return task, task.train_transform().map_batch(recs)


def test_ple_takes_a_real_train_step():
    task, batch = _baseline_task("ple")
    part = Partitioner(make_mesh((("data", 1),), devices=jax.devices()[:1]))
    tx = optax.adam(1e-2)
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, batch)
    state, m = steps_lib.make_train_step(task, tx, part, shardings)(state, part.shard_inputs(batch))
    assert np.isfinite(float(m["loss"])) and int(state.step) == 1
    assert state.model_state == {}  # ReLU experts without BatchNorm


@pytest.mark.parametrize("model", ["mmoe", "cgc"])
def test_mmoe_cgc_loss_and_gradients_have_the_right_structure(model):
    """Abstract (traced, not compiled) loss and gradient: every parameter receives a gradient of its shape."""
    task, batch = _baseline_task(model)
    variables = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
    params = nn.meta.unbox(variables["params"])
    (loss, (metrics, state)), grads = jax.eval_shape(
        jax.value_and_grad(lambda p: task.loss(p, {}, batch, jax.random.PRNGKey(0)), has_aux=True), params)
    assert loss.shape == () and state == {} and set(metrics) == {f"loss/{t}" for t in TASKS}
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(g.shape == p.shape for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)))
    logits = jax.eval_shape(lambda p: task.model.apply({"params": p}, batch), params)
    assert logits.shape == (32, 7)


def np_auc(s, y):
    pos, neg = s[y > 0.5], s[y <= 0.5]
    if not len(pos) or not len(neg):
        return np.nan
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))


def np_gauc(s, y, u):
    """Impression-weighted mean of per-user AUC over users with both label classes."""
    num = den = 0.0
    for user in np.unique(u):
        m = u == user
        a = np_auc(s[m], y[m])
        if not np.isnan(a):
            num, den = num + m.sum() * a, den + m.sum()
    return num / den


def test_evaluate_metrics_and_diagnostics(trained):
    task, part, state, shardings, recs, _, _, _ = trained
    tr = task.eval_transform("valid")
    batches = []
    for lo in range(0, 128, 48):  # the last batch is padded, as make_eval_batches does
        chunk = recs[lo:lo + 48]
        valid = np.arange(48) < len(chunk)
        b = tr.map_batch(chunk + [recs[0]] * (48 - len(chunk)))
        for v in b.values():
            v[~valid] = 0
        b["valid"] = valid
        batches.append(b)
    eval_step = steps_lib.make_eval_step(task, part, shardings)
    res = evaluate(eval_step, state, batches, part, task)
    # AUC / GAUC per task over the whole split, against the kernels on the concatenated outputs
    outs = [jax.device_get(eval_step(state, part.shard_inputs(b))) for b in batches]
    valid = np.concatenate([b["valid"] for b in batches])
    logits = np.concatenate([o["logits"] for o in outs])[valid]
    labels = np.concatenate([o["labels"] for o in outs])[valid]
    users = np.concatenate([o["user_id"] for o in outs])[valid]
    assert labels.shape == (128, 7)
    for i, t in enumerate(TASKS):
        np.testing.assert_allclose(res[f"auc/{t}"], np_auc(logits[:, i], labels[:, i]), rtol=1e-5)
        np.testing.assert_allclose(res[f"gauc/{t}"], np_gauc(logits[:, i], labels[:, i], users), rtol=1e-5)
    assert res["auc/is_click"] > 0.75  # learned the synthetic click rule
    np.testing.assert_allclose(res["auc/mean"], np.mean([res[f"auc/{t}"] for t in TASKS]), rtol=1e-6)
    # diagnostics: usage = mean gate weight over real rows; a gate never uses a masked expert
    gates = np.concatenate([o["task/gate"] for o in outs])[valid]  # [N, T, 13]
    tplan = task.plans[1]
    assert (gates[:, ~tplan.mask_array()] == 0).all()
    np.testing.assert_allclose(res["diag/task/usage/03_is_follow/05_interact1"], gates[:, 3, 5].mean(), rtol=1e-5)
    assert "diag/task/usage/03_is_follow/02_watch0" not in res  # masked pair: not reported
    np.testing.assert_allclose(res["diag/task/own_share/04_is_comment"], gates[:, 4, 10].mean(), rtol=1e-5)
    for e in ("00_shared0", "02_watch0", "04_interact0"):
        occ = [v for k, v in res.items() if k.startswith("diag/task/occupancy/") and k.endswith("/" + e)]
        np.testing.assert_allclose(sum(occ), 1.0, rtol=1e-6)
    assert len([k for k in res if k.startswith("diag/task/occupancy/") and k.endswith("/02_watch0")]) == 2
    for level, n in (("meta", 8), ("task", 13)):
        for stat in ("zero_frac", "near_zero_frac", "scale"):
            assert len([k for k in res if k.startswith(f"diag/{level}/{stat}/")]) == n
    assert all(0 <= res[k] <= 1 for k in res if "/gate_entropy/" in k or "/usage_entropy/" in k)
    assert 0 < res["diag/task/self_gate/00_is_click"] < 1  # one own expert: a sigmoid self-gate


# ------------------------------------------------------------------------------------------- bad input

def test_unseen_ids_are_counted_and_oov_maps_them_to_row_zero(caplog):
    rng = np.random.default_rng(5)
    train = [r for r in make_records(rng, 96) if r["user_id"] != 11 and r["video_id"] != 29]
    valid = make_records(np.random.default_rng(6), 40)
    valid[0].update(user_id=11, video_id=29)  # both unseen in train
    seen_u, seen_v = {r["user_id"] for r in train}, {r["video_id"] for r in train}
    n_uu = sum(r["user_id"] not in seen_u for r in valid)
    n_uv = sum(r["video_id"] not in seen_v for r in valid)
    assert n_uu >= 1 and n_uv >= 1
    outs = {}
    for policy in ("keep", "oov"):
        cfg = small_cfg()
        cfg.task.unseen = policy
        task = mt.MultiTaskRankingTask(cfg, fake_info())
        task._history = mtt.ClickHistory.from_columns(**mtt.click_columns(train + valid, 0))
        task._split_source = lambda split: train if split == "train" else valid
        with caplog.at_level("WARNING"):
            tr = task.eval_transform("valid")
        assert task.unseen_counts("valid") == {"impressions": 40, "unseen_user": n_uu, "unseen_video": n_uv}
        assert f"{n_uu} of 40 impressions have a user unseen in train" in caplog.text
        outs[policy] = (task, tr.map_batch(valid))
    b_keep, b_oov = outs["keep"][1], outs["oov"][1]
    assert "user_key" not in b_keep and "video_key" not in b_keep
    users = np.array([r["user_id"] for r in valid])
    videos = np.array([r["video_id"] for r in valid])
    unseen_u = ~np.isin(users, list(seen_u))
    np.testing.assert_array_equal(b_oov["user_key"], np.where(unseen_u, 0, users + 1))
    np.testing.assert_array_equal(b_oov["video_key"], np.where(np.isin(videos, list(seen_v)), videos + 1, 0))
    # history entries of videos unseen in train are masked (and zeroed) under "oov", kept otherwise
    hist_seen = np.isin(b_keep["hist_ids"] - 1, list(seen_v))
    assert (b_keep["hist_mask"] & ~hist_seen).any()
    np.testing.assert_array_equal(b_oov["hist_mask"], b_keep["hist_mask"] & hist_seen)
    np.testing.assert_array_equal(b_oov["hist_ids"], np.where(b_oov["hist_mask"], b_keep["hist_ids"], 0))
    np.testing.assert_array_equal(b_oov["user_id"], users)  # the raw id still groups GAUC
    # the model embeds row 0 for an unseen id: same output as an explicit user_key = 0
    task = outs["oov"][0]
    variables = task.init(jax.random.PRNGKey(0), b_oov)
    run = lambda b: np.asarray(task.model.apply(variables, b, train=False))  # noqa: E731
    # independent formulation: the "keep" path embeds id + 1, so raw id -1 selects row 0
    seen_vid = np.isin(videos, list(seen_v))
    b_zero = dict(b_keep, user_id=np.where(unseen_u, -1, users).astype(np.int32),
                  video_id=np.where(seen_vid, videos, -1).astype(np.int32),
                  hist_ids=b_oov["hist_ids"], hist_mask=b_oov["hist_mask"])
    np.testing.assert_allclose(run(b_oov), run(b_zero), rtol=1e-6)
    assert not np.allclose(run(b_oov)[unseen_u], run(b_keep)[unseen_u])
    with pytest.raises(Exception, match="task.unseen"):
        cfg = small_cfg()
        cfg.task.unseen = "drop"
        mt.MultiTaskRankingTask(cfg, fake_info())


def test_categorical_value_outside_the_schema_is_an_error():
    from jaxrec.data.errors import DataError

    recs = make_records(np.random.default_rng(7), 4)
    recs[2]["tab"] = 40  # the schema's tab vocabulary holds 0..14 (+ missing)
    tr = mtt.MultiTaskTransform(mtt.KUAIRAND_PURE_SCHEMA, (0,), mtt.ClickHistory.empty(), 3)
    with pytest.raises(DataError, match="outside the schema's vocabulary") as e:
        tr.map_batch(recs)
    assert e.value.field == "tab" and "batch row 2" in str(e.value)
