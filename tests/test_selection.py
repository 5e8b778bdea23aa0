"""Checkpoint selection on validation layouts (`experiments/selection.py`)."""

import json
import shutil

import jax
import numpy as np
import pytest

from experiments import selection
from experiments.launcher_config import validate_config

from tests._launcher import smoke


def test_choose_steps_picks_the_best_step_on_a_hand_made_curve():
    steps = [2, 4, 6, 8]
    success = [[0.1, 0.5], [0.6, 0.5], [0.6, 0.9], [0.4, 0.2]]  # [K steps, S seeds]
    # seed 0 ties at steps 4 and 6: the earliest; seed 1 peaks at 6
    assert selection.choose_steps(steps, success) == [4, 6]
    # one step for all seeds: the best mean (0.3, 0.55, 0.75, 0.3)
    assert selection.choose_steps(steps, success, per_seed=False) == [6, 6]
    assert selection.choose_steps([8], [[0.0, 1.0]]) == [8, 8]
    with pytest.raises(ValueError, match=r"steps \[K\] and success \[K, S\]"):
        selection.choose_steps([2, 4], [[0.1, 0.2]])


def test_candidates_default_to_every_checkpoint_and_include_the_last_step():
    assert selection.candidate_steps(smoke(), 1) == ()  # 'last': nothing extra is kept
    assert selection.candidate_steps(smoke(**{"stage1.select": "validation"}), 1) == (4, 8)
    given = smoke(**{"stage2.select": "validation", "stage2.select_steps": (2, 6)})
    assert selection.candidate_steps(given, 2) == (2, 6, 8)


@pytest.mark.parametrize("overrides, message", [
    ({"select.seed": 100_000}, "config.select.seed: the validation layouts 100000..100019 overlap the "
     "evaluation layouts 100000..100001 (config.eval.seed)"),
    ({"select.seed": 5}, "config.select.seed (5) must start beyond the training demos' layouts"),
    ({"select.seed": 60_000}, "config.select.seed: the validation layouts 60000..60019 overlap the "
     "held-out demos' layouts"),
    ({"stage1.select": "best"}, "config.stage1.select must be one of ('last', 'validation'); got 'best'."),
    ({"select.episodes": 0}, "config.select.episodes must be a positive int; got 0."),
    ({"stage1.select_steps": (3,)}, "config.stage1.select_steps[0] must be a positive multiple of "
     "config.train.log_every (2)"),
])
def test_selection_refuses_evaluation_layouts_and_bad_fields(overrides, message):
    with pytest.raises(ValueError) as e:
        validate_config(smoke(**{"stage1.select": "validation", **overrides}))
    assert str(e.value).startswith(message)


@pytest.mark.sim
def test_selection_records_its_choice_and_a_repeated_run_makes_the_same(trained, tmp_path):
    from experiments.evaluate import run_eval
    from experiments.train_stage import run_stage
    from experiments.workdir import load_params

    workdir = tmp_path / "wd"
    shutil.copytree(trained, workdir)
    config = smoke(**{"stage1.select": "validation", "select.episodes": 1, "eval.workers": 1,
                      "eval.num_episodes": 1, "eval.record_episodes": 0})
    # stage 1 is trained already: the (resumed) stage selects its checkpoint and records it
    summary = run_stage(config, workdir, 1, resume=True)
    path = workdir / "stage1" / "selection.json"
    record = json.loads(path.read_text())
    assert record["steps"] == [4, 8] and np.shape(record["success"]) == (2, 2)
    assert record["layouts"] == [200_000, 200_000] and record["policy"] == "stage1"
    assert record["chosen_steps"] == selection.choose_steps(record["steps"], record["success"])
    assert summary["selection"]["chosen_steps"] == record["chosen_steps"]

    # the policy acts with each seed's chosen checkpoint
    params, steps = selection.policy_params(config, workdir, 1)
    assert steps == record["chosen_steps"]
    for s, k in enumerate(steps):
        at_k, _ = load_params(config, workdir, 1, None, k)
        same = jax.tree_util.tree_map(lambda a, b, s=s: np.array_equal(np.asarray(a)[s], np.asarray(b)[s]),
                                      params, at_k)
        assert all(jax.tree_util.tree_leaves(same))

    # a repeated run reads the record back; selecting again from scratch makes the same choice
    run_stage(config, workdir, 1, resume=True)
    assert json.loads(path.read_text()) == record
    path.unlink()
    (workdir / "stage1" / "eval_cache.json").unlink()
    again = selection.ensure_selection(config, workdir, 1, progress=False)
    assert again["chosen_steps"] == record["chosen_steps"] and again["success"] == record["success"]

    # evaluation acts with the selection and records it with its validation curve
    results = run_eval(config, workdir)
    assert results["stage1_steps"] == record["chosen_steps"] and results["stage1_step"] == 8
    assert results["selection"]["stage1"]["success"] == record["success"]
    assert "setting" not in results["selection"]["stage1"]
    saved = json.loads((workdir / "eval" / "results.json").read_text())
    assert saved["selection"]["stage1"]["chosen_steps"] == record["chosen_steps"]


def test_stage1_curves_table_and_convergence_rule(tmp_path):
    from experiments.studies import stage1_curves

    assert stage1_curves.converged([0.2, 0.5, 0.53], 0.05, 0.95)
    assert not stage1_curves.converged([0.2, 0.5, 0.6], 0.05, 0.95)
    assert stage1_curves.converged([0.9, 0.96], 0.05, 0.95)  # solved
    record = {"steps": [2, 4], "success": [[0.2, 0.4], [0.6, 0.3]], "chosen_steps": [4, 2]}
    (tmp_path / "push-v3").mkdir()
    (tmp_path / "push-v3" / "bc_stage1_selection.json").write_text(json.dumps(record))
    curves = stage1_curves.load_curves(tmp_path)
    text = stage1_curves.table(curves, 0.05, 0.95)
    # means 0.30 and 0.45; the seeds' chosen points 0.6 and 0.4 average 0.50; 0.45 vs 0.30: not converged
    assert "| push-v3 | 0.30 | 0.45 | 4, 2 | 0.50 | no |" in text
    assert "Mean over 1 tasks at the chosen steps: 0.500" in text
