"""The launcher's entry point: flags -> one checked config -> the modes, each under its locks.

  python -m twostage_jax.launch --mode=all --workdir=runs/quickstart
  python -m twostage_jax.launch --mode=all --workdir=runs/paper_cql --config=paper:cql --task=drawer-open-v3

Bad usage gets one `error:` line before any work (exit status 1), a refusal to touch the
workdir one too (exit status 2). Modes, resume, locks and several processes: docs/launcher.md.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import sys
from pathlib import Path

import jax
from absl import app, flags, logging

from twostage_jax._io import DiskFullError
from twostage_jax.base_policy import BasePolicyError
from twostage_jax.checkpoint import CheckpointError
from twostage_jax.data.dataset import DatasetFormatError
from twostage_jax.envs.rlbench import rlbench_missing
from twostage_jax.launch import overrides
from twostage_jax.launch.bounds import check_bounds
from twostage_jax.launch.launch_config import LaunchConfig, check_config
from twostage_jax.launch.demos import check_data_source, run_demos
from twostage_jax.launch.errors import PipelineError
from twostage_jax.launch.evaluate import LEROBOT_EVALUATION, format_results_table, run_eval
from twostage_jax.launch.lock import LockError, locked
from twostage_jax.launch.train_stage import run_stage, seed_mesh, trained_to_the_end
from twostage_jax.launch.workdir import dataset_path, ensure_writable, eval_dir, phase_parts
from twostage_jax.sharding import initialize_distributed

MODES = ("demos", "stage1", "stage2", "eval", "all")

FLAGS = flags.FLAGS


def define_flags(values: flags.FlagValues = FLAGS) -> None:
    """Defines the launcher's flags on `values` (absl's global FLAGS, or a fresh set for a dry parse)."""
    kw = {"flag_values": values}
    flags.DEFINE_enum("mode", "all", MODES, "Which part of the pipeline to run.", **kw)
    flags.DEFINE_string("workdir", None, "Directory for the dataset, checkpoints, logs and results.", **kw)
    flags.DEFINE_string("config", overrides.DEFAULT_CONFIG, "A built-in config (quickstart, paper, "
                        "repro, smoke) or a Python file with get_config(variants) -> LaunchConfig, then "
                        "':variants'; override fields with --config.a.b=VALUE.", **kw)
    flags.DEFINE_string("task", None, "Task name (overrides config.task), e.g. drawer-open-v3.", **kw)
    flags.DEFINE_integer("num_seeds", None, "Number of seeds (overrides config.num_seeds).", **kw)
    flags.DEFINE_integer("num_demos", None, "Demonstrations to record (overrides config.demos.num_demos).", **kw)
    flags.DEFINE_bool("resume", False, "Continue a stage from its newest intact checkpoint.", **kw)
    flags.DEFINE_bool("force", False, "With --mode=demos: replace an existing dataset.", **kw)
    flags.DEFINE_bool("accept_new_inputs", False, "With --resume: continue a stage whose inputs changed "
                      "since it started (the dataset; for stage 2, the stage-1 steps it acts with), "
                      "re-calibrating stage 2 and recording the new pairing.", **kw)
    flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of process 0 "
                        "(calls jax.distributed.initialize).", **kw)
    flags.DEFINE_integer("num_processes", None, "Several processes: how many take part.", **kw)
    flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0 .. num_processes-1.", **kw)


define_flags()
_OVERRIDES: list[tuple[str, str]] = []  # this invocation's --config.a.b=VALUE, split off before absl


class UsageError(app.UsageError):
    """Bad flags or config: reported in one line, before any work."""


def _exit_usage(message: str) -> None:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    print(f"error: {' '.join(lines[:1] + lines[-1:] if len(lines) > 2 else lines)}", file=sys.stderr)
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flags, with the `--config.a.b=VALUE` overrides split off first; errors in one line."""
    global _OVERRIDES
    try:
        rest, _OVERRIDES = overrides.split_overrides(argv)
        return FLAGS(rest)
    except (flags.Error, ValueError) as e:
        _exit_usage(str(e))
    raise AssertionError("unreachable")


def config_of(values: flags.FlagValues, found: list[tuple[str, str]]) -> LaunchConfig:
    """The config of parsed flags `values` and the `--config.a.b=VALUE` overrides `found`,
    checked across fields and against what a machine holds.

    Raises:
      UsageError: one line naming the flag or field at fault.
    """
    changes = {"task": values.task, "num_seeds": values.num_seeds, "demos.num_demos": values.num_demos}
    try:
        config = overrides.config_from_flags(values.config, found,
                                             {k: v for k, v in changes.items() if v is not None})
        check_config(config)
        check_bounds(config)  # sizes no machine holds
    except ValueError as e:
        raise UsageError(str(e)) from e
    return config


def dry_parse(argv: list[str]) -> LaunchConfig:
    """The checked config of a command line (`argv` without the program), doing no work: how the
    tests check every launcher command written in the docs and results against today's flags."""
    values = flags.FlagValues()
    define_flags(values)
    try:
        rest, found = overrides.split_overrides(list(argv))
        values(["twostage", *rest])
    except (flags.Error, ValueError) as e:
        raise UsageError(str(e)) from e
    return config_of(values, found)


def _check_task(config) -> None:
    if config.data.source == "lerobot":  # the task is a label; nothing rolls out in a simulator
        return
    if config.env == "rlbench":
        _check_rlbench_installed(config)
        return
    from twostage_jax.envs.metaworld import task_names  # lazy: imports MuJoCo
    names = task_names()
    if config.task not in names:
        raise UsageError(f"--task / config.task: unknown MetaWorld task {config.task!r}; expected one "
                         f"of {len(names)} names such as {', '.join(sorted(names)[:4])}, ...")


def _check_data_source(config) -> None:
    """A LeRobot source trains stages 1 and 2 only, and --mode=demos checks its dataset (without
    decoding) before any work."""
    if config.data.source != "lerobot":
        return
    if FLAGS.mode in ("eval", "all"):
        raise UsageError(f"--mode={FLAGS.mode} {LEROBOT_EVALUATION}")
    if FLAGS.num_demos is not None:
        raise UsageError("--num_demos does not apply with config.data.source='lerobot': choose the "
                         "episodes with --config.data.episodes (default: all of them).")
    if FLAGS.mode != "demos":  # the stages read the workdir's dataset, not the LeRobot folder
        return
    try:
        check_data_source(config)
    except (ValueError, ImportError) as e:
        raise UsageError(str(e)) from e


def _check_rlbench_installed(config) -> None:
    """Evaluation rolls out in RLBench: without it --mode=eval / all stop here, before any work.
    (demos, stage1 and stage2 read RLBench's on-disk demos and need no RLBench.)"""
    if FLAGS.mode not in ("eval", "all"):
        return
    missing = rlbench_missing()
    if missing:
        raise UsageError(f"--mode={FLAGS.mode} with config.env='rlbench' rolls out in RLBench: "
                         f"{missing} (--mode=demos, stage1 and stage2 work without it.)")


def _check_workdir(workdir: Path) -> None:
    """Refuses a --workdir that is a file, is missing where it must exist, or is not writable."""
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} is a file; expected a folder (existing, or one to "
                         "create).")
    if FLAGS.mode in ("stage1", "stage2", "eval") and not workdir.exists():
        raise UsageError(f"--workdir {workdir} does not exist; --mode={FLAGS.mode} needs the dataset "
                         "from --mode=demos (or run --mode=all).")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--workdir {workdir} cannot be created ({e.strerror or e}).") from e
    try:
        ensure_writable(workdir, "--workdir must be a folder this user can write.")
    except PipelineError as e:
        raise UsageError(f"--workdir {e}") from e


def _distributed_flags() -> tuple[str, int, int] | None:
    """The checked (address, processes, id) of a multi-process run, or None for one process."""
    given = {name: getattr(FLAGS, name) for name in ("coordinator_address", "num_processes",
                                                      "process_id")}
    if all(v is None for v in given.values()):
        return None
    missing = [f"--{k}" for k, v in given.items() if v is None]
    if missing:
        raise UsageError(f"several processes need --coordinator_address, --num_processes and "
                         f"--process_id together; missing {', '.join(missing)}.")
    if FLAGS.mode not in ("stage1", "stage2"):
        raise UsageError(f"--mode={FLAGS.mode}: several processes train a stage together; use "
                         "--mode=stage1 or --mode=stage2 (record demos and evaluate from one process).")
    args = (given["coordinator_address"], given["num_processes"], given["process_id"])
    try:
        initialize_distributed(*args, check_only=True)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return args  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    """Runs the launcher; bad usage exits 1 with one line, before any work."""
    try:
        return _main(argv)
    except UsageError as e:
        _exit_usage(str(e))
    return 1


def _main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected positional arguments {argv[1:]}; every option is a --flag.")
    if not FLAGS.workdir:
        raise UsageError("--workdir is required: the directory for datasets, checkpoints and results.")
    distributed = _distributed_flags()
    config = config_of(FLAGS, _OVERRIDES)
    if FLAGS.force and FLAGS.mode != "demos":
        raise UsageError(f"--force only applies to --mode=demos (it lets it replace an existing "
                         f"dataset); got --mode={FLAGS.mode}.")
    if FLAGS.mode == "stage1" and config.stage1.source:
        raise UsageError(f"--mode=stage1: stage 1 is the base policy config.stage1.source="
                         f"{config.stage1.source}, so there is nothing to train; run --mode=stage2 "
                         "(it is calibrated to that policy), then --mode=eval.")
    if FLAGS.accept_new_inputs and not FLAGS.resume:
        raise UsageError("--accept_new_inputs only applies with --resume (it lets a resumed stage "
                         "continue on inputs that changed since it started).")
    _check_task(config)
    _check_data_source(config)
    workdir = Path(FLAGS.workdir).absolute()
    _check_workdir(workdir)
    # A part of the workdir has one writer, and no reader while it is written. A single mode
    # takes its locks now, before any work; --mode=all each phase's as the phase starts.
    holding = contextlib.ExitStack()
    try:
        if FLAGS.mode != "all":
            holding.enter_context(_phase_lock(config, workdir, FLAGS.mode))
    except LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with holding:
        return _run_modes(config, workdir, distributed)


def _phase_lock(config: LaunchConfig, workdir: Path, phase: str,
                read_only: bool = False) -> contextlib.AbstractContextManager:
    """The workdir locks of one phase (`workdir.phase_parts`): its output part exclusive (shared
    with `read_only`: to confirm a stage is trained) and its inputs shared. Processes other
    than 0 of a multi-process run take none: process 0 holds them for the run."""
    if FLAGS.process_id not in (None, 0):
        return contextlib.nullcontext()
    write, read = phase_parts(config, phase)
    if read_only:
        write, read = [], [*read, *write]
    mode = f"--mode={FLAGS.mode}" + (f": {phase}" if FLAGS.mode == "all" else "")
    return locked(workdir, mode, write=write, read=read)


def _run_modes(config: LaunchConfig, workdir: Path, distributed: tuple[str, int, int] | None) -> int:
    """Runs the mode's phases in order (each under its locks with --mode=all); 2 on a refusal."""
    if distributed is not None:  # before any other JAX work
        initialize_distributed(*distributed)
        logging.info("process %d of %d", jax.process_index(), jax.process_count())
    logging.info("JAX %s on %s: %s", jax.__version__, jax.default_backend(), jax.devices())
    try:
        seed_mesh(config)  # config.seed_devices against the devices there are
    except PipelineError as e:
        raise UsageError(str(e)) from e
    phases = ("demos", "stage1", "stage2", "eval") if FLAGS.mode == "all" else (FLAGS.mode,)
    try:
        for phase in phases:
            _run_phase(config, workdir, phase)
    except (PipelineError, CheckpointError, DiskFullError, LockError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BasePolicyError as e:  # the user's base policy (config.stage1.source), named in `e`
        print(f"error: config.stage1.source ({config.stage1.source}): {e}", file=sys.stderr)
        return 2
    except DatasetFormatError as e:
        print(f"error: {e} Re-record it with --mode=demos --force and the settings it was made "
              "with (demos/config.json), or start a fresh --workdir.", file=sys.stderr)
        return 2
    return 0


def _run_phase(config: LaunchConfig, workdir: Path, phase: str) -> None:
    """One phase; with --mode=all under its own locks, a trained stage confirmed under shared
    ones (so runs sharing a stage 1 resume side by side) and a recorded dataset reused."""

    whole = FLAGS.mode == "all"

    def lock(read_only: bool = False) -> contextlib.AbstractContextManager:
        return _phase_lock(config, workdir, phase, read_only) if whole else contextlib.nullcontext()

    if phase == "demos":
        if whole and dataset_path(workdir).exists():
            logging.info("reusing the dataset in %s", dataset_path(workdir))
            return
        with lock():
            if whole and dataset_path(workdir).exists():  # recorded while we waited for the lock
                logging.info("reusing the dataset in %s", dataset_path(workdir))
                return
            run_demos(config, workdir, force=FLAGS.force)
    elif phase == "stage1" and config.stage1.source:
        logging.info("stage 1 is the base policy %s: nothing to train", config.stage1.source)
    elif phase in ("stage1", "stage2"):
        stage = int(phase[-1])
        if whole and FLAGS.resume:
            with lock(read_only=True):
                step = trained_to_the_end(config, workdir, stage)
            if step is not None:
                logging.info("%s is already trained to step %d; nothing to do",
                             workdir / (phase if stage == 1 else config.stage2_name), step)
                return
        with lock():
            run_stage(config, workdir, stage, resume=FLAGS.resume,
                      accept_new_inputs=FLAGS.accept_new_inputs)
    else:
        with lock():
            results = run_eval(config, workdir)
        print(format_results_table(results))
        print(f"results, plots and rollout frames: {eval_dir(workdir, config)}")


_DISK_FULL = ("RESOURCE_EXHAUSTED", "No space left", "Errno 28")


class _DropLibraryInfo(pylogging.Filter):
    """Hides orbax, rliable and PyOpenGL INFO lines so progress bars, errors and the results
    table stay readable, and orbax's own reports of a full disk from its writer threads (a
    traceback each): the save raises the same error here, which the launcher reports in one
    line naming what was being written and the space left."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "orbax" in record.pathname and record.levelno >= pylogging.ERROR:
            text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
            return not any(marker in text for marker in _DISK_FULL)
        return record.levelno > pylogging.INFO or not any(
            lib in record.pathname for lib in ("orbax", "rliable", "OpenGL"))


def run() -> None:
    """Console-script entry point (`twostage`)."""
    logging.get_absl_handler().addFilter(_DropLibraryInfo())
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
