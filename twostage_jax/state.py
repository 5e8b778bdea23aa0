"""The single training-state pytree (vmaps over seeds and checkpoints as one tree)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class AgentState:
    """Everything one seed's training carries.

    Attributes:
      params: network parameters `{'encoder', 'actor', ['critic', 'log_alpha']}`.
      target_params: `{'encoder', 'critic'}` for the TD target network; `{}` when unused.
      opt_state: optax state of `params`.
      key: PRNG key consumed by the update steps (split once per step).
      step: [] int32 number of updates applied.
    """

    params: Any
    target_params: Any
    opt_state: Any
    key: jax.Array
    step: jnp.ndarray
