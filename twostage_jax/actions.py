"""Actions in tanh space: clipped atanh, the paper's composition g (Eq. 6), Algo. 1's
tentative/correction pair, and the action <-> end-effector pose conversion.

An action is a [7] vector in [-1, 1]: normalised position (3), Euler angles / pi (3), gripper
(1; >= 0 open, < 0 closed). All functions broadcast over leading dimensions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax._checks import ConfigError
from twostage_jax.types import ACTION_DIM, Workspace

DEFAULT_CLIP = 0.99
"""Values are clipped to [-0.99, 0.99] before atanh (paper, Sec. V)."""

DEFAULT_SIGMA = (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0)
"""Algo. 1 noise scale per action dimension: 0.1 for position and orientation, 1 for gripper."""


def _check_action(name: str, x: Any) -> None:
    # Shape and dtype only (trace-time, so eager and jit agree); the [-1, 1] range is checked
    # where values enter from the host (prepare_data, act).
    _checks.check_trailing(name, x, (ACTION_DIM,), "7 = xyz, Euler xyz, gripper")
    _checks.check_floating(name, x)


def _check_limit(name: str, limit: Any) -> Any:
    """Clip bound(s) in (0, 1), a scalar or [7]; returned as numpy when concrete."""
    if not _checks.is_concrete(limit):
        return limit
    lim = np.asarray(limit, np.float32)
    if lim.ndim not in (0, 1) or (lim.ndim == 1 and lim.shape[0] != ACTION_DIM):
        raise ValueError(f"`{name}` must be a scalar or [7] clip bounds; got shape {lim.shape}.")
    if not np.all((lim > 0.0) & (lim < 1.0)):
        raise ValueError(f"`{name}` must lie in (0, 1); got {limit!r}.")
    return lim


def atanh_clipped(x: jnp.ndarray, limit: Any = DEFAULT_CLIP) -> jnp.ndarray:
    """atanh(clip(x, -limit, limit)): finite for every input, including +-1.

    Args:
      x: [...] values, nominally in [-1, 1].
      limit: clip bound in (0, 1): a scalar, or one bound per entry of the last axis.

    Returns:
      [...] unsquashed values, |result| <= atanh(limit).
    """
    lim = _check_limit("limit", limit)
    return jnp.arctanh(jnp.clip(x, -lim, lim))


def compose_correction(a1: jnp.ndarray, a2: jnp.ndarray, limit: float = DEFAULT_CLIP,
                       tentative_limit: Any = None) -> jnp.ndarray:
    """The correction function g of Eq. 6: a = tanh(atanh(a1) + atanh(a2)).

    Both operands are clipped before atanh (a2 to `limit`, a1 to `tentative_limit`, which
    defaults to `limit` as in the paper), so the result is finite and in (-1, 1) for any
    inputs. With equal bounds a saturated a1 cannot change sign: atanh(0.99) + atanh(-0.99)
    is 0, which reads as "open" for the gripper. A smaller tentative bound on a dimension
    (e.g. 0.9 on the gripper) lets a correction beyond atanh(0.9) = 1.47 flip it.

    Args:
      a1: [..., 7] tentative action in [-1, 1].
      a2: [..., 7] correction action in [-1, 1]; its leading shape must broadcast with a1's
        (checked at trace time: a ValueError naming both shapes).
      limit: atanh clip bound of a2 (and of a1 unless `tentative_limit` is given).
      tentative_limit: None, a scalar or [7] atanh clip bounds of a1.

    Returns:
      [..., 7] final action.
    """
    _check_action("a1", a1)
    _check_action("a2", a2)
    _checks.check_broadcastable("a1", a1, "a2", a2, "one a1 per a2, or one shared by a batch")
    lim1 = limit if tentative_limit is None else tentative_limit
    return jnp.tanh(atanh_clipped(a1, lim1) + atanh_clipped(a2, limit))


def compose_direct(a1: jnp.ndarray, a2: jnp.ndarray) -> jnp.ndarray:
    """The "direct" ablation of g: stage 2 predicts the final action, a = a2.

    Args:
      a1: [..., 7] tentative action (unused; kept for a signature shared with
        `compose_correction`, whose shape checks it shares).
      a2: [..., 7] stage-2 action.

    Returns:
      [..., 7] `a2`.
    """
    _check_action("a1", a1)
    _check_action("a2", a2)
    _checks.check_broadcastable("a1", a1, "a2", a2, "one a1 per a2, or one shared by a batch")
    return a2


def _sigma_vector(sigma: Any) -> jnp.ndarray:
    sig = jnp.asarray(sigma, jnp.float32)
    if sig.ndim == 0:
        sig = jnp.full((ACTION_DIM,), sig)
    _checks.check_shape("sigma", sig, (ACTION_DIM,), "a scalar or one std per action dimension")
    _checks.check_range("sigma", sig, 0.0, float("inf"), "standard deviations")
    return sig


POSE_DIMS = ACTION_DIM - 1
"""The pose dimensions (position, orientation) come first; the gripper is the last."""


def check_scales(name: str, scales: Any, owner: str = "") -> tuple[float, ...]:
    """A non-empty sequence of finite positive noise multipliers, as a tuple of floats.

    Args:
      name: the argument's (or field's) name, for the error.
      scales: a sequence of numbers (`Stage2Config.sigma_scales`).
      owner: the config class the field belongs to ("" for a plain argument).

    Returns:
      The scales as a tuple of Python floats (hashable: a static jit argument).

    Raises:
      ConfigError (a ValueError) naming `owner.name`; TypeError for a JAX array (traced under
      jit, where the number of scales must be known).
    """
    def fail(message: str) -> ConfigError:
        return ConfigError(owner, name, message)

    if isinstance(scales, jax.Array):
        raise TypeError(f"`{name}` must be static Python numbers (a tuple of floats: they choose the "
                        f"program), not a JAX array; got {type(scales).__name__}.")
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__len__") or np.ndim(scales) != 1:
        raise fail(f"must be a sequence of noise multipliers, e.g. (1.0,); got {scales!r}.")
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise fail(f"must hold numbers; got {scales!r}.") from None
    if not out:
        raise fail("must hold at least one multiplier ((1.0,) is the paper's Algo. 1); got ().")
    if not all(np.isfinite(s) and s > 0 for s in out):
        raise fail(f"must hold finite multipliers > 0; got {scales!r}.")
    return out


def check_residual_bank(name: str, bank: Any) -> None:
    """Checks a bank of Algo. 1 perturbations: [M, 7] floats, M >= 1, finite when concrete.

    Shape and dtype are checked at trace time; the values (finite) only when `bank` holds
    them, i.e. where it enters from the host (`prepare_data`), not inside jit.
    """
    _checks.check_shape(name, bank, (None, ACTION_DIM), "[M, 7] residuals atanh(a) - atanh(a1), one row per "
                        "held-out transition")
    _checks.check_floating(name, bank)
    if np.shape(bank)[0] < 1:
        raise ValueError(f"`{name}` is empty; build it from at least one held-out transition "
                         "(calibration.residual_bank).")
    if _checks.is_concrete(bank) and not np.all(np.isfinite(np.asarray(bank))):
        raise ValueError(f"`{name}` must be finite; got NaN or inf in an array of shape {np.shape(bank)}.")


def sample_perturbation(key: jax.Array, shape: tuple[int, ...], sigma: Any = DEFAULT_SIGMA,
                        scales: Any = (1.0,), residuals: Any = None) -> jnp.ndarray:
    """Algo. 1's perturbation eps, in atanh space: Gaussian (the paper), a scale mixture, or
    drawn from a bank of stage 1's residuals.

      * `residuals=None`: eps_d ~ N(0, (sigma_d * s)^2) for the pose dimensions and
        N(0, sigma_6^2) for the gripper, with one multiplier s per sample drawn uniformly from
        `scales`. The multiplier is shared by the 6 pose dimensions of a sample: closed-loop
        errors come as whole states (the arm drifted, a phase went wrong), so large errors come
        in several axes at once, and a shared scale makes such jointly large draws (a Gaussian
        scale mixture: heavy-tailed marginals, and tails that are jointly large), where one
        scale per dimension would give the same marginals but rarely several large axes
        together. The gripper, a binary command whose sigma is not an error measurement
        (`calibration.calibrate_sigma` keeps it too), is not scaled.
      * `residuals` [M, 7]: each pose dimension d independently draws a row i ~ U{0..M-1} and
        takes eps_d = residuals[i, d] * s (a bootstrap per axis, s as above). Per axis rather
        than whole rows: each marginal (bias and heavy tails included) is exactly the
        bank's, and a bank of a few hundred held-out transitions yields M^6 distinct
        perturbations rather than M, which stage 2 could otherwise learn by heart; what is
        lost is the correlation between axes. The gripper keeps eps_6 ~ N(0, sigma_6^2), as
        the calibrated sigma keeps the gripper's (column 6 of the bank is not read).

    With `scales=(1.0,)` and no bank this is `jax.random.normal(key, shape) * sigma`, bitwise:
    the same key use as the paper's Algo. 1 before these options existed.

    Args:
      key: PRNG key.
      shape: (..., 7) the shape of the actions perturbed (static).
      sigma: scalar or [7] noise std (the gripper's is used with a bank too).
      scales: a non-empty sequence of positive multipliers of the pose dimensions' noise
        (static: a tuple of Python floats).
      residuals: None, or an [M, 7] bank of residuals atanh(a) - atanh(a1)
        (`calibration.residual_bank`).

    Returns:
      [..., 7] float32 eps.
    """
    shape = tuple(shape)
    if not shape or shape[-1] != ACTION_DIM:
        raise ValueError(f"`shape` must end in {ACTION_DIM} (one eps per action dimension); got {shape}.")
    sig = _sigma_vector(sigma)
    scales = check_scales("scales", scales)
    if residuals is None and len(scales) == 1:  # one multiplier: no draw, the paper's key use
        if scales[0] != 1.0:
            sig = sig * jnp.asarray((scales[0],) * POSE_DIMS + (1.0,), jnp.float32)
        return jax.random.normal(key, shape, jnp.float32) * sig
    k_eps, k_scale, k_grip = jax.random.split(key, 3)
    if len(scales) == 1:
        s = jnp.full(shape[:-1] + (1,), scales[0], jnp.float32)
    else:
        pick = jax.random.randint(k_scale, shape[:-1] + (1,), 0, len(scales))
        s = jnp.asarray(scales, jnp.float32)[pick]  # [..., 1]: one multiplier per sample
    if residuals is None:
        eps = jax.random.normal(k_eps, shape, jnp.float32) * sig
        return jnp.concatenate([eps[..., :POSE_DIMS] * s, eps[..., POSE_DIMS:]], axis=-1)
    check_residual_bank("residuals", residuals)
    bank = jnp.asarray(residuals, jnp.float32)
    rows = jax.random.randint(k_eps, shape[:-1] + (POSE_DIMS,), 0, bank.shape[0])
    pose = bank[rows, jnp.arange(POSE_DIMS)] * s  # [..., 6]: column d's value of row rows[..., d]
    grip = jax.random.normal(k_grip, shape[:-1] + (1,), jnp.float32) * sig[POSE_DIMS]
    return jnp.concatenate([pose, grip], axis=-1)


def tentative_from_perturbation(a: jnp.ndarray, eps: jnp.ndarray, limit: float = DEFAULT_CLIP,
                                tentative_limit: Any = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Algorithm 1's pair for a given perturbation: a1 = tanh(atanh(a) - eps), a2 = tanh(eps).

    Args and returns as `sample_tentative`, with eps [..., 7] (broadcastable to a's shape)
    given instead of drawn.
    """
    _check_action("a", a)
    if tentative_limit is None:
        return jnp.tanh(atanh_clipped(a, limit) - eps), jnp.tanh(eps)
    lim1 = _check_limit("tentative_limit", tentative_limit)
    u = atanh_clipped(a, jnp.minimum(_check_limit("limit", limit), lim1))
    u1 = u - eps
    return jnp.tanh(u1), jnp.tanh(u - atanh_clipped(jnp.tanh(u1), lim1))


def tentative_from_prediction(a: jnp.ndarray, predicted: jnp.ndarray, limit: float = DEFAULT_CLIP,
                              tentative_limit: Any = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Algorithm 1's pair with a real policy's action as the tentative one.

    eps = atanh(a) - atanh(a_pred) (both clipped to `limit`), the error the policy made, goes
    through `tentative_from_perturbation`: a1 is the prediction (clipped) and a2 the correction
    that composes it back to the demo's action a.

    Args:
      a: [..., 7] demo actions in [-1, 1].
      predicted: [..., 7] a policy's actions on the same states, in [-1, 1].
      limit, tentative_limit: as in `sample_tentative`.

    Returns:
      (a1, a2): each [..., 7], in (-1, 1).
    """
    _check_action("predicted", predicted)
    eps = atanh_clipped(a, limit) - atanh_clipped(predicted, limit)
    return tentative_from_perturbation(a, eps, limit, tentative_limit)


def sample_tentative(
    key: jax.Array, a: jnp.ndarray, sigma: Any = DEFAULT_SIGMA, limit: float = DEFAULT_CLIP,
    tentative_limit: Any = None, scales: Any = (1.0,), residuals: Any = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Algorithm 1: a synthetic tentative action and the correction that undoes it.

    eps ~ N(0, sigma^2) per dimension; a1 = tanh(atanh(a) - eps) and a2 = tanh(eps), so that
    compose_correction(a1, a2) recovers a (up to the atanh clipping). With `scales` or
    `residuals`, eps is drawn from a scale mixture or a bank of stage 1's residuals instead
    (`sample_perturbation`); the defaults are the paper's Gaussian, bitwise.

    With `tentative_limit` (the bound `compose_correction` applies to a1), a2 is instead the
    exact inverse of that clipped composition: with u = atanh(a) clipped to the bound and
    u1 = u - eps, a2 = tanh(u - clip(u1)). It equals tanh(eps) wherever a1 stays within the
    bound; where a1 saturates further in the right direction the target is no correction
    (where the paper's target would push a saturated gripper the wrong way).

    Args:
      key: PRNG key.
      a: [..., 7] dataset actions in [-1, 1].
      sigma: scalar or [7] noise std (default: 0.1 for pose, 1.0 for gripper).
      limit: atanh clip bound of a (and of a2 in the composition).
      tentative_limit: None (the paper's Algo. 1), or a scalar or [7] clip bound of a1.
      scales: multipliers of the pose dimensions' noise, one drawn per sample
        (`Stage2Config.sigma_scales`; (1.0,): the paper's).
      residuals: None (Gaussian), or an [M, 7] bank of stage 1's residuals
        (`Stage2Config.perturbation='residuals'`).

    Returns:
      (a1, a2): each [..., 7], in (-1, 1).
    """
    _check_action("a", a)
    eps = sample_perturbation(key, jnp.shape(a), sigma, scales, residuals)
    return tentative_from_perturbation(a, eps, limit, tentative_limit)


def pose_to_action(
    position: jnp.ndarray, euler: jnp.ndarray, gripper: jnp.ndarray, workspace: Workspace,
    clip: bool = True,
) -> jnp.ndarray:
    """End-effector pose to a normalised action / pose vector.

    Args:
      position: [..., 3] world position (metres).
      euler: [..., 3] extrinsic x-y-z Euler angles in radians, in [-pi, pi].
      gripper: [...] gripper command/state (>= 0 open, < 0 closed); passed through.
      workspace: position bounds.
      clip: clip the result to [-1, 1] (positions outside the workspace saturate).

    Returns:
      [..., 7] action in [-1, 1].
    """
    _checks.check_trailing("position", position, (3,))
    _checks.check_trailing("euler", euler, (3,))
    pos = jnp.asarray(position, jnp.float32)
    lo, hi = workspace.low, workspace.high
    x = 2.0 * (pos - lo) / (hi - lo) - 1.0
    r = jnp.asarray(euler, jnp.float32) / jnp.pi
    g = jnp.asarray(gripper, jnp.float32)[..., None]
    out = jnp.concatenate([x, r, g], axis=-1)
    return jnp.clip(out, -1.0, 1.0) if clip else out


def action_to_pose(action: jnp.ndarray, workspace: Workspace) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Normalised action to (position, Euler angles, gripper).

    Args:
      action: [..., 7] in [-1, 1].
      workspace: position bounds.

    Returns:
      position [..., 3] metres, euler [..., 3] radians, gripper [...] in [-1, 1].
    """
    _check_action("action", action)
    lo, hi = workspace.low, workspace.high
    pos = lo + (action[..., :3] + 1.0) * 0.5 * (hi - lo)
    return pos, action[..., 3:6] * jnp.pi, action[..., 6]


def correction_target_variance(sigma: Any) -> np.ndarray:
    """Var[tanh(eps)] for eps ~ N(0, sigma^2): the spread of Algo. 1's correction targets.

    With the paper's sigma (0.1 for the pose, 1 for the gripper) the gripper target varies ~40x
    more than a position target, so an unweighted squared error is dominated by the gripper.

    Args:
      sigma: scalar or [7] noise std.

    Returns:
      [7] float64 variances (Gauss-Hermite quadrature, exact to ~1e-12; 0 where sigma is 0).
    """
    sig = np.asarray(_sigma_vector(sigma), np.float64)
    x, w = np.polynomial.hermite_e.hermegauss(64)  # nodes/weights for the N(0, 1) density
    w = w / w.sum()
    return (np.tanh(sig[:, None] * x[None, :]) ** 2 * w).sum(axis=1)


def check_action(action: Any) -> np.ndarray:
    """Validates one action and returns it as a [7] float64 array.

    Args:
      action: [7] array-like in [-1, 1].

    Returns:
      [7] float64 numpy array.

    Raises:
      ValueError: wrong shape, non-finite values, or values outside [-1, 1] (beyond 1e-5).
    """
    arr = np.asarray(action, dtype=np.float64)
    if arr.shape != (7,):
        raise ValueError(
            f"`action` must have shape [7] (xyz, Euler xyz / pi, gripper); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`action` must be finite; got {arr.tolist()}.")
    if np.any(np.abs(arr) > 1.0 + 1e-5):
        raise ValueError(
            f"`action` must lie in [-1, 1] (normalised pose); got values in "
            f"[{arr.min():.4g}, {arr.max():.4g}]."
        )
    return np.clip(arr, -1.0, 1.0)
