"""The launcher config's checks across fields, each stage's library `TrainConfig`, and the
comparison of a config with the one a checkpoint was trained with.

`validate_config` checks what no single dataclass can (each checks its own fields when built),
and `check_data_source` a LeRobot source's dataset (reading its files, decoding no frame);
`train_config` gives one stage's `tj.TrainConfig`, with a calibrated stage 2's sigma and crop
size; `program_fields` / `check_trained_with` compare a config with a stored one (resume,
pairing stage 2 with stage 1, evaluation), read through `config.from_dict` (so any older stored
config is migrated first). `PipelineError` is the launcher's user-fixable error, raised by every
launcher module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import twostage_jax as tj
from twostage_jax import sharding
from twostage_jax.launch.bounds import check_bounds
from twostage_jax.launch.config import LaunchConfig, from_dict

STAGE_NAMES = {1: "stage1", 2: "stage2"}
LEROBOT_EVALUATION = (
    "rolls out in the simulator (config.env), whose camera and workspace are not those of the "
    "LeRobot dataset (config.data.source='lerobot'): train with --mode=demos, --mode=stage1 and "
    "--mode=stage2, and act on your robot with the library (twostage_jax.make_policy / "
    "correct_base_policy).")
"""Why evaluation (and --mode=all) refuses a LeRobot source, after what refuses it."""


class PipelineError(RuntimeError):
    """A user-fixable problem (missing inputs, inconsistent workdir); the message says what to do."""


def needs_calibration(config: LaunchConfig) -> bool:
    """Whether stage 2 takes sigma or its crop size from stage 1's held-out residuals."""
    return config.calibrate.any


def calibration_path(workdir: Path, config: LaunchConfig) -> Path:
    return workdir / config.stage2_name / "calibration.json"


def train_config(config: LaunchConfig, stage: int, workdir: Path | None = None,
                 calibration: dict | None = None) -> tj.TrainConfig:
    """The library `TrainConfig` of one stage.

    A calibrated stage 2 (`config.calibrate`) takes sigma and the crop size from `calibration`,
    or else from the run's calibration.json in `workdir`, which `run_stage` writes when stage 2
    starts.
    """
    s = config.stage(stage)
    if stage == 1 or not needs_calibration(config):
        return s.train_config()
    if calibration is None:
        path = calibration_path(workdir, config) if workdir is not None else None
        if path is None or not path.exists():
            raise PipelineError(
                f"stage 2 '{config.stage2_name}' is calibrated from stage 1 when it trains, and "
                f"{path or 'its calibration.json'} does not exist yet; run --mode=stage2 first.")
        calibration = json.loads(path.read_text())
    method = dataclasses.replace(s.stage2, sigma=tuple(float(x) for x in calibration["sigma"]),
                                 crop_size=int(calibration["crop_size"]))
    return s.train_config(stage2=method)


def validate_config(config: LaunchConfig) -> None:
    """Checks across fields, before any work starts; raises ValueError naming the fields.

    (Each dataclass of the config checked its own fields when it was built.)
    """
    if config.stage2.algo != config.stage1.algo:
        raise ValueError(f"config.stage2.algo ({config.stage2.algo!r}) must equal config.stage1.algo "
                         f"({config.stage1.algo!r}); set both with the :bc or :cql config variant.")
    d = config.demos
    if needs_calibration(config) and d.num_validation <= 0:
        # (RLBench: the validation demos are the last num_validation episodes of its folder.)
        raise ValueError("config.calibrate.sigma / config.calibrate.crop_size calibrate stage 2 on "
                         "held-out demos: set config.demos.num_validation > 0 (e.g. 10).")
    if (config.stage1.image_size or d.image_size) > d.image_size:
        raise ValueError(f"config.stage1.image_size ({config.stage1.image_size}) must not exceed "
                         f"config.demos.image_size ({d.image_size}).")
    method = config.stage2.stage2
    for name in ("ee_crop_size",) if config.calibrate.crop_size else ("crop_size", "ee_crop_size"):
        if getattr(method, name) > d.image_size:
            raise ValueError(f"config.stage2.stage2.{name} ({getattr(method, name)}) must not exceed "
                             f"the image size ({d.image_size}).")
    lerobot = config.data.source == "lerobot"
    if lerobot:
        for stage in (1, 2):
            if config.stage(stage).select == "validation":
                raise ValueError(f"config.{STAGE_NAMES[stage]}.select='validation' chooses checkpoints by "
                                 "rolling out in the simulator, which a LeRobot dataset's camera and "
                                 "workspace are not; use 'last' with config.data.source='lerobot'.")
        if config.data.episodes is not None:
            split_episodes(config, list(config.data.episodes))
    if d.num_validation and not lerobot:  # the simulator's layouts
        lo, ev = d.validation_seed, config.eval.seed
        # demos skip failed layouts, so leave room for retries (3x, as the demo recorder allows)
        if lo < d.seed + 3 * d.num_demos + 10 or (
                lo < ev + config.eval.num_episodes and ev < lo + 3 * d.num_validation + 10):
            raise ValueError(f"config.demos.validation_seed ({lo}) must start beyond the training demo "
                             "layouts and not overlap the evaluation layouts config.eval.seed.. ; "
                             "e.g. 60000 with the defaults.")
    from twostage_jax.launch.rollouts import validate_eval_config
    from twostage_jax.launch.selection import validate_select_config

    from twostage_jax.launch.base_source import validate_base_config

    validate_base_config(config)  # stage1.source: a base policy of the user's
    validate_eval_config(config)  # eval.curve_steps against the stages' steps
    validate_select_config(config)  # stageN.select_steps, select's layouts
    if config.env == "rlbench" and not config.rlbench_root and not lerobot:
        raise ValueError("config.env='rlbench' needs config.rlbench_root: the folder holding "
                         "TASK/variation0/episodes/ from RLBench's dataset generator.")
    check_bounds(config)  # sizes no machine holds (seeds, episodes, steps)


def split_episodes(config: LaunchConfig, episodes: list[int]) -> tuple[list[int], list[int]]:
    """A LeRobot source's episodes as (training, held-out validation): the last
    `config.demos.num_validation` are held out.

    Raises:
      ValueError: naming config.demos.num_validation when no training episode would be left.
    """
    n = int(config.demos.num_validation)
    if n >= len(episodes):
        which = ("config.data.episodes" if config.data.episodes is not None
                 else f"the dataset at {config.data.root}")
        raise ValueError(f"config.demos.num_validation ({n}) holds out the last {n} LeRobot episodes as "
                         f"validation demos, but {which} holds {len(episodes)}, leaving none to train on; "
                         "lower config.demos.num_validation (0 needs --config.calibrate.sigma=False and "
                         "--config.calibrate.crop_size=False) or choose more episodes.")
    return episodes[:len(episodes) - n], episodes[len(episodes) - n:]


def check_data_source(config: LaunchConfig) -> tuple[list[int], list[int]]:
    """Checks a LeRobot source (`config.data`) before any work: every check
    `load_lerobot_dataset` makes (keys, the camera's calibration, lengths, each video against its
    index), without decoding a frame, then `config.demos.image_size` against its frames and
    `config.demos.num_validation` against its episodes.

    Returns:
      (training, validation) episode indices (`split_episodes`).

    Raises:
      ValueError: one line naming the config field (and the file) at fault.
      ImportError: pyarrow or PyAV is missing (the message names the `lerobot` extra).
    """
    from twostage_jax.data.camera_file import CalibrationFileError, load_calibration
    from twostage_jax.data.lerobot import check_lerobot_dataset

    data = config.data
    try:
        calibration = load_calibration(data.calibration)
    except (ValueError, OSError) as e:  # missing, not JSON, malformed
        raise ValueError(f"config.data.calibration: {e}") from e
    try:
        episodes = check_lerobot_dataset(data.root, data.spec(), calibration,
                                         None if data.episodes is None else list(data.episodes))
    except (ValueError, OSError) as e:  # the reader names LeRobotSpec's fields: ours have their names
        message = str(e).replace("LeRobotSpec.", "config.data.")
        if not message.startswith("config.data."):
            field = ("calibration" if isinstance(e, CalibrationFileError) or "is calibrated for" in message
                     else "episodes" if data.episodes is not None and "is not in the episode table" in message
                     else "root")
            message = f"config.data.{field}: {message}"
        raise ValueError(message) from e
    camera = calibration.camera(data.image_key)
    if int(config.demos.image_size) != int(camera.height):
        raise ValueError(f"config.demos.image_size ({config.demos.image_size}) must be the height of the "
                         f"frames of {data.image_key!r} ({camera.width}x{camera.height} px); pass "
                         f"--config.demos.image_size={camera.height}.")
    return split_episodes(config, episodes)


def _plain(x: Any) -> Any:
    return [_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def program_fields(config: LaunchConfig, stage: int) -> dict[str, Any]:
    """The config fields that change what `stage` trains, by dotted name, with their values.

    Resuming a stage, pairing stage 2 with stage 1 and evaluating compare these with the config
    the checkpoint was trained with. Left out: `num_steps` (a resume may extend a run), the
    logging and checkpoint cadence, checkpoint selection, `seed_strategy`, `seed_devices` and
    `conv_impl` (the same parameters up to float rounding), and fields the stage's algorithm
    ignores. A calibrated stage 2 is compared by its calibration settings (the values it derives
    are fixed in its calibration.json). The demos' source is compared too, and a LeRobot
    source's every `data` field (which dataset, which episodes, and how they are read).
    """
    s = config.stage(stage)
    name = STAGE_NAMES[stage]
    fields: dict[str, Any] = {
        "env": config.env, "task": config.task, f"{name}.algo": s.algo, "seed": config.seed,
        "num_seeds": config.num_seeds, f"{name}.batch_size": s.batch_size,
        f"{name}.min_move": float(s.min_move), "data.source": config.data.source}
    if config.data.source == "lerobot":  # which dataset, and how it is read
        for f in dataclasses.fields(config.data):
            if f.name != "min_visible":  # a check on the demos, not what trains
                fields[f"data.{f.name}"] = _plain(getattr(config.data, f.name))
    if s.algo == "bc":
        fields[f"{name}.learning_rate"] = float(s.learning_rate)
    if stage == 1:  # None: the frames' size
        fields["stage1.image_size"] = s.image_size or config.demos.image_size
        fields["stage1.augment"] = s.augment
        if s.augment != "none":
            fields["stage1.shift_pad"] = int(s.shift_pad)
    for f in dataclasses.fields(s.network):
        if f.name != "conv_impl":
            fields[f"{name}.network.{f.name}"] = _plain(getattr(s.network, f.name))
    if stage == 2:
        cal = config.calibrate
        fields["calibrate.sigma"] = cal.sigma
        fields["calibrate.crop_size"] = cal.crop_size
        if cal.any:
            fields.update({"calibrate.sigma_floor": float(cal.sigma_floor),
                           "calibrate.crop_coverage": float(cal.crop_coverage)})
        for f in dataclasses.fields(s.stage2):
            if not (f.name == "crop_size" and cal.crop_size):
                fields[f"stage2.stage2.{f.name}"] = _plain(getattr(s.stage2, f.name))
    if s.algo == "cql":
        for f in dataclasses.fields(s.cql):
            fields[f"{name}.cql.{f.name}"] = _plain(getattr(s.cql, f.name))
    return fields


def config_differences(trained: Mapping[str, Any], config: LaunchConfig, stage: int) -> list[str]:
    """'config.FIELD: trained X, now Y' for each `program_fields` entry that differs.

    Args:
      trained: a stored config dict (`config.to_dict`'s).
      config: the config of this invocation.
      stage: which stage's fields to compare.
    """
    try:
        old = program_fields(from_dict(trained), stage)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return [f"the stored config cannot be read ({type(e).__name__}: {e})"]
    new = program_fields(config, stage)
    return [f"config.{k}: trained {old.get(k, '(absent)')!r}, now {v!r}"
            for k, v in new.items() if old.get(k, "(absent)") != v]


def check_trained_with(config: LaunchConfig, meta: dict, stage: int, where: str,
                       action: str, advice: str) -> None:
    """Raises PipelineError naming every differing field unless `config` trains what `meta` did.

    Args:
      config: the config of this invocation.
      meta: a checkpoint's metadata (its `config` is the one the stage was trained with).
      stage: which stage's fields to compare.
      where: the checkpoint, for the message.
      action: what is refused, for the message ("cannot evaluate").
      advice: what to do instead.
    """
    diffs = config_differences(meta.get("config"), config, stage)
    if diffs:
        raise PipelineError(f"{action}: the config differs from the one {STAGE_NAMES[stage]} was "
                            f"trained with ({where}): {'; '.join(diffs)}. {advice}")


def seed_keys(config: LaunchConfig, stage: int) -> jax.Array:
    """[S, 2] keys; seed i of stage s always gets the same key, whatever num_seeds is."""
    base = jax.random.fold_in(jax.random.PRNGKey(config.seed), stage)
    return jnp.stack([jax.random.fold_in(base, i) for i in range(config.num_seeds)])


def seed_mesh(config: LaunchConfig) -> Any:
    """The mesh the seeds shard over (`config.seed_devices`), or None for one device.

    Raises:
      PipelineError: more devices asked for than there are.
    """
    try:
        return sharding.seed_mesh(config.seed_devices)
    except ValueError as e:
        raise PipelineError(f"config.{e}") from e
