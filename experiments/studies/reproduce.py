"""Runs the 8-task study: 4 headline arms on the 8 MetaWorld tasks, plus stage-2 ablations.

Every run is an ordinary launcher call (`python -m twostage_jax.launch`), so each one can also be
repeated by hand; this driver only orders them, runs two at a time, and collects the per-seed
results into `ROOT/raw/` (default runs/repro/raw) for `experiments/studies/summarize.py`; the
committed results are updated only when asked, with
`--raw=experiments/results/current/eight_tasks/raw`.

Layout under --root (default runs/repro):
  TASK/bc/    demos (recorded once per task), stage1, stage2, eval      -> BC(1), BC two-stage
  TASK/cql/   demos -> ../bc/demos, stage1, stage2, eval                -> CQL(1), CQL two-stage
    Each stage acts with each seed's checkpoint chosen on validation layouts (repro.py's
    SELECT_STEPS, STAGE2_SELECT_STEPS); the validation curves they came from are collected as
    raw/TASK/ALGO_stage1_selection.json and ALGO_stage2_selection.json (drawn by
    experiments/studies/validation_curves.py), the evaluation as raw/TASK/ALGO_stage2.json
  TASK/ALGO/paper, eval_paper: the paper's exact stage-2 method (':paper', a fixed stage-2
    budget) on the same stage 1
  TASK/cql/NAME, eval_NAME: stage-2 ablations sharing CQL's stage 1 (crop16, crop64, auto: the
    crop size calibrated to stage 1's held-out errors, direct, td)
  TASK/bc/NAME (+ eval_NAME): BC's ablations, on request (--ablations=bc_crop16,bc_crop32,
    bc_auto,bc_direct,bc_whiten)
  logs/JOB.log

Usage:
  python -m experiments.studies.reproduce                       # everything (days on 2 CPU cores)
  python -m experiments.studies.reproduce --tasks=push-v3 --ablation_tasks= --workers=1
  python -m experiments.studies.reproduce --algos=cql --ablations=   # CQL's headline and paper arms only
  python -m experiments.studies.reproduce --dry_run             # print the launcher commands only

A finished job (its results.json exists) is skipped, so an interrupted sweep continues where it
stopped; unfinished stages resume from their last checkpoint. On the 2-core machine one task's
CQL headline run (stage 1 to 30k and stage 2 to 12k, each with its validation rollouts, then the
evaluation) took 33 min with both cores to itself, and its demos 79 s.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import app, flags

from experiments.studies.validation_curves import SELECTION_SUFFIXES
from twostage_jax.envs.metaworld import DEFAULT_TASKS

REPO = Path(__file__).resolve().parents[2]
CONFIG = "repro"
ABLATION_TASKS = ("push-v3", "pick-place-v3", "drawer-open-v3")  # fixed before any result was seen
# name -> (algo, config variants, extra overrides)
ABLATIONS = {
    "crop16": ("cql", "cql", ["--config.stage2.stage2.crop_size=16"]),
    "crop64": ("cql", "cql", ["--config.stage2.stage2.crop_size=64"]),
    "direct": ("cql", "cql,direct", []),
    "auto": ("cql", "cql", ["--config.calibrate.crop_size=true"]),
    "td": ("cql", "cql", ["--config.stage2.cql.target=td"]),
    "bc_crop16": ("bc", "bc", ["--config.stage2.stage2.crop_size=16"]),
    "bc_crop32": ("bc", "bc", ["--config.stage2.stage2.crop_size=32"]),
    "bc_auto": ("bc", "bc", ["--config.calibrate.crop_size=true"]),
    "bc_direct": ("bc", "bc,direct", []),
    "bc_whiten": ("bc", "bc", ["--config.stage2.stage2.loss_weighting=whiten"]),
}

# `--scale=paper`: the paper's network sizes, 128x128 stage-1 input and batch 128 (Sec. V) on
# repro.py's method, budgets and selection; for a machine with a GPU (`experiments/gpu.sh`).
PAPER_SIZE = [f"--config.stage{i}.{k}={v}" for i in (1, 2) for k, v in (
    ("network.conv_channels", "(32,32,32,32)"), ("network.crop_conv_channels", "(32,32,32)"),
    ("network.mlp_hidden", "64"), ("network.head_hidden", "(256,256)"), ("batch_size", "128"))
] + ["--config.stage1.image_size=None"]

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/repro", "Folder for all workdirs and logs.")
flags.DEFINE_string("raw", None, "Where each finished run's results.json is copied (default: "
                    "ROOT/raw; the committed results: experiments/results/current/eight_tasks/raw).")
flags.DEFINE_list("tasks", list(DEFAULT_TASKS), "Tasks for the headline arms.")
flags.DEFINE_list("algos", ["bc", "cql"], "Algorithms to run (a subset of bc,cql); the demos are "
                  "recorded in TASK/bc/ whichever run.")
flags.DEFINE_list("ablation_tasks", list(ABLATION_TASKS), "Tasks for the ablations (subset of --tasks).")
flags.DEFINE_list("ablations", ["crop16", "crop64", "auto", "direct", "td"],
                  f"Ablations to run, from {sorted(ABLATIONS)}.")
flags.DEFINE_integer("workers", 2, "Launcher processes at a time (each pinned to one XLA thread "
                     "when > 1, so 2 workers use 2 cores without oversubscribing them).")
flags.DEFINE_list("extra", [], "Extra launcher flags for every run, e.g. --extra=--num_seeds=1.")
flags.DEFINE_bool("paper_arm", True, "Beside each headline run, a stage 2 with the paper's exact "
                  "method (the ':paper' variant) sharing its stage 1: NAME 'paper', collected as "
                  "raw/TASK/ALGO_paper.json.")
flags.DEFINE_bool("headline", True, "Include the headline runs. --noheadline runs only the paper "
                  "arms and ablations (e.g. beside a sweep that is still running), whose "
                  "headline runs must be finished.")
flags.DEFINE_bool("stage1_only", False, "Train and select each headline run's stage 1 only "
                  "(--mode=stage1; no paper arm, no ablations): the stage-1 validation curves, "
                  "collected as raw/TASK/ALGO_stage1_selection.json.")
flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "cpu: repro.py as it is (quickstart-size "
                  "networks, 64x64 stage-1 input, batch 32); paper: the paper's network sizes, "
                  "128x128 input and batch 128 on the same method (PAPER_SIZE), for a GPU.")
flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")


@dataclasses.dataclass
class Job:
    name: str
    commands: list[list[str]]
    done: Path  # exists when the job is finished
    needs: list[str]
    collect: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)  # (src, raw copy)
    kind: str = "headline"  # demos, headline, paper or ablation


def _launcher(workdir: Path, task: str, variants: str, mode: str, extra: list[str]) -> list[str]:
    # Several launcher runs at a time already share the cores: each evaluates in its own
    # process rather than starting one rollout worker per core.
    workers = ["--config.eval.workers=1"] if FLAGS.workers > 1 else []
    return [sys.executable, "-m", "twostage_jax.launch", f"--mode={mode}", f"--workdir={workdir}",
            f"--config={CONFIG}:{variants}", f"--task={task}", "--resume", *workers,
            *(PAPER_SIZE if FLAGS.scale == "paper" else []), *extra, *FLAGS.extra]


def build_jobs(root: Path) -> list[Job]:
    unknown = sorted(set(FLAGS.ablations) - set(ABLATIONS))
    if unknown:
        raise app.UsageError(f"--ablations: unknown {unknown}; expected names from {sorted(ABLATIONS)}.")
    missing = [] if FLAGS.stage1_only else sorted(set(FLAGS.ablation_tasks) - set(FLAGS.tasks))
    if missing:
        raise app.UsageError(f"--ablation_tasks {missing} are not in --tasks; ablations share the "
                             "headline runs' stage 1.")
    bad_algos = sorted(set(FLAGS.algos) - {"bc", "cql"})
    if bad_algos or not FLAGS.algos:
        raise app.UsageError(f"--algos: expected a non-empty subset of ['bc', 'cql']; got {FLAGS.algos}.")
    algos = [a for a in ("bc", "cql") if a in FLAGS.algos]
    raw = Path(FLAGS.raw).absolute() if FLAGS.raw else root / "raw"
    jobs: list[Job] = []
    # ablation tasks first, so their ablations can start while later headline runs train
    for task in sorted(FLAGS.tasks, key=lambda t: t not in FLAGS.ablation_tasks):
        bc = root / task / "bc"
        jobs.append(Job(f"{task}.demos", [_launcher(bc, task, "bc", "demos", [])],
                        bc / "demos" / "dataset.npz", [], kind="demos"))
        for algo in algos:
            wd = root / task / algo
            selected = (wd / "stage1" / "selection.json", raw / task / f"{algo}{SELECTION_SUFFIXES[1]}")
            if FLAGS.stage1_only:
                jobs.append(Job(f"{task}.{algo}", [_launcher(wd, task, algo, "stage1", [])],
                                selected[0], [f"{task}.demos"], [selected]))
                continue
            jobs.append(Job(f"{task}.{algo}", [_launcher(wd, task, algo, "all", [])],
                            wd / "eval" / "results.json", [f"{task}.demos"],
                            [(wd / "eval" / "results.json", raw / task / f"{algo}_stage2.json"), selected,
                             (wd / "stage2" / "selection.json",
                              raw / task / f"{algo}{SELECTION_SUFFIXES[2]}")]))
        if FLAGS.stage1_only:
            continue
        if FLAGS.paper_arm:  # right after the task's headline runs, so a cut-short sweep
            for algo in algos:  # leaves whole tasks (both arms) rather than half of each
                wd = root / task / algo
                jobs.append(Job(f"{task}.{algo}_paper",
                            [_launcher(wd, task, f"{algo},paper", "all", ["--config.stage2_name=paper"])],
                            wd / "eval_paper" / "results.json", [f"{task}.{algo}"],
                            [(wd / "eval_paper" / "results.json", raw / task / f"{algo}_paper.json")],
                            kind="paper"))
    for task in [] if FLAGS.stage1_only else FLAGS.ablation_tasks:
        for name in FLAGS.ablations:
            algo, variants, extra = ABLATIONS[name]
            if algo not in algos:
                continue
            wd = root / task / algo
            folder = name.removeprefix(f"{algo}_")  # stage-2 folder inside the algo's workdir
            jobs.append(Job(f"{task}.{name}",
                            [_launcher(wd, task, variants, "all", [f"--config.stage2_name={folder}", *extra])],
                            wd / f"eval_{folder}" / "results.json", [f"{task}.{algo}"],
                            [(wd / f"eval_{folder}" / "results.json", raw / task / f"{algo}_{folder}.json")],
                            kind="ablation"))
    if not FLAGS.headline:
        headline = {j.name: j for j in jobs if j.kind in ("demos", "headline")}
        jobs = [j for j in jobs if j.name not in headline]
        missing = sorted({n for j in jobs for n in j.needs if not headline[n].done.exists()})
        if missing:
            raise app.UsageError(f"--noheadline: headline runs {missing} are not finished; run them "
                                 "first (or drop --noheadline).")
    return jobs


def _link_demos(job: Job, root: Path) -> None:
    """The CQL workdir shares the task's BC demos (one dataset per task, as in the paper)."""
    task = job.name.split(".")[0]
    link = root / task / "cql" / "demos"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..") / "bc" / "demos", target_is_directory=True)


def _collect(job: Job) -> None:
    for src, dst in job.collect:
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)


def run_jobs(jobs: list[Job], root: Path, workers: int) -> list[str]:
    """Runs jobs in list order as dependencies allow, `workers` at a time; returns failures."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if workers > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    state = {j.name: ("done" if j.done.exists() else "todo") for j in jobs}
    for j in jobs:
        if state[j.name] == "done":
            _collect(j)
    lock = threading.Condition()
    failed: list[str] = []
    start = time.time()

    def ready(j: Job) -> bool:
        return state[j.name] == "todo" and all(state.get(n, "done") == "done" for n in j.needs)

    def blocked(j: Job) -> bool:
        return any(state.get(n) == "failed" or (state.get(n) == "todo" and blocked(by_name[n])) for n in j.needs)

    by_name = {j.name: j for j in jobs}

    def worker() -> None:
        while True:
            with lock:
                while True:
                    todo = [j for j in jobs if state[j.name] == "todo" and not blocked(j)]
                    if not todo:
                        lock.notify_all()
                        return
                    job = next((j for j in todo if ready(j)), None)
                    if job is not None:
                        state[job.name] = "running"
                        break
                    lock.wait()
            t0 = time.time()
            print(f"[{time.time() - start:7.0f}s] start {job.name}", flush=True)
            ok = True
            if job.name.endswith(".cql"):
                _link_demos(job, root)
            with open(logs / f"{job.name}.log", "a") as log:
                for cmd in job.commands:
                    log.write("$ " + " ".join(cmd) + "\n")
                    log.flush()
                    if subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT):
                        ok = False
                        break
            ok = ok and job.done.exists()
            if ok:
                _collect(job)
            with lock:
                state[job.name] = "done" if ok else "failed"
                if not ok:
                    failed.append(job.name)
                lock.notify_all()
            print(f"[{time.time() - start:7.0f}s] {'done' if ok else 'FAILED'} {job.name} "
                  f"({time.time() - t0:.0f}s; log {logs / (job.name + '.log')})", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed + [j.name for j in jobs if state[j.name] == "todo"]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}.")
    if FLAGS.workers < 1:
        raise app.UsageError(f"--workers must be >= 1; got {FLAGS.workers}.")
    root = Path(FLAGS.root).absolute()
    jobs = build_jobs(root)
    if FLAGS.dry_run:
        for j in jobs:
            for cmd in j.commands:
                print(f"# {j.name} (after {', '.join(j.needs) or 'nothing'})\n" + " ".join(cmd[1:]))
        return 0
    pending = [j for j in jobs if not j.done.exists()]
    print(f"{len(jobs)} jobs, {len(pending)} to run, {FLAGS.workers} at a time; logs in {root / 'logs'}")
    failed = run_jobs(jobs, root, FLAGS.workers)
    if failed:
        print(f"failed or not run: {failed}; see the logs, fix, and re-run to continue.", file=sys.stderr)
        return 1
    raw = FLAGS.raw or root / "raw"
    print(f"all done; per-seed results in {raw}. Summarise: python -m experiments.studies.summarize "
          f"--raw={raw} --runs={FLAGS.root}")
    return 0


if __name__ == "__main__":
    app.run(main)
