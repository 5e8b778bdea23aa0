"""conv_impl='patches' (im2col) equals conv_impl='xla' (lax.conv): outputs, gradients, vmapped
over seeds, and whole multi-seed training runs; and the seed-strategy options."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._tiny import LEVEL_1
from twostage_jax.networks import (
    CNN, NetworkConfig, conv2d_patches, make_networks, resolve_conv_impl)
from twostage_jax.testing import make_synthetic_dataset
from twostage_jax.training import Stage2Config, TrainConfig, prepare_data, sample_batch, train_seeds
from twostage_jax.training.seeds import resolve_seed_strategy

TINY = NetworkConfig(conv_channels=(4, 4), crop_conv_channels=(4,), conv_strides=(2, 2),
                     mlp_hidden=8, head_hidden=(16,))
RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("size,stride,cin", [(9, 1, 3), (8, 2, 3), (7, 2, 5), (16, 2, 4)])
def test_conv2d_patches_matches_lax_conv(size: int, stride: int, cin: int) -> None:
    kx, kk = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (2, size, size, cin))
    w = jax.random.normal(kk, (3, 3, cin, 6))
    ref = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv2d_patches(x, w, stride), ref, rtol=RTOL, atol=ATOL)


def _random_params(init_fn, *args, seeds: int, scale: float = 0.3) -> dict:
    """[seeds]-stacked params shaped like `init_fn(*args)`, drawn with numpy (no XLA compile)."""
    shapes = jax.eval_shape(init_fn, *args)
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(scale * rng.standard_normal((seeds,) + s.shape), s.dtype), shapes)


def _assert_trees_close(a, b, rtol: float = RTOL, atol: float = ATOL) -> None:
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_cnn_outputs_and_grads_match_single_and_vmapped() -> None:
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 12, 12, 3)), jnp.float32)
    cnns = {impl: CNN((4, 4), (2, 2), impl) for impl in ("xla", "patches")}
    params = _random_params(cnns["xla"].init, jax.random.PRNGKey(0), x, seeds=3)
    one = jax.tree_util.tree_map(lambda p: p[0], params)

    def value_grad(impl: str):
        return jax.value_and_grad(lambda p, x_: jnp.sum(jnp.sin(cnns[impl].apply(p, x_))))

    _assert_trees_close(value_grad("patches")(one, x), value_grad("xla")(one, x))  # un-jitted
    vmapped = {impl: jax.jit(jax.vmap(value_grad(impl), in_axes=(0, None)))(params, x)
               for impl in cnns}
    _assert_trees_close(vmapped["patches"], vmapped["xla"])
    assert not np.allclose(vmapped["xla"][0][0], vmapped["xla"][0][1])  # seeds differ


@pytest.mark.parametrize("stage", [1, 2])
def test_encoder_outputs_and_grads_match(stage: int) -> None:
    data = prepare_data(make_synthetic_dataset(2, 2, 16), TrainConfig())
    s2 = Stage2Config(crop_size=32)  # the size this test always used (the old default)
    obs = jax.jit(lambda d: sample_batch(d, jax.random.PRNGKey(0), 4, stage, s2).obs)(data)
    nets = {impl: make_networks(dataclasses.replace(TINY, conv_impl=impl), stage, "bc")
            for impl in ("xla", "patches")}
    params = _random_params(nets["xla"].init, jax.random.PRNGKey(3), obs, seeds=2)

    def value_grad(impl: str):
        loss = lambda p: jnp.sum(nets[impl].actor(p, nets[impl].encode(p, obs)) ** 2)
        # at level 1: level 0 rounds the stage-2 encoder's two convolutions apart by more than RTOL
        return jax.jit(jax.vmap(jax.value_and_grad(loss))).lower(params).compile(LEVEL_1)(params)

    _assert_trees_close(value_grad("patches"), value_grad("xla"))


def test_train_seeds_same_params_across_impls_and_strategies() -> None:
    # BC only: compiling three CQL trainers costs ~40 s on 2 CPU cores, and the conv path
    # (the only thing conv_impl changes) is the same for both algorithms.
    ds = make_synthetic_dataset(2, 2, 16)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    runs = {}
    for impl, strategy in (("xla", "vmap"), ("patches", "vmap"), ("patches", "sequential")):
        cfg = TrainConfig(algo="bc", num_steps=3, batch_size=4,
                          network=dataclasses.replace(TINY, conv_impl=impl))
        runs[(impl, strategy)] = train_seeds(cfg, ds, keys, stage=1, strategy=strategy)
    ref_state, ref_metrics = runs[("xla", "vmap")]
    assert jax.tree_util.tree_leaves(ref_state.params)[0].shape[0] == 2
    for state, metrics in runs.values():
        _assert_trees_close(state.params, ref_state.params, rtol=1e-3, atol=1e-5)
        _assert_trees_close(metrics, ref_metrics, rtol=1e-3, atol=1e-5)
    # The seeds differ from each other.
    leaf = jax.tree_util.tree_leaves(ref_state.params["actor"])[0]
    assert not np.allclose(leaf[0], leaf[1])


def test_resolve_conv_impl_and_bad_names() -> None:
    assert resolve_conv_impl("auto", "cpu") == "patches"
    assert resolve_conv_impl("auto", "gpu") == "xla"
    assert resolve_conv_impl("xla", "cpu") == "xla"
    with pytest.raises(ValueError, match="conv_impl.*'grouped'"):
        NetworkConfig(conv_impl="grouped")
    assert resolve_seed_strategy("auto", "cpu") == "sequential"
    assert resolve_seed_strategy("auto", "gpu") == "vmap"
    assert resolve_seed_strategy("vmap", "cpu") == "vmap"
    # (the trainer of test_train_seeds_same_params_across_impls_and_strategies: train_seeds
    # initialises the seeds before it reads the strategy, with that test's compiled program)
    with pytest.raises(ValueError, match="strategy.*'auto', 'vmap', 'sequential'.*'parallel'"):
        train_seeds(TrainConfig(algo="bc", num_steps=3, batch_size=4,
                                network=dataclasses.replace(TINY, conv_impl="patches")),
                    make_synthetic_dataset(2, 2, 16), jax.random.split(jax.random.PRNGKey(0), 2),
                    strategy="parallel")
