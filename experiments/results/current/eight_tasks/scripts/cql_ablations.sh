#!/usr/bin/env bash
# The CQL stage-2 ablations of the 8-task evaluation (crop 16 / 64 / calibrated 'auto', direct,
# TD), as they were run: from the repository root of a frozen checkout, with the package's
# environment active. Per task: the demos and stage 1 (trained to 30k and chosen on validation,
# exactly as the headline run's, which it reproduces bitwise on this machine), then the five
# stage-2 ablations: two single-threaded at a time, crop64 (4x the default crop's pixels, the
# slowest) last and on both cores. Each finished run's results.json is copied to
# runs/cql_ablations/raw/TASK/cql_NAME.json, to be copied into
# experiments/results/current/eight_tasks/raw/ and summarised (experiments/results/current/eight_tasks/README.md).
# Resumable: a finished run is skipped, and so is one whose raw is already committed in
# experiments/results/current/eight_tasks/raw/ (so a new machine runs only what is missing; a
# task whose five are all committed is skipped whole); an unfinished stage resumes from its last
# checkpoint.
# On 2 cores, push: stage 1 about 25 min; the ablations 14-16 min each two at a time, crop64 39 min.
# Usage: bash experiments/results/current/eight_tasks/scripts/cql_ablations.sh [TASK ...]
set -u
R=runs/cql_ablations
RAW=$R/raw
COMMITTED=experiments/results/current/eight_tasks/raw
NAMES="crop16 td direct auto crop64"
ONE="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# Each ablation's launcher flags come from reproduce.py's ABLATIONS, the one place they are defined.
flags_of() { python -c "from experiments.studies.reproduce import ABLATIONS, CONFIG
_, variants, extra = ABLATIONS['$1']; print(f'--config={CONFIG}:{variants}', *extra)"; }
ablate() {  # XLA_FLAGS TASK NAME launcher-flags...
  local xf=$1 t=$2 name=$3; shift 3
  local wd=$R/$t/cql
  if [ -f "$COMMITTED/$t/cql_$name.json" ]; then echo "committed, skipped: $t.$name"; return; fi
  [ -f "$wd/eval_$name/results.json" ] || XLA_FLAGS="$xf" \
    python -m twostage_jax.launch --mode=all --workdir="$wd" --task="$t" --resume --config.eval.workers=1 \
    --config.stage2_name="$name" "$@" > "$R/logs/$t.$name.log" 2>&1
  if [ -f "$wd/eval_$name/results.json" ]; then
    mkdir -p "$RAW/$t"
    cp "$wd/eval_$name/results.json" "$RAW/$t/cql_$name.tmp" && mv "$RAW/$t/cql_$name.tmp" "$RAW/$t/cql_$name.json"
    echo "done $t.$name $(date -u +%T)"
  else
    echo "FAILED $t.$name $(date -u +%T) (log $R/logs/$t.$name.log)"
  fi
}
tasks=("$@"); [ ${#tasks[@]} -gt 0 ] || tasks=(push-v3 pick-place-v3 drawer-open-v3)
for t in "${tasks[@]}"; do
  missing=0; for n in $NAMES; do [ -f "$COMMITTED/$t/cql_$n.json" ] || missing=1; done
  if [ $missing = 0 ]; then echo "== $t: all five committed, skipped"; continue; fi
  echo "== $t stage 1 $(date -u +%T)"
  python -m experiments.studies.reproduce --algos=cql --tasks="$t" --ablation_tasks="$t" --stage1_only \
    --workers=1 --root=$R --raw=$RAW || { echo "stage 1 of $t failed"; exit 1; }
  echo "== $t ablations $(date -u +%T)"
  ablate "$ONE" "$t" crop16 $(flags_of crop16) &
  ablate "$ONE" "$t" td $(flags_of td); wait
  ablate "$ONE" "$t" direct $(flags_of direct) &
  ablate "$ONE" "$t" auto $(flags_of auto); wait
  ablate "" "$t" crop64 $(flags_of crop64)
done
echo "== done $(date -u +%T)"
