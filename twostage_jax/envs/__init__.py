"""Simulator adapters behind one keyframe-level `Env` protocol.

`Observation`, `Env` and `check_action` load without any simulator. The MetaWorld adapter
(`MetaWorldEnv`, `MetaWorldConfig`, `DEFAULT_TASKS`, `make_env`) imports MuJoCo on first use; the
RLBench adapter lives in `twostage_jax.envs.rlbench` and imports RLBench only when an env is made.
"""

from __future__ import annotations

from typing import Any

from twostage_jax.envs.base import Env, Observation, check_action

_METAWORLD_NAMES = ("MetaWorldEnv", "MetaWorldConfig", "DEFAULT_TASKS", "default_workspace",
                    "task_names")


def make_env(task: str, **kwargs: Any) -> Env:
    """Builds the MetaWorld env of `task` (keyword arguments go to `MetaWorldConfig`)."""
    from twostage_jax.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    return MetaWorldEnv(task, MetaWorldConfig(**kwargs))


def __getattr__(name: str) -> Any:
    if name in _METAWORLD_NAMES:
        from twostage_jax.envs import metaworld

        return getattr(metaworld, name)
    raise AttributeError(f"module 'twostage_jax.envs' has no attribute {name!r}")


__all__ = ["Env", "Observation", "check_action", "make_env", *_METAWORLD_NAMES]
