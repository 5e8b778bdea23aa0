"""Running a `SimBasePolicy` beside the simulator: its proposed action rides on each observation.

`BaseActingEnv` wraps any `Env`: before each episode it calls the base policy's
`reset(env, seed)`, and after every observation its `act(env, observation)`, and returns the
observation with `tentative` set to the (checked) action. Evaluation then corrects that action
(`make_policy(None, stage2, ...)` with `tentative=`), or executes it alone (the base policy's own
success). The wrapper runs wherever the env runs, in `EnvPool`'s worker processes too, so a
base policy that reads the simulator's state needs no access from the process that acts.

`replay_validation` gives such a base policy's actions on held-out demos, for calibrating
stage 2 to its errors: each demo's layout is reset and its keyframe actions replayed, and the
base policy proposes an action at every keyframe state the replay passes through.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from twostage_jax.base_policy import (BaseContext, BasePolicyError, SimBasePolicy, base_policy_name,
                                      check_sim_base_action, load_base_policy)
from twostage_jax.envs.base import Observation
from twostage_jax.types import ACTION_DIM, Camera, Dataset, Workspace, validate_dataset


class BaseActingEnv:
    """An `Env` whose observations carry a `SimBasePolicy`'s action (`Observation.tentative`).

    Args:
      env: the simulator's `Env`.
      base: the base policy; it gets this wrapper's inner env.
    """

    def __init__(self, env: Any, base: SimBasePolicy) -> None:
        if not isinstance(base, SimBasePolicy):
            raise TypeError(f"`base` must have reset(env, seed) and act(env, observation) (a "
                            f"SimBasePolicy); got {type(base).__name__}.")
        self.env, self.base = env, base

    @property
    def task(self) -> str:
        return self.env.task

    @property
    def workspace(self) -> Workspace:
        return self.env.workspace

    @property
    def camera(self) -> Camera:
        return self.env.camera

    @property
    def max_keyframes(self) -> int:
        return self.env.max_keyframes

    def _propose(self, obs: Observation) -> Observation:
        try:
            action = self.base.act(self.env, obs)
        except Exception as err:  # the user's code: say whose it was, in one line
            raise BasePolicyError(f"base policy {base_policy_name(self.base)} raised "
                                  f"{type(err).__name__}: {err}") from err
        return obs._replace(tentative=check_sim_base_action(self.base, action))

    def reset(self, seed: int) -> Observation:
        """The base policy's `reset`, then the env's, then its first proposal."""
        self.base.reset(self.env, seed)
        return self._propose(self.env.reset(seed))

    def step(self, action: Any) -> tuple[Observation, float, bool, dict[str, Any]]:
        """Steps the env; the observation carries the base's next proposal unless the episode ended."""
        obs, reward, done, info = self.env.step(action)
        return (obs if done else self._propose(obs)), reward, done, info

    def close(self) -> None:
        self.env.close()


def make_base_acting_env(env_fn: Callable[[], Any], source: str, context: BaseContext) -> BaseActingEnv:
    """`env_fn()` with the `SimBasePolicy` the factory `source` ('module:function') builds
    attached; picklable through `functools.partial`, for `EnvPool`'s workers.

    Raises:
      ValueError: naming `source` when it does not build a `SimBasePolicy`.
    """
    base = load_base_policy(source, context)
    if not isinstance(base, SimBasePolicy):
        raise ValueError(f"base policy source {source!r} builds a {type(base).__name__}, not a "
                         "SimBasePolicy (reset(env, seed), act(env, observation)); a callable "
                         "base(image, pose) acts in the evaluating process instead.")
    return BaseActingEnv(env_fn(), base)


def replay_validation(env: BaseActingEnv, demos: Dataset, seeds: Sequence[int]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The base policy's actions at the keyframe states of held-out demos, and the demos' own.

    Demo e (`demos.episode == e`, its transitions in order: a keyframe-to-keyframe chain, as
    the launcher's held-out demos are) is replayed from layout `seeds[e]`: at each of its
    states the base policy proposes an action, then the demo's action is executed. A replay
    that ends early (success, or the episode's keyframe budget) stops that demo there.

    Args:
      env: the base policy attached to the simulator.
      demos: held-out demos, one keyframe chain per episode.
      seeds: [E] the layout seed of each demo.

    Returns:
      (tentative [N, 7], target [N, 7]) float32, for `calibration.calibrate_sigma` and
      `calibration.crop_offsets`.
    """
    validate_dataset(demos)
    episode = np.asarray(demos.episode)
    actions = np.asarray(demos.action, np.float32)
    num = int(episode.max()) + 1 if episode.size else 0
    if len(seeds) != num:
        raise ValueError(f"`seeds` must give the layout of each of the {num} demos; got {len(seeds)}.")
    tentative, target = [], []
    for e, seed in enumerate(seeds):
        obs = env.reset(int(seed))
        for row in np.flatnonzero(episode == e):
            tentative.append(obs.tentative)
            target.append(actions[row])
            obs, _, done, _ = env.step(actions[row])
            if done:
                break
    if not tentative:
        raise ValueError("`demos` holds no transitions to replay.")
    return (np.asarray(tentative, np.float32).reshape(-1, ACTION_DIM),
            np.asarray(target, np.float32).reshape(-1, ACTION_DIM))
