"""Keyframe discovery: ARM's rules (James & Davison, Q-attention) plus the paper's close-keyframe rule.

Frame i (i > 0) of a dense demonstration is a keyframe when
  1. the gripper state changes (gripper_open[i] != gripper_open[i - 1]);
  2. it is the last frame;
  3. the arm has stopped: every component of velocities[i] is within `stop_threshold` of zero,
     the gripper state is the same at i - 2, i - 1, i and i + 1, i is not the second-to-last
     frame, and no stop was detected in the previous `refractory` frames (a stop keyframe
     starts a refractory period, so one pause yields one keyframe).
If the last two keyframes are consecutive frames, the second-to-last is dropped (ARM).

The paper's rule (Sec. V): a keyframe whose position is within `min_distance` of the NEXT
keyframe's position is dropped (short transitions teach the policy to barely move). Two guards:
the last keyframe is never dropped, and a keyframe whose gripper state differs from both its
neighbours' is kept, since dropping it would lose a whole close-then-open (or open-then-close).

Path refinement (optional, `KeyframeConfig.path_tolerance` > 0; off by default, so RLBench demos
get ARM's rules unchanged): the arm-stopped rule assumes an expert that pauses at its waypoints
(RLBench's motion planner does). An expert that never stops (MetaWorld's P-controlled scripts
switch waypoint on the fly) leaves its waypoints unmarked, and replaying straight moves between
the ARM keyframes can cut corners through obstacles (e.g. into the side of a button box). So,
after ARM's rules and before the close rule, every segment between consecutive keyframes (the
first starting at frame 0) is split Douglas-Peucker style: the frame of the dense path farthest
from the straight segment joining the segment's end positions becomes a keyframe if it is more
than `path_tolerance` away, and both halves are split again. This marks exactly the corners of
the path, the frames where the arm "would have stopped" had the expert paused there.

Order: ARM rules -> path refinement -> close-keyframe rule (applied last).

Velocities: RLBench's joint velocities (rad/s) with ARM's threshold 0.1; for MetaWorld the demo
recorder passes the tool-centre-point velocity (m/s) with its own threshold (see
`twostage_jax.envs.metaworld_demos`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from twostage_jax import _checks


@dataclasses.dataclass(frozen=True)
class KeyframeConfig:
    """Thresholds of keyframe discovery.

    Attributes:
      stop_threshold: |velocity| below which (every component) the arm counts as stopped.
      refractory: frames after a stop keyframe during which no new stop is detected.
      min_distance: metres; a keyframe this close to the next keyframe's position is dropped
        (0 disables the paper's rule).
      path_tolerance: metres; Douglas-Peucker refinement of the segments between keyframes
        (see the module docstring; 0 disables it, ARM's rules alone).
    """

    stop_threshold: float = 0.1
    refractory: int = 4
    min_distance: float = 0.01
    path_tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not self.stop_threshold > 0:
            raise ValueError(f"`stop_threshold` must be > 0; got {self.stop_threshold!r}.")
        if not isinstance(self.refractory, int) or self.refractory < 0:
            raise ValueError(f"`refractory` must be a non-negative int; got {self.refractory!r}.")
        if not self.min_distance >= 0:
            raise ValueError(f"`min_distance` must be >= 0; got {self.min_distance!r}.")
        if not self.path_tolerance >= 0:
            raise ValueError(f"`path_tolerance` must be >= 0; got {self.path_tolerance!r}.")


def arm_keyframes(gripper_open: Any, velocities: Any, stop_threshold: float = 0.1,
                  refractory: int = 4) -> list[int]:
    """ARM's keyframe rules (gripper change, arm stopped, last frame).

    Args:
      gripper_open: [T] gripper state per frame (any two distinct values, e.g. 1/0 or +1/-1).
      velocities: [T, D] velocities per frame (joint velocities or end-effector velocity).
      stop_threshold: every |velocity| component below this means "stopped".
      refractory: frames after a stop keyframe in which no stop is detected.

    Returns:
      Sorted frame indices (never 0; always includes T - 1 when T > 1).
    """
    g = np.asarray(gripper_open)
    vel = np.asarray(velocities, dtype=np.float64)
    _checks.check_rank("gripper_open", g, 1)
    n = g.shape[0]
    if vel.ndim == 1:
        vel = vel[:, None]
    _checks.check_shape("velocities", vel, (n, None), "one row per frame of gripper_open")
    if n < 2:
        return []
    keyframes: list[int] = []
    buffer = 0
    for i in range(n):
        steady = (2 <= i < n - 2 and g[i] == g[i + 1] and g[i] == g[i - 1] and g[i - 2] == g[i - 1])
        stopped = buffer <= 0 and steady and bool(np.all(np.abs(vel[i]) <= stop_threshold))
        buffer = refractory if stopped else buffer - 1
        changed = i > 0 and g[i] != g[i - 1]
        if i > 0 and (changed or stopped or i == n - 1):
            keyframes.append(i)
    if len(keyframes) > 1 and keyframes[-1] - 1 == keyframes[-2]:
        keyframes.pop(-2)
    return keyframes


def _segment_distances(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] distances of `points` [N, 3] to the segment from `a` to `b`."""
    ab = b - a
    denom = float(ab @ ab)
    t = np.zeros(len(points)) if denom == 0.0 else np.clip((points - a) @ ab / denom, 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=-1)


def refine_path_keyframes(keyframes: Any, positions: Any, tolerance: float) -> list[int]:
    """Adds the corners of the dense path between keyframes (Douglas-Peucker).

    For each pair of consecutive anchors (frame 0, then the keyframes), the frame strictly
    between them farthest from the straight segment joining their positions becomes a keyframe
    when its distance exceeds `tolerance`; both halves are then refined the same way.

    Args:
      keyframes: [K] increasing frame indices (> 0).
      positions: [T, 3] end-effector positions per frame (metres).
      tolerance: metres (<= 0 returns the keyframes unchanged).

    Returns:
      Increasing frame indices: the keyframes plus the added corners (never frame 0).
    """
    kf = [int(k) for k in keyframes]
    pos = np.asarray(positions, dtype=np.float64)
    _checks.check_shape("positions", pos, (None, 3))
    if kf and (min(kf) < 0 or max(kf) >= pos.shape[0] or any(b <= a for a, b in zip(kf, kf[1:]))):
        raise ValueError(f"`keyframes` must be increasing frame indices in [0, {pos.shape[0]}); "
                         f"got {kf}.")
    if tolerance <= 0 or not kf:
        return kf
    added: list[int] = []
    stack = [(a, b) for a, b in zip([0] + kf[:-1], kf)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        d = _segment_distances(pos[a + 1:b], pos[a], pos[b])
        j = int(np.argmax(d))
        if d[j] > tolerance:
            m = a + 1 + j
            added.append(m)
            stack += [(a, m), (m, b)]
    return sorted(set(kf) | set(added))


def drop_close_keyframes(keyframes: Any, positions: Any, gripper_open: Any,
                         min_distance: float) -> list[int]:
    """The paper's rule: drop a keyframe within `min_distance` of the next keyframe's position.

    Args:
      keyframes: [K] increasing frame indices.
      positions: [T, 3] end-effector positions per frame (metres).
      gripper_open: [T] gripper state per frame.
      min_distance: metres (<= 0 keeps every keyframe).

    Returns:
      The kept keyframes, in order; the last keyframe is always kept, and so is one whose
      gripper state differs from both neighbours'.
    """
    kf = [int(k) for k in keyframes]
    pos = np.asarray(positions, dtype=np.float64)
    g = np.asarray(gripper_open)
    _checks.check_shape("positions", pos, (None, 3))
    _checks.check_shape("gripper_open", g, (pos.shape[0],), "one per frame of positions")
    if kf and (min(kf) < 0 or max(kf) >= pos.shape[0] or any(b <= a for a, b in zip(kf, kf[1:]))):
        raise ValueError(f"`keyframes` must be increasing frame indices in [0, {pos.shape[0]}); "
                         f"got {kf}.")
    if min_distance <= 0 or len(kf) < 2:
        return kf
    kept = []
    for j, k in enumerate(kf[:-1]):
        nxt = kf[j + 1]
        prev_g = g[kf[j - 1]] if j > 0 else g[0]
        pulse = g[k] != prev_g and g[k] != g[nxt]
        if np.linalg.norm(pos[k] - pos[nxt]) < min_distance and not pulse:
            continue
        kept.append(k)
    kept.append(kf[-1])
    return kept


def discover_keyframes(positions: Any, gripper_open: Any, velocities: Any,
                       config: KeyframeConfig | None = None) -> list[int]:
    """ARM's rules, the optional path refinement, then the paper's close-keyframe rule.

    Args:
      positions: [T, 3] end-effector positions (metres).
      gripper_open: [T] gripper state per frame.
      velocities: [T, D] velocities per frame (see `KeyframeConfig.stop_threshold`).
      config: thresholds (default `KeyframeConfig()`).

    Returns:
      Increasing frame indices of the keyframes (never frame 0).
    """
    cfg = config if config is not None else KeyframeConfig()
    kf = arm_keyframes(gripper_open, velocities, cfg.stop_threshold, cfg.refractory)
    kf = refine_path_keyframes(kf, positions, cfg.path_tolerance)
    return drop_close_keyframes(kf, positions, gripper_open, cfg.min_distance)
