"""The held-out validation study behind the correction stage's defaults.

For each task: one workdir (`--config`, quickstart by default; 10 held-out demos from layout seed
60000, stage 1 trained once), then one stage 2 per arm sharing that stage 1, then
`experiments/studies/validate.py` on each arm (open-loop diagnostics on held-out demos from layout seed
50000, closed-loop rollouts on validation layouts 200000+). No evaluation layout (100000+) is
touched. Every step is an ordinary launcher call; finished steps are skipped, so an interrupted
study continues where it stopped. Reports land in OUT/TASK/ (default runs/validation; the committed
ones: --out=experiments/results/current/validation/calibration_bc).

Usage:
  python -m experiments.studies.validation_study --tasks=push-v3,drawer-open-v3 --arms=paper,stage2
  python -m experiments.studies.validation_study --dry_run
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

CONFIG = "quickstart"
DEMOS = ["--config.demos.num_held_out=10", "--config.demos.held_out_seed=60000"]
# arm -> (config variants, extra launcher flags for stage 2)
ARMS = {
    "paper": ("paper", []),
    "stage2": ("", []),  # the config's defaults
    "whiten": ("paper", ["--config.stage2.stage2.loss_weighting=whiten"]),
    "noz_whiten": ("paper", ["--config.stage2.stage2.loss_weighting=whiten",
                             "--config.stage2.network.stage2_pose_input=False"]),
    "cal": ("paper", ["--config.stage2.stage2.loss_weighting=whiten", "--config.calibrate.sigma=True"]),
    # Algorithm 1's perturbations shaped like stage 1's real errors
    "scales": ("", ["--config.stage2.stage2.sigma_scales=(1, 2, 4)"]),
    "residuals": ("", ["--config.stage2.stage2.perturbation=residuals"]),
    # Algorithm 1 mixed with cross-fit stage 1's real tentative actions
    "crossfit": ("", ["--config.stage2.stage2.predicted_share=0.5"]),
    # a second zoom on the `stage2` arm's action (list `stage2` first), trained on what it leaves:
    # half of CQL's 32-pixel crop, half of BC's 64
    "zoom16": ("", ["--config.stage2.refines=stage2", "--config.stage2.stage2.predicted_share=1.0",
                    "--config.stage2.stage2.crop_size=16"]),
    "zoom32": ("", ["--config.stage2.refines=stage2", "--config.stage2.stage2.predicted_share=1.0",
                    "--config.stage2.stage2.crop_size=32"]),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/study", "Folder of the per-task workdirs.")
flags.DEFINE_list("tasks", ["push-v3"], "Tasks.")
flags.DEFINE_list("arms", ["paper", "stage2"], f"Stage-2 arms, from {sorted(ARMS)}.")
flags.DEFINE_integer("episodes", 20, "Validation episodes per seed and policy.")
flags.DEFINE_string("out", "runs/validation", "Folder of the reports (OUT/TASK/ARM.json) and summary.md.")
flags.DEFINE_bool("dry_run", False, "Print the commands only.")
flags.DEFINE_bool("summary_only", False, "Write OUT/summary.md from the reports there; run nothing.")
flags.DEFINE_string("config", CONFIG, "The launcher config NAME[:variants] every step runs with "
                    "(an arm's variants are added to these).")
flags.DEFINE_list("launch_flags", [], "Launcher flags added to every step, e.g. "
                  "--config.stage2.select=last,--config.stage2.num_steps=8000.")
flags.DEFINE_string("cameras", "", "config.cameras of every step, e.g. corner,topview (a list, so not "
                    "in --launch_flags); empty: the simulator's one camera.")
flags.DEFINE_integer("critic_samples", 0, "K > 0 (CQL): also validate each arm with its critic "
                     "choosing among no correction, the actor's mode and K samples (ARM_cK.json).")
flags.DEFINE_string("view_encoders", "", "Both stages' network.view_encoders with several cameras "
                    "(shared, separate or stacked); empty: the default.")


def commands(root: Path, task: str, arms: list[str]) -> list[tuple[Path, list[str]]]:
    """(file that exists when the step is done, command) for every step of one task."""
    wd = root / task
    def launch(mode: str, variants: str = "", *extra: str) -> list[str]:
        name, _, base = FLAGS.config.partition(":")
        both = ",".join(v for v in (base, variants) if v)
        config = f"--config={name}:{both}" if both else f"--config={name}"
        views = [f"--config.cameras={FLAGS.cameras}"] if FLAGS.cameras else []
        views += [f"--config.stage{k}.network.view_encoders={FLAGS.view_encoders}"
                  for k in (1, 2) if FLAGS.view_encoders]
        return [sys.executable, "-m", "twostage_jax.launch", f"--mode={mode}", f"--workdir={wd}",
                f"--task={task}", config, *DEMOS, *FLAGS.launch_flags, *views, *extra]

    steps = [(wd / "demos" / "held_out.npz", launch("demos")),
             (wd / "stage1" / "summary.json", launch("stage1", "", "--resume"))]
    for arm in arms:
        variants, extra = ARMS[arm]
        steps.append((wd / arm / "summary.json",
                      launch("stage2", variants, "--resume", f"--config.stage2_name={arm}", *extra)))
    validate = [sys.executable, "-m", "experiments.studies.validate", f"--workdir={wd}",
                f"--names={','.join(arms)}", f"--episodes={FLAGS.episodes}", f"--out={FLAGS.out}"]
    steps.append((Path("/nonexistent"), validate))  # validate keeps finished reports itself
    if FLAGS.critic_samples:
        steps.append((Path("/nonexistent"), [*validate, f"--critic_samples={FLAGS.critic_samples}"]))
    return steps


def summary(out: Path, tasks: list[str], arms: list[str]) -> str:
    """The markdown table of every (task, arm) report under `out`, with the mean over tasks."""
    import json

    import numpy as np

    from experiments.studies.validate import HEADER, row

    lines, gains = [HEADER], {a: [] for a in arms}
    for task in tasks:
        for arm in arms:
            path = out / task / f"{arm}.json"
            if path.exists():
                r = json.loads(path.read_text())
                lines.append(row(r))
                gains[arm].append(r["two_stage"]["success"] - r["stage1"]["success"])
    lines.append("")
    for arm, g in gains.items():
        if g:
            lines.append(f"- `{arm}`: mean validation gain over stage 1 {np.mean(g):+.3f} over "
                         f"{len(g)} task(s) ({', '.join(f'{x:+.2f}' for x in g)})")
    return "\n".join(lines + [""] + paired(out, tasks, arms, arms[0]) + [""] +
                     with_no_correction(out, tasks, arms)) + "\n"


def paired(out: Path, tasks: list[str], arms: list[str], base: str) -> list[str]:
    """Each arm's two-stage validation success against `base`'s and stage 1's, paired by
    training seed (95% bootstrap intervals of the per-seed differences, 2000 resamples)."""
    import json

    import numpy as np

    from twostage_jax import evaluation

    lines = [f"| task | arm | two-stage | minus `{base}` | minus stage 1 |", "|---|---|---|---|---|"]
    for task in tasks:
        reports = {a: json.loads((out / task / f"{a}.json").read_text())
                   for a in arms if (out / task / f"{a}.json").exists()}
        if base not in reports:
            continue
        ref = np.asarray(reports[base]["two_stage"]["success_per_seed"])
        for arm, r in reports.items():
            rate = np.asarray(r["two_stage"]["success_per_seed"])
            cells = [f"{rate.mean():.2f}"]
            for other in (ref, np.asarray(r["stage1"]["success_per_seed"])):
                i = evaluation.difference_interval(other, rate, reps=2000)
                cells.append(f"{i.mean:+.2f} [{i.low:+.2f}, {i.high:+.2f}]")
            lines.append(f"| {task} | {arm} | " + " | ".join(cells) + " |")
    return lines


def with_no_correction(out: Path, tasks: list[str], arms: list[str]) -> list[str]:
    """Each arm with no correction as a candidate (`choose_by_halves` per seed), paired by seed
    against the arm itself and against stage 1 (95% bootstrap intervals, 2000 resamples)."""
    import json

    from twostage_jax import evaluation
    from twostage_jax.evaluation.halving import choose_by_halves

    lines = ["With no correction as a candidate: each seed chooses stage 1 or the two-stage policy on half "
             "of its validation layouts and is scored on the other half, both ways round.", "",
             "| task | arm | two-stage | with the choice | minus two-stage | minus stage 1 | choices of no correction |",
             "|---|---|---|---|---|---|---|"]
    for task in tasks:
        for arm in arms:
            path = out / task / f"{arm}.json"
            if not path.exists():
                continue
            r = json.loads(path.read_text())
            s1, s2 = r["stage1"]["episodes"], r["two_stage"]["episodes"]
            chosen = [choose_by_halves(a, b) for a, b in zip(s1, s2)]
            rate = np.asarray([c[0] for c in chosen])
            cells = [f"{np.mean(np.asarray(s2, float).mean(1)):.2f}", f"{rate.mean():.2f}"]
            for other in (np.asarray(s2, float).mean(1), np.asarray(s1, float).mean(1)):
                i = evaluation.difference_interval(other, rate, reps=2000)
                cells.append(f"{i.mean:+.2f} [{i.low:+.2f}, {i.high:+.2f}]")
            cells.append(f"{sum(c[1] for c in chosen)} of {2 * len(chosen)}")
            lines.append(f"| {task} | {arm} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}.")
    unknown = sorted(set(FLAGS.arms) - set(ARMS))
    if unknown and not FLAGS.summary_only:  # (a summary reads any report names, OUT/TASK/ARM.json)
        raise app.UsageError(f"--arms: unknown {unknown}; expected names from {sorted(ARMS)}.")
    root = Path(FLAGS.root)
    for task in [] if FLAGS.summary_only else FLAGS.tasks:
        for done, cmd in commands(root, task, FLAGS.arms):
            if done.exists():
                continue
            print(" ".join(cmd), flush=True)
            if not FLAGS.dry_run:
                subprocess.run(cmd, check=True)
    if not FLAGS.dry_run:
        from twostage_jax._io import atomic_open

        out = Path(FLAGS.out)
        out.mkdir(parents=True, exist_ok=True)
        text = summary(out, FLAGS.tasks, FLAGS.arms)
        with atomic_open(out / "summary.md", "w") as f:
            f.write(text)
        print(text)
    return 0


if __name__ == "__main__":
    app.run(main)
