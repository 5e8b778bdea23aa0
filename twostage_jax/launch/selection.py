"""Checkpoint selection on validation layouts: the step of each stage that a policy acts with.

Each candidate is rolled out on `config.select`'s layouts, never the evaluation layouts (stage 1
alone, stage 2 on top of the selected stage 1), spending rollouts only where they decide
(`evaluation.halving`); the choice and its curve go to STAGE/selection.json, keyed by the
candidates' parameter fingerprints, so a repeated run reads it back and a retrained stage is
selected again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from twostage_jax import evaluation, sharding
from twostage_jax._io import write_json_atomic
from twostage_jax.checkpoint import CheckpointError, Checkpointer
from twostage_jax.evaluation.halving import halving_rungs, plateau_reached, successive_halving
from twostage_jax.launch import eval_jobs, refine
from twostage_jax.launch.launch_config import STAGE_NAMES, LaunchConfig, selects
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.workdir import (check_trained_with, ensure_writable, load_demos, load_params,
                                         progress as progress_bar, relative_to_workdir, stage_dir,
                                         train_config)
from twostage_jax.provenance import cpu_seconds


SELECTION_VERSION = 2
"""2: successive halving, per-episode outcomes and the rollouts spent in the record."""
EPISODES_FILE = "validation_episodes.json"
NO_CORRECTION = 0
"""Stage 2's candidate step for acting without it (`SelectConfig.no_correction`)."""


def candidate_steps(config: LaunchConfig, stage: int) -> tuple[int, ...]:
    """The steps whose checkpoints are candidates (and so kept while training), increasing.

    `config.stageN.select_steps`, or if empty every `config.train.checkpoint_every` steps; the
    stage's last step is always a candidate. Empty when the stage does not select.
    """
    if not selects(config, stage):
        return ()
    s = config.stage(stage)
    steps = s.select_steps or tuple(range(config.train.checkpoint_every, s.num_steps + 1,
                                          config.train.checkpoint_every))
    return tuple(sorted({*steps, s.num_steps}))


def validation_layouts(config: LaunchConfig) -> list[int]:
    """The validation layout seeds of checkpoint selection."""
    return list(range(config.select.seed, config.select.seed + config.select.episodes))


def stops_at_plateau(config: LaunchConfig, stage: int) -> bool:
    """Whether `stage` stops training at its validation plateau (`config.select.patience`)."""
    return selects(config, stage) and int(config.select.patience) > 0


def plateau_setting(config: LaunchConfig) -> dict:
    """What a plateau stop depends on besides the candidates (compared on resume)."""
    sel = config.select
    return {"patience": int(sel.patience), "min_delta": float(sel.min_delta),
            "first_share": float(sel.first_share), "episodes": int(sel.episodes),
            "seed": int(sel.seed), "per_seed": bool(sel.per_seed)}


def selection_path(workdir: Path, config: LaunchConfig, stage: int) -> Path:
    return stage_dir(workdir, stage, config) / "selection.json"


def _stack_seeds(per_seed: list[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_seed)


def policy_params(config: LaunchConfig, workdir: Path, stage: int, dataset: Any = None,
                  progress: bool = True, uncorrected: bool = False) -> tuple[Any, list[int]]:
    """The parameters a stage acts with (leading seed axis), and the step of each seed.

    The latest checkpoint when the stage does not select; else each seed's validation-selected
    checkpoint (selected now if STAGE/selection.json is missing or stale).

    Args:
      uncorrected: stage 2: accept seeds for which the selection chose no correction
        (`NO_CORRECTION`, `config.select.no_correction`); their parameters are another
        candidate's and must not act (`eval_jobs.Evaluation`'s `uncorrected`). Without it such a
        choice raises PipelineError.
    """
    num = int(config.num_seeds)
    if not selects(config, stage):
        params, step = load_params(config, workdir, stage, dataset)
        return acting_params(config, workdir, stage, dataset, progress, params), [step] * num
    chosen = ensure_selection(config, workdir, stage, dataset, progress=progress)["chosen_steps"]
    plain = [s for s, k in enumerate(chosen) if k == NO_CORRECTION]
    if plain and not uncorrected:
        raise PipelineError(f"stage 2's selection chose no correction for seed(s) {plain} "
                            "(config.select.no_correction): there is no stage 2 for them to act with here.")
    # a seed without correction gets another candidate's parameters as a placeholder
    filler = max(chosen) if max(chosen) != NO_CORRECTION else candidate_steps(config, stage)[-1]
    loaded = {k: load_params(config, workdir, stage, dataset, k)[0]
              for k in {filler, *chosen} - {NO_CORRECTION}}
    return acting_params(config, workdir, stage, dataset, progress, _stack_seeds(
        [eval_jobs.seed_params(loaded[filler if k == NO_CORRECTION else k], s)
         for s, k in enumerate(chosen)])), chosen


def acting_params(config: LaunchConfig, workdir: Path, stage: int, dataset: Any, progress: bool,
                  params: Any) -> Any:
    """A stage's parameters as its policy acts with them: a refining stage 2's with the first
    pass's (each seed's selected checkpoint of `config.stage2.refines`) beside them."""
    if stage != 2 or not refine.refines(config):
        return params
    first = policy_params(refine.first_config(config, workdir), workdir, 2, dataset, progress)[0]
    return refine.with_first_pass(first, params)


def _setting(config: LaunchConfig, stage: int, fingerprints: dict[int, list[str]],
             under: list[str] | None) -> dict:
    """What a selection depends on; a record with another setting is stale."""
    setting = {"version": SELECTION_VERSION, "stage": stage,
               "layouts": validation_layouts(config), "per_seed": config.select.per_seed,
               "first_share": float(config.select.first_share), "keep": config.select.keep,
               "candidates": {str(k): v for k, v in fingerprints.items()},
               **_rollout_setting(config, stage, under)}
    return json.loads(json.dumps(setting))  # as read back from the record (tuples as lists)


def _rollout_setting(config: LaunchConfig, stage: int, under: list[str] | None) -> dict:
    """What besides a candidate's parameters and the layout determines a validation episode."""
    setting: dict[str, Any] = {"evaluation": eval_jobs.cache_setting(config, validation_layouts(config))}
    if stage == 2:
        setting["stage1_params_sha256"] = under
        setting["correction_passes"] = config.eval.correction_passes
        dims = config.eval.corrected_dims
        setting["corrected_dims"] = None if dims is None else list(dims)
        if config.eval.critic_samples:  # (absent otherwise: the records of runs without it hold)
            setting["critic_samples"] = int(config.eval.critic_samples)
    return setting


def stopped_at(config: LaunchConfig, workdir: Path, stage: int) -> int | None:
    """The step at which the stage stopped at its validation plateau with this config's
    settings (STAGE/summary.json's `stopped`), or None."""
    try:
        stopped = json.loads((stage_dir(workdir, stage, config) / "summary.json").read_text()).get("stopped")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(stopped, dict) or stopped.get("setting") != plateau_setting(config):
        return None
    return int(stopped["step"]) if stops_at_plateau(config, stage) else None


def trained_candidates(config: LaunchConfig, workdir: Path, stage: int) -> tuple[int, ...]:
    """The candidate steps a selection chooses among: all of them, or those up to the step
    where training stopped at its validation plateau."""
    steps = candidate_steps(config, stage)
    stop = stopped_at(config, workdir, stage)
    return steps if stop is None else tuple(k for k in steps if k <= stop)


class ValidationRollouts:
    """Per-episode validation outcomes of one stage's candidates, rolled out on demand and
    kept in STAGE/validation_episodes.json (keyed by the parameters' fingerprints and what
    else determines an episode), so a plateau stop's rollouts, successive halving's later
    rounds and a repeated selection never roll an episode out twice.

    Args:
      config, workdir, stage, dataset: the run.
      params1: stage 2 only: the stage-1 parameters it acts on ([S, ...] leaves).
      progress: show a progress bar while rolling out.
    """

    def __init__(self, config: LaunchConfig, workdir: Path, stage: int, dataset: Any,
                 params1: Any = None, progress: bool = True) -> None:
        self.config, self.workdir, self.stage, self.dataset = config, workdir, stage, dataset
        self.params1, self.progress = params1, progress
        self.num_seeds = int(config.num_seeds)
        self.layouts = validation_layouts(config)
        under = None
        if stage == 2:
            under = [eval_jobs.params_fingerprint(eval_jobs.seed_params(params1, s))
                     for s in range(self.num_seeds)]
        self.setting = json.loads(json.dumps(_rollout_setting(config, stage, under)))
        self.path = stage_dir(workdir, stage, config) / EPISODES_FILE
        try:
            entries = json.loads(self.path.read_text()).get("entries", {})
        except (OSError, ValueError, AttributeError):
            entries = {}
        self._entries: dict[str, dict] = entries if isinstance(entries, dict) else {}
        self.first = (policy_params(refine.first_config(config, workdir), workdir, 2, dataset, progress)[0]
                      if stage == 2 and refine.refines(config) else None)  # the pass it refines
        self.params: dict[int, Any] = {}
        self.fingerprints: dict[int, list[str]] = {}
        self.seconds = self.cpu_seconds = 0.0
        self.rolled = 0
        self._ev: eval_jobs.Evaluation | None = None
        self._alone: eval_jobs.Evaluation | None = None

    def add(self, step: int, params: Any) -> None:
        """Adds candidate `step` with its parameters ([S, ...] leaves); stage 2's `NO_CORRECTION`
        takes None (stage 1 acts alone)."""
        if step == NO_CORRECTION and self.stage == 2:  # each seed's stage 1 alone
            self.params[step] = None
            self.fingerprints[step] = [f"no correction on {fp}" for fp in self.setting["stage1_params_sha256"]]
            return
        params = sharding.to_host(params)
        if self.first is not None:
            params = refine.with_first_pass(self.first, params)
        self.params[step] = params
        self.fingerprints[step] = [eval_jobs.params_fingerprint(eval_jobs.seed_params(params, s))
                                   for s in range(self.num_seeds)]

    def _name(self, step: int, seed: int) -> str:
        text = json.dumps({**self.setting, "params_sha256": self.fingerprints[step][seed]}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def table(self, steps: list[int]) -> np.ndarray:
        """[K, S, E] episode outcomes (1/0) of `steps` on the validation layouts, NaN where not
        rolled out."""
        out = np.full((len(steps), self.num_seeds, len(self.layouts)), np.nan)
        for i, k in enumerate(steps):
            for s in range(self.num_seeds):
                done = self._entries.get(self._name(k, s), {}).get("episodes", {})
                for e, layout in enumerate(self.layouts):
                    if str(layout) in done:
                        out[i, s, e] = float(done[str(layout)])
        return out

    def outcomes(self, steps: list[int]) -> Callable[[dict[tuple[int, int], int]], np.ndarray]:
        """`successive_halving`'s `outcomes` over candidates `steps`."""

        def fill(requests: dict[tuple[int, int], int]) -> np.ndarray:
            self.roll({(steps[i], s): n for (i, s), n in requests.items()})
            return self.table(steps)

        return fill

    def _evaluations(self) -> tuple[eval_jobs.Evaluation, eval_jobs.Evaluation | None]:
        """The stage's `Evaluation` and, for stage 2, stage 1 alone's (its no-correction
        candidate), built once so their policies compile once; emptied for each `roll`."""
        if self._ev is None:
            config = self.config
            c2, refining = refine.acting_configs(config, self.workdir) if self.stage == 2 else (None, None)
            self._ev = eval_jobs.Evaluation(
                train_config(config, 1), c2, self.dataset.workspace, self.layouts, self.num_seeds, None,
                modes=("stage1" if self.stage == 1 else "two_stage",),
                correction_passes=config.eval.correction_passes, corrected_dims=config.eval.corrected_dims,
                critic_samples=config.eval.critic_samples if self.stage == 2 else 0, refine=refining)
            if self.stage == 2:
                self._alone = eval_jobs.Evaluation(train_config(config, 1), None, self.dataset.workspace,
                                                  self.layouts, self.num_seeds, None, modes=("stage1",))
        for ev in (self._ev, self._alone):
            if ev is not None:
                ev.clear()
        return self._ev, self._alone

    def roll(self, requests: dict[tuple[int, int], int]) -> None:
        """Rolls out the first n layouts of each (step, seed) not rolled out yet."""
        table = {k: self.table([k])[0] for k in {k for k, _ in requests}}
        ev, alone = self._evaluations()
        empty = True
        for (k, s), n in sorted(requests.items()):
            missing = [layout for e, layout in enumerate(self.layouts[:n]) if np.isnan(table[k][s, e])]
            if not missing:
                continue
            empty = False
            if self.stage == 2 and k == NO_CORRECTION:
                alone.add((k, s, tuple(missing)), self.params1, None, layouts=missing, seeds=[s])
                continue
            p1 = self.params[k] if self.stage == 1 else self.params1
            ev.add((k, s, tuple(missing)), p1, self.params[k] if self.stage == 2 else None,
                   layouts=missing, seeds=[s])
        if empty:
            return
        name = STAGE_NAMES[self.stage]
        bar = (progress_bar(0, 0, f"validate {name} candidates", unit="episode")
               if self.progress else None)
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            extra = alone.episodes() if alone is not None else 0
            workers = eval_jobs.pool_workers(self.config, ev.episodes() + extra)
            with evaluation.EnvPool(eval_jobs.env_factory(self.config), workers) as pool:
                success, _ = ev.run(pool, bar) if ev.episodes() else ({}, None)
                if extra:
                    success.update(alone.run(pool, bar)[0])
        finally:
            if bar is not None:
                bar.close()
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += cpu_seconds() - cpu
        for (k, s, missing), by_mode in success.items():
            row = next(iter(by_mode.values()))[s]
            name = self._name(k, s)
            entry = self._entries.setdefault(name, {"episodes": {}})
            entry["episodes"].update({str(layout): bool(x) for layout, x in zip(missing, row)})
            self.rolled += len(missing)
        write_json_atomic(self.path, {"version": SELECTION_VERSION, "entries": self._entries})


def ensure_selection(config: LaunchConfig, workdir: Path, stage: int, dataset: Any = None,
                     progress: bool = True) -> dict:
    """Reads STAGE/selection.json, or selects on validation layouts and writes it.

    The candidates are `trained_candidates`; they are compared by `successive_halving`
    (`config.select.first_share`, `keep`), whose rollouts go through `ValidationRollouts`.

    Returns:
      The record: `steps` [K], `success` [K][S] validation success rates (each on the
      `episodes` [K][S] layouts that candidate reached; null where it was never rolled out),
      `mean` [K] (over the seeds rolled out), `chosen_steps` [S], `layouts` [first, last],
      `episodes_per_seed`, `per_seed`, `episodes_spent` (rollouts the choice rested on) and
      `episodes_full` (what rolling every candidate on every layout takes), `outcomes`
      [K][S][E] (1/0/null per layout), `seconds` and `cpu_seconds` of the rollouts run now.

    Raises:
      PipelineError: a candidate's checkpoint is missing (select_steps set after training).
    """
    name = STAGE_NAMES[stage]
    dataset = load_demos(workdir) if dataset is None else dataset
    steps = list(trained_candidates(config, workdir, stage))
    params = {k: load_params(config, workdir, stage, dataset, k)[0] for k in steps}
    num = int(config.num_seeds)
    params1 = policy_params(config, workdir, 1, dataset, progress)[0] if stage == 2 else None
    runs = ValidationRollouts(config, workdir, stage, dataset, params1, progress)
    under = runs.setting.get("stage1_params_sha256")
    if stage == 2 and config.select.no_correction:
        steps = [NO_CORRECTION, *steps]
        params[NO_CORRECTION] = None
    for k in steps:
        runs.add(k, params[k])
    setting = _setting(config, stage, runs.fingerprints, under)
    path = selection_path(workdir, config, stage)
    try:
        record = json.loads(path.read_text())
        if record.get("setting") == setting:
            return record
    except (OSError, ValueError):
        pass
    ensure_writable(stage_dir(workdir, stage, config), f"checkpoint selection writes {path.name} there.")
    layouts = validation_layouts(config)
    sel = config.select
    result = successive_halving(runs.outcomes(steps), len(steps), num, len(layouts),
                                float(sel.first_share), sel.keep, sel.per_seed)
    chosen = [steps[i] for i in result.chosen]
    table = runs.table(steps)
    rates = [[None if np.isnan(v) else float(v) for v in row] for row in result.success]
    record = {"setting": setting, "stage": name, "policy": "stage1" if stage == 1 else "two_stage",
              "steps": steps, "success": rates,
              "mean": [float(np.nanmean(row)) if not np.isnan(row).all() else None for row in result.success],
              "episodes": result.episodes.tolist(), "chosen_steps": chosen, "per_seed": sel.per_seed,
              "layouts": [layouts[0], layouts[-1]], "episodes_per_seed": len(layouts),
              "episodes_spent": result.spent, "episodes_full": len(steps) * num * len(layouts),
              "outcomes": [[[None if np.isnan(v) else int(v) for v in seed] for seed in cand] for cand in table],
              "seconds": runs.seconds, "cpu_seconds": runs.cpu_seconds}
    write_json_atomic(path, record)
    logging.info("%s selected on %d validation layouts: steps %s (%d of %d candidate episodes; "
                 "mean success by step: %s)", name, len(layouts), chosen, result.spent,
                 record["episodes_full"], dict(zip(steps, [None if m is None else round(m, 3)
                                                          for m in record["mean"]])))
    return record


class PlateauStop:
    """Stops a stage's training at its validation plateau (`config.select.patience`).

    Each candidate checkpoint is rolled out, as training reaches it, on the first round of
    successive halving's layouts (`config.select.first_share`), and training stops once
    `plateau_reached` holds; the rollouts are kept for the selection after training.
    """

    def __init__(self, config: LaunchConfig, workdir: Path, stage: int, dataset: Any) -> None:
        params1 = policy_params(config, workdir, 1, dataset)[0] if stage == 2 else None
        self.config, self.stage = config, stage
        self.runs = ValidationRollouts(config, workdir, stage, dataset, params1)
        self.first = halving_rungs(config.select.episodes, float(config.select.first_share))[0]

    def add(self, step: int, params: Any) -> bool:
        """Rolls out candidate `step` ([S, ...] parameters); True when training should stop."""
        self.runs.add(step, params)
        steps = sorted(self.runs.params)
        self.runs.roll({(k, s): self.first for k in steps for s in range(self.runs.num_seeds)})
        scores = self.runs.table(steps)[:, :, :self.first].mean(axis=2)  # [K, S]
        if not self.config.select.per_seed:
            scores = scores.mean(axis=1, keepdims=True)
        sel = self.config.select
        stop = plateau_reached(scores, int(sel.patience), float(sel.min_delta))
        logging.info("%s step %d: validation success on %d layouts per seed %s (best %s); %s",
                     STAGE_NAMES[self.stage], step, self.first, np.round(scores[-1], 3).tolist(),
                     np.round(scores.max(axis=0), 3).tolist(),
                     "plateau reached: training stops" if stop else "training goes on")
        return stop

    def record(self, step: int) -> dict:
        """summary.json's `stopped`: where training stopped, why, and the plateau's cost."""
        sel = self.config.select
        return {"step": int(step), "setting": plateau_setting(self.config),
                "reason": (f"no candidate improved validation success by more than {sel.min_delta:g} "
                           f"for {sel.patience} candidates")}


def summary(record: dict) -> dict:
    """A selection record without its keying setting (what results.json keeps)."""
    return {k: v for k, v in record.items() if k != "setting"}


def stage1_pairing(config: LaunchConfig, workdir: Path) -> dict:
    """The stage-1 checkpoint a stage-2 run pairs with: the latest, checked to be intact and
    trained with this config's stage-1 fields; or the base policy `config.stage1.source`
    ({'source': ..., 'steps': None})."""
    if config.stage1.source:
        return {"source": config.stage1.source, "step": None, "steps": None}
    directory = stage_dir(workdir, 1, config) / "checkpoints"
    if not directory.exists():
        try:  # a stage 2 started on a base policy of the user's, resumed without it
            source = json.loads((stage_dir(workdir, 2, config) / "pairing.json").read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            source = None
        if source:
            raise PipelineError(f"{config.stage2_name} was started on the base policy {source}, and this "
                                f"run names none; pass --config.stage1.source={source} (stage 1 is that "
                                "policy, not one trained here).")
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
    # the checkpoint of each seed that stage 2 is calibrated on and evaluated with
    steps = (policy_params(config, workdir, 1)[1] if selects(config, 1)
             else [int(step)] * int(config.num_seeds))
    return {"path": relative_to_workdir(workdir, directory / str(step)), "step": int(step),
            "algo": meta.get("algo"),
            "steps": steps}
