"""Smoke test: the whole pipeline in about a minute (tiny networks, few steps and episodes).

Not for results: it checks that demos -> stage 1 -> stage 2 -> evaluation run end to end.
"""

from twostage_jax.launch.launch_config import LaunchConfig, apply_variants, replace_path

TINY = {"conv_channels": (4, 4, 4, 4), "crop_conv_channels": (4, 4, 4), "mlp_hidden": 8,
        "head_hidden": (16, 16)}


def get_config(arg: str | None = None) -> LaunchConfig:
    c = replace_path(LaunchConfig(), {
        "task": "reach-v3", "num_seeds": 2,
        "demos.num_demos": 3, "demos.max_keyframes": 4, "demos.num_held_out": 2,
        "stage1.image_size": 32, "stage1.batch_size": 8, "stage1.num_steps": 8,
        "stage2.batch_size": 8, "stage2.num_steps": 8,
        "stage2.stage2.crop_size": 16, "stage2.stage2.ee_crop_size": 8,
        **{f"stage{i}.network.{k}": v for i in (1, 2) for k, v in TINY.items()},
        "train.log_every": 2, "train.checkpoint_every": 4,
        "eval.num_episodes": 2, "eval.bootstrap_reps": 200})
    return apply_variants(c, arg)
