"""Tiny configurations shared by the core tests (fast to compile on 2 CPU cores)."""

import functools

import twostage_jax as tj
from twostage_jax.testing import make_synthetic_dataset

TINY_NET = tj.NetworkConfig(conv_channels=(4, 4, 4, 4), crop_conv_channels=(4, 4, 4),
                            mlp_hidden=8, head_hidden=(16, 16))
TINY_S2 = tj.Stage2Config(crop_size=8, ee_crop_size=4)


@functools.lru_cache(maxsize=None)
def tiny_dataset():
    return make_synthetic_dataset(num_episodes=6, steps_per_episode=3, image_size=32)


def tiny_config(algo="bc", num_steps=5, **cql):
    return tj.TrainConfig(algo=algo, num_steps=num_steps, batch_size=8, learning_rate=1e-3,
                          network=TINY_NET, cql=tj.CQLConfig(**cql), stage2=TINY_S2)
