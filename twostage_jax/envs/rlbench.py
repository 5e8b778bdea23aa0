"""RLBench (CoppeliaSim) adapter behind the `Env` protocol; RLBench is imported lazily.

Action mode: `MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete())`, whose action is
[x, y, z, qx, qy, qz, qw, gripper] with gripper > 0.5 meaning open. Observations use the
`front` camera and `misc['front_camera_intrinsics' / 'front_camera_extrinsics']`.

The conventions (neutral gripper orientation, workspace bounds, camera, Euler conversion) live in
the simulator-free `twostage_jax.data.rlbench_conventions`, shared with the on-disk demo reader; the
names below are re-exported from there.

Planning failures (`InvalidActionError`, `IKError`, `ConfigurationPathError`) end the episode as a
failure (reward 0, done, info['planning_error']) instead of raising.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from twostage_jax import _checks
from twostage_jax.envs.base import Observation
from twostage_jax.data.rlbench_conventions import (
    NEUTRAL_QUAT,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    action_to_rlbench,
    camera_from_misc,
    check_quat,
    default_workspace,
    gripper_pose_to_euler,
    rlbench_pose_to_ours,
)
from twostage_jax.types import Camera, Workspace

DEFAULT_NEUTRAL_QUAT = NEUTRAL_QUAT
"""RLBench gripper pointing down, (x, y, z, w) (see `rlbench_conventions.NEUTRAL_QUAT`)."""

RLBENCH_WORKSPACE_LOW = WORKSPACE_LOW
RLBENCH_WORKSPACE_HIGH = WORKSPACE_HIGH
"""ARM's and PerAct's scene bounds (see `rlbench_conventions.SCENE_BOUNDS`)."""

INSTALL_HELP = (
    "RLBench is not installed. It needs CoppeliaSim (download from "
    "https://www.coppeliarobotics.com/, set COPPELIASIM_ROOT, LD_LIBRARY_PATH and "
    "QT_QPA_PLATFORM_PLUGIN_PATH), then PyRep from https://github.com/stepjam/PyRep and RLBench "
    "from https://github.com/stepjam/RLBench, both installed from source with `pip install .`. "
    "Note: the `pyrep` package on PyPI is an unrelated project."
)
_INSTALL_HELP = INSTALL_HELP

__all__ = ["RLBenchEnv", "rlbench_missing", "INSTALL_HELP", "DEFAULT_NEUTRAL_QUAT",
           "RLBENCH_WORKSPACE_LOW", "RLBENCH_WORKSPACE_HIGH", "action_to_rlbench",
           "camera_from_misc", "default_workspace", "gripper_pose_to_euler",
           "rlbench_pose_to_ours"]


def rlbench_missing() -> str | None:
    """None if RLBench and PyRep can be imported, else a one-line message saying what to install.

    Looks the packages up without importing them (importing PyRep loads CoppeliaSim).
    """
    missing = [m for m in ("rlbench", "pyrep") if importlib.util.find_spec(m) is None]
    return INSTALL_HELP if missing else None


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
        self._neutral = check_quat("neutral_quat", neutral_quat)
        self._workspace = workspace or default_workspace()
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
        """The front camera. RLBench reports it with each observation (`misc`), so before the
        first `reset` this resets the task once to read it; `cam_front` is fixed in RLBench's
        scene, so that camera holds for every episode. `reset(seed)` reseeds numpy's global RNG,
        so the extra reset does not change any episode's layout."""
        if self._camera is None:
            _, obs = self._task.reset()
            self._camera = camera_from_misc(obs.misc, self._size, self._size)
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
