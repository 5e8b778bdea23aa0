"""RLBench (CoppeliaSim) adapter behind the `Env` protocol; RLBench is imported lazily.

Action mode: `MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete())`, whose action is
[x, y, z, qx, qy, qz, qw, gripper] with gripper > 0.5 meaning open. Observations hold the RGB
images of the cameras asked for (`RLBENCH_CAMERAS`; the front camera by default) and each camera's
calibration at that instant, `misc['{camera}_camera_intrinsics' / '{camera}_camera_extrinsics']`:
the wrist camera moves with the gripper, so its pose is read at every step. One camera gives
[H, W, 3] images and a single `Camera`, V cameras [V, H, W, 3] and intrinsics [V, 3, 3],
cam_to_world [V, 4, 4].

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
    RLBENCH_CAMERAS,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    action_to_rlbench,
    camera_from_misc,
    cameras_from_misc,
    check_cameras,
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

__all__ = ["RLBenchEnv", "rlbench_missing", "observation_from_rlbench", "INSTALL_HELP",
           "DEFAULT_NEUTRAL_QUAT", "RLBENCH_CAMERAS", "RLBENCH_WORKSPACE_LOW", "RLBENCH_WORKSPACE_HIGH",
           "action_to_rlbench", "camera_from_misc", "cameras_from_misc", "default_workspace",
           "gripper_pose_to_euler", "rlbench_pose_to_ours"]


def rlbench_missing() -> str | None:
    """None if RLBench and PyRep can be imported, else a one-line message saying what to install.

    Looks the packages up without importing them (importing PyRep loads CoppeliaSim).
    """
    missing = [m for m in ("rlbench", "pyrep") if importlib.util.find_spec(m) is None]
    return INSTALL_HELP if missing else None


def observation_from_rlbench(obs: Any, cameras: Any, image_size: int, workspace: Workspace,
                             neutral_quat: Any = DEFAULT_NEUTRAL_QUAT) -> Observation:
    """Our `Observation` of an RLBench `Observation` (no simulator needed: any object with its fields).

    Args:
      obs: an `rlbench.backend.observation.Observation`: `{camera}_rgb` [S, S, 3] for each
        camera, `misc` with each camera's intrinsics and extrinsics at that instant,
        `gripper_pose` [7] (xyz + quaternion xyzw) and `gripper_open`.
      cameras: RLBench camera names from `RLBENCH_CAMERAS`, in view order.
      image_size: S, the side of every camera's square image.
      workspace: position bounds of the pose.
      neutral_quat: [4] neutral gripper orientation (x, y, z, w).

    Returns:
      With one camera: image [S, S, 3] uint8 and a single `Camera`; with V cameras: image
      [V, S, S, 3] and a `Camera` with intrinsics [V, 3, 3], cam_to_world [V, 4, 4] (each
      camera where it is at this instant: the wrist camera moves with the gripper).

    Raises:
      ValueError: an unknown camera name, an image that is missing (the camera is not enabled in
        RLBench's `ObservationConfig`) or of another size, or `misc` lacking a camera's entries.
    """
    cameras = check_cameras(cameras)
    views = []
    for name in cameras:
        rgb = getattr(obs, f"{name}_rgb", None)
        if rgb is None:
            raise ValueError(f"the RLBench observation has no `{name}_rgb` image: enable the {name} "
                             f"camera's rgb in RLBench's ObservationConfig ({name}_camera.rgb = True).")
        img = np.asarray(rgb, np.uint8)  # RLBench's scene gives uint8 RGB (rlbench/backend/scene.py)
        if img.shape != (image_size, image_size, 3):
            raise ValueError(f"the RLBench observation's `{name}_rgb` has shape {img.shape}; expected "
                             f"({image_size}, {image_size}, 3) (image_size={image_size}).")
        views.append(img)
    camera = cameras_from_misc(obs.misc, image_size, image_size, cameras)
    pose = rlbench_pose_to_ours(obs.gripper_pose, obs.gripper_open, workspace, neutral_quat)
    image = views[0] if len(views) == 1 else np.stack(views)
    return Observation(image=image, pose=pose, camera=camera)


class RLBenchEnv:
    """An RLBench task behind the `Env` protocol (requires CoppeliaSim, PyRep and RLBench).

    Args:
      task: RLBench task class name in snake case (e.g. "reach_target") or CamelCase.
      workspace: position bounds (default RLBENCH_WORKSPACE_*).
      image_size: square resolution of every camera.
      max_keyframes: actions per episode.
      neutral_quat: neutral gripper orientation (x, y, z, w).
      headless: run CoppeliaSim without a window.
      cameras: the cameras each observation holds, in order, from `RLBENCH_CAMERAS` ("front",
        "left_shoulder", "right_shoulder", "overhead", "wrist"); each is enabled (rgb) in RLBench's
        `ObservationConfig`. One camera gives [H, W, 3] images, several [V, H, W, 3].
    """

    def __init__(self, task: str, workspace: Workspace | None = None, image_size: int = 128,
                 max_keyframes: int = 20, neutral_quat: Any = DEFAULT_NEUTRAL_QUAT,
                 headless: bool = True, cameras: Any = ("front",)) -> None:
        self._cameras = check_cameras(cameras, "RLBenchEnv.cameras")
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
        for name in self._cameras:
            camera_config = getattr(obs_config, f"{name}_camera")
            camera_config.rgb = True
            camera_config.image_size = (image_size, image_size)
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
    def cameras(self) -> tuple[str, ...]:
        """The RLBench cameras of the observations, in view order."""
        return self._cameras

    @property
    def camera(self) -> Camera:
        """The cameras of the latest observation: one `Camera`, or with several cameras
        intrinsics [V, 3, 3] and cam_to_world [V, 4, 4] (the wrist camera where it was then).
        RLBench reports them with each observation (`misc`), so before the first `reset` this
        resets the task once to read them; the front, shoulder and overhead cameras are fixed in
        RLBench's scene, so they hold for every episode. `reset(seed)` reseeds numpy's global
        RNG, so the extra reset does not change any episode's layout."""
        if self._camera is None:
            _, obs = self._task.reset()
            self._camera = cameras_from_misc(obs.misc, self._size, self._size, self._cameras)
        return self._camera

    @property
    def max_keyframes(self) -> int:
        return self._max_keyframes

    def _convert(self, obs: Any) -> Observation:
        out = observation_from_rlbench(obs, self._cameras, self._size, self._workspace, self._neutral)
        self._camera = out.camera
        return out

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
