"""experiments/studies/summarize.py on a fake raw folder: table means, figures, and input validation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.studies.summarize import SummaryError, _cost, _critic_choices, load_raw, summarize
from tests._launcher import smoke
from twostage_jax.launch.launch_config import replace_path, to_dict

ROOT = Path(__file__).resolve().parents[1]
SEEDS, EPISODES = 5, 10
TASKS = ("reach-v3", "push-v3", "drawer-open-v3")  # every arm and ablation
CHOSEN = [100, 300, 200, 300, 100]  # BC's stage 1: each seed's checkpoint selected on validation
CHOSEN2 = [200, 50, 200, 200, 50]  # and its stage 2
CQL_ONLY = "door-open-v3"  # headline CQL only: BC cells show "—" and BC means leave it out


def _rates(rng: np.random.Generator) -> list[float]:
    return (rng.integers(0, EPISODES + 1, SEEDS) / EPISODES).tolist()


def _mode(per_seed: list[float]) -> dict:
    episodes = [[int(e < round(r * EPISODES)) for e in range(EPISODES)] for r in per_seed]
    return {"per_seed": per_seed, "mean": float(np.mean(per_seed)), "ci_low": 0.0, "ci_high": 1.0,
            "episodes": episodes}


def _result(task: str, algo: str, name: str, stage1: list[float], two: list[float], **over) -> dict:
    d = {"version": 2, "task": task, "algo": algo, "env": "metaworld", "num_seeds": SEEDS, "episodes_per_seed": EPISODES,
         "eval_seeds": [100000, 100000 + EPISODES - 1], "stage1_step": 300, "stage2_step": 200,
         "stage2_mode": "correction", "crop_size": 64 if algo == "bc" else 32, "stage2_name": name,
         "stage2_q_target": "mc" if algo == "cql" else None, "eval_seconds": 1.0,
         "gain": {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0},
         "stage1_steps": [300] * SEEDS, "stage2_steps": [200] * SEEDS,
         "stage2_loss_weighting": "auto" if algo == "bc" else "none",
         "modes": {"stage1": _mode(stage1), "two_stage": _mode(two)}}
    d.update(over)
    return d


def _write(raw: Path, d: dict, filename: str) -> Path:
    path = raw / d["task"] / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


@pytest.fixture
def fake_raw(tmp_path):
    """Writes the fake raw folder; returns (raw, {(task, algo, name): (stage1, two_stage)})."""
    rng = np.random.default_rng(0)
    raw, truth = tmp_path / "raw", {}
    for task in TASKS + (CQL_ONLY,):
        for algo in ("bc", "cql"):
            if task == CQL_ONLY and algo == "bc":
                continue
            s1, s2 = _rates(rng), _rates(rng)
            truth[task, algo, "stage2"] = (s1, s2)
            selected = {"selection": {"stage1": {"chosen_steps": CHOSEN}, "stage2": {}},
                        "stage1_steps": CHOSEN, "stage2_steps": CHOSEN2}
            _write(raw, _result(task, algo, "stage2", s1, s2, **(selected if algo == "bc" else {})),
                   f"{algo}_stage2.json")
            if task == "push-v3":  # the paper's stage-2 method on one task
                truth[task, algo, "paper"] = (s1, _rates(rng))
                _write(raw, _result(task, algo, "paper", s1, truth[task, algo, "paper"][1]),
                       f"{algo}_paper.json")
            if algo == "cql" and task != CQL_ONLY:
                for name, over in (("crop16", {"crop_size": 16}), ("direct", {"stage2_mode": "direct"}),
                                   ("auto", {"crop_size": 0, "stage2_crop_size": 48}),
                                   ("fixed", {})):  # any other stage-2 folder, by its name
                    truth[task, algo, name] = (s1, _rates(rng))
                    _write(raw, _result(task, algo, name, s1, truth[task, algo, name][1], **over),
                           f"cql_{name}.json")
    # reproduce.py collects stage 1's selection record beside the runs; it is not one
    (raw / "push-v3" / "bc_stage1_selection.json").write_text(json.dumps({"stage": "stage1"}))
    return raw, truth


def _mean_row(text: str, after: str = "") -> str:
    start = text.index(after) if after else 0
    return next(line for line in text[start:].splitlines() if line.startswith("| **mean**"))


def _cell_mean(cell: str, signed: bool) -> float:
    """The mean of a 'M [LO, HI]' cell (rounded to 2 decimals; signed cells start with + or -)."""
    value = cell.strip().split(" [")[0]
    assert (value[0] in "+-") == signed, cell
    return float(value)


def _mean(truth: dict, tasks, algo: str, name: str, which: int) -> float:
    return float(np.mean([truth[t, algo, name][which] for t in tasks]))


def test_summary_means_and_figures(fake_raw, tmp_path):
    raw, truth = fake_raw
    runs = tmp_path / "runs"
    for task in TASKS:  # learning-curve metrics for the BC and CQL stages
        for algo, key in (("bc", "bc_loss"), ("cql", "critic_loss")):
            for stage in ("stage1", "stage2"):
                f = runs / task / algo / stage / "metrics.jsonl"
                f.parent.mkdir(parents=True)
                f.write_text("\n".join(json.dumps({"step": st, "seed": s, key: 1.0 / st + s})
                                       for st in (10, 20, 30) for s in range(2)) + "\n{\"step\": 4")
    out = tmp_path / "out"
    text = summarize(raw, out, runs, reps=200).read_text()

    bc_tasks, cql_tasks = list(TASKS), list(TASKS) + [CQL_ONLY]
    cells = _mean_row(text).strip("|").split("|")[1:]
    expected = []
    for algo, tasks in (("bc", bc_tasks), ("cql", cql_tasks)):  # stage 1, two-stage, gain, fixed
        one, two = (_mean(truth, tasks, algo, "stage2", k) for k in (0, 1))
        expected += [one, two, two - one, (two - one) / (1 - one)]
    for i, (cell, want) in enumerate(zip(cells, expected)):
        if i % 4 == 3:  # failures fixed: a signed point estimate
            assert cell.strip()[0] in "+-" and float(cell) == pytest.approx(want, abs=0.0051), (i, cell)
            continue
        assert _cell_mean(cell, signed=i % 4 == 2) == pytest.approx(want, abs=0.0051), (i, cell, want)
    task_row = next(line for line in text.splitlines() if line.startswith(f"| {CQL_ONLY} |"))
    assert task_row.count("—") == 4
    assert "BC over 3 task(s) (reach-v3, push-v3, drawer-open-v3)" in text
    assert f"CQL over 4 task(s) (reach-v3, push-v3, drawer-open-v3, {CQL_ONLY})" in text
    # ablations: labelled by the headline's actual values, paired difference over the 3 tasks
    assert "CQL crop 16 | CQL crop 32 (headline) | difference" in text
    assert "CQL direct | CQL correction (headline)" in text
    assert "CQL crop auto | CQL crop 32 (headline) | difference" in text  # crop_size 0: calibrated
    assert ("CQL fixed | CQL stage 2 at each seed's step chosen on validation (headline) | "
            "difference") in text
    for name in ("crop16", "direct", "auto", "fixed"):
        row = _mean_row(text, f"`{name}`").strip("|").split("|")
        diff = _mean(truth, TASKS, "cql", name, 1) - _mean(truth, TASKS, "cql", "stage2", 1)
        assert row[1].strip().startswith(f"{_mean(truth, TASKS, 'cql', name, 1):.2f} [")
        assert row[3].strip().startswith(f"{diff:+.2f} [")
    # the paper-settings arm: its own table (not an ablation), ours minus paper's paired by seed
    assert "`paper`" not in text.split("## Ablations")[1]
    row = _mean_row(text, "## The paper's stage-2 method").strip("|").split("|")[1:]
    for i, algo in enumerate(("bc", "cql")):
        (s1, paper), (_, ours) = truth["push-v3", algo, "paper"], truth["push-v3", algo, "stage2"]
        want = [np.mean(s1), np.mean(paper), np.mean(paper) - np.mean(s1), np.mean(ours),
                np.mean(ours) - np.mean(paper)]
        for j, w in enumerate(want):
            assert _cell_mean(row[5 * i + j], signed=j in (2, 4)) == pytest.approx(w, abs=0.0051), (algo, j)
    assert ("BC stage 1 up to 300, each seed acting with its checkpoint chosen on validation "
            "layouts (chosen steps 100/200/300) / stage 2 up to 200, each seed acting with its checkpoint "
            "chosen on validation layouts (chosen steps 50/200); CQL stage 1 300 / stage 2 200") in text
    assert "5 seeds × 10 episodes per seed" in text and "python -m experiments.studies.summarize" in text
    # CQL's arms trained stage 2 alike; BC's headline chose each seed's step on validation
    assert "**CQL: the paper arm's stage 2 trained" not in text
    assert "**BC: the paper arm's stage 2 trained 200 steps, the headline's up to 200, each seed" in text
    assert "intermediate checkpoints were not evaluated" in text
    figures = ("fig3_headline.png", "fig4_per_task.png", "fig4_learning_curves_bc.png",
               "fig4_learning_curves_cql.png", "fig5_crop_size.png", "fig6_correction_vs_direct.png")
    for name in figures:
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in text, name
    assert not (out / "fig_mc_vs_td.png").exists()  # no TD ablation in the fake data


def test_paper_arm_with_another_stage2_budget_is_flagged(fake_raw, tmp_path):
    raw, _ = fake_raw  # (equal budgets, no such line: test_summary_means_and_figures)
    path = raw / "push-v3" / "bc_paper.json"
    d = json.loads(path.read_text())
    d["stage2_step"] = 100  # the headline's stage 2 trained 200
    path.write_text(json.dumps(d))
    text = summarize(raw, tmp_path / "other", reps=50).read_text()
    assert ("**BC: the paper arm's stage 2 trained 100 steps, the headline's up to 200, each seed acting "
            "with its checkpoint chosen on validation layouts (chosen steps 50/200)**") in text
    assert "**CQL: the paper arm" not in text
    # another stage-2 learning rate is said too (CQL: actor / critic, from the resolved config)
    path = raw / "push-v3" / "cql_stage2.json"
    d = json.loads(path.read_text())
    d["config"] = to_dict(replace_path(smoke("cql"), {"stage2.cql.actor_lr": 1e-3}))
    path.write_text(json.dumps(d))
    for task in ("push-v3", "reach-v3"):
        path = raw / task / "cql_paper.json"
        if path.exists():
            p = json.loads(path.read_text())
            p["config"] = to_dict(smoke("cql"))
            path.write_text(json.dumps(p))
    text = summarize(raw, tmp_path / "third", reps=50).read_text()
    assert ("**CQL: the paper arm's stage 2 learned at 0.0001 / 0.0003, the headline's at "
            "0.001 / 0.0003**") in text


def test_missing_modes_names_file_and_field(fake_raw, tmp_path):
    raw, _ = fake_raw
    path = raw / "push-v3" / "bc_stage2.json"
    d = json.loads(path.read_text())
    del d["modes"]
    path.write_text(json.dumps(d))
    with pytest.raises(SummaryError, match=r"push-v3/bc_stage2\.json: missing field\(s\) 'modes'"):
        summarize(raw, tmp_path / "out")
    assert not (tmp_path / "out" / "summary.md").exists()


def test_ablation_inconsistent_with_headline(fake_raw, tmp_path):
    raw, _ = fake_raw
    path = raw / "reach-v3" / "cql_direct.json"
    d = json.loads(path.read_text())
    d["episodes_per_seed"] = 20
    path.write_text(json.dumps(d))
    with pytest.raises(SummaryError, match=r"reach-v3/cql_direct\.json: field 'episodes_per_seed'"):
        summarize(raw, tmp_path / "out")


def test_cli_empty_raw_exits_2(tmp_path):
    (tmp_path / "raw").mkdir()
    out = subprocess.run([sys.executable, "-m", "experiments.studies.summarize", f"--raw={tmp_path / 'raw'}",
                          f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no TASK/ALGO_NAME.json results" in out.stderr


def test_aggregates_and_success_curves(fake_raw, tmp_path):
    from scipy.stats import trim_mean

    raw, truth = fake_raw
    rng = np.random.default_rng(3)
    for task in TASKS:  # learning curves in the BC headline runs (and none in the CQL ones)
        path = raw / task / "bc_stage2.json"
        d = json.loads(path.read_text())
        d["curves"] = {m: {"steps": [100, 200, 300], "per_seed": [_rates(rng), _rates(rng),
                                                                  d["modes"][m]["per_seed"]]}
                       for m in ("stage1", "two_stage")}
        path.write_text(json.dumps(d))
    out = tmp_path / "out"
    text = summarize(raw, out, None, reps=200).read_text()
    bc = np.array([truth[t, "bc", "stage2"][1] for t in TASKS])  # [tasks, seeds], two-stage
    row = next(line for line in text.splitlines() if line.startswith("| BC two-stage | 3 |"))
    iqm, mean = row.strip("|").split("|")[2:4]
    assert iqm.strip().startswith(f"{trim_mean(bc.ravel(), 0.25):.2f} [")
    assert mean.strip().startswith(f"{bc.mean():.2f} [")
    assert "| CQL(1) | 4 |" in text and "P(two-stage > stage 1)" in text
    assert "no training workdirs given (--runs)" in text  # runs=None: said, not 'under None'
    for name in ("fig_aggregates.png", "fig_performance_profiles.png", "fig4_success_curves_bc.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in text, name
    assert not (out / "fig4_success_curves_cql.png").exists()

    path = raw / "push-v3" / "bc_stage2.json"
    d = json.loads(path.read_text())
    d["curves"]["two_stage"]["per_seed"].pop()
    path.write_text(json.dumps(d))
    with pytest.raises(SummaryError, match=r"push-v3/bc_stage2\.json: field 'curves.two_stage'"):
        summarize(raw, tmp_path / "out2")


def test_cost_table_counts_a_shared_stage_1_once(tmp_path):
    raw = tmp_path / "raw"
    stage = lambda train, sel: {"train_cpu_seconds": train, "selection_cpu_seconds": sel,
                                "plateau_validation_cpu_seconds": 1.0, "episodes_spent": 30,
                                "episodes_full": 60, "stopped_step": 4000}
    head = {"stage1": stage(100.0, 10.0), "stage2": stage(50.0, 5.0), "evaluation": {"cpu_seconds": 20.0}}
    paper = {"stage1": stage(999.0, 999.0), "stage2": {"train_cpu_seconds": 30.0},
             "evaluation": {"cpu_seconds": 20.0}}
    _write(raw, _result("push-v3", "bc", "stage2", [0.5] * SEEDS, [0.6] * SEEDS, cost=head), "bc_stage2.json")
    _write(raw, _result("push-v3", "bc", "paper", [0.5] * SEEDS, [0.4] * SEEDS, cost=paper), "bc_paper.json")
    table = "\n".join(_cost(load_raw(raw)))  # summary.md's "What it cost" section
    # headline: 100 + 11 + 50 + 6 + 20; the paper arm: its stage 2 (30) and evaluation (20)
    assert "| push-v3 | bc | stage2 | 100, stopped at 4000 | 11 (30/60 episodes) | 50, stopped at 4000 " in table
    assert "| push-v3 | bc | paper | (shared) | (shared) | 30 | 0 | 20 | 50 |" in table
    assert "| all | | | | | | | | 237 (0.1 h) |" in table


def test_the_critics_choices_are_counted_per_algorithm_and_arm(fake_raw):
    raw, _ = fake_raw
    runs = load_raw(raw)
    assert _critic_choices(runs) == []  # no run let the critic choose
    key = next(k for k in runs if k[1] == "cql" and k[2] == "stage2")
    runs[key] = dataclasses.replace(runs[key], critic_choices={"no_correction": [3, 1], "mode": [4, 4],
                                                               "sample": [1, 3]})
    lines = _critic_choices(runs)
    assert lines[-1] == "| CQL | stage2 | 0.25 | 0.50 | 0.25 |" and len(lines) == 8


def test_no_correction_is_chosen_on_one_half_of_the_layouts_and_scored_on_the_other():
    from twostage_jax.evaluation.halving import choose_by_halves

    # first half: a tie, so no correction, and the second half is scored on stage 1 (1 of 4);
    # second half: the two-stage policy wins, so the first half is scored on it (2 of 4)
    s1 = [1, 1, 0, 0, 1, 0, 0, 0]
    s2 = [1, 0, 0, 1, 1, 1, 1, 0]
    assert choose_by_halves(s1, s2) == (np.mean([1, 0, 0, 0] + [1, 0, 0, 1]) * 1.0, 1)
    assert choose_by_halves([1, 0, 1, 0], [1, 0, 1, 0]) == (0.5, 2)  # ties: no correction
