"""Why does (or doesn't) the correction stage help? Measurements on held-out demonstrations.

For each trained run of the 8-task study (`experiments/studies/reproduce.py` layout) this measures, on
demos recorded from layout seeds used neither for training nor for evaluation, and on a sample
of the training transitions for comparison:
  * stage 1's position error, in centimetres and in pixels of the 128x128 camera image, against
    the half-width of the stage-2 crop;
  * how often the demo's target position falls outside the stage-2 crop centred on stage 1's
    tentative action (in the crop's rotated frame);
  * the two-stage policy's position error, orientation error (the angle of the rotation between
    the predicted and the demo's hand orientation) and gripper agreement against stage 1 alone;
  * the correction's accuracy on Algo. 1's own perturbations (a^1 = tanh(atanh(a) - eps),
    eps ~ N(0, sigma^2), the distribution stage 2 was trained on): error before and after the
    correction;
  * stage 1's error expressed like Algo. 1's eps (atanh space), to compare with sigma.

Usage:
  python -m experiments.studies.diagnose --root=runs/repro --tasks=push-v3,reach-v3
Writes one `OUT/reports/TASK_ALGO_STAGE2NAME.json` per run (existing ones are kept unless
--force) and `OUT/diagnostics.md` from all of them (default ROOT/diagnostics; the committed ones:
--out=experiments/results/current/eight_tasks/diagnostics).
Nothing here reads evaluation episodes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from twostage_jax.envs.metaworld import DEFAULT_TASKS

REPO = Path(__file__).resolve().parents[2]
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this script's absl flags (only when run as a script, so importing this module
    beside the other experiment scripts never defines a flag twice)."""
    flags.DEFINE_string("root", "runs/repro", "The sweep's root folder (TASK/ALGO workdirs).")
    flags.DEFINE_list("tasks", list(DEFAULT_TASKS), "Tasks to diagnose (those with finished runs).")
    flags.DEFINE_list("algos", ["bc", "cql"], "Algorithms to diagnose.")
    flags.DEFINE_string("stage2_name", "stage2", "Which stage-2 run of each workdir to diagnose.")
    flags.DEFINE_integer("held_out", 20, "Held-out demos per task.")
    flags.DEFINE_integer("held_out_seed", 50_000, "First layout seed of the held-out demos.")
    flags.DEFINE_integer("train_sample", 300, "Training transitions sampled for comparison.")
    flags.DEFINE_integer("perturbations", 4, "Algo. 1 draws per transition.")
    flags.DEFINE_string("out", None, "Output folder (default: ROOT/diagnostics): one "
                        "reports/TASK_ALGO_STAGE2NAME.json per run, plus diagnostics.md built from all "
                        "reports there.")
    flags.DEFINE_bool("force", False, "Recompute reports that already exist in --out.")



def held_out_dataset(config: Any, task_root: Path, num: int, seed: int):
    """Records (once, then caches) `num` held-out demos of the task as a `Dataset`, from the
    cameras the run was trained with."""
    from twostage_jax.data.dataset import build_dataset, load_dataset, save_dataset

    views = "" if config.cameras is None else "_" + "-".join(config.cameras)
    path = task_root / "heldout" / f"dataset_{seed}_{num}{views}.npz"
    if path.exists():
        return load_dataset(path)
    from twostage_jax.envs.metaworld_demos import record_demos
    from twostage_jax.envs.metaworld import MetaWorldConfig, default_workspace

    d = config.demos
    env_cfg = MetaWorldConfig(width=int(d.image_size), height=int(d.image_size),
                              max_keyframes=int(d.max_keyframes), cameras=config.camera_names())
    trajs, _ = record_demos(config.task, num, seed=seed, augment_every=10**6, env_config=env_cfg)
    ds = build_dataset(trajs, default_workspace(), gamma=float(d.gamma), augment_every=10**6)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dataset(path, ds)
    return ds


def orientation_error_deg(a: np.ndarray, b: np.ndarray, ws: Any) -> np.ndarray:
    """Angle, in degrees, of the rotation between two actions' hand orientations.

    Args:
      a, b: [B, 7] normalised actions (orientation in dims 3:6, extrinsic x-y-z Euler / pi).
      ws: their `Workspace`.

    Returns:
      [B] geodesic angles in [0, 180]: arccos((trace(R_a^T R_b) - 1) / 2).
    """
    import jax.numpy as jnp

    import twostage_jax as tj

    ra, rb = (np.asarray(tj.euler_to_matrix(tj.action_to_pose(jnp.asarray(x), ws)[1]), np.float64)
              for x in (a, b))
    cos = (np.einsum("bij,bij->b", ra, rb) - 1.0) / 2.0  # trace(Ra^T Rb)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def measure(config: Any, params1: Any, params2: Any, ds: Any, index: np.ndarray, key: Any,
            perturbations: int, workdir: Path | None = None,
            correction_passes: int = 1, corrected_dims: Any = None) -> dict[str, np.ndarray]:
    """Per-transition measurements of one seed's stage 1 and two-stage policy.

    `correction_passes` and `corrected_dims` are `make_policy`'s (how many times stage 2
    corrects, and which action dimensions).

    Returns:
      Arrays over the transitions in `index` (perturbation arrays over transitions x draws).
    """
    import jax
    import jax.numpy as jnp

    import twostage_jax as tj
    from twostage_jax.launch.refine import acting_configs
    from twostage_jax.launch.workdir import train_config

    c1, (c2, refining) = train_config(config, 1), acting_configs(config, workdir)
    s2 = c2.stage2  # (a refining run's: the first pass's, whose sigma Algo. 1 draws with)
    act = tj.make_policy(c1, c2, ds.workspace, correction_passes=correction_passes,
                         corrected_dims=corrected_dims, refine=refining)
    cam = ds.camera(0)  # the first camera (fixed), which the pixel measures use
    cam = tj.Camera(jnp.asarray(cam.intrinsics), jnp.asarray(cam.cam_to_world), cam.width, cam.height)
    ws = ds.workspace

    def to_world(a):
        return np.asarray(tj.action_to_pose(jnp.asarray(a), ws)[0])

    def to_px(a):
        return np.asarray(tj.project_points(cam, jnp.asarray(to_world(a)))[0])

    axis = np.asarray(cam.cam_to_world)[:3, 2]  # the optical axis (camera z) in the world

    def split(a, true_w):
        """cm of the position error along the optical axis and across it."""
        r = to_world(a) - true_w
        along = r @ axis
        return 100 * np.abs(along), 100 * np.linalg.norm(r - along[:, None] * axis, axis=-1)

    out: dict[str, list] = {k: [] for k in ("s1_cm", "s1_px", "out_of_crop", "two_cm", "s1_grip_ok",
                                             "two_grip_ok", "s1_eps", "pert_cm", "pert_fixed_cm",
                                             "pert_out_of_crop", "s1_along_cm", "s1_across_cm",
                                             "two_along_cm", "two_across_cm", "pert_fixed_along_cm",
                                             "pert_fixed_across_cm", "s1_deg", "two_deg")}
    for lo in range(0, len(index), 64):
        idx = index[lo:lo + 64]
        img, cams = ds.observed(np.asarray(ds.obs_index)[idx])  # every view (the first's camera: `cam`)
        img = jnp.asarray(img)
        cams = cam if ds.num_views == 1 else cams
        pose = jnp.asarray(ds.pose[idx])
        a = np.asarray(ds.action[idx])
        o = act(params1, params2, img, pose, cams)
        a1, af = np.asarray(o.tentative), np.asarray(o.action)
        true_w, true_px = to_world(a), to_px(a)
        out["s1_cm"].append(100 * np.linalg.norm(to_world(a1) - true_w, axis=-1))
        out["two_cm"].append(100 * np.linalg.norm(to_world(af) - true_w, axis=-1))
        out["s1_px"].append(np.linalg.norm(to_px(a1) - true_px, axis=-1))
        out["s1_deg"].append(orientation_error_deg(a1, a, ws))
        out["two_deg"].append(orientation_error_deg(af, a, ws))
        for name, arr in (("s1", a1), ("two", af)):
            along, across = split(arr, true_w)
            out[f"{name}_along_cm"].append(along)
            out[f"{name}_across_cm"].append(across)
        out["out_of_crop"].append(_outside(cam, a1, true_px - to_px(a1), s2.crop_size, s2.rotate, ws))
        out["s1_grip_ok"].append((a1[:, 6] >= 0) == (a[:, 6] >= 0))
        out["two_grip_ok"].append((af[:, 6] >= 0) == (a[:, 6] >= 0))
        out["s1_eps"].append(np.asarray(tj.atanh_clipped(jnp.asarray(a)) - tj.atanh_clipped(jnp.asarray(a1))))
        cm, fixed, outside, f_along, f_across = [], [], [], [], []
        for _ in range(perturbations):
            key, sub = jax.random.split(key)
            p1, _ = tj.sample_tentative(sub, jnp.asarray(a), s2.sigma)
            p1 = np.asarray(p1)
            op = act(params1, params2, img, pose, cams, tentative=p1)
            cm.append(100 * np.linalg.norm(to_world(p1) - true_w, axis=-1))
            fixed.append(100 * np.linalg.norm(to_world(np.asarray(op.action)) - true_w, axis=-1))
            along, across = split(np.asarray(op.action), true_w)
            f_along.append(along)
            f_across.append(across)
            outside.append(_outside(cam, p1, true_px - to_px(p1), s2.crop_size, s2.rotate, ws))
        out["pert_cm"].append(np.stack(cm, 1))
        out["pert_fixed_cm"].append(np.stack(fixed, 1))
        out["pert_out_of_crop"].append(np.stack(outside, 1))
        out["pert_fixed_along_cm"].append(np.stack(f_along, 1))
        out["pert_fixed_across_cm"].append(np.stack(f_across, 1))
    return {k: np.concatenate(v) for k, v in out.items()}


def _outside(cam: Any, a1: np.ndarray, offset_px: np.ndarray, crop: int, rotate: bool, ws: Any) -> np.ndarray:
    """Whether the target (at `offset_px` from the crop centre) lies outside the rotated crop."""
    import jax
    import jax.numpy as jnp

    import twostage_jax as tj

    if rotate:
        euler = tj.action_to_pose(jnp.asarray(a1), ws)[1]
        ang = np.asarray(jax.vmap(lambda e: tj.optical_axis_angle(cam, e))(euler))
    else:
        ang = np.zeros(len(a1))
    c, s = np.cos(ang), np.sin(ang)
    # crop pixel offsets (b, a) map to image offsets R(angle) @ (b, a); invert with R^T
    x = c * offset_px[:, 0] + s * offset_px[:, 1]
    y = -s * offset_px[:, 0] + c * offset_px[:, 1]
    half = crop / 2.0
    return (np.abs(x) >= half) | (np.abs(y) >= half)


def summarise(m: dict[str, np.ndarray], crop: int, sigma: Any) -> dict[str, Any]:
    """Scalar summaries of `measure`'s arrays (pooled over seeds)."""
    s1, two = m["s1_cm"], m["two_cm"]
    return {
        "transitions": int(len(s1)),
        "crop_size": int(crop),
        "stage1_cm_median": float(np.median(s1)), "stage1_cm_p90": float(np.percentile(s1, 90)),
        "stage1_px_median": float(np.median(m["s1_px"])),
        "stage1_px_p90": float(np.percentile(m["s1_px"], 90)),
        "stage1_px_p99": float(np.percentile(m["s1_px"], 99)),
        "target_out_of_crop": float(m["out_of_crop"].mean()),
        "two_stage_cm_median": float(np.median(two)), "two_stage_cm_p90": float(np.percentile(two, 90)),
        "two_stage_better": float((two < s1).mean()),
        **({"stage1_deg_median": float(np.median(m["s1_deg"])),
            "two_stage_deg_median": float(np.median(m["two_deg"]))} if "s1_deg" in m else {}),
        "stage1_gripper_agree": float(m["s1_grip_ok"].mean()),
        "two_stage_gripper_agree": float(m["two_grip_ok"].mean()),
        "stage1_eps_std": np.std(m["s1_eps"], axis=0).round(4).tolist(),
        "algo1_sigma": [float(x) for x in sigma],
        "algo1_perturbed_cm_median": float(np.median(m["pert_cm"])),
        "algo1_corrected_cm_median": float(np.median(m["pert_fixed_cm"])),
        "algo1_target_out_of_crop": float(m["pert_out_of_crop"].mean()),
        # the residual split along / across the camera's optical axis (depth is what a crop
        # cannot show), medians in cm
        **{f"{k}_cm_median": float(np.median(m[f"{k}_cm"])) for k in (
            "s1_along", "s1_across", "two_along", "two_across", "pert_fixed_along",
            "pert_fixed_across") if f"{k}_cm" in m},
    }


def diagnose(root: Path, task: str, algo: str, stage2_name: str, held_out: int, held_out_seed: int,
             train_sample: int, perturbations: int) -> dict[str, Any]:
    """Runs `measure` for every seed of one workdir on held-out and training transitions."""
    import jax

    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.workdir import train_config
    from twostage_jax.launch.launch_config import from_dict
    from twostage_jax.launch.selection import policy_params
    from twostage_jax.launch.workdir import check_unused_layouts, load_demos

    workdir = root / task / algo
    name = "eval" if stage2_name == "stage2" else f"eval_{stage2_name}"
    results_path = workdir / name / "results.json"
    if not (workdir / stage2_name / "summary.json").exists():
        raise FileNotFoundError(f"{workdir / stage2_name} has no finished stage 2: finish the run "
                                "first (python -m experiments.studies.reproduce).")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    record = workdir / stage2_name / "config.json"  # the config stage 2 was started with
    if "config" in results:  # the exact config the run was evaluated with
        config = from_dict(results["config"])
    else:
        config = from_dict(json.loads(record.read_text())["config"])
    try:
        check_unused_layouts(config, workdir, held_out_seed, held_out, f"--held_out_seed={held_out_seed}")
    except PipelineError as e:
        raise app.UsageError(str(e)) from e
    train = load_demos(workdir)
    test = held_out_dataset(config, root / task, held_out, held_out_seed)
    p1, _ = policy_params(config, workdir, 1, train)
    p2, _ = policy_params(config, workdir, 2, train)
    rng = np.random.default_rng(0)
    splits = {"held_out": (test, np.arange(test.action.shape[0])),
              "train": (train, rng.choice(train.action.shape[0], min(train_sample, train.action.shape[0]),
                                          replace=False))}
    report: dict[str, Any] = {"task": task, "algo": algo, "stage2_name": stage2_name,
                              "num_seeds": int(config.num_seeds), "held_out_demos": held_out,
                              "held_out_seeds_from": held_out_seed}
    c2 = train_config(config, 2, workdir).stage2
    for split, (ds, index) in splits.items():
        pooled: dict[str, list] = {}
        for s in range(int(config.num_seeds)):
            pick = lambda x, s=s: x[s]
            m = measure(config, jax.tree_util.tree_map(pick, p1), jax.tree_util.tree_map(pick, p2),
                        ds, index, jax.random.PRNGKey(1000 + s), perturbations, workdir)
            for k, v in m.items():
                pooled.setdefault(k, []).append(v)
        report[split] = summarise({k: np.concatenate(v) for k, v in pooled.items()}, c2.crop_size, c2.sigma)
    return report


def to_markdown(reports: list[dict[str, Any]]) -> str:
    """The diagnostics table (held-out rows, with training rows for comparison)."""
    head = ("| task | algo | stage 2 | split | stage-1 err cm (median / p90) | stage-1 err px (median / p90) "
            "| crop half-width px | target outside crop | two-stage err cm (median / p90) "
            "| two-stage closer | orientation err deg s1 -> two | gripper agree s1 / two | Algo.1 err cm before -> after correction "
            "| stage-1 eps std (x, y, z) vs sigma |")
    rows = [head, "|" + "---|" * 14]
    for r in reports:
        for split in ("held_out", "train"):
            d = r[split]
            rows.append(
                f"| {r['task']} | {r['algo']} | {r['stage2_name']} | {split} "
                f"| {d['stage1_cm_median']:.2f} / {d['stage1_cm_p90']:.2f} "
                f"| {d['stage1_px_median']:.2f} / {d['stage1_px_p90']:.2f} | {d['crop_size'] / 2:.0f} "
                f"| {d['target_out_of_crop']:.1%} "
                f"| {d['two_stage_cm_median']:.2f} / {d['two_stage_cm_p90']:.2f} "
                f"| {d['two_stage_better']:.0%} "
                f"| {d.get('stage1_deg_median', float('nan')):.2f} -> "
                f"{d.get('two_stage_deg_median', float('nan')):.2f} "
                f"| {d['stage1_gripper_agree']:.2f} / {d['two_stage_gripper_agree']:.2f} "
                f"| {d['algo1_perturbed_cm_median']:.2f} -> {d['algo1_corrected_cm_median']:.2f} "
                f"| {', '.join(f'{x:.3f}' for x in d['stage1_eps_std'][:3])} vs {d['algo1_sigma'][0]:g} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}.")
    from twostage_jax._io import atomic_open
    from twostage_jax._io import write_json_atomic

    root = Path(FLAGS.root).absolute()
    out = Path(FLAGS.out) if FLAGS.out else root / "diagnostics"
    (out / "reports").mkdir(parents=True, exist_ok=True)
    for task in FLAGS.tasks:
        for algo in FLAGS.algos:
            path = out / "reports" / f"{task}_{algo}_{FLAGS.stage2_name}.json"
            if path.exists() and not FLAGS.force:
                continue
            try:
                r = diagnose(root, task, algo, FLAGS.stage2_name, FLAGS.held_out, FLAGS.held_out_seed,
                             FLAGS.train_sample, FLAGS.perturbations)
            except FileNotFoundError as e:
                print(f"skip {task}/{algo}: {e}", file=sys.stderr)
                continue
            write_json_atomic(path, r)
            h = r["held_out"]
            print(f"{task} {algo}: held-out stage-1 {h['stage1_cm_median']:.2f} cm / "
                  f"{h['stage1_px_median']:.2f} px, outside crop {h['target_out_of_crop']:.1%}, "
                  f"two-stage {h['two_stage_cm_median']:.2f} cm, closer {h['two_stage_better']:.0%}",
                  flush=True)
    order = {t: i for i, t in enumerate(DEFAULT_TASKS)}
    reports = sorted((json.loads(p.read_text()) for p in (out / "reports").glob("*.json")),
                     key=lambda r: (order.get(r["task"], len(order)), r["task"], r["algo"], r["stage2_name"]))
    if not reports:
        print(f"error: no finished runs under {root} for tasks {FLAGS.tasks}.", file=sys.stderr)
        return 2
    with atomic_open(out / "diagnostics.md", "w") as f:
        f.write(to_markdown(reports))
    print(f"wrote {out / 'diagnostics.md'}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
