"""Rollouts of trained policies and success statistics with stratified bootstrap intervals.

Rollouts talk to a simulator only through the `twostage_jax.envs.Env` protocol, so MetaWorld
and RLBench go through the same code. Intervals come from rliable's stratified bootstrap
(Agarwal et al., 2021), stratified over tasks, resampling runs (seeds) within each task.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from twostage_jax import _checks


class Episode(NamedTuple):
    """One rollout.

    Attributes:
      success: whether the task was solved.
      num_steps: keyframe actions taken.
      frames: [T, H, W, 3] uint8 observed images (empty unless recorded).
      tentative: [T, 7] tentative actions a^1 (empty unless recorded).
      actions: [T, 7] executed actions (empty unless recorded).
      clipped: keyframe actions the env had to clip.
    """

    success: bool
    num_steps: int
    frames: np.ndarray
    tentative: np.ndarray
    actions: np.ndarray
    clipped: int


def rollout(env: Any, act: Callable[[np.ndarray, np.ndarray, Any], Any], seed: int,
            record: bool = False) -> Episode:
    """Runs one episode of `act` in `env` from layout `seed`.

    Args:
      env: an `Env` (MetaWorld, RLBench, ...).
      act: (image [1, H, W, 3] uint8, pose [1, 7], camera) -> `PolicyOutput` with [1, 7] fields.
      seed: the layout seed passed to `env.reset`.
      record: keep images and actions for visualisation.

    Returns:
      The `Episode`.
    """
    obs = env.reset(seed)
    frames, tentative, actions = [], [], []
    success, steps, clipped = False, 0, 0
    done = False
    while not done:
        out = act(obs.image[None], np.asarray(obs.pose, np.float32)[None], obs.camera)
        action = np.asarray(jax.device_get(out.action))[0]
        if record:
            frames.append(obs.image)
            tentative.append(np.asarray(out.tentative)[0])
            actions.append(action)
        obs, reward, done, info = env.step(action)
        steps += 1
        clipped += int(bool(info.get("clipped", False)))
        success = success or reward > 0
    if record:
        frames.append(obs.image)
    empty = np.zeros((0, 7), np.float32)
    return Episode(
        success=bool(success), num_steps=steps,
        frames=np.stack(frames) if frames else np.zeros((0,), np.uint8),
        tentative=np.stack(tentative) if tentative else empty,
        actions=np.stack(actions) if actions else empty,
        clipped=clipped,
    )


def success_rate(episodes: Sequence[Episode]) -> float:
    """Fraction of successful episodes."""
    if not episodes:
        raise ValueError("`episodes` is empty; evaluate at least one episode.")
    return float(np.mean([e.success for e in episodes]))


class Interval(NamedTuple):
    """A point estimate with a confidence interval."""

    mean: float
    low: float
    high: float


def _as_runs_by_tasks(name: str, scores: Any) -> np.ndarray:
    arr = np.asarray(scores, np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    _checks.check_rank(name, arr, 2)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"`{name}` must be [num_runs] or [num_runs, num_tasks] with both > 0; "
                         f"got shape {arr.shape}.")
    _checks.check_range(name, arr, 0.0, 1.0, "success rates")
    return arr


def _rliable_interval(arrays: list[np.ndarray], func: Callable[..., float], reps: int,
                      confidence: float, seed: int) -> Interval:
    from rliable import library as rly

    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps <= 0:
        raise ValueError(f"`reps` (bootstrap resamples) must be a positive int; got {reps!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1); got {confidence!r}.")
    point = float(func(*arrays))
    if arrays[0].shape[0] == 1:  # one run: nothing to resample
        return Interval(point, point, point)
    # rliable 1.2 does not hand `random_state` on to arch's bootstrap, which then draws from
    # numpy's global generator: seed that (and restore it) so intervals are reproducible.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch warns about RandomState, which rliable passes on
            warnings.simplefilter("ignore", FutureWarning)
            _, ci = rly.get_interval_estimates(
                {"x": arrays}, lambda *xs: np.array([func(*xs)]), reps=reps,
                confidence_interval_size=confidence, random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    return Interval(point, float(ci["x"][0, 0]), float(ci["x"][1, 0]))


def bootstrap_interval(scores: Any, reps: int = 2000, confidence: float = 0.95, seed: int = 0
                       ) -> Interval:
    """Mean and stratified bootstrap interval of per-run scores (rliable).

    Args:
      scores: [num_runs] (one task) or [num_runs, num_tasks] success rates in [0, 1].
      reps: bootstrap resamples.
      confidence: interval coverage.
      seed: seed of the resampling (results are reproducible).

    Returns:
      `Interval` of the mean over runs and tasks.
    """
    arr = _as_runs_by_tasks("scores", scores)
    return _rliable_interval([arr], lambda x: x.mean(), reps, confidence, seed)


def difference_interval(a: Any, b: Any, reps: int = 2000, confidence: float = 0.95, seed: int = 0
                        ) -> Interval:
    """Mean and stratified bootstrap interval of mean(b) - mean(a) for paired runs (rliable).

    Runs are paired (run i of `b` uses the stage 1 of run i of `a`, on the same evaluation
    layouts), so this bootstraps the per-run differences b - a, stratified by task. (Passing
    `a` and `b` to rliable as two arrays would resample them independently and give an
    interval that ignores the pairing.)

    Args:
      a: [num_runs] or [num_runs, num_tasks] scores of the baseline.
      b: scores of the same shape for the method.
      reps, confidence, seed: as in `bootstrap_interval`.

    Returns:
      `Interval` of the gain mean(b) - mean(a).
    """
    a = _as_runs_by_tasks("a", a)
    b = _as_runs_by_tasks("b", b)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have the same shape; got {a.shape} and {b.shape}.")
    return _rliable_interval([b - a], lambda d: d.mean(), reps, confidence, seed)
