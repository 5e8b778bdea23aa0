"""Correcting a foreign base policy, and calibrating stage 2 to its errors."""

import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj
from tests import _bases
from tests._tiny import tiny_config, tiny_dataset
from twostage_jax.base_policy import check_sim_base_action
from twostage_jax.envs.base import Observation
from twostage_jax.envs.with_base import BaseActingEnv, replay_validation
from twostage_jax.calibration import MAD_TO_STD, calibrate_crop_size, crop_offsets


def _camera(ds):
    cam = ds.camera(0)
    return tj.Camera(jnp.asarray(cam.intrinsics), jnp.asarray(cam.cam_to_world), cam.width, cam.height)


def _observations(ds, rows):
    return np.asarray(ds.images)[np.asarray(ds.obs_index)[rows]], np.asarray(ds.pose)[rows]


def test_a_foreign_base_policy_is_corrected_as_act_with_its_tentative(tiny_trained):
    # stage 2 (CQL) trained 4 steps from the demos alone; its stage 1 is not used here
    ds, c1, c2, p1, p2 = tiny_trained
    demo = {z.tobytes(): a for z, a in zip(np.asarray(ds.pose, np.float32), np.asarray(ds.action))}
    offset = np.array([0.1, -0.05, 0.08, 0.0, 0.02, -0.03, 0.0], np.float32)

    def demo_plus_offset(image, pose):  # a "policy" from elsewhere: the demo action, off by a bit
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 4
        return np.clip(np.stack([demo[z.tobytes()] for z in pose]) + offset, -1, 1)

    image, pose = _observations(ds, [0, 4, 9])
    cam = _camera(ds)
    corrected = tj.correct_base_policy(demo_plus_offset, c2, ds.workspace)
    out = corrected(p2, image, pose, cam)
    base = demo_plus_offset(image, pose).astype(np.float32)
    assert out.action.shape == (3, 7) and np.all(np.isfinite(out.action))
    np.testing.assert_array_equal(out.tentative, base)
    # the two-stage policy's act, given the base actions as its tentative
    same = tj.make_policy(c1, c2, ds.workspace)(p1, p2, image, pose, cam, tentative=base)
    np.testing.assert_allclose(out.action, same.action, atol=1e-6)
    np.testing.assert_allclose(out.correction, same.correction, atol=1e-6)
    assert not np.allclose(out.action, base, atol=1e-4)  # stage 2 did change it
    # a base policy may return JAX arrays too
    as_jax = tj.correct_base_policy(lambda im, z: jnp.asarray(demo_plus_offset(im, z)), c2, ds.workspace)
    np.testing.assert_allclose(as_jax(p2, image, pose, cam).action, out.action, atol=1e-6)


def test_calibration_recovers_a_base_policys_known_error():
    ds = tiny_dataset()
    target = np.asarray(ds.pose) * np.array([0.5] * 6 + [1.0], np.float32)  # a(z): known per pose
    ds = ds.replace(action=target, next_action=target)
    bias = np.array([0.4, -0.3, 0.5, 0.03, 0.005, 0.1, 0.3])  # in atanh space, per dimension
    lookup = {z.tobytes(): a for z, a in zip(np.asarray(ds.pose), target)}
    calls = []

    def biased(image, pose):
        calls.append((image, pose))
        a = np.stack([lookup[z.tobytes()] for z in pose]).astype(np.float64)
        return np.tanh(np.arctanh(np.clip(a, -0.99, 0.99)) - bias).astype(np.float32)

    cal = tj.calibrate_to_base_policy(biased, ds, floor=0.02, batch_size=5, multiple=2, min_size=4)
    # every transition was shown its own frame and pose, in batches of 5
    assert [len(p) for _, p in calls] == [5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([im for im, _ in calls]),
                                  np.asarray(ds.images)[np.asarray(ds.obs_index)])
    np.testing.assert_array_equal(np.concatenate([p for _, p in calls]), np.asarray(ds.pose))
    # sigma: 1.4826 x the constant error (a bias is an error too), the floor where it is smaller
    # (dimension 4: 1.4826 x 0.005 < 0.02), and the gripper keeps its sigma of 1
    want = np.maximum(0.02, MAD_TO_STD * np.abs(bias[:6]))
    np.testing.assert_allclose(cal.sigma[:6], want, rtol=1e-4)
    assert cal.sigma[4] == pytest.approx(0.02) and cal.sigma[6] == pytest.approx(1.0)
    # the crop size: calibrate_crop_size on the targets' offsets in the tentative crops
    offsets = crop_offsets(_camera(ds), ds.workspace, cal.tentative, target)
    np.testing.assert_allclose(cal.offsets, offsets, atol=1e-9)
    assert cal.crop_size == calibrate_crop_size(offsets, coverage=0.95, multiple=2, min_size=4,
                                                max_size=32) > 4
    # a base policy without error gets the floor and the smallest crop
    exact = tj.calibrate_to_base_policy(lambda im, z: np.stack([lookup[r.tobytes()] for r in z]), ds)
    np.testing.assert_allclose(exact.sigma[:6], 0.02)
    assert exact.crop_size == 8


def wrong_shape(image, pose):
    return np.zeros((len(pose), 6), np.float32)


def out_of_range(image, pose):
    return np.full((len(pose), 7), 1.5, np.float32)


def with_nan(image, pose):
    out = np.zeros((len(pose), 7), np.float32)
    out[1, 2] = np.nan
    return out


def not_an_array(image, pose):
    return None


@pytest.mark.parametrize("base,match", [
    (wrong_shape, r"wrong_shape must return actions of shape \[3, 7\].*got shape \(3, 6\)"),
    (out_of_range, r"out_of_range must return actions in \[-1, 1\].*got values in \[1.5, 1.5\]"),
    (with_nan, r"with_nan must return finite actions.*NaN or inf in row\(s\) \[1\]"),
    (not_an_array, r"not_an_array must return a numeric \[3, 7\] array.*NoneType"),
])
def test_a_bad_base_output_names_the_base_policy(base, match):
    ds = tiny_dataset()
    image, pose = _observations(ds, [0, 1, 2])
    corrected = tj.correct_base_policy(base, tiny_config("bc"), ds.workspace)
    with pytest.raises(ValueError, match=match):
        corrected({}, image, pose, _camera(ds))  # raised before stage 2 runs
    with pytest.raises(ValueError, match=base.__qualname__):
        tj.calibrate_to_base_policy(base, ds, batch_size=3)


def test_a_base_policy_that_raises_is_named_in_one_line(trained, tmp_path):
    import shutil

    from tests._launcher import launch_in_process

    raises = _bases.raising(None)
    with pytest.raises(tj.BasePolicyError, match=r"base policy .*raising.*act raised ValueError: CUDA out of memory"):
        tj.call_base_policy(raises, np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 7), np.float32))
    # the launcher: stage 2 calibrated to it fails in one line naming the source
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd, ignore=shutil.ignore_patterns("stage2"))
    out = launch_in_process("--mode=stage2", f"--workdir={wd}", "--config.stage1.source=tests._bases:raising")
    errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-3000:]
    assert errors[0].startswith("error: config.stage1.source (tests._bases:raising): base policy ")
    assert "raised ValueError: CUDA out of memory in user model" in errors[0]


def test_bad_arguments_are_named():
    ds = tiny_dataset()
    with pytest.raises(TypeError, match="`base` must be a callable"):
        tj.correct_base_policy(np.zeros(7), tiny_config("bc"), ds.workspace)
    act = tj.make_policy(None, tiny_config("bc"), ds.workspace)
    image, pose = _observations(ds, [0, 1])
    with pytest.raises(ValueError, match="`tentative` is None, but this policy was built with stage1=None"):
        act(None, {}, image, pose, _camera(ds))
    with pytest.raises(ValueError, match="`stage1` and `stage2` are both None"):
        tj.make_policy(None, None, ds.workspace)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        tj.calibrate_to_base_policy(wrong_shape, ds, batch_size=0)


@pytest.mark.parametrize("source,match", [
    ("tests._bases", r"must be 'module.path:function'.*got 'tests._bases'"),
    ("tests._no_such_module:make", r"module 'tests._no_such_module' does not import \(ModuleNotFoundError"),
    ("tests._bases:missing", r"module 'tests._bases' has no attribute 'missing'"),
    ("tests._bases:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not a factory"),
    ("tests._bases:failing_factory", r"the factory raised RuntimeError: no weights at /nowhere"),
    ("tests._bases:not_a_policy", r"the factory returned a int; expected a callable base\(image, pose\)"),
])
def test_a_bad_base_source_is_named(source, match):
    context = tj.BaseContext("reach-v3", "metaworld", tiny_dataset().workspace)
    with pytest.raises(ValueError, match=match) as e:
        tj.load_base_policy(source, context)
    assert repr(source) in str(e.value)


class _Recorder:
    """A fake simulator: layout `seed` starts at pose seed / 100; a step moves to the action."""

    def __init__(self):
        self.pose, self.steps, self.max_keyframes = None, 0, 3

    def reset(self, seed):
        self.pose, self.steps = np.full(7, seed / 100, np.float32), 0
        return Observation(np.zeros((4, 4, 3), np.uint8), self.pose, None)

    def step(self, action):
        self.pose, self.steps = np.asarray(action, np.float32), self.steps + 1
        return Observation(np.zeros((4, 4, 3), np.uint8), self.pose, None), 0.0, self.steps >= 3, {}

    def close(self):
        pass


class _OffBy:
    """A sim-side base policy: the demo's next action, read from the fake simulator's plan, plus
    a fixed error (its `act` sees the env)."""

    def __init__(self, plans, error, clip=True):
        self.plans, self.error, self.clip, self.t = plans, error, clip, 0

    def reset(self, env, seed):
        self.plan, self.t = self.plans[seed], 0

    def act(self, env, observation):
        self.t += 1
        action = self.plan[self.t - 1] + self.error
        return np.clip(action, -1, 1) if self.clip else action


def test_a_sim_side_base_policy_is_replayed_along_the_held_out_demos():
    ds = tiny_dataset()
    episode, action = np.asarray(ds.episode), np.asarray(ds.action, np.float32)
    num = int(episode.max()) + 1
    seeds = [7 + e for e in range(num)]
    plans = {s: action[episode == e] for e, s in enumerate(seeds)}
    error = np.array([0.1, -0.05, 0, 0, 0, 0, 0], np.float32)
    env = BaseActingEnv(_Recorder(), _OffBy(plans, error))
    tentative, target = replay_validation(env, ds, seeds)
    # each demo stops after the fake env's 3 keyframes
    want = np.concatenate([a[:3] for a in plans.values()])
    np.testing.assert_array_equal(target, want)
    np.testing.assert_allclose(tentative, np.clip(want + error, -1, 1), atol=1e-7)
    with pytest.raises(ValueError, match=f"`seeds` must give the layout of each of the {num} demos"):
        replay_validation(env, ds, seeds[:-1])
    bad = BaseActingEnv(_Recorder(), _OffBy(plans, 2.0, clip=False))
    with pytest.raises(ValueError, match=r"base policy .*_OffBy must return actions in \[-1, 1\]"):
        bad.reset(seeds[0])
    with pytest.raises(TypeError, match="must have reset\\(env, seed\\) and act\\(env, observation\\)"):
        BaseActingEnv(_Recorder(), lambda image, pose: pose)
    with pytest.raises(ValueError, match=r"must return one action of shape \[7\]"):
        check_sim_base_action(_OffBy({}, 0), np.zeros((2, 7)))
