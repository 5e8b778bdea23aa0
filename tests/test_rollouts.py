"""The launcher's evaluation jobs: stage-1 cache keyed by parameters, config checks, kept
learning-curve checkpoints."""

import numpy as np
import pytest

from twostage_jax.launch import eval_jobs as rollouts
from twostage_jax.configs import smoke
from twostage_jax.checkpoint import Checkpointer
from twostage_jax.envs.base import Observation
from twostage_jax.evaluation import EnvPool
from twostage_jax.policy import PolicyOutput
from twostage_jax.testing import synthetic_camera
from twostage_jax.types import Workspace

from tests._tiny import tiny_config

LAYOUTS = [100, 101, 102, 103]


class _CountingEnv:
    """A one-step env: success iff action[0] > (layout - 100.5) / 1000 (layout-dependent)."""

    task, max_keyframes, resets = "fake", 1, 0

    def __init__(self):
        self.camera = synthetic_camera(8)

    def _obs(self):
        return Observation(np.zeros((8, 8, 3), np.uint8), np.zeros(7, np.float32), self.camera)

    def reset(self, seed):
        _CountingEnv.resets += 1
        self._seed = seed
        return self._obs()

    def step(self, action):
        ok = float(action[0]) > (self._seed - 100.5) / 1000
        return self._obs(), float(ok), True, {"clipped": False}

    def close(self):
        pass


def _policy(p1, p2, image, pose, camera):
    a = np.full((image.shape[0], 7), float(np.asarray(p1["w"])) + (0.0 if p2 is None else 0.01), np.float32)
    return PolicyOutput(a, a, np.zeros_like(a))


def _evaluate(tmp_path, params1, layouts=LAYOUTS):
    c = smoke.get_config()
    cache = rollouts.Stage1Cache(tmp_path / "eval_cache.json", rollouts.cache_setting(c, layouts))
    workspace = Workspace.create([-1.0, -1.0, 0.0], [1.0, 1.0, 1.0])  # unused: the policies are stubs
    ev = rollouts.Evaluation(tiny_config(), tiny_config(), workspace, layouts, 2, cache)
    ev.policies = {"stage1": _policy, "two_stage": _policy}
    ev.add("final", params1, {"w": np.zeros(2)})
    _CountingEnv.resets = 0
    with EnvPool(_CountingEnv, 1) as pool:
        success, _ = ev.run(pool)
    return success["final"], ev.reused, _CountingEnv.resets


def test_stage1_cache_is_keyed_by_the_parameters(tmp_path):
    params = {"w": np.array([0.0, -0.1])}
    first, reused, resets = _evaluate(tmp_path, params)
    assert (reused, resets) == (0, 2 * 2 * len(LAYOUTS))
    np.testing.assert_array_equal(first["stage1"], [[1, 0, 0, 0], [0, 0, 0, 0]])
    again, reused, resets = _evaluate(tmp_path, params)  # same parameters: stage 1 reused
    assert (reused, resets) == (2, 2 * len(LAYOUTS))
    np.testing.assert_array_equal(again["stage1"], first["stage1"])
    # seed 1 retrained (same step, other values): only its stage 1 is rolled out again
    retrained, reused, resets = _evaluate(tmp_path, {"w": np.array([0.0, 0.001])})
    assert (reused, resets) == (1, 3 * len(LAYOUTS))
    np.testing.assert_array_equal(retrained["stage1"], [[1, 0, 0, 0], [1, 1, 0, 0]])
    # other evaluation layouts: nothing reused
    assert _evaluate(tmp_path, params, LAYOUTS[:3])[1:] == (0, 2 * 2 * 3)
    # an unreadable cache file counts as empty
    (tmp_path / "eval_cache.json").write_text("{truncated")
    assert _evaluate(tmp_path, params)[1] == 0


def test_fingerprint_sees_values_shapes_and_names():
    fp = rollouts.params_fingerprint
    base = fp({"a": np.zeros(3, np.float32)})
    assert base == fp({"a": np.zeros(3, np.float32)})
    for other in ({"a": np.zeros(3, np.float64)}, {"a": np.zeros((1, 3), np.float32)},
                  {"b": np.zeros(3, np.float32)}, {"a": np.array([0, 0, 1e-30], np.float32)}):
        assert fp(other) != base


@pytest.mark.parametrize("field, value, match", [
    ("workers", 0, "config.eval.workers must be a positive int"),
    ("workers", True, "config.eval.workers must be a positive int"),
    ("curve_steps", (3,), r"config.eval.curve_steps\[0\] must be a positive multiple"),
    ("curve_steps", (2, 10), r"config.eval.curve_steps\[1\] must be .* at most both stages' num_steps \(8\)"),
    ("curve_steps", (4, 2), "config.eval.curve_steps must be increasing"),
])
def test_eval_config_errors_name_the_field(field, value, match):
    from twostage_jax.launch.launch_config import check_config, replace_path

    with pytest.raises(ValueError, match=match):  # when the EvalConfig is built, or across fields
        check_config(replace_path(smoke.get_config(), {f"eval.{field}": value}))


def test_checkpointer_keeps_curve_steps(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, keep_steps=(2, 3))
    for step in range(1, 7):
        ckpt.save(step, {"x": np.full(2, step, np.float32)}, {})
    assert ckpt.all_steps() == [2, 3, 5, 6]
    state, meta = ckpt.restore({"x": np.zeros(2, np.float32)}, 3)
    assert meta["step"] == 3 and float(state["x"][0]) == 3.0
    ckpt.close()
