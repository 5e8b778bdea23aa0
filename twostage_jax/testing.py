"""Small synthetic datasets for tests, benchmarks and examples (no simulator needed)."""

from __future__ import annotations

import numpy as np

from twostage_jax.geometry import look_at
from twostage_jax.types import Camera, Dataset, Workspace


def synthetic_camera(size: int = 128) -> Camera:
    """A camera 1.2 m in front of a 1 m workspace, looking slightly down at it."""
    f = 0.5 * size / np.tan(np.deg2rad(45.0) / 2)
    k = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32)
    pose = np.asarray(look_at((0.0, -1.2, 0.6), (0.0, 0.0, 0.1)))
    return Camera.create(k, pose, size, size)


def make_synthetic_dataset(
    num_episodes: int = 8, steps_per_episode: int = 4, image_size: int = 64, gamma: float = 0.99,
    seed: int = 0,
) -> Dataset:
    """A toy keyframe dataset: each episode reaches a random target drawn as a bright square.

    Every frame shows a red square where the episode's goal projects; the actions step the
    end-effector towards the goal, and the last transition of each episode has reward 1.

    Args:
      num_episodes: number of episodes.
      steps_per_episode: transitions per episode.
      image_size: frame side in pixels.
      gamma: discount of the Monte Carlo return.
      seed: numpy seed.

    Returns:
      A valid `Dataset` with num_episodes * steps_per_episode transitions.
    """
    rng = np.random.default_rng(seed)
    cam = synthetic_camera(image_size)
    ws = Workspace.create([-0.5, -0.5, 0.0], [0.5, 0.5, 0.5])
    lo, hi = np.asarray(ws.low), np.asarray(ws.high)
    k, pose_mat = np.asarray(cam.intrinsics), np.asarray(cam.cam_to_world)
    images, poses, actions, episode, rewards, returns, dones, oidx, nidx = [], [], [], [], [], [], [], [], []
    for ep in range(num_episodes):
        goal = rng.uniform(lo + 0.1, hi - 0.1)
        start = rng.uniform(lo + 0.1, hi - 0.1)
        p_cam = (goal - pose_mat[:3, 3]) @ pose_mat[:3, :3]
        u, v = k[0, 0] * p_cam[0] / p_cam[2] + k[0, 2], k[1, 1] * p_cam[1] / p_cam[2] + k[1, 2]
        path = [start + (goal - start) * t / steps_per_episode for t in range(steps_per_episode + 1)]
        grip = [1.0] * steps_per_episode + [-1.0]
        base = len(images)
        for t, p in enumerate(path):
            img = (rng.uniform(0, 40, (image_size, image_size, 3))).astype(np.uint8)
            r0, c0 = int(np.clip(v, 2, image_size - 3)), int(np.clip(u, 2, image_size - 3))
            img[r0 - 2:r0 + 3, c0 - 2:c0 + 3] = (255, 30, 30)
            images.append(img)
            poses.append(np.concatenate([2 * (p - lo) / (hi - lo) - 1, np.zeros(3), [grip[max(t - 1, 0)]]]))
        for t in range(steps_per_episode):
            oidx.append(base + t)
            nidx.append(base + t + 1)
            actions.append(poses[base + t + 1].copy())
            actions[-1][6] = grip[t + 1] if t + 1 < len(grip) else grip[-1]
            last = t == steps_per_episode - 1
            rewards.append(1.0 if last else 0.0)
            returns.append(gamma ** (steps_per_episode - 1 - t))
            dones.append(1.0 if last else 0.0)
            episode.append(ep)
    actions = np.clip(np.asarray(actions, np.float32), -1, 1)
    next_action = np.concatenate([actions[1:], actions[-1:]], 0)
    ends = np.asarray(dones) > 0
    next_action[ends] = actions[ends]
    n_img = len(images)
    all_poses = np.clip(np.asarray(poses, np.float32), -1, 1)
    return Dataset(
        images=np.stack(images),
        intrinsics=np.broadcast_to(k, (n_img, 3, 3)).copy(),
        cam_to_world=np.broadcast_to(pose_mat, (n_img, 4, 4)).copy(),
        obs_index=np.asarray(oidx, np.int32),
        next_obs_index=np.asarray(nidx, np.int32),
        pose=all_poses[np.asarray(oidx)],
        next_pose=all_poses[np.asarray(nidx)],
        action=actions,
        next_action=next_action,
        reward=np.asarray(rewards, np.float32),
        mc_return=np.asarray(returns, np.float32),
        done=np.asarray(dones, np.float32),
        episode=np.asarray(episode, np.int32),
        workspace=ws,
    )
