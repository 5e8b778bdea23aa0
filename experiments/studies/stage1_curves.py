"""Stage 1's validation curves: success on the validation layouts against training steps, per task.

Reads RAW/TASK/ALGO_stage1_selection.json (a stage 1's `selection.json`, collected by
`python -m experiments.studies.reproduce --stage1_only` or beside a finished run) and writes
OUT/stage1_curves.md and OUT/stage1_curves_ALGO.png: per task, the mean validation success of
every candidate step over the training seeds, the step each seed chose, and whether the curve
has converged by the study's rule: its last two points differ by under `--tolerance`, or stage 1
is already at or above `--solved` there.

Usage:
  python -m experiments.studies.stage1_curves --raw=runs/repro/raw --out=runs/repro/summary
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from twostage_jax._io import atomic_open

FLAGS = flags.FLAGS


SELECTION_SUFFIX = "_stage1_selection.json"  # RAW/TASK/ALGO + this: reproduce.py's copies


def define_flags() -> None:
    """Defines this script's absl flags (only when run as a script)."""
    flags.DEFINE_string("raw", "runs/repro/raw", "Folder of TASK/ALGO_stage1_selection.json files.")
    flags.DEFINE_string("out", "runs/repro/summary", "Where stage1_curves.md and the figures go.")
    flags.DEFINE_float("tolerance", 0.05, "Converged: the last two points differ by less.")
    flags.DEFINE_float("solved", 0.95, "Converged: the last point is at least this.")


def load_curves(raw: Path) -> dict[tuple[str, str], dict]:
    """{(task, algo): selection record} from RAW/TASK/ALGO_stage1_selection.json."""
    curves = {}
    for path in sorted(raw.glob(f"*/*{SELECTION_SUFFIX}")):
        record = json.loads(path.read_text())
        for field in ("steps", "success", "chosen_steps"):
            if field not in record:
                raise ValueError(f"{path}: not a selection record (no {field!r}).")
        curves[(path.parent.name, path.name.removesuffix(SELECTION_SUFFIX))] = record
    if not curves:
        raise FileNotFoundError(f"no */*{SELECTION_SUFFIX} under {raw}.")
    return curves


def converged(mean: list[float], tolerance: float, solved: float) -> bool:
    """The study's rule on a curve of mean success rates (at least one point)."""
    return mean[-1] >= solved or (len(mean) > 1 and abs(mean[-1] - mean[-2]) < tolerance)


def table(curves: dict[tuple[str, str], dict], tolerance: float, solved: float) -> str:
    """The markdown table of every curve, one row per (algo, task), and each algo's mean."""
    lines = []
    for algo in sorted({a for _, a in curves}):
        rows = {t: r for (t, a), r in curves.items() if a == algo}
        steps = sorted({k for r in rows.values() for k in r["steps"]})
        lines += [f"### {algo.upper()}", "",
                  "| task | " + " | ".join(f"{k // 1000}k" if k % 1000 == 0 else str(k) for k in steps)
                  + " | chosen (per seed) | at chosen | converged |",
                  "|---" * (len(steps) + 4) + "|"]
        best = []
        for task, r in sorted(rows.items()):
            mean = np.asarray(r["success"]).mean(axis=1)
            by_step = dict(zip(r["steps"], mean))
            success = np.asarray(r["success"])
            at_chosen = float(np.mean([success[r["steps"].index(k), s]
                                       for s, k in enumerate(r["chosen_steps"])]))
            best.append(at_chosen)
            cells = [f"{by_step[k]:.2f}" if k in by_step else "" for k in steps]
            lines.append(f"| {task} | " + " | ".join(cells) + f" | {', '.join(map(str, r['chosen_steps']))}"
                         f" | {at_chosen:.2f} | {'yes' if converged(list(mean), tolerance, solved) else 'no'} |")
        lines += ["", f"Mean over {len(rows)} tasks at the chosen steps: {np.mean(best):.3f} "
                  "(validation layouts; the seeds' own best, so optimistic as an estimate of "
                  "evaluation success).", ""]
    return "\n".join(lines)


def plot(curves: dict[tuple[str, str], dict], algo: str, path: Path) -> None:
    """One panel per task: each seed's curve, their mean, and each seed's chosen step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.set_xlabel("stage-1 steps", fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("validation success")
    fig.suptitle(f"{algo.upper()} stage 1 alone on validation layouts (grey: seeds; dots: chosen)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}.")
    curves = load_curves(Path(FLAGS.raw))
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    text = ("# Stage 1 alone: validation success against training steps\n\n"
            f"Mean success over the training seeds on the validation layouts, at each kept "
            f"checkpoint. Converged: the last two points differ by under {FLAGS.tolerance}, or the "
            f"last is at least {FLAGS.solved}.\n\nRegenerate: `python -m experiments.studies."
            f"stage1_curves --raw={FLAGS.raw} --out={FLAGS.out}`\n\n"
            + table(curves, FLAGS.tolerance, FLAGS.solved))
    with atomic_open(out / "stage1_curves.md", "w") as f:
        f.write(text)
    for algo in sorted({a for _, a in curves}):
        plot(curves, algo, out / f"stage1_curves_{algo}.png")
    print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
