"""Stored launcher configs of older versions, migrated to the current schema in one place.

A stored config is a plain dict: checkpoint metadata's `config`, STAGE/config.json's and
demos/config.json's `config`, results.json's `config`. Each carries `version` (`CONFIG_VERSION`
when written); a dict without one is version 1, the ml_collections config of the launcher before
`config.LaunchConfig`. `migrate` takes any older dict to the current version, one step per
version, and is the only place that knows an older layout or an older field's default.
"""

from __future__ import annotations

import copy
from typing import Any

CONFIG_VERSION = 2
"""1: the ml_collections ConfigDict (no `version`); 2: `LaunchConfig` (the library's
dataclasses per stage, `calibrate`, per-stage `cql`)."""


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Any stored config dict, as the current version's (`config.from_dict` reads it).

    Args:
      d: a stored config (not changed).

    Returns:
      A new dict in the current schema, with `version` = `CONFIG_VERSION`.

    Raises:
      ValueError: `d` is not a dict, or was written by a newer launcher.
    """
    if not isinstance(d, dict):
        raise ValueError(f"a stored config must be a dict; got {type(d).__name__}.")
    d = copy.deepcopy(d)
    version = d.get("version", 1)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ValueError(f"the stored config has version {version!r}, newer than this launcher's "
                         f"{CONFIG_VERSION}; read it with the launcher that wrote it.")
    steps = {1: _v1_to_v2}
    while version < CONFIG_VERSION:
        d = steps[version](d)
        version += 1
    d["version"] = CONFIG_VERSION
    return d


def _v1_to_v2(old: dict[str, Any]) -> dict[str, Any]:
    """The ml_collections config (every field it ever had, with the value a missing one meant)."""
    algo = old.get("algo", "bc")
    cql = dict(old.get("cql", {}))
    s1, s2 = dict(old.get("stage1", {})), dict(old.get("stage2", {}))
    crop = s2.pop("crop_size", None)
    calibrate = {"sigma": bool(s2.pop("calibrate_sigma", False)),  # absent: not calibrated
                 "sigma_floor": float(s2.pop("sigma_floor", 0.02)),
                 "crop_size": crop == 0,  # 0 was 'auto': calibrated
                 "crop_coverage": float(s2.pop("crop_coverage", 0.95))}
    method = {"crop_size": None if crop in (0, None) else int(crop),
              "ee_crop_size": s2.pop("ee_crop_size", 16),
              "sigma": s2.pop("sigma", [0.1] * 6 + [1.0]),
              "mode": s2.pop("mode", "correction"), "rotate": s2.pop("rotate", True),
              "loss_weighting": s2.pop("loss_weighting", "none"),  # absent: the paper's loss
              "gripper_clip": s2.pop("gripper_clip", 0.0) or None}  # 0: the paper's 0.99 clip
    target2 = s2.pop("cql_target", "") or cql.get("target", "mc")

    def stage(s: dict[str, Any], name: str) -> dict[str, Any]:
        own = dict(cql)
        for field in ("actor_lr", "critic_lr"):  # 0 (or absent): config.cql's
            if s.get(f"cql_{field}"):
                own[field] = s[f"cql_{field}"]
        for field in ("actor_encoder_grad", "bc_weight"):  # None (or absent): config.cql's
            if s.get(f"cql_{field}") is not None:
                own[field] = s[f"cql_{field}"]
        for key in ("cql_actor_lr", "cql_critic_lr", "cql_actor_encoder_grad", "cql_bc_weight"):
            s.pop(key, None)
        if name == "stage2":
            own["target"] = target2
        network = dict(s.pop("network", {}))
        network["crop_conv_strides"] = network.get("crop_conv_strides") or None  # (): conv_strides
        network.setdefault("crop_encoder", "flatten")
        network.setdefault("coord_channels", False)
        network.setdefault("keypoints", 32)
        network.setdefault("stage2_pose_input", True)
        out = {**s, "algo": algo, "network": network, "cql": own,
               "min_move": s.get("min_move", 0.0), "select": s.get("select", "last"),
               "select_steps": s.get("select_steps", [])}
        if name == "stage2":
            out["stage2"] = method
            out.setdefault("image_size", None)
        return out

    ev = dict(old.get("eval", {}))
    ev.setdefault("workers", 1)
    ev.setdefault("curve_steps", [])
    ev.setdefault("correction_passes", 1)
    ev.setdefault("corrected_dims", None)
    demos = dict(old.get("demos", {}))
    demos.setdefault("num_validation", 0)
    demos.setdefault("validation_seed", 60_000)
    new = {k: v for k, v in old.items() if k not in ("algo", "cql", "stage1", "stage2", "eval", "demos")}
    new.setdefault("env", "metaworld")
    new.setdefault("rlbench_root", "")
    new.setdefault("seed_strategy", "auto")
    new.setdefault("seed_devices", "all")
    new.setdefault("stage2_name", "stage2")
    new.update(demos=demos, stage1=stage(s1, "stage1"), stage2=stage(s2, "stage2"),
               calibrate=calibrate, eval=ev, version=2)
    return new
