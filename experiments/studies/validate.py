"""Held-out validation of stage-2 variants: open-loop diagnostics and closed-loop rollouts.

Settings of the correction stage are chosen here, never on evaluation episodes. For one workdir
(its dataset and stage 1) and any number of named stage-2 runs trained in it
(`--config.stage2_name=NAME`), this measures
  * open loop, on held-out demos (layout seeds from `--held_out_seed`, used neither for the
    training demos nor for evaluation): the diagnostics of `experiments/studies/diagnose.py` (stage-1
    and two-stage position error, gripper agreement, the correction's residual on Algo. 1's
    perturbations, each split along / across the camera's optical axis);
  * closed loop, on validation layouts (`--seed`, default 200000+, disjoint from the demos, the
    held-out demos and the evaluation seeds 100000+): success of stage 1 alone and of the
    two-stage policy, and the stall measures of the correction:
      - `at_budget`: failed episodes that ran to the keyframe budget;
      - `small_moves`: executed actions whose position is within 1 cm of the current pose;
      - `pull_cm`: mean of |x^1 - z| - |x - z| over steps, in cm: how far the composition pulls
        the tentative position back towards the current pose (positive = towards it).
Stage 1's validation rollouts are computed once per stage-1 checkpoint and shared by variants.

Usage:
  python -m experiments.studies.validate --workdir=runs/dev_push --names=paper,mm2 --episodes=20
Writes `OUT/TAG/NAME.json` (TAG: the workdir's folder name; workdirs that share a name, such as
the study's `runs/repro/TASK/cql`, need an `--out` each, e.g. `--out=OUT/TASK`) and prints one row per variant.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[2]
FLAGS = flags.FLAGS
SMALL_MOVE_M = 0.01


def define_flags() -> None:
    """Defines this script's absl flags (only when run as a script)."""
    flags.DEFINE_string("workdir", None, "A launcher workdir with demos and a trained stage 1.")
    flags.DEFINE_list("names", ["stage2"], "Stage-2 runs (config.stage2_name) to validate.")
    flags.DEFINE_integer("episodes", 20, "Validation episodes per seed and policy.")
    flags.DEFINE_integer("seed", 200_000, "First validation layout seed.")
    flags.DEFINE_integer("held_out", 20, "Held-out demos for the open-loop diagnostics (0: skip).")
    flags.DEFINE_integer("held_out_seed", 50_000, "First layout seed of the held-out demos.")
    flags.DEFINE_integer("perturbations", 4, "Algo. 1 draws per held-out transition.")
    flags.DEFINE_string("out", "runs/validation", "Output folder (reports in OUT/TAG/); the committed "
                        "validation studies are under experiments/results/current/validation/.")
    flags.DEFINE_bool("force", False, "Recompute variants that already have a report.")
    flags.DEFINE_string("summary_of", "", "Instead of validating: print the table of every report "
                        "under this folder (recursively), with each arm's mean over tasks.")
    flags.DEFINE_integer("correction_passes", 1, "Times stage 2 corrects (make_policy's "
                         "correction_passes); N > 1 writes NAME_pN.json.")
    flags.DEFINE_list("corrected_dims", None, "7 flags of 0 / 1: the action dimensions the "
                      "correction changes (make_policy's corrected_dims), e.g. 1,1,1,0,0,0,1 keeps "
                      "stage 1's orientation; writes NAME_dFLAGS.json. Default: all.")
    flags.DEFINE_bool("expert_labels", False, "MetaWorld: also measure the closed-loop error of the "
                      "tentative and executed actions against the scripted expert's label of every "
                      "state reached (twostage_jax.envs.metaworld_labels; measuring only), beside "
                      "the open-loop held-out error. Recomputes stage 1's cached rollouts without them; "
                      "add --force to redo a report that has none.")
    flags.DEFINE_integer("critic_samples", 0, "K > 0, for a CQL stage 2: its critic chooses among no "
                         "correction, the actor's mode and K samples (make_policy's critic_samples); "
                         "writes NAME_cK.json, closed loop only (the open-loop diagnostics measure "
                         "the actor, as NAME.json's do).")


class Skipped(Exception):
    """A run that this validation does not apply to (named, and skipped)."""


def run_config(workdir: Path, name: str):
    """The launcher config a stage-2 run was trained with (from its checkpoint's metadata)."""
    from twostage_jax.checkpoint import Checkpointer
    from twostage_jax.launch.launch_config import from_dict

    directory = workdir / name / "checkpoints"
    if not directory.exists():
        raise FileNotFoundError(f"{directory} does not exist: train it with --mode=stage2 "
                                f"--config.stage2_name={name} first.")
    ckpt = Checkpointer(directory)
    try:
        meta = ckpt.read_meta()
    finally:
        ckpt.close()
    return from_dict(meta["config"])  # any version (migrated)


def closed_loop(config: Any, workdir: Path, params1: Any, params2: Any, seeds: list[int],
             two_stage: bool, correction_passes: int = 1, corrected_dims: Any = None,
             critic_samples: int = 0, expert_labels: bool = False) -> dict:
    """Validation rollouts of every trained seed; success and stall measures (and, with
    `critic_samples`, how often the critic chose no correction, the actor's mode or a sample;
    with `expert_labels`, the error of the tentative and executed actions against the scripted
    expert's label of every state reached, `label_errors`)."""
    import jax

    import twostage_jax as tj
    from twostage_jax.launch import eval_jobs as rollouts
    from twostage_jax.launch.refine import acting_configs
    from twostage_jax.launch.workdir import train_config
    from twostage_jax import evaluation

    c1 = train_config(config, 1)
    c2, refining = acting_configs(config, workdir) if two_stage else (None, None)
    env = rollouts.env_factory(config)()
    ws = env.workspace
    policy = tj.make_policy(c1, c2, ws, correction_passes=correction_passes,
                            corrected_dims=corrected_dims if two_stage else None,
                            critic_samples=critic_samples if two_stage else 0, refine=refining)
    num = int(config.num_seeds)
    success = np.zeros((num, len(seeds)), bool)
    budget = np.zeros((num, len(seeds)), bool)
    small, pull = [], []
    choices = np.zeros(3, np.int64)  # no correction, the actor's mode, a sample
    labeler, labels = None, []
    if expert_labels:
        if config.env != "metaworld":
            raise ValueError(f"--expert_labels labels states with MetaWorld's scripted experts; the "
                             f"workdir's env is {config.env!r}.")
        from twostage_jax.envs.metaworld_labels import ExpertLabeler

        labeler = ExpertLabeler(config.task, env.config)
    try:
        for s in range(num):
            p1 = jax.tree_util.tree_map(lambda x: x[s], params1)
            p2 = jax.tree_util.tree_map(lambda x: x[s], params2) if two_stage else None
            steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

            def act(img, pose, cam, p1=p1, p2=p2, steps=steps):
                out = policy(p1, p2, img, pose, cam)
                if critic_samples and two_stage:
                    choices[min(int(np.asarray(out.choice)[0]), 2)] += 1
                steps.append((np.asarray(pose)[0], np.asarray(out.tentative)[0], np.asarray(out.action)[0]))
                if labeler is not None:  # where the demos would have gone from this state
                    episode.append((steps[-1][1], steps[-1][2], labeler.label(env)))
                return out

            for e, layout in enumerate(seeds):
                episode: list = []
                if labeler is not None:
                    labeler.begin(layout)
                ep = evaluation.rollout(env, act, layout)
                labels.extend((*step, k, bool(ep.success)) for k, step in enumerate(episode))
                success[s, e] = ep.success
                budget[s, e] = (not ep.success) and ep.num_steps >= env.max_keyframes
        # per-step stall measures, pooled over seeds and episodes
            z, a1, a = (np.stack(x) for x in zip(*steps))
            xz, x1, xa = (np.asarray(tj.action_to_pose(v, ws)[0]) for v in (z, a1, a))
            d1, da = np.linalg.norm(x1 - xz, axis=-1), np.linalg.norm(xa - xz, axis=-1)
            small.append(da < SMALL_MOVE_M)
            pull.append(100 * (d1 - da))
    finally:
        env.close()
        if labeler is not None:
            labeler.close()
    small_all, pull_all = np.concatenate(small), np.concatenate(pull)
    return {"success_per_seed": success.mean(axis=1).tolist(), "success": float(success.mean()),
            "episodes": success.astype(int).tolist(), "at_budget": float(budget.mean()),
            "small_moves": float(small_all.mean()), "pull_cm": float(pull_all.mean()),
            "steps": int(small_all.size),
            **({"critic_choices": dict(zip(("no_correction", "mode", "sample"), choices.tolist()))}
               if critic_samples and two_stage else {}),
            **({"expert_labels": label_errors(labels, ws)} if expert_labels else {})}


def label_errors(labels: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, int, bool]], ws: Any) -> dict:
    """The closed-loop errors against the scripted expert's labels of the states reached.

    Args:
      labels: per step, (tentative [7], executed [7], the expert's label [7] or None, the step's
        index in its episode, whether that episode succeeded).
      ws: the workspace.

    Returns:
      `labelled` / `unlabelled` steps; the median and 90th percentile position error (cm) of the
      tentative and of the executed action; the per-axis std and mean of the tentative
      action's error in atanh space (the open-loop `stage1_eps_std` and calibration's sigma
      are in the same units); and under `first_step`, `succeeded` and `failed`, the steps and
      median errors of episodes' first steps (states the demos start from), and of the steps
      of succeeded and of failed episodes (a failed one can reach states where the expert
      would start its task over).
    """
    import jax.numpy as jnp

    import twostage_jax as tj

    kept = [(t, a, y, k, ok) for t, a, y, k, ok in labels if y is not None]
    out: dict[str, Any] = {"labelled": len(kept), "unlabelled": len(labels) - len(kept)}
    if not kept:
        return out
    t, a, y = (np.stack(v) for v in list(zip(*kept))[:3])
    index, succeeded = np.asarray([x[3] for x in kept]), np.asarray([x[4] for x in kept])
    pos = lambda v: np.asarray(tj.action_to_pose(jnp.asarray(v), ws)[0])
    cm = {name: 100 * np.linalg.norm(pos(v) - pos(y), axis=-1) for name, v in (("tentative", t), ("executed", a))}
    for name, v in cm.items():
        out[f"{name}_cm_median"], out[f"{name}_cm_p90"] = float(np.median(v)), float(np.quantile(v, 0.9))
    eps = np.asarray(tj.atanh_clipped(jnp.asarray(y)) - tj.atanh_clipped(jnp.asarray(t)))
    out["tentative_eps_std"] = eps.std(axis=0).round(4).tolist()
    out["tentative_eps_mean"] = eps.mean(axis=0).round(4).tolist()
    for part, rows in (("first_step", index == 0), ("succeeded", succeeded), ("failed", ~succeeded)):
        out[part] = {"steps": int(rows.sum()),
                     **{f"{name}_cm_median": float(np.median(v[rows])) if rows.any() else None
                        for name, v in cm.items()}}
    return out


def validate(workdir: Path, name: str, episodes: int, seed: int, held_out: int, held_out_seed: int,
             perturbations: int, out: Path, correction_passes: int = 1,
             corrected_dims: tuple[int, ...] | None = None, critic_samples: int = 0,
             expert_labels: bool = False) -> dict:
    """Open-loop diagnostics and closed-loop validation of one stage-2 run; writes its report."""
    import jax

    from experiments.studies import diagnose
    from twostage_jax.launch.evaluate import eval_seeds
    from twostage_jax.launch.selection import policy_params
    from twostage_jax._io import write_json_atomic
    from twostage_jax.launch.launch_config import to_dict
    from twostage_jax.launch.refine import acting_configs
    from twostage_jax.launch.workdir import check_unused_layouts, load_demos

    config = run_config(workdir, name)
    if critic_samples and config.stage2.refines:
        raise Skipped(f"{name} refines {config.stage2.refines!r}, and the critic chooses among one "
                      "correction's candidates only.")
    seeds = list(range(seed, seed + episodes))
    forbidden = set(eval_seeds(config, workdir))  # also checks the demo seeds
    stats = json.loads((workdir / "demos" / "stats.json").read_text())
    forbidden |= set(stats.get("demo_seeds", []))
    if forbidden.intersection(seeds):
        raise ValueError(f"--seed={seed}: validation layouts overlap the demo or evaluation seeds.")
    train = load_demos(workdir)
    p1, step1 = policy_params(config, workdir, 1, train)  # [S] steps: selected, or the latest
    p2, step2 = policy_params(config, workdir, 2, train)
    start = time.perf_counter()
    report: dict[str, Any] = {"workdir": recorded_path(workdir), "task": config.task, "algo": config.algo,
                              "stage2_name": name, "stage1_step": max(step1), "stage2_step": max(step2),
                              "stage1_steps": step1, "stage2_steps": step2,
                              "num_seeds": int(config.num_seeds), "held_out_seeds": [seeds[0], seeds[-1]],
                              "config": to_dict(config)}
    if held_out > 0 and not critic_samples:
        check_unused_layouts(config, workdir, held_out_seed, held_out, f"--held_out_seed={held_out_seed}")
        test = diagnose.held_out_dataset(config, workdir, held_out, held_out_seed)
        pooled: dict[str, list] = {}
        for s in range(int(config.num_seeds)):
            pick = lambda x, s=s: x[s]
            m = diagnose.measure(config, jax.tree_util.tree_map(pick, p1), jax.tree_util.tree_map(pick, p2),
                                 test, np.arange(test.action.shape[0]), jax.random.PRNGKey(1000 + s),
                                 perturbations, workdir, correction_passes, corrected_dims)
            for k, v in m.items():
                pooled.setdefault(k, []).append(v)
        c2 = acting_configs(config, workdir)[0].stage2  # (the first pass's, as `measure` draws with)
        report["held_out"] = diagnose.summarise({k: np.concatenate(v) for k, v in pooled.items()},
                                                c2.crop_size, c2.sigma)
    cache = out / f"stage1_{'-'.join(str(k) for k in dict.fromkeys(step1))}_{seeds[0]}_{episodes}.json"
    cached = read_own(cache, workdir)
    if cached is not None and (not expert_labels or "failed" in cached.get("expert_labels", {})):
        report["stage1"] = cached
    else:
        report["stage1"] = closed_loop(config, workdir, p1, None, seeds, two_stage=False,
                                       expert_labels=expert_labels)
        write_json_atomic(cache, {**report["stage1"], "workdir": recorded_path(workdir)})
    report["two_stage"] = closed_loop(config, workdir, p1, p2, seeds, two_stage=True,
                                      correction_passes=correction_passes, corrected_dims=corrected_dims,
                                      critic_samples=critic_samples, expert_labels=expert_labels)
    report["correction_passes"] = correction_passes
    report["critic_samples"] = critic_samples
    report["corrected_dims"] = None if corrected_dims is None else list(corrected_dims)
    report["seconds"] = time.perf_counter() - start
    write_json_atomic(out / report_name(name, correction_passes, corrected_dims, critic_samples), report)
    return report


def row(r: dict) -> str:
    """One markdown table row of a report."""
    h = r.get("held_out", {})
    s1, two = r["stage1"], r["two_stage"]
    opened = (f"{h['stage1_cm_median']:.2f} -> {h['two_stage_cm_median']:.2f} | "
              f"{h['algo1_perturbed_cm_median']:.2f} -> {h['algo1_corrected_cm_median']:.2f} | "
              f"{h.get('pert_fixed_along_cm_median', float('nan')):.2f} / "
              f"{h.get('pert_fixed_across_cm_median', float('nan')):.2f} | "
              f"{h['stage1_gripper_agree']:.2f} / {h['two_stage_gripper_agree']:.2f} | "
              f"{h.get('stage1_deg_median', float('nan')):.2f} -> "
              f"{h.get('two_stage_deg_median', float('nan')):.2f}") if h else "- | - | - | - | -"
    name = r["stage2_name"] + _acting_label(r)
    return (f"| {r['task']} | {r['algo']} | {name} | {opened} | {s1['success']:.2f} -> "
            f"{two['success']:.2f} | {two['at_budget']:.2f} | {two['small_moves']:.2f} | "
            f"{two['pull_cm']:+.2f} |")


HEADER = ("| task | algo | stage 2 | held-out err cm s1 -> two | Algo.1 residual cm before -> after "
          "| residual along / across axis cm | gripper agree s1 / two | orientation err deg s1 -> two "
          "| validation success s1 -> two | at budget | moves < 1 cm | pull to z cm |\n|" + "---|" * 12)


def _dims_code(dims: Any) -> str:
    """'1110001' for corrected_dims (1, 1, 1, 0, 0, 0, 1)."""
    return "".join(str(int(d)) for d in dims)


def _dims_label(r: dict) -> str:
    """' dims 1110001' for a report acting with corrected_dims, else ''."""
    dims = r.get("corrected_dims")
    return f" dims {_dims_code(dims)}" if dims is not None else ""


def _acting_label(r: dict) -> str:
    """' x2 passes', ' dims 1110001', ' critic 4', several or '' for a report's acting options."""
    passes, critic = int(r.get("correction_passes", 1)), int(r.get("critic_samples", 0))
    return (f" x{passes} passes" if passes > 1 else "") + _dims_label(r) + (f" critic {critic}" if critic else "")


def summary_table(folder: Path) -> str:
    """Markdown: one row per report under `folder`, then each arm's mean validation success over
    the tasks it ran on (arm: the workdir's folder name, the stage-2 name and the passes)."""
    rows, arms = [HEADER], {}
    for path in sorted(folder.rglob("*.json")):
        r = json.loads(path.read_text())
        if "two_stage" not in r or "task" not in r:  # stage-1 caches
            continue
        rows.append(row({**r, "stage2_name": f"{Path(r['workdir']).name}/{r['stage2_name']}"}))
        arm = (Path(r["workdir"]).name, r["stage2_name"] + _dims_label(r)
               + (f" critic {r['critic_samples']}" if r.get("critic_samples") else ""),
               int(r.get("correction_passes", 1)))
        arms.setdefault(arm, []).append((r["task"], r["stage1"]["success"], r["two_stage"]["success"]))
    rows += ["", "| workdir | stage 2 | passes | tasks | stage 1 | two-stage | gain |", "|---|---|---|---|---|---|---|"]
    for (wd, name, passes), v in sorted(arms.items()):
        s1, two = np.mean([x[1] for x in v]), np.mean([x[2] for x in v])
        rows.append(f"| {wd} | {name} | {passes} | {', '.join(x[0] for x in v)} | {s1:.2f} | {two:.2f} | "
                    f"{two - s1:+.2f} |")
    return "\n".join(rows) + "\n"


def report_name(name: str, correction_passes: int, corrected_dims: Any = None,
                critic_samples: int = 0) -> str:
    """`NAME.json`; `_pN` is added for N > 1 correction passes, `_dFLAGS` for corrected_dims,
    `_cK` for a critic choosing among K samples."""
    passes = "" if correction_passes == 1 else f"_p{correction_passes}"
    dims = "" if corrected_dims is None else f"_d{_dims_code(corrected_dims)}"
    critic = f"_c{critic_samples}" if critic_samples else ""
    return f"{name}{passes}{dims}{critic}.json"


def recorded_path(path: Path) -> str:
    """`path` as reports record it: relative to the repository when inside it (so committed
    reports name no machine's checkout), else as given."""
    try:
        return Path(path).absolute().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def read_own(path: Path, workdir: Path) -> dict | None:
    """A report or stage-1 cache written for `workdir`, or None if there is none.

    Raises:
      ValueError: `path` was written for another workdir (two workdirs sharing one TAG).
    """
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    if r.get("workdir", str(workdir)) not in (recorded_path(workdir), str(workdir)):
        raise ValueError(f"{path} was written for --workdir={r['workdir']}, not {workdir} (both "
                         f"folders are called {workdir.name!r}); pass another --out for this one.")
    return r


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}.")
    from twostage_jax.launch.errors import PipelineError

    if FLAGS.summary_of:
        if not Path(FLAGS.summary_of).is_dir():
            raise app.UsageError(f"--summary_of={FLAGS.summary_of} is not a folder.")
        print(summary_table(Path(FLAGS.summary_of)), end="")
        return 0
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required.")
    if FLAGS.correction_passes < 1:
        raise app.UsageError(f"--correction_passes must be >= 1; got {FLAGS.correction_passes}.")
    dims = None
    if FLAGS.corrected_dims is not None:
        import twostage_jax as tj

        given = [int(d) if d.strip() in ("0", "1") else d for d in FLAGS.corrected_dims]
        try:
            dims = tuple(int(d) for d in tj.check_corrected_dims(given))
        except tj.ConfigError as e:
            raise app.UsageError(f"--{e.field} {e.message}") from None
    if FLAGS.episodes <= 0:
        raise app.UsageError(f"--episodes must be > 0; got {FLAGS.episodes}.")
    if FLAGS.critic_samples < 0:
        raise app.UsageError(f"--critic_samples must be >= 0; got {FLAGS.critic_samples}.")
    workdir = Path(FLAGS.workdir).absolute()
    out = Path(FLAGS.out) / workdir.name
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(out.glob("*.json")):  # before any work: is this folder another workdir's?
        try:
            read_own(path, workdir)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    print(HEADER)
    for name in FLAGS.names:
        path = out / report_name(name, FLAGS.correction_passes, dims, FLAGS.critic_samples)
        r = read_own(path, workdir)
        if r is None or FLAGS.force:
            try:
                r = validate(workdir, name, FLAGS.episodes, FLAGS.seed, FLAGS.held_out,
                             FLAGS.held_out_seed, FLAGS.perturbations, out, FLAGS.correction_passes,
                             dims, FLAGS.critic_samples, FLAGS.expert_labels)
            except (FileNotFoundError, Skipped) as e:
                print(f"skip {name}: {e}", file=sys.stderr)
                continue
            except PipelineError as e:  # --held_out_seed's layouts are the workdir's
                raise app.UsageError(str(e)) from None
        print(row(r), flush=True)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
