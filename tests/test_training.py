"""The scanned trainer, seed vmapping, on-device sampling and dataset validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj
from tests._tiny import tiny_config, tiny_dataset


@pytest.mark.parametrize("algo,stage", [("bc", 1), ("cql", 2)])
def test_train_seeds_equals_single_seed_runs(algo, stage):
    cfg = tiny_config(algo, num_steps=4)
    keys = jax.random.split(jax.random.PRNGKey(42), 2)
    states, metrics = tj.train_seeds(cfg, tiny_dataset(), keys, stage=stage)
    assert states.step.shape == (2,)
    train = tj.make_train(cfg, tiny_dataset(), stage)
    for i in range(2):
        single, m = train(keys[i])
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=2e-5),
            states.params, single.params)
        np.testing.assert_allclose(jax.tree_util.tree_leaves(metrics)[0][i],
                                   jax.tree_util.tree_leaves(m)[0], rtol=2e-4, atol=2e-5)


def test_chunked_runs_equal_one_run():
    cfg = tiny_config("bc", num_steps=6)
    trainer = tj.make_trainer(cfg, tiny_dataset(), 1)
    run = jax.jit(trainer.run, static_argnums=2)
    s0 = trainer.init(jax.random.PRNGKey(0))
    whole, _ = run(s0, trainer.data, 6)
    part, _ = run(s0, trainer.data, 2)
    part, _ = run(part, trainer.data, 4)
    jax.tree_util.tree_map(np.testing.assert_allclose, whole.params, part.params)


@pytest.mark.parametrize("algo,stage", [("bc", 2), ("cql", 2)])
def test_pipelined_run_equals_step_loop(algo, stage):
    # `run` samples batch t + 1 while it updates on batch t; it must see the same batches as
    # `step` called in a loop, so the two give the same parameters, metrics and key.
    cfg = tiny_config(algo, num_steps=3)
    trainer = tj.make_trainer(cfg, tiny_dataset(), stage)
    s0 = trainer.init(jax.random.PRNGKey(5))
    ran, ran_metrics = jax.jit(trainer.run, static_argnums=2)(s0, trainer.data, 3)
    step = jax.jit(trainer.step)
    looped, looped_metrics = s0, []
    for _ in range(3):
        looped, m = step(looped, trainer.data)
        looped_metrics.append(m)
    np.testing.assert_array_equal(ran.key, looped.key)
    assert int(ran.step) == int(looped.step) == 3
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           ran.params, looped.params)
    for name in ran_metrics._fields:
        np.testing.assert_allclose(getattr(ran_metrics, name),
                                   np.stack([getattr(m, name) for m in looped_metrics]),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_sample_batch_stage2_applies_algo1():
    cfg = tiny_config()
    data = tj.prepare_data(tiny_dataset(), cfg)
    fn = jax.jit(lambda k: tj.sample_batch(data, k, 16, 2, cfg.stage2))
    batch = fn(jax.random.PRNGKey(0))
    assert batch.obs.crop.shape == (16, 8, 8, 3) and batch.obs.ee_crop.shape == (16, 4, 4, 3)
    assert float(batch.obs.crop.max()) <= 1.0
    # The correction target recomposes with the tentative action to a dataset action.
    rec = tj.compose_correction(batch.obs.tentative, batch.action)
    ds_actions = np.asarray(tiny_dataset().action)
    dist = np.abs(np.asarray(rec)[:, None, :6] - np.clip(ds_actions, -0.99, 0.99)[None, :, :6]).max(-1)
    assert np.all(dist.min(1) < 1e-3)
    direct = tj.sample_batch(data, jax.random.PRNGKey(0), 16, 2,
                             tj.Stage2Config(crop_size=8, ee_crop_size=4, mode="direct"))
    assert np.all(np.isin(np.asarray(direct.action[:, 6]), [-1.0, 1.0]))


def test_stage1_image_downscale():
    cfg = tj.TrainConfig(algo="bc", num_steps=1, batch_size=4, image_size=16,
                         network=tiny_config().network)
    data = tj.prepare_data(tiny_dataset(), cfg)
    assert data.stage1_images.shape[1:] == (16, 16, 3) and data.images.shape[1:] == (32, 32, 3)
    with pytest.raises(ValueError, match="image_size \\(64\\) exceeds"):
        tj.prepare_data(tiny_dataset(), tj.TrainConfig(image_size=64))


def test_config_and_dataset_errors():
    with pytest.raises(ValueError, match="TrainConfig.algo must be one of \\('bc', 'cql'\\); got 'ppo'"):
        tj.TrainConfig(algo="ppo")
    with pytest.raises(ValueError, match="TrainConfig.num_steps must be a positive int; got 0"):
        tj.TrainConfig(num_steps=0)
    with pytest.raises(ValueError, match="Stage2Config.mode"):
        tj.Stage2Config(mode="residual")
    with pytest.raises(ValueError, match="`stage` must be 1 or 2; got 3"):
        tj.make_trainer(tiny_config(), tiny_dataset(), 3)
    ds = tiny_dataset()
    bad = ds.replace(action=np.asarray(ds.action) * 2)
    with pytest.raises(ValueError, match="`dataset.action` must lie in \\[-1.0, 1.0\\]"):
        tj.prepare_data(bad, tiny_config())
    bad = ds.replace(obs_index=np.asarray(ds.obs_index) + 1000)
    with pytest.raises(ValueError, match="`dataset.obs_index` must lie in"):
        tj.prepare_data(bad, tiny_config())
    bad = ds.replace(images=np.asarray(ds.images, np.float32))
    with pytest.raises(TypeError, match="`dataset.images` must be uint8"):
        tj.prepare_data(bad, tiny_config())
    with pytest.raises(ValueError, match="`keys` must have shape \\[\\*, 2\\]"):
        tj.train_seeds(tiny_config(), ds, jnp.zeros((3,), jnp.uint32))
