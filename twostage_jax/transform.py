"""The paper's transformation f (Eq. 5): s^2 = (o^2, e^2, z, a^1) from (o, z, a^1)."""

from __future__ import annotations

import jax.numpy as jnp

from twostage_jax import _checks
from twostage_jax.actions import _check_action, action_to_pose
from twostage_jax.geometry import crop_by_projection, optical_axis_angle, project_points
from twostage_jax.types import ACTION_DIM, Camera, Stage2Obs, Workspace


def crop_at_action(
    image: jnp.ndarray, action: jnp.ndarray, camera: Camera, workspace: Workspace, size: int,
    rotate: bool = True,
) -> jnp.ndarray:
    """Crops `image` around the projection of an action's (or pose's) position.

    Args:
      image: [H, W, 3] uint8 or float image.
      action: [7] normalised action or pose.
      camera: single `Camera` of `image`.
      workspace: position bounds of the action space.
      size: crop side (static).
      rotate: rotate the crop by the orientation's angle about the optical axis.

    Returns:
      [size, size, 3] float32 crop scaled to [0, 1].
    """
    position, euler, _ = action_to_pose(action, workspace)
    uv, _ = project_points(camera, position)
    angle = optical_axis_angle(camera, euler) if rotate else jnp.zeros((), jnp.float32)
    crop = crop_by_projection(image, uv, angle, size)
    scale = 1.0 / 255.0 if image.dtype == jnp.uint8 else 1.0
    return crop * scale


def transform_state(
    image: jnp.ndarray,
    pose: jnp.ndarray,
    tentative: jnp.ndarray,
    camera: Camera,
    workspace: Workspace,
    crop_size: int,
    ee_crop_size: int,
    rotate: bool = True,
) -> Stage2Obs:
    """The transformation f of Eq. 5 for one example.

    o^2 is the crop of `image` centred where the tentative position x^1 projects, rotated by
    the tentative orientation's angle about the optical axis; e^2 is the crop centred where the
    current position projects, rotated by the current orientation's angle. Pixels outside the
    image are zero. Single example: vmap for a batch.

    Args:
      image: [H, W, 3] uint8 (0..255) or float (0..1) image o.
      pose: [7] current end-effector pose z, normalised like an action.
      tentative: [7] tentative action a^1 in [-1, 1].
      camera: single `Camera` of `image`.
      workspace: position bounds used to normalise actions.
      crop_size: side of o^2 (32 for CQL, 64 for BC in the paper); static.
      ee_crop_size: side of e^2 (16 in the paper); static.
      rotate: rotate crops by the orientation (False crops axis-aligned).

    Returns:
      `Stage2Obs` with crop [crop_size, crop_size, 3] and ee_crop [ee_crop_size,
      ee_crop_size, 3] in [0, 1], pose [7] and tentative [7].
    """
    _checks.check_rank("image", image, 3)
    _checks.check_shape("pose", pose, (ACTION_DIM,), "one pose; vmap for a batch")
    _checks.check_shape("tentative", tentative, (ACTION_DIM,), "one action; vmap for a batch")
    _check_action("tentative", tentative)
    _checks.check_positive_int("crop_size", crop_size)
    _checks.check_positive_int("ee_crop_size", ee_crop_size)
    o2 = crop_at_action(image, tentative, camera, workspace, crop_size, rotate)
    e2 = crop_at_action(image, pose, camera, workspace, ee_crop_size, rotate)
    return Stage2Obs(crop=o2, ee_crop=e2, pose=jnp.asarray(pose, jnp.float32),
                     tentative=jnp.asarray(tentative, jnp.float32))
