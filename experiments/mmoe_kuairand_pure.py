"""MMoE (Ma et al., KDD 2018) on KuaiRand-Pure feedback labels: 9 ReLU experts 736 -> 256 -> 256 on the shared input,
one softmax gate per task; the expert budget of HoME (2,290,176 expert parameters, 3,554,102 in all).

Data: ``kuairand_pure`` (../shared/data/kuairand_pure; CC BY-SA 4.0): 222,869 standard-policy impressions of
2022-04-25..05-08 split by date -- train 04-25..05-04 (167,281), valid 05-05..05-06 (26,683), test 05-07..05-08
(28,905). Seven binary tasks in two categories: watch-time {is_click, long_view}, interaction {is_like,
is_follow, is_comment, is_forward, is_profile_enter}. Inputs: user/video ids, tab, hour, 30 user and 10 video
features, video tags, and target attention over the user's last 20 train-period clicks strictly before the
impression (``jaxrec.data.multitask_transforms``). Metrics on valid/test: ``auc/<task>``, ``gauc/<task>``
(per-user, impression-weighted, single-class users skipped), ``gauc/mean`` (model selection), ``gauc/mean_watch``,
``gauc/mean_interact``, and the expert/gate diagnostics ``diag/...`` (see ``jaxrec.models.multitask``).
Batch 2,048, Adam 1e-3, 4 shuffled epochs (the engine shuffles; the spec's one time-ordered epoch is not
reproduced), best epoch by validation ``gauc/mean``, then test.

Run (seeds 0, 1, 2 for mean ± std):

    jaxrec train --config experiments/mmoe_kuairand_pure.py --workdir runs/mmoe_kuairand_pure_s0
    jaxrec train --config experiments/mmoe_kuairand_pure.py --workdir runs/mmoe_kuairand_pure_s1 --config.train.seed=1

Variants (``get_config(arg)``; comma-separated args compose; give each its own --workdir):

    --config experiments/mmoe_kuairand_pure.py:bn_swish   # "MMoE + BN + Swish" (HoME's expert fix alone)
    --config experiments/mmoe_kuairand_pure.py:stress     # deeper experts; add --config.optimizer.learning_rate=5e-3
    --config experiments/mmoe_kuairand_pure.py:tiny       # smoke run (20 steps, small widths)

Plot the task x expert gate usage of two runs: ``python experiments/plot_expert_usage.py
runs/mmoe_kuairand_pure_s0 runs/home_kuairand_pure_s0 --out usage.png``.
"""

from jaxrec.models.multitask import experiment_config


def get_config(arg: str | None = None):
    return experiment_config("mmoe", arg)
