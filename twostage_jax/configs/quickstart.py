"""Quickstart: one MetaWorld task, CPU-sized, demos + both stages + evaluation in minutes.

The task is push-v3, where a BC stage 1 trained this briefly is imprecise (it lands a median
~3.4 cm from the demonstrated target on held-out states), which is the situation the correction
stage is for. Reduced from the paper: 30 demos (+ 10 held-out demos that calibrate
stage 2); stage 1 sees the 128x128 frames downscaled to 64x64; 16-channel convolutions; batch 32;
2 seeds; 20 evaluation episodes per seed. Stage 2 crops the full-resolution frames as in the
paper (64x64 for BC, 32x32 for CQL, and 16x16 around the end-effector) and uses the library's
default method (whitened loss, sigma calibrated to stage 1); `:paper` runs the paper's method.

Usage: --config=quickstart[:bc|cql[,correction|direct][,mc|td][,paper]]
(the launcher's default config).
"""

from twostage_jax.launch.launch_config import LaunchConfig, apply_variants, replace_path

SMALL = {"conv_channels": (16, 16, 16, 16), "crop_conv_channels": (16, 16, 16), "mlp_hidden": 32,
         "head_hidden": (128, 128)}


def get_config(arg: str | None = None) -> LaunchConfig:
    c = replace_path(LaunchConfig(), {
        "task": "push-v3", "num_seeds": 2, "demos.num_demos": 30,
        "stage1.image_size": 64, "stage1.batch_size": 32, "stage1.num_steps": 3000,
        "stage1.learning_rate": 1e-3,
        "stage2.batch_size": 32, "stage2.num_steps": 3000, "stage2.learning_rate": 1e-3,
        **{f"stage{i}.network.{k}": v for i in (1, 2) for k, v in SMALL.items()},
        "train.log_every": 250, "train.checkpoint_every": 1000, "eval.num_episodes": 20})
    return apply_variants(c, arg)
