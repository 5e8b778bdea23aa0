"""Throughput benchmark: train steps, seed parallelism, crops, act latency, simulator.

Prints a table and writes JSON (atomically) with the backend, device, versions and, for every
row, the median over repeated timed runs after a warm-up call (always `block_until_ready`).
Compile time is reported separately wherever it is measured; it is never inside a median.

    python -m experiments.tools.benchmark --quick     # writes runs/benchmark/benchmark_cpu.json
    # the committed measurement (experiments/results/current/performance/README.md):
    python -m experiments.tools.benchmark --quick --out experiments/results/current/performance/benchmark_cpu.json
    python -m experiments.tools.benchmark --quick --sections=crop_cost --out runs/benchmark/crop.json  # a subset

Sizes (synthetic dataset from `twostage_jax.testing`, 128x128 frames, so no simulator needed):
  paper:      stage 1 on 128x128 images, batch 128, 4 conv layers x 32 channels, MLP 64, heads
              (256, 256); stage 2 on 64x64 (BC) / 32x32 (CQL) crops + a 16x16 end-effector
              crop, 3 conv layers x 32 channels, batch 128.
  quickstart: stage 1 on frames downscaled to 64x64, batch 32, 4 conv layers x 16 channels, MLP
              32, heads (128, 128); stage 2 on the same crops as the paper, 3 x 16 channels,
              batch 32; 3000 steps per stage (mirrors twostage_jax/configs/quickstart.py).

Rows:
  train_step/*       samples/s of one update step (stage 1/2, BC/CQL, paper/quickstart), with
                     the networks' default conv_impl ('auto'); `.../cql_over_bc` is the CQL
                     step's time over the BC step's at that size and stage, the two compiled
                     programs timed alternately in the same run.
  seeds/*            S = 1, 2, 5, 10 seeds of the quickstart stage-1 BC step: 'sequential' (the
                     single-seed program dispatched S times) vs 'vmap' (one program); `ratio` is
                     total seed-steps/s over one seed's seed-steps/s. Also conv_impl='xla' at
                     S = 5 (vmap gives grouped convolutions).
  crop/*             crops/s of `vmap(crop_at_pixel)` over 128 crops of a 128x128 image.
  batch_scaling/*    one seed's quickstart stage-1 BC step at batch 32, 64, 160; `merge_bound`
                     = S x t(32) / t(32 S), the most a one-program trainer of S seeds could gain
                     over S sequential seeds from bigger kernels on this machine.
  stage2_crop_cost/* stage-2 update step with on-the-fly crops (Algo. 1 + Eq. 5) vs the same
                     update on precomputed crops of the same shapes; the value is the extra
                     fraction (10 scanned steps per timing, timed alternately). Also the same
                     step without `Train.run`'s pipelining (`train.step` in a plain scan).
  seed_sharding/*    S = 4 seeds of the quickstart stage-1 BC step sharded over D = 1 and 2
                     forced CPU devices (`--xla_force_host_platform_device_count`, each D in its
                     own subprocess; D = 1 is the unsharded path), 'vmap' and 'sequential'
                     within a device. The forced devices share this machine's cores, so on 2
                     cores these rows measure the sharding machinery's overhead, not a speed-up.
  host_sync          quickstart stage-1 BC: 300 steps as one scan vs 3 chunks of 100 with a
                     `jax.device_get` of the metric means between chunks.
  quickstart_train   wall time of `jit(make_train(config, 1))(key, data)`'s first call (prepare_data +
                     compile + init + 3000 steps) over its warm call (the 3000 steps alone).
  act/*              two-stage policy latency (paper BC sizes), batch 1 and 64, incl. host checks.
  sim/*              MetaWorld keyframe step, low-level physics step, render (128x128), and demo
                     generation; 'unavailable' with the reason if the simulator cannot run.
  eval/*             episodes/s of evaluation rollouts (quickstart-size two-stage BC policy,
                     untrained, button-press-topdown-v3, 20 keyframes per episode), timed
                     alternately in one run: today's sequential loop (`rollout` with the plainly
                     batched policy), `EnvPool` with 1 worker and with N = the usable cores
                     (policy with row_by_row=True); worker start-up is reported separately.
  views/*            several cameras: each (size, stage, algo) update step with 3 views (the
                     synthetic front, side and top cameras) over the same step with 1, for each
                     `NetworkConfig.view_encoders` ('shared', 'separate', 'stacked'), the four
                     compiled programs timed alternately; the 3-view dataset's bytes over the 1-view's; and MetaWorld's
                     render of 3 cameras (corner, topview, gripperPOV) over 1 ('unavailable'
                     without the simulator).
  step_profile/*     one MetaWorld keyframe step (button-press-topdown-v3, 128x128, the same
                     random actions and layouts) split into physics (`do_simulation`), the
                     per-low-level-step observation and `evaluate_state` success checks,
                     rendering, and the rest (P-controller, mj_forward, bookkeeping): 'before'
                     with the full `_get_obs`, 'after' with `success_obs` (SUCCESS_OBS_TASKS),
                     timed alternately.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from experiments.tools import parse_tool_flags, usage_error
from twostage_jax._io import atomic_open
from twostage_jax.data.dataset import dataset_nbytes
from twostage_jax.bc import make_bc_update
from twostage_jax.cql import make_cql_optimizer, make_cql_update
from twostage_jax.geometry import crop_at_pixel
from twostage_jax.networks import VIEW_ENCODERS, NetworkConfig, resolve_conv_impl
from twostage_jax.policy import make_policy
from twostage_jax.testing import make_synthetic_dataset, synthetic_camera
from twostage_jax.training import (
    Stage2Config, TrainConfig, TrainData, init_seeds, make_train, prepare_data, sample_batch)

PAPER_NET = NetworkConfig(conv_channels=(32,) * 4, crop_conv_channels=(32,) * 3, mlp_hidden=64,
                          head_hidden=(256, 256))
QUICK_NET = NetworkConfig(conv_channels=(16,) * 4, crop_conv_channels=(16,) * 3, mlp_hidden=32,
                          head_hidden=(128, 128))
QUICKSTART_STEPS = 3000
SEED_COUNTS = (1, 2, 5, 10)
DEFAULT_OUT = "runs/benchmark/benchmark_cpu.json"  # the committed one: --out experiments/results/current/performance/benchmark_cpu.json


def size_config(size: str, stage: int, algo: str, **kw: Any) -> TrainConfig:
    """The benchmark's TrainConfig for `size` in ('paper', 'quickstart').

    Args:
      size: 'paper' or 'quickstart' (see the module docstring).
      stage: 1 or 2 (only stage 1 downsizes images in 'quickstart').
      algo: 'bc' or 'cql'; stage 2 crops 64x64 for BC and 32x32 for CQL as in the paper.
      **kw: TrainConfig overrides.
    """
    if size not in ("paper", "quickstart"):
        raise ValueError(f"`size` must be 'paper' or 'quickstart'; got {size!r}.")
    paper = size == "paper"
    base = dict(algo=algo, num_steps=QUICKSTART_STEPS, batch_size=128 if paper else 32,
                image_size=128 if paper or stage == 2 else 64,
                network=PAPER_NET if paper else QUICK_NET,
                stage2=Stage2Config(crop_size=64 if algo == "bc" else 32, ee_crop_size=16))
    base.update(kw)
    return TrainConfig(**base)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Runs `fn` `warmup` times (the first one timed as 'first_s'), then `repeats` timed runs.

    Returns:
      {'median_s', 'min_s', 'first_s', 'repeats'}; every call is `block_until_ready`-ed.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "first_s": first,
            "repeats": repeats}


def timed_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each fn, timed alternately (A B A B ...) so load drift hits all alike.

    Every fn is called once untimed first (warm-up); every call is `block_until_ready`-ed.
    """
    for f in fns.values():
        jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


class Bench:
    """Collects rows, prints them as they come and writes the JSON after each section."""

    def __init__(self, out: str, meta: dict[str, Any]) -> None:
        self.out, self.meta, self.rows = out, meta, []

    def add(self, name: str, value: Any, unit: str, **extra: Any) -> None:
        row = {"name": name, "value": value, "unit": unit, **extra}
        self.rows.append(row)
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        notes = "  ".join(f"{k}={_fmt(v)}" for k, v in extra.items() if k not in ("reason",))
        if "reason" in extra:
            notes += f"  reason={extra['reason']}"
        print(f"{name:44s} {shown:>14s} {unit:14s} {notes}", flush=True)

    def write(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        with atomic_open(self.out, "w") as f:
            json.dump({**self.meta, "rows": self.rows}, f, indent=1, default=_json_default)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def metadata(quick: bool) -> dict[str, Any]:
    """Backend, device, versions and machine facts."""
    import flax

    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')}",
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "conv_impl_auto": resolve_conv_impl("auto"),
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
                     "flax": flax.__version__, "optax": optax.__version__,
                     "numpy": np.__version__},
        "quick": quick,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": [_repo_relative(a) for a in sys.argv],  # no machine paths in committed JSON
    }


def _repo_relative(arg: str) -> str:
    """A command-line argument, with a path inside the repository made relative to it."""
    repo = Path(__file__).resolve().parents[2]
    try:
        return Path(arg).relative_to(repo).as_posix() if os.path.isabs(arg) else arg
    except ValueError:
        return arg


def _jaxlib_version() -> str:
    import jaxlib

    return jaxlib.__version__


def bench_dataset(size: int = 128):
    """The synthetic dataset the benchmarks train and crop on (16 episodes of 4 steps)."""
    return make_synthetic_dataset(num_episodes=16, steps_per_episode=4, image_size=size)


def _steady_run(trainer, data: TrainData, key: jax.Array, steps: int, repeats: int
                ) -> dict[str, float]:
    """Median seconds per update step of `trainer.run` over `steps` scanned steps."""
    state = jax.jit(trainer.init)(key, data)
    run = jax.jit(trainer.run, static_argnums=2)
    t0 = time.perf_counter()
    run = run.lower(state, data, steps).compile()
    compile_s = time.perf_counter() - t0
    call = lambda: run(state, data)
    t = timed(call, repeats)
    return {"step_s": t["median_s"] / steps, "compile_s": compile_s, "call": call, **t}


def bench_train_steps(b: Bench, ds, steps: int, repeats: int) -> dict[str, float]:
    """train_step/* rows: samples/s of each (size, stage, algo) update step, and the CQL step's
    time over the BC step's at the same size and stage.

    Each `cql_over_bc` ratio comes from one run: the compiled BC and CQL programs timed
    alternately (`timed_interleaved`), so a neighbour's load hits both; 3 x `repeats` times
    each at paper size, 10 x `repeats` at quickstart size (its steps are ~40x shorter, so a
    few repeats of them are noise).

    Returns:
      {'<size>_stage<k>': CQL step time / BC step time} for each size and stage.
    """
    ratios = {}
    for size in ("quickstart", "paper"):
        for stage in (1, 2):
            calls = {}
            for algo in ("bc", "cql"):
                cfg = size_config(size, stage, algo)
                trainer = make_train(cfg, stage)
                r = _steady_run(trainer, prepare_data(ds, cfg), jax.random.PRNGKey(0), steps, repeats)
                calls[algo] = r["call"]
                b.add(f"train_step/{size}/stage{stage}/{algo}", cfg.batch_size / r["step_s"],
                      "samples/s", step_ms=1e3 * r["step_s"], batch=cfg.batch_size,
                      compile_s=r["compile_s"], repeats=repeats, steps_per_run=steps)
            n = (3 if size == "paper" else 10) * repeats
            t = timed_interleaved(calls, n)
            ratios[f"{size}_stage{stage}"] = t["cql"] / t["bc"]
            b.add(f"train_step/{size}/stage{stage}/cql_over_bc", t["cql"] / t["bc"], "ratio",
                  bc_step_ms=1e3 * t["bc"] / steps, cql_step_ms=1e3 * t["cql"] / steps,
                  repeats=n, steps_per_run=steps, note="timed alternately")
        b.write()
    return ratios


def bench_seeds(b: Bench, ds, steps: int, repeats: int, xla_steps: int) -> dict[str, float]:
    """seeds/* rows (quickstart stage-1 BC); returns {'patches_vmap_5_over_seq_5': ratio, ...}.

    Each timing runs `steps` scanned steps per seed (`xla_steps` for conv_impl='xla', which is
    ~10x slower); sequential and vmapped runs are timed alternately.
    """
    out = {}
    for impl, steps in (("auto", steps), ("xla", xla_steps)):
        cfg = size_config("quickstart", 1, "bc",
                          network=dataclasses.replace(QUICK_NET, conv_impl=impl))
        trainer, data = make_train(cfg, 1), prepare_data(ds, cfg)
        counts = SEED_COUNTS if impl == "auto" else (5,)
        keys = jax.random.split(jax.random.PRNGKey(1), max(counts))
        states = init_seeds(trainer, keys, data)
        run1 = jax.jit(trainer.run, static_argnums=2).lower(
            jax.tree_util.tree_map(lambda x: x[0], states), data, steps).compile()
        per_seed = [jax.tree_util.tree_map(lambda x, i=i: x[i], states) for i in range(max(counts))]
        one = None
        for s in counts:
            sub = jax.tree_util.tree_map(lambda x: x[:s], states)
            t0 = time.perf_counter()
            runv = jax.jit(jax.vmap(trainer.run, in_axes=(0, None, None)), static_argnums=2).lower(
                sub, data, steps).compile()
            compile_s = time.perf_counter() - t0
            t = timed_interleaved({"seq": lambda: [run1(per_seed[i], data) for i in range(s)],
                                   "vmap": lambda: runv(sub, data)}, repeats)
            rate_seq = s * steps / t["seq"]
            rate_vmap = s * steps / t["vmap"]
            if impl == "auto" and s == 1:
                one = rate_seq
            base = one if impl == "auto" else rate_seq  # sequential ~ one seed's rate
            tag = resolve_conv_impl(impl)
            b.add(f"seeds/{tag}/S={s}/sequential", rate_seq, "seed-steps/s", ratio=rate_seq / base)
            b.add(f"seeds/{tag}/S={s}/vmap", rate_vmap, "seed-steps/s", ratio=rate_vmap / base,
                  vmap_over_sequential=rate_vmap / rate_seq, compile_s=compile_s)
            out[f"{tag}_vmap_{s}_over_seq_{s}"] = rate_vmap / rate_seq
        b.write()
    return out


SHARDING_SEEDS = 4


def seed_sharding_worker(devices: int, steps: int, repeats: int) -> dict[str, dict[str, float]]:
    """Times `run_seeds` on this process's devices (run it with `devices` forced ones).

    Returns:
      {strategy: {'rate': seed-steps/s, 'compile_s', 'median_s'}} for 'vmap' and 'sequential'.
    """
    from twostage_jax import sharding
    from twostage_jax.training import run_seeds

    if jax.device_count() != devices:
        raise RuntimeError(f"expected {devices} devices, found {jax.device_count()}.")
    cfg = size_config("quickstart", 1, "bc")
    train, data = make_train(cfg, 1), prepare_data(bench_dataset(), cfg)
    keys = jax.random.split(jax.random.PRNGKey(1), SHARDING_SEEDS)
    mesh = sharding.seed_mesh(devices)
    states = init_seeds(train, keys, data, mesh)
    out = {}
    for strategy in ("vmap", "sequential"):
        run = functools.partial(run_seeds, train, data=data, num_steps=steps, strategy=strategy, mesh=mesh)
        t0 = time.perf_counter()
        jax.block_until_ready(run(states))
        compile_s = time.perf_counter() - t0
        t = timed(lambda: run(states), repeats, warmup=1)
        out[strategy] = {"rate": SHARDING_SEEDS * steps / t["median_s"], "compile_s": compile_s,
                         "median_s": t["median_s"]}
    return out


def bench_seed_sharding(b: Bench, steps: int, repeats: int) -> dict[str, float]:
    """seed_sharding/* rows: each device count in a subprocess with forced CPU devices."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rates: dict[int, dict] = {}
    for devices in (1, 2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root + os.pathsep +
               os.environ.get("PYTHONPATH", ""), "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") +
               f" --xla_force_host_platform_device_count={devices}"}
        code = ("import json; from experiments.tools.benchmark import seed_sharding_worker as w; "
                f"print('RESULT', json.dumps(w({devices}, {steps}, {repeats})))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                              text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            b.add(f"seed_sharding/devices={devices}/*", "unavailable", "",
                  reason=(proc.stderr.strip().splitlines() or ["no output"])[-1][:300])
            continue
        rates[devices] = json.loads(line[len("RESULT "):])
        for strategy, r in rates[devices].items():
            b.add(f"seed_sharding/devices={devices}/S={SHARDING_SEEDS}/{strategy}", r["rate"],
                  "seed-steps/s", compile_s=r["compile_s"], steps_per_call=steps, repeats=repeats,
                  over_one_device=(r["rate"] / rates[1][strategy]["rate"] if 1 in rates else None),
                  note="forced CPU devices share the cores: overhead, not speed-up")
    b.write()
    return {f"{s}_2dev_over_1dev": rates[2][s]["rate"] / rates[1][s]["rate"]
            for s in ("vmap", "sequential") if 1 in rates and 2 in rates}


def bench_crops(b: Bench, repeats: int) -> None:
    """crop/* rows: vmap(crop_at_pixel) over 128 crops of a 128x128 uint8 image."""
    ds = bench_dataset()
    img = jnp.asarray(ds.images[0])
    n = 128
    rng = np.random.default_rng(0)
    uv = jnp.asarray(rng.uniform(10, 118, (n, 2)), jnp.float32)
    angle = jnp.asarray(rng.uniform(-np.pi, np.pi, (n,)), jnp.float32)
    images = jnp.broadcast_to(img, (n,) + img.shape)
    for size in (16, 32, 64):
        f = jax.jit(jax.vmap(lambda im, c, a, s=size: crop_at_pixel(im, c, a, s)))
        t = timed(lambda: f(images, uv, angle), repeats * 5)
        b.add(f"crop/{size}x{size}/batch{n}", n / t["median_s"], "crops/s",
              batch_ms=1e3 * t["median_s"])
    b.write()


def bench_stage2_crop_cost(b: Bench, ds, steps: int, repeats: int) -> dict[str, float]:
    """stage2_crop_cost/* rows: the stage-2 step vs the same update on precomputed crops.

    Both programs run `steps` scanned steps and are timed alternately; the precomputed
    variant gathers its batch from a bank of 512 examples made by the same `sample_batch`.
    """
    out = {}
    for algo in ("bc", "cql"):
        cfg = size_config("paper", 2, algo)
        trainer, data = make_train(cfg, 2), prepare_data(ds, cfg)
        bank = jax.jit(lambda d: sample_batch(d, jax.random.PRNGKey(7), 512, 2, cfg.stage2))(data)
        if algo == "bc":
            update = make_bc_update(trainer.networks, optax.adam(cfg.learning_rate))
        else:
            update = make_cql_update(trainer.networks, cfg.cql, make_cql_optimizer(cfg.cql))

        def run_pre(state, bank_, n: int):
            def body(s, _):
                key, k_idx, k_up = jax.random.split(s.key, 3)
                idx = jax.random.randint(k_idx, (cfg.batch_size,), 0, 512)
                batch = jax.tree_util.tree_map(lambda x: x[idx], bank_)
                return update(s.replace(key=key), batch, k_up)
            return jax.lax.scan(body, state, None, length=n)

        def run_unpipelined(state, data_, n: int):  # `trainer.step` in a plain scan
            return jax.lax.scan(lambda s, _: trainer.step(s, data_), state, None, length=n)

        state = jax.jit(trainer.init)(jax.random.PRNGKey(0), data)
        pre_run = jax.jit(run_pre, static_argnums=2).lower(state, bank, steps).compile()
        full_run = jax.jit(trainer.run, static_argnums=2).lower(state, data, steps).compile()
        plain_run = jax.jit(run_unpipelined, static_argnums=2).lower(state, data, steps).compile()
        t = timed_interleaved({"full": lambda: full_run(state, data),
                               "pre": lambda: pre_run(state, bank),
                               "plain": lambda: plain_run(state, data)}, repeats)
        pre, full, plain = t["pre"] / steps, t["full"] / steps, t["plain"] / steps
        overhead = full / pre - 1.0
        out[algo] = overhead
        b.add(f"stage2_crop_cost/paper/{algo}", overhead, "fraction",
              with_crops_ms=1e3 * full, precomputed_ms=1e3 * pre,
              unpipelined_ms=1e3 * plain, unpipelined_overhead=plain / pre - 1.0,
              crop=cfg.stage2.crop_size, ee_crop=cfg.stage2.ee_crop_size, steps=steps,
              repeats=repeats)
    b.write()
    return out


def bench_batch_scaling(b: Bench, ds, steps: int, repeats: int) -> dict[str, float]:
    """batch_scaling/* rows: one seed's quickstart stage-1 BC step at batch 32 x S, S = 1, 2, 5.

    A program that trains S seeds at batch 32 does at least the work of one seed at batch
    32 x S (vmapping adds per-seed weights on top). So `merge_bound` = S x t(32) / t(32 S) is
    the most any one-program multi-seed trainer could gain over S sequential seeds from
    bigger kernels on this machine; below 1 means bigger kernels are less efficient here.
    """
    out, fns = {}, {}
    for s in (1, 2, 5):
        cfg = size_config("quickstart", 1, "bc", batch_size=32 * s)
        trainer, data = make_train(cfg, 1), prepare_data(ds, cfg)
        state = jax.jit(trainer.init)(jax.random.PRNGKey(0), data)
        run = jax.jit(trainer.run, static_argnums=2).lower(state, data, steps).compile()
        fns[s] = lambda run=run, state=state, d=data: run(state, d)
    t = timed_interleaved(fns, repeats)
    for s, sec in t.items():
        bound = s * t[1] / sec
        b.add(f"batch_scaling/quickstart/stage1/bc/batch={32 * s}", 1e3 * sec / steps, "ms/step",
              us_per_sample=1e6 * sec / steps / (32 * s), merge_bound=bound)
        out[s] = bound
    b.write()
    return out


def bench_host_sync(b: Bench, ds, repeats: int) -> float:
    """host_sync row: one 300-step scan vs 3 chunks of 100 with metric means fetched between."""
    cfg = size_config("quickstart", 1, "bc")
    trainer, data = make_train(cfg, 1), prepare_data(ds, cfg)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0), data)
    total, chunk = 300, 100
    run_all = jax.jit(trainer.run, static_argnums=2).lower(state, data, total).compile()
    run_chunk = jax.jit(lambda s, d: (lambda o: (o[0], jax.tree_util.tree_map(jnp.mean, o[1])))(
        trainer.run(s, d, chunk))).lower(state, data).compile()

    def chunked():
        s, logs = state, []
        for _ in range(total // chunk):
            s, m = run_chunk(s, data)
            logs.append(jax.device_get(m))
        return s

    t = timed_interleaved({"one": lambda: run_all(state, data), "chunked": chunked}, repeats)
    ratio = t["chunked"] / t["one"]
    b.add("host_sync/chunked_over_single_scan", ratio, "ratio",
          single_scan_s=t["one"], chunked_s=t["chunked"], steps=total, chunk=chunk)
    b.write()
    return ratio


def bench_quickstart_train(b: Bench, ds, pairs: int) -> float:
    """quickstart_train row: make_train's whole first call vs the same program's warm call.

    One pair = clear JAX's caches, `prepare_data` + `jit(make_train(config, 1))` and time
    `train(key, data)` (data to device, compile, init, 3000 steps), then time it again (the 3000 scanned steps alone,
    the quickstart's pure update-step time). The value is the median over `pairs` of
    first / warm; both calls of a pair run back to back, so load drift mostly cancels.
    """
    cfg = size_config("quickstart", 1, "bc")
    key = jax.random.PRNGKey(3)
    firsts, warms = [], []
    for _ in range(pairs):
        jax.clear_caches()
        t0 = time.perf_counter()
        data = prepare_data(ds, cfg)
        train = jax.jit(make_train(cfg, 1))
        jax.block_until_ready(train(key, data))
        firsts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(train(key, data))
        warms.append(time.perf_counter() - t0)
    ratio = statistics.median(f / w for f, w in zip(firsts, warms))
    b.add("quickstart_train/first_over_warm", ratio, "ratio", first_s=statistics.median(firsts),
          warm_s=statistics.median(warms), num_steps=cfg.num_steps, pairs=pairs,
          note="first = make_train + prepare_data + compile + init + run; warm = run")
    b.write()
    return ratio


def bench_act(b: Bench, ds, repeats: int) -> None:
    """act/* rows: two-stage policy (paper BC sizes) latency at batch 1 and 64."""
    c1, c2 = size_config("paper", 1, "bc"), size_config("paper", 2, "bc")
    d1, d2 = prepare_data(ds, c1), prepare_data(ds, c2)
    p1 = jax.jit(make_train(c1, 1).init)(jax.random.PRNGKey(0), d1).params
    p2 = jax.jit(make_train(c2, 2).init)(jax.random.PRNGKey(1), d2).params
    act = make_policy(c1, c2, ds.workspace)
    cam = synthetic_camera(128)
    for n in (1, 64):
        img, pose = np.asarray(ds.images[:n]), np.asarray(ds.pose[:n])
        t = timed(lambda: act(p1, p2, img, pose, cam), repeats * 5)
        b.add(f"act/two_stage/batch{n}", 1e3 * t["median_s"], "ms", first_call_s=t["first_s"],
              actions_per_s=n / t["median_s"])
    b.write()


def bench_sim(b: Bench, quick: bool) -> None:
    """sim/* rows; 'unavailable' with the reason if the simulator or its API is missing."""
    names = ["sim/keyframe_step", "sim/physics_step", "sim/render_128", "sim/demos_100"]
    try:
        from twostage_jax.envs.metaworld import MetaWorldEnv
        import mujoco

        env = MetaWorldEnv("button-press-topdown-v3")
        env.reset(0)
    except Exception as e:  # noqa: BLE001 - any failure here means 'unavailable', with why
        for n in names:
            b.add(n, "unavailable", "", reason=f"{type(e).__name__}: {e}"[:300])
        b.write()
        return
    try:
        rng = np.random.default_rng(0)
        n = 10 if quick else 30
        t0, k = time.perf_counter(), 0
        for i in range(n):
            _, _, done, _ = env.step(np.clip(rng.normal(0, 0.3, 7), -0.9, 0.9).astype(np.float32))
            k += 1
            if done:
                env.reset(i + 1)
        dt = time.perf_counter() - t0
        b.add(names[0], k / dt, "steps/s", note="keyframe-level env.step (arm motion + gripper)")
        m, d = env.sim.model, env.sim.data
        t0 = time.perf_counter()
        for _ in range(2000):
            mujoco.mj_step(m, d)
        b.add(names[1], 2000 / (time.perf_counter() - t0), "steps/s",
              note="one mujoco.mj_step (MetaWorld's frame_skip makes a low-level env step several)")
        env.render()
        t0 = time.perf_counter()
        for _ in range(100):
            env.render()
        b.add(names[2], 100 / (time.perf_counter() - t0), "frames/s")
        env.close()
    except Exception as e:  # noqa: BLE001
        for n in names[:3]:
            if not any(r["name"] == n for r in b.rows):
                b.add(n, "unavailable", "", reason=f"{type(e).__name__}: {e}"[:300])
    try:
        from twostage_jax.envs.metaworld_demos import record_demos

        num = 10 if quick else 100
        _, stats = record_demos("button-press-topdown-v3", num, seed=0, progress=False,
                                strict=False)
        per = stats.seconds / max(stats.kept, 1)
        b.add(names[3], 100 * per, "s", measured_demos=stats.kept, measured_s=stats.seconds,
              extrapolated=num != 100, task="button-press-topdown-v3",
              keep_rate=stats.keep_rate)
    except Exception as e:  # noqa: BLE001
        b.add(names[3], "unavailable", "", reason=f"{type(e).__name__}: {e}"[:300])
    b.write()


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of this process and of `pids` so far (Linux /proc; else NaN
    for the others)."""
    t = os.times()
    total = t.user + t.system
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")
    return total


def bench_eval(b: Bench, ds, quick: bool) -> float | None:
    """eval/* rows; returns parallel over today's sequential episodes/s (None if unavailable)."""
    names = ["eval/sequential_today", "eval/pool_workers=1", "eval/pool_workers=N"]
    try:
        from twostage_jax.envs import make_env
        from twostage_jax.envs.metaworld import default_workspace
        from twostage_jax.evaluation import EnvPool, Job, default_workers, rollout

        env_fn = functools.partial(make_env, "button-press-topdown-v3")
        env_fn().close()
    except Exception as e:  # noqa: BLE001 - any failure here means 'unavailable', with why
        for n in names:
            b.add(n, "unavailable", "", reason=f"{type(e).__name__}: {e}"[:300])
        b.write()
        return None
    c1, c2 = size_config("quickstart", 1, "bc"), size_config("quickstart", 2, "bc")
    d1, d2 = prepare_data(ds, c1), prepare_data(ds, c2)
    p1 = jax.jit(make_train(c1, 1).init)(jax.random.PRNGKey(0), d1).params
    p2 = jax.jit(make_train(c2, 2).init)(jax.random.PRNGKey(1), d2).params
    plain = make_policy(c1, c2, default_workspace())
    rows = make_policy(c1, c2, default_workspace(), row_by_row=True)
    act_plain = lambda im, z, cam: plain(p1, p2, im, z, cam)
    act_rows = lambda im, z, cam: rows(p1, p2, im, z, cam)
    workers = max(2, default_workers())
    episodes = 3 * workers if quick else 8 * workers
    layouts = list(range(1000, 1000 + episodes))
    jobs = [Job(act_rows, s) for s in layouts]
    t0 = time.perf_counter()
    pool = EnvPool(env_fn, workers)
    pool.camera  # the workers' envs are built
    startup = time.perf_counter() - t0
    pool1 = EnvPool(env_fn, 1)
    try:
        for w in range(1, workers + 1):  # compile every padded batch shape, warm the workers
            act_rows(np.zeros((w, 128, 128, 3), np.uint8), np.zeros((w, 7), np.float32), pool.camera)
        pool.run(jobs[:workers])
        pool1.run(jobs[:1])
        env = env_fn()
        rollout(env, act_plain, layouts[0])  # compiles the batch-1 policy, builds the renderer

        def today():
            return [rollout(env, act_plain, s) for s in layouts]

        t = {k: [] for k in names}
        cpu = {k: [] for k in names}
        out = {}
        for _ in range(1 if quick else 2):
            for name, fn in zip(names, (today, lambda: pool1.run(jobs), lambda: pool.run(jobs))):
                c0, t0 = _cpu_seconds(pool.pids), time.perf_counter()
                out[name] = fn()
                t[name].append(time.perf_counter() - t0)
                cpu[name].append(_cpu_seconds(pool.pids) - c0)
        env.close()
    finally:
        pool.close()
        pool1.close()
    same = all(np.array_equal(a.actions, c.actions) and a.success == c.success
               for a, c in zip(out[names[1]], out[names[2]]))
    steps = sum(e.num_steps for e in out[names[0]])
    rate = {n: episodes / statistics.median(v) for n, v in t.items()}
    # CPU seconds per episode (all processes) and CPU seconds per wall second ('cores busy'):
    # on a shared machine the wall-clock ratio also measures the neighbours' load.
    extra = {n: {"cpu_s_per_episode": statistics.median(cpu[n]) / episodes,
                 "cores_busy": statistics.median(c / w for c, w in zip(cpu[n], t[n]))} for n in names}
    base = rate[names[0]]
    b.add(names[0], rate[names[0]], "episodes/s", episodes=episodes, keyframe_steps=steps,
          note="in-process loop over rollout(), batch-1 policy calls", **extra[names[0]])
    b.add(names[1], rate[names[1]], "episodes/s", over_today=rate[names[1]] / base, **extra[names[1]])
    b.add(names[2].replace("N", str(workers)), rate[names[2]], "episodes/s",
          over_today=rate[names[2]] / base, startup_s=startup, same_episodes_as_workers_1=same,
          loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None, **extra[names[2]])
    b.write()
    return rate[names[2]] / base


def bench_step_profile(b: Bench, quick: bool) -> float | None:
    """step_profile/* rows; returns keyframe steps/s after over before (None if unavailable)."""
    try:
        from twostage_jax.envs.metaworld import MetaWorldEnv

        env = MetaWorldEnv("button-press-topdown-v3")
        env.reset(0)
    except Exception as e:  # noqa: BLE001 - any failure here means 'unavailable', with why
        b.add("step_profile/*", "unavailable", "", reason=f"{type(e).__name__}: {e}"[:300])
        b.write()
        return None
    rng = np.random.default_rng(0)
    actions = np.clip(rng.normal(0, 0.3, (10 if quick else 30, 7)), -0.9, 0.9).astype(np.float32)
    sim = env.sim
    parts = {"physics": (sim, "do_simulation"), "observation": (sim, "_get_obs"),
             "observation_reduced": (env, "success_obs"), "evaluate_state": (sim, "evaluate_state"),
             "render": (env, "render")}
    acc: dict[str, float] = {}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_fn(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
        return timed_fn

    for name, (obj, attr) in parts.items():
        setattr(obj, attr, wrap(name, getattr(obj, attr)))

    def episode_run(full: bool) -> tuple[float, dict[str, float], int]:
        env.full_success_obs = full
        acc.clear()
        env.reset(0)
        low = 0
        t0 = time.perf_counter()
        for i, a in enumerate(actions):
            _, _, done, info = env.step(a)
            low += info["move_steps"] + info["gripper_steps"]
            if done:
                env.reset(i + 1)
        return time.perf_counter() - t0, dict(acc), low

    runs: dict[bool, list] = {True: [], False: []}
    for _ in range(3 if quick else 5):
        for full in (True, False):
            runs[full].append(episode_run(full))
    for obj, attr in parts.values():
        delattr(obj, attr)  # the instance attributes shadowed the methods
    env.close()
    out = {}
    lows = {runs[f][0][2] for f in runs}
    for full, label in ((True, "before"), (False, "after")):
        n = len(actions)
        per_run = []
        for total, parts_s, _ in runs[full]:
            obs = parts_s.get("observation", 0.0) + parts_s.get("observation_reduced", 0.0)
            r = {"physics": parts_s.get("physics", 0.0), "observation": obs,
                 "evaluate_state": parts_s.get("evaluate_state", 0.0),
                 "render": parts_s.get("render", 0.0)}
            r["other"] = total - sum(r.values())
            per_run.append((total, r))
        total = statistics.median(t for t, _ in per_run)  # medians over runs, part by part
        ms = {k: statistics.median(r[k] for _, r in per_run) for k in per_run[0][1]}
        for k, v in ms.items():
            b.add(f"step_profile/{label}/{k}", 1e3 * v / n, "ms/keyframe", share=v / total)
        out[label] = n / total
        b.add(f"step_profile/{label}/keyframe_step", n / total, "steps/s",
              low_level_steps_per_keyframe=runs[full][0][2] / n, same_low_level_steps=len(lows) == 1)
    b.write()
    return out["after"] / out["before"]


def bench_views(b: Bench, steps: int, repeats: int, quick: bool) -> dict[str, float]:
    """views/* rows; returns {'<size>_stage<k>_<algo>': 3-view step time / 1-view step time}."""
    one, three = bench_dataset(), make_synthetic_dataset(num_episodes=16, steps_per_episode=4,
                                                         image_size=128, num_views=3)
    b.add("views/dataset_bytes_3_over_1", dataset_nbytes(three) / dataset_nbytes(one), "ratio",
          bytes_1=dataset_nbytes(one), bytes_3=dataset_nbytes(three))
    ratios = {}
    for size in ("quickstart",) if quick else ("quickstart", "paper"):
        for stage in (1, 2):
            for algo in ("bc", "cql"):
                calls = {}
                for name, ds, how in (("1", one, "shared"), *((f"3_{h}", three, h) for h in VIEW_ENCODERS)):
                    cfg = size_config(size, stage, algo)
                    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, view_encoders=how))
                    r = _steady_run(make_train(cfg, stage), prepare_data(ds, cfg), jax.random.PRNGKey(0),
                                    steps, repeats)
                    calls[name] = r["call"]
                n = (3 if size == "paper" else 10) * repeats
                t = timed_interleaved(calls, n)
                for how in VIEW_ENCODERS:
                    ratio = t[f"3_{how}"] / t["1"]
                    ratios[f"{size}_stage{stage}_{algo}_{how}"] = ratio
                    b.add(f"views/{size}/stage{stage}/{algo}/{how}_3_over_1", ratio, "ratio",
                          step_ms_1=1e3 * t["1"] / steps, step_ms_3=1e3 * t[f"3_{how}"] / steps,
                          batch=cfg.batch_size, repeats=n, steps_per_run=steps, note="timed alternately")
        b.write()
    try:
        from twostage_jax.envs.metaworld import MetaWorldConfig, MetaWorldEnv
    except Exception as err:  # noqa: BLE001 - reported as a row
        b.add("views/render_3_over_1", "unavailable", "", reason=f"{type(err).__name__}: {err}")
        return ratios
    envs = {name: MetaWorldEnv("button-press-topdown-v3", MetaWorldConfig(cameras=cams))
            for name, cams in (("1", ("corner",)), ("3", ("corner", "topview", "gripperPOV")))}
    try:
        for env in envs.values():
            env.reset(0)
        t = timed_interleaved({k: (lambda e=e: e.observe()) for k, e in envs.items()}, 20 if quick else 50)
        b.add("views/render_3_over_1", t["3"] / t["1"], "ratio", observe_ms_1=1e3 * t["1"],
              observe_ms_3=1e3 * t["3"], note="one observation (renders and cameras), timed alternately")
    finally:
        for env in envs.values():
            env.close()
    b.write()
    return ratios


SECTIONS = ("train_steps", "seeds", "seed_sharding", "batch_scaling", "crops", "crop_cost", "host_sync",
            "quickstart_train", "act", "sim", "eval", "step_profile", "views")


_FLAGS = flags.FlagValues()  # this script's own: importing it beside other scripts defines nothing
flags.DEFINE_bool("quick", False, "fewer repeats/steps: < 10 min on 2 CPU cores", flag_values=_FLAGS)
flags.DEFINE_string("out", DEFAULT_OUT, "JSON output path", flag_values=_FLAGS)
flags.DEFINE_bool("skip-sim", False, "skip the simulator rows", flag_values=_FLAGS)
flags.DEFINE_string("sections", ",".join(SECTIONS), f"comma-separated subset of {','.join(SECTIONS)} "
                    "(default: all)", flag_values=_FLAGS)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark with the command-line flags `argv` (absl); returns the JSON payload."""
    parse_tool_flags(_FLAGS, "benchmark", argv)
    args = _FLAGS
    sections = [x for x in args.sections.split(",") if x]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        usage_error(f"--sections: unknown or empty {unknown or sections}; expected names from "
                     f"{', '.join(SECTIONS)}")
    if args["skip-sim"].value and "sim" in sections:
        sections.remove("sim")
    steps, repeats = (3, 3) if args.quick else (10, 5)
    start = time.perf_counter()
    b = Bench(args.out, metadata(args.quick))
    b.meta["sections"] = sections
    print(json.dumps({k: b.meta[k] for k in ("backend", "device", "cpu_count", "conv_impl_auto",
                                             "versions")}))
    print(f"{'name':44s} {'value':>14s} {'unit':14s} notes")
    ds = bench_dataset()
    targets: dict[str, Any] = {}
    auto = resolve_conv_impl("auto")
    if "train_steps" in sections:
        for k, v in bench_train_steps(b, ds, steps, repeats).items():
            targets[f"cql_over_bc_{k} (<= 2)"] = v
    if "seeds" in sections:
        seeds = bench_seeds(b, ds, 20 if args.quick else 50, repeats + 2, steps)
        targets["vmap5_over_sequential5 (>= 1.2)"] = seeds.get(f"{auto}_vmap_5_over_seq_5")
    if "seed_sharding" in sections:
        for k, v in bench_seed_sharding(b, 10 if args.quick else 30, repeats).items():
            targets[f"seed_sharding_{k} (forced CPU devices: overhead, not speed-up)"] = v
    if "batch_scaling" in sections:
        merge = bench_batch_scaling(b, ds, 20 if args.quick else 50, repeats + 2)
        targets["merge_bound_5 (best any one program could do)"] = merge[5]
    if "crops" in sections:
        bench_crops(b, repeats)
    if "crop_cost" in sections:
        crop_cost = bench_stage2_crop_cost(b, ds, 10, 3 * repeats)
        targets["stage2_crop_overhead_bc (< 0.05)"] = crop_cost["bc"]
        targets["stage2_crop_overhead_cql (< 0.05)"] = crop_cost["cql"]
    if "host_sync" in sections:
        targets["host_sync_chunked_over_single_scan"] = bench_host_sync(b, ds, repeats + 2)
    if "quickstart_train" in sections:
        targets["quickstart_train_first_call_over_warm_call (<= 1.5)"] = bench_quickstart_train(
            b, ds, 2 if args.quick else 3)
    if "act" in sections:
        bench_act(b, ds, repeats)
    if "eval" in sections:
        targets["eval_parallel_over_sequential (>= 1.7 on 2 cores)"] = bench_eval(b, ds, args.quick)
    if "step_profile" in sections:
        targets["step_profile_after_over_before"] = bench_step_profile(b, args.quick)
    if "views" in sections:
        for k, v in bench_views(b, steps, repeats, args.quick).items():
            targets[f"views_3_over_1_{k} (<= 2.5)"] = v
    if "sim" in sections:
        bench_sim(b, args.quick)
    else:
        b.add("sim/*", "unavailable", "", reason="not selected (--skip-sim or --sections)")
    b.meta["targets"] = targets
    b.meta["wall_s"] = time.perf_counter() - start
    b.meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    b.write()
    print("targets:", json.dumps(b.meta["targets"], indent=1))
    print(f"total wall time {b.meta['wall_s']:.0f} s; wrote {args.out}")
    return {**b.meta, "rows": b.rows}


if __name__ == "__main__":
    main()
