#!/bin/bash
# Written for an earlier launcher; today: python -m twostage_jax.launch (was experiments.main), --config.stage2.cql.actor_lr (was stage2.cql_actor_lr); the configs have changed since, so it does not rerun the study as it was.
# Round 6 (plan.md): CQL stage 2 with the actor's learning rate alone at 1e-3, on the study's stage 1;
# closed-loop validation on layouts 200000+ only.
set -e
# MAIN: the checkout holding runs/ and the results (default: this one); STUDY: a checkout of the
# code to run (default: MAIN). Run with the virtual environment active.
MAIN=${MAIN:-$(git rev-parse --show-toplevel)}; STUDY=${STUDY:-$MAIN}
cd "$STUDY"
for T in ${TASKS:-push-v3 reach-v3 door-open-v3 pick-place-v3}; do
  WD=$MAIN/runs/repro/$T/cql
  [ -f $WD/alr1e3/summary.json ] || python -m experiments.main --mode=stage2 --workdir=$WD \
    --config=experiments/configs/repro.py:cql --task=$T --resume --config.stage2_name=alr1e3 \
    --config.stage2.cql_actor_lr=1e-3 > $MAIN/runs/budget/$T.alr1e3.log 2>&1
  python -m experiments.studies.validate --workdir=$WD --names=alr1e3 --episodes=20 \
    --out=$MAIN/experiments/results/current/validation/cql_stage2_options/$T > $MAIN/runs/budget/$T.round6val.log 2>&1
  echo "round6 done $T $(date +%H:%M)"
done
