"""The calibration file: each camera's intrinsics and pose, and the workspace bounds, as JSON.

Crop-by-projection needs to know where a world point lands in the image, so a dataset recorded
outside this library (e.g. a LeRobot dataset) comes with one small JSON file:

    {
      "format": "twostage_jax.calibration",
      "version": 1,
      "workspace": {"low": [x, y, z], "high": [x, y, z]},
      "cameras": {
        "observation.images.front": {
          "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
          "cam_to_world": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]],
          "width": 64,
          "height": 64
        }
      }
    }

Conventions (those of `twostage_jax.types.Camera`): `intrinsics` is K with positive focal
lengths and the principal point in continuous pixel coordinates (pixel (row i, column j) covers
[j, j+1) x [i, i+1)); `cam_to_world` is the camera's pose in the world (metres), camera axes x
right, y down, z forward along the optical axis (OpenCV's); `width` and `height` are the image
size in pixels the intrinsics belong to. The workspace bounds (metres, world frame) map positions
to the normalised action, -1 at `low` and +1 at `high`. Cameras are keyed by the image feature
they calibrate (for LeRobot, the video key); a dataset of several cameras has one entry per key.
A camera that moves (e.g. on the wrist) still needs its entry, for its intrinsics and image size:
its pose of each frame comes from the dataset (`LeRobotSpec.extrinsics_keys`), and the
`cam_to_world` here is not used for it. The file is plain JSON: reading it runs no code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from twostage_jax._io import atomic_open, read_json_file
from twostage_jax.types import Camera, Workspace

CALIBRATION_FORMAT = "twostage_jax.calibration"
"""The `format` entry of a calibration file."""

CALIBRATION_VERSION = 1
"""The `version` entry this library reads and writes."""


class CalibrationFileError(ValueError):
    """A calibration file is missing, not JSON, of another format or version, or inconsistent."""


class Calibration(NamedTuple):
    """A calibration file's content.

    Attributes:
      cameras: image key -> `Camera` (single: intrinsics [3, 3], cam_to_world [4, 4]).
      workspace: the position bounds of the actions.
      path: the file it was read from ("" when built in memory).
    """

    cameras: dict[str, Camera]
    workspace: Workspace
    path: str = ""

    def camera(self, key: str) -> Camera:
        """The camera of image feature `key`; a CalibrationFileError naming it when absent."""
        if key not in self.cameras:
            where = f" {self.path!r}" if self.path else ""
            raise CalibrationFileError(
                f"the calibration file{where} has no camera for image key {key!r} (cameras: "
                f"{sorted(self.cameras)}); crop-by-projection needs its intrinsics and "
                "cam_to_world: add an entry under \"cameras\".")
        return self.cameras[key]


def _matrix(where: str, value: Any, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError) as err:
        raise CalibrationFileError(f"{where} must be a {shape[0]}x{shape[1]} matrix of numbers; got "
                                   f"{value!r:.80}.") from err
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise CalibrationFileError(f"{where} must be a {shape[0]}x{shape[1]} matrix of finite "
                                   f"numbers; got shape {arr.shape}.")
    return arr


def _camera(where: str, entry: Any) -> Camera:
    if not isinstance(entry, dict):
        raise CalibrationFileError(f"{where} must be an object with intrinsics, cam_to_world, width, "
                                   f"height; got {type(entry).__name__}.")
    missing = [k for k in ("intrinsics", "cam_to_world", "width", "height") if k not in entry]
    if missing:
        raise CalibrationFileError(f"{where} lacks {missing} (needs intrinsics [3x3], cam_to_world "
                                   "[4x4], width, height).")
    k = _matrix(f"{where}.intrinsics", entry["intrinsics"], (3, 3))
    pose = _matrix(f"{where}.cam_to_world", entry["cam_to_world"], (4, 4))
    rot = pose[:3, :3]
    if not np.allclose(pose[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(
            rot.T @ rot, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0:
        raise CalibrationFileError(
            f"{where}.cam_to_world must be a rigid transform (a rotation with determinant +1 and a "
            f"translation, last row [0, 0, 0, 1]); got {pose.round(4).tolist()}.")
    for name in ("width", "height"):
        if isinstance(entry[name], bool) or not isinstance(entry[name], int) or entry[name] <= 0:
            raise CalibrationFileError(f"{where}.{name} must be a positive integer (pixels); got "
                                       f"{entry[name]!r}.")
    try:
        return Camera.create(k, pose, entry["width"], entry["height"])
    except ValueError as err:
        raise CalibrationFileError(f"{where}: {err}") from err


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Reads and checks a calibration file (the module docstring's format).

    Args:
      path: the JSON file.

    Returns:
      A `Calibration`.

    Raises:
      FileNotFoundError: no such file.
      CalibrationFileError: not JSON, another format or version, or a field that is missing or
        malformed (named in the message).
    """
    path = os.fspath(path)
    doc = read_json_file(path, "calibration file", CalibrationFileError)
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CalibrationFileError(f"calibration file {path!r} must be a JSON object with \"format\": "
                                   f"\"{CALIBRATION_FORMAT}\"; got format {got!r}.")
    if doc.get("version") != CALIBRATION_VERSION:
        raise CalibrationFileError(f"calibration file {path!r} has version {doc.get('version')!r}; "
                                   f"this library reads version {CALIBRATION_VERSION}.")
    ws = doc.get("workspace")
    if not isinstance(ws, dict) or "low" not in ws or "high" not in ws:
        raise CalibrationFileError(f"calibration file {path!r} needs \"workspace\": {{\"low\": [x, y, "
                                   f"z], \"high\": [x, y, z]}} (metres); got {ws!r:.80}.")
    try:
        workspace = Workspace.create(np.asarray(ws["low"], np.float64), np.asarray(ws["high"], np.float64))
    except (ValueError, TypeError) as err:
        raise CalibrationFileError(f"calibration file {path!r}, workspace: {err}") from err
    cams = doc.get("cameras")
    if not isinstance(cams, dict) or not cams:
        raise CalibrationFileError(f"calibration file {path!r} needs \"cameras\": an object mapping "
                                   f"each image key to its camera; got {cams!r:.80}.")
    cameras = {str(key): _camera(f"{path!r}: cameras[{key!r}]", entry) for key, entry in cams.items()}
    return Calibration(cameras=cameras, workspace=workspace, path=path)


def save_calibration(path: str | os.PathLike[str], cameras: Mapping[str, Camera],
                     workspace: Workspace) -> None:
    """Writes a calibration file atomically (the module docstring's format).

    Args:
      path: destination JSON file; its directory must exist.
      cameras: image key -> a single `Camera` (intrinsics [3, 3], cam_to_world [4, 4]).
      workspace: the position bounds.
    """
    entries = {}
    for key, cam in cameras.items():
        k, pose = np.asarray(cam.intrinsics, np.float64), np.asarray(cam.cam_to_world, np.float64)
        if k.shape != (3, 3) or pose.shape != (4, 4):
            raise ValueError(f"`cameras[{key!r}]` must be a single camera (intrinsics [3, 3], "
                             f"cam_to_world [4, 4]); got {k.shape} and {pose.shape}.")
        entries[str(key)] = {"intrinsics": k.tolist(), "cam_to_world": pose.tolist(),
                             "width": int(cam.width), "height": int(cam.height)}
    doc = {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION,
           "workspace": {"low": np.asarray(workspace.low, np.float64).tolist(),
                         "high": np.asarray(workspace.high, np.float64).tolist()},
           "cameras": entries}
    with atomic_open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
