"""A launcher workdir: its layout and records, and loading the dataset and checkpoints it holds.

The layout and what a workdir guarantees are in docs/launcher.md ("The workdir"). A stage's
checkpoints are only extended, loaded or paired with the config they were trained with,
compared field by field (`program_fields`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import twostage_jax as tj
from twostage_jax.checkpoint import CheckpointError, Checkpointer
from twostage_jax.data.dataset import load_dataset
from twostage_jax.envs.camera_names import DEFAULT_CAMERAS
from twostage_jax.launch.launch_config import STAGE_NAMES, LaunchConfig, from_dict, to_dict
from twostage_jax.launch.errors import PipelineError
from twostage_jax.provenance import environment_record


def calibration_path(workdir: Path, config: LaunchConfig) -> Path:
    return workdir / config.stage2_name / "calibration.json"


def residuals_path(workdir: Path, config: LaunchConfig) -> Path:
    """Stage 1's held-out residuals a stage 2 with perturbation='residuals' draws from."""
    return workdir / config.stage2_name / "residuals.npy"


def predictions_path(workdir: Path, config: LaunchConfig) -> Path:
    """Stage 1's actions on the training demos' states a stage 2 with a predicted_share trains on."""
    return workdir / config.stage2_name / "predicted.npy"


def train_inputs(config: LaunchConfig, workdir: Path, stage: int,
                 predicted: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """The data `tj.prepare_data` takes for this stage besides the dataset, as keyword arguments:
    `residuals`, the [R, 7] residual bank of stage 2's perturbation='residuals' (made when stage
    2 is calibrated), and `predicted`, the [S, N, 2, 7] stage-1 actions of stage 2's
    predicted_share (made when stage 2 starts, `predictions.ensure_predictions`, whose result
    `predicted` may give instead of the file); None where the stage does not use them.

    Raises:
      PipelineError: one is needed but missing or unreadable.
    """
    method = config.stage2.stage2
    wanted = {"residuals": (residuals_path(workdir, config), "perturbation='residuals'",
                            stage == 2 and method.perturbation == "residuals"),
              "predicted": (predictions_path(workdir, config), f"predicted_share={method.predicted_share}",
                            stage == 2 and method.predicted_share > 0)}
    out: dict[str, np.ndarray | None] = {}
    for name, (path, why, needed) in wanted.items():
        out[name] = predicted if name == "predicted" and needed else None
        if needed and out[name] is None:
            try:
                out[name] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise PipelineError(f"{path} cannot be read ({e}); stage 2 trains on it "
                                    f"(config.stage2.stage2.{why}): run --mode=stage2 to make it.") from e
    return out


def dataset_path(workdir: Path) -> Path:
    return workdir / "demos" / "dataset.npz"


def held_out_path(workdir: Path) -> Path:
    return workdir / "demos" / "held_out.npz"


def stage_dir(workdir: Path, stage: int, config: LaunchConfig) -> Path:
    """workdir/stage1, or workdir/<config.stage2_name> (several stage-2 runs can share a stage 1)."""
    return workdir / (STAGE_NAMES[1] if stage == 1 else config.stage2_name)


def eval_dir(workdir: Path, config: LaunchConfig) -> Path:
    """workdir/eval for the default stage 2, workdir/eval_<stage2_name> for a named one."""
    name = str(config.stage2_name)
    return workdir / ("eval" if name == STAGE_NAMES[2] else f"eval_{name}")


def phase_parts(config: LaunchConfig, phase: str) -> tuple[list[str], list[str]]:
    """The parts of a workdir one phase of the launcher writes and reads (`lock.locked`'s).

    Args:
      config: the launcher config (its stage-2 folder and evaluation folder names).
      phase: 'demos', 'stage1', 'stage2' or 'eval'.

    Returns:
      (write, read): demos writes 'demos'; stage1 reads 'demos' and writes 'stage1'; stage2
      reads both and writes its folder (`config.stage2_name`); eval reads all three and writes
      its folder ('eval' or 'eval_NAME').
    """
    stage2 = str(config.stage2_name)
    parts = {"demos": (["demos"], []),
             "stage1": ([STAGE_NAMES[1]], ["demos"]),
             "stage2": ([stage2], ["demos", STAGE_NAMES[1]]),
             "eval": ([eval_dir(Path("."), config).name], ["demos", STAGE_NAMES[1], stage2])}
    if phase not in parts:
        raise ValueError(f"phase must be one of {sorted(parts)}; got {phase!r}.")
    write, read = parts[phase]
    return list(write), list(read)


def trained_stages(workdir: Path) -> list[str]:
    """Folders of the workdir whose checkpoints hold at least one step (stage1, stage2, ...)."""
    return sorted(p.parent.name for p in workdir.glob("*/checkpoints")
                  if p.is_dir() and any(c.name.isdigit() for c in p.iterdir()))


def ensure_writable(folder: Path, why: str) -> None:
    """Raises PipelineError unless a file can be created in `folder` (tried, not guessed)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as e:
        raise PipelineError(f"{folder} is not writable ({e.strerror or e}); {why}") from e
    os.close(fd)
    os.unlink(probe)


def is_writer() -> bool:
    """True on the process that writes logs and results (process 0; the only one usually)."""
    return jax.process_index() == 0


def config_record(config: LaunchConfig, workdir: Path | None = None) -> dict:
    """What STAGE/config.json and demos/config.json hold: when, the command line, the
    software and host (`environment_record`), the config.

    The workdir's own absolute path in the command line is written as '.' (the records'
    paths are relative to the workdir, so a moved or copied workdir's records still hold), and
    the program (`argv[0]`, absolute under `python -m`) as its module or file name.
    """
    argv = list(sys.argv)
    if argv and os.path.isabs(argv[0]):
        program = Path(argv[0])
        module = [p for p in (program.with_suffix(""),) if "twostage_jax" in p.parts]
        argv[0] = (".".join(module[0].parts[module[0].parts.index("twostage_jax"):]).removesuffix(".__main__")
                   if module else program.name)
    if workdir is not None:
        root = str(Path(workdir).absolute())
        argv = [a.replace(root, ".") for a in argv]
    return {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": argv,
            "environment": environment_record(), "config": to_dict(config)}


def stage_record(out_dir: Path) -> dict:
    """STAGE/config.json, or {} where there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(out_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def trained_on(out_dir: Path) -> list[dict[str, Any]]:
    """The environments a stage trained on, from its config.json: where it started, then where
    each resume that trained further ran (`environment_record`; records written before these
    were kept give an empty list, or only the resumes)."""
    record = stage_record(out_dir)
    runs = [record] + list(record.get("resumed", []))
    return [r["environment"] for r in runs if isinstance(r, dict) and "environment" in r]


def relative_to_workdir(workdir: Path, path: Path) -> str:
    """`path` as a workdir's records hold it: relative to the workdir (POSIX separators) when
    it lies inside it, else as given."""
    try:
        return Path(path).absolute().relative_to(Path(workdir).absolute()).as_posix()
    except ValueError:
        return str(path)


def check_unused_layouts(config: LaunchConfig, workdir: Path, first: int, num: int, what: str) -> None:
    """Raises PipelineError if `num` layouts from `first` (with room for the retries of failed
    layouts) are used by the workdir's training demos, held-out demos or evaluation.

    Args:
      config: the config the workdir was evaluated with (its `eval` layouts).
      workdir: the workdir (its demos/stats.json).
      first, num: the layouts to check.
      what: the setting that chose them, for the message (e.g. "--held_out_seed=50000").
    """
    stats = json.loads((workdir / "demos" / "stats.json").read_text())
    used = set(stats["demo_seeds"]) | set(stats.get("held_out_seeds", []))
    used |= set(range(config.eval.seed, config.eval.seed + config.eval.num_episodes))
    clash = used.intersection(range(first, first + 3 * num + 10))
    if clash:
        raise PipelineError(f"{what}: layout seeds {sorted(clash)[:5]} are used for training demos "
                            "or evaluation; pick seeds beyond both.")


def progress(total: int, initial: int, desc: str, unit: str = "step"):
    """The launcher's tqdm progress bar (training steps, evaluation episodes)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=2.0, smoothing=0.1)


def load_demos(workdir: Path) -> tj.Dataset:
    path = dataset_path(workdir)
    if not path.exists():
        raise PipelineError(f"no dataset at {path}; run --mode=demos (or --mode=all) first.")
    return load_dataset(path)


def load_held_out(workdir: Path) -> tj.Dataset | None:
    """The workdir's held-out demos, or None if it has none."""
    path = held_out_path(workdir)
    return load_dataset(path) if path.exists() else None


def load_params(config: LaunchConfig, workdir: Path, stage: int,
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
                f"{ckpt.all_steps()}); learning-curve steps (config.eval.curve_steps) and "
                f"checkpoint selection's candidates (config.{STAGE_NAMES[stage]}.select, "
                "select_steps) must be set when the stage is trained, so that their checkpoints "
                "are kept.")
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
                              seed_keys(config, stage),
                              tj.prepare_data(dataset, tcfg, **train_inputs(config, workdir, stage)))
        try:
            state, meta = ckpt.restore(like, step)
        except CheckpointError as e:
            raise PipelineError(f"{e} Run {mode} --resume: it falls back to the newest intact "
                                "checkpoint and trains to the end.") from e
    finally:
        ckpt.close()
    return state.params, int(meta["step"])


def train_config(config: LaunchConfig, stage: int, workdir: Path | None = None,
                 calibration: dict | None = None) -> tj.TrainConfig:
    """The library `TrainConfig` of one stage.

    A calibrated stage 2 (`config.calibrate`) takes sigma and the crop size from `calibration`,
    or else from the run's calibration.json in `workdir`, which `run_stage` writes when stage 2
    starts.
    """
    s = config.stage(stage)
    if stage == 1 or not config.calibrate.any:
        return s.train_config()
    if calibration is None:
        path = calibration_path(workdir, config) if workdir is not None else None
        if path is None or not path.exists():
            raise PipelineError(
                f"stage 2 '{config.stage2_name}' is calibrated from stage 1 when it trains, and "
                f"{path or 'its calibration.json'} does not exist yet; run --mode=stage2 first.")
        calibration = json.loads(path.read_text())
    scales = calibration.get("view_crop_scales")
    method = dataclasses.replace(s.stage2, sigma=tuple(float(x) for x in calibration["sigma"]),
                                 crop_size=int(calibration["crop_size"]),
                                 **({"view_crop_scales": tuple(scales)} if scales else {}))
    return s.train_config(stage2=method)


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
    if config.camera_names() != DEFAULT_CAMERAS[config.env]:  # (the default: what every earlier run used)
        fields["cameras"] = list(config.camera_names())
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
        method = s.train_config().stage2  # a crop size of None resolved for the algorithm
        for f in dataclasses.fields(method):  # (a calibrated crop's sizes are calibration.json's)
            if not (f.name in ("crop_size", "view_crop_scales") and cal.crop_size):
                fields[f"stage2.stage2.{f.name}"] = _plain(getattr(method, f.name))
        if s.refines:  # (trained on that run's corrected actions, not on a cross-fit)
            fields["stage2.refines"] = s.refines
        elif method.predicted_share > 0 and not config.stage1.source:
            fields["stage2.crossfit_folds"] = int(s.crossfit_folds)
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
