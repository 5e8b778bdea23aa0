"""Bad inputs to the library: each case fails with an error naming the argument and what was
expected, at the boundary for values (prepare_data, act) and in the core ops for shapes/dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj
from tests._tiny import tiny_config, tiny_dataset
from twostage_jax.testing import synthetic_camera


def _transform_args(size=32, camera_size=32):
    ds = tiny_dataset()
    cam = synthetic_camera(camera_size)
    image = jnp.asarray(ds.images[0])
    if size != image.shape[0]:
        image = jnp.zeros((size, size, 3), jnp.uint8)
    return image, jnp.asarray(ds.pose[0]), jnp.asarray(ds.action[0]), cam, ds.workspace


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_transform_state_checks_image_dtype_size_and_names_pose(jit):
    image, pose, tentative, cam, ws = _transform_args()
    fn = lambda im, z, a: tj.transform_state(im, z, a, cam, ws, 8, 4)
    fn = jax.jit(fn) if jit else fn
    fn(image, pose, tentative)  # good input passes
    with pytest.raises(TypeError, match=r"`image` must be uint8 \(0..255\) or floating point \(0..1\).*int32"):
        fn(image.astype(jnp.int32), pose, tentative)
    with pytest.raises(ValueError, match=r"`image` must have shape \[64, 64, 3\] \(\[H, W, 3\] at the "
                                         r"camera's resolution\); got shape \(32, 32, 3\)"):
        big = synthetic_camera(64)
        tj.transform_state(image, pose, tentative, big, ws, 8, 4)
    with pytest.raises(TypeError, match="`pose` must be a floating-point array"):
        fn(image, pose.astype(jnp.int32), tentative)


def test_act_checks_images_keys_and_values(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    cam = synthetic_camera(32)
    image, pose = np.asarray(ds.images[:2]), np.asarray(ds.pose[:2])
    act = tj.make_policy(c1, c2, ds.workspace)
    act(p1, p2, image, pose, cam)  # deterministic: no key needed
    for bad in (image.astype(np.float32), image.astype(np.float32) / 255.0, image.astype(np.int32)):
        with pytest.raises(TypeError, match=r"`image` must be uint8 camera frames \(0..255\)"):
            act(p1, p2, bad, pose, cam)
    with pytest.raises(ValueError, match="`pose` must be finite"):
        act(p1, p2, image, pose.copy() * np.nan, cam)
    with pytest.raises(ValueError, match="`tentative` must be finite"):
        act(p1, p2, image, pose, cam, tentative=np.full((2, 7), np.nan, np.float32))
    # A stochastic policy without a key would draw the same noise every step.
    sample = tj.make_policy(c1, c2, ds.workspace, deterministic=False)
    with pytest.raises(ValueError, match="`key` is None, but this policy samples"):
        sample(p1, p2, image, pose, cam)
    out = sample(p1, p2, image, pose, cam, jax.random.PRNGKey(3))
    assert out.action.shape == (2, 7)
    with pytest.raises(ValueError, match=r"`key` must have shape \[2\]"):
        sample(p1, p2, image, pose, cam, jnp.zeros(3, jnp.uint32))
    with pytest.raises(TypeError, match="`key` must be a PRNG key"):
        sample(p1, p2, image, pose, cam, jnp.zeros(2, jnp.float32))


def test_sample_batch_checks_stage_batch_size_and_key():
    cfg = tiny_config()
    data = tj.prepare_data(tiny_dataset(), cfg)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="`stage` must be 1 or 2; got 3"):
        tj.sample_batch(data, key, 4, 3, cfg.stage2)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int; got 0"):
        tj.sample_batch(data, key, 0, 1)
    with pytest.raises(ValueError, match=r"`key` must have shape \[2\]"):
        tj.sample_batch(data, jnp.zeros(4, jnp.uint32), 4, 1)
    with pytest.raises(TypeError, match="`data` must be the TrainData of prepare_data"):
        tj.sample_batch(tiny_dataset(), key, 4, 1)
    with pytest.raises(ValueError, match="`stage2.crop_size` is None"):
        tj.sample_batch(data, key, 4, 2, tj.Stage2Config())


def test_cql_batch_fields_must_share_the_batch_size():
    cfg = tiny_config("cql")
    data = tj.prepare_data(tiny_dataset(), cfg)
    batch = tj.sample_batch(data, jax.random.PRNGKey(0), 8, 1)
    nets = tj.make_networks(cfg.network, 1, "cql")
    params = tj.init_cql_params(nets.init(jax.random.PRNGKey(0), batch.obs), cfg.cql)
    with pytest.raises(ValueError, match=r"`batch.mc_return` must have shape \[8\]"):
        tj.cql_critic_loss(params, batch._replace(mc_return=batch.mc_return[:3]), jax.random.PRNGKey(1),
                           0.1, None, nets, cfg.cql)
    with pytest.raises(ValueError, match=r"`batch.next_obs` is missing required field\(s\) \['pose'\]"):
        tj.cql_critic_loss(params, batch._replace(next_obs=tj.Stage1Obs(batch.next_obs.image, None)),
                           jax.random.PRNGKey(1), 0.1, None, nets, cfg.cql)


def test_crop_size_follows_the_algorithm():
    assert tj.TrainConfig(algo="bc").stage2.crop_size == 64  # the paper's BC crop
    assert tj.TrainConfig(algo="cql").stage2.crop_size == 32  # the paper's CQL crop
    assert tj.TrainConfig(algo="bc", stage2=tj.Stage2Config(crop_size=16)).stage2.crop_size == 16
    assert tj.Stage2Config().crop_size is None
    assert tj.Stage2Config().with_crop_size_for("bc").crop_size == 64
    with pytest.raises(ValueError, match="Stage2Config.crop_size must be a positive int, or None"):
        tj.Stage2Config(crop_size=0)


def _runtime_imports(module: str) -> set[str]:
    """twostage_jax modules `module` imports at run time (top level, outside TYPE_CHECKING)."""
    import ast
    from pathlib import Path

    path = Path(tj.__file__).parent / module.split(".", 1)[1].replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("twostage_jax"):
            out.add(node.module)
    return out


def test_policy_does_not_import_training():
    # The policy depends on networks, transform and actions, not on the training code.
    seen, todo = set(), ["twostage_jax.policy"]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(m for m in _runtime_imports(mod) if m != "twostage_jax")
    assert not [m for m in seen if m.split(".")[:2] == ["twostage_jax", "training"]], sorted(seen)
    assert {"twostage_jax.networks", "twostage_jax.transform", "twostage_jax.actions"} <= seen


@pytest.mark.parametrize("field", ["reward", "mc_return", "done"])
def test_prepare_data_refuses_non_finite_returns(field):
    # CQL regresses Q on these: one NaN would make every loss NaN without a word
    ds = tiny_dataset()
    bad = np.array(getattr(ds, field), np.float32)
    bad[1] = np.nan
    with pytest.raises(ValueError, match=rf"`dataset\.{field}` must be finite"):
        tj.prepare_data(dataclasses.replace(ds, **{field: bad}), tiny_config("cql"))


def test_prepare_data_refuses_cameras_that_cannot_be_right():
    # NaN intrinsics trained stage 2 to NaN parameters; a stretched rotation projected wrongly
    ds, config = tiny_dataset(), tiny_config("bc")
    k = np.array(ds.intrinsics, np.float32)
    k[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"`dataset\.intrinsics` must be finite; got NaN or inf in frame\(s\) \[1\]"):
        tj.prepare_data(dataclasses.replace(ds, intrinsics=k), config)
    t = np.array(ds.cam_to_world, np.float32)
    t[0, :3, :3] *= 3.0
    with pytest.raises(ValueError, match=r"`dataset\.cam_to_world` must be a rigid .* frame 0 has max \|R\^T R - I\| = 8"):
        tj.prepare_data(dataclasses.replace(ds, cam_to_world=t), config)
    episode = np.array(ds.episode)
    episode[0] = -5
    with pytest.raises(ValueError, match=r"`dataset\.episode` must hold episode indices >= 0; got values from -5"):
        tj.prepare_data(dataclasses.replace(ds, episode=episode), config)
    # a camera turned around sees none of the end-effector positions
    assert tj.visible_share(ds) > 0.9
    flipped = np.array(ds.cam_to_world, np.float32)
    flipped[:, :3, :3] = flipped[:, :3, :3] @ np.diag([-1.0, 1.0, -1.0]).astype(np.float32)  # about y: still rigid
    turned = dataclasses.replace(ds, cam_to_world=flipped)
    assert tj.visible_share(turned) == 0.0
    tj.validate_dataset(turned)  # the library's own check leaves visibility to the caller
    with pytest.raises(ValueError, match=r"the camera sees 0% of the demos' end-effector positions"):
        tj.validate_dataset(turned, min_visible=tj.MIN_VISIBLE)


def test_a_workspace_beyond_any_cell_is_refused():
    # a calibration with low = -1e308 was blamed on the dataset's poses (overflow to inf)
    with pytest.raises(ValueError, match=r"Workspace `low` must be finite metres within 1000 m"):
        tj.Workspace.create([-1e308, 0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"Workspace `high` must be finite"):
        tj.Workspace.create([0.0, 0.0, 0.0], [1.0, np.nan, 1.0])


def test_sizes_no_machine_holds_are_refused_by_the_library(tiny_trained, monkeypatch):
    ds, c1, c2, _, _ = tiny_trained
    with pytest.raises(ValueError, match=r"`size` asks for at least .* TiB \(one 1000000x1000000 float32 crop\)"):
        tj.crop_at_pixel(jnp.zeros((8, 8, 3)), jnp.array([3.0, 3.0]), jnp.array(0.0), size=10**6)
    with pytest.raises(ValueError, match=r"`correction_passes` must be an integer in \[1, 16\]"):
        tj.make_policy(c1, c2, ds.workspace, correction_passes=10**6)
    with pytest.raises(TypeError, match=r"`workspace` must be the dataset's Workspace .* got NoneType"):
        tj.make_policy(c1, c2, None)
    with pytest.raises(tj.ConfigError, match=r"TrainConfig\.batch_size must be a positive int below 2\*\*31"):
        tj.TrainConfig(batch_size=2**40)
    # the launcher caps its simulators at the episodes and the cores
    from twostage_jax.evaluation import rollouts as eval_rollouts
    from twostage_jax.launch.eval_jobs import pool_workers
    from tests._launcher import smoke

    monkeypatch.setattr(eval_rollouts, "default_workers", lambda: 2)
    assert pool_workers(smoke(**{"eval.workers": 12}), 4) == 2
    assert pool_workers(smoke(**{"eval.workers": 12}), 1) == 1
    assert pool_workers(smoke(**{"eval.workers": 1}), 100) == 1


# Errors that say what is wrong, and images the networks can misread.


def test_act_names_an_empty_batch_and_swapped_params(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    cam = synthetic_camera(32)
    image, pose = np.asarray(ds.images[:2]), np.asarray(ds.pose[:2])
    act = tj.make_policy(c1, c2, ds.workspace)
    with pytest.raises(ValueError, match=r"`image` must hold at least one frame \(batch size B >= 1\); "
                                         r"got batch size 0 \(shape \(0, 32, 32, 3\)\)"):
        act(p1, p2, image[:0], pose[:0], cam)
    with pytest.raises(ValueError, match=r"`params1` and `params2` look swapped: `params1` holds stage 2's "
                                         r"networks \(encoder modules \['crop_cnn', 'ee_cnn'"):
        act(p2, p1, image, pose, cam)
    with pytest.raises(ValueError, match=r"`params2` does not match stage 2's networks.*expected encoder "
                                         r"modules \['crop_cnn'.*got \['CNN_0', 'MLP_0'\]"):
        act(p1, p1, image, pose, cam)
    # Stage 1 alone: stage 2's params in the first slot are named too.
    with pytest.raises(ValueError, match=r"`params1` does not match stage 1's networks.*expected encoder "
                                         r"modules \['CNN_0', 'MLP_0'\], got \['crop_cnn'"):
        tj.make_policy(c1, None, ds.workspace)(p2, None, image, pose, cam)
    # CQL params carry a critic and log_alpha that act does not read: still accepted.
    assert "critic" in p2 and act(p1, p2, image, pose, cam).action.shape == (2, 7)


def test_train_seeds_needs_at_least_one_key():
    for keys in (jnp.zeros((0, 2), jnp.uint32), jax.random.split(jax.random.key(0), 0)):
        with pytest.raises(ValueError, match=r"`keys` must hold at least one PRNG key \(one per seed, "
                                             r"e.g. jax.random.split\(key, 1\)\); got 0 keys"):
            tj.train_seeds(tiny_config(), tiny_dataset(), keys)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_compose_names_both_batches(jit):
    for compose in (tj.compose_correction, tj.compose_direct):
        fn = jax.jit(compose) if jit else compose
        with pytest.raises(ValueError, match=r"`a1` and `a2` must have the same shape, or shapes that "
                                             r"broadcast.*got `a1` shape \(4, 7\) and `a2` shape \(3, 7\)"):
            fn(jnp.zeros((4, 7)), jnp.zeros((3, 7)))
        assert fn(jnp.zeros(7), jnp.zeros((3, 7))).shape == (3, 7)  # one a1 shared by a batch


def test_networks_check_image_dtype_and_float_range(tiny_trained):
    ds, c1, c2, p1, p2 = tiny_trained
    nets1 = tj.make_networks(c1.network, 1, "bc")
    frames, pose = jnp.asarray(ds.images[:2]), jnp.asarray(ds.pose[:2])
    nets1.encode(p1, tj.Stage1Obs(frames.astype(jnp.float32) / 255.0, pose))  # [0, 1]: accepted
    bad = tj.Stage1Obs(frames.astype(jnp.float32), pose)  # floats in 0..255: misread 255x brighter
    for fn in (nets1.encode, nets1.init):
        arg = p1 if fn is nets1.encode else jax.random.PRNGKey(0)
        with pytest.raises(ValueError, match=r"`obs.image` is floating point, so it must lie in \[0, 1\] "
                                             r"\(uint8 images hold 0..255\); got values in \[.*, 2\d\d\]"):
            fn(arg, bad)
    for fn in (nets1.encode, jax.jit(nets1.encode)):  # dtype: at trace time, eager and jitted
        with pytest.raises(TypeError, match=r"`obs.image` must be uint8 \(0..255\) or floating point"):
            fn(p1, tj.Stage1Obs(frames.astype(jnp.int32), pose))
    nets2 = tj.make_networks(c2.network, 2, "cql")
    s2 = c2.stage2
    obs2 = tj.Stage2Obs(jnp.full((2, s2.crop_size, s2.crop_size, 3), 0.5),
                        jnp.full((2, s2.ee_crop_size, s2.ee_crop_size, 3), 0.5), pose, pose)
    with pytest.raises(ValueError, match=r"`obs.crop` is floating point, so it must lie in \[0, 1\]"):
        nets2.encode(p2, obs2._replace(crop=obs2.crop * 255.0))
    with pytest.raises(ValueError, match=r"`obs.ee_crop` must be finite"):
        nets2.encode(p2, obs2._replace(ee_crop=obs2.ee_crop * jnp.nan))


def test_a_batch_larger_than_the_data_warns():
    import warnings

    data = tj.prepare_data(tiny_dataset(), tiny_config())  # 18 transitions
    key = jax.random.PRNGKey(0)
    big = tj.make_train(dataclasses.replace(tiny_config(), batch_size=64), 1)
    with pytest.warns(UserWarning, match=r"TrainConfig.batch_size \(64\) exceeds the 18 transitions"):
        jax.eval_shape(big.init, key, data)  # traced: the sizes are static, no step runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.eval_shape(tj.make_train(tiny_config(), 1).init, key, data)  # batch 8: silent
