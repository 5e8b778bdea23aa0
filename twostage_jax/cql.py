"""Conservative Q-learning with a SAC actor (Eqs. 2-4): losses and update step.

The Q target is the Monte Carlo return by default (the paper's choice, Sec. V); a TD target
with a Polyak-averaged target network is an option (`CQLConfig.target='td'`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from twostage_jax._checks import ConfigError
from twostage_jax.networks import Networks, tanh_gaussian_sample
from twostage_jax.state import AgentState
from twostage_jax.types import ACTION_DIM, Batch, validate_batch

TARGETS = ("mc", "td")


@dataclasses.dataclass(frozen=True)
class CQLConfig:
    """CQL hyper-parameters.

    Attributes:
      cql_weight: alpha in Eq. 3, the weight of the regulariser R(theta).
      num_samples: N actions drawn from each of uniform, pi(.|s) and pi(.|s') for Eq. 4.
      temperature: logsumexp temperature of the regulariser.
      target: 'mc' (Monte Carlo return, default) or 'td' (Bellman backup with a target net).
      gamma: discount of the TD target (the MC return's discount is the dataset's).
      tau: Polyak rate of the target network (TD only).
      backup_entropy: subtract alpha * log pi in the TD backup.
      init_alpha: initial entropy temperature.
      target_entropy: SAC's target entropy; None means -action_dim.
      actor_lr, critic_lr, alpha_lr: Adam learning rates.
      actor_encoder_grad: the actor loss trains the shared encoder too (default: only the
        critic's loss does, as in pixel SAC / DrQ).
      bc_weight: weight of a behaviour-cloning term in the actor loss, after TD3+BC (Fujimoto &
        Gu, 2021): `bc_weight * mean|Q| * E[sum_d w_d (tanh(mu_d) - a_d)^2]`, with mean|Q| held
        fixed so the weight does not depend on the scale of the returns, and w_d the stage's
        per-dimension loss weights (stage 2's whitening; 1 for stage 1). 0 (the default) is
        the paper's CQL, whose actor learns the action only through the critic's gradient.
    """

    cql_weight: float = 5.0
    num_samples: int = 10
    temperature: float = 1.0
    target: str = "mc"
    gamma: float = 0.99
    tau: float = 0.005
    backup_entropy: bool = False
    init_alpha: float = 0.1
    target_entropy: float | None = None
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4
    actor_encoder_grad: bool = False
    bc_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError("CQLConfig", "target", f"must be one of {TARGETS}; got {self.target!r}.")
        if self.num_samples <= 0:
            raise ConfigError("CQLConfig", "num_samples", f"must be > 0; got {self.num_samples!r}.")
        for name in ("cql_weight", "bc_weight"):
            val = getattr(self, name)
            if isinstance(val, bool) or not (math.isfinite(val) and val >= 0):
                raise ConfigError("CQLConfig", name, f"must be a finite number >= 0; got {val!r}.")
        if not 0.0 <= self.gamma < 1.0:
            raise ConfigError("CQLConfig", "gamma", f"must lie in [0, 1); got {self.gamma!r}.")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError("CQLConfig", "tau", f"must lie in (0, 1]; got {self.tau!r}.")
        for name in ("init_alpha", "temperature", "actor_lr", "critic_lr", "alpha_lr"):
            val = getattr(self, name)
            if not (math.isfinite(val) and val > 0):  # NaN fails `val > 0`
                raise ConfigError("CQLConfig", name, f"must be a finite number > 0; got {val!r}.")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ConfigError("CQLConfig", "target_entropy", f"must be None or finite; got {self.target_entropy!r}.")

    @property
    def entropy_target(self) -> float:
        return -float(ACTION_DIM) if self.target_entropy is None else float(self.target_entropy)


CQL_FIELDS_MC = ("obs", "action", "next_obs", "mc_return")
CQL_FIELDS_TD = ("obs", "action", "next_obs", "reward", "done")


class RegularizerAux(NamedTuple):
    """Metrics of Eq. 4 (scalars, averaged over both Q heads)."""

    logsumexp_q: jnp.ndarray
    q_random: jnp.ndarray
    q_policy: jnp.ndarray
    q_next_policy: jnp.ndarray


class CriticAux(NamedTuple):
    """Metrics of `cql_critic_loss` (scalars).

    Attributes:
      critic_loss: the loss of Eq. 3.
      td_loss: its squared-error term.
      cql_regularizer: R(theta) of Eq. 4 (summed over both heads).
      q_data: mean Q(s, a) of the dataset actions.
      q_target: mean regression target (MC return or TD backup).
      regularizer: the regulariser's own metrics.
    """

    critic_loss: jnp.ndarray
    td_loss: jnp.ndarray
    cql_regularizer: jnp.ndarray
    q_data: jnp.ndarray
    q_target: jnp.ndarray
    regularizer: RegularizerAux


class ActorAux(NamedTuple):
    """Metrics of `actor_loss` (scalars)."""

    actor_loss: jnp.ndarray
    entropy: jnp.ndarray
    q_pi: jnp.ndarray
    bc_error: jnp.ndarray  # E[sum_d w_d (tanh(mu_d) - a_d)^2] (logged whether or not it is weighted)


class AlphaAux(NamedTuple):
    """Metrics of `alpha_loss` (scalars)."""

    alpha_loss: jnp.ndarray
    alpha: jnp.ndarray


class CQLMetrics(NamedTuple):
    """Per-step metrics of `make_cql_update` (scalars; stacked [T] by a scanned trainer).

    `twostage_jax.flatten_metrics` gives them flat names (each leaf's own field name, e.g.
    `critic.regularizer.q_random` -> `q_random`).

    Attributes:
      critic: the critic loss's `CriticAux` (holding the regulariser's `RegularizerAux`).
      actor: the actor loss's `ActorAux`.
      alpha: the temperature loss's `AlphaAux`.
      grad_norm: global norm of the gradient of the summed losses.
    """

    critic: CriticAux
    actor: ActorAux
    alpha: AlphaAux
    grad_norm: jnp.ndarray


def cql_regularizer(
    q_data: jnp.ndarray,
    q_random: jnp.ndarray,
    q_policy: jnp.ndarray,
    log_prob_policy: jnp.ndarray,
    q_next_policy: jnp.ndarray,
    log_prob_next_policy: jnp.ndarray,
    temperature: float = 1.0,
) -> tuple[jnp.ndarray, RegularizerAux]:
    """The CQL regulariser R(theta) of Eq. 4, in CQL(H)'s importance-sampled form.

    R = E_s[ T * logsumexp_j(Q(s, a_j) / T - log mu(a_j)) ] - E_{(s,a)~D}[Q(s, a)], where the
    a_j are N uniform actions (density 2^-7), N actions from pi(.|s) and N from pi(.|s'), each
    importance-weighted by its proposal density mu (Kumar et al. 2020, App. F). The first term
    estimates a soft maximum of Q over actions; minimising R pushes Q down off the data and up
    on it.

    Args:
      q_data: [2, B] Q(s, a) of the dataset actions for both heads.
      q_random: [2, N, B] Q at uniform actions.
      q_policy: [2, N, B] Q at actions from pi(.|s).
      log_prob_policy: [N, B] their log-densities (gradient stopped by the caller).
      q_next_policy: [2, N, B] Q(s, .) at actions from pi(.|s').
      log_prob_next_policy: [N, B] their log-densities.
      temperature: logsumexp temperature T.

    Returns:
      (R summed over the two heads, RegularizerAux).
    """
    log_uniform = -ACTION_DIM * jnp.log(2.0)
    cat = jnp.concatenate(
        [q_random - log_uniform, q_policy - log_prob_policy[None], q_next_policy - log_prob_next_policy[None]],
        axis=1,
    )  # [2, 3N, B]
    lse = temperature * jax.nn.logsumexp(cat / temperature, axis=1)  # [2, B]
    reg = jnp.sum(jnp.mean(lse - q_data, axis=-1))
    aux = RegularizerAux(logsumexp_q=jnp.mean(lse), q_random=jnp.mean(q_random),
                         q_policy=jnp.mean(q_policy), q_next_policy=jnp.mean(q_next_policy))
    return reg, aux


def _policy_samples(
    networks: Networks, params: dict, feat: jnp.ndarray, key: jax.Array, n: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """n samples per state: actions [n, B, 7] and log-probs [n, B]."""
    mean, log_std = networks.actor(params, feat)
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: tanh_gaussian_sample(k, mean, log_std))(keys)


def _q_many(networks: Networks, params: dict, feat: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
    """Q(s, a_j) of N actions per state.

    The features are not broadcast to [N, B, F]: the critic's first layer broadcasts
    feat @ W_feat [B, H] against actions @ W_action [N, B, H] (`networks.TwinQ`), so the
    features' share, most of that layer's work, is computed once per state rather than N times
    (forward and backward). Equal to the critic on the broadcast features up to float rounding.

    Args:
      networks: stochastic ('cql') networks.
      params: parameters holding 'critic'.
      feat: [B, F] features of the states.
      actions: [N, B, 7] actions.

    Returns:
      [2, N, B] Q values of both heads.
    """
    return networks.critic(params, feat, actions)


def cql_critic_loss(
    params: dict,
    batch: Batch,
    key: jax.Array,
    alpha: jnp.ndarray,
    target_params: dict | None,
    networks: Networks,
    config: CQLConfig,
    features: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, CriticAux]:
    """Eq. 3: E[(Q(s,a) - y)^2] + cql_weight * R(theta), summed over both Q heads.

    y is the Monte Carlo return (`config.target == 'mc'`) or the TD backup
    r + gamma (1 - done) [min_i Qbar_i(s', a') (- alpha log pi(a'|s'))], a' ~ pi(.|s').

    Args:
      params: `{'encoder', 'actor', 'critic', 'log_alpha'}`; gradients flow into encoder and
        critic only.
      batch: `Batch` with obs, action [B, 7], next_obs, and mc_return [B] (MC) or reward and
        done [B] (TD).
      key: PRNG key for the sampled actions.
      alpha: [] entropy temperature (used by the TD backup with `backup_entropy`).
      target_params: `{'encoder', 'critic'}` target network (TD only; may be None for MC).
      networks: stochastic ('cql') networks.
      config: CQL hyper-parameters.
      features: optional precomputed encode(params, batch.obs) [B, F] (to share the forward
        pass with the actor loss).

    Returns:
      (loss, CriticAux).
    """
    fields = CQL_FIELDS_MC if config.target == "mc" else CQL_FIELDS_TD
    validate_batch(batch, fields)
    if not networks.stochastic or networks.critic is None:
        raise ValueError("cql_critic_loss needs CQL networks (make_networks(..., algo='cql')).")
    k_rand, k_pi, k_next, k_td = jax.random.split(key, 4)
    feat = networks.encode(params, batch.obs) if features is None else features
    next_feat = jax.lax.stop_gradient(networks.encode(params, batch.next_obs))
    frozen = jax.lax.stop_gradient(params)

    q_data = networks.critic(params, feat, batch.action)  # [2, B]
    if config.target == "mc":
        target = batch.mc_return
    else:
        if target_params is None or not target_params:
            raise ValueError("cql_critic_loss with target='td' needs `target_params`.")
        t_feat = networks.encode(target_params, batch.next_obs)
        next_a, next_logp = _policy_samples(networks, frozen, next_feat, k_td, 1)
        q_next = jnp.min(networks.critic(target_params, t_feat, next_a[0]), axis=0)
        if config.backup_entropy:
            q_next = q_next - alpha * next_logp[0]
        target = batch.reward + config.gamma * (1.0 - batch.done) * q_next
    target = jax.lax.stop_gradient(target)
    td_loss = jnp.sum(jnp.mean((q_data - target[None]) ** 2, axis=-1))

    n, b = config.num_samples, batch.action.shape[0]
    rand_a = jax.random.uniform(k_rand, (n, b, ACTION_DIM), minval=-1.0, maxval=1.0)
    pi_a, pi_logp = _policy_samples(networks, frozen, jax.lax.stop_gradient(feat), k_pi, n)
    nx_a, nx_logp = _policy_samples(networks, frozen, next_feat, k_next, n)
    # One critic call on all 3N actions of each state: [2, 3N, B], split per proposal.
    actions = jnp.concatenate([rand_a, jax.lax.stop_gradient(pi_a), jax.lax.stop_gradient(nx_a)], axis=0)
    q_rand, q_pi, q_nx = jnp.split(_q_many(networks, params, feat, actions), 3, axis=1)
    reg, reg_aux = cql_regularizer(
        q_data,
        q_rand,
        q_pi,
        jax.lax.stop_gradient(pi_logp),
        q_nx,
        jax.lax.stop_gradient(nx_logp),
        config.temperature,
    )
    loss = td_loss + config.cql_weight * reg
    aux = CriticAux(critic_loss=loss, td_loss=td_loss, cql_regularizer=reg, q_data=jnp.mean(q_data),
                    q_target=jnp.mean(target), regularizer=reg_aux)
    return loss, aux


def actor_loss(
    params: dict,
    batch: Batch,
    key: jax.Array,
    alpha: jnp.ndarray,
    networks: Networks,
    features: jnp.ndarray | None = None,
    encoder_grad: bool = False,
    bc_weight: float = 0.0,
    bc_dim_weights: Any = None,
) -> tuple[jnp.ndarray, ActorAux]:
    """Eq. 2 as a loss: E_{s~D, a~pi(.|s)}[alpha log pi(a|s) - min_i Q_i(s, a)], plus an
    optional behaviour-cloning term (`CQLConfig.bc_weight`).

    Gradients flow into the actor head (and, with `encoder_grad`, into the shared encoder);
    critic parameters and alpha are held fixed.

    Args:
      params: `{'encoder', 'actor', 'critic', ...}`.
      batch: `Batch` with obs (leading [B]).
      key: PRNG key for the reparameterised sample.
      alpha: [] entropy temperature.
      networks: stochastic ('cql') networks.
      features: optional precomputed encode(params, batch.obs) [B, F].
      encoder_grad: let this loss train the encoder too (DrQ and pixel SAC stop it; the
        critic's Monte Carlo targets alone may not make the features encode positions).
      bc_weight: `CQLConfig.bc_weight` (0: the paper's loss).
      bc_dim_weights: None or [7] per-dimension weights of the BC term's squared error.

    Returns:
      (loss, ActorAux).
    """
    feat = networks.encode(params, batch.obs) if features is None else features
    if not encoder_grad:
        feat = jax.lax.stop_gradient(feat)
    mean, log_std = networks.actor(params, feat)
    action, log_prob = tanh_gaussian_sample(key, mean, log_std)
    q = jnp.min(networks.critic(jax.lax.stop_gradient(params), feat, action), axis=0)
    alpha = jax.lax.stop_gradient(alpha)
    loss = jnp.mean(alpha * log_prob - q)
    sq = jnp.square(jnp.tanh(mean) - batch.action)
    if bc_dim_weights is not None:
        sq = sq * jnp.asarray(bc_dim_weights, sq.dtype)
    bc_error = jnp.mean(jnp.sum(sq, axis=-1))
    if bc_weight:
        loss = loss + bc_weight * jax.lax.stop_gradient(jnp.mean(jnp.abs(q))) * bc_error
    return loss, ActorAux(actor_loss=loss, entropy=-jnp.mean(log_prob), q_pi=jnp.mean(q),
                          bc_error=bc_error)


def alpha_loss(log_alpha: jnp.ndarray, log_prob: jnp.ndarray, target_entropy: float) -> tuple[jnp.ndarray, AlphaAux]:
    """SAC's automatic entropy tuning: -log_alpha * E[log pi + target_entropy].

    Args:
      log_alpha: [] log temperature (the parameter).
      log_prob: [B] log pi(a|s) of fresh policy samples (treated as constants).
      target_entropy: desired entropy, typically -action_dim.

    Returns:
      (loss, AlphaAux).
    """
    loss = -log_alpha * jax.lax.stop_gradient(jnp.mean(log_prob) + target_entropy)
    return loss, AlphaAux(alpha_loss=loss, alpha=jnp.exp(log_alpha))


_OPTIMIZER_GROUPS = {"encoder": "critic", "critic": "critic", "actor": "actor", "log_alpha": "alpha"}


def make_cql_optimizer(config: CQLConfig) -> optax.GradientTransformation:
    """Adam with per-part learning rates: encoder and critic, actor, log_alpha.

    The parameters must be a dict with exactly the top-level keys of `init_cql_params`
    ('encoder', 'actor', 'critic', 'log_alpha'); another key raises ValueError when the
    optimizer is initialised or applied, instead of being trained at some group's rate.
    """

    def labels(params: Any) -> dict:
        if not hasattr(params, "keys"):
            raise TypeError(f"make_cql_optimizer: the parameters must be a dict with keys "
                            f"{sorted(_OPTIMIZER_GROUPS)}; got {type(params).__name__}.")
        unknown = sorted(set(params) - set(_OPTIMIZER_GROUPS))
        if unknown:
            raise ValueError(f"make_cql_optimizer: unknown top-level parameter key(s) {unknown}; "
                             f"expected only {sorted(_OPTIMIZER_GROUPS)} (from init_cql_params).")
        return {k: _OPTIMIZER_GROUPS[k] for k in params}

    return optax.multi_transform(
        {"critic": optax.adam(config.critic_lr), "actor": optax.adam(config.actor_lr),
         "alpha": optax.adam(config.alpha_lr)},
        labels,
    )


def init_cql_params(params: dict, config: CQLConfig) -> dict:
    """Adds `log_alpha` to network parameters from `make_networks(..., algo='cql').init`."""
    return {**params, "log_alpha": jnp.asarray(jnp.log(config.init_alpha), jnp.float32)}


def make_cql_update(
    networks: Networks, config: CQLConfig, optimizer: optax.GradientTransformation,
    bc_dim_weights: Any = None,
) -> Callable[[AgentState, Batch, jax.Array], tuple[AgentState, CQLMetrics]]:
    """Returns a pure `update(state, batch, key) -> (state, CQLMetrics)`.

    `bc_dim_weights` (None or [7]) weights the squared error of the actor's optional BC term
    (`config.bc_weight`) per action dimension.

    One gradient step on critic_loss + actor_loss + alpha_loss; the three losses touch
    disjoint parameters (encoder+critic, actor, log_alpha), so one optimizer step equals three
    separate ones. The encoder's forward pass on s is shared by the critic and actor losses.
    The TD target network (if any) is Polyak-averaged after the step.
    """

    def total_loss(params: dict, batch: Batch, key: jax.Array, target_params: dict) -> tuple[jnp.ndarray, Any]:
        k_critic, k_actor = jax.random.split(key)
        alpha = jnp.exp(params["log_alpha"])
        feat = networks.encode(params, batch.obs)
        c_loss, c_aux = cql_critic_loss(params, batch, k_critic, alpha, target_params, networks,
                                        config, features=feat)
        a_loss, a_aux = actor_loss(params, batch, k_actor, alpha, networks, features=feat,
                                   encoder_grad=config.actor_encoder_grad,
                                   bc_weight=config.bc_weight, bc_dim_weights=bc_dim_weights)
        l_alpha, al_aux = alpha_loss(params["log_alpha"], -a_aux.entropy * jnp.ones(()),
                                     config.entropy_target)
        return c_loss + a_loss + l_alpha, (c_aux, a_aux, al_aux)

    def update(state: AgentState, batch: Batch, key: jax.Array) -> tuple[AgentState, CQLMetrics]:
        grads, (c_aux, a_aux, al_aux) = jax.grad(total_loss, has_aux=True)(
            state.params, batch, key, state.target_params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        target_params = state.target_params
        if config.target == "td":
            online = {"encoder": params["encoder"], "critic": params["critic"]}
            target_params = optax.incremental_update(online, target_params, config.tau)
        metrics = CQLMetrics(critic=c_aux, actor=a_aux, alpha=al_aux, grad_norm=optax.tree.norm(grads))
        return state.replace(params=params, target_params=target_params, opt_state=opt_state,
                             step=state.step + 1), metrics

    return update
