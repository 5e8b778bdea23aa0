#!/bin/bash
# Written for an earlier launcher; today: python -m twostage_jax.launch (was experiments.main), --config.stage2.cql.actor_encoder_grad (was stage2.cql_actor_encoder_grad); the configs have changed since, so it does not rerun the study as it was.
# CQL stage-2 encoder options, dev: one flag each on the study's stage 1,
# 1500 steps as the headline; closed-loop validation on layouts 200000+ only.
set -e
T=$1
# Run from the repository root with its virtual environment active.
cd "$(git rev-parse --show-toplevel)"
WD=runs/repro/$T/cql
OUT=experiments/results/current/validation/cql_stage2_options/$T
declare -A ARM
ARM[aeg]="--config.stage2.cql_actor_encoder_grad=True"
ARM[coord]="--config.stage2.network.coord_channels=True"
ARM[ssm]="--config.stage2.network.crop_encoder=spatial_softmax --config.stage2.network.crop_conv_strides=(2,1,1)"
for a in aeg coord ssm; do
  if [ ! -f $WD/$a/summary.json ]; then
    python -m experiments.main --mode=stage2 --workdir=$WD --config=experiments/configs/repro.py:cql --task=$T \
      --resume --config.stage2_name=$a ${ARM[$a]} > runs/budget/$T.$a.log 2>&1
  fi
done
echo enc trained $T
