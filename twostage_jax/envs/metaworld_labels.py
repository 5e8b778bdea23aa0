"""The scripted expert's label of a state a policy reaches in closed loop, to measure its error.

Calibration measures stage 1's error open loop, on held-out demos' states. In closed loop a
policy reaches states no demo visits, and its errors there can be larger. `ExpertLabeler` labels
such a state as the demos label theirs: MetaWorld's scripted expert runs densely from a copy of
it, in a second simulator, and the first keyframe of that path (the recorder's rule,
`metaworld_demos.keyframe_actions`) is the action the demos would have taken there. For
measuring only: nothing trains on these labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twostage_jax.envs.metaworld_demos import DEFAULT_KEYFRAMES, _record_expert, keyframe_actions


class ExpertLabeler:
    """Labels the states of a `MetaWorldEnv` episode with the scripted expert's next keyframe.

    Args:
      task: a MetaWorld v3 task with a scripted expert.
      env_config: the episode env's `MetaWorldConfig` (default: the default one).
      max_steps: dense expert steps to look ahead for the next keyframe.
    """

    def __init__(self, task: str, env_config: Any = None, max_steps: int = 300) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        from twostage_jax.envs.metaworld import MetaWorldEnv

        if task not in ENV_POLICY_MAP:
            raise ValueError(f"`task` must be a MetaWorld v3 task with a scripted expert; got {task!r}.")
        self._env = MetaWorldEnv(task, env_config)
        self._expert = ENV_POLICY_MAP[task]()
        self.max_steps = int(max_steps)

    def begin(self, seed: int) -> None:
        """Starts labelling the episode of layout `seed` (the task's layout-dependent state)."""
        self._env.reset(seed)

    def label(self, env: Any) -> np.ndarray | None:
        """[7] the expert's next keyframe action from `env`'s current state, or None where its
        path holds none within `max_steps`. From rest, the recorder's stop rule can fire before
        the expert has moved; such a keyframe (within `min_distance` of the state, the gripper
        unchanged) is passed over, as the recorder's close-keyframe rule drops one near the
        keyframe before it. `env` itself is not changed."""
        mine, sim = self._env, self._env.sim
        mine.set_state(env.get_state())
        sim._prev_obs = None if env.sim._prev_obs is None else np.array(env.sim._prev_obs)
        sim.curr_path_length = env.sim.curr_path_length
        mine._gripper = env._gripper
        record = _record_expert(mine, self._expert, None, self.max_steps, extra_frames=0,
                                require_success=False)
        kf, actions = keyframe_actions(record, DEFAULT_KEYFRAMES, mine.workspace)
        start, grip = record["positions"][0], record["gripper_open"][0]
        for k, action in zip(kf, actions):  # the first that goes somewhere: a move or a grasp
            moved = np.linalg.norm(record["positions"][k] - start) > DEFAULT_KEYFRAMES.min_distance
            if moved or record["gripper_open"][k] != grip:
                return np.asarray(action, np.float32)
        return None

    def close(self) -> None:
        self._env.close()
