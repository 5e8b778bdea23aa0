"""Training one stage for all seeds: the chunked loop with its metrics, held-out curve and
checkpoints; resuming from the newest intact checkpoint; stage 2's calibration."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

import twostage_jax as tj
from twostage_jax import calibration as cal
from twostage_jax import sharding
from twostage_jax._checks import available_memory, human_bytes
from twostage_jax._io import atomic_open, reporting_disk_full, write_json_atomic
from twostage_jax.checkpoint import CheckpointError, Checkpointer
from twostage_jax.data.dataset import dataset_checksum, dataset_nbytes
from twostage_jax.launch import predictions, selection
from twostage_jax.launch.base_source import validation_actions
from twostage_jax.launch.launch_config import STAGE_NAMES, LaunchConfig, selects, to_dict
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.workdir import (calibration_path, check_trained_with, config_record,
                                         dataset_path, ensure_writable, is_writer, load_demos,
                                         load_params, load_held_out, progress, residuals_path,
                                         seed_keys, stage_dir, stage_record, train_config,
                                         train_inputs, held_out_path)
from twostage_jax.provenance import cpu_seconds
from twostage_jax.training.metrics_log import MetricsLog, NoLog
from twostage_jax.training.seeds import resolve_seed_strategy


def run_stage(config: LaunchConfig, workdir: Path, stage: int, resume: bool = False,
              accept_new_inputs: bool = False) -> dict:
    """Trains one stage for all seeds, with chunked logging and periodic checkpoints.

    A fresh stage records its config and dataset checksum in STAGE/config.json. `resume`
    continues from the newest intact checkpoint trained with the same `program_fields`
    (damaged newer ones are moved aside) and records where each resume ran; inputs changed
    since the start (the dataset; for stage 2, the stage-1 steps it acts with) are refused
    unless `accept_new_inputs`, which re-calibrates stage 2 and records the new inputs.

    Returns:
      A summary dict (final step, wall and CPU time, final metric means per seed).

    Raises:
      PipelineError: checkpoints exist without `resume`; another config; changed inputs.
    """
    out_dir = stage_dir(workdir, stage, config)
    for folder in (out_dir, out_dir / "checkpoints"):  # before any work
        if folder.is_dir():
            ensure_writable(folder, f"{'--resume continues' if resume else 'training writes'} "
                                    f"{out_dir.name} in it: make it writable (chmod -R u+w {out_dir}).")

    # the learning curves' checkpoints (config.eval.curve_steps) and checkpoint selection's
    # candidates are kept beside the latest ones
    keep = sorted({*config.eval.curve_steps, *selection.candidate_steps(config, stage)})
    ckpt = Checkpointer(out_dir / "checkpoints", keep=int(config.train.keep_checkpoints),
                        keep_steps=tuple(keep))
    try:
        with reporting_disk_full(f"{out_dir.name}'s metrics and records", out_dir,
                                 "free some space and continue with --resume."):
            summary = _train_stage(config, workdir, stage, resume, out_dir, ckpt, accept_new_inputs)
    finally:
        ckpt.close()
    if selects(config, stage) and is_writer():
        summary["selection"] = selection.summary(selection.ensure_selection(config, workdir, stage))
    return summary


def trained_to_the_end(config: LaunchConfig, workdir: Path, stage: int) -> int | None:
    """The step of a stage already trained to `num_steps` with this config, found by reading
    only (under a shared lock), or None if `run_stage` has work to do (or more to check).

    A stage counts as trained when its newest checkpoint is intact, at or beyond the stage's
    `num_steps`, trained with this config's `program_fields`, its summary.json is written and,
    for stage 2, it pairs with the stage-1 checkpoints stage 1 acts with now.

    Raises:
      PipelineError: the newest checkpoint was trained with another config (as a resume says).
    """
    out_dir = stage_dir(workdir, stage, config)
    directory = out_dir / "checkpoints"
    if not (directory.is_dir() and (out_dir / "summary.json").is_file()):
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
    # a stage stopped at its validation plateau (with this config's settings) is trained too
    end = selection.stopped_at(config, workdir, stage) or int(config.stage(stage).num_steps)
    if not steps or max(steps) < end:
        return None
    ckpt = Checkpointer(directory)
    try:
        latest = ckpt.latest_step()
        if latest is None or latest < end:
            return None
        try:
            meta = ckpt.read_meta(latest)
            ckpt.verify(latest)
        except CheckpointError:
            return None  # damaged: a resume moves it aside and trains again
    finally:
        ckpt.close()
    check_trained_with(config, meta, stage, str(directory / str(latest)),
                       f"cannot resume {out_dir.name}", _resume_advice(stage, config))
    pairing = selection.stage1_pairing(config, workdir) if stage == 2 else None
    if stage == 2 and recorded_stage1(out_dir, int(config.num_seeds)) is None:
        return None
    if changed_inputs(config, workdir, stage, pairing)[0]:
        return None  # the resume says what changed
    return int(latest)


def recorded_stage1(out_dir: Path, num_seeds: int) -> list[int] | str | None:
    """What a stage 2 was started (or last accepted) on: the per-seed stage-1 steps, or the
    base policy's source (`config.stage1.source`); None where nothing is recorded."""
    try:
        record = json.loads((out_dir / "pairing.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("source"):
        return str(record["source"])
    if record.get("steps") is not None:
        return [int(k) for k in record["steps"]]
    return [int(record["step"])] * num_seeds if record.get("step") is not None else None


def describe_stage1(stage1: list[int] | str) -> str:
    """'stage-1 step(s) [..]' or 'the base policy SOURCE' (`recorded_stage1`'s values)."""
    return f"the base policy {stage1}" if isinstance(stage1, str) else f"stage-1 step(s) {stage1}"


def _invocation(config: LaunchConfig, workdir: Path) -> dict:
    """`config_record` without the config: when, the command line and the environment."""
    return {k: v for k, v in config_record(config, workdir).items() if k != "config"}


def _add_to_record(out_dir: Path, key: str, entry: dict, **fields: Any) -> None:
    """Appends `entry` to the list `key` of STAGE/config.json and sets `fields`, keeping the rest
    of the start record; a stage without a readable record is left without one."""
    record = stage_record(out_dir)
    if record:
        write_json_atomic(out_dir / "config.json",
                          {**record, **fields, key: [*record.get(key, []), entry]})


def changed_inputs(config: LaunchConfig, workdir: Path, stage: int,
                   pairing: dict | None = None) -> tuple[list[str], str]:
    """What changed since a stage started: the dataset (its checksum in STAGE/config.json) and,
    for stage 2, the stage-1 steps it acts with or the base policy standing in for stage 1
    (`pairing`, against STAGE/pairing.json).

    Returns:
      (one phrase per change, the dataset's checksum now). Stages whose records predate a field
      are not compared on it.
    """
    out_dir = stage_dir(workdir, stage, config)
    changes = []
    if stage == 2 and pairing is not None:
        was = recorded_stage1(out_dir, int(config.num_seeds))
        now = pairing.get("source") or list(pairing["steps"])
        if was is not None and was != now:
            changes.append(f"stage 2 was started on {describe_stage1(was)}; stage 1 now " +
                           (f"acts at {now}" if isinstance(now, list) and isinstance(was, list)
                            else f"is {describe_stage1(now)}"))
    path = dataset_path(workdir)
    now = dataset_checksum(path) if path.exists() else ""
    was_sum = stage_record(out_dir).get("dataset_sha256")
    if was_sum and now and was_sum != now:
        changes.append(f"demos/dataset.npz changed since {out_dir.name} started (checksum "
                       f"{was_sum[:12]} then, {now[:12]} now)")
    return changes, now


def _train_stage(config: LaunchConfig, workdir: Path, stage: int, resume: bool,
                 out_dir: Path, ckpt: Checkpointer, accept_new_inputs: bool = False) -> dict:
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
        extra["stage1_checkpoint"] = selection.stage1_pairing(config, workdir)
    changes, checksum = changed_inputs(config, workdir, stage, extra.get("stage1_checkpoint"))
    changes = changes if latest is not None else []
    if changes and not accept_new_inputs:
        what = ("re-calibrate it on stage 1 as it acts now and continue" if stage == 2 else
                "continue on the new dataset")
        other = ("train a new stage 2 beside it with --config.stage2_name=NAME" if stage == 2 else
                 "train in a fresh --workdir")
        raise PipelineError(f"cannot resume {out_dir.name}: {'; '.join(changes)}. Resume with the "
                            f"inputs it started on, pass --accept_new_inputs to {what}, or {other}.")
    if changes:
        logging.warning("%s: --accept_new_inputs: %s", out_dir.name, "; ".join(changes))
    dataset = load_demos(workdir)
    validation = load_held_out(workdir)  # read (and checked) before anything is written
    check_memory(config, stage, dataset, out_dir)
    repaired = stage == 2 and any(c.startswith("stage 2 was started") for c in changes)
    if stage == 2 and config.calibrate.any:
        ensure_calibration(config, workdir, dataset, fresh=latest is None, repaired=repaired)
    made = None
    if predictions.uses_predictions(config, stage):  # on the stage 1 stage 2 pairs with
        pairing = extra["stage1_checkpoint"]
        made = predictions.ensure_predictions(config, workdir, dataset, pairing.get("source") or pairing["steps"])
    tcfg = train_config(config, stage, workdir)
    inputs = train_inputs(config, workdir, stage, predicted=made)
    bank = inputs["residuals"]
    train, data = tj.make_train(tcfg, stage), tj.prepare_data(dataset, tcfg, **inputs)
    keys = seed_keys(config, stage)
    mesh = seed_mesh(config)  # seeds sharded over devices (and processes), or None
    if mesh is not None:  # replicate once, not in every chunk's run_seeds (a host copy per chunk
        data = sharding.put_replicated(data, mesh)  # with several processes)
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
            write_json_atomic(out_dir / "config.json", {**config_record(config, workdir),
                                                                "dataset_sha256": checksum})
    elif changes and is_writer() and any(c.startswith("demos/") for c in changes):
        _add_to_record(out_dir, "accepted_inputs", {**_invocation(config, workdir), "changes": changes},
                       dataset_sha256=checksum)
    else:
        logging.info("resumed %s from step %d", out_dir.name, start_step)
        if start_step < tcfg.num_steps and is_writer():  # where the rest trains (`trained_on`)
            _add_to_record(out_dir, "resumed", {**_invocation(config, workdir), "from_step": start_step})
    if stage == 2 and is_writer():
        write_json_atomic(out_dir / "pairing.json", extra["stage1_checkpoint"])

    total = tcfg.num_steps
    summary_path = out_dir / "summary.json"
    if start_step >= total and summary_path.exists():
        logging.info("%s is already trained to step %d; nothing to do", out_dir, start_step)
        return json.loads(summary_path.read_text())
    log_every = int(config.train.log_every)
    ckpt_every = int(config.train.checkpoint_every)
    held_out = _held_out_evaluator(tcfg, stage, validation, mesh, bank)
    plateau, stopped = None, None
    if selection.stops_at_plateau(config, stage):  # candidates trained before a resume first
        plateau = selection.PlateauStop(config, workdir, stage, dataset)
        for k in (k for k in selection.candidate_steps(config, stage) if k <= start_step):
            if plateau.add(k, load_params(config, workdir, stage, dataset, k)[0]):
                stopped = plateau.record(k)
                break
    log = MetricsLog(out_dir, start_step) if is_writer() else NoLog()
    bar = progress(total, start_step, f"{STAGE_NAMES[stage]} {config.algo} x{config.num_seeds} seeds")
    step = start_step
    wall, cpu = time.perf_counter(), cpu_seconds()
    means: dict[str, np.ndarray] = {}
    try:
        while step < total and stopped is None:
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
                with reporting_disk_full(
                        f"the {out_dir.name} checkpoint of step {step}", ckpt.directory,
                        f"its partial files were removed and step {ckpt.latest_step() or 0} is the "
                        "newest checkpoint; free some space and continue with --resume.",
                        cleanup=lambda: _remove_partial_checkpoints(ckpt.directory)):
                    ckpt.save(step, states, _checkpoint_meta(config, stage, extra))
            if plateau is not None and step in selection.candidate_steps(config, stage):
                # (the last candidate is rolled out too, for the selection; training ends there anyway)
                if plateau.add(step, states.params) and step < total:
                    stopped = plateau.record(step)
    finally:
        bar.close()
        log.close()
    validation = (plateau.runs.seconds, plateau.runs.cpu_seconds) if plateau is not None else (0.0, 0.0)
    summary = {"stage": stage, "final_step": step,
               "train_seconds": time.perf_counter() - wall - validation[0],
               "train_cpu_seconds": cpu_seconds() - cpu - validation[1],
               "final_metrics": {k: v.tolist() for k, v in means.items()}}
    if plateau is not None:  # the plateau's rollouts (kept for the selection after training)
        summary.update(validation_seconds=validation[0], validation_cpu_seconds=validation[1])
    if stopped is not None:
        summary["stopped"] = stopped
        logging.info("%s stopped at step %d: %s", out_dir.name, stopped["step"], stopped["reason"])
    if is_writer():
        write_json_atomic(summary_path, summary)
    return summary


ACTIVATION_FACTOR = 8
"""Bytes of a training step's activations and gradients per byte of its float32 input batch,
at least (the first convolution's output alone, forward and backward, is about that)."""


def check_memory(config: LaunchConfig, stage: int, dataset: tj.Dataset, out_dir: Path) -> None:
    """Refuses a stage whose lower-bound memory clearly exceeds what is available, before
    training: the dataset on the device, plus each seed trained at once (vmapped, per device)
    × the batch of images (stage 1) or crops (stage 2) as float32 × `ACTIVATION_FACTOR`.

    Raises:
      PipelineError: naming the estimate, its parts, what is available, and the fields to lower.
    """
    found = available_memory()
    if found is None:
        return
    free, where = found
    s, name = config.stage(stage), STAGE_NAMES[stage]
    n, height = int(dataset.images.shape[0]), int(dataset.images.shape[1])
    small = int(config.stage1.image_size or height)
    data = dataset_nbytes(dataset) + (n * small * small * 3 if small != height else 0)
    views = int(dataset.num_views)  # each view's image or crops
    if stage == 1:
        pixels, field, what = views * small * small, f"config.{name}.image_size", f"{small}x{small} images"
    else:
        method = s.train_config().stage2
        crop, ee = int(method.crop_size), int(method.ee_crop_size)
        pixels, field, what = views * (crop * crop + ee * ee), "config.stage2.stage2.crop_size", f"{crop}-px crops"
    if views > 1:
        what += f" in each of {views} views"
    parallel = 1
    if resolve_seed_strategy(config.seed_strategy, jax.default_backend()) == "vmap":
        mesh = seed_mesh(config)
        shards = sharding.num_seed_shards(mesh) if mesh is not None else 1
        parallel = -(-int(config.num_seeds) // shards)
    batch = parallel * int(s.batch_size) * pixels * 3 * 4 * ACTIVATION_FACTOR
    if data + batch > free:
        raise PipelineError(
            f"{out_dir.name} needs at least {human_bytes(data + batch)} of {where} memory (the "
            f"dataset {human_bytes(data)}; {parallel} seed(s) at once x batch {s.batch_size} of "
            f"{what}, about {human_bytes(batch)}), but {human_bytes(free)} is available; lower "
            f"config.{name}.batch_size or {field}, train the seeds one after another "
            "(--config.seed_strategy=sequential), or record fewer demos.")


def _remove_partial_checkpoints(directory: Path) -> None:
    """Removes the temporary folders of orbax saves that did not finish (`*.orbax-checkpoint-tmp*`)."""
    for partial in directory.glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)


def _checkpoint_meta(config: LaunchConfig, stage: int, extra: dict | None = None) -> dict:
    return {"stage": stage, "num_seeds": int(config.num_seeds), "algo": config.algo,
            "task": config.task, "config": to_dict(config), **(extra or {})}


def _resume_advice(stage: int, config: LaunchConfig) -> str:
    record = stage_dir(Path("."), stage, config).name + "/config.json"
    other = ("a fresh --workdir" if stage == 1 else
             "a fresh --workdir, or a new stage 2 beside it with --config.stage2_name=NAME")
    return (f"Resume with the config it was started with (recorded in {record}), or train the "
            f"change in {other}.")


def _restore_newest_intact(ckpt: Checkpointer, like: Any, config: LaunchConfig,
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


def _held_out_evaluator(tcfg: tj.TrainConfig, stage: int, validation: tj.Dataset | None,
                        mesh: Any = None, bank: np.ndarray | None = None):
    """params [S, ...] -> {'val_position_cm': [S], 'val_gripper_agreement': [S]}, or None.

    Every log chunk, the stage is measured on the workdir's held-out demos (all of their
    transitions, and for stage 2 one fixed Algo. 1 draw each), so the training budget can be
    read off the held-out curve in metrics.jsonl instead of from evaluation episodes.
    """
    if validation is None:
        return None
    data = tj.prepare_data(validation, dataclasses.replace(tcfg, min_move=0.0), residuals=bank)
    evaluate = jax.vmap(tj.make_held_out_eval(tcfg, stage), in_axes=(0, None, None))
    key = jax.random.PRNGKey(0)
    if mesh is not None:  # params are seed-sharded: the data and key go on every device
        data, key = sharding.put_replicated((data, key), mesh)

    def run(params: Any) -> dict[str, np.ndarray]:
        m = sharding.to_host(evaluate(params, data, key))
        return {"val_position_cm": np.asarray(m.position_cm),
                "val_gripper_agreement": np.asarray(m.gripper_agreement)}

    return run


def ensure_calibration(config: LaunchConfig, workdir: Path, dataset: tj.Dataset, fresh: bool,
                       repaired: bool = False) -> dict:
    """Stage 2's calibration: calibration.json as recorded, or made now (`calibrate_stage2`)
    where there is none, where stage 1 changed under a resumed stage 2 (`repaired`: the crop
    size is kept), or where a stage 2 with no checkpoint yet (`fresh`) finds one made with
    other settings (`calibration_settings`), left by another stage 2."""
    recorded = _recorded_calibration(workdir, config)
    if fresh and recorded is not None and recorded.get("settings") != calibration_settings(config):
        logging.warning("%s: %s was made with other calibration settings; calibrating again",
                        config.stage2_name, calibration_path(workdir, config).name)
        recorded = None
    if repaired or recorded is None:
        return calibrate_stage2(config, workdir, dataset,
                                keep_crop_size=_trained_crop_size(workdir, config) if repaired else None)
    return recorded


def calibration_settings(config: LaunchConfig) -> dict:
    """What a stage 2's calibration.json is made with besides its inputs (recorded as
    `settings`): the `calibrate` fields and the stage-2 method's sigma, crop size and rotation."""
    method = config.stage2.train_config().stage2
    return json.loads(json.dumps({"calibrate": dataclasses.asdict(config.calibrate),
                                  "sigma": list(method.sigma), "crop_size": int(method.crop_size),
                                  "rotate": bool(method.rotate), "perturbation": method.perturbation,
                                  "sigma_scales": list(method.sigma_scales)}))


def _recorded_calibration(workdir: Path, config: LaunchConfig) -> dict | None:
    """The stage 2's calibration.json, or None where there is none (or it cannot be read)."""
    try:
        record = json.loads(calibration_path(workdir, config).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _trained_crop_size(workdir: Path, config: LaunchConfig) -> int | None:
    """The crop size in a stage 2's calibration.json (what its checkpoints were trained with)."""
    try:
        return int((_recorded_calibration(workdir, config) or {})["crop_size"])
    except (KeyError, TypeError, ValueError):
        return None


def calibrate_stage2(config: LaunchConfig, workdir: Path, dataset: tj.Dataset,
                     keep_crop_size: int | None = None) -> dict:
    """Calibrates stage 2's sigma and/or crop size to stage 1's errors on the held-out demos.

    Stage 1 (its latest checkpoint, all seeds pooled; or the base policy `config.stage1.source`,
    `base_source.validation_actions`) acts on every validation transition; sigma
    comes from `calibrate_sigma` (the 6 pose dimensions; the gripper keeps its sigma) and the crop
    size from `calibrate_crop_size` on the targets' offsets in the tentative crops
    (`crop_offsets`). Writes and returns `<stage2_name>/calibration.json`.

    Args:
      keep_crop_size: re-calibrating a stage 2 that has checkpoints: their crop size, which a
        new calibration must keep (the networks' shapes depend on it); None for a new stage 2.

    Raises:
      PipelineError: no held-out demos; the crop size would change from `keep_crop_size`.
    """
    validation = load_held_out(workdir)
    if validation is None:
        raise PipelineError(f"calibrating stage 2 needs held-out demos at {held_out_path(workdir)}; "
                            "re-run --mode=demos with config.demos.num_held_out > 0.")
    if config.stage1.source:  # a base policy of the user's: its errors, once for all seeds
        a1, a = validation_actions(config, workdir, validation)
        steps1: list = []
    else:
        params1, steps1 = selection.policy_params(config, workdir, 1, dataset)
        a1 = predictions.stage1_actions(config, params1, validation).reshape(-1, tj.ACTION_DIM)
        a = np.tile(np.asarray(validation.action), (int(config.num_seeds), 1))
    method, settings = config.stage2.train_config().stage2, config.calibrate
    sigma = list(method.sigma)
    if settings.sigma:
        sigma = cal.calibrate_sigma(a1, a, floor=float(settings.sigma_floor), sigma=sigma).tolist()
    views = int(validation.num_views)
    offsets = cal.crop_offsets(validation.camera(0), validation.workspace, a1, a, method.rotate)
    coverage = float(settings.crop_coverage)
    crop, view_sizes = method.crop_size, None
    if settings.crop_size:
        crop = cal.calibrate_crop_size(offsets, coverage=coverage, max_size=int(validation.images.shape[1]))
    if settings.crop_size and views > 1:  # each view's own size; its crops zoom to the first's
        rows = a1.reshape(-1, validation.action.shape[0], tj.ACTION_DIM)
        per_seed = [cal.calibrate_view_crop_sizes(validation, r, coverage=coverage, rotate=method.rotate)
                    for r in rows]
        view_sizes = [int(max(sizes)) for sizes in zip(*per_seed)]
    bank = cal.residual_bank(a1, a) if method.perturbation == "residuals" else None
    if settings.crop_size and (bank is not None or tuple(method.sigma_scales) != (1.0,)):
        # the crop also covers the wider perturbations stage 2 trains on (a scale mixture, the bank)
        drawn = dataclasses.replace(method, sigma=tuple(float(x) for x in sigma))
        crop = max(crop, cal.calibrate_sampled_crop_size(
            jax.random.PRNGKey(0), validation, drawn, residuals=bank, coverage=coverage,
            max_size=int(validation.images.shape[1])))
    if keep_crop_size is not None and crop != keep_crop_size:
        raise PipelineError(
            f"re-calibrating {config.stage2_name} on stage 1 as it acts now gives crop size {crop} "
            f"px, but its checkpoints were trained with {keep_crop_size} px; train a new stage 2 "
            "with --config.stage2_name=NAME instead.")
    if not (np.all(np.isfinite(sigma)) and np.all(np.asarray(sigma) > 0) and 0 < crop):
        raise PipelineError(f"calibrating {config.stage2_name} gave sigma {sigma} and crop size {crop}: "
                            "not finite and positive; check config.calibrate and the held-out demos "
                            "(nothing was written).")
    dist = np.max(np.abs(offsets), axis=1)
    if view_sizes is not None:
        crop = view_sizes[0]
    result = {"settings": calibration_settings(config),
              "inputs": {"held_out_sha256": dataset_checksum(held_out_path(workdir)),
                         "stage1": config.stage1.source or steps1},
              "sigma": sigma, "crop_size": crop, "stage1_step": max(steps1, default=None),
              "stage1_steps": steps1, **({"stage1_source": config.stage1.source}
                                         if config.stage1.source else {}),
              "transitions": int(a.shape[0]), "num_seeds": int(config.num_seeds),
              "crop_coverage": coverage,
              "offset_px_quantiles": {q: float(np.quantile(dist, float(q))) for q in ("0.5", "0.9", "0.95", "0.99")},
              "share_inside_crop": float(np.mean(dist < crop / 2))}
    if view_sizes is not None:  # view v's crops span its own size, sampled at the first's pixels
        result.update(view_crop_sizes=view_sizes, view_crop_scales=[s / crop for s in view_sizes])
    calibration_path(workdir, config).parent.mkdir(parents=True, exist_ok=True)
    if bank is not None:  # written before calibration.json, which records it
        with atomic_open(residuals_path(workdir, config), "wb") as f:
            np.save(f, bank, allow_pickle=False)
        result["residual_bank"] = {"file": residuals_path(workdir, config).name, "rows": int(bank.shape[0])}
    write_json_atomic(calibration_path(workdir, config), result)
    logging.info("stage 2 calibrated on %d held-out transitions: sigma %s, crop %d px (%.0f%% of "
                 "targets inside)", result["transitions"], np.round(sigma, 3).tolist(), crop,
                 100 * result["share_inside_crop"])
    return result


def seed_mesh(config: LaunchConfig) -> Any:
    """The mesh the seeds shard over (`config.seed_devices`), or None for one device.

    Raises:
      PipelineError: more devices asked for than there are.
    """
    try:
        return sharding.seed_mesh(config.seed_devices)
    except ValueError as e:
        raise PipelineError(f"config.{e}") from e
