"""Checkpoint selection on validation layouts: the step of each stage that a policy acts with.

With `config.stageN.select='validation'`, training keeps the checkpoints at the stage's
candidate steps (`candidate_steps`), and each candidate is rolled out on the validation layouts
`config.select.seed ..` (`config.select.episodes` per training seed), never on the evaluation
layouts. Stage 1 is judged alone; stage 2 as the two-stage policy on top of the selected stage 1.
The step with the highest validation success is chosen for each training seed
(`config.select.per_seed`, the default) or for all seeds together; ties go to the earliest such
step (early stopping). The choice, with the validation curve it came from, is written to
STAGE/selection.json and is what evaluation, stage 2's calibration and its pairing use.

The record is keyed by what determines it (the candidates' parameter fingerprints, the
layouts, and for stage 2 the stage-1 parameters under it), so a resumed or repeated run reads
back the same choice, and a retrained stage is selected again. Stage 1's rollouts go through the
stage-1 cache (`rollouts.Stage1Cache`), so ablations sharing a stage 1 never roll it out twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from twostage_jax.launch import rollouts
from twostage_jax.launch.config import LaunchConfig
from twostage_jax.launch.checks import STAGE_NAMES, PipelineError, train_config
from twostage_jax import evaluation
from twostage_jax._io import write_json_atomic

SELECTION_VERSION = 1


def selects(config: LaunchConfig, stage: int) -> bool:
    """Whether `stage` acts with a validation-selected checkpoint (else its latest); never
    stage 1 when it is a base policy of the user's (`config.stage1.source`)."""
    if stage == 1 and config.stage1.source:
        return False
    return config.stage(stage).select == "validation"


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


def validate_select_config(config: LaunchConfig) -> None:
    """Checks config.stageN.select_steps and config.select's layouts; raises ValueError naming them.

    The validation layouts must not overlap the evaluation layouts, the training demos' or the
    held-out demos' layouts: a checkpoint chosen on evaluation episodes would bias the result.
    """
    for stage in (1, 2):
        name, s = STAGE_NAMES[stage], config.stage(stage)
        rollouts.check_kept_steps(f"config.{name}.select_steps", s.select_steps, config.train.log_every,
                                  s.num_steps, f"config.{name}.num_steps")
    if not any(selects(config, stage) for stage in (1, 2)):
        return
    sel, d = config.select, config.demos
    lo, hi = sel.seed, sel.seed + sel.episodes
    ev_lo, ev_hi = config.eval.seed, config.eval.seed + config.eval.num_episodes
    if lo < ev_hi and ev_lo < hi:
        raise ValueError(f"config.select.seed: the validation layouts {lo}..{hi - 1} overlap the "
                         f"evaluation layouts {ev_lo}..{ev_hi - 1} (config.eval.seed); choose "
                         "checkpoints on layouts evaluation never uses, e.g. 200000.")
    demo_hi = d.seed + 3 * d.num_demos + 10  # failed layouts retried
    if lo < demo_hi:
        raise ValueError(f"config.select.seed ({lo}) must start beyond the training demos' layouts "
                         f"(config.demos.seed {d.seed} .. about {demo_hi}).")
    if d.num_validation and lo < d.validation_seed + 3 * d.num_validation + 10 and d.validation_seed < hi:
        raise ValueError(f"config.select.seed: the validation layouts {lo}..{hi - 1} overlap the "
                         f"held-out demos' layouts from config.demos.validation_seed ({d.validation_seed}).")


def choose_steps(steps: Any, success: Any, per_seed: bool = True) -> list[int]:
    """The selected step of each seed from a validation curve.

    Args:
      steps: [K] increasing candidate steps.
      success: [K, S] validation success rate of each candidate for each seed.
      per_seed: choose each seed's own best step; else the step with the best mean over seeds,
        for every seed.

    Returns:
      [S] chosen steps: the highest success, ties going to the earliest step.
    """
    steps = np.asarray(steps)
    success = np.asarray(success, dtype=np.float64)
    if steps.ndim != 1 or success.ndim != 2 or success.shape[0] != steps.shape[0] or not steps.size:
        raise ValueError(f"choose_steps needs steps [K] and success [K, S] with K > 0; got shapes "
                         f"{steps.shape} and {success.shape}.")
    if not per_seed:
        success = np.repeat(success.mean(axis=1, keepdims=True), success.shape[1], axis=1)
    return [int(steps[i]) for i in np.argmax(success, axis=0)]  # argmax: the first maximum


def selection_path(workdir: Path, config: LaunchConfig, stage: int) -> Path:
    from twostage_jax.launch.workdir import stage_dir

    return stage_dir(workdir, stage, config) / "selection.json"


def _stack_seeds(per_seed: list[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_seed)


def policy_params(config: LaunchConfig, workdir: Path, stage: int, dataset: Any = None,
                  progress: bool = True) -> tuple[Any, list[int]]:
    """The parameters a stage acts with (leading seed axis), and the step of each seed.

    The latest checkpoint when the stage does not select; else each seed's validation-selected
    checkpoint (selected now if STAGE/selection.json is missing or stale).
    """
    from twostage_jax.launch.workdir import load_params

    num = int(config.num_seeds)
    if not selects(config, stage):
        params, step = load_params(config, workdir, stage, dataset)
        return params, [step] * num
    chosen = ensure_selection(config, workdir, stage, dataset, progress=progress)["chosen_steps"]
    loaded = {k: load_params(config, workdir, stage, dataset, k)[0] for k in sorted(set(chosen))}
    return _stack_seeds([rollouts.seed_params(loaded[k], s) for s, k in enumerate(chosen)]), chosen


def _setting(config: LaunchConfig, stage: int, fingerprints: dict[int, list[str]],
             under: list[str] | None) -> dict:
    """What a selection depends on; a record with another setting is stale."""
    setting = {"version": SELECTION_VERSION, "stage": stage,
               "layouts": validation_layouts(config), "per_seed": config.select.per_seed,
               "candidates": {str(k): v for k, v in fingerprints.items()},
               "evaluation": rollouts.cache_setting(config, validation_layouts(config))}
    if stage == 2:
        setting["stage1_params_sha256"] = under
        setting["correction_passes"] = config.eval.correction_passes
        dims = config.eval.corrected_dims
        setting["corrected_dims"] = None if dims is None else list(dims)
    return json.loads(json.dumps(setting))  # as read back from the record (tuples as lists)


def ensure_selection(config: LaunchConfig, workdir: Path, stage: int, dataset: Any = None,
                     progress: bool = True) -> dict:
    """Reads STAGE/selection.json, or selects on validation layouts and writes it.

    Returns:
      The record: `steps` [K], `success` [K][S] validation success rates, `mean` [K],
      `chosen_steps` [S], `layouts` [first, last], `episodes_per_seed`, `per_seed`.

    Raises:
      PipelineError: a candidate's checkpoint is missing (select_steps set after training).
    """
    from twostage_jax.launch.workdir import (ensure_writable, load_demos, load_params, progress as bar_for,
                                     stage_dir)

    name = STAGE_NAMES[stage]
    dataset = load_demos(workdir) if dataset is None else dataset
    steps = candidate_steps(config, stage)
    params = {k: load_params(config, workdir, stage, dataset, k)[0] for k in steps}
    num = int(config.num_seeds)
    fingerprints = {k: [rollouts.params_fingerprint(rollouts.seed_params(p, s)) for s in range(num)]
                    for k, p in params.items()}
    under, params1 = None, None
    if stage == 2:
        params1, _ = policy_params(config, workdir, 1, dataset, progress)
        under = [rollouts.params_fingerprint(rollouts.seed_params(params1, s)) for s in range(num)]
    setting = _setting(config, stage, fingerprints, under)
    path = selection_path(workdir, config, stage)
    try:
        record = json.loads(path.read_text())
        if record.get("setting") == setting:
            return record
    except (OSError, ValueError):
        pass
    ensure_writable(stage_dir(workdir, stage, config), f"checkpoint selection writes {path.name} there.")
    layouts = validation_layouts(config)
    mode = "stage1" if stage == 1 else "two_stage"
    c1 = train_config(config, 1)
    c2 = train_config(config, 2, workdir) if stage == 2 else None
    cache = rollouts.Stage1Cache(stage_dir(workdir, 1, config) / "eval_cache.json",
                                 rollouts.cache_setting(config, layouts))
    ev = rollouts.Evaluation(c1, c2, dataset.workspace, layouts, num, cache, modes=(mode,),
                             correction_passes=config.eval.correction_passes,
                             corrected_dims=config.eval.corrected_dims)
    for k in steps:
        ev.add(k, params[k] if stage == 1 else params1, params[k] if stage == 2 else None)
    bar = bar_for(0, 0, f"select {name} on validation", unit="episode") if progress else None
    start = time.perf_counter()
    try:
        with evaluation.EnvPool(rollouts.env_factory(config), config.eval.workers) as pool:
            success, _ = ev.run(pool, bar)
    finally:
        if bar is not None:
            bar.close()
    rates = np.stack([success[k][mode].mean(axis=1) for k in steps])  # [K, S]
    per_seed = config.select.per_seed
    chosen = choose_steps(steps, rates, per_seed)
    record = {"setting": setting, "stage": name, "policy": mode, "steps": list(steps),
              "success": rates.tolist(), "mean": rates.mean(axis=1).tolist(),
              "chosen_steps": chosen, "per_seed": per_seed,
              "layouts": [layouts[0], layouts[-1]], "episodes_per_seed": len(layouts),
              "seconds": time.perf_counter() - start}
    write_json_atomic(path, record)
    logging.info("%s selected on %d validation layouts: steps %s (mean success by step: %s)", name,
                 len(layouts), chosen, dict(zip(steps, np.round(record["mean"], 3).tolist())))
    return record


def summary(record: dict) -> dict:
    """A selection record without its keying setting (what results.json keeps)."""
    return {k: v for k, v in record.items() if k != "setting"}
