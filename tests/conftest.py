"""Session set-up shared by every test file: XLA's compile effort, and tiny trained runs that
are trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite is bound by XLA's CPU compile time (hundreds of tiny programs, each run for a few
# steps), not by running them: LLVM optimisation level 1 instead of the default compiles about
# a third faster (level 0 halves it, but moves the im2col and XLA convolutions of
# test_seed_parallel apart by more than its 1e-4 tolerance). Set before JAX starts its
# backend; launcher subprocesses inherit it.
_FAST_COMPILE = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

from tests._launcher import smoke, synthetic_workdir  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A synthetic-dataset workdir with both stages trained by the smoke config (2 seeds,
    checkpoints at steps 4 and 8). Shared: copy it (`shutil.copytree`) before changing it."""
    from experiments.train_stage import run_stage

    workdir = synthetic_workdir(tmp_path_factory.mktemp("trained") / "wd")
    for stage in (1, 2):
        run_stage(smoke(), workdir, stage)
    return workdir
