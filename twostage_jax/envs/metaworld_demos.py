"""MetaWorld's scripted-expert demo recorder: `record_demos`.

`record_demos` runs MetaWorld's scripted expert (`metaworld.policies.ENV_POLICY_MAP`, which
reads the goal from the last three observation entries: privileged, and only used here) on a
fresh seeded layout per demo, recording a dense trajectory (one frame per MetaWorld step: tool-
centre-point position, orientation, gripper command and velocity, plus the MuJoCo state). It
then
  1. discovers keyframes (`twostage_jax.data.keyframes`), with the arm counted as stopped when
     every component of the tool-centre-point velocity is below `DEFAULT_KEYFRAMES.stop_threshold`
     m/s, plus the corners of the path (`DEFAULT_KEYFRAMES.path_tolerance`), then the close rule;
  2. replays the keyframe poses from the same seed through the env's own action mode
     (`MetaWorldEnv.step`) and keeps the demo only if the replay succeeds;
  3. renders only the frames the dataset needs (frame 0, the keyframes and every
     `augment_every`-th frame) by restoring the saved MuJoCo state.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from twostage_jax import _checks
from twostage_jax.actions import pose_to_action
from twostage_jax.data.trajectory import Trajectory, frames_to_render
from twostage_jax.data.keyframes import KeyframeConfig, discover_keyframes
from twostage_jax.types import Camera

_GRIPPER_SETTLE_MAX = 25
_GAP_THRESHOLD = 0.07  # metres between the claws (fully open ~0.1)

DEFAULT_KEYFRAMES = KeyframeConfig(stop_threshold=0.2, refractory=4, min_distance=0.01,
                                   path_tolerance=0.02)
"""MetaWorld keyframe thresholds. The scripted experts never stop between waypoints: a P-controlled
hand moves at ~8 * error m/s and switches waypoint within ~2 cm, so "stopped" means every axis
below 0.2 m/s (a slow-down near a waypoint); 4 frames refractory. Because the stop rule still
misses the waypoints the expert sweeps through (e.g. button-press-topdown's "above the button":
replaying straight moves between ARM's keyframes pushed the hand into the side of the button box,
0 of 70 demos kept), the Douglas-Peucker path refinement adds every corner of the dense path more
than 2 cm off the straight segments between keyframes (1 cm kept as many demos with ~40% more
keyframes; 0.5 cm kept fewer: peg-insert demos then need more keyframes than an episode allows).
The paper's 1 cm close rule, applied last, prunes keyframes of slow stretches."""


class DemoStats(NamedTuple):
    """Outcome of `record_demos`.

    Attributes:
      attempts: seeds tried.
      expert_successes: seeds where the scripted expert succeeded.
      kept: demos whose keyframe replay also succeeded (== len(trajectories)).
      keep_rate: kept / expert_successes (NaN if no expert success).
      mean_keyframes: mean keyframes per kept demo.
      mean_frames: mean dense frames per kept demo.
      seconds: wall time.
    """

    attempts: int
    expert_successes: int
    kept: int
    keep_rate: float
    mean_keyframes: float
    mean_frames: float
    seconds: float


def replay_keyframes(env: Any, seed: int, actions: np.ndarray) -> bool:
    """Replays [K, 7] keyframe actions from `env.reset(seed)`; True if the task succeeds."""
    env.reset(seed)
    for action in np.asarray(actions):
        _, reward, done, _ = env.step(action)
        if reward > 0:
            return True
        if done:
            return False
    return False


def keyframe_actions(record: dict[str, Any], config: KeyframeConfig, workspace: Any
                     ) -> tuple[list[int], np.ndarray]:
    """The keyframes of a dense expert record (`_record_expert`'s) and their [K, 7] actions."""
    kf = discover_keyframes(record["positions"], record["gripper_open"], record["velocities"], config)
    g = np.where(record["gripper_open"][kf] >= 0.5, 1.0, -1.0)
    acts = np.asarray(pose_to_action(record["positions"][kf], record["eulers"][kf], g, workspace),
                      np.float32).reshape(-1, 7)
    return kf, acts


def _record_expert(env: Any, policy: Any, seed: int | None, max_steps: int,
                   extra_frames: int, require_success: bool = True) -> dict[str, Any] | None:
    """Runs the scripted expert from `seed` (None: from the env's current state, its fingers'
    state as the first recorded gripper state); the dense record, or None if it fails (with
    `require_success=False`, the record of its `max_steps` steps all the same).

    The recorded gripper state is the fingers' state, not the expert's command (as RLBench's
    `gripper_open` is): after the command changes it flips once the finger gap has crossed
    `_GAP_THRESHOLD` (closed below, open above; the experts use the same 7 cm test) or after
    `_GRIPPER_SETTLE_MAX` steps. MetaWorld's experts keep moving the arm while the fingers close,
    so that frame is where the grasp actually takes hold.
    """
    if seed is not None:
        env.reset(seed)
    state = 1.0 if seed is not None or env._finger_gap() > _GAP_THRESHOLD else 0.0
    sim = env.sim
    obs = sim._get_obs()
    dt = float(sim.model.opt.timestep * sim.frame_skip)
    positions, eulers, gripper, states = [env.tcp_position()], [env.relative_euler()], [state], [
        env.get_state()]
    pending = 0
    remaining = None
    for _ in range(max_steps + extra_frames):
        action = np.asarray(policy.get_action(obs), np.float64)
        obs, _, _, _, info = sim.step(action)
        command = 0.0 if action[3] > 0 else 1.0
        new_gap = env._finger_gap()
        if command != state:
            pending += 1
            crossed = new_gap < _GAP_THRESHOLD if command == 0.0 else new_gap > _GAP_THRESHOLD
            if crossed or pending >= _GRIPPER_SETTLE_MAX:
                state, pending = command, 0
        else:
            pending = 0
        positions.append(env.tcp_position())
        eulers.append(env.relative_euler())
        gripper.append(state)
        states.append(env.get_state())
        if remaining is None and info.get("success", False):
            remaining = extra_frames
        if remaining is not None:
            if remaining <= 0:
                break
            remaining -= 1
        elif len(positions) > max_steps:
            if require_success:
                return None
            break
    if remaining is None and require_success:
        return None
    pos = np.asarray(positions)
    vel = np.zeros_like(pos)
    vel[1:] = np.diff(pos, axis=0) / dt
    return {"positions": pos, "eulers": np.asarray(eulers), "velocities": vel,
            "gripper_open": np.asarray(gripper, np.float32), "states": states}


def record_demos(
    task: str,
    num_demos: int,
    seed: int = 0,
    augment_every: int = 10,
    keyframe_config: KeyframeConfig | None = None,
    env_config: Any = None,
    max_attempts: int | None = None,
    max_expert_steps: int = 500,
    extra_frames: int = 10,
    progress: bool = True,
    strict: bool = True,
) -> tuple[list[Trajectory], DemoStats]:
    """Records `num_demos` MetaWorld demonstrations whose keyframe replay succeeds.

    Layout seeds are seed, seed + 1, ...; a seed is skipped when the expert fails within
    `max_expert_steps` or when replaying its keyframes through the env's action mode fails.

    Args:
      task: MetaWorld v3 task name with a scripted expert.
      num_demos: demos to keep.
      seed: first layout seed.
      augment_every: every n-th dense frame gets an image (demo augmentation start frames).
      keyframe_config: keyframe thresholds (default `DEFAULT_KEYFRAMES`).
      env_config: a `MetaWorldConfig` (default: the default one).
      max_attempts: seeds to try at most (default 3 * num_demos + 10).
      max_expert_steps: MetaWorld steps allowed for the expert.
      extra_frames: frames recorded after the expert's first success, so the last keyframe
        lies inside the success region rather than on its border.
      progress: show a tqdm progress bar.
      strict: raise if fewer than `num_demos` demos were kept (else return what there is).

    Returns:
      (trajectories, stats).

    Raises:
      ValueError: bad arguments or a task without a scripted expert.
      RuntimeError: fewer than `num_demos` demos after `max_attempts` seeds.
    """
    from twostage_jax.envs.metaworld import MetaWorldEnv  # first: it selects MUJOCO_GL

    from metaworld.policies import ENV_POLICY_MAP

    _checks.check_positive_int("num_demos", num_demos)
    _checks.check_positive_int("augment_every", augment_every)
    if task not in ENV_POLICY_MAP:
        raise ValueError(f"`task` must be a MetaWorld v3 task with a scripted expert; got {task!r}. "
                         f"Valid names: {sorted(ENV_POLICY_MAP)}.")
    cfg = keyframe_config if keyframe_config is not None else DEFAULT_KEYFRAMES
    attempts_allowed = max_attempts if max_attempts is not None else 3 * num_demos + 10
    env = MetaWorldEnv(task, env_config)
    policy = ENV_POLICY_MAP[task]()
    workspace = env.workspace
    start = time.perf_counter()
    trajectories: list[Trajectory] = []
    attempts = expert_ok = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_demos, desc=f"demos {task}", unit="demo")
    try:
        while len(trajectories) < num_demos and attempts < attempts_allowed:
            s = seed + attempts
            attempts += 1
            rec = _record_expert(env, policy, s, max_expert_steps, extra_frames)
            if rec is None:
                continue
            expert_ok += 1
            kf, acts = keyframe_actions(rec, cfg, workspace)
            if not kf:
                continue
            if not replay_keyframes(env, s, acts):
                continue
            frames = frames_to_render(len(rec["positions"]), kf, augment_every)
            images, cams = [], []
            for f in frames:
                env.set_state(rec["states"][f])
                images.append(env.render())
                cams.append(env.camera)  # a moving camera's pose at this frame
            camera = Camera(intrinsics=np.stack([np.asarray(c.intrinsics) for c in cams]),
                            cam_to_world=np.stack([np.asarray(c.cam_to_world) for c in cams]),
                            width=cams[0].width, height=cams[0].height)
            trajectories.append(Trajectory(
                positions=rec["positions"], eulers=rec["eulers"],
                gripper_open=rec["gripper_open"], velocities=rec["velocities"],
                keyframes=np.asarray(kf, np.int32), image_frames=frames,
                images=np.stack(images), camera=camera, task=task, seed=s))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(tried=attempts, kept=len(trajectories))
    finally:
        if bar is not None:
            bar.close()
        env.close()
    elapsed = time.perf_counter() - start
    kept = len(trajectories)
    stats = DemoStats(
        attempts=attempts, expert_successes=expert_ok, kept=kept,
        keep_rate=kept / expert_ok if expert_ok else float("nan"),
        mean_keyframes=float(np.mean([len(t.keyframes) for t in trajectories])) if kept else 0.0,
        mean_frames=float(np.mean([t.num_frames for t in trajectories])) if kept else 0.0,
        seconds=elapsed)
    if strict and kept < num_demos:
        raise RuntimeError(
            f"Recorded only {kept} of {num_demos} demos for {task!r} after {attempts} seeds "
            f"(expert successes {expert_ok}, replay keep rate {stats.keep_rate:.2f}); raise "
            "`max_attempts` or check the keyframe thresholds.")
    return trajectories, stats
