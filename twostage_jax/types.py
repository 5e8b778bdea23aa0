"""Core data types (the camera, the workspace, observations, batches, the offline dataset) and
their validation: `validate_dataset` where data enters, `validate_batch` in the losses.

Every type is a pytree, so it passes through `jit`, `vmap` and `lax.scan`.

Conventions used throughout the library:
  * Camera frame: x right, y down, z forward (the usual computer-vision frame).
  * Pixel coordinates are continuous (u = column, v = row); pixel (row i, column j) covers
    [j, j+1) x [i, i+1), so its centre is at (j + 0.5, i + 0.5).
  * An action (and the pose z) is 7 numbers in [-1, 1]: position (3, normalised by the
    workspace bounds), Euler angles (3, extrinsic x-y-z, divided by pi) and gripper
    (>= 0 open, < 0 closed).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import struct

from twostage_jax import _checks

ACTION_DIM = 7
"""Length of an action / pose vector: xyz (3) + Euler xyz (3) + gripper (1)."""


@struct.dataclass
class Camera:
    """A calibrated pinhole camera.

    Attributes:
      intrinsics: [3, 3] K with positive focal lengths fx = K[0, 0], fy = K[1, 1] and
        principal point (K[0, 2], K[1, 2]) in continuous pixel coordinates.
      cam_to_world: [4, 4] pose of the camera in the world; camera axes are x right, y down,
        z forward (along the optical axis).
      width: image width in pixels (static).
      height: image height in pixels (static).

    Leading batch dimensions on `intrinsics`/`cam_to_world` are allowed (e.g. one camera per
    frame in a dataset); single-example functions expect none and are vmapped by callers.
    """

    intrinsics: jnp.ndarray
    cam_to_world: jnp.ndarray
    width: int = struct.field(pytree_node=False, default=128)
    height: int = struct.field(pytree_node=False, default=128)

    @classmethod
    def create(cls, intrinsics: Any, cam_to_world: Any, width: int, height: int) -> "Camera":
        """Validating constructor.

        Args:
          intrinsics: [3, 3] (or [..., 3, 3]) with positive focal lengths.
          cam_to_world: [4, 4] (or [..., 4, 4]) camera-to-world pose, axes x right, y down,
            z forward.
          width: image width in pixels, > 0.
          height: image height in pixels, > 0.

        Returns:
          A float32 `Camera`.
        """
        _checks.check_positive_int("width", width)
        _checks.check_positive_int("height", height)
        _checks.check_trailing("intrinsics", intrinsics, (3, 3))
        _checks.check_trailing("cam_to_world", cam_to_world, (4, 4))
        intrinsics = jnp.asarray(intrinsics, jnp.float32)
        cam_to_world = jnp.asarray(cam_to_world, jnp.float32)
        if _checks.is_concrete(intrinsics):
            f = np.asarray(intrinsics)[..., [0, 1], [0, 1]]
            if not np.all(f > 0):
                raise ValueError(
                    "`intrinsics` must have positive focal lengths K[0,0], K[1,1]; got "
                    f"{f.reshape(-1, 2)[0].tolist()}. For RLBench's negative focal lengths use "
                    "Camera.from_rlbench."
                )
        return cls(intrinsics=intrinsics, cam_to_world=cam_to_world, width=int(width),
                   height=int(height))

    @classmethod
    def from_rlbench(cls, intrinsics: Any, extrinsics: Any, width: int, height: int) -> "Camera":
        """Builds a camera from RLBench's `misc['front_camera_intrinsics'/'..._extrinsics']`.

        RLBench stores K with negative focal lengths, with the extrinsics being the camera-to-
        world pose of a frame whose x axis points left and y axis up in the image. Flipping
        both axes gives our frame (x right, y down) with positive focal lengths; the projected
        pixels are identical.

        Args:
          intrinsics: [3, 3] (or [..., 3, 3]) RLBench intrinsics, negative focal lengths.
          extrinsics: [4, 4] (or [..., 4, 4]) RLBench camera-to-world pose.
          width: image width in pixels.
          height: image height in pixels.

        Returns:
          The equivalent `Camera`.
        """
        _checks.check_trailing("intrinsics", intrinsics, (3, 3))
        _checks.check_trailing("extrinsics", extrinsics, (4, 4))
        k = np.array(intrinsics, dtype=np.float64, copy=True)
        f = k[..., [0, 1], [0, 1]]
        if not np.all(f < 0):
            raise ValueError(
                "`intrinsics` for Camera.from_rlbench must have RLBench's negative focal lengths; "
                f"got {f.reshape(-1, 2)[0].tolist()}. For a camera with positive focal lengths "
                "use Camera.create."
            )
        k[..., 0, 0] *= -1
        k[..., 1, 1] *= -1
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        pose = np.asarray(extrinsics, dtype=np.float64) @ flip
        return cls.create(k, pose, width, height)

    @classmethod
    def from_mujoco(
        cls, fovy_degrees: float, cam_xpos: Any, cam_xmat: Any, width: int, height: int
    ) -> "Camera":
        """Builds a camera from MuJoCo's `model.cam_fovy`, `data.cam_xpos`, `data.cam_xmat`.

        MuJoCo cameras look along their -z axis with y up; we rotate the frame by pi about x to
        get x right, y down, z forward. Focal length f = (H / 2) / tan(fovy / 2) for both axes
        (square pixels), principal point at the image centre (W / 2, H / 2).

        Args:
          fovy_degrees: vertical field of view in degrees, in (0, 180).
          cam_xpos: [3] camera position in the world.
          cam_xmat: [9] or [3, 3] row-major rotation whose columns are the camera axes in the
            world frame.
          width: image width in pixels.
          height: image height in pixels.

        Returns:
          The equivalent `Camera`.
        """
        fovy = float(fovy_degrees)
        if not 0.0 < fovy < 180.0:
            raise ValueError(f"`fovy_degrees` must lie in (0, 180); got {fovy_degrees!r}.")
        _checks.check_shape("cam_xpos", cam_xpos, (3,))
        xmat = np.asarray(cam_xmat, dtype=np.float64)
        if xmat.shape == (9,):
            xmat = xmat.reshape(3, 3)
        _checks.check_shape("cam_xmat", xmat, (3, 3), "or [9]")
        _checks.check_positive_int("height", height)
        f = 0.5 * height / np.tan(np.deg2rad(fovy) / 2.0)
        k = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
        pose = np.eye(4)
        pose[:3, :3] = xmat @ np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = np.asarray(cam_xpos, dtype=np.float64)
        return cls.create(k, pose, width, height)


@struct.dataclass
class Workspace:
    """Axis-aligned bounds that map world positions to normalised action positions.

    Attributes:
      low: [3] lower corner (metres); action position -1 maps here.
      high: [3] upper corner (metres); action position +1 maps here.
    """

    low: jnp.ndarray
    high: jnp.ndarray

    @classmethod
    def create(cls, low: Any, high: Any) -> "Workspace":
        """Validating constructor: `low` and `high` are [3] finite metres within
        `MAX_WORKSPACE_M` of the origin, with low < high."""
        _checks.check_shape("low", low, (3,))
        _checks.check_shape("high", high, (3,))
        lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
        for name, bound in (("low", lo), ("high", hi)):
            if not np.all(np.abs(bound) <= MAX_WORKSPACE_M):  # NaN fails too
                raise ValueError(f"Workspace `{name}` must be finite metres within {MAX_WORKSPACE_M:g} m of "
                                 f"the world origin; got {bound.tolist()}.")
        if not np.all(hi > lo):
            raise ValueError(f"Workspace needs `low` < `high` on every axis; got low={lo.tolist()}, "
                             f"high={hi.tolist()}.")
        return cls(low=jnp.asarray(lo, jnp.float32), high=jnp.asarray(hi, jnp.float32))


class Stage1Obs(NamedTuple):
    """Observation of the tentative policy pi^1.

    Attributes:
      image: [..., H, W, 3] RGB, uint8 or float in [0, 1]; with several cameras [B, V, H, W, 3].
      pose: [..., 7] current end-effector pose z in the action's form.
    """

    image: jnp.ndarray
    pose: jnp.ndarray


class Stage2Obs(NamedTuple):
    """Observation of the correction policy pi^2: s^2 = (o^2, e^2, z, a^1), the paper's Eq. 5.

    With several cameras, each crop has a view axis V before its pixels, and `mask` says in
    which views the tentative position is seen (`transform.transform_views`).

    Attributes:
      crop: [..., S, S, 3] (or [..., V, S, S, 3]) float crop o^2 centred on the projection of
        the tentative position.
      ee_crop: [..., E, E, 3] (or [..., V, E, E, 3]) float crop e^2 centred on the projection
        of the current position.
      pose: [..., 7] current pose z.
      tentative: [..., 7] tentative action a^1.
      mask: None (one camera), or [..., V] float: 1.0 where the view sees the tentative
        position, 0.0 where it falls outside or behind (that view's crop is zeros).
    """

    crop: jnp.ndarray
    ee_crop: jnp.ndarray
    pose: jnp.ndarray
    tentative: jnp.ndarray
    mask: jnp.ndarray | None = None


class Batch(NamedTuple):
    """A batch of transitions for an update step.

    `obs`/`next_obs` are `Stage1Obs` or `Stage2Obs` (or any pytree the networks accept).

    Attributes:
      obs: observation pytree with leading [B].
      action: [B, 7] target action (a for stage 1; a^2 for stage 2).
      reward: [B] reward r_t.
      next_obs: observation pytree with leading [B] (used by TD targets and CQL's
        next-state action samples).
      mc_return: [B] discounted Monte Carlo return from t.
      done: [B] 1.0 where s_{t+1} is terminal.
    """

    obs: Any
    action: jnp.ndarray
    reward: jnp.ndarray
    next_obs: Any
    mc_return: jnp.ndarray
    done: jnp.ndarray




def _image_shape(batch_size: int, views: bool) -> tuple:
    """[B, H, W, 3], or [B, V, H, W, 3] for several cameras."""
    return (batch_size, None, None, None, 3) if views else (batch_size, None, None, 3)


def _check_obs(name: str, obs: Any, batch_size: int) -> None:
    """Shapes and dtypes of a `Stage1Obs` / `Stage2Obs` with leading [B] (other pytrees pass);
    images may carry a view axis V after B (several cameras)."""
    if isinstance(obs, Stage1Obs):
        _checks.check_fields(name, obs, Stage1Obs._fields)
        views = len(getattr(obs.image, "shape", ())) == 5
        _checks.check_shape(f"{name}.image", obs.image, _image_shape(batch_size, views),
                            "[B, V, H, W, 3]" if views else "[B, H, W, 3]")
        _checks.check_image(f"{name}.image", obs.image)
    elif isinstance(obs, Stage2Obs):
        _checks.check_fields(name, obs, Stage2Obs._fields[:4])  # (mask: one camera has none)
        views = len(getattr(obs.crop, "shape", ())) == 5
        for crop in ("crop", "ee_crop"):
            _checks.check_shape(f"{name}.{crop}", getattr(obs, crop), _image_shape(batch_size, views),
                                "[B, V, S, S, 3]" if views else "[B, S, S, 3]")
            _checks.check_floating(f"{name}.{crop}", getattr(obs, crop))
        if views and obs.mask is not None:
            _checks.check_shape(f"{name}.mask", obs.mask, (batch_size, obs.crop.shape[1]), "[B, V]")
        _checks.check_shape(f"{name}.tentative", obs.tentative, (batch_size, ACTION_DIM), "[B, 7]")
        _checks.check_floating(f"{name}.tentative", obs.tentative)
    else:
        return
    _checks.check_shape(f"{name}.pose", obs.pose, (batch_size, ACTION_DIM), "[B, 7]")
    _checks.check_floating(f"{name}.pose", obs.pose)


def validate_batch(batch: Any, fields: tuple[str, ...]) -> None:
    """Checks `batch`'s fields, shapes and dtypes (trace-time only); raises naming the field.

    Every field in `fields` must be present, the action [B, 7] float, each other array field
    [B], and `Stage1Obs` / `Stage2Obs` observations [B, ...] with their documented shapes.
    Values (e.g. actions in [-1, 1], images of floats in [0, 1]) are not checked here: that
    needs concrete values, so it happens where data enters (`prepare_data`, act).

    Args:
      batch: a `Batch` (or a dict of its fields) with leading [B].
      fields: the fields the caller reads, e.g. ("obs", "action") for BC.

    Raises:
      ValueError / TypeError naming the field, the expected and the received shape or dtype.
    """
    _checks.check_fields("batch", batch, fields)
    get = (lambda f: batch[f]) if isinstance(batch, dict) else (lambda f: getattr(batch, f))
    action = get("action")
    _checks.check_rank("batch.action", action, 2)
    _checks.check_shape("batch.action", action, (None, ACTION_DIM), "[B, 7]")
    _checks.check_floating("batch.action", action)
    b = int(action.shape[0])
    for f in fields:
        if f in ("obs", "next_obs"):
            _check_obs(f"batch.{f}", get(f), b)
        elif f != "action":
            _checks.check_shape(f"batch.{f}", get(f), (b,), "[B], B as in batch.action")


def flatten_metrics(metrics: Any) -> dict[str, Any]:
    """Flat names for nested metric NamedTuples: each leaf under its own field name.

    The rule: a leaf's name is the last field on its path, so `CQLMetrics.critic.regularizer.
    q_random` is `q_random` and `BCMetrics.bc.bc_loss` is `bc_loss` (the names a flat tuple
    had, which logs such as metrics.jsonl keep). Field names are unique across one metrics
    type; a clash raises rather than silently dropping a value.

    Args:
      metrics: a NamedTuple whose fields are arrays or NamedTuples (any leading dims).

    Returns:
      {name: array} in field order, depth first.
    """
    out: dict[str, Any] = {}

    def visit(node: Any, path: str) -> None:
        for name, value in zip(node._fields, node):
            if hasattr(value, "_fields"):
                visit(value, f"{path}{name}.")
            elif name in out:
                raise ValueError(f"metric name {name!r} of `{path}{name}` appears twice; rename a field.")
            else:
                out[name] = value

    if not hasattr(metrics, "_fields"):
        raise TypeError(f"`metrics` must be a NamedTuple of metrics; got {type(metrics).__name__}.")
    visit(metrics, "")
    return out


@struct.dataclass
class Dataset:
    """An offline dataset of keyframe transitions; every image is stored once, by index.

    With several cameras (`num_views` V > 1), each frame (instant) is V consecutive rows of
    `images`, one per camera in a fixed order, each with its own intrinsics and camera pose
    (a wrist camera's pose of that instant): view v of frame f is row f * V + v
    (`view_rows`). With one camera a frame is one row, as it always was.

    Attributes:
      images: [N_frames * V, H, W, 3] uint8 images.
      intrinsics: [N_frames * V, 3, 3] camera intrinsics of each image (positive focal lengths).
      cam_to_world: [N_frames * V, 4, 4] camera pose of each image (x right, y down, z forward).
      obs_index: [N] int32 index of the frame of s_t.
      next_obs_index: [N] int32 index of the frame of s_{t+1}.
      pose: [N, 7] z_t.
      next_pose: [N, 7] z_{t+1}.
      action: [N, 7] a_t.
      next_action: [N, 7] a_{t+1} (used to build s^2_{t+1} for stage 2; equal to a_t at the
        last transition of an episode).
      reward: [N] r_t.
      mc_return: [N] discounted return from t.
      done: [N] 1.0 at the final transition of a successful episode.
      episode: [N] int32 demo index of each transition (for held-out splits).
      workspace: position bounds of the action space.
      num_views: V, the cameras per frame (static).
    """

    images: jnp.ndarray
    intrinsics: jnp.ndarray
    cam_to_world: jnp.ndarray
    obs_index: jnp.ndarray
    next_obs_index: jnp.ndarray
    pose: jnp.ndarray
    next_pose: jnp.ndarray
    action: jnp.ndarray
    next_action: jnp.ndarray
    reward: jnp.ndarray
    mc_return: jnp.ndarray
    done: jnp.ndarray
    episode: jnp.ndarray
    workspace: Workspace
    num_views: int = struct.field(pytree_node=False, default=1)

    @property
    def num_transitions(self) -> int:
        return int(self.action.shape[0])

    @property
    def num_frames(self) -> int:
        """Instants stored (each `num_views` images)."""
        return int(self.images.shape[0]) // int(self.num_views)

    def view_rows(self, frames: Any) -> Any:
        """[..., V] rows of `images` of the frames [...] (works on tracers and numpy)."""
        v = int(self.num_views)
        offsets = np.arange(v, dtype=np.int32)
        return frames[..., None] * v + (jnp.asarray(offsets) if isinstance(frames, jnp.ndarray) else offsets)

    def observed(self, frames: Any) -> tuple[Any, Camera]:
        """What a policy is shown at `frames` [B] (numpy): one camera's images [B, H, W, 3]
        with its (fixed) camera, the first image's; several cameras' images [B, V, H, W, 3]
        with each frame's cameras (intrinsics [B, V, 3, 3], a moving camera's pose per frame)."""
        frames = np.asarray(frames)
        if int(self.num_views) == 1:
            return np.asarray(self.images)[frames], self.camera(0)
        rows = self.view_rows(frames)
        return np.asarray(self.images)[rows], Camera(
            intrinsics=np.asarray(self.intrinsics)[rows], cam_to_world=np.asarray(self.cam_to_world)[rows],
            width=int(self.images.shape[2]), height=int(self.images.shape[1]))

    def camera(self, index: Any) -> Camera:
        """The `Camera` of image row `index` (works on tracers); with one camera, a frame's."""
        return Camera(
            intrinsics=self.intrinsics[index],
            cam_to_world=self.cam_to_world[index],
            width=int(self.images.shape[2]),
            height=int(self.images.shape[1]),
        )


MAX_WORKSPACE_M = 1000.0
"""A workspace bound further than this from the world origin is a unit or sign error, not a robot
cell (float32 positions would lose their millimetres out there)."""

MIN_VISIBLE = 0.9
"""The share of the demos' end-effector positions that must project in front of their frame's
camera and inside its image where a dataset enters the launcher (`DataConfig.min_visible`)."""
RIGID_TOLERANCE = 1e-3
"""How far a `cam_to_world` rotation may be from orthonormal (max |R^T R - I|, |det R - 1|)."""


def check_camera_values(intrinsics: Any, cam_to_world: Any, name: str = "dataset") -> None:
    """Checks concrete camera values: finite intrinsics with positive focal lengths, and a rigid
    `cam_to_world` (finite, an orthonormal rotation with determinant +1 within
    `RIGID_TOLERANCE`, bottom row [0, 0, 0, 1]); raises ValueError naming the field.

    Args:
      intrinsics: [..., 3, 3].
      cam_to_world: [..., 4, 4].
      name: the owner, for messages ("dataset" -> "dataset.intrinsics").
    """
    k = np.asarray(intrinsics, np.float64).reshape(-1, 3, 3)
    t = np.asarray(cam_to_world, np.float64).reshape(-1, 4, 4)
    if not np.all(np.isfinite(k)):
        raise ValueError(f"`{name}.intrinsics` must be finite; got NaN or inf in frame(s) "
                         f"{np.flatnonzero(~np.isfinite(k).all(axis=(1, 2)))[:5].tolist()}.")
    focal = k[:, [0, 1], [0, 1]]
    if not np.all(focal > 0):
        bad = int(np.flatnonzero(~(focal > 0).all(axis=1))[0])
        raise ValueError(f"`{name}.intrinsics` must have positive focal lengths K[0,0], K[1,1]; got "
                         f"{focal[bad].tolist()} in frame {bad}.")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"`{name}.cam_to_world` must be finite; got NaN or inf in frame(s) "
                         f"{np.flatnonzero(~np.isfinite(t).all(axis=(1, 2)))[:5].tolist()}.")
    rot = t[:, :3, :3]
    off = np.abs(np.einsum("nji,njk->nik", rot, rot) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    rows = np.abs(t[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    bad = np.flatnonzero((off > RIGID_TOLERANCE) | (np.abs(det - 1.0) > RIGID_TOLERANCE) | (rows > 1e-6))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"`{name}.cam_to_world` must be a rigid camera-to-world pose (an orthonormal "
                         f"rotation with determinant +1, bottom row [0, 0, 0, 1]); frame {i} has "
                         f"max |R^T R - I| = {off[i]:.3g}, det R = {det[i]:.4g}, bottom row "
                         f"{t[i, 3].tolist()} ({bad.size} such frame(s)).")


def visible_rows(dataset: Dataset, positions: Any, view: int = 0) -> np.ndarray:
    """[N] bool: whether each transition's position projects in front of the camera of `view`
    at its frame (`obs_index`) and inside its image (numpy, on concrete values).

    Args:
      dataset: the dataset (its cameras, workspace and image size).
      positions: [N, 7] actions or poses, one per transition (their first 3 entries are read).
      view: which camera (of `dataset.num_views`).
    """
    idx = np.asarray(dataset.obs_index) * int(dataset.num_views) + int(view)
    k = np.asarray(dataset.intrinsics, np.float64)[idx]
    t = np.asarray(dataset.cam_to_world, np.float64)[idx]
    lo, hi = np.asarray(dataset.workspace.low, np.float64), np.asarray(dataset.workspace.high, np.float64)
    pos = lo + (np.asarray(positions, np.float64)[:, :3] + 1.0) * 0.5 * (hi - lo)  # actions.action_to_pose
    p_cam = np.einsum("nij,ni->nj", t[:, :3, :3], pos - t[:, :3, 3])  # R^T (p - t)
    depth = p_cam[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    u = k[:, 0, 0] * p_cam[:, 0] / safe + k[:, 0, 1] * p_cam[:, 1] / safe + k[:, 0, 2]
    v = k[:, 1, 1] * p_cam[:, 1] / safe + k[:, 1, 2]
    height, width = np.shape(dataset.images)[1:3]
    return (depth > 0) & (u >= 0) & (u <= width) & (v >= 0) & (v <= height)


def visible_share(dataset: Dataset) -> float:
    """The share of transitions whose end-effector position (`dataset.pose`) projects in front
    of its frame's (first) camera and inside its image (numpy, on concrete values)."""
    inside = visible_rows(dataset, dataset.pose, 0)
    return float(inside.mean()) if inside.size else 1.0


def validate_dataset(dataset: Dataset, min_visible: float = 0.0) -> None:
    """Checks shapes, dtypes and ranges of every field and the cameras' values
    (`check_camera_values`); raises ValueError naming the field.

    Args:
      dataset: the dataset.
      min_visible: also refuse cameras that see fewer than this share of the end-effector
        positions (`visible_share`; the launcher passes `MIN_VISIBLE`); 0 skips that check.
    """
    n_img = np.shape(dataset.images)[0] if np.ndim(dataset.images) == 4 else -1
    views = dataset.num_views
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise ValueError(f"`dataset.num_views` must be a positive int (cameras per frame); got {views!r}.")
    _checks.check_rank("dataset.images", dataset.images, 4)
    if n_img % views:
        raise ValueError(f"`dataset.images` holds {n_img} images, not a multiple of dataset.num_views "
                         f"({views}): each frame is one image per camera.")
    _checks.check_shape("dataset.images", dataset.images, (None, None, None, 3))
    if np.asarray(dataset.images).dtype != np.uint8:
        raise TypeError(f"`dataset.images` must be uint8; got {np.asarray(dataset.images).dtype}.")
    _checks.check_shape("dataset.intrinsics", dataset.intrinsics, (n_img, 3, 3))
    _checks.check_shape("dataset.cam_to_world", dataset.cam_to_world, (n_img, 4, 4))
    n = np.shape(dataset.action)[0] if np.ndim(dataset.action) == 2 else -1
    if n <= 0:
        raise ValueError(f"`dataset.action` must have shape [N, 7] with N > 0; got "
                         f"{np.shape(dataset.action)}.")
    for name in ("pose", "next_pose", "action", "next_action"):
        _checks.check_shape(f"dataset.{name}", getattr(dataset, name), (n, ACTION_DIM))
        _checks.check_range(f"dataset.{name}", getattr(dataset, name), -1.0, 1.0)
    for name in ("reward", "mc_return", "done", "obs_index", "next_obs_index", "episode"):
        _checks.check_shape(f"dataset.{name}", getattr(dataset, name), (n,))
    for name in ("obs_index", "next_obs_index"):
        _checks.check_range(f"dataset.{name}", getattr(dataset, name), 0, n_img // views - 1,
                            "frame indices" + (f" ({views} images each)" if views > 1 else
                                               " into dataset.images"))
    # CQL's Q targets: a NaN here would be a NaN loss
    for name, (low, high, what) in {"reward": (-np.inf, np.inf, ""), "mc_return": (-np.inf, np.inf, ""),
                                    "done": (0.0, 1.0, "a 0/1 episode-end flag")}.items():
        _checks.check_range(f"dataset.{name}", getattr(dataset, name), low, high, what)
    episode = np.asarray(dataset.episode)
    if episode.size and (not np.issubdtype(episode.dtype, np.integer) or episode.min() < 0):
        raise ValueError(f"`dataset.episode` must hold episode indices >= 0; got values from "
                         f"{episode.min()} (dtype {episode.dtype}).")
    check_camera_values(dataset.intrinsics, dataset.cam_to_world)
    share = visible_share(dataset) if min_visible > 0 else 1.0
    if share < min_visible:
        raise ValueError(
            f"the camera sees {100 * share:.0f}% of the demos' end-effector positions (in front of "
            f"it and inside its {np.shape(dataset.images)[2]}x{np.shape(dataset.images)[1]} image); "
            f"at least {100 * min_visible:.0f}% must be seen: check `dataset.cam_to_world` (the "
            "camera-to-world pose, axes x right, y down, z forward), `dataset.intrinsics` and the "
            "workspace bounds.")
