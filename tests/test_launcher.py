"""The absl launcher: end to end, SIGKILL + resume, and clear errors for bad usage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "configs" / "smoke.py")


def _launch(*args, wait=True, timeout=300):
    cmd = [sys.executable, "-m", "experiments.main", f"--config={SMOKE}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _synthetic_workdir(path: Path) -> Path:
    from twostage_jax.data.dataset import save_dataset
    from twostage_jax.testing import make_synthetic_dataset

    (path / "demos").mkdir(parents=True)
    save_dataset(path / "demos" / "dataset.npz",
                 make_synthetic_dataset(num_episodes=6, steps_per_episode=3, image_size=32))
    return path


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
    out = _launch("--mode=all", f"--workdir={tmp_path}", "--config.eval.curve_steps=(2,)",
                  "--config.eval.workers=2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for rel in ("config.json", "demos/dataset.npz", "demos/stats.json", "stage1/metrics.jsonl",
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

    # A named stage-2 ablation shares the stage 1 and the dataset of the workdir.
    named = ["--config.stage2_name=direct", "--config.stage2.mode=direct"]
    out = _launch("--mode=stage2", f"--workdir={tmp_path}", *named)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _launch("--mode=eval", f"--workdir={tmp_path}", *named)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "eval_direct" / "results.json").read_text())
    assert res["stage2_mode"] == "direct" and res["stage1_step"] == 8
    # stage 1 alone is not re-rolled for an ablation that shares it: same per-episode results
    first = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["modes"]["stage1"]["episodes"] == first["modes"]["stage1"]["episodes"]
    assert "reusing stage-1 rollouts" in out.stderr
    assert json.loads((tmp_path / "direct" / "pairing.json").read_text())["step"] == 8
    out = _launch("--mode=stage2", f"--workdir={tmp_path}", "--config.stage2_name=eval_x")
    assert out.returncode != 0 and "config.stage2_name must be a folder name" in out.stderr


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    steps = ["--config.stage1.num_steps=120", "--config.train.log_every=2",
             "--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=2"]
    ref = _synthetic_workdir(tmp_path / "ref")
    out = _launch("--mode=stage1", f"--workdir={ref}", *steps)
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

    out = _launch("--mode=stage1", f"--workdir={run}", "--resume", *steps)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    s_ref, p_ref = _final_params(ref)
    s_run, p_run = _final_params(run)
    assert s_ref == s_run == 120
    import jax

    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p_ref, p_run)
    rows = [json.loads(x) for x in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]
    steps_seen = [r["step"] for r in rows if r["seed"] == 0]
    assert steps_seen == list(range(2, 121, 2)), "metrics lost or duplicated across the resume"


def test_clear_errors_for_bad_usage(tmp_path):
    out = _launch("--mode=train", f"--workdir={tmp_path}")
    assert out.returncode != 0 and "--mode=train: value should be one of" in out.stderr
    out = _launch("--mode=all")
    assert out.returncode != 0 and "--workdir is required" in out.stderr
    out = _launch("--mode=eval", f"--workdir={tmp_path / 'missing'}")
    assert out.returncode != 0 and "does not exist" in out.stderr and "--mode=demos" in out.stderr
    out = _launch("--mode=all", f"--workdir={tmp_path}", "--config.train.checkpoint_every=3")
    assert out.returncode != 0 and "checkpoint_every (3) must be a multiple" in out.stderr
    out = _launch("--mode=all", f"--workdir={tmp_path}", "--config.algo=ppo")
    assert out.returncode != 0 and "TrainConfig.algo must be one of ('bc', 'cql'); got 'ppo'" in out.stderr
    out = _launch("--mode=all", f"--workdir={tmp_path}", "--config.stage2.crop_sise=3")
    assert out.returncode != 0 and "crop_size" in out.stderr
    out = _launch("--mode=all", f"--workdir={tmp_path}", "--task=reach-v9")
    assert out.returncode != 0 and "unknown MetaWorld task 'reach-v9'" in out.stderr
    assert not (tmp_path / "demos").exists(), "work started despite a bad flag"


def test_stage2_without_stage1_and_corrupted_checkpoint(tmp_path):
    wd = _synthetic_workdir(tmp_path / "wd")
    out = _launch("--mode=stage2", f"--workdir={wd}")
    assert out.returncode == 2 and "stage 2 needs a trained stage 1" in out.stderr and "--mode=stage1" in out.stderr
    out = _launch("--mode=stage1", f"--workdir={wd}")
    assert out.returncode == 0, out.stderr[-3000:]
    out = _launch("--mode=stage1", f"--workdir={wd}")
    assert out.returncode == 2 and "--resume" in out.stderr
    # Damage every array file of the latest checkpoint.
    latest = wd / "stage1" / "checkpoints" / "8" / "state"
    damaged = 0
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\x00garbage" * 4)
            damaged += 1
    assert damaged
    out = _launch("--mode=stage1", f"--workdir={wd}", "--resume", "--config.stage1.num_steps=12")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "could not be restored" in out.stderr and "delete that step directory" in out.stderr
    # A corrupted dataset is refused with a pointer to --mode=demos.
    (wd / "demos" / "dataset.npz").write_bytes(b"PK\x03\x04 truncated")
    out = _launch("--mode=stage2", f"--workdir={wd}")
    assert out.returncode == 2 and "--mode=demos" in out.stderr
