"""The two-stage act function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj
from tests._tiny import jit_at_level_1


def _inputs(ds, b):
    cam = ds.camera(0)
    cam = tj.Camera(jnp.asarray(cam.intrinsics), jnp.asarray(cam.cam_to_world), cam.width, cam.height)
    return jnp.asarray(ds.images[:b]), jnp.asarray(ds.pose[:b]), cam


def test_two_stage_policy_composes(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    act = tj.make_policy(c1, c2, ds.workspace)
    image, pose, cam = _inputs(ds, 3)
    out = act(p1, p2, image, pose, cam)
    assert out.action.shape == (3, 7)
    np.testing.assert_allclose(out.action, tj.compose_correction(out.tentative, out.correction), atol=1e-6)
    stage1 = tj.make_policy(c1, None, ds.workspace)(p1, None, image, pose, cam)
    np.testing.assert_allclose(stage1.action, out.tentative, atol=1e-6)
    np.testing.assert_array_equal(stage1.correction, 0.0)
    # a given tentative action replaces stage 1; passing stage 1's own output changes nothing
    given = act(p1, p2, image, pose, cam, tentative=out.tentative)
    np.testing.assert_allclose(given.action, out.action, atol=1e-6)
    moved = act(p1, p2, image, pose, cam, tentative=jnp.zeros((3, 7)))
    np.testing.assert_array_equal(moved.tentative, 0.0)
    np.testing.assert_allclose(moved.action, tj.compose_correction(moved.tentative, moved.correction),
                               atol=1e-6)
    stochastic = tj.make_policy(c1, c2, ds.workspace, deterministic=False)
    a = stochastic(p1, p2, image, pose, cam, jax.random.PRNGKey(3)).action
    assert np.all(np.abs(a) <= 1.0)


def test_correction_passes_correct_the_previous_pass(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    image, pose, cam = _inputs(ds, 3)
    once = tj.make_policy(c1, c2, ds.workspace)(p1, p2, image, pose, cam)
    twice = tj.make_policy(c1, c2, ds.workspace, correction_passes=2)(p1, p2, image, pose, cam)
    np.testing.assert_allclose(twice.tentative, once.tentative, atol=1e-6)  # stage 1's a^1
    # the second pass crops around the first pass's action and composes onto it
    again = tj.make_policy(c1, c2, ds.workspace)(p1, p2, image, pose, cam, tentative=once.action)
    np.testing.assert_allclose(twice.action, again.action, atol=1e-6)
    np.testing.assert_allclose(twice.correction, again.correction, atol=1e-6)
    assert not np.allclose(twice.action, once.action, atol=1e-4)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"`correction_passes` must be an integer in \[1, 16\]"):
            tj.make_policy(c1, c2, ds.workspace, correction_passes=bad)


def _zero_actor(params):
    """`params` whose actor outputs 0 everywhere: a correction of 0, which composes to a^1."""
    return {**params, "actor": jax.tree_util.tree_map(jnp.zeros_like, params["actor"])}


def test_a_second_zoom_corrects_the_first_pass_with_its_own_networks(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    image, pose, cam = _inputs(ds, 3)
    once = tj.make_policy(c1, c2, ds.workspace)(p1, p2, image, pose, cam)
    zoom = tj.make_policy(c1, c2, ds.workspace, refine=c2)
    # the first stage 2's own networks as the second: the paper's stage 2 applied twice
    same = zoom(p1, {**p2, "refine": p2}, image, pose, cam)
    twice = tj.make_policy(c1, c2, ds.workspace, correction_passes=2)(p1, p2, image, pose, cam)
    np.testing.assert_allclose(same.action, twice.action, atol=1e-6)
    # a second stage 2 that corrects by 0 leaves the first pass's action (the clip aside)
    idle = zoom(p1, {**p2, "refine": _zero_actor(p2)}, image, pose, cam)
    np.testing.assert_allclose(idle.action, np.clip(once.action, -0.99, 0.99), atol=1e-6)
    np.testing.assert_allclose(idle.tentative, once.tentative, atol=1e-6)
    with pytest.raises(ValueError, match="params2` must hold the second stage 2's parameters under the key 'refine'"):
        zoom(p1, p2, image, pose, cam)
    with pytest.raises(ValueError, match="`refine` corrects stage 2's action again"):
        tj.make_policy(c1, None, ds.workspace, refine=c2)
    with pytest.raises(ValueError, match="`refine` corrects stage 2's action again"):
        tj.make_policy(c1, c2, ds.workspace, refine=c2, critic_samples=2)


def test_first_pass_actions_correct_algorithm_1_draws_around_each_transition(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    data = tj.prepare_data(ds, c2)
    n, sigma = ds.num_transitions, c2.stage2.sigma
    # a first pass that corrects by 0 returns Algorithm 1's draws: around the demo action at
    # the state and the next demo action at the next state, with the first pass's sigma
    drawn = tj.first_pass_actions(data, c2, _zero_actor(p2), jax.random.PRNGKey(0), draws=40, batch_size=16)
    assert drawn.shape == (40, n, 2, 7) and drawn.dtype == np.float32
    for row, demo in ((0, ds.action), (1, ds.next_action)):
        eps = np.arctanh(np.clip(np.asarray(demo)[:, :6], -0.99, 0.99)) - np.arctanh(drawn[:, :, row, :6])
        np.testing.assert_allclose(eps.std(axis=(0, 1)), np.asarray(sigma)[:6], rtol=0.15)
        assert abs(eps.mean()) < 0.01
    # the trained first pass: each row is g(a^1, pi2(f(s, a^1))), as the policy's stage 2
    # computes it from the full frame given a^1 as the tentative action
    out = tj.first_pass_actions(data, c2, p2, jax.random.PRNGKey(0), draws=1, batch_size=16)
    k = jax.random.fold_in(jax.random.split(jax.random.PRNGKey(0), 1)[0], 0)  # its first chunk's key
    a1 = tj.batch_at(data, jnp.arange(16) % n, k, 2, c2.stage2).obs.tentative[:3]  # the draws it corrected
    frames = np.asarray(ds.obs_index[:3])  # (one camera: a frame's image row is the frame)
    cam = tj.Camera(jnp.asarray(ds.intrinsics[frames]), jnp.asarray(ds.cam_to_world[frames]),
                    int(ds.images.shape[2]), int(ds.images.shape[1]))  # each frame's own camera
    policy = tj.make_policy(None, c2, ds.workspace)(None, p2, jnp.asarray(ds.images[frames]),
                                                  jnp.asarray(ds.pose[:3]), cam, tentative=jnp.asarray(a1))
    np.testing.assert_allclose(out[0, :3, 0], policy.action, atol=1e-5)
    assert not np.allclose(out[0, :, 0], drawn[0, :, 0], atol=1e-3)
    with pytest.raises(ValueError, match="draws"):
        tj.first_pass_actions(data, c2, p2, jax.random.PRNGKey(0), draws=0)


def test_corrected_dims_keep_the_tentative_value_on_the_other_dims(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    image, pose, cam = _inputs(ds, 3)
    full = tj.make_policy(c1, c2, ds.workspace)(p1, p2, image, pose, cam)
    keep = (1, 1, 1, 0, 0, 0, 1)  # stage 1's orientation
    part = tj.make_policy(c1, c2, ds.workspace, corrected_dims=keep)(p1, p2, image, pose, cam)
    on = np.asarray(keep, bool)
    np.testing.assert_array_equal(np.asarray(part.action)[:, ~on], np.asarray(part.tentative)[:, ~on])
    np.testing.assert_allclose(np.asarray(part.action)[:, on], np.asarray(full.action)[:, on], atol=1e-6)
    assert not np.allclose(np.asarray(full.action)[:, ~on], np.asarray(full.tentative)[:, ~on], atol=1e-4)
    for bad in ((1, 1, 1), (0,) * 7, (1, 1, 1, 0, 0, 0, 2), "1110001"):
        with pytest.raises(ValueError, match="`corrected_dims` must be 7 flags of 0 / 1"):
            tj.make_policy(c1, c2, ds.workspace, corrected_dims=bad)


def test_the_critic_chooses_among_no_correction_the_mode_and_samples(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    image, pose, cam = _inputs(ds, 3)
    mode = tj.make_policy(c1, c2, ds.workspace)(p1, p2, image, pose, cam)
    chosen = tj.make_policy(c1, c2, ds.workspace, critic_samples=4)
    out = chosen(p1, p2, image, pose, cam)
    choice = np.asarray(out.choice)
    assert choice.shape == (3,) and np.all((choice >= 0) & (choice <= 5)) and mode.choice is None
    np.testing.assert_allclose(out.tentative, mode.tentative, atol=1e-6)
    np.testing.assert_allclose(out.action, tj.compose_correction(out.tentative, out.correction), atol=1e-6)
    # the executed correction scores at least as high as no correction and the actor's mode
    nets = tj.make_networks(c2.network, 2, "cql")
    obs2 = jax.vmap(lambda im, z, t: tj.transform_state(
        im, z, t, cam, ds.workspace, c2.stage2.crop_size, c2.stage2.ee_crop_size, c2.stage2.rotate))(
            jnp.asarray(image), jnp.asarray(pose), out.tentative)
    feat = nets.encode(p2, obs2)

    def q(a2):
        return np.asarray(jnp.min(nets.critic(p2, feat, a2), axis=0))

    best = q(out.correction)
    assert np.all(best >= q(jnp.zeros_like(out.correction)) - 1e-5) and np.all(best >= q(mode.correction) - 1e-5)
    for rows, a2 in ((choice == 0, np.zeros((3, 7))), (choice == 1, mode.correction)):
        np.testing.assert_allclose(np.asarray(out.correction)[rows], np.asarray(a2)[rows], atol=1e-6)
    # a function of the observation: the same call gives the same choice
    np.testing.assert_array_equal(chosen(p1, p2, image, pose, cam).action, out.action)
    with pytest.raises(ValueError, match="needs a CQL stage 2"):
        tj.make_policy(c1, c1, ds.workspace, critic_samples=2)
    with pytest.raises(ValueError, match="correction_passes=1"):
        tj.make_policy(c1, c2, ds.workspace, critic_samples=2, correction_passes=2)
    with pytest.raises(ValueError, match="holds no 'critic'"):
        chosen(p1, {k: v for k, v in p2.items() if k != "critic"}, image, pose, cam)


def test_direct_mode_returns_stage2_action(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    c2d = tj.TrainConfig(**{**c2.__dict__, "stage2": tj.Stage2Config(crop_size=8, ee_crop_size=4, mode="direct")})
    out = tj.make_policy(c1, c2d, ds.workspace)(p1, p2, *_inputs(ds, 2))
    np.testing.assert_array_equal(out.action, out.correction)


def test_policy_rejects_bad_input(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    act = tj.make_policy(c1, c2, ds.workspace)
    image, pose, cam = _inputs(ds, 2)
    with pytest.raises(ValueError, match="`image` must have shape \\[\\*, 32, 32, 3\\]"):
        act(p1, p2, image[:, :16], pose, cam)
    with pytest.raises(ValueError, match="`pose` must have shape \\[2, 7\\]"):
        act(p1, p2, image, pose[:1], cam)
    with pytest.raises(ValueError, match="`pose` must lie in"):
        act(p1, p2, image, pose * 5, cam)
    with pytest.raises(ValueError, match="`tentative` must have shape \\[2, 7\\]"):
        act(p1, p2, image, pose, cam, tentative=pose[:1])
    with pytest.raises(ValueError, match="`params2` is None"):
        act(p1, None, image, pose, cam)


def test_row_by_row_rows_are_bitwise_batch_one_calls(tiny_trained):
    """What parallel evaluation relies on: a row's action does not depend on the batch size."""
    ds, c1, c2, p1, p2 = tiny_trained
    with jit_at_level_1():  # bitwise: not at the suite's level 0 (tests/_tiny.py)
        plain = tj.make_policy(c1, c2, ds.workspace)
        rows = tj.make_policy(c1, c2, ds.workspace, row_by_row=True)
    image, pose, cam = _inputs(ds, 3)
    out = rows(p1, p2, image, pose, cam)
    for i in range(3):
        one = plain(p1, p2, image[i:i + 1], pose[i:i + 1], cam)
        for field in ("action", "tentative", "correction"):
            np.testing.assert_array_equal(getattr(out, field)[i], getattr(one, field)[0], err_msg=field)


def test_row_by_row_gives_each_row_its_own_key(tiny_trained):
    """A sampling policy draws independent noise per row: row i is the batch-1 call with key
    jax.random.split(key, B)[i], so identical rows get different actions."""
    ds, c1, c2, p1, p2 = tiny_trained
    with jit_at_level_1():  # bitwise: not at the suite's level 0 (tests/_tiny.py)
        plain = tj.make_policy(c1, c2, ds.workspace, deterministic=False)
        rows = tj.make_policy(c1, c2, ds.workspace, deterministic=False, row_by_row=True)
    image, pose, cam = _inputs(ds, 1)
    image, pose = jnp.repeat(image, 4, axis=0), jnp.repeat(pose, 4, axis=0)
    key = jax.random.PRNGKey(7)
    out = rows(p1, p2, image, pose, cam, key)
    assert len({tuple(np.asarray(a).tolist()) for a in out.action}) == 4, out.action
    for i, k in enumerate(jax.random.split(key, 4)):
        one = plain(p1, p2, image[:1], pose[:1], cam, k)
        for field in ("action", "tentative", "correction"):
            np.testing.assert_array_equal(getattr(out, field)[i], getattr(one, field)[0], err_msg=field)
