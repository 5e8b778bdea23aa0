"""Stage 1's actions on demo states: on the held-out demos (for calibration), and out of fold on
the training demos (cross-fitting), which a `predicted_share` of stage 2's samples act from.

Cross-fitting (`ensure_predictions`): the training demos are split by episode into
`config.stage2.crossfit_folds` folds; for each fold, stage 1 is trained again, for every seed,
on the other folds (to the step stage 1 acts at), and predicts the tentative actions at the
states of the fold it did not see. Stage 2 then trains on errors a stage 1 really makes on
states it never trained on, not only on Algo. 1's Gaussian draws. A base policy of yours
(`config.stage1.source`) is not trained: its own actions on the demo states are used.
The result is STAGE2/predicted.npy ([S, N, 2, 7]; S = seeds, or 1 for a base policy) and its
record STAGE2/crossfit.json, reused while stage 1, the dataset and the folds are unchanged.
A run that refines another (`config.stage2.refines`, `launch/refine.py`) takes that run's
corrected actions instead, reused while its steps and the dataset are unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import twostage_jax as tj
from twostage_jax._io import atomic_open, write_json_atomic
from twostage_jax.base_policy import SimBasePolicy, base_policy_actions
from twostage_jax.data.dataset import dataset_checksum
from twostage_jax.launch import base_source, refine, selection
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.launch_config import LaunchConfig
from twostage_jax.launch.workdir import (dataset_path, is_writer, predictions_path, progress,
                                         seed_keys, stage_dir, train_config)
from twostage_jax.provenance import cpu_seconds

ACT_BATCH = 128
"""Observations per call of stage 1's policy when it predicts on demo states."""


def stage1_actions(config: LaunchConfig, params1: Any, ds: tj.Dataset, next_obs: bool = False,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """[S, R, 7] stage 1's deterministic actions per seed on transitions of `ds`.

    Args:
      config: the launcher config (stage 1's network).
      params1: stage 1's parameters, leading seed axis S.
      ds: the dataset.
      next_obs: act at each transition's next state (`next_obs_index`, `next_pose`).
      rows: [R] the transitions (default: all of them, in order).
    """
    act = tj.make_policy(train_config(config, 1), None, ds.workspace)
    rows = np.arange(ds.action.shape[0]) if rows is None else np.asarray(rows)
    frames = np.asarray(ds.next_obs_index if next_obs else ds.obs_index)[rows]
    pose = np.asarray(ds.next_pose if next_obs else ds.pose)[rows]
    out = []
    for s in range(int(jax.tree_util.tree_leaves(params1)[0].shape[0])):
        p1 = jax.tree_util.tree_map(lambda x, s=s: x[s], params1)
        parts = []
        for lo in range(0, rows.shape[0], ACT_BATCH):
            images, cam = ds.observed(frames[lo:lo + ACT_BATCH])
            parts.append(np.asarray(act(p1, None, jnp.asarray(images), jnp.asarray(pose[lo:lo + ACT_BATCH]),
                                        cam).tentative))
        out.append(np.concatenate(parts) if parts else np.zeros((0, tj.ACTION_DIM), np.float32))
    return np.stack(out)


def uses_predictions(config: LaunchConfig, stage: int) -> bool:
    """Whether `stage` trains on predicted tentative actions (stage 2 with a predicted_share)."""
    return stage == 2 and config.stage2.stage2.predicted_share > 0


def folds(dataset: tj.Dataset, num_folds: int, seed: int) -> np.ndarray:
    """[N] int fold of each transition: the demos (episodes) dealt at random into `num_folds`.

    Raises:
      PipelineError: fewer demos than folds.
    """
    episodes = np.unique(np.asarray(dataset.episode))
    if episodes.size < num_folds:
        raise PipelineError(f"config.stage2.crossfit_folds ({num_folds}) exceeds the {episodes.size} "
                            "training demos; use fewer folds.")
    order = np.random.default_rng(seed).permutation(episodes)
    fold_of = {int(e): i % num_folds for i, e in enumerate(order)}
    return np.asarray([fold_of[int(e)] for e in np.asarray(dataset.episode)], np.int32)


def settings(config: LaunchConfig, workdir: Path, stage1: list[int] | str) -> dict:
    """What the predictions are made from: stage 1 (its steps, or the base policy), the folds
    (or the run refined and its steps) and the dataset. Predictions made from other settings
    are made again."""
    made = ({"refines": config.stage2.refines, "draws": refine.DRAWS} if refine.refines(config) else
            {"folds": None if config.stage1.source else int(config.stage2.crossfit_folds)})
    return {"stage1": stage1, **made, "dataset_sha256": dataset_checksum(dataset_path(workdir))}


def ensure_predictions(config: LaunchConfig, workdir: Path, dataset: tj.Dataset,
                       stage1: list[int] | str | None = None) -> np.ndarray:
    """STAGE2/predicted.npy as recorded in crossfit.json, or made now (`make_predictions`).

    Args:
      stage1: the stage-1 steps each seed acts with, or the base policy's source (the
        `steps` / `source` of `selection.stage1_pairing`, which a caller has at hand); None
        looks them up.

    Returns:
      [S, N, 2, 7] float32 tentative actions at each transition's state and next state: the
      `predicted` of `tj.prepare_data`.
    """
    out_dir = stage_dir(workdir, 2, config)
    if stage1 is None:
        stage1 = config.stage1.source or selection.policy_params(config, workdir, 1, dataset)[1]
    if refine.refines(config):  # the first pass's steps decide its corrected actions
        first = refine.first_config(config, workdir)
        first_params, first_steps = selection.policy_params(first, workdir, 2, dataset)
        stage1 = {"stage1": stage1, config.stage2.refines: first_steps}
    want = settings(config, workdir, stage1)
    try:
        record = json.loads((out_dir / "crossfit.json").read_text())
        if record.get("settings") == json.loads(json.dumps(want)):
            return np.load(predictions_path(workdir, config), allow_pickle=False)
    except (OSError, ValueError):
        pass
    if refine.refines(config):
        predicted, record = make_refined(config, workdir, dataset, first, first_params)
    else:
        predicted, record = make_predictions(config, workdir, dataset, stage1)
    if is_writer():
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(predictions_path(workdir, config), "wb") as f:  # before the record of it
            np.save(f, predicted, allow_pickle=False)
        write_json_atomic(out_dir / "crossfit.json", {"settings": want, **record})
    return predicted


def make_predictions(config: LaunchConfig, workdir: Path, dataset: tj.Dataset,
                     stage1: list[int] | str) -> tuple[np.ndarray, dict]:
    """The predictions and their record (cost, error), by cross-fitting or from the base policy."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    if config.stage1.source:
        base = base_source.load(config)
        if isinstance(base, SimBasePolicy):
            raise PipelineError(f"config.stage2.stage2.predicted_share trains stage 2 on "
                                f"{config.stage1.source}'s actions on the demo states, but it acts "
                                "beside the simulator (a SimBasePolicy), which cannot be shown a "
                                "recorded state; set predicted_share=0 or give a callable base(image, pose).")
        predicted = np.stack([base_policy_actions(base, dataset), base_policy_actions(base, dataset, next_obs=True)],
                             axis=1)[None]
        record: dict = {"source": config.stage1.source}
    else:
        predicted, record = crossfit(config, dataset, int(max(stage1)))
    record.update(seconds=time.perf_counter() - wall, cpu_seconds=cpu_seconds() - cpu,
                  **position_errors(predicted, dataset))
    logging.info("stage 2 trains a share of %.2f on predicted tentative actions (median position "
                 "error %.2f cm; made in %.0f s)", config.stage2.stage2.predicted_share,
                 record["position_error_cm_median"], record["seconds"])
    return predicted.astype(np.float32), record


def position_errors(predicted: np.ndarray, dataset: tj.Dataset) -> dict:
    """The median and 90th percentile, in cm, of the predicted positions' distance from the
    demo actions' ([P, N, 2, 7] predictions, at each transition's state)."""
    ws = dataset.workspace
    err = np.linalg.norm(tj.action_to_pose(predicted[:, :, 0], ws)[0] -
                         tj.action_to_pose(np.asarray(dataset.action)[None], ws)[0], axis=-1)
    return {"position_error_cm_median": float(100 * np.median(err)),
            "position_error_cm_p90": float(100 * np.quantile(err, 0.9))}


def make_refined(config: LaunchConfig, workdir: Path, dataset: tj.Dataset, first: LaunchConfig,
                 first_params: Any) -> tuple[np.ndarray, dict]:
    """The first pass's corrected actions on Algorithm 1's draws (`refine.first_pass_predictions`)
    and their record: cost, and the position error they leave against the demo actions."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    predicted = refine.first_pass_predictions(first, workdir, first_params, dataset, int(config.seed))
    record = {"refines": config.stage2.refines, "draws": refine.DRAWS,
              "seconds": time.perf_counter() - wall, "cpu_seconds": cpu_seconds() - cpu,
              **position_errors(predicted, dataset)}
    logging.info("stage 2 refines %s: it trains a share of %.2f on that run's corrected actions (median "
                 "position error left %.2f cm; made in %.0f s)", config.stage2.refines,
                 config.stage2.stage2.predicted_share, record["position_error_cm_median"], record["seconds"])
    return predicted.astype(np.float32), record


def crossfit(config: LaunchConfig, dataset: tj.Dataset, num_steps: int) -> tuple[np.ndarray, dict]:
    """[S, N, 2, 7] out-of-fold stage-1 actions: K stage-1 models per seed, each trained for
    `num_steps` on K-1 folds of the demos, acting on the fold it did not see."""
    k_folds = int(config.stage2.crossfit_folds)
    fold = folds(dataset, k_folds, int(config.seed))
    tcfg = train_config(config, 1)
    train, data = tj.make_train(tcfg, 1), tj.prepare_data(dataset, tcfg)
    index = np.asarray(data.index)
    n, num_seeds = int(dataset.action.shape[0]), int(config.num_seeds)
    predicted = np.zeros((num_seeds, n, 2, tj.ACTION_DIM), np.float32)
    chunk = int(config.train.log_every)
    bar = progress(k_folds * num_steps, 0, f"cross-fit stage1 {config.algo} x{num_seeds} seeds, {k_folds} folds")
    try:
        for k in range(k_folds):
            fold_data = data._replace(index=jnp.asarray(index[fold[index] != k]))
            keys = jnp.stack([jax.random.fold_in(key, 1 + k) for key in seed_keys(config, 1)])
            states = tj.init_seeds(train, keys, fold_data)
            for done in range(0, num_steps, chunk):
                n_steps = min(chunk, num_steps - done)
                states, _ = tj.run_seeds(train, states, fold_data, n_steps, config.seed_strategy)
                bar.update(n_steps)
            rows = np.flatnonzero(fold == k)
            for j, next_obs in enumerate((False, True)):
                predicted[:, rows, j] = stage1_actions(config, states.params, dataset, next_obs, rows)
    finally:
        bar.close()
    return predicted, {"folds": k_folds, "steps": num_steps,
                       "demos_per_fold": np.bincount(fold_of_episodes(dataset, fold), minlength=k_folds).tolist()}


def fold_of_episodes(dataset: tj.Dataset, fold: np.ndarray) -> np.ndarray:
    """[E] the fold of each demo (`fold` is per transition)."""
    _, first = np.unique(np.asarray(dataset.episode), return_index=True)
    return fold[first]
