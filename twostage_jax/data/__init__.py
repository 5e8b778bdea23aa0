"""Demonstrations, keyframe discovery, the offline `Dataset` builder and its file format.

Nothing here imports a simulator at import time: `record_demos` imports MetaWorld when called,
and the RLBench reader needs no RLBench at all.
"""

from twostage_jax.data.dataset import (
    FORMAT_VERSION,
    DatasetFormatError,
    build_dataset,
    dataset_nbytes,
    load_dataset,
    save_dataset,
)
from twostage_jax.data.demos import DemoStats, Trajectory, record_demos, replay_keyframes
from twostage_jax.data.keyframes import KeyframeConfig, discover_keyframes
from twostage_jax.data.rlbench_io import load_rlbench_demos

__all__ = [
    "FORMAT_VERSION", "DatasetFormatError", "DemoStats", "KeyframeConfig", "Trajectory",
    "build_dataset", "dataset_nbytes", "discover_keyframes", "load_dataset", "load_rlbench_demos",
    "record_demos", "replay_keyframes", "save_dataset",
]
