"""RLBench's conventions in one simulator-free module (no RLBench, PyRep or CoppeliaSim needed).

Both the on-disk demo reader (`twostage_jax.data.rlbench_io`) and the simulator adapter
(`twostage_jax.envs.rlbench`) import these, so demos and rollouts convert poses, actions and
cameras the same way. Each convention names the source it was checked against.

On-disk layout (rlbench/backend/const.py and tools/dataset_generator.py, stepjam/RLBench):
`ROOT/TASK/variation{V}/episodes/episode{K}/low_dim_obs.pkl` (`LOW_DIM_PICKLE`, a pickled
`rlbench.demo.Demo` whose `_observations` are `rlbench.backend.observation.Observation`s with
every image field set to None) and `.../episode{K}/{camera}_rgb/{i}.png` for each camera
(`FRONT_RGB_FOLDER = 'front_rgb'`, `WRIST_RGB_FOLDER = 'wrist_rgb'`, ...; `IMAGE_FORMAT =
'%d.png'`); `variation{V}/variation_descriptions.pkl` beside `episodes/`. The cameras are
`RLBENCH_CAMERAS`; each frame's `misc` holds every camera's calibration at that instant
(`CAMERA_MISC_KEYS`), so the wrist camera, which moves with the gripper, has its pose per frame.

Poses. `Observation.gripper_pose` is `np.array(tip.get_pose())` (rlbench/backend/scene.py,
`get_observation`), PyRep's [x, y, z, qx, qy, qz, qw] of the arm's tip, whose z axis is the
approach direction (NVlabs/M2T2 m2t2/rlbench_utils.py moves the gripper base back along the
tip's z column). `EndEffectorPoseViaPlanning` takes the same 7 numbers as its action.

Orientation as our Euler angles: extrinsic x-y-z (scipy 'xyz') of R_rel = R_tip @ R_neutral^T,
divided by pi (see `twostage_jax.envs.base`). ARM and PerAct instead take the absolute 'xyz'
Euler angles + 180 degrees and classify them in 5-degree bins (stepjam/ARM arm/utils.py and
peract/peract helpers/utils.py, `quaternion_to_discrete_euler`), which needs no neutral.

The yaw wrap. RLBench places a task base at any yaw in [-3.14, 3.14] unless the task narrows
it (`Task.base_rotation_bounds`, rlbench/backend/task.py), and the waypoints turn with the base,
so demo yaws cover the whole circle whatever the neutral: some keyframes sit just inside +pi and
others just inside -pi, and an MSE regressor (BC) averages them to yaw 0. We keep the paper's
Euler actions and leave the wrap where it is, because the Panda's parallel-jaw gripper looks the
same after a half turn about its approach axis: the average of yaw pi - d1 and -pi + d2 is
(d2 - d1) / 2, which is (d1 + d2) / 2 away from both demos modulo that half turn, the same error
as averaging two yaws d1 + d2 apart anywhere else on the circle. What the wrap does cost: the
planner has to turn the wrist by about pi to reach the averaged target (a planning failure ends
the episode), and the stage-2 crop turns by pi. `yaw_distance_mod_half_turn` measures errors the
way the gripper sees them. Folding yaws into [-pi/2, pi/2) would make it worse: the wrap would
then sit at +-pi/2, where averaging +89 and -89 degrees gives a grasp 89 degrees off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from twostage_jax import _checks
from twostage_jax.actions import action_to_pose, check_action, pose_to_action
from twostage_jax.types import Camera, Workspace

NEUTRAL_QUAT = (0.0, 1.0, 0.0, 0.0)
"""The neutral gripper orientation, (x, y, z, w): a half turn about the world y axis, so the tip's
z (approach) axis points to world -z, straight down at the table, and its x axis to world -x.

Checked: the tip's z axis is the approach axis (module docstring) and RLBench's table top is
horizontal (the workspace below), so this is "pointing down". Not checked against a recorded
demo (no demo pickle could be read here): which yaw RLBench's starting pose has about the
vertical. That yaw only decides where the +-pi wrap falls (see the module docstring); a
different neutral is a parameter of every conversion below."""

SCENE_BOUNDS = (-0.3, -0.5, 0.6, 0.7, 0.5, 1.6)
"""[x_min, y_min, z_min, x_max, y_max, z_max] metres in RLBench's world frame: ARM's
`depth_0bounds` default (stepjam/ARM arm/c2farm/launch_utils.py, `create_agent`) and PerAct's
`rlbench.scene_bounds` (peract/peract conf/config.yaml)."""

WORKSPACE_LOW = SCENE_BOUNDS[:3]
WORKSPACE_HIGH = SCENE_BOUNDS[3:]

RLBENCH_CAMERAS = ("front", "left_shoulder", "right_shoulder", "overhead", "wrist")
"""RLBench's cameras, by the name that prefixes `ObservationConfig`'s `{name}_camera`,
`Observation`'s `{name}_rgb`, the dataset generator's `{name}_rgb/` folders and the
`{name}_camera_*` entries of `Observation.misc` (rlbench/observation_config.py,
rlbench/backend/scene.py `_get_misc`, rlbench/backend/const.py). 'wrist' is mounted on the
gripper and moves with it; the others are fixed in the scene."""

CAMERA_MISC_KEYS = ("{camera}_camera_intrinsics", "{camera}_camera_extrinsics",
                    "{camera}_camera_near", "{camera}_camera_far")
"""Per-camera entries of `Observation.misc` (rlbench/backend/scene.py, `_get_misc`): 3x3
intrinsics with negative focal lengths (`VisionSensor.get_intrinsic_matrix`), the 4x4
camera-to-world pose (`get_matrix`), and the near / far clipping planes in metres."""


def default_workspace() -> Workspace:
    """RLBench's `Workspace`: `SCENE_BOUNDS` (ARM's and PerAct's)."""
    return Workspace.create(WORKSPACE_LOW, WORKSPACE_HIGH)


def check_quat(name: str, quat: Any) -> np.ndarray:
    """[4] (x, y, z, w) -> unit float64 quaternion; ValueError naming `name` if zero or not finite."""
    q = np.asarray(quat, np.float64)
    _checks.check_shape(name, q, (4,), "a quaternion (x, y, z, w)")
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"`{name}` must be a non-zero quaternion (x, y, z, w); got {q.tolist()}.")
    return q / norm


def gripper_pose_to_euler(gripper_pose: Any, neutral_quat: Any = NEUTRAL_QUAT
                          ) -> tuple[np.ndarray, np.ndarray]:
    """RLBench gripper poses to positions and Euler angles relative to the neutral orientation.

    Args:
      gripper_pose: [..., 7] xyz + quaternion (x, y, z, w).
      neutral_quat: [4] neutral orientation (x, y, z, w).

    Returns:
      (positions [..., 3], extrinsic 'xyz' Euler angles [..., 3] of R @ R_neutral^T in [-pi, pi]).
    """
    gp = np.asarray(gripper_pose, np.float64)
    _checks.check_trailing("gripper_pose", gp, (7,), "xyz + quaternion (x, y, z, w)")
    neutral = Rotation.from_quat(check_quat("neutral_quat", neutral_quat))
    rot = Rotation.from_quat(gp.reshape(-1, 7)[:, 3:])
    eulers = (rot * neutral.inv()).as_euler("xyz").reshape(gp.shape[:-1] + (3,))
    return gp[..., :3], eulers


def euler_to_gripper_quat(euler: Any, neutral_quat: Any = NEUTRAL_QUAT) -> np.ndarray:
    """Inverse of `gripper_pose_to_euler`'s orientation part: Euler angles to RLBench quaternions.

    Args:
      euler: [..., 3] extrinsic 'xyz' Euler angles relative to the neutral orientation.
      neutral_quat: [4] neutral orientation (x, y, z, w).

    Returns:
      [..., 4] float64 unit quaternions (x, y, z, w) with w >= 0.
    """
    e = np.asarray(euler, np.float64)
    _checks.check_trailing("euler", e, (3,), "Euler angles x, y, z (radians)")
    neutral = Rotation.from_quat(check_quat("neutral_quat", neutral_quat))
    q = (Rotation.from_euler("xyz", e.reshape(-1, 3)) * neutral).as_quat()
    q = np.where(q[:, 3:4] < 0, -q, q)
    return q.reshape(e.shape[:-1] + (4,))


def yaw_distance_mod_half_turn(yaw_a: Any, yaw_b: Any) -> np.ndarray:
    """|yaw_a - yaw_b| in radians modulo the gripper's half-turn symmetry, in [0, pi/2].

    Args:
      yaw_a, yaw_b: [...] yaws (radians) about the approach axis of a gripper pointing down.

    Returns:
      [...] how far apart the two grasps are.
    """
    d = np.mod(np.asarray(yaw_a, np.float64) - np.asarray(yaw_b, np.float64), np.pi)
    return np.minimum(d, np.pi - d)


def rlbench_pose_to_ours(gripper_pose: Any, gripper_open: Any, workspace: Workspace,
                         neutral_quat: Any = NEUTRAL_QUAT) -> np.ndarray:
    """RLBench's `gripper_pose` and `gripper_open` to our pose z.

    Args:
      gripper_pose: [7] or [T, 7] position and (x, y, z, w) quaternion.
      gripper_open: scalar or [T] RLBench gripper state (1.0 open, 0.0 closed).
      workspace: position bounds.
      neutral_quat: [4] neutral orientation.

    Returns:
      [7] or [T, 7] float32 pose(s) in action form (gripper +1 open, -1 closed).
    """
    pos, eulers = gripper_pose_to_euler(gripper_pose, neutral_quat)
    g = np.where(np.asarray(gripper_open, np.float64) > 0.5, 1.0, -1.0)
    return np.asarray(pose_to_action(pos, eulers, g, workspace), np.float32)


def action_to_rlbench(action: Any, workspace: Workspace,
                      neutral_quat: Any = NEUTRAL_QUAT) -> np.ndarray:
    """Our [7] action to RLBench's MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete()).

    Args:
      action: [7] normalised action (position, Euler / pi relative to neutral, gripper).
      workspace: position bounds.
      neutral_quat: [4] (x, y, z, w) neutral gripper orientation.

    Returns:
      [8] float64: x, y, z, qx, qy, qz, qw (w >= 0), gripper (1.0 open if action[6] >= 0 else 0.0;
      `Discrete` opens above 0.5).
    """
    act = check_action(action).astype(np.float32)
    pos, euler, g = action_to_pose(act, workspace)
    q = euler_to_gripper_quat(np.asarray(euler, np.float64), neutral_quat)
    return np.concatenate([np.asarray(pos, np.float64), q, [1.0 if float(g) >= 0 else 0.0]])


def check_cameras(cameras: Any, field: str = "cameras") -> tuple[str, ...]:
    """RLBench camera names as a tuple, or a ValueError naming `field` and the valid names.

    Args:
      cameras: a non-empty sequence of distinct names from `RLBENCH_CAMERAS`, in view order.
      field: what the message calls the argument (e.g. "RLBenchEnv.cameras").

    Returns:
      The names as a tuple.
    """
    return _checks.check_names(f"`{field}`", cameras, RLBENCH_CAMERAS, "RLBench camera names")


def camera_from_misc(misc: Any, width: int, height: int, camera: str = "front") -> Camera:
    """The `Camera` of an RLBench observation's `misc` dict (see `CAMERA_MISC_KEYS`).

    Args:
      misc: `Observation.misc`.
      width, height: the image size in pixels.
      camera: RLBench camera name, one of `RLBENCH_CAMERAS`.

    Returns:
      The camera (RLBench's negative focal lengths converted by `Camera.from_rlbench`):
      intrinsics [3, 3], cam_to_world [4, 4].

    Raises:
      ValueError: an unknown camera name, or `misc` lacks the camera's entries (both named).
    """
    check_cameras((camera,), "camera")
    keys = tuple(k.format(camera=camera) for k in CAMERA_MISC_KEYS[:2])
    if not isinstance(misc, dict) or any(k not in misc for k in keys):
        have = sorted(misc) if isinstance(misc, dict) else type(misc).__name__
        raise ValueError(f"RLBench observation `misc` must hold {list(keys)}; got {have}.")
    return Camera.from_rlbench(misc[keys[0]], misc[keys[1]], width, height)


def cameras_from_misc(misc: Any, width: int, height: int, cameras: Any = ("front",)) -> Camera:
    """The cameras of one RLBench observation, at that instant, from its `misc` dict.

    Args:
      misc: `Observation.misc`.
      width, height: the image size in pixels (the same for every camera).
      cameras: RLBench camera names from `RLBENCH_CAMERAS`, in view order.

    Returns:
      One camera: intrinsics [3, 3] and cam_to_world [4, 4]; V > 1 cameras: intrinsics
      [V, 3, 3] and cam_to_world [V, 4, 4], in the order of `cameras`.
    """
    cams = [camera_from_misc(misc, width, height, c) for c in check_cameras(cameras)]
    if len(cams) == 1:
        return cams[0]
    return Camera(intrinsics=np.stack([np.asarray(c.intrinsics) for c in cams]),
                  cam_to_world=np.stack([np.asarray(c.cam_to_world) for c in cams]),
                  width=int(width), height=int(height))
