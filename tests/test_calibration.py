"""Calibrating Algo. 1's sigma and the crop size on synthetic residuals with known answers."""

import numpy as np
import pytest

from twostage_jax.calibration import calibrate_crop_size, calibrate_sigma


def test_sigma_recovers_known_scales_with_floor_and_gripper_kept():
    rng = np.random.default_rng(0)
    true = np.array([0.05, 0.1, 0.2, 0.03, 0.01, 0.001, 0.5])
    u = rng.uniform(-1.0, 1.0, (40_000, 7))
    eps = rng.normal(size=u.shape) * true
    a, a1 = np.tanh(u), np.tanh(u - eps)
    sigma = calibrate_sigma(a1, a, floor=0.005)
    np.testing.assert_allclose(sigma[:5], true[:5], rtol=0.03)
    assert sigma[5] == pytest.approx(0.005)  # below the floor
    assert sigma[6] == pytest.approx(1.0)  # the gripper keeps the paper's sigma by default
    everything = calibrate_sigma(a1, a, floor=0.005, calibrate=[True] * 7)
    assert everything[6] == pytest.approx(0.5, rel=0.03)


def test_sigma_counts_a_bias_as_error():
    # A constant offset of 0.1 in atanh space with no spread is still an error to correct.
    u = np.linspace(-1, 1, 101)[:, None] * np.ones(7)
    sigma = calibrate_sigma(np.tanh(u - 0.1), np.tanh(u), floor=0.001)
    np.testing.assert_allclose(sigma[:6], 1.4826 * 0.1, rtol=1e-3)


@pytest.mark.parametrize("bad,match", [
    (dict(tentative=np.zeros((4, 6))), "tentative"),
    (dict(target=np.zeros((3, 7))), "target"),
    (dict(tentative=np.full((4, 7), 2.0)), "tentative"),
    (dict(floor=0.0), "floor"),
    (dict(tentative=np.zeros((0, 7)), target=np.zeros((0, 7))), "empty"),
])
def test_sigma_bad_input_names_the_argument(bad, match):
    args = dict(tentative=np.zeros((4, 7)), target=np.zeros((4, 7)), floor=0.02) | bad
    with pytest.raises(ValueError, match=match):
        calibrate_sigma(**args)


def test_crop_size_on_known_distributions():
    rng = np.random.default_rng(1)
    # Uniform in a 20 px square: the 95% quantile of max(|x|, |y|) is 9.5 px, so the crop must
    # exceed 19 px: 20 with sizes in multiples of 4.
    uniform = rng.uniform(-10, 10, (200_000, 2))
    assert calibrate_crop_size(uniform, coverage=0.95) == 20
    # Normal with std 5 px per axis: P(max(|x|, |y|) < t) = (2 Phi(t / 5) - 1)^2 = 0.95 at
    # t = 11.18 px, so the crop must exceed 22.4 px: 24.
    normal = rng.normal(scale=5.0, size=(200_000, 2))
    assert calibrate_crop_size(normal, coverage=0.95) == 24
    # Exactly-on-the-border offsets are outside (strict inequality): 8 px needs more than 16.
    assert calibrate_crop_size(np.array([[8.0, 0.0]]), coverage=1.0, multiple=4) == 20
    assert calibrate_crop_size(np.array([[7.9, 0.0]]), coverage=1.0, multiple=4) == 16
    assert calibrate_crop_size(uniform, coverage=0.95, margin=4.0) == 28
    assert calibrate_crop_size(np.zeros((5, 2)), min_size=8) == 8
    assert calibrate_crop_size(normal * 100, max_size=128) == 128


@pytest.mark.parametrize("bad,match", [
    (dict(offsets=np.zeros((4, 3))), "offsets"),
    (dict(offsets=np.array([[np.nan, 0.0]])), "offsets"),
    (dict(coverage=0.0), "coverage"),
    (dict(multiple=0), "multiple"),
    (dict(min_size=16, max_size=8), "max_size"),
    (dict(margin=-1.0), "margin"),
])
def test_crop_size_bad_input_names_the_argument(bad, match):
    args = dict(offsets=np.zeros((4, 2))) | bad
    with pytest.raises(ValueError, match=match):
        calibrate_crop_size(**args)


def test_crop_offsets_match_the_crop_geometry():
    import jax.numpy as jnp

    import twostage_jax as tj
    from twostage_jax.calibration import crop_offsets
    from twostage_jax.testing import synthetic_camera

    cam = synthetic_camera(64)
    ws = tj.Workspace(low=jnp.array([-0.5, -0.5, 0.0]), high=jnp.array([0.5, 0.5, 0.5]))
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.5, 0.5, (16, 7)).astype(np.float32)
    a1 = (a + rng.normal(scale=0.05, size=a.shape)).astype(np.float32)
    off = crop_offsets(cam, ws, a1, a, rotate=True)
    # A crop centred on a1 and turned by its angle samples the target's projection at
    # centre + R(angle) @ offset (crop_at_pixel's convention).
    uv1 = np.asarray(tj.project_points(cam, tj.action_to_pose(jnp.asarray(a1), ws)[0])[0])
    uv = np.asarray(tj.project_points(cam, tj.action_to_pose(jnp.asarray(a), ws)[0])[0])
    ang = np.array([float(tj.optical_axis_angle(cam, e)) for e in np.asarray(tj.action_to_pose(jnp.asarray(a1), ws)[1])])
    c, s = np.cos(ang), np.sin(ang)
    back = np.stack([c * off[:, 0] - s * off[:, 1], s * off[:, 0] + c * off[:, 1]], axis=-1)
    np.testing.assert_allclose(uv1 + back, uv, atol=1e-3)
    np.testing.assert_allclose(crop_offsets(cam, ws, a1, a, rotate=False), uv - uv1, atol=1e-3)
