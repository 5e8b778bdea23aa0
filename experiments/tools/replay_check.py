"""Per-task replay check of the MetaWorld demonstrations.

For each task, records demos with the scripted expert until `--num_demos` are kept (at most
3 * num_demos + 10 seeds) and prints: seeds tried, expert successes, demos kept (keyframe replay
through the env's action mode succeeded), the keep rate kept / expert successes, a second
replay of the stored keyframe actions of every kept demo in a fresh env, and the time.

    python -m experiments.tools.replay_check --num_demos=20
    python -m experiments.tools.replay_check --tasks=pick-place-v3,push-v3 --num_demos=5
"""

from __future__ import annotations

import time

from absl import app, flags

from twostage_jax.envs.metaworld_demos import record_demos, replay_keyframes
from twostage_jax.envs.metaworld import DEFAULT_TASKS, MetaWorldEnv


def check_task(task: str, num_demos: int, seed: int) -> dict:
    start = time.perf_counter()
    trajs, stats = record_demos(task, num_demos, seed=seed, progress=False, strict=False)
    env = MetaWorldEnv(task)
    ok = sum(replay_keyframes(env, t.seed, t.keyframe_actions(env.workspace)) for t in trajs)
    env.close()
    return {"task": task, "tried": stats.attempts, "expert": stats.expert_successes,
            "kept": stats.kept, "keep_rate": stats.keep_rate,
            "replay": ok / len(trajs) if trajs else float("nan"),
            "keyframes": stats.mean_keyframes, "seconds": time.perf_counter() - start}


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this script's absl flags (only when run as a script, so importing this module
    beside the other experiment scripts never defines a flag twice)."""
    flags.DEFINE_string("tasks", ",".join(DEFAULT_TASKS), "Comma-separated MetaWorld tasks.")
    flags.DEFINE_integer("num_demos", 20, "Demos to keep per task.")
    flags.DEFINE_integer("seed", 1000, "The first layout seed.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments {argv[1:]}; every option is a --flag.")
    args = FLAGS
    print(f"{'task':26s} {'tried':>5s} {'expert':>6s} {'kept':>4s} {'keep%':>6s} "
          f"{'replay%':>7s} {'kf/demo':>7s} {'time_s':>6s}", flush=True)
    for task in args.tasks.split(","):
        r = check_task(task, args.num_demos, args.seed)
        print(f"{r['task']:26s} {r['tried']:5d} {r['expert']:6d} {r['kept']:4d} "
              f"{100 * r['keep_rate']:6.1f} {100 * r['replay']:7.1f} {r['keyframes']:7.2f} "
              f"{r['seconds']:6.1f}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
