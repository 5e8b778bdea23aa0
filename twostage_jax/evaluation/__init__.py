"""Evaluation: rollouts (one episode, or a process pool of simulators) and success statistics.

  * `rollouts`: `Episode`, `rollout(env, act, seed)`, `Job` and `EnvPool(env_fn, workers).run(jobs)`;
  * `statistics`: `Interval` and rliable's seeded stratified-bootstrap intervals
    (`bootstrap_interval`, `difference_interval`, `iqm_interval`, `improvement_probability`,
    `performance_profile`).

Neither imports a simulator or rliable at import time.
"""

from twostage_jax.evaluation.rollouts import (
    ActFn,
    Episode,
    EnvPool,
    Job,
    default_workers,
    rollout,
    success_rate,
)
from twostage_jax.evaluation.statistics import (
    Interval,
    bootstrap_interval,
    difference_interval,
    improvement_probability,
    iqm_interval,
    performance_profile,
)

__all__ = [
    "ActFn", "Episode", "EnvPool", "Interval", "Job", "bootstrap_interval", "default_workers",
    "difference_interval", "improvement_probability", "iqm_interval", "performance_profile",
    "rollout", "success_rate",
]
