#!/bin/bash
# Written for an earlier launcher; today: python -m twostage_jax.launch (was experiments.main), --config.stage2.stage2.crop_size=64; the configs have changed since, so it does not rerun the study as it was.
# CQL stage 2 with a 64-px crop (BC's default; CQL's is the paper's 32), dev; validation 200000+.
# Run from the repository root with its virtual environment active.
cd "$(git rev-parse --show-toplevel)"
for T in "$@"; do
  WD=runs/repro/$T/cql
  [ -f $WD/crop64dev/summary.json ] || python -m experiments.main --mode=stage2 --workdir=$WD --config=experiments/configs/repro.py:cql \
    --task=$T --resume --config.stage2_name=crop64dev --config.stage2.crop_size=64 > runs/budget/$T.crop64.log 2>&1
  python -m experiments.studies.validate --workdir=$WD --names=stage2,crop64dev --episodes=20 \
    --out=experiments/results/current/validation/cql_stage2_options/$T > runs/budget/$T.crop64val.log 2>&1
  echo done $T
done
