"""A base policy that is not ours, to show the correction on MetaWorld: the scripted expert made
imprecise the way a real controller is.

`ImpreciseExpert` is a `SimBasePolicy` (`twostage_jax.base_policy`). When an episode starts it
runs MetaWorld's scripted expert from the layout and keeps its keyframe poses, by the demo
recorder's rule (`metaworld_demos.keyframe_actions`). The expert reads the simulator's state
(object and goal positions): it is PRIVILEGED, and stands in for a policy trained elsewhere
whose inputs this library does not have. At keyframe step t it proposes keyframe t's pose with
its position moved by a fixed offset (like a miscalibrated camera) plus Gaussian noise drawn
afresh at every step (seeded by the layout, so an episode does not depend on the number of
evaluation workers). It plans once per episode and does not re-plan. Stage 2, which corrects
it, sees only the camera image, the end-effector pose and this proposed action.

The launcher builds it from `--config.stage1.source=twostage_jax.envs.metaworld_expert:imprecise_expert`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from twostage_jax.base_policy import BaseContext

DEFAULT_OFFSET_M = (0.02, -0.02, 0.0)
"""The fixed error of the proposed positions, metres (x, y, z in the world frame)."""
DEFAULT_NOISE_M = 0.005
"""The std of the per-step position noise, metres, per axis."""


class ImpreciseExpert:
    """MetaWorld's scripted expert, planned per layout, with a position offset and noise.

    Args:
      task: a MetaWorld v3 task with a scripted expert.
      offset_m: [3] fixed position error, metres.
      noise_m: std of the per-step position noise, metres.
      max_expert_steps: MetaWorld steps the planning expert may take.
      salt: mixed into each layout's noise seed (another salt: other noise draws).
    """

    def __init__(self, task: str, offset_m: Sequence[float] = DEFAULT_OFFSET_M,
                 noise_m: float = DEFAULT_NOISE_M, max_expert_steps: int = 500, salt: int = 0) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            raise ValueError(f"`task` must be a MetaWorld v3 task with a scripted expert; got {task!r}.")
        offset = np.asarray(offset_m, np.float64)
        if offset.shape != (3,) or not np.all(np.isfinite(offset)):
            raise ValueError(f"`offset_m` must be 3 finite numbers (metres); got {offset_m!r}.")
        if not (np.isfinite(noise_m) and noise_m >= 0):
            raise ValueError(f"`noise_m` must be a finite number >= 0 (metres); got {noise_m!r}.")
        self.task, self.offset_m, self.noise_m = task, offset, float(noise_m)
        self.max_expert_steps, self.salt = int(max_expert_steps), int(salt)
        self._expert = ENV_POLICY_MAP[task]()
        self._plan = np.zeros((0, 7), np.float32)
        self._rng = np.random.default_rng(0)
        self._t = 0

    def reset(self, env: Any, seed: int) -> None:
        """Plans the episode of layout `seed`: the expert's keyframe actions (the env is reset
        and stepped densely; the caller resets it again for the episode)."""
        from twostage_jax.envs.metaworld_demos import DEFAULT_KEYFRAMES, _record_expert, keyframe_actions

        record = _record_expert(env, self._expert, int(seed), self.max_expert_steps, extra_frames=10,
                                require_success=False)
        _, self._plan = keyframe_actions(record, DEFAULT_KEYFRAMES, env.workspace)
        self._rng = np.random.default_rng([self.salt, int(seed)])
        self._t = 0

    def act(self, env: Any, observation: Any) -> np.ndarray:
        """The next planned keyframe (the last one once the plan is used up; the current pose
        if the expert found none), its position offset and noised, in [-1, 1]."""
        if not len(self._plan):
            return np.asarray(observation.pose, np.float32)
        action = self._plan[min(self._t, len(self._plan) - 1)].astype(np.float64)
        self._t += 1
        ws = env.workspace
        scale = 2.0 / (np.asarray(ws.high, np.float64) - np.asarray(ws.low, np.float64))
        error = self.offset_m + self.noise_m * self._rng.standard_normal(3)
        action[:3] = action[:3] + scale * error
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def imprecise_expert(context: BaseContext) -> ImpreciseExpert:
    """The launcher's factory (`--config.stage1.source=twostage_jax.envs.metaworld_expert:imprecise_expert`):
    `ImpreciseExpert` with the default offset and noise."""
    if context.env != "metaworld":
        raise ValueError(f"imprecise_expert plans with MetaWorld's scripted experts; got env {context.env!r}.")
    return ImpreciseExpert(context.task)
