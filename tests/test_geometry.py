"""Projection, orientation and crop: hand-worked values, run jitted and un-jitted."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj

VARIANTS = [pytest.param(lambda f, **kw: f, id="eager"),
            pytest.param(lambda f, **kw: jax.jit(f, **kw), id="jit")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_project_generic_camera(variant):
    cam = tj.Camera.create(np.array([[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]]), np.eye(4), 128, 128)
    uv, depth = variant(tj.project_points)(cam, jnp.array([0.1, 0.2, 1.0]))
    np.testing.assert_allclose(uv, [74.0, 84.0], atol=1e-4)
    np.testing.assert_allclose(depth, 1.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_project_rlbench_convention(variant):
    # RLBench: negative focal lengths, extrinsics = camera-to-world of a frame with x left, y up.
    k = np.array([[-100.0, 0, 64], [0, -100.0, 64], [0, 0, 1]])
    ext = np.eye(4)
    ext[:3, 3] = [0.5, -0.2, 0.3]
    cam = tj.Camera.from_rlbench(k, ext, 128, 128)
    point = np.array([0.6, 0.0, 1.3])  # (0.1, 0.2, 1.0) in RLBench's camera frame
    # Hand-worked with RLBench's own formula u = fx * X / Z + cx: u = -100 * 0.1 + 64 = 54.
    uv, depth = variant(tj.project_points)(cam, jnp.asarray(point))
    np.testing.assert_allclose(uv, [54.0, 44.0], atol=1e-4)
    np.testing.assert_allclose(depth, 1.0, atol=1e-6)
    assert float(cam.intrinsics[0, 0]) == 100.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_project_mujoco_convention(variant):
    # MuJoCo camera 1 m above the origin, identity xmat: it looks down (-z), image up = world +y.
    cam = tj.Camera.from_mujoco(90.0, [0.0, 0.0, 1.0], np.eye(3).ravel(), 128, 128)
    # f = 64 / tan(45 deg) = 64. Point (0.1, 0.2, 0): right of centre, and up in the image.
    uv, depth = variant(tj.project_points)(cam, jnp.array([[0.1, 0.2, 0.0]]))
    np.testing.assert_allclose(uv, [[64 + 6.4, 64 - 12.8]], atol=1e-4)
    np.testing.assert_allclose(depth, [1.0], atol=1e-6)


def test_camera_constructor_errors():
    with pytest.raises(ValueError, match="from_rlbench.*negative focal"):
        tj.Camera.from_rlbench(np.eye(3), np.eye(4), 128, 128)
    with pytest.raises(ValueError, match="positive focal"):
        tj.Camera.create(-np.eye(3), np.eye(4), 128, 128)
    with pytest.raises(ValueError, match="cam_to_world.*got shape \\(3, 3\\)"):
        tj.Camera.create(np.eye(3), np.eye(3), 128, 128)
    with pytest.raises(ValueError, match="fovy_degrees"):
        tj.Camera.from_mujoco(0.0, np.zeros(3), np.eye(3), 128, 128)
    with pytest.raises(ValueError, match="`points` must have shape \\[..., 3\\]"):
        tj.project_points(tj.Camera.create(np.eye(3), np.eye(4), 8, 8), jnp.zeros((4, 2)))


def test_euler_quat_roundtrip_and_matrix():
    e = jnp.array([[0.3, -0.5, 1.2], [0.0, 0.0, 0.0], [-2.0, 1.0, 3.0]])
    np.testing.assert_allclose(tj.quat_to_euler(tj.euler_to_quat(e)), e, atol=1e-5)
    # Rz(90deg) maps x to y.
    r = tj.euler_to_matrix(jnp.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(r @ jnp.array([1.0, 0, 0]), [0, 1, 0], atol=1e-6)
    q = tj.euler_to_quat(jnp.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(q, [0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)], atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_optical_axis_angle(variant):
    cam = tj.Camera.create(np.eye(3), np.eye(4), 8, 8)  # optical axis = world +z
    fn = variant(tj.optical_axis_angle)
    np.testing.assert_allclose(fn(cam, jnp.array([0.0, 0.0, 0.7])), 0.7, atol=1e-5)
    np.testing.assert_allclose(fn(cam, jnp.array([0.6, 0.0, 0.0])), 0.0, atol=1e-5)
    np.testing.assert_allclose(fn(cam, jnp.array([0.0, 0.0, -3.0])), -3.0, atol=1e-5)


def _crop(variant):
    return variant(tj.crop_at_pixel, static_argnames="size")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [5, 4])
def test_crop_marked_pixel_lands_at_centre(variant, size):
    img = jnp.zeros((10, 12, 1)).at[3, 5].set(1.0)
    crop = _crop(variant)(img, jnp.array([5.5, 3.5]), jnp.array(0.0), size=size)
    expected = np.zeros((size, size, 1))
    expected[size // 2, size // 2] = 1.0
    np.testing.assert_allclose(crop, expected, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_crop_rotation_90_degrees(variant):
    # An L: the centre, one pixel to its right (+u) and two below it (+v).
    img = jnp.zeros((9, 9, 1)).at[4, 4].set(1.0).at[4, 5].set(2.0).at[6, 4].set(3.0)
    crop = _crop(variant)(img, jnp.array([4.5, 4.5]), jnp.array(np.pi / 2), size=5)
    # The crop's x axis points along image +v: the pixel below the centre is now to the right,
    # and the one to the right of the centre is now above it.
    expected = np.zeros((5, 5))
    expected[2, 2], expected[1, 2], expected[2, 4] = 1.0, 2.0, 3.0
    np.testing.assert_allclose(crop[..., 0], expected, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_crop_zero_fill_past_border(variant):
    img = jnp.ones((8, 8, 3), jnp.uint8) * 200
    crop = _crop(variant)(img, jnp.array([0.5, 0.5]), jnp.array(0.0), size=5)
    assert crop.shape == (5, 5, 3) and crop.dtype == jnp.float32
    np.testing.assert_allclose(crop[:2], 0.0)
    np.testing.assert_allclose(crop[:, :2], 0.0)
    np.testing.assert_allclose(crop[2:, 2:], 200.0)


def test_crop_bilinear_half_pixel():
    img = jnp.zeros((4, 4, 1)).at[1, 1].set(1.0)
    crop = tj.crop_at_pixel(img, jnp.array([2.0, 1.5]), jnp.array(0.0), 1)
    np.testing.assert_allclose(crop[0, 0, 0], 0.5, atol=1e-6)


def test_crop_vmaps_over_a_batch():
    imgs = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
    centres = jnp.array([[3.0, 3.0], [2.5, 2.5]])
    fn = jax.jit(jax.vmap(functools.partial(tj.crop_at_pixel, size=2)))
    out = fn(imgs, centres, jnp.zeros(2))
    assert out.shape == (2, 2, 2, 1)
    np.testing.assert_allclose(out[1, 1, 1, 0], imgs[1, 2, 2, 0])


def test_crop_errors_name_the_argument():
    img = jnp.zeros((8, 8, 3))
    with pytest.raises(ValueError, match="`image` must have rank 3; got shape \\(8, 8\\)"):
        tj.crop_at_pixel(jnp.zeros((8, 8)), jnp.zeros(2), 0.0, 4)
    with pytest.raises(ValueError, match="`center_uv` must have shape \\[2\\].*got shape \\(3,\\)"):
        tj.crop_at_pixel(img, jnp.zeros(3), 0.0, 4)
    with pytest.raises(ValueError, match="`size` must be a positive int; got 0"):
        tj.crop_at_pixel(img, jnp.zeros(2), 0.0, 0)
    with pytest.raises(TypeError, match="`image` must be a numeric"):
        tj.crop_at_pixel(jnp.zeros((8, 8, 3), bool), jnp.zeros(2), 0.0, 4)
    with pytest.raises(ValueError, match="`angle` must have rank 0"):
        tj.crop_at_pixel(img, jnp.zeros(2), jnp.zeros(2), 4)


def test_transform_state_centres_crops_on_projections():
    from twostage_jax.testing import synthetic_camera

    cam = synthetic_camera(64)
    ws = tj.Workspace.create([-0.5, -0.5, 0.0], [0.5, 0.5, 0.5])
    a1 = jnp.array([0.2, 0.1, -0.3, 0, 0, 0, 1.0])
    pos, _, _ = tj.action_to_pose(a1, ws)
    uv, _ = tj.project_points(cam, pos)
    col, row = int(uv[0]), int(uv[1])
    img = jnp.zeros((64, 64, 3), jnp.uint8).at[row, col].set(255)
    centre = jnp.array([col + 0.5, row + 0.5])
    # Move the action so its projection lands on the pixel centre exactly is awkward; instead
    # check that the crop equals a direct crop at the projected point.
    s2 = tj.transform_state(img, a1, a1, cam, ws, 8, 4)
    direct = tj.crop_at_pixel(img, uv, tj.optical_axis_angle(cam, jnp.zeros(3)), 8) / 255.0
    np.testing.assert_allclose(s2.crop, direct, atol=1e-6)
    assert s2.ee_crop.shape == (4, 4, 3) and float(s2.crop.max()) > 0.0
    del centre


