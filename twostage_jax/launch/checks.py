"""The launcher config: its translation into the library's `TrainConfig`, and its checks.

`validate_config` checks the whole config before any work starts; `train_config` builds one
stage's `tj.TrainConfig`; `program_fields` / `check_trained_with` compare a config with the one
a checkpoint was trained with (resume, pairing stage 2 with stage 1, evaluation).
`PipelineError` is the launcher's user-fixable error, raised by every launcher module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import twostage_jax as tj
from twostage_jax import sharding


STAGE_NAMES = {1: "stage1", 2: "stage2"}


class PipelineError(RuntimeError):
    """A user-fixable problem (missing inputs, inconsistent workdir); the message says what to do."""


def _network(c: ml_collections.ConfigDict) -> tj.NetworkConfig:
    # .get: configs saved before a field existed restore with the field's old behaviour.
    crop_strides = c.get("crop_conv_strides", None)
    return tj.NetworkConfig(
        conv_channels=tuple(c.conv_channels), crop_conv_channels=tuple(c.crop_conv_channels),
        conv_strides=tuple(c.conv_strides), mlp_hidden=int(c.mlp_hidden),
        head_hidden=tuple(c.head_hidden), conv_impl=str(c.conv_impl),
        crop_encoder=str(c.get("crop_encoder", "flatten")),
        coord_channels=bool(c.get("coord_channels", False)), keypoints=int(c.get("keypoints", 32)),
        crop_conv_strides=tuple(int(v) for v in crop_strides) if crop_strides else None,
        stage2_pose_input=bool(c.get("stage2_pose_input", True)))


def needs_calibration(config: ml_collections.ConfigDict) -> bool:
    """Whether stage 2 takes sigma or its crop size from stage 1's held-out residuals."""
    return bool(config.stage2.get("calibrate_sigma", False)) or int(config.stage2.crop_size) == 0


def calibration_path(workdir: Path, config: ml_collections.ConfigDict) -> Path:
    return workdir / str(config.stage2_name) / "calibration.json"


def train_config(config: ml_collections.ConfigDict, stage: int, workdir: Path | None = None,
                 calibration: dict | None = None) -> tj.TrainConfig:
    """The library `TrainConfig` of one stage from the launcher config.

    A calibrated stage 2 (`config.stage2.calibrate_sigma`, or `crop_size=0` for 'auto') takes
    sigma and the crop size from `calibration`, or else from the run's calibration.json in
    `workdir`, which `run_stage` writes when stage 2 starts.
    """
    s = config.stage1 if stage == 1 else config.stage2
    sigma = tuple(float(x) for x in config.stage2.sigma)
    crop_size = int(config.stage2.crop_size)
    if stage == 2 and needs_calibration(config):
        if calibration is None:
            path = calibration_path(workdir, config) if workdir is not None else None
            if path is None or not path.exists():
                raise PipelineError(
                    f"stage 2 '{config.stage2_name}' is calibrated from stage 1 when it trains, and "
                    f"{path or 'its calibration.json'} does not exist yet; run --mode=stage2 first.")
            calibration = json.loads(path.read_text())
        sigma = tuple(float(x) for x in calibration["sigma"])
        crop_size = int(calibration["crop_size"])
    elif stage == 1 and crop_size == 0:
        crop_size = int(config.stage2.ee_crop_size)  # stage 1 never reads stage 2's settings
    cql_fields = config.cql.to_dict()
    stage2_target = config.stage2.get("cql_target", "")  # absent in configs saved before it existed
    if stage == 2 and stage2_target:  # a stage-2-only target (MC vs TD ablation)
        cql_fields["target"] = str(stage2_target)
    for name in ("actor_lr", "critic_lr"):  # this stage's own CQL learning rates, if set
        value = float(s.get(f"cql_{name}", 0.0))  # absent in configs saved before they existed
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"config.{STAGE_NAMES[stage]}.cql_{name} must be a finite number > 0, "
                             f"or 0 for config.cql.{name}; got {value!r}.")
        if value > 0.0:
            cql_fields[name] = value
    grad = s.get("cql_actor_encoder_grad", None)  # None (or absent in older configs): config.cql's
    if grad is not None:
        if not isinstance(grad, bool):
            raise ValueError(f"config.{STAGE_NAMES[stage]}.cql_actor_encoder_grad must be True, False "
                             f"or None (config.cql.actor_encoder_grad); got {grad!r}.")
        cql_fields["actor_encoder_grad"] = grad
    bc = s.get("cql_bc_weight", None)  # None (or absent): config.cql.bc_weight
    if bc is not None:
        if isinstance(bc, bool) or not isinstance(bc, (int, float)) or not (math.isfinite(bc) and bc >= 0):
            raise ValueError(f"config.{STAGE_NAMES[stage]}.cql_bc_weight must be a finite number >= 0 "
                             f"or None (config.cql.bc_weight); got {bc!r}.")
        cql_fields["bc_weight"] = float(bc)
    cql = tj.CQLConfig(**cql_fields)
    s2 = tj.Stage2Config(crop_size=crop_size,
                         ee_crop_size=int(config.stage2.ee_crop_size),
                         sigma=sigma,
                         mode=str(config.stage2.mode), rotate=bool(config.stage2.rotate),
                         loss_weighting=str(config.stage2.get("loss_weighting", "none")),
                         gripper_clip=float(config.stage2.gripper_clip)
                         if config.stage2.get("gripper_clip", 0.0) else None)
    return tj.TrainConfig(
        algo=str(config.algo), num_steps=int(s.num_steps), batch_size=int(s.batch_size),
        learning_rate=float(s.learning_rate), min_move=float(s.get("min_move", 0.0)),
        image_size=int(config.stage1.image_size) if stage == 1 else None,
        network=_network(s.network), cql=cql, stage2=s2)


def _int_at_least(config: ml_collections.ConfigDict, path: str, low: int) -> None:
    value = config
    for part in path.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        what = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"config.{path} must be {what}; got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the whole config before any work starts; raises ValueError naming the field."""
    placeholder = {"sigma": list(config.stage2.sigma), "crop_size": 8}  # fields only
    for stage in (1, 2):
        try:
            # the library's dataclasses validate their own fields
            train_config(config, stage, calibration=placeholder)
        except ValueError as e:  # name the launcher's field, not the library's
            name = STAGE_NAMES[stage]
            message = str(e).replace("TrainConfig.algo", "config.algo")
            for library, launcher in (("NetworkConfig.", f"config.{name}.network."),
                                      ("TrainConfig.", f"config.{name}."),
                                      ("Stage2Config.", "config.stage2."), ("CQLConfig.", "config.cql.")):
                message = message.replace(library, launcher)
            raise ValueError(message) from e
    for path, low in (("seed", 0), ("demos.seed", 0), ("demos.augment_every", 1),
                      ("demos.image_size", 1), ("demos.max_keyframes", 1), ("eval.seed", 0),
                      ("eval.record_episodes", 0), ("eval.bootstrap_reps", 1)):
        _int_at_least(config, path, low)
    if "correction_passes" in config.eval:  # absent in configs saved before it existed
        _int_at_least(config, "eval.correction_passes", 1)
    if config.eval.get("corrected_dims") is not None:
        try:
            tj.check_corrected_dims(config.eval.corrected_dims)
        except ValueError as e:
            raise ValueError(str(e).replace("`corrected_dims`", "config.eval.corrected_dims")) from e
    if not 0.0 <= float(config.demos.gamma) < 1.0:  # NaN fails too
        raise ValueError(f"config.demos.gamma must lie in [0, 1); got {config.demos.gamma!r}.")
    s2 = config.stage2
    if int(s2.crop_size) < 0:
        raise ValueError(f"config.stage2.crop_size must be a positive int, or 0 for 'auto' "
                         f"(calibrated); got {s2.crop_size!r}.")
    if needs_calibration(config):
        # (RLBench: the validation demos are the last num_validation episodes of its folder.)
        if int(config.demos.get("num_validation", 0)) <= 0:
            raise ValueError("config.stage2.calibrate_sigma / crop_size=0 calibrate stage 2 on held-out "
                             "demos: set config.demos.num_validation > 0 (e.g. 10).")
        if not float(s2.get("sigma_floor", 0.02)) > 0:
            raise ValueError(f"config.stage2.sigma_floor must be > 0; got {s2.sigma_floor!r}.")
        if not 0.0 < float(s2.get("crop_coverage", 0.95)) <= 1.0:
            raise ValueError(f"config.stage2.crop_coverage must lie in (0, 1]; got {s2.crop_coverage!r}.")
    if int(config.num_seeds) <= 0:
        raise ValueError(f"config.num_seeds must be a positive int; got {config.num_seeds!r}.")
    if config.seed_strategy not in tj.SEED_STRATEGIES:
        raise ValueError(f"config.seed_strategy must be one of {tj.SEED_STRATEGIES}; got "
                         f"{config.seed_strategy!r}.")
    try:
        sharding.parse_seed_devices(config.get("seed_devices", "all"))
    except ValueError as e:
        raise ValueError(f"config.{e}") from e
    t = config.train
    for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if int(t[name]) <= 0:
            raise ValueError(f"config.train.{name} must be a positive int; got {t[name]!r}.")
    if int(t.checkpoint_every) % int(t.log_every):
        raise ValueError(f"config.train.checkpoint_every ({t.checkpoint_every}) must be a multiple "
                         f"of config.train.log_every ({t.log_every}).")
    if int(config.stage1.image_size) > int(config.demos.image_size):
        raise ValueError(f"config.stage1.image_size ({config.stage1.image_size}) must not exceed "
                         f"config.demos.image_size ({config.demos.image_size}).")
    for name in ("crop_size", "ee_crop_size"):
        if int(config.stage2[name]) > int(config.demos.image_size):
            raise ValueError(f"config.stage2.{name} ({config.stage2[name]}) must not exceed the "
                             f"image size ({config.demos.image_size}).")
    if int(config.demos.num_demos) <= 0:
        raise ValueError(f"config.demos.num_demos must be > 0; got {config.demos.num_demos!r}.")
    num_val = int(config.demos.get("num_validation", 0))
    if num_val < 0:
        raise ValueError(f"config.demos.num_validation must be >= 0; got {num_val!r}.")
    if num_val:
        lo, ev = int(config.demos.validation_seed), int(config.eval.seed)
        # demos skip failed layouts, so leave room for retries (3x, as the demo recorder allows)
        if lo < int(config.demos.seed) + 3 * int(config.demos.num_demos) + 10 or (
                lo < ev + int(config.eval.num_episodes) and ev < lo + 3 * num_val + 10):
            raise ValueError(f"config.demos.validation_seed ({lo}) must start beyond the training demo "
                             "layouts and not overlap the evaluation layouts config.eval.seed.. ; "
                             "e.g. 60000 with the defaults.")
    if int(config.eval.num_episodes) <= 0:
        raise ValueError(f"config.eval.num_episodes must be > 0; got {config.eval.num_episodes!r}.")
    from twostage_jax.launch.rollouts import validate_eval_config

    validate_eval_config(config)  # eval.workers, eval.curve_steps
    from twostage_jax.launch.selection import validate_select_config

    validate_select_config(config)  # stageN.select, stageN.select_steps, select
    name = str(config.stage2_name)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in ("stage1", "demos") or name.startswith("eval"):
        raise ValueError(f"config.stage2_name must be a folder name of letters, digits, '_' or '-', "
                         f"other than stage1, demos and eval*; got {name!r}.")
    if config.stage2.cql_target not in ("", "mc", "td"):
        raise ValueError(f"config.stage2.cql_target must be '' (same as config.cql.target), 'mc' or "
                         f"'td'; got {config.stage2.cql_target!r}.")
    if config.env not in ("metaworld", "rlbench"):
        raise ValueError(f"config.env must be 'metaworld' or 'rlbench'; got {config.env!r}.")
    if config.env == "rlbench" and not config.rlbench_root:
        raise ValueError("config.env='rlbench' needs config.rlbench_root: the folder holding "
                         "TASK/variation0/episodes/ from RLBench's dataset generator.")


def _plain(x: Any) -> Any:
    return [_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def program_fields(config: ml_collections.ConfigDict, stage: int) -> dict[str, Any]:
    """The config fields that change what `stage` trains, by dotted name, with their effective values.

    Resuming a stage, pairing stage 2 with stage 1 and evaluating compare these with the config
    the checkpoint was trained with. Left out: `num_steps` (a resume may extend a run), the
    logging and checkpoint cadence, `seed_strategy`, `seed_devices` and `conv_impl` (the same
    parameters up to float rounding), and fields the stage's algorithm ignores.
    """
    # A calibrated stage 2 is compared by its calibration settings (the values it derives are
    # fixed in its calibration.json), so resolve it with placeholders here.
    s2 = config.stage2
    placeholder = {"sigma": list(s2.sigma), "crop_size": 8} if needs_calibration(config) else None
    tc = train_config(config, stage, calibration=placeholder)
    name = STAGE_NAMES[stage]
    fields: dict[str, Any] = {
        "env": str(config.get("env", "metaworld")), "task": str(config.task), "algo": tc.algo,
        "seed": int(config.seed), "num_seeds": int(config.num_seeds),
        f"{name}.batch_size": tc.batch_size, f"{name}.min_move": tc.min_move}
    if stage == 2:
        fields["stage2.calibrate_sigma"] = bool(s2.get("calibrate_sigma", False))
        if needs_calibration(config):
            fields.update({"stage2.sigma_floor": float(s2.get("sigma_floor", 0.02)),
                           "stage2.crop_coverage": float(s2.get("crop_coverage", 0.95))})
    if tc.algo == "bc":
        fields[f"{name}.learning_rate"] = tc.learning_rate
    if stage == 1:
        fields["stage1.image_size"] = tc.image_size
    for f in dataclasses.fields(tc.network):
        if f.name != "conv_impl":
            fields[f"{name}.network.{f.name}"] = _plain(getattr(tc.network, f.name))
    if stage == 2:
        for f in dataclasses.fields(tc.stage2):
            fields[f"stage2.{f.name}"] = _plain(getattr(tc.stage2, f.name))
        # as configured (0 = 'auto'; a calibrated sigma's values live in calibration.json)
        fields["stage2.crop_size"] = int(s2.crop_size)
        fields["stage2.sigma"] = [float(x) for x in s2.sigma]
    if tc.algo == "cql":
        for f in dataclasses.fields(tc.cql):
            key = ("stage2.cql_target (else cql.target)" if stage == 2 and f.name == "target"
                   else f"cql.{f.name}")
            fields[key] = _plain(getattr(tc.cql, f.name))
    return fields


def config_differences(trained: Mapping[str, Any], config: ml_collections.ConfigDict,
                       stage: int) -> list[str]:
    """'config.FIELD: trained X, now Y' for each `program_fields` entry that differs."""
    try:
        old = program_fields(ml_collections.ConfigDict(dict(trained)), stage)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return [f"the stored config cannot be read ({type(e).__name__}: {e})"]
    new = program_fields(config, stage)
    return [f"config.{k}: trained {old.get(k, '(absent)')!r}, now {v!r}"
            for k, v in new.items() if old.get(k, "(absent)") != v]


def check_trained_with(config: ml_collections.ConfigDict, meta: dict, stage: int, where: str,
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
    if "config" in meta:
        diffs = config_differences(meta["config"], config, stage)
    else:  # written before checkpoints stored their config: what the metadata has
        now = {"num_seeds": int(config.num_seeds), "algo": str(config.algo)}
        diffs = [f"config.{k}: trained {meta[k]!r}, now {v!r}" for k, v in now.items()
                 if k in meta and meta[k] != v]
    if diffs:
        raise PipelineError(f"{action}: the config differs from the one {STAGE_NAMES[stage]} was "
                            f"trained with ({where}): {'; '.join(diffs)}. {advice}")


def seed_keys(config: ml_collections.ConfigDict, stage: int) -> jax.Array:
    """[S, 2] keys; seed i of stage s always gets the same key, whatever num_seeds is."""
    base = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), stage)
    return jnp.stack([jax.random.fold_in(base, i) for i in range(int(config.num_seeds))])


def seed_mesh(config: ml_collections.ConfigDict) -> Any:
    """The mesh the seeds shard over (`config.seed_devices`), or None for one device.

    Raises:
      PipelineError: more devices asked for than there are.
    """
    try:
        return sharding.seed_mesh(config.get("seed_devices", "all"))
    except ValueError as e:
        raise PipelineError(f"config.{e}") from e


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())
