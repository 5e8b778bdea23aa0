"""Tiny configurations shared by the core tests (fast to compile on 2 CPU cores).

The suite is bound by XLA's compile time, so tests that only need *a* short run use the same
few configs (`tiny_config(algo)`: 4 steps) and the same jitted programs: `init` and `run`
below are the programs `train_seeds` compiles (`init_seeds`' vmapped init, `run_seeds`'
single-seed chunk), so a test that trains one of these configs reuses the compile of every
other test that did.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp

import twostage_jax as tj
from twostage_jax.training import seeds
from twostage_jax.testing import make_synthetic_dataset

TINY_NET = tj.NetworkConfig(conv_channels=(4, 4, 4, 4), crop_conv_channels=(4, 4, 4),
                            mlp_hidden=8, head_hidden=(16, 16))
TINY_S2 = tj.Stage2Config(crop_size=8, ee_crop_size=4)
TINY_STEPS = 4


@functools.lru_cache(maxsize=None)
def tiny_dataset():
    return make_synthetic_dataset(num_episodes=6, steps_per_episode=3, image_size=32)


def tiny_config(algo="bc", num_steps=TINY_STEPS, **cql):
    return tj.TrainConfig(algo=algo, num_steps=num_steps, batch_size=8, learning_rate=1e-3,
                          network=TINY_NET, cql=tj.CQLConfig(**cql), stage2=TINY_S2)


def init(train: tj.Train, key: jax.Array, data: tj.TrainData) -> tj.AgentState:
    """`train.init(key, data)`, through the jitted two-seed program of `init_seeds` (both seeds
    from `key`, the first returned): the program `train_seeds` of two keys compiles."""
    states = tj.init_seeds(train, jnp.stack([key, key]), data)
    return jax.tree_util.tree_map(lambda x: x[0], states)


def run(train: tj.Train, state: tj.AgentState, data: tj.TrainData, num_steps: int):
    """`jax.jit(train.run, static_argnums=2)(state, data, num_steps)`, as the single-seed
    program `run_seeds` dispatches (`train` and `num_steps` static)."""
    return seeds._run_one(state, data, train, num_steps)


def run_for(train: tj.Train, state: tj.AgentState, data: tj.TrainData, num_steps: int,
            chunk: int = TINY_STEPS):
    """`num_steps` updates as `run` chunks of `chunk` steps (chunks compose, tested in
    test_training), so long runs reuse the short runs' program. Returns the state and the
    metrics of every step, concatenated."""
    if num_steps % chunk:
        raise ValueError(f"num_steps ({num_steps}) must be a multiple of chunk ({chunk}).")
    metrics = []
    for _ in range(num_steps // chunk):
        state, m = run(train, state, data, chunk)
        metrics.append(m)
    return state, jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *metrics)


LEVEL_1 = {"xla_backend_optimization_level": 1}
"""Compiler options of LLVM optimisation level 1. The suite compiles at level 0 (twice as fast,
tests/conftest.py), whose rounding can tell apart two programs that level 1 (and the default
level) round alike: the checks of bitwise equality, or of 1e-4 between im2col and XLA
convolutions, compile their programs at level 1."""


@contextlib.contextmanager
def jit_at_level_1():
    """Inside, `jax.jit` compiles at `LEVEL_1`: wrap where a check's jitted functions are made
    (e.g. `make_policy`, which jits when called)."""
    jit = jax.jit
    jax.jit = functools.partial(jit, compiler_options=LEVEL_1)
    try:
        yield
    finally:
        jax.jit = jit
