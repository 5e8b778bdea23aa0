"""Smoke test: the whole pipeline in about a minute (tiny networks, few steps and episodes).

Not for results: it checks that demos -> stage 1 -> stage 2 -> evaluation run end to end.
"""

from experiments.configs import base


def get_config(arg: str | None = None):
    c = base.base_config()
    c.task = "reach-v3"
    c.num_seeds = 2
    c.demos.num_demos = 3
    c.demos.max_keyframes = 4
    c.demos.num_validation = 2
    tiny = dict(conv_channels=(4, 4, 4, 4), crop_conv_channels=(4, 4, 4), mlp_hidden=8,
                head_hidden=(16, 16))
    c.stage1.image_size = 32
    c.stage1.batch_size = 8
    c.stage1.num_steps = 8
    c.stage1.network = base.network(**tiny)
    c.stage2.batch_size = 8
    c.stage2.num_steps = 8
    c.stage2.crop_size = 16
    c.stage2.ee_crop_size = 8
    c.stage2.network = base.network(**tiny)
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.eval.num_episodes = 2
    c.eval.bootstrap_reps = 200
    return base.apply_variants(c, arg)
