"""Reads LeRobot datasets (format v3) as demonstrations: `Trajectory`s, then our `Dataset`.

LeRobot's v3 layout (codebase version "v3.0", written by `lerobot.datasets.LeRobotDataset`):

    ROOT/meta/info.json                          fps, features, data_path and video_path templates
    ROOT/meta/episodes/chunk-XXX/file-YYY.parquet one row per episode: episode_index, length,
                                                 data/chunk_index, data/file_index,
                                                 dataset_from_index, dataset_to_index,
                                                 videos/KEY/{chunk_index, file_index,
                                                 from_timestamp, to_timestamp}, tasks, stats/...
    ROOT/data/chunk-XXX/file-YYY.parquet         one row per frame, many episodes per file:
                                                 episode_index, frame_index, index, timestamp and
                                                 every non-video feature (fixed-size lists)
    ROOT/videos/KEY/chunk-XXX/file-YYY.mp4       the frames of a video feature, many episodes one
                                                 after another; frame i of an episode is at
                                                 from_timestamp + timestamp[i]

What we take from it, and how (`LeRobotSpec` names the features):
  * the images: the video features `image_keys` (e.g. ("observation.images.front",)), one per
    camera, decoded with PyAV as RGB uint8; only the frames the dataset needs (frame 0, every
    `augment_every`-th frame, the keyframes) unless `all_images=True`. One key gives [M, H, W, 3]
    images, V keys [M, V, H, W, 3] (view v is `image_keys[v]`; the videos share one size). Each
    camera's calibration comes from a calibration file (`twostage_jax.data.camera_file`), keyed
    by its image key. A camera that moves (e.g. on the wrist) names in `extrinsics_keys` a feature
    holding its pose at every frame: [4, 4] or [16] (row-major) camera-to-world matrices in the
    calibration file's conventions (metres, its world frame, camera axes x right, y down, z
    forward); the calibration file still gives its intrinsics and image size;
  * the end-effector pose: the feature `pose_key` (e.g. "observation.state"), whose components
    `pose_indices` hold the pose in the stated `pose_convention` (see `POSE_CONVENTIONS`, or a
    converter of your own): positions in metres in the calibration's world frame, orientations
    made relative to `neutral_quat` as for RLBench (extrinsic xyz Euler angles of
    R @ R_neutral^T; `twostage_jax.data.rlbench_conventions.gripper_pose_to_euler`);
  * the gripper state: component `gripper_index` of the feature `gripper_key` (default: the
    action feature `action_key`, i.e. the gripper command), open when > `gripper_open_above`.

Our actions are not the recorded action column: as for RLBench (ARM's keyframe actions), a
transition's action is the pose of the keyframe it leads to (`build_dataset`). Keyframes follow
`twostage_jax.data.keyframes` (a gripper change, the last frame, or a stop). LeRobot records no
joint velocities in general, so the stop rule reads the end-effector's linear speed, the
central difference of the positions times the fps (m/s per axis), against
`LEROBOT_KEYFRAMES.stop_threshold`; with `velocity_key` a recorded velocity feature is used
instead (then choose a threshold in its units).

Every input is checked before any frame is decoded: the keys, the pose and gripper components,
each camera's image size, the per-frame extrinsics (16 finite components forming a rigid
transform), each episode's row count, frame indices and global indices against the episode table,
and each video's length against the last timestamp it must hold. Each error names the file, the
episode and the field. Parquet is read with pyarrow and video with PyAV (the
`lerobot` extra: `pip install twostage_jax[lerobot]`), imported when a reader is called.
"""

from __future__ import annotations

import dataclasses
import math
import os
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from twostage_jax._checks import ConfigError
from twostage_jax._io import read_json_file
from twostage_jax.data.camera_file import Calibration, load_calibration
from twostage_jax.data.dataset import build_dataset
from twostage_jax.data.trajectory import Trajectory, frames_to_render
from twostage_jax.data.keyframes import KeyframeConfig, discover_keyframes
from twostage_jax.data.rlbench_conventions import gripper_pose_to_euler
from twostage_jax.types import Camera, Dataset, Workspace

LEROBOT_KEYFRAMES = KeyframeConfig(stop_threshold=0.02, refractory=4, min_distance=0.01)
"""Keyframe thresholds for LeRobot demos: the arm counts as stopped when every axis of the
end-effector's speed is below 2 cm/s, 4 frames refractory, and the paper's 1 cm close-keyframe
rule. The 2 cm/s is a choice (a deliberate pause of a teleoperated arm), not measured on recorded
LeRobot data: check the keyframes it finds on your demos, and pass another `KeyframeConfig` (or a
recorded velocity through `LeRobotSpec.velocity_key`) where it misses or adds pauses."""

POSE_CONVENTIONS = {
    "xyz_euler_xyz": 6,
    "xyz_quat_xyzw": 7,
    "xyz_quat_wxyz": 7,
    "xyz_rotvec": 6,
}
"""Pose conventions by name, and how many components each takes: position x, y, z (metres), then
extrinsic x-y-z Euler angles in radians (scipy's "xyz"), a quaternion (x, y, z, w) or (w, x, y, z),
or a rotation vector (axis times angle, radians)."""

PoseConverter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""`converter(values [T, D] float64) -> (positions [T, 3] metres, quaternions [T, 4] (x, y, z, w))`."""

_INDEX_COLUMNS = ("episode_index", "frame_index", "index", "timestamp")
_TEMPLATE_FIELDS = {"data_path": {"chunk_index", "file_index"},
                    "video_path": {"chunk_index", "file_index", "video_key"}}


@dataclasses.dataclass(frozen=True)
class LeRobotSpec:
    """Which features of a LeRobot dataset hold the images, the pose and the gripper.

    Attributes:
      image_keys: the video features of the cameras, in view order, e.g.
        ("observation.images.front",) or ("observation.images.front", "observation.images.wrist");
        one key gives single-camera trajectories (images [M, H, W, 3]).
      pose_key: the feature holding the end-effector pose, e.g. "observation.state".
      pose_convention: a name in `POSE_CONVENTIONS` (e.g. "xyz_euler_xyz"), or a `PoseConverter`
        of your own. There is no default: a wrong guess would silently train on wrong poses.
      action_key: the recorded action feature (default "action"); the gripper command comes from
        it unless `gripper_key` says otherwise.
      pose_indices: the components of `pose_key` that hold the pose, in the convention's order
        (default: the first 6 or 7, as the convention needs; with a converter, all of them).
      gripper_key: the feature holding the gripper state or command (default: `action_key`).
      gripper_index: its component (default -1, the last).
      gripper_open_above: the gripper counts as open where that component is > this value.
      neutral_quat: (x, y, z, w) the orientation whose Euler angles are 0 (e.g. the gripper
        pointing down); orientations are stored relative to it.
      velocity_key: optional feature of velocities for the stop rule (default: the end-effector's
        speed from the poses, m/s).
      extrinsics_keys: for each camera that moves, (image key, feature): the feature holds the
        camera's camera-to-world pose at every frame, [4, 4] or [16] (row-major), in the
        calibration file's conventions; the calibration file still gives its intrinsics. Given
        as pairs or a dict {image key: feature}; stored as a tuple of pairs. Cameras not named
        are fixed at their calibration file's `cam_to_world`.
    """

    image_keys: tuple[str, ...]
    pose_key: str
    pose_convention: str | PoseConverter
    action_key: str = "action"
    pose_indices: tuple[int, ...] | None = None
    gripper_key: str | None = None
    gripper_index: int = -1
    gripper_open_above: float = 0.0
    neutral_quat: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    velocity_key: str | None = None
    extrinsics_keys: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ConfigError:
            return ConfigError("LeRobotSpec", name, message)

        keys = self.image_keys
        if (isinstance(keys, str) or not isinstance(keys, (tuple, list)) or not keys
                or not all(isinstance(k, str) and k for k in keys)):
            raise bad("image_keys", "must be a non-empty tuple of video feature names, e.g. "
                      f"('observation.images.front',); got {keys!r}.")
        if len(set(keys)) != len(keys):
            raise bad("image_keys", f"names a feature twice; got {list(keys)}.")
        object.__setattr__(self, "image_keys", tuple(keys))
        pairs = self.extrinsics_keys
        if isinstance(pairs, Mapping):
            pairs = tuple(pairs.items())
        if (isinstance(pairs, str) or not isinstance(pairs, (tuple, list)) or not all(
                isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) and x for x in p)
                for p in pairs)):
            raise bad("extrinsics_keys", "must be (image key, feature) pairs or a dict {image key: "
                      "feature} of names, e.g. {'observation.images.wrist': 'observation.wrist_pose'}; "
                      f"got {self.extrinsics_keys!r}.")
        pairs = tuple((str(k), str(f)) for k, f in pairs)
        named = [k for k, _ in pairs]
        if len(set(named)) != len(named) or any(k not in keys for k in named):
            raise bad("extrinsics_keys", f"must name each moving camera once, by one of image_keys "
                      f"{list(keys)}; got {[list(p) for p in pairs]}.")
        object.__setattr__(self, "extrinsics_keys", pairs)
        for name in ("pose_key", "action_key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, f"must be a feature name; got {getattr(self, name)!r}.")
        for name in ("gripper_key", "velocity_key"):
            if getattr(self, name) is not None and (not isinstance(getattr(self, name), str)
                                                    or not getattr(self, name)):
                raise bad(name, f"must be a feature name, or None; got {getattr(self, name)!r}.")
        conv = self.pose_convention
        if isinstance(conv, str):
            if conv not in POSE_CONVENTIONS:
                raise bad("pose_convention", f"must be one of {sorted(POSE_CONVENTIONS)} or a converter "
                          f"function; got {conv!r}.")
        elif not callable(conv):
            raise bad("pose_convention", f"must be one of {sorted(POSE_CONVENTIONS)} or a converter values "
                      f"[T, D] -> (positions [T, 3], quaternions xyzw [T, 4]); got {type(conv).__name__}.")
        if self.pose_indices is not None:
            idx = self.pose_indices
            if (not isinstance(idx, (tuple, list)) or not idx
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx)):
                raise bad("pose_indices", f"must be a tuple of ints; got {self.pose_indices!r}.")
            if isinstance(conv, str) and len(idx) != POSE_CONVENTIONS[conv]:
                raise bad("pose_indices", f"has {len(idx)} entries; pose_convention {conv!r} takes "
                          f"{POSE_CONVENTIONS[conv]}.")
        if isinstance(self.gripper_index, bool) or not isinstance(self.gripper_index, int):
            raise bad("gripper_index", f"must be an int; got {self.gripper_index!r}.")
        if (isinstance(self.gripper_open_above, bool) or not isinstance(self.gripper_open_above, (int, float))
                or not math.isfinite(self.gripper_open_above)):
            raise bad("gripper_open_above", f"must be a finite number; got {self.gripper_open_above!r}.")
        q = self.neutral_quat
        if (not isinstance(q, (tuple, list)) or len(q) != 4
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in q)
                or not math.fsum(float(v) ** 2 for v in q) > 1e-12):
            raise bad("neutral_quat", f"must be a non-zero quaternion (x, y, z, w) of 4 finite numbers; got {q!r}.")

    @property
    def gripper_feature(self) -> str:
        """The feature the gripper state is read from."""
        return self.gripper_key if self.gripper_key is not None else self.action_key


class LeRobotEpisode(NamedTuple):
    """One episode's recorded columns (`read_lerobot_episode`).

    Attributes:
      index: the episode index.
      columns: feature name -> [T, D] array as stored (float32 for float features).
      timestamps: [T] float64 seconds from the episode's start (the `timestamp` column).
      task: the episode's first task string ("" if none).
    """

    index: int
    columns: dict[str, np.ndarray]
    timestamps: np.ndarray
    task: str


def _imports() -> tuple[Any, Any, Any]:
    try:
        import av
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise ImportError(f"Reading LeRobot datasets needs pyarrow and PyAV (`av`), the `lerobot` "
                          f"extra: pip install 'twostage_jax[lerobot]' ({err}).") from err
    return pyarrow, pyarrow.parquet, av


class _Info(NamedTuple):
    root: str
    fps: float
    features: dict[str, Any]
    data_path: str
    video_path: str | None


def _check_template(path: str, name: str, template: Any) -> str:
    if not isinstance(template, str):
        raise ValueError(f"{path!r}: `{name}` must be a path template string; got {template!r}.")
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    if set(fields) - _TEMPLATE_FIELDS[name]:
        raise ValueError(f"{path!r}: `{name}` {template!r} may only use the fields "
                         f"{sorted(_TEMPLATE_FIELDS[name])}; got {fields}.")
    return template


def _read_info(root: str) -> _Info:
    """meta/info.json, checked."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"No LeRobot dataset at {root!r} (expected a folder with meta/info.json).")
    path = os.path.join(root, "meta", "info.json")
    info = read_json_file(path, "LeRobot dataset info (meta/info.json)")
    if not isinstance(info, dict):
        raise ValueError(f"{path!r} must hold a JSON object; got {type(info).__name__}.")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise ValueError(f"{path!r} has codebase_version {version!r}; this reader reads LeRobot's "
                         "v3 format (\"v3.0\"). Convert older datasets with LeRobot's "
                         "convert_dataset_v21_to_v30 script.")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"{path!r}: `fps` must be a positive number; got {fps!r}.")
    features = info.get("features")
    if not isinstance(features, dict) or not all(isinstance(v, dict) for v in features.values()):
        raise ValueError(f"{path!r}: `features` must map each feature name to an object.")
    data_path = _check_template(path, "data_path", info.get("data_path"))
    video_path = info.get("video_path")
    if video_path is not None:
        video_path = _check_template(path, "video_path", video_path)
    return _Info(root, float(fps), features, data_path, video_path)


def _parquet(pq: Any, file: str, what: str) -> Any:
    """`pq.ParquetFile(file)`, or a ValueError naming the file (pyarrow's errors name none)."""
    try:
        return pq.ParquetFile(file)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {file!r} cannot be read: it is truncated or corrupted ({e}).") from e


def _read_episode_table(root: str, required: Sequence[str],
                        optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The episode table's `required` (and present `optional`) columns, ordered by episode_index."""
    _, pq, _ = _imports()
    folder = os.path.join(root, "meta", "episodes")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"{root!r} has no episode table (meta/episodes/chunk-*/file-*.parquet).")
    readers = [_parquet(pq, file, "episode table") for file in files]  # (pq.read_table imports pyarrow.dataset: 2 s)
    schemas = [r.schema_arrow.names for r in readers]
    for file, names in zip(files, schemas):
        missing = [c for c in required if c not in names]
        if missing:
            raise ValueError(f"episode table {file!r} lacks the column(s) {missing} (has "
                             f"{[n for n in names if not n.startswith('stats/')]}).")
    columns = list(required) + [c for c in optional if all(c in names for names in schemas)]
    parts: dict[str, list[Any]] = {c: [] for c in columns}
    for reader in readers:
        table = reader.read(columns=columns)
        for c in columns:
            parts[c] += table.column(c).to_pylist()
    order = np.argsort(np.asarray(parts["episode_index"], np.int64), kind="stable")
    return {c: (np.asarray([parts[c][i] for i in order]) if c != "tasks"
                else [parts[c][i] for i in order]) for c in columns}


def _feature_size(features: dict[str, Any], key: str) -> int:
    shape = features[key].get("shape", [1])
    return int(np.prod(shape)) if isinstance(shape, (list, tuple)) else 1


def _video_size(features: dict[str, Any], key: str) -> tuple[int, int]:
    """(height, width) of a video feature, from its `info` or its shape and names."""
    feat = features[key]
    extra = feat.get("info") or {}
    if "video.height" in extra and "video.width" in extra:
        return int(extra["video.height"]), int(extra["video.width"])
    shape, names = list(feat.get("shape", [])), [str(n).lower() for n in feat.get("names") or []]
    if len(shape) == 3 and len(names) == 3 and {"height", "width"} <= set(names):
        return int(shape[names.index("height")]), int(shape[names.index("width")])
    if len(shape) == 3:  # LeRobot writes (H, W, C) or (C, H, W)
        return (int(shape[1]), int(shape[2])) if shape[0] == 3 else (int(shape[0]), int(shape[1]))
    raise ValueError(f"video feature {key!r} has no readable image size (shape {shape}, names {names}).")


EXTRINSICS_SIZE = 16
"""Components of a per-frame extrinsics feature: a 4x4 camera-to-world matrix, [4, 4] or [16]."""


def _check_keys(info: _Info, spec: LeRobotSpec, cameras: Mapping[str, Camera] | None) -> tuple[int, ...]:
    """Checks every key of `spec` against info.json (and, given, each image key's camera: there,
    single, calibrated for its video's size); returns the pose components."""
    feats = info.features
    path = os.path.join(info.root, "meta", "info.json")
    have = sorted(k for k in feats if k not in _INDEX_COLUMNS and k != "task_index")
    named = [("image_keys", k) for k in spec.image_keys] + [
        ("pose_key", spec.pose_key), ("action_key", spec.action_key), ("gripper_key", spec.gripper_key),
        ("velocity_key", spec.velocity_key)] + [("extrinsics_keys", f) for _, f in spec.extrinsics_keys]
    for field, key in named:
        if key is not None and key not in feats:
            raise ValueError(f"LeRobotSpec.{field} {key!r} is not a feature of {path!r}; its features "
                             f"are {have}.")
    for key in spec.image_keys:
        if feats[key].get("dtype") != "video":
            raise ValueError(f"LeRobotSpec.image_keys {key!r} has dtype {feats[key].get('dtype')!r} in "
                             f"{path!r}; this reader decodes video features (dtype \"video\").")
    if info.video_path is None:
        raise ValueError(f"{path!r} has no `video_path` template, so {spec.image_keys[0]!r} cannot be found.")
    sizes = {key: _video_size(feats, key) for key in spec.image_keys}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"LeRobotSpec.image_keys: the cameras' videos must share one size, but "
                         f"{', '.join(f'{k!r} is {w}x{h}' for k, (h, w) in sizes.items())} ({path!r}).")
    for field, key in (("pose_key", spec.pose_key), ("gripper_key", spec.gripper_feature),
                       ("velocity_key", spec.velocity_key),
                       *(("extrinsics_keys", f) for _, f in spec.extrinsics_keys)):
        if key is not None and feats[key].get("dtype") in ("video", "image", "string"):
            raise ValueError(f"LeRobotSpec.{field} {key!r} must be a numeric feature; it has dtype "
                             f"{feats[key].get('dtype')!r}.")
    for image_key, key in spec.extrinsics_keys:
        if _feature_size(feats, key) != EXTRINSICS_SIZE:
            raise ValueError(f"LeRobotSpec.extrinsics_keys {key!r} (the pose of camera {image_key!r}) must hold "
                             f"a 4x4 camera-to-world matrix per frame, shape [4, 4] or [16]; {path!r} gives "
                             f"shape {feats[key].get('shape')}.")
    size = _feature_size(feats, spec.pose_key)
    conv = spec.pose_convention
    if spec.pose_indices is not None:
        idx = tuple(spec.pose_indices)
    elif isinstance(conv, str):
        idx = tuple(range(POSE_CONVENTIONS[conv]))
    else:
        idx = tuple(range(size))
    if any(not -size <= i < size for i in idx):
        raise ValueError(f"LeRobotSpec.pose_indices {idx} fall outside {spec.pose_key!r}, which has "
                         f"{size} components.")
    g_size = _feature_size(feats, spec.gripper_feature)
    if not -g_size <= spec.gripper_index < g_size:
        raise ValueError(f"LeRobotSpec.gripper_index {spec.gripper_index} falls outside "
                         f"{spec.gripper_feature!r}, which has {g_size} components.")
    if cameras is not None:
        for key in spec.image_keys:
            if key not in cameras:
                raise ValueError(f"`cameras` has no camera for image key {key!r} (LeRobotSpec.image_keys); it "
                                 f"has {sorted(cameras)}.")
            camera = cameras[key]
            if not isinstance(camera, Camera) or np.shape(camera.intrinsics) != (3, 3):
                raise ValueError(f"`cameras[{key!r}]` must be the single calibrated Camera of {key!r} "
                                 f"(intrinsics [3, 3]); got {type(camera).__name__}.")
            h, w = sizes[key]
            if (camera.height, camera.width) != (h, w):
                raise ValueError(f"the camera of {key!r} is calibrated for {camera.width}x"
                                 f"{camera.height} pixels, but its video is {w}x{h} ({path!r}).")
    return idx


def _column(pa: Any, table: Any, key: str, where: str) -> np.ndarray:
    """[N, D] numpy array of a scalar or fixed-length list column."""
    import pyarrow.compute as pc

    col = table.column(key).combine_chunks()
    n = len(col)
    if col.null_count:
        raise ValueError(f"{where}: column {key!r} has {col.null_count} missing value(s).")

    def is_list(t: Any) -> bool:
        return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)

    flat = col.storage if isinstance(col.type, pa.BaseExtensionType) else col  # (Hugging Face's Array2D)
    while is_list(flat.type):  # a [D] feature is a list per row; a [4, 4] one a list of lists
        lengths = np.asarray(pc.list_value_length(flat))
        if lengths.size and np.any(lengths != lengths[0]):
            raise ValueError(f"{where}: column {key!r} has rows of different lengths "
                             f"{sorted(set(lengths.tolist()))}.")
        flat = flat.flatten()
    return flat.to_numpy(zero_copy_only=False).reshape(n, -1)


class _Plan(NamedTuple):
    episode: LeRobotEpisode
    videos: dict[str, tuple[str, float]]  # image key -> (its video file, the episode's start in it, s)


_TABLE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index",
                  "dataset_from_index", "dataset_to_index")


def _video_columns(key: str) -> tuple[str, ...]:
    pre = f"videos/{key}/"
    return tuple(pre + c for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"))


def _episode_row(root: str, table: dict[str, Any], episode: int) -> int:
    rows = np.nonzero(table["episode_index"] == episode)[0]
    if rows.size != 1:
        raise ValueError(f"episode {episode} is {'not in' if rows.size == 0 else 'repeated in'} the "
                         f"episode table of {root!r} (episodes: {table['episode_index'].tolist()[:20]}).")
    return int(rows[0])


def _open_video(av: Any, video: str) -> Any:
    """The opened container of an MP4 file holding a video stream; a ValueError naming the file."""
    try:
        container = av.open(video)
    except av.error.FFmpegError as err:
        raise ValueError(f"{video!r} cannot be read as a video: {err}") from err
    if not container.streams.video:
        container.close()
        raise ValueError(f"{video!r} holds no video stream.")
    return container


def _video_end(av: Any, video: str) -> float | None:
    """Seconds at which a video's stream ends (from its header), or None if it does not say."""
    with _open_video(av, video) as container:
        stream = container.streams.video[0]
        if stream.duration:
            end = float(stream.duration * stream.time_base)
            return end + (float(stream.start_time * stream.time_base) if stream.start_time else 0.0)
        return container.duration / 1e6 if container.duration else None


def _plan_episodes(info: _Info, table: dict[str, Any], episodes: Sequence[int], keys: Sequence[str],
                   video_keys: Sequence[str]) -> list[_Plan]:
    """Reads and checks the columns of every episode, and the video lengths, before decoding."""
    pa, pq, av = _imports()
    root = info.root
    files: dict[str, Any] = {}
    ends: dict[str, float | None] = {}
    plans = []
    for episode in episodes:
        row = _episode_row(root, table, episode)
        length = int(table["length"][row])
        if length < 1:
            raise ValueError(f"episode {episode} of {root!r} has length {length} in the episode table; "
                             "an episode needs frames.")
        start, stop = int(table["dataset_from_index"][row]), int(table["dataset_to_index"][row])
        if stop - start != length:
            raise ValueError(f"episode {episode} of {root!r}: the episode table says length {length} but "
                             f"dataset_from_index..dataset_to_index spans {stop - start} frames.")
        rel = info.data_path.format(chunk_index=int(table["data/chunk_index"][row]),
                                    file_index=int(table["data/file_index"][row]))
        file = os.path.join(root, rel)
        if file not in files:
            if not os.path.isfile(file):
                raise FileNotFoundError(f"episode {episode} of {root!r}: its data file {rel!r} is missing.")
            reader = _parquet(pq, file, f"data file of episode {episode}")
            names = reader.schema_arrow.names
            missing = [k for k in (*_INDEX_COLUMNS, *keys) if k not in names]
            if missing:
                raise ValueError(f"data file {file!r} lacks the column(s) {missing}.")
            try:
                files[file] = reader.read(columns=list(dict.fromkeys((*_INDEX_COLUMNS, *keys))))
            except (OSError, ValueError) as e:  # pyarrow's errors name no file
                raise ValueError(f"data file of episode {episode} {file!r} cannot be read: it is truncated "
                                 f"or corrupted ({e}).") from e
        data = files[file]
        mask = np.asarray(data.column("episode_index").to_numpy(zero_copy_only=False)) == episode
        rows = data.filter(pa.array(mask))
        where = f"episode {episode} in {file!r}"
        if rows.num_rows != length:
            raise ValueError(f"{where}: {rows.num_rows} parquet rows, but the episode table says "
                             f"length {length}.")
        frame_index = _column(pa, rows, "frame_index", where)[:, 0]
        index = _column(pa, rows, "index", where)[:, 0]
        if not np.array_equal(frame_index, np.arange(length)):
            raise ValueError(f"{where}: frame_index must run 0..{length - 1} in order; got "
                             f"{frame_index[:10].tolist()}...")
        if not np.array_equal(index, np.arange(start, stop)):
            raise ValueError(f"{where}: index must run {start}..{stop - 1} (dataset_from_index.."
                             f"dataset_to_index); got {index[:3].tolist()}...{index[-3:].tolist()}.")
        ts = _column(pa, rows, "timestamp", where)[:, 0].astype(np.float64)
        if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
            raise ValueError(f"{where}: timestamp must increase frame by frame; got {ts[:5].tolist()}...")
        tasks = table["tasks"][row] if "tasks" in table else None
        task = str(tasks[0]) if isinstance(tasks, (list, tuple)) and tasks else ""
        ep = LeRobotEpisode(index=int(episode), columns={k: _column(pa, rows, k, where) for k in keys},
                            timestamps=ts, task=task)
        videos = {}
        for video_key in video_keys:
            c_chunk, c_file, c_from, c_to = _video_columns(video_key)
            rel = info.video_path.format(video_key=video_key, chunk_index=int(table[c_chunk][row]),
                                         file_index=int(table[c_file][row]))
            video = os.path.join(root, rel)
            from_ts, to_ts = float(table[c_from][row]), float(table[c_to][row])
            if not os.path.isfile(video):
                raise FileNotFoundError(f"episode {episode} of {root!r}: its video {rel!r} is missing.")
            last = from_ts + ts[-1]
            if to_ts < last + 0.5 / info.fps:
                raise ValueError(f"episode {episode} of {root!r}: its segment of {video_key!r} spans "
                                 f"{from_ts:.4g}..{to_ts:.4g} s, too short for its {length} frames (the "
                                 f"last at {last:.4g} s).")
            if video not in ends:
                ends[video] = _video_end(av, video)
            end = ends[video]
            if end is not None and last > end - 0.5 / info.fps:
                raise ValueError(f"episode {episode} of {root!r} needs a frame of {video_key!r} at "
                                 f"{last:.4g} s (its frame {length - 1}), but {video!r} ends at {end:.4g} s "
                                 f"(about {int(round(end * info.fps))} frames at {info.fps:g} fps): the "
                                 "video is shorter than its index.")
            videos[video_key] = (video, from_ts)
        plans.append(_Plan(ep, videos))
    return plans


def _decode(av: Any, plan: _Plan, frames: np.ndarray, fps: float, size: tuple[int, int],
            key: str) -> np.ndarray:
    """[M, H, W, 3] uint8: the episode's `frames` of video feature `key`, each the decoded frame
    within half a frame period of from_timestamp + timestamp[frame]."""
    video, from_ts = plan.videos[key]
    want = from_ts + plan.episode.timestamps[frames]
    out: list[np.ndarray | None] = [None] * len(frames)
    tol = 0.5 / fps
    last = None
    with _open_video(av, video) as container:
        stream = container.streams.video[0]
        try:
            if from_ts > 0:  # to the key frame at or before the episode's first frame
                container.seek(int(from_ts / stream.time_base), stream=stream, backward=True,
                               any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                last = t
                if t > want[-1] + tol:
                    break
                j = int(np.argmin(np.abs(want - t)))
                if abs(want[j] - t) < tol and out[j] is None:
                    img = frame.to_ndarray(format="rgb24")
                    if img.shape[:2] != size:
                        raise ValueError(f"{video!r}: frames of {key!r} are {img.shape[1]}x"
                                         f"{img.shape[0]}, but info.json says {size[1]}x{size[0]}.")
                    out[j] = img
        except av.error.FFmpegError as err:
            raise ValueError(f"episode {plan.episode.index}: decoding {video!r} failed: {err}") from err
    missing = [j for j, img in enumerate(out) if img is None]
    if missing:
        raise ValueError(f"episode {plan.episode.index}: {video!r} has no frame of {key!r} for "
                         f"frame(s) {[int(frames[j]) for j in missing][:10]} (the first at "
                         f"{want[missing[0]]:.4g} s); its last decoded frame is at {last} s: the video "
                         "is shorter than its index.")
    return np.stack(out).astype(np.uint8)


def lerobot_pose(values: Any, convention: str | PoseConverter) -> tuple[np.ndarray, np.ndarray]:
    """Poses in a named convention (or a converter's) as positions and (x, y, z, w) quaternions.

    Args:
      values: [T, D] pose components in the convention's order (`POSE_CONVENTIONS`).
      convention: a name in `POSE_CONVENTIONS`, or a `PoseConverter`.

    Returns:
      (positions [T, 3] float64, quaternions [T, 4] float64 (x, y, z, w)).
    """
    from scipy.spatial.transform import Rotation

    v = np.asarray(values, np.float64)
    if v.ndim != 2:
        raise ValueError(f"`values` must be [T, D] poses; got shape {v.shape}.")
    if not isinstance(convention, str):
        out = convention(v)
        if not isinstance(out, tuple) or len(out) != 2:
            raise ValueError(f"the pose converter {getattr(convention, '__qualname__', convention)!r} must "
                             "return (positions [T, 3], quaternions [T, 4]); got "
                             f"{type(out).__name__}.")
        pos, quat = (np.asarray(x, np.float64) for x in out)
        if pos.shape != (v.shape[0], 3) or quat.shape != (v.shape[0], 4):
            raise ValueError(f"the pose converter {getattr(convention, '__qualname__', convention)!r} must "
                             f"return positions [{v.shape[0]}, 3] and quaternions [{v.shape[0]}, 4]; got "
                             f"{pos.shape} and {quat.shape}.")
        return pos, quat
    need = POSE_CONVENTIONS.get(convention)
    if need is None:
        raise ValueError(f"`convention` must be one of {sorted(POSE_CONVENTIONS)}; got {convention!r}.")
    if v.shape[1] != need:
        raise ValueError(f"pose convention {convention!r} takes {need} components; got {v.shape[1]}.")
    pos, rest = v[:, :3], v[:, 3:]
    _check_orientations(rest, convention)
    if convention == "xyz_euler_xyz":
        rot = Rotation.from_euler("xyz", rest)
    elif convention == "xyz_rotvec":
        rot = Rotation.from_rotvec(rest)
    else:
        rot = Rotation.from_quat(rest if convention == "xyz_quat_xyzw" else rest[:, [1, 2, 3, 0]])
    return pos, rot.as_quat()


QUAT_NORM_TOLERANCE = 0.01
"""How far a stored quaternion's norm may be from 1 (float32 storage and rounding stay far below)."""


def _check_orientations(rest: np.ndarray, convention: str) -> None:
    """Refuses orientation components that cannot be in `convention`: quaternions whose norm is
    not 1, Euler angles beyond pi or a rotation vector beyond 2 pi (degrees, or another
    convention), naming the convention and what the values look like."""
    if not np.all(np.isfinite(rest)):
        raise ValueError(f"pose convention {convention!r}: the orientation components must be finite; "
                         "got NaN or inf.")
    if convention.startswith("xyz_quat"):
        norms = np.linalg.norm(rest, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > QUAT_NORM_TOLERANCE)
        if bad.size:
            looks = ("; the first three look like angles in radians (xyz_euler_xyz or xyz_rotvec, "
                     "with config.data.pose_indices naming 6 components)"
                     if np.all(np.abs(rest[:, :3]) <= np.pi + 1e-3) else "")
            raise ValueError(f"pose convention {convention!r}: the quaternions must have unit norm (within "
                             f"{QUAT_NORM_TOLERANCE}); {bad.size} of {len(norms)} do not (e.g. norm "
                             f"{norms[bad[0]]:.3g} at frame {int(bad[0])}){looks}.")
    else:
        limit = np.pi if convention == "xyz_euler_xyz" else 2 * np.pi
        size = np.abs(rest).max(axis=1) if convention == "xyz_euler_xyz" else np.linalg.norm(rest, axis=1)
        bad = np.flatnonzero(size > limit + 1e-3)
        if bad.size:
            what = "Euler angles" if convention == "xyz_euler_xyz" else "rotation vectors' angles"
            looks = ("; they look like degrees" if np.all(np.abs(rest) <= 360.0 + 1e-3) else "")
            raise ValueError(f"pose convention {convention!r}: {what} must be radians within "
                             f"[-{limit:.4g}, {limit:.4g}]; {bad.size} frame(s) are not (e.g. "
                             f"{np.round(rest[bad[0]], 3).tolist()} at frame {int(bad[0])}){looks}.")


def read_lerobot_episode(root: str | os.PathLike[str], episode: int,
                         keys: Sequence[str]) -> LeRobotEpisode:
    """One episode's recorded columns, exactly as stored, after the length checks.

    Args:
      root: the dataset folder (holding meta/info.json).
      episode: the episode index.
      keys: non-video features to read, e.g. ("observation.state", "action").

    Returns:
      A `LeRobotEpisode` with columns [T, D].
    """
    info = _read_info(os.fspath(root))
    for key in keys:
        if key not in info.features:
            raise ValueError(f"{key!r} is not a feature of {os.path.join(info.root, 'meta', 'info.json')!r}; "
                             f"its features are {sorted(info.features)}.")
    table = _read_episode_table(info.root, _TABLE_COLUMNS, ("tasks",))
    return _plan_episodes(info, table, [int(episode)], list(keys), ())[0].episode


class _Prepared(NamedTuple):
    info: _Info
    plan: _Plan
    positions: np.ndarray
    eulers: np.ndarray
    gripper_open: np.ndarray
    velocities: np.ndarray
    keyframes: list[int]
    extrinsics: dict[str, np.ndarray]  # moving camera's image key -> [T, 4, 4] float32 cam_to_world


RIGID_TOLERANCE = 1e-4
"""How far a per-frame camera pose's rotation may be from orthonormal (R^T R = I, per entry); its
last row must be [0, 0, 0, 1] within 1e-6. float32 storage stays far below both."""


def _check_extrinsics(values: np.ndarray, key: str, image_key: str, where: str) -> np.ndarray:
    """[T, 16] stored poses -> [T, 4, 4] float32 camera-to-world matrices (row-major), or a
    ValueError naming the feature, the camera, the episode and the first bad frame."""
    what = f"{where}: LeRobotSpec.extrinsics_keys {key!r} (the pose of camera {image_key!r})"
    bad = np.flatnonzero(~np.all(np.isfinite(values), axis=1))
    if bad.size:
        raise ValueError(f"{what} holds NaN or inf at {bad.size} frame(s) (the first: frame {int(bad[0])}).")
    poses = values.astype(np.float64).reshape(-1, 4, 4)
    rot = poses[:, :3, :3]
    err = np.abs(np.einsum("tji,tjk->tik", rot, rot) - np.eye(3)).max(axis=(1, 2))
    last = np.abs(poses[:, 3] - [0.0, 0.0, 0.0, 1.0]).max(axis=1)
    bad = np.flatnonzero((err > RIGID_TOLERANCE) | (last > 1e-6) | (np.linalg.det(rot) < 0))
    if bad.size:
        raise ValueError(f"{what} must hold rigid camera-to-world transforms (a rotation with determinant "
                         f"+1 and a translation, last row [0, 0, 0, 1], row-major); {bad.size} frame(s) are "
                         f"not (the first: frame {int(bad[0])}, {poses[bad[0]].round(4).tolist()}).")
    return poses.astype(np.float32)


def _prepare(root: str | os.PathLike[str], spec: LeRobotSpec, cameras: Mapping[str, Camera],
             episodes: Sequence[int] | None, keyframe_config: KeyframeConfig | None,
             workspace: Workspace | None) -> list[_Prepared]:
    """Every check of `load_lerobot_demos`, and the poses and keyframes, without decoding."""
    if not isinstance(spec, LeRobotSpec):
        raise TypeError(f"`spec` must be a LeRobotSpec; got {type(spec).__name__}.")
    if not isinstance(cameras, Mapping):
        raise TypeError(f"`cameras` must map each of LeRobotSpec.image_keys {list(spec.image_keys)} to its "
                        f"calibrated Camera (e.g. load_calibration(path).cameras); got {type(cameras).__name__}.")
    info = _read_info(os.fspath(root))
    pose_idx = _check_keys(info, spec, cameras)
    columns = tuple(c for key in spec.image_keys for c in _video_columns(key))
    try:
        table = _read_episode_table(info.root, _TABLE_COLUMNS + columns, ("tasks",))
    except ValueError as err:
        if "lacks the column" not in str(err):  # e.g. a truncated file: its own message says it
            raise
        missing = [k for k in spec.image_keys if f"videos/{k}/" in str(err)]
        raise ValueError(f"{err} (needed for image key {(missing or list(spec.image_keys))[0]!r})") from err
    wanted = table["episode_index"].tolist() if episodes is None else [int(e) for e in episodes]
    keys = list(dict.fromkeys(k for k in (spec.pose_key, spec.action_key, spec.gripper_feature,
                                          spec.velocity_key, *(f for _, f in spec.extrinsics_keys))
                              if k is not None))
    plans = _plan_episodes(info, table, wanted, keys, spec.image_keys)
    cfg = keyframe_config if keyframe_config is not None else LEROBOT_KEYFRAMES
    prepared = []
    for plan in plans:  # every check of every episode before any frame is decoded
        ep = plan.episode
        where = f"episode {ep.index} of {info.root!r}"
        values = ep.columns[spec.pose_key][:, list(pose_idx)].astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where}: {spec.pose_key!r} holds NaN or inf.")
        pos, quat = lerobot_pose(values, spec.pose_convention)
        positions, eulers = gripper_pose_to_euler(np.concatenate([pos, quat], axis=1), spec.neutral_quat)
        if workspace is not None:
            check_in_workspace(positions, workspace, f"{where}: {spec.pose_key!r}")
        grip = ep.columns[spec.gripper_feature][:, spec.gripper_index].astype(np.float64)
        if not np.all(np.isfinite(grip)):
            raise ValueError(f"{where}: {spec.gripper_feature!r} holds NaN or inf.")
        gripper_open = (grip > spec.gripper_open_above).astype(np.float32)
        if spec.velocity_key is not None:
            velocities = ep.columns[spec.velocity_key].astype(np.float64)
        else:
            velocities = (np.gradient(positions, axis=0) * info.fps if len(positions) > 1
                          else np.zeros_like(positions))
        extrinsics = {image_key: _check_extrinsics(ep.columns[key], key, image_key, where)
                      for image_key, key in spec.extrinsics_keys}
        kf = discover_keyframes(positions, gripper_open, velocities, cfg)
        if not kf:
            raise ValueError(f"{where} has {len(positions)} frame(s): no keyframes (an episode needs "
                             "2 or more).")
        prepared.append(_Prepared(info, plan, positions, eulers, gripper_open, velocities, kf, extrinsics))
    return prepared


def load_lerobot_demos(root: str | os.PathLike[str], spec: LeRobotSpec, cameras: Mapping[str, Camera],
                       episodes: Sequence[int] | None = None, augment_every: int = 10,
                       keyframe_config: KeyframeConfig | None = None, all_images: bool = False,
                       workspace: Workspace | None = None) -> list[Trajectory]:
    """Reads LeRobot v3 episodes as `Trajectory`s with keyframes discovered (module docstring).

    Args:
      root: the dataset folder (holding meta/info.json).
      spec: which features hold the images, the pose and the gripper, and their conventions.
      cameras: image key -> its single calibrated `Camera` (intrinsics [3, 3], cam_to_world
        [4, 4]) at the video's resolution, for every key of `spec.image_keys`, e.g.
        `load_calibration(path).cameras`. A camera with a `spec.extrinsics_keys` feature takes
        its pose of each frame from that feature instead of its `cam_to_world`.
      episodes: episode indices to read (default: all, in order).
      augment_every: which frames get images (`demos.frames_to_render`).
      keyframe_config: thresholds (default `LEROBOT_KEYFRAMES`).
      all_images: decode every frame instead of only those the dataset needs.
      workspace: if given, every position must lie inside it (checked before decoding; a
        position outside would saturate the normalised pose).

    Returns:
      One `Trajectory` per episode (seed = the episode index, task = its first task string).
      With one image key: images [M, H, W, 3] uint8 and a camera with intrinsics [M, 3, 3],
      cam_to_world [M, 4, 4] (float32, one per image); with V keys: images [M, V, H, W, 3],
      intrinsics [M, V, 3, 3] and cam_to_world [M, V, 4, 4], view v being `spec.image_keys[v]`.

    Raises:
      FileNotFoundError: a missing folder or file.
      TypeError: `spec` is no `LeRobotSpec` or `cameras` no mapping.
      ValueError: a missing key or camera, a camera of another size, videos of different sizes,
        an extrinsics feature of another shape or holding non-finite or non-rigid poses,
        mismatched lengths, or a video shorter than its index (each named).
    """
    _, _, av = _imports()
    prepared = _prepare(root, spec, cameras, episodes, keyframe_config, workspace)
    out = []
    for info, plan, positions, eulers, gripper_open, velocities, kf, extrinsics in prepared:
        size = _video_size(info.features, spec.image_keys[0])
        n = len(positions)
        frames = np.arange(n, dtype=np.int32) if all_images else frames_to_render(n, kf, augment_every)
        m = len(frames)
        images, intrinsics, poses = [], [], []
        for key in spec.image_keys:
            camera = cameras[key]
            images.append(_decode(av, plan, frames, info.fps, size, key))
            intrinsics.append(np.repeat(np.asarray(camera.intrinsics, np.float32)[None], m, 0))
            poses.append(extrinsics[key][frames] if key in extrinsics else
                         np.repeat(np.asarray(camera.cam_to_world, np.float32)[None], m, 0))
        one = len(spec.image_keys) == 1  # one camera: no view axis
        first = cameras[spec.image_keys[0]]
        cam = Camera(intrinsics=intrinsics[0] if one else np.stack(intrinsics, axis=1),
                     cam_to_world=poses[0] if one else np.stack(poses, axis=1),
                     width=first.width, height=first.height)
        out.append(Trajectory(positions=positions, eulers=eulers, gripper_open=gripper_open,
                              velocities=velocities, keyframes=np.asarray(kf, np.int32),
                              image_frames=np.asarray(frames, np.int32),
                              images=images[0] if one else np.stack(images, axis=1), camera=cam,
                              task=plan.episode.task, seed=plan.episode.index))
    return out


def _calibrated_cameras(root: str | os.PathLike[str], spec: LeRobotSpec, calib: Calibration) -> dict[str, Camera]:
    """The calibration's camera of each of `spec.image_keys`, once the dataset is known to have
    every key of `spec` (a mistyped key is named as such, not as a camera the calibration lacks)."""
    if not isinstance(spec, LeRobotSpec):
        raise TypeError(f"`spec` must be a LeRobotSpec; got {type(spec).__name__}.")
    _check_keys(_read_info(os.fspath(root)), spec, None)
    return {key: calib.camera(key) for key in spec.image_keys}


def check_lerobot_dataset(root: str | os.PathLike[str], spec: LeRobotSpec,
                          calibration: str | os.PathLike[str] | Calibration,
                          episodes: Sequence[int] | None = None,
                          keyframe_config: KeyframeConfig | None = None) -> list[int]:
    """Every check `load_lerobot_dataset` makes, without decoding a frame (e.g. a launcher's
    validation before work starts).

    Args:
      root, spec, calibration, episodes, keyframe_config: as in `load_lerobot_dataset`.

    Returns:
      The episode indices checked, in order (all of the dataset's when `episodes` is None), e.g.
      to split them into training and held-out demos.

    Raises:
      FileNotFoundError, CalibrationFileError, ValueError: as `load_lerobot_dataset` would.
    """
    calib = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    prepared = _prepare(root, spec, _calibrated_cameras(root, spec, calib), episodes, keyframe_config,
                        calib.workspace)
    return [p.plan.episode.index for p in prepared]


def check_in_workspace(positions: Any, workspace: Workspace, what: str) -> None:
    """Raises a ValueError naming `what` when a position [T, 3] lies outside the workspace."""
    p = np.asarray(positions, np.float64)
    lo, hi = np.asarray(workspace.low, np.float64), np.asarray(workspace.high, np.float64)
    if np.any(p < lo - 1e-6) or np.any(p > hi + 1e-6):
        raise ValueError(f"{what}: positions span {p.min(0).round(4).tolist()}..{p.max(0).round(4).tolist()}"
                         f" m, outside the workspace {lo.round(4).tolist()}..{hi.round(4).tolist()}; check "
                         "the pose's units (metres), its frame and pose_indices, or widen the workspace "
                         "in the calibration file.")


def load_lerobot_dataset(root: str | os.PathLike[str], spec: LeRobotSpec,
                         calibration: str | os.PathLike[str] | Calibration,
                         episodes: Sequence[int] | None = None, augment_every: int = 10,
                         keyframe_config: KeyframeConfig | None = None,
                         gamma: float = 0.99) -> Dataset:
    """A LeRobot v3 dataset as our keyframe `Dataset` (`load_lerobot_demos` + `build_dataset`).

    Args:
      root: the dataset folder (holding meta/info.json).
      spec: which features hold the images, the pose and the gripper, and their conventions.
      calibration: a calibration file (`twostage_jax.data.camera_file`) or its `Calibration`:
        the camera of each of `spec.image_keys` and the workspace bounds.
      episodes: episode indices to read (default: all).
      augment_every: spacing of the chain start frames (`build_dataset`).
      keyframe_config: thresholds (default `LEROBOT_KEYFRAMES`).
      gamma: discount of the Monte Carlo returns.

    Returns:
      A `Dataset` (numpy-backed), every demo counted as a success; with V image keys,
      `num_views` = V (view v of frame f at row f * V + v, each with its camera of that frame).
    """
    calib = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    cameras = _calibrated_cameras(root, spec, calib)
    trajectories = load_lerobot_demos(root, spec, cameras, episodes, augment_every, keyframe_config,
                                      workspace=calib.workspace)
    return build_dataset(trajectories, calib.workspace, gamma=gamma, augment_every=augment_every)
