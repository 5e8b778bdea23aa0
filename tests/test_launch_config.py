"""The launcher's config: one schema of frozen dataclasses, its command-line overrides, and
stored configs (no training here, except by reusing the session's `trained` workdir)."""

import json
import shutil
from pathlib import Path

import pytest

import twostage_jax as tj
from tests._launcher import smoke
from twostage_jax.launch import overrides
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.workdir import config_differences, program_fields
from twostage_jax.launch.launch_config import CONFIG_VERSION, UnknownFieldError, from_dict, replace_path, to_dict

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "experiments" / "results" / "archive" / "eight_tasks_short_stage1" / "raw"


def _flags(config, *pairs):
    """`config` with `--config.K=V` for each (K, V), as the launcher parses them."""
    return replace_path(config, {}) if not pairs else overrides.replace_path(config, {
        k: overrides.parse_value(v, overrides.field_type(k), k) for k, v in pairs})


def _refused(*pairs):
    """The error of the launcher's flags `--config.K=V` on the smoke config."""
    argv = [f"--config.{k}={v}" for k, v in pairs]
    _, found = overrides.split_overrides(argv)
    return overrides.config_from_flags("smoke", found, {})


def test_stages_are_the_library_train_config():
    c = smoke("cql")
    t1 = c.stage1.train_config()
    assert type(t1) is tj.TrainConfig and t1.network == c.stage1.network and t1.cql == c.stage1.cql
    assert c.stage2.train_config().stage2 == c.stage2.stage2  # stage 2's method: tj.Stage2Config
    # per-stage CQL: each stage its own CQLConfig
    c = replace_path(c, {"stage1.cql.actor_lr": 1e-3})
    assert (c.stage1.cql.actor_lr, c.stage2.cql.actor_lr) == (1e-3, 1e-4)


def test_to_dict_round_trips_and_carries_the_version():
    c = replace_path(smoke("cql,td"), {"eval.corrected_dims": (1, 1, 1, 0, 0, 0, 1),
                                       "stage2.stage2.gripper_clip": 0.9})
    d = json.loads(json.dumps(to_dict(c)))
    assert d["version"] == CONFIG_VERSION and from_dict(d) == c
    for version in (CONFIG_VERSION + 1, CONFIG_VERSION - 1, None):
        with pytest.raises(ValueError, match=f"the stored config has version {version!r}; this launcher "
                                             f"reads version {CONFIG_VERSION}: re-run"):
            from_dict({**d, "version": version})
    with pytest.raises(UnknownFieldError, match=r"config\.stage1\.network\.mlp_hiden: .*did you mean 'mlp_hidden'"):
        from_dict({**d, "stage1": {**d["stage1"], "network": {"mlp_hiden": 3}}})


def test_command_line_values_are_parsed_by_their_fields_type():
    c = _flags(smoke(),
        ("eval.curve_steps", "(2,)"), ("stage2.stage2.crop_size", "8"), ("stage1.learning_rate", "1e-3"),
        ("calibrate.sigma", "False"), ("stage2.stage2.gripper_clip", "None"), ("seed_devices", "2"),
        ("stage2_name", "wide"), ("eval.corrected_dims", "(1, 1, 1, 0, 0, 0, 1)"))
    assert c.eval.curve_steps == (2,) and c.stage2.stage2.crop_size == 8
    assert c.stage1.learning_rate == 1e-3 and c.calibrate.sigma is False and c.seed_devices == 2
    assert c.stage2.stage2.gripper_clip is None and c.stage2_name == "wide"
    assert c.eval.corrected_dims == (1, 1, 1, 0, 0, 0, 1)
    for (path, text), message in [
            (("eval.curve_steps", "2"), "config.eval.curve_steps must be a tuple, e.g. (2,) or (1, 2); got '2'."),
            (("stage1.num_steps", "1.5"), "config.stage1.num_steps must be an int; got '1.5'."),
            (("calibrate.sigma", "maybe"), "config.calibrate.sigma must be True or False; got 'maybe'."),
            (("stage1.network", "3"), "config.stage1.network is a group of fields; set one of them"),
            (("algo", "cql"), "--config.algo: the config has no field 'algo'; did you mean "
                              "'stage1.algo' or 'stage2.algo'?"),
            (("stage1.crop_size", "8"), "--config.stage1.crop_size: the config has no field 'crop_size'"),
            (("stage2.crop_size", "8"), "--config.stage2.crop_size: the config has no field 'crop_size'; "
                                        "did you mean 'stage2.stage2.crop_size'?")]:
        with pytest.raises(ValueError) as e:
            _refused((path, text))
        assert str(e.value).startswith(message), str(e.value)
    with pytest.raises(tj.ConfigError) as e:  # a value the library's dataclass refuses
        _refused(("stage1.network.mlp_hidden", "0"))
    assert str(e.value) == "config.stage1.network.mlp_hidden must be a positive int; got 0."
    assert e.value.field == "mlp_hidden"


def test_the_data_source_is_stored_and_compared():
    c = smoke()
    before = to_dict(c)
    before.pop("data")  # stored by a launcher before config.data: the simulator's demos
    assert from_dict(before) == c and c.data.source == "sim"
    lerobot = _flags(c,
        ("data.source", "lerobot"), ("data.root", "datasets/pick"), ("data.camera_file", "pick.json"),
        ("data.image_keys", "observation.images.front"), ("data.pose_key", "observation.state"),
        ("data.pose_convention", "xyz_quat_wxyz"), ("data.episodes", "(0, 2)"),
        ("data.gripper_key", "None"), ("data.neutral_quat", "(1, 0, 0, 0)"))
    assert lerobot.data.episodes == (0, 2) and lerobot.data.neutral_quat == (1.0, 0.0, 0.0, 0.0)
    assert lerobot.data.image_keys == ("observation.images.front",) and lerobot.data.extrinsics_keys == ()
    assert from_dict(json.loads(json.dumps(to_dict(lerobot)))) == lerobot
    # a stage trained on another source (or another LeRobot spec) is not resumed or paired
    assert "config.data.source: trained 'sim', now 'lerobot'" in config_differences(before, lerobot, 1)
    other = replace_path(lerobot, {"data.image_keys": ("observation.images.wrist",)})
    assert config_differences(to_dict(lerobot), other, 2) == [
        "config.data.image_keys: trained ['observation.images.front'], now ['observation.images.wrist']"]
    # several cameras, a moving one's poses given as a dict or as pairs, stored and read back
    two = _flags(lerobot, ("data.image_keys", "observation.images.front, observation.images.wrist"),
                 ("data.extrinsics_keys", "{'observation.images.wrist': 'observation.wrist_pose'}"))
    assert two.data.image_keys == ("observation.images.front", "observation.images.wrist")
    assert two.data.extrinsics_keys == (("observation.images.wrist", "observation.wrist_pose"),)
    assert two.data.spec().extrinsics_keys == two.data.extrinsics_keys
    assert _flags(lerobot, ("data.image_keys", "('observation.images.front', 'observation.images.wrist')"),
                  ("data.extrinsics_keys", "(('observation.images.wrist', 'observation.wrist_pose'),)")) == two
    assert from_dict(json.loads(json.dumps(to_dict(two)))) == two
    assert config_differences(to_dict(two), lerobot, 1) == [
        "config.data.image_keys: trained ['observation.images.front', 'observation.images.wrist'], now "
        "['observation.images.front']",
        "config.data.extrinsics_keys: trained [['observation.images.wrist', 'observation.wrist_pose']], now []"]
    with pytest.raises(tj.ConfigError, match=r"config\.data\.extrinsics_keys must name each moving camera once, "
                                             r"by one of image_keys \['observation.images.front'\]"):
        _flags(lerobot, ("data.extrinsics_keys", "{'observation.images.wrist': 'observation.wrist_pose'}"))
    with pytest.raises(ValueError, match=r"config\.data\.extrinsics_keys must be pairs"):
        _flags(lerobot, ("data.extrinsics_keys", "('observation.images.wrist', 'observation.wrist_pose')"))
    with pytest.raises(tj.ConfigError, match=r"config\.data\.pose_indices has 6 entries; pose_convention "
                                             "'xyz_quat_wxyz' takes 7"):
        replace_path(lerobot, {"data.pose_indices": (0, 1, 2, 3, 4, 5)})


def test_the_committed_study_configs_are_todays_repro_config():
    # A results file of the study (BC, push-v3), and the same settings today.
    old = json.loads((RAW / "push-v3" / "bc_stage2.json").read_text())["config"]
    from twostage_jax.configs import repro

    now = replace_path(repro.get_config("bc"), {"task": "push-v3"})
    stored = from_dict(old)
    for stage in (1, 2):
        assert program_fields(stored, stage) == program_fields(now, stage)
        assert config_differences(old, now, stage) == []
    assert stored.stage1.num_steps == 2000 and now.stage1.num_steps == 20_000  # not compared
    # the paper arm: its stage 2 was the paper's method
    old = json.loads((RAW / "push-v3" / "cql_paper.json").read_text())["config"]
    now = replace_path(repro.get_config("cql,paper"), {"task": "push-v3", "stage2_name": "paper"})
    assert config_differences(old, now, 2) == []
    # the study's stage 1 has since moved to the paper's rates
    assert from_dict(old).stage1.cql.actor_lr == 1e-3
    assert config_differences(old, now, 1) == ["config.stage1.cql.actor_lr: trained 0.001, now 0.0001",
                                               "config.stage1.cql.critic_lr: trained 0.001, now 0.0003"]


def test_a_workdir_of_another_config_version_is_refused_in_one_line(trained, tmp_path):
    from twostage_jax.launch.train_stage import run_stage

    wd = Path(shutil.copytree(trained, tmp_path / "wd"))
    for meta in wd.glob("stage2/checkpoints/*/meta/metadata"):
        record = json.loads(meta.read_text())
        meta.write_text(json.dumps({**record, "config": {**record["config"], "version": 1}}))
    with pytest.raises(PipelineError, match=r"the stored config cannot be read \(ValueError: the stored "
                                            r"config has version 1; this launcher reads version 3"):
        run_stage(smoke(), wd, 2, resume=True)


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_cameras_are_checked_and_naming_the_default_camera_changes_nothing():
    from twostage_jax.launch.main import dry_parse

    plain, named = dry_parse(["x"]), dry_parse(["x", "--config.cameras=corner"])
    two = dry_parse(["x", "--config.cameras=corner,topview"])
    assert named.cameras == ("corner",) and two.camera_names() == ("corner", "topview")
    assert config_differences(to_dict(plain), named, 1) == []
    assert config_differences(to_dict(plain), two, 2) == ["config.cameras: trained '(absent)', now ['corner', 'topview']"]
    for flag, match in [("corner,top", r"config\.cameras has unknown \['top'\]; choose distinct names from "
                                        r"\['corner', 'corner2'"),
                        ("gripperPOV,corner", r"the first camera \('gripperPOV'\) moves with the hand"),
                        ("corner,corner", r"config\.cameras must be None .* or a non-empty tuple of distinct")]:
        with pytest.raises(Exception, match=match):
            dry_parse(["x", f"--config.cameras={flag}"])
