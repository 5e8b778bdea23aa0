"""One keyframe of a trained run's held-out demos in every camera, with stage 1's tentative
(red) and the executed (green) positions drawn, above each view's stage-2 crop.

    python -m experiments.tools.view_crops --workdir=runs/cams/peg-insert-side-v3 \\
        --out=docs/figures/view_crops.png

The workdir's stage 1 and stage 2 act as they would (each seed's selected or latest checkpoint;
seed 0 is drawn) on the held-out demos' transition `--transition`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A launcher workdir with both stages trained.", required=True)
flags.DEFINE_string("out", "runs/view_crops.png", "The PNG to write.")
flags.DEFINE_string("stage2_name", "stage2", "The stage 2's folder in the workdir.")
flags.DEFINE_integer("transition", 0, "Which held-out transition to draw.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}.")
    import twostage_jax as tj
    from experiments.studies.validate import run_config
    from twostage_jax.evaluation import plots
    from twostage_jax.launch.selection import policy_params
    from twostage_jax.launch.workdir import load_demos, load_held_out, train_config

    workdir = Path(FLAGS.workdir)
    config = run_config(workdir, FLAGS.stage2_name)
    held_out = load_held_out(workdir)
    if held_out is None:
        raise app.UsageError(f"{workdir} has no held-out demos (demos/held_out.npz).")
    if not 0 <= FLAGS.transition < held_out.num_transitions:
        raise app.UsageError(f"--transition must lie in [0, {held_out.num_transitions}); got {FLAGS.transition}.")
    train = load_demos(workdir)
    seed0 = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
    p1, p2 = (seed0(policy_params(config, workdir, k, train)[0]) for k in (1, 2))
    c1, c2 = train_config(config, 1), train_config(config, 2, workdir)
    frame = np.asarray(held_out.obs_index)[FLAGS.transition:FLAGS.transition + 1]
    images, cams = held_out.observed(frame)
    pose = jnp.asarray(held_out.pose[FLAGS.transition:FLAGS.transition + 1])
    out = tj.make_policy(c1, c2, held_out.workspace)(p1, p2, jnp.asarray(images), pose, cams)
    if held_out.num_views == 1:  # one camera: a view axis of one
        images, cams = images[:, None], jax.tree_util.tree_map(lambda x: np.asarray(x)[None, None], cams)
    obs = tj.transform_batch(jnp.asarray(images), pose, out.tentative, cams, held_out.workspace, c2.stage2)
    crops = obs.crop if obs.crop.ndim == 5 else obs.crop[:, None]
    plots.view_crops(images[0], jax.tree_util.tree_map(lambda x: np.asarray(x)[0], cams), held_out.workspace,
                     np.asarray(out.tentative)[0], np.asarray(out.action)[0], np.asarray(crops)[0],
                     Path(FLAGS.out), names=config.camera_names() if config.data.source == "sim" else None)
    print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
