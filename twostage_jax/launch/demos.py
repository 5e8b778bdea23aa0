"""The launcher's first stage: record demos (MetaWorld) or read them (RLBench's folder, a LeRobot
dataset), and write the keyframe dataset and the held-out demos to WORKDIR/demos/."""

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
    """Records (or reads) the demos and writes demos/dataset.npz, held_out.npz, stats.json and
    config.json, all or none; `force` replaces an existing dataset (else refused before any work).

    Returns:
      What demos/stats.json holds: `demo_seeds`, `held_out_seeds`, sizes and timings.

    Raises:
      PipelineError: a dataset exists and `force` is False; demos that fail a check.
    """
    path = dataset_path(workdir)
    if path.exists() or path.is_symlink():
        trained = (f"; {', '.join(stages)} {'was' if len(stages) == 1 else 'were'} trained on it"
                   if (stages := trained_stages(workdir)) else "")
        if not force:
            raise PipelineError(
                f"{path} already exists{trained}. --mode=demos would replace it: use a fresh "
                "--workdir, or pass --force to replace it anyway.")
        logging.warning("--force: replacing %s%s", path, trained)
    start = time.perf_counter()
    ds, val_ds, info = _read_lerobot(config) if config.data.source == "lerobot" else _sim_demos(config)
    for name, data in (("demos", ds), ("held-out demos", val_ds)):
        if data is not None:
            _check_camera_sees(config, data, name)
    info.update(task=config.task, transitions=int(ds.action.shape[0]),
                images=int(ds.images.shape[0]), dataset_mib=dataset_nbytes(ds) / 2**20,
                total_seconds=time.perf_counter() - start)
    _write_demos(workdir, {"held_out.npz": val_ds, "stats.json": info,
                           "config.json": config_record(config, workdir), "dataset.npz": ds})
    logging.info("demos: kept %d, %d transitions, %d images (%.1f MiB) in %.0f s", info["kept"],
                 info["transitions"], info["images"], info["dataset_mib"], info["total_seconds"])
    return info


def _check_camera_sees(config: LaunchConfig, ds: Any, name: str) -> None:
    """Refuses demos whose camera sees under `config.data.min_visible` of the end-effector positions."""
    if (share := tj.visible_share(ds)) >= float(config.data.min_visible):
        return
    first = (f"{config.data.image_keys[0]!r} (the first of config.data.image_keys) in "
             if len(config.data.image_keys) > 1 else "")
    where = (f"the camera of {first}config.data.camera_file ({config.data.camera_file})"
             if config.data.source == "lerobot" else
             f"the cameras recorded in config.rlbench_root ({config.rlbench_root})"
             if config.env == "rlbench" else f"the {config.env} camera")
    raise PipelineError(
        f"{where} sees {100 * share:.0f}% of the {name}' end-effector positions (in front of it and "
        f"inside the image); at least {100 * float(config.data.min_visible):.0f}% must be seen "
        "(config.data.min_visible). Check the camera pose (cam_to_world: x right, y down, z "
        "forward), its intrinsics and the workspace bounds.")


def _sim_demos(config: LaunchConfig) -> tuple:
    """(dataset, held-out dataset or None, stats) of MetaWorld's recorded or RLBench's read demos."""
    d = config.demos
    if config.env == "metaworld":
        from twostage_jax.envs.metaworld import MetaWorldConfig, default_workspace  # lazy: imports MuJoCo

        env_cfg = MetaWorldConfig(width=int(d.image_size), height=int(d.image_size),
                                  max_keyframes=int(d.max_keyframes), cameras=config.camera_names())
        trajs, stats = record_demos(config.task, int(d.num_demos), seed=int(d.seed),
                                    augment_every=int(d.augment_every), env_config=env_cfg)
        workspace, extra = default_workspace(), stats._asdict()
    else:
        trajs, val_episodes = _read_rlbench(config)
        workspace, extra = rlbench_workspace(), {"kept": len(trajs)}
    info = {"demo_seeds": [int(t.seed) for t in trajs], **extra}
    ds = build_dataset(trajs, workspace, gamma=float(d.gamma), augment_every=int(d.augment_every))
    val_ds = None
    if d.num_held_out > 0:  # keyframe-to-keyframe chains only: the states a policy acting meets
        if config.env == "metaworld":
            val, _ = record_demos(config.task, d.num_held_out, seed=int(d.held_out_seed),
                                  augment_every=10**6, env_config=env_cfg)
            clash = set(info["demo_seeds"]).intersection(int(t.seed) for t in val)
            if clash:
                raise PipelineError(f"validation demo seeds {sorted(clash)[:5]} were used for training "
                                    "demos; set config.demos.held_out_seed beyond them.")
        else:  # RLBench: the folder's last num_held_out episodes
            val = _load_rlbench(config, val_episodes, augment_every=10**6)
        val_ds = build_dataset(val, workspace, gamma=float(d.gamma), augment_every=10**6)
        info["held_out_seeds"] = [int(t.seed) for t in val]
    return ds, val_ds, {**info, "env": config.env}


def _read_lerobot(config: LaunchConfig) -> tuple:
    """(dataset, held-out dataset or None, stats) of a LeRobot dataset; the seeds are episode indices."""
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
    """Writes demos/'s files all or none, staged then renamed in order (the dataset, last, marks
    them done); a file given as None is removed."""
    folder = dataset_path(workdir).parent
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
        logging.warning("demos: removed %s, left by a recording that was stopped", stale.name)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        for name, content in files.items():
            if content is not None:
                with reporting_disk_full(f"demos/{name}", folder, "demos/ is as it was; free some "
                                         "space and record the demos again."):
                    (save_dataset if name.endswith(".npz") else write_json_atomic)(staging / name, content)
        for name, content in files.items():
            if content is not None:
                os.replace(staging / name, folder / name)
            elif (folder / name).exists():  # --force without held-out demos: drop the old ones
                (folder / name).unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_rlbench(config: LaunchConfig) -> tuple[list, list[int]]:
    """RLBench's demos of config.task: (training trajectories, held-out episode numbers: the last)."""
    d, root = config.demos, str(config.rlbench_root)
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
    height, width = trajs[0].images.shape[-3:-1]  # [M, H, W, 3], or [M, V, H, W, 3]
    if (height, width) != (int(d.image_size),) * 2:
        raise PipelineError(f"config.demos.image_size ({d.image_size}) must match the RLBench images "
                            f"({width}x{height} px); pass --config.demos.image_size={height}.")
    if len(train_episodes) < int(d.num_demos):
        logging.warning("demos: the RLBench folder has %d training episodes (after %d held out), fewer "
                        "than config.demos.num_demos=%d", len(train_episodes), num_val, int(d.num_demos))
    return trajs, episodes[len(episodes) - num_val:]


def _load_rlbench(config: LaunchConfig, episodes: list[int], augment_every: int) -> list:
    """`load_rlbench_demos` of config.task's `episodes`, a malformed one a PipelineError naming it."""
    try:
        return load_rlbench_demos(str(config.rlbench_root), config.task, episodes=episodes,
                                  augment_every=augment_every, cameras=config.camera_names())
    except (ValueError, OSError) as e:  # the reader's ValueError; FileNotFoundError; PIL's OSError
        raise PipelineError(f"config.rlbench_root: a malformed RLBench episode: {e} Record it again "
                            "with RLBench's dataset generator, or remove its episode folder.") from e


def check_data_source(config: LaunchConfig) -> tuple[list[int], list[int]]:
    """Checks a LeRobot source (`config.data`) without decoding a frame.

    Returns:
      (training, held-out) episode indices (`split_episodes`).

    Raises:
      ValueError: one line naming the config field (and the file) at fault.
      ImportError: pyarrow or PyAV is missing.
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
            field = ("camera_file" if isinstance(e, CalibrationFileError) or "is calibrated for" in message
                     else "episodes" if data.episodes is not None and "is not in the episode table" in message
                     else "root")
            message = f"config.data.{field}: {message}"
        raise ValueError(message) from e
    for key in data.image_keys:  # (their videos share one size, checked above)
        camera = calibration.camera(key)
        if int(config.demos.image_size) != int(camera.height):
            raise ValueError(f"config.demos.image_size ({config.demos.image_size}) must be the height of the "
                             f"frames of {key!r} ({camera.width}x{camera.height} px); pass "
                             f"--config.demos.image_size={camera.height}.")
    return split_episodes(config, episodes)
