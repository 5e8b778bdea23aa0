"""Replays the plateau stop on recorded validation curves: would it choose the same checkpoints?

Reads every `TASK/ALGO_stageN_selection.json` under `--raw` (the validation success of each
candidate step for each training seed, as the 8-task study recorded it) and replays
`evaluation.halving.plateau_reached` for each patience and margin asked: training would have stopped at
the first candidate where every seed's best had not improved by more than the margin for P
candidates, and each seed then takes its best candidate up to there (ties to the earliest, as
selection does). It prints, per setting, how often that is the recorded choice (per task, seed
and stage), how far the recorded choice's validation success is from the replayed one's, and
the training steps and validation rollouts left out. Nothing is rolled out or trained.

The records hold success rates, not per-episode outcomes, so successive halving cannot be
replayed from them; selection.json now records `outcomes` per episode for that.

    python -m experiments.tools.replay_selection --raw=experiments/results/current/eight_tasks/raw
    python -m experiments.tools.replay_selection --patience=1,2,3 --min_delta=0,0.05 --out=runs/replay.md
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags

from experiments.tools import parse_tool_flags, usage_error
from twostage_jax._io import atomic_open
from twostage_jax.evaluation.halving import plateau_reached

FLAGS = flags.FlagValues()
flags.DEFINE_string("raw", "experiments/results/current/eight_tasks/raw",
                    "Folder of TASK/ALGO_stage{1,2}_selection.json records.", flag_values=FLAGS)
flags.DEFINE_list("patience", ["1", "2", "3"], "Patience values to replay.", flag_values=FLAGS)
flags.DEFINE_list("min_delta", ["0", "0.05"], "Margins to replay.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Also write the table (Markdown) here.", flag_values=FLAGS)


def replay(steps: Sequence[int], success: np.ndarray, patience: int, min_delta: float) -> tuple[int, list[int]]:
    """(the number of candidates trained before the stop, each seed's chosen step).

    Args:
      steps: [K] candidate steps.
      success: [K, S] validation success rates.
    """
    success = np.asarray(success, np.float64)
    stop = len(steps)
    for k in range(1, len(steps) + 1):
        if plateau_reached(success[:k], patience, min_delta):
            stop = k
            break
    chosen = [int(steps[i]) for i in np.argmax(success[:stop], axis=0)]
    return stop, chosen


def load_records(raw: Path) -> list[dict]:
    """Every selection record under `raw`, with its task, algorithm and stage."""
    records = []
    for path in sorted(raw.glob("*/*_stage[12]_selection.json")):
        algo, stage = path.stem.split("_")[:2]
        r = json.loads(path.read_text())
        records.append({"task": path.parent.name, "algo": algo, "stage": stage, "steps": r["steps"],
                        "success": np.asarray(r["success"], np.float64), "chosen": r["chosen_steps"]})
    return records


def table(records: list[dict], settings: list[tuple[int, float]]) -> str:
    """The Markdown table of every setting's replay over `records`."""
    rows = ["| patience | margin | same choice (task x seed x stage) | BC stage 1 | BC stage 2 | CQL stage 1 "
            "| CQL stage 2 | mean validation loss of a changed choice | training steps left out "
            "| validation rollouts left out |", "|" + "---|" * 10]
    for patience, delta in settings:
        same, total, loss, steps_out, steps_all, cand_out, cand_all = 0, 0, [], 0, 0, 0, 0
        by: dict[str, list[int]] = {}
        for r in records:
            stop, chosen = replay(r["steps"], r["success"], patience, delta)
            idx = {k: i for i, k in enumerate(r["steps"])}
            for s, (a, b) in enumerate(zip(chosen, r["chosen"])):
                ok = a == b
                same += ok
                total += 1
                by.setdefault(f"{r['algo']}_{r['stage']}", []).append(ok)
                if not ok:
                    loss.append(r["success"][idx[b], s] - r["success"][idx[a], s])
            steps_out += r["steps"][-1] - r["steps"][stop - 1]
            steps_all += r["steps"][-1]
            cand_out += len(r["steps"]) - stop
            cand_all += len(r["steps"])
        cells = [f"{np.mean(by.get(k, [np.nan])):.2f}" for k in ("bc_stage1", "bc_stage2", "cql_stage1", "cql_stage2")]
        rows.append(f"| {patience} | {delta:g} | {same}/{total} ({same / total:.2f}) | " + " | ".join(cells) +
                    f" | {np.mean(loss) if loss else 0.0:.3f} ({len(loss)} changed) | {steps_out / steps_all:.2f} "
                    f"| {cand_out / cand_all:.2f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parse_tool_flags(FLAGS, "replay_selection", argv)
    raw = Path(FLAGS.raw)
    records = load_records(raw)
    if not records:
        usage_error(f"--raw: no TASK/ALGO_stage{{1,2}}_selection.json under {raw}.")
    try:
        settings = [(int(p), float(d)) for p in FLAGS.patience for d in FLAGS.min_delta]
    except ValueError as e:
        usage_error(f"--patience takes ints and --min_delta numbers: {e}")
    text = (f"Plateau stop replayed on {len(records)} recorded validation curves "
            f"({len({r['task'] for r in records})} tasks) from {raw}:\n\n" + table(records, settings))
    print(text)
    if FLAGS.out:
        with atomic_open(FLAGS.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
