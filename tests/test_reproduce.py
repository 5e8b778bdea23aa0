"""The study driver (reproduce): job graph, scheduling, failure handling, collection."""

import subprocess
import sys
from pathlib import Path

import pytest
from absl import app, flags

from experiments.studies import reproduce

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def parsed_flags():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["reproduce"])
    yield
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["reproduce"])


def _touch(path: Path, extra: str = "") -> list[str]:
    code = f"import pathlib; p = pathlib.Path({str(path)!r}); p.parent.mkdir(parents=True, exist_ok=True); "
    return [sys.executable, "-c", code + f"p.write_text('{{}}'){extra}"]


def test_jobs_run_after_their_dependencies_and_failures_block_dependents(tmp_path):
    order = tmp_path / "order.txt"
    log = lambda name: [sys.executable, "-c", f"open({str(order)!r}, 'a').write('{name}\\n')"]
    raw = tmp_path / "raw" / "t" / "a.json"
    jobs = [
        reproduce.Job("t.demos", [log("demos"), _touch(tmp_path / "demos.done")], tmp_path / "demos.done", []),
        reproduce.Job("t.a", [log("a"), _touch(tmp_path / "a" / "results.json")],
                      tmp_path / "a" / "results.json", ["t.demos"], [(tmp_path / "a" / "results.json", raw)]),
        reproduce.Job("t.bad", [log("bad"), [sys.executable, "-c", "raise SystemExit(3)"]],
                      tmp_path / "bad.done", ["t.demos"]),
        reproduce.Job("t.after_bad", [log("after_bad")], tmp_path / "x.done", ["t.bad"]),
    ]
    failed = reproduce.run_jobs(jobs, tmp_path, workers=2)
    ran = order.read_text().split()
    assert ran[0] == "demos" and set(ran) == {"demos", "a", "bad"}  # after_bad never starts
    assert sorted(failed) == ["t.after_bad", "t.bad"]
    assert raw.read_text() == "{}"  # collected into the raw folder
    assert (tmp_path / "logs" / "t.bad.log").exists()
    # a re-run skips finished jobs and only retries the failed ones
    order.unlink()
    reproduce.run_jobs(jobs, tmp_path, workers=1)
    assert order.read_text().split() == ["bad"]


def test_job_graph_shares_stage1_and_demos(tmp_path):
    flags.FLAGS(["reproduce", "--tasks=push-v3,reach-v3", "--ablation_tasks=push-v3",
                 "--ablations=crop16,bc_crop32", f"--raw={tmp_path / 'raw'}"])
    jobs = {j.name: j for j in reproduce.build_jobs(tmp_path)}
    assert list(jobs)[:3] == ["push-v3.demos", "push-v3.bc", "push-v3.cql"]
    assert jobs["push-v3.crop16"].needs == ["push-v3.cql"]
    cmd = " ".join(jobs["push-v3.bc_crop32"].commands[0])
    assert f"--workdir={tmp_path / 'push-v3' / 'bc'}" in cmd and "--config.stage2_name=crop32" in cmd
    assert jobs["push-v3.bc_crop32"].collect[0][1] == tmp_path / "raw" / "push-v3" / "bc_crop32.json"
    assert "reach-v3.crop16" not in jobs
    # The paper's exact method runs beside every headline run, on its stage 1.
    paper = jobs["reach-v3.cql_paper"]
    assert paper.needs == ["reach-v3.cql"]
    cmd = " ".join(paper.commands[0])
    assert ":cql,paper" in cmd and "--config.stage2_name=paper" in cmd
    assert "--config.eval.workers=1" in cmd  # 2 runs at a time: no rollout worker per core on top
    assert paper.collect[0][1] == tmp_path / "raw" / "reach-v3" / "cql_paper.json"
    # The headline run selects both stages on validation (repro.py); both curves are collected
    head, raw = jobs["reach-v3.bc"], tmp_path / "raw" / "reach-v3"
    assert head.done == tmp_path / "reach-v3" / "bc" / "eval" / "results.json"
    assert [dst for _, dst in head.collect] == [raw / "bc_stage2.json", raw / "bc_stage1_selection.json",
                                                raw / "bc_stage2_selection.json"]
    assert head.collect[2][0] == tmp_path / "reach-v3" / "bc" / "stage2" / "selection.json"
    # --stage1_only: each headline run's stage 1 and its selection, nothing after it
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["reproduce", "--tasks=push-v3", "--algos=bc", "--stage1_only", f"--raw={tmp_path / 'raw'}"])
    jobs = {j.name: j for j in reproduce.build_jobs(tmp_path)}
    assert list(jobs) == ["push-v3.demos", "push-v3.bc"]
    assert "--mode=stage1" in jobs["push-v3.bc"].commands[0]
    assert jobs["push-v3.bc"].done == tmp_path / "push-v3" / "bc" / "stage1" / "selection.json"
    assert jobs["push-v3.bc"].collect == [(jobs["push-v3.bc"].done,
                                           tmp_path / "raw" / "push-v3" / "bc_stage1_selection.json")]
    # Without --raw the results collect under the root, never into the committed results.
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["reproduce", "--tasks=push-v3", "--ablation_tasks=", "--algos=bc"])
    jobs = {j.name: j for j in reproduce.build_jobs(tmp_path)}
    assert jobs["push-v3.bc"].collect[0][1] == tmp_path / "raw" / "push-v3" / "bc_stage2.json"


def test_algos_selects_the_arms_and_keeps_the_shared_demos(tmp_path):
    flags.FLAGS(["reproduce", "--tasks=push-v3", "--ablation_tasks=push-v3",
                 "--ablations=crop16,bc_crop32", "--algos=cql"])
    jobs = {j.name: j for j in reproduce.build_jobs(tmp_path)}
    assert list(jobs) == ["push-v3.demos", "push-v3.cql", "push-v3.cql_paper",
                          "push-v3.crop16"]
    # the demos still live in TASK/bc/, where the CQL workdir links them from
    assert jobs["push-v3.demos"].done == tmp_path / "push-v3" / "bc" / "demos" / "dataset.npz"
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["reproduce", "--algos=ppo"])
    with pytest.raises(app.UsageError, match=r"--algos: expected a non-empty subset"):
        reproduce.build_jobs(tmp_path)


def test_bad_flags_are_named():
    out = subprocess.run([sys.executable, "-m", "experiments.studies.reproduce", "--dry_run", "--ablations=crop8"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "--ablations: unknown ['crop8']" in out.stderr
    out = subprocess.run([sys.executable, "-m", "experiments.studies.reproduce", "--dry_run", "--tasks=push-v3",
                          "--ablation_tasks=reach-v3"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "--ablation_tasks ['reach-v3'] are not in --tasks" in out.stderr


def test_noheadline_runs_only_ablations_of_finished_headlines(tmp_path):
    flags.FLAGS(["reproduce", "--tasks=push-v3", "--ablation_tasks=push-v3", "--ablations=td",
                 "--algos=cql", "--noheadline", "--nopaper_arm"])
    with pytest.raises(app.UsageError, match=r"headline runs \['push-v3.cql'\] are not finished"):
        reproduce.build_jobs(tmp_path)
    done = tmp_path / "push-v3" / "cql" / "eval" / "results.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    assert [j.name for j in reproduce.build_jobs(tmp_path)] == ["push-v3.td"]


def test_experiment_scripts_import_together():
    # absl flags are process-global: scripts that define them at import must not collide
    code = ("import twostage_jax.launch.main, experiments.studies.reproduce, experiments.studies.summarize, "
            "experiments.studies.diagnose, experiments.tools.benchmark, experiments.tools.replay_check, "
            "experiments.tools.rounding_sensitivity")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
