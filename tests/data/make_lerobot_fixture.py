"""Writes tests/data/lerobot_v3/ (a tiny LeRobot v3 dataset) and its calibration file.

The dataset is written by LeRobot's own writer (`LeRobotDataset.create`, `add_frame`,
`save_episode`, `finalize`, codebase version v3.0, its default AV1 video codec), so the reader
is tested against the real format rather than our idea of it. Written with the `lerobot` package
0.4.4 from PyPI, installed in a throwaway virtual environment (it pulls in PyTorch; it is no
dependency of this project):

    python -m venv VENV && VENV/bin/pip install lerobot==0.4.4
    HF_HUB_OFFLINE=1 VENV/bin/python tests/data/make_lerobot_fixture.py

The content is synthetic and deterministic; the functions above `main` are plain numpy, so the
tests import them to know what was written:
  * 3 episodes of 16, 18 and 20 frames at 10 fps; a 64x64 camera in front of a 1 m workspace
    (`CAMERA_K`, `CAM_TO_WORLD`, `WORKSPACE_*`), written to `lerobot_v3_calibration.json`;
  * `observation.state` = [x, y, z (metres), roll, pitch, yaw (extrinsic xyz Euler, radians),
    finger gap (metres)], pointing down (roll = pi); `action` = [the next frame's x, y, z, roll,
    pitch, yaw, gripper command (+1 open, -1 close)];
  * each episode moves to 12 cm above an object (frames 0-5), holds still (6-7), descends
    (8-10), closes the gripper at frame 11 while still, and lifts (12 to the end); so the
    keyframe rule (pose speed for the stop rule) finds the stop at 6, the gripper change at 11
    and the last frame;
  * `observation.images.front`: a smooth colour gradient with Gaussian blobs where the
    end-effector (yellow) and, until it is grasped, the object (blue) project, and a light
    vertical band at column 4 + 3 * frame (so that no two frames of an episode look alike);
    smooth shapes keep the video codec's error small.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "lerobot_v3"
CALIBRATION = HERE / "lerobot_v3_calibration.json"
IMAGE_KEY = "observation.images.front"
FPS = 10
SIZE = 64
LENGTHS = (16, 18, 20)
CLOSE_FRAME = 11
KEYFRAMES = tuple((6, CLOSE_FRAME, n - 1) for n in LENGTHS)
"""The keyframes each episode is built to have (stop, gripper change, last frame)."""
WORKSPACE_LOW = (-0.5, -0.5, 0.0)
WORKSPACE_HIGH = (0.5, 0.5, 0.5)
NEUTRAL_QUAT = (1.0, 0.0, 0.0, 0.0)
"""(x, y, z, w): a half turn about x, the pointing-down orientation of roll = pi."""


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)  # x right, y down, z forward
    pose[:3, 3] = eye
    return pose


_F = 0.5 * SIZE / np.tan(np.deg2rad(45.0) / 2)
CAMERA_K = np.array([[_F, 0.0, SIZE / 2], [0.0, _F, SIZE / 2], [0.0, 0.0, 1.0]])
CAM_TO_WORLD = _look_at(np.array([0.0, -1.2, 0.6]), np.array([0.0, 0.0, 0.1]))


def project(points: np.ndarray) -> np.ndarray:
    """[..., 3] world points -> [..., 2] pixel (u, v) of `CAMERA_K`, `CAM_TO_WORLD`."""
    p = (np.asarray(points, np.float64) - CAM_TO_WORLD[:3, 3]) @ CAM_TO_WORLD[:3, :3]
    return np.stack([CAMERA_K[0, 0] * p[..., 0] / p[..., 2] + CAMERA_K[0, 2],
                     CAMERA_K[1, 1] * p[..., 1] / p[..., 2] + CAMERA_K[1, 2]], axis=-1)


def episode_arrays(episode: int) -> dict[str, np.ndarray]:
    """What episode `episode` records.

    Returns:
      {"state": [T, 7] float32, "action": [T, 7] float32, "object": [3] float64}.
    """
    n = LENGTHS[episode]
    rng = np.random.default_rng(100 + episode)
    start = rng.uniform([-0.3, -0.3, 0.25], [0.3, 0.3, 0.4])
    obj = rng.uniform([-0.25, -0.25, 0.02], [0.25, 0.25, 0.05])
    above = obj + np.array([0.0, 0.0, 0.12])
    yaw0 = rng.uniform(-0.5, 0.5)
    pos = np.zeros((n, 3))
    pos[:6] = start + (above - start) * (np.arange(6) / 5.0)[:, None]  # approach
    pos[6:8] = above  # hold still: the stop keyframe
    pos[8:11] = above + (obj - above) * (np.arange(1, 4) / 3.0)[:, None]  # descend
    pos[11:13] = obj  # close the gripper while still
    lift = np.arange(1, n - 12) / (n - 13)
    pos[13:] = obj + np.array([0.0, 0.0, 0.15]) * lift[:, None]
    yaw = yaw0 + 0.3 * np.clip(np.arange(n) / 5.0, 0.0, 1.0)
    gap = np.where(np.arange(n) < CLOSE_FRAME, 0.08, 0.03)
    state = np.concatenate([pos, np.full((n, 1), np.pi), np.zeros((n, 1)), yaw[:, None],
                            gap[:, None]], axis=1).astype(np.float32)
    command = np.where(np.arange(n) < CLOSE_FRAME, 1.0, -1.0)
    nxt = np.concatenate([state[1:, :6], state[-1:, :6]], axis=0)
    action = np.concatenate([nxt, command[:, None]], axis=1).astype(np.float32)
    return {"state": state, "action": action, "object": obj}


def _blob(image: np.ndarray, uv: np.ndarray, colour: tuple[float, float, float], sigma: float) -> None:
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    w = np.exp(-((cols - uv[0]) ** 2 + (rows - uv[1]) ** 2) / (2 * sigma**2))[..., None]
    image *= 1.0 - w
    image += w * np.asarray(colour)


def render(episode: int, frame: int) -> np.ndarray:
    """[64, 64, 3] uint8 image of `frame` of `episode` (as given to LeRobot's writer)."""
    arrays = episode_arrays(episode)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    image = np.stack([60 + 80 * cols, 70 + 60 * rows, np.full_like(rows, 90.0 + 20 * episode)], -1)
    band = np.exp(-((cols * SIZE + 0.5 - (4.0 + 3.0 * frame)) ** 2) / (2 * 1.5**2))[..., None]
    image = image * (1.0 - band) + 235.0 * band  # a frame marker: neighbouring frames differ
    if frame < CLOSE_FRAME:
        _blob(image, project(arrays["object"]), (40.0, 90.0, 230.0), 2.5)
    _blob(image, project(arrays["state"][frame, :3]), (250.0, 210.0, 40.0), 2.0)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def main() -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    names = ["x", "y", "z", "roll", "pitch", "yaw"]
    features = {
        IMAGE_KEY: {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (7,), "names": names + ["finger_gap"]},
        "action": {"dtype": "float32", "shape": (7,), "names": names + ["gripper"]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lerobot_v3"
        ds = LeRobotDataset.create(repo_id="twostage_jax/fixture", fps=FPS, features=features,
                                   root=root, robot_type="synthetic", use_videos=True)
        for episode in range(len(LENGTHS)):
            arrays = episode_arrays(episode)
            for frame in range(LENGTHS[episode]):
                ds.add_frame({IMAGE_KEY: render(episode, frame), "observation.state": arrays["state"][frame],
                              "action": arrays["action"][frame], "task": "pick up the object"})
            ds.save_episode()
        ds.finalize()
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(root, OUT)
    calibration = {
        "format": "twostage_jax.calibration", "version": 1,
        "workspace": {"low": list(WORKSPACE_LOW), "high": list(WORKSPACE_HIGH)},
        "cameras": {IMAGE_KEY: {"intrinsics": CAMERA_K.tolist(), "cam_to_world": CAM_TO_WORLD.tolist(),
                                "width": SIZE, "height": SIZE}},
    }
    CALIBRATION.write_text(json.dumps(calibration, indent=2) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total} bytes) and {CALIBRATION}")


if __name__ == "__main__":
    main()
