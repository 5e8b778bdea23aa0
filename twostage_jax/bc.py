"""Behaviour cloning (Eq. 1): loss and update step."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from twostage_jax.networks import Networks
from twostage_jax.state import AgentState
from twostage_jax.types import Batch, validate_batch

BC_FIELDS = ("obs", "action")


class BCAux(NamedTuple):
    """BC metrics (scalars).

    Attributes:
      bc_loss: E |pi(s) - a|^2 (sum over action dimensions, mean over the batch).
      position_error: mean |pi(s) - a| over the 3 position dimensions.
      gripper_error: mean |pi(s) - a| of the gripper dimension.
    """

    bc_loss: jnp.ndarray
    position_error: jnp.ndarray
    gripper_error: jnp.ndarray


class BCMetrics(NamedTuple):
    """Per-step metrics of `make_bc_update` (scalars; stacked [T] by a scanned trainer).

    Attributes:
      bc: the loss's `BCAux`.
      grad_norm: global norm of the loss gradient.
    """

    bc: BCAux
    grad_norm: jnp.ndarray


def bc_loss(params: dict, batch: Batch, networks: Networks, weights: Any = None
            ) -> tuple[jnp.ndarray, BCAux]:
    """Eq. 1: E_{(s,a)~D} |pi(s) - a|^2, optionally weighted per action dimension.

    Args:
      params: network parameters `{'encoder', 'actor'}`.
      batch: `Batch` with obs (leading [B]) and action [B, 7].
      networks: a deterministic ('bc') `Networks` bundle.
      weights: None (Eq. 1) or [7] non-negative weights of each dimension's squared error.

    Returns:
      (loss, BCAux).
    """
    validate_batch(batch, BC_FIELDS)
    if networks.stochastic:
        raise ValueError("bc_loss needs deterministic networks (make_networks(..., algo='bc')).")
    pred = networks.actor(params, networks.encode(params, batch.obs))
    err = pred - batch.action
    sq = err**2 if weights is None else jnp.asarray(weights, jnp.float32) * err**2
    loss = jnp.mean(jnp.sum(sq, axis=-1))
    aux = BCAux(bc_loss=loss, position_error=jnp.mean(jnp.abs(err[:, :3])),
                gripper_error=jnp.mean(jnp.abs(err[:, 6])))
    return loss, aux


def make_bc_update(
    networks: Networks, optimizer: optax.GradientTransformation, weights: Any = None
) -> Callable[[AgentState, Batch, jax.Array], tuple[AgentState, BCMetrics]]:
    """Returns a pure `update(state, batch, key) -> (state, BCMetrics)` (jit/vmap friendly).

    Args:
      networks: deterministic networks.
      optimizer: optax transformation over the whole parameter dict.
      weights: None or [7] per-dimension weights of the squared error (see `bc_loss`).
    """

    def update(state: AgentState, batch: Batch, key: jax.Array) -> tuple[AgentState, BCMetrics]:
        del key  # BC is deterministic given the batch.
        (_, aux), grads = jax.value_and_grad(bc_loss, has_aux=True)(state.params, batch, networks,
                                                                     weights)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = BCMetrics(bc=aux, grad_norm=optax.tree.norm(grads))
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return update
