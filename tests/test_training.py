"""The scanned trainer, seed vmapping, on-device sampling and dataset validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj
from tests import _tiny
from tests._tiny import tiny_config, tiny_dataset


@pytest.mark.parametrize("algo,stage", [("bc", 1), ("cql", 2)])
def test_train_seeds_equals_single_seed_runs(algo, stage):
    cfg = tiny_config(algo)
    keys = jax.random.split(jax.random.PRNGKey(42), 2)
    data = tj.prepare_data(tiny_dataset(), cfg)
    states, metrics = tj.train_seeds(cfg, data, keys, stage=stage)
    assert states.step.shape == (2,)
    train = jax.jit(tj.make_train(cfg, stage))
    for i in range(2):
        single, m = train(keys[i], data)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=2e-5),
            states.params, single.params)
        np.testing.assert_allclose(jax.tree_util.tree_leaves(metrics)[0][i],
                                   jax.tree_util.tree_leaves(m)[0], rtol=2e-4, atol=2e-5)


def test_chunked_runs_equal_one_run():
    # Two chunks of 2 steps against one of 4: the 4-step programs are the other tests'.
    cfg = tiny_config("bc")
    train, data = tj.make_train(cfg, 1), tj.prepare_data(tiny_dataset(), cfg)
    s0 = _tiny.init(train, jax.random.PRNGKey(0), data)
    whole, _ = _tiny.run(train, s0, data, 4)
    part, _ = _tiny.run(train, s0, data, 2)
    part, _ = _tiny.run(train, part, data, 2)
    assert int(whole.step) == int(part.step) == 4
    jax.tree_util.tree_map(np.testing.assert_allclose, whole.params, part.params)
    # The same through run_seeds, the launcher's chunked path (both strategies).
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    for strategy in ("vmap", "sequential"):
        states = tj.init_seeds(train, keys, data)
        whole, _ = tj.run_seeds(train, states, data, 4, strategy)
        part, _ = tj.run_seeds(train, states, data, 2, strategy)
        part, _ = tj.run_seeds(train, part, data, 2, strategy)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                               whole.params, part.params)


@pytest.mark.parametrize("algo,stage", [("bc", 2), ("cql", 2)])
def test_pipelined_run_equals_step_loop(algo, stage):
    # `run` samples batch t + 1 while it updates on batch t; it must see the same batches as
    # `step` called in a loop, so the two give the same parameters, metrics and key.
    cfg = tiny_config(algo)
    train, data = tj.make_train(cfg, stage), tj.prepare_data(tiny_dataset(), cfg)
    s0 = _tiny.init(train, jax.random.PRNGKey(5), data)
    ran, ran_metrics = _tiny.run(train, s0, data, 4)
    step = jax.jit(train.step)
    looped, looped_metrics = s0, []
    for _ in range(4):
        looped, m = step(looped, data)
        looped_metrics.append(m)
    np.testing.assert_array_equal(ran.key, looped.key)
    assert int(ran.step) == int(looped.step) == 4
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           ran.params, looped.params)
    looped_flat = [tj.flatten_metrics(m) for m in looped_metrics]
    for name, value in tj.flatten_metrics(ran_metrics).items():
        np.testing.assert_allclose(value, np.stack([m[name] for m in looped_flat]),
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
    with pytest.raises(ValueError, match="TrainConfig.num_steps must be a positive int below 2\\*\\*31 .*; got 0"):
        tj.TrainConfig(num_steps=0)
    with pytest.raises(ValueError, match="Stage2Config.mode"):
        tj.Stage2Config(mode="residual")
    with pytest.raises(ValueError, match="`stage` must be 1 or 2; got 3"):
        tj.make_train(tiny_config(), 3)
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


def test_min_move_drops_transitions_that_stay_put():
    ds = tiny_dataset()
    ws = ds.workspace
    src = np.asarray(tj.action_to_pose(ds.pose, ws)[0])
    dst = np.asarray(tj.action_to_pose(ds.action, ws)[0])
    moved = np.linalg.norm(dst - src, axis=-1)
    switch = (ds.action[:, 6] >= 0) != (ds.pose[:, 6] >= 0)
    cut = float(np.median(moved))
    kept = tj.moving_transitions(ds, cut)
    np.testing.assert_array_equal(kept, np.flatnonzero((moved >= cut) | switch))
    assert 0 < len(kept) < len(moved)
    np.testing.assert_array_equal(tj.moving_transitions(ds, 0.0), np.arange(len(moved)))
    # Batches come only from the kept transitions.
    cfg = dataclasses.replace(tiny_config("bc"), min_move=cut)
    data = tj.prepare_data(ds, cfg)
    batch = tj.sample_batch(data, jax.random.PRNGKey(0), 256, 1)
    pos = np.asarray(tj.action_to_pose(batch.action, ws)[0])
    start = np.asarray(tj.action_to_pose(batch.obs.pose, ws)[0])
    sw = (np.asarray(batch.action)[:, 6] >= 0) != (np.asarray(batch.obs.pose)[:, 6] >= 0)
    assert np.all((np.linalg.norm(pos - start, axis=-1) >= cut - 1e-6) | sw)
    same_gripper = np.asarray(ds.action).copy()
    same_gripper[:, 6] = np.asarray(ds.pose)[:, 6]
    with pytest.raises(ValueError, match="min_move"):
        tj.moving_transitions(ds.replace(action=same_gripper), 1e3)
    with pytest.raises(ValueError, match="min_move"):
        tj.TrainConfig(min_move=-1.0)
    with pytest.raises(ValueError, match="min_move"):
        tj.TrainConfig(min_move=float("nan"))


# Each option alone with BC, and both together with CQL (whose encoder the critic trains): every
# option trains under each algorithm's loss, in 3 compiles rather than the 6 of the full product
# (each ~10 s of the CI budget).
@pytest.mark.parametrize("algo,net", [
    ("bc", dict(crop_encoder="spatial_softmax", keypoints=4, crop_conv_strides=(2, 1, 1))),
    ("bc", dict(coord_channels=True)),
    ("cql", dict(crop_encoder="spatial_softmax", coord_channels=True, keypoints=4)),
], ids=["bc-spatial_softmax", "bc-coord_channels", "cql-both"])
def test_crop_encoder_options_train_with_finite_decreasing_loss(algo, net):
    base = tiny_config(algo, num_steps=60)
    cfg = dataclasses.replace(base, network=dataclasses.replace(base.network, **net))
    train, data = tj.make_train(cfg, 2), tj.prepare_data(tiny_dataset(), cfg)
    s0 = train.init(jax.random.PRNGKey(0), data)
    trained, metrics = jax.jit(train.run, static_argnums=2)(s0, data, cfg.num_steps)
    assert all(np.all(np.isfinite(np.asarray(m))) for m in jax.tree_util.tree_leaves(metrics))
    if algo == "bc":  # the loss on one fixed batch of 64, before and after (no minibatch noise)
        batch = tj.sample_batch(data, jax.random.PRNGKey(7), 64, 2, cfg.stage2, with_next=False)
        loss = jax.jit(lambda p: tj.bc_loss(p, batch, train.networks)[0])
        assert float(loss(trained.params)) < float(loss(s0.params))
    else:
        loss = np.asarray(metrics.critic.critic_loss)
        assert loss[-10:].mean() < loss[:10].mean()


def test_crop_encoder_options_are_validated():
    with pytest.raises(ValueError, match="crop_encoder"):
        tj.NetworkConfig(crop_encoder="attention")
    with pytest.raises(ValueError, match="crop_conv_strides"):
        tj.NetworkConfig(crop_conv_strides=(2, 1))
    with pytest.raises(ValueError, match="keypoints"):
        tj.NetworkConfig(keypoints=0)
    with pytest.raises(ValueError, match="mlp_hidden"):
        tj.NetworkConfig(mlp_hidden=0)


@pytest.mark.parametrize("stage", [1, 2])
def test_held_out_eval_measures_what_training_improves(stage):
    cfg = tiny_config("bc")
    ds = tiny_dataset()
    evaluate = tj.make_held_out_eval(cfg, stage)
    train, data = tj.make_train(cfg, stage), tj.prepare_data(ds, cfg)
    s0 = _tiny.init(train, jax.random.PRNGKey(0), data)
    before = evaluate(s0.params, data, jax.random.PRNGKey(1))
    trained, _ = _tiny.run_for(train, s0, data, 152)  # 38 chunks of the 4-step program
    after = evaluate(trained.params, data, jax.random.PRNGKey(1))
    assert np.isfinite(float(before.position_cm)) and 0.0 <= float(after.gripper_agreement) <= 1.0
    assert float(after.position_cm) < float(before.position_cm)
    # Same key, same Algo. 1 draws: the measurement is repeatable.
    again = evaluate(trained.params, data, jax.random.PRNGKey(1))
    assert float(again.position_cm) == float(after.position_cm)


def test_actor_encoder_grad_reaches_the_encoder():
    import flax

    base = tiny_config("cql")  # the actor_encoder_grad=False run is the other tests' program
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    runs = {}
    for flag in (False, True):
        cfg = dataclasses.replace(base, cql=dataclasses.replace(base.cql, actor_encoder_grad=flag))
        states, metrics = tj.train_seeds(cfg, tiny_dataset(), keys, stage=2)
        assert np.all(np.isfinite(np.asarray(metrics.critic.critic_loss)))
        runs[flag] = states.params
    enc = [flax.traverse_util.flatten_dict(runs[f]["encoder"]) for f in (False, True)]
    assert any(not np.allclose(enc[0][k], enc[1][k]) for k in enc[0])
    # The critic head is trained by the critic loss alone in both runs, so only its inputs differ.
    assert set(enc[0]) == set(enc[1])


def _largest_constant_bytes(hlo_text: str) -> int:
    # Large array literals print as hex blobs: dense<"0x0011...">, two hex digits per byte.
    import re

    return max((len(m) // 2 for m in re.findall(r'dense<"0x([0-9A-Fa-f]+)">', hlo_text)), default=0)


def test_vmapped_train_takes_the_dataset_as_an_argument_not_a_constant():
    # The fixed API: make_train(config, stage) -> train(key, data). A closure over the device
    # dataset (the old make_train(config, dataset, stage) -> train(key)) is baked into the
    # compiled program as a literal as large as the images; an argument is not.
    cfg = tiny_config("bc")
    data = tj.prepare_data(tiny_dataset(), cfg)
    train = tj.make_train(cfg, 1)
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    image_bytes = int(data.images.nbytes)
    assert image_bytes > 10_000
    lowered = jax.jit(jax.vmap(train, in_axes=(0, None))).lower(keys, data)
    assert _largest_constant_bytes(lowered.as_text()) < 1_000
    closure = jax.jit(jax.vmap(lambda k: train(k, data))).lower(keys).as_text()
    assert _largest_constant_bytes(closure) >= image_bytes  # the detector sees the old design
    # ... and the vmapped program (the one lowered above) equals single-seed runs.
    states, metrics = lowered.compile()(keys, data)
    for i in range(2):
        single, m = jax.jit(train)(keys[i], data)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=2e-5),
                               states.params, single.params)
        np.testing.assert_allclose(metrics.bc.bc_loss[i], m.bc.bc_loss, rtol=2e-4, atol=2e-5)


def test_train_rejects_bad_keys_and_data():
    cfg = tiny_config("bc", num_steps=1)
    data = tj.prepare_data(tiny_dataset(), cfg)
    train = tj.make_train(cfg, 1)
    with pytest.raises(ValueError, match="`key` must have shape \\[2\\]"):
        train(jnp.zeros((3,), jnp.uint32), data)
    with pytest.raises(TypeError, match="`key` must be a PRNG key"):
        train(jnp.zeros((2,), jnp.float32), data)
    with pytest.raises(TypeError, match="`data` must be the TrainData of prepare_data"):
        train(jax.random.PRNGKey(0), tiny_dataset())
    with pytest.raises(TypeError, match="`keys` must be PRNG keys"):
        tj.train_seeds(cfg, data, jnp.zeros((2, 2), jnp.float32))


def _bank(rows=5):
    # Column d holds values no other column holds, small enough that tanh/atanh round-trips.
    return (np.arange(rows)[:, None] * 0.02 + np.arange(7)[None, :] * 0.1 - 0.35).astype(np.float32)


def test_stage2_batches_draw_from_the_residual_bank_in_the_data():
    s2 = dataclasses.replace(_tiny.TINY_S2, perturbation="residuals", sigma_scales=(1.0, 2.0))
    cfg = dataclasses.replace(tiny_config("bc"), stage2=s2)
    bank = _bank()
    data = tj.prepare_data(tiny_dataset(), cfg, residuals=bank.tolist())  # any array-like, stored float32
    assert data.residuals.dtype == jnp.float32 and data.residuals.shape == (5, 7)
    fn = jax.jit(lambda d, k: tj.sample_batch(d, k, 64, 2, s2))
    batch = fn(data, jax.random.PRNGKey(0))
    eps = np.arctanh(np.asarray(batch.action, np.float64))  # the target is tanh(eps)
    allowed = np.concatenate([bank, 2.0 * bank])
    for d in range(6):
        assert np.abs(eps[:, d, None] - allowed[None, :, d]).min(1).max() < 1e-5, d
    # The bank is an argument, not a constant: another bank of the same size reuses the program.
    other = fn(data._replace(residuals=data.residuals + 0.01), jax.random.PRNGKey(0))
    assert fn._cache_size() == 1 and not np.allclose(other.action[:, :6], batch.action[:, :6])
    # Seeds vmap over one copy of the data (bank included) and equal single-key draws.
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    many = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(data, keys)
    for i in range(2):
        np.testing.assert_allclose(many.action[i], fn(data, keys[i]).action, atol=1e-6)


def test_perturbation_options_are_refused_before_any_work():
    for bad in [(), (0.0,), (1.0, -2.0), (float("nan"),), "1.0", 2.0]:
        with pytest.raises(tj.ConfigError, match="Stage2Config.sigma_scales"):
            tj.Stage2Config(sigma_scales=bad)
    with pytest.raises(tj.ConfigError, match="Stage2Config.perturbation must be one of"):
        tj.Stage2Config(perturbation="laplace")
    with pytest.raises(tj.ConfigError, match="Stage2Config.loss_weighting='whiten' needs perturbation='gaussian'"):
        tj.Stage2Config(perturbation="residuals", loss_weighting="whiten")
    assert tj.Stage2Config(perturbation="residuals", loss_weighting="auto").bc_weights() is None
    s2 = dataclasses.replace(_tiny.TINY_S2, perturbation="residuals")
    cfg = dataclasses.replace(tiny_config("bc"), stage2=s2)
    # A bad bank is refused before the dataset is even looked at (this dataset is bad too).
    ds = tiny_dataset()
    broken = ds.replace(action=np.asarray(ds.action) * 2)
    for bank, match in [(np.zeros((5, 6)), "`residuals` must have shape \\[\\*, 7\\]"),
                        (np.full((5, 7), np.nan), "`residuals` must be finite"),
                        (np.zeros((0, 7)), "`residuals` is empty")]:
        with pytest.raises(ValueError, match=match):
            tj.prepare_data(broken, cfg, residuals=bank)
    with pytest.raises(tj.ConfigError, match="Stage2Config.perturbation='gaussian' ignores the `residuals`"):
        tj.prepare_data(broken, tiny_config("bc"), residuals=_bank())
    # Stage 2 without a bank stops at init, before a step; stage 1 ignores the option.
    data = tj.prepare_data(ds, cfg)
    with pytest.raises(ValueError, match="perturbation='residuals' needs the residual bank"):
        tj.make_train(cfg, 2).init(jax.random.PRNGKey(0), data)
    assert tj.sample_batch(data, jax.random.PRNGKey(0), 2, 1, s2).obs.image.shape[0] == 2


def test_stage2_batches_take_a_share_of_tentative_actions_from_predictions():
    ds = tiny_dataset()
    n = ds.num_transitions
    rng = np.random.default_rng(0)
    pred = np.clip(np.asarray(ds.action)[None, :, None, :] + rng.normal(0, 0.05, (2, n, 2, 7)), -0.9, 0.9)
    plain = tj.sample_batch(tj.prepare_data(ds, tiny_config("bc")), jax.random.PRNGKey(3), 64, 2, _tiny.TINY_S2)
    for share in (0.5, 1.0):
        s2 = dataclasses.replace(_tiny.TINY_S2, predicted_share=share)
        cfg = dataclasses.replace(tiny_config("bc"), stage2=s2)
        data = tj.prepare_data(ds, cfg, predicted=pred)
        assert data.predicted.shape == (2, n, 2, 7)
        idx = jnp.arange(n)
        batch = tj.batch_at(data, idx, jax.random.PRNGKey(3), 2, s2)
        a1, nxt = np.asarray(batch.obs.tentative), np.asarray(batch.next_obs.tentative)
        # a sample's tentative action is one predictor's action there, or else Algo. 1's draw
        hit = [np.abs(a1 - pred[p, :, 0]).max(1) < 1e-5 for p in range(2)]
        taken = hit[0] | hit[1]
        assert (taken.all() if share == 1.0 else 0.2 < taken.mean() < 0.8)
        # its next state acts from the same predictor's next-state action
        nhit = [np.abs(nxt - pred[p, :, 1]).max(1) < 1e-5 for p in range(2)]
        assert np.all((hit[0] & nhit[0]) | (hit[1] & nhit[1]) | ~taken)
        # and its target composes the prediction back to the demo action (up to the 0.99 clip)
        composed = np.asarray(s2.compose(batch.obs.tentative, batch.action))
        np.testing.assert_allclose(composed[taken], np.clip(ds.action, -0.99, 0.99)[taken], atol=1e-4)
    # share 0 is the paper's Algo. 1, bitwise (the predictions' key is a key of its own)
    s2 = dataclasses.replace(_tiny.TINY_S2, predicted_share=0.5)
    mixed = tj.sample_batch(tj.prepare_data(ds, dataclasses.replace(tiny_config("bc"), stage2=s2), predicted=pred[0]),
                            jax.random.PRNGKey(3), 64, 2, s2)
    kept = np.all(np.asarray(mixed.obs.tentative) == np.asarray(plain.obs.tentative), axis=1)
    assert 0 < kept.sum() < 64


def test_predictions_are_refused_before_any_work():
    ds = tiny_dataset()
    n = ds.num_transitions
    s2 = dataclasses.replace(_tiny.TINY_S2, predicted_share=0.5)
    cfg = dataclasses.replace(tiny_config("bc"), stage2=s2)
    for bad in [-0.1, 1.5, float("nan"), True, "0.5"]:
        with pytest.raises(tj.ConfigError, match="Stage2Config.predicted_share must lie in"):
            tj.Stage2Config(predicted_share=bad)
    for pred, match in [(np.zeros((n, 7)), "must be \\[N, 2, 7\\]"), (np.zeros((1, n + 1, 2, 7)), f"N={n}"),
                        (np.full((n, 2, 7), np.nan), "in \\[-1, 1\\]"), (np.full((n, 2, 7), 2.0), "in \\[-1, 1\\]")]:
        with pytest.raises(ValueError, match=match):
            tj.prepare_data(ds, cfg, predicted=pred)
    with pytest.raises(tj.ConfigError, match="predicted_share=0 ignores"):
        tj.prepare_data(ds, tiny_config("bc"), predicted=np.zeros((n, 2, 7)))
    with pytest.raises(ValueError, match="predicted_share=0.5 needs a policy's actions"):
        tj.make_train(cfg, 2).init(jax.random.PRNGKey(0), tj.prepare_data(ds, cfg))
