"""Success statistics: means with stratified bootstrap intervals, IQM, probability of
improvement and performance profiles, all from rliable (Agarwal et al., 2021), seeded.

Scores are [num_runs] (one task) or [num_runs, num_tasks] success rates; intervals are
stratified over tasks, resampling runs (seeds) within each task.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from twostage_jax import _checks


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


# Hand-written workaround: rliable 1.2 ignores its `random_state` for arch's bootstrap (below).
@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """rliable 1.2 does not hand `random_state` on to arch's bootstrap, which then draws from
    numpy's global generator: seed that (and restore it) so intervals are reproducible."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch warns about RandomState, which rliable passes on
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        np.random.set_state(saved)


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
    with _seeded_numpy(seed):
        _, ci = rly.get_interval_estimates(
            {"x": arrays}, lambda *xs: np.array([func(*xs)]), reps=reps,
            confidence_interval_size=confidence, random_state=np.random.RandomState(seed))
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


def iqm_interval(scores: Any, reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interquartile mean (rliable's `aggregate_iqm`: the 25%-trimmed mean over all runs and
    tasks) with its stratified bootstrap interval.

    Args:
      scores: [num_runs] or [num_runs, num_tasks] success rates in [0, 1].
      reps, confidence, seed: as in `bootstrap_interval`.
    """
    from rliable import metrics

    arr = _as_runs_by_tasks("scores", scores)
    return _rliable_interval([arr], metrics.aggregate_iqm, reps, confidence, seed)


def improvement_probability(x: Any, y: Any, reps: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> Interval:
    """rliable's probability of improvement P(X > Y): per task, the Mann-Whitney probability
    that a run of X scores above a run of Y (ties count half), averaged over tasks; the
    interval resamples the runs of X and of Y independently, stratified by task.

    Args:
      x: [num_runs] or [num_runs, num_tasks] scores of the method.
      y: scores of the baseline, with the same number of tasks.
      reps, confidence, seed: as in `bootstrap_interval`.
    """
    from rliable import metrics

    x = _as_runs_by_tasks("x", x)
    y = _as_runs_by_tasks("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same number of tasks; got {x.shape} and {y.shape}.")
    return _rliable_interval([x, y], metrics.probability_of_improvement, reps, confidence, seed)


def performance_profile(scores: dict[str, Any], taus: Any, reps: int = 2000,
                        confidence: float = 0.95, seed: int = 0
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's score distributions: the fraction of runs (over all tasks) scoring above each
    threshold, with stratified bootstrap intervals.

    Args:
      scores: {method: [num_runs, num_tasks] success rates}.
      taus: [T] thresholds.
      reps, confidence, seed: as in `bootstrap_interval`.

    Returns:
      ({method: [T] fractions}, {method: [2, T] lower and upper bounds}).
    """
    from rliable import library as rly

    arrays = {k: _as_runs_by_tasks(f"scores[{k!r}]", v) for k, v in scores.items()}
    with _seeded_numpy(seed):
        return rly.create_performance_profile(arrays, np.asarray(taus, np.float64), reps=reps,
                                              confidence_interval_size=confidence)
