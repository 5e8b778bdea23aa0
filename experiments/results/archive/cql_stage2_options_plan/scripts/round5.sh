#!/bin/bash
# Round 5 (plan.md): the headline CQL stage 2 acting on position and gripper only
# (corrected_dims 1,1,1,0,0,0,1; nothing retrained); closed-loop validation on layouts 200000+ only.
set -e
# MAIN: the checkout holding runs/ and the results (default: this one); STUDY: a checkout of the
# code to run (default: MAIN). Run with the virtual environment active.
MAIN=${MAIN:-$(git rev-parse --show-toplevel)}; STUDY=${STUDY:-$MAIN}
cd "$STUDY"
for T in ${TASKS:-push-v3 reach-v3 door-open-v3 pick-place-v3}; do
  python -m experiments.studies.validate --workdir=$MAIN/runs/repro/$T/cql --names=stage2 --corrected_dims=1,1,1,0,0,0,1 \
    --episodes=20 --out=$MAIN/experiments/results/current/validation/cql_stage2_options/$T > $MAIN/runs/budget/$T.round5val.log 2>&1
  echo "round5 done $T $(date +%H:%M)"
done
