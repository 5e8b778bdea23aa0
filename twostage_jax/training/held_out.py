"""Open-loop held-out accuracy of a stage: `make_held_out_eval` -> `HeldOutMetrics`."""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from twostage_jax.actions import action_to_pose
from twostage_jax.networks import deterministic_action, make_networks
from twostage_jax.training.config import TrainConfig
from twostage_jax.training.data import TrainData, batch_at


class HeldOutMetrics(NamedTuple):
    """Open-loop accuracy of a stage on transitions it did not train on (scalars).

    Attributes:
      position_cm: median distance (cm) between the executed position and the demonstrated
        one: stage 1's action, or for stage 2 the composition of Algo. 1's perturbed tentative
        action with the predicted correction (the correction residual).
      gripper_agreement: share of transitions whose executed gripper has the demo's sign.
    """

    position_cm: jnp.ndarray
    gripper_agreement: jnp.ndarray


def make_held_out_eval(config: TrainConfig, stage: int
                       ) -> Callable[[dict, TrainData, jax.Array], HeldOutMetrics]:
    """Returns a jitted `evaluate(params, data, key) -> HeldOutMetrics` over every transition.

    For stage 2 each transition gets one Algo. 1 perturbation drawn from `key` (fix the key to
    compare checkpoints on the same draws); never a prediction (`Stage2Config.predicted_share`
    is set to 0 here), so the curve needs no predictions on the held-out demos and keeps one
    meaning across stage-2 variants. Pure and cheap: meant for held-out demos every few
    hundred steps, to choose a training budget from the curve rather than from evaluation.

    Args:
      config: the stage's training config.
      stage: 1 or 2.
    """
    networks = make_networks(config.network, stage, config.algo)
    s2 = dataclasses.replace(config.stage2, predicted_share=0.0)

    @jax.jit
    def evaluate(params: dict, data: TrainData, key: jax.Array) -> HeldOutMetrics:
        idx = jnp.arange(data.dataset.action.shape[0])
        batch = batch_at(data, idx, key, stage, s2, with_next=False)
        out = deterministic_action(networks, params, batch.obs)
        truth = data.dataset.action[idx]
        if stage == 2:
            a1 = batch.obs.tentative
            out = s2.compose(a1, out)
        ws = data.dataset.workspace
        dist = jnp.linalg.norm(action_to_pose(out, ws)[0] - action_to_pose(truth, ws)[0], axis=-1)
        agree = jnp.mean(((out[:, 6] >= 0) == (truth[:, 6] >= 0)).astype(jnp.float32))
        return HeldOutMetrics(position_cm=100.0 * jnp.median(dist), gripper_agreement=agree)

    return evaluate

