"""SASRec on the mixed Food-Kitchen sequences of LLMCDSR (llmcdsr/food_kitchen; needs ../shared/data).

Single model over both domains' items (36,298 items: food 1..8,661, kitchen 8,662..36,298); the validation and
test users are the LLMCDSR overlapped users (960 / 937 records). Sampled softmax with 512 shared uniform
negatives per step (the full 36k-way softmax at every position costs ~4x the encoder on 2 CPU cores).

    jaxrec train --config experiments/sasrec_food_kitchen.py --workdir runs/sasrec_fk_s0
    jaxrec train --config experiments/sasrec_food_kitchen.py --workdir runs/sasrec_fk_s1 --config.train.seed=1
"""

from jaxrec.configs.sasrec_embedded import get_config as _base


def get_config(arg=None):
    c = _base()
    c.data.name = "llmcdsr/food_kitchen"
    c.model.max_len = 30
    c.model.embed_dim = 64
    c.task.loss = "sampled_softmax"
    c.task.num_loss_negatives = 512
    c.train.batch_size = 256
    c.train.num_epochs = 30
    c.eval.batch_size = 256
    c.eval.history_len = 200
    return c
