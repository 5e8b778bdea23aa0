"""The paper's scale (Sec. V): 128x128 images, crops 64 (BC) / 32 (CQL) and 16, 300k BC /
200k CQL steps, batch 128, 5 seeds, 100 evaluation episodes per seed.

With the library's default stage-2 method; add the `paper` variant for the paper's exact method.

Usage: --config=experiments/configs/paper.py[:bc|cql[,correction|direct][,mc|td][,paper]]
"""

from experiments.configs import base


def get_config(arg: str | None = None):
    c = base.base_config()
    c.num_seeds = 5
    c.eval.num_episodes = 100
    c = base.apply_variants(c, arg)
    steps = 300_000 if c.algo == "bc" else 200_000
    c.stage1.num_steps = steps
    c.stage2.num_steps = steps
    c.train.log_every = 1000
    c.train.checkpoint_every = 10_000
    return c
