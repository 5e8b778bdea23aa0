"""The launcher's foreign stage 1: a base policy of yours (`config.stage1.source`), not trained,
which stage 2 is calibrated to and corrects. A callable base(image, pose) acts in the evaluating
process; a `SimBasePolicy` acts beside the simulator, in each evaluation worker."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from twostage_jax.base_policy import BaseContext, SimBasePolicy, base_policy_actions, load_base_policy
from twostage_jax.data import rlbench_conventions
from twostage_jax.envs.with_base import BaseActingEnv, make_base_acting_env, replay_validation
from twostage_jax.launch.launch_config import LaunchConfig
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.eval_jobs import env_factory


def uses_base(config: LaunchConfig) -> bool:
    """Whether stage 1 is a base policy of the user's (`config.stage1.source`)."""
    return bool(config.stage1.source)


def context(config: LaunchConfig) -> BaseContext:
    """What the factory is told: the task, the simulator and the workspace."""
    if config.env == "metaworld":
        from twostage_jax.envs.metaworld import default_workspace  # lazy: imports MuJoCo
    else:
        default_workspace = rlbench_conventions.default_workspace
    return BaseContext(task=config.task, env=config.env, workspace=default_workspace())


def load(config: LaunchConfig) -> Any:
    """The base policy (a callable or a `SimBasePolicy`), built by its factory.

    Raises:
      PipelineError: the factory fails or builds no base policy (named).
    """
    try:
        return load_base_policy(config.stage1.source, context(config))
    except ValueError as e:
        raise PipelineError(f"config.stage1.source: {e}") from e


def acting_env_factory(config: LaunchConfig, env_fn: Callable[[], Any]) -> Callable[[], Any]:
    """A picklable env constructor whose observations carry the `SimBasePolicy`'s actions."""
    return functools.partial(make_base_acting_env, env_fn, config.stage1.source, context(config))


def validation_actions(config: LaunchConfig, workdir: Path, validation: Any
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(tentative [N, 7], target [N, 7]): the base policy's actions on the held-out demos (a
    `SimBasePolicy`'s along a replay of each from its layout) and the demos' own."""
    base = load(config)
    if not isinstance(base, SimBasePolicy):
        return base_policy_actions(base, validation), np.asarray(validation.action, np.float32)
    if config.env != "metaworld" or config.data.source != "sim":
        raise PipelineError(f"config.stage1.source {config.stage1.source} acts beside the simulator "
                            "(a SimBasePolicy), and calibrating stage 2 to it replays the held-out "
                            "demos from their layouts, which only MetaWorld's recorded demos have; "
                            "turn calibration off (--config.calibrate.sigma=False) or give a callable "
                            "base(image, pose).")
    try:
        seeds = json.loads((workdir / "demos" / "stats.json").read_text())["held_out_seeds"]
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(f"calibrating stage 2 to {config.stage1.source}, which acts in the "
                            "simulator, replays the held-out demos from their layouts, but "
                            f"{workdir / 'demos' / 'stats.json'} does not list them "
                            f"(held_out_seeds): re-record with --mode=demos --force ({e}).") from e
    env = BaseActingEnv(env_factory(config)(), base)
    try:
        return replay_validation(env, validation, [int(s) for s in seeds])
    finally:
        env.close()
