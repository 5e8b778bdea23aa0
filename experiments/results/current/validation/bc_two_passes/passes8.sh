#!/bin/bash
# BC headline stage 2 with 1 and 2 correction passes on the 8 tasks (the plan: experiments/results/archive/bc_stage2_budget/plan.md); closed loop only.
set -e
# MAIN: the checkout holding runs/ and the results (default: this one); STUDY: a checkout of the
# code to run (default: MAIN). Run with the virtual environment active.
MAIN=${MAIN:-$(git rev-parse --show-toplevel)}; STUDY=${STUDY:-$MAIN}
cd "$STUDY"
for T in ${TASKS:-reach-v3 push-v3 pick-place-v3 button-press-topdown-v3 drawer-open-v3 door-open-v3 peg-insert-side-v3 basketball-v3}; do
  for P in 1 2; do
    python -m experiments.studies.validate --workdir=$MAIN/runs/repro/$T/bc --names=stage2 --held_out=0 --episodes=20 \
      --correction_passes=$P --out=$MAIN/experiments/results/current/validation/bc_two_passes/$T \
      > $MAIN/runs/budget/$T.passes$P.log 2>&1
  done
  echo "passes done $T $(date +%H:%M)"
done
