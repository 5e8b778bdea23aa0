"""Calibrating Algo. 1's sigma, its residual bank and the crop size on synthetic residuals with known
answers."""

import dataclasses

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


def test_residual_bank_keeps_every_residual_and_its_tails():
    from twostage_jax.calibration import residual_bank

    rng = np.random.default_rng(2)
    u = rng.uniform(-1.0, 1.0, (2000, 7))
    eps = rng.standard_t(2, size=u.shape) * 0.05  # heavy-tailed, as stage 1's closed-loop errors
    a, a1 = np.tanh(u), np.tanh(u - eps)
    bank = residual_bank(a1, a)
    assert bank.dtype == np.float32 and bank.shape == (2000, 7)
    inside = np.abs(u - eps) < np.arctanh(0.99)  # where the clip did not cut a1
    np.testing.assert_allclose(bank[inside], eps[inside], atol=2e-5)
    # The tails are kept: the bank's extremes are the data's, far beyond what calibrate_sigma's
    # Gaussian of the same median magnitude would draw.
    sigma = calibrate_sigma(a1, a, floor=1e-3)
    assert np.abs(bank[:, 0]).max() > 8 * sigma[0]
    np.testing.assert_allclose(np.median(np.abs(bank[:, :6]), 0) * 1.4826, sigma[:6], rtol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (dict(tentative=np.zeros((4, 6))), "tentative"),
    (dict(target=np.zeros((3, 7))), "target"),
    (dict(tentative=np.full((4, 7), np.nan)), "`tentative` must be finite"),
    (dict(tentative=np.zeros((0, 7)), target=np.zeros((0, 7))), "empty"),
])
def test_residual_bank_bad_input_names_the_argument(bad, match):
    from twostage_jax.calibration import residual_bank

    with pytest.raises(ValueError, match=match):
        residual_bank(**(dict(tentative=np.zeros((4, 7)), target=np.zeros((4, 7))) | bad))


def test_sampled_crop_size_covers_what_stage_2_trains_on():
    import jax

    import twostage_jax as tj
    from twostage_jax.calibration import (calibrate_sampled_crop_size, dataset_crop_offsets,
                                          sampled_crop_offsets)
    from tests._tiny import tiny_dataset

    ds = tiny_dataset()
    s2 = tj.Stage2Config(crop_size=8, ee_crop_size=4)
    key = jax.random.PRNGKey(0)
    # The draws are Algo. 1's own: the offsets of the tentative actions sample_tentative draws.
    off = sampled_crop_offsets(key, ds, s2, draws=2)
    a = np.broadcast_to(np.asarray(ds.action), (2,) + ds.action.shape)
    a1 = np.asarray(tj.sample_tentative(key, a)[0])
    np.testing.assert_array_equal(off, np.concatenate([dataset_crop_offsets(ds, x) for x in a1]))
    # A bank of one residual moves every draw by it: each draw's offsets are that of a1.
    row = np.array([[0.2, -0.1, 0.15, 0.05, 0.0, 0.1, 0.0]], np.float32)
    bank_s2 = dataclasses.replace(s2, perturbation="residuals")
    fixed = np.tanh(np.arctanh(np.clip(np.asarray(ds.action), -0.99, 0.99)) - row)
    want = dataset_crop_offsets(ds, fixed)
    np.testing.assert_allclose(sampled_crop_offsets(key, ds, bank_s2, residuals=row, draws=2),
                               np.concatenate([want, want]), atol=1e-3)
    assert calibrate_sampled_crop_size(key, ds, bank_s2, residuals=np.repeat(row, 3, 0), draws=2,
                                       multiple=2, min_size=2) == calibrate_crop_size(want, multiple=2,
                                                                                      min_size=2)
    # Wider perturbations need a wider crop: a mixture with 3x draws, and 3x alone.
    sizes = [calibrate_sampled_crop_size(key, ds, dataclasses.replace(s2, sigma_scales=s), draws=8,
                                         multiple=2, min_size=2) for s in [(1.0,), (1.0, 3.0), (3.0,)]]
    assert sizes[0] < sizes[1] <= sizes[2] <= 32, sizes
    with pytest.raises(ValueError, match="`residuals` must be given exactly when"):
        sampled_crop_offsets(key, ds, bank_s2)
    with pytest.raises(ValueError, match="`residuals` must be given exactly when"):
        sampled_crop_offsets(key, ds, s2, residuals=row)
    with pytest.raises(ValueError, match="`residuals` must be finite"):
        sampled_crop_offsets(key, ds, bank_s2, residuals=row * np.nan)
    with pytest.raises(ValueError, match="draws"):
        sampled_crop_offsets(key, ds, s2, draws=0)
