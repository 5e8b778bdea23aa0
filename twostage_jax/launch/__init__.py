"""The launcher: demos -> stage 1 -> stage 2 -> evaluation in a workdir.

Run it as `python -m twostage_jax.launch --mode=all --workdir=DIR` (or the console script
`twostage`). It reads top-down: flags -> one config -> its checks -> the modes. One job each:
  main         absl flags, the checks before any work, and the modes' order
  overrides    `--config=NAME[:variants]` and `--config.a.b=VALUE` into one `LaunchConfig`
  launch_config the schema (frozen dataclasses embedding the library's), variants, checks across fields
  bounds       sizes no machine holds, refused before any work
  errors       `PipelineError`, the launcher's user-fixable error
  workdir      the workdir's layout and records; loading its dataset and checkpoints
  lock         who may write or read each part of a workdir
  demos        --mode=demos: record or read the demonstrations
  train_stage  --mode=stage1 / stage2: chunked training, resume, stage 2's calibration
  selection    checkpoint selection on validation layouts
  eval_jobs    evaluation jobs on a process pool, with the stage-1 rollout cache
  evaluate     --mode=eval: success rates with intervals, plots, frames
  base_source  a base policy of yours standing in for stage 1
  predictions  the tentative actions stage 2 trains on beside Algorithm 1's: cross-fit stage 1's,
               a base policy's, or those of the run a second zoom refines
  refine       a stage-2 run that corrects another's action again (`stage2.refines`)

Nothing in the core imports this package.
"""
