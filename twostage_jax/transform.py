"""The paper's transformation f (Eq. 5), s^2 = (o^2, e^2, z, a^1) from (o, z, a^1), its settings
(`Stage2Config`, with the composition g of Eq. 6), and stage 1's image downscale."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax._checks import ConfigError
from twostage_jax.actions import (DEFAULT_CLIP, DEFAULT_SIGMA, POSE_DIMS, _check_action, action_to_pose,
                                  check_scales, compose_correction, compose_direct,
                                  correction_target_variance)
from twostage_jax.geometry import crop_at_pixel, optical_axis_angle, project_points
from twostage_jax.types import ACTION_DIM, Camera, Stage2Obs, Workspace

STAGE2_MODES = ("correction", "direct")
LOSS_WEIGHTINGS = ("none", "whiten", "auto")
PERTURBATIONS = ("gaussian", "residuals")
"""Algo. 1's perturbation distributions (`Stage2Config.perturbation`)."""
PAPER_CROP_SIZE = {"bc": 64, "cql": 32}
"""Side of o^2 per algorithm in the paper (Sec. V): 64 px for BC, 32 px for CQL."""


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    """How stage 2's states and actions are built (Algo. 1 and Eq. 5).

    Attributes:
      crop_size: side of o^2, or None (the default) to follow the algorithm: `TrainConfig`
        resolves None to the paper's size, 64 for BC and 32 for CQL (`PAPER_CROP_SIZE`).
        A bare Stage2Config with None can build stage-1 batches only; set it (or
        `with_crop_size_for(algo)`) to crop. The launcher's calibrated crop size
        (`config.calibrate.crop_size`) replaces this field when stage 2 trains; 0 is not a
        valid value here.
      ee_crop_size: side of e^2 (paper: 16).
      sigma: Algo. 1 noise std per action dimension.
      mode: 'correction' (a^2 = tanh(eps), composed by Eq. 6) or 'direct' (a^2 = a).
      rotate: rotate crops by the orientation's angle about the optical axis.
      loss_weighting: 'none' (the paper's Eq. 1 for a BC stage 2) or 'whiten': weight each
        action dimension's squared error by 1 / Var of its Algo. 1 target
        (`correction_target_variance`, normalised to mean 1), so the gripper (sigma = 1) does
        not drown the pose (sigma = 0.1). Correction mode only: BC's loss, and the squared error of
        CQL's optional BC term (`CQLConfig.bc_weight`). 'auto': 'whiten' where
        it applies (correction mode, every sigma > 0), else 'none'.
      gripper_clip: None (the paper: the tentative gripper is clipped to 0.99 like every other
        operand, and a saturated one cannot be flipped by any correction, since
        atanh(0.99) + atanh(-0.99) = 0 reads as "open"), or a bound below 0.99 (e.g. 0.9,
        atanh = 1.47) for the tentative gripper in the composition, so that a correction of
        magnitude above atanh(gripper_clip) flips it either way (`compose_correction`); Algo. 1
        then uses the exact inverse of that composition as its target (`sample_tentative`).
      sigma_scales: multipliers of the pose dimensions' sigma, one drawn uniformly per sample
        and shared by its 6 pose dimensions (a scale mixture: heavy tails, and large errors in
        several axes at once, as stage 1's closed-loop errors come; `sample_perturbation`
        says why shared). The gripper's sigma is not scaled. (1.0,), the default, is the
        paper's Algo. 1, bitwise; e.g. (1.0, 2.0, 4.0) also trains on errors 2x and 4x the
        calibrated sigma.
      perturbation: 'gaussian' (the paper: eps ~ N(0, sigma^2)) or 'residuals': each pose
        dimension's eps drawn from a bank of stage 1's held-out residuals (bootstrap per axis,
        heavy tails and bias kept; multiplied by `sigma_scales`), the gripper's from
        N(0, sigma_6^2). The bank is data, not config: `prepare_data(dataset, config,
        residuals=calibration.residual_bank(tentative, target))`; a stage-2 trainer without
        one refuses to start. Its target variance depends on that data, so
        loss_weighting='whiten' is refused and 'auto' resolves to 'none'.
      predicted_share: the share of stage-2 samples whose tentative action is a real policy's
        prediction on that demo state instead of Algo. 1's draw (0.0, the default: the paper,
        bitwise). The predictions are data, not config: `prepare_data(dataset, config,
        predicted=...)` with [P, N, 2, 7] actions of P predictors at each transition's state and
        next state, e.g. stage 1 models that did not train on that demo (cross-fitting) or the
        base policy being corrected. The target is the correction from that prediction to the
        demo's action, so stage 2 trains on the errors a stage 1 really makes. The loss
        weights (`loss_weighting`) stay those of the Gaussian draws.
    """

    crop_size: int | None = None
    ee_crop_size: int = 16
    sigma: tuple[float, ...] = DEFAULT_SIGMA
    mode: str = "correction"
    rotate: bool = True
    loss_weighting: str = "none"
    gripper_clip: float | None = None
    sigma_scales: tuple[float, ...] = (1.0,)
    perturbation: str = "gaussian"
    predicted_share: float = 0.0
    view_crop_scales: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.crop_size is not None and (isinstance(self.crop_size, bool) or
                                           not isinstance(self.crop_size, (int, np.integer)) or
                                           self.crop_size <= 0):
            raise ConfigError("Stage2Config", "crop_size", f"must be a positive int, or None to follow the "
                             f"algorithm (64 BC, 32 CQL); got {self.crop_size!r}.")
        if isinstance(self.ee_crop_size, bool) or not isinstance(self.ee_crop_size, (int, np.integer)) \
                or self.ee_crop_size <= 0:
            raise ConfigError("Stage2Config", "ee_crop_size", f"must be a positive int; got {self.ee_crop_size!r}.")
        object.__setattr__(self, "sigma", tuple(float(s) for s in self.sigma))  # hashable
        if self.mode not in STAGE2_MODES:
            raise ConfigError("Stage2Config", "mode", f"must be one of {STAGE2_MODES}; got {self.mode!r}.")
        if len(self.sigma) != 7 or not all(math.isfinite(s) and s >= 0 for s in self.sigma):
            raise ConfigError("Stage2Config", "sigma", f"must be 7 finite non-negative stds; got {self.sigma!r}.")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError("Stage2Config", "loss_weighting", f"must be one of {LOSS_WEIGHTINGS}; got "
                             f"{self.loss_weighting!r}.")
        if self.gripper_clip is not None and not 0.0 < float(self.gripper_clip) <= DEFAULT_CLIP:
            raise ConfigError("Stage2Config", "gripper_clip", f"must be None or lie in (0, {DEFAULT_CLIP}]; "
                             f"got {self.gripper_clip!r}.")
        scales = check_scales("sigma_scales", self.sigma_scales, "Stage2Config")
        object.__setattr__(self, "sigma_scales", scales)  # a tuple of floats: hashable
        if self.perturbation not in PERTURBATIONS:
            raise ConfigError("Stage2Config", "perturbation", f"must be one of {PERTURBATIONS}; got "
                             f"{self.perturbation!r}.")
        if self.loss_weighting == "whiten" and self.perturbation == "residuals":
            raise ConfigError("Stage2Config", "loss_weighting", "='whiten' needs perturbation='gaussian' (the "
                             "residual bank's target variance is data, not config); got "
                             "perturbation='residuals'.")
        if isinstance(self.predicted_share, bool) or not isinstance(self.predicted_share, (int, float, np.number)) \
                or not 0.0 <= float(self.predicted_share) <= 1.0:
            raise ConfigError("Stage2Config", "predicted_share", f"must lie in [0, 1]; got "
                             f"{self.predicted_share!r}.")
        object.__setattr__(self, "predicted_share", float(self.predicted_share))
        if self.view_crop_scales is not None:
            scales = check_scales("view_crop_scales", self.view_crop_scales, "Stage2Config")
            object.__setattr__(self, "view_crop_scales", scales)
        if self.loss_weighting == "whiten" and (self.mode != "correction" or min(self.sigma) <= 0):
            raise ConfigError("Stage2Config", "loss_weighting", "='whiten' needs mode='correction' and every "
                             f"sigma > 0; got mode={self.mode!r}, sigma={self.sigma!r}.")

    def with_crop_size_for(self, algo: str) -> "Stage2Config":
        """This config with `crop_size` None resolved for `algo` ('bc' 64, 'cql' 32)."""
        if self.crop_size is not None:
            return self
        if algo not in PAPER_CROP_SIZE:
            raise ValueError(f"`algo` must be one of {tuple(PAPER_CROP_SIZE)}; got {algo!r}.")
        return dataclasses.replace(self, crop_size=PAPER_CROP_SIZE[algo])

    def tentative_limit(self) -> np.ndarray | None:
        """[7] atanh clip bounds of the tentative operand (0.99, `gripper_clip` last), or None."""
        if self.gripper_clip is None:
            return None
        return np.asarray((DEFAULT_CLIP,) * (ACTION_DIM - 1) + (float(self.gripper_clip),), np.float32)

    def compose(self, a1: jnp.ndarray, a2: jnp.ndarray) -> jnp.ndarray:
        """The final action g(a1, a2) [..., 7]: Eq. 6 (with `tentative_limit`) or a2 ('direct')."""
        if self.mode == "correction":
            return compose_correction(a1, a2, tentative_limit=self.tentative_limit())
        return compose_direct(a1, a2)

    def resolved_loss_weighting(self) -> str:
        """'none' or 'whiten' ('auto' resolved for this mode and sigma)."""
        if self.loss_weighting != "auto":
            return self.loss_weighting
        whiten = self.mode == "correction" and min(self.sigma) > 0 and self.perturbation == "gaussian"
        return "whiten" if whiten else "none"

    def bc_weights(self) -> np.ndarray | None:
        """[7] per-dimension BC loss weights for stage 2 (None for 'none')."""
        if self.resolved_loss_weighting() == "none":
            return None
        w = 1.0 / self.correction_target_variance()
        return (w / w.mean()).astype(np.float32)

    def correction_target_variance(self) -> np.ndarray:
        """[7] float64 Var of Algo. 1's correction target tanh(eps) under the Gaussian
        perturbation: `correction_target_variance(sigma)`, averaged over `sigma_scales` (the
        mixture's variance; each scale multiplies the pose dimensions' sigma)."""
        sig = np.asarray(self.sigma, np.float64)
        per_scale = [correction_target_variance(sig * np.asarray((s,) * POSE_DIMS + (1.0,)))
                     for s in self.sigma_scales]
        return per_scale[0] if len(per_scale) == 1 else np.mean(per_scale, axis=0)


def resize_images(images: jnp.ndarray, size: int) -> jnp.ndarray:
    """Area-style downscale of uint8 frames [..., H, W, 3] -> [..., size, size, 3] uint8."""
    if images.dtype != jnp.uint8:
        raise TypeError(f"`images` must be uint8 frames (0..255); got dtype {images.dtype}.")
    if images.shape[-3] == size and images.shape[-2] == size:
        return images
    shape = images.shape[:-3] + (size, size, images.shape[-1])
    out = jax.image.resize(images.astype(jnp.float32), shape, method="linear", antialias=True)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def crop_at_action(
    image: jnp.ndarray, action: jnp.ndarray, camera: Camera, workspace: Workspace, size: int,
    rotate: bool = True, scale: Any = None,
) -> jnp.ndarray:
    """Crops `image` around the projection of an action's (or pose's) position.

    Args:
      image: [H, W, 3] uint8 or float image.
      action: [7] normalised action or pose.
      camera: single `Camera` of `image`.
      workspace: position bounds of the action space.
      size: crop side (static).
      rotate: rotate the crop by the orientation's angle about the optical axis.
      scale: None, or image pixels per crop pixel (`crop_at_pixel`).

    Returns:
      [size, size, 3] float32 crop scaled to [0, 1].
    """
    _checks.check_rank("image", image, 3)
    _checks.check_image("image", image)
    position, euler, _ = action_to_pose(action, workspace)
    uv, _ = project_points(camera, position)
    angle = optical_axis_angle(camera, euler) if rotate else jnp.zeros((), jnp.float32)
    crop = crop_at_pixel(image, uv, angle, size, scale)
    return crop * (1.0 / 255.0 if image.dtype == jnp.uint8 else 1.0)


def transform_state(
    image: jnp.ndarray,
    pose: jnp.ndarray,
    tentative: jnp.ndarray,
    camera: Camera,
    workspace: Workspace,
    crop_size: int,
    ee_crop_size: int,
    rotate: bool = True,
    crop_scale: Any = None,
) -> Stage2Obs:
    """The transformation f of Eq. 5 for one example.

    o^2 is the crop of `image` centred where the tentative position x^1 projects, rotated by
    the tentative orientation's angle about the optical axis; e^2 is the crop centred where the
    current position projects, rotated by the current orientation's angle. Pixels outside the
    image are zero. Single example: vmap for a batch.

    Args:
      image: [H, W, 3] uint8 (0..255) or float (0..1) image o.
      pose: [7] current end-effector pose z, normalised like an action.
      tentative: [7] tentative action a^1 in [-1, 1].
      camera: single `Camera` of `image`.
      workspace: position bounds used to normalise actions.
      crop_size: side of o^2 (32 for CQL, 64 for BC in the paper); static.
      ee_crop_size: side of e^2 (16 in the paper); static.
      rotate: rotate crops by the orientation (False crops axis-aligned).
      crop_scale: None, or image pixels per pixel of o^2 (`crop_at_pixel`'s scale; e^2 keeps 1).

    Returns:
      `Stage2Obs` with crop [crop_size, crop_size, 3] and ee_crop [ee_crop_size,
      ee_crop_size, 3] in [0, 1], pose [7] and tentative [7].
    """
    _checks.check_rank("image", image, 3)
    _checks.check_shape("image", image, (camera.height, camera.width, 3),
                        "[H, W, 3] at the camera's resolution")
    _checks.check_image("image", image)
    _checks.check_shape("pose", pose, (ACTION_DIM,), "one pose; vmap for a batch")
    _check_action("pose", pose)
    _checks.check_shape("tentative", tentative, (ACTION_DIM,), "one action; vmap for a batch")
    _check_action("tentative", tentative)
    _checks.check_positive_int("crop_size", crop_size)
    _checks.check_positive_int("ee_crop_size", ee_crop_size)
    o2 = crop_at_action(image, tentative, camera, workspace, crop_size, rotate, crop_scale)
    e2 = crop_at_action(image, pose, camera, workspace, ee_crop_size, rotate)
    return Stage2Obs(crop=o2, ee_crop=e2, pose=jnp.asarray(pose, jnp.float32),
                     tentative=jnp.asarray(tentative, jnp.float32))


def in_view(camera: Camera, position: jnp.ndarray) -> jnp.ndarray:
    """Whether a world point projects into a camera's image, in front of it.

    Args:
      camera: a single `Camera`.
      position: [3] world point.

    Returns:
      [] float32: 1.0 when the point lies in front of the camera (depth > 0) and its pixel
      inside the image ([0, W) x [0, H)), else 0.0.
    """
    uv, depth = project_points(camera, position)
    inside = (depth > 0) & (uv[0] >= 0) & (uv[0] < camera.width) & (uv[1] >= 0) & (uv[1] < camera.height)
    return inside.astype(jnp.float32)


def transform_views(
    images: jnp.ndarray,
    pose: jnp.ndarray,
    tentative: jnp.ndarray,
    cameras: Camera,
    workspace: Workspace,
    crop_size: int,
    ee_crop_size: int,
    rotate: bool = True,
    crop_scales: Any = None,
) -> Stage2Obs:
    """The transformation f of Eq. 5 in each of V views of one state.

    Each view is cropped as `transform_state` crops one (rotated about that view's optical
    axis). Where the tentative position projects outside a view or behind it, that view's
    o^2 is zeros and `mask` says so; where the current position does, its e^2 is zeros.

    Args:
      images: [V, H, W, 3] uint8 or float frames of the same instant, one per camera.
      pose: [7] current pose z.
      tentative: [7] tentative action a^1.
      cameras: the V cameras (intrinsics [V, 3, 3], cam_to_world [V, 4, 4]), e.g. a wrist
        camera at its pose of that instant.
      workspace, crop_size, ee_crop_size, rotate: as in `transform_state`.
      crop_scales: None, or [V] image pixels per pixel of each view's o^2
        (`Stage2Config.view_crop_scales`).

    Returns:
      `Stage2Obs` with crop [V, S, S, 3], ee_crop [V, E, E, 3], pose [7], tentative [7] and
      mask [V] float32 (1.0 where the tentative position is seen).
    """
    _checks.check_rank("images", images, 4)
    _checks.check_shape("cameras.intrinsics", cameras.intrinsics, (images.shape[0], 3, 3),
                        "[V, 3, 3], one camera per view")
    scales = jnp.ones(images.shape[0], jnp.float32) if crop_scales is None else jnp.asarray(crop_scales, jnp.float32)
    one = lambda im, cam, sc: transform_state(im, pose, tentative, cam, workspace, crop_size, ee_crop_size,
                                              rotate, sc)
    obs = jax.vmap(one)(images, cameras, scales)
    target = action_to_pose(tentative, workspace)[0]
    here = action_to_pose(pose, workspace)[0]
    mask = jax.vmap(in_view, in_axes=(0, None))(cameras, target)
    ee_seen = jax.vmap(in_view, in_axes=(0, None))(cameras, here)
    return Stage2Obs(crop=obs.crop * mask[:, None, None, None],
                     ee_crop=obs.ee_crop * ee_seen[:, None, None, None],
                     pose=obs.pose[0], tentative=obs.tentative[0], mask=mask)


def transform_batch(images: jnp.ndarray, pose: jnp.ndarray, tentative: jnp.ndarray, camera: Camera,
                    workspace: Workspace, stage2: Stage2Config) -> Stage2Obs:
    """Stage 2's observations of a batch, from one camera or several.

    Args:
      images: [B, H, W, 3] frames of one camera, or [B, V, H, W, 3] of V cameras.
      pose: [B, 7] current poses.
      tentative: [B, 7] tentative actions.
      camera: one camera: intrinsics [3, 3] (shared by the batch) or [B, 3, 3] (one per row);
        V cameras: [V, 3, 3] or [B, V, 3, 3] (a moving camera's pose differs per row).
      workspace: position bounds of the action space.
      stage2: crop sizes and rotation (`crop_size` resolved).

    Returns:
      `Stage2Obs` batch: crops [B, S, S, 3] and no mask for one camera (`transform_state`,
      exactly); [B, V, S, S, 3] with mask [B, V] for several (`transform_views`).
    """
    views = images.ndim == 5
    per_row = camera.intrinsics.ndim == (4 if views else 3)
    if views:
        scales = stage2.view_crop_scales
        if scales is not None and len(scales) != images.shape[1]:
            raise ValueError(f"Stage2Config.view_crop_scales has {len(scales)} scales for the images' "
                             f"{images.shape[1]} views.")
        one = lambda im, z, t, cam: transform_views(im, z, t, cam, workspace, stage2.crop_size,
                                                    stage2.ee_crop_size, stage2.rotate, scales)
    else:
        one = lambda im, z, t, cam: transform_state(im, z, t, cam, workspace, stage2.crop_size,
                                                    stage2.ee_crop_size, stage2.rotate)
    return jax.vmap(one, in_axes=(0, 0, 0, 0 if per_row else None))(images, pose, tentative, camera)
