"""The launcher's stages: demos -> stage 1 -> stage 2 -> evaluation, on one workdir.

Workdir layout:
  config.json                      the full config of the latest invocation
  demos/dataset.npz, stats.json    the offline dataset and how it was made
  stage{1,2}/checkpoints/          orbax checkpoints (AgentState with a leading seed axis)
  stage{1,2}/metrics.jsonl         per-chunk mean metrics, one line per (step, seed)
  stage{1,2}/tb/                   TensorBoard event files
  stage2/pairing.json              the stage-1 checkpoint stage 2 pairs with
  eval/results.json, *.png, *.gif  success rates, intervals, plots and rollout frames

With `config.stage2_name=NAME`, stage 2 lives in NAME/ and its evaluation in eval_NAME/, so
ablations of stage 2 (crop size, direct vs correction, MC vs TD) share one stage 1.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import twostage_jax as tj
from twostage_jax import evaluation
from twostage_jax._io import atomic_open
from twostage_jax.checkpoint import Checkpointer, write_json_atomic

STAGE_NAMES = {1: "stage1", 2: "stage2"}


class PipelineError(RuntimeError):
    """A user-fixable problem (missing inputs, inconsistent workdir); the message says what to do."""


# --------------------------------------------------------------------------------------------
# Config conversion and validation


def _network(c: ml_collections.ConfigDict) -> tj.NetworkConfig:
    return tj.NetworkConfig(
        conv_channels=tuple(c.conv_channels), crop_conv_channels=tuple(c.crop_conv_channels),
        conv_strides=tuple(c.conv_strides), mlp_hidden=int(c.mlp_hidden),
        head_hidden=tuple(c.head_hidden), conv_impl=str(c.conv_impl))


def train_config(config: ml_collections.ConfigDict, stage: int) -> tj.TrainConfig:
    """The library `TrainConfig` of one stage from the launcher config."""
    s = config.stage1 if stage == 1 else config.stage2
    cql_fields = config.cql.to_dict()
    stage2_target = config.stage2.get("cql_target", "")  # absent in configs saved before it existed
    if stage == 2 and stage2_target:  # a stage-2-only target (MC vs TD ablation)
        cql_fields["target"] = str(stage2_target)
    cql = tj.CQLConfig(**cql_fields)
    s2 = tj.Stage2Config(crop_size=int(config.stage2.crop_size),
                         ee_crop_size=int(config.stage2.ee_crop_size),
                         sigma=tuple(float(x) for x in config.stage2.sigma),
                         mode=str(config.stage2.mode), rotate=bool(config.stage2.rotate),
                         loss_weighting=str(config.stage2.get("loss_weighting", "none")))
    return tj.TrainConfig(
        algo=str(config.algo), num_steps=int(s.num_steps), batch_size=int(s.batch_size),
        learning_rate=float(s.learning_rate),
        image_size=int(config.stage1.image_size) if stage == 1 else None,
        network=_network(s.network), cql=cql, stage2=s2)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the whole config before any work starts; raises ValueError naming the field."""
    for stage in (1, 2):
        train_config(config, stage)  # the library's dataclasses validate their own fields
    if int(config.num_seeds) <= 0:
        raise ValueError(f"config.num_seeds must be a positive int; got {config.num_seeds!r}.")
    if config.seed_strategy not in tj.SEED_STRATEGIES:
        raise ValueError(f"config.seed_strategy must be one of {tj.SEED_STRATEGIES}; got "
                         f"{config.seed_strategy!r}.")
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


# --------------------------------------------------------------------------------------------
# Demos


def dataset_path(workdir: Path) -> Path:
    return workdir / "demos" / "dataset.npz"


def run_demos(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Records demonstrations, builds the keyframe dataset and writes it atomically."""
    from twostage_jax.data.dataset import build_dataset, dataset_nbytes, save_dataset

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
        from twostage_jax.data.rlbench_io import load_rlbench_demos
        from twostage_jax.envs.rlbench import DEFAULT_WORKSPACE

        trajs = load_rlbench_demos(config.rlbench_root, config.task,
                                   augment_every=int(d.augment_every))
        trajs = trajs[: int(d.num_demos)]
        workspace = DEFAULT_WORKSPACE
        info = {"demo_seeds": [int(t.seed) for t in trajs], "kept": len(trajs)}
    ds = build_dataset(trajs, workspace, gamma=float(d.gamma), augment_every=int(d.augment_every))
    dataset_path(workdir).parent.mkdir(parents=True, exist_ok=True)
    save_dataset(dataset_path(workdir), ds)
    info.update(task=config.task, env=config.env, transitions=int(ds.action.shape[0]),
                images=int(ds.images.shape[0]), dataset_mib=dataset_nbytes(ds) / 2**20,
                total_seconds=time.perf_counter() - start)
    write_json_atomic(workdir / "demos" / "stats.json", info)
    logging.info("demos: kept %d, %d transitions, %d images (%.1f MiB) in %.0f s",
                 info.get("kept", len(trajs)), info["transitions"], info["images"],
                 info["dataset_mib"], info["total_seconds"])
    return info


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
    """Per-chunk metrics to JSONL (atomic rewrite on resume) and TensorBoard."""

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
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(directory / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # pragma: no cover - tensorboardX is a core dependency
            self._tb = None

    def write(self, step: int, means: dict[str, np.ndarray]) -> None:
        num_seeds = len(next(iter(means.values())))
        for i in range(num_seeds):
            row = {"step": int(step), "seed": i, **{k: float(v[i]) for k, v in means.items()}}
            self._file.write(json.dumps(row) + "\n")
            if self._tb is not None:
                for k, v in means.items():
                    self._tb.add_scalar(f"seed{i}/{k}", float(v[i]), step)
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


def run_stage(config: ml_collections.ConfigDict, workdir: Path, stage: int, resume: bool = False) -> dict:
    """Trains one stage for all seeds, with chunked logging and periodic checkpoints.

    Returns:
      A summary dict (final step, wall time, final metric means per seed).
    """
    out_dir = stage_dir(workdir, stage, config)
    extra: dict = {}
    if stage == 2:
        extra["stage1_checkpoint"] = stage1_pairing(config, workdir)
    dataset = load_demos(workdir)
    tcfg = train_config(config, stage)
    trainer = tj.make_trainer(tcfg, dataset, stage)
    states = jax.jit(jax.vmap(trainer.init))(seed_keys(config, stage))
    from experiments.rollouts import curve_steps

    keep_steps = curve_steps(config)  # checkpoints evaluated for the learning curves
    ckpt = Checkpointer(out_dir / "checkpoints", keep=int(config.train.keep_checkpoints),
                        keep_steps=keep_steps)
    start_step = 0
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        raise PipelineError(
            f"{out_dir / 'checkpoints'} already holds checkpoints (latest step {latest}). Pass "
            "--resume to continue that run, or use a fresh --workdir.")
    if resume and latest is not None:
        meta = ckpt.read_meta(latest)
        if meta.get("num_seeds") != int(config.num_seeds) or meta.get("algo") != config.algo:
            raise PipelineError(
                f"cannot resume: the checkpoint has num_seeds={meta.get('num_seeds')}, "
                f"algo={meta.get('algo')!r} but the config asks for num_seeds={config.num_seeds}, "
                f"algo={config.algo!r}.")
        states, meta = ckpt.restore(states, latest)
        start_step = int(latest)
        logging.info("resumed %s from step %d", STAGE_NAMES[stage], start_step)
    if stage == 2:
        write_json_atomic(out_dir / "pairing.json", extra["stage1_checkpoint"])

    total = tcfg.num_steps
    summary_path = out_dir / "summary.json"
    if start_step >= total and summary_path.exists():
        logging.info("%s is already trained to step %d; nothing to do", out_dir, start_step)
        return json.loads(summary_path.read_text())
    log_every = int(config.train.log_every)
    ckpt_every = int(config.train.checkpoint_every)
    run_chunk = tj.make_seed_runner(trainer, config.seed_strategy)
    log = _MetricsLog(out_dir, start_step)
    bar = _progress(total, start_step, f"{STAGE_NAMES[stage]} {config.algo} x{config.num_seeds} seeds")
    step = start_step
    wall = time.perf_counter()
    means: dict[str, np.ndarray] = {}
    try:
        while step < total:
            n = min(log_every - step % log_every, total - step)
            states, metrics = run_chunk(states, n)
            step += n
            means = {k: np.asarray(v).mean(axis=1) for k, v in jax.device_get(metrics)._asdict().items()}
            bad = [k for k, v in means.items() if not np.all(np.isfinite(v))]
            if bad:
                raise PipelineError(
                    f"{out_dir.name}: non-finite {bad} at step {step}; lower the learning rate or "
                    "check the dataset. The last good checkpoint is kept (continue with --resume).")
            log.write(step, means)
            key_metric = "bc_loss" if "bc_loss" in means else "critic_loss"
            bar.set_postfix({key_metric: " ".join(f"{v:.3g}" for v in means[key_metric])})
            bar.update(n)
            if step % ckpt_every == 0 or step == total or step in keep_steps:
                ckpt.save(step, states, _checkpoint_meta(config, stage, extra))
    finally:
        bar.close()
        log.close()
        ckpt.close()
    summary = {"stage": stage, "final_step": step, "train_seconds": time.perf_counter() - wall,
               "final_metrics": {k: v.tolist() for k, v in means.items()}}
    write_json_atomic(summary_path, summary)
    return summary


def stage1_pairing(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """The stage-1 checkpoint a stage-2 run pairs with (the latest, which must be complete)."""
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
        meta = ckpt.read_meta(step)
    finally:
        ckpt.close()
    if meta.get("num_seeds") != int(config.num_seeds):
        raise PipelineError(f"stage 1 in {directory} has {meta.get('num_seeds')} seeds but the config "
                            f"asks for {config.num_seeds}; use the same --num_seeds for both stages.")
    return {"path": str(directory / str(step)), "step": int(step), "algo": meta.get("algo")}


def load_params(config: ml_collections.ConfigDict, workdir: Path, stage: int,
                dataset: tj.Dataset | None = None, step: int | None = None) -> tuple[Any, int]:
    """Parameters (leading seed axis) of a stage at `step` (default: the latest) and their step.

    `dataset` (default: the workdir's) only gives the shapes of the state to restore into.
    """
    directory = stage_dir(workdir, stage, config) / "checkpoints"
    if not directory.exists():
        raise PipelineError(f"no {STAGE_NAMES[stage]} checkpoints in {directory}; run "
                            f"--mode={STAGE_NAMES[stage]} first.")
    dataset = load_demos(workdir) if dataset is None else dataset
    trainer = tj.make_trainer(train_config(config, stage), dataset, stage)
    like = jax.eval_shape(jax.vmap(trainer.init), seed_keys(config, stage))
    ckpt = Checkpointer(directory)
    try:
        if step is not None and step not in ckpt.all_steps():
            raise PipelineError(
                f"no {STAGE_NAMES[stage]} checkpoint at step {step} in {directory} (it has "
                f"{ckpt.all_steps()}); learning-curve steps (config.eval.curve_steps) must be set "
                "when the stage is trained, so that their checkpoints are kept.")
        state, meta = ckpt.restore(like, step)
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
    """Rolls out stage 1 alone and the two-stage policy for every seed; writes results and plots."""
    from experiments import plots, rollouts

    dataset = load_demos(workdir)
    params1, step1 = load_params(config, workdir, 1, dataset)
    params2, step2 = load_params(config, workdir, 2, dataset)
    pairing_path = stage_dir(workdir, 2, config) / "pairing.json"
    pairing = json.loads(pairing_path.read_text()) if pairing_path.exists() else {}
    if pairing and pairing.get("step") != step1:
        logging.warning("stage 2 was trained against stage-1 step %s but stage 1 is now at step %s",
                        pairing.get("step"), step1)
    c1, c2 = train_config(config, 1), train_config(config, 2)
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
    out_dir = eval_dir(workdir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
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
        "stage2_q_target": train_config(config, 2).cql.target if config.algo == "cql" else None,
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
    write_json_atomic(out_dir / "results.json", results)
    plots.success_bars(results, out_dir / "success.png")
    plots.learning_curves([stage_dir(workdir, 1, config), stage_dir(workdir, 2, config)],
                          out_dir / "learning_curves.png")
    for mode, eps in recorded.items():
        plots.rollout_frames(eps[0], camera, workspace, out_dir / f"rollout_{mode}.png")
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

