"""SASRec baselines on C2DSR's Food-Kitchen data and evaluation (llmcdsr/food_kitchen; X = Food, Y = Kitchen).

    jaxrec train --config experiments/sasrec_cdsr_food_kitchen.py:mixed --workdir runs/sasrec_cdsr_fk_mixed
    jaxrec train --config experiments/sasrec_cdsr_food_kitchen.py:x --workdir runs/sasrec_cdsr_fk_x
    jaxrec train --config experiments/sasrec_cdsr_food_kitchen.py:y --workdir runs/sasrec_cdsr_fk_y
    jaxrec train --config experiments/sasrec_cdsr_food_kitchen.py:x,afk --workdir runs/sasrec_afk_x   # ABXI's afk

Task ``cdsr_sasrec`` (jaxrec/models/cdsr_baselines.py): ``mixed`` = one SASRec over the mixed sequence scoring
the target domain's items; ``x`` / ``y`` = single-domain SASRec on the domain's own subsequence, evaluated on
that domain's targets only. The same training lines (C2DSR's kept lines: 29 steps of 256 per epoch), the same
d = 256, 2 blocks, 1 head, dropout 0.2, T = 15 (at most 14 inputs), batch 256, Adam(1e-3, β = (0.9, 0.98)),
100 epochs with validation every 5, and exactly C2DSR's evaluation (same eval batches, the same 999 fixed
negatives + full ranking, metrics ``X/...``, ``Y/...``, ``all/...``) as experiments/c2dsr_food_kitchen.py.
Key-padding mask off, as C2DSR's (official SASRec-pytorch) encoder. Loss: full softmax over the mode's
vocabulary at every position with a target (``--config.task.loss=sampled_softmax`` for a cheaper run).

``,afk`` swaps the data for ABXI's Food-Kitchen (``abxi/afk``, leave-last-out) with everything else as
experiments/c2dsr_afk.py at T = 15 (6,909 kept lines: 27 steps per epoch).
"""

import ml_collections

KEPT_LINES_T15 = {"llmcdsr/food_kitchen": 7354,  # C2DSR's kept lines at T = 15 (experiments/c2dsr_food_kitchen.py)
                  "abxi/afk": 6909}  # experiments/c2dsr_afk.py


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [a.strip() for a in (arg or "mixed").split(",") if a.strip()]
    mode, extra = parts[0], parts[1:]
    if mode not in ("mixed", "x", "y") or extra not in ([], ["afk"]):
        raise ValueError(f"sasrec_cdsr_food_kitchen: config argument must be mixed, x or y, optionally followed "
                         f"by ',afk', got {arg!r}")
    data = "abxi/afk" if extra else "llmcdsr/food_kitchen"
    spe = -(-KEPT_LINES_T15[data] // 256)  # steps per epoch (train_lines="kept")
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="sasrec", embed_dim=256, num_blocks=2, num_heads=1, max_len=15, dropout_rate=0.2,
        mask_keys_with_valid=False, layer_norm_eps=1e-8))
    c.task = ml_collections.ConfigDict(dict(
        name="cdsr_sasrec", mode=mode, train_lines="kept", loss="softmax", num_loss_negatives=512,
        y_final_strict=True, corrupt_seed=2040))
    c.data = ml_collections.ConfigDict(dict(name=data, cache=True))
    c.train = ml_collections.ConfigDict(dict(
        seed=2040, batch_size=256, num_epochs=100, num_steps=0, log_every=spe, eval_every=5 * spe,
        checkpoint_every=5 * spe, best_metric="all/mrr", best_mode="max",
        select_metrics={"mixed": ("X/mrr", "Y/mrr"), "x": ("X/mrr",), "y": ("Y/mrr",)}[mode]))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=2048, num_negatives=999, negatives_seed=2040, exclude_history=False, full_ranking=True,
        valid_split="valid", test_split="test"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0,
        schedule="constant", warmup_steps=0))
    c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),), rules=()))
    return c
