"""RLBench (CoppeliaSim) adapter behind the `Env` protocol; RLBench is imported lazily.

Action mode: `MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete())`, whose action is
[x, y, z, qx, qy, qz, qw, gripper] with gripper > 0.5 meaning open. Observations use the 128x128
`front` camera and `misc['front_camera_intrinsics' / 'front_camera_extrinsics']`.

Orientation: our Euler angles are relative to `neutral_quat`, the gripper pointing straight down
(R_rel = R_actual @ R_neutral^T, see `twostage_jax.envs.base`). The default (0, 1, 0, 0) in
RLBench's (x, y, z, w) order is a half turn about the world y axis: the Panda's tool z axis points
to world -z (down), its x axis to world -x. RLBench's scripted demos approach objects with the
gripper near this orientation plus a task-dependent yaw, which then shows up as (0, 0, yaw).

Planning failures (`InvalidActionError`, `IKError`, `ConfigurationPathError`) end the episode as a
failure (reward 0, done, info['planning_error']) instead of raising.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from twostage_jax import _checks
from twostage_jax.actions import action_to_pose, pose_to_action
from twostage_jax.envs.base import Observation, check_action
from twostage_jax.geometry import euler_to_quat
from twostage_jax.types import Camera, Workspace

DEFAULT_NEUTRAL_QUAT = (0.0, 1.0, 0.0, 0.0)
"""RLBench gripper pointing down, (x, y, z, w)."""

RLBENCH_WORKSPACE_LOW = (-0.3, -0.5, 0.75)
RLBENCH_WORKSPACE_HIGH = (0.7, 0.5, 1.75)
"""Position bounds in RLBench's world frame (metres; the table top is at z ~ 0.75), those of
ARM / C2F-ARM's scene bounds."""

_INSTALL_HELP = (
    "RLBench is not installed. It needs CoppeliaSim (download from "
    "https://www.coppeliarobotics.com/, set COPPELIASIM_ROOT, LD_LIBRARY_PATH and "
    "QT_QPA_PLATFORM_PLUGIN_PATH), then PyRep from https://github.com/stepjam/PyRep and RLBench "
    "from https://github.com/stepjam/RLBench, both installed from source with `pip install .`. "
    "Note: the `pyrep` package on PyPI is an unrelated project."
)


def _check_quat(name: str, quat: Any) -> np.ndarray:
    q = np.asarray(quat, np.float64)
    _checks.check_shape(name, q, (4,), "a quaternion (x, y, z, w)")
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"`{name}` must be a non-zero quaternion (x, y, z, w); got {q.tolist()}.")
    return q / norm


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (x, y, z, w) quaternions: rotation a after b."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def action_to_rlbench(action: Any, workspace: Workspace,
                      neutral_quat: Any = DEFAULT_NEUTRAL_QUAT) -> np.ndarray:
    """Our [7] action to RLBench's MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete()).

    Args:
      action: [7] normalised action (position, Euler / pi relative to neutral, gripper).
      workspace: position bounds.
      neutral_quat: [4] (x, y, z, w) neutral gripper orientation.

    Returns:
      [8] float64: x, y, z, qx, qy, qz, qw (w >= 0), gripper (1.0 open if action[6] >= 0 else 0.0).
    """
    act = check_action(action).astype(np.float32)
    neutral = _check_quat("neutral_quat", neutral_quat)
    pos, euler, g = action_to_pose(act, workspace)
    q_rel = np.asarray(euler_to_quat(np.asarray(euler, np.float32)), np.float64)
    q = _quat_mul(q_rel, neutral)
    q = q / np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return np.concatenate([np.asarray(pos, np.float64), q, [1.0 if float(g) >= 0 else 0.0]])


def rlbench_pose_to_ours(gripper_pose: Any, gripper_open: float, workspace: Workspace,
                         neutral_quat: Any = DEFAULT_NEUTRAL_QUAT) -> np.ndarray:
    """RLBench's `gripper_pose` ([7] xyz + quaternion xyzw) and `gripper_open` to our pose z.

    Args:
      gripper_pose: [7] or [T, 7] position and (x, y, z, w) quaternion.
      gripper_open: scalar or [T] RLBench gripper state (1.0 open, 0.0 closed).
      workspace: position bounds.
      neutral_quat: [4] neutral orientation.

    Returns:
      [7] or [T, 7] float32 pose(s) in action form (gripper +1 open, -1 closed).
    """
    gp = np.asarray(gripper_pose, np.float64)
    _checks.check_trailing("gripper_pose", gp, (7,), "xyz + quaternion (x, y, z, w)")
    pos, eulers = gripper_pose_to_euler(gp, neutral_quat)
    g = np.where(np.asarray(gripper_open, np.float64) > 0.5, 1.0, -1.0)
    return np.asarray(pose_to_action(pos, eulers, g, workspace), np.float32)


def gripper_pose_to_euler(gripper_pose: Any, neutral_quat: Any = DEFAULT_NEUTRAL_QUAT
                          ) -> tuple[np.ndarray, np.ndarray]:
    """[..., 7] RLBench gripper poses to (positions [..., 3], relative Euler angles [..., 3])."""
    gp = np.asarray(gripper_pose, np.float64)
    _checks.check_trailing("gripper_pose", gp, (7,), "xyz + quaternion (x, y, z, w)")
    neutral = Rotation.from_quat(_check_quat("neutral_quat", neutral_quat))
    rot = Rotation.from_quat(gp.reshape(-1, 7)[:, 3:])
    eulers = (rot * neutral.inv()).as_euler("xyz").reshape(gp.shape[:-1] + (3,))
    return gp[..., :3], eulers


def camera_from_misc(misc: Any, width: int, height: int, camera: str = "front") -> Camera:
    """The `Camera` of an RLBench observation's `misc` dict (intrinsics with negative focal lengths,
    camera-to-world extrinsics)."""
    keys = (f"{camera}_camera_intrinsics", f"{camera}_camera_extrinsics")
    if not isinstance(misc, dict) or any(k not in misc for k in keys):
        have = sorted(misc) if isinstance(misc, dict) else type(misc).__name__
        raise ValueError(f"RLBench observation `misc` must hold {list(keys)}; got {have}.")
    return Camera.from_rlbench(misc[keys[0]], misc[keys[1]], width, height)


class RLBenchEnv:
    """An RLBench task behind the `Env` protocol (requires CoppeliaSim, PyRep and RLBench).

    Args:
      task: RLBench task class name in snake case (e.g. "reach_target") or CamelCase.
      workspace: position bounds (default RLBENCH_WORKSPACE_*).
      image_size: square front-camera resolution.
      max_keyframes: actions per episode.
      neutral_quat: neutral gripper orientation (x, y, z, w).
      headless: run CoppeliaSim without a window.
    """

    def __init__(self, task: str, workspace: Workspace | None = None, image_size: int = 128,
                 max_keyframes: int = 20, neutral_quat: Any = DEFAULT_NEUTRAL_QUAT,
                 headless: bool = True) -> None:
        try:
            from rlbench.action_modes.action_mode import MoveArmThenGripper
            from rlbench.action_modes.arm_action_modes import EndEffectorPoseViaPlanning
            from rlbench.action_modes.gripper_action_modes import Discrete
            from rlbench.environment import Environment
            from rlbench.observation_config import ObservationConfig
            from rlbench.utils import name_to_task_class
        except ImportError as err:
            raise ImportError(_INSTALL_HELP) from err
        _checks.check_positive_int("image_size", image_size)
        _checks.check_positive_int("max_keyframes", max_keyframes)
        self._neutral = _check_quat("neutral_quat", neutral_quat)
        self._workspace = workspace or Workspace.create(RLBENCH_WORKSPACE_LOW, RLBENCH_WORKSPACE_HIGH)
        self._task_name = task
        self._size = image_size
        self._max_keyframes = max_keyframes
        obs_config = ObservationConfig()
        obs_config.set_all(False)
        obs_config.front_camera.rgb = True
        obs_config.front_camera.image_size = (image_size, image_size)
        obs_config.gripper_pose = True
        obs_config.gripper_open = True
        self._rlbench_env = Environment(
            action_mode=MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete()),
            obs_config=obs_config, headless=headless)
        self._rlbench_env.launch()
        snake = "".join("_" + c.lower() if c.isupper() else c for c in task).lstrip("_")
        self._task = self._rlbench_env.get_task(name_to_task_class(snake))
        self._camera: Camera | None = None
        self._steps = 0

    @property
    def task(self) -> str:
        return self._task_name

    @property
    def workspace(self) -> Workspace:
        return self._workspace

    @property
    def camera(self) -> Camera:
        if self._camera is None:
            raise RuntimeError("The RLBench camera is known after the first reset(seed).")
        return self._camera

    @property
    def max_keyframes(self) -> int:
        return self._max_keyframes

    def _convert(self, obs: Any) -> Observation:
        self._camera = camera_from_misc(obs.misc, self._size, self._size)
        pose = rlbench_pose_to_ours(obs.gripper_pose, obs.gripper_open, self._workspace,
                                    self._neutral)
        return Observation(image=np.asarray(obs.front_rgb, np.uint8), pose=pose,
                           camera=self._camera)

    def reset(self, seed: int) -> Observation:
        np.random.seed(int(seed))  # RLBench draws its layouts from numpy's global RNG
        _, obs = self._task.reset()
        self._steps = 0
        self._last = self._convert(obs)
        return self._last

    def step(self, action: Any) -> tuple[Observation, float, bool, dict[str, Any]]:
        from pyrep.errors import ConfigurationPathError, IKError
        from rlbench.backend.exceptions import InvalidActionError

        rl_action = action_to_rlbench(action, self._workspace, self._neutral)
        self._steps += 1
        try:
            obs, reward, terminate = self._task.step(rl_action)
        except (InvalidActionError, IKError, ConfigurationPathError) as err:
            return self._last, 0.0, True, {"success": False, "clipped": False,
                                           "planning_error": f"{type(err).__name__}: {err}"}
        self._last = self._convert(obs)
        success = reward > 0
        done = bool(success or terminate or self._steps >= self._max_keyframes)
        return self._last, 1.0 if success else 0.0, done, {
            "success": bool(success), "clipped": False, "planning_error": None}

    def close(self) -> None:
        self._rlbench_env.shutdown()
