"""MARM (Lv et al., arXiv 2411.09425) on KuaiRand-Pure impressions: L cached target-attention layers over the user's
last n exposures, with real click / long-view labels.

Data: ``kuairand_pure`` (../shared/data/kuairand_pure; CC BY-SA 4.0): standard-policy impressions of
2022-04-25..05-08 split by date -- train 04-25..05-04 (167,281), valid 05-05..05-06 (26,683), test 05-07..05-08
(28,905). Labels (``task.tasks``): ``is_click`` and ``long_view`` of each impression (real feedback, no sampled
negatives). History: the user's last ``n = 32`` impressions (all exposures, clicked or not, from every split)
strictly before the impression, with their click/long-view bits as read-time label features.

Cache (``cache_mode="kv_fresh1"``: layer 1 attends over freshly projected history embeddings, layer 2 over
cached K/V): ``CacheStore`` in the train state (``model_state["marm_cache"]``), one entry per exposure (key user,
item, time), layer-2 K/V in bfloat16, 2^18 slots (16-way sets; KuaiRand-Pure has ~223k exposures): 2^18 x 1
layer x 2 x 32 values x 2 B = 32 MiB, saved with every checkpoint. The training step writes each trained impression's
entry; evaluation reads only (validation/test exposures are never written, so their in-period history misses
and is masked: see ``cache/hit_rate`` in the eval metrics). The engine shuffles impressions, so during the first
epoch about half of the history entries are not written yet (misses), and later entries are up to one epoch
stale. The exact time-ordered streaming protocol is in ``jaxrec.cache.bench``.

Model: d = 32, 2 heads, FFN 4d, towers [128, 64] over (user, item, MARM output, the multitask side features:
tab, hour, 30 user and 10 video fields, tags at width 8). Adam 1e-3, batch 512, 3 epochs, best epoch by
validation ``gauc/is_click``, then test.

    jaxrec train --config experiments/marm_kuairand_pure.py --workdir runs/marm_kp_kv2_s0
    jaxrec train --config experiments/marm_kuairand_pure.py:oracle --workdir runs/marm_kp_oracle2_s0

Variants (``get_config(arg)``; comma-separated args compose; give each its own --workdir; seeds via
``--config.train.seed=1``):

    kv        every layer's K/V cached (pure O(L·n·d))   h       layer-output cache (K/V projected per request)
    (default: kv_fresh1 = layer 1 fresh, layers 2..L cached K/V)
    oracle    no cache: causal Transformer recomputed over (history, candidate) per request
    ta1       one layer (default / h: target attention with per-request projections; with kv: DIN-style)
    L4 / L8   4 / 8 layers                           n16 / n64   history length
    nolabels  no read-time label features            embed   miss_policy="embed"
    tiny      smoke run (20 steps, small widths)
"""

import ml_collections

from jaxrec.models.marm import TIME_BASE_MS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="marm", embed_dim=32, num_layers=2, num_heads=2, mlp_ratio=4, cache_mode="kv_fresh1",
        self_attend=True, miss_policy="mask", tower_hidden=(128, 64), dropout_rate=0.0, side_features=True,
        side_embed_dim=8))
    c.task = ml_collections.ConfigDict(dict(
        name="marm_ranking", tasks=("is_click", "long_view"), history_len=32, history_source="all",
        history_label_features=("is_click", "long_view"), cache_key="user_item_time", cache_capacity=1 << 18,
        cache_ways=16, cache_dtype="bfloat16", time_base_ms=TIME_BASE_MS))
    c.data = ml_collections.ConfigDict(dict(name="kuairand_pure"))
    c.train = ml_collections.ConfigDict(dict(
        seed=0, batch_size=512, num_epochs=3, num_steps=0, log_every=50, eval_every=0, checkpoint_every=0,
        best_metric="gauc/is_click", best_mode="max"))
    c.eval = ml_collections.ConfigDict(dict(batch_size=1024, valid_split="valid", test_split="test"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip_norm=0.0,
        schedule="constant", warmup_steps=0))
    c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),), rules=()))
    for a in (arg or "").split(","):
        a = a.strip()
        if not a or a == "kv_fresh1":
            continue
        if a == "kv":
            c.model.cache_mode = "kv"
        elif a == "h":
            c.model.cache_mode = "h"
        elif a == "oracle":
            c.model.cache_mode = "none"
        elif a == "ta1":
            c.model.num_layers = 1
        elif a in ("L4", "L8"):
            c.model.num_layers = int(a[1:])
        elif a in ("n16", "n64"):
            c.task.history_len = int(a[1:])
        elif a == "nolabels":
            c.task.history_label_features = ()
        elif a == "embed":
            c.model.miss_policy = "embed"
        elif a == "tiny":
            c.model.embed_dim, c.model.tower_hidden = 16, (32,)
            c.task.cache_capacity, c.task.history_len = 1 << 18, 16
            c.train.num_steps, c.train.log_every = 20, 10
        else:
            raise ValueError(f"marm_kuairand_pure: unknown variant {a!r}")
    return c
