"""The launcher's first stage: record demonstrations (MetaWorld) or read them (RLBench's
on-disk demos, a LeRobot dataset), and write the keyframe dataset and the held-out validation
demos to the workdir."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from absl import logging

import twostage_jax as tj
from twostage_jax._io import reporting_disk_full, write_json_atomic
from twostage_jax.data.camera_file import CalibrationFileError, load_calibration
from twostage_jax.data.dataset import build_dataset, dataset_nbytes, save_dataset
from twostage_jax.data.lerobot import check_lerobot_dataset, load_lerobot_dataset
from twostage_jax.data.rlbench_conventions import default_workspace as rlbench_workspace
from twostage_jax.data.rlbench_io import list_rlbench_episodes, load_rlbench_demos
from twostage_jax.envs.metaworld_demos import record_demos
from twostage_jax.launch.launch_config import LaunchConfig, split_episodes
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.workdir import config_record, dataset_path, trained_stages


def run_demos(config: LaunchConfig, workdir: Path, force: bool = False) -> dict:
    """Records (or reads) demonstrations, builds the keyframe dataset and writes it atomically.

    Args:
      config: the launcher config (`config.data.source`: the simulator's demos, or a LeRobot
        dataset's episodes).
      workdir: the workdir; the dataset goes to demos/dataset.npz, with demos/stats.json and
        demos/config.json (the config that made it), and the held-out demos
        (`config.demos.num_held_out`) to demos/held_out.npz.
      force: replace an existing dataset. Without it an existing dataset is refused before
        any work, since the stages trained on it would no longer match it.

    Returns:
      What demos/stats.json holds: `demo_seeds` (the training demos' layouts, or episode
      indices), `held_out_seeds`, sizes and timings.

    Raises:
      PipelineError: a dataset exists and `force` is False; a LeRobot dataset that fails a check.
    """

    path = dataset_path(workdir)
    if path.exists() or path.is_symlink():
        stages = trained_stages(workdir)
        trained = f"; {', '.join(stages)} {'was' if len(stages) == 1 else 'were'} trained on it" \
            if stages else ""
        if not force:
            raise PipelineError(
                f"{path} already exists{trained}. --mode=demos would replace it: use a fresh "
                "--workdir, or pass --force to replace it anyway.")
        logging.warning("--force: replacing %s%s", path, trained)
    start = time.perf_counter()
    if config.data.source == "lerobot":
        ds, val_ds, info = _read_lerobot(config)
    else:
        ds, val_ds, info = _sim_demos(config)
    for name, data in (("demos", ds), ("held-out demos", val_ds)):
        if data is not None:
            _check_camera_sees(config, data, name)
    info.update(task=config.task, transitions=int(ds.action.shape[0]),
                images=int(ds.images.shape[0]), dataset_mib=dataset_nbytes(ds) / 2**20,
                total_seconds=time.perf_counter() - start)
    _write_demos(workdir, {"held_out.npz": val_ds, "stats.json": info,
                           "config.json": config_record(config, workdir), "dataset.npz": ds})
    logging.info("demos: kept %d, %d transitions, %d images (%.1f MiB) in %.0f s",
                 info["kept"], info["transitions"], info["images"],
                 info["dataset_mib"], info["total_seconds"])
    return info


def _check_camera_sees(config: LaunchConfig, ds: Any, name: str) -> None:
    """Refuses demos whose camera sees under `config.data.min_visible` of the end-effector
    positions, naming where the camera came from and the share."""

    share = tj.visible_share(ds)
    if share >= float(config.data.min_visible):
        return
    if config.data.source == "lerobot":
        where = f"the camera of config.data.camera_file ({config.data.camera_file})"
    elif config.env == "rlbench":
        where = f"the cameras recorded in config.rlbench_root ({config.rlbench_root})"
    else:
        where = f"the {config.env} camera"
    raise PipelineError(
        f"{where} sees {100 * share:.0f}% of the {name}' end-effector positions (in front of it and "
        f"inside the image); at least {100 * float(config.data.min_visible):.0f}% must be seen "
        "(config.data.min_visible). Check the camera pose (cam_to_world: x right, y down, z "
        "forward), its intrinsics and the workspace bounds.")


def _sim_demos(config: LaunchConfig) -> tuple:
    """(dataset, validation dataset or None, stats) of the simulator's demos: recorded in
    MetaWorld, or read from RLBench's folder."""
    d = config.demos
    if config.env == "metaworld":
        from twostage_jax.envs.metaworld import MetaWorldConfig, default_workspace  # lazy: imports MuJoCo

        env_cfg = MetaWorldConfig(width=int(d.image_size), height=int(d.image_size),
                                  max_keyframes=int(d.max_keyframes))
        trajs, stats = record_demos(config.task, int(d.num_demos), seed=int(d.seed),
                                    augment_every=int(d.augment_every), env_config=env_cfg)
        workspace = default_workspace()
        info = {"demo_seeds": [int(t.seed) for t in trajs], **stats._asdict()}
    else:
        trajs, val_episodes = _read_rlbench(config)
        workspace = rlbench_workspace()
        info = {"demo_seeds": [int(t.seed) for t in trajs], "kept": len(trajs)}
    ds = build_dataset(trajs, workspace, gamma=float(d.gamma), augment_every=int(d.augment_every))
    num_val = d.num_held_out
    val_ds = None
    if num_val > 0 and config.env == "metaworld":
        # Keyframe-to-keyframe chains only (no augmentation): the states a policy meets when it
        # acts keyframe by keyframe.
        val, _ = record_demos(config.task, num_val, seed=int(d.held_out_seed), augment_every=10**6,
                              env_config=env_cfg)
        clash = set(info["demo_seeds"]).intersection(int(t.seed) for t in val)
        if clash:
            raise PipelineError(f"validation demo seeds {sorted(clash)[:5]} were used for training "
                                "demos; set config.demos.held_out_seed beyond them.")
        val_ds = build_dataset(val, workspace, gamma=float(d.gamma), augment_every=10**6)
        info["held_out_seeds"] = [int(t.seed) for t in val]
    elif num_val > 0:  # RLBench: the folder's last num_held_out episodes, keyframe chains only
        val = _load_rlbench(config, val_episodes, augment_every=10**6)
        val_ds = build_dataset(val, workspace, gamma=float(d.gamma), augment_every=10**6)
        info["held_out_seeds"] = [int(t.seed) for t in val]
    info.setdefault("kept", len(trajs))
    return ds, val_ds, {**info, "env": config.env}


def _read_lerobot(config: LaunchConfig) -> tuple:
    """(dataset, validation dataset or None, stats) of a LeRobot dataset (`config.data`): the
    last `config.demos.num_held_out` of its chosen episodes are the held-out demos
    (keyframe-to-keyframe chains only, as the simulator's), the others the training dataset.
    `demo_seeds` and `held_out_seeds` in the stats are their episode indices."""

    d, data = config.demos, config.data
    try:
        train, val = check_data_source(config)  # every check before any frame is decoded
        ds = load_lerobot_dataset(data.root, data.spec(), data.camera_file, episodes=train,
                                  augment_every=int(d.augment_every), gamma=float(d.gamma))
        val_ds = (load_lerobot_dataset(data.root, data.spec(), data.camera_file, episodes=val,
                                       augment_every=10**6, gamma=float(d.gamma)) if val else None)
    except (ValueError, OSError) as e:  # a check (when main did not run them), or a frame that
        # fails to decode: the reader's message names the file and the episode
        message = str(e)
        field = "config.data.pose_convention" if message.startswith("pose convention") else "config.data.root"
        raise PipelineError(message if message.startswith("config.") else f"{field}: {message}") from e
    return ds, val_ds, {"source": "lerobot", "demo_seeds": train, "held_out_seeds": val,
                        "kept": len(train)}


def _write_demos(workdir: Path, files: dict) -> None:
    """Writes demos/'s files all or none: each into a hidden staging folder in demos/, then
    renamed into place in order (the dataset last, as `--mode=all` takes it for done); a file
    given as None is removed (no held-out demos). A full disk while staging leaves demos/ as
    it was, and the staging folder is removed (as is any a killed run left)."""

    folder = dataset_path(workdir).parent
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
        logging.warning("demos: removed %s, left by a recording that was stopped", stale.name)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        for name, content in files.items():
            if content is None:
                continue
            with reporting_disk_full(f"demos/{name}", folder, "demos/ is as it was; free some space "
                                     "and record the demos again."):
                if name.endswith(".npz"):
                    save_dataset(staging / name, content)
                else:
                    write_json_atomic(staging / name, content)
        for name, content in files.items():
            if content is not None:
                os.replace(staging / name, folder / name)
            elif (folder / name).exists():  # --force without held-out demos: drop the old ones
                (folder / name).unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_rlbench(config: LaunchConfig) -> tuple[list, list[int]]:
    """RLBench's on-disk demos of config.task: (training trajectories, validation episode numbers).

    The last `config.demos.num_held_out` episodes of ROOT/TASK/variation0/episodes are held out
    as held-out demos (RLBench's dataset generator records no separate layouts for them); the
    first `config.demos.num_demos` of the others are the training demos.
    """

    d = config.demos
    root = str(config.rlbench_root)
    try:
        episodes = list_rlbench_episodes(root, config.task)
    except FileNotFoundError as e:
        raise PipelineError(f"config.rlbench_root: {e} Point it at the folder RLBench's dataset "
                            "generator wrote (its --save_path) and --task at a task folder in it.") from e
    num_val = d.num_held_out
    if len(episodes) <= num_val:
        raise PipelineError(
            f"config.demos.num_held_out ({num_val}) holds out the last {num_val} RLBench episodes "
            f"as held-out demos, but {root}/{config.task}/variation0/episodes has {len(episodes)}; "
            "record more episodes, or lower config.demos.num_held_out (0 needs "
            "--config.calibrate.sigma=False and --config.calibrate.crop_size=False).")
    train_episodes = episodes[: len(episodes) - num_val][: int(d.num_demos)]
    trajs = _load_rlbench(config, train_episodes, augment_every=int(d.augment_every))
    size = int(trajs[0].images.shape[1])
    if trajs[0].images.shape[1:3] != (int(d.image_size),) * 2:
        raise PipelineError(f"config.demos.image_size ({d.image_size}) must match the RLBench images "
                            f"({trajs[0].images.shape[2]}x{trajs[0].images.shape[1]} px); pass "
                            f"--config.demos.image_size={size}.")
    if len(train_episodes) < int(d.num_demos):
        logging.warning("demos: the RLBench folder has %d training episodes (after %d held out), "
                        "fewer than config.demos.num_demos=%d", len(train_episodes), num_val,
                        int(d.num_demos))
    return trajs, episodes[len(episodes) - num_val:]


def _load_rlbench(config: LaunchConfig, episodes: list[int], augment_every: int) -> list:
    """`load_rlbench_demos` of config.task's `episodes`, a malformed episode (a truncated or
    foreign pickle, a missing low_dim_obs.pkl or PNG) reported as a PipelineError naming it."""

    try:
        return load_rlbench_demos(str(config.rlbench_root), config.task, episodes=episodes,
                                  augment_every=augment_every)
    except (ValueError, OSError) as e:  # the reader's ValueError; FileNotFoundError; PIL's OSError
        raise PipelineError(f"config.rlbench_root: a malformed RLBench episode: {e} Record it again "
                            "with RLBench's dataset generator, or remove its episode folder.") from e


def check_data_source(config: LaunchConfig) -> tuple[list[int], list[int]]:
    """Checks a LeRobot source (`config.data`) before any work: every check
    `load_lerobot_dataset` makes (keys, the camera's calibration, lengths, each video against its
    index), without decoding a frame, then `config.demos.image_size` against its frames and
    `config.demos.num_held_out` against its episodes.

    Returns:
      (training, validation) episode indices (`split_episodes`).

    Raises:
      ValueError: one line naming the config field (and the file) at fault.
      ImportError: pyarrow or PyAV is missing (the message names the `lerobot` extra).
    """

    data = config.data
    try:
        calibration = load_calibration(data.camera_file)
    except (ValueError, OSError) as e:  # missing, not JSON, malformed
        raise ValueError(f"config.data.camera_file: {e}") from e
    try:
        episodes = check_lerobot_dataset(data.root, data.spec(), calibration,
                                         None if data.episodes is None else list(data.episodes))
    except (ValueError, OSError) as e:  # the reader names LeRobotSpec's fields: ours have their names
        message = str(e).replace("LeRobotSpec.", "config.data.")
        if not message.startswith("config.data."):
            field = ("calibration" if isinstance(e, CalibrationFileError) or "is calibrated for" in message
                     else "episodes" if data.episodes is not None and "is not in the episode table" in message
                     else "root")
            message = f"config.data.{field}: {message}"
        raise ValueError(message) from e
    camera = calibration.camera(data.image_key)
    if int(config.demos.image_size) != int(camera.height):
        raise ValueError(f"config.demos.image_size ({config.demos.image_size}) must be the height of the "
                         f"frames of {data.image_key!r} ({camera.width}x{camera.height} px); pass "
                         f"--config.demos.image_size={camera.height}.")
    return split_episodes(config, episodes)
