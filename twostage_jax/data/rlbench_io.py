"""Reads RLBench's on-disk demonstrations without RLBench installed.

Layout written by RLBench's dataset generator:

    ROOT/TASK/variation{V}/episodes/episode{K}/front_rgb/{i}.png
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
`joint_velocities` and `misc['front_camera_intrinsics' / 'front_camera_extrinsics']`. The pose,
camera and Euler conventions come from the simulator-free `twostage_jax.data.rlbench_conventions`.

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
from twostage_jax.data.rlbench_conventions import camera_from_misc, gripper_pose_to_euler
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


def load_rlbench_episode(episode_dir: str | os.PathLike[str], task: str, episode: int,
                         augment_every: int = 10, keyframe_config: KeyframeConfig | None = None,
                         neutral_quat: Any = DEFAULT_NEUTRAL_QUAT, all_images: bool = False,
                         camera: str = "front") -> Trajectory:
    """Loads one RLBench episode directory as a `Trajectory` (see `load_rlbench_demos`)."""
    from PIL import Image

    episode_dir = os.fspath(episode_dir)
    pkl = os.path.join(episode_dir, "low_dim_obs.pkl")
    if not os.path.isfile(pkl):
        raise FileNotFoundError(f"RLBench episode {episode_dir!r} has no low_dim_obs.pkl.")
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
    images, intr, extr = [], [], []
    for f in image_frames:
        png = os.path.join(episode_dir, f"{camera}_rgb", f"{f}.png")
        if not os.path.isfile(png):
            raise FileNotFoundError(f"RLBench episode {episode_dir!r} lacks image {png!r}.")
        with Image.open(png) as im:
            img = np.asarray(im.convert("RGB"), np.uint8)
        images.append(img)
        cam = camera_from_misc(_field(frames[f], "misc", pkl, int(f)), img.shape[1], img.shape[0],
                               camera)
        intr.append(np.asarray(cam.intrinsics))
        extr.append(np.asarray(cam.cam_to_world))
    h, w = images[0].shape[:2]
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
                       neutral_quat: Any = DEFAULT_NEUTRAL_QUAT,
                       all_images: bool = False) -> list[Trajectory]:
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

    Returns:
      One `Trajectory` per episode (seed = episode number).
    """
    base = _episodes_dir(root, task, variation)
    if episodes is None:
        episodes = list_rlbench_episodes(root, task, variation)
    return [load_rlbench_episode(os.path.join(base, f"episode{k}"), task, k, augment_every,
                                 keyframe_config, neutral_quat, all_images) for k in episodes]
