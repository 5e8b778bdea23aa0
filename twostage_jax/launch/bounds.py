"""Sizes no machine holds, refused before any work: lower bounds of the memory (read from the
host, before JAX starts) and time a config needs, each naming the field that sets it."""

from __future__ import annotations

import math

import twostage_jax as tj
from twostage_jax._checks import available_memory, human_bytes
from twostage_jax.launch.launch_config import LaunchConfig

EPISODE_BYTES = 256  # host bookkeeping per episode (its job and its outcome), at least
MIN_STEP_SECONDS = 1e-5  # one training step of one seed (the tiniest networks on a GPU), at least
MIN_EPISODE_SECONDS = 1e-3  # one episode (one simulator step and one policy call), at least
MAX_SECONDS = 365 * 24 * 3600.0  # a run estimated to take longer, at those rates, is refused


class BoundsError(ValueError):
    """A config whose lower-bound memory or time no machine holds; the message names the field."""


def parameter_lower_bound(network: tj.NetworkConfig, stage: int) -> int:
    """Parameters of one stage's policy network, at least (the encoders' flattening layer left out)."""
    channels = network.conv_channels if stage == 1 else network.crop_conv_channels
    convs = sum(9 * c_in * c_out for c_in, c_out in zip((3, *channels[:-1]), channels))
    head = (*network.head_hidden, tj.ACTION_DIM)
    return convs + tj.ACTION_DIM * network.mlp_hidden + sum(a * b for a, b in zip(head[:-1], head[1:]))


def _episodes(config: LaunchConfig) -> dict[str, int]:
    """Episodes each field drives: evaluation, and checkpoint selection's candidates."""
    seeds = int(config.num_seeds)
    out = {"config.eval.num_episodes": seeds * int(config.eval.num_episodes) * 2 * (1 + len(config.eval.curve_steps))}
    candidates = sum(len(s.select_steps) or max(1, int(s.num_steps) // int(config.train.checkpoint_every))
                     for s in (config.stage(1), config.stage(2)) if s.select == "validation")
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
    available = f"but {human_bytes(free)} of {where} memory is available."
    seeds = int(config.num_seeds)
    for stage in (1, 2):
        s = config.stage(stage)
        params = parameter_lower_bound(s.network, stage)
        state = 3 * 4 * params * seeds  # float32 parameters and Adam's two moments
        if state > free:
            raise BoundsError(
                f"config.num_seeds ({seeds}) x the stage-{stage} networks (config.stage{stage}.network, at "
                f"least {params:,} parameters each) need at least {human_bytes(state)} for their training "
                f"state, {available}")
        seconds = MIN_STEP_SECONDS * seeds * int(s.num_steps)
        if seconds > MAX_SECONDS:
            raise BoundsError(
                f"config.stage{stage}.num_steps ({s.num_steps}) x config.num_seeds ({seeds}) would train "
                f"for more than {seconds / 86400:,.0f} days even at {MIN_STEP_SECONDS:g} s a step.")
    boot = 8 * 4 * int(config.eval.bootstrap_reps) * seeds  # float64 means, a few arrays at once
    if boot > free:
        raise BoundsError(f"config.eval.bootstrap_reps ({config.eval.bootstrap_reps}) x config.num_seeds "
                          f"({seeds}) need at least {human_bytes(boot)} for the intervals, {available}")
    d = config.demos
    if config.data.source == "sim" and config.env == "metaworld":  # the demos are recorded
        frames = (int(d.num_demos) + int(d.num_held_out)) * int(d.max_keyframes)
        what = f"config.demos.num_demos ({d.num_demos}) x max_keyframes ({d.max_keyframes})"
        if frames * 3 * int(d.image_size) ** 2 > free:
            raise BoundsError(f"{what} keyframe images of {d.image_size}x{d.image_size} need at least "
                              f"{human_bytes(frames * 3 * int(d.image_size) ** 2)}, {available}")
        if frames * MIN_EPISODE_SECONDS > MAX_SECONDS:
            raise BoundsError(f"{what} would record for more than "
                              f"{frames * MIN_EPISODE_SECONDS / 86400:,.0f} days.")
    episodes_by_field = _episodes(config)
    for field, episodes in episodes_by_field.items():
        if episodes * EPISODE_BYTES > free:
            raise BoundsError(f"{field} makes {episodes:,} episodes in all, whose bookkeeping alone needs "
                              f"at least {human_bytes(episodes * EPISODE_BYTES)}, {available}")
        if episodes * MIN_EPISODE_SECONDS > MAX_SECONDS:
            raise BoundsError(f"{field} makes {episodes:,} episodes in all: more than "
                              f"{episodes * MIN_EPISODE_SECONDS / 86400:,.0f} days of rollouts even at "
                              f"{MIN_EPISODE_SECONDS:g} s an episode.")
    keyframes = int(d.max_keyframes) * sum(episodes_by_field.values())
    if keyframes * MIN_EPISODE_SECONDS > MAX_SECONDS:
        raise BoundsError(f"config.demos.max_keyframes ({d.max_keyframes}) lets the evaluation and validation "
                          f"episodes run more than {keyframes * MIN_EPISODE_SECONDS / 86400:,.0f} days.")
