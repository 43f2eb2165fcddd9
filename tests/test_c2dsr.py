"""C2DSR: official-code preprocessing, graphs, GCN, encoder, every loss term and the evaluation, each checked
against an independent NumPy reference with copied weights; PAD rows; train steps; vectorised ranking; a few
steps on the real llmcdsr/food_kitchen (skipped without ../shared/data).

Spec: ../shared/papers/c2dsr.md. Tiny synthetic data (NX = 12, NY = 15, T = 8, d = 16, one block per encoder).
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxrec.data import c2dsr_transforms as ct
from jaxrec.data.catalog import DatasetInfo
from jaxrec.data.errors import DataError
from jaxrec.kernels import losses
from jaxrec.kernels.metrics import MetricAccumulator
from jaxrec.models import c2dsr as c2dsr_lib

NX, NY, T, D = 12, 15, 8, 16
BLOCKS = 1  # the official 2 run the same code path (TransformerStack); 1 halves the compile time on CPU
PAD = NX + NY
V = NX + NY + 1


# ------------------------------------------------------------------------------------------------ data

def make_record(uid, seq_c2dsr):
    """A catalogue sequence record from a C2DSR-id line (catalogue ids = C2DSR ids + 1)."""
    g = np.asarray(seq_c2dsr, np.int64) + 1
    return {"user_id": np.int64(uid), "items": g[:-1], "domains": (g[:-1] > NX).astype(np.int32),
            "timestamps": np.arange(len(g) - 1, dtype=np.int64), "target": np.int64(g[-1]),
            "target_domain": np.int32(g[-1] > NX), "overlap": np.bool_(True)}


def synthetic_records(n=48, seed=0, max_n=T):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        length = int(rng.integers(3, max_n + 1))
        # alternate domains in runs so that most lines keep both an X and a Y target
        dom = rng.random(length) < 0.5
        items = np.where(dom, rng.integers(0, NX, length), rng.integers(NX, NX + NY, length))
        out.append(make_record(u, items))
    return out


def synthetic_info(num_users=64):
    return DatasetInfo(name="synthetic", kind="sequence", licence="", num_users=num_users, num_items=NX + NY,
                       domain_names=("x", "y"), domain_item_ranges={"x": (1, NX), "y": (NX + 1, NX + NY)},
                       split_sizes={}, unavailable_splits={}, drops={}, data_dir="", metadata={})


def make_cfg(**task_kw):
    task = dict(name="c2dsr", lambda_=0.7, loss_positions=5)
    task.update(task_kw)
    return ml_collections.ConfigDict(dict(
        model=dict(name="c2dsr", embed_dim=D, num_blocks=BLOCKS, num_heads=1, max_len=T, dropout_rate=0.2),
        task=task, train=dict(seed=0, batch_size=16),
        eval=dict(num_negatives=20, negatives_seed=7, batch_size=16),
        optimizer=dict(name="adam", learning_rate=1e-2, b1=0.9, b2=0.98, eps=1e-8)))


@pytest.fixture(scope="module")
def engine():
    """The task and a TrainState built by the engine (one init compilation shared by every test)."""
    from jaxrec.parallel.partitioner import Partitioner
    from jaxrec.train import steps as steps_lib

    records = synthetic_records()
    task = c2dsr_lib.C2DSRTask(make_cfg(), synthetic_info(), train_records=records)
    tx = steps_lib.build_optimizer(task.cfg.optimizer)
    part = Partitioner()
    state, shardings = steps_lib.build_train_state(task, tx, part, 0, task.dummy_batch(16))
    return {"task": task, "records": records, "tx": tx, "part": part, "state": state, "shardings": shardings,
            "params": jax.device_get(state.params)}


@pytest.fixture(scope="module")
def setup(engine):
    task, records = engine["task"], engine["records"]
    # random (non-zero) biases so that the reference also checks where biases enter
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: (jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype)
                      if jax.tree_util.keystr(p).endswith("['bias']") else jnp.asarray(x)), engine["params"])
    return task, params, records


@pytest.fixture(scope="module")
def fns(setup):
    """Jitted model entry points (one compilation each, shared by the tests)."""
    task, params, records = setup
    graphs = task.graphs()
    model = task.model
    tables = jax.jit(lambda p: model.apply({"params": p}, graphs, method="tables"))
    train_losses = jax.jit(
        lambda p, b, lam, lp: model.apply({"params": p}, b, graphs, train=False, lambda_=lam, loss_positions=lp,
                                          method="training_losses"), static_argnums=(2, 3))
    scores = jax.jit(lambda p, b: task.scores(p, {}, b))
    batch = kept_batch(task, records)
    main = train_losses(params, batch, 0.7, 5)
    return {"tables": tables, "train_losses": train_losses, "scores": scores, "batch": batch, "main": main,
            "np_tables": [np.asarray(t, np.float64) for t in tables(params)]}


# ------------------------------------------------------------------------ official preprocessing (copy)

def official_preprocess(line, source_item_num, target_item_num, max_len):
    """Literal transcription of the official ``DataLoader.preprocess`` loop body for one line (ids already
    time-sorted); the random corruption is left out (checked separately). Returns None when skipped."""
    itemnum = source_item_num + target_item_num + 1
    d = list(line)
    ground = list(d)[1:]
    share_x_ground, share_x_ground_mask, share_y_ground, share_y_ground_mask = [], [], [], []
    for w in ground:
        if w < source_item_num:
            share_x_ground.append(w)
            share_x_ground_mask.append(1)
            share_y_ground.append(target_item_num)
            share_y_ground_mask.append(0)
        else:
            share_x_ground.append(source_item_num)
            share_x_ground_mask.append(0)
            share_y_ground.append(w - source_item_num)
            share_y_ground_mask.append(1)
    d = d[:-1]
    position = list(range(len(d) + 1))[1:]
    xd, xcnt, x_position, yd, ycnt, y_position = [], 1, [], [], 1, []
    for w in d:
        if w < source_item_num:
            xd.append(w)
            x_position.append(xcnt)
            xcnt += 1
            yd.append(itemnum - 1)
            y_position.append(0)
        else:
            xd.append(itemnum - 1)
            x_position.append(0)
            yd.append(w)
            y_position.append(ycnt)
            ycnt += 1
    now = -1
    x_ground = [source_item_num] * len(xd)
    x_ground_mask = [0] * len(xd)
    for id in range(len(xd)):
        id += 1
        if x_position[-id]:
            if now == -1:
                now = xd[-id]
                if ground[-1] < source_item_num:
                    x_ground[-id] = ground[-1]
                    x_ground_mask[-id] = 1
                else:
                    xd[-id] = itemnum - 1
                    x_position[-id] = 0
            else:
                x_ground[-id] = now
                x_ground_mask[-id] = 1
                now = xd[-id]
    if sum(x_ground_mask) == 0:
        return None
    now = -1
    y_ground = [target_item_num] * len(yd)
    y_ground_mask = [0] * len(yd)
    for id in range(len(yd)):
        id += 1
        if y_position[-id]:
            if now == -1:
                now = yd[-id] - source_item_num
                if ground[-1] > source_item_num:
                    y_ground[-id] = ground[-1] - source_item_num
                    y_ground_mask[-id] = 1
                else:
                    yd[-id] = itemnum - 1
                    y_position[-id] = 0
            else:
                y_ground[-id] = now
                y_ground_mask[-id] = 1
                now = yd[-id] - source_item_num
    if sum(y_ground_mask) == 0:
        return None
    k = max_len - len(d)
    return {
        "seq": [itemnum - 1] * k + d, "x_seq": [itemnum - 1] * k + xd, "y_seq": [itemnum - 1] * k + yd,
        "pos": [0] * k + position, "x_pos": [0] * k + x_position, "y_pos": [0] * k + y_position,
        "share_x_tgt": [source_item_num] * k + share_x_ground, "share_y_tgt": [target_item_num] * k + share_y_ground,
        "x_tgt": [source_item_num] * k + x_ground, "y_tgt": [target_item_num] * k + y_ground,
        "share_x_mask": [0] * k + share_x_ground_mask, "share_y_mask": [0] * k + share_y_ground_mask,
        "x_mask": [0] * k + x_ground_mask, "y_mask": [0] * k + y_ground_mask,
    }


HAND_LINES = {
    "final_x_deletes_last_y": [0, 13, 1, 14, 2],
    "final_y_deletes_last_x": [12, 0, 13, 1, 16],
    "skip_no_y": [0, 1, 2, 13],          # the only Y item is the final one: no Y input
    "skip_no_x": [12, 13, 0],
    "quirk_final_is_item_NX": [0, 13, 1, 12],  # item NX is Y, but `> NX` says no -> Y line skipped
    "full_length": [0, 12, 1, 13, 2, 14, 3, 15],  # T items: T - 1 inputs (the most the position table allows)
}


def test_preprocessing_matches_official_loop():
    rng = np.random.default_rng(0)
    for name, line in HAND_LINES.items():
        ours = ct.train_example(np.array(line), NX, NY, T, rng)
        ref = official_preprocess(line, NX, NY, T)
        assert (ours is None) == (ref is None), name
        if ref is not None:
            for k, v in ref.items():
                np.testing.assert_array_equal(ours[k], v, err_msg=f"{name}: {k}")
    # spot checks of the rules themselves
    ex = ct.train_example(np.array(HAND_LINES["final_x_deletes_last_y"]), NX, NY, T, rng)
    assert ex["y_seq"][-1] == PAD and ex["y_pos"][-1] == 0  # last Y input (14) deleted: final item is X
    assert ex["y_tgt"][-3] == 14 - NX and ex["y_mask"][-3] == 1  # earlier Y still targets the deleted one
    assert ex["x_tgt"][-2] == 2 and ex["x_mask"][-2] == 1
    # the `> NX` quirk and its option
    assert ct.train_example(np.array(HAND_LINES["quirk_final_is_item_NX"]), NX, NY, T, rng) is None
    fixed = ct.train_example(np.array(HAND_LINES["quirk_final_is_item_NX"]), NX, NY, T, rng, y_final_strict=False)
    assert fixed is not None and fixed["y_tgt"][-2] == 0 and fixed["y_mask"][-2] == 1
    # longer lines: only the last T items are used
    long = np.array([0, 12] * 10)
    np.testing.assert_array_equal(ct.train_example(long, NX, NY, T, rng)["seq"][1:], long[-T:-1])


def test_random_lines_match_official_and_corruption_keeps_own_domain():
    rng = np.random.default_rng(3)
    kept = 0
    for i in range(200):
        n = int(rng.integers(2, T + 1))
        line = np.where(rng.random(n) < 0.5, rng.integers(0, NX, n), rng.integers(NX, PAD, n))
        ours = ct.train_example(line, NX, NY, T, np.random.default_rng(i))
        ref = official_preprocess(list(line), NX, NY, T)
        assert (ours is None) == (ref is None)
        if ref is None:
            continue
        kept += 1
        for k, v in ref.items():
            np.testing.assert_array_equal(ours[k], v, err_msg=k)
        seq, cx, cy = ours["seq"], ours["corru_x"], ours["corru_y"]
        is_pad, is_x = seq == PAD, seq < NX
        np.testing.assert_array_equal(cx[is_pad], PAD)
        np.testing.assert_array_equal(cy[is_pad], PAD)
        np.testing.assert_array_equal(cx[is_x], seq[is_x])  # corru_x keeps exactly the X items ...
        assert ((cx[~is_x & ~is_pad] >= NX) & (cx[~is_x & ~is_pad] < PAD)).all()  # ... and draws Y items
        np.testing.assert_array_equal(cy[~is_x & ~is_pad], seq[~is_x & ~is_pad])
        assert ((cy[is_x] >= 0) & (cy[is_x] < NX)).all()
    assert kept > 50


def test_transforms_batches_kept_source_and_resampling(setup):
    task, _, records = setup
    tf = ct.C2DSRTrainTransform(NX, NY, T, seed=5)
    b1, b2 = tf.map_batch(records), tf.map_batch(records)
    for k in ct.TRAIN_KEYS:
        assert b1[k].shape == (len(records), T) and b1[k].dtype == np.int32
        np.testing.assert_array_equal(b1[k], b2[k])  # corruption fixed per record (drawn "once")
    skipped = ~b1["keep"]
    assert skipped.any() and (b1["x_mask"][skipped] == 0).all()
    table = task.table
    assert table.num_records == len(records) and table.num_kept == int(table.kept_flags.sum())
    rb = ct.C2DSRResampledTrainTransform(table).map_batch(records)
    assert rb["keep"].all() and rb["seq"].shape == (len(records), T)
    rows = np.array([table.row_of_user[int(r["user_id"])] for r in records])
    counts = np.bincount(rows, minlength=table.num_kept)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # round-robin: near-uniform multiplicity
    own = [i for i, f in enumerate(table.kept_flags) if f]
    np.testing.assert_array_equal(rb["seq"][own], tf.map_batch([records[i] for i in own])["seq"])
    # drop_policy="kept" (default): the engine's source holds only the kept records, padded to a multiple of B
    assert task.drop_policy == "kept"
    src = task.train_source(records)
    B = int(task.cfg.train.batch_size)
    assert len(src) == -(-table.num_kept // B) * B and len(src) % B == 0
    got = src.__getitems__(list(range(len(src))))
    assert [int(r["user_id"]) for r in got[:table.num_kept]] == [int(records[i]["user_id"]) for i in own]
    assert len({int(r["user_id"]) for r in got}) == table.num_kept  # the padding repeats kept records only
    kb = task.train_transform().map_batch(got)
    ref = ct.C2DSRTrainTransform(NX, NY, T, seed=task.corrupt_seed).map_batch(got)
    assert kb["keep"].all() and ref["keep"].all()
    for k in ct.TRAIN_KEYS:
        np.testing.assert_array_equal(kb[k], ref[k], err_msg=k)
    with pytest.raises(DataError):
        task.train_transform().map_batch([records[i] for i, f in enumerate(table.kept_flags) if not f][:1])
    with pytest.raises(DataError):
        task.train_source(records[:-1])
    with pytest.raises(DataError):  # same length, another order
        task.train_source(records[1:] + records[:1])
    mask_task = c2dsr_lib.C2DSRTask(make_cfg(drop_policy="mask"), synthetic_info(), train_records=records)
    assert mask_task.train_source(records) is records


def test_eval_transform_streams_last_slots_and_negatives():
    # history [X0, Y13, X1, Y14], target Y (12 = item NX is Y for evaluation: `>= NX`)
    rec = make_record(3, [0, 13, 1, 14, 12])
    tf = ct.C2DSREvalTransform(NX, NY, T, num_negatives=999, seed=1, split="valid")
    b = tf.map_batch([rec, make_record(4, [12, 0, 13, 5])])
    np.testing.assert_array_equal(b["seq"][0], [PAD] * 4 + [0, 13, 1, 14])
    np.testing.assert_array_equal(b["x_pos"][0], [0] * 4 + [1, 0, 2, 0])
    assert b["x_last"][0] == T - 2 and b["y_last"][0] == T - 1  # the X stream's last real slot is not the last
    assert b["is_y"][0] and b["gt"][0] == 0 and not b["is_y"][1] and b["gt"][1] == 5
    np.testing.assert_array_equal(b["history"][0], [-1] * 5 + [13 - NX, -1, 14 - NX])
    negs = b["negatives"]
    assert negs.shape == (2, 999)
    assert (negs[0] != 0).all() and negs[0].min() >= 1 and negs[0].max() < NY  # Y-local, gt excluded
    assert (negs[1] != 5).all() and negs[1].max() < NX
    assert len(np.unique(negs[0])) < 999  # drawn with replacement
    np.testing.assert_array_equal(tf.map_batch([rec])["negatives"][0], negs[0])  # fixed, batch-independent
    other = ct.C2DSREvalTransform(NX, NY, T, num_negatives=999, seed=1, split="test").map_batch([rec])
    assert (other["negatives"][0] != negs[0]).any()


# ------------------------------------------------------------------------------------------ graphs

def dense_graphs(seqs):
    a = np.zeros((V, V))
    a_s = np.zeros((V, V))
    for s in seqs:
        for p, c in zip(s[:-1], s[1:]):
            a[p, c] += 1
        for sub in (s[s < NX], s[s >= NX]):
            for p, c in zip(sub[:-1], sub[1:]):
                a_s[p, c] += 1
    norm = lambda m: m / np.where(m.sum(1, keepdims=True) > 0, m.sum(1, keepdims=True), 1)  # noqa: E731
    return norm(a), norm(a_s)


def test_graphs_match_dense_counts(setup):
    task, _, records = setup
    seqs = [ct.record_sequence(r) for r in records]
    a, a_s = dense_graphs(seqs)
    for name, ref in (("mixed", a), ("single", a_s)):
        s, r, w = task.graphs_np[name]
        got = np.zeros((V, V))
        np.add.at(got, (r, s), w)
        np.testing.assert_allclose(got, ref, atol=1e-6)
    assert not np.allclose(a, a.T)  # directed
    assert task.graphs_np["mixed"][1].max() < PAD  # PAD has no edge


def test_gcn_propagation_matches_numpy(setup, fns):
    task, params, records = setup
    h, hx, hy, e, ex, ey = fns["tables"](params)
    a, a_s = dense_graphs([ct.record_sequence(r) for r in records])
    for out, table, adj, bias in ((h, "item_emb", a, "gnn_bias"), (hx, "item_emb_x", a_s, "gnn_bias_x"),
                                  (hy, "item_emb_y", a_s, "gnn_bias_y")):
        emb = np.asarray(params[table])
        assert np.all(emb[PAD] == 0)
        ref = (emb + adj @ emb + np.asarray(params[bias])[0]) / 2
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(e), np.asarray(params["item_emb"]), atol=0)
    # use_graph=False: the GCN is dropped, the tables pass through
    m2 = c2dsr_lib.C2DSR(num_x=NX, num_y=NY, embed_dim=D, max_len=T, num_blocks=BLOCKS, use_graph=False)
    h2 = m2.apply({"params": params}, task.graphs(), method="tables")[0]
    np.testing.assert_allclose(np.asarray(h2), np.asarray(params["item_emb"]))


# ------------------------------------------------------------------------------------- NumPy model

def np_ln(x, p, eps=1e-8):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def np_encoder(p, ids, pos, g_table, table, key_padding=False):
    """SASRec-pytorch encoder as in the official C2DSR code (spec §5), float64."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
    valid = ids != PAD
    z = (g_table[ids] + table[ids] * valid[..., None]) * math.sqrt(D)
    z = z + p["pos_embed"][pos] * (pos != 0)[..., None]
    z = z * valid[..., None]
    enc = p["encoder"]
    L = ids.shape[1]
    causal = np.tril(np.ones((L, L), bool))
    for layer in range(sum(k.startswith("layer_") for k in enc)):
        lp = enc[f"layer_{layer}"]
        q_in = np_ln(z, lp["attn_norm"])
        proj = lambda x, w: np.einsum("btd,dhk->bthk", x, w["kernel"]) + w["bias"]  # noqa: E731
        q, k, v = proj(q_in, lp["attn"]["query"]), proj(z, lp["attn"]["key"]), proj(z, lp["attn"]["value"])
        s = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
        mask = np.broadcast_to(causal, s.shape)
        if key_padding:
            mask = mask & valid[:, None, None, :]
        s = np.where(mask, s, -np.inf)
        mx = np.max(np.where(mask, s, -1e30), -1, keepdims=True)
        w = np.where(mask, np.exp(s - mx), 0.0)
        w = w / np.maximum(w.sum(-1, keepdims=True), 1e-30)
        o = np.einsum("bhqs,bshk->bqhk", w, v)
        o = np.einsum("bqhk,hkd->bqd", o, lp["attn"]["out"]["kernel"]) + lp["attn"]["out"]["bias"]
        z = np_ln(q_in + o, lp["ffn_norm"])
        hdn = np.maximum(z @ lp["ffn"]["wi"]["kernel"] + lp["ffn"]["wi"]["bias"], 0)
        z = z + hdn @ lp["ffn"]["wo"]["kernel"] + lp["ffn"]["wo"]["bias"]
        z = z * valid[..., None]
    return np_ln(z, enc["final_norm"])


def np_states(fns, params, batch):
    h, hx, hy, e, ex, ey = fns["np_tables"]
    b = {k: np.asarray(v) for k, v in batch.items()}
    out = {"F": np_encoder(params["enc"], b["seq"], b["pos"], h, e),
           "F_X": np_encoder(params["enc_x"], b["x_seq"], b["x_pos"], hx, ex),
           "F_Y": np_encoder(params["enc_y"], b["y_seq"], b["y_pos"], hy, ey)}
    if "corru_x" in b:
        out["F_cx"] = np_encoder(params["enc"], b["corru_x"], b["pos"], h, e)
        out["F_cy"] = np_encoder(params["enc"], b["corru_y"], b["pos"], h, e)
    return out


def np_dense(p, x):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def np_ce_mean(logits, tgt, mask):
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
    return float((nll * mask).sum() / mask.size)  # mean over all B * P slots


def np_bce(x, y):
    return float(np.mean(np.logaddexp(0, -x) if y else np.logaddexp(0, x)))


def np_losses(params, st, b, positions, lam):
    sl = lambda a: a[:, -positions:]  # noqa: E731
    f, fx, fy = sl(st["F"]), sl(st["F_X"]), sl(st["F_Y"])
    lx, ly, lp = (lambda h: np_dense(params["lin_x"], h)), (lambda h: np_dense(params["lin_y"], h)), \
        (lambda h: np_dense(params["lin_pad"], h))
    t = {k: sl(np.asarray(b[k])) for k in ct.TRAIN_KEYS}
    out = {
        "loss_sx": np_ce_mean(np.concatenate([lx(f), lp(f)], -1), t["share_x_tgt"], t["share_x_mask"]),
        "loss_sy": np_ce_mean(np.concatenate([ly(f), lp(f)], -1), t["share_y_tgt"], t["share_y_mask"]),
        "loss_x": np_ce_mean(np.concatenate([lx(f + fx), lp(fx)], -1), t["x_tgt"], t["x_mask"]),
        "loss_y": np_ce_mean(np.concatenate([ly(f + fy), lp(fy)], -1), t["y_tgt"], t["y_mask"]),
    }
    xm, ym = np.asarray(b["x_mask"], np.float64), np.asarray(b["y_mask"], np.float64)
    pool = lambda s, m: np.einsum("bt,btd->bd", m / m.sum(1, keepdims=True), s)  # noqa: E731
    s_x, s_y = pool(st["F_X"], xm), pool(st["F_Y"], ym)
    c_x, c_y = pool(st["F"], xm), pool(st["F"], ym)
    cc_x, cc_y = pool(st["F_cx"], xm), pool(st["F_cy"], ym)
    wx, wy = np.asarray(params["disc_x"], np.float64), np.asarray(params["disc_y"], np.float64)
    bx, by = float(params["disc_x_bias"]), float(params["disc_y_bias"])
    disc = lambda a, w, s, bias: np.einsum("bi,ij,bj->b", a, w, s) + bias  # noqa: E731
    out["loss_mi_x"] = np_bce(disc(c_y, wx, s_x, bx), 1) + np_bce(disc(cc_y, wx, s_x, bx), 0)
    out["loss_mi_y"] = np_bce(disc(c_x, wy, s_y, by), 1) + np_bce(disc(cc_x, wy, s_y, by), 0)
    pred = out["loss_sx"] + out["loss_sy"] + out["loss_x"] + out["loss_y"]
    out["loss"] = lam * pred + (1 - lam) * (out["loss_mi_x"] + out["loss_mi_y"])
    return out


def kept_batch(task, records, n=16):
    kept = [r for r, k in zip(records, task.table.kept_flags) if k]
    return task.train_transform().map_batch(kept[:n])


def test_encoder_forward_matches_numpy(setup, fns):
    task, params, records = setup
    batch = fns["batch"]
    st = fns["main"][1]
    ref = np_states(fns, params, batch)
    assert set(st) == {"F", "F_X", "F_Y", "F_cx", "F_cy"}
    for k in st:
        assert st[k].shape == (16, T, D)
        np.testing.assert_allclose(np.asarray(st[k]), ref[k], rtol=2e-4, atol=2e-4, err_msg=k)
    # real positions attend to left-PAD slots (official: causal mask only); the key-padding option differs
    m2 = c2dsr_lib.C2DSR(num_x=NX, num_y=NY, embed_dim=D, max_len=T, num_blocks=BLOCKS, key_padding_mask=True)
    f2 = jax.jit(lambda p, b: m2.apply({"params": p}, b, task.graphs(), corrupted=False)["F"])(params, batch)
    tabs = fns["np_tables"]
    ref2 = np_encoder(params["enc"], np.asarray(batch["seq"]), np.asarray(batch["pos"]), tabs[0], tabs[3],
                      key_padding=True)
    np.testing.assert_allclose(np.asarray(f2), ref2, rtol=2e-4, atol=2e-4)
    assert not np.allclose(np.asarray(f2), np.asarray(st["F"]), atol=1e-3)


def test_every_loss_term_matches_numpy(setup, fns):
    task, params, records = setup
    batch = fns["batch"]
    terms, st = fns["main"]
    ref_states = np_states(fns, params, batch)
    ref = np_losses(params, ref_states, batch, 5, 0.7)
    for k, v in ref.items():
        np.testing.assert_allclose(float(terms[k]), v, rtol=1e-4, atol=1e-5, err_msg=k)
    # the kernel composition equals kernels.losses.c2dsr_infomax_loss
    w = task.model.apply({"params": params}, method="discriminators")
    mi = losses.c2dsr_infomax_loss(st["F"], st["F_X"], st["F_Y"], st["F_cx"], st["F_cy"], batch["x_mask"],
                                   batch["y_mask"], *w)
    np.testing.assert_allclose([float(terms["loss_mi_x"]), float(terms["loss_mi_y"])], np.asarray(mi), rtol=1e-5)
    # lambda = 1 with every position supervised: the plain sum of the four CE terms, no corrupted passes
    t1, st1 = fns["train_losses"](params, batch, 1.0, 0)
    assert "F_cx" not in st1 and float(t1["loss_mi_x"]) == 0.0
    ref_all = np_losses(params, ref_states, batch, T, 1.0)
    for k in ("loss_sx", "loss_sy", "loss_x", "loss_y", "loss"):
        np.testing.assert_allclose(float(t1[k]), ref_all[k], rtol=1e-4, err_msg=k)
    np.testing.assert_allclose(ref_all["loss"], sum(ref_all[k] for k in ("loss_sx", "loss_sy", "loss_x", "loss_y")))


def test_masked_rows_leave_the_loss_unchanged(setup, fns):
    """Rows the official loader skips (``keep=False``) contribute nothing, the denominator counts kept rows."""
    task, params, records = setup
    batch = fns["batch"]
    tf = ct.C2DSRTrainTransform(NX, NY, T)
    skipped = [r for r in records if tf.example(r) is None][:4]
    assert len(skipped) == 4
    pad = tf.map_batch(skipped)
    mixed = {k: np.concatenate([batch[k][:12], pad[k]]) for k in batch}
    got, _ = fns["train_losses"](params, mixed, 0.7, 5)
    ref = np_losses(params, {k: v[:12] for k, v in np_states(fns, params, batch).items()},
                    {k: v[:12] for k, v in batch.items()}, 5, 0.7)
    np.testing.assert_allclose(float(got["loss"]), ref["loss"], rtol=1e-4)


def test_infomax_decreases_with_more_similar_positive_pairs():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(32, D))
    fake = rng.normal(size=(32, D))
    w = np.eye(D) * 0.1
    vals = [float(losses.bilinear_infomax_loss(a * s + (1 - a) * rng.normal(size=s.shape), fake, s, w))
            for a in (0.0, 0.5, 1.0)]
    assert vals[0] > vals[1] > vals[2]


# ---------------------------------------------------------------------------------------- evaluation

def test_eval_scores_use_last_mixed_state_and_last_domain_slot(setup, fns):
    task, params, records = setup
    recs = records[:23] + [make_record(99, [0, 13, 1, 14, 15, 3])]  # X target; X stream ends before the end
    batch = task.eval_transform("valid").map_batch(recs)
    assert batch["x_last"][-1] < T - 1
    sx, sy = fns["scores"](params, batch)
    ref = np_states(fns, params, batch)
    rows = np.arange(len(recs))
    ux = ref["F"][:, -1] + ref["F_X"][rows, batch["x_last"]]
    uy = ref["F"][:, -1] + ref["F_Y"][rows, batch["y_last"]]
    np.testing.assert_allclose(np.asarray(sx), np_dense(params["lin_x"], ux), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(sy), np_dense(params["lin_y"], uy), rtol=2e-4, atol=2e-4)
    assert sx.shape == (len(recs), NX) and sy.shape == (len(recs), NY)


def loop_metrics(sx, sy, batch, exclude_history=False):
    """Per-example loop in the style of the official evaluation (1e-5 tie rule)."""
    out = {"X": [], "Y": [], "Xf": [], "Yf": []}
    for i in range(len(batch["gt"])):
        sc = sy[i] if batch["is_y"][i] else sx[i]
        gt = batch["gt"][i]
        r = 1 + sum(1 for j in batch["negatives"][i] if sc[j] > sc[gt] + 1e-5)
        hist = set(batch["history"][i][batch["history"][i] >= 0].tolist()) if exclude_history else set()
        rf = 1 + sum(1 for j in range(len(sc)) if j != gt and j not in hist and sc[j] > sc[gt] + 1e-5)
        dom = "Y" if batch["is_y"][i] else "X"
        out[dom].append(r)
        out[dom + "f"].append(rf)

    def m(ranks):
        ranks = np.array(ranks, float)
        res = {"mrr": np.mean(1 / ranks)}
        for k in (5, 10):
            res[f"ndcg@{k}"] = np.mean(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0))
        for k in (1, 5, 10):
            res[f"hr@{k}"] = np.mean(ranks <= k)
        return res

    res = {}
    for dom in ("X", "Y"):
        res.update({f"{dom}/{k}": v for k, v in m(out[dom]).items()})
        res.update({f"{dom}/full/{k}": v for k, v in m(out[dom + "f"]).items()})
    return res


@pytest.mark.parametrize("exclude_history", [False, True])
def test_vectorised_ranking_matches_loop(setup, fns, exclude_history):
    task, params, records = setup
    batch = task.eval_transform("test").map_batch(records[:24])
    batch["valid"] = np.ones(24, bool)
    sx, sy = fns["scores"](params, batch)
    sx, sy = np.array(sx), np.array(sy)
    # plant exact ties and near-ties (within 1e-5) with the target to exercise the tie rule
    for i in (0, 1):
        sc = sy if batch["is_y"][i] else sx
        sc[i, batch["negatives"][i][0]] = sc[i, batch["gt"][i]]
        sc[i, batch["negatives"][i][1]] = sc[i, batch["gt"][i]] + 5e-6
    outputs = jax.jit(lambda a, b, bt: c2dsr_lib.rank_outputs(a, b, bt, exclude_history=exclude_history))(
        sx, sy, {k: batch[k] for k in ("is_y", "gt", "negatives", "history")})
    acc = MetricAccumulator()
    c2dsr_lib.accumulate_by_domain(acc, jax.device_get(outputs), batch)
    got = acc.result()
    ref = loop_metrics(sx, sy, batch, exclude_history)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, err_msg=k)
    assert {"all/mrr", "all/full/hr@10"} <= set(got)


# ------------------------------------------------------------------------------------------ training

def test_train_steps_on_the_engine_decrease_loss_and_keep_pad_rows_zero(engine):
    from jaxrec.train import steps as steps_lib

    task, records, part, shardings = engine["task"], engine["records"], engine["part"], engine["shardings"]
    state = engine.pop("state")  # donated by the step below
    step = steps_lib.make_train_step(task, engine["tx"], part, shardings)
    batch = part.shard_inputs(kept_batch(task, records))
    losses_seen = []
    for _ in range(25):
        state, m = step(state, batch)
        losses_seen.append(float(m["loss"]))
    assert np.isfinite(losses_seen).all()
    assert losses_seen[-1] < 0.7 * losses_seen[0]
    assert {"loss_sx", "loss_sy", "loss_x", "loss_y", "loss_mi_x", "loss_mi_y", "grad_norm"} <= set(m)
    p = jax.device_get(state.params)
    for t in ("item_emb", "item_emb_x", "item_emb_y"):
        assert np.all(p[t][PAD] == 0), t  # padding_idx row: zero gradient, Adam leaves it at 0
        assert np.abs(p[t][:PAD]).sum() > 0
    for e in ("enc", "enc_x", "enc_y"):
        assert np.all(p[e]["pos_embed"][0] == 0)
    # evaluation through the engine's eval step and the task's per-domain accumulation
    from jaxrec.data.pipeline import make_eval_batches
    from jaxrec.train.loop import evaluate

    eval_step = steps_lib.make_eval_step(task, part, shardings)
    res = evaluate(eval_step, state, make_eval_batches(records[:20], task.eval_transform("valid"), 16), part, task)
    assert 0 < res["X/mrr"] <= 1 and 0 < res["Y/full/mrr"] <= 1 and res["X/hr@10"] >= res["X/hr@5"]


def test_shapes_flops_and_config_errors(setup):
    from jaxrec.config import ConfigError

    task, params, _ = setup
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes["item_emb"] == (V, D) and shapes["lin_x"]["kernel"] == (D, NX)
    assert shapes["lin_y"]["kernel"] == (D, NY) and shapes["disc_x"] == (D, D)
    assert shapes["enc"]["pos_embed"] == (T, D)
    assert task.train_flops_per_example() > 0
    bad = synthetic_info()
    bad = DatasetInfo(**{**bad.__dict__, "domain_item_ranges": {"x": (1, NX)}})
    with pytest.raises(ConfigError):
        c2dsr_lib.C2DSRTask(make_cfg(), bad, train_records=synthetic_records(8))
    with pytest.raises(ConfigError):
        c2dsr_lib.C2DSRTask(make_cfg(drop_policy="nope"), synthetic_info(), train_records=synthetic_records(8))


# ------------------------------------------------------------------------------------------ real data

@pytest.mark.shared_data
@pytest.mark.slow
def test_real_llmcdsr_food_kitchen_few_steps(shared_data, tmp_path):
    from jaxrec.config import load_config
    from jaxrec.train.run import train_from_config

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "c2dsr_food_kitchen.py"
    cfg = load_config(str(path), [
        "--config.model.embed_dim=16", "--config.model.num_blocks=1", "--config.train.batch_size=32",
        "--config.train.num_steps=3", "--config.train.eval_every=3", "--config.eval.batch_size=512",
        "--config.eval.num_negatives=99", "--config.data.cache=false",
        "--config.task.lambda_=1.0"])  # lambda = 1 (no corrupted passes): the cheapest compile of the real path
    out = train_from_config(cfg, str(tmp_path), data_dir=str(shared_data), progress=False)
    assert out["steps"] == 3
    assert np.isfinite(out["best_valid"]["X/mrr"]) and np.isfinite(out["test"]["Y/full/mrr"])


# ------------------------------------------------------------------------------ masked head slots

def test_masked_head_slots_equal_all_slots_loss_and_gradients(setup, fns):
    """``head_slots="masked"`` (compacted rows, any capacity: none, exact, larger, too small -> fallback) gives
    the ``"all"`` formulation's loss terms and gradients, with keep-masked rows and left-padded slots."""
    task, params, records = setup
    batch = fns["batch"]
    tf = ct.C2DSRTrainTransform(NX, NY, T)
    skipped = tf.map_batch([r for r in records if tf.example(r) is None][:3])
    short = tf.map_batch([make_record(200, [0, 13, 1, 14]), make_record(201, [12, 0, 13, 2])])  # mostly left padding
    assert short["keep"].all() and (short["x_mask"].sum(1) <= 2).all()
    mixed = {k: np.concatenate([batch[k][:11], skipped[k], short[k]]) for k in batch}
    assert mixed["keep"].sum() == 13
    P = 5
    w = lambda k: (mixed[k][:, -P:] * mixed["keep"][:, None]).astype(bool)  # noqa: E731
    n_x = int(w("share_x_mask").sum() + w("x_mask").sum())
    n_y = int(w("share_y_mask").sum() + w("y_mask").sum())
    rows = 2 * len(mixed["keep"]) * P
    assert 0 < n_x < rows and 0 < n_y < rows

    @jax.jit
    def all_slots(p, b):
        return jax.value_and_grad(lambda p: task.model.apply(
            {"params": p}, b, task.graphs(), train=False, loss_positions=P, head_slots="all",
            method="training_losses")[0]["loss"])(p)

    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)  # 7 grad compiles: XLA's passes cost more than they save
    try:
        _check_masked_against_all(task, params, fns, mixed, P, n_x, n_y, all_slots)
    finally:
        jax.config.update("jax_disable_most_optimizations", prev)


def _check_masked_against_all(task, params, fns, mixed, P, n_x, n_y, all_slots):
    ref_loss, ref_grad = all_slots(params, mixed)
    ref_terms = fns["train_losses"](params, mixed, 0.7, P)[0]  # default path (masked, every row)
    # capacities: none, exact, larger on X with a one-row-short Y (Y alone falls back), both too small
    for cap in (None, (n_x, n_y), (n_x + 7, n_y - 1), (n_x - 1, n_y // 2)):
        f = jax.jit(lambda p, b, cap=cap: jax.value_and_grad(lambda p: task.model.apply(
            {"params": p}, b, task.graphs(), train=False, loss_positions=P, head_slots="masked",
            head_capacity=cap, method="training_losses")[0]["loss"])(p))
        loss, grad = f(params, mixed)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6, err_msg=str(cap))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-7,
                                                             err_msg=str(cap)), grad, ref_grad)
    ref_all = jax.jit(lambda p, b: task.model.apply({"params": p}, b, task.graphs(), train=False, loss_positions=P,
                                                    head_slots="all", method="training_losses")[0])(params, mixed)
    for k in ("loss_sx", "loss_sy", "loss_x", "loss_y", "loss"):
        np.testing.assert_allclose(float(ref_terms[k]), float(ref_all[k]), rtol=1e-6, err_msg=k)


def test_head_capacity_bounds():
    counts = np.array([10, 9, 9, 3, 2, 2, 1, 0])
    assert c2dsr_lib.head_capacity(counts, 3, sigmas=None, multiple=1) == 28  # the 3 largest
    auto = c2dsr_lib.head_capacity(counts, 3, sigmas=2.0, multiple=1)
    assert 3 * counts.mean() < auto <= 28
    assert c2dsr_lib.head_capacity(counts, 3, sigmas=100.0, multiple=1) == 28  # capped at the strict bound
    assert c2dsr_lib.head_capacity(counts, 3, sigmas=None, multiple=32) == 32


def test_train_protocol_defaults_and_errors():
    import ml_collections

    from jaxrec.config import ConfigError

    assert c2dsr_lib.train_protocol(ml_collections.ConfigDict()) == (0.7, 10, 2040, True)
    t = ml_collections.ConfigDict(dict(lambda_=1.0, loss_positions=0, corrupt_seed=3, y_final_strict=False))
    assert c2dsr_lib.train_protocol(t) == (1.0, 0, 3, False)
    with pytest.raises(ConfigError, match="task.lambda_"):
        c2dsr_lib.train_protocol(ml_collections.ConfigDict(dict(lambda_=1.5)))
    with pytest.raises(ConfigError, match="task.loss_positions"):
        c2dsr_lib.train_protocol(ml_collections.ConfigDict(dict(loss_positions=-1)))


def test_nonoverlap_keep_option():
    import ml_collections

    from jaxrec.config import ConfigError

    assert c2dsr_lib.nonoverlap_keep_option(ml_collections.ConfigDict()) == "target_domain"
    assert c2dsr_lib.nonoverlap_keep_option(ml_collections.ConfigDict(dict(nonoverlap_keep="other_domain"))) == \
        "other_domain"
    with pytest.raises(ConfigError, match="eval.nonoverlap_keep"):
        c2dsr_lib.nonoverlap_keep_option(ml_collections.ConfigDict(dict(nonoverlap_keep="both")))


@pytest.mark.parametrize("impl", ["threefry", "hash"])
def test_row_restricted_gcn_equals_full_tables_in_training(setup, fns, impl):
    """``task.gcn_rows="batch"``: the GCN computed only at the rows the batch reaches (auto capacity, and a tiny
    one that takes the exact full fallback) gives the full tables' training loss and gradients, dropout
    included (threefry: the whole-table mask; hash: the mask of the gathered sender rows)."""
    task, params, _ = setup
    model = task.model.clone(dropout_impl=impl)
    batch, graphs = fns["batch"], task.graphs()
    caps = c2dsr_lib.gcn_edge_capacity(task.table.arrays, task.graphs_np, model.num_nodes, 16, multiple=8)
    assert all(0 < c <= len(task.graphs_np[g][0]) for c, g in zip(caps, ("mixed", "single", "single")))
    rngs = {"dropout": jax.random.PRNGKey(3)}

    def run(cap):
        return jax.jit(jax.value_and_grad(lambda p: model.apply(
            {"params": p}, batch, graphs, train=True, loss_positions=5, gcn_capacity=cap,
            method="training_losses", rngs=rngs)[0]["loss"]))(params)

    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        ref_loss, ref_grad = run(None)
        for cap in (caps, (1, 1, 1)):
            loss, grad = run(cap)
            np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6, err_msg=str(cap))
            jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                                                                 err_msg=str(cap)), grad, ref_grad)
    finally:
        jax.config.update("jax_disable_most_optimizations", prev)
    # the dropout is on: a different key changes the loss
    other = model.apply({"params": params}, batch, graphs, train=True, loss_positions=5, gcn_capacity=caps,
                        method="training_losses", rngs={"dropout": jax.random.PRNGKey(4)})[0]["loss"]
    assert abs(float(other) - float(ref_loss)) > 1e-6


def test_gcn_rows_task_options(setup):
    _, _, records = setup
    t = c2dsr_lib.C2DSRTask(make_cfg(gcn_rows="batch"), synthetic_info(), train_records=records)
    assert t.gcn_capacities is not None and len(t.gcn_capacities) == 3
    assert t.train_flops_per_example() < c2dsr_lib.C2DSRTask(make_cfg(), synthetic_info(),
                                                             train_records=records).train_flops_per_example() * 1.01
    t = c2dsr_lib.C2DSRTask(make_cfg(gcn_rows="batch", gcn_edge_capacity=64), synthetic_info(), train_records=records)
    assert t.gcn_capacities == (64, 64, 64)
    from jaxrec.config import ConfigError

    for kw, msg in ((dict(gcn_rows="some"), "task.gcn_rows"), (dict(gcn_edge_capacity=0), "task.gcn_edge_capacity")):
        with pytest.raises(ConfigError, match=msg):
            c2dsr_lib.C2DSRTask(make_cfg(**kw), synthetic_info(), train_records=records)
    cfg = make_cfg()
    cfg.model.dropout_impl = "philox"
    with pytest.raises(ConfigError, match="model.dropout_impl"):
        c2dsr_lib.C2DSRTask(cfg, synthetic_info(), train_records=records)
    cfg = make_cfg(gcn_rows="batch")
    cfg.model.gnn_layers = 2
    with pytest.raises(ConfigError, match="gnn_layers"):
        c2dsr_lib.C2DSRTask(cfg, synthetic_info(), train_records=records)


def test_packed_encoder_tokens_equal_every_token(setup, fns):
    """``task.encoder_tokens="packed"``: the encoders' position-wise work on the real tokens only (data-derived
    capacities, and capacities of 1 that take the dense fallback) gives the same encoder states, loss and
    gradients -- in eval mode against the every-token path, in training with hash dropout against its own dense
    fallback; the analytic FLOPs drop with the capacities."""
    task, params, records = setup
    counts = c2dsr_lib.token_counts(task.table.arrays, task.model.pad_id)
    caps = c2dsr_lib.resolve_token_capacities("packed", "auto", counts, 16, 4.0)
    assert all(0 < c <= 16 * T for c in caps)
    batch, graphs = fns["batch"], task.graphs()
    real = [int((np.asarray(batch[k]) != task.model.pad_id).sum()) for k in ("seq", "x_seq", "y_seq")]
    assert any(r < 16 * T for r in real)

    def run(model, cap, train):
        def f(p):
            terms, st = model.apply({"params": p}, batch, graphs, train=train, loss_positions=5, token_capacity=cap,
                                    method="training_losses", rngs={"dropout": jax.random.PRNGKey(3)})
            return terms["loss"], st
        (loss, st), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
        return loss, st, grad

    def close(a, b, msg):
        np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-5, err_msg=msg)
        for k in a[1]:
            np.testing.assert_allclose(np.asarray(a[1][k]), np.asarray(b[1][k]), rtol=1e-4, atol=1e-4, err_msg=k)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-3, atol=1e-5,
                                                             err_msg=msg), a[2], b[2])

    ref = run(task.model, None, False)
    for cap in (caps, tuple(real), (1, 1, 1)):
        close(run(task.model, cap, False), ref, f"eval {cap}")
    model = task.model.clone(dropout_impl="hash")
    close(run(model, caps, True), run(model, (1, 1, 1), True), "train hash")

    base = c2dsr_lib.C2DSRTask(make_cfg(), synthetic_info(), train_records=records)
    t = c2dsr_lib.C2DSRTask(make_cfg(encoder_tokens="packed"), synthetic_info(), train_records=records)
    assert t.token_capacities == c2dsr_lib.resolve_token_capacities("packed", "auto", counts, 16, 4.0)
    assert base.token_capacities is None
    assert t.train_flops_per_example() < base.train_flops_per_example()
    assert c2dsr_lib.C2DSRTask(make_cfg(encoder_tokens="packed", token_capacity=48), synthetic_info(),
                               train_records=records).token_capacities == (48, 48, 48)
    from jaxrec.config import ConfigError

    for kw, msg in ((dict(encoder_tokens="some"), "task.encoder_tokens"), (dict(token_capacity=0),
                                                                            "task.token_capacity")):
        with pytest.raises(ConfigError, match=msg):
            c2dsr_lib.C2DSRTask(make_cfg(**kw), synthetic_info(), train_records=records)
