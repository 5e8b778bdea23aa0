"""Checkpoint selection on validation layouts (`twostage_jax/launch/selection.py`)."""

import json

import numpy as np
import pytest

from twostage_jax.evaluation import halving
from twostage_jax.launch import selection
from twostage_jax.launch.launch_config import check_config

from tests._launcher import smoke


def test_choose_steps_picks_the_best_step_on_a_hand_made_curve():
    steps = [2, 4, 6, 8]
    success = [[0.1, 0.5], [0.6, 0.5], [0.6, 0.9], [0.4, 0.2]]  # [K steps, S seeds]
    # seed 0 ties at steps 4 and 6: the earliest; seed 1 peaks at 6
    assert halving.choose_steps(steps, success) == [4, 6]
    # one step for all seeds: the best mean (0.3, 0.55, 0.75, 0.3)
    assert halving.choose_steps(steps, success, per_seed=False) == [6, 6]
    assert halving.choose_steps([8], [[0.0, 1.0]]) == [8, 8]
    with pytest.raises(ValueError, match=r"steps \[K\] and success \[K, S\]"):
        halving.choose_steps([2, 4], [[0.1, 0.2]])


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
        check_config(smoke(**{"stage1.select": "validation", **overrides}))
    assert str(e.value).startswith(message)


def test_validation_curves_table_and_convergence_rule(tmp_path):
    from experiments.studies import validation_curves as vc

    assert vc.converged([0.2, 0.5, 0.53], 0.05, 0.95)
    assert not vc.converged([0.2, 0.5, 0.6], 0.05, 0.95)
    assert vc.converged([0.9, 0.96], 0.05, 0.95)  # solved
    record = {"steps": [2, 4], "success": [[0.2, 0.4], [0.6, 0.3]], "chosen_steps": [4, 2]}
    (tmp_path / "push-v3").mkdir()
    (tmp_path / "push-v3" / "bc_stage1_selection.json").write_text(json.dumps(record))
    two_stage = {"steps": [2, 4, 8], "success": [[0.5, 0.5], [0.7, 0.9], [0.9, 0.9]], "chosen_steps": [8, 4]}
    (tmp_path / "push-v3" / "bc_stage2_selection.json").write_text(json.dumps(two_stage))
    curves = vc.load_curves(tmp_path)
    text = vc.table(curves, 0.05, 0.95)
    # means 0.30 and 0.45; the seeds' chosen points 0.6 and 0.4 average 0.50; 0.45 vs 0.30: not converged
    assert "| push-v3 | 0.30 | 0.45 | 4, 2 | 0.50 | no |" in text
    assert "Mean over 1 tasks at the chosen steps: 0.500" in text
    # the two-stage curve beside stage 1 at its chosen steps; 0.90 vs 0.80 on the last two: not converged
    text = vc.table(vc.load_curves(tmp_path, 2), 0.05, 0.95, curves)
    assert "| push-v3 | 0.50 | 0.80 | 0.90 | 8, 4 | 0.90 | 0.50 | no |" in text
    assert vc.is_selection_record(tmp_path / "push-v3" / "bc_stage2_selection.json")
    assert not vc.is_selection_record(tmp_path / "push-v3" / "bc_stage2.json")


def test_halving_rungs_double_from_the_first_share():
    assert halving.halving_rungs(20, 0.25) == [5, 10, 20]
    assert halving.halving_rungs(20, 1.0) == [20]
    assert halving.halving_rungs(20, 0.3) == [6, 12, 20]
    assert halving.halving_rungs(3, 0.01) == [1, 2, 3]


def _table_outcomes(table):
    """`successive_halving`'s outcomes over a complete table, recording every request."""
    asked = []

    def outcomes(requests):
        asked.append(dict(requests))
        return table

    return outcomes, asked


def test_successive_halving_spends_rollouts_on_the_candidates_that_can_still_win():
    # 4 candidates x 1 seed x 8 layouts; rungs [2, 4, 8] at first_share 0.25
    table = np.array([[[0, 0, 0, 0, 1, 1, 1, 1]],    # 0.0 on the first 2: out after rung 1
                      [[1, 1, 1, 0, 1, 0, 0, 0]],    # 1.0, then 0.75: out after rung 2
                      [[1, 1, 1, 1, 1, 1, 0, 0]],    # 1.0, 1.0: wins
                      [[1, 0, 1, 1, 0, 0, 0, 0]]], float)  # 0.5: out after rung 1
    outcomes, asked = _table_outcomes(table)
    result = halving.successive_halving(outcomes, 4, 1, 8, first_share=0.25, keep="half")
    assert result.chosen == [2]
    assert asked[0] == {(0, 0): 2, (1, 0): 2, (2, 0): 2, (3, 0): 2}
    assert asked[1] == {(1, 0): 4, (2, 0): 4}  # the best half
    assert len(asked) == 2 or asked[2] == {}  # one left (1.0 against 0.75): it wins, no more rollouts
    assert result.episodes.tolist() == [[2], [4], [4], [2]] and result.spent == 12
    assert result.success[2, 0] == 1.0 and result.success[1, 0] == 0.75 and result.success[0, 0] == 0.0
    # every layout for every candidate is today's rule: the best full-layout rate, earliest on ties
    full = halving.successive_halving(outcomes, 4, 1, 8, first_share=1.0)
    assert full.chosen == [int(np.argmax(table.mean(axis=2)[:, 0]))] == [2] and full.spent == 32
    # 'overlap' keeps whatever the leader's interval cannot tell apart after 2 episodes
    wide = halving.successive_halving(_table_outcomes(table)[0], 4, 1, 8, first_share=0.25, keep="overlap")
    assert wide.spent > result.spent and wide.chosen == [2]


def test_successive_halving_with_one_choice_for_all_seeds_and_tied_candidates():
    rng = np.random.default_rng(0)
    table = (rng.random((3, 2, 8)) < 0.5).astype(float)
    outcomes, _ = _table_outcomes(table)
    result = halving.successive_halving(outcomes, 3, 2, 8, first_share=1.0, per_seed=False)
    assert result.chosen == halving.choose_steps([0, 1, 2], table.mean(axis=2), per_seed=False)
    tied = np.ones((3, 1, 4))
    result = halving.successive_halving(_table_outcomes(tied)[0], 3, 1, 4, first_share=0.25)
    assert result.chosen == [0] and result.spent == 3 * 4  # ties are kept, and go to the earliest
    assert halving.keep_candidates(np.array([0.5, 0.5, 0.2, 0.1]), 4, "half").tolist() == [True, True, False, False]


def test_plateau_is_reached_when_no_seed_improved_for_patience_candidates():
    scores = np.array([[0.2, 0.5], [0.4, 0.5], [0.4, 0.5], [0.45, 0.5]])
    assert not halving.plateau_reached(scores, patience=0)
    assert halving.plateau_reached(scores[:3], patience=1)  # seed 0 flat at 0.4, seed 1 since the start
    assert not halving.plateau_reached(scores, patience=1)  # seed 0 improved at the last
    assert halving.plateau_reached(scores, patience=1, min_delta=0.1)  # by no more than 0.1
    assert not halving.plateau_reached(scores[:2], patience=2)  # too few candidates to tell
