"""Calibrating stage 2 to stage 1: Algo. 1's noise scale and the crop size from stage 1's errors.

The paper draws Algo. 1's synthetic tentative actions with a fixed sigma (0.1 for the pose,
1 for the gripper) and leaves the crop size as future work ("a method for determining the crop
size remains as future work", Sec. V). Both really depend on how far stage 1's tentative actions
land from the demonstrated ones, which can be measured on demonstrations stage 1 did not train
on. These functions turn such residuals into settings:

  * `calibrate_sigma`: per action dimension, a robust scale of the residual in atanh space,
    eps = atanh(a) - atanh(a^1) (the quantity Algo. 1 samples), with a floor;
  * `calibrate_crop_size`: the smallest crop that keeps the demonstrated target inside the crop
    centred on the tentative action for a given share of the residuals;
  * `residual_bank`: the residuals themselves, [N, 7], for Algo. 1 to draw from
    (`Stage2Config.perturbation='residuals'`, heavy tails kept);
  * `calibrate_sampled_crop_size`: the crop that covers Algo. 1's own *sampled* perturbations
    (a scale mixture or the bank), to take together with stage 1's.

All are host-side numpy functions (they run once, between stage 1 and stage 2).
`calibrate_to_base_policy` runs a base policy (stage 1, or any host-side callable; see
`twostage_jax.base_policy`) over held-out demos and applies both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax.actions import (DEFAULT_CLIP, DEFAULT_SIGMA, action_to_pose, check_residual_bank,
                                  sample_tentative)
from twostage_jax.base_policy import BasePolicy, base_policy_actions
from twostage_jax.geometry import optical_axis_angle, project_points
from twostage_jax.transform import Stage2Config
from twostage_jax.types import ACTION_DIM, Camera, Dataset, Workspace, visible_rows

MAD_TO_STD = 1.4826
"""Scale of the median absolute deviation that estimates a normal distribution's std."""


def calibrate_sigma(tentative: Any, target: Any, floor: Any = 0.02, calibrate: Any = None,
                    limit: float = DEFAULT_CLIP, sigma: Any = DEFAULT_SIGMA) -> np.ndarray:
    """Algo. 1's per-dimension noise std from stage 1's residuals on held-out transitions.

    sigma_d = max(floor_d, 1.4826 * median_i |eps_id|) with eps = atanh(a) - atanh(a^1) (both
    clipped to `limit`): the normal std whose draws have the same median magnitude as stage 1's
    errors. The scale is taken about zero, not about the median, because a bias of stage 1 is an
    error stage 2 must learn to correct too. The median keeps a few wild errors (e.g. a wrong
    phase of the task) from inflating it.

    Args:
      tentative: [N, 7] stage 1's actions a^1 on held-out states.
      target: [N, 7] the demonstrated actions a there.
      floor: scalar or [7] lower bound of each std (a near-perfect dimension still gets noise,
        so stage 2 learns to leave it alone).
      calibrate: [7] bools, which dimensions to calibrate; the others keep `sigma` (default: the
        6 pose dimensions; the gripper, a binary command, keeps its sigma).
      limit: atanh clip bound.
      sigma: [7] stds of the dimensions not calibrated (default: the paper's).

    Returns:
      [7] float32 standard deviations.
    """
    eps = _residuals(tentative, target, limit)
    fl = np.broadcast_to(np.asarray(floor, np.float64), (ACTION_DIM,))
    if not np.all(fl > 0):
        raise ValueError(f"`floor` must be > 0; got {floor!r}.")
    mask = np.asarray([True] * 6 + [False] if calibrate is None else calibrate, bool)
    _checks.check_shape("calibrate", mask, (ACTION_DIM,), "one bool per action dimension")
    scale = np.maximum(fl, MAD_TO_STD * np.median(np.abs(eps), axis=0))
    keep = np.broadcast_to(np.asarray(sigma, np.float64), (ACTION_DIM,))
    return np.where(mask, scale, keep).astype(np.float32)


def _residuals(tentative: Any, target: Any, limit: float) -> np.ndarray:
    """[N, 7] float64 atanh(a) - atanh(a1), both clipped to `limit`, after checking both."""
    a1 = np.asarray(tentative, np.float64)
    a = np.asarray(target, np.float64)
    _checks.check_shape("tentative", a1, (None, ACTION_DIM), "[N, 7] stage-1 actions")
    _checks.check_shape("target", a, (a1.shape[0], ACTION_DIM), "[N, 7], one per tentative action")
    if a1.shape[0] < 1:
        raise ValueError("`tentative` is empty; calibrate on at least one held-out transition.")
    for name, x in (("tentative", a1), ("target", a)):
        _checks.check_range(name, x, -1.0, 1.0, "normalised actions")
    return np.arctanh(np.clip(a, -limit, limit)) - np.arctanh(np.clip(a1, -limit, limit))


def residual_bank(tentative: Any, target: Any, limit: float = DEFAULT_CLIP) -> np.ndarray:
    """Stage 1's residuals on held-out transitions, as a bank for Algo. 1 to draw from.

    eps = atanh(a) - atanh(a^1) (both clipped to `limit`), the quantity Algo. 1 samples, as
    `calibrate_sigma` measures it, but every value kept rather than summarised by a scale:
    heavy tails, bias and skew are what `Stage2Config.perturbation='residuals'` trains on
    (each pose column bootstrapped on its own, `actions.sample_perturbation`). Column 6 holds
    the gripper's residuals for inspection; the sampler does not read it and draws the gripper
    from N(0, sigma_6^2), as `calibrate_sigma` keeps the gripper's sigma.

    Args:
      tentative: [N, 7] stage 1's actions a^1 on held-out states.
      target: [N, 7] the demonstrated actions a there.
      limit: atanh clip bound.

    Returns:
      [N, 7] float32 residuals, finite (|eps| <= 2 atanh(limit)): the `residuals` of
      `prepare_data(dataset, config, residuals=...)`.
    """
    return _residuals(tentative, target, limit).astype(np.float32)


def calibrate_crop_size(offsets: Any, coverage: float = 0.95, multiple: int = 4, min_size: int = 8,
                        max_size: int | None = None, margin: float = 0.0) -> int:
    """The smallest square crop that holds the target for a `coverage` share of the offsets.

    Args:
      offsets: [N, 2] pixel offsets (x, y) of the demonstrated target from the crop centre (the
        projection of stage 1's tentative position), in the crop's own (rotated) frame.
      coverage: share of the offsets that must fall inside, in (0, 1].
      multiple: the size is rounded up to a multiple of this (conv strides like it).
      min_size: smallest size returned.
      max_size: largest size returned (e.g. the image size); None for no bound.
      margin: pixels of context wanted around the target inside the crop.

    Returns:
      The crop side in pixels: the smallest multiple of `multiple` with
      max(|x|, |y|) + margin < size / 2 for at least `coverage` of the offsets, clipped to
      [min_size, max_size].
    """
    off = np.asarray(offsets, np.float64)
    _checks.check_shape("offsets", off, (None, 2), "[N, 2] pixel offsets (x, y)")
    if off.shape[0] < 1:
        raise ValueError("`offsets` is empty; calibrate on at least one held-out transition.")
    if not np.all(np.isfinite(off)):
        raise ValueError("`offsets` holds NaN or inf; project only positions in front of the camera.")
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"`coverage` must lie in (0, 1]; got {coverage!r}.")
    _checks.check_positive_int("multiple", multiple)
    _checks.check_positive_int("min_size", min_size)
    if max_size is not None and max_size < min_size:
        raise ValueError(f"`max_size` ({max_size}) must be >= `min_size` ({min_size}).")
    if not margin >= 0:
        raise ValueError(f"`margin` must be >= 0 pixels; got {margin!r}.")
    need = np.quantile(np.max(np.abs(off), axis=1), coverage, method="higher") + margin
    # strictly inside: |offset| < size / 2
    size = multiple * (math.floor(2.0 * need / multiple) + 1)
    size = max(size, min_size)
    return int(size if max_size is None else min(size, max_size))


def crop_offsets(camera: Camera, workspace: Workspace, tentative: Any, target: Any,
                 rotate: bool = True) -> np.ndarray:
    """Pixel offsets of each target from the crop centred on its tentative action, in crop axes.

    The crop of `transform_state` is centred where the tentative position projects and turned
    by the tentative orientation's angle about the optical axis (`crop_at_pixel`); this is
    where the demonstrated target's projection falls in that crop's own (x, y) axes.

    Args:
      camera: a single `Camera`.
      workspace: position bounds of the actions.
      tentative: [N, 7] tentative actions a^1.
      target: [N, 7] demonstrated actions a.
      rotate: whether the crops are rotated (`Stage2Config.rotate`).

    Returns:
      [N, 2] float64 offsets (x, y) in pixels.
    """
    a1 = jnp.asarray(tentative, jnp.float32)
    a = jnp.asarray(target, jnp.float32)
    _checks.check_shape("tentative", a1, (None, ACTION_DIM), "[N, 7]")
    _checks.check_shape("target", a, (a1.shape[0], ACTION_DIM), "[N, 7]")
    pos1, euler1, _ = action_to_pose(a1, workspace)
    d = project_points(camera, action_to_pose(a, workspace)[0])[0] - project_points(camera, pos1)[0]
    if rotate:
        ang = jax.vmap(lambda e: optical_axis_angle(camera, e))(euler1)
        c, s = jnp.cos(ang), jnp.sin(ang)
        d = jnp.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=-1)
    return np.asarray(d, np.float64)


class BaseCalibration(NamedTuple):
    """Stage 2's settings calibrated to a base policy's errors (`calibrate_to_base_policy`).

    Attributes:
      sigma: [7] float32 Algo. 1 noise stds (`Stage2Config.sigma`).
      crop_size: crop side in pixels (`Stage2Config.crop_size`).
      tentative: [N, 7] float32 the base policy's actions on the transitions.
      offsets: [N, 2] float64 pixel offsets of each target in the crop centred on its tentative
        action (`crop_offsets`), e.g. to report the share inside the crop.
    """

    sigma: np.ndarray
    crop_size: int
    tentative: np.ndarray
    offsets: np.ndarray


def dataset_crop_offsets(dataset: Dataset, tentative: Any, rotate: bool = True, view: int = 0) -> np.ndarray:
    """`crop_offsets` of a dataset's targets, each transition seen by its own frame's camera.

    Args:
      dataset: a `Dataset`; transition i is seen by the camera of frame `obs_index[i]`.
      tentative: [N, 7] tentative actions, one per transition.
      rotate: whether the crops are rotated (`Stage2Config.rotate`).
      view: which of the dataset's cameras (`Dataset.num_views`) sees them.

    Returns:
      [N, 2] float64 offsets (x, y) in pixels.
    """
    a1 = np.asarray(tentative, np.float32)
    a = np.asarray(dataset.action, np.float32)
    _checks.check_shape("tentative", a1, (a.shape[0], ACTION_DIM), "[N, 7], one per transition")
    if not 0 <= view < dataset.num_views:
        raise ValueError(f"`view` must lie in [0, {dataset.num_views}) (the dataset's cameras); got {view!r}.")
    index = np.asarray(dataset.obs_index) * int(dataset.num_views) + int(view)
    calib = np.concatenate([np.asarray(dataset.intrinsics, np.float32)[index].reshape(-1, 9),
                            np.asarray(dataset.cam_to_world, np.float32)[index].reshape(-1, 16)], 1)
    _, group = np.unique(calib, axis=0, return_inverse=True)
    out = np.zeros((a.shape[0], 2), np.float64)
    for g in np.unique(group):  # one call per distinct camera (usually one)
        rows = np.nonzero(group.reshape(-1) == g)[0]
        out[rows] = crop_offsets(dataset.camera(int(index[rows[0]])), dataset.workspace, a1[rows],
                                 a[rows], rotate)
    return out


def calibrate_view_crop_sizes(dataset: Dataset, tentative: Any, coverage: float = 0.95, rotate: bool = True,
                              multiple: int = 4, min_size: int = 8, max_size: int | None = None) -> list[int]:
    """`calibrate_crop_size` in each of a dataset's cameras, on the transitions it sees.

    Each view's offsets (`dataset_crop_offsets` with that view) are taken over the transitions
    whose tentative and demonstrated positions both lie in front of that view's camera and
    inside its image (`types.visible_rows`); a view that sees none gets `max_size`.

    Args:
      dataset: the (held-out) demos, with `num_views` cameras.
      tentative: [N, 7] stage 1's actions on its transitions.
      coverage, multiple, min_size: as in `calibrate_crop_size`.
      rotate: whether the crops are rotated.
      max_size: largest side (default: the image's smaller side).

    Returns:
      One crop side per view, in pixels of that view.
    """
    a1 = np.asarray(tentative, np.float32)
    if max_size is None:
        max_size = int(min(np.shape(dataset.images)[1:3]))
    sizes = []
    for v in range(int(dataset.num_views)):
        seen = visible_rows(dataset, a1, v) & visible_rows(dataset, np.asarray(dataset.action), v)
        if not seen.any():
            sizes.append(max_size)
            continue
        offsets = dataset_crop_offsets(dataset, a1, rotate, v)[seen]
        sizes.append(calibrate_crop_size(offsets, coverage=coverage, multiple=multiple, min_size=min_size,
                                         max_size=max_size))
    return sizes


def calibrate_to_base_policy(base: BasePolicy, dataset: Dataset, floor: Any = 0.02,
                             coverage: float = 0.95, batch_size: int = 64, rotate: bool = True,
                             calibrate: Any = None, sigma: Any = DEFAULT_SIGMA,
                             multiple: int = 4, min_size: int = 8, max_size: int | None = None,
                             margin: float = 0.0) -> BaseCalibration:
    """Algo. 1's sigma and the crop size from a base policy's errors on (held-out) demos.

    The base policy acts on every transition of `dataset` (image `images[obs_index[i]]`, pose
    `pose[i]`, in batches, `base_policy_actions`); its actions are compared with the demos'
    `action[i]`: sigma by `calibrate_sigma` (with its floor; the gripper keeps `sigma[6]` unless
    `calibrate` says otherwise), the crop size by `calibrate_crop_size` on `crop_offsets` (each
    transition seen by its own frame's camera).

    Args:
      base: `base(image [B, H, W, 3] uint8, pose [B, 7]) -> [B, 7]` actions in [-1, 1]; a bad
        output is a ValueError naming it (`check_base_output`).
      dataset: demos the base policy did not train on (held-out demos).
      floor, calibrate, sigma: as in `calibrate_sigma`.
      coverage, multiple, min_size, margin: as in `calibrate_crop_size`.
      batch_size: observations per call of `base`.
      rotate: whether stage 2's crops are rotated (`Stage2Config.rotate`).
      max_size: largest crop side (default: the image's smaller side).

    Returns:
      A `BaseCalibration(sigma [7], crop_size, tentative [N, 7], offsets [N, 2])`.
    """
    a1 = base_policy_actions(base, dataset, batch_size)
    s = calibrate_sigma(a1, dataset.action, floor=floor, calibrate=calibrate, sigma=sigma)
    offsets = dataset_crop_offsets(dataset, a1, rotate)
    if max_size is None:
        max_size = int(min(np.shape(dataset.images)[1:3]))
    size = calibrate_crop_size(offsets, coverage=coverage, multiple=multiple, min_size=min_size,
                               max_size=max_size, margin=margin)
    return BaseCalibration(sigma=s, crop_size=size, tentative=a1, offsets=offsets)


def sampled_crop_offsets(key: jax.Array, dataset: Dataset, stage2: Stage2Config, residuals: Any = None,
                         draws: int = 8) -> np.ndarray:
    """Pixel offsets of each target from crops centred on Algo. 1's sampled tentative actions.

    What `crop_offsets` measures for stage 1's actions, measured for the perturbations stage 2
    trains on: `draws` tentative actions per transition of `dataset`, drawn as training draws
    them (`stage2.sigma`, `sigma_scales`, `perturbation`, `gripper_clip`), each seen by its own
    frame's camera (`dataset_crop_offsets`).

    Args:
      key: PRNG key of the draws.
      dataset: the demos stage 2 trains on (their `action` is the target a).
      stage2: the stage-2 settings whose perturbations are measured (`rotate` too).
      residuals: the [R, 7] bank (`residual_bank`) when `stage2.perturbation='residuals'`,
        else None.
      draws: perturbations per transition.

    Returns:
      [draws * N, 2] float64 offsets (x, y) in pixels, draw-major.
    """
    if not isinstance(stage2, Stage2Config):
        raise TypeError(f"`stage2` must be a Stage2Config; got {type(stage2).__name__}.")
    _checks.check_positive_int("draws", draws)
    if (residuals is None) != (stage2.perturbation != "residuals"):
        raise ValueError(f"`residuals` must be given exactly when Stage2Config.perturbation='residuals'; got "
                         f"perturbation={stage2.perturbation!r} and residuals "
                         f"{'None' if residuals is None else 'given'}.")
    if residuals is not None:
        residuals = np.asarray(residuals, np.float32)
        check_residual_bank("residuals", residuals)
    _checks.check_key("key", key)
    a = jnp.asarray(dataset.action, jnp.float32)
    a1, _ = sample_tentative(key, jnp.broadcast_to(a, (draws,) + a.shape), stage2.sigma,
                             tentative_limit=stage2.tentative_limit(), scales=stage2.sigma_scales,
                             residuals=residuals)
    a1 = np.asarray(a1)
    return np.concatenate([dataset_crop_offsets(dataset, a1[d], stage2.rotate) for d in range(draws)])


def calibrate_sampled_crop_size(key: jax.Array, dataset: Dataset, stage2: Stage2Config,
                                residuals: Any = None, draws: int = 8, coverage: float = 0.95,
                                multiple: int = 4, min_size: int = 8, max_size: int | None = None,
                                margin: float = 0.0) -> int:
    """The crop side that holds the target for a `coverage` share of Algo. 1's sampled draws.

    `calibrate_crop_size` on `sampled_crop_offsets`: the crop a stage 2 trained with
    `stage2`'s perturbations (a scale mixture, or the residual bank) needs to see its targets.
    The calibrated crop (`calibrate_to_base_policy`, on stage 1's own offsets) covers stage 1's
    errors; a caller that trains on wider perturbations takes the larger of the two.

    Args:
      key: PRNG key of the draws.
      dataset: the demos stage 2 trains on.
      stage2: the stage-2 settings (sigma, sigma_scales, perturbation, gripper_clip, rotate).
      residuals: the [R, 7] bank when `stage2.perturbation='residuals'`, else None.
      draws: perturbations per transition.
      coverage, multiple, min_size, margin: as in `calibrate_crop_size`.
      max_size: largest crop side (default: the image's smaller side).

    Returns:
      The crop side in pixels.
    """
    offsets = sampled_crop_offsets(key, dataset, stage2, residuals, draws)
    if max_size is None:
        max_size = int(min(np.shape(dataset.images)[1:3]))
    return calibrate_crop_size(offsets, coverage=coverage, multiple=multiple, min_size=min_size,
                               max_size=max_size, margin=margin)
