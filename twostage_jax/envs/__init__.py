"""Simulator adapters behind one keyframe-level `Env` protocol.

`Observation`, `Env` and `check_action` load without any simulator. The MetaWorld adapter
(`MetaWorldEnv`, `MetaWorldConfig`, `DEFAULT_TASKS`, `make_env`) imports MuJoCo on first use, and
so does its scripted-expert recorder when called (`record_demos`, `replay_keyframes`, `DemoStats`, in
`twostage_jax.envs.metaworld_demos`), and so does `metaworld_labels.ExpertLabeler`, which labels
a state a policy reaches with the scripted expert's next keyframe, to measure closed-loop error.
The RLBench adapter lives in `twostage_jax.envs.rlbench` and
imports RLBench only when an env is made; RLBench's conventions
(`twostage_jax.data.rlbench_conventions`) need no simulator at all.
"""

from __future__ import annotations

from typing import Any

from twostage_jax.envs.base import Env, Observation, check_action

_METAWORLD_NAMES = ("MetaWorldEnv", "MetaWorldConfig", "DEFAULT_TASKS", "default_workspace",
                    "task_names")
_RECORDER_NAMES = ("record_demos", "replay_keyframes", "DemoStats")


def make_env(task: str, **kwargs: Any) -> Env:
    """Builds the MetaWorld env of `task` (keyword arguments go to `MetaWorldConfig`)."""
    from twostage_jax.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    return MetaWorldEnv(task, MetaWorldConfig(**kwargs))


def __getattr__(name: str) -> Any:
    if name in _METAWORLD_NAMES:
        from twostage_jax.envs import metaworld

        return getattr(metaworld, name)
    if name in _RECORDER_NAMES:
        from twostage_jax.envs import metaworld_demos

        return getattr(metaworld_demos, name)
    raise AttributeError(f"module 'twostage_jax.envs' has no attribute {name!r}")


__all__ = ["Env", "Observation", "check_action", "make_env", *_METAWORLD_NAMES, *_RECORDER_NAMES]
