"""Base policies "of a user's" for the tests, named as launcher sources (`tests._bases:NAME`)."""

from __future__ import annotations

import numpy as np

STEP = np.array([0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)


def nudged_pose(context):
    """A host-side base(image, pose): the current pose moved a little along x."""
    del context

    def base(image, pose):
        assert image.dtype == np.uint8 and image.ndim == 4 and pose.shape == (image.shape[0], 7)
        return np.clip(pose + STEP, -1.0, 1.0)

    return base


class Waypoints:
    """A `SimBasePolicy` that reads the simulator: the next of fixed tool-centre-point waypoints
    after the one the hand is at (`waypoints`: [K, 7] actions), counting its calls."""

    def __init__(self, waypoints):
        self.waypoints = np.asarray(waypoints, np.float32)
        self.resets = self.calls = 0

    def reset(self, env, seed):
        self.resets += 1

    def act(self, env, observation):
        self.calls += 1
        from twostage_jax.actions import pose_to_action

        here = np.asarray(pose_to_action(env.tcp_position(), np.zeros(3), 1.0, env.workspace))
        dist = np.linalg.norm(self.waypoints[:, :3] - here[None, :3], axis=1)
        nxt = (dist.argmin() + 1) % len(self.waypoints) if dist.min() < 0.05 else 0
        return self.waypoints[nxt]


# Tool-centre-point waypoints (metres) through reach-v3's goal box: success on some layouts only.
REACH_WAYPOINTS = np.array([[-0.06, 0.83, 0.10], [0.06, 0.83, 0.10], [0.06, 0.88, 0.24],
                            [-0.06, 0.88, 0.24], [0.0, 0.85, 0.17]])


def reach_waypoints(workspace) -> np.ndarray:
    """[5, 7] actions of `REACH_WAYPOINTS` (neutral orientation, gripper open)."""
    from twostage_jax.actions import pose_to_action

    n = len(REACH_WAYPOINTS)
    return np.asarray(pose_to_action(REACH_WAYPOINTS, np.zeros((n, 3)), np.ones(n), workspace), np.float32)


def reach_sweep(context):
    """`Waypoints` through reach-v3's goal box (a `SimBasePolicy`)."""
    return Waypoints(reach_waypoints(context.workspace))


def not_a_policy(context):
    return 42


def raising(context):
    """A base policy that raises when called, as a user's model may."""
    def act(image, pose):
        raise ValueError("CUDA out of memory in user model")

    return act


def failing_factory(context):
    raise RuntimeError("no weights at /nowhere")


NOT_CALLABLE = 3
