"""Demonstrations: the simulator-free `Trajectory` type, its checks, and the frames a dataset
renders.

Recorders and readers produce `Trajectory`s: MetaWorld's scripted expert
(`twostage_jax.envs.metaworld_demos.record_demos`), RLBench's on-disk demos
(`twostage_jax.data.rlbench_io`) and LeRobot datasets (`twostage_jax.data.lerobot`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from twostage_jax import _checks
from twostage_jax.actions import pose_to_action
from twostage_jax.types import Camera, Workspace


class Trajectory(NamedTuple):
    """One dense demonstration with images on a subset of its frames.

    Attributes:
      positions: [T, 3] float64 end-effector (tool centre point) positions, metres.
      eulers: [T, 3] float64 Euler angles (radians, extrinsic xyz) of the orientation relative
        to the neutral one (see `twostage_jax.envs.base`).
      gripper_open: [T] float32, 1.0 open, 0.0 closed.
      velocities: [T, D] float velocities used by the stop rule (MetaWorld: tool-centre-point
        velocity in m/s; RLBench: joint velocities in rad/s).
      keyframes: [K] int32 increasing keyframe indices (never 0; the last is T - 1).
      image_frames: [M] int32 increasing indices of the frames that carry an image.
      images: [M, H, W, 3] uint8 images of `image_frames`, or [M, V, H, W, 3] from V cameras.
      camera: `Camera` with intrinsics [M, 3, 3] and cam_to_world [M, 4, 4], one per image
        ([M, V, 3, 3] and [M, V, 4, 4] with V cameras: a moving camera's pose per frame).
      task: task name.
      seed: layout seed (MetaWorld) or episode number (RLBench).
    """

    positions: np.ndarray
    eulers: np.ndarray
    gripper_open: np.ndarray
    velocities: np.ndarray
    keyframes: np.ndarray
    image_frames: np.ndarray
    images: np.ndarray
    camera: Camera
    task: str
    seed: int

    @property
    def num_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_views(self) -> int:
        """V, the cameras each image frame holds (1 for [M, H, W, 3] images)."""
        return int(self.images.shape[1]) if np.ndim(self.images) == 5 else 1

    def poses(self, workspace: Workspace) -> np.ndarray:
        """[T, 7] float32 poses z in the action form (gripper +1 open / -1 closed)."""
        g = np.where(self.gripper_open >= 0.5, 1.0, -1.0)
        return np.asarray(pose_to_action(self.positions, self.eulers, g, workspace), np.float32)

    def keyframe_actions(self, workspace: Workspace) -> np.ndarray:
        """[K, 7] float32 actions: the poses of the keyframes, in order."""
        return self.poses(workspace)[np.asarray(self.keyframes)]


def check_trajectory(traj: Trajectory, name: str = "trajectory") -> None:
    """Validates shapes and index ranges of a `Trajectory`; raises ValueError naming the field."""
    t = np.shape(traj.positions)[0] if np.ndim(traj.positions) == 2 else -1
    _checks.check_shape(f"{name}.positions", traj.positions, (None, 3))
    _checks.check_shape(f"{name}.eulers", traj.eulers, (t, 3))
    _checks.check_shape(f"{name}.gripper_open", traj.gripper_open, (t,))
    _checks.check_shape(f"{name}.velocities", traj.velocities, (t, None))
    _checks.check_rank(f"{name}.keyframes", traj.keyframes, 1)
    _checks.check_rank(f"{name}.image_frames", traj.image_frames, 1)
    m = np.shape(traj.image_frames)[0]
    views = np.ndim(traj.images) == 5
    v = (np.shape(traj.images)[1],) if views else ()
    _checks.check_shape(f"{name}.images", traj.images, (m, *v, None, None, 3),
                        "[M, V, H, W, 3]" if views else "[M, H, W, 3] (or [M, V, H, W, 3])")
    if np.asarray(traj.images).dtype != np.uint8:
        raise TypeError(f"`{name}.images` must be uint8; got {np.asarray(traj.images).dtype}.")
    _checks.check_shape(f"{name}.camera.intrinsics", traj.camera.intrinsics, (m, *v, 3, 3))
    _checks.check_shape(f"{name}.camera.cam_to_world", traj.camera.cam_to_world, (m, *v, 4, 4))
    for field in ("keyframes", "image_frames"):
        idx = np.asarray(getattr(traj, field))
        if idx.size and (idx.min() < 0 or idx.max() >= t or np.any(np.diff(idx) <= 0)):
            raise ValueError(f"`{name}.{field}` must be increasing frame indices in [0, {t}); got "
                             f"{idx.tolist()}.")
    if np.size(traj.keyframes) == 0:
        raise ValueError(f"`{name}.keyframes` is empty; a trajectory needs at least one keyframe.")


def frames_to_render(num_frames: int, keyframes: Any, augment_every: int) -> np.ndarray:
    """[M] int32 sorted frames a dataset needs: 0, every `augment_every`-th frame before the last
    keyframe, and the keyframes."""
    _checks.check_positive_int("augment_every", augment_every)
    kf = np.asarray(keyframes, np.int64)
    last = int(kf[-1]) if kf.size else num_frames - 1
    starts = np.arange(0, last, augment_every)
    return np.unique(np.concatenate([[0], starts, kf])).astype(np.int32)
