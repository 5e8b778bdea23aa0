"""The launcher's config: one tree of frozen dataclasses that embeds the library's own.

  LaunchConfig        env, task, seeds, stage2_name
  |- data, demos      where the demonstrations come from; how many, on which layouts
  |- stage1, stage2   each a `tj.TrainConfig` plus checkpoint selection (stage 1 may be a base policy)
  |- calibrate        stage 2's sigma / crop size from stage 1's held-out errors
  |- select, train    the validation layouts of selection; logging and checkpoint cadence
  `- eval             evaluation episodes, workers, learning curves, acting options

Each dataclass checks its own fields; `check_config` checks across them. Variants
(`--config=NAME:bc,direct,td,paper`) are `apply_variants`. A stored config is `to_dict`'s
plain dict with its `version`; `from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from typing import Any

import twostage_jax as tj
from twostage_jax import sharding
from twostage_jax.base_policy import SOURCE_PATTERN, check_base_source
from twostage_jax.data.lerobot import POSE_CONVENTIONS, LeRobotSpec
from twostage_jax.data.rlbench_conventions import RLBENCH_CAMERAS
from twostage_jax.envs.camera_names import (DEFAULT_CAMERAS, METAWORLD_CAMERAS, METAWORLD_MOVING,
                                            check_camera_names)
from twostage_jax.policy import MAX_CORRECTION_PASSES
from twostage_jax.evaluation.rollouts import default_workers

ConfigError = tj.ConfigError


def is_run_name(name: str) -> bool:
    """Whether `name` can be a stage-2 run's folder (`LaunchConfig.stage2_name`,
    `StageConfig.refines`): letters, digits, '_' or '-', and not another part of the workdir."""
    return (re.fullmatch(r"[A-Za-z0-9_-]+", name) is not None and name not in ("stage1", "demos")
            and not name.startswith("eval"))


CONFIG_VERSION = 3
"""The stored config's schema version (`to_dict`); `from_dict` reads this version only."""
STAGE_NAMES = {1: "stage1", 2: "stage2"}
VARIANTS = ("bc", "cql", "correction", "direct", "mc", "td", "paper")
SELECT_MODES = ("last", "validation")
KEEP_RULES = ("half", "overlap")
ENVS = ("metaworld", "rlbench")
SOURCES = ("sim", "lerobot")
LEROBOT_REQUIRED = {
    "root": "the dataset's folder, holding meta/info.json",
    "camera_file": "the camera file: each camera's intrinsics and pose, and the workspace",
    "image_keys": "the cameras' video features, e.g. ('observation.images.front',)",
    "pose_key": "the end-effector pose's feature, e.g. 'observation.state'",
    "pose_convention": f"one of {sorted(POSE_CONVENTIONS)}"}
"""The `DataConfig` fields a LeRobot source must set (the others have defaults), and what each is."""


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
      num_held_out: held-out demos for calibration and per-chunk validation curves (0: none;
        RLBench and LeRobot: the last episodes).
      held_out_seed: their first layout (diagnose/validate use 50000+, evaluation 100000+).
    """

    num_demos: int = 100
    seed: int = 0
    augment_every: int = 10
    gamma: float = 0.99
    image_size: int = 128
    max_keyframes: int = 20
    num_held_out: int = 10
    held_out_seed: int = 60_000

    def __post_init__(self) -> None:
        for name, low in (("num_demos", 1), ("seed", 0), ("augment_every", 1), ("image_size", 1),
                          ("max_keyframes", 1), ("num_held_out", 0), ("held_out_seed", 0)):
            _int_at_least("DemosConfig", name, getattr(self, name), low)
        if isinstance(self.gamma, bool) or not 0.0 <= float(self.gamma) < 1.0:  # NaN fails too
            raise ConfigError("DemosConfig", "gamma", f"must lie in [0, 1); got {self.gamma!r}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the demonstrations come from: the simulator, or a LeRobot v3 dataset
    (`twostage_jax.data.lerobot`). The fields from `image_keys` on are `LeRobotSpec`'s, which
    checks them (`spec()`); here `pose_convention` is a name in `lerobot.POSE_CONVENTIONS`.

    Attributes:
      source: 'sim' (recorded in `LaunchConfig.env`'s simulator; for RLBench, read from
        `rlbench_root`) or 'lerobot' (read from `root`; trains stages 1 and 2; act on the robot
        with `tj.make_policy`, as evaluation in the simulator is refused).
      root: the LeRobot dataset's folder (holding meta/info.json); relative to the current
        directory at launch, and recorded as given.
      camera_file: the camera file (`twostage_jax.data.camera_file`): the camera of each of
        `image_keys` and the workspace; relative as `root`.
      episodes: the episode indices to use, in order (None: all); the last
        `demos.num_held_out` of them are the held-out demos.
      min_visible: the demos are refused unless their (first) camera sees at least this share of
        the end-effector positions (`tj.visible_share`): a wrong camera file would train stage 2
        on empty crops.
    """

    source: str = "sim"
    root: str = ""
    camera_file: str = ""
    episodes: tuple[int, ...] | None = None
    min_visible: float = tj.MIN_VISIBLE
    image_keys: tuple[str, ...] = ()
    pose_key: str = ""
    pose_convention: str = ""
    action_key: str = "action"
    pose_indices: tuple[int, ...] | None = None
    gripper_key: str | None = None
    gripper_index: int = -1
    gripper_open_above: float = 0.0
    neutral_quat: tuple[float, ...] = (0.0, 0.0, 0.0, 1.0)
    velocity_key: str | None = None
    extrinsics_keys: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError("DataConfig", "source", f"must be one of {SOURCES}; got {self.source!r}.")
        for name in ("root", "camera_file"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError("DataConfig", name, f"must be a string; got {getattr(self, name)!r}.")
        if isinstance(self.min_visible, bool) or not 0.0 <= float(self.min_visible) <= 1.0:
            raise ConfigError("DataConfig", "min_visible", f"must lie in [0, 1]; got {self.min_visible!r}.")
        ep = self.episodes
        if ep is not None and (not isinstance(ep, tuple) or not ep or len(set(ep)) != len(ep) or any(
                isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in ep)):
            raise ConfigError("DataConfig", "episodes", "must be None (all) or a tuple of distinct episode "
                              f"indices >= 0; got {ep!r}.")
        if self.source != "lerobot":
            return
        for name, what in LEROBOT_REQUIRED.items():
            if not getattr(self, name):
                raise ConfigError("DataConfig", name, f"must be set with config.data.source='lerobot': "
                                  f"{what}; got {getattr(self, name)!r}.")
        try:
            self.spec()
        except ConfigError as e:
            raise ConfigError("DataConfig", e.field, e.message) from e

    def spec(self) -> LeRobotSpec:
        """The LeRobot dataset's `LeRobotSpec`."""
        names = [f.name for f in dataclasses.fields(LeRobotSpec)]
        return LeRobotSpec(**{name: getattr(self, name) for name in names})


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
      crossfit_folds: stage 2 only, with `stage2.predicted_share` > 0: the folds (K >= 2) the
        training demos are dealt into by episode. For each, stage 1 is trained again on the
        other K-1 folds, to the step it acts at, and predicts the tentative actions of the fold
        it did not see (`launch/predictions.py`); K stage-1 trainings, once per stage 2. Unused
        with a base policy (`stage1.source`), whose own actions are taken.
      refines: stage 2 only: '' (the paper: one stage 2), or the `stage2_name` of another stage-2
        run in the workdir that this one corrects again, a second zoom (`launch/refine.py`): it
        trains on that run's corrected actions on Algorithm 1's draws around the demos
        (`tj.first_pass_actions`), which `stage2.predicted_share` of its samples start from,
        usually with a smaller crop, and acts after it (`tj.make_policy(..., refine=...)`).
    """

    select: str = "last"
    select_steps: tuple[int, ...] = ()
    source: str = ""
    crossfit_folds: int = 3
    refines: str = ""

    def __post_init__(self) -> None:
        crop = self.stage2.crop_size if isinstance(self.stage2, tj.Stage2Config) else None
        super().__post_init__()  # (resolves a crop size of None for the algorithm)
        object.__setattr__(self, "stage2", dataclasses.replace(self.stage2, crop_size=crop))
        if self.select not in SELECT_MODES:
            raise ConfigError("StageConfig", "select", f"must be one of {SELECT_MODES}; got {self.select!r}.")
        _steps("StageConfig", "select_steps", self.select_steps)
        _int_at_least("StageConfig", "crossfit_folds", self.crossfit_folds, 2)
        if not isinstance(self.refines, str) or (self.refines and not is_run_name(self.refines)):
            raise ConfigError("StageConfig", "refines", "must be '' or the stage2_name of a stage-2 run "
                              f"(letters, digits, '_' or '-', other than stage1, demos and eval*); got "
                              f"{self.refines!r}.")
        if not isinstance(self.source, str) or (self.source and not SOURCE_PATTERN.fullmatch(self.source)):
            raise ConfigError("StageConfig", "source", "must be '' (our stage 1) or 'module.path:function' "
                              f"(a factory of a base policy); got {self.source!r}.")

    def train_config(self, **changes: Any) -> tj.TrainConfig:
        """This stage as the library's `TrainConfig` (with `changes` replaced); a crop size of
        None is kept here and resolved for the algorithm there, so a variant or flag that
        changes the algorithm changes the crop with it."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(tj.TrainConfig)}
        return tj.TrainConfig(**{**fields, **changes})


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Stage 2 calibrated to stage 1's residuals on the held-out demos (needs
    `demos.num_held_out` > 0), when stage 2 starts; kept in STAGE2/calibration.json.

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
      critic_samples: CQL: 0 (the paper), or K: stage 2's critic chooses the executed correction
        among none, the actor's mode and K of its samples (`make_policy`'s); counted in
        results.json's `critic_choices`.
    """

    num_episodes: int = 100
    seed: int = 100_000
    record_episodes: int = 1
    bootstrap_reps: int = 2000
    workers: int = dataclasses.field(default_factory=default_workers)
    curve_steps: tuple[int, ...] = ()
    correction_passes: int = 1
    corrected_dims: tuple[int, ...] | None = None
    critic_samples: int = 0

    def __post_init__(self) -> None:
        for name, low in (("num_episodes", 1), ("seed", 0), ("record_episodes", 0),
                          ("bootstrap_reps", 1), ("correction_passes", 1), ("critic_samples", 0)):
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
      cameras: the cameras each observation holds, in order, e.g. ('corner', 'topview',
        'gripperPOV'); None (the default) for the simulator's one camera (MetaWorld 'corner',
        RLBench 'front'). Names: `envs.camera_names.METAWORLD_CAMERAS`, RLBench's
        `rlbench_conventions.RLBENCH_CAMERAS`. Stage 1 encodes every view; stage 2 crops each
        at the tentative action's projection (`tj.transform_views`). With a LeRobot source the
        dataset's image keys choose the views instead.
    """

    env: str = "metaworld"
    rlbench_root: str = ""
    task: str = "reach-v3"
    seed: int = 0
    num_seeds: int = 1
    seed_strategy: str = "auto"
    seed_devices: str | int = "all"
    stage2_name: str = "stage2"
    cameras: tuple[str, ...] | None = None
    data: DataConfig = DataConfig()
    demos: DemosConfig = DemosConfig()
    stage1: StageConfig = StageConfig(num_steps=300_000)
    stage2: StageConfig = StageConfig(num_steps=300_000, stage2=tj.Stage2Config(loss_weighting="auto"))
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
        try:
            sharding.parse_seed_devices(self.seed_devices)
        except ConfigError as e:
            raise ConfigError("LaunchConfig", e.field, e.message) from e
        if self.cameras is not None and (not isinstance(self.cameras, tuple) or not self.cameras or any(
                not isinstance(c, str) or not c for c in self.cameras) or len(set(self.cameras)) != len(self.cameras)):
            raise ConfigError("LaunchConfig", "cameras", "must be None (the simulator's one camera) or a "
                              f"non-empty tuple of distinct camera names; got {self.cameras!r}.")
        name = self.stage2_name
        if not isinstance(name, str) or not is_run_name(name):
            raise ConfigError("LaunchConfig", "stage2_name", "must be a folder name of letters, digits, "
                              f"'_' or '-', other than stage1, demos and eval*; got {name!r}.")

    @property
    def algo(self) -> str:
        """Both stages' algorithm ('bc' or 'cql'; `checks.validate_config` checks they agree)."""
        return self.stage1.algo

    def camera_names(self) -> tuple[str, ...]:
        """The simulator cameras observations hold (`cameras`, or the simulator's default one)."""
        return self.cameras if self.cameras is not None else DEFAULT_CAMERAS[self.env]

    def stage(self, stage: int) -> StageConfig:
        """`stage1` or `stage2`."""
        return self.stage1 if stage == 1 else self.stage2


# --- checks across fields ---------------------------------------------------------------------


def selects(config: LaunchConfig, stage: int) -> bool:
    """Whether `stage` acts with a checkpoint chosen on validation layouts (else its latest);
    never stage 1 when it is a base policy of the user's (`config.stage1.source`)."""
    return not (stage == 1 and config.stage1.source) and config.stage(stage).select == "validation"


def _check_kept_steps(name: str, steps: tuple[int, ...], every: int, last: int, last_name: str) -> None:
    """Steps whose checkpoints training keeps: increasing positive multiples of `every` up to `last`."""
    for i, k in enumerate(steps):
        if not 0 < k <= last or k % every:
            raise ValueError(f"{name}[{i}] must be a positive multiple of config.train.log_every "
                             f"({every}) and at most {last_name} ({last}); got {k!r}.")
        if i and k <= steps[i - 1]:
            raise ValueError(f"{name} must be increasing; got {tuple(steps)}.")


def split_episodes(config: LaunchConfig, episodes: list[int]) -> tuple[list[int], list[int]]:
    """A LeRobot source's episodes as (training, held-out): the last `demos.num_held_out`.

    Raises:
      ValueError: naming config.demos.num_held_out when no training episode would be left.
    """
    n = int(config.demos.num_held_out)
    if n >= len(episodes):
        which = ("config.data.episodes" if config.data.episodes is not None
                 else f"the dataset at {config.data.root}")
        raise ValueError(f"config.demos.num_held_out ({n}) holds out the last {n} LeRobot episodes as "
                         f"held-out demos, but {which} holds {len(episodes)}, leaving none to train on; "
                         "lower config.demos.num_held_out (0 needs --config.calibrate.sigma=False and "
                         "--config.calibrate.crop_size=False) or choose more episodes.")
    return episodes[:len(episodes) - n], episodes[len(episodes) - n:]


def check_config(config: LaunchConfig) -> None:
    """Checks across fields, before any work (each dataclass checked its own when built).

    Layouts: the held-out demos, selection's validation layouts and evaluation's must not overlap
    each other or the training demos' (a choice made on evaluation episodes would bias the
    result). A base policy of yours (`stage1.source`) is imported, not called.

    Raises:
      ValueError: naming the fields.
    """
    s1, s2, d, ev, sel = config.stage1, config.stage2, config.demos, config.eval, config.select
    lerobot = config.data.source == "lerobot"
    if s2.algo != s1.algo:
        raise ValueError(f"config.stage2.algo ({s2.algo!r}) must equal config.stage1.algo ({s1.algo!r}); "
                         "set both with the :bc or :cql config variant.")
    if s2.stage2.perturbation == "residuals" and not config.calibrate.any:
        raise ValueError("config.stage2.stage2.perturbation='residuals' draws from stage 1's held-out "
                         "residuals, kept when stage 2 is calibrated: set config.calibrate.sigma=True.")
    if ev.critic_samples and (s2.algo != "cql" or ev.correction_passes != 1):
        raise ValueError(f"config.eval.critic_samples ({ev.critic_samples}) lets stage 2's critic choose the "
                         "correction: it needs CQL (the :cql variant) and config.eval.correction_passes=1.")
    if s2.refines:
        if s2.refines == config.stage2_name or s1.refines:
            raise ValueError(f"config.stage2.refines ({s2.refines!r}) names the stage-2 run this one corrects "
                             f"again: another run than config.stage2_name ({config.stage2_name!r}), and only "
                             "for stage 2.")
        if s2.stage2.predicted_share <= 0:
            raise ValueError("config.stage2.refines trains on the corrected actions of the run it refines, "
                             "which config.stage2.stage2.predicted_share of its samples start from: set it "
                             "above 0 (e.g. 1.0).")
        if ev.critic_samples or ev.correction_passes != 1 or sel.no_correction:
            raise ValueError("config.stage2.refines adds one correction after the first run's: it needs "
                             "config.eval.critic_samples=0, config.eval.correction_passes=1 and "
                             "config.select.no_correction=False.")
    if config.cameras is not None:
        if lerobot:
            raise ValueError("config.cameras names a simulator's cameras; a LeRobot source's views are its "
                             "image keys (config.data): leave config.cameras unset.")
        valid = METAWORLD_CAMERAS if config.env == "metaworld" else RLBENCH_CAMERAS
        check_camera_names("config.cameras", config.cameras, valid)
        if config.cameras[0] in (*METAWORLD_MOVING, "wrist"):
            raise ValueError(f"config.cameras: the first camera ({config.cameras[0]!r}) moves with the hand; "
                             "put a fixed camera first (calibration, the visibility check and the plots "
                             "read the first camera), e.g. corner,gripperPOV.")
    if config.calibrate.any and d.num_held_out <= 0:
        raise ValueError("config.calibrate.sigma / config.calibrate.crop_size calibrate stage 2 on "
                         "held-out demos: set config.demos.num_held_out > 0 (e.g. 10).")
    if (s1.image_size or d.image_size) > d.image_size:
        raise ValueError(f"config.stage1.image_size ({s1.image_size}) must not exceed "
                         f"config.demos.image_size ({d.image_size}).")
    method = s2.train_config().stage2
    for name in ("ee_crop_size",) if config.calibrate.crop_size else ("crop_size", "ee_crop_size"):
        if getattr(method, name) > d.image_size:
            raise ValueError(f"config.stage2.stage2.{name} ({getattr(method, name)}) must not exceed "
                             f"the image size ({d.image_size}).")
    if lerobot:
        for stage in (1, 2):
            if config.stage(stage).select == "validation":
                raise ValueError(f"config.stage{stage}.select='validation' chooses checkpoints by rolling "
                                 "out in the simulator, which a LeRobot dataset's camera and workspace "
                                 "are not; use 'last' with config.data.source='lerobot'.")
        if config.data.episodes is not None:
            split_episodes(config, list(config.data.episodes))
    elif config.env == "rlbench" and not config.rlbench_root:
        raise ValueError("config.env='rlbench' needs config.rlbench_root: the folder holding "
                         "TASK/variation0/episodes/ from RLBench's dataset generator.")
    demo_hi = d.seed + 3 * d.num_demos + 10  # demos skip failed layouts: room for retries
    if d.num_held_out and not lerobot:
        lo = d.held_out_seed
        if lo < demo_hi or (lo < ev.seed + ev.num_episodes and ev.seed < lo + 3 * d.num_held_out + 10):
            raise ValueError(f"config.demos.held_out_seed ({lo}) must start beyond the training demo "
                             "layouts and not overlap the evaluation layouts config.eval.seed.. ; "
                             "e.g. 60000 with the defaults.")
    _check_kept_steps("config.eval.curve_steps", ev.curve_steps, config.train.log_every,
                      min(s1.num_steps, s2.num_steps), "both stages' num_steps")
    for stage in (1, 2):  # (a stage acting with its latest checkpoint has no candidates)
        s = config.stage(stage)
        if selects(config, stage):
            _check_kept_steps(f"config.stage{stage}.select_steps", s.select_steps, config.train.log_every,
                              s.num_steps, f"config.stage{stage}.num_steps")
    if any(selects(config, stage) for stage in (1, 2)):
        lo, hi = sel.seed, sel.seed + sel.episodes
        if lo < ev.seed + ev.num_episodes and ev.seed < hi:
            raise ValueError(f"config.select.seed: the validation layouts {lo}..{hi - 1} overlap the "
                             f"evaluation layouts {ev.seed}..{ev.seed + ev.num_episodes - 1} (config.eval.seed); "
                             "choose checkpoints on layouts evaluation never uses, e.g. 200000.")
        if lo < demo_hi:
            raise ValueError(f"config.select.seed ({lo}) must start beyond the training demos' layouts "
                             f"(config.demos.seed {d.seed} .. about {demo_hi}).")
        if d.num_held_out and lo < d.held_out_seed + 3 * d.num_held_out + 10 and d.held_out_seed < hi:
            raise ValueError(f"config.select.seed: the validation layouts {lo}..{hi - 1} overlap the "
                             f"held-out demos' layouts from config.demos.held_out_seed ({d.held_out_seed}).")
    if s2.source:
        raise ValueError(f"config.stage2.source ({s2.source!r}) must be empty: only stage 1 can be a base "
                         "policy of yours (config.stage1.source).")
    if s1.source:
        if s2.select != "last":
            raise ValueError("config.stage2.select='validation' rolls out stage 2 on our stage 1; with "
                             "a base policy of yours (config.stage1.source) set it to 'last'.")
        if ev.curve_steps:
            raise ValueError("config.stage1.source: learning curves (config.eval.curve_steps) evaluate "
                             "stage 1 at training steps; a base policy of yours has none, so leave them empty.")
        if config.calibrate.any and d.num_held_out <= 0:
            raise ValueError("config.stage1.source: stage 2 is calibrated to the base policy's errors on "
                             "held-out demos: set config.demos.num_held_out > 0 (or turn "
                             "config.calibrate.sigma and crop_size off).")
        try:
            check_base_source(s1.source)
        except ValueError as e:
            raise ValueError(f"config.stage1.source: {e}") from e


# --- variants ------------------------------------------------------------------------------


def paper_method(c: LaunchConfig) -> LaunchConfig:
    """Sets every method option the paper does not have back to the paper's choice (Sec. IV-V)."""
    s2 = c.stage2
    method = dataclasses.replace(s2.stage2, sigma=tj.DEFAULT_SIGMA, crop_size=None,
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

      * `bc` | `cql`: the algorithm of both stages (a crop size left None follows it: 64 BC, 32 CQL);
      * `correction` | `direct`: stage 2 predicts a correction (Eq. 6) or the final action;
      * `mc` | `td`: CQL's Q target, both stages (`--config.stage2.cql.target=td`: stage 2 only);
      * `paper`: the paper's method exactly (`paper_method`), whatever the config's defaults.
    """
    parts = variant_parts(arg)
    for p in parts:
        if p in ("bc", "cql"):
            c = replace_path(c, {"stage1.algo": p, "stage2.algo": p})
        elif p in ("correction", "direct"):
            c = replace_path(c, {"stage2.stage2.mode": p})
        elif p in ("mc", "td"):
            c = replace_path(c, {"stage1.cql.target": p, "stage2.cql.target": p})
    return paper_method(c) if "paper" in parts else c


# --- replacing fields by dotted path; stored configs --------------------------------------------


class UnknownFieldError(ConfigError):
    """A dotted path naming no field: `path` (as given) and `suggestions` (the fields of that name
    one level down, by full path, else the closest name that could stand there)."""

    def __init__(self, path: str, name: str, suggestions: tuple[str, ...]) -> None:
        self.path, self.name, self.suggestions = path, name, suggestions
        hint = f"; did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else "."
        super().__init__("config", path, f"the config has no field {name!r}{hint}")

    def __str__(self) -> str:
        return f"config.{self.path}: {self.message}"

    def __reduce__(self):
        return type(self), (self.path, self.name, self.suggestions)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: its resolved annotation} of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_type(path: str) -> Any:
    """The annotation of the `LaunchConfig` field at dotted `path`; raises UnknownFieldError."""
    cls: Any = LaunchConfig
    for i, name in enumerate(names := path.split(".")):
        known = field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if name not in known:
            nested = tuple(".".join([*names[:i], c, name]) for c, k in known.items()
                           if dataclasses.is_dataclass(k) and name in field_types(k))
            close = tuple(difflib.get_close_matches(name, list(known), n=1))
            raise UnknownFieldError(".".join(names[:i + 1]), name, nested or close)
        cls = known[name]
    return cls


def _coerce(value: Any, kind: Any) -> Any:
    """`value` as `kind` where that is unambiguous (a JSON list to a tuple, an int to a float);
    anything else is left to the dataclass's own check."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return value if value is None else _coerce(value, args[0])
    if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
        return tuple(_coerce(v, args[0] if args else Any) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _replace(node: Any, tree: dict[str, Any], path: str) -> Any:
    changes = {}
    for name, value in tree.items():
        where = f"{path}.{name}" if path else name
        kind = field_type(where)
        if isinstance(value, dict) and dataclasses.is_dataclass(kind):
            changes[name] = _replace(getattr(node, name), value, where)
        else:
            changes[name] = _coerce(value, kind)
    try:
        return dataclasses.replace(node, **changes)
    except ConfigError as e:  # name the field by its path in the launcher's config
        raise ConfigError(f"config.{path}" if path else "config", e.field, e.message) from e


def replace_path(config: LaunchConfig, changes: dict[str, Any]) -> LaunchConfig:
    """`config` with fields replaced by dotted path, e.g. {'stage1.network.mlp_hidden': 16}.

    Each dataclass on the way is rebuilt once, with all of its changes, so it checks its fields.

    Raises:
      ConfigError: naming the field by its dotted path, for an unknown field (with the closest
        known name) or a value its dataclass refuses.
    """
    tree: dict[str, Any] = {}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return _replace(config, tree, "")


def to_dict(config: LaunchConfig) -> dict[str, Any]:
    """The config as a plain (JSON-ready) dict, with `version` = `CONFIG_VERSION`."""
    return {"version": CONFIG_VERSION, **json.loads(json.dumps(dataclasses.asdict(config)))}


def from_dict(d: Any) -> LaunchConfig:
    """A stored config (`to_dict`'s) as a `LaunchConfig`.

    Raises:
      ConfigError: a field the schema does not have, or a value it refuses.
      ValueError: not a dict, or another version than `CONFIG_VERSION`.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a stored config must be a dict; got {type(d).__name__}.")
    version = d.get("version")
    if version != CONFIG_VERSION:
        raise ValueError(f"the stored config has version {version!r}; this launcher reads version "
                         f"{CONFIG_VERSION}: re-run the stage with this launcher in a fresh --workdir.")
    return _replace(LaunchConfig(), {k: v for k, v in d.items() if k != "version"}, "")
