#!/usr/bin/env bash
# On a machine with a GPU: the benchmark at paper sizes, then the 8-task study with the paper's
# network sizes (experiments/studies/reproduce.py --scale=paper). Run from the repository root,
# in an environment with JAX's CUDA build (pip install -e ".[sim,dev,cuda]"); any further
# arguments go to the study driver, e.g. --tasks=push-v3 --algos=bc or --dry_run.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys

import jax

if jax.default_backend() != "gpu":
    sys.exit(f"error: no GPU: JAX runs on {jax.default_backend()!r} ({jax.devices()}); install "
             "JAX's CUDA build (pip install -e '.[cuda]') on a machine with an NVIDIA GPU.")
print("GPU:", jax.devices())
PY
python -m experiments.tools.benchmark --sections=train_steps,seeds,batch_scaling,crops,crop_cost,act --skip-sim --out=runs/benchmark/gpu.json
python -m experiments.studies.reproduce --scale=paper --root=runs/repro_gpu --workers=1 "$@"
