"""Several seeds of one stage: `train_seeds`, and its halves `init_seeds` / `run_seeds`.

`run_seeds` holds the seed-strategy dispatch: one vmapped program, the single-seed program
once per seed, or (with a mesh) the seeds sharded over devices (`twostage_jax.sharding`).
Each program is jitted once per (train, num_steps, strategy): `Train`s of equal config and
stage are equal, so they are static jit arguments.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax.state import AgentState
from twostage_jax.training.config import SEED_STRATEGIES, TrainConfig
from twostage_jax.training.data import TrainData, check_data, prepare_data
from twostage_jax.training.trainer import Train, make_train
from twostage_jax.types import Dataset



def _check_keys(keys: Any) -> None:
    dtype = getattr(keys, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        _checks.check_rank("keys", keys, 1)
    else:
        _checks.check_shape("keys", keys, (None, 2), "a stack of raw PRNG keys, e.g. jax.random.split(key, n)")
        if dtype != jnp.uint32:
            raise TypeError(f"`keys` must be PRNG keys (uint32 [S, 2] from jax.random.split); got dtype "
                            f"{dtype}.")
    if np.shape(keys)[0] == 0:
        raise ValueError("`keys` must hold at least one PRNG key (one per seed, e.g. "
                         f"jax.random.split(key, 1)); got 0 keys (shape {np.shape(keys)}).")


def train_seeds(config: TrainConfig, data: TrainData | Dataset, keys: jax.Array, stage: int = 1,
                strategy: str = "auto", mesh: Any = None) -> tuple[AgentState, Any]:
    """Trains one run per key, all seeds in one jitted program or one after another.

    Equivalent to `run_seeds(make_train(config, stage), init_seeds(...), data,
    config.num_steps, strategy, mesh)`; see `run_seeds` for the strategies.

    Args:
      config: training configuration (shared by all seeds).
      data: `TrainData` from `prepare_data(dataset, config)` (a `Dataset` is prepared here),
        shared by all seeds.
      keys: [S, 2] raw keys (or [S] typed keys), e.g. `jax.random.split(key, S)`.
      stage: 1 or 2.
      strategy: one of `SEED_STRATEGIES`: 'auto', 'vmap' or 'sequential' (with a mesh: how
        each device runs its own block of seeds).
      mesh: None (one device), or a `jax.sharding.Mesh` with an axis named 'seeds' (e.g.
        `twostage_jax.sharding.seed_mesh('all')`): every state leaf's seed axis is sharded
        over it and each device trains its own seeds (`twostage_jax.sharding.shard_seeds`).
        A seed count that does not divide the devices is padded (the last key repeated) and
        the padding dropped, so results equal the unsharded run's; only then is the returned
        state replicated instead of seed-sharded.

    Returns:
      (AgentState with a leading [S] axis on every leaf, metrics [S, num_steps]).
    """
    _check_keys(keys)
    if mesh is not None:  # a bad mesh fails before any work
        from twostage_jax.sharding import check_seed_mesh

        check_seed_mesh(mesh)
    if isinstance(data, Dataset):
        data = prepare_data(data, config)
    train = make_train(config, stage)
    return run_seeds(train, init_seeds(train, keys, data, mesh), data, config.num_steps, strategy, mesh)


def init_seeds(train: Train, keys: jax.Array, data: TrainData, mesh: Any = None) -> AgentState:
    """`train.init` for every key: an `AgentState` with a leading [S] seed axis (jitted).

    Args:
      train: from `make_train`.
      keys: [S, 2] raw keys (or [S] typed keys).
      data: `TrainData` (only its shapes are read).
      mesh: None, or a mesh with a 'seeds' axis: the states are laid out seed-sharded on it
        (`twostage_jax.sharding.init_seeds`).
    """
    _check_keys(keys)
    check_data(data)
    if mesh is not None:
        from twostage_jax import sharding

        return sharding.init_seeds(lambda k: train.init(k, data), keys, mesh)
    return _init_vmapped(keys, data, train)


@functools.partial(jax.jit, static_argnums=2)
def _init_vmapped(keys: jax.Array, data: TrainData, train: Train) -> AgentState:
    return jax.vmap(train.init, in_axes=(0, None))(keys, data)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _run_vmapped(states: AgentState, data: TrainData, train: Train, num_steps: int) -> tuple[AgentState, Any]:
    return jax.vmap(train.run, in_axes=(0, None, None))(states, data, num_steps)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _run_one(state: AgentState, data: TrainData, train: Train, num_steps: int) -> tuple[AgentState, Any]:
    return train.run(state, data, num_steps)


def run_seeds(train: Train, states: AgentState, data: TrainData, num_steps: int,
              strategy: str = "auto", mesh: Any = None) -> tuple[AgentState, Any]:
    """Runs `num_steps` updates of every seed of `states`: the seed-strategy dispatch.

    Each (train, num_steps, strategy) compiles once (jit's cache; `Train`s of equal config and
    stage are equal), so a caller can train in chunks (log, checkpoint, resume) with the same
    results as one long run.

    Strategies (results agree up to float rounding; pick by speed):
      'auto' (default): 'sequential' on CPU, 'vmap' on GPU/TPU.
      'vmap': one program, `jit(vmap(train.run))` over the seed axis. With
        `NetworkConfig.conv_impl='auto'` (the default) CPU uses im2col convolutions, so the
        per-seed kernels become one batched matmul instead of a grouped convolution.
      'sequential': the single-seed jitted program (compiled once) dispatched once per seed,
        results stacked. Dispatch is asynchronous, so on CPU consecutive seeds may overlap
        on idle cores. Lower peak memory (one seed's activations at a time).

    Measured on 2 CPU cores (experiments/tools/benchmark.py, idle machine): the conv implementation
    dominates ('patches' trains ~13x faster than 'xla'); between strategies, 5 vmapped seeds
    ran at 0.77x the seed-steps/s of 5 sequential ones, and the launcher's 3-seed quickstart
    chunks at 0.72-0.77x (one seed already keeps both cores busy, and XLA CPU runs a batched
    matmul slower than separate GEMMs). Hence 'auto' picks 'sequential' on CPU. On GPU one
    seed leaves the device mostly idle, so 'auto' picks 'vmap' there.

    Args:
      train: from `make_train`.
      states: `AgentState` with a leading [S] axis (from `init_seeds` or a previous chunk).
      data: `TrainData`, shared by all seeds.
      num_steps: updates per seed in this call.
      strategy: one of `SEED_STRATEGIES` (with a mesh: how each device runs its seeds).
      mesh: None, or a mesh with a 'seeds' axis: one program shards the seeds over its
        devices (see `train_seeds`); compiled once per (train, num_steps, strategy, mesh).

    Returns:
      (AgentState [S, ...], metrics [S, num_steps]).
    """
    check_data(data)
    _checks.check_positive_int("num_steps", num_steps)
    if mesh is not None:
        from twostage_jax import sharding

        sharding.check_seed_mesh(mesh)
        program = _sharded_program(train, int(num_steps), resolve_seed_strategy(strategy), mesh)
        return program(states, sharding.put_replicated(data, mesh))
    if resolve_seed_strategy(strategy) == "vmap":
        return _run_vmapped(states, data, train, int(num_steps))
    num = jax.tree_util.tree_leaves(states)[0].shape[0]
    if num == 0:
        raise ValueError("`states` holds 0 seeds (a leading seed axis of size 0); `init_seeds` "
                         "needs at least one key.")
    outs = [_run_one(jax.tree_util.tree_map(lambda x, i=i: x[i], states), data, train, int(num_steps))
            for i in range(num)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


@functools.lru_cache(maxsize=None)
def _sharded_program(train: Train, num_steps: int, strategy: str, mesh: Any) -> Callable:
    from twostage_jax import sharding

    return sharding.shard_seeds(lambda s, d: train.run(s, d, num_steps), mesh, strategy)


def resolve_seed_strategy(strategy: str = "auto", backend: str | None = None) -> str:
    """Maps 'auto' to 'sequential' on CPU and 'vmap' elsewhere; checks the name."""
    if strategy not in SEED_STRATEGIES:
        raise ValueError(f"`strategy` must be one of {SEED_STRATEGIES}; got {strategy!r}.")
    if strategy != "auto":
        return strategy
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"
