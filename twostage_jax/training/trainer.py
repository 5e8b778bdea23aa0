"""One stage's pure trainer: `make_train(config, stage)` -> a `Train`, called as `train(key, data)`."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from twostage_jax import _checks
from twostage_jax.augment import random_shift
from twostage_jax.bc import BCMetrics, make_bc_update
from twostage_jax.cql import CQLMetrics, init_cql_params, make_cql_optimizer, make_cql_update
from twostage_jax.networks import Networks, make_networks
from twostage_jax.state import AgentState
from twostage_jax.training.config import TrainConfig, check_stage
from twostage_jax.training.data import TrainData, check_data, sample_batch, warn_if_batch_exceeds_data
from twostage_jax.types import Batch


def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    if config.algo == "bc":
        return optax.adam(config.learning_rate)
    return make_cql_optimizer(config.cql)


@dataclasses.dataclass(frozen=True)
class Train:
    """One stage's pure training functions, from `make_train(config, stage)`.

    Calling it, `train(key, data) -> (AgentState, metrics)`, initialises a state and runs
    `config.num_steps` updates; the dataset is an argument, never a closure, so
    `jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, data)` compiles one program whose
    dataset is an input, not a constant. The pieces, for chunked training (log, checkpoint,
    resume) and custom loops:

      * `init(key, data) -> AgentState`: fresh parameters, optimizer state and state key;
        `data` only gives the observation shapes.
      * `step(state, data) -> (AgentState, metrics)`: one update on a batch sampled with the
        state's key.
      * `run(state, data, num_steps) -> (AgentState, metrics [num_steps])`: `num_steps` of
        `step` as one `lax.scan`, software-pipelined (each iteration samples the next batch
        while it updates on the current one; the same batches as `step` in a loop). Chunks
        compose: `run(run(s, d, 2)[0], d, 4)` equals `run(s, d, 6)`, since every step
        consumes the key carried in the state. `num_steps` is static under jit.

    All are pure and unjitted (jit them, or use `train_seeds` / `run_seeds`). A frozen
    dataclass: two `Train`s of equal config and stage compare and hash equal, so they can be
    static jit arguments.

    Attributes:
      config: the `TrainConfig`.
      stage: 1 or 2.
      networks: the `Networks` bundle.
      metrics_type: the metrics NamedTuple type (`BCMetrics` or `CQLMetrics`).
    """

    config: TrainConfig
    stage: int
    networks: Networks = dataclasses.field(init=False, repr=False, compare=False)
    metrics_type: type = dataclasses.field(init=False, repr=False, compare=False)
    _optimizer: optax.GradientTransformation = dataclasses.field(init=False, repr=False, compare=False)
    _update: Callable = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        config, stage = self.config, self.stage
        if not isinstance(config, TrainConfig):
            raise TypeError(f"`config` must be a TrainConfig; got {type(config).__name__}.")
        check_stage(stage)
        if stage == 2 and config.augment != "none":
            raise ValueError(f"TrainConfig.augment={config.augment!r} is for stage 1 only: stage 2's "
                             "crops are centred by projection, and a shift would move that centre.")
        networks = make_networks(config.network, stage, config.algo)
        optimizer = _optimizer(config)
        weights = config.stage2.bc_weights() if stage == 2 else None
        if config.algo == "bc":
            update, metrics_type = make_bc_update(networks, optimizer, weights), BCMetrics
        else:
            update = make_cql_update(networks, config.cql, optimizer, weights)
            metrics_type = CQLMetrics
        # Frozen: the derived fields are set once here; equality and hash see (config, stage) only.
        for name, value in (("stage", int(stage)), ("networks", networks), ("metrics_type", metrics_type),
                            ("_optimizer", optimizer), ("_update", update)):
            object.__setattr__(self, name, value)

    def __call__(self, key: jax.Array, data: TrainData) -> tuple[AgentState, Any]:
        """Init + `config.num_steps` scanned updates: (AgentState, metrics [num_steps])."""
        return self.run(self.init(key, data), data, self.config.num_steps)

    def _sample(self, data: TrainData, key: jax.Array) -> Batch:
        # The batch of the step whose state carries `key` (updates never change `state.key`).
        _, k_batch, _ = jax.random.split(key, 3)
        if self.config.augment == "none":
            return sample_batch(data, k_batch, self.config.batch_size, self.stage, self.config.stage2,
                                with_next=self.config.algo == "cql")
        k_batch, k_obs, k_next = jax.random.split(k_batch, 3)
        batch = sample_batch(data, k_batch, self.config.batch_size, self.stage, self.config.stage2,
                             with_next=self.config.algo == "cql")
        pad = int(self.config.shift_pad)  # each frame of obs and next_obs shifted independently
        obs = batch.obs._replace(image=random_shift(k_obs, batch.obs.image, pad))
        next_obs = (None if batch.next_obs is None else
                    batch.next_obs._replace(image=random_shift(k_next, batch.next_obs.image, pad)))
        return batch._replace(obs=obs, next_obs=next_obs)

    def init(self, key: jax.Array, data: TrainData) -> AgentState:
        """A fresh `AgentState` from `key` ([2] raw or typed PRNG key)."""
        _checks.check_key("key", key)
        check_data(data)
        config = self.config
        warn_if_batch_exceeds_data(config.batch_size, data)
        k_init, k_state = jax.random.split(key)
        shapes = jax.eval_shape(lambda d: sample_batch(d, jax.random.PRNGKey(0), 2, self.stage,
                                                       config.stage2, with_next=False).obs, data)
        example = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        params = self.networks.init(k_init, example)
        target_params: dict = {}
        if config.algo == "cql":
            params = init_cql_params(params, config.cql)
            if config.cql.target == "td":
                target_params = {"encoder": params["encoder"], "critic": params["critic"]}
        return AgentState(params=params, target_params=target_params,
                          opt_state=self._optimizer.init(params), key=k_state,
                          step=jnp.zeros((), jnp.int32))

    def step(self, state: AgentState, data: TrainData) -> tuple[AgentState, Any]:
        """One update on the batch drawn from `state.key`."""
        key, _, k_update = jax.random.split(state.key, 3)
        return self._update(state.replace(key=key), self._sample(data, state.key), k_update)

    def run(self, state: AgentState, data: TrainData, num_steps: int) -> tuple[AgentState, Any]:
        """`num_steps` (static) of `step` as one software-pipelined `lax.scan`."""
        check_data(data)
        _checks.check_positive_int("num_steps", num_steps)

        # Iteration t updates on batch t (carried in) and samples batch t + 1 (carried out).
        # The loop boundary makes XLA materialise each batch once, instead of fusing the crops'
        # gathers into every consumer and recomputing them there. Same batches as `step` in a
        # loop; results equal up to float rounding (tested).
        def body(carry, _):
            state_, batch = carry
            key, _, k_update = jax.random.split(state_.key, 3)
            next_batch = self._sample(data, key)
            new_state, metrics = self._update(state_.replace(key=key), batch, k_update)
            return (new_state, next_batch), metrics

        (state, _), metrics = jax.lax.scan(body, (state, self._sample(data, state.key)), None,
                                           length=num_steps)
        return state, metrics


def make_train(config: TrainConfig, stage: int) -> Train:
    """Returns the pure `train(key, data) -> (AgentState, metrics)` of one stage.

    Example (several seeds in one program; the dataset is an argument, not a constant)::

        data = prepare_data(dataset, config)
        train = make_train(config, stage=1)
        states, metrics = jax.jit(jax.vmap(train, in_axes=(0, None)))(
            jax.random.split(key, 4), data)

    Args:
      config: training configuration.
      stage: 1 (tentative policy) or 2 (correction policy).

    Returns:
      A `Train`: call it as `train(key, data)` with key a PRNG key and data the `TrainData`
      of `prepare_data`; it returns (AgentState, metrics NamedTuple stacked to
      [config.num_steps]). Its `init`, `step` and `run` are the pieces for chunked training.
    """
    return Train(config, stage)
