#!/bin/bash
# Written for an earlier launcher; today: python -m twostage_jax.launch (was experiments.main), --config.stage1.cql.bc_weight and --config.stage1.cql.actor_encoder_grad (were stage1.cql_bc_weight, stage1.cql_actor_encoder_grad); the configs have changed since, so it does not rerun the study as it was.
# CQL stage 1 with a BC term in the actor (stage1.cql_bc_weight=W), dev, on the study's demos;
# stage 2 as repro.py:cql; closed-loop validation on layouts 200000+ only.
set -e
W=$1; shift
# Run from the repository root with its virtual environment active.
cd "$(git rev-parse --show-toplevel)"
for T in "$@"; do
  WD=runs/dev/$T/s1bcg${W/./}
  mkdir -p $WD
  [ -e $WD/demos ] || ln -s $(realpath runs/repro/$T/bc/demos) $WD/demos
  [ -e $WD/heldout ] || [ ! -d runs/repro/$T/cql/heldout ] || cp -r runs/repro/$T/cql/heldout $WD/heldout
  for S in stage1 stage2; do
    [ -f $WD/$S/summary.json ] || python -m experiments.main --mode=$S --workdir=$WD --config=experiments/configs/repro.py:cql \
      --task=$T --resume --config.stage1.cql_bc_weight=$W --config.stage1.cql_actor_encoder_grad=True > runs/budget/$T.s1bcg$W.$S.log 2>&1
  done
  python -m experiments.studies.validate --workdir=$WD --names=stage2 --episodes=20 \
    --out=experiments/results/current/validation/cql_stage2_options/$T > runs/budget/$T.s1bcg$W.val.log 2>&1
  echo done $T
done
