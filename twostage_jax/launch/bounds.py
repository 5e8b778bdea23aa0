"""Sizes no machine holds, refused before any work: lower bounds of what a config allocates and
how long it runs, each naming the field that sets it.

The estimates are lower bounds, so only what cannot fit is refused: the training state of every
seed (parameters and Adam's two moments, from the networks' smallest layers), the bootstrap's
resamples, the recorded demos' keyframe images, the bookkeeping of every evaluation and
validation episode, and the time of the training steps, the demos and the episodes at rates
faster than any machine here reaches. Sizes within reach but too large for
this machine's memory are `train_stage.check_memory`'s, when the dataset is known; these read
the host's memory alone, before JAX starts (a device's, where it has less, is checked there).
"""

from __future__ import annotations

import math

import twostage_jax as tj
from twostage_jax._checks import available_memory, human_bytes
from twostage_jax.launch.launch_config import LaunchConfig

EPISODE_BYTES = 256
"""Bytes of host bookkeeping per episode, at least (its job and its outcome)."""
MIN_STEP_SECONDS = 1e-5
"""Seconds of one training step of one seed, at least (the tiniest networks on a GPU)."""
MIN_EPISODE_SECONDS = 1e-3
"""Seconds of one episode, at least (one simulator step and one policy call)."""
MAX_SECONDS = 365 * 24 * 3600.0
"""A run estimated to take longer than a year, at those rates, is refused."""


class BoundsError(ValueError):
    """A config whose lower-bound memory or time no machine holds; the message names the field."""


def parameter_lower_bound(network: tj.NetworkConfig, stage: int) -> int:
    """Parameters of one stage's policy network, at least: its convolutions (3x3), the pose MLP
    and the head's dense layers (the encoders' flattening layer, the largest, left out)."""
    channels = network.conv_channels if stage == 1 else network.crop_conv_channels
    convs = sum(9 * c_in * c_out for c_in, c_out in zip((3, *channels[:-1]), channels))
    head = (*network.head_hidden, tj.ACTION_DIM)
    return convs + tj.ACTION_DIM * network.mlp_hidden + sum(a * b for a, b in zip(head[:-1], head[1:]))


def _episodes(config: LaunchConfig) -> dict[str, int]:
    """Episodes each field drives: evaluation (both policies, the final checkpoints and every
    curve step) and checkpoint selection (every candidate of each selecting stage)."""
    seeds = int(config.num_seeds)
    out = {"config.eval.num_episodes": seeds * int(config.eval.num_episodes) * 2 * (1 + len(config.eval.curve_steps))}
    candidates = 0
    for stage in (1, 2):
        s = config.stage(stage)
        if s.select == "validation":
            candidates += len(s.select_steps) or max(1, int(s.num_steps) // int(config.train.checkpoint_every))
    if candidates:
        out["config.select.episodes"] = seeds * int(config.select.episodes) * candidates
    return out


def check_bounds(config: LaunchConfig) -> None:
    """Refuses a config whose lower-bound memory or time no machine holds.

    Raises:
      BoundsError: one line naming the field, the estimate and what is available.
    """
    found = available_memory(device=False)  # before any JAX work (a multi-process run's init)
    free, where = found if found is not None else (math.inf, "")
    seeds = int(config.num_seeds)
    for stage in (1, 2):
        s = config.stage(stage)
        params = parameter_lower_bound(s.network, stage)
        state = 3 * 4 * params * seeds  # float32 parameters and Adam's two moments
        if state > free:
            raise BoundsError(
                f"config.num_seeds ({seeds}) x the stage-{stage} networks (config.stage{stage}.network, at "
                f"least {params:,} parameters each) need at least {human_bytes(state)} for their training "
                f"state, but {human_bytes(free)} of {where} memory is available.")
        seconds = MIN_STEP_SECONDS * seeds * int(s.num_steps)
        if seconds > MAX_SECONDS:
            raise BoundsError(
                f"config.stage{stage}.num_steps ({s.num_steps}) x config.num_seeds ({seeds}) would train "
                f"for more than {seconds / 86400:,.0f} days even at {MIN_STEP_SECONDS:g} s a step.")
    # the bootstrap's resampled means (float64, per resample and seed, a few arrays at once)
    boot = 8 * 4 * int(config.eval.bootstrap_reps) * seeds
    if boot > free:
        raise BoundsError(f"config.eval.bootstrap_reps ({config.eval.bootstrap_reps}) x config.num_seeds "
                          f"({seeds}) need at least {human_bytes(boot)} for the intervals, but "
                          f"{human_bytes(free)} of {where} memory is available.")
    d = config.demos
    if config.data.source == "sim" and config.env == "metaworld":  # the demos are recorded
        frames = (int(d.num_demos) + int(d.num_held_out)) * int(d.max_keyframes)
        image = 3 * int(d.image_size) ** 2
        if frames * image > free:
            raise BoundsError(f"config.demos.num_demos ({d.num_demos}) x max_keyframes ({d.max_keyframes}) "
                              f"keyframe images of {d.image_size}x{d.image_size} need at least "
                              f"{human_bytes(frames * image)}, but {human_bytes(free)} of {where} memory "
                              "is available.")
        if frames * MIN_EPISODE_SECONDS > MAX_SECONDS:
            raise BoundsError(f"config.demos.num_demos ({d.num_demos}) x max_keyframes ({d.max_keyframes}) "
                              f"would record for more than {frames * MIN_EPISODE_SECONDS / 86400:,.0f} days.")
    episodes_by_field = _episodes(config)
    for field, episodes in episodes_by_field.items():
        if episodes * EPISODE_BYTES > free:
            raise BoundsError(
                f"{field} makes {episodes:,} episodes in all, whose bookkeeping alone needs at least "
                f"{human_bytes(episodes * EPISODE_BYTES)}, but {human_bytes(free)} of {where} memory is "
                "available.")
        if episodes * MIN_EPISODE_SECONDS > MAX_SECONDS:
            raise BoundsError(
                f"{field} makes {episodes:,} episodes in all: more than "
                f"{episodes * MIN_EPISODE_SECONDS / 86400:,.0f} days of rollouts even at "
                f"{MIN_EPISODE_SECONDS:g} s an episode.")
    keyframes = int(d.max_keyframes) * sum(episodes_by_field.values())
    if keyframes * MIN_EPISODE_SECONDS > MAX_SECONDS:
        raise BoundsError(f"config.demos.max_keyframes ({d.max_keyframes}) lets the evaluation and validation "
                          f"episodes run more than {keyframes * MIN_EPISODE_SECONDS / 86400:,.0f} days.")
