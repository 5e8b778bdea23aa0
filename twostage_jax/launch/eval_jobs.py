"""The launcher's evaluation jobs: stage 1 alone and the two-stage policy, per seed and checkpoint,
on one `EnvPool`; stage 1's results are cached in stage1/eval_cache.json, keyed by the evaluation
setting and a fingerprint of the parameters, so ablations sharing a stage 1 reuse its rollouts."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

import twostage_jax as tj
from twostage_jax._io import write_json_atomic
from twostage_jax.envs.rlbench import RLBenchEnv
from twostage_jax.evaluation import Episode, EnvPool, Job
from twostage_jax.evaluation import rollouts as eval_rollouts
from twostage_jax.launch.launch_config import LaunchConfig

MODES = ("stage1", "two_stage")
EVAL_VERSION = 2  # bumped when what a cached stage-1 rollout means changes


def env_factory(config: LaunchConfig) -> Callable[[], Any]:
    """A picklable zero-argument constructor of the evaluation env (one per worker)."""
    size, keyframes = int(config.demos.image_size), int(config.demos.max_keyframes)
    if config.env == "metaworld":
        return functools.partial(tj.envs.make_env, str(config.task), width=size, height=size,
                                 max_keyframes=keyframes, cameras=config.camera_names())
    views = {} if config.cameras is None else {"cameras": config.cameras}
    return functools.partial(RLBenchEnv, str(config.task), image_size=size, max_keyframes=keyframes, **views)


def pool_workers(config: LaunchConfig, episodes: int) -> int:
    """`config.eval.workers`, capped (saying so) at the episodes to roll out and the usable cores."""
    workers = max(1, min(int(config.eval.workers), int(episodes), eval_rollouts.default_workers()))
    if workers < int(config.eval.workers):
        logging.info("rolling out %d episode(s) with %d simulator(s) (config.eval.workers=%d; %d core(s))",
                     episodes, workers, config.eval.workers, eval_rollouts.default_workers())
    return workers


def params_fingerprint(params: Any) -> str:
    """SHA-256 (hex) of a parameter pytree: its paths, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class Stage1Cache:
    """Stage-1 success lists in a JSON file (unreadable: empty), one per (`setting`, parameters)."""

    def __init__(self, path: Path, setting: dict) -> None:
        self.path, self.setting = Path(path), setting
        try:
            entries = json.loads(self.path.read_text()).get("entries", {})
        except (OSError, ValueError, AttributeError):
            entries = {}
        self._entries: dict[str, Any] = entries if isinstance(entries, dict) else {}

    def _key(self, fingerprint: str) -> tuple[str, dict]:
        text = json.dumps({**self.setting, "params_sha256": fingerprint}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24], json.loads(text)  # as read back

    def get(self, fingerprint: str) -> list[bool] | None:
        """The cached success list of parameters with this fingerprint, or None."""
        name, key = self._key(fingerprint)
        entry = self._entries.get(name)
        return ([bool(x) for x in entry["success"]]
                if isinstance(entry, dict) and entry.get("key") == key else None)

    def put(self, fingerprint: str, success: list[bool]) -> None:
        name, key = self._key(fingerprint)
        self._entries[name] = {"key": key, "success": [bool(x) for x in success]}

    def save(self) -> None:
        write_json_atomic(self.path, {"version": EVAL_VERSION, "entries": self._entries})


def cache_setting(config: LaunchConfig, seeds: list[int]) -> dict:
    """What besides stage 1's parameters determines its evaluation episodes."""
    return {"version": EVAL_VERSION, "task": config.task, "env": config.env, "eval_seeds": seeds,
            "max_keyframes": int(config.demos.max_keyframes),
            "image_size": int(config.demos.image_size), "algo": config.algo,
            "stage1_image_size": config.stage1.image_size or config.demos.image_size,
            "stage1_network": json.loads(json.dumps(dataclasses.asdict(config.stage1.network)))}


def seed_params(params: Any, s: int) -> Any:
    """Seed `s`'s slice of a parameter pytree with a leading seed axis."""
    return jax.tree_util.tree_map(lambda x: x[s], params)


class Evaluation:
    """Collects (tag, params) to evaluate, then runs all their episodes on one `EnvPool`.

    Args:
      seeds: evaluation layout seeds.
      num_seeds: training seeds (leading axis of the parameters).
      modes: the policies to roll out, a subset of `MODES`.
      base: a base policy in place of stage 1: a callable base(image, pose), or `ENV_BASE` when
        the env's observations carry its actions.
      refine: a second stage 2 that corrects stage 2's action again (`make_policy`'s); the
        stage-2 parameters then hold its own under 'refine'.
    """

    def __init__(self, stage1: tj.TrainConfig | None, stage2: tj.TrainConfig | None,
                 workspace: tj.Workspace, seeds: list[int], num_seeds: int, cache: Stage1Cache | None,
                 correction_passes: int = 1, corrected_dims: Any = None,
                 modes: tuple[str, ...] = MODES, base: Any = None, critic_samples: int = 0,
                 refine: tj.TrainConfig | None = None) -> None:
        self.policies = {}
        tentative = functools.partial(_tentative, base)
        self._alone = (functools.partial(_base_alone, tentative) if base is not None else
                       None if stage1 is None else tj.make_policy(stage1, None, workspace, row_by_row=True))
        if "stage1" in modes:
            self.policies["stage1"] = self._alone
        if "two_stage" in modes:
            act = tj.make_policy(None if base is not None else stage1, stage2, workspace,
                                 row_by_row=True, correction_passes=correction_passes,
                                 corrected_dims=corrected_dims, critic_samples=critic_samples,
                                 refine=refine)
            self.policies["two_stage"] = (act if base is None else
                                          functools.partial(_base_corrected, act, tentative))
        self.seeds, self.num_seeds, self.cache = seeds, num_seeds, cache
        self.candidates = critic_samples + 2 if critic_samples else 0
        self.choices: dict[Any, np.ndarray] = {}  # tag -> [num_seeds, candidates] the critic's choices
        self._entries: list[tuple] = []  # (tag, params1, params2, record, layouts, seeds, uncorrected)
        self.reused = 0

    def add(self, tag: Any, params1: Any, params2: Any, record: int = 0,
            layouts: list[int] | None = None, seeds: list[int] | None = None,
            uncorrected: tuple[int, ...] = ()) -> None:
        """Evaluates every mode for every seed of `params1`/`params2` ([S, ...] leaves).

        Args:
          record: how many first episodes of seed 0 keep their frames.
          layouts: this entry's layout seeds (default: the evaluation's, the only ones cached).
          seeds: the training seeds to roll out (default: all; the others' rows stay False).
          uncorrected: training seeds whose 'two_stage' policy is stage 1 (or the base) alone.
        """
        self._entries.append((tag, params1, params2, record, layouts, seeds, frozenset(uncorrected)))

    def clear(self) -> None:
        """Forgets the entries added, keeping the policies (and what they compiled)."""
        self._entries = []

    def episodes(self) -> int:
        """Episodes `run` rolls out at most (before the stage-1 cache is consulted)."""
        return sum(len(self.seeds if layouts is None else layouts) *
                   (self.num_seeds if seeds is None else len(seeds)) * len(self.policies)
                   for _, _, _, _, layouts, seeds, _ in self._entries)

    def run(self, pool: EnvPool, progress: Any = None
            ) -> tuple[dict[Any, dict[str, np.ndarray]], dict[str, list[Episode]]]:
        """Runs every episode not in the cache.

        Returns:
          ({tag: {mode: [num_seeds, num_layouts] bool success}}, {mode: recorded episodes}).
        """
        success = {tag: {m: np.zeros((self.num_seeds, len(self.seeds if layouts is None else layouts)), bool)
                         for m in self.policies}
                   for tag, _, _, _, layouts, _, _ in self._entries}
        jobs: list[tuple[Job, tuple[Any, str, int, int]]] = []  # (job, (tag, mode, seed, layout index))
        fresh: dict[str, tuple[Any, int]] = {}  # fingerprint -> (tag, seed) evaluated now
        for tag, params1, params2, record, layouts, seeds, uncorrected in self._entries:
            for s in range(self.num_seeds) if seeds is None else seeds:
                p1 = None if params1 is None else seed_params(params1, s)
                p2 = None if params2 is None else seed_params(params2, s)
                for mode, policy in self.policies.items():
                    if mode == "two_stage" and s in uncorrected:  # the tentative action as it is
                        policy, p2 = self._alone, None
                    act = functools.partial(_call, policy, p1, p2 if mode == "two_stage" else None)
                    if mode == "stage1" and self.cache is not None and layouts is None:
                        fp = params_fingerprint(p1)
                        hit = self.cache.get(fp)
                        if hit is not None and len(hit) == len(self.seeds):
                            success[tag][mode][s] = hit
                            self.reused += 1
                            # the recorded episodes are rolled out again for their frames
                            for e in range(min(record, len(self.seeds)) if s == 0 else 0):
                                jobs.append((Job(act, self.seeds[e], record=True), (tag, mode, s, e)))
                            continue
                        fresh[fp] = (tag, s)
                    for e, layout in enumerate(self.seeds if layouts is None else layouts):
                        jobs.append((Job(act, layout, record=s == 0 and e < record), (tag, mode, s, e)))
        recorded: dict[str, list[tuple[int, Episode]]] = {}
        self.choices = {tag: np.zeros((self.num_seeds, self.candidates), int) for tag in success}

        def done(i: int, ep: Episode) -> None:
            tag, mode, s, e = jobs[i][1]
            success[tag][mode][s, e] = ep.success
            if mode == "two_stage" and ep.choices.size:
                self.choices[tag][s] += np.bincount(ep.choices, minlength=self.candidates)
            if ep.frames.size:
                recorded.setdefault(mode, []).append((e, ep))
            if progress is not None:
                progress.update(1)

        if progress is not None:
            progress.total = len(jobs)
            progress.refresh()
        pool.run([job for job, _ in jobs], on_episode=done)
        if self.cache is not None and fresh:
            for fp, (tag, s) in fresh.items():
                self.cache.put(fp, success[tag]["stage1"][s].tolist())
            self.cache.save()
        return success, {m: [ep for _, ep in sorted(eps, key=lambda x: x[0])]
                         for m, eps in recorded.items()}


ENV_BASE = "env"  # `Evaluation`'s `base` when the base policy acts beside the simulator


def _call(policy: Callable[..., Any], p1: Any, p2: Any, image: np.ndarray, pose: np.ndarray,
          camera: Any, tentative: np.ndarray | None = None) -> Any:
    if tentative is None:
        return policy(p1, p2, image, pose, camera)
    return policy(p1, p2, image, pose, camera, tentative=tentative)


def _tentative(base: Any, image: np.ndarray, pose: np.ndarray, tentative: np.ndarray | None) -> np.ndarray:
    if not isinstance(base, str):
        return tj.call_base_policy(base, image, pose)
    if tentative is None:
        raise RuntimeError("the base policy acts beside the simulator, but the env's observations "
                           "carry no tentative action (is the env a BaseActingEnv?).")
    return tentative


def _base_alone(tentative_of: Callable[..., np.ndarray], p1: Any, p2: Any, image: np.ndarray,
                pose: np.ndarray, camera: Any, tentative: np.ndarray | None = None) -> tj.PolicyOutput:
    a1 = np.asarray(tentative_of(image, pose, tentative), np.float32)
    return tj.PolicyOutput(action=a1, tentative=a1, correction=np.zeros_like(a1))


def _base_corrected(act: Callable[..., Any], tentative_of: Callable[..., np.ndarray], p1: Any, p2: Any,
                    image: np.ndarray, pose: np.ndarray, camera: Any,
                    tentative: np.ndarray | None = None) -> Any:
    return act(None, p2, image, pose, camera, tentative=tentative_of(image, pose, tentative))
