"""Shared defaults for the launcher's ml_collections configs.

A config file's `get_config(arg)` takes an optional comma-separated variant string, e.g.
`--config=experiments/configs/paper.py:cql,direct,td`:
  * `bc` | `cql`: the algorithm of both stages (BC uses 64x64 crops, CQL 32x32, as in the paper);
  * `correction` | `direct`: stage 2 predicts a correction (Eq. 6) or the final action;
  * `mc` | `td`: CQL's Q target (Monte Carlo return or TD backup with a target network), both
    stages; `--config.stage2.cql_target=td` changes stage 2 only (the paper's MC-vs-TD study);
  * `paper`: the paper's method exactly: every option this library adds to the method (see
    `paper_method`) is set back to the paper's choice, whatever the config's defaults are.
Any field can also be overridden with dotted flags, e.g. `--config.stage2.crop_size=16`.
"""

from __future__ import annotations

import os

import ml_collections

DEFAULT_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "button-press-topdown-v3",
                 "drawer-open-v3", "door-open-v3", "peg-insert-side-v3", "basketball-v3")
VARIANTS = {"bc", "cql", "correction", "direct", "mc", "td", "paper"}


def _num_cores() -> int:
    """CPU cores this process may run on: the default number of evaluation workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def network(conv_channels=(32, 32, 32, 32), crop_conv_channels=(32, 32, 32), mlp_hidden=64,
            head_hidden=(256, 256), conv_impl="auto", crop_encoder="flatten",
            coord_channels=False, keypoints=32, crop_conv_strides=(),
            stage2_pose_input=True) -> ml_collections.ConfigDict:
    """Network sizes (see `twostage_jax.NetworkConfig`); crop_conv_strides () = conv_strides."""
    return ml_collections.ConfigDict(dict(
        conv_channels=tuple(conv_channels), crop_conv_channels=tuple(crop_conv_channels),
        conv_strides=(2, 2, 2, 2), mlp_hidden=mlp_hidden, head_hidden=tuple(head_hidden),
        conv_impl=conv_impl, crop_encoder=crop_encoder, coord_channels=coord_channels,
        keypoints=keypoints, crop_conv_strides=tuple(crop_conv_strides),
        stage2_pose_input=stage2_pose_input))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.env = "metaworld"  # or 'rlbench' (needs CoppeliaSim, PyRep and RLBench for rollouts)
    c.rlbench_root = ""  # RLBench demos folder (TASK/variation0/episodes/...) when env='rlbench'
    c.task = "reach-v3"
    c.algo = "bc"
    c.seed = 0
    c.num_seeds = 1
    c.seed_strategy = "auto"  # 'auto' (sequential on CPU, vmap on GPU), 'vmap' or 'sequential'
    # 'all' (shard the seeds over every device when there are several; one device: unsharded)
    # or N (the first N devices; 1 = unsharded)
    c.seed_devices = "all"
    c.stage2_name = "stage2"  # folder of stage 2 in the workdir; name ablations to share stage 1

    c.demos = ml_collections.ConfigDict(dict(
        num_demos=100, seed=0, augment_every=10, gamma=0.99, image_size=128, max_keyframes=20,
        # held-out demos for calibration and per-chunk validation curves (0: none), layouts from
        # 60000 on (diagnose/validate record theirs from 50000, evaluation uses 100000+)
        num_validation=10, validation_seed=60_000))

    c.stage1 = ml_collections.ConfigDict(dict(
        num_steps=300_000, batch_size=128, learning_rate=3e-4, image_size=128,
        min_move=0.0,  # metres; see TrainConfig.min_move
        augment="none", shift_pad=4,  # 'shift': random shifts of the input frames (TrainConfig.augment)
        # CQL's learning rates for this stage only (0: config.cql.actor_lr / critic_lr)
        cql_actor_lr=0.0, cql_critic_lr=0.0,
        # CQL: whether the actor's loss trains this stage's encoder, and the weight of the
        # actor's BC term, for this stage only (None: config.cql's)
        cql_actor_encoder_grad=ml_collections.config_dict.placeholder(bool),
        cql_bc_weight=ml_collections.config_dict.placeholder(float),
        # 'last' (the latest checkpoint) or 'validation' (each seed's best candidate checkpoint
        # on config.select's validation layouts, experiments/selection.py); candidates:
        # select_steps, or () for every train.checkpoint_every steps (kept while training)
        select="last", select_steps=(),
        network=network()))
    c.stage2 = ml_collections.ConfigDict(dict(
        num_steps=300_000, batch_size=128, learning_rate=3e-4, crop_size=64, ee_crop_size=16,
        sigma=(0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0), mode="correction", rotate=True,
        cql_target="",  # '' = config.cql.target; 'mc' or 'td' for stage 2 only
        # Defaults chosen on held-out validation (README, "Correction stage"); ':paper' restores
        # the paper's method.
        # BC stage 2: 'auto' (= 'whiten' in correction mode), 'whiten' or 'none' (the paper's Eq. 1)
        loss_weighting="auto",
        gripper_clip=0.0,  # 0 = the paper's 0.99 clip; else the tentative gripper's bound (Stage2Config)
        # Calibration to stage 1's held-out residuals (needs demos.num_validation > 0), done
        # when stage 2 starts and kept in <stage2_name>/calibration.json:
        calibrate_sigma=True,  # sigma of the 6 pose dims from stage 1's errors (calibrate_sigma)
        sigma_floor=0.02,
        crop_coverage=0.95,  # crop_size=0 ('auto'): smallest crop holding this share of targets
        min_move=0.0,  # metres; see TrainConfig.min_move
        cql_actor_lr=0.0, cql_critic_lr=0.0,  # as in stage1 (0: config.cql's)
        cql_actor_encoder_grad=ml_collections.config_dict.placeholder(bool),  # as in stage1
        cql_bc_weight=ml_collections.config_dict.placeholder(float),
        select="last", select_steps=(),  # as in stage1 (judged as the two-stage policy)
        network=network()))
    # Checkpoint selection (stage1/stage2.select='validation'): validation layouts from seed
    # 200000 (disjoint from the demos, the held-out demos and the evaluation layouts), episodes
    # per training seed and candidate; per_seed: each seed its own step (else one for all).
    c.select = ml_collections.ConfigDict(dict(episodes=20, seed=200_000, per_seed=True))
    c.cql = ml_collections.ConfigDict(dict(
        cql_weight=5.0, num_samples=10, temperature=1.0, target="mc", gamma=0.99, tau=0.005,
        backup_entropy=False, init_alpha=0.1, actor_lr=1e-4, critic_lr=3e-4, alpha_lr=1e-4,
        actor_encoder_grad=False,  # True: the actor loss trains the shared encoder too
        bc_weight=0.0))  # > 0: a TD3+BC-style term in the actor loss (CQLConfig.bc_weight)

    c.train = ml_collections.ConfigDict(dict(log_every=1000, checkpoint_every=10_000, keep_checkpoints=3))
    # workers: simulator processes for rollouts (1 = in this process, one after another);
    # curve_steps: training steps (multiples of train.log_every, at most both stages' num_steps)
    # whose checkpoints are kept and evaluated for the learning curves (Fig. 4); set before
    # training. Results do not depend on the number of workers. correction_passes: times stage 2
    # corrects when acting (1, the paper; `make_policy`'s correction_passes); corrected_dims:
    # None (the paper: every dimension) or 7 flags of the dimensions the correction changes,
    # e.g. (1,1,1,0,0,0,1) keeps stage 1's orientation (`make_policy`'s corrected_dims).
    c.eval = ml_collections.ConfigDict(dict(
        num_episodes=100, seed=100_000, record_episodes=1, bootstrap_reps=2000,
        workers=_num_cores(), curve_steps=(), correction_passes=1,
        corrected_dims=ml_collections.config_dict.placeholder(tuple)))
    return c


def paper_method(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets every method option the paper does not have back to the paper's choice (Sec. IV-V)."""
    c.stage2.sigma = (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0)
    c.stage2.crop_size = 64 if c.algo == "bc" else 32
    c.stage2.ee_crop_size = 16
    c.stage2.loss_weighting = "none"
    c.stage2.gripper_clip = 0.0
    c.stage2.calibrate_sigma = False
    c.stage2.cql_bc_weight, c.stage2.cql_actor_encoder_grad = 0.0, False  # CQL's actor as in Eq. 2
    for s in (c.stage1, c.stage2):
        s.min_move = 0.0
    c.stage1.augment = "none"
    n = c.stage2.network
    n.crop_encoder, n.coord_channels, n.crop_conv_strides = "flatten", False, ()
    n.stage2_pose_input = True
    return c


def apply_variants(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated variant string described in this module's docstring."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    unknown = sorted(set(parts) - VARIANTS)
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown}; expected a comma-separated subset "
                         f"of {sorted(VARIANTS)}.")
    for p in parts:
        if p in ("bc", "cql"):
            c.algo = p
            c.stage2.crop_size = 64 if p == "bc" else 32
        elif p in ("correction", "direct"):
            c.stage2.mode = p
        elif p in ("mc", "td"):
            c.cql.target = p
    return paper_method(c) if "paper" in parts else c
