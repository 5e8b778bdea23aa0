#!/bin/bash
# Written for an earlier launcher; today: python -m twostage_jax.launch (was experiments.main), --config.stage2.cql.bc_weight (was stage2.cql_bc_weight); the configs have changed since, so it does not rerun the study as it was.
# CQL stage 2 with a BC term in the actor (cql_bc_weight), dev; 1500 steps on the study's stage 1.
# Run from the repository root with its virtual environment active.
cd "$(git rev-parse --show-toplevel)"
for T in "$@"; do
  WD=runs/repro/$T/cql
  for W in 0.3 3; do
    a=bcw${W/./}
    if [ ! -f $WD/$a/summary.json ]; then
      python -m experiments.main --mode=stage2 --workdir=$WD --config=experiments/configs/repro.py:cql --task=$T \
        --resume --config.stage2_name=$a --config.stage2.cql_bc_weight=$W > runs/budget/$T.$a.log 2>&1
    fi
  done
  echo bc trained $T
done
