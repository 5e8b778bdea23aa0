"""The launcher: demos -> stage 1 -> stage 2 -> evaluation in a workdir.

Run it as `python -m twostage_jax.launch --mode=all --workdir=DIR` (or the console script
`twostage`). Its modules, one job each:
  main          absl flags, the checks before any work, and the modes' order
  config        the config: `LaunchConfig`, frozen dataclasses embedding the library's; variants
  config_flags  `--config=FILE[:variants]` and `--config.a.b=VALUE`, parsed by field type
  migrate       stored configs of older launchers, to the current schema (`CONFIG_VERSION`)
  checks        checks across fields, each stage's `TrainConfig`, comparison with a stored config
  workdir       the workdir's layout; loading its dataset and checkpoints
  demos         --mode=demos: record or read the demonstrations
  train_stage   --mode=stage1 / stage2: chunked training, resume, stage 2's calibration
  selection     checkpoint selection on validation layouts
  rollouts      evaluation jobs on a process pool, with the stage-1 rollout cache
  evaluate      --mode=eval: success rates with intervals, plots, frames
  results       results.json's typed record (`EvalResults`), shared with experiments/summarize.py
  plots         success bars, learning curves, rollout frames

Nothing in the pure core (`twostage_jax/*.py`) imports this package.
"""
