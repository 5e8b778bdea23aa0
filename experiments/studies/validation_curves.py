"""Validation curves: success on the validation layouts against training steps, per task.

Reads the selection records that `python -m experiments.studies.reproduce` collects into its raw
folder (each a STAGE/selection.json of `twostage_jax/launch/selection.py`):
  * RAW/TASK/ALGO_stage1_selection.json: stage 1 alone, at each of its candidate checkpoints;
  * RAW/TASK/ALGO_stage2_selection.json: the two-stage policy at each candidate stage-2
    checkpoint, on top of the selected stage 1 (the headline run's stage 2 in `repro.py`).
For each stage with records it writes OUT/stageN_curves.md and OUT/stageN_curves_ALGO.png: per
task, the mean validation success of every candidate step over the training seeds, the step
each seed chose, and whether the curve has converged by the study's rule: its last two points
differ by under `--tolerance`, or the policy is already at or above `--solved` there. The
stage-2 table also gives stage 1 alone at its chosen steps, from the same raw folder.

Usage:
  python -m experiments.studies.validation_curves --raw=runs/repro/raw --out=runs/repro/summary
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from twostage_jax._io import atomic_open

FLAGS = flags.FLAGS

# RAW/TASK/ALGO + suffix: reproduce.py's copies of each stage's selection.json
SELECTION_SUFFIXES = {1: "_stage1_selection.json", 2: "_stage2_selection.json"}
_POLICY = {1: "stage 1 alone", 2: "the two-stage policy"}


def is_selection_record(path: Path) -> bool:
    """Whether a raw folder's file is a selection record (not a run's results.json)."""
    return path.name.endswith(tuple(SELECTION_SUFFIXES.values()))


def define_flags() -> None:
    """Defines this script's absl flags (only when run as a script)."""
    flags.DEFINE_string("raw", "runs/repro/raw", "Folder of TASK/ALGO_stageN_selection.json files.")
    flags.DEFINE_string("out", "runs/repro/summary", "Where stageN_curves.md and the figures go.")
    flags.DEFINE_float("tolerance", 0.05, "Converged: the last two points differ by less.")
    flags.DEFINE_float("solved", 0.95, "Converged: the last point is at least this.")


def load_curves(raw: Path, stage: int = 1) -> dict[tuple[str, str], dict]:
    """{(task, algo): selection record} from RAW/TASK/ALGO_stageN_selection.json ({} if none)."""
    suffix = SELECTION_SUFFIXES[stage]
    curves = {}
    for path in sorted(raw.glob(f"*/*{suffix}")):
        record = json.loads(path.read_text())
        for field in ("steps", "success", "chosen_steps"):
            if field not in record:
                raise ValueError(f"{path}: not a selection record (no {field!r}).")
        curves[(path.parent.name, path.name.removesuffix(suffix))] = record
    return curves


def converged(mean: list[float], tolerance: float, solved: float) -> bool:
    """The study's rule on a curve of mean success rates (at least one point)."""
    return mean[-1] >= solved or (len(mean) > 1 and abs(mean[-1] - mean[-2]) < tolerance)


def at_chosen(record: dict) -> float:
    """Mean over seeds of each seed's validation success at its chosen step."""
    success = np.asarray(record["success"])
    return float(np.mean([success[record["steps"].index(k), s]
                          for s, k in enumerate(record["chosen_steps"])]))


def table(curves: dict[tuple[str, str], dict], tolerance: float, solved: float,
          stage1: dict[tuple[str, str], dict] | None = None) -> str:
    """The markdown table of every curve, one row per (algo, task), and each algo's mean.

    With `stage1` (the stage-1 curves of the same runs), a column gives stage 1 alone at its
    chosen steps beside each (two-stage) row.
    """
    lines = []
    for algo in sorted({a for _, a in curves}):
        rows = {t: r for (t, a), r in curves.items() if a == algo}
        steps = sorted({k for r in rows.values() for k in r["steps"]})
        ref = stage1 is not None
        lines += [f"### {algo.upper()}", "",
                  "| task | " + " | ".join(f"{k // 1000}k" if k % 1000 == 0 else str(k) for k in steps)
                  + " | chosen (per seed) | at chosen |" + (" stage 1 at its chosen |" if ref else "")
                  + " converged |",
                  "|---" * (len(steps) + 4 + ref) + "|"]
        best = []
        for task, r in sorted(rows.items()):
            mean = np.asarray(r["success"]).mean(axis=1)
            by_step = dict(zip(r["steps"], mean))
            best.append(at_chosen(r))
            cells = [f"{by_step[k]:.2f}" if k in by_step else "" for k in steps]
            s1 = ""
            if ref:
                s1 = f" {at_chosen(stage1[task, algo]):.2f} |" if (task, algo) in stage1 else " |"
            lines.append(f"| {task} | " + " | ".join(cells) + f" | {', '.join(map(str, r['chosen_steps']))}"
                         f" | {best[-1]:.2f} |{s1} {'yes' if converged(list(mean), tolerance, solved) else 'no'} |")
        lines += ["", f"Mean over {len(rows)} tasks at the chosen steps: {np.mean(best):.3f} "
                  "(validation layouts; the seeds' own best, so optimistic as an estimate of "
                  "evaluation success).", ""]
    return "\n".join(lines)


def plot(curves: dict[tuple[str, str], dict], algo: str, path: Path, stage: int = 1) -> None:
    """One panel per task: each seed's curve, their mean, and each seed's chosen step."""
    from twostage_jax.evaluation.plots import plt, save_figure

    rows = sorted((t, r) for (t, a), r in curves.items() if a == algo)
    cols = min(4, len(rows))
    fig, axes = plt.subplots(-(-len(rows) // cols), cols, figsize=(3.2 * cols, 2.6 * -(-len(rows) // cols)),
                             squeeze=False, sharey=True)
    for ax, (task, r) in zip(axes.flat, rows):
        success = np.asarray(r["success"])
        for s in range(success.shape[1]):
            ax.plot(r["steps"], success[:, s], color="0.75", lw=1)
            k = r["chosen_steps"][s]
            ax.plot([k], [success[r["steps"].index(k), s]], "o", color="#2f5597", ms=4)
        ax.plot(r["steps"], success.mean(axis=1), color="#2f5597", lw=2)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(f"stage-{stage} steps", fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("validation success")
    fig.suptitle(f"{algo.upper()}: {_POLICY[stage]} on validation layouts (grey: seeds; dots: chosen)",
                 fontsize=10)
    save_figure(fig, path)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}.")
    raw, out = Path(FLAGS.raw), Path(FLAGS.out)
    curves = {stage: load_curves(raw, stage) for stage in SELECTION_SUFFIXES}
    if not any(curves.values()):
        raise app.UsageError(f"--raw: no selection records (*/*{SELECTION_SUFFIXES[1]} or "
                             f"*/*{SELECTION_SUFFIXES[2]}) under {raw}.")
    out.mkdir(parents=True, exist_ok=True)
    for stage, found in curves.items():
        if not found:
            continue
        steps = f"stage-{stage} steps" + (" (stage 1 as selected)" if stage == 2 else "")
        text = (f"# {_POLICY[stage].capitalize()}: validation success against {steps}\n\n"
                f"Mean success over the training seeds on the validation layouts, at each kept "
                f"checkpoint. Converged: the last two points differ by under {FLAGS.tolerance}, or the "
                f"last is at least {FLAGS.solved}.\n\nRegenerate: `python -m experiments.studies."
                f"validation_curves --raw={FLAGS.raw} --out={FLAGS.out}`\n\n"
                + table(found, FLAGS.tolerance, FLAGS.solved, curves[1] if stage == 2 else None))
        with atomic_open(out / f"stage{stage}_curves.md", "w") as f:
            f.write(text)
        for algo in sorted({a for _, a in found}):
            plot(found, algo, out / f"stage{stage}_curves_{algo}.png", stage)
        print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
