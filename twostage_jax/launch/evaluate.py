"""The launcher's evaluation: roll out stage 1 alone and the two-stage policy of a trained
workdir, and write success rates with intervals, plots and rollout frames."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from absl import logging

import twostage_jax as tj
from twostage_jax import evaluation
from twostage_jax._io import atomic_folder, recover_atomic_folder, reporting_disk_full, write_json_atomic
from twostage_jax.checkpoint import Checkpointer
from twostage_jax.evaluation import plots
from twostage_jax.evaluation.report import Curve, EvalResults, MeanInterval, ModeResult
from twostage_jax.launch import base_source, eval_jobs, refine, selection
from twostage_jax.launch.launch_config import STAGE_NAMES, LaunchConfig, selects, to_dict
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.train_stage import describe_stage1, recorded_stage1
from twostage_jax.launch.workdir import (ensure_writable, eval_dir, load_demos, load_params, progress,
                                         stage_dir, train_config, trained_on)
from twostage_jax.provenance import cpu_seconds, environment_record

LEROBOT_EVALUATION = (
    "rolls out in the simulator (config.env), whose camera and workspace are not those of the "
    "LeRobot dataset (config.data.source='lerobot'): train with --mode=demos, --mode=stage1 and "
    "--mode=stage2, and act on your robot with the library (twostage_jax.make_policy / "
    "correct_base_policy).")  # why evaluation (and --mode=all) refuses a LeRobot source


def eval_seeds(config: LaunchConfig, workdir: Path) -> list[int]:
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


def _latest_step(config: LaunchConfig, workdir: Path, stage: int) -> int:
    """The stage's newest checkpoint step (how far it trained)."""
    ckpt = Checkpointer(stage_dir(workdir, stage, config) / "checkpoints")
    try:
        return int(ckpt.latest_step())
    finally:
        ckpt.close()


def run_eval(config: LaunchConfig, workdir: Path) -> EvalResults:
    """Rolls out stage 1 (or the base policy) alone and the two-stage policy for every seed, and
    replaces eval/ (or eval_NAME/) with the results, plots and frames as a unit.

    Raises:
      PipelineError: a LeRobot source, a stage not trained, an unwritable folder, before any rollout.
    """
    if config.data.source == "lerobot":
        raise PipelineError(f"evaluation {LEROBOT_EVALUATION}")
    out_dir = eval_dir(workdir, config)
    ensure_writable(workdir, f"evaluation writes {out_dir.name}/ there.")
    foreign = base_source.uses_base(config)
    stages = (2,) if foreign else (1, 2)
    for stage in stages:  # what is missing, before what is unwritable
        folder = stage_dir(workdir, stage, config) / "checkpoints"
        if not folder.is_dir():
            mode = f"--mode={STAGE_NAMES[stage]}" + (
                f" --config.stage2_name={config.stage2_name}"
                if stage == 2 and config.stage2_name != STAGE_NAMES[2] else "")
            raise PipelineError(f"evaluation needs a trained {STAGE_NAMES[stage]}, but {folder} does "
                                f"not exist; run {mode} first (or --mode=all).")
    if recovered := recover_atomic_folder(out_dir):  # what an evaluation killed while replacing it left
        logging.warning("%s: an earlier evaluation was stopped while replacing it: %s.", out_dir.name,
                        "; ".join(recovered))
    if out_dir.exists():
        ensure_writable(out_dir, "evaluation replaces the results in it; make it writable.")
    if not foreign:
        ensure_writable(stage_dir(workdir, 1, config), "evaluation caches stage-1 rollouts there.")
    dataset = load_demos(workdir)
    if dataset.images.shape[1] != int(config.demos.image_size):
        raise PipelineError(f"config.demos.image_size ({config.demos.image_size}) differs from the "
                            f"dataset's images ({dataset.images.shape[1]} px), and evaluation renders "
                            "at config.demos.image_size; use the size the dataset was recorded at.")
    base = base_source.load(config) if foreign else None  # the factory's errors before any rollout
    params1, steps1 = (None, []) if foreign else selection.policy_params(config, workdir, 1, dataset)
    params2, steps2 = selection.policy_params(config, workdir, 2, dataset, uncorrected=True)
    step1 = 0 if foreign else _latest_step(config, workdir, 1)
    step2 = _latest_step(config, workdir, 2)
    num_seeds = int(config.num_seeds)
    pairing_path = stage_dir(workdir, 2, config) / "pairing.json"
    pairing = json.loads(pairing_path.read_text()) if pairing_path.exists() else {}
    paired = recorded_stage1(stage_dir(workdir, 2, config), num_seeds) if pairing else None
    now = config.stage1.source or steps1
    if paired is not None and paired != now:  # e.g. a stage 2 calibrated on our stage 1, now
        where = (f" ({workdir / pairing['path']})" if pairing.get("path") else "")
        logging.warning("stage 2 was trained against %s%s but stage 1 now is %s", describe_stage1(paired),
                        where, describe_stage1(now))  # correcting a base policy of the user's
    c1, (c2, refining) = train_config(config, 1), refine.acting_configs(config, workdir)
    seeds = eval_seeds(config, workdir)
    cache = None if foreign else eval_jobs.Stage1Cache(stage_dir(workdir, 1, config) / "eval_cache.json",
                                                      eval_jobs.cache_setting(config, seeds))
    passes, dims = config.eval.correction_passes, config.eval.corrected_dims
    env_fn = eval_jobs.env_factory(config)
    if in_env := isinstance(base, tj.SimBasePolicy):  # it acts beside the simulator, in each worker
        env_fn = base_source.acting_env_factory(config, env_fn)
    if uncorrected := tuple(s for s, k in enumerate(steps2) if k == selection.NO_CORRECTION):
        logging.info("stage 2's selection chose no correction for seed(s) %s: they act with stage 1 alone",
                     list(uncorrected))
    ev = eval_jobs.Evaluation(c1, c2, dataset.workspace, seeds, num_seeds, cache, correction_passes=passes,
                             corrected_dims=dims, base=eval_jobs.ENV_BASE if in_env else base,
                             critic_samples=config.eval.critic_samples, refine=refining)
    ev.add("final", params1, params2, record=int(config.eval.record_episodes), uncorrected=uncorrected)
    final = (steps1, steps2) == ([step1] * num_seeds, [step2] * num_seeds)
    curve = [k for k in config.eval.curve_steps if not (final and (k, k) == (step1, step2))]
    for k in curve:
        ev.add(k, load_params(config, workdir, 1, dataset, k)[0], selection.acting_params(
            config, workdir, 2, dataset, False, load_params(config, workdir, 2, dataset, k)[0]))
    bar = progress(0, 0, "eval", unit="episode")
    start, cpu = time.perf_counter(), cpu_seconds()
    try:
        with evaluation.EnvPool(env_fn, eval_jobs.pool_workers(config, ev.episodes())) as pool:
            by_tag, recorded = ev.run(pool, bar)
            camera = pool.camera
    finally:
        bar.close()
    eval_cost = {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu}
    if ev.reused:
        logging.info("reusing stage-1 rollouts of %d seed checkpoint(s) from %s", ev.reused, cache.path)
    success, reps = by_tag["final"], config.eval.bootstrap_reps
    rates = {m: success[m].mean(axis=1) for m in eval_jobs.MODES}
    modes = {}
    for m in eval_jobs.MODES:
        ci = evaluation.bootstrap_interval(rates[m], reps=reps)
        modes[m] = ModeResult(tuple(rates[m].tolist()), ci.mean, ci.low, ci.high,
                              tuple(tuple(row) for row in success[m].astype(int).tolist()))
    gain = evaluation.difference_interval(rates["stage1"], rates["two_stage"], reps=reps)
    curves = None
    if config.eval.curve_steps:  # [steps][seeds] success rates, the final checkpoint last
        tags = curve + (["final"] if final else [])
        curves = {m: Curve(tuple(curve + ([step1 if m == "stage1" else step2] if final else [])),
                           tuple(tuple(by_tag[t][m].mean(axis=1).tolist()) for t in tags))
                  for m in eval_jobs.MODES}
    selections = {STAGE_NAMES[s]: selection.summary(selection.ensure_selection(config, workdir, s,
                                                                              dataset, False))
                  for s in (1, 2) if selects(config, s)}
    results = EvalResults(
        task=config.task, algo=config.algo, env=config.env, num_seeds=num_seeds,
        episodes_per_seed=len(seeds), eval_seeds=(seeds[0], seeds[-1]),
        stage1_step=step1, stage2_step=step2, stage1_steps=tuple(steps1), stage2_steps=tuple(steps2),
        selection=selections, stage2_mode=config.stage2.stage2.mode,
        crop_size=0 if config.calibrate.crop_size else config.stage2.train_config().stage2.crop_size,
        stage2_name=config.stage2_name, stage2_q_target=c2.cql.target if config.algo == "cql" else None,
        stage2_sigma=tuple(c2.stage2.sigma), stage2_crop_size=c2.stage2.crop_size,
        stage2_loss_weighting=c2.stage2.resolved_loss_weighting() if config.algo == "bc" else "none",
        correction_passes=passes, corrected_dims=dims, eval_seconds=eval_cost["seconds"],
        config=to_dict(config), cost=run_cost(config, workdir, selections, eval_cost, stages=stages),
        modes=modes, gain=MeanInterval(gain.mean, gain.low, gain.high), curves=curves,
        stage1_source=config.stage1.source, critic_choices=_critic_choices(ev.choices.get("final")),
        environment={"evaluation": environment_record(),
                     **{STAGE_NAMES[s]: trained_on(stage_dir(workdir, s, config)) for s in (1, 2)}})
    previous = "the previous results are intact" if out_dir.exists() else "nothing was written"
    with reporting_disk_full(f"the evaluation results ({out_dir.name}/)", workdir,
                             f"{previous}; free some space and evaluate again."), \
            atomic_folder(out_dir) as tmp:
        write_json_atomic(tmp / "results.json", results.to_dict())
        plots.success_bars(results, tmp / "success.png")
        plots.learning_curves([stage_dir(workdir, s, config) for s in stages], tmp / "learning_curves.png")
        for mode, eps in recorded.items():
            plots.rollout_frames(eps[0], camera, dataset.workspace, tmp / f"rollout_{mode}.png")
    return results


def run_cost(config: LaunchConfig, workdir: Path, selections: dict[str, dict], evaluation_cost: dict,
             stages: tuple[int, ...] = (1, 2)) -> dict:
    """results.json's `cost`: wall and CPU seconds of each stage's training and validation
    rollouts, and of this evaluation."""
    cost: dict = {}
    for stage in stages:
        name = STAGE_NAMES[stage]
        try:
            summary = json.loads((stage_dir(workdir, stage, config) / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        entry = {"final_step": summary.get("final_step"),
                 "stopped_step": (summary.get("stopped") or {}).get("step"),
                 "train_seconds": summary.get("train_seconds"),
                 "train_cpu_seconds": summary.get("train_cpu_seconds"),
                 "plateau_validation_seconds": summary.get("validation_seconds", 0.0),
                 "plateau_validation_cpu_seconds": summary.get("validation_cpu_seconds", 0.0)}
        sel = selections.get(name)
        if sel is not None:  # its selection's validation rollouts
            entry.update(selection_seconds=sel.get("seconds"), selection_cpu_seconds=sel.get("cpu_seconds"),
                         episodes_spent=sel.get("episodes_spent"), episodes_full=sel.get("episodes_full"))
        cost[name] = entry
    cost["evaluation"] = evaluation_cost
    return cost


def format_results_table(results: EvalResults) -> str:
    """A plain-text table of stage-1 vs two-stage success with intervals."""
    rows = [f"{'policy':<12} {'success':>8}  {'95% CI':>15}  per-seed", "-" * 60]
    names = {"stage1": "base", "two_stage": "corrected"} if results.stage1_source else {}
    for mode, r in results.modes.items():
        per = " ".join(f"{x:.2f}" for x in r.per_seed)
        rows.append(f"{names.get(mode, mode):<12} {r.mean:>8.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]  {per}")
    g = results.gain
    rows.append(f"{'gain':<12} {g.mean:>+8.3f}  [{g.ci_low:+.3f}, {g.ci_high:+.3f}]")
    head = (f"task={results.task} algo={results.algo} seeds={results.num_seeds} "
            f"episodes/seed={results.episodes_per_seed}" +
            (f" base={results.stage1_source}" if results.stage1_source else ""))
    return head + "\n" + "\n".join(rows)


def _critic_choices(counts: np.ndarray | None) -> dict:
    """results.json's `critic_choices` from [S, K + 2] counts: per seed, the steps on which the
    critic chose no correction, the actor's mode, or one of its samples; {} without the choice."""
    if counts is None or not counts.size:
        return {}
    return {"no_correction": counts[:, 0].tolist(), "mode": counts[:, 1].tolist(),
            "sample": counts[:, 2:].sum(axis=1).tolist()}
