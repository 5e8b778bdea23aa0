#!/bin/bash
# Written for an earlier launcher; today: python -m twostage_jax.launch (was experiments.main), the same flags; repro.py:bc has changed since, so it does not rerun the study as it was.
# BC stage-2 training budget, dev: the study's BC stage 2 (2000 steps) continued on a copy to 8000
# steps (held-out curve every 250); closed-loop validation (layouts 200000+) of 2000 and 8000, and of
# 2000 with two correction passes.
# Run from the repository root with its virtual environment active.
cd "$(git rev-parse --show-toplevel)"
for T in "$@"; do
  WD=runs/repro/$T/bc
  OUT=experiments/results/current/validation/bc_stage2_budget/$T
  if [ ! -d $WD/s2_8000/checkpoints/8000 ]; then
    [ -d $WD/s2_8000 ] || cp -r $WD/stage2 $WD/s2_8000
    python -m experiments.main --mode=stage2 --workdir=$WD --config=experiments/configs/repro.py:bc --task=$T \
      --resume --config.stage2_name=s2_8000 --config.stage2.num_steps=8000 --config.train.checkpoint_every=2000 \
      >> runs/budget/$T.bc.s2_8000.log 2>&1
  fi
  python -m experiments.studies.validate --workdir=$WD --names=stage2,s2_8000 --episodes=20 --out=$OUT > runs/budget/$T.bcval.log 2>&1
  python -m experiments.studies.validate --workdir=$WD --names=stage2 --episodes=20 --correction_passes=2 --out=$OUT >> runs/budget/$T.bcval.log 2>&1
  echo done $T
done
