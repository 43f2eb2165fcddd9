"""C2DSR on LLMCDSR's Food-Kitchen split (llmcdsr/food_kitchen; X = Food, Y = Kitchen), official hyperparameters.

    jaxrec train --config experiments/c2dsr_food_kitchen.py --workdir runs/c2dsr_food_kitchen
    # C2DSR's own Food-Kitchen files (train file missing upstream: c2dsr/food_kitchen_vt trains on 90 % of the
    # valid file's users, selects on the other 10 %, tests on the official test file):
    jaxrec train --config experiments/c2dsr_food_kitchen.py:c2dsr_vt --workdir runs/c2dsr_c2dsrfiles
    # ablations: --config.task.lambda_=1.0 (no infomax), --config.model.use_graph=false (no GNN)
    # per-domain model selection as the official code: train.select_metrics (results.json['selected'])

Spec ../shared/papers/c2dsr.md (§6): d = 256, 2 blocks, 1 head, dropout 0.2, T = 15 (Amazon), λ = 0.7, last 10
positions supervised, Adam(1e-3, β = (0.9, 0.98), eps 1e-8), no weight decay / clipping / lr decay, batch 256,
100 epochs, validation every 5 epochs, 999 sampled negatives (+ full ranking), eval batch 2048.

Epochs. The ``train`` split holds 51,164 records (train_A + train_B + train_overlap); the official skip rule
(no X or no Y target) keeps 7,354 of them at T = 15 (only overlapping users survive). The task's
``train_source`` hook (``task.drop_policy="kept"``) hands the engine only those records, padded to a multiple of
the batch size as the official loader pads its last batch, so an engine epoch is the official epoch:
ceil(7354 / 256) = 29 steps. 100 epochs; validation (and checkpoints) every 5 epochs = every 145 steps
(``train.eval_every`` counts steps).

Training speed (``benchmarks/bench_c2dsr.py`` measures each against the straightforward formulation):
``task.head_slots="masked"`` evaluates the four vocabulary heads only on the slots whose mask is set (same loss
and gradients as ``"all"``); ``task.gcn_rows="batch"`` computes the GCN only at the item rows the batch reaches
(same states as the whole tables; ``"all"`` = whole tables); ``model.dropout_impl="hash"`` draws every dropout
mask with the counter hash of :mod:`jaxrec.kernels.dropout` instead of threefry (same rate, different random
stream). Runs before 2026-11-29 used ``dropout_impl="threefry"`` and ``gcn_rows="all"``; pass those to repeat
them exactly. ``--config.task.encoder_tokens=packed`` runs the encoders' position-wise work on the real tokens
only (same states; its dropout keys are drawn per encoder call, another random stream; off here so that the
runs in experiments/RESULTS.md repeat exactly).

Test-user groups: ``eval.nonoverlap_view`` also scores every user with the other domain hidden from the history
(CDSRNP's non-overlapped view, ``nonoverlap/X/...`` etc.; ``--config.eval.nonoverlap_view=false`` to skip it).

Per-domain metrics: ``X/mrr, X/ndcg@5, X/ndcg@10, X/hr@1, X/hr@5, X/hr@10`` (official 999-negative protocol),
``X/full/...`` (full ranking over the domain), the same for ``Y/``, and ``all/...``.
"""

import ml_collections

KEPT_LINES_T15 = 7354  # measured: C2DSRTask(...).num_kept on llmcdsr/food_kitchen with max_len = 15


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "c2dsr_vt"):
        raise ValueError(f"c2dsr_food_kitchen: config argument must be empty or 'c2dsr_vt', got {arg!r}")
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="c2dsr", embed_dim=256, num_blocks=2, num_heads=1, max_len=15, dropout_rate=0.2, gnn_layers=1,
        use_graph=True, key_padding_mask=False, layer_norm_eps=1e-8, dropout_impl="hash"))
    c.task = ml_collections.ConfigDict(dict(
        name="c2dsr", lambda_=0.7, loss_positions=10, corrupt_seed=2040, y_final_strict=True,
        drop_policy="kept", graph_lines="all", head_slots="masked", head_capacity="auto",
        head_capacity_sigmas=4.0, gcn_rows="batch", gcn_edge_capacity="auto", encoder_tokens="all"))
    c.data = ml_collections.ConfigDict(dict(name="llmcdsr/food_kitchen", cache=True))
    if arg == "c2dsr_vt":  # C2DSR's own files; every one of the 7,356 train lines is kept (measured): 29 steps too
        c.data.name = "c2dsr/food_kitchen_vt"
    spe = -(-KEPT_LINES_T15 // 256)  # official steps per epoch (= the engine's, drop_policy='kept')
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
