"""Writes tests/data/recorded_episodes.json: keyframe episodes and what `MetaWorldEnv.step`
reported for them, to pin success (and the action mode's low-level step counts) across
changes that must not alter what counts as success.

Per task: the scripted expert's keyframe actions of one demo (a success) and the same actions
with Gaussian noise (std 0.15) on the normalised position (all four fail). Recorded with the code of commit be7e87b (before the cheaper success checks).

    python tests/data/make_recorded_episodes.py
"""

import json
from pathlib import Path

import numpy as np

TASKS = ("push-v3", "pick-place-v3", "door-open-v3", "peg-insert-side-v3")
SIZE = 32  # the image does not matter here; small renders are fast


def main() -> None:
    from twostage_jax.envs.metaworld_demos import record_demos
    from twostage_jax.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    rng = np.random.default_rng(0)
    out = []
    for task in TASKS:
        cfg = MetaWorldConfig(width=SIZE, height=SIZE, max_keyframes=10)
        trajs, _ = record_demos(task, 1, seed=500, progress=False, env_config=cfg)
        env = MetaWorldEnv(task, cfg)
        expert = trajs[0].keyframe_actions(env.workspace)
        noisy = expert.copy()
        noisy[:, :3] = np.clip(noisy[:, :3] + rng.normal(0, 0.15, noisy[:, :3].shape), -1, 1)
        for actions in (expert, noisy.astype(np.float32)):
            env.reset(int(trajs[0].seed))
            steps = []
            for a in actions:
                _, reward, done, info = env.step(a)
                steps.append({"reward": reward, "success": info["success"], "clipped": info["clipped"],
                              "move_steps": info["move_steps"], "gripper_steps": info["gripper_steps"],
                              "position_error": info["position_error"],
                              "tcp": env.tcp_position().tolist()})
                if done:
                    break
            out.append({"task": task, "seed": int(trajs[0].seed), "max_keyframes": 10,
                        "actions": actions.tolist(), "steps": steps})
        env.close()
    path = Path(__file__).with_name("recorded_episodes.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}: {[(e['task'], len(e['steps']), e['steps'][-1]['success']) for e in out]}")


if __name__ == "__main__":
    main()
