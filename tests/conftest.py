"""Fixtures shared across test files: tiny trained runs, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._launcher import smoke, synthetic_workdir


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A synthetic-dataset workdir with both stages trained by the smoke config (2 seeds,
    checkpoints at steps 4 and 8). Shared: copy it (`shutil.copytree`) before changing it."""
    from experiments.train_stage import run_stage

    workdir = synthetic_workdir(tmp_path_factory.mktemp("trained") / "wd")
    for stage in (1, 2):
        run_stage(smoke(), workdir, stage)
    return workdir
