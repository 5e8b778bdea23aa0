"""Stage 1's random-shift augmentation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj
from twostage_jax.augment import random_shift

from tests._tiny import tiny_config, tiny_dataset


def test_random_shift_cuts_an_edge_padded_window_at_a_random_offset():
    image = jnp.arange(16, dtype=jnp.uint8).reshape(1, 4, 4, 1)
    images = jnp.repeat(image, 64, axis=0)
    out = np.asarray(random_shift(jax.random.PRNGKey(0), images, 1))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(np.asarray(image[0, :, :, 0]), 1, mode="edge")
    windows = {(i, j): padded[i:i + 4, j:j + 4] for i in range(3) for j in range(3)}
    seen = set()
    for shifted in out[..., 0]:
        match = [k for k, w in windows.items() if np.array_equal(w, shifted)]
        assert match, "every output is one of the 9 windows of the edge-padded frame"
        seen.update(match)
    assert len(seen) == 9  # 64 draws reach every offset in [-1, 1]^2
    np.testing.assert_array_equal(random_shift(jax.random.PRNGKey(0), images, 0), images)
    with pytest.raises(ValueError, match="`pad` must be an int >= 0; got -1"):
        random_shift(jax.random.PRNGKey(0), images, -1)


def test_shift_augments_stage1_batches_only():
    config = dataclasses.replace(tiny_config("cql"), augment="shift", shift_pad=2)
    data = tj.prepare_data(tiny_dataset(), config)
    key = jax.random.PRNGKey(3)
    shifted = tj.make_train(config, 1)._sample(data, key)
    # the batch key is split only when augmenting, so 'none' draws the batches it always drew
    _, k_batch, _ = jax.random.split(key, 3)
    k_batch, k_obs, k_next = jax.random.split(k_batch, 3)
    ref = tj.sample_batch(data, k_batch, config.batch_size, 1, config.stage2)
    np.testing.assert_array_equal(shifted.obs.pose, ref.obs.pose)
    np.testing.assert_array_equal(shifted.action, ref.action)
    assert not np.array_equal(shifted.obs.image, ref.obs.image)
    np.testing.assert_array_equal(shifted.obs.image, random_shift(k_obs, ref.obs.image, 2))
    np.testing.assert_array_equal(shifted.next_obs.image, random_shift(k_next, ref.next_obs.image, 2))
    with pytest.raises(ValueError, match="TrainConfig.augment must be one of"):
        dataclasses.replace(config, augment="crop")
    with pytest.raises(ValueError, match="TrainConfig.shift_pad must be an int >= 0"):
        dataclasses.replace(config, shift_pad=-1)
    with pytest.raises(ValueError, match="stage 1 only"):
        tj.make_train(config, 2)
