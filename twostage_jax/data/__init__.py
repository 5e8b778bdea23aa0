"""Demonstrations, keyframe discovery, the offline `Dataset` builder and its file format.

Nothing here imports a simulator: MetaWorld's scripted-expert recorder lives with its adapter
(`twostage_jax.envs.metaworld_demos.record_demos`), and the RLBench reader needs no RLBench at all. The LeRobot reader imports pyarrow and PyAV (the
`lerobot` extra) when called.
"""

from twostage_jax.data.camera_file import (
    Calibration,
    CalibrationFileError,
    load_calibration,
    save_calibration,
)
from twostage_jax.data.dataset import (
    FORMAT_VERSION,
    DatasetFormatError,
    build_dataset,
    dataset_nbytes,
    load_dataset,
    save_dataset,
)
from twostage_jax.data.trajectory import Trajectory, check_trajectory, frames_to_render
from twostage_jax.data.keyframes import KeyframeConfig, discover_keyframes
from twostage_jax.data.lerobot import (
    LEROBOT_KEYFRAMES,
    POSE_CONVENTIONS,
    LeRobotEpisode,
    LeRobotSpec,
    check_lerobot_dataset,
    load_lerobot_dataset,
    load_lerobot_demos,
    read_lerobot_episode,
)
from twostage_jax.data.rlbench_io import load_rlbench_demos

__all__ = [
    "FORMAT_VERSION", "LEROBOT_KEYFRAMES", "POSE_CONVENTIONS", "Calibration", "CalibrationFileError",
    "DatasetFormatError", "KeyframeConfig", "LeRobotEpisode", "LeRobotSpec", "Trajectory",
    "build_dataset", "check_lerobot_dataset", "check_trajectory", "dataset_nbytes", "discover_keyframes",
    "frames_to_render", "load_calibration", "load_dataset",
    "load_lerobot_dataset", "load_lerobot_demos", "load_rlbench_demos", "read_lerobot_episode",
    "save_calibration", "save_dataset",
]
