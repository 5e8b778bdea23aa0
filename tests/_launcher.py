"""Helpers for the launcher tests: the smoke config on a tiny synthetic workdir, and the
launcher run in a subprocess or in this process.

In this process (`launch_in_process`) the launcher parses the same flags and runs the same
`main`, and reuses the JAX programs other tests compiled: most launcher tests use it. A
subprocess (`launch`) is kept for what only a separate process shows (the console's one-line
error and exit status, a SIGKILL, file permissions under a dropped capability, several
processes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "configs" / "smoke.py")


class Launched(NamedTuple):
    """What a launcher run left: its exit status and output (absl's log lines are in stderr)."""

    returncode: int
    stdout: str
    stderr: str


def launch(*args: str, wait: bool = True, timeout: float = 300, prefix: tuple | list = (),
           config: str = SMOKE):
    """`python -m twostage_jax.launch --config=CONFIG ARGS` in a subprocess.

    Returns:
      The finished `subprocess.CompletedProcess`, or with `wait=False` the running `Popen`
      (stdout and stderr merged).
    """
    cmd = [*prefix, sys.executable, "-m", "twostage_jax.launch", f"--config={config}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def launch_in_process(*args: str, config: str = SMOKE) -> Launched:
    """The launcher's flag parsing and `main` in this process, as `launch` runs them.

    Flags are reset afterwards; stdout, stderr and the absl log are captured.
    """
    from absl import flags

    from twostage_jax.launch import main as launcher

    flag_values = flags.FLAGS
    argv = ["twostage_jax.launch", f"--config={config}", *args]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s"))
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = launcher.main(launcher._parse_flags(argv))
            except SystemExit as e:
                code = e.code
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
        flag_values.unparse_flags()
    return Launched(int(code or 0), out.getvalue(), err.getvalue())


def synthetic_workdir(path: Path) -> Path:
    """A workdir with a tiny 32-pixel synthetic dataset and held-out validation demos."""
    from twostage_jax.data.dataset import save_dataset
    from twostage_jax.testing import make_synthetic_dataset

    (path / "demos").mkdir(parents=True)
    save_dataset(path / "demos" / "dataset.npz",
                 make_synthetic_dataset(num_episodes=6, steps_per_episode=3, image_size=32))
    # held-out demos, which the default (calibrated) stage 2 needs
    save_dataset(path / "demos" / "validation.npz",
                 make_synthetic_dataset(num_episodes=2, steps_per_episode=3, image_size=32, seed=1))
    return path


def smoke(variants: str | None = None, **overrides):
    """The smoke config (with `variants`) for the 32-pixel synthetic dataset, with dotted-name
    overrides (`config.replace_path`: a bad value raises the ConfigError naming its field)."""
    from experiments.configs import smoke as smoke_config
    from twostage_jax.launch.config import replace_path

    return replace_path(smoke_config.get_config(variants), {"demos.image_size": 32, **overrides})
