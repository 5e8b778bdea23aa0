"""Training data on device and Algorithm 1's batches: `prepare_data`, `sample_batch`, `batch_at`.

`prepare_data` validates a `Dataset` on the host and moves it to the device once; the samplers
are pure and run inside the jitted trainer (`lax.scan`), building stage-2 states with
Algorithm 1's synthetic tentative actions.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax._checks import ConfigError
from twostage_jax.actions import (action_to_pose, check_residual_bank, sample_tentative,
                                  tentative_from_prediction)
from twostage_jax.training.config import TrainConfig, check_stage
from twostage_jax.transform import Stage2Config, resize_images, transform_batch
from twostage_jax.types import Batch, Camera, Dataset, Stage1Obs, Stage2Obs, validate_dataset


class TrainData(NamedTuple):
    """Device arrays a trainer samples from (passed to jitted code as arguments).

    Attributes:
      images: [N_img, H, W, 3] uint8 frames at full resolution (stage 2 crops from these).
      stage1_images: [N_img, h, w, 3] uint8 frames at stage 1's input size.
      dataset: the `Dataset` (its transition arrays).
      index: [M] int32 indices of the transitions batches are drawn from (all of them unless
        `TrainConfig.min_move` > 0).
      residuals: None, or [R, 7] float32 stage 1's held-out residuals atanh(a) - atanh(a1)
        (`calibration.residual_bank`), the bank Algo. 1 draws from with
        `Stage2Config.perturbation='residuals'`. Data rather than config, so one compiled
        program serves any bank of the same size and seeds vmap over one copy.
      predicted: None, or [P, N, 2, 7] float32 actions of P predictors (e.g. cross-fit stage-1
        models) at each transition's state ([..., 0, :]) and next state ([..., 1, :]), which a
        `Stage2Config.predicted_share` of stage 2's samples take as their tentative action.
    """

    images: jnp.ndarray
    stage1_images: jnp.ndarray
    dataset: Dataset
    index: jnp.ndarray
    residuals: jnp.ndarray | None = None
    predicted: jnp.ndarray | None = None


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


def prepare_data(dataset: Dataset, config: TrainConfig, residuals: Any = None,
                 predicted: Any = None) -> TrainData:
    """Validates `dataset` and moves it to the device once: the `data` of `train(key, data)`.

    This is the value boundary of training: `validate_dataset` checks every field's shape,
    dtype (uint8 frames) and values (finite actions and poses in [-1, 1], indices in range),
    on the host, so the jitted trainer needs only trace-time checks.

    Args:
      dataset: the offline `Dataset` (numpy or device arrays).
      config: the stage's config (reads `image_size`, `min_move` and `stage2.perturbation`).
      residuals: None, or the [R, 7] bank of stage 1's held-out residuals
        (`calibration.residual_bank`) for `config.stage2.perturbation='residuals'`: checked
        here (shape, finite) and moved to the device. Refused with the Gaussian perturbation,
        which would ignore it.
      predicted: None, or a policy's actions on the dataset's states for
        `config.stage2.predicted_share` > 0: [N, 2, 7] (one predictor) or [P, N, 2, 7] (P of
        them, e.g. one per seed), at each transition's state and next state, in [-1, 1].
        Checked here and moved to the device; refused with a share of 0, which would ignore them.

    Returns:
      `TrainData`: images [N_img, H, W, 3] uint8, stage1_images [N_img, h, w, 3] uint8, the
      dataset on device, the [M] int32 transition index batches are drawn from, the [R, 7]
      float32 residual bank (or None) and the [P, N, 2, 7] float32 predictions (or None).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`dataset` must be a twostage_jax Dataset; got {type(dataset).__name__}.")
    if residuals is not None:  # before any work on the dataset
        if config.stage2.perturbation != "residuals":
            raise ConfigError("Stage2Config", "perturbation", f"={config.stage2.perturbation!r} ignores the "
                             "`residuals` bank given to prepare_data; set perturbation='residuals' or pass "
                             "no bank.")
        residuals = np.asarray(residuals, np.float32)
        check_residual_bank("residuals", residuals)
    if predicted is not None:
        if config.stage2.predicted_share <= 0:
            raise ConfigError("Stage2Config", "predicted_share", "=0 ignores the `predicted` actions given "
                             "to prepare_data; set a share in (0, 1] or pass none.")
        predicted = check_predicted("predicted", predicted, int(dataset.action.shape[0]))
    validate_dataset(dataset)
    index = moving_transitions(dataset, float(config.min_move))
    ds = jax.device_put(jax.tree_util.tree_map(jnp.asarray, dataset))
    size = config.image_size or int(ds.images.shape[1])
    if size > ds.images.shape[1]:
        raise ConfigError("TrainConfig", "image_size", f"({size}) exceeds the dataset's frame size "
                         f"{tuple(ds.images.shape[1:3])}.")
    small = jax.jit(resize_images, static_argnums=1)(ds.images, size)
    bank = None if residuals is None else jax.device_put(jnp.asarray(residuals, jnp.float32))
    pred = None if predicted is None else jax.device_put(jnp.asarray(predicted))
    return TrainData(images=ds.images, stage1_images=small, dataset=ds, index=jnp.asarray(index),
                     residuals=bank, predicted=pred)


def check_predicted(name: str, predicted: Any, num_transitions: int) -> np.ndarray:
    """Checks a policy's actions on a dataset's states; returns them as [P, N, 2, 7] float32.

    Raises:
      ValueError: naming `name`, for a shape other than [N, 2, 7] or [P, N, 2, 7] with the
        dataset's N, or values outside [-1, 1] (NaN included).
    """
    arr = np.asarray(predicted, np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] < 1 or arr.shape[1:] != (num_transitions, 2, 7):
        raise ValueError(f"`{name}` must be [N, 2, 7] or [P, N, 2, 7] actions at each of the dataset's "
                         f"N={num_transitions} transitions' state and next state; got shape {np.shape(predicted)}.")
    if not np.all(np.abs(arr) <= 1.0):  # NaN fails too
        raise ValueError(f"`{name}` must hold actions in [-1, 1]; got values outside (or NaN).")
    return arr


def _rows(ds: Dataset, frames: jnp.ndarray) -> jnp.ndarray:
    """[B] image rows of the frames (one camera), or [B, V] (several)."""
    return frames if ds.num_views == 1 else ds.view_rows(frames)


def _stage2_obs(data: TrainData, frames: jnp.ndarray, pose: jnp.ndarray, tentative: jnp.ndarray,
                cfg: Stage2Config) -> Stage2Obs:
    ds = data.dataset
    rows = _rows(ds, frames)
    cams = Camera(intrinsics=ds.intrinsics[rows], cam_to_world=ds.cam_to_world[rows],
                  width=int(data.images.shape[2]), height=int(data.images.shape[1]))
    return transform_batch(data.images[rows], pose, tentative, cams, ds.workspace, cfg)


def sample_batch(data: TrainData, key: jax.Array, batch_size: int, stage: int,
                 stage2: Stage2Config = Stage2Config(), with_next: bool = True) -> Batch:
    """Samples a training batch on device; pure, usable inside `lax.scan`.

    Stage 1 returns the stored transitions. Stage 2 applies Algorithm 1: eps ~ N(0, sigma^2)
    (or as `stage2.sigma_scales` and `stage2.perturbation` say; the residual bank is
    `data.residuals`), a^1 = tanh(atanh(a) - eps), target a^2 = tanh(eps) ('correction') or a
    ('direct'), and the states s^2 = f(s, a^1), s'^2 = f(s', a'^1) with a'^1 built the same way from a'.
    A `stage2.predicted_share` of the samples take a^1 (and a'^1) from one predictor of
    `data.predicted` instead, with eps the error it made (`tentative_from_prediction`).

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
    check_stage(stage)
    check_data(data)
    _checks.check_key("key", key)
    k_idx, k_rest = jax.random.split(key)
    idx = data.index[jax.random.randint(k_idx, (batch_size,), 0, data.index.shape[0])]
    return batch_at(data, idx, k_rest, stage, stage2, with_next)


def batch_at(data: TrainData, idx: jnp.ndarray, key: jax.Array, stage: int,
             stage2: Stage2Config = Stage2Config(), with_next: bool = True) -> Batch:
    """The batch of the transitions `idx` ([B] int); for stage 2, Algo. 1 draws from `key`.

    Args and return as `sample_batch`, with the transitions given instead of drawn.
    """
    check_data(data)
    check_stage(stage)
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
    if stage == 1:  # [B, h, w, 3] frames, or [B, V, h, w, 3] with several cameras
        small = data.stage1_images
        next_obs = Stage1Obs(small[_rows(ds, ni)], ds.next_pose[idx]) if with_next else None
        return Batch(obs=Stage1Obs(small[_rows(ds, oi)], ds.pose[idx]), action=action,
                     next_obs=next_obs, **common)
    limit = stage2.tentative_limit()
    draw = dict(tentative_limit=limit, scales=stage2.sigma_scales, residuals=perturbation_bank(data, stage2))
    a1, a2 = sample_tentative(k_eps, action, stage2.sigma, **draw)
    next_a1, _ = sample_tentative(k_next, ds.next_action[idx], stage2.sigma, **draw)
    if stage2.predicted_share > 0:  # (a key of its own: the Gaussian draws above are unchanged)
        k_use, k_which = jax.random.split(jax.random.fold_in(key, 1))
        pred = predicted_actions(data, stage2)
        use = jax.random.bernoulli(k_use, stage2.predicted_share, idx.shape + (1,))
        rows = pred[jax.random.randint(k_which, idx.shape, 0, pred.shape[0]), idx]  # [B, 2, 7]
        p1, p2 = tentative_from_prediction(action, rows[:, 0], tentative_limit=limit)
        next_p1, _ = tentative_from_prediction(ds.next_action[idx], rows[:, 1], tentative_limit=limit)
        a1, a2 = jnp.where(use, p1, a1), jnp.where(use, p2, a2)
        next_a1 = jnp.where(use, next_p1, next_a1)
    obs = _stage2_obs(data, oi, ds.pose[idx], a1, stage2)
    next_obs = _stage2_obs(data, ni, ds.next_pose[idx], next_a1, stage2) if with_next else None
    target = a2 if stage2.mode == "correction" else action
    return Batch(obs=obs, action=target, next_obs=next_obs, **common)


def perturbation_bank(data: TrainData, stage2: Stage2Config) -> jnp.ndarray | None:
    """The [R, 7] residual bank Algo. 1 draws from under `stage2` (None for 'gaussian').

    Raises (at trace time, so before any step) a ValueError when `stage2.perturbation` is
    'residuals' and `data` holds no bank.
    """
    if stage2.perturbation != "residuals":
        return None
    if data.residuals is None:
        raise ValueError("Stage2Config.perturbation='residuals' needs the residual bank in the training data: "
                         "prepare_data(dataset, config, residuals=calibration.residual_bank(tentative, "
                         "target)) with stage 1's actions on held-out demos.")
    return data.residuals


def predicted_actions(data: TrainData, stage2: Stage2Config) -> jnp.ndarray:
    """The [P, N, 2, 7] predictions a `stage2.predicted_share` of stage-2 samples act from.

    Raises (at trace time, so before any step) a ValueError when `data` holds none.
    """
    if data.predicted is None:
        raise ValueError(f"Stage2Config.predicted_share={stage2.predicted_share} needs a policy's actions "
                         "on the demo states in the training data: prepare_data(dataset, config, "
                         "predicted=[P, N, 2, 7] actions), e.g. from cross-fit stage-1 models.")
    return data.predicted


def check_data(data: Any) -> None:
    """Raises TypeError unless `data` is a `TrainData`."""
    if not isinstance(data, TrainData):
        raise TypeError(f"`data` must be the TrainData of prepare_data(dataset, config); got "
                        f"{type(data).__name__}.")


def warn_if_batch_exceeds_data(batch_size: int, data: TrainData) -> None:
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

