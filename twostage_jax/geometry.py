"""Camera projection, orientation helpers and the rotated bilinear crop.

All functions are single-example (no batch axis on the camera), jit-compatible, and meant to be
vmapped by callers. See `twostage_jax.types` for the pixel and frame conventions.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax.types import Camera


def project_points(camera: Camera, points: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Projects world points into continuous pixel coordinates.

    Args:
      camera: a single `Camera` (intrinsics [3, 3], cam_to_world [4, 4]).
      points: [..., 3] world coordinates.

    Returns:
      uv: [..., 2] pixel coordinates (u = column, v = row); the centre of pixel (row i,
        column j) is (j + 0.5, i + 0.5).
      depth: [...] distance along the optical axis (positive in front of the camera). Points
        at depth <= 0 get a uv that is meaningless; check `depth` when it matters.
    """
    _checks.check_trailing("points", points, (3,))
    _checks.check_shape("camera.intrinsics", camera.intrinsics, (3, 3), "a single camera; vmap for several")
    _checks.check_shape("camera.cam_to_world", camera.cam_to_world, (4, 4), "a single camera; vmap for several")
    points = jnp.asarray(points, jnp.float32)
    rot = camera.cam_to_world[:3, :3]
    trans = camera.cam_to_world[:3, 3]
    p_cam = (points - trans) @ rot  # R^T (p - t), row-vector form.
    depth = p_cam[..., 2]
    safe = jnp.where(jnp.abs(depth) < 1e-9, 1e-9, depth)
    k = camera.intrinsics
    u = k[0, 0] * p_cam[..., 0] / safe + k[0, 1] * p_cam[..., 1] / safe + k[0, 2]
    v = k[1, 1] * p_cam[..., 1] / safe + k[1, 2]
    return jnp.stack([u, v], axis=-1), depth


def euler_to_matrix(euler: jnp.ndarray) -> jnp.ndarray:
    """Rotation matrix of extrinsic x-y-z Euler angles (scipy's 'xyz'): R = Rz(c) Ry(b) Rx(a).

    Args:
      euler: [..., 3] angles (a, b, c) in radians.

    Returns:
      [..., 3, 3] rotation matrices.
    """
    _checks.check_trailing("euler", euler, (3,))
    a, b, c = euler[..., 0], euler[..., 1], euler[..., 2]
    ca, sa, cb, sb, cc, sc = jnp.cos(a), jnp.sin(a), jnp.cos(b), jnp.sin(b), jnp.cos(c), jnp.sin(c)
    row0 = jnp.stack([cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa], -1)
    row1 = jnp.stack([sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa], -1)
    row2 = jnp.stack([-sb, cb * sa, cb * ca], -1)
    return jnp.stack([row0, row1, row2], -2)


def euler_to_quat(euler: jnp.ndarray) -> jnp.ndarray:
    """Extrinsic x-y-z Euler angles to unit quaternions in (x, y, z, w) order (RLBench's).

    Args:
      euler: [..., 3] radians.

    Returns:
      [..., 4] quaternions (x, y, z, w) with w >= 0.
    """
    _checks.check_trailing("euler", euler, (3,))
    half = 0.5 * jnp.asarray(euler, jnp.float32)
    ca, sa = jnp.cos(half[..., 0]), jnp.sin(half[..., 0])
    cb, sb = jnp.cos(half[..., 1]), jnp.sin(half[..., 1])
    cc, sc = jnp.cos(half[..., 2]), jnp.sin(half[..., 2])
    # q = qz(c) * qy(b) * qx(a)
    w = cc * cb * ca + sc * sb * sa
    x = cc * cb * sa - sc * sb * ca
    y = cc * sb * ca + sc * cb * sa
    z = sc * cb * ca - cc * sb * sa
    q = jnp.stack([x, y, z, w], -1)
    return jnp.where(q[..., 3:4] < 0, -q, q)


def quat_to_euler(quat: jnp.ndarray) -> jnp.ndarray:
    """Unit quaternions (x, y, z, w) to extrinsic x-y-z Euler angles in [-pi, pi].

    Args:
      quat: [..., 4] quaternions in (x, y, z, w) order; normalised internally.

    Returns:
      [..., 3] Euler angles (a, b, c) with b in [-pi/2, pi/2].
    """
    _checks.check_trailing("quat", quat, (4,))
    q = quat / jnp.linalg.norm(quat, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    a = jnp.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    b = jnp.arcsin(jnp.clip(2 * (w * y - z * x), -1.0, 1.0))
    c = jnp.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return jnp.stack([a, b, c], -1)


def optical_axis_angle(camera: Camera, euler: jnp.ndarray) -> jnp.ndarray:
    """In-image rotation of an end-effector orientation about the camera's optical axis.

    The orientation is the rotation R(euler) from the zero-Euler ("neutral") orientation. We
    split R into a swing and a twist about the optical axis d (the camera's z axis in the
    world) and return the twist angle, 2 * atan2(q_v . d, q_w) wrapped to (-pi, pi]. A gripper
    rotated by theta about the optical axis therefore appears rotated by theta in the image,
    measured from +u towards +v (clockwise on screen, since v points down). Equivalently, for
    such rotations it is the in-image turn of the gripper's x axis away from its neutral
    direction; unlike the angle of one projected gripper axis it never degenerates when that
    axis points along the optical axis. The neutral orientation gives 0, so crops of an
    unrotated gripper are upright.

    Args:
      camera: a single `Camera`.
      euler: [..., 3] extrinsic x-y-z Euler angles in radians (not normalised by pi).

    Returns:
      [...] angles in radians.
    """
    _checks.check_trailing("euler", euler, (3,))
    quat = euler_to_quat(euler)
    axis = camera.cam_to_world[:3, 2]
    twist = jnp.sum(quat[..., :3] * axis, axis=-1)
    angle = 2.0 * jnp.arctan2(twist, quat[..., 3])
    return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


@partial(jax.jit, static_argnames=("size",))
def _crop(image: jnp.ndarray, center_uv: jnp.ndarray, angle: jnp.ndarray, size: int,
          scale: jnp.ndarray | None = None) -> jnp.ndarray:
    height, width = image.shape[0], image.shape[1]
    img = image.astype(jnp.float32)
    offsets = jnp.arange(size, dtype=jnp.float32) - (size // 2)
    if scale is not None:  # (None, not 1.0: one camera's crops stay bitwise what they were)
        offsets = offsets * scale
    dy, dx = jnp.meshgrid(offsets, offsets, indexing="ij")  # [S, S] crop row / column offsets
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    u = center_uv[0] + cos * dx - sin * dy
    v = center_uv[1] + sin * dx + cos * dy
    # Continuous coordinate -> array index space: pixel j's centre is at j + 0.5.
    x = u - 0.5
    y = v - 0.5
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    wx = (x - x0)[..., None]
    wy = (y - y0)[..., None]
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)

    def tap(yi: jnp.ndarray, xi: jnp.ndarray) -> jnp.ndarray:
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        val = img[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
        return jnp.where(inside[..., None], val, 0.0)

    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def crop_at_pixel(image: jnp.ndarray, center_uv: jnp.ndarray, angle: Any, size: int,
                  scale: Any = None) -> jnp.ndarray:
    """Rotated, bilinearly sampled square crop of one image, centred at a pixel coordinate.

    It does not project: `crop_at_action` (twostage_jax.transform) projects an action's
    position with the camera and crops there.

    Crop pixel (row a, column b) samples the continuous image point

        center_uv + scale * R(angle) @ (b - size // 2, a - size // 2),

    so the crop's centre pixel (size // 2, size // 2) samples exactly `center_uv`, and the crop's
    x axis points along `angle` (from +u towards +v). A feature that lies in the image along
    direction `angle` from the centre therefore lies along the crop's +x axis. Samples outside
    the image read zeros. Values are not checked (so eager and jitted calls agree): a NaN
    centre or angle gives a NaN crop; `act` and `prepare_data` reject non-finite inputs.

    Single example: vmap over a batch. `size` must be static under jit.

    Args:
      image: [H, W, C] image, uint8 or float.
      center_uv: [2] continuous pixel coordinate (u = column, v = row) of the crop centre.
      angle: [] rotation in radians.
      size: crop side length S in pixels (Python int).
      scale: None (1), or [] image pixels per crop pixel: a crop of S pixels then spans
        S * scale image pixels (a zoom out for scale > 1, sampled bilinearly without
        anti-aliasing, so keep it below about 2; per-view crops of several cameras use it).

    Returns:
      [S, S, C] float32 crop, on the same value scale as `image` (uint8 stays 0..255).
    """
    _checks.check_rank("image", image, 3)
    _checks.check_numeric("image", image)
    _checks.check_shape("center_uv", center_uv, (2,), "one (u, v) pixel coordinate; vmap for a batch")
    _checks.check_rank("angle", angle, 0)
    _checks.check_positive_int("size", size)
    _checks.check_fits("size", 4.0 * size * size * max(int(np.shape(image)[-1]), 1),
                       f"one {size}x{size} float32 crop")
    return _crop(image, jnp.asarray(center_uv, jnp.float32), jnp.asarray(angle, jnp.float32), size,
                 None if scale is None else jnp.asarray(scale, jnp.float32))


def look_at(eye: Any, target: Any, up: Any = (0.0, 0.0, 1.0)) -> jnp.ndarray:
    """Camera-to-world pose [4, 4] of a camera at `eye` looking at `target`.

    Axes follow the library convention (x right, y down, z forward); `up` is the world
    direction that appears upwards in the image.

    Args:
      eye: [3] camera position.
      target: [3] point on the optical axis.
      up: [3] world up direction (not parallel to the viewing direction).

    Returns:
      [4, 4] float32 pose.
    """
    _checks.check_shape("eye", eye, (3,))
    _checks.check_shape("target", target, (3,))
    eye = jnp.asarray(eye, jnp.float32)
    z = jnp.asarray(target, jnp.float32) - eye
    z = z / jnp.linalg.norm(z)
    x = jnp.cross(z, jnp.asarray(up, jnp.float32))
    x = x / jnp.linalg.norm(x)
    y = jnp.cross(z, x)
    pose = jnp.eye(4, dtype=jnp.float32)
    return pose.at[:3, 0].set(x).at[:3, 1].set(y).at[:3, 2].set(z).at[:3, 3].set(eye)
