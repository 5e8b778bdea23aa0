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
SMOKE = "smoke"


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


def refused(*args: str, expect: list[str], prefix: tuple | list | None = None,
            config: str = SMOKE) -> str:
    """Asserts the launcher refuses `args` as bad usage: exit status 1 and one `error:` line on
    stderr holding every string of `expect`; returns that line. In a subprocess under `prefix`
    where the console or permissions matter (`prefix=()`: none), else in this process."""
    out = (launch_in_process(*args, config=config) if prefix is None
           else launch(*args, prefix=prefix, config=config))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: ") and all(e in lines[0] for e in expect), lines[0]
    return lines[0]


def synthetic_workdir(path: Path) -> Path:
    """A workdir with a tiny 32-pixel synthetic dataset and held-out demos."""
    from twostage_jax.data.dataset import save_dataset
    from twostage_jax.testing import make_synthetic_dataset

    (path / "demos").mkdir(parents=True)
    save_dataset(path / "demos" / "dataset.npz",
                 make_synthetic_dataset(num_episodes=6, steps_per_episode=3, image_size=32))
    # held-out demos, which the default (calibrated) stage 2 needs
    save_dataset(path / "demos" / "held_out.npz",
                 make_synthetic_dataset(num_episodes=2, steps_per_episode=3, image_size=32, seed=1))
    return path


def smoke(variants: str | None = None, **overrides):
    """The smoke config (with `variants`) for the 32-pixel synthetic dataset, with dotted-name
    overrides (`config.replace_path`: a bad value raises the ConfigError naming its field)."""
    from twostage_jax.configs import smoke as smoke_config
    from twostage_jax.launch.launch_config import replace_path

    return replace_path(smoke_config.get_config(variants), {"demos.image_size": 32, **overrides})


# A second launcher: a process holding one part of a workdir's lock as a launcher does, with
# lock.py loaded on its own (no JAX to import: the process starts in a fraction of a second).
_HOLD_LOCK = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
lock.PartLock(Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "write", sys.argv[5]).acquire()
print("held", flush=True)
sys.stdin.readline()
"""


def hold_lock(workdir: Path, part: str, how: str, mode: str) -> subprocess.Popen:
    """A process holding `part` of `workdir` locked (`how`: "write" or "read") as a launcher in
    `mode` would; release it with `release_lock` (or kill it)."""
    from twostage_jax.launch import lock

    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, lock.__file__, str(workdir), part, how, mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def release_lock(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)
