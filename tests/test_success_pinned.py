"""Success on recorded keyframe episodes is pinned: speed-ups of the action mode must not change
what counts as success (nor the low-level step counts, errors and end positions)."""

import json
from pathlib import Path

import numpy as np
import pytest

mw = pytest.importorskip("twostage_jax.envs.metaworld")

EPISODES = json.loads((Path(__file__).parent / "data" / "recorded_episodes.json").read_text())


@pytest.mark.sim
@pytest.mark.parametrize("task", sorted({e["task"] for e in EPISODES}))
def test_recorded_episodes_replay_identically(task):
    env = mw.MetaWorldEnv(task, mw.MetaWorldConfig(width=32, height=32, max_keyframes=10))
    episodes = [e for e in EPISODES if e["task"] == task]
    assert {e["steps"][-1]["success"] for e in episodes} == {True, False}  # both outcomes pinned
    for e in episodes:
        env.reset(e["seed"])
        for k, (action, want) in enumerate(zip(e["actions"], e["steps"])):
            _, reward, done, info = env.step(np.asarray(action, np.float32))
            got = {key: info[key] for key in ("success", "clipped", "move_steps", "gripper_steps",
                                              "position_error")}
            got.update(reward=reward, tcp=env.tcp_position().tolist())
            assert got == want, (task, e["seed"], k)
            assert done == (want["success"] or k + 1 == e["max_keyframes"])
    env.close()
