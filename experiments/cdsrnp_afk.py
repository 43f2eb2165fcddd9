"""CDSRNP on ABXI's Food-Kitchen data (abxi/afk; leave-last-out per user; X = Food, Y = Kitchen), with the
overlapped-user-ratio sweep of the spec (../shared/papers/cdsrnp.md §4.1).

    jaxrec train --config experiments/cdsrnp_afk.py --workdir runs/cdsrnp_afk_t15          # T = 15, ρ = 1
    jaxrec train --config experiments/cdsrnp_afk.py:15,0.25 --workdir runs/cdsrnp_afk_t15_r25   # ρ = 25%
    jaxrec train --config experiments/cdsrnp_afk.py:50 --workdir runs/cdsrnp_afk_t50        # T = 50
    jaxrec train --config experiments/cdsrnp_afk.py:tiny --workdir runs/cdsrnp_afk_tiny     # smoke
    # the matching C2DSR run: experiments/c2dsr_afk.py (it sees only overlapped users; for ρ < 1 compare with
    #   --config.model.use_np=false here, which trains the C2DSR path on the same ρ-modified users)

Argument ``T[,ρ]``: T ∈ {15, 50} (C2DSR's Amazon length / ABXI's), ρ ∈ (0, 1] the fraction of training users that
keep both domains (the others lose one domain, chosen at random per user; ``task.overlap_ratio``); the
valid/test histories stay complete (their non-overlapped view hides the other domain).

C2DSR hyperparameters (d = 256, 2 blocks, 1 head, dropout 0.2, λ = 0.7, last 10 positions, Adam(1e-3,
β = (0.9, 0.98)), 999 negatives + full ranking) and CDSRNP's [R] defaults (see cdsrnp_food_kitchen.py). 7,144
training users; 4 episodes × 64 queries = 256 per step -> 27 steps per epoch; 100 epochs (2,700 steps, as
C2DSR's 100 official epochs), validation every 5 epochs.
"""

import ml_collections

TRAIN_RECORDS = 7144


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tiny = arg == "tiny"
    max_len, ratio = 15, 1.0
    if arg and not tiny:
        parts = str(arg).split(",")
        max_len = int(parts[0])
        ratio = float(parts[1]) if len(parts) > 1 else 1.0
    if max_len not in (15, 50) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"cdsrnp_afk: config argument must be 'T[,rho]' with T in (15, 50), 0 < rho <= 1, or "
                         f"'tiny'; got {arg!r}")
    nq, ns, episodes = (8, 4, 2) if tiny else (64, 32, 4)
    batch = nq * episodes
    spe = TRAIN_RECORDS // batch
    steps = 4 if tiny else 100 * spe
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="cdsrnp", embed_dim=16 if tiny else 256, num_blocks=1 if tiny else 2, num_heads=1, max_len=max_len,
        dropout_rate=0.2, gnn_layers=1, use_graph=True, key_padding_mask=False, layer_norm_eps=1e-8,
        dropout_impl="hash",
        use_np=True, latent_dim=8 if tiny else 64, set_hidden_dim=16 if tiny else 256, latent_scope="episode",
        posterior="support_query", set_input="single", set_targets=True, adapt="film", adapt_pool="attention"))
    c.task = ml_collections.ConfigDict(dict(
        name="cdsrnp", lambda_=0.7, loss_positions=10, corrupt_seed=2040, y_final_strict=True,
        query_size=nq, support_size=ns, exclude_query=True, episode_seed=0, support_loss_weight=0.0,
        kl_weight=1.0, kl_normalise="slots", head_slots="masked", head_capacity_sigmas=4.0,
        gcn_rows="batch", gcn_edge_capacity="auto", encoder_tokens="all",
        overlap_ratio=ratio, overlap_seed=0))
    c.data = ml_collections.ConfigDict(dict(name="abxi/afk", cache=True))
    c.train = ml_collections.ConfigDict(dict(
        seed=2040, batch_size=batch, num_epochs=0, num_steps=steps, log_every=2 if tiny else spe,
        eval_every=steps if tiny else 5 * spe, checkpoint_every=steps if tiny else 5 * spe,
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
