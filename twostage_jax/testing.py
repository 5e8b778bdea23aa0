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


SIDE_EYES = ((1.2, 0.0, 0.6), (0.0, 0.05, 1.6))
"""Where `synthetic_cameras` puts the cameras after the front one (a side and a top view)."""


def synthetic_cameras(size: int = 128, num_views: int = 1) -> list[Camera]:
    """`synthetic_camera`, then up to two more fixed cameras looking at the same workspace."""
    if not 1 <= num_views <= 1 + len(SIDE_EYES):
        raise ValueError(f"`num_views` must lie in [1, {1 + len(SIDE_EYES)}]; got {num_views!r}.")
    front = synthetic_camera(size)
    others = [Camera.create(front.intrinsics, np.asarray(look_at(eye, (0.0, 0.0, 0.1))), size, size)
              for eye in SIDE_EYES[:num_views - 1]]
    return [front, *others]


def make_synthetic_dataset(
    num_episodes: int = 8, steps_per_episode: int = 4, image_size: int = 64, gamma: float = 0.99,
    seed: int = 0, num_views: int = 1,
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
      num_views: cameras per frame (`synthetic_cameras`); the first view's images are the
        same for any number of views.

    Returns:
      A valid `Dataset` with num_episodes * steps_per_episode transitions.
    """
    rng = np.random.default_rng(seed)
    cams = synthetic_cameras(image_size, num_views)
    extra_rng = np.random.default_rng(seed + 10_000)  # the other views' noise: view 0 unchanged
    cam = cams[0]
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
        base = len(images) // num_views
        for t, p in enumerate(path):
            img = (rng.uniform(0, 40, (image_size, image_size, 3))).astype(np.uint8)
            r0, c0 = int(np.clip(v, 2, image_size - 3)), int(np.clip(u, 2, image_size - 3))
            img[r0 - 2:r0 + 3, c0 - 2:c0 + 3] = (255, 30, 30)
            images.append(img)
            for other in cams[1:]:
                ko, mo = np.asarray(other.intrinsics), np.asarray(other.cam_to_world)
                pc = (goal - mo[:3, 3]) @ mo[:3, :3]
                uo, vo = ko[0, 0] * pc[0] / pc[2] + ko[0, 2], ko[1, 1] * pc[1] / pc[2] + ko[1, 2]
                img = (extra_rng.uniform(0, 40, (image_size, image_size, 3))).astype(np.uint8)
                r0, c0 = int(np.clip(vo, 2, image_size - 3)), int(np.clip(uo, 2, image_size - 3))
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
    n_frames = len(images) // num_views
    all_poses = np.clip(np.asarray(poses, np.float32), -1, 1)
    return Dataset(
        images=np.stack(images),
        intrinsics=np.tile(np.stack([np.asarray(c.intrinsics) for c in cams]), (n_frames, 1, 1)),
        cam_to_world=np.tile(np.stack([np.asarray(c.cam_to_world) for c in cams]), (n_frames, 1, 1)),
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
        num_views=num_views,
    )
