"""Training: configuration, device data and Algorithm 1's batches, the trainer, and seeds.

  * `config`: `TrainConfig` (one stage's run), `ALGOS`, `SEED_STRATEGIES`;
  * `data`: `prepare_data(dataset, config, residuals=None) -> TrainData` (on device, once; with
    the residual bank of `Stage2Config.perturbation='residuals'`), `sample_batch` and
    `batch_at` (Algorithm 1 for stage 2), `moving_transitions`;
  * `refine`: `first_pass_actions`, a first stage 2's corrected actions on Algorithm 1's draws,
    which a second correction pass (a zoom) trains on;
  * `held_out`: `make_held_out_eval(config, stage) -> evaluate(params, data, key)`;
  * `trainer`: `make_train(config, stage)` returns `train(key, data) -> (AgentState, metrics)`,
    a `lax.scan` over update steps that samples batches on device (purejaxrl style);
    `train.init`/`step`/`run` are its pieces;
  * `seeds`: `train_seeds(config, data, keys, stage, strategy)` trains several seeds;
    `init_seeds` and `run_seeds` are its two halves, for chunked training (log, checkpoint,
    resume between chunks); `run_seeds` holds the seed-strategy dispatch.
"""

from twostage_jax.training.config import ALGOS, SEED_STRATEGIES, TrainConfig
from twostage_jax.training.data import (
    TrainData,
    batch_at,
    moving_transitions,
    prepare_data,
    sample_batch,
)
from twostage_jax.training.refine import first_pass_actions
from twostage_jax.training.held_out import HeldOutMetrics, make_held_out_eval
from twostage_jax.training.seeds import init_seeds, run_seeds, train_seeds
from twostage_jax.training.trainer import Train, make_train
from twostage_jax.transform import Stage2Config  # the stage-2 half of a TrainConfig

__all__ = [
    "ALGOS", "SEED_STRATEGIES", "HeldOutMetrics", "Stage2Config", "Train", "TrainConfig", "TrainData",
    "batch_at", "first_pass_actions", "init_seeds", "make_held_out_eval", "make_train", "moving_transitions", "prepare_data",
    "run_seeds", "sample_batch", "train_seeds",
]
