"""The tentative actions a second correction pass trains on: a first pass's corrected actions.

A second stage 2 (`make_policy(..., refine=...)`, a zoom) re-crops around the first pass's
composed action and corrects it again. It trains on the residuals the first pass leaves, not on
the first pass's own data: `first_pass_actions` draws Algorithm 1's tentative actions around
each demo transition (the first pass's sigma), lets the first pass correct them, and returns
the composed actions as `prepare_data(..., predicted=...)` takes them, so that a
`Stage2Config.predicted_share` of the second pass's samples start from them. The first pass
trained on these demos, so what it leaves here is smaller than what it leaves in closed loop.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax.networks import make_networks
from twostage_jax.training.config import TrainConfig
from twostage_jax.training.data import TrainData, batch_at, check_data


def first_pass_actions(data: TrainData, first: TrainConfig, params: Any, key: jax.Array,
                       draws: int = 1, batch_size: int = 256) -> np.ndarray:
    """A first stage 2's corrected actions on Algorithm 1's draws around every demo transition.

    Args:
      data: `TrainData` of the demos (`prepare_data`).
      first: the first pass's stage-2 `TrainConfig` (its crop size resolved).
      params: the first pass's parameters (one seed: encoder and actor).
      key: PRNG key of the draws.
      draws: P draws per transition.
      batch_size: transitions per jitted call.

    Returns:
      [P, N, 2, 7] float32: for each draw and transition, g(a^1, pi2(f(s, a^1))) at the state
      and at the next state (a^1 drawn around the demo action a, and a'^1 around a'), the
      actor's mode for a CQL stage.
    """
    check_data(data)
    _checks.check_positive_int("draws", draws)
    _checks.check_positive_int("batch_size", batch_size)
    _checks.check_key("key", key)
    s2 = dataclasses.replace(first.stage2, predicted_share=0.0)  # Algorithm 1's draws only
    if s2.crop_size is None:
        raise ValueError("`first.stage2.crop_size` is None: pass the first pass's TrainConfig with its "
                         "crop size resolved (TrainConfig(...).stage2.with_crop_size_for(algo)).")
    algo1 = dataclasses.replace(first, stage2=s2)  # (static: one compile per config)
    n = int(data.dataset.action.shape[0])
    out = np.zeros((draws, n, 2, 7), np.float32)
    for p, kp in enumerate(jax.random.split(key, draws)):
        for c, start in enumerate(range(0, n, batch_size)):
            idx = np.arange(start, start + batch_size) % n  # a full last chunk: one compiled shape
            rows = np.asarray(_corrected(data, params, jnp.asarray(idx, jnp.int32), jax.random.fold_in(kp, c),
                                         algo1))
            stop = min(batch_size, n - start)
            out[p, start:start + stop] = rows[:stop]
    return out


@functools.partial(jax.jit, static_argnames="first")
def _corrected(data: TrainData, params: Any, idx: jnp.ndarray, key: jax.Array, first: TrainConfig) -> jnp.ndarray:
    """[B, 2, 7] g(a^1, pi2(f(s, a^1))) at the states and next states of transitions `idx`, a^1
    drawn by Algorithm 1 from `key`; one compile for every seed's parameters and every call."""
    nets, s2 = make_networks(first.network, 2, first.algo), first.stage2
    batch = batch_at(data, idx, key, 2, s2, with_next=True)

    def corrected(obs: Any) -> jnp.ndarray:
        out = nets.actor(params, nets.encode(params, obs))
        a2 = jnp.tanh(out[0]) if nets.stochastic else out
        return s2.compose(obs.tentative, a2)

    return jnp.stack([corrected(batch.obs), corrected(batch.next_obs)], axis=1)
