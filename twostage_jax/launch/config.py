"""The launcher's config: one tree of frozen dataclasses that embeds the library's own.

  LaunchConfig                      env, rlbench_root, task, seed, num_seeds, seed_strategy,
  |                                 seed_devices, stage2_name
  |- data: DataConfig               where the demos come from: the simulator, or a LeRobot dataset
  |- demos: DemosConfig             recording the demonstrations and the held-out demos
  |- stage1: StageConfig            a `tj.TrainConfig` (num_steps, batch_size, learning_rate,
  |- stage2: StageConfig            image_size, min_move, algo, network: NetworkConfig, cql:
  |                                 CQLConfig, stage2: Stage2Config) plus checkpoint selection
  |                                 (select, select_steps); stage 1 ignores its `stage2`, and
  |                                 `stage1.source` names a base policy of yours instead
  |- calibrate: CalibrationConfig   stage 2's sigma / crop size from stage 1's held-out errors
  |- select: SelectConfig           the validation layouts of checkpoint selection
  |- train: CadenceConfig           logging and checkpoint cadence
  `- eval: EvalConfig               evaluation episodes, workers, learning curves, acting options

Every field and its default is written once, in its dataclass; the library's dataclasses check
their own fields (raising `tj.ConfigError`), the launcher's check theirs here, and checks across
fields run in `checks.validate_config`. The defaults are the paper's scale (Sec. V) with the
library's stage-2 method; `experiments/configs/*.py` reduce them. The variants of a config file
(`--config=FILE:bc,direct,td,paper`) are `apply_variants`; `paper_method` sets every method
option the library adds back to the paper's choice.

A stored config (checkpoint metadata, STAGE/config.json, results.json) is `to_dict`'s plain dict,
with its `version`; `from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from typing import Any

import twostage_jax as tj
from twostage_jax.data.lerobot import POSE_CONVENTIONS, LeRobotSpec
from twostage_jax.policy import MAX_CORRECTION_PASSES
from twostage_jax.transform import PAPER_CROP_SIZE

ConfigError = tj.ConfigError
CONFIG_VERSION = 2
"""The stored config's schema version (`to_dict`); `from_dict` reads this version only."""
DEFAULT_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "button-press-topdown-v3",
                 "drawer-open-v3", "door-open-v3", "peg-insert-side-v3", "basketball-v3")
VARIANTS = ("bc", "cql", "correction", "direct", "mc", "td", "paper")
SELECT_MODES = ("last", "validation")
KEEP_RULES = ("half", "overlap")
ENVS = ("metaworld", "rlbench")
SOURCES = ("sim", "lerobot")
LEROBOT_REQUIRED = {
    "root": "the dataset's folder, holding meta/info.json",
    "calibration": "the calibration file of the camera and the workspace",
    "image_key": "the camera's video feature, e.g. 'observation.images.front'",
    "pose_key": "the end-effector pose's feature, e.g. 'observation.state'",
    "pose_convention": f"one of {sorted(POSE_CONVENTIONS)}"}
"""The `DataConfig` fields a LeRobot source must set (the others have defaults), and what each is."""


def num_cores() -> int:
    """CPU cores this process may run on: the default number of evaluation workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _int_at_least(owner: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive int" if low == 1 else f"an int >= {low}"
        raise ConfigError(owner, name, f"must be {what}; got {value!r}.")


def _steps(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, tuple) or any(isinstance(k, bool) or not isinstance(k, int) for k in value):
        raise ConfigError(owner, name, f"must be a tuple of training steps (ints); got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DemosConfig:
    """Demonstrations: how many, on which layouts, and the keyframe dataset built from them.

    Attributes:
      num_demos: training demonstrations (MetaWorld: recorded; RLBench: the first of its folder;
        LeRobot: not used, `DataConfig.episodes` chooses them).
      seed: the first training layout (failed layouts are skipped, so up to ~3x are used).
      augment_every: every k-th frame starts a chain of transitions to the next keyframes.
      gamma: discount of the Monte Carlo returns stored in the dataset.
      image_size: side of the recorded (and evaluated) camera frames (RLBench, LeRobot: the
        stored frames' height, checked when the demos are read).
      max_keyframes: the episode budget in keyframes.
      num_validation: held-out demos for calibration and per-chunk validation curves (0: none;
        RLBench and LeRobot: the last episodes).
      validation_seed: their first layout (diagnose/validate use 50000+, evaluation 100000+).
    """

    num_demos: int = 100
    seed: int = 0
    augment_every: int = 10
    gamma: float = 0.99
    image_size: int = 128
    max_keyframes: int = 20
    num_validation: int = 10
    validation_seed: int = 60_000

    def __post_init__(self) -> None:
        for name, low in (("num_demos", 1), ("seed", 0), ("augment_every", 1), ("image_size", 1),
                          ("max_keyframes", 1), ("num_validation", 0), ("validation_seed", 0)):
            _int_at_least("DemosConfig", name, getattr(self, name), low)
        if isinstance(self.gamma, bool) or not 0.0 <= float(self.gamma) < 1.0:  # NaN fails too
            raise ConfigError("DemosConfig", "gamma", f"must lie in [0, 1); got {self.gamma!r}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the demonstrations come from: the simulator, or a LeRobot v3 dataset
    (`twostage_jax.data.lerobot`; its fields from `image_key` on are `LeRobotSpec`'s).

    Attributes:
      source: 'sim' (recorded in `LaunchConfig.env`'s simulator; for RLBench, read from
        `rlbench_root`) or 'lerobot' (read from `root`; trains stages 1 and 2, and evaluation
        in the simulator is refused: act on the robot with `tj.make_policy`).
      root: the LeRobot dataset's folder (holding meta/info.json). A relative path is resolved
        against the current directory at launch, and recorded as given.
      calibration: the calibration file (`twostage_jax.data.camera_file`): the camera of
        `image_key` and the workspace; relative as `root`.
      image_key: the video feature of the camera, e.g. "observation.images.front".
      pose_key: the feature holding the end-effector pose, e.g. "observation.state".
      pose_convention: its convention, a name in `lerobot.POSE_CONVENTIONS` (no default: a wrong
        guess would train on wrong poses).
      action_key: the recorded action feature.
      pose_indices: the components of `pose_key` holding the pose (None: the first 6 or 7).
      gripper_key: the feature holding the gripper state (None: `action_key`).
      gripper_index: its component (-1: the last).
      gripper_open_above: the gripper counts as open where that component exceeds this.
      neutral_quat: (x, y, z, w), the orientation whose Euler angles are 0.
      episodes: the episode indices to use, in order (None: all); the last
        `demos.num_validation` of them are the held-out validation demos.
      min_visible: the demos are refused unless their camera sees at least this share of the
        end-effector positions, in front of it and inside the image (`tj.visible_share`): a
        wrong calibration would train stage 2 on empty crops.
    """

    source: str = "sim"
    root: str = ""
    calibration: str = ""
    image_key: str = ""
    pose_key: str = ""
    pose_convention: str = ""
    action_key: str = "action"
    pose_indices: tuple[int, ...] | None = None
    gripper_key: str | None = None
    gripper_index: int = -1
    gripper_open_above: float = 0.0
    neutral_quat: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0)
    episodes: tuple[int, ...] | None = None
    min_visible: float = tj.MIN_VISIBLE

    def __post_init__(self) -> None:
        if isinstance(self.min_visible, bool) or not 0.0 <= float(self.min_visible) <= 1.0:
            raise ConfigError("DataConfig", "min_visible", f"must lie in [0, 1]; got {self.min_visible!r}.")
        if self.source not in SOURCES:
            raise ConfigError("DataConfig", "source", f"must be one of {SOURCES}; got {self.source!r}.")
        for name in ("root", "calibration", "image_key", "pose_key", "pose_convention", "action_key"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError("DataConfig", name, f"must be a string; got {getattr(self, name)!r}.")
        if not self.action_key:
            raise ConfigError("DataConfig", "action_key", "must be a feature name, e.g. 'action'; got ''.")
        if self.gripper_key is not None and (not isinstance(self.gripper_key, str) or not self.gripper_key):
            raise ConfigError("DataConfig", "gripper_key", "must be a feature name, or None for "
                              f"config.data.action_key; got {self.gripper_key!r}.")
        if self.pose_convention and self.pose_convention not in POSE_CONVENTIONS:
            raise ConfigError("DataConfig", "pose_convention", f"must be one of {sorted(POSE_CONVENTIONS)}; "
                              f"got {self.pose_convention!r}.")
        if self.pose_indices is not None:
            idx = self.pose_indices
            if (not isinstance(idx, tuple) or not idx
                    or any(isinstance(i, bool) or not isinstance(i, int) for i in idx)):
                raise ConfigError("DataConfig", "pose_indices", f"must be None or a tuple of ints; got {idx!r}.")
            if self.pose_convention and len(idx) != POSE_CONVENTIONS[self.pose_convention]:
                raise ConfigError("DataConfig", "pose_indices", f"has {len(idx)} entries; pose_convention "
                                  f"{self.pose_convention!r} takes {POSE_CONVENTIONS[self.pose_convention]}.")
        if isinstance(self.gripper_index, bool) or not isinstance(self.gripper_index, int):
            raise ConfigError("DataConfig", "gripper_index", f"must be an int; got {self.gripper_index!r}.")
        if (isinstance(self.gripper_open_above, bool) or not isinstance(self.gripper_open_above, (int, float))
                or not math.isfinite(self.gripper_open_above)):
            raise ConfigError("DataConfig", "gripper_open_above", f"must be a finite number; got "
                              f"{self.gripper_open_above!r}.")
        q = self.neutral_quat
        if (not isinstance(q, tuple) or len(q) != 4
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in q)
                or not math.fsum(float(v) ** 2 for v in q) > 1e-12):
            raise ConfigError("DataConfig", "neutral_quat", f"must be a non-zero quaternion (x, y, z, w) of 4 "
                              f"finite numbers; got {q!r}.")
        ep = self.episodes
        if ep is not None and (not isinstance(ep, tuple) or not ep or len(set(ep)) != len(ep) or any(
                isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in ep)):
            raise ConfigError("DataConfig", "episodes", "must be None (all) or a tuple of distinct episode "
                              f"indices >= 0; got {ep!r}.")
        if self.source == "lerobot":
            for name, what in LEROBOT_REQUIRED.items():
                if not getattr(self, name):
                    raise ConfigError("DataConfig", name, f"must be set with config.data.source='lerobot': "
                                      f"{what}; got {getattr(self, name)!r}.")

    def spec(self) -> LeRobotSpec:
        """The LeRobot dataset's `LeRobotSpec` (source 'lerobot')."""
        return LeRobotSpec(image_key=self.image_key, pose_key=self.pose_key,
                           pose_convention=self.pose_convention, action_key=self.action_key,
                           pose_indices=self.pose_indices, gripper_key=self.gripper_key,
                           gripper_index=self.gripper_index,
                           gripper_open_above=float(self.gripper_open_above),
                           neutral_quat=tuple(float(v) for v in self.neutral_quat))


@dataclasses.dataclass(frozen=True)
class StageConfig(tj.TrainConfig):
    """One stage: the library's `TrainConfig` (passed to `tj.make_train` as `train_config()`)
    and which of its checkpoints the policy acts with.

    Attributes:
      select: 'last' (the latest checkpoint) or 'validation' (each seed's best candidate
        checkpoint on `LaunchConfig.select`'s validation layouts, `launch/selection.py`).
      select_steps: the candidates' steps; () for every `train.checkpoint_every` steps (the
        candidates are kept while training, so set them before).
      source: stage 1 only: '' (train our stage 1) or 'module.path:function', a factory of a
        base policy you already have (`twostage_jax.base_policy.load_base_policy`); stage 1 is
        then not trained (its other fields are unused), stage 2 is calibrated to that policy's
        errors and corrects it.
    """

    select: str = "last"
    select_steps: tuple[int, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.select not in SELECT_MODES:
            raise ConfigError("StageConfig", "select", f"must be one of {SELECT_MODES}; got {self.select!r}.")
        _steps("StageConfig", "select_steps", self.select_steps)
        from twostage_jax.base_policy import SOURCE_PATTERN

        if not isinstance(self.source, str) or (self.source and not SOURCE_PATTERN.fullmatch(self.source)):
            raise ConfigError("StageConfig", "source", "must be '' (our stage 1) or 'module.path:function' "
                              f"(a factory of a base policy); got {self.source!r}.")

    def train_config(self, **changes: Any) -> tj.TrainConfig:
        """This stage as the library's `TrainConfig` (with `changes` replaced)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(tj.TrainConfig)}
        return tj.TrainConfig(**{**fields, **changes})


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Stage 2 calibrated to stage 1's residuals on the held-out demos (needs
    `demos.num_validation` > 0), when stage 2 starts; kept in STAGE2/calibration.json.

    Attributes:
      sigma: Algo. 1's sigma of the 6 pose dimensions from stage 1's errors
        (`calibration.calibrate_sigma`); the gripper keeps `stage2.stage2.sigma`'s.
      sigma_floor: the calibrated sigma's lower bound.
      crop_size: the crop size is the smallest holding `crop_coverage` of the targets
        (`calibration.calibrate_crop_size`) instead of `stage2.stage2.crop_size`.
      crop_coverage: that share, in (0, 1].
    """

    sigma: bool = True
    sigma_floor: float = 0.02
    crop_size: bool = False
    crop_coverage: float = 0.95

    def __post_init__(self) -> None:
        for name in ("sigma", "crop_size"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError("CalibrationConfig", name, f"must be True or False; got {getattr(self, name)!r}.")
        if isinstance(self.sigma_floor, bool) or not 0 < float(self.sigma_floor) < math.inf:
            raise ConfigError("CalibrationConfig", "sigma_floor", f"must be a finite number > 0; got "
                              f"{self.sigma_floor!r}.")
        if not 0.0 < float(self.crop_coverage) <= 1.0:
            raise ConfigError("CalibrationConfig", "crop_coverage", f"must lie in (0, 1]; got {self.crop_coverage!r}.")

    @property
    def any(self) -> bool:
        """Whether stage 2 is calibrated at all."""
        return self.sigma or self.crop_size


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """Checkpoint selection's validation layouts (`StageConfig.select='validation'`).

    Attributes:
      episodes: layouts per training seed and candidate.
      seed: the first layout; disjoint from the demos', the held-out demos' and evaluation's.
      per_seed: each seed its own step (else one step for all seeds).
      first_share: successive halving: every candidate is rolled out on this share of the
        layouts first (at least one), then the layouts double for the candidates kept, until
        one is left or all layouts are used (`evaluation.halving.successive_halving`); 1.0 rolls every
        candidate out on every layout.
      keep: which candidates a halving round keeps: 'half' (the best half, ties kept) or
        'overlap' (those whose 95% Wilson interval overlaps the leader's).
      patience: stop training at the validation plateau: once the best validation success
        (on the first share of the layouts) has not improved by more than `min_delta` for
        this many candidates, for every seed (0: train to num_steps).
      min_delta: the improvement in success rate that resets the patience.
      no_correction: stage 2's selection has one more candidate, step 0: no correction, the
        tentative action executed as it is (stage 1 alone), so a seed whose stage 2 does not
        beat its stage 1 on validation acts without it.
    """

    episodes: int = 20
    seed: int = 200_000
    per_seed: bool = True
    first_share: float = 1.0
    keep: str = "half"
    patience: int = 0
    min_delta: float = 0.0
    no_correction: bool = False

    def __post_init__(self) -> None:
        _int_at_least("SelectConfig", "episodes", self.episodes, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("SelectConfig", "seed", f"must be a non-negative int; got {self.seed!r}.")
        if not isinstance(self.per_seed, bool):
            raise ConfigError("SelectConfig", "per_seed", f"must be True or False; got {self.per_seed!r}.")
        if isinstance(self.first_share, bool) or not 0.0 < float(self.first_share) <= 1.0:
            raise ConfigError("SelectConfig", "first_share", f"must lie in (0, 1]; got {self.first_share!r}.")
        if self.keep not in KEEP_RULES:
            raise ConfigError("SelectConfig", "keep", f"must be one of {KEEP_RULES}; got {self.keep!r}.")
        _int_at_least("SelectConfig", "patience", self.patience, 0)
        if not isinstance(self.no_correction, bool):
            raise ConfigError("SelectConfig", "no_correction", f"must be True or False; got {self.no_correction!r}.")
        if isinstance(self.min_delta, bool) or not 0.0 <= float(self.min_delta) < 1.0:
            raise ConfigError("SelectConfig", "min_delta", f"must lie in [0, 1); got {self.min_delta!r}.")


@dataclasses.dataclass(frozen=True)
class CadenceConfig:
    """Logging and checkpoints while training (they change no parameter).

    Attributes:
      log_every: steps per logged chunk (metrics.jsonl, TensorBoard, held-out validation).
      checkpoint_every: steps between checkpoints, a multiple of `log_every`.
      keep_checkpoints: the newest checkpoints kept (plus curve and selection steps).
    """

    log_every: int = 1000
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            _int_at_least("CadenceConfig", name, getattr(self, name), 1)
        if self.checkpoint_every % self.log_every:
            raise ConfigError("CadenceConfig", "checkpoint_every",
                              f"({self.checkpoint_every}) must be a multiple of config.train.log_every "
                              f"({self.log_every}).")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation rollouts (results do not depend on the number of workers).

    Attributes:
      num_episodes: evaluation layouts per training seed.
      seed: the first evaluation layout.
      record_episodes: first episodes of seed 0 whose frames are kept (plots).
      bootstrap_reps: bootstrap resamples per interval.
      workers: simulator processes (1: episodes one after another in this process).
      curve_steps: training steps (multiples of `train.log_every`, at most both stages'
        num_steps) whose checkpoints are kept and evaluated for the learning curves (Fig. 4);
        set before training.
      correction_passes: times stage 2 corrects when acting (1, the paper; `make_policy`'s).
      corrected_dims: None (the paper: every dimension) or 7 flags of the dimensions the
        correction changes, e.g. (1, 1, 1, 0, 0, 0, 1) keeps stage 1's orientation.
    """

    num_episodes: int = 100
    seed: int = 100_000
    record_episodes: int = 1
    bootstrap_reps: int = 2000
    workers: int = dataclasses.field(default_factory=num_cores)
    curve_steps: tuple[int, ...] = ()
    correction_passes: int = 1
    corrected_dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name, low in (("num_episodes", 1), ("seed", 0), ("record_episodes", 0),
                          ("bootstrap_reps", 1), ("correction_passes", 1)):
            _int_at_least("EvalConfig", name, getattr(self, name), low)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError("EvalConfig", "workers", "must be a positive int (1 = episodes one after "
                              f"another in this process); got {self.workers!r}.")
        _steps("EvalConfig", "curve_steps", self.curve_steps)
        if self.correction_passes > MAX_CORRECTION_PASSES:
            raise ConfigError("EvalConfig", "correction_passes", f"must be at most {MAX_CORRECTION_PASSES} (each "
                              f"pass is unrolled into the compiled policy); got {self.correction_passes!r}.")
        if self.corrected_dims is not None:
            try:
                tj.check_corrected_dims(self.corrected_dims)
            except ConfigError as e:
                raise ConfigError("EvalConfig", e.field, e.message) from e


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Everything one launcher run needs (see the module docstring for the tree).

    Attributes:
      env: 'metaworld' or 'rlbench' (needs CoppeliaSim, PyRep and RLBench for rollouts).
      rlbench_root: RLBench's demos folder (TASK/variation0/episodes/...) when env='rlbench'.
      task: the task's name (with a LeRobot source, `data`, a label).
      seed: the training seeds' root (seed i of a stage always gets the same key).
      num_seeds: seeds trained together.
      seed_strategy: 'auto' (sequential on CPU, vmap on GPU), 'vmap' or 'sequential'.
      seed_devices: 'all' (shard the seeds over every device when there are several) or N
        (the first N devices; 1 = unsharded).
      stage2_name: stage 2's folder in the workdir; name ablations to share stage 1.
    """

    env: str = "metaworld"
    rlbench_root: str = ""
    task: str = "reach-v3"
    seed: int = 0
    num_seeds: int = 1
    seed_strategy: str = "auto"
    seed_devices: str | int = "all"
    stage2_name: str = "stage2"
    data: DataConfig = DataConfig()
    demos: DemosConfig = DemosConfig()
    stage1: StageConfig = StageConfig(num_steps=300_000)
    stage2: StageConfig = StageConfig(num_steps=300_000, stage2=tj.Stage2Config(
        crop_size=PAPER_CROP_SIZE["bc"], loss_weighting="auto"))
    calibrate: CalibrationConfig = CalibrationConfig()
    select: SelectConfig = SelectConfig()
    train: CadenceConfig = CadenceConfig()
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ConfigError("LaunchConfig", "env", f"must be 'metaworld' or 'rlbench'; got {self.env!r}.")
        _int_at_least("LaunchConfig", "seed", self.seed, 0)
        _int_at_least("LaunchConfig", "num_seeds", self.num_seeds, 1)
        if self.seed_strategy not in tj.SEED_STRATEGIES:
            raise ConfigError("LaunchConfig", "seed_strategy",
                              f"must be one of {tj.SEED_STRATEGIES}; got {self.seed_strategy!r}.")
        from twostage_jax import sharding

        try:
            sharding.parse_seed_devices(self.seed_devices)
        except ConfigError as e:
            raise ConfigError("LaunchConfig", e.field, e.message) from e
        name = self.stage2_name
        if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name)
                or name in ("stage1", "demos") or name.startswith("eval")):
            raise ConfigError("LaunchConfig", "stage2_name", "must be a folder name of letters, digits, "
                              f"'_' or '-', other than stage1, demos and eval*; got {name!r}.")

    @property
    def algo(self) -> str:
        """Both stages' algorithm ('bc' or 'cql'; `checks.validate_config` checks they agree)."""
        return self.stage1.algo

    def stage(self, stage: int) -> StageConfig:
        """`stage1` or `stage2`."""
        return self.stage1 if stage == 1 else self.stage2


# --- variants ------------------------------------------------------------------------------


def paper_method(c: LaunchConfig) -> LaunchConfig:
    """Sets every method option the paper does not have back to the paper's choice (Sec. IV-V)."""
    s2 = c.stage2
    method = dataclasses.replace(s2.stage2, sigma=tj.DEFAULT_SIGMA, crop_size=PAPER_CROP_SIZE[c.algo],
                                 ee_crop_size=16, loss_weighting="none", gripper_clip=None)
    network = dataclasses.replace(s2.network, crop_encoder="flatten", coord_channels=False,
                                  crop_conv_strides=None, stage2_pose_input=True)
    cql = dataclasses.replace(s2.cql, bc_weight=0.0, actor_encoder_grad=False)  # Eq. 2's actor
    return dataclasses.replace(
        c, calibrate=dataclasses.replace(c.calibrate, sigma=False, crop_size=False),
        stage1=dataclasses.replace(c.stage1, min_move=0.0, augment="none"),
        stage2=dataclasses.replace(s2, min_move=0.0, stage2=method, network=network, cql=cql))


def variant_parts(arg: str | None) -> list[str]:
    """The comma-separated variants of `arg`, checked.

    Raises:
      ValueError: an unknown variant.
    """
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    unknown = sorted(set(parts) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown}; expected a comma-separated subset "
                         f"of {sorted(VARIANTS)}.")
    return parts


def apply_variants(c: LaunchConfig, arg: str | None) -> LaunchConfig:
    """Applies a config file's variants (`--config=FILE:VARIANTS`):

      * `bc` | `cql`: the algorithm of both stages (and the paper's crop: 64 for BC, 32 for CQL);
      * `correction` | `direct`: stage 2 predicts a correction (Eq. 6) or the final action;
      * `mc` | `td`: CQL's Q target, both stages (`--config.stage2.cql.target=td`: stage 2 only);
      * `paper`: the paper's method exactly (`paper_method`), whatever the config's defaults.
    """
    parts = variant_parts(arg)
    for p in parts:
        if p in ("bc", "cql"):
            c = dataclasses.replace(
                c, stage1=dataclasses.replace(c.stage1, algo=p),
                stage2=dataclasses.replace(c.stage2, algo=p, stage2=dataclasses.replace(
                    c.stage2.stage2, crop_size=PAPER_CROP_SIZE[p])))
        elif p in ("correction", "direct"):
            c = replace_path(c, {"stage2.stage2.mode": p})
        elif p in ("mc", "td"):
            c = replace_path(c, {"stage1.cql.target": p, "stage2.cql.target": p})
    return paper_method(c) if "paper" in parts else c


# --- nested replacement, and plain dicts -----------------------------------------------------


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: its resolved annotation} of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class UnknownFieldError(ConfigError):
    """A dotted path naming no field of the config: `path` (the dotted name given), `known`
    (the names that could stand there), and `suggestions`: the closest of them, else the
    `child.NAME` fields one level down (e.g. `stage1.algo` for `algo`)."""

    def __init__(self, path: str, name: str, known: list[str], nested: tuple[str, ...] = ()) -> None:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        self.path, self.name, self.known, self.nested = path, name, known, nested
        self.suggestions = (close[0],) if close else tuple(nested)
        hint = (f"; did you mean {' or '.join(repr(n) for n in self.suggestions)}?"
                if self.suggestions else ".")
        super().__init__("config", path, f"the config has no field {name!r}{hint}")
        self.args = (f"config.{path}: the config has no field {name!r}{hint}",)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.path, self.name, self.known, self.nested)


def nested_names(cls: type, name: str) -> tuple[str, ...]:
    """'child.NAME' for each dataclass field of `cls` whose class has a field NAME."""
    return tuple(f"{child}.{name}" for child, kind in field_types(cls).items()
                 if dataclasses.is_dataclass(kind) and name in field_types(kind))


def _unknown(path: str, cls: type, name: str) -> UnknownFieldError:
    return UnknownFieldError(f"{path}.{name}" if path else name, name, list(field_types(cls)),
                             nested_names(cls, name))


def _as_tree(changes: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"config.{dotted}: {p} is given both as a value and as a group.")
        node[leaf] = value
    return tree


def _replace(node: Any, tree: dict[str, Any], path: str) -> Any:
    types = field_types(type(node))
    changes = {}
    for name, value in tree.items():
        if name not in types:
            raise _unknown(path, type(node), name)
        where = f"{path}.{name}" if path else name
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(node, name)):
            changes[name] = _replace(getattr(node, name), value, where)
        else:
            changes[name] = coerce(value, types[name], where)
    try:
        return dataclasses.replace(node, **changes)
    except ConfigError as e:  # name the field by its path in the launcher's config
        raise ConfigError(f"config.{path}" if path else "config", e.field, e.message) from e


def replace_path(config: LaunchConfig, changes: dict[str, Any]) -> LaunchConfig:
    """`config` with fields replaced by dotted path, e.g. {'stage1.network.mlp_hidden': 16}.

    Every dataclass on the way is rebuilt with `dataclasses.replace` (once, with all of its
    changes), so it checks its fields.

    Raises:
      ConfigError: naming the field by its dotted path (`config.stage1.network.mlp_hidden`), for
        an unknown field (with the closest known name) or a value its dataclass refuses.
    """
    return _replace(config, _as_tree(changes), "")


def coerce(value: Any, kind: Any, path: str) -> Any:
    """`value` as the annotation `kind` wants where that is unambiguous: a list (from JSON or
    a literal) to a tuple, an int to a float; everything else is left to the dataclass's check."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in args:
            if arg is not type(None):
                return coerce(value, arg, path)
    if origin is tuple and isinstance(value, (list, tuple)):
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        return _build(kind, value, path)
    return value


def _build(cls: type, d: dict[str, Any], path: str) -> Any:
    types = field_types(cls)
    for name in d:
        if name not in types:
            raise _unknown(path, cls, name)
    kwargs = {name: coerce(value, types[name], f"{path}.{name}" if path else name)
              for name, value in d.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"config.{path}" if path else "config", e.field, e.message) from e


def to_dict(config: LaunchConfig) -> dict[str, Any]:
    """The config as a plain (JSON-ready) dict, with `version` = `CONFIG_VERSION`."""
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        return [plain(v) for v in x] if isinstance(x, (tuple, list)) else x

    return {"version": CONFIG_VERSION, **plain(config)}


def from_dict(d: dict[str, Any]) -> LaunchConfig:
    """A stored config (`to_dict`'s) as a `LaunchConfig`.

    Raises:
      ConfigError: a field the current schema does not have, or a value it refuses.
      ValueError: not a dict, or another version than `CONFIG_VERSION`.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a stored config must be a dict; got {type(d).__name__}.")
    d = dict(d)
    version = d.pop("version", None)
    if version != CONFIG_VERSION:
        raise ValueError(f"the stored config has version {version!r}; this launcher reads version "
                         f"{CONFIG_VERSION}: re-run the stage with this launcher in a fresh --workdir.")
    return _build(LaunchConfig, d, "")
