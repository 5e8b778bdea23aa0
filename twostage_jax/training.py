"""Training: configs, on-device batch sampling (with Algo. 1 for stage 2), and pure trainers.

One family of entry points:
  * `make_train(config, stage)` returns `train(key, data) -> (AgentState, metrics)`, a
    `lax.scan` over update steps that samples batches on device (purejaxrl style), with
    `data = prepare_data(dataset, config)` an argument; `train.init`/`step`/`run` are its pieces.
  * `train_seeds(config, data, keys, stage, strategy)` trains several seeds;
  * `init_seeds` and `run_seeds` are `train_seeds` in two halves, for chunked training (log,
    checkpoint, resume between chunks); `run_seeds` holds the seed-strategy dispatch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from twostage_jax import _checks
from twostage_jax._checks import ConfigError
from twostage_jax.actions import action_to_pose, sample_tentative
from twostage_jax.augment import AUGMENTATIONS, random_shift
from twostage_jax.bc import make_bc_update
from twostage_jax.cql import CQLConfig, init_cql_params, make_cql_optimizer, make_cql_update
from twostage_jax.networks import NetworkConfig, make_networks
from twostage_jax.state import AgentState
from twostage_jax.transform import (  # noqa: F401 -- Stage2Config and its constants re-exported here
    LOSS_WEIGHTINGS, PAPER_CROP_SIZE, STAGE2_MODES, Stage2Config, resize_images, transform_state)
from twostage_jax.types import Batch, Camera, Dataset, Stage1Obs, Stage2Obs, validate_dataset

ALGOS = ("bc", "cql")
SEED_STRATEGIES = ("auto", "vmap", "sequential")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One stage's training run.

    Attributes:
      algo: 'bc' or 'cql'.
      num_steps: update steps.
      batch_size: transitions per update, drawn with replacement; `make_train`'s `init`
        warns (UserWarning) when it exceeds the transitions of the `TrainData`.
      learning_rate: Adam learning rate for BC (CQL uses `cql.*_lr`).
      image_size: stage 1's input side; frames are downscaled once if smaller than stored.
      network: network sizes.
      cql: CQL hyper-parameters (ignored by BC).
      stage2: stage-2 state/action construction (ignored by stage 1). Its `crop_size=None`
        (the default) is resolved here for `algo` (64 for BC, 32 for CQL, as in the paper),
        so `config.stage2.crop_size` is always an int.
      min_move: metres. Train only on transitions whose target position is at least this far
        from the source pose, or whose gripper command differs from the current gripper state
        (0, the default, keeps every transition). Demo augmentation starts chains at frames
        just before a keyframe, whose target is where the arm already is: at the keyframe
        itself the data then says both "stay" and "go on", and a policy that averages them
        learns to pull its action back towards the current pose. This extends the paper's
        close-keyframe rule (Sec. V) to the augmented transitions.
      augment: stage 1's image augmentation: 'none' (the paper) or 'shift' (each frame moved
        by a random integer offset of up to `shift_pad` pixels, `augment.random_shift`).
        Stage 2 refuses anything but 'none'.
      shift_pad: the largest shift in pixels of stage 1's (downscaled) input frames.
    """

    algo: str = "bc"
    num_steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 3e-4
    image_size: int | None = None
    network: NetworkConfig = NetworkConfig()
    cql: CQLConfig = CQLConfig()
    stage2: Stage2Config = Stage2Config()
    min_move: float = 0.0
    augment: str = "none"
    shift_pad: int = 4

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"TrainConfig.augment must be one of {AUGMENTATIONS}; got {self.augment!r}.")
        if isinstance(self.shift_pad, bool) or not isinstance(self.shift_pad, (int, np.integer)) \
                or self.shift_pad < 0:
            raise ValueError(f"TrainConfig.shift_pad must be an int >= 0; got {self.shift_pad!r}.")
        if not float(self.min_move) >= 0.0:
            raise ConfigError("TrainConfig", "min_move", f"must be >= 0 metres; got {self.min_move!r}.")
        if self.algo not in ALGOS:
            raise ConfigError("TrainConfig", "algo", f"must be one of {ALGOS}; got {self.algo!r}.")
        for name in ("num_steps", "batch_size"):
            val = getattr(self, name)
            if not isinstance(val, (int, np.integer)) or val <= 0:
                raise ConfigError("TrainConfig", name, f"must be a positive int; got {val!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError("TrainConfig", "learning_rate", f"must be a finite number > 0; got "
                             f"{self.learning_rate!r}.")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError("TrainConfig", "image_size", f"must be a positive int or None; got {self.image_size!r}.")
        if not isinstance(self.stage2, Stage2Config):
            raise TypeError(f"TrainConfig.stage2 must be a Stage2Config; got {type(self.stage2).__name__}.")
        if self.stage2.crop_size is None:  # follow the algorithm: the paper's 64 (BC) / 32 (CQL)
            object.__setattr__(self, "stage2", self.stage2.with_crop_size_for(self.algo))


class TrainData(NamedTuple):
    """Device arrays a trainer samples from (passed to jitted code as arguments).

    Attributes:
      images: [N_img, H, W, 3] uint8 frames at full resolution (stage 2 crops from these).
      stage1_images: [N_img, h, w, 3] uint8 frames at stage 1's input size.
      dataset: the `Dataset` (its transition arrays).
      index: [M] int32 indices of the transitions batches are drawn from (all of them unless
        `TrainConfig.min_move` > 0).
    """

    images: jnp.ndarray
    stage1_images: jnp.ndarray
    dataset: Dataset
    index: jnp.ndarray


def moving_transitions(dataset: Dataset, min_move: float) -> np.ndarray:
    """Indices of the transitions that move at least `min_move` metres or switch the gripper.

    Args:
      dataset: the offline dataset (host or device arrays).
      min_move: metres (0 keeps every transition).

    Returns:
      [M] int32 increasing transition indices.
    """
    n = int(dataset.action.shape[0])
    if min_move <= 0:
        return np.arange(n, dtype=np.int32)
    src = np.asarray(action_to_pose(np.asarray(dataset.pose), dataset.workspace)[0])
    dst = np.asarray(action_to_pose(np.asarray(dataset.action), dataset.workspace)[0])
    moves = np.linalg.norm(dst - src, axis=-1) >= min_move
    switches = (np.asarray(dataset.action)[:, 6] >= 0) != (np.asarray(dataset.pose)[:, 6] >= 0)
    keep = np.flatnonzero(moves | switches).astype(np.int32)
    if keep.size == 0:
        raise ConfigError("TrainConfig", "min_move", f"={min_move} m removes every one of the {n} transitions; "
                         "use a smaller distance.")
    return keep


def prepare_data(dataset: Dataset, config: TrainConfig) -> TrainData:
    """Validates `dataset` and moves it to the device once: the `data` of `train(key, data)`.

    This is the value boundary of training: `validate_dataset` checks every field's shape,
    dtype (uint8 frames) and values (finite actions and poses in [-1, 1], indices in range),
    on the host, so the jitted trainer needs only trace-time checks.

    Args:
      dataset: the offline `Dataset` (numpy or device arrays).
      config: the stage's config (reads `image_size` and `min_move`).

    Returns:
      `TrainData`: images [N_img, H, W, 3] uint8, stage1_images [N_img, h, w, 3] uint8, the
      dataset on device and the [M] int32 transition index batches are drawn from.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`dataset` must be a twostage_jax Dataset; got {type(dataset).__name__}.")
    validate_dataset(dataset)
    index = moving_transitions(dataset, float(config.min_move))
    ds = jax.device_put(jax.tree_util.tree_map(jnp.asarray, dataset))
    size = config.image_size or int(ds.images.shape[1])
    if size > ds.images.shape[1]:
        raise ConfigError("TrainConfig", "image_size", f"({size}) exceeds the dataset's frame size "
                         f"{tuple(ds.images.shape[1:3])}.")
    small = jax.jit(resize_images, static_argnums=1)(ds.images, size)
    return TrainData(images=ds.images, stage1_images=small, dataset=ds, index=jnp.asarray(index))


def _stage2_obs(data: TrainData, img_idx: jnp.ndarray, pose: jnp.ndarray, tentative: jnp.ndarray,
                cfg: Stage2Config) -> Stage2Obs:
    ds = data.dataset
    cams = Camera(intrinsics=ds.intrinsics[img_idx], cam_to_world=ds.cam_to_world[img_idx],
                  width=int(data.images.shape[2]), height=int(data.images.shape[1]))
    fn = lambda im, z, a1, cam: transform_state(im, z, a1, cam, ds.workspace, cfg.crop_size,
                                                cfg.ee_crop_size, cfg.rotate)
    return jax.vmap(fn)(data.images[img_idx], pose, tentative, cams)


def sample_batch(data: TrainData, key: jax.Array, batch_size: int, stage: int,
                 stage2: Stage2Config = Stage2Config(), with_next: bool = True) -> Batch:
    """Samples a training batch on device; pure, usable inside `lax.scan`.

    Stage 1 returns the stored transitions. Stage 2 applies Algorithm 1: eps ~ N(0, sigma^2),
    a^1 = tanh(atanh(a) - eps), target a^2 = tanh(eps) ('correction') or a ('direct'), and the
    states s^2 = f(s, a^1), s'^2 = f(s', a'^1) with a'^1 built the same way from a'.

    Args:
      data: `TrainData` from `prepare_data`.
      key: PRNG key.
      batch_size: B (static).
      stage: 1 or 2 (static).
      stage2: stage-2 settings (static).
      with_next: build `next_obs` (static). BC never reads it; False skips the next-state
        gather and, for stage 2, its two crops, and sets `next_obs` to None.

    Returns:
      `Batch` with obs/next_obs `Stage1Obs` or `Stage2Obs` and [B, 7] actions.
    """
    _checks.check_positive_int("batch_size", batch_size)
    _check_stage(stage)
    _check_data(data)
    _checks.check_key("key", key)
    k_idx, k_rest = jax.random.split(key)
    idx = data.index[jax.random.randint(k_idx, (batch_size,), 0, data.index.shape[0])]
    return batch_at(data, idx, k_rest, stage, stage2, with_next)


def batch_at(data: TrainData, idx: jnp.ndarray, key: jax.Array, stage: int,
             stage2: Stage2Config = Stage2Config(), with_next: bool = True) -> Batch:
    """The batch of the transitions `idx` ([B] int); for stage 2, Algo. 1 draws from `key`.

    Args and return as `sample_batch`, with the transitions given instead of drawn.
    """
    _check_data(data)
    _check_stage(stage)
    _checks.check_key("key", key)
    _checks.check_rank("idx", idx, 1)
    if stage == 2 and stage2.crop_size is None:
        raise ValueError("`stage2.crop_size` is None (follow the algorithm); stage-2 batches need a "
                         "size: pass TrainConfig(...).stage2 (resolved for its algo) or "
                         "stage2.with_crop_size_for(algo).")
    ds = data.dataset
    k_eps, k_next = jax.random.split(key)
    oi, ni = ds.obs_index[idx], ds.next_obs_index[idx]
    action = ds.action[idx]
    common = dict(reward=ds.reward[idx], mc_return=ds.mc_return[idx], done=ds.done[idx])
    if stage == 1:
        next_obs = Stage1Obs(data.stage1_images[ni], ds.next_pose[idx]) if with_next else None
        return Batch(obs=Stage1Obs(data.stage1_images[oi], ds.pose[idx]), action=action,
                     next_obs=next_obs, **common)
    limit = stage2.tentative_limit()
    a1, a2 = sample_tentative(k_eps, action, stage2.sigma, tentative_limit=limit)
    next_a1, _ = sample_tentative(k_next, ds.next_action[idx], stage2.sigma, tentative_limit=limit)
    obs = _stage2_obs(data, oi, ds.pose[idx], a1, stage2)
    next_obs = _stage2_obs(data, ni, ds.next_pose[idx], next_a1, stage2) if with_next else None
    target = a2 if stage2.mode == "correction" else action
    return Batch(obs=obs, action=target, next_obs=next_obs, **common)


class HeldOutMetrics(NamedTuple):
    """Open-loop accuracy of a stage on transitions it did not train on (scalars).

    Attributes:
      position_cm: median distance (cm) between the executed position and the demonstrated
        one: stage 1's action, or for stage 2 the composition of Algo. 1's perturbed tentative
        action with the predicted correction (the correction residual).
      gripper_agreement: share of transitions whose executed gripper has the demo's sign.
    """

    position_cm: jnp.ndarray
    gripper_agreement: jnp.ndarray


def make_held_out_eval(config: TrainConfig, stage: int
                       ) -> Callable[[dict, TrainData, jax.Array], HeldOutMetrics]:
    """Returns a jitted `evaluate(params, data, key) -> HeldOutMetrics` over every transition.

    For stage 2 each transition gets one Algo. 1 perturbation drawn from `key` (fix the key to
    compare checkpoints on the same draws). Pure and cheap: meant for held-out demos every few
    hundred steps, to choose a training budget from the curve rather than from evaluation.

    Args:
      config: the stage's training config.
      stage: 1 or 2.
    """
    from twostage_jax.networks import deterministic_action

    networks = make_networks(config.network, stage, config.algo)
    s2 = config.stage2

    @jax.jit
    def evaluate(params: dict, data: TrainData, key: jax.Array) -> HeldOutMetrics:
        idx = jnp.arange(data.dataset.action.shape[0])
        batch = batch_at(data, idx, key, stage, s2, with_next=False)
        out = deterministic_action(networks, params, batch.obs)
        truth = data.dataset.action[idx]
        if stage == 2:
            a1 = batch.obs.tentative
            out = s2.compose(a1, out)
        ws = data.dataset.workspace
        dist = jnp.linalg.norm(action_to_pose(out, ws)[0] - action_to_pose(truth, ws)[0], axis=-1)
        agree = jnp.mean(((out[:, 6] >= 0) == (truth[:, 6] >= 0)).astype(jnp.float32))
        return HeldOutMetrics(position_cm=100.0 * jnp.median(dist), gripper_agreement=agree)

    return evaluate


def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    if config.algo == "bc":
        return optax.adam(config.learning_rate)
    return make_cql_optimizer(config.cql)


def _check_stage(stage: Any) -> None:
    if isinstance(stage, bool) or stage not in (1, 2):
        raise ValueError(f"`stage` must be 1 or 2; got {stage!r}.")


def _check_data(data: Any) -> None:
    if not isinstance(data, TrainData):
        raise TypeError(f"`data` must be the TrainData of prepare_data(dataset, config); got "
                        f"{type(data).__name__}.")


def _warn_if_batch_exceeds_data(batch_size: int, data: TrainData) -> None:
    """Warns (at trace time: the sizes are static) when a batch outnumbers the transitions."""
    available = int(data.index.shape[0])
    if batch_size > available:
        total = int(data.dataset.action.shape[0])
        kept = "" if available == total else f" (min_move kept {available} of {total})"
        warnings.warn(
            f"TrainConfig.batch_size ({batch_size}) exceeds the {available} transitions training "
            f"draws from{kept}: batches are drawn with replacement, so every batch repeats "
            "transitions. Use a smaller batch_size or more demonstrations.", UserWarning,
            stacklevel=2)


class Train:
    """One stage's pure training functions, from `make_train(config, stage)`.

    Calling it, `train(key, data) -> (AgentState, metrics)`, initialises a state and runs
    `config.num_steps` updates; the dataset is an argument, never a closure, so
    `jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, data)` compiles one program whose
    dataset is an input, not a constant. The pieces, for chunked training (log, checkpoint,
    resume) and custom loops:

      * `init(key, data) -> AgentState`: fresh parameters, optimizer state and state key;
        `data` only gives the observation shapes.
      * `step(state, data) -> (AgentState, metrics)`: one update on a batch sampled with the
        state's key.
      * `run(state, data, num_steps) -> (AgentState, metrics [num_steps])`: `num_steps` of
        `step` as one `lax.scan`, software-pipelined (each iteration samples the next batch
        while it updates on the current one; the same batches as `step` in a loop). Chunks
        compose: `run(run(s, d, 2)[0], d, 4)` equals `run(s, d, 6)`, since every step
        consumes the key carried in the state. `num_steps` is static under jit.

    All are pure and unjitted (jit them, or use `train_seeds` / `run_seeds`). Two `Train`s of
    equal config and stage compare and hash equal, so they can be static jit arguments.

    Attributes:
      config: the `TrainConfig`.
      stage: 1 or 2.
      networks: the `Networks` bundle.
      metrics_type: the metrics NamedTuple type (`BCMetrics` or `CQLMetrics`).
    """

    def __init__(self, config: TrainConfig, stage: int):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"`config` must be a TrainConfig; got {type(config).__name__}.")
        _check_stage(stage)
        if stage == 2 and config.augment != "none":
            raise ValueError(f"TrainConfig.augment={config.augment!r} is for stage 1 only: stage 2's "
                             "crops are centred by projection, and a shift would move that centre.")
        self.config = config
        self.stage = int(stage)
        self.networks = make_networks(config.network, stage, config.algo)
        self._optimizer = _optimizer(config)
        if config.algo == "bc":
            self._update = make_bc_update(self.networks, self._optimizer,
                                          config.stage2.bc_weights() if stage == 2 else None)
            from twostage_jax.bc import BCMetrics as metrics_type
        else:
            self._update = make_cql_update(self.networks, config.cql, self._optimizer,
                                           config.stage2.bc_weights() if stage == 2 else None)
            from twostage_jax.cql import CQLMetrics as metrics_type
        self.metrics_type = metrics_type

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Train) and (self.config, self.stage) == (other.config, other.stage)

    def __hash__(self) -> int:
        return hash((Train, self.config, self.stage))

    def __repr__(self) -> str:
        return f"Train(stage={self.stage}, config={self.config!r})"

    def __call__(self, key: jax.Array, data: TrainData) -> tuple[AgentState, Any]:
        """Init + `config.num_steps` scanned updates: (AgentState, metrics [num_steps])."""
        return self.run(self.init(key, data), data, self.config.num_steps)

    def _sample(self, data: TrainData, key: jax.Array) -> Batch:
        # The batch of the step whose state carries `key` (updates never change `state.key`).
        _, k_batch, _ = jax.random.split(key, 3)
        if self.config.augment == "none":
            return sample_batch(data, k_batch, self.config.batch_size, self.stage, self.config.stage2,
                                with_next=self.config.algo == "cql")
        k_batch, k_obs, k_next = jax.random.split(k_batch, 3)
        batch = sample_batch(data, k_batch, self.config.batch_size, self.stage, self.config.stage2,
                             with_next=self.config.algo == "cql")
        pad = int(self.config.shift_pad)  # each frame of obs and next_obs shifted independently
        obs = batch.obs._replace(image=random_shift(k_obs, batch.obs.image, pad))
        next_obs = (None if batch.next_obs is None else
                    batch.next_obs._replace(image=random_shift(k_next, batch.next_obs.image, pad)))
        return batch._replace(obs=obs, next_obs=next_obs)

    def init(self, key: jax.Array, data: TrainData) -> AgentState:
        """A fresh `AgentState` from `key` ([2] raw or typed PRNG key)."""
        _checks.check_key("key", key)
        _check_data(data)
        config = self.config
        _warn_if_batch_exceeds_data(config.batch_size, data)
        k_init, k_state = jax.random.split(key)
        shapes = jax.eval_shape(lambda d: sample_batch(d, jax.random.PRNGKey(0), 2, self.stage,
                                                       config.stage2, with_next=False).obs, data)
        example = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        params = self.networks.init(k_init, example)
        target_params: dict = {}
        if config.algo == "cql":
            params = init_cql_params(params, config.cql)
            if config.cql.target == "td":
                target_params = {"encoder": params["encoder"], "critic": params["critic"]}
        return AgentState(params=params, target_params=target_params,
                          opt_state=self._optimizer.init(params), key=k_state,
                          step=jnp.zeros((), jnp.int32))

    def step(self, state: AgentState, data: TrainData) -> tuple[AgentState, Any]:
        """One update on the batch drawn from `state.key`."""
        key, _, k_update = jax.random.split(state.key, 3)
        return self._update(state.replace(key=key), self._sample(data, state.key), k_update)

    def run(self, state: AgentState, data: TrainData, num_steps: int) -> tuple[AgentState, Any]:
        """`num_steps` (static) of `step` as one software-pipelined `lax.scan`."""
        _check_data(data)
        _checks.check_positive_int("num_steps", num_steps)

        # Iteration t updates on batch t (carried in) and samples batch t + 1 (carried out).
        # The loop boundary makes XLA materialise each batch once, instead of fusing the crops'
        # gathers into every consumer and recomputing them there. Same batches as `step` in a
        # loop; results equal up to float rounding (tested).
        def body(carry, _):
            state_, batch = carry
            key, _, k_update = jax.random.split(state_.key, 3)
            next_batch = self._sample(data, key)
            new_state, metrics = self._update(state_.replace(key=key), batch, k_update)
            return (new_state, next_batch), metrics

        (state, _), metrics = jax.lax.scan(body, (state, self._sample(data, state.key)), None,
                                           length=num_steps)
        return state, metrics


def make_train(config: TrainConfig, stage: int) -> Train:
    """Returns the pure `train(key, data) -> (AgentState, metrics)` of one stage.

    Example (several seeds in one program; the dataset is an argument, not a constant)::

        data = prepare_data(dataset, config)
        train = make_train(config, stage=1)
        states, metrics = jax.jit(jax.vmap(train, in_axes=(0, None)))(
            jax.random.split(key, 4), data)

    Args:
      config: training configuration.
      stage: 1 (tentative policy) or 2 (correction policy).

    Returns:
      A `Train`: call it as `train(key, data)` with key a PRNG key and data the `TrainData`
      of `prepare_data`; it returns (AgentState, metrics NamedTuple stacked to
      [config.num_steps]). Its `init`, `step` and `run` are the pieces for chunked training.
    """
    return Train(config, stage)


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
    _check_data(data)
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

    Measured on 2 CPU cores (experiments/benchmark.py, idle machine): the conv implementation
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
    _check_data(data)
    _checks.check_positive_int("num_steps", num_steps)
    if mesh is not None:
        from twostage_jax import sharding

        sharding.check_seed_mesh(mesh)
        program = _sharded_program(train, int(num_steps), _resolve_seed_strategy(strategy), mesh)
        return program(states, sharding.put_replicated(data, mesh))
    if _resolve_seed_strategy(strategy) == "vmap":
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


def _resolve_seed_strategy(strategy: str = "auto", backend: str | None = None) -> str:
    """Maps 'auto' to 'sequential' on CPU and 'vmap' elsewhere; checks the name."""
    if strategy not in SEED_STRATEGIES:
        raise ValueError(f"`strategy` must be one of {SEED_STRATEGIES}; got {strategy!r}.")
    if strategy != "auto":
        return strategy
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"
