"""SASRec on the embedded KuaiRand-Pure click sequences (shipped in the package; CC BY-SA 4.0).

The Quickstart job: finishes in a few minutes on 2 CPU cores.

    jaxrec train --config sasrec_embedded
    jaxrec train --config sasrec_embedded --config.train.num_epochs=2 --config.model.num_blocks=1
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="sasrec", embed_dim=64, num_blocks=2, num_heads=1, max_len=20, dropout_rate=0.2))
    c.task = ml_collections.ConfigDict(dict(name="seqrec", loss="softmax", num_loss_negatives=1))
    c.data = ml_collections.ConfigDict(dict(name="kuairand_embedded"))
    c.train = ml_collections.ConfigDict(dict(
        seed=0, batch_size=128, num_epochs=10, num_steps=0, log_every=20, eval_every=0, checkpoint_every=0,
        best_metric="full/ndcg@10", best_mode="max"))
    c.eval = ml_collections.ConfigDict(dict(
        batch_size=256, num_negatives=100, negatives_seed=12345, exclude_history=True, history_len=200, ties="half",
        valid_split="valid", test_split="test"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, b1=0.9, b2=0.98, weight_decay=0.0, grad_clip_norm=0.0,
        schedule="constant", warmup_steps=0))
    c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),), rules=()))
    if arg == "tiny":  # seconds-long run for tests and smoke checks
        c.model.embed_dim, c.model.num_blocks, c.model.max_len = 16, 1, 20
        c.train.num_epochs, c.train.batch_size, c.eval.batch_size = 1, 64, 128
    return c
