"""Behaviour cloning (Eq. 1): loss and update step."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from twostage_jax import _checks
from twostage_jax.networks import Networks
from twostage_jax.state import AgentState
from twostage_jax.types import ACTION_DIM, Batch, Stage1Obs, Stage2Obs

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


def _check_obs(name: str, obs: Any, batch_size: int) -> None:
    """Shapes and dtypes of a `Stage1Obs` / `Stage2Obs` with leading [B] (other pytrees pass)."""
    if isinstance(obs, Stage1Obs):
        _checks.check_fields(name, obs, Stage1Obs._fields)
        _checks.check_shape(f"{name}.image", obs.image, (batch_size, None, None, 3), "[B, H, W, 3]")
        _checks.check_image(f"{name}.image", obs.image)
    elif isinstance(obs, Stage2Obs):
        _checks.check_fields(name, obs, Stage2Obs._fields)
        for crop in ("crop", "ee_crop"):
            _checks.check_shape(f"{name}.{crop}", getattr(obs, crop), (batch_size, None, None, 3),
                                "[B, S, S, 3]")
            _checks.check_floating(f"{name}.{crop}", getattr(obs, crop))
        _checks.check_shape(f"{name}.tentative", obs.tentative, (batch_size, ACTION_DIM), "[B, 7]")
        _checks.check_floating(f"{name}.tentative", obs.tentative)
    else:
        return
    _checks.check_shape(f"{name}.pose", obs.pose, (batch_size, ACTION_DIM), "[B, 7]")
    _checks.check_floating(f"{name}.pose", obs.pose)


def validate_batch(batch: Any, fields: tuple[str, ...]) -> None:
    """Checks `batch`'s fields, shapes and dtypes (trace-time only); raises naming the field.

    Every field in `fields` must be present, the action [B, 7] float, each other array field
    [B], and `Stage1Obs` / `Stage2Obs` observations [B, ...] with their documented shapes.
    Values (e.g. actions in [-1, 1], images of floats in [0, 1]) are not checked here: that
    needs concrete values, so it happens where data enters (`prepare_data`, act).
    """
    _checks.check_fields("batch", batch, fields)
    get = (lambda f: batch[f]) if isinstance(batch, dict) else (lambda f: getattr(batch, f))
    action = get("action")
    _checks.check_rank("batch.action", action, 2)
    _checks.check_shape("batch.action", action, (None, ACTION_DIM), "[B, 7]")
    _checks.check_floating("batch.action", action)
    b = int(action.shape[0])
    for f in fields:
        if f in ("obs", "next_obs"):
            _check_obs(f"batch.{f}", get(f), b)
        elif f != "action":
            _checks.check_shape(f"batch.{f}", get(f), (b,), "[B], B as in batch.action")


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
