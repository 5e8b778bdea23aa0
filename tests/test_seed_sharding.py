"""Seeds sharded over a device mesh : equal to single-seed runs, really sharded,
padded and dropped when the count does not divide, checkpoints across device counts.

The multi-device checks run in a subprocess with `--xla_force_host_platform_device_count=4`,
so every other test keeps one CPU device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests._tiny import tiny_dataset
from twostage_jax import sharding

ROOT = Path(__file__).resolve().parents[1]

# Runs in a 4-device subprocess; writes a JSON report to argv[1] and a checkpoint to argv[2].
_SCRIPT = r"""
import json, os, sys
import jax, numpy as np
import twostage_jax as tj
from twostage_jax import sharding
from twostage_jax.checkpoint import Checkpointer
from tests._tiny import tiny_dataset
from tests.test_seed_sharding import small_config

report = {"devices": jax.device_count()}
cfg = small_config()
keys = jax.random.split(jax.random.PRNGKey(7), 4)
train, data = tj.make_train(cfg, 1), tj.prepare_data(tiny_dataset(), cfg)
single = jax.jit(train)  # one compiled single-seed program, run once per key
singles = [jax.device_get(single(k, data)) for k in keys]
ref = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *singles)

def close(a, b):
    try:
        jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
        return True
    except AssertionError as e:
        return str(e)[:300]

runs = {}
for name, n, strategy, num in (("d2_vmap", 2, "vmap", 4), ("d4_seq", 4, "sequential", 4),
                               ("d2_pad3", 2, "vmap", 3)):
    mesh = sharding.seed_mesh(n)
    states, metrics = tj.train_seeds(cfg, tiny_dataset(), keys[:num], 1, strategy, mesh=mesh)
    leaves = jax.tree_util.tree_leaves(states)
    runs[name] = {
        "equal": close((jax.device_get(states.params), jax.device_get(metrics)),
                       jax.tree_util.tree_map(lambda x: x[:num], (ref[0].params, ref[1]))),
        "specs": sorted({str(tuple(x.sharding.spec)) for x in leaves}),
        "devices_per_leaf": sorted({len(x.sharding.device_set) for x in leaves}),
        "shard_rows": sorted({s.data.shape[0] for x in leaves for s in x.addressable_shards}),
        "seed_sharded": all(x.sharding.is_equivalent_to(sharding.seed_sharding(mesh), x.ndim)
                            for x in leaves),
    }
    if name == "d2_vmap":  # save the 2-device sharded state, restore onto 4 devices
        ckpt = Checkpointer(sys.argv[2])
        ckpt.save(1, states, {"note": "2 devices"})
        mesh4 = sharding.seed_mesh(4)
        back, _ = ckpt.restore(sharding.abstract_state(jax.eval_shape(lambda: states), mesh4))
        ckpt.close()
        bl = jax.tree_util.tree_leaves(back)
        runs["restore_on_4"] = {"equal": close(jax.device_get(back), jax.device_get(states)),
                                "devices_per_leaf": sorted({len(x.sharding.device_set) for x in bl})}
report["runs"] = runs
with open(sys.argv[1], "w") as f:
    json.dump(report, f)
"""


def small_config():
    """The smallest stage-1 BC trainer (compiles fast on a busy 2-core machine)."""
    import twostage_jax as tj

    net = tj.NetworkConfig(conv_channels=(4, 4), crop_conv_channels=(4,), conv_strides=(2, 2),
                           mlp_hidden=8, head_hidden=(16,))
    return tj.TrainConfig(algo="bc", num_steps=3, batch_size=4, learning_rate=1e-3, network=net)


def forced_devices_env(count: int) -> dict[str, str]:
    """A subprocess environment with `count` CPU devices and this checkout first on the path."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}",
            "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("sharded")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(out / "report.json"), str(out / "ckpt")],
                          cwd=ROOT, env=forced_devices_env(4), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), out / "ckpt"


@pytest.mark.parametrize("run,devices", [("d2_vmap", 2), ("d4_seq", 4)])
def test_four_seeds_sharded_equal_four_single_seed_runs(four_devices, run, devices):
    report, _ = four_devices
    assert report["devices"] == 4
    r = report["runs"][run]
    assert r["equal"] is True, r["equal"]
    # Really sharded: every leaf spans the mesh's devices, each holding 4 / devices seeds.
    assert r["seed_sharded"] and r["devices_per_leaf"] == [devices]
    assert r["shard_rows"] == [4 // devices] and r["specs"] == ["('seeds',)"]


def test_seed_count_not_dividing_the_devices_is_padded_and_dropped(four_devices):
    r = four_devices[0]["runs"]["d2_pad3"]
    assert r["equal"] is True, r["equal"]  # 3 seeds on 2 devices = the first 3 single-seed runs
    assert not r["seed_sharded"] and r["shard_rows"] == [3]  # the kept seeds come back replicated


def test_sharded_checkpoint_restores_onto_other_device_counts(four_devices):
    report, directory = four_devices
    assert report["runs"]["restore_on_4"] == {"equal": True, "devices_per_leaf": [4]}
    # ... and onto this process's single device (saved on 2 of 4 devices in the subprocess).
    import twostage_jax as tj
    from twostage_jax.checkpoint import Checkpointer

    train, data = tj.make_train(small_config(), 1), tj.prepare_data(tiny_dataset(), small_config())
    like = jax.eval_shape(jax.vmap(train.init, in_axes=(0, None)), jax.random.split(jax.random.PRNGKey(7), 4),
                          data)
    ckpt = Checkpointer(directory)
    try:
        state, meta = ckpt.restore(like)
    finally:
        ckpt.close()
    assert meta["note"] == "2 devices" and state.step.shape == (4,)
    assert {len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(state)} == {1}
    np.testing.assert_array_equal(np.asarray(state.step), [3, 3, 3, 3])


def test_bad_meshes_and_seed_device_values_fail_clearly():
    assert sharding.parse_seed_devices("all") is None and sharding.parse_seed_devices("2") == 2
    assert sharding.parse_seed_devices(3) == 3
    for bad in ("0", "-1", "two", "1.5", True, ""):
        with pytest.raises(ValueError, match=r"`seed_devices` must be 'all' or a positive int"):
            sharding.parse_seed_devices(bad)
    assert sharding.seed_mesh("all") is None  # one device: today's unsharded path
    with pytest.raises(ValueError, match=r"seed_devices=2 exceeds the 1 cpu device"):
        sharding.seed_mesh(2)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match=r"`mesh` must be a jax.sharding.Mesh with an axis named 'seeds'"):
        sharding.shard_seeds(lambda s, d: (s, d), mesh)
    import twostage_jax as tj

    with pytest.raises(ValueError, match=r"axis named 'seeds'"):
        tj.train_seeds(small_config(), tiny_dataset(), jax.random.split(jax.random.PRNGKey(0), 2),
                       mesh=mesh)
    one = sharding.seed_mesh(jax.devices())  # an explicit single device: unsharded too
    assert one is None
    m = jax.sharding.Mesh(np.asarray(jax.devices() * 1), (sharding.SEED_AXIS,))
    assert sharding.padded_count(3, m) == 3


def test_initialize_distributed_checks_its_flags_first():
    for args, message in ((("localhost", 2, 0), "--coordinator_address must be 'host:port'"),
                          (("localhost:1234", 0, 0), "--num_processes must be a positive int"),
                          (("localhost:1234", 2, 2), r"--process_id must lie in \[0, 2\)")):
        with pytest.raises(ValueError, match=message):
            sharding.initialize_distributed(*args)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_their_share_of_the_seeds_and_process_0_writes(tmp_path, trained):
    """The launcher on 2 local CPU processes (1 device each, gloo collectives) trains the smoke
    config's 2 seeds, one per process, and equals the same stage trained by one process (the
    session's `trained` run: the same config on the same synthetic dataset)."""
    from twostage_jax.launch.workdir import load_params
    from tests._launcher import SMOKE, smoke, synthetic_workdir

    workdir = synthetic_workdir(tmp_path / "multi")
    port = _free_port()
    env = {**forced_devices_env(1), "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "twostage_jax.launch", f"--config={SMOKE}", "--mode=stage1",
         f"--workdir={workdir}", "--config.demos.image_size=32",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
        assert f"process {i} of 2" in out and "2 seeds sharded over 2 devices" in out, out[-2000:]
    stage = workdir / "stage1"
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 2 and {r["seed"] for r in rows} == {0, 1}  # process 0 wrote each once
    assert json.loads((stage / "summary.json").read_text())["final_step"] == 8

    (multi, step_m), (one, step_1) = (load_params(smoke(), wd, 1) for wd in (workdir, trained))
    assert step_m == step_1 == 8
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), multi, one)


@pytest.mark.parametrize("args,message", [
    (["--config.seed_devices=two"], "config.seed_devices must be 'all' or a positive int"),
    (["--config.seed_devices=3"], "config.seed_devices=3 exceeds the 1 cpu device"),
    (["--num_processes=2"], "missing --coordinator_address, --process_id"),
    (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=0", "--mode=all"],
     "--mode=all: several processes train a stage together"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"],
     "--coordinator_address must be 'host:port'"),
    (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=5"],
     r"--process_id must lie in [0, 2)"),
])
def test_launcher_rejects_bad_device_and_process_flags_in_one_line(tmp_path, args, message):
    # The launcher in this process (one CPU device, as in a 1-device subprocess); the console's
    # one-line error is shown by a subprocess in test_launcher.test_clear_errors_for_bad_usage.
    from tests._launcher import launch_in_process, synthetic_workdir

    assert jax.device_count() == 1
    workdir = synthetic_workdir(tmp_path / "wd")
    mode = [] if any(a.startswith("--mode") for a in args) else ["--mode=stage1"]
    proc = launch_in_process(f"--workdir={workdir}", "--config.demos.image_size=32", *mode, *args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not (workdir / "stage1").exists()  # refused before any work
