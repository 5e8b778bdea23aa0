"""Session set-up shared by every test file: XLA's compile effort, and tiny trained runs that
are trained once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# The suite is bound by XLA's CPU compile time (hundreds of tiny programs, each run for a few
# steps), not by running them: LLVM optimisation level 0 compiles much faster than the default
# (docs/testing.md). Level 0 rounds differently, enough to tell apart programs that level 1
# rounds alike (the policy's row-by-row batches against batch-1 calls, bitwise; im2col against
# XLA convolutions, to 1e-4): those checks compile their programs at level 1 (tests/_tiny.py:
# `LEVEL_1`, `jit_at_level_1`). Set before JAX starts its backend; launcher subprocesses
# inherit it.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()


def _xla_accepts(flags: str) -> bool:
    """Whether XLA starts with `flags` (it aborts on a flag it does not know)."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                           capture_output=True, timeout=300)
    return probe.returncode == 0


# XLA's classic CPU emitters instead of its newer fusion emitters (the default): the same
# operations, compiled about 30% faster on these programs, and every tolerance of the suite
# holds, the 1e-4 of test_seed_parallel's im2col-against-XLA convolutions included. A jaxlib
# that no longer knows the flag gets the default emitters (checked once per session, in a
# subprocess: XLA would abort this process).
_CLASSIC_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    if _xla_accepts(f"{os.environ['XLA_FLAGS']} {_CLASSIC_EMITTERS}"):
        os.environ["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {_CLASSIC_EMITTERS}"

# Many tests compile programs another test (or process) already compiled: the same trainer
# under a `Train` that differs only in `num_steps` (which the scanned program does not read),
# and the launcher's subprocesses, which cannot see this process's jit caches. JAX's
# persistent compilation cache, keyed on the program text, XLA flags and devices, finds those:
# one fresh folder per session (a run never reads an earlier run's entries), inherited by the
# subprocesses through the environment, removed at exit. Programs that compile in under
# 0.2 s are not worth a file.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_DIR = tempfile.mkdtemp(prefix="twostage-jax-compile-cache-")
    atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

from tests._launcher import smoke, synthetic_workdir  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A synthetic-dataset workdir with both stages trained by the smoke config (2 seeds,
    checkpoints at steps 4 and 8). Shared: copy it (`shutil.copytree`) before changing it."""
    from twostage_jax.launch.train_stage import run_stage

    workdir = synthetic_workdir(tmp_path_factory.mktemp("trained") / "wd")
    for stage in (1, 2):
        run_stage(smoke(), workdir, stage)
    return workdir


@pytest.fixture(scope="session")
def tiny_trained():
    """Stage 1 (BC) and stage 2 (CQL) of `tests._tiny.tiny_config` trained for its 4 steps on
    the tiny dataset, one seed each: (dataset, config1, config2, params1, params2). Shared by
    the policy tests; the same single-seed programs as test_training's train_seeds check."""
    import jax

    import twostage_jax as tj
    from tests._tiny import tiny_config, tiny_dataset

    ds = tiny_dataset()
    c1, c2 = tiny_config("bc"), tiny_config("cql")
    s1, _ = jax.jit(tj.make_train(c1, 1))(jax.random.PRNGKey(0), tj.prepare_data(ds, c1))
    s2, _ = jax.jit(tj.make_train(c2, 2))(jax.random.PRNGKey(1), tj.prepare_data(ds, c2))
    return ds, c1, c2, s1.params, s2.params
