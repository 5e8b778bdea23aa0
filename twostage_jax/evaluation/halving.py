"""Choosing a checkpoint from validation rollouts: pure functions of success tables.

`choose_steps` picks each seed's best step from a validation curve; `successive_halving`
spends rollouts only on candidates that can still win (`halving_rungs`, `keep_candidates`,
`wilson_interval`); `plateau_reached` says when training stopped improving. The launcher's
`launch/selection.py` rolls the candidates out and records the choice.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np


def choose_steps(steps: Any, success: Any, per_seed: bool = True) -> list[int]:
    """The selected step of each seed from a validation curve.

    Args:
      steps: [K] increasing candidate steps.
      success: [K, S] validation success rate of each candidate for each seed.
      per_seed: choose each seed's own best step; else the step with the best mean over seeds,
        for every seed.

    Returns:
      [S] chosen steps: the highest success, ties going to the earliest step.
    """
    steps = np.asarray(steps)
    success = np.asarray(success, dtype=np.float64)
    if steps.ndim != 1 or success.ndim != 2 or success.shape[0] != steps.shape[0] or not steps.size:
        raise ValueError(f"choose_steps needs steps [K] and success [K, S] with K > 0; got shapes "
                         f"{steps.shape} and {success.shape}.")
    if not per_seed:
        success = np.repeat(success.mean(axis=1, keepdims=True), success.shape[1], axis=1)
    return [int(steps[i]) for i in np.argmax(success, axis=0)]  # argmax: the first maximum


def halving_rungs(num_layouts: int, first_share: float) -> list[int]:
    """The layouts rolled out at each round of successive halving: ceil(first_share * E) (at
    least 1), doubling up to E, e.g. E=20, share 0.25 -> [5, 10, 20]."""
    n = min(num_layouts, max(1, math.ceil(first_share * num_layouts - 1e-9)))
    rungs = [n]
    while rungs[-1] < num_layouts:
        rungs.append(min(num_layouts, 2 * rungs[-1]))
    return rungs


def wilson_interval(rate: np.ndarray, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of success rates `rate` measured on `n` episodes each."""
    rate = np.asarray(rate, np.float64)
    denom = 1.0 + z * z / n
    centre = (rate + z * z / (2 * n)) / denom
    half = z * np.sqrt(rate * (1.0 - rate) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def keep_candidates(score: np.ndarray, n: int, rule: str) -> np.ndarray:
    """Which candidates a halving round keeps.

    Args:
      score: [K] success rates of the candidates still in, each on `n` episodes.
      n: episodes behind each score.
      rule: 'half' (the best ceil(K/2); candidates tied with the last kept are kept too) or
        'overlap' (those whose 95% Wilson interval reaches the leader's lower bound).

    Returns:
      [K] bool.
    """
    score = np.asarray(score, np.float64)
    if rule == "half":
        cut = np.sort(score)[::-1][math.ceil(score.size / 2) - 1]
        return score >= cut
    low, high = wilson_interval(score, n)
    return high >= low[int(np.argmax(score))]


class Halving(NamedTuple):
    """What `successive_halving` chose and spent.

    Attributes:
      chosen: [S] the chosen candidate's index for each training seed.
      episodes: [K, S] validation episodes each candidate was judged on (0: never rolled).
      success: [K, S] its success rate on those episodes (NaN where 0).
      spent: episodes rolled out in all (the sum of `episodes`).
    """

    chosen: list[int]
    episodes: np.ndarray
    success: np.ndarray
    spent: int


def successive_halving(outcomes: Callable[[dict[tuple[int, int], int]], np.ndarray], num_candidates: int,
                       num_seeds: int, num_layouts: int, first_share: float = 1.0, keep: str = "half",
                       per_seed: bool = True) -> Halving:
    """Chooses a candidate per seed, rolling out only the candidates that can still win.

    Every candidate is rolled out on the first `halving_rungs(...)[0]` layouts; the candidates
    `keep_candidates` keeps go on to twice as many, until one is left or every layout is used.
    The best on the most layouts wins, ties going to the earliest candidate. With
    `first_share=1` this is `choose_steps` on every layout.

    Args:
      outcomes: requests {(candidate, seed): n} -> [K, S, E] float array of 1/0 episode
        outcomes in which at least the first n layouts of each request are filled (NaN where
        not rolled out); it rolls out what is missing.
      num_candidates, num_seeds, num_layouts: K, S, E.
      first_share, keep: `SelectConfig`'s.
      per_seed: each seed its own candidates (else the seeds' mean decides for all of them).

    Returns:
      A `Halving`.
    """
    rungs = halving_rungs(num_layouts, first_share)
    groups = [[s] for s in range(num_seeds)] if per_seed else [list(range(num_seeds))]
    episodes = np.zeros((num_candidates, num_seeds), int)
    chosen = [0] * num_seeds
    alive = {g: np.arange(num_candidates) for g in range(len(groups))}
    score: dict[int, np.ndarray] = {}
    for n in rungs:
        table = outcomes({(int(k), s): n for g, ks in alive.items() for k in ks for s in groups[g]})
        for g, ks in list(alive.items()):
            seeds = groups[g]
            part = np.asarray(table)[np.ix_(ks, seeds, np.arange(n))]
            if np.isnan(part).any():
                raise RuntimeError(f"successive_halving: outcomes left {int(np.isnan(part).sum())} "
                                   "requested episodes unfilled.")
            episodes[np.ix_(ks, seeds)] = n
            score[g] = part.mean(axis=(1, 2))
            if len(ks) == 1 or n == rungs[-1]:
                best = ks[int(np.argmax(score[g]))]  # argmax: the first (earliest) maximum
                for s in seeds:
                    chosen[s] = int(best)
                del alive[g]
            else:
                kept = keep_candidates(score[g], n * len(seeds), keep)
                if kept.sum() == 1:  # one left: it wins without more rollouts
                    for s in seeds:
                        chosen[s] = int(ks[kept][0])
                    del alive[g]
                else:
                    alive[g] = ks[kept]
        if not alive:
            break
    table = np.asarray(outcomes({}))
    success = np.full((num_candidates, num_seeds), np.nan)
    for k in range(num_candidates):
        for s in range(num_seeds):
            if episodes[k, s]:
                success[k, s] = table[k, s, :episodes[k, s]].mean()
    return Halving(chosen, episodes, success, int(episodes.sum()))


def plateau_reached(scores: np.ndarray, patience: int, min_delta: float = 0.0) -> bool:
    """Whether every column's best score stopped improving.

    Args:
      scores: [K, G] validation success of the candidates so far, in training order, per seed
        (or one column for all seeds).
      patience: P; 0 never stops.
      min_delta: an improvement counts when it exceeds the best so far by more than this.

    Returns:
      True when, in every column, none of the last P candidates improved on the best before it.
    """
    scores = np.asarray(scores, np.float64)
    if patience <= 0 or scores.shape[0] <= patience:
        return False
    for col in scores.T:
        best, since = -np.inf, 0
        for v in col:
            if v > best + min_delta:
                best, since = v, 0
            else:
                since += 1
        if since < patience:
            return False
    return True


def choose_by_halves(stage1: list[int], two_stage: list[int]) -> tuple[float, int]:
    """One seed's success when it may act without correction, cross-validated on its layouts.

    The seed chooses between stage 1 and the two-stage policy on one half of its validation
    layouts (ties choose no correction, as `config.select.no_correction`'s selection does) and
    is scored on the other half, both ways round.

    Args:
      stage1, two_stage: [E] per-layout successes (0/1) on the same layouts.

    Returns:
      (the success rate over both scored halves, how many of the 2 choices were no correction).
    """
    s1, s2 = np.asarray(stage1, float), np.asarray(two_stage, float)
    half = len(s1) // 2
    parts = [np.arange(half), np.arange(half, len(s1))]
    scored, plain = [], 0
    for choose, score in (parts, parts[::-1]):
        keep = s2[choose].mean() <= s1[choose].mean()
        plain += int(keep)
        scored.append((s1 if keep else s2)[score])
    return float(np.concatenate(scored).mean()), plain
