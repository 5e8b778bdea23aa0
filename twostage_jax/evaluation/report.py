"""An evaluation's results: the typed record the launcher writes to results.json
(`EvalResults.to_dict`) and `experiments/studies/summarize.py` reads back (`EvalResults.from_dict`).

results.json carries `version` (`RESULTS_VERSION`); `from_dict` refuses another version, and
names the file and the field of whatever is missing or inconsistent.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twostage_jax.training.config import ALGOS

RESULTS_VERSION = 2
MODES = ("stage1", "two_stage")


class ResultsError(ValueError):
    """A results file that is missing a field, or whose fields disagree (the message names both)."""


@dataclasses.dataclass(frozen=True)
class MeanInterval:
    """A mean with its 95% bootstrap interval [ci_low, ci_high]."""

    mean: float
    ci_low: float
    ci_high: float


@dataclasses.dataclass(frozen=True)
class ModeResult:
    """One policy's success ('stage1' alone, or 'two_stage').

    Attributes:
      per_seed: [S] success rate of each training seed.
      mean, ci_low, ci_high: the mean over seeds with its bootstrap interval.
      episodes: [S][E] 1 / 0 success of each evaluation episode.
    """

    per_seed: tuple[float, ...]
    mean: float
    ci_low: float
    ci_high: float
    episodes: tuple[tuple[int, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Curve:
    """Success over training (Fig. 4): `per_seed` [len(steps)][S] success rates at `steps`."""

    steps: tuple[int, ...]
    per_seed: tuple[tuple[float, ...], ...]


@dataclasses.dataclass(frozen=True)
class EvalResults:
    """What one evaluation of a workdir found (results.json).

    Attributes:
      task, algo, env: what was evaluated.
      num_seeds, episodes_per_seed: S training seeds, E evaluation layouts per seed.
      eval_seeds: (first, last) evaluation layout.
      stage1_step, stage2_step: the stages' newest checkpoints.
      stage2_mode: 'correction' or 'direct'.
      crop_size: stage 2's crop as configured (0: calibrated).
      stage2_name: stage 2's folder ('stage2' for the headline run).
      stage2_q_target: CQL's stage-2 Q target ('mc' / 'td'), None for BC.
      modes: {'stage1' | 'two_stage': ModeResult}.
      gain: two-stage minus stage 1, paired by seed.
      stage1_steps, stage2_steps: [S] the step each seed acted with (validation-selected or
        the newest).
      selection: {stage name: checkpoint-selection record} for the stages that select.
      stage2_sigma, stage2_crop_size: Algo. 1's sigma and the crop size stage 2 trained with
        (calibrated ones included).
      stage2_loss_weighting: 'none' or 'whiten' (resolved; 'none' for CQL).
      correction_passes, corrected_dims: how the two-stage policy acted (`make_policy`'s).
      critic_choices: with `eval.critic_samples`: per seed, the steps on which stage 2's critic
        chose `no_correction`, the actor's `mode`, or a `sample` ({} otherwise).
      eval_seconds: wall time of the rollouts.
      config: the launcher config (`config.to_dict`; an older file's in its older format).
      curves: {mode: Curve} when `config.eval.curve_steps` were evaluated, else None.
      stage1_source: '' (our stage 1), or the base policy of the user's that stood in for it
        (`config.stage1.source`): then 'stage1' is that policy alone and 'two_stage' corrected.
      environment: what the run ran on (`provenance.environment_record`): 'evaluation' this
        evaluation's, 'stage1' and 'stage2' a list each, where the stage started and then each
        resume that trained it further (empty for a record written before these were kept).
      cost: what the run cost (`evaluate.run_cost`): per stage its training's wall and CPU
        seconds (`train_seconds`, `train_cpu_seconds`, the run that trained it last), the step
        it stopped at, and the wall and CPU seconds of its validation rollouts (a plateau
        stop's and the selection's, with `episodes_spent` of `episodes_full`); `evaluation`
        this evaluation's. CPU seconds count the simulator workers. Empty in older records.
    """

    task: str
    algo: str
    num_seeds: int
    episodes_per_seed: int
    eval_seeds: tuple[int, ...]
    stage1_step: int
    stage2_step: int
    stage2_mode: str
    crop_size: int
    stage2_name: str
    stage2_q_target: str | None
    modes: dict[str, ModeResult]
    gain: MeanInterval | None = None
    env: str = "metaworld"
    stage1_steps: tuple[int, ...] = ()
    stage2_steps: tuple[int, ...] = ()
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)
    stage2_sigma: tuple[float, ...] | None = None
    stage2_crop_size: int | None = None
    stage2_loss_weighting: str = "none"
    correction_passes: int = 1
    corrected_dims: tuple[int, ...] | None = None
    eval_seconds: float = 0.0
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    curves: dict[str, Curve] | None = None
    stage1_source: str = ""
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    cost: dict[str, Any] = dataclasses.field(default_factory=dict)
    critic_choices: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with `version`."""
        def plain(x: Any) -> Any:
            if dataclasses.is_dataclass(x):
                return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return [plain(v) for v in x] if isinstance(x, (tuple, list)) else x

        d = plain(self)
        if d["curves"] is None:
            del d["curves"]
        return {"version": RESULTS_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Any, where: str = "results") -> "EvalResults":
        """Reads a results.json dict of any version, checked.

        Args:
          d: the parsed JSON.
          where: the file, for messages.

        Raises:
          ResultsError: "WHERE: missing field(s) ...", or a field that disagrees with another.
        """
        if not isinstance(d, dict):
            raise ResultsError(f"{where}: expected a JSON object, got {type(d).__name__}.")
        d = dict(d)
        version = d.pop("version", None)
        if version != RESULTS_VERSION:
            raise ResultsError(f"{where}: results version {version!r}; this launcher reads version "
                               f"{RESULTS_VERSION}: evaluate again with --mode=eval.")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ResultsError(f"{where}: missing field(s) {', '.join(repr(k) for k in missing)}.")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ResultsError(f"{where}: unknown field(s) {', '.join(repr(k) for k in unknown)}.")
        if d["algo"] not in ALGOS:
            raise ResultsError(f"{where}: field 'algo' is {d['algo']!r}; expected one of {ALGOS}.")
        n = d["num_seeds"]
        modes = d["modes"] if isinstance(d["modes"], dict) else {}
        parsed = {}
        for m in MODES:
            r = modes.get(m)
            if not isinstance(r, dict) or not isinstance(r.get("per_seed"), list):
                raise ResultsError(f"{where}: missing field 'modes.{m}.per_seed'.")
            if len(r["per_seed"]) != n:
                raise ResultsError(f"{where}: field 'modes.{m}.per_seed' has {len(r['per_seed'])} "
                                   f"entries but 'num_seeds' is {n}.")
            parsed[m] = ModeResult(tuple(float(x) for x in r["per_seed"]), float(r["mean"]),
                                   float(r["ci_low"]), float(r["ci_high"]),
                                   tuple(tuple(int(e) for e in row) for row in r.get("episodes", ())))
        curves = None
        if d.get("curves") is not None:  # [steps][seeds] success rates
            curves = {}
            for m in MODES:
                c = d["curves"].get(m) if isinstance(d["curves"], dict) else None
                steps = c.get("steps") if isinstance(c, dict) else None
                per = c.get("per_seed") if isinstance(c, dict) else None
                if (not isinstance(steps, list) or not isinstance(per, list) or len(per) != len(steps)
                        or any(not isinstance(row, list) or len(row) != n for row in per)):
                    raise ResultsError(f"{where}: field 'curves.{m}' must hold 'steps' (a list) and "
                                       f"'per_seed' ([len(steps)][num_seeds] success rates).")
                curves[m] = Curve(tuple(int(k) for k in steps),
                                  tuple(tuple(float(x) for x in row) for row in per))
        gain = d.get("gain")
        tuples = lambda v: None if v is None else tuple(v)
        return cls(**{**d, "modes": parsed, "curves": curves,
                      "gain": None if gain is None else MeanInterval(float(gain["mean"]), float(gain["ci_low"]),
                                                                 float(gain["ci_high"])),
                      "eval_seeds": tuple(d["eval_seeds"]), "stage1_steps": tuple(d.get("stage1_steps", ())),
                      "stage2_steps": tuple(d.get("stage2_steps", ())),
                      "stage2_sigma": tuples(d.get("stage2_sigma")),
                      "corrected_dims": tuples(d.get("corrected_dims"))})
