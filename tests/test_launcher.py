"""The absl launcher: end to end, SIGKILL + resume, clear errors for bad usage, and what a
workdir guarantees (results are never lost or silently replaced)."""

import errno
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests._launcher import launch as _launch
from tests._launcher import hold_lock, launch_in_process, refused, release_lock
from tests._launcher import smoke as _smoke
from tests._launcher import synthetic_workdir as _synthetic_workdir


def _copy(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


def _damage(step_dir: Path) -> None:
    """Deletes the largest array file of a checkpoint step, as a bad copy or a full disk might."""
    files = sorted((p for p in (step_dir / "state").rglob("d/*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    files[-1].unlink()


def _unprivileged() -> list[str] | None:
    """A command prefix under which file permissions apply (root ignores them otherwise), or
    None where none can be made (root without setpriv's capability drop)."""
    if os.geteuid() != 0:
        return []
    cmd = [shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    try:
        return cmd if subprocess.run([*cmd, "true"], capture_output=True).returncode == 0 else None
    except OSError:
        return None


def _tb_steps(folder: Path, tag: str = "seed0/bc_loss") -> list[int]:
    """The steps of `tag` in the TensorBoard event files of `folder` (complete records only)."""
    from tensorboardX.proto.event_pb2 import Event

    steps = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            if pos + 16 + n > len(data):
                break  # a record cut by a kill
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            steps += [event.step for v in event.summary.value if v.tag == tag]
            pos += 16 + n
    return steps


def _final_params(workdir: Path, stage: int = 1):
    from twostage_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir / f"stage{stage}" / "checkpoints")
    step = ckpt.latest_step()
    # Restore without a template: orbax returns the saved tree as numpy arrays.
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(ckpt.directory / str(step) / "state")
    ckpt.close()
    return step, tree["params"]


@pytest.mark.sim
@pytest.mark.render
def test_mode_all_end_to_end(tmp_path):
    # Held-out held-out demos, and a stage 2 calibrated on them (sigma and crop size 'auto');
    # evaluation on 2 worker processes, with a learning-curve checkpoint.
    calibrated = ["--config.demos.num_held_out=2", "--config.calibrate.sigma=True",
                  "--config.calibrate.crop_size=True"]
    out = launch_in_process("--mode=all", f"--workdir={tmp_path}", *calibrated, "--config.eval.curve_steps=(2,)",
                  "--config.eval.workers=2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for rel in ("demos/config.json", "stage1/config.json", "stage2/config.json",
                "demos/dataset.npz", "demos/held_out.npz", "stage2/calibration.json",
                "demos/stats.json", "stage1/metrics.jsonl",
                "stage2/metrics.jsonl", "stage2/pairing.json", "eval/results.json", "eval/success.png",
                "eval/learning_curves.png", "eval/rollout_two_stage.png", "eval/rollout_stage1.gif"):
        assert (tmp_path / rel).is_file(), rel
    assert list((tmp_path / "stage1" / "tb").iterdir()), "no TensorBoard events"
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["num_seeds"] == 2 and res["episodes_per_seed"] == 2
    for mode in ("stage1", "two_stage"):
        r = res["modes"][mode]
        assert len(r["per_seed"]) == 2
        assert all(0.0 <= x <= 1.0 for x in r["per_seed"])
        assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0
    assert np.isfinite(res["gain"]["mean"])
    import jax
    env = res["environment"]  # what each stage trained on and the evaluation ran on
    assert env["evaluation"]["jax"] == jax.__version__ and env["evaluation"]["backend"] == "cpu"
    assert env["stage1"] == [json.loads((tmp_path / "stage1" / "config.json").read_text())["environment"]]
    assert len(env["stage2"]) == 1
    for mode in ("stage1", "two_stage"):  # learning curve: the kept step-2 checkpoint, then the final
        curve = res["curves"][mode]
        assert curve["steps"] == [2, 8] and np.shape(curve["per_seed"]) == (2, 2)
        assert curve["per_seed"][-1] == res["modes"][mode]["per_seed"]
    assert (tmp_path / "stage2" / "checkpoints" / "2").is_dir()
    pairing = json.loads((tmp_path / "stage2" / "pairing.json").read_text())
    assert pairing["step"] == 8 and pairing["path"].endswith("stage1/checkpoints/8")
    assert "two_stage" in out.stdout and "95% CI" in out.stdout
    rows = [json.loads(x) for x in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["seed"] == 0] == [2, 4, 6, 8]
    assert all(np.isfinite(r["val_position_cm"]) and 0 <= r["val_gripper_agreement"] <= 1 for r in rows)
    cal = json.loads((tmp_path / "stage2" / "calibration.json").read_text())
    assert cal["crop_size"] % 4 == 0 and 8 <= cal["crop_size"] <= 128 and cal["stage1_step"] == 8
    assert len(cal["sigma"]) == 7 and cal["sigma"][6] == 1.0 and min(cal["sigma"][:6]) >= 0.02
    assert cal["settings"]["calibrate"]["sigma_floor"] == 0.02 and cal["inputs"]["stage1"] == [8, 8]
    assert res["stage2_crop_size"] == cal["crop_size"] and res["stage2_sigma"] == cal["sigma"]
    stats = json.loads((tmp_path / "demos" / "stats.json").read_text())
    assert not set(stats["held_out_seeds"]) & set(stats["demo_seeds"])


    # A named stage-2 ablation shares the stage 1 and the dataset of the workdir (the launcher
    # in this process from here: the console path was just shown).
    named = ["--config.stage2_name=direct", "--config.stage2.stage2.mode=direct", *calibrated]
    out = launch_in_process("--mode=stage2", f"--workdir={tmp_path}", *named)
    assert out.returncode == 0, out.stderr[-3000:]
    # (one worker: the 2 worker processes were shown above, and episodes do not depend on them)
    out = launch_in_process("--mode=eval", f"--workdir={tmp_path}", *named, "--config.eval.workers=1")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "eval_direct" / "results.json").read_text())
    assert res["stage2_mode"] == "direct" and res["stage1_step"] == 8
    # stage 1's rollouts came from the cache, and its recorded episode was rolled out again
    assert (tmp_path / "eval_direct" / "rollout_stage1.gif").exists()
    assert res["modes"]["stage1"] == json.loads((tmp_path / "eval" / "results.json").read_text())["modes"]["stage1"]
    # stage 1 alone is not re-rolled for an ablation that shares it: same per-episode results
    first = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["modes"]["stage1"]["episodes"] == first["modes"]["stage1"]["episodes"]
    assert "reusing stage-1 rollouts" in out.stderr
    assert json.loads((tmp_path / "direct" / "pairing.json").read_text())["step"] == 8
    assert json.loads((tmp_path / "direct" / "config.json").read_text())["config"]["stage2"]["stage2"]["mode"] == "direct"
    assert json.loads((tmp_path / "stage2" / "config.json").read_text())["config"]["stage2"]["stage2"]["mode"] == "correction"
    out = launch_in_process("--mode=stage2", f"--workdir={tmp_path}", "--config.stage2_name=eval_x")
    assert out.returncode != 0 and "config.stage2_name must be a folder name" in out.stderr


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    steps = ["--config.stage1.num_steps=120", "--config.train.log_every=2",
             "--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=2"]
    ref = _synthetic_workdir(tmp_path / "ref")
    # The reference saves only its final checkpoint: saving does not change the state (the
    # cadence is not among the fields a resume compares), and each save costs a fraction of
    # a second.
    ref_steps = [*steps[:2], "--config.train.checkpoint_every=120"]
    out = launch_in_process("--mode=stage1", f"--workdir={ref}", *ref_steps)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    run = _synthetic_workdir(tmp_path / "run")
    proc = _launch("--mode=stage1", f"--workdir={run}", *steps, wait=False)
    ckpts = run / "stage1" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit() and (p / "commit_success.txt").exists()] \
            if ckpts.exists() else []
        if done and max(done) >= 20:
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at, _ = _final_params(run)
    assert killed_at < 120, "the run finished before it could be killed"
    logged = set()
    for line in (run / "stage1" / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by the kill
        logged.update([row["step"]] if row["seed"] == 0 else [])
    tb = _tb_steps(run / "stage1" / "tb")
    assert logged and logged <= set(tb), f"TensorBoard lost steps the kill left in metrics.jsonl: {sorted(logged - set(tb))}"

    # the resume saves only its final checkpoint too (the cadence is not compared on resume)
    out = launch_in_process("--mode=stage1", f"--workdir={run}", "--resume", *ref_steps)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    s_ref, p_ref = _final_params(ref)
    s_run, p_run = _final_params(run)
    assert s_ref == s_run == 120
    import jax

    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p_ref, p_run)
    rows = [json.loads(x) for x in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]
    steps_seen = [r["step"] for r in rows if r["seed"] == 0]
    assert steps_seen == list(range(2, 121, 2)), "metrics lost or duplicated across the resume"


def test_tensorboard_events_reach_the_disk_at_each_chunk(tmp_path):
    from twostage_jax.training.metrics_log import MetricsLog

    log = MetricsLog(tmp_path, resume_step=0)
    try:
        for step in (2, 4, 6):
            log.write(step, {"bc_loss": np.array([1.0, 2.0])})
            # What a SIGKILL now would leave (and what TensorBoard reads meanwhile):
            assert _tb_steps(tmp_path / "tb") == list(range(2, step + 1, 2))
    finally:
        log.close()


def test_clear_errors_for_bad_usage(tmp_path):
    workdir = f"--workdir={tmp_path}"
    # the console: exit status 1 and one line on stderr, the whole of what the user sees
    refused("--mode=train", workdir, prefix=(), expect=["--mode=train: value should be one of"])
    refused("--mode=all", workdir, "--config.stage1.algo=ppo", prefix=(),
            expect=["config.stage1.algo must be one of ('bc', 'cql'); got 'ppo'"])
    refused("--mode=all", expect=["--workdir is required"])
    refused("--mode=eval", f"--workdir={tmp_path / 'missing'}", expect=["does not exist", "--mode=demos"])
    refused("--mode=all", workdir, "--config.train.checkpoint_every=3",
            expect=["checkpoint_every (3) must be a multiple"])
    refused("--mode=all", workdir, "--config.stage2.stage2.crop_sise=3",
            expect=["--config.stage2.stage2.crop_sise: the config has no field 'crop_sise'; did you mean "
                    "'crop_size'?"])
    refused("--mode=all", workdir, "--config.stage2.crop_size=3",  # a field of stage 2's method
            expect=["--config.stage2.crop_size: the config has no field 'crop_size'; did you mean "
                    "'stage2.stage2.crop_size'?"])
    refused("--mode=all", workdir, "--task=reach-v9", expect=["unknown MetaWorld task 'reach-v9'"])
    refused("--mode=all", workdir, "--force", expect=["--force only applies to --mode=demos"])
    refused("--mode=all", workdir, config=str(tmp_path / "missing.py"),
            expect=[f"--config: no config file at {tmp_path / 'missing.py'}."])
    (tmp_path / "broken.py").write_text("def get_config(arg):\n    return (\n")
    refused("--mode=all", workdir, config=str(tmp_path / "broken.py"),
            expect=[f"--config: {tmp_path / 'broken.py'} failed to load (SyntaxError: "])
    refused("--mode=all", workdir, "--config.stage2.stage2.sigma=(0.1, nan, 0.1, 0.1, 0.1, 0.1, 1.0)",
            expect=["config.stage2.stage2.sigma must be 7 finite non-negative stds; got "
                    "(0.1, nan, 0.1, 0.1, 0.1, 0.1, 1.0)."])
    refused("--mode=stage1", workdir, "--accept_new_inputs",
            expect=["--accept_new_inputs only applies with --resume"])
    base = "--config.stage1.source=tests._bases:nudged_pose"
    refused("--mode=stage1", workdir, base, expect=["stage 1 is the base policy", "nothing to train"])
    refused("--mode=all", workdir, "--config.stage1.source=tests._bases:missing",
            expect=["config.stage1.source: base policy source 'tests._bases:missing': module "
                    "'tests._bases' has no attribute 'missing'."])
    refused("--mode=all", workdir, "--config.stage1.source=my_policy.py",
            expect=["config.stage1.source must be '' (our stage 1) or 'module.path:function'"])
    refused("--mode=all", workdir, base, "--config.stage2.select=validation",
            expect=["config.stage2.select='validation' rolls out stage 2 on our stage 1"])
    (tmp_path / "a_file").write_text("")
    refused("--mode=all", f"--workdir={tmp_path / 'a_file'}", expect=["a_file is a file; expected a folder"])
    assert not (tmp_path / "demos").exists(), "work started despite a bad flag"
    unprivileged = _unprivileged()
    if unprivileged is None:
        pytest.skip("running as root without setpriv's capability drop: permissions do not apply")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        refused("--mode=all", f"--workdir={locked}", prefix=unprivileged,
                expect=[f"--workdir {locked} is not writable (Permission denied)"])
        refused("--mode=all", f"--workdir={locked / 'new'}", prefix=unprivileged,
                expect=[f"--workdir {locked / 'new'} cannot be created (Permission denied)"])
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("overrides, message", [
    ({"stage1.network.mlp_hidden": 0}, "config.stage1.network.mlp_hidden must be a positive int; got 0."),
    ({"stage2.learning_rate": float("nan")},
         "config.stage2.learning_rate must be a number in (0, 10] (Adam steps of that size already diverge); got nan."),
    ({"stage2.cql.critic_lr": float("nan")}, "config.stage2.cql.critic_lr must be a finite number > 0; got nan."),
    ({"eval.bootstrap_reps": 0}, "config.eval.bootstrap_reps must be a positive int; got 0."),
    ({"eval.record_episodes": -1}, "config.eval.record_episodes must be an int >= 0; got -1."),
    ({"eval.correction_passes": 0}, "config.eval.correction_passes must be a positive int; got 0."),
    ({"eval.corrected_dims": (1, 1, 1)}, "config.eval.corrected_dims must be 7 flags of 0 / 1 (x, y, z, "
     "roll, pitch, yaw, gripper), at least one 1; got (1, 1, 1)."),
])
def test_config_validation_names_the_field(overrides, message):
    from twostage_jax.launch.launch_config import check_config

    with pytest.raises(ValueError) as e:  # the dataclass refuses the value when it is built
        check_config(_smoke(**overrides))
    assert str(e.value) == message


def test_stage2_without_stage1_and_a_second_fresh_stage1_are_refused(trained, tmp_path):
    wd = _synthetic_workdir(tmp_path / "wd")
    out = launch_in_process("--mode=stage2", f"--workdir={wd}")
    assert out.returncode == 2 and "stage 2 needs a trained stage 1" in out.stderr and "--mode=stage1" in out.stderr
    wd = _copy(trained, tmp_path / "trained")
    out = launch_in_process("--mode=stage1", f"--workdir={wd}")
    assert out.returncode == 2 and "already holds checkpoints" in out.stderr and "--resume" in out.stderr


def test_eval_and_resume_refuse_a_config_other_than_the_trained_one(trained, tmp_path):
    from twostage_jax.launch.evaluate import run_eval
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.train_stage import run_stage

    wd = _copy(trained, tmp_path / "wd")
    good = wd / "eval" / "results.json"
    good.parent.mkdir()
    good.write_text('{"good": true}')
    with pytest.raises(PipelineError) as e:
        run_eval(_smoke(**{"stage2.stage2.mode": "direct", "stage2.stage2.rotate": False}), wd)
    assert "config.stage2.stage2.mode: trained 'correction', now 'direct'" in str(e.value)
    assert "config.stage2.stage2.rotate: trained True, now False" in str(e.value)
    with pytest.raises(PipelineError, match=r"config\.stage2\.stage2\.crop_size: trained 16, now 8"):
        run_eval(_smoke(**{"stage2.stage2.crop_size": 8}), wd)
    assert good.read_text() == '{"good": true}'
    with pytest.raises(PipelineError, match=r"cannot resume stage1: .*config\.stage1\.learning_rate: "
                                                     r"trained 0\.0003, now 0\.01"):
        run_stage(_smoke(**{"stage1.learning_rate": 0.01}), wd, 1, resume=True)
    with pytest.raises(PipelineError, match=r"config\.stage1\.network\.mlp_hidden: trained 8, now 16"):
        run_stage(_smoke(stage2_name="wide", **{"stage1.network.mlp_hidden": 16}), wd, 2)
    assert not (wd / "wide" / "pairing.json").exists()


def test_each_stage_keeps_the_config_it_was_started_with(trained, tmp_path):
    wd = _copy(trained, tmp_path / "wd")
    records = [wd / "stage1" / "config.json", wd / "stage2" / "config.json"]
    for path in records:
        assert json.loads(path.read_text())["config"]["stage1"]["num_steps"] == 8, path
    edited = json.loads(records[0].read_text())
    edited["note"] = "a hand edit"
    records[0].write_text(json.dumps(edited))
    before = [path.read_bytes() for path in records]
    out = launch_in_process("--mode=stage2", f"--workdir={wd}", "--resume")  # both stages are trained: nothing to do
    assert out.returncode == 0 and "nothing to do" in out.stderr, out.stderr[-3000:]
    assert [path.read_bytes() for path in records] == before
    assert not (wd / "config.json").exists(), "a later mode wrote a workdir-wide config"


def test_demos_refuses_to_replace_a_dataset_and_the_advice_is_safe(trained, tmp_path):
    wd = _copy(trained, tmp_path / "wd")
    dataset = wd / "demos" / "dataset.npz"
    before = dataset.read_bytes()
    out = launch_in_process("--mode=demos", f"--workdir={wd}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "stage1, stage2 were trained on it" in out.stderr and "pass --force" in out.stderr
    assert dataset.read_bytes() == before
    # An unreadable dataset: the advice is the command that may replace it, with its settings.
    dataset.write_bytes(b"PK\x03\x04 truncated")
    out = launch_in_process("--mode=stage2", f"--workdir={wd}", "--config.stage2_name=again")
    assert out.returncode == 2 and "--mode=demos --force" in out.stderr and "demos/config.json" in out.stderr


@pytest.mark.sim
def test_demos_force_replaces_the_dataset_and_records_its_config(tmp_path):
    from twostage_jax.launch.demos import run_demos
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.workdir import dataset_path, load_demos

    wd = _synthetic_workdir(tmp_path / "wd")
    before = dataset_path(wd).read_bytes()
    config = _smoke(**{"demos.num_demos": 1})
    with pytest.raises(PipelineError, match="pass --force"):
        run_demos(config, wd)
    assert dataset_path(wd).read_bytes() == before
    run_demos(config, wd, force=True)
    assert dataset_path(wd).read_bytes() != before
    assert load_demos(wd).images.shape[1:3] == (32, 32)
    assert json.loads((wd / "demos" / "config.json").read_text())["config"]["demos"]["num_demos"] == 1


def test_eval_checks_its_folder_is_writable_before_rolling_out(trained, tmp_path):
    wd = _copy(trained, tmp_path / "wd")
    out_dir = wd / "eval"
    out_dir.mkdir()
    (out_dir / "results.json").write_text('{"good": true}')
    unprivileged = _unprivileged()
    if unprivileged is None:
        pytest.skip("running as root without setpriv's capability drop: permissions do not apply")
    out_dir.chmod(0o555)
    try:
        out = _launch("--mode=eval", f"--workdir={wd}", "--config.demos.image_size=32",
                      prefix=unprivileged)
    finally:
        out_dir.chmod(0o755)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"{out_dir} is not writable (Permission denied)" in out.stderr
    assert "episode" not in out.stderr, "it rolled out before checking"
    assert (out_dir / "results.json").read_text() == '{"good": true}'


def test_a_users_base_policy_is_evaluated_alone_and_corrected(trained, tmp_path):
    # A base policy of the user's (host side) in place of stage 1, corrected by the workdir's
    # stage 2 (trained beside our stage 1: evaluation says so), on the same layouts.
    from tests._bases import STEP
    from twostage_jax.launch import base_source
    from twostage_jax.launch.workdir import load_held_out

    wd = _copy(trained, tmp_path / "wd")
    source = "tests._bases:nudged_pose"
    base = [f"--config.stage1.source={source}", "--config.demos.image_size=32"]
    out = launch_in_process("--mode=eval", f"--workdir={wd}", *base, "--config.eval.workers=1",
                            "--config.eval.num_episodes=1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"base={source}" in out.stdout and "corrected" in out.stdout
    assert f"stage 2 was trained against stage-1 step(s) [8, 8]" in out.stderr
    assert f"but stage 1 now is the base policy {source}" in out.stderr
    res = json.loads((wd / "eval" / "results.json").read_text())
    assert res["stage1_source"] == source and res["stage1_steps"] == [] and res["num_seeds"] == 2
    alone = res["modes"]["stage1"]["episodes"]
    assert alone[0] == alone[1]  # the base alone does not depend on stage 2's training seed
    # resuming stage 2 on the base is refused, naming both, unless --accept_new_inputs
    out = launch_in_process("--mode=stage2", f"--workdir={wd}", "--resume", *base)
    assert out.returncode == 2, out.stderr[-3000:]
    assert (f"stage 2 was started on stage-1 step(s) [8, 8]; stage 1 now is the base policy {source}"
            in out.stderr)
    # calibrating to it: a host-side base is shown every held-out transition
    validation = load_held_out(wd)
    a1, a = base_source.validation_actions(_smoke(**{"stage1.source": source}), wd, validation)
    np.testing.assert_allclose(a1, np.clip(np.asarray(validation.pose) + STEP, -1, 1))
    np.testing.assert_array_equal(a, np.asarray(validation.action))


def test_a_failed_eval_leaves_the_previous_results_whole(trained, tmp_path, monkeypatch, caplog):
    from twostage_jax.evaluation import plots
    from twostage_jax.launch import eval_jobs as rollouts
    from twostage_jax._io import DiskFullError
    from twostage_jax.launch.evaluate import run_eval
    from twostage_jax import evaluation
    from twostage_jax.evaluation import rollouts as eval_rollouts

    wd = _copy(trained, tmp_path / "wd")
    old = {"results.json": '{"old": true}', "success.png": "old plot", "rollout_stage1.png": "old frames"}
    (wd / "eval").mkdir()
    for name, text in old.items():
        (wd / "eval" / name).write_text(text)

    class Env:  # the rollouts are not what this test is about
        camera = None

        def close(self):
            pass

    monkeypatch.setattr(rollouts, "env_factory", lambda config: Env)
    empty = np.zeros((0, 7), np.float32)
    monkeypatch.setattr(eval_rollouts, "rollout", lambda env, act, layout, record=False:
                        evaluation.Episode(layout % 2 == 0, 1, np.zeros((0,), np.uint8),
                                                    empty, empty, 0))
    learning_curves = plots.learning_curves

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "learning_curves", disk_full)
    config = _smoke(**{"eval.record_episodes": 0, "eval.bootstrap_reps": 10, "eval.workers": 1})
    with pytest.raises(DiskFullError) as e:
        run_eval(config, wd)
    assert str(e.value).startswith(f"no space left on the device while writing the evaluation results "
                                   f"(eval/) to {wd} (")
    assert "free there); the previous results are intact; free some space" in str(e.value)
    assert {p.name: p.read_text() for p in (wd / "eval").iterdir()} == old
    assert not [p.name for p in wd.iterdir() if p.name.startswith(".")], "temporary folders left behind"

    monkeypatch.setattr(plots, "learning_curves", learning_curves)
    (wd / ".eval.tmp-killed").mkdir()  # left by an evaluation killed while replacing eval/
    with caplog.at_level(logging.WARNING):
        results = run_eval(config, wd)
    assert "eval: an earlier evaluation was stopped while replacing it: removed .eval.tmp-killed" in caplog.text
    assert not [p.name for p in wd.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in (wd / "eval").iterdir()) == ["learning_curves.png", "results.json", "success.png"]
    assert json.loads((wd / "eval" / "results.json").read_text()) == json.loads(json.dumps(results.to_dict()))
    assert results.modes["two_stage"].per_seed == (0.5, 0.5)


def test_stage2_refuses_a_damaged_stage1_checkpoint(trained, tmp_path):
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.train_stage import run_stage

    wd = _copy(trained, tmp_path / "wd")
    _damage(wd / "stage1" / "checkpoints" / "8")
    with pytest.raises(PipelineError, match=r"checkpoint step 8 .* is damaged .* --mode=stage1 --resume"):
        run_stage(_smoke(stage2_name="again"), wd, 2)
    assert not (wd / "again" / "pairing.json").exists()


def test_resume_falls_back_to_the_newest_intact_checkpoint(trained, tmp_path, caplog):
    from twostage_jax.launch.train_stage import run_stage
    from twostage_jax.checkpoint import Checkpointer

    wd = _copy(trained, tmp_path / "wd")
    _damage(wd / "stage1" / "checkpoints" / "8")
    with caplog.at_level(logging.INFO):
        summary = run_stage(_smoke(), wd, 1, resume=True)
    assert summary["final_step"] == 8
    assert "falling back to step 4, the newest intact checkpoint" in caplog.text
    from twostage_jax.launch.workdir import trained_on
    from twostage_jax.provenance import environment_record
    record = json.loads((wd / "stage1" / "config.json").read_text())
    assert [r["from_step"] for r in record["resumed"]] == [4] and record["config"]["stage1"]["num_steps"] == 8
    assert trained_on(wd / "stage1")[-1] == environment_record()  # the start's, then the resume's
    assert (wd / "stage1" / "damaged_checkpoints" / "8" / "state").is_dir(), "the damaged step was not kept"
    ckpt = Checkpointer(wd / "stage1" / "checkpoints")
    try:
        assert ckpt.all_steps() == [4, 8]
        ckpt.verify(8)
    finally:
        ckpt.close()
    rows = [json.loads(x) for x in (wd / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["seed"] == 0] == [2, 4, 6, 8]
    # Nested metrics are logged under the flat names summarize.py and committed results read.
    assert {"bc_loss", "position_error", "gripper_error", "grad_norm"} <= set(rows[0])


def test_method_options_are_validated_before_work():
    from twostage_jax.launch.bounds import check_bounds
    from twostage_jax.launch.launch_config import check_config

    def check(match, **fields):
        with pytest.raises(ValueError, match=match):  # when the config is built, or by its checks
            config = _smoke(**{k.replace("__", "."): v for k, v in fields.items()})
            check_config(config)
            check_bounds(config)

    check("num_held_out", demos__num_held_out=0)  # the default stage 2 is calibrated
    check("num_held_out", demos__num_held_out=0, calibrate__sigma=False, calibrate__crop_size=True)
    check("crop_size", stage2__stage2__crop_size=-4)
    check("held_out_seed", demos__num_held_out=5, demos__held_out_seed=100_001)
    check("held_out_seed", demos__num_held_out=5, demos__held_out_seed=2)
    check("sigma_floor", demos__num_held_out=2, calibrate__sigma=True, calibrate__sigma_floor=0.0)
    check("sigma_floor must be a finite number", calibrate__sigma_floor=float("inf"))
    # sizes no machine holds: refused in one line naming the field, before anything is allocated
    check(r"config\.num_seeds \(10+\) x the stage-1 networks .* need at least .* TiB", num_seeds=10**18)
    check(r"config\.eval\.num_episodes makes 4,000,0[0,]+ episodes", eval__num_episodes=10**18)
    check(r"config\.select\.episodes makes .* episodes in all, whose bookkeeping alone needs",
          stage1__select="validation", select__episodes=10**9)
    check(r"config\.stage1\.network\) at least|config\.stage1\.network, at least", stage1__network__mlp_hidden=10**18)
    check(r"correction_passes must be at most 16", eval__correction_passes=10**18)
    check(r"config\.eval\.bootstrap_reps \(10+\) x config\.num_seeds", eval__bootstrap_reps=10**18)
    check(r"config\.demos\.num_demos \(3\) x max_keyframes \(10+\) keyframe images", demos__max_keyframes=10**15)
    check(r"num_steps must be a positive int below 2\*\*31", stage1__num_steps=10**12)
    check(r"learning_rate must be a number in \(0, 10\]", stage1__learning_rate=1e300)
    check(r"select\.first_share must lie in \(0, 1\]", select__first_share=0.0)
    check(r"select\.keep must be one of", select__keep="best")
    check(r"data\.min_visible must lie in \[0, 1\]", data__min_visible=1.5)
    check("crop_coverage", demos__num_held_out=2, calibrate__crop_size=True, calibrate__crop_coverage=1.5)
    check("min_move", stage2__min_move=-0.01)
    check("gripper_clip", stage2__stage2__gripper_clip=1.5)
    check(r"perturbation='residuals' draws from stage 1's held-out residuals, kept when stage 2 is "
          r"calibrated: set config\.calibrate\.sigma=True", calibrate__sigma=False,
          stage2__stage2__perturbation="residuals")
    check("sigma_scales", stage2__stage2__sigma_scales=())
    check(r"config\.eval\.critic_samples \(2\) lets stage 2's critic choose the correction: it needs CQL",
          eval__critic_samples=2)
    check("crop_encoder", stage2__network__crop_encoder="attention")
    check(r"config\.stage2\.algo \('cql'\) must equal config\.stage1\.algo", stage2__algo="cql")
    # RLBench holds out its folder's last episodes as held-out demos: the defaults validate
    check_config(_smoke(env="rlbench", rlbench_root="/demos"))


def test_paper_variant_restores_the_papers_method():
    from twostage_jax.launch.workdir import train_config
    from twostage_jax.configs import quickstart

    # Whatever the defaults are, :paper builds the paper's method (Sec. IV-V).
    c = quickstart.get_config("paper")
    t2 = train_config(c, 2)
    assert t2.stage2.sigma == (0.1,) * 6 + (1.0,) and t2.stage2.crop_size == 64
    assert t2.stage2.loss_weighting == "none" and t2.stage2.gripper_clip is None
    assert t2.min_move == 0.0 and train_config(c, 1).min_move == 0.0
    assert t2.network.crop_encoder == "flatten" and t2.network.stage2_pose_input
    assert not t2.network.coord_channels and not c.calibrate.any
    assert quickstart.get_config("cql,paper").stage2.train_config().stage2.crop_size == 32


def test_each_stage_has_its_own_cql_config():
    from twostage_jax.configs import repro
    from twostage_jax.launch.workdir import config_differences, program_fields, train_config
    from twostage_jax.launch.launch_config import to_dict

    base = _smoke("cql")
    c = _smoke("cql", **{"stage1.cql.actor_lr": 1e-3})  # stage 1 only; its critic and stage 2 keep theirs
    cal = {"sigma": [0.1] * 7, "crop_size": 8}
    t1, t2 = train_config(c, 1), train_config(c, 2, calibration=cal)
    assert (t1.cql.actor_lr, t1.cql.critic_lr) == (1e-3, 3e-4)
    assert (t2.cql.actor_lr, t2.cql.critic_lr) == (1e-4, 3e-4)
    # the stage's rate is what a resume compares (a checkpoint trained at 1e-4 is refused)
    assert program_fields(c, 1)["stage1.cql.actor_lr"] == 1e-3
    assert config_differences(to_dict(base), c, 1) == ["config.stage1.cql.actor_lr: trained 0.0001, now 0.001"]
    assert config_differences(to_dict(base), c, 2) == []
    # the actor's encoder gradient, per stage in the same way
    c = _smoke("cql", **{"stage2.cql.actor_encoder_grad": True})
    assert (train_config(c, 1).cql.actor_encoder_grad,
            train_config(c, 2, calibration=cal).cql.actor_encoder_grad) == (False, True)
    assert config_differences(to_dict(base), c, 1) == []
    assert config_differences(to_dict(base), c, 2) == ["config.stage2.cql.actor_encoder_grad: trained False, now True"]
    # the reduced study config keeps the paper's stage-1 rates; ':paper' changes only stage 2's method
    r = repro.get_config("cql,paper")
    assert (train_config(r, 1).cql.actor_lr, train_config(r, 1).cql.critic_lr) == (1e-4, 3e-4)
    assert program_fields(r, 1) == program_fields(repro.get_config("cql"), 1)
    # its stage-2 actor learns at 1e-3, except in the paper arm, which keeps the paper's 1e-4
    assert train_config(r, 2, calibration=cal).cql.actor_lr == 1e-4
    ours = train_config(repro.get_config("cql"), 2, calibration=cal).cql
    assert (ours.actor_lr, ours.critic_lr) == (1e-3, 3e-4)
    # both algorithms' stage 2 acts with each seed's step chosen on validation; the paper arm
    # trains the paper's fixed budget and acts with its last step
    for algo in ("bc", "cql"):
        ours, paper = repro.get_config(algo).stage2, repro.get_config(f"{algo},paper").stage2
        assert ours.select == "validation" and ours.select_steps == repro.STAGE2_SELECT_STEPS[algo]
        assert ours.num_steps == max(ours.select_steps)
        assert paper.select == "last" and paper.num_steps == repro.STEPS[algo][1]



def test_selection_records_its_choice_and_a_repeated_run_makes_the_same(trained, tmp_path, monkeypatch):
    # Checkpoint selection on validation layouts through the launcher's modules. The rollouts
    # are stubbed (no simulator, nothing compiled): an episode succeeds by a deterministic
    # function of the stage-1 parameters it is given and of its layout, so each candidate
    # checkpoint of each seed gets its own validation success.
    import jax

    from twostage_jax.evaluation import halving
    from twostage_jax.launch import selection
    from twostage_jax.launch.evaluate import run_eval
    from twostage_jax.launch.train_stage import run_stage
    from twostage_jax.launch.workdir import load_params

    def outcome(params1, layout):
        leaf = jax.tree_util.tree_leaves(params1)[0]
        return int(abs(float(np.asarray(leaf).sum())) * 1e6 + layout) % 3 != 0

    _fake_rollouts(monkeypatch, outcome)
    workdir = _copy(trained, tmp_path / "wd")
    config = _smoke(**{"stage1.select": "validation", "select.episodes": 4, "eval.workers": 1,
                       "eval.record_episodes": 0})
    # stage 1 is trained already: the (resumed) stage selects its checkpoint and records it
    summary = run_stage(config, workdir, 1, resume=True)
    path = workdir / "stage1" / "selection.json"
    record = json.loads(path.read_text())
    assert record["steps"] == [4, 8] and np.shape(record["success"]) == (2, 2)
    assert record["layouts"] == [200_000, 200_003] and record["policy"] == "stage1"
    assert record["chosen_steps"] == halving.choose_steps(record["steps"], record["success"])
    assert summary["selection"]["chosen_steps"] == record["chosen_steps"]

    # the policy acts with each seed's chosen checkpoint
    params, steps = selection.policy_params(config, workdir, 1)
    assert steps == record["chosen_steps"]
    for s, k in enumerate(steps):
        at_k, _ = load_params(config, workdir, 1, None, k)
        same = jax.tree_util.tree_map(lambda a, b, s=s: np.array_equal(np.asarray(a)[s], np.asarray(b)[s]),
                                      params, at_k)
        assert all(jax.tree_util.tree_leaves(same))

    # a repeated run reads the record back; selecting again from scratch makes the same choice
    run_stage(config, workdir, 1, resume=True)
    assert json.loads(path.read_text()) == record
    path.unlink()
    (workdir / "stage1" / selection.EPISODES_FILE).unlink()
    again = selection.ensure_selection(config, workdir, 1, progress=False)
    assert again["chosen_steps"] == record["chosen_steps"] and again["success"] == record["success"]
    assert again["episodes_spent"] == again["episodes_full"] == 2 * 2 * 4  # no halving by default
    assert np.array_equal(np.mean(again["outcomes"], axis=2), again["success"])

    # evaluation acts with the selection and records it with its validation curve
    results = run_eval(config, workdir)
    assert list(results.stage1_steps) == record["chosen_steps"] and results.stage1_step == 8
    saved = json.loads((workdir / "eval" / "results.json").read_text())
    assert saved["selection"]["stage1"]["chosen_steps"] == record["chosen_steps"]
    assert saved["selection"]["stage1"]["success"] == record["success"]
    assert "setting" not in saved["selection"]["stage1"]


def _fake_rollouts(monkeypatch, outcome, whole_act: bool = False) -> list:
    """Stubs the simulator out of validation and evaluation rollouts: an episode succeeds
    when `outcome(stage-1 params, layout)` is true (with `whole_act`, `outcome(act, layout)`,
    given the whole act: partial(_call, policy, params1, params2)). Returns the list of layouts
    rolled out."""
    from twostage_jax import evaluation
    from twostage_jax.evaluation import rollouts as eval_rollouts
    from twostage_jax.launch import eval_jobs as rollouts

    class Env:
        camera = None

        def close(self):
            pass

    rolled = []

    def fake_rollout(env, act, layout, record=False):
        rolled.append(layout)
        empty = np.zeros((0, 7), np.float32)  # act = partial(_call, policy, p1, p2)
        ok = outcome(act if whole_act else act.args[1], layout)
        return evaluation.Episode(ok, 1, np.zeros((0,), np.uint8), empty, empty, 0)

    monkeypatch.setattr(rollouts, "env_factory", lambda config: Env)
    monkeypatch.setattr(eval_rollouts, "rollout", fake_rollout)
    return rolled


def test_no_correction_is_a_stage_2_candidate_and_its_seeds_act_with_stage_1_alone(trained, tmp_path,
                                                                                   monkeypatch):
    # seed 0's stage 2 fails every validation layout where its stage 1 alone succeeds; seed 1's
    # the other way round: seed 0 acts without correction, seed 1 with its stage 2
    from twostage_jax.launch import eval_jobs as rollouts, selection
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.evaluate import run_eval

    workdir = _copy(trained, tmp_path / "wd")
    config = _smoke(**{"stage2.select": "validation", "select.no_correction": True, "select.episodes": 4,
                       "eval.workers": 1, "eval.record_episodes": 0})
    params1, _ = selection.policy_params(config, workdir, 1)
    seed0 = rollouts.params_fingerprint(rollouts.seed_params(params1, 0))

    def outcome(act, layout):
        return (act.args[2] is None) == (rollouts.params_fingerprint(act.args[1]) == seed0)

    _fake_rollouts(monkeypatch, outcome, whole_act=True)
    record = selection.ensure_selection(config, workdir, 2, progress=False)
    assert record["steps"] == [selection.NO_CORRECTION, 4, 8] and record["chosen_steps"] == [0, 4]
    assert record["success"][0] == [1.0, 0.0]  # no correction: stage 1 alone on the validation layouts
    with pytest.raises(PipelineError, match=r"chose no correction for seed\(s\) \[0\]"):
        selection.policy_params(config, workdir, 2)
    results = run_eval(config, workdir)
    assert list(results.stage2_steps) == [0, 4]
    assert results.modes["stage1"].per_seed == (1.0, 0.0)
    assert results.modes["two_stage"].per_seed == (1.0, 1.0)  # seed 0 as stage 1, seed 1 corrected


def test_training_stops_at_the_validation_plateau_and_a_resume_extends_it(trained, tmp_path, monkeypatch):
    # Every candidate succeeds on the same layouts, so none improves on the first: with
    # patience P, training stops at the (P+1)-th candidate. Stage 1 of `trained` holds steps 4, 8.
    from twostage_jax.launch.train_stage import run_stage, trained_to_the_end

    rolled = _fake_rollouts(monkeypatch, lambda params1, layout: layout % 2 == 0)
    workdir = _copy(trained, tmp_path / "wd")
    config = _smoke(**{"stage1.select": "validation", "stage1.num_steps": 16,
                       "stage1.select_steps": (4, 8, 12, 16), "select.episodes": 8,
                       "select.first_share": 0.25, "select.patience": 1, "eval.workers": 1})
    summary = run_stage(config, workdir, 1, resume=True)  # 4 and 8 are rolled out: stop at 8
    assert summary["stopped"]["step"] == 8 and summary["final_step"] == 8
    assert "for 1 candidates" in summary["stopped"]["reason"]
    assert trained_to_the_end(config, workdir, 1) == 8  # --mode=all --resume: nothing to do
    record = json.loads((workdir / "stage1" / "selection.json").read_text())
    assert record["steps"] == [4, 8] and record["chosen_steps"] == [4, 4]  # ties: the earliest
    # the plateau rolled each candidate out on the first 2 of 8 layouts; tied, both go on to all 8
    assert record["episodes_spent"] == record["episodes_full"] == 2 * 2 * 8
    assert sorted(rolled) == sorted(list(range(200_000, 200_008)) * 4)  # never an episode twice

    # a resume with more patience trains on from 8 and stops at 12
    more = _smoke(**{"stage1.select": "validation", "stage1.num_steps": 16,
                     "stage1.select_steps": (4, 8, 12, 16), "select.episodes": 8,
                     "select.first_share": 0.25, "select.patience": 2, "eval.workers": 1})
    assert trained_to_the_end(more, workdir, 1) is None
    summary = run_stage(more, workdir, 1, resume=True)
    assert summary["stopped"]["step"] == 12 and summary["final_step"] == 12
    assert json.loads((workdir / "stage1" / "selection.json").read_text())["steps"] == [4, 8, 12]
    assert summary["train_cpu_seconds"] > 0 and summary["validation_cpu_seconds"] >= 0


def _files(workdir: Path) -> dict:
    """Every file of a workdir but its locks, with its size and modification time."""
    return {p.relative_to(workdir): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in workdir.rglob("*") if p.is_file() and ".locks" not in p.parts}


def test_a_second_launcher_on_a_workdir_is_refused_naming_the_holder_before_writing(trained, tmp_path):
    import socket

    wd = _copy(trained, tmp_path / "wd")
    before = _files(wd)
    holder = hold_lock(wd, "stage1", "write", "--mode=stage1 --resume")
    try:
        for args in (["--mode=stage1", "--resume", "--config.stage1.num_steps=12"],  # a second writer
                     ["--mode=stage2", "--config.stage2_name=other"],  # readers of what is written
                     ["--mode=eval"], ["--mode=all", "--resume"]):
            out = launch_in_process(f"--workdir={wd}", *args)
            lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]  # (and log lines)
            assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
            assert "Traceback" not in out.stderr and lines[0].startswith(f"error: stage1/ in {wd} is in use: pid {holder.pid} on "
                                       f"{socket.gethostname()} (--mode=stage1 --resume, started "), lines[0]
            assert "is writing it" in lines[0], lines[0]
    finally:
        release_lock(holder)
    assert _files(wd) == before, "a refused launcher wrote to the workdir"
    assert not (wd / "other").exists()


def test_mode_all_resumes_beside_a_run_reading_the_same_stage1(trained, tmp_path, monkeypatch):
    # Ablations sharing a stage 1 (experiments/studies/reproduce.py) resume side by side: a stage
    # trained to its num_steps is confirmed under a shared lock, and skipped.
    from twostage_jax.launch import main as launcher
    from twostage_jax.launch.errors import PipelineError

    def stop(config, workdir):
        raise PipelineError("(evaluation is not what this test is about)")

    monkeypatch.setattr(launcher, "run_eval", stop)
    wd = _copy(trained, tmp_path / "wd")
    before = _files(wd)
    sibling = hold_lock(wd, "stage1", "read", "--mode=all: stage2")
    try:
        out = launch_in_process(f"--workdir={wd}", "--mode=all", "--resume")
    finally:
        release_lock(sibling)
    assert out.returncode == 2 and "evaluation is not what this test is about" in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("nothing to do") == 2 and "reusing the dataset" in out.stderr, out.stderr[-3000:]
    assert _files(wd) == before


def test_a_stage_2_started_on_a_base_policy_resumed_without_it_names_the_base(tmp_path):
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.selection import stage1_pairing

    (tmp_path / "stage2").mkdir()
    (tmp_path / "stage2" / "pairing.json").write_text(json.dumps({"source": "tests._bases:nudged_pose"}))
    with pytest.raises(PipelineError, match=r"stage2 was started on the base policy tests\._bases:nudged_pose, "
                                            r"and this run names none; pass --config\.stage1\.source="):
        stage1_pairing(_smoke(), tmp_path)
    (tmp_path / "stage2" / "pairing.json").unlink()
    with pytest.raises(PipelineError, match="stage 2 needs a trained stage 1"):
        stage1_pairing(_smoke(), tmp_path)


def test_records_hold_no_machine_path_of_the_program(tmp_path, monkeypatch):
    import sys

    from twostage_jax.launch.workdir import config_record

    monkeypatch.setattr(sys, "argv", [str(Path(__file__).parents[1] / "twostage_jax" / "launch" / "__main__.py"),
                                      f"--workdir={tmp_path}"])
    assert config_record(_smoke(), tmp_path)["argv"] == ["twostage_jax.launch", "--workdir=."]
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/twostage", "--mode=eval"])
    assert config_record(_smoke())["argv"] == ["twostage", "--mode=eval"]


def test_a_leftover_calibration_made_with_other_settings_is_made_anew(trained, tmp_path):
    # a stage2/ emptied but for calibration.json, trained again with a higher sigma floor: the
    # old sigma (below the floor) was reused while stage2/config.json recorded the new floor
    from twostage_jax.launch.train_stage import ensure_calibration
    from twostage_jax.launch.workdir import load_demos

    wd = _copy(trained, tmp_path / "wd")
    path = wd / "stage2" / "calibration.json"
    old = json.loads(path.read_text())
    assert min(old["sigma"][:6]) < 0.2
    assert ensure_calibration(_smoke(), wd, load_demos(wd), fresh=True) == old  # same settings: kept
    new = ensure_calibration(_smoke(**{"calibrate.sigma_floor": 0.2}), wd, load_demos(wd), fresh=True)
    assert min(new["sigma"][:6]) >= 0.2 and new["settings"]["calibrate"]["sigma_floor"] == 0.2
    assert json.loads(path.read_text()) == new


def test_a_resume_on_changed_inputs_is_refused_naming_both_unless_accepted(trained, tmp_path):
    from twostage_jax.data.dataset import dataset_checksum, save_dataset
    from twostage_jax.testing import make_synthetic_dataset

    wd = _copy(trained, tmp_path / "wd")
    # stage 2 was started on other stage-1 steps than stage 1 acts with now
    pairing, calibration = wd / "stage2" / "pairing.json", wd / "stage2" / "calibration.json"
    for path in (pairing, calibration):
        record = json.loads(path.read_text())
        record.update({"steps": [4, 4]} if path == pairing else {"stage1_steps": [4, 4]})
        path.write_text(json.dumps(record))
    before = _files(wd)
    out = launch_in_process(f"--workdir={wd}", "--mode=stage2", "--resume")
    assert out.returncode == 2, out.stderr[-3000:]
    assert ("error: cannot resume stage2: stage 2 was started on stage-1 step(s) [4, 4]; stage 1 now "
            "acts at [8, 8]. Resume with the inputs it started on, pass --accept_new_inputs") in out.stderr
    assert _files(wd) == before
    out = launch_in_process(f"--workdir={wd}", "--mode=stage2", "--resume", "--accept_new_inputs")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(pairing.read_text())["steps"] == [8, 8]
    assert json.loads(calibration.read_text())["stage1_steps"] == [8, 8], "not re-calibrated"

    # the dataset changed under a trained stage 1
    record = wd / "stage1" / "config.json"
    was = json.loads(record.read_text())["dataset_sha256"]
    assert was == dataset_checksum(wd / "demos" / "dataset.npz")
    save_dataset(wd / "demos" / "dataset.npz",
                 make_synthetic_dataset(num_episodes=6, steps_per_episode=3, image_size=32, seed=3))
    now = dataset_checksum(wd / "demos" / "dataset.npz")
    out = launch_in_process(f"--workdir={wd}", "--mode=stage1", "--resume")
    assert out.returncode == 2, out.stderr[-3000:]
    assert (f"error: cannot resume stage1: demos/dataset.npz changed since stage1 started (checksum "
            f"{was[:12]} then, {now[:12]} now)") in out.stderr
    out = launch_in_process(f"--workdir={wd}", "--mode=stage1", "--accept_new_inputs")
    assert out.returncode == 1 and "--accept_new_inputs only applies with --resume" in out.stderr
    out = launch_in_process(f"--workdir={wd}", "--mode=stage1", "--resume", "--accept_new_inputs")
    assert out.returncode == 0, out.stderr[-3000:]
    stored = json.loads(record.read_text())
    assert stored["dataset_sha256"] == now and len(stored["accepted_inputs"]) == 1
    assert stored["config"]["stage1"]["num_steps"] == 8  # the start record is kept


def test_records_hold_paths_relative_to_the_workdir(trained, monkeypatch):
    import sys

    from twostage_jax.launch.workdir import config_record

    records = [p for p in trained.glob("*/*.json")]
    assert records and not [p for p in records if str(trained) in p.read_text()]
    pairing = json.loads((trained / "stage2" / "pairing.json").read_text())
    assert pairing["path"] == "stage1/checkpoints/8"
    assert (trained / pairing["path"]).is_dir()
    monkeypatch.setattr(sys, "argv", ["twostage", f"--workdir={trained}", "--mode=stage1"])
    assert config_record(_smoke(), trained)["argv"] == ["twostage", "--workdir=.", "--mode=stage1"]


def test_one_line_refusals_before_work_in_a_workdir(trained, tmp_path, monkeypatch):
    import tempfile

    def refused(wd, *args, expect):
        out = launch_in_process(f"--workdir={wd}", *args)
        lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]  # (and log lines)
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert expect in lines[0], lines[0]

    # evaluation before stage 1 names what is missing, not a folder it cannot write
    fresh = _synthetic_workdir(tmp_path / "fresh")
    refused(fresh, "--mode=eval", expect=f"evaluation needs a trained stage1, but {fresh / 'stage1' / 'checkpoints'} "
                                         "does not exist; run --mode=stage1 first")
    # a read-only stage folder on --resume: refused before any work
    wd = _copy(trained, tmp_path / "wd")
    stage = wd / "stage1"
    before = _files(wd)
    if os.geteuid() == 0:  # root writes anyway: the probe meets what a user without the permission would
        mkstemp = tempfile.mkstemp

        def denied(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == stage:
                raise PermissionError(errno.EACCES, "Permission denied")
            return mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    stage.chmod(0o555)
    try:
        refused(wd, "--mode=stage1", "--resume", "--config.stage1.num_steps=12",
                expect=f"{stage} is not writable (Permission denied); --resume continues stage1 in it")
    finally:
        stage.chmod(0o755)
    assert _files(wd) == before


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(trained, tmp_path,
                                                                                     monkeypatch):
    from typing import NamedTuple

    import twostage_jax as tj
    from twostage_jax.checkpoint import Checkpointer
    from twostage_jax.launch import train_stage

    def disk_full(self, step, state, meta):
        (self.directory / f"{step}.orbax-checkpoint-tmp-1700000000").mkdir()  # what orbax had begun
        raise OSError(errno.ENOSPC, "No space left on device")

    class Metrics(NamedTuple):
        bc_loss: np.ndarray

    # the training steps are not what this test is about: none runs (nothing is compiled)
    monkeypatch.setattr(tj, "run_seeds", lambda train, states, data, n, strategy, mesh:
                        (states, Metrics(np.ones((2, n)))))
    monkeypatch.setattr(train_stage, "_held_out_evaluator", lambda *args: None)
    monkeypatch.setattr(Checkpointer, "save", disk_full)
    wd = _copy(trained, tmp_path / "wd")
    out = launch_in_process(f"--workdir={wd}", "--mode=stage1", "--resume", "--config.stage1.num_steps=12")
    lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]  # (and log lines)
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    checkpoints = wd / "stage1" / "checkpoints"
    assert lines[0].startswith(f"error: no space left on the device while writing the stage1 checkpoint of "
                               f"step 12 to {checkpoints} ("), lines[0]
    assert lines[0].endswith("free there); its partial files were removed and step 8 is the newest "
                             "checkpoint; free some space and continue with --resume."), lines[0]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["4", "8"]


def test_a_batch_clearly_too_big_for_memory_is_refused_before_training(trained, tmp_path, monkeypatch):
    from twostage_jax.launch import train_stage
    from twostage_jax.launch.errors import PipelineError

    wd = _copy(trained, tmp_path / "wd")
    before = _files(wd)
    monkeypatch.setattr(train_stage, "available_memory", lambda: (2**19, "host"))
    with pytest.raises(PipelineError) as e:
        train_stage.run_stage(_smoke(**{"stage1.num_steps": 12, "seed_strategy": "sequential"}), wd, 1,
                              resume=True)
    # the dataset's arrays + 1 seed at a time (CPU) x batch 8 x 32x32x3 float32 x 8 (768 KiB)
    assert str(e.value) == ("stage1 needs at least 845 KiB of host memory (the dataset 77 KiB; 1 seed(s) at "
                            "once x batch 8 of 32x32 images, about 768 KiB), but 512 KiB is available; lower "
                            "config.stage1.batch_size or config.stage1.image_size, train the seeds one "
                            "after another (--config.seed_strategy=sequential), or record fewer demos.")
    assert _files(wd) == before


def test_orbax_reports_of_a_full_disk_are_left_to_the_one_line_error():
    # orbax's writer threads log a traceback each when the disk fills (20 of them once) before
    # the save raises, which the launcher reports in one line
    import logging

    from twostage_jax.launch.main import _DropLibraryInfo

    def record(path, level, message):
        return logging.LogRecord("absl", level, path, 1, message, None, None)

    keep = _DropLibraryInfo().filter
    orbax = "/site-packages/orbax/checkpoint/_src/futures/future.py"
    assert not keep(record(orbax, logging.ERROR, "raised an exception: RESOURCE_EXHAUSTED: Error writing"))
    assert keep(record(orbax, logging.ERROR, "raised an exception: PERMISSION_DENIED"))  # others stay
    assert not keep(record(orbax, logging.INFO, "saving"))
    assert keep(record("/twostage_jax/launch/main.py", logging.INFO, "JAX on cpu"))


def test_a_stage2_drawing_from_stage1s_residuals_keeps_its_bank_and_trains_on_it(trained, tmp_path):
    from twostage_jax import calibration as cal
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.predictions import stage1_actions
    from twostage_jax.launch.train_stage import run_stage
    from twostage_jax.launch.workdir import load_held_out, load_params, train_inputs

    wd = _copy(trained, tmp_path / "wd")
    config = _smoke(stage2_name="residuals", **{"stage2.stage2.perturbation": "residuals",
                                                "stage2.stage2.sigma_scales": (1.0, 2.0)})
    assert run_stage(config, wd, 2)["final_step"] == 8
    record = json.loads((wd / "residuals" / "calibration.json").read_text())
    held_out = load_held_out(wd)
    params1, _ = load_params(config, wd, 1)
    a1 = stage1_actions(config, params1, held_out).reshape(-1, 7)
    expected = cal.residual_bank(a1, np.tile(np.asarray(held_out.action), (2, 1)))
    np.testing.assert_array_equal(train_inputs(config, wd, 2)["residuals"], expected)  # both seeds'
    assert record["residual_bank"] == {"file": "residuals.npy", "rows": expected.shape[0]}
    assert record["settings"]["perturbation"] == "residuals" and record["settings"]["sigma_scales"] == [1.0, 2.0]
    assert load_params(config, wd, 2)[1] == 8  # the bank is the data's: loading needs it too
    (wd / "residuals" / "residuals.npy").unlink()
    with pytest.raises(PipelineError, match=r"residuals\.npy cannot be read .* run --mode=stage2"):
        load_params(config, wd, 2)


def test_a_stage2_trained_on_cross_fit_stage1_actions(trained, tmp_path):
    from twostage_jax.launch import predictions
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.train_stage import run_stage
    from twostage_jax.launch.workdir import load_demos, load_params

    wd = _copy(trained, tmp_path / "wd")
    dataset = load_demos(wd)
    fold = predictions.folds(dataset, 3, 0)
    episodes = np.asarray(dataset.episode)
    for e in np.unique(episodes):  # a demo lies in one fold; 6 demos deal 2 to each of 3 folds
        assert len(set(fold[episodes == e])) == 1
    assert np.bincount(predictions.fold_of_episodes(dataset, fold)).tolist() == [2, 2, 2]
    with pytest.raises(PipelineError, match=r"crossfit_folds \(7\) exceeds the 6 training demos"):
        predictions.folds(dataset, 7, 0)

    config = _smoke(stage2_name="crossfit", **{"stage2.stage2.predicted_share": 0.5, "stage2.crossfit_folds": 3})
    assert run_stage(config, wd, 2)["final_step"] == 8
    predicted = np.load(wd / "crossfit" / "predicted.npy")
    record = json.loads((wd / "crossfit" / "crossfit.json").read_text())
    assert predicted.shape == (2, dataset.num_transitions, 2, 7) and np.all(np.abs(predicted) <= 1)
    assert record["settings"]["stage1"] == [8, 8] and record["settings"]["folds"] == 3
    assert record["folds"] == 3 and record["steps"] == 8 and record["demos_per_fold"] == [2, 2, 2]
    assert record["cpu_seconds"] > 0 and record["position_error_cm_median"] > 0
    # out of fold: other models than the stage 1 trained on every demo, so other actions
    full = predictions.stage1_actions(config, load_params(config, wd, 1)[0], dataset)
    assert not np.allclose(predicted[:, :, 0], full, atol=1e-4)
    # kept while stage 1, the dataset and the folds are unchanged; loading needs it too
    stamp = (wd / "crossfit" / "predicted.npy").stat().st_mtime_ns
    np.testing.assert_array_equal(predictions.ensure_predictions(config, wd, dataset), predicted)
    assert (wd / "crossfit" / "predicted.npy").stat().st_mtime_ns == stamp
    assert load_params(config, wd, 2)[1] == 8
    (wd / "crossfit" / "predicted.npy").unlink()
    with pytest.raises(PipelineError, match=r"predicted\.npy cannot be read .* run --mode=stage2"):
        load_params(config, wd, 2)
    # another fold count trains another stage 2
    other = _smoke(stage2_name="crossfit", **{"stage2.stage2.predicted_share": 0.5, "stage2.crossfit_folds": 2})
    with pytest.raises(PipelineError, match="crossfit_folds"):
        load_params(other, wd, 2)


def test_a_base_policys_own_actions_are_its_predictions(tmp_path):
    from tests._bases import STEP
    from twostage_jax.launch.predictions import ensure_predictions
    from twostage_jax.launch.workdir import load_demos

    wd = _synthetic_workdir(tmp_path / "wd")
    config = _smoke(stage2_name="based", **{"stage1.source": "tests._bases:nudged_pose",
                                           "stage2.stage2.predicted_share": 1.0})
    dataset = load_demos(wd)
    predicted = ensure_predictions(config, wd, dataset)
    assert predicted.shape == (1, dataset.num_transitions, 2, 7)
    np.testing.assert_allclose(predicted[0, :, 0], np.clip(np.asarray(dataset.pose) + STEP, -1, 1))
    np.testing.assert_allclose(predicted[0, :, 1], np.clip(np.asarray(dataset.next_pose) + STEP, -1, 1))
    assert json.loads((wd / "based" / "crossfit.json").read_text())["source"] == "tests._bases:nudged_pose"


def test_a_stage2_that_refines_another_runs_action(trained, tmp_path):
    import jax

    import twostage_jax as tj
    from twostage_jax.launch import refine, selection
    from twostage_jax.launch.errors import PipelineError
    from twostage_jax.launch.launch_config import check_config
    from twostage_jax.launch.train_stage import run_stage
    from twostage_jax.launch.workdir import load_demos, load_params, train_config

    wd = _copy(trained, tmp_path / "wd")
    dataset = load_demos(wd)
    zoom = {"stage2.refines": "stage2", "stage2.stage2.predicted_share": 1.0, "stage2.stage2.crop_size": 8}
    config = _smoke(stage2_name="zoom", **zoom)
    check_config(config)
    with pytest.raises(PipelineError, match=r"refines='nothing'.*cannot be read.*--config.stage2_name=nothing"):
        run_stage(_smoke(stage2_name="zoom", **{**zoom, "stage2.refines": "nothing"}), wd, 2)
    assert run_stage(config, wd, 2)["final_step"] == 8
    # it trains on the first run's corrected actions: 2 seeds x DRAWS draws of Algo. 1 around each demo
    predicted = np.load(wd / "zoom" / "predicted.npy")
    record = json.loads((wd / "zoom" / "crossfit.json").read_text())
    assert predicted.shape == (2 * refine.DRAWS, dataset.num_transitions, 2, 7)
    assert record["settings"]["refines"] == "stage2" and record["settings"]["stage1"] == {"stage1": [8, 8], "stage2": [8, 8]}
    assert record["position_error_cm_median"] > 0
    # it acts after the first run: the first's parameters, with its own under 'refine'
    params, steps = selection.policy_params(config, wd, 2, dataset)
    first, _ = load_params(_smoke(), wd, 2)
    own, _ = load_params(config, wd, 2)
    assert steps == [8, 8]
    for a, b in zip(jax.tree_util.tree_leaves({**first, "refine": own}), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
    c2, refining = refine.acting_configs(config, wd)  # (make_policy(c1, c2, refine=refining); test_policy)
    assert c2.stage2.crop_size == 16 and refining.stage2.crop_size == 8
    p1 = jax.tree_util.tree_map(lambda x: x[0], load_params(config, wd, 1)[0])
    image, cam = dataset.observed(np.asarray(dataset.obs_index)[:2])
    out = tj.make_policy(train_config(config, 1), c2, dataset.workspace, refine=refining)(
        p1, jax.tree_util.tree_map(lambda x: x[0], params), image, np.asarray(dataset.pose[:2]), cam)
    assert out.action.shape == (2, 7) and np.all(np.isfinite(out.action))
    # refused before any work: itself, no share of the first run's actions, a critic's choice
    for changes, match in [({"stage2.refines": "zoom"}, "another run than config.stage2_name"),
                           ({"stage2.stage2.predicted_share": 0.0}, "set it above 0"),
                           ({"select.no_correction": True}, "config.select.no_correction=False")]:
        with pytest.raises(ValueError, match=match):
            check_config(_smoke(stage2_name="zoom", **{**zoom, **changes}))
    for bad in ("stage1", "eval_zoom", "a/b"):
        with pytest.raises(ValueError, match="config.stage2.refines must be '' or the stage2_name"):
            _smoke(**{**zoom, "stage2.refines": bad})
