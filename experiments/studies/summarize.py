"""Regenerates the 8-task study's summary table and plots from the raw per-seed results.

Reads RAW/TASK/ALGO_NAME.json (one results file per finished run, written by
`twostage_jax.launch.evaluate.run_eval` and read back as its `EvalResults`, collected by
`experiments/studies/reproduce.py`) and writes OUT/summary.md with the figures beside it. Every
interval is rliable's stratified bootstrap over seeds (the runs), stratified by task. An
ablation is paired seed by seed with the headline run of its algorithm (same stage 1, same
evaluation layouts); runs are identified by the JSON's task, algo and stage2_name, and the
headline run is the one named 'stage2'.

Usage:
  python -m experiments.studies.summarize     # runs/repro/raw -> runs/repro/summary/
  # the committed 8-task summary (experiments/results/current/eight_tasks/README.md):
  python -m experiments.studies.summarize --raw=experiments/results/current/eight_tasks/raw \
      --out=experiments/results/current/eight_tasks --runs=runs/repro
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from twostage_jax.envs.metaworld import DEFAULT_TASKS
from twostage_jax.launch.launch_config import from_dict
from twostage_jax.evaluation.plots import plt, save_figure
from twostage_jax.evaluation.report import ALGOS, MODES, EvalResults, ResultsError
from twostage_jax._io import atomic_open
from experiments.studies.validation_curves import is_selection_record
from twostage_jax.evaluation import (
    Interval, bootstrap_interval, difference_interval, improvement_probability, iqm_interval,
    performance_profile)

HEADLINE = "stage2"
PAPER = "paper"  # the paper's exact stage-2 method (':paper'), on the headline run's stage 1
PAIRED = ("num_seeds", "episodes_per_seed", "eval_seeds", "stage1_step")
# study -> (title, JSON field that the ablation changes, figure)
STUDIES = {"crop": ("Crop size", "crop_size", "fig5_crop_size.png"),
           "mode": ("Correction vs direct", "stage2_mode", "fig6_correction_vs_direct.png"),
           "target": ("MC vs TD critic targets", "stage2_q_target", "fig_mc_vs_td.png"),
           "weighting": ("Stage-2 BC loss weighting", "stage2_loss_weighting", "fig_loss_weighting.png"),
           "other": ("Other ablations", "stage2_name", None)}
# reproduce.py's stage-2 folders outside the studies above, by what they change
OTHER_ARMS = {"stage2": "stage 2 at each seed's step chosen on validation"}
AUTO_X = 256  # where the crop-size figure puts the calibrated crop (an x beyond the fixed sizes)
COLORS = {"bc": ("#9aa9c4", "#2f5597"), "cql": ("#e0b48a", "#c55a11")}  # (stage 1, two-stage)
PAPER_COLORS = {"bc": "#6f8fbf", "cql": "#d98c4a"}  # two-stage with the paper's stage-2 method

Runs = dict[tuple[str, str, str], EvalResults]  # (task, algo, stage2_name) -> results

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this script's absl flags (only when run as a script, so importing this module
    beside the other experiment scripts never defines a flag twice)."""
    flags.DEFINE_string("raw", "runs/repro/raw", "Folder of TASK/ALGO_NAME.json per-seed results.")
    flags.DEFINE_string("out", "runs/repro/summary", "Where summary.md and the figures are written "
                        "(the committed ones: experiments/results/current/eight_tasks).")
    flags.DEFINE_string("runs", "runs/repro", "Sweep root with TASK/{bc,cql}/stage*/metrics.jsonl "
                        "for the learning curves (skipped if it does not exist).")
    flags.DEFINE_integer("reps", 2000, "Bootstrap resamples per interval.")



class SummaryError(ValueError):
    """A raw results file is missing, malformed, or inconsistent with its headline run."""


def load_raw(raw: Path) -> Runs:
    """Loads and validates every RAW/TASK/*.json; checks ablations against their headline run.

    Raises:
      SummaryError: naming the file and the field, if a file is missing fields, the folder is
        empty, or an ablation's seeds/episodes/stage 1 differ from its headline run's.
    """
    raw = Path(raw)
    # reproduce.py collects each selecting stage's selection.json beside the results
    # (TASK/ALGO_stageN_selection.json, read by validation_curves.py); those are not runs.
    files = [p for p in (sorted(raw.glob("*/*.json")) if raw.is_dir() else [])
             if not is_selection_record(p)]
    if not files:
        raise SummaryError(f"--raw {raw}: no TASK/ALGO_NAME.json results there; run "
                           "`python -m experiments.studies.reproduce` first or point --raw at them.")
    runs: Runs = {}
    paths: dict[tuple[str, str, str], Path] = {}
    for path in files:
        try:
            d = EvalResults.from_dict(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as e:
            raise SummaryError(f"{path}: not valid JSON ({e}).") from e
        except ResultsError as e:
            raise SummaryError(str(e)) from e
        if d.task != path.parent.name:
            raise SummaryError(f"{path}: field 'task' is {d.task!r} but the file is in folder "
                               f"{path.parent.name!r}.")
        key = (d.task, d.algo, d.stage2_name)
        if key in runs:
            raise SummaryError(f"{path}: same task, algo and stage2_name as {paths[key]}.")
        runs[key], paths[key] = d, path
    first_key = next(iter(runs))
    first = runs[first_key]
    for (task, algo, name), d in runs.items():
        if d.num_seeds != first.num_seeds:
            raise SummaryError(f"{paths[task, algo, name]}: field 'num_seeds' is {d.num_seeds} but "
                               f"{paths[first_key]} has {first.num_seeds}; seeds are the runs.")
        if name == HEADLINE:
            continue
        head = runs.get((task, algo, HEADLINE))
        where, head_file = paths[task, algo, name], paths.get((task, algo, HEADLINE))
        if head is None:
            raise SummaryError(f"{where}: ablation {name!r} has no headline {algo} run "
                               f"(stage2_name 'stage2') for task {task} to be paired with.")
        for field in PAIRED:
            if getattr(d, field) != getattr(head, field):
                raise SummaryError(f"{where}: field {field!r} is {_json(getattr(d, field))!r} but the "
                                   f"headline {head_file.name} has {_json(getattr(head, field))!r}; an "
                                   "ablation must share its headline's seeds, episodes and stage 1.")
        if not np.allclose(d.modes["stage1"].per_seed, head.modes["stage1"].per_seed):
            raise SummaryError(f"{where}: field 'modes.stage1.per_seed' differs from the "
                               f"headline {head_file.name}; the runs are not paired.")
    return runs


def _json(value: Any) -> Any:
    """A record's value as its JSON file has it (tuples as lists), for messages."""
    return list(value) if isinstance(value, tuple) else value


def _tasks(runs: Runs, algo: str | None = None, name: str = HEADLINE) -> list[str]:
    present = {t for t, a, n in runs if n == name and algo in (None, a)}
    return [t for t in DEFAULT_TASKS if t in present] + sorted(present - set(DEFAULT_TASKS))


def _matrix(runs: Runs, tasks: list[str], algo: str, name: str, mode: str) -> np.ndarray:
    """[seeds, tasks] success rates."""
    return np.array([runs[t, algo, name].modes[mode].per_seed for t in tasks], float).T


def _fmt(iv: Interval | None, signed: bool = False) -> str:
    if iv is None:
        return "—"
    f = "{:+.2f}" if signed else "{:.2f}"
    return f"{f.format(iv.mean)} [{f.format(iv.low)}, {f.format(iv.high)}]"


def _values(runs: Runs, field: str, algo: str | None = None) -> str:
    """The distinct values of `field` over all files, or over `algo`'s headline files."""
    vals = {getattr(d, field) if not isinstance(getattr(d, field), tuple)
            else "–".join(map(str, getattr(d, field)))
            for (_, a, n), d in runs.items() if algo is None or (a == algo and n == HEADLINE)}
    return "/".join(sorted(map(str, vals)))


def _stage_steps(runs: Runs, algo: str, stage: int, name: str = HEADLINE) -> str:
    """Stage `stage`'s budget in `algo`'s `name` runs, and the steps the seeds acted with when
    that stage was selected on validation layouts (`config.stageN.select`)."""
    runs_ = [d for (_, a, n), d in runs.items() if a == algo and n == name]
    budget = "/".join(sorted({str(getattr(d, f"stage{stage}_step")) for d in runs_}))
    chosen = sorted({s for d in runs_ if f"stage{stage}" in d.selection
                     for s in getattr(d, f"stage{stage}_steps")})
    if not chosen:
        return budget
    seeds = [k for d in runs_ if f"stage{stage}" in d.selection for k in getattr(d, f"stage{stage}_steps")]
    plain = sum(k == 0 for k in seeds)  # stage 2's no-correction candidate (select.no_correction)
    return (f"up to {budget}, each seed acting with its checkpoint chosen on validation layouts "
            f"(chosen steps {'/'.join(map(str, (k for k in chosen if k)))}" +
            (f"; no correction for {plain} of {len(seeds)} seeds" if plain else "") + ")")


def _critic_choices(runs: Runs) -> list[str]:
    """How often stage 2's critic chose no correction, the actor's mode or a sample
    (`config.eval.critic_samples`), per algorithm and arm; empty when no run let it choose."""
    totals: dict[tuple[str, str], np.ndarray] = {}
    for (_, algo, name), d in sorted(runs.items()):
        if d.critic_choices:
            counts = np.array([sum(d.critic_choices[k]) for k in ("no_correction", "mode", "sample")], float)
            totals[(algo, name)] = totals.get((algo, name), np.zeros(3)) + counts
    if not totals:
        return []
    lines = ["", "## The critic's choices", "", ("With `config.eval.critic_samples`, stage 2's critic "
             "chooses the executed correction at each step; share of the two-stage policy's "
             "evaluation steps, all tasks and seeds:"), "",
             "| algo | arm | no correction | the actor's mode | a sample |", "|---|---|---|---|---|"]
    for (algo, name), c in totals.items():
        share = c / max(c.sum(), 1.0)
        lines.append(f"| {algo.upper()} | {name} | " + " | ".join(f"{x:.2f}" for x in share) + " |")
    return lines


def _arm(study: str, value: Any) -> str:
    if study == "crop" and value == 0:  # results.json's crop_size for a calibrated crop
        return "crop auto"
    if study == "other":  # a stage-2 folder name; reproduce's own ones say what they are
        return OTHER_ARMS.get(value, str(value))
    return {"crop": f"crop {value}", "target": str(value).upper(),
            "weighting": f"loss {value}"}.get(study, str(value))


def _bars(ax: Any, labels: list[str], ivs: list[Interval | None], colors: list[str]) -> None:
    means = [iv.mean if iv else np.nan for iv in ivs]
    err = np.array([[iv.mean - iv.low if iv else 0 for iv in ivs],
                    [iv.high - iv.mean if iv else 0 for iv in ivs]])
    ax.bar(range(len(labels)), means, yerr=err, capsize=4, color=colors)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(0, 1)


def _grid(n: int) -> tuple[Any, list[Any]]:
    rows = max(1, -(-n // 4))
    fig, axes = plt.subplots(rows, 4, figsize=(12, 2.8 * rows), squeeze=False)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def _headline(runs: Runs, out: Path, reps: int) -> list[str]:
    """Headline table and Figs. 3 and 4 (per task); returns the Markdown lines."""
    tasks = _tasks(runs)
    arms = [f"{a.upper()}{s}" for a in ALGOS for s in ("(1)", " two-stage", " gain", " failures fixed")]
    lines = ["| task | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    per_task: dict[str, list[Interval | None]] = {}
    for t in tasks:
        cells, per_task[t] = [], []
        for algo in ALGOS:
            if (t, algo, HEADLINE) not in runs:
                cells += ["—"] * 4
                per_task[t] += [None, None]
                continue
            a, b = (_matrix(runs, [t], algo, HEADLINE, m) for m in MODES)
            ivs = [bootstrap_interval(a, reps=reps), bootstrap_interval(b, reps=reps)]
            per_task[t] += ivs
            cells += [_fmt(ivs[0]), _fmt(ivs[1]), _fmt(difference_interval(a, b, reps=reps), True),
                      _fixed(a, b)]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    cells, means, cover = [], [], []
    for algo in ALGOS:
        ts = _tasks(runs, algo)
        if not ts:
            cells += ["—"] * 4
            means += [None, None]
            continue
        a, b = (_matrix(runs, ts, algo, HEADLINE, m) for m in MODES)
        means += [bootstrap_interval(a, reps=reps), bootstrap_interval(b, reps=reps)]
        cells += [_fmt(means[-2]), _fmt(means[-1]), _fmt(difference_interval(a, b, reps=reps), True),
                  _fixed(a, b)]
        cover.append(f"{algo.upper()} over {len(ts)} task(s) ({', '.join(ts)})")
    lines += ["| **mean** | " + " | ".join(cells) + " |", "",
              "Means (stratified over seeds × tasks): " + "; ".join(cover) + ". Failures fixed: "
              "(two-stage − stage 1) / (1 − stage 1), the share of stage 1's failed episodes "
              "the correction turns into successes, net (negative: it breaks more than it fixes)."]
    bases = sorted({r.stage1_source for r in runs.values() if r.stage1_source})
    if bases:
        lines += ["", f"Stage 1 here is not ours: the base policy {', '.join(bases)} "
                  "(`config.stage1.source`), alone in the (1) column and corrected by stage 2 in "
                  "the two-stage column."]
    labels = ["BC(1)", "BC\ntwo-stage", "CQL(1)", "CQL\ntwo-stage"]
    colors = [c for a in ALGOS for c in COLORS[a]]
    for algo in ALGOS:  # the paper's stage-2 method beside ours, where it was run
        ts = _tasks(runs, algo, PAPER)
        if ts:
            labels.append(f"{algo.upper()}\npaper's\nstage 2")
            colors.append(PAPER_COLORS[algo])
            means.append(bootstrap_interval(_matrix(runs, ts, algo, PAPER, "two_stage"), reps=reps))
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(labels), 3.2))
    _bars(ax, labels, means, colors)
    ax.set_ylabel("success probability")
    ax.set_title(f"mean over tasks ({runs[next(iter(runs))].num_seeds} seeds)", fontsize=9)
    save_figure(fig, out / "fig3_headline.png")
    fig, axes = _grid(len(tasks))
    for ax, t in zip(axes, tasks):
        _bars(ax, labels[:4], per_task[t], colors[:4])
        ax.set_title(t, fontsize=9)
    save_figure(fig, out / "fig4_per_task.png")
    return lines + ["", "![Fig. 3: mean success over tasks](fig3_headline.png)", "",
                    "![Fig. 4: success per task](fig4_per_task.png)"]


def _fixed(one: np.ndarray, two: np.ndarray) -> str:
    """(mean two − mean one) / (1 − mean one) of [S, T] success rates, or '—' if stage 1 never fails."""
    a, b = float(np.mean(one)), float(np.mean(two))
    return "—" if a >= 1.0 else f"{(b - a) / (1.0 - a):+.2f}"


def _paper_arm(runs: Runs, reps: int) -> list[str]:
    """Table of the paper's stage-2 method (':paper') against ours, both on the headline run's
    stage 1 and evaluation layouts: per task and algorithm, stage 1, the paper-method
    two-stage success and its gain, ours, and ours minus the paper's (paired by seed)."""
    algos = [a for a in ALGOS if _tasks(runs, a, PAPER)]
    head = " | ".join(f"{a.upper()}(1) | {a.upper()} paper's stage 2 | gain | {a.upper()} ours | "
                      "ours − paper's" for a in algos)
    lines = [f"| task | {head} |", "|---" * (1 + 5 * len(algos)) + "|"]
    tasks = [t for t in _tasks(runs) if any((t, a, PAPER) in runs for a in algos)]
    cover = []
    for t in tasks + [None]:
        cells = []
        for algo in algos:
            ts = _tasks(runs, algo, PAPER) if t is None else [t]
            if not ts or (ts[0], algo, PAPER) not in runs:
                cells += ["—"] * 5
                continue
            if t is None:
                cover.append(f"{algo.upper()} over {len(ts)} task(s)")
            one = _matrix(runs, ts, algo, HEADLINE, "stage1")
            paper, ours = (_matrix(runs, ts, algo, n, "two_stage") for n in (PAPER, HEADLINE))
            cells += [_fmt(bootstrap_interval(one, reps=reps)), _fmt(bootstrap_interval(paper, reps=reps)),
                      _fmt(difference_interval(one, paper, reps=reps), True),
                      _fmt(bootstrap_interval(ours, reps=reps)),
                      _fmt(difference_interval(paper, ours, reps=reps), True)]
        lines.append(f"| {t or '**mean**'} | " + " | ".join(cells) + " |")
    return lines + ["", "Means (stratified over seeds × tasks): " + "; ".join(cover) + "."]


def _aggregates(runs: Runs, out: Path, reps: int) -> list[str]:
    """rliable's aggregates of the headline runs: IQM and mean with stratified bootstrap
    intervals, the probability of improvement of two-stage over stage 1, and performance
    profiles (fig_aggregates.png, fig_performance_profiles.png); returns the Markdown lines."""
    scores: dict[str, np.ndarray] = {}
    colors: dict[str, str] = {}
    rows, poi = [], {}
    for algo in ALGOS:
        ts = _tasks(runs, algo)
        if not ts:
            continue
        a, b = (_matrix(runs, ts, algo, HEADLINE, m) for m in MODES)
        arms = [(f"{algo.upper()}(1)", a, COLORS[algo][0]), (f"{algo.upper()} two-stage", b, COLORS[algo][1])]
        if set(_tasks(runs, algo, PAPER)) == set(ts):
            arms.append((f"{algo.upper()} two-stage, paper's stage 2",
                         _matrix(runs, ts, algo, PAPER, "two_stage"), PAPER_COLORS[algo]))
        for label, x, color in arms:
            scores[label], colors[label] = x, color
            rows.append((label, len(ts), iqm_interval(x, reps=reps), bootstrap_interval(x, reps=reps)))
        poi[algo] = improvement_probability(b, a, reps=reps)
    lines = ["| arm | tasks | IQM | mean |", "|---|---|---|---|"]
    lines += [f"| {label} | {n} | {_fmt(iqm)} | {_fmt(mean)} |" for label, n, iqm, mean in rows]
    lines += ["", "Probability of improvement P(two-stage > stage 1) (Mann-Whitney over seeds, "
              "averaged over tasks; 0.5 = no difference): " + "; ".join(
                  f"{a.upper()} {_fmt(iv)}" for a, iv in poi.items()) + ".", ""]
    labels = [r[0] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.5 + 0.45 * len(labels)))
    for ax, (title, ivs) in zip(axes, (("IQM", [r[2] for r in rows]), ("mean", [r[3] for r in rows]))):
        for i, (iv, label) in enumerate(zip(ivs, labels)):
            ax.barh(i, iv.high - iv.low, left=iv.low, height=0.6, color=colors[label], alpha=0.8)
            ax.plot([iv.mean, iv.mean], [i - 0.3, i + 0.3], color="k", lw=1.5)
        ax.set_yticks(range(len(labels)), labels if title == "IQM" else [""] * len(labels), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"{title} success", fontsize=9)
    ax = axes[2]
    for i, (algo, iv) in enumerate(poi.items()):
        ax.barh(i, iv.high - iv.low, left=iv.low, height=0.6, color=COLORS[algo][1], alpha=0.8)
        ax.plot([iv.mean, iv.mean], [i - 0.3, i + 0.3], color="k", lw=1.5)
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_yticks(range(len(poi)), [f"{a.upper()}: two-stage\n> stage 1" for a in poi], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_title("P(improvement)", fontsize=9)
    save_figure(fig, out / "fig_aggregates.png")
    from rliable import plot_utils

    taus = np.linspace(0.0, 1.0, 21)
    profiles, cis = performance_profile(scores, taus, reps=reps)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=cis, colors=colors, ax=ax,
        xlabel=r"success rate $\tau$", ylabel=r"fraction of runs with success $> \tau$",
        labelsize="small", ticklabelsize="small")
    ax.legend(fontsize=7)
    save_figure(fig, out / "fig_performance_profiles.png")
    return lines + ["![Aggregates: IQM, mean, probability of improvement](fig_aggregates.png)", "",
                    "![Performance profiles](fig_performance_profiles.png)"]


def _success_curves(runs: Runs, out: Path) -> list[str]:
    """Fig. 4: success of stage 1 and of the two-stage policy at the evaluated checkpoints,
    mean ± std over seeds, one panel per task; returns the written file names."""
    written = []
    for algo in ALGOS:
        tasks = [t for t in _tasks(runs, algo) if runs[t, algo, HEADLINE].curves is not None]
        if not tasks:
            continue
        fig, axes = _grid(len(tasks))
        for ax, t in zip(axes, tasks):
            for mode, color in zip(MODES, COLORS[algo]):
                c = runs[t, algo, HEADLINE].curves[mode]
                per = np.asarray(c.per_seed, float)  # [steps, seeds]
                m, sd = per.mean(axis=1), per.std(axis=1)
                label = f"{algo.upper()}(1)" if mode == "stage1" else f"{algo.upper()} two-stage"
                ax.plot(c.steps, m, marker="o", ms=3, color=color, lw=1, label=label)
                ax.fill_between(c.steps, np.clip(m - sd, 0, 1), np.clip(m + sd, 0, 1),
                                color=color, alpha=0.25)
            ax.set_ylim(0, 1)
            ax.set_title(t, fontsize=9)
            ax.set_xlabel("training steps (each stage)", fontsize=8)
            ax.set_ylabel("success", fontsize=8)
            ax.legend(fontsize=7)
        name = f"fig4_success_curves_{algo}.png"
        save_figure(fig, out / name)
        written.append(name)
    return written


def _ablations(runs: Runs, out: Path, reps: int) -> list[str]:
    """One table per ablation, grouped by study, and Figs. 5, 6 and MC-vs-TD; Markdown lines."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for algo, name in sorted({(a, n) for _, a, n in runs if n not in (HEADLINE, PAPER)}):
        tasks = _tasks(runs, algo, name)
        abl, head = runs[tasks[0], algo, name], runs[tasks[0], algo, HEADLINE]
        changed = [s for s, (_, f, _) in STUDIES.items()
                   if s != "other" and getattr(abl, f) != getattr(head, f)]
        study = changed[0] if len(changed) == 1 else "other"
        value, head_value = getattr(abl, STUDIES[study][1]), getattr(head, STUDIES[study][1])
        groups[study].append({"algo": algo, "name": name, "tasks": tasks, "value": value,
                              "head_value": head_value, "short": _arm(study, value),
                              "head_short": _arm(study, head_value),
                              "label": f"{algo.upper()} {_arm(study, value)}",
                              "head_label": f"{algo.upper()} {_arm(study, head_value)} (headline)"})
    lines: list[str] = []
    for study, (title, field, figure) in STUDIES.items():
        if study not in groups:
            continue
        lines += [f"### {title}", ""]
        for g in sorted(groups[study], key=lambda g: (g["algo"], str(g["value"]))):
            algo, name, tasks = g["algo"], g["name"], g["tasks"]
            lines += [(f"`{name}`: {g['label']} vs {g['head_label']}; two-stage success, differences "
                       f"paired by seed; the last column is the ablation's gain over {algo.upper()}(1)."),
                      "", f"| task | {g['label']} | {g['head_label']} | difference | "
                      f"{algo.upper()}(1) | gain over {algo.upper()}(1) |", "|---|---|---|---|---|---|"]
            for t in tasks + [None]:
                ts = tasks if t is None else [t]
                head, abl = (_matrix(runs, ts, algo, n, "two_stage") for n in (HEADLINE, name))
                one = _matrix(runs, ts, algo, HEADLINE, "stage1")
                ivs = [bootstrap_interval(abl, reps=reps), bootstrap_interval(head, reps=reps)]
                row = [_fmt(ivs[0]), _fmt(ivs[1]), _fmt(difference_interval(head, abl, reps=reps), True),
                       _fmt(bootstrap_interval(one, reps=reps)),
                       _fmt(difference_interval(one, abl, reps=reps), True)]
                lines.append(f"| {t or f'**mean** ({len(tasks)} task(s))'} | " + " | ".join(row) + " |")
            g["abl_iv"], g["head_iv"] = ivs
            lines.append("")
        if figure and study == "crop":
            _plot_crop(runs, groups[study], out / figure, reps)
        elif figure:
            fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups[study]), 3.2))
            labels = [f"{g['algo'].upper()}\n{x}" for g in groups[study]
                      for x in (g["head_short"], g["short"])]
            _bars(ax, labels, [iv for g in groups[study] for iv in (g["head_iv"], g["abl_iv"])],
                  [c for g in groups[study] for c in COLORS[g["algo"]][::-1]])
            ax.set_ylabel("two-stage success")
            ax.set_title(f"{title} (mean over ablation tasks)", fontsize=9)
            save_figure(fig, out / figure)
        if figure:
            lines += [f"![{title}]({figure})", ""]
    return lines


def _plot_crop(runs: Runs, group: list[dict[str, Any]], path: Path, reps: int) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    sizes: set[int] = set()
    auto = False
    for algo in ALGOS:
        gs = [g for g in group if g["algo"] == algo]
        tasks = [t for t in gs[0]["tasks"] if all(t in g["tasks"] for g in gs)] if gs else []
        if not tasks:
            continue
        arms = sorted([(gs[0]["head_value"], HEADLINE)] + [(g["value"], g["name"]) for g in gs])
        ivs = {n: bootstrap_interval(_matrix(runs, tasks, algo, n, "two_stage"), reps=reps)
               for _, n in arms}
        fixed = [(int(c), ivs[n]) for c, n in arms if c]
        sizes.update(c for c, _ in fixed)
        for points, style in ((fixed, "-"), ([(AUTO_X, ivs[n]) for c, n in arms if not c], "")):
            if points:  # the calibrated ('auto') crop: a point of its own right of the sizes
                ax.errorbar([x for x, _ in points], [iv.mean for _, iv in points],
                            yerr=[[iv.mean - iv.low for _, iv in points],
                                  [iv.high - iv.mean for _, iv in points]],
                            marker="o", capsize=4, linestyle=style, color=COLORS[algo][1],
                            label=f"{algo.upper()} two-stage ({len(tasks)} tasks)" if style else None)
        auto |= any(not c for c, _ in arms)
    ax.set_xscale("log", base=2)
    ticks = sorted(sizes) + ([AUTO_X] if auto else [])
    ax.set_xticks(ticks, [str(s) for s in sorted(sizes)] + (["auto"] if auto else []))
    ax.set_ylim(0, 1)
    ax.set_xlabel("stage-2 crop size (pixels)")
    ax.set_ylabel("success probability")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _curve(path: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, mean, std) over seeds of `key` in a metrics.jsonl; later lines win (resumed runs)."""
    if not path.is_file():
        return None
    by_seed_step: dict[tuple[int, int], float] = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # blank, or a line still being written
            continue
        if isinstance(r, dict) and key in r:
            by_seed_step[r["seed"], r["step"]] = float(r[key])
    by_step: dict[int, list[float]] = defaultdict(list)
    for (_, step), v in sorted(by_seed_step.items(), key=lambda kv: kv[0][1]):
        by_step[step].append(v)
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    return (steps, np.array([np.mean(by_step[s]) for s in steps]),
            np.array([np.std(by_step[s]) for s in steps]))


def _learning_curves(runs_dir: Path, tasks: list[str], out: Path) -> list[str]:
    """Fig. 4 substitute: training loss vs step, one figure per algorithm; returns file names."""
    written = []
    for algo, key, scale in (("bc", "bc_loss", "log"), ("cql", "critic_loss", "linear")):
        fig, axes = _grid(len(tasks))
        found = False
        for ax, t in zip(axes, tasks):
            for stage, color in zip(("stage1", "stage2"), COLORS[algo]):
                c = _curve(runs_dir / t / algo / stage / "metrics.jsonl", key)
                if c is None:
                    continue
                found = True
                ax.plot(c[0], c[1], color=color, lw=1, label=stage)
                ax.fill_between(c[0], c[1] - c[2], c[1] + c[2], color=color, alpha=0.25)
            ax.set_yscale(scale)
            ax.set_title(t if ax.lines else f"{t}: no metrics", fontsize=9)
            ax.set_xlabel("update step", fontsize=8)
            ax.set_ylabel(key, fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        name = f"fig4_learning_curves_{algo}.png"
        if found:
            save_figure(fig, out / name)
            written.append(name)
        else:
            plt.close(fig)
    return written


def _stage2_rates(d: EvalResults) -> tuple[float, ...] | None:
    """The stage-2 learning rates of a run (BC: one; CQL: actor, critic), from its config, or
    None when the results file has no config."""
    if not d.config:
        return None
    stage2 = from_dict(d.config).stage2
    return (stage2.cql.actor_lr, stage2.cql.critic_lr) if d.algo == "cql" else (stage2.learning_rate,)


def _cost(runs: Runs) -> list[str]:
    """Per task and arm: CPU seconds of each stage's training, its validation rollouts and the
    evaluation (results.json's `cost`), with the total; empty when no run recorded its cost."""
    rows, total = [], 0.0
    for (task, algo, name), d in sorted(runs.items()):
        if not d.cost:
            continue
        cells, run_total = [], 0.0
        for stage in ("stage1", "stage2"):
            if stage == "stage1" and name != HEADLINE:  # the headline run's, counted there
                cells += ["(shared)", "(shared)"]
                continue
            c = d.cost.get(stage, {})
            train = float(c.get("train_cpu_seconds") or 0.0)
            validate = float(c.get("plateau_validation_cpu_seconds") or 0.0) + float(c.get("selection_cpu_seconds") or 0.0)
            spent = (f" ({c['episodes_spent']}/{c['episodes_full']} episodes)"
                     if c.get("episodes_full") else "")
            stop = f", stopped at {c['stopped_step']}" if c.get("stopped_step") else ""
            cells += [f"{train:.0f}{stop}", f"{validate:.0f}{spent}"]
            run_total += train + validate
        ev = float(d.cost.get("evaluation", {}).get("cpu_seconds") or 0.0)
        run_total += ev
        total += run_total
        rows.append(f"| {task} | {algo} | {name} | " + " | ".join(cells) + f" | {ev:.0f} | {run_total:.0f} |")
    if not rows:
        return []
    return ["| task | algo | stage 2 | stage 1 training | stage 1 validation | stage 2 training "
            "| stage 2 validation | evaluation | total |", "|" + "---|" * 9, *rows,
            f"| all | | | | | | | | {total:.0f} ({total / 3600:.1f} h) |", "",
            ("CPU seconds, the simulator workers' included. Stage 1, shared by every arm of a task "
             "and algorithm, is counted in the headline run's row; the demos are not counted; a "
             "resumed stage's training counts its last part only.")]


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it (summaries name no machine's checkout)."""
    try:
        return Path(path).absolute().relative_to(Path(__file__).resolve().parents[2]).as_posix()
    except ValueError:
        return str(path)


def summarize(raw: Path, out: Path, runs: Path | None = None, reps: int = 2000) -> Path:
    """Writes OUT/summary.md and the figures from RAW's per-seed results.

    Args:
      raw: folder of TASK/ALGO_NAME.json results files.
      out: output folder (created).
      runs: sweep root for the learning curves, or None / a missing folder to skip them.
      reps: bootstrap resamples per interval.

    Returns:
      The path of summary.md.

    Raises:
      SummaryError: if RAW is empty or a results file is malformed or inconsistent.
    """
    results = load_raw(raw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(results.values()))
    steps = "; ".join(f"{a.upper()} stage 1 {_stage_steps(results, a, 1)} / stage 2 "
                      f"{_stage_steps(results, a, 2)}" for a in ALGOS if _tasks(results, a))
    lines = ["# Two-stage agent on MetaWorld: summary", "",
             (f"{first.num_seeds} seeds × {_values(results, 'episodes_per_seed')} episodes per seed "
              f"(evaluation layout seeds {_values(results, 'eval_seeds')}); training steps: {steps}. "
              f"Cells: mean success [95% stratified bootstrap interval over seeds, {reps} resamples]. "
              f"Regenerate: `python -m experiments.studies.summarize --raw={_shown(raw)} --out={_shown(out)}`."),
             "", "## Headline", ""]
    lines += _headline(results, out, reps)
    if any(n == PAPER for _, _, n in results):
        lines += ["", "## The paper's stage-2 method beside ours", "",
                  ("`paper`: stage 2 trained with the paper's exact settings (the `:paper` config "
                   "variant: σ = 0.1 on every pose dimension instead of σ calibrated to stage 1's "
                   "held-out errors, and for BC the unweighted loss of Eq. 1 instead of the "
                   "whitened one) on the same stage 1, seeds and evaluation layouts as the "
                   "headline run; the last column of each algorithm is ours minus the paper's "
                   "two-stage success, paired by seed."), ""]
        for a in ALGOS:  # say so when the arms trained stage 2 for other budgets or rates
            def values(arm: str, get: Any) -> set:
                return {get(d) for (_, al, n), d in results.items() if al == a and n == arm} - {None}

            ours, paper = (_stage_steps(results, a, 2, arm) for arm in (HEADLINE, PAPER))
            if values(PAPER, lambda d: d.stage2_step) and paper != ours:
                lines += [f"**{a.upper()}: the paper arm's stage 2 trained {paper} steps, the "
                          f"headline's {ours}**, so its last column mixes the method with the "
                          "budget.", ""]
            ours, paper = values(HEADLINE, _stage2_rates), values(PAPER, _stage2_rates)
            if paper and ours and paper != ours:
                say = lambda rates: "; ".join(" / ".join(f"{x:g}" for x in r) for r in sorted(rates))
                lines += [f"**{a.upper()}: the paper arm's stage 2 learned at {say(paper)}, the "
                          f"headline's at {say(ours)}** (learning rates; CQL: actor / critic), so "
                          "its last column mixes the method with the learning rate.", ""]
        lines += _paper_arm(results, reps)
    lines += _critic_choices(results)
    lines += ["", "## Aggregate statistics (rliable)", "",
              ("Over seeds × tasks of the headline runs: interquartile mean (IQM) and mean with "
               f"stratified bootstrap intervals ({reps} resamples), the probability of "
               "improvement, and performance profiles (fraction of runs above each success "
               "rate), after Agarwal et al. (2021)."), ""]
    lines += _aggregates(results, out, reps)
    lines += ["", "## Success over training (Fig. 4)", ""]
    success_curves = _success_curves(results, out)
    if success_curves:
        lines += [("Success of stage 1 alone and of the two-stage policy (stage 1 and stage 2 both "
                   "at that step) at the checkpoints of `config.eval.curve_steps` and the final "
                   "one; mean ± std over seeds."), ""]
        lines += [f"![{name}]({name})" for name in success_curves]
    else:
        lines.append("Not drawn: no results file has learning curves (set config.eval.curve_steps "
                     "before training).")
    lines += ["", "## Training curves", ""]
    curves = _learning_curves(Path(runs), _tasks(results), out) if runs and Path(runs).is_dir() else []
    if curves:
        lines += [("Training losses (mean ± std over seeds)" + (
            "." if success_curves else "; intermediate checkpoints were not evaluated, so these "
            "stand in for the paper's Fig. 4.")), ""]
        lines += [f"![{name}]({name})" for name in curves]
    else:
        lines.append(f"Not drawn: no metrics.jsonl under {runs}." if runs else
                     "Not drawn: no training workdirs given (--runs); the committed results hold "
                     "no training metrics.")
    if any(n not in (HEADLINE, PAPER) for _, _, n in results):
        lines += ["", "## Ablations (stage 2; same stage 1 as the headline run)", ""]
        lines += _ablations(results, out, reps)
    cost = _cost(results)
    if cost:
        lines += ["", "## What it cost", ""] + cost
    path = out / "summary.md"
    with atomic_open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return path


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}; every option is a --flag.")
    try:
        path = summarize(Path(FLAGS.raw), Path(FLAGS.out), Path(FLAGS.runs) if FLAGS.runs else None,
                         reps=FLAGS.reps)
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"wrote {path} and its figures")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
