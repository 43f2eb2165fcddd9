"""KuaiFormer on KuaiRand-1K windows (kuairand1k_autocdsr; needs ../shared/data), with its ablations and baselines.

Data: 3,101 training windows of up to 800 positive views (oldest first) with the tab id of each view as the side
feature; ids re-indexed densely over the ~730k ids of the training split (unseen ids -> OOV; ~19% of the
validation targets are such ids and count as misses). One (256-view history -> next view) sample per window
and epoch, cut at a batch-seeded position (see ``jaxrec.models.kuaiformer``); evaluation: the last view of
each validation/test window, full-catalogue retrieval over ~730k items, HR@{50,100,500,1000}
(``full/*``: exact max-over-interests ranking; ``quota/*``: the paper's per-interest quota + merge), and
the in-batch "offline accuracy" at the evaluation batch size.

Main run (compressed 256 -> 55 tokens, k = 6 interests, 4 layers, d = 64):

    jaxrec train --config experiments/kuaiformer_kuairand1k.py --workdir runs/kuaiformer_kr1k_s0
    jaxrec train --config experiments/kuaiformer_kuairand1k.py --workdir runs/kuaiformer_kr1k_s1 --config.train.seed=1

Ablations and baselines (``get_config(arg)``; comma-separated args compose, left to right):

    --config experiments/kuaiformer_kuairand1k.py:k1        # k in {1, 2, 4, 6, 8}: k1 k2 k4 k6 k8
    --config experiments/kuaiformer_kuairand1k.py:hist64                # Table 3: raw 64, k = 1
    --config experiments/kuaiformer_kuairand1k.py:hist256_uncompressed  # Table 3: raw 256, k = 1
    --config experiments/kuaiformer_kuairand1k.py:hist256_compressed    # Table 3: 256 -> 55 tokens, k = 1
    --config experiments/kuaiformer_kuairand1k.py:no_logq               # no logQ correction
    --config experiments/kuaiformer_kuairand1k.py:streaming_logq        # Yi et al. streaming estimate of Q
    --config experiments/kuaiformer_kuairand1k.py:no_smoothing          # alpha = 0
    --config experiments/kuaiformer_kuairand1k.py:smooth_standard       # standard label smoothing form
    --config experiments/kuaiformer_kuairand1k.py:sasrec                # SASRec (k = 1, no compression, raw 256)
    --config experiments/kuaiformer_kuairand1k.py:two_tower             # mean-pooled history MLP
    --config experiments/kuaiformer_kuairand1k.py:hist64,k6             # compose: raw 64 with 6 interests
    --config experiments/kuaiformer_kuairand1k.py:tiny                  # seconds-long smoke run
    --config experiments/kuaiformer_kuairand1k.py:hist64,frequent       # the learnable-catalogue protocol below
    --config experiments/kuaiformer_kuairand1k.py:k2,embedded           # the packaged KuaiRand-Pure clicks

``frequent`` keeps KuaiRand-1K's long histories but only the ids with >= 10 training views in the catalogue
(26,920 of 729,826 ids; 24.7 % of the training views; 21 % of validation targets), draws training cuts only where
the target is such an id (``task.cut_targets = "in_vocab"``), scores the last 4 events of each held-out window
(``eval.positions = 4``: 4,000 validation targets instead of 1,000; other targets stay misses) and trains 25
epochs = 300 steps. Every history variant (hist64 / hist256_uncompressed / hist256_compressed) composes with it.

``embedded`` (compose it last) swaps the data for ``kuairand_embedded`` (KuaiRand-Pure click sequences shipped in
the package: 7,807 users, 4,564 items, median 7 clicks, leave-one-out): raw history of 64 (no compression: no
user has 256 clicks), side feature = the tab of each click, training cuts anywhere (``min_history`` 1),
HR@{10, 50, 100}, 10 epochs of 30 steps (validation every 60). A catalogue small enough for id embeddings to
learn in minutes on a CPU, unlike KuaiRand-1K's ~730k ids seen 2.6 times each on average (experiments/RESULTS.md).

``ml100k`` (compose it last; needs ../shared/data, MovieLens licence: internal use only) swaps the data for
``movielens-100k/seq``: 943 users' rating sequences (median 62 training events, 87 users with >= 256), 1,682
items, leave-one-out; side feature = the rating of each history event; training cuts anywhere (``min_history``
1); HR@{10, 50, 100} with the user's other history items out of the ranking (``eval.exclude_history``); ``ML100K_STEPS`` steps, validation every 150. Half of all ratings sit more than 64
events into their user's sequence, so the history-length ablation has something to measure here (no
KuaiRand data at hand does at a CPU budget)::

    --config experiments/kuaiformer_kuairand1k.py:hist64,ml100k                # and hist256_uncompressed / _compressed

Every variant trains with the same loss (in-batch softmax + logQ + label smoothing), data, batch and evaluator.
"""

import ml_collections

from jaxrec.models.kuaiformer import DEFAULT_COMPRESS

NUM_TABS = 15  # KuaiRand tab ids 0..14
ML100K_STEPS = 600


def _kuaiformer_model() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="kuaiformer", embed_dim=64, side_dim=16, num_domains=NUM_TABS, token_mlp_hidden=(), num_layers=4,
        num_heads=4, mlp_dim=0, max_len=256, compress=DEFAULT_COMPRESS, share_compressor=False,
        compressor_layers=1, num_queries=6, query_attend_each_other=True, dropout_rate=0.1))


def _sasrec_model() -> ml_collections.ConfigDict:
    # same depth/width/heads as KuaiFormer, raw 256 history, the last position is the user vector
    return ml_collections.ConfigDict(dict(
        name="sasrec", embed_dim=64, num_blocks=4, num_heads=4, max_len=256, dropout_rate=0.1,
        mask_keys_with_valid=True, layer_norm_eps=1e-8))


def _two_tower_model() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="two_tower", embed_dim=64, side_dim=16, num_domains=NUM_TABS, token_mlp_hidden=(),
        hidden=(256, 128), max_len=256, dropout_rate=0.1))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = _kuaiformer_model()
    c.task = ml_collections.ConfigDict(dict(
        name="kuaiformer_retrieval", logq="empirical", streaming_alpha=0.05, label_smoothing=0.1,
        smoothing="paper", temperature=0.05, normalize=True, remove_accidental_hits=True, min_history=256,
        min_item_count=1, side_key="domains", seed=0))
    c.data = ml_collections.ConfigDict(dict(name="kuairand1k_autocdsr", cache=True))
    # 3,101 windows / 256 = 12 steps per epoch
    c.train = ml_collections.ConfigDict(dict(
        seed=0, batch_size=256, num_epochs=100, num_steps=0, log_every=12, eval_every=120, checkpoint_every=120,
        best_metric="full/hr@100", best_mode="max"))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=128, hr_ks=(50, 100, 500, 1000), quota="split", method="exact", chunk_size=65536, ties="half",
        valid_split="valid", test_split="test"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.98, weight_decay=0.0, grad_clip_norm=1.0,
        schedule="constant", warmup_steps=0))
    c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),), rules=()))

    for a in [x.strip() for x in (arg or "").split(",") if x.strip()]:
        if a.startswith("k") and a[1:].isdigit():
            if c.model.name != "kuaiformer":
                raise ValueError(f"config arg {a!r}: interest count applies to the kuaiformer model only")
            c.model.num_queries = int(a[1:])
        elif a == "hist64":  # Table 3: raw length 64, no compression, k = 1 (targets as the 256 runs)
            c.model.max_len, c.model.compress, c.model.num_queries = 64, (), 1
        elif a == "hist256_uncompressed":
            c.model.max_len, c.model.compress, c.model.num_queries = 256, (), 1
        elif a == "hist256_compressed":
            c.model.max_len, c.model.compress, c.model.num_queries = 256, DEFAULT_COMPRESS, 1
        elif a == "no_logq":
            c.task.logq = "none"
        elif a == "streaming_logq":
            c.task.logq = "streaming"
        elif a == "no_smoothing":
            c.task.label_smoothing = 0.0
        elif a == "smooth_standard":
            c.task.smoothing = "standard"
        elif a == "sasrec":
            c.model = _sasrec_model()
        elif a == "two_tower":
            c.model = _two_tower_model()
        elif a == "frequent":  # KuaiRand-1K with a learnable catalogue (module docstring)
            c.task.min_item_count, c.task.cut_targets = 10, "in_vocab"
            c.eval.positions = 4
            c.train.num_epochs, c.train.eval_every, c.train.checkpoint_every = 25, 60, 60
        elif a == "embedded":
            c.data.name = "kuairand_embedded"
            c.task.side_key, c.task.min_history = "tabs", 1
            c.model.max_len = 64
            if "compress" in c.model:
                c.model.compress = ()
            c.eval.hr_ks = (10, 50, 100)
            c.train.num_epochs, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 10, 30, 60, 60
            c.train.best_metric = "full/hr@50"
        elif a == "ml100k":  # MovieLens-100K rating sequences (internal only): the history-length ablation
            c.data.name = "movielens-100k/seq"
            c.task.side_key, c.task.min_history = "ratings", 1
            if "num_domains" in c.model:
                c.model.num_domains = 6  # ratings 1..5
            if c.model.name in ("kuaiformer", "two_tower"):
                c.model.dropout_impl = "hash"  # the threefry attention-weight masks dominate a 256-token step
            c.eval.hr_ks, c.eval.exclude_history = (10, 50, 100), True  # a rated movie is never a target
            c.train.num_epochs, c.train.num_steps, c.train.log_every = 0, ML100K_STEPS, 30
            c.train.eval_every = c.train.checkpoint_every = 150
            c.train.best_metric = "full/hr@50"
        elif a == "tiny":  # smoke run: small model, a few steps, small evaluation
            if c.model.name == "kuaiformer":
                c.model.num_layers, c.model.num_queries = 1, min(c.model.num_queries, 2)
            c.model.embed_dim = 16
            if "num_heads" in c.model:
                c.model.num_heads = 2
            if "num_blocks" in c.model:
                c.model.num_blocks = 1
            c.train.num_epochs, c.train.num_steps, c.train.batch_size = 1, 2, 64
            c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 1, 2, 2
            c.eval.batch_size = 64
        else:
            raise ValueError(f"unknown config arg {a!r}: expected k1|k2|k4|k6|k8, hist64, hist256_uncompressed, "
                             "hist256_compressed, no_logq, streaming_logq, no_smoothing, smooth_standard, sasrec, "
                             "two_tower, frequent, embedded, ml100k, tiny (comma-separated)")
    return c
