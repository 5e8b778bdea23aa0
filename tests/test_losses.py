"""BC and CQL losses and update steps on tiny networks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import twostage_jax as tj
from tests._tiny import TINY_NET, tiny_config, tiny_dataset
from twostage_jax.networks import TwinQ


def _fixed_batch(stage=1, key=0):
    cfg = tiny_config()
    data = tj.prepare_data(tiny_dataset(), cfg)
    return data, tj.sample_batch(data, jax.random.PRNGKey(key), 8, stage, cfg.stage2)


@pytest.mark.parametrize("stage", [1, 2])
def test_bc_updates_reduce_loss_on_a_fixed_batch(stage):
    _, batch = _fixed_batch(stage)
    nets = tj.make_networks(TINY_NET, stage, "bc")
    params = nets.init(jax.random.PRNGKey(0), batch.obs)
    opt = optax.adam(3e-3)
    state = tj.AgentState(params=params, target_params={}, opt_state=opt.init(params),
                          key=jax.random.PRNGKey(1), step=jnp.zeros((), jnp.int32))
    update = jax.jit(tj.make_bc_update(nets, opt))
    loss0, aux0 = tj.bc_loss(params, batch, nets)
    assert isinstance(aux0, tj.BCAux)
    for _ in range(40):
        state, metrics = update(state, batch, jax.random.PRNGKey(0))
    loss1, _ = tj.bc_loss(state.params, batch, nets)
    assert float(loss1) < 0.5 * float(loss0)
    assert int(state.step) == 40 and np.isfinite(float(metrics.grad_norm))


def test_bc_loss_weights_per_dimension():
    _, batch = _fixed_batch(2)
    nets = tj.make_networks(TINY_NET, 2, "bc")
    params = nets.init(jax.random.PRNGKey(0), batch.obs)
    plain, _ = tj.bc_loss(params, batch, nets)
    np.testing.assert_allclose(tj.bc_loss(params, batch, nets, jnp.ones(7))[0], plain, rtol=1e-6)
    err = nets.actor(params, nets.encode(params, batch.obs)) - batch.action
    only_gripper = jnp.zeros(7).at[6].set(2.0)
    np.testing.assert_allclose(tj.bc_loss(params, batch, nets, only_gripper)[0],
                               2.0 * jnp.mean(err[:, 6] ** 2), rtol=1e-5)


def test_whitened_stage2_weights_and_validation():
    var = tj.correction_target_variance((0.1,) * 6 + (1.0,))
    draws = np.tanh(np.random.default_rng(0).normal(size=(400_000, 1)) * np.array([0.1, 1.0]))
    np.testing.assert_allclose(var[[0, 6]], draws.var(axis=0), rtol=0.01)  # Monte Carlo check
    w = tj.Stage2Config(loss_weighting="whiten").bc_weights()
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[0] / w[6], var[6] / var[0], rtol=1e-5)  # gripper ~40x lighter
    assert tj.Stage2Config().bc_weights() is None
    with pytest.raises(ValueError, match="loss_weighting must be one of \\('none', 'whiten', 'auto'\\); got 'l1'"):
        tj.Stage2Config(loss_weighting="l1")
    with pytest.raises(ValueError, match="'whiten' needs mode='correction'"):
        tj.Stage2Config(loss_weighting="whiten", mode="direct")
    # 'auto' whitens where whitening is defined (a correction target with sigma > 0), else none.
    np.testing.assert_array_equal(tj.Stage2Config(loss_weighting="auto").bc_weights(), w)
    assert tj.Stage2Config(loss_weighting="auto", mode="direct").bc_weights() is None
    assert tj.Stage2Config(loss_weighting="auto", sigma=(0.0,) * 7).bc_weights() is None


def test_cql_regularizer_hand_worked():
    # One head pair, N = 1, B = 1; every Q is 0 except the data action's.
    q_data = jnp.array([[1.0], [2.0]])
    zeros = jnp.zeros((2, 1, 1))
    logp = jnp.zeros((1, 1))
    reg, aux = tj.cql_regularizer(q_data, zeros, zeros, logp, zeros, logp)
    lse = np.log(np.exp(7 * np.log(2.0)) + 2.0)  # uniform density 2^-7 -> weight 2^7
    np.testing.assert_allclose(reg, (lse - 1.0) + (lse - 2.0), rtol=1e-6)
    np.testing.assert_allclose(aux.logsumexp_q, lse, rtol=1e-6)


class _Head(nn.Module):
    hidden: tuple

    @nn.compact
    def __call__(self, x):
        for i, h in enumerate(self.hidden):
            x = nn.Dense(h)(x)
            x = nn.relu(x) if i < len(self.hidden) - 1 else x
        return x[..., 0]


class _BroadcastTwinQ(nn.Module):
    """The critic as first written, the reference: features broadcast to the actions' leading
    shape [..., F], concatenated with the actions, through plain `nn.Dense` layers."""

    hidden: tuple

    @nn.compact
    def __call__(self, feat, action):
        feat = jnp.broadcast_to(feat, action.shape[:-1] + feat.shape[-1:])
        x = jnp.concatenate([feat, action], axis=-1)
        return jnp.stack([_Head(self.hidden + (1,), name=f"q{i}")(x) for i in range(2)])


def _assert_trees_close(new, ref, rtol=1e-5):
    """Leaf by leaf; atol relative to each leaf's largest magnitude (sums that cancel)."""
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref)):
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.max(np.abs(b), initial=0.0)))


def test_critic_on_sampled_actions_equals_the_broadcast_form():
    # TwinQ adds feat @ W_feat [B, H] to actions @ W_act [N, B, H] instead of broadcasting the
    # features to [N, B, F]: the same parameters (names, shapes, initial values) and outputs.
    hidden = TINY_NET.head_hidden
    kf, ka, kb, ki = jax.random.split(jax.random.PRNGKey(0), 4)
    feat = jax.random.normal(kf, (5, 12))
    actions = jax.random.uniform(ka, (3, 5, 7), minval=-1, maxval=1)
    params = TwinQ(hidden).init(ki, feat, actions[0])
    ref = _BroadcastTwinQ(tuple(hidden))
    ref_params = ref.init(ki, feat, actions[0])
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref_params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_array_equal(a, b)  # a checkpoint of either loads into the other
    # Trained-looking weights (zero biases would hide a misplaced bias).
    params = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(kb, x.shape), params)
    q = TwinQ(hidden).apply(params, feat, actions)
    assert q.shape == (2, 3, 5)
    np.testing.assert_allclose(q, ref.apply(params, feat, actions), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(TwinQ(hidden).apply(params, feat, actions[1]), q[:, 1], rtol=1e-5, atol=1e-6)


def _reference_critic_loss(params, batch, key, networks, config):
    """Eq. 3 with the Monte Carlo target as first written: each of the 3 proposals' N actions
    through its own critic call (`networks.critic` broadcasting the features), same keys."""
    k_rand, k_pi, k_next, _ = jax.random.split(key, 4)
    sg = jax.lax.stop_gradient
    feat = networks.encode(params, batch.obs)
    next_feat = sg(networks.encode(params, batch.next_obs))
    frozen = sg(params)

    def policy_samples(f, k):
        mean, log_std = networks.actor(frozen, f)
        return jax.vmap(lambda kk: tj.tanh_gaussian_sample(kk, mean, log_std))(
            jax.random.split(k, config.num_samples))

    q_data = networks.critic(params, feat, batch.action)
    td = jnp.sum(jnp.mean((q_data - batch.mc_return[None]) ** 2, axis=-1))
    rand_a = jax.random.uniform(k_rand, (config.num_samples,) + batch.action.shape, minval=-1.0, maxval=1.0)
    pi_a, pi_logp = policy_samples(sg(feat), k_pi)
    nx_a, nx_logp = policy_samples(next_feat, k_next)
    reg, reg_aux = tj.cql_regularizer(
        q_data, networks.critic(params, feat, rand_a), networks.critic(params, feat, sg(pi_a)),
        sg(pi_logp), networks.critic(params, feat, sg(nx_a)), sg(nx_logp), config.temperature)
    return td + config.cql_weight * reg, (td, reg, reg_aux)


def test_cql_losses_and_gradients_equal_the_broadcast_critic():
    # The critic loss (one critic call on all 3N actions, features not broadcast) and the actor
    # loss against the reference: values, metrics and gradients of every parameter.
    _, batch = _fixed_batch(1)
    nets = tj.make_networks(TINY_NET, 1, "cql")
    ref_module = _BroadcastTwinQ(tuple(TINY_NET.head_hidden))
    ref_nets = nets._replace(critic=lambda p, f, a: ref_module.apply(p["critic"], f, a))
    config = tj.CQLConfig()
    params = tj.init_cql_params(nets.init(jax.random.PRNGKey(0), batch.obs), config)
    key, alpha = jax.random.PRNGKey(1), jnp.float32(0.1)

    def new(p):
        c, c_aux = tj.cql_critic_loss(p, batch, key, alpha, None, nets, config)
        a, a_aux = tj.actor_loss(p, batch, key, alpha, nets)
        return c + a, (c, (c_aux.td_loss, c_aux.cql_regularizer, c_aux.regularizer), a_aux)

    def ref(p):
        c, c_aux = _reference_critic_loss(p, batch, key, ref_nets, config)
        a, a_aux = tj.actor_loss(p, batch, key, alpha, ref_nets)
        return c + a, (c, c_aux, a_aux)

    (loss, aux), grads = jax.jit(jax.value_and_grad(new, has_aux=True))(params)
    (ref_loss, ref_aux), ref_grads = jax.jit(jax.value_and_grad(ref, has_aux=True))(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    _assert_trees_close(aux, ref_aux)
    _assert_trees_close(grads, ref_grads)
    assert all(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads["critic"]))


def test_tanh_gaussian_log_prob_is_exact_and_stable():
    mean = jnp.array([[0.3, -0.2, 0.0, 1.0, -1.0, 0.5, 0.1]])
    log_std = jnp.full((1, 7), -0.5)
    a, logp = tj.tanh_gaussian_sample(jax.random.PRNGKey(0), mean, log_std)
    u = np.arctanh(np.asarray(a, np.float64))
    std = np.exp(-0.5)
    ref = np.sum(-0.5 * ((u - np.asarray(mean)) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
                 - np.log(1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(logp, [ref], rtol=1e-3)
    # Saturated pre-tanh values: a naive log(1 - tanh(u)^2) would give -inf -> +inf log-prob.
    _, logp_big = tj.tanh_gaussian_sample(jax.random.PRNGKey(0), jnp.full((1, 7), 30.0), log_std)
    assert np.all(np.isfinite(logp_big))


def test_cql_training_pushes_random_q_below_data_q():
    cfg = tiny_config("cql", num_steps=150, cql_weight=5.0)
    state, m = tj.make_train(cfg, stage=1)(jax.random.PRNGKey(0), tj.prepare_data(tiny_dataset(), cfg))
    for name, values in tj.flatten_metrics(m).items():
        assert np.all(np.isfinite(values)), name
    data, batch = _fixed_batch(1, key=3)
    nets = tj.make_networks(TINY_NET, 1, "cql")
    feat = nets.encode(state.params, batch.obs)
    q_data = nets.critic(state.params, feat, batch.action).mean()
    rand = jax.random.uniform(jax.random.PRNGKey(9), (32,) + batch.action.shape, minval=-1, maxval=1)
    q_rand = jax.vmap(lambda a: nets.critic(state.params, feat, a))(rand).mean()
    assert float(q_rand) < float(q_data) - 0.1
    assert float(m.critic.regularizer.q_random[-10:].mean()) < float(m.critic.q_data[-10:].mean())
    assert float(m.critic.cql_regularizer[-10:].mean()) < float(m.critic.cql_regularizer[:10].mean())


def test_cql_td_target_and_losses_are_finite():
    cfg = tiny_config("cql", num_steps=3, target="td")
    state, m = tj.make_train(cfg, stage=2)(jax.random.PRNGKey(0), tj.prepare_data(tiny_dataset(), cfg))
    assert set(state.target_params) == {"encoder", "critic"}
    assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(m))
    # The target network moved towards the online one (Polyak), but is not equal to it.
    t = jax.tree_util.tree_leaves(state.target_params["critic"])[0]
    o = jax.tree_util.tree_leaves(state.params["critic"])[0]
    assert not np.allclose(t, o)


def test_actor_and_alpha_losses():
    _, batch = _fixed_batch(1)
    nets = tj.make_networks(TINY_NET, 1, "cql")
    params = tj.init_cql_params(nets.init(jax.random.PRNGKey(0), batch.obs), tj.CQLConfig())
    loss, aux = tj.actor_loss(params, batch, jax.random.PRNGKey(1), jnp.float32(0.1), nets)
    assert isinstance(aux, tj.ActorAux) and np.isfinite(float(loss))
    grads = jax.grad(lambda p: tj.actor_loss(p, batch, jax.random.PRNGKey(1), 0.1, nets)[0])(params)
    assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(grads["encoder"]))
    assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(grads["critic"]))
    assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads["actor"]))
    # Entropy below target (log pi high) -> alpha must grow: d loss / d log_alpha < 0.
    g = jax.grad(lambda la: tj.alpha_loss(la, jnp.full((8,), 10.0), -7.0)[0])(jnp.float32(0.0))
    assert float(g) < 0


def test_actor_bc_term_adds_the_weighted_error_and_pulls_the_mean_to_the_data():
    _, batch = _fixed_batch(1)
    nets = tj.make_networks(TINY_NET, 1, "cql")
    params = tj.init_cql_params(nets.init(jax.random.PRNGKey(0), batch.obs), tj.CQLConfig())
    key = jax.random.PRNGKey(1)
    plain, aux0 = tj.actor_loss(params, batch, key, jnp.float32(0.1), nets)
    w = np.array([1, 1, 1, 0, 0, 0, 2], np.float32)
    loss, aux = tj.actor_loss(params, batch, key, jnp.float32(0.1), nets, bc_weight=0.5, bc_dim_weights=w)
    # By hand: the actor's deterministic mean tanh(mu) against the dataset action.
    feat = nets.encode(params, batch.obs)
    mean, log_std = nets.actor(params, feat)
    err = float(np.mean(np.sum(w * (np.tanh(np.asarray(mean)) - np.asarray(batch.action)) ** 2, -1)))
    np.testing.assert_allclose(float(aux.bc_error), err, rtol=1e-5)
    a, _ = tj.tanh_gaussian_sample(key, mean, log_std)  # the sample the loss's Q is taken at
    abs_q = float(np.mean(np.abs(np.min(np.asarray(nets.critic(params, feat, a)), axis=0))))
    np.testing.assert_allclose(float(loss), float(plain) + 0.5 * abs_q * err, rtol=1e-4)
    assert float(aux0.bc_error) != float(aux.bc_error)  # the unweighted error is logged too
    # Gradient steps on the BC term alone move tanh(mu) towards the data; the critic is untouched.
    def bc_only(p):
        return tj.actor_loss(p, batch, key, 0.0, nets, bc_weight=1.0)[1].bc_error
    p = params
    for _ in range(20):
        g = jax.grad(bc_only)(p)
        assert all(np.all(x == 0) for x in jax.tree_util.tree_leaves(g["critic"]))
        p = jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, p, g)
    assert float(bc_only(p)) < 0.5 * float(bc_only(params))
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="CQLConfig.bc_weight must be a finite number >= 0"):
            tj.CQLConfig(bc_weight=bad)


def test_losses_reject_bad_batches():
    _, batch = _fixed_batch(1)
    nets = tj.make_networks(TINY_NET, 1, "bc")
    params = nets.init(jax.random.PRNGKey(0), batch.obs)
    with pytest.raises(ValueError, match="`batch` is missing required field\\(s\\) \\['action'\\]"):
        tj.bc_loss(params, batch._replace(action=None), nets)
    with pytest.raises(ValueError, match="`batch.action` must have shape \\[\\*, 7\\]"):
        tj.bc_loss(params, batch._replace(action=batch.action[:, :6]), nets)
    # Shapes and dtypes of every field, at trace time (the same eager and under jit).
    for fn in (tj.bc_loss, jax.jit(tj.bc_loss, static_argnums=2)):
        with pytest.raises(ValueError, match=r"`batch.obs` is missing required field\(s\) \['pose'\]"):
            fn(params, batch._replace(obs=tj.Stage1Obs(batch.obs.image, None)), nets)
        with pytest.raises(ValueError, match=r"`batch.obs.pose` must have shape \[8, 7\]"):
            fn(params, batch._replace(obs=batch.obs._replace(pose=batch.obs.pose[:5])), nets)
        with pytest.raises(TypeError, match=r"`batch.obs.image` must be uint8 \(0..255\) or floating"):
            fn(params, batch._replace(obs=batch.obs._replace(image=batch.obs.image.astype(jnp.int32))),
               nets)
    cnets = tj.make_networks(TINY_NET, 1, "cql")
    cparams = tj.init_cql_params(cnets.init(jax.random.PRNGKey(0), batch.obs), tj.CQLConfig())
    with pytest.raises(ValueError, match="missing required field\\(s\\) \\['mc_return'\\]"):
        tj.cql_critic_loss(cparams, batch._replace(mc_return=None), jax.random.PRNGKey(0), 0.1, None,
                           cnets, tj.CQLConfig())
    with pytest.raises(ValueError, match="CQLConfig.target must be one of"):
        tj.CQLConfig(target="sarsa")


def test_metrics_are_nested_and_flatten_to_the_logged_names():
    # Nested NamedTuples, not positional flattening; flatten_metrics keeps the flat names that
    # metrics.jsonl (and experiments/studies/summarize.py, committed results) read.
    assert tj.CQLMetrics._fields == ("critic", "actor", "alpha", "grad_norm")
    assert "regularizer" in tj.CriticAux._fields
    z = jnp.zeros(())
    cql = tj.CQLMetrics(
        critic=tj.CriticAux(z, z, z, z, z, regularizer=tj.RegularizerAux(z, z, z, z)),
        actor=tj.ActorAux(z, z, z, z), alpha=tj.AlphaAux(z, z), grad_norm=z)
    assert list(tj.flatten_metrics(cql)) == [
        "critic_loss", "td_loss", "cql_regularizer", "q_data", "q_target", "logsumexp_q",
        "q_random", "q_policy", "q_next_policy", "actor_loss", "entropy", "q_pi", "bc_error",
        "alpha_loss", "alpha", "grad_norm"]
    bc = tj.BCMetrics(bc=tj.BCAux(z, z, z), grad_norm=z)
    assert list(tj.flatten_metrics(bc)) == ["bc_loss", "position_error", "gripper_error", "grad_norm"]
    with pytest.raises(ValueError, match="metric name 'alpha_loss' of `alpha.alpha_loss` appears twice"):
        tj.flatten_metrics(tj.CQLMetrics(critic=tj.AlphaAux(z, z), actor=z, alpha=tj.AlphaAux(z, z),
                                         grad_norm=z))


def test_cql_optimizer_rejects_unknown_parameter_keys():
    opt = tj.make_cql_optimizer(tj.CQLConfig())
    params = {"encoder": jnp.zeros(2), "actor": jnp.zeros(2), "critic": jnp.zeros(2),
              "log_alpha": jnp.zeros(())}
    opt.init(params)  # the known keys are fine
    with pytest.raises(ValueError, match=r"unknown top-level parameter key\(s\) \['temperature'\]"):
        opt.init({**params, "temperature": jnp.zeros(())})
