"""RLBench on-disk reader (RLBench absent) and the adapter's pure conversions."""

import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image

from twostage_jax.data.dataset import build_dataset
from twostage_jax.data.rlbench_io import load_rlbench_demos
from twostage_jax.envs import rlbench as rb
from twostage_jax.types import Workspace

WS = Workspace.create(rb.RLBENCH_WORKSPACE_LOW, rb.RLBENCH_WORKSPACE_HIGH)
K_RLBENCH = np.array([[-110.0, 0, 64], [0, -110.0, 64], [0, 0, 1]])
EXTR = np.array([[0.0, 0, -1, 1.8], [1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])


def _write_fixture(root, n=24):
    """Writes one episode in RLBench's real layout, with fake rlbench modules only while pickling."""
    names = ["rlbench", "rlbench.demo", "rlbench.backend", "rlbench.backend.observation"]
    assert not any(m in sys.modules for m in names)
    mods = {m: types.ModuleType(m) for m in names}

    class Observation:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class Demo:
        def __init__(self, observations, random_seed=None):
            self._observations = observations
            self.random_seed = random_seed

    Observation.__module__, Observation.__qualname__ = "rlbench.backend.observation", "Observation"
    Demo.__module__, Demo.__qualname__ = "rlbench.demo", "Demo"
    mods["rlbench.backend.observation"].Observation = Observation
    mods["rlbench.demo"].Demo = Demo
    down = [0.0, 1.0, 0.0, 0.0]
    obs = []
    for i in range(n):
        # Moves for 10 frames, stands still, closes the gripper at 16, moves again from 17.
        x = 0.2 + 0.01 * min(i, 10) + 0.02 * max(i - 16, 0)
        g = 1.0 if i < 16 else 0.0
        jv = np.full(7, 0.5) if i < 10 or i > 16 else np.zeros(7)
        obs.append(Observation(
            left_shoulder_rgb=None, front_rgb=None, front_depth=None, front_mask=None,
            gripper_pose=np.array([x, 0.0, 1.0, *down]), gripper_open=g, joint_velocities=jv,
            joint_positions=np.zeros(7), gripper_joint_positions=np.zeros(2),
            task_low_dim_state=np.zeros(3),
            misc={"front_camera_intrinsics": K_RLBENCH, "front_camera_extrinsics": EXTR,
                  "front_camera_near": 0.01, "front_camera_far": 4.5}))
    ep = root / "reach_target" / "variation0" / "episodes" / "episode0"
    (ep / "front_rgb").mkdir(parents=True)
    sys.modules.update(mods)
    try:
        with open(ep / "low_dim_obs.pkl", "wb") as f:
            pickle.dump(Demo(obs, random_seed=3), f)
    finally:
        for m in names:
            del sys.modules[m]
    for i in range(n):
        Image.fromarray(np.full((128, 128, 3), i, np.uint8)).save(ep / "front_rgb" / f"{i}.png")
    return ep


def test_reader_without_rlbench(tmp_path):
    _write_fixture(tmp_path)
    assert "rlbench" not in sys.modules
    (traj,) = load_rlbench_demos(tmp_path, "reach_target")
    assert "rlbench" not in sys.modules
    assert traj.num_frames == 24
    # ARM's rules: stop at 10 (11..14 refractory; 15 is next to a gripper change), gripper
    # change at 16, last frame 23. The close rule drops 10 (same position as 16).
    from twostage_jax.data.keyframes import arm_keyframes
    assert arm_keyframes(traj.gripper_open, traj.velocities, 0.1, 4) == [10, 16, 23]
    assert traj.keyframes.tolist() == [16, 23]
    np.testing.assert_allclose(traj.eulers, 0.0, atol=1e-9)  # pointing down = neutral
    assert traj.images.dtype == np.uint8
    for slot, frame in enumerate(traj.image_frames):
        assert traj.images[slot, 0, 0, 0] == frame
    np.testing.assert_allclose(np.asarray(traj.camera.intrinsics)[0, 0, 0], 110.0)
    ds = build_dataset([traj], WS)
    assert ds.num_transitions > 0 and float(ds.reward.max()) == 1.0
    with pytest.raises(FileNotFoundError, match="No RLBench episodes"):
        load_rlbench_demos(tmp_path, "missing_task")


def test_action_conversion():
    pos = np.array([0.2, 0.1, 1.0])
    yaw = 0.5
    a = np.concatenate([2 * (pos - WS.low) / (WS.high - WS.low) - 1, [0, 0, yaw / np.pi], [1.0]])
    out = rb.action_to_rlbench(a.astype(np.float32), WS)
    np.testing.assert_allclose(out[:3], pos, atol=1e-5)
    assert out[7] == 1.0
    assert rb.action_to_rlbench(np.concatenate([a[:6], [-0.2]]).astype(np.float32), WS)[7] == 0.0
    # The quaternion is yaw about world z applied after the neutral (pointing down) orientation.
    from scipy.spatial.transform import Rotation
    expect = (Rotation.from_euler("z", yaw) * Rotation.from_quat(rb.DEFAULT_NEUTRAL_QUAT)).as_quat()
    expect = expect if expect[3] >= 0 else -expect
    np.testing.assert_allclose(out[3:7], expect, atol=1e-5)
    # Round trip through RLBench's pose convention.
    back = rb.rlbench_pose_to_ours(out[:7], out[7], WS)
    np.testing.assert_allclose(back, a, atol=1e-5)
    with pytest.raises(ValueError, match="action"):
        rb.action_to_rlbench(np.zeros(6, np.float32), WS)


def test_camera_conversion_and_lazy_import():
    cam = rb.camera_from_misc({"front_camera_intrinsics": K_RLBENCH,
                               "front_camera_extrinsics": EXTR}, 128, 128)
    assert float(cam.intrinsics[0, 0]) == 110.0
    with pytest.raises(ValueError, match="front_camera_intrinsics"):
        rb.camera_from_misc({}, 128, 128)
    try:
        import rlbench  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="CoppeliaSim"):
            rb.RLBenchEnv("reach_target")
