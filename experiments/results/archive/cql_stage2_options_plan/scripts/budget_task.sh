#!/bin/bash
# Written for an earlier launcher; today: python -m twostage_jax.launch (was experiments.main), the same flags; the configs have changed since, so it does not rerun the study as it was.
# CQL stage-2 training budget, dev: the study's stage 2 (1500 steps) continued on copies to 3000 and
# 6000 steps, held-out curves logged; closed-loop validation on layouts 200000+ only.
set -e
T=$1
# Run from the repository root with its virtual environment active.
cd "$(git rev-parse --show-toplevel)"
WD=runs/repro/$T/cql
prev=stage2
for N in 3000 6000; do
  name=s2_${N}
  if [ ! -d $WD/$name/checkpoints/$N ]; then
    [ -d $WD/$name ] || cp -r $WD/$prev $WD/$name
    python -m experiments.main --mode=stage2 --workdir=$WD --config=experiments/configs/repro.py:cql --task=$T \
      --resume --config.stage2_name=$name --config.stage2.num_steps=$N --config.train.checkpoint_every=1500 \
      >> runs/budget/$T.$name.log 2>&1
  fi
  prev=$name
done
echo trained $T
