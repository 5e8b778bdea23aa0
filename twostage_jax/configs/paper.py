"""The paper's scale (Sec. V): 128x128 images, crops 64 (BC) / 32 (CQL) and 16, 300k BC /
200k CQL steps, batch 128, 5 seeds, 100 evaluation episodes per seed.

With the library's default stage-2 method; add the `paper` variant for the paper's exact method.

Usage: --config=paper[:bc|cql[,correction|direct][,mc|td][,paper]]
"""

from twostage_jax.launch.launch_config import LaunchConfig, apply_variants, replace_path


def get_config(arg: str | None = None) -> LaunchConfig:
    c = apply_variants(replace_path(LaunchConfig(), {"num_seeds": 5, "eval.num_episodes": 100}), arg)
    steps = 300_000 if c.algo == "bc" else 200_000
    return replace_path(c, {"stage1.num_steps": steps, "stage2.num_steps": steps,
                            "train.log_every": 1000, "train.checkpoint_every": 10_000})
