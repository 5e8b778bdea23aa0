"""Training configuration: `TrainConfig` and the names of the algorithms and seed strategies."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from twostage_jax._checks import ConfigError
from twostage_jax.augment import AUGMENTATIONS
from twostage_jax.cql import CQLConfig
from twostage_jax.networks import NetworkConfig
from twostage_jax.transform import Stage2Config

ALGOS = ("bc", "cql")
SEED_STRATEGIES = ("auto", "vmap", "sequential")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One stage's training run.

    Attributes:
      algo: 'bc' or 'cql'.
      num_steps: update steps.
      batch_size: transitions per update, drawn with replacement; `make_train`'s `init`
        warns (UserWarning) when it exceeds the transitions of the `TrainData`.
      learning_rate: Adam learning rate for BC (CQL uses `cql.*_lr`).
      image_size: stage 1's input side; frames are downscaled once if smaller than stored.
      network: network sizes.
      cql: CQL hyper-parameters (ignored by BC).
      stage2: stage-2 state/action construction (ignored by stage 1). Its `crop_size=None`
        (the default) is resolved here for `algo` (64 for BC, 32 for CQL, as in the paper),
        so `config.stage2.crop_size` is always an int.
      min_move: metres. Train only on transitions whose target position is at least this far
        from the source pose, or whose gripper command differs from the current gripper state
        (0, the default, keeps every transition). Demo augmentation starts chains at frames
        just before a keyframe, whose target is where the arm already is: at the keyframe
        itself the data then says both "stay" and "go on", and a policy that averages them
        learns to pull its action back towards the current pose. This extends the paper's
        close-keyframe rule (Sec. V) to the augmented transitions.
      augment: stage 1's image augmentation: 'none' (the paper) or 'shift' (each frame moved
        by a random integer offset of up to `shift_pad` pixels, `augment.random_shift`).
        Stage 2 refuses anything but 'none'.
      shift_pad: the largest shift in pixels of stage 1's (downscaled) input frames.
    """

    algo: str = "bc"
    num_steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 3e-4
    image_size: int | None = None
    network: NetworkConfig = NetworkConfig()
    cql: CQLConfig = CQLConfig()
    stage2: Stage2Config = Stage2Config()
    min_move: float = 0.0
    augment: str = "none"
    shift_pad: int = 4

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError("TrainConfig", "augment", f"must be one of {AUGMENTATIONS}; got {self.augment!r}.")
        if isinstance(self.shift_pad, bool) or not isinstance(self.shift_pad, (int, np.integer)) \
                or self.shift_pad < 0:
            raise ConfigError("TrainConfig", "shift_pad", f"must be an int >= 0; got {self.shift_pad!r}.")
        if not 0.0 <= float(self.min_move) < math.inf:
            raise ConfigError("TrainConfig", "min_move", f"must be a finite number >= 0 metres; got {self.min_move!r}.")
        if self.algo not in ALGOS:
            raise ConfigError("TrainConfig", "algo", f"must be one of {ALGOS}; got {self.algo!r}.")
        for name in ("num_steps", "batch_size"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or not 0 < val < MAX_INT32:
                raise ConfigError("TrainConfig", name, f"must be a positive int below 2**31 (the step counter "
                                  f"and the batch's indices are int32); got {val!r}.")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= MAX_LEARNING_RATE):
            raise ConfigError("TrainConfig", "learning_rate", f"must be a number in (0, {MAX_LEARNING_RATE:g}] "
                             f"(Adam steps of that size already diverge); got {self.learning_rate!r}.")
        if self.image_size is not None and (isinstance(self.image_size, bool) or self.image_size <= 0
                                            or self.image_size > MAX_IMAGE_SIZE):
            raise ConfigError("TrainConfig", "image_size", f"must be a positive int up to {MAX_IMAGE_SIZE}, or "
                              f"None; got {self.image_size!r}.")
        if not isinstance(self.stage2, Stage2Config):
            raise TypeError(f"TrainConfig.stage2 must be a Stage2Config; got {type(self.stage2).__name__}.")
        if self.stage2.crop_size is None:  # follow the algorithm: the paper's 64 (BC) / 32 (CQL)
            object.__setattr__(self, "stage2", self.stage2.with_crop_size_for(self.algo))



MAX_INT32 = 2**31
MAX_LEARNING_RATE = 10.0
MAX_IMAGE_SIZE = 4096
"""Bounds no run can meaningfully exceed: the int32 step counter, a rate far past divergence,
and a side no camera here records."""


def check_stage(stage: Any) -> None:
    """Raises ValueError unless `stage` is 1 or 2."""
    if isinstance(stage, bool) or stage not in (1, 2):
        raise ValueError(f"`stage` must be 1 or 2; got {stage!r}.")
