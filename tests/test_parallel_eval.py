"""Parallel evaluation (`EnvPool`): the same episodes as the sequential path, and clear errors."""

import functools

import jax
import numpy as np
import pytest

import twostage_jax as tj
from twostage_jax.evaluation import EnvPool, Job
from twostage_jax.policy import PolicyOutput

from tests._bases import reach_waypoints
from tests._tiny import jit_at_level_1, tiny_config
from twostage_jax.envs.with_base import make_base_acting_env

mw = pytest.importorskip("twostage_jax.envs.metaworld")

SIZE = 32
ENV_FN = functools.partial(tj.envs.make_env, "reach-v3", width=SIZE, height=SIZE, max_keyframes=5)
# The same env with a base policy acting beside the simulator: it sweeps the waypoints too,
# reading the hand's position from the simulator, and its action rides on each observation.
BASE_ENV_FN = functools.partial(make_base_acting_env, ENV_FN, "tests._bases:reach_sweep",
                                tj.BaseContext("reach-v3", "metaworld", mw.default_workspace()))


def _sweep(images, poses, camera, tentative=None):
    """Goes to the waypoint after the one the gripper is at (the first one from elsewhere)."""
    targets = reach_waypoints(mw.default_workspace())
    dist = np.linalg.norm(poses[:, None, :3] - targets[None, :, :3], axis=-1)  # [B, K]
    near = dist.argmin(axis=1)
    nxt = np.where(dist.min(axis=1) < 0.05, (near + 1) % len(targets), 0)
    action = targets[nxt].astype(np.float32)
    return PolicyOutput(action=action, tentative=action, correction=np.zeros_like(action))


def _sweep_choosing(images, poses, camera, tentative=None):
    """`_sweep`, saying which waypoint it chose (as a critic-choosing policy says its choice)."""
    out = _sweep(images, poses, camera)
    targets = reach_waypoints(mw.default_workspace())
    choice = np.abs(out.action[:, None, :3] - targets[None, :, :3]).sum(-1).argmin(axis=1)
    return out._replace(choice=choice.astype(np.int32))


def _execute_base(images, poses, camera, tentative=None):
    """Executes the base policy's action, given with each observation."""
    assert tentative is not None and tentative.shape == (images.shape[0], 7)
    return PolicyOutput(action=tentative, tentative=tentative, correction=np.zeros_like(tentative))


def _tiny_policy():
    """The untrained stage-1 policy of the tiny test networks, its rows computed one by one."""
    c1 = tiny_config()
    params = jax.jit(tj.make_networks(c1.network, 1, "bc").init)(jax.random.PRNGKey(0), tj.Stage1Obs(
        np.zeros((1, SIZE, SIZE, 3), np.uint8), np.zeros((1, 7), np.float32)))
    with jit_at_level_1():  # episodes bitwise those of batch-1 calls: not at level 0 (tests/_tiny.py)
        policy = tj.make_policy(c1, None, mw.default_workspace(), row_by_row=True)
    return lambda image, pose, camera, tentative=None: policy(params, None, image, pose, camera)


def test_parallel_episodes_equal_sequential():
    net = _tiny_policy()
    jobs = ([Job(_sweep, s, record=s in (1, 3)) for s in range(6)] + [Job(net, s, record=s == 1) for s in range(3)]
            + [Job(_execute_base, s, record=s == 1) for s in range(3)] + [Job(_sweep_choosing, s) for s in range(2)])
    with EnvPool(BASE_ENV_FN, 1) as pool:
        seq = pool.run(jobs)
    ended = []
    with EnvPool(BASE_ENV_FN, 2) as pool:
        par = pool.run(jobs, on_episode=lambda i, ep: ended.append(i))
        assert pool.run(jobs[:1])[0].success == seq[0].success  # the pool is reusable
    assert sorted(ended) == list(range(len(jobs)))
    successes = [e.success for e in seq]
    assert [e.success for e in par] == successes
    assert 0 < sum(successes[:6]) < 6, successes  # the sweep solves some layouts, not all
    for i, (a, b) in enumerate(zip(seq, par)):
        assert (a.num_steps, a.clipped) == (b.num_steps, b.clipped), i
        for field in ("frames", "tentative", "actions", "choices"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{i} {field}")
    assert seq[3].frames.shape == (seq[3].num_steps + 1, SIZE, SIZE, 3)
    assert seq[7].actions.shape == (5, 7) and not seq[7].success  # the untrained net: 5 steps
    for a, b in zip(seq[:3], seq[9:]):  # the base policy's sweep, read from the simulator, is the
        assert a.success == b.success and a.num_steps == b.num_steps  # host-side sweep's
    np.testing.assert_array_equal(seq[1].actions, seq[10].actions)
    for e in seq[12:]:  # each step's choice is kept; a policy that makes none keeps none
        assert e.choices.shape == (e.num_steps,) and e.choices.dtype == np.int32 and e.choices.max() > 0
    assert seq[0].choices.size == 0 and seq[12].success == seq[0].success


def test_pool_errors_name_the_problem():
    with pytest.raises(ValueError, match="`workers` must be a positive int; got 0"):
        EnvPool(ENV_FN, 0)
    bad = functools.partial(tj.envs.make_env, "no-such-task-v3")
    with EnvPool(bad, 2) as pool:
        with pytest.raises(RuntimeError, match=r"worker 0 failed while building its env:(.|\n)*no-such-task"):
            pool.run([Job(_sweep, 0)])
    with EnvPool(ENV_FN, 1) as pool:
        with pytest.raises(ValueError, match=r"`jobs\[1\].seed` must be a non-negative int"):
            pool.run([Job(_sweep, 0), Job(_sweep, -1)])
