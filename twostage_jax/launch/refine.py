"""A stage-2 run that corrects another run's action again: a second zoom (`config.stage2.refines`).

The run it refines (the first pass) is another stage-2 run of the same workdir, trained before
it. The refining run trains on the first pass's corrected actions (`predictions`, through
`tj.first_pass_actions`) and acts after it: its policy is `tj.make_policy(stage1, first,
refine=this)`, and its acting parameters hold the first pass's (each seed's selected
checkpoint) with its own under the key 'refine' (`with_first_pass`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

import twostage_jax as tj
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.launch_config import LaunchConfig, from_dict
from twostage_jax.launch.workdir import train_config

DRAWS = 2
"""Algorithm 1's draws per demo transition and first-pass seed that the refining run trains on."""


def refines(config: LaunchConfig) -> bool:
    """Whether this stage-2 run corrects another run's action again."""
    return bool(config.stage2.refines)


def first_config(config: LaunchConfig, workdir: Path) -> LaunchConfig:
    """The config the run `config.stage2.refines` was trained with (its STAGE2/config.json).

    Raises:
      PipelineError: that run has not been trained in this workdir, or refines another run.
    """
    name = config.stage2.refines
    path = Path(workdir) / name / "config.json"
    try:
        first = from_dict(json.loads(path.read_text())["config"])
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(f"config.stage2.refines={name!r}: {path} cannot be read ({e}); train that run "
                            f"first (--mode=stage2 --config.stage2_name={name}).") from e
    if first.stage2.refines:
        raise PipelineError(f"config.stage2.refines={name!r} refines {first.stage2.refines!r} itself; a "
                            "run refines a plain stage-2 run (one zoom more).")
    return first


def acting_configs(config: LaunchConfig, workdir: Path) -> tuple[tj.TrainConfig, tj.TrainConfig | None]:
    """(the stage 2 the policy acts with, the refining one or None): `make_policy`'s `stage2`
    and `refine`."""
    own = train_config(config, 2, workdir)
    if not refines(config):
        return own, None
    return train_config(first_config(config, workdir), 2, workdir), own


def with_first_pass(first: Any, params: Any) -> dict:
    """The acting parameters of a refining run: the first pass's, with `params` under 'refine'
    (both with the same leading seed axis)."""
    return {**first, "refine": params}


def first_pass_predictions(first: LaunchConfig, workdir: Path, params: Any, dataset: tj.Dataset,
                           seed: int) -> np.ndarray:
    """[S * DRAWS, N, 2, 7] the first pass's corrected actions (`tj.first_pass_actions`) for
    each of its seeds' parameters ([S, ...] leaves), as `tj.prepare_data`'s `predicted`."""
    tcfg = train_config(first, 2, workdir)  # (its calibrated sigma and crop, where calibrated)
    data = tj.prepare_data(dataset, tcfg)
    out = []
    for s in range(int(jax.tree_util.tree_leaves(params)[0].shape[0])):
        p = jax.tree_util.tree_map(lambda x, s=s: x[s], params)
        out.append(tj.first_pass_actions(data, tcfg, p, jax.random.fold_in(jax.random.PRNGKey(seed), s), DRAWS))
    return np.concatenate(out)
