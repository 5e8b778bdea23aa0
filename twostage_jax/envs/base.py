"""The environment protocol shared by every simulator adapter.

Rollout code talks to a simulator only through `Env`: `reset(seed)` and `step(action)`, both
returning an `Observation` that holds what the agent may see: the RGB image of one fixed camera,
its calibration, and the end-effector pose z. Privileged simulator state (object positions,
goals) never appears in an `Observation`.

Action and pose convention (both are [7] float32 vectors in [-1, 1]):
  * [0:3] the tool-centre-point position, normalised by the env's `Workspace`
    (`twostage_jax.actions.pose_to_action` / `action_to_pose`);
  * [3:6] extrinsic x-y-z Euler angles (scipy 'xyz', R = Rz Ry Rx) divided by pi, of the
    orientation RELATIVE TO THE HAND'S NEUTRAL ORIENTATION, expressed in the world frame:

        R_rel = R_actual @ R_neutral^T,

    where R_neutral is the simulator's default, downward-pointing gripper orientation. The
    default orientation is therefore Euler (0, 0, 0), far from the +-pi wrap, and a yaw of the
    gripper about the world vertical is (0, 0, yaw). `geometry.optical_axis_angle` relies on
    this: it measures the twist of R(euler) about the camera's optical axis;
  * [6] the gripper: >= 0 open, < 0 closed (poses report +1 open / -1 closed).

An action is the NEXT end-effector pose: the env moves the arm there (holding the gripper), then
actuates the gripper, in the spirit of RLBench's `MoveArmThenGripper(EndEffectorPoseViaPlanning(),
Discrete())`. Targets outside what the simulator can reach are clipped, never an error; `step`
reports that in `info['clipped']`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from twostage_jax.actions import check_action
from twostage_jax.types import Camera, Workspace


class Observation(NamedTuple):
    """What the agent observes at one keyframe step.

    Attributes:
      image: [H, W, 3] uint8 RGB image of the env's fixed camera.
      pose: [7] float32 end-effector pose z in the action's form (see module docstring).
      camera: the calibrated `Camera` the image was taken with (unbatched).
      tentative: [7] float32 action a base policy running beside the simulator proposes here
        (`twostage_jax.envs.with_base.BaseActingEnv`), or None. It is an input the policy is
        given, as a real robot's own controller would give it, not simulator state.
    """

    image: np.ndarray
    pose: np.ndarray
    camera: Camera
    tentative: np.ndarray | None = None


@runtime_checkable
class Env(Protocol):
    """A keyframe-level manipulation environment.

    Attributes:
      task: the task's name (e.g. "pick-place-v3").
      workspace: bounds that normalise positions in actions and poses.
      camera: the calibrated fixed camera of the observations.
      max_keyframes: number of `step` calls after which an episode ends.
    """

    @property
    def task(self) -> str: ...

    @property
    def workspace(self) -> Workspace: ...

    @property
    def camera(self) -> Camera: ...

    @property
    def max_keyframes(self) -> int: ...

    def reset(self, seed: int) -> Observation:
        """Starts an episode with a fresh layout drawn from `seed`; returns the first observation."""
        ...

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, dict[str, Any]]:
        """Moves to the [7] target pose `action`.

        Returns:
          (observation, reward, done, info): reward 1.0 on task success else 0.0; done on success,
          failure (e.g. a planning error) or after `max_keyframes` steps; info carries at least
          'success' (bool) and 'clipped' (bool: the target was clipped to what is reachable).
        """
        ...

    def close(self) -> None:
        """Releases renderers and simulator handles."""
        ...


__all__ = ["Env", "Observation", "check_action"]
