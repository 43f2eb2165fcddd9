"""C2DSR on ABXI's Food-Kitchen data (abxi/afk; leave-last-out per user; X = Food, Y = Kitchen).

    jaxrec train --config experiments/c2dsr_afk.py --workdir runs/c2dsr_afk_t15
    jaxrec train --config experiments/c2dsr_afk.py:50 --workdir runs/c2dsr_afk_t50     # T = 50
    # ablations: --config.task.lambda_=1.0 (no infomax), --config.model.use_graph=false (no GNN)
    # per-domain model selection as the official code: train.select_metrics (results.json['selected'])

Spec ../shared/papers/c2dsr.md: official hyperparameters (d = 256, 2 blocks, 1 head, dropout 0.2, λ = 0.7, last
10 positions supervised, Adam(1e-3, β = (0.9, 0.98)), batch 256, 100 epochs, validation every 5 epochs, 999
sampled negatives + full ranking); T = 15 (the official Amazon setting) or 50 (``:50``, ABXI's length).
Every training record is one user's sequence without its last two items; the C2DSR model uses the last T items
(T - 1 inputs, the official position table's limit), the graphs every transition of the training sequences.

Epochs. 7,144 training records; the official skip rule keeps 6,909 at T = 15 (ceil(6909 / 256) = 27 official
steps per epoch) and all 7,144 at T = 50 (28 steps per epoch). The task's ``train_source`` hook
(``task.drop_policy="kept"``) makes the engine's epoch the official one; 100 epochs, validation every 5
(``train.eval_every`` counts steps: 5 x steps per epoch).

Speed options as experiments/c2dsr_food_kitchen.py: masked heads, the row-restricted GCN (``task.gcn_rows``) and
hash dropout masks (``model.dropout_impl``); ``--config.task.gcn_rows=all --config.model.dropout_impl=threefry``
repeats the runs before 2026-11-29 exactly.
"""

import ml_collections

KEPT_LINES = {15: 6909, 50: 7144}  # measured: C2DSRTask(...).num_kept on abxi/afk


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    max_len = int(arg) if arg else 15
    if max_len not in KEPT_LINES:
        raise ValueError(f"c2dsr_afk: config argument must be 15 or 50, got {arg!r}")
    spe = -(-KEPT_LINES[max_len] // 256)  # official steps per epoch
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="c2dsr", embed_dim=256, num_blocks=2, num_heads=1, max_len=max_len, dropout_rate=0.2, gnn_layers=1,
        use_graph=True, key_padding_mask=False, layer_norm_eps=1e-8, dropout_impl="hash"))
    c.task = ml_collections.ConfigDict(dict(
        name="c2dsr", lambda_=0.7, loss_positions=10, corrupt_seed=2040, y_final_strict=True,
        drop_policy="kept", graph_lines="all", head_slots="masked", head_capacity="auto",
        head_capacity_sigmas=4.0, gcn_rows="batch", gcn_edge_capacity="auto", encoder_tokens="all"))
    c.data = ml_collections.ConfigDict(dict(name="abxi/afk", cache=True))
    c.train = ml_collections.ConfigDict(dict(
        seed=2040, batch_size=256, num_epochs=100, num_steps=0, log_every=spe, eval_every=5 * spe,
        checkpoint_every=5 * spe, best_metric="all/mrr", best_mode="max",
        select_metrics=("X/mrr", "Y/mrr")))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=2048, num_negatives=999, negatives_seed=2040, exclude_history=False, full_ranking=True,
        nonoverlap_view=True, nonoverlap_keep="target_domain", valid_split="valid", test_split="test"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0,
        schedule="constant", warmup_steps=0))
    c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),), rules=()))
    return c
