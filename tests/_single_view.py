"""Single-camera outputs pinned before several cameras existed.

`reference()` computes, with the code of today, the batches and the outputs of every network
and of the policy on the synthetic single-camera dataset; tests/data/single_view.npz holds what
the same function returned before the view axis was added (written by
`python -m tests._single_view`). A single-camera dataset must give exactly these values.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import twostage_jax as tj
from tests._tiny import TINY_NET, TINY_S2
from twostage_jax.testing import make_synthetic_dataset

PATH = Path(__file__).parent / "data" / "single_view.npz"


def reference() -> dict[str, np.ndarray]:
    """Every array the single-camera path produces on a fixed synthetic dataset and keys."""
    ds = make_synthetic_dataset(num_episodes=3, steps_per_episode=3, image_size=32)
    out: dict[str, np.ndarray] = {}
    idx = jnp.arange(8)
    key = jax.random.PRNGKey(7)
    for algo in ("bc", "cql"):
        cfg = tj.TrainConfig(algo=algo, batch_size=8, network=TINY_NET, stage2=TINY_S2, image_size=16)
        data = tj.prepare_data(ds, cfg)
        b1 = tj.batch_at(data, idx, key, 1)
        b2 = tj.batch_at(data, idx, key, 2, cfg.stage2)
        out.update({"stage1_image": np.asarray(b1.obs.image), "crop": np.asarray(b2.obs.crop),
                    "ee_crop": np.asarray(b2.obs.ee_crop), "tentative": np.asarray(b2.obs.tentative),
                    "target": np.asarray(b2.action), "next_crop": np.asarray(b2.next_obs.crop)})
        params = []
        for stage, batch in ((1, b1), (2, b2)):
            nets = tj.make_networks(TINY_NET, stage, algo)
            p = nets.init(jax.random.PRNGKey(stage), batch.obs)
            params.append(p)
            out[f"{algo}_stage{stage}_action"] = np.asarray(tj.deterministic_action(nets, p, batch.obs))
        act = tj.make_policy(cfg, cfg, ds.workspace)
        frames = jnp.asarray(ds.images[np.asarray(ds.obs_index)[:4]])
        res = act(params[0], params[1], frames, jnp.asarray(ds.pose[:4]), ds.camera(0), key)
        out[f"{algo}_policy_action"] = np.asarray(res.action)
        out[f"{algo}_policy_tentative"] = np.asarray(res.tentative)
    return out


if __name__ == "__main__":
    import tests.conftest  # noqa: F401  (the suite's XLA flags, set before the backend starts)

    np.savez(PATH, **reference())
    print(f"wrote {PATH}")
