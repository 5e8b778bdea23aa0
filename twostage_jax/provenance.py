"""What a run ran on: package versions, the host's CPU and backend, and CPU seconds spent."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import jax

RECORDED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "mujoco", "metaworld")
"""The packages whose versions `environment_record` keeps: those that decide the float rounding
of training and the simulator's dynamics."""
_CPU_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of `_CPU_FEATURES` it has (Linux's /proc/cpuinfo; elsewhere
    `platform.processor()` and no features)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), []
    first = info.split("\n\n", 1)[0]  # the first processor's block
    fields = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln)}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.processor()), [f for f in _CPU_FEATURES if f in flags]


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its child processes that have ended:
    the difference around a block that closes its workers (an `EnvPool`) is the block's CPU
    cost, its simulators included."""
    import resource  # POSIX-only; imported here so the module loads elsewhere

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def environment_record() -> dict[str, Any]:
    """What a run trained or evaluated on, beyond its config: the package versions
    (`RECORDED_PACKAGES`, None when absent), Python, the JAX backend and device kind, the CPU's
    model and vector features, and XLA_FLAGS.

    XLA compiles for the host's instruction set, so one program can round differently on
    another CPU or package version; a fixed program on a fixed machine is bitwise reproducible
    (docs/results.md, "Run-to-run variation"). Two runs whose records differ here may differ
    in float rounding alone.
    """
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    model, features = _cpu()
    device = jax.local_devices()[0]
    return {"python": platform.python_version(), **versions, "backend": jax.default_backend(),
            "device_kind": device.device_kind, "local_devices": jax.local_device_count(),
            "cpu": model, "cpu_features": features, "xla_flags": os.environ.get("XLA_FLAGS", "")}
