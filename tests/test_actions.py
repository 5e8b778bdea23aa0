"""Tanh-space composition, Algo. 1 and pose conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj

VARIANTS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_compose_correction_matches_eq6(variant):
    rng = np.random.default_rng(0)
    a1 = jnp.asarray(rng.uniform(-0.95, 0.95, (16, 7)), jnp.float32)
    a2 = jnp.asarray(rng.uniform(-0.95, 0.95, (16, 7)), jnp.float32)
    out = variant(tj.compose_correction)(a1, a2)
    np.testing.assert_allclose(out, np.tanh(np.arctanh(a1) + np.arctanh(a2)), atol=1e-5)


def test_compose_hand_worked():
    # tanh(atanh(0.5) + atanh(0.5)) = 2 * 0.5 / (1 + 0.25) = 0.8
    out = tj.compose_correction(jnp.full((7,), 0.5), jnp.full((7,), 0.5))
    np.testing.assert_allclose(out, 0.8, atol=1e-6)
    np.testing.assert_allclose(tj.compose_correction(jnp.full(7, 0.3), jnp.zeros(7)), 0.3, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_algo1_pair_recomposes(variant):
    a = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (256, 7)), jnp.float32)
    a = a.at[:, 6].set(jnp.sign(a[:, 6]))  # gripper is +-1 in data
    a1, a2 = variant(tj.sample_tentative)(jax.random.PRNGKey(0), a)
    assert a1.shape == a2.shape == (256, 7)
    rec = tj.compose_correction(a1, a2)
    # Exact where neither operand hit the clip; within clipping everywhere.
    ok = (jnp.abs(a1) < 0.99) & (jnp.abs(a2) < 0.99)
    assert float(ok.mean()) > 0.7
    np.testing.assert_allclose(jnp.where(ok, rec, 0), jnp.where(ok, jnp.clip(a, -0.99, 0.99), 0), atol=1e-4)
    assert np.all(np.abs(rec) <= 0.99 + 1e-6)
    # Position/orientation noise is small (sigma 0.1), gripper noise large (sigma 1).
    eps = np.arctanh(np.clip(np.asarray(a2), -0.999999, 0.999999))
    assert 0.05 < eps[:, :6].std() < 0.15 and 0.7 < eps[:, 6].std() < 1.3


def test_compose_outputs_stay_in_range_for_extremes():
    ext = jnp.array([-1.0, 1.0, 1.0, -1.0, 0.0, 1.0, -1.0])
    for a1, a2 in [(ext, ext), (ext, -ext), (jnp.ones(7), jnp.ones(7))]:
        out = tj.compose_correction(a1, a2)
        assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)
    np.testing.assert_array_equal(tj.compose_direct(ext, -ext), -ext)
    assert np.all(np.isfinite(tj.atanh_clipped(jnp.array([-1.0, 1.0]))))


def test_pose_action_roundtrip():
    ws = tj.Workspace.create([-0.5, 0.4, 0.05], [0.5, 0.9, 0.3])
    pos = jnp.array([[0.1, 0.6, 0.2], [-0.5, 0.9, 0.05]])
    euler = jnp.array([[0.1, -0.2, 3.0], [0.0, 0.0, -np.pi]])
    a = tj.pose_to_action(pos, euler, jnp.array([1.0, -1.0]), ws)
    np.testing.assert_allclose(a[1, :3], [-1, 1, -1], atol=1e-6)
    p2, e2, g2 = tj.action_to_pose(a, ws)
    np.testing.assert_allclose(p2, pos, atol=1e-6)
    np.testing.assert_allclose(e2, euler, atol=1e-6)
    np.testing.assert_allclose(g2, [1.0, -1.0])
    # Out-of-bounds positions saturate.
    out = tj.pose_to_action(jnp.array([2.0, 0.6, 0.2]), jnp.zeros(3), jnp.array(1.0), ws)
    assert float(out[0]) == 1.0


def test_action_errors_name_the_argument():
    good = jnp.zeros(7)
    with pytest.raises(ValueError, match="`a2` must have shape \\[..., 7\\].*got shape \\(6,\\)"):
        tj.compose_correction(good, jnp.zeros(6))
    with pytest.raises(TypeError, match="`a` must be a floating-point array.*int32"):
        tj.sample_tentative(jax.random.PRNGKey(0), jnp.zeros(7, jnp.int32))
    with pytest.raises(ValueError, match="`sigma` must have shape \\[7\\]"):
        tj.sample_tentative(jax.random.PRNGKey(0), good, sigma=(0.1, 0.2))
    # Values are checked at the boundaries (prepare_data, act), not in the core ops, so an
    # eager call behaves as a jitted one: no host copy, no error that jit would skip.
    bad = good.at[0].set(1.5).at[2].set(jnp.nan)
    np.testing.assert_array_equal(tj.compose_correction(bad, good),
                                  jax.jit(tj.compose_correction)(bad, good))
    with pytest.raises(ValueError, match="Workspace needs `low` < `high`"):
        tj.Workspace.create([0, 0, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="`limit` must lie in \\(0, 1\\)"):
        tj.atanh_clipped(good, limit=1.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_correction_flips_a_saturated_gripper_both_ways(variant):
    # Stage 1's gripper saturates at |a1| = 0.9999. With the paper's bounds (0.99 on both
    # operands) the strongest correction only reaches tanh(atanh(0.99) - atanh(0.99)) = 0,
    # which reads as "open": a closing correction is impossible.
    limit = np.array([0.99] * 6 + [0.9], np.float32)
    compose = variant(lambda a1, a2, lim: tj.compose_correction(a1, a2, tentative_limit=lim))
    for sign in (1.0, -1.0):
        a1 = jnp.zeros(7).at[6].set(0.9999 * sign)
        paper = tj.compose_correction(a1, jnp.zeros(7).at[6].set(-0.99 * sign))
        np.testing.assert_allclose(paper[6], 0.0, atol=1e-6)
        # With the tentative gripper clipped at 0.9: u1 = atanh(0.9) = 1.4722 and a correction
        # of -0.95 (u2 = atanh(-0.95) = -1.8318) gives tanh(-0.3596) = -0.3449 (sign flipped).
        out = compose(a1, jnp.zeros(7).at[6].set(-0.95 * sign), limit)
        np.testing.assert_allclose(out[6], -0.3449 * sign, atol=1e-4)
        # A correction weaker than atanh(0.9) leaves the sign alone: tanh(1.4722 - 1.0986) = 0.3571.
        out = compose(a1, jnp.zeros(7).at[6].set(-0.8 * sign), limit)
        np.testing.assert_allclose(out[6], 0.3571 * sign, atol=1e-4)
        # The pose dimensions keep the paper's bound.
        np.testing.assert_allclose(out[:6], 0.0, atol=1e-7)


def test_algo1_with_a_tentative_gripper_bound_recovers_the_gripper_sign():
    a = jnp.asarray(np.random.default_rng(3).uniform(-0.8, 0.8, (512, 7)), jnp.float32)
    a = a.at[:, 6].set(jnp.where(a[:, 6] >= 0, 1.0, -1.0))
    limit = np.array([0.99] * 6 + [0.9], np.float32)
    a1, a2 = tj.sample_tentative(jax.random.PRNGKey(2), a, tentative_limit=limit)
    # u = atanh(0.9) - eps crosses zero when eps > 1.47: ~7% of draws flip the tentative gripper,
    # so stage 2 sees examples where it must flip it back.
    flipped = np.sign(a1[:, 6]) != np.sign(a[:, 6])
    assert 0.03 < flipped.mean() < 0.12
    # The target is the exact inverse of the clipped composition: composing recovers
    # tanh(atanh(0.9)) = 0.9 with the right sign wherever the target itself is not clipped.
    rec = np.asarray(tj.compose_correction(a1, a2, tentative_limit=limit))
    inside = np.abs(a2[:, 6]) < 0.99
    assert inside.mean() > 0.9
    np.testing.assert_allclose(rec[inside, 6], 0.9 * a[inside, 6], atol=1e-4)
    np.testing.assert_allclose(rec[:, :6], a[:, :6], atol=1e-4)
    # Where a1 saturates further in the right direction, no correction is asked for.
    beyond = np.asarray(a1[:, 6]) * np.asarray(a[:, 6]) > 0.9
    assert beyond.any()
    np.testing.assert_allclose(a2[beyond, 6], 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="tentative_limit"):
        tj.sample_tentative(jax.random.PRNGKey(0), a, tentative_limit=np.ones(7))
    with pytest.raises(ValueError, match="gripper_clip"):
        tj.Stage2Config(gripper_clip=1.0)
    assert tj.Stage2Config().tentative_limit() is None  # the paper's Algo. 1 and composition


def _papers_algo1(key, a, sigma=tj.DEFAULT_SIGMA):
    # Algo. 1 as written before `scales` and `residuals` existed, the reference for bitwise checks.
    eps = jax.random.normal(key, a.shape, jnp.float32) * jnp.asarray(sigma, jnp.float32)
    return jnp.tanh(tj.atanh_clipped(a, 0.99) - eps), jnp.tanh(eps)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_single_unit_scale_reproduces_the_papers_draws_bitwise(variant):
    a = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (64, 7)), jnp.float32)
    key = jax.random.PRNGKey(9)
    want = variant(_papers_algo1)(key, a)
    for kwargs in (dict(), dict(scales=(1.0,)), dict(scales=[1])):
        got = variant(lambda k, x: tj.sample_tentative(k, x, **kwargs))(key, a)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    # The config normalises its multipliers, so (1,) and [1.0] are the default config (same program).
    assert tj.Stage2Config(sigma_scales=[1]) == tj.Stage2Config() and tj.Stage2Config().sigma_scales == (1.0,)
    # One other multiplier scales the pose noise and leaves the gripper's draw alone.
    eps = tj.sample_perturbation(key, (64, 7), scales=(3.0,))
    ref = jax.random.normal(key, (64, 7)) * jnp.asarray(tj.DEFAULT_SIGMA)
    np.testing.assert_allclose(eps[:, :6], 3.0 * ref[:, :6], rtol=1e-6)
    np.testing.assert_array_equal(eps[:, 6], ref[:, 6])


@pytest.mark.parametrize("variant", VARIANTS)
def test_scale_mixture_draws_one_scale_per_sample_with_the_right_std(variant):
    sigma = (0.1,) * 6 + (1.0,)
    eps = np.asarray(variant(lambda k: tj.sample_perturbation(k, (40_000, 7), sigma, scales=(1.0, 10.0)))(
        jax.random.PRNGKey(0)))
    # The scale is shared by a sample's 6 pose dimensions, so its pose norm tells the two apart:
    # 0.1 * chi_6 against 1.0 * chi_6, split at 0.1 * sqrt(6 * 10) (misread for < 0.1% of draws).
    # With one scale per dimension the groups would mix and neither std would match.
    big = np.linalg.norm(eps[:, :6], axis=1) > 0.1 * np.sqrt(60.0)
    assert abs(big.mean() - 0.5) < 0.015  # uniform over the two scales
    np.testing.assert_allclose(eps[~big, :6].std(0), 0.1, rtol=0.04)
    np.testing.assert_allclose(eps[big, :6].std(0), 1.0, rtol=0.04)
    # The gripper is not scaled: N(0, 1) in both groups.
    for group in (big, ~big):
        assert abs(eps[group, 6].std() - 1.0) < 0.03
    # The config's target variance (for loss_weighting='whiten') is the mixture's.
    cfg = tj.Stage2Config(sigma=sigma, sigma_scales=(1.0, 10.0))
    np.testing.assert_allclose(cfg.correction_target_variance(), np.tanh(eps).var(0), rtol=0.04)
    np.testing.assert_array_equal(tj.Stage2Config(sigma=sigma).correction_target_variance(),
                                  tj.correction_target_variance(sigma))


@pytest.mark.parametrize("variant", VARIANTS)
def test_residual_bank_draws_each_pose_column_from_its_own_values(variant):
    # Column d of the bank holds 5 values no other column holds.
    bank = (np.arange(5)[:, None] * 0.05 + np.arange(7)[None, :] * 0.3 - 0.9).astype(np.float32)
    def draw(key, bank, scales=(1.0,)):  # the bank is traced under jit; the scales are static
        return variant(lambda k, b: tj.sample_perturbation(k, (6000, 7), residuals=b, scales=scales))(key, bank)

    eps = np.asarray(draw(jax.random.PRNGKey(1), bank))
    for d in range(6):
        values, counts = np.unique(eps[:, d], return_counts=True)
        np.testing.assert_array_equal(values, np.sort(bank[:, d]))  # its own values, every one
        assert np.all(np.abs(counts / len(eps) - 0.2) < 0.025)
    # Each axis draws its own row (a bootstrap per axis, not whole rows): the row of x and the
    # row of z agree for ~1/5 of the samples, not all of them.
    row = lambda d: np.rint((eps[:, d] + 0.9 - 0.3 * d) / 0.05).astype(int)
    assert abs((row(0) == row(2)).mean() - 0.2) < 0.03
    # The gripper keeps its Gaussian sigma (column 6 is not read).
    assert not np.isin(eps[:, 6], bank[:, 6]).any() and abs(eps[:, 6].std() - 1.0) < 0.05
    # Scales multiply the bank's values, one per sample.
    mixed = np.asarray(draw(jax.random.PRNGKey(2), bank, scales=(1.0, 2.0)))
    assert set(np.unique(mixed[:, 0])) <= set(bank[:, 0]) | set(2.0 * bank[:, 0])
    # Vmapped over seeds with one bank, as training vmaps its seeds over one copy of the data.
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    many = jax.vmap(lambda k: tj.sample_perturbation(k, (8, 7), residuals=bank))(keys)
    for i in range(3):
        np.testing.assert_array_equal(many[i], tj.sample_perturbation(keys[i], (8, 7), residuals=bank))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(scales=()), ValueError, "`scales` must hold at least one"),
    (dict(scales=(1.0, 0.0)), ValueError, "`scales` must hold finite multipliers > 0"),
    (dict(scales=(-1.0,)), ValueError, "`scales` must hold finite multipliers > 0"),
    (dict(scales=(float("nan"),)), ValueError, "`scales` must hold finite multipliers > 0"),
    (dict(scales=2.0), ValueError, "`scales` must be a sequence"),
    (dict(scales=jnp.ones(2)), TypeError, "`scales` must be static"),
    (dict(residuals=np.zeros((4, 6), np.float32)), ValueError, "`residuals` must have shape \\[\\*, 7\\]"),
    (dict(residuals=np.zeros((0, 7), np.float32)), ValueError, "`residuals` is empty"),
    (dict(residuals=np.full((4, 7), np.nan, np.float32)), ValueError, "`residuals` must be finite"),
    (dict(residuals=np.zeros((4, 7), np.int32)), TypeError, "`residuals` must be a floating-point"),
])
def test_perturbation_options_are_checked_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        tj.sample_tentative(jax.random.PRNGKey(0), jnp.zeros((3, 7)), **kwargs)
