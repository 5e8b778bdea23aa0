"""Building the offline `Dataset` from demonstrations, and its versioned on-disk format.

Transitions (ARM / Q-attention demo augmentation): for every start frame f in
{0, n, 2n, ...} (n = `augment_every`, f before the last keyframe) a chain of transitions runs
through the keyframes after f:

    (f -> k_j), (k_j -> k_{j+1}), ..., (k_{K-2} -> k_{K-1}),   k_j = first keyframe > f,

each with state s = (image, pose z) of its source frame, action a = the pose of its target
keyframe (position, relative Euler angles, gripper state), s' = the target keyframe's frame and
a' = the next transition's action in the chain (a itself on the last one). The last transition
of each chain has reward 1 and done 1 (every kept demo succeeds); the Monte Carlo return of a
transition m steps before the end is gamma^m. Chains from later start frames repeat keyframe-to-
keyframe transitions, which weights them as in ARM. Each image is stored once and referenced by
index.

With several cameras, each frame is one image per camera (`Dataset.num_views`, view v of frame f
at row f * V + v of `images`), each with its own intrinsics and pose.

File format (version 2), written by `save_dataset`: one uncompressed `.npz` (a zip of `.npy`
arrays, no pickles) holding
  * `format_version`: int64 scalar, `FORMAT_VERSION`;
  * `num_views`: int64 scalar, the cameras per frame (checksummed with the arrays);
  * `checksum`: a 64-character SHA-256 hex digest (as a uint8 array) over the name, dtype,
    shape and bytes of every other array, in sorted name order;
  * `workspace_low`, `workspace_high`: [3] float32;
  * every array field of `twostage_jax.types.Dataset` under its own name (`images`,
    `intrinsics`, `cam_to_world`, `obs_index`, `next_obs_index`, `pose`, `next_pose`, `action`,
    `next_action`, `reward`, `mc_return`, `done`, `episode`).
The file is written to a temporary file in the destination directory, fsynced, then renamed over
the destination (`os.replace`), so readers never see a partial file. `load_dataset` checks the
version, the field set and the checksum, then `validate_dataset`, and raises `DatasetFormatError`
otherwise: a truncated, corrupted or foreign file never yields a partial dataset. Version 1 (the
same without `num_views`) is still read, as one camera.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from twostage_jax import _checks
from twostage_jax._io import atomic_open
from twostage_jax.data.trajectory import Trajectory, check_trajectory
from twostage_jax.types import Dataset, Workspace, validate_dataset

FORMAT_VERSION = 2
"""Version of the on-disk format written by `save_dataset`."""
READ_VERSIONS = (1, 2)
"""Versions `load_dataset` reads: 1 is 2 without `num_views` (one camera)."""

_ARRAY_FIELDS = ("images", "intrinsics", "cam_to_world", "obs_index", "next_obs_index", "pose",
                 "next_pose", "action", "next_action", "reward", "mc_return", "done", "episode")
_DTYPES = {"images": np.uint8, "obs_index": np.int32, "next_obs_index": np.int32,
           "episode": np.int32}


class DatasetFormatError(ValueError):
    """A dataset file is truncated, corrupted, of another format version, or inconsistent."""


def build_dataset(trajectories: Sequence[Trajectory], workspace: Workspace, gamma: float = 0.99,
                  augment_every: int = 10) -> Dataset:
    """Keyframe transitions with demo augmentation from successful demonstrations.

    Args:
      trajectories: demos (each with images on frame 0, every `augment_every`-th frame before
        its last keyframe, and its keyframes; see `demos.frames_to_render`).
      workspace: position bounds for poses and actions.
      gamma: discount of the Monte Carlo returns, in (0, 1].
      augment_every: spacing n of the chain start frames.

    Returns:
      A `Dataset` (numpy-backed) with N transitions and N_img unique images.

    Raises:
      ValueError: empty input, a malformed trajectory, or a needed frame without an image.
    """
    if len(trajectories) == 0:
        raise ValueError("`trajectories` must hold at least one demonstration; got none.")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"`gamma` must lie in (0, 1]; got {gamma!r}.")
    _checks.check_positive_int("augment_every", augment_every)
    images, intrinsics, cam_to_world = [], [], []
    cols: dict[str, list[Any]] = {k: [] for k in ("obs_index", "next_obs_index", "pose",
                                                  "next_pose", "action", "next_action", "reward",
                                                  "mc_return", "done", "episode")}
    shape, views = None, 1
    for ep, traj in enumerate(trajectories):
        name = f"trajectories[{ep}]"
        check_trajectory(traj, name)
        traj_views = traj.num_views
        if shape is None:
            shape, views = traj.images.shape[-3:], traj_views
        elif traj.images.shape[-3:] != shape or traj_views != views:
            raise ValueError(f"`{name}.images` has {traj_views} view(s) of shape {traj.images.shape[-3:]}; "
                             f"earlier demos have {views} of {shape}.")
        poses = traj.poses(workspace)
        kf = [int(k) for k in traj.keyframes]
        slot = {int(f): i for i, f in enumerate(traj.image_frames)}
        index: dict[int, int] = {}

        def image_index(frame: int, name: str = name, traj: Trajectory = traj,
                        slot: dict[int, int] = slot, index: dict[int, int] = index) -> int:
            if frame not in index:
                if frame not in slot:
                    raise ValueError(
                        f"`{name}` has no image for frame {frame}, which the dataset needs "
                        f"(keyframes and every {augment_every}-th frame); frames with images: "
                        f"{sorted(slot)[:20]}...")
                index[frame] = len(images) // views
                images.extend(np.reshape(traj.images[slot[frame]], (views,) + shape))
                intrinsics.extend(np.reshape(np.asarray(traj.camera.intrinsics)[slot[frame]], (views, 3, 3)))
                cam_to_world.extend(np.reshape(np.asarray(traj.camera.cam_to_world)[slot[frame]], (views, 4, 4)))
            return index[frame]

        for start in range(0, kf[-1], augment_every):
            targets = [k for k in kf if k > start]
            sources = [start] + targets[:-1]
            m = len(targets)
            for j, (src, dst) in enumerate(zip(sources, targets)):
                last = j == m - 1
                cols["obs_index"].append(image_index(src))
                cols["next_obs_index"].append(image_index(dst))
                cols["pose"].append(poses[src])
                cols["next_pose"].append(poses[dst])
                cols["action"].append(poses[dst])
                cols["next_action"].append(poses[dst] if last else poses[targets[j + 1]])
                cols["reward"].append(1.0 if last else 0.0)
                cols["done"].append(1.0 if last else 0.0)
                cols["mc_return"].append(gamma ** (m - 1 - j))
                cols["episode"].append(ep)
    ds = Dataset(
        images=np.stack(images).astype(np.uint8),
        intrinsics=np.stack(intrinsics).astype(np.float32),
        cam_to_world=np.stack(cam_to_world).astype(np.float32),
        obs_index=np.asarray(cols["obs_index"], np.int32),
        next_obs_index=np.asarray(cols["next_obs_index"], np.int32),
        pose=np.asarray(cols["pose"], np.float32),
        next_pose=np.asarray(cols["next_pose"], np.float32),
        action=np.asarray(cols["action"], np.float32),
        next_action=np.asarray(cols["next_action"], np.float32),
        reward=np.asarray(cols["reward"], np.float32),
        mc_return=np.asarray(cols["mc_return"], np.float32),
        done=np.asarray(cols["done"], np.float32),
        episode=np.asarray(cols["episode"], np.int32),
        workspace=workspace,
        num_views=views,
    )
    validate_dataset(ds)
    return ds


def dataset_nbytes(ds: Dataset) -> int:
    """Bytes held by the arrays of `ds` (images dominate)."""
    return int(sum(np.asarray(getattr(ds, f)).nbytes for f in _ARRAY_FIELDS))


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _to_arrays(ds: Dataset) -> dict[str, np.ndarray]:
    arrays = {f: np.asarray(getattr(ds, f)) for f in _ARRAY_FIELDS}
    arrays["workspace_low"] = np.asarray(ds.workspace.low, np.float32)
    arrays["workspace_high"] = np.asarray(ds.workspace.high, np.float32)
    arrays["num_views"] = np.asarray(int(ds.num_views), np.int64)
    return arrays


def save_dataset(path: str | os.PathLike[str], ds: Dataset) -> None:
    """Writes `ds` atomically in the versioned `.npz` format of this module's docstring.

    Args:
      path: destination file (conventionally ending in `.npz`); its directory must exist.
      ds: a dataset that passes `validate_dataset`.
    """
    validate_dataset(ds)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Directory of `path` does not exist: {directory!r}.")
    arrays = _to_arrays(ds)
    payload = dict(arrays)
    payload["format_version"] = np.asarray(FORMAT_VERSION, np.int64)
    payload["checksum"] = np.frombuffer(_checksum(arrays).encode(), np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez(f, **payload)


def dataset_checksum(path: str | os.PathLike[str]) -> str:
    """The SHA-256 hex digest a dataset file stores (over its arrays, see the module docstring),
    read without loading the arrays; `load_dataset` verifies it against them.

    Raises:
      FileNotFoundError: no such file.
      DatasetFormatError: not a dataset file, or unreadable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No dataset file at {path!r}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "checksum" not in npz.files:
                raise DatasetFormatError(f"{path!r} is not a twostage_jax dataset: no `checksum` entry.")
            return bytes(npz["checksum"]).decode("ascii", errors="replace")
    except DatasetFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib_error()) as err:
        raise DatasetFormatError(f"{path!r} is truncated or corrupted and cannot be read "
                                 f"({type(err).__name__}: {err}).") from err


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Reads and fully verifies a dataset written by `save_dataset`.

    Args:
      path: the `.npz` file.

    Returns:
      The `Dataset` (numpy-backed).

    Raises:
      FileNotFoundError: no such file.
      DatasetFormatError: not a dataset file, truncated or corrupted (bad zip or checksum),
        another format version, or missing/inconsistent fields.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No dataset file at {path!r}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            if "format_version" not in names:
                raise DatasetFormatError(
                    f"{path!r} is not a twostage_jax dataset: no `format_version` entry (entries: "
                    f"{sorted(names)[:10]}).")
            version = int(npz["format_version"])
            if version not in READ_VERSIONS:
                raise DatasetFormatError(
                    f"{path!r} has dataset format_version {version}; this library reads versions "
                    f"{list(READ_VERSIONS)}. Rebuild the dataset with this version.")
            expected = set(_ARRAY_FIELDS) | {"workspace_low", "workspace_high", "checksum",
                                             "format_version"} | ({"num_views"} if version >= 2 else set())
            if names != expected:
                raise DatasetFormatError(
                    f"{path!r} has entries {sorted(names)}; format version {version} "
                    f"expects {sorted(expected)}.")
            arrays = {name: npz[name] for name in expected - {"checksum", "format_version"}}
            stored = bytes(npz["checksum"]).decode("ascii", errors="replace")
    except DatasetFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib_error()) as err:
        raise DatasetFormatError(
            f"{path!r} is truncated or corrupted and cannot be read "
            f"({type(err).__name__}: {err}).") from err
    actual = _checksum(arrays)
    if stored != actual:
        raise DatasetFormatError(
            f"{path!r} failed its checksum (stored {stored[:16]}..., computed {actual[:16]}...): "
            "the file is corrupted.")
    for name, dtype in _DTYPES.items():
        if arrays[name].dtype != dtype:
            raise DatasetFormatError(f"{path!r}: `{name}` has dtype {arrays[name].dtype}, "
                                     f"expected {np.dtype(dtype)}.")
    try:
        workspace = Workspace.create(arrays["workspace_low"], arrays["workspace_high"])
        views = int(arrays["num_views"]) if "num_views" in arrays else 1
        ds = Dataset(workspace=workspace, num_views=views, **{f: arrays[f] for f in _ARRAY_FIELDS})
        validate_dataset(ds)
    except (ValueError, TypeError) as err:
        raise DatasetFormatError(f"{path!r} holds an inconsistent dataset: {err}") from err
    return ds


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
