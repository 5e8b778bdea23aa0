"""The launcher's stages: demos -> stage 1 -> stage 2 -> evaluation, on one workdir.

Workdir layout:
  demos/dataset.npz, stats.json    the offline dataset and how it was made
  demos/validation.npz             held-out demos (config.demos.num_validation > 0): layouts used
                                   neither for training nor for evaluation
  demos/config.json                the config that recorded the dataset
  stage{1,2}/config.json           the config a stage was started with (kept on --resume)
  stage{1,2}/checkpoints/          orbax checkpoints (AgentState with a leading seed axis)
  stage{1,2}/damaged_checkpoints/  checkpoints --resume found damaged and moved aside
  stage{1,2}/metrics.jsonl         per-chunk mean metrics, one line per (step, seed)
  stage{1,2}/tb/                   TensorBoard event files
  stage2/pairing.json              the stage-1 checkpoint stage 2 pairs with
  stage2/calibration.json          a calibrated stage 2's sigma and crop size, fixed when it starts
  eval/results.json, *.png, *.gif  success rates, intervals, plots and rollout frames

With `config.stage2_name=NAME`, stage 2 lives in NAME/ and its evaluation in eval_NAME/, so
ablations of stage 2 (crop size, direct vs correction, MC vs TD) share one stage 1.

What a workdir guarantees: the dataset is never replaced without `force`; a stage's
checkpoints are only extended by a resume with the config they were trained with (compared
field by field, see `program_fields`), and damaged ones are moved aside, never deleted; an
evaluation only runs with the config its stages were trained with and replaces its folder as
a unit, so a failure leaves the previous results whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import twostage_jax as tj
from twostage_jax import evaluation, sharding
from twostage_jax._io import atomic_folder, atomic_open
from twostage_jax.checkpoint import CheckpointError, Checkpointer, write_json_atomic

STAGE_NAMES = {1: "stage1", 2: "stage2"}


class PipelineError(RuntimeError):
    """A user-fixable problem (missing inputs, inconsistent workdir); the message says what to do."""


# --------------------------------------------------------------------------------------------
# Config conversion and validation


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
    from experiments.rollouts import validate_eval_config

    validate_eval_config(config)  # eval.workers, eval.curve_steps
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


def seed_mesh(config: ml_collections.ConfigDict) -> Any:
    """The mesh the seeds shard over (`config.seed_devices`), or None for one device.

    Raises:
      PipelineError: more devices asked for than there are.
    """
    try:
        return sharding.seed_mesh(config.get("seed_devices", "all"))
    except ValueError as e:
        raise PipelineError(f"config.{e}") from e


def is_writer() -> bool:
    """True on the process that writes logs and results (process 0; the only one usually)."""
    return jax.process_index() == 0


class _NoLog:
    """Stands in for `_MetricsLog` on processes other than 0."""

    def write(self, step: int, means: dict[str, np.ndarray]) -> None:
        pass

    def close(self) -> None:
        pass


def ensure_writable(folder: Path, why: str) -> None:
    """Raises PipelineError unless a file can be created in `folder` (tried, not guessed)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as e:
        raise PipelineError(f"{folder} is not writable ({e.strerror or e}); {why}") from e
    os.close(fd)
    os.unlink(probe)


# --------------------------------------------------------------------------------------------
# Demos


def dataset_path(workdir: Path) -> Path:
    return workdir / "demos" / "dataset.npz"


def trained_stages(workdir: Path) -> list[str]:
    """Folders of the workdir whose checkpoints hold at least one step (stage1, stage2, ...)."""
    return sorted(p.parent.name for p in workdir.glob("*/checkpoints")
                  if p.is_dir() and any(c.name.isdigit() for c in p.iterdir()))


def _record(config: ml_collections.ConfigDict) -> dict:
    return {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(sys.argv),
            "config": config_to_dict(config)}


def run_demos(config: ml_collections.ConfigDict, workdir: Path, force: bool = False) -> dict:
    """Records demonstrations, builds the keyframe dataset and writes it atomically.

    Args:
      config: the launcher config.
      workdir: the workdir; the dataset goes to demos/dataset.npz, with demos/stats.json and
        demos/config.json (the config that made it).
      force: replace an existing dataset. Without it an existing dataset is refused before
        any work, since the stages trained on it would no longer match it.

    Raises:
      PipelineError: a dataset exists and `force` is False.
    """
    from twostage_jax.data.dataset import build_dataset, dataset_nbytes, save_dataset

    path = dataset_path(workdir)
    if path.exists() or path.is_symlink():
        stages = trained_stages(workdir)
        trained = f"; {', '.join(stages)} {'was' if len(stages) == 1 else 'were'} trained on it" \
            if stages else ""
        if not force:
            raise PipelineError(
                f"{path} already exists{trained}. --mode=demos would replace it: use a fresh "
                "--workdir, or pass --force to replace it anyway.")
        logging.warning("--force: replacing %s%s", path, trained)
    d = config.demos
    start = time.perf_counter()
    if config.env == "metaworld":
        from twostage_jax.data.demos import record_demos
        from twostage_jax.envs.metaworld import MetaWorldConfig, default_workspace

        env_cfg = MetaWorldConfig(width=int(d.image_size), height=int(d.image_size),
                                  max_keyframes=int(d.max_keyframes))
        trajs, stats = record_demos(config.task, int(d.num_demos), seed=int(d.seed),
                                    augment_every=int(d.augment_every), env_config=env_cfg)
        workspace = default_workspace()
        info = {"demo_seeds": [int(t.seed) for t in trajs], **stats._asdict()}
    else:
        trajs, val_episodes = _read_rlbench(config)
        from twostage_jax.rlbench_conventions import default_workspace

        workspace = default_workspace()
        info = {"demo_seeds": [int(t.seed) for t in trajs], "kept": len(trajs)}
    ds = build_dataset(trajs, workspace, gamma=float(d.gamma), augment_every=int(d.augment_every))
    dataset_path(workdir).parent.mkdir(parents=True, exist_ok=True)
    num_val = int(d.get("num_validation", 0))
    if num_val > 0 and config.env == "metaworld":
        # Keyframe-to-keyframe chains only (no augmentation): the states a policy meets when it
        # acts keyframe by keyframe.
        val, _ = record_demos(config.task, num_val, seed=int(d.validation_seed), augment_every=10**6,
                              env_config=env_cfg)
        clash = set(info["demo_seeds"]).intersection(int(t.seed) for t in val)
        if clash:
            raise PipelineError(f"validation demo seeds {sorted(clash)[:5]} were used for training "
                                "demos; set config.demos.validation_seed beyond them.")
        save_dataset(validation_path(workdir), build_dataset(val, workspace, gamma=float(d.gamma),
                                                             augment_every=10**6))
        info["validation_seeds"] = [int(t.seed) for t in val]
    elif num_val > 0:  # RLBench: the folder's last num_validation episodes, keyframe chains only
        from twostage_jax.data.rlbench_io import load_rlbench_demos

        val = load_rlbench_demos(config.rlbench_root, config.task, episodes=val_episodes,
                                 augment_every=10**6)
        save_dataset(validation_path(workdir), build_dataset(val, workspace, gamma=float(d.gamma),
                                                             augment_every=10**6))
        info["validation_seeds"] = [int(t.seed) for t in val]
    elif validation_path(workdir).exists():  # --force without validation demos: drop the old ones
        validation_path(workdir).unlink()
    save_dataset(dataset_path(workdir), ds)
    info.update(task=config.task, env=config.env, transitions=int(ds.action.shape[0]),
                images=int(ds.images.shape[0]), dataset_mib=dataset_nbytes(ds) / 2**20,
                total_seconds=time.perf_counter() - start)
    write_json_atomic(workdir / "demos" / "stats.json", info)
    write_json_atomic(workdir / "demos" / "config.json", _record(config))
    logging.info("demos: kept %d, %d transitions, %d images (%.1f MiB) in %.0f s",
                 info.get("kept", len(trajs)), info["transitions"], info["images"],
                 info["dataset_mib"], info["total_seconds"])
    return info


def _read_rlbench(config: ml_collections.ConfigDict) -> tuple[list, list[int]]:
    """RLBench's on-disk demos of config.task: (training trajectories, validation episode numbers).

    The last `config.demos.num_validation` episodes of ROOT/TASK/variation0/episodes are held out
    as validation demos (RLBench's dataset generator records no separate layouts for them); the
    first `config.demos.num_demos` of the others are the training demos.
    """
    from twostage_jax.data.rlbench_io import list_rlbench_episodes, load_rlbench_demos

    d = config.demos
    root = str(config.rlbench_root)
    try:
        episodes = list_rlbench_episodes(root, config.task)
    except FileNotFoundError as e:
        raise PipelineError(f"config.rlbench_root: {e} Point it at the folder RLBench's dataset "
                            "generator wrote (its --save_path) and --task at a task folder in it.") from e
    num_val = int(d.get("num_validation", 0))
    if len(episodes) <= num_val:
        raise PipelineError(
            f"config.demos.num_validation ({num_val}) holds out the last {num_val} RLBench episodes "
            f"as validation demos, but {root}/{config.task}/variation0/episodes has {len(episodes)}; "
            "record more episodes, or lower config.demos.num_validation (0 needs "
            "--config.stage2.calibrate_sigma=False and a crop size > 0).")
    train_episodes = episodes[: len(episodes) - num_val][: int(d.num_demos)]
    trajs = load_rlbench_demos(root, config.task, episodes=train_episodes,
                               augment_every=int(d.augment_every))
    size = int(trajs[0].images.shape[1])
    if trajs[0].images.shape[1:3] != (int(d.image_size),) * 2:
        raise PipelineError(f"config.demos.image_size ({d.image_size}) must match the RLBench images "
                            f"({trajs[0].images.shape[2]}x{trajs[0].images.shape[1]} px); pass "
                            f"--config.demos.image_size={size}.")
    if len(train_episodes) < int(d.num_demos):
        logging.warning("demos: the RLBench folder has %d training episodes (after %d held out), "
                        "fewer than config.demos.num_demos=%d", len(train_episodes), num_val,
                        int(d.num_demos))
    return trajs, episodes[len(episodes) - num_val:]


def validation_path(workdir: Path) -> Path:
    return workdir / "demos" / "validation.npz"


def load_validation(workdir: Path) -> tj.Dataset | None:
    """The workdir's held-out validation demos, or None if it has none."""
    from twostage_jax.data.dataset import load_dataset

    path = validation_path(workdir)
    return load_dataset(path) if path.exists() else None


def load_demos(workdir: Path) -> tj.Dataset:
    from twostage_jax.data.dataset import load_dataset

    path = dataset_path(workdir)
    if not path.exists():
        raise PipelineError(f"no dataset at {path}; run --mode=demos (or --mode=all) first.")
    return load_dataset(path)


# --------------------------------------------------------------------------------------------
# Training


def seed_keys(config: ml_collections.ConfigDict, stage: int) -> jax.Array:
    """[S, 2] keys; seed i of stage s always gets the same key, whatever num_seeds is."""
    base = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), stage)
    return jnp.stack([jax.random.fold_in(base, i) for i in range(int(config.num_seeds))])


class _MetricsLog:
    """Per-chunk metrics to JSONL (atomic rewrite on resume) and TensorBoard, both flushed per chunk.

    TensorBoard events are written synchronously (tensorboardX's `SummaryWriter` queues them
    to a thread that flushes every two minutes, so a killed run lost them).
    """

    def __init__(self, directory: Path, resume_step: int):
        self.path = directory / "metrics.jsonl"
        lines = []
        if self.path.exists() and resume_step > 0:
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)["step"] <= resume_step:
                            lines.append(line if line.endswith("\n") else line + "\n")
                    except (json.JSONDecodeError, KeyError):
                        break  # a line cut by a kill: drop it and everything after
        with atomic_open(self.path, "w") as f:
            f.writelines(lines)
        self._file = open(self.path, "a")
        try:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog
            from tensorboardX.proto.summary_pb2 import Summary
        except ImportError:  # pragma: no cover - tensorboardX is a core dependency
            self._tb = None
            return
        self._event, self._summary = Event, Summary
        (directory / "tb").mkdir(parents=True, exist_ok=True)
        self._tb = EventsWriter(str(directory / "tb" / "events"))
        if resume_step:  # TensorBoard hides the events of steps > resume_step written before a kill
            self._tb.write_event(Event(wall_time=time.time(), step=resume_step + 1,
                                       session_log=SessionLog(status=SessionLog.START)))
            self._tb.flush()

    def write(self, step: int, means: dict[str, np.ndarray]) -> None:
        """Appends one chunk's per-seed means; TensorBoard first, so whatever a kill leaves in
        metrics.jsonl is in the event file too."""
        num_seeds = len(next(iter(means.values())))
        if self._tb is not None:
            now = time.time()
            for i in range(num_seeds):
                values = [self._summary.Value(tag=f"seed{i}/{k}", simple_value=float(v[i]))
                          for k, v in means.items()]
                self._tb.write_event(self._event(wall_time=now, step=int(step),
                                                 summary=self._summary(value=values)))
            self._tb.flush()
        for i in range(num_seeds):
            row = {"step": int(step), "seed": i, **{k: float(v[i]) for k, v in means.items()}}
            self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def stage_dir(workdir: Path, stage: int, config: ml_collections.ConfigDict) -> Path:
    """workdir/stage1, or workdir/<config.stage2_name> (several stage-2 runs can share a stage 1)."""
    return workdir / (STAGE_NAMES[1] if stage == 1 else str(config.stage2_name))


def eval_dir(workdir: Path, config: ml_collections.ConfigDict) -> Path:
    """workdir/eval for the default stage 2, workdir/eval_<stage2_name> for a named one."""
    name = str(config.stage2_name)
    return workdir / ("eval" if name == STAGE_NAMES[2] else f"eval_{name}")


def _checkpoint_meta(config: ml_collections.ConfigDict, stage: int, extra: dict | None = None) -> dict:
    return {"stage": stage, "num_seeds": int(config.num_seeds), "algo": config.algo,
            "task": config.task, "config": json.loads(config.to_json_best_effort()), **(extra or {})}


def _progress(total: int, initial: int, desc: str, unit: str = "step"):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=2.0, smoothing=0.1)


def _resume_advice(stage: int, config: ml_collections.ConfigDict) -> str:
    record = stage_dir(Path("."), stage, config).name + "/config.json"
    other = ("a fresh --workdir" if stage == 1 else
             "a fresh --workdir, or a new stage 2 beside it with --config.stage2_name=NAME")
    return (f"Resume with the config it was started with (recorded in {record}), or train the "
            f"change in {other}.")


def _restore_newest_intact(ckpt: Checkpointer, like: Any, config: ml_collections.ConfigDict,
                           stage: int, out_dir: Path) -> tuple[Any, int]:
    """Restores the newest intact checkpoint; damaged newer ones are moved aside, saying so.

    Returns:
      (state, step), or (None, 0) if no checkpoint is intact.

    Raises:
      PipelineError: the newest readable checkpoint was trained with another config.
    """
    damaged: list[tuple[int, CheckpointError]] = []
    state, step = None, 0
    for candidate in reversed(ckpt.all_steps()):
        try:
            meta = ckpt.read_meta(candidate)
            check_trained_with(config, meta, stage, f"{ckpt.directory / str(candidate)}",
                               f"cannot resume {out_dir.name}", _resume_advice(stage, config))
            state, _ = ckpt.restore(like, candidate)
            step = candidate
            break
        except CheckpointError as e:
            try:  # damaged, or readable but shaped for another program?
                ckpt.verify(candidate)
            except CheckpointError:
                damaged.append((candidate, e))
                continue
            raise PipelineError(f"cannot resume {out_dir.name}: {e} "
                                f"{_resume_advice(stage, config)}") from e
    for bad, error in damaged:
        moved = ckpt.set_aside(bad, out_dir / "damaged_checkpoints")
        logging.warning("%s: %s Moved it to %s.", out_dir.name, error, moved)
    if damaged:
        logging.warning("%s: falling back to %s", out_dir.name,
                        f"step {step}, the newest intact checkpoint" if state is not None else
                        "step 0: no intact checkpoint is left")
    return state, step


def run_stage(config: ml_collections.ConfigDict, workdir: Path, stage: int, resume: bool = False) -> dict:
    """Trains one stage for all seeds, with chunked logging and periodic checkpoints.

    A fresh stage refuses a folder that already holds checkpoints and writes its config to
    STAGE/config.json. With `resume` it continues from the newest intact checkpoint (damaged
    newer ones are moved to STAGE/damaged_checkpoints/) if that was trained with the same
    `program_fields`, and keeps STAGE/config.json as it is.

    Returns:
      A summary dict (final step, wall time, final metric means per seed).
    """
    out_dir = stage_dir(workdir, stage, config)
    from experiments.rollouts import curve_steps

    # the learning curves' checkpoints (config.eval.curve_steps) are kept beside the latest ones
    ckpt = Checkpointer(out_dir / "checkpoints", keep=int(config.train.keep_checkpoints),
                        keep_steps=curve_steps(config))
    try:
        return _train_stage(config, workdir, stage, resume, out_dir, ckpt)
    finally:
        ckpt.close()


def _train_stage(config: ml_collections.ConfigDict, workdir: Path, stage: int, resume: bool,
                 out_dir: Path, ckpt: Checkpointer) -> dict:
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        raise PipelineError(
            f"{out_dir / 'checkpoints'} already holds checkpoints (latest step {latest}). Pass "
            "--resume to continue that run, or use a fresh --workdir.")
    if latest is not None:  # refuse another config before any work (damage is handled below)
        try:
            meta = ckpt.read_meta(latest)
        except CheckpointError:
            meta = {}
        check_trained_with(config, meta, stage, str(ckpt.directory / str(latest)),
                           f"cannot resume {out_dir.name}", _resume_advice(stage, config))
    extra: dict = {}
    if stage == 2:
        extra["stage1_checkpoint"] = stage1_pairing(config, workdir)
    dataset = load_demos(workdir)
    if stage == 2 and needs_calibration(config) and not calibration_path(workdir, config).exists():
        calibrate_stage2(config, workdir, dataset)
    tcfg = train_config(config, stage, workdir)
    train, data = tj.make_train(tcfg, stage), tj.prepare_data(dataset, tcfg)
    keys = seed_keys(config, stage)
    mesh = seed_mesh(config)  # seeds sharded over devices (and processes), or None
    if mesh is not None:
        logging.info("%s: %d seeds sharded over %d devices", out_dir.name, int(config.num_seeds),
                     sharding.num_seed_shards(mesh))
    states, start_step = None, 0
    if latest is not None:
        like = jax.eval_shape(jax.vmap(train.init, in_axes=(0, None)), keys, data)
        states, start_step = _restore_newest_intact(
            ckpt, like if mesh is None else sharding.abstract_state(like, mesh), config, stage, out_dir)
    if states is None:
        states = tj.init_seeds(train, keys, data, mesh)
        if is_writer():
            write_json_atomic(out_dir / "config.json", _record(config))
    else:
        logging.info("resumed %s from step %d", out_dir.name, start_step)
    if stage == 2 and is_writer():
        write_json_atomic(out_dir / "pairing.json", extra["stage1_checkpoint"])

    total = tcfg.num_steps
    summary_path = out_dir / "summary.json"
    if start_step >= total and summary_path.exists():
        logging.info("%s is already trained to step %d; nothing to do", out_dir, start_step)
        return json.loads(summary_path.read_text())
    log_every = int(config.train.log_every)
    ckpt_every = int(config.train.checkpoint_every)
    held_out = _held_out_evaluator(tcfg, stage, load_validation(workdir), mesh)
    log = _MetricsLog(out_dir, start_step) if is_writer() else _NoLog()
    bar = _progress(total, start_step, f"{STAGE_NAMES[stage]} {config.algo} x{config.num_seeds} seeds")
    step = start_step
    wall = time.perf_counter()
    means: dict[str, np.ndarray] = {}
    try:
        while step < total:
            n = min(log_every - step % log_every, total - step)
            states, metrics = tj.run_seeds(train, states, data, n, config.seed_strategy, mesh)
            step += n
            # nested metrics, logged under flat names (tj.flatten_metrics: each leaf's field name)
            means = {k: np.asarray(v).mean(axis=1)
                     for k, v in tj.flatten_metrics(sharding.to_host(metrics)).items()}
            if held_out is not None:
                means.update(held_out(states.params))
            bad = [k for k, v in means.items() if not np.all(np.isfinite(v))]
            if bad:
                raise PipelineError(
                    f"{out_dir.name}: non-finite {bad} at step {step}; lower the learning rate or "
                    "check the dataset. The last good checkpoint is kept (continue with --resume).")
            log.write(step, means)
            key_metric = "bc_loss" if "bc_loss" in means else "critic_loss"
            bar.set_postfix({key_metric: " ".join(f"{v:.3g}" for v in means[key_metric])})
            bar.update(n)
            if step % ckpt_every == 0 or step == total or step in ckpt.keep_steps:
                ckpt.save(step, states, _checkpoint_meta(config, stage, extra))
    finally:
        bar.close()
        log.close()
    summary = {"stage": stage, "final_step": step, "train_seconds": time.perf_counter() - wall,
               "final_metrics": {k: v.tolist() for k, v in means.items()}}
    if is_writer():
        write_json_atomic(summary_path, summary)
    return summary


def _held_out_evaluator(tcfg: tj.TrainConfig, stage: int, validation: tj.Dataset | None,
                        mesh: Any = None):
    """params [S, ...] -> {'val_position_cm': [S], 'val_gripper_agreement': [S]}, or None.

    Every log chunk, the stage is measured on the workdir's validation demos (all of their
    transitions, and for stage 2 one fixed Algo. 1 draw each), so the training budget can be
    read off the held-out curve in metrics.jsonl instead of from evaluation episodes.
    """
    import dataclasses

    if validation is None:
        return None
    data = tj.prepare_data(validation, dataclasses.replace(tcfg, min_move=0.0))
    evaluate = jax.vmap(tj.make_held_out_eval(tcfg, stage), in_axes=(0, None, None))
    key = jax.random.PRNGKey(0)
    if mesh is not None:  # params are seed-sharded: the data and key go on every device
        data, key = sharding.put_replicated((data, key), mesh)

    def run(params: Any) -> dict[str, np.ndarray]:
        m = sharding.to_host(evaluate(params, data, key))
        return {"val_position_cm": np.asarray(m.position_cm),
                "val_gripper_agreement": np.asarray(m.gripper_agreement)}

    return run


def stage1_actions(config: ml_collections.ConfigDict, params1: Any, ds: tj.Dataset) -> np.ndarray:
    """[S, N, 7] stage 1's deterministic actions on every transition of `ds`, per seed."""
    act = tj.make_policy(train_config(config, 1), None, ds.workspace)
    cam = ds.camera(0)
    out = []
    for s in range(int(config.num_seeds)):
        p1 = jax.tree_util.tree_map(lambda x, s=s: x[s], params1)
        rows = []
        for lo in range(0, ds.action.shape[0], 128):
            idx = np.arange(lo, min(lo + 128, ds.action.shape[0]))
            o = act(p1, None, jnp.asarray(ds.images[ds.obs_index[idx]]), jnp.asarray(ds.pose[idx]), cam)
            rows.append(np.asarray(o.tentative))
        out.append(np.concatenate(rows))
    return np.stack(out)


def calibrate_stage2(config: ml_collections.ConfigDict, workdir: Path, dataset: tj.Dataset) -> dict:
    """Calibrates stage 2's sigma and/or crop size to stage 1's errors on the validation demos.

    Stage 1 (its latest checkpoint, all seeds pooled) acts on every validation transition; sigma
    comes from `calibrate_sigma` (the 6 pose dimensions; the gripper keeps its sigma) and the crop
    size from `calibrate_crop_size` on the targets' offsets in the tentative crops
    (`crop_offsets`). Writes and returns `<stage2_name>/calibration.json`.
    """
    from twostage_jax import calibration as cal

    validation = load_validation(workdir)
    if validation is None:
        raise PipelineError(f"calibrating stage 2 needs held-out demos at {validation_path(workdir)}; "
                            "re-run --mode=demos with config.demos.num_validation > 0.")
    params1, step1 = load_params(config, workdir, 1, dataset)
    a1 = stage1_actions(config, params1, validation).reshape(-1, tj.ACTION_DIM)
    a = np.tile(np.asarray(validation.action), (int(config.num_seeds), 1))
    s2 = config.stage2
    sigma = [float(x) for x in s2.sigma]
    if bool(s2.get("calibrate_sigma", False)):
        sigma = cal.calibrate_sigma(a1, a, floor=float(s2.get("sigma_floor", 0.02)), sigma=sigma).tolist()
    offsets = cal.crop_offsets(validation.camera(0), validation.workspace, a1, a, bool(s2.rotate))
    coverage = float(s2.get("crop_coverage", 0.95))
    crop = int(s2.crop_size)
    if crop == 0:
        crop = cal.calibrate_crop_size(offsets, coverage=coverage, max_size=int(validation.images.shape[1]))
    dist = np.max(np.abs(offsets), axis=1)
    result = {"sigma": sigma, "crop_size": crop, "stage1_step": step1,
              "transitions": int(validation.action.shape[0]), "num_seeds": int(config.num_seeds),
              "crop_coverage": coverage,
              "offset_px_quantiles": {q: float(np.quantile(dist, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")},
              "share_inside_crop": float(np.mean(dist < crop / 2))}
    calibration_path(workdir, config).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(calibration_path(workdir, config), result)
    logging.info("stage 2 calibrated on %d held-out transitions: sigma %s, crop %d px (%.0f%% of "
                 "targets inside)", result["transitions"], np.round(sigma, 3).tolist(), crop,
                 100 * result["share_inside_crop"])
    return result


def stage1_pairing(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """The stage-1 checkpoint a stage-2 run pairs with: the latest, checked to be intact and
    trained with this config's stage-1 fields."""
    directory = stage_dir(workdir, 1, config) / "checkpoints"
    if not directory.exists():
        raise PipelineError(f"stage 2 needs a trained stage 1, but {directory} does not exist; run "
                            "--mode=stage1 first (or --mode=all).")
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise PipelineError(f"stage 2 needs a trained stage 1, but {directory} has no checkpoint; "
                                "run --mode=stage1 first.")
        try:
            meta = ckpt.read_meta(step)
            ckpt.verify(step)
        except CheckpointError as e:
            raise PipelineError(
                f"stage 2 needs an intact stage 1, but {e} Run --mode=stage1 --resume: it falls back "
                "to the newest intact checkpoint and trains stage 1 to the end.") from e
    finally:
        ckpt.close()
    check_trained_with(config, meta, 1, str(directory / str(step)), "cannot pair stage 2 with stage 1",
                       "Give stage 1's fields as it was trained (recorded in stage1/config.json), or "
                       "train the change in a fresh --workdir.")
    return {"path": str(directory / str(step)), "step": int(step), "algo": meta.get("algo")}


def load_params(config: ml_collections.ConfigDict, workdir: Path, stage: int,
                dataset: tj.Dataset | None = None, step: int | None = None) -> tuple[Any, int]:
    """Parameters (leading seed axis) of a stage at `step` (default: the latest) and their step.

    The latest checkpoint must have been trained with this config's `program_fields`.
    `dataset` (default: the workdir's) only gives the shapes of the state to restore into.
    """
    out_dir = stage_dir(workdir, stage, config)
    directory = out_dir / "checkpoints"
    if not directory.exists():
        raise PipelineError(f"no {STAGE_NAMES[stage]} checkpoints in {directory}; run "
                            f"--mode={STAGE_NAMES[stage]} first.")
    mode = f"--mode={STAGE_NAMES[stage]}" + (f" --config.stage2_name={out_dir.name}"
                                             if out_dir.name != STAGE_NAMES[stage] else "")
    ckpt = Checkpointer(directory)
    try:
        if step is not None and step not in ckpt.all_steps():
            raise PipelineError(
                f"no {STAGE_NAMES[stage]} checkpoint at step {step} in {directory} (it has "
                f"{ckpt.all_steps()}); learning-curve steps (config.eval.curve_steps) must be set "
                "when the stage is trained, so that their checkpoints are kept.")
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise PipelineError(f"no checkpoint in {directory}; run {mode} first.")
        try:
            meta = ckpt.read_meta(step)
        except CheckpointError as e:
            raise PipelineError(f"{e} Run {mode} --resume: it falls back to the newest intact "
                                "checkpoint and trains to the end.") from e
        check_trained_with(
            config, meta, stage, str(directory / str(step)), f"cannot load {out_dir.name}",
            f"Use the config it was trained with (recorded in {out_dir.name}/config.json)" +
            (", or train the change as a new stage 2 with --config.stage2_name=NAME." if stage == 2
             else ", or train the change in a fresh --workdir."))
        dataset = load_demos(workdir) if dataset is None else dataset
        tcfg = train_config(config, stage, workdir)
        like = jax.eval_shape(jax.vmap(tj.make_train(tcfg, stage).init, in_axes=(0, None)),
                              seed_keys(config, stage), tj.prepare_data(dataset, tcfg))
        try:
            state, meta = ckpt.restore(like, step)
        except CheckpointError as e:
            raise PipelineError(f"{e} Run {mode} --resume: it falls back to the newest intact "
                                "checkpoint and trains to the end.") from e
    finally:
        ckpt.close()
    return state.params, int(meta["step"])


# --------------------------------------------------------------------------------------------
# Evaluation


def eval_seeds(config: ml_collections.ConfigDict, workdir: Path) -> list[int]:
    """Evaluation layout seeds; they must not overlap the demo seeds."""
    seeds = [int(config.eval.seed) + i for i in range(int(config.eval.num_episodes))]
    stats_path = workdir / "demos" / "stats.json"
    if stats_path.exists():
        used = set(json.loads(stats_path.read_text()).get("demo_seeds", []))
        overlap = sorted(used.intersection(seeds))
        if overlap:
            raise PipelineError(f"evaluation seeds {overlap[:5]}... were used for demos; set "
                                "config.eval.seed beyond the demo seeds.")
    return seeds


def run_eval(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Rolls out stage 1 alone and the two-stage policy for every seed; writes results and plots.

    Before any rollout it checks that both stages were trained with this config and that the
    output folders are writable. The results, plots and frames are written to a temporary
    folder that then replaces eval/ (or eval_NAME/) as a unit, so a failure leaves the previous
    results whole.
    """
    from experiments import plots, rollouts

    out_dir = eval_dir(workdir, config)
    ensure_writable(workdir, f"evaluation writes {out_dir.name}/ there.")
    if out_dir.exists():
        ensure_writable(out_dir, "evaluation replaces the results in it; make it writable.")
    ensure_writable(stage_dir(workdir, 1, config), "evaluation caches stage-1 rollouts there.")
    dataset = load_demos(workdir)
    if dataset.images.shape[1] != int(config.demos.image_size):
        raise PipelineError(f"config.demos.image_size ({config.demos.image_size}) differs from the "
                            f"dataset's images ({dataset.images.shape[1]} px), and evaluation renders "
                            "at config.demos.image_size; use the size the dataset was recorded at.")
    params1, step1 = load_params(config, workdir, 1, dataset)
    params2, step2 = load_params(config, workdir, 2, dataset)
    pairing_path = stage_dir(workdir, 2, config) / "pairing.json"
    pairing = json.loads(pairing_path.read_text()) if pairing_path.exists() else {}
    if pairing and pairing.get("step") != step1:
        logging.warning("stage 2 was trained against stage-1 step %s but stage 1 is now at step %s",
                        pairing.get("step"), step1)
    c1, c2 = train_config(config, 1), train_config(config, 2, workdir)
    workspace = dataset.workspace
    seeds = eval_seeds(config, workdir)
    num_seeds = int(config.num_seeds)
    policies = rollouts.MODES
    # Stage 1 alone does not depend on stage 2: ablations sharing a stage 1 reuse its rollouts.
    cache = rollouts.Stage1Cache(stage_dir(workdir, 1, config) / "eval_cache.json",
                                 rollouts.cache_setting(config, seeds))
    ev = rollouts.Evaluation(c1, c2, workspace, seeds, num_seeds, cache)
    ev.add("final", params1, params2, record=int(config.eval.record_episodes))
    curve = [k for k in rollouts.curve_steps(config) if (k, k) != (step1, step2)]
    for k in curve:
        ev.add(k, load_params(config, workdir, 1, dataset, k)[0],
               load_params(config, workdir, 2, dataset, k)[0])
    bar = _progress(0, 0, "eval", unit="episode")
    start = time.perf_counter()
    try:
        with evaluation.EnvPool(rollouts.env_factory(config), int(config.eval.get("workers", 1))) as pool:
            by_tag, recorded = ev.run(pool, bar)
            camera = pool.camera
    finally:
        bar.close()
    if ev.reused:
        logging.info("reusing stage-1 rollouts of %d seed checkpoint(s) from %s", ev.reused, cache.path)
    success = by_tag["final"]
    rates = {m: success[m].mean(axis=1) for m in policies}
    reps = int(config.eval.bootstrap_reps)
    results: dict[str, Any] = {
        "task": config.task, "algo": config.algo, "env": config.env, "num_seeds": num_seeds,
        "episodes_per_seed": len(seeds), "eval_seeds": [seeds[0], seeds[-1]],
        "stage1_step": step1, "stage2_step": step2, "stage2_mode": config.stage2.mode,
        "crop_size": int(config.stage2.crop_size), "stage2_name": str(config.stage2_name),
        "stage2_q_target": c2.cql.target if config.algo == "cql" else None,
        "stage2_sigma": list(c2.stage2.sigma), "stage2_crop_size": c2.stage2.crop_size,
        "stage2_loss_weighting": c2.stage2.resolved_loss_weighting() if config.algo == "bc" else "none",
        "eval_seconds": time.perf_counter() - start, "config": config_to_dict(config),
        "modes": {}}
    for m in policies:
        ci = evaluation.bootstrap_interval(rates[m], reps=reps)
        results["modes"][m] = {"per_seed": rates[m].tolist(), "mean": ci.mean, "ci_low": ci.low,
                               "ci_high": ci.high,
                               "episodes": success[m].astype(int).tolist()}
    gain = evaluation.difference_interval(rates["stage1"], rates["two_stage"], reps=reps)
    results["gain"] = {"mean": gain.mean, "ci_low": gain.low, "ci_high": gain.high}
    if rollouts.curve_steps(config):  # [steps][seeds] success rates, the final checkpoint last
        tags = curve + ["final"]
        results["curves"] = {m: {"steps": curve + [step1 if m == "stage1" else step2],
                                 "per_seed": [by_tag[t][m].mean(axis=1).tolist() for t in tags]}
                             for m in policies}
    with atomic_folder(out_dir) as tmp:
        write_json_atomic(tmp / "results.json", results)
        plots.success_bars(results, tmp / "success.png")
        plots.learning_curves([stage_dir(workdir, 1, config), stage_dir(workdir, 2, config)],
                              tmp / "learning_curves.png")
        for mode, eps in recorded.items():
            plots.rollout_frames(eps[0], camera, workspace, tmp / f"rollout_{mode}.png")
    return results


def format_results_table(results: dict) -> str:
    """A plain-text table of stage-1 vs two-stage success with intervals."""
    rows = [f"{'policy':<12} {'success':>8}  {'95% CI':>15}  per-seed",
            "-" * 60]
    for mode, r in results["modes"].items():
        per = " ".join(f"{x:.2f}" for x in r["per_seed"])
        rows.append(f"{mode:<12} {r['mean']:>8.3f}  [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  {per}")
    g = results["gain"]
    rows.append(f"{'gain':<12} {g['mean']:>+8.3f}  [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]")
    head = (f"task={results['task']} algo={results['algo']} seeds={results['num_seeds']} "
            f"episodes/seed={results['episodes_per_seed']}")
    return head + "\n" + "\n".join(rows)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())

