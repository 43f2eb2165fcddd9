"""CDSRNP on LLMCDSR's Food-Kitchen split (llmcdsr/food_kitchen; X = Food, Y = Kitchen), C2DSR hyperparameters.

    jaxrec train --config experiments/cdsrnp_food_kitchen.py --workdir runs/cdsrnp_food_kitchen
    jaxrec train --config experiments/cdsrnp_food_kitchen.py:tiny --workdir runs/cdsrnp_tiny   # seconds-long smoke
    # ablations: --config.model.use_np=false (C2DSR path, all users as plain sequences),
    #   --config.model.adapt=add --config.model.adapt_pool=last (no adaptive layer), --config.task.kl_weight=0 (no KL)

Spec ../shared/papers/cdsrnp.md (confidence low; every choice in jaxrec/models/cdsrnp.py's docstring). The C2DSR
part keeps the official C2DSR values (../shared/papers/c2dsr.md §6): d = 256, 2 blocks, 1 head, dropout 0.2,
T = 15, λ = 0.7, last 10 positions supervised, Adam(1e-3, β = (0.9, 0.98), eps 1e-8), no decay / clipping,
999 sampled negatives + full ranking, eval batch 2048.

NP part [R]: z of 64 dims, set encoder width 256, one z per episode, posterior over support ∪ query, FiLM +
z-attention pooling adapters, KL weight 1 per supervised slot (the per-slot negative ELBO). Episodes: 4 per step
of Nq = 64 query users (any user: the ``train`` split's 51,164 records = train_A Food-only + train_B
Kitchen-only + train_overlap) and Ns = 32 overlapped support users each -> train.batch_size = 256 queries per
step (as C2DSR's batch), 199 steps per engine epoch. Run length [R]: 20 epochs (3,980 steps), validation every
epoch; model selection on ``nonoverlap/all/mrr`` (the target group).

Metrics: ``X/..., Y/..., all/...`` = full valid/test histories (every eval user is overlapped: C2DSR's protocol);
``nonoverlap/X/...`` etc. = the same users with the other domain hidden from the history; ``.../full/...`` =
full ranking.
"""

import ml_collections

TRAIN_RECORDS = 51164  # train_A + train_B + train_overlap of llmcdsr/food_kitchen


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = arg == "tiny"
    if arg not in (None, "", "tiny"):
        raise ValueError(f"cdsrnp_food_kitchen: config argument must be empty or 'tiny', got {arg!r}")
    nq, ns, episodes = (8, 4, 2) if tiny else (64, 32, 4)
    batch = nq * episodes
    spe = TRAIN_RECORDS // batch
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="cdsrnp", embed_dim=16 if tiny else 256, num_blocks=1 if tiny else 2, num_heads=1, max_len=15,
        dropout_rate=0.2, gnn_layers=1, use_graph=True, key_padding_mask=False, layer_norm_eps=1e-8,
        dropout_impl="hash",
        use_np=True, latent_dim=8 if tiny else 64, set_hidden_dim=16 if tiny else 256, latent_scope="episode",
        posterior="support_query", set_input="single", set_targets=True, adapt="film", adapt_pool="attention"))
    c.task = ml_collections.ConfigDict(dict(
        name="cdsrnp", lambda_=0.7, loss_positions=10, corrupt_seed=2040, y_final_strict=True,
        query_size=nq, support_size=ns, exclude_query=True, episode_seed=0, support_loss_weight=0.0,
        kl_weight=1.0, kl_normalise="slots", head_slots="masked", head_capacity_sigmas=4.0,
        gcn_rows="batch", gcn_edge_capacity="auto", encoder_tokens="all",
        overlap_ratio=1.0, overlap_seed=0))
    c.data = ml_collections.ConfigDict(dict(name="llmcdsr/food_kitchen", cache=True))
    steps = 4 if tiny else 20 * spe
    c.train = ml_collections.ConfigDict(dict(
        seed=2040, batch_size=batch, num_epochs=0, num_steps=steps, log_every=2 if tiny else 50,
        eval_every=steps if tiny else spe, checkpoint_every=steps if tiny else spe,
        best_metric="nonoverlap/all/mrr", best_mode="max",
        select_metrics=("X/mrr", "Y/mrr", "nonoverlap/X/mrr", "nonoverlap/Y/mrr")))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=256 if tiny else 2048, num_negatives=999, negatives_seed=2040, exclude_history=False,
        full_ranking=True, nonoverlap_keep="target_domain", support_size=ns, support_seed=2040,
        valid_split="valid", test_split="test"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0,
        schedule="constant", warmup_steps=0))
    c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),), rules=()))
    return c
