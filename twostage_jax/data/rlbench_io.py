"""Reads RLBench's on-disk demonstrations without RLBench installed.

Layout written by RLBench's dataset generator:

    ROOT/TASK/variation{V}/episodes/episode{K}/{camera}_rgb/{i}.png   (front_rgb, wrist_rgb, ...)
    ROOT/TASK/variation{V}/episodes/episode{K}/low_dim_obs.pkl

`low_dim_obs.pkl` is a pickled `rlbench.demo.Demo` (its frames in `_observations`) of
`rlbench.backend.observation.Observation` objects whose image fields are None. A custom
Unpickler maps every `rlbench.*` (and `pyrep.*`) class to a plain attribute holder, so no RLBench,
PyRep or CoppeliaSim is needed.

Unpickling can run any function a file names, so the reader resolves only an allowlist of
globals (`ALLOWED_GLOBALS`): those stand-ins, numpy's array, dtype and scalar reconstruction
(as numpy 1.x and 2.x name them) and the few builtins protocol-2/3 pickles use for bytes and sets.
A file that names anything else is refused with a ValueError naming the global and the file,
before that global is called. Per frame we use `gripper_pose` (xyz + quaternion xyzw), `gripper_open`,
`joint_velocities` and, for each camera read, `misc['{camera}_camera_intrinsics' /
'{camera}_camera_extrinsics']`: the camera at that frame, so the wrist camera, which moves with the
gripper, has its own pose in every frame. The cameras are RLBench's (`RLBENCH_CAMERAS`: front,
left_shoulder, right_shoulder, overhead, wrist); one camera gives [M, H, W, 3] images, V cameras
[M, V, H, W, 3] in the order asked for. The pose, camera and Euler conventions come from the
simulator-free `twostage_jax.data.rlbench_conventions`.

Keyframes: ARM's rules with ARM's joint-velocity threshold 0.1 rad/s, plus the paper's 1 cm rule
(`RLBENCH_KEYFRAMES`). Only the PNGs the dataset needs are decoded (frame 0, keyframes, every
`augment_every`-th frame) unless `all_images=True`.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from twostage_jax.data.trajectory import Trajectory, frames_to_render
from twostage_jax.data.keyframes import KeyframeConfig, discover_keyframes
from twostage_jax.data.rlbench_conventions import NEUTRAL_QUAT as DEFAULT_NEUTRAL_QUAT
from twostage_jax.data.rlbench_conventions import (CAMERA_MISC_KEYS, camera_from_misc, check_cameras,
                                                   gripper_pose_to_euler)
from twostage_jax.types import Camera

RLBENCH_KEYFRAMES = KeyframeConfig(stop_threshold=0.1, refractory=4, min_distance=0.01)
"""ARM's joint-velocity stop threshold (rad/s) and refractory period, the paper's close rule."""


class _Stub:
    """Plain stand-in for any pickled RLBench object: attributes only."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _stub_class(module: str, name: str) -> type:
    return type(name, (_Stub,), {"__module__": "twostage_jax.data.rlbench_io._stubs",
                                 "_rlbench_origin": f"{module}.{name}"})


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's pickle reconstruction globals, under both spellings of their module.

    numpy 2 moved `numpy.core` to `numpy._core`; pickles written by either name the module they
    were written with (RLBench's demos: numpy 1.x's `numpy.core.multiarray`). Both map to this
    numpy's functions, without importing the deprecated `numpy.core` shim.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct  # ndarray.__reduce__
        out[(f"{core}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars (np.float64)
        out[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    return out


_ALLOWED: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol 2 (numpy's array data)
    ("builtins", "set"): set,  # sets, in protocols 2 and 3
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol 2 names Python 2's module
    ("__builtin__", "frozenset"): frozenset,
}

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_ALLOWED)
"""(module, name) pairs besides the RLBench / PyRep classes that `read_low_dim_obs` resolves.

None of them calls anything the file names: they rebuild arrays, dtypes, numpy scalars, bytes
and sets from the file's data. Every `rlbench.*` / `pyrep.*` class becomes a plain attribute
holder (`_Stub`): no method of RLBench or PyRep runs.
"""


def _is_rlbench_module(module: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in ("rlbench", "pyrep"))


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.global_name = f"{module}.{name}"


class _RLBenchUnpickler(pickle.Unpickler):
    """Resolves only RLBench/PyRep stand-ins and `ALLOWED_GLOBALS`; refuses every other global."""

    _cache: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if _is_rlbench_module(module):
            key = (module, name)
            if key not in self._cache:
                self._cache[key] = _stub_class(module, name)
            return self._cache[key]
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _RefusedGlobal(module, name)
        return found


def read_low_dim_obs(path: str | os.PathLike[str]) -> list[Any]:
    """Unpickles an RLBench `low_dim_obs.pkl` into a list of per-frame observation stand-ins.

    Only RLBench / PyRep classes (as plain attribute holders) and `ALLOWED_GLOBALS` are
    resolved, so a file cannot run code while it is read.

    Raises:
      ValueError: the file names a global outside that list (the message names it), or it is
        not a readable pickle, or it holds no observations.
    """
    with open(path, "rb") as f:
        try:
            demo = _RLBenchUnpickler(f).load()
        except _RefusedGlobal as err:
            raise ValueError(
                f"Refusing to unpickle RLBench demo {os.fspath(path)!r}: it names the global "
                f"`{err.global_name}`, which an RLBench demo does not need (allowed: rlbench.* and "
                "pyrep.* classes, read as plain attribute holders, and numpy's array and scalar "
                "reconstruction). Unpickling it could run code; only read demos you trust."
            ) from None
        except Exception as err:
            raise ValueError(f"Could not unpickle RLBench demo {os.fspath(path)!r}: "
                             f"{type(err).__name__}: {err}") from err
    frames = getattr(demo, "_observations", demo)
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ValueError(f"{os.fspath(path)!r} holds no observations (expected an rlbench.demo.Demo "
                         f"with a non-empty `_observations` list; got {type(demo).__name__}).")
    return list(frames)


def _field(obs: Any, name: str, path: str, i: int) -> Any:
    value = getattr(obs, name, None)
    if value is None:
        raise ValueError(f"Frame {i} of {path!r} lacks the RLBench Observation field `{name}` (needed "
                         "fields: gripper_pose, gripper_open, joint_velocities, misc).")
    return value


def _misc_keys(frames: list[Any], image_frames: np.ndarray, cameras: tuple[str, ...], pkl: str) -> None:
    """Every image frame's `misc` holds each camera's intrinsics and extrinsics (else a ValueError
    naming the frame, the key and the file), checked before any PNG is decoded."""
    for f in image_frames:
        misc = _field(frames[f], "misc", pkl, int(f))
        for camera in cameras:
            for key in (k.format(camera=camera) for k in CAMERA_MISC_KEYS[:2]):
                if not isinstance(misc, dict) or key not in misc:
                    have = (sorted(k for k in misc if str(k).endswith(("_intrinsics", "_extrinsics")))
                            if isinstance(misc, dict) else type(misc).__name__)
                    raise ValueError(f"Frame {int(f)} of {pkl!r} lacks misc[{key!r}] (the {camera} camera's "
                                     f"calibration at that frame); its misc holds {have}.")


def _read_png(png: str, episode_dir: str) -> np.ndarray:
    from PIL import Image

    if not os.path.isfile(png):
        raise FileNotFoundError(f"RLBench episode {episode_dir!r} lacks image {png!r}.")
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def load_rlbench_episode(episode_dir: str | os.PathLike[str], task: str, episode: int,
                         augment_every: int = 10, keyframe_config: KeyframeConfig | None = None,
                         neutral_quat: Any = DEFAULT_NEUTRAL_QUAT, all_images: bool = False,
                         cameras: Sequence[str] = ("front",)) -> Trajectory:
    """Loads one RLBench episode directory as a `Trajectory` (see `load_rlbench_demos`).

    Raises:
      ValueError: an unknown camera name (the valid ones listed), a pickle that cannot be read
        or lacks a field, a frame whose `misc` lacks a camera's calibration, or views of
        different sizes.
      FileNotFoundError: no low_dim_obs.pkl, a camera's `{camera}_rgb/` folder or a PNG missing.
    """
    cameras = check_cameras(cameras)
    episode_dir = os.fspath(episode_dir)
    pkl = os.path.join(episode_dir, "low_dim_obs.pkl")
    if not os.path.isfile(pkl):
        raise FileNotFoundError(f"RLBench episode {episode_dir!r} has no low_dim_obs.pkl.")
    for camera in cameras:
        folder = os.path.join(episode_dir, f"{camera}_rgb")
        if not os.path.isdir(folder):
            have = sorted(d for d in os.listdir(episode_dir) if d.endswith("_rgb"))
            raise FileNotFoundError(f"RLBench episode {episode_dir!r} has no folder {camera}_rgb/ for the "
                                    f"{camera} camera (it has {have}); record it with that camera, "
                                    "or read other cameras.")
    frames = read_low_dim_obs(pkl)
    gp = np.stack([np.asarray(_field(o, "gripper_pose", pkl, i), np.float64).reshape(7)
                   for i, o in enumerate(frames)])
    gripper_open = np.asarray([float(_field(o, "gripper_open", pkl, i))
                               for i, o in enumerate(frames)], np.float32)
    joint_vel = np.stack([np.asarray(_field(o, "joint_velocities", pkl, i), np.float64).reshape(-1)
                          for i, o in enumerate(frames)])
    positions, eulers = gripper_pose_to_euler(gp, neutral_quat)
    kf = discover_keyframes(positions, gripper_open, joint_vel,
                            keyframe_config if keyframe_config is not None else RLBENCH_KEYFRAMES)
    if not kf:
        raise ValueError(f"RLBench episode {episode_dir!r} has {len(frames)} frame(s): no keyframes.")
    image_frames = (np.arange(len(frames), dtype=np.int32) if all_images
                    else frames_to_render(len(frames), kf, augment_every))
    _misc_keys(frames, image_frames, cameras, pkl)
    images, intr, extr = [], [], []
    size = None
    for f in image_frames:
        views, k, pose = [], [], []
        for camera in cameras:
            png = os.path.join(episode_dir, f"{camera}_rgb", f"{f}.png")
            img = _read_png(png, episode_dir)
            if size is None:
                size = img.shape[:2]
            elif img.shape[:2] != size:
                raise ValueError(f"RLBench episode {episode_dir!r}: {png!r} is {img.shape[1]}x{img.shape[0]} "
                                 f"px, but {cameras[0]}_rgb/{int(image_frames[0])}.png is {size[1]}x{size[0]}; "
                                 "the cameras read together must share one image size.")
            cam = camera_from_misc(frames[f].misc, img.shape[1], img.shape[0], camera)
            views.append(img)
            k.append(np.asarray(cam.intrinsics))
            pose.append(np.asarray(cam.cam_to_world))  # this frame's pose: the wrist camera moves
        one = len(cameras) == 1
        images.append(views[0] if one else np.stack(views))
        intr.append(k[0] if one else np.stack(k))
        extr.append(pose[0] if one else np.stack(pose))
    h, w = size
    return Trajectory(positions=positions, eulers=eulers, gripper_open=gripper_open,
                      velocities=joint_vel, keyframes=np.asarray(kf, np.int32),
                      image_frames=np.asarray(image_frames, np.int32), images=np.stack(images),
                      camera=Camera(intrinsics=np.stack(intr), cam_to_world=np.stack(extr),
                                    width=w, height=h),
                      task=task, seed=int(episode))


def _episodes_dir(root: str | os.PathLike[str], task: str, variation: int) -> str:
    base = os.path.join(os.fspath(root), task, f"variation{int(variation)}", "episodes")
    if not os.path.isdir(base):
        raise FileNotFoundError(f"No RLBench episodes at {base!r} (expected "
                                "ROOT/TASK/variation{V}/episodes/episode{K}/).")
    return base


def list_rlbench_episodes(root: str | os.PathLike[str], task: str, variation: int = 0) -> list[int]:
    """The episode numbers K of ROOT/TASK/variation{V}/episodes/episode{K}/, in numeric order.

    Raises:
      FileNotFoundError: the folder is missing or holds no episode folders.
    """
    base = _episodes_dir(root, task, variation)
    found = [d for d in os.listdir(base) if d.startswith("episode") and d[7:].isdigit()]
    if not found:
        raise FileNotFoundError(f"No episode directories in {base!r}.")
    return sorted(int(d[7:]) for d in found)


def load_rlbench_demos(root: str | os.PathLike[str], task: str, variation: int = 0,
                       episodes: Sequence[int] | None = None, augment_every: int = 10,
                       keyframe_config: KeyframeConfig | None = None,
                       neutral_quat: Any = DEFAULT_NEUTRAL_QUAT, all_images: bool = False,
                       cameras: Sequence[str] = ("front",)) -> list[Trajectory]:
    """Loads RLBench demos from disk as `Trajectory`s, with keyframes discovered.

    Args:
      root: dataset root holding TASK/variation{V}/episodes/episode{K}/.
      task: task directory name (e.g. "reach_target").
      variation: variation number.
      episodes: episode numbers to load (default: all, in numeric order).
      augment_every: which frames get images (see `demos.frames_to_render`).
      keyframe_config: thresholds (default `RLBENCH_KEYFRAMES`).
      neutral_quat: (x, y, z, w) neutral gripper orientation for the relative Euler angles.
      all_images: decode every frame's PNG instead of only the needed ones.
      cameras: RLBench cameras to read, in view order, from `RLBENCH_CAMERAS` ("front",
        "left_shoulder", "right_shoulder", "overhead", "wrist"); each from its `{camera}_rgb/`
        folder, with its calibration at each frame from that frame's `misc`.

    Returns:
      One `Trajectory` per episode (seed = episode number): with one camera, images
      [M, H, W, 3] uint8 and a camera with intrinsics [M, 3, 3], cam_to_world [M, 4, 4]; with V
      cameras, images [M, V, H, W, 3] and intrinsics [M, V, 3, 3], cam_to_world [M, V, 4, 4]
      (the wrist camera's pose of each frame).

    Raises:
      ValueError: an unknown camera name (the valid ones listed), or a malformed episode.
      FileNotFoundError: a missing folder, pickle or image (named).
    """
    cameras = check_cameras(cameras)
    base = _episodes_dir(root, task, variation)
    if episodes is None:
        episodes = list_rlbench_episodes(root, task, variation)
    return [load_rlbench_episode(os.path.join(base, f"episode{k}"), task, k, augment_every,
                                 keyframe_config, neutral_quat, all_images, cameras) for k in episodes]
