"""build_dataset on a hand-made trajectory; save/load round trip; rejection of bad files."""

import os

import numpy as np
import pytest

from twostage_jax.data.dataset import (FORMAT_VERSION, DatasetFormatError, build_dataset,
                                       load_dataset, save_dataset)
from twostage_jax.data.trajectory import Trajectory, frames_to_render
from twostage_jax.types import Camera, Workspace

WS = Workspace.create([-1.0, -1.0, -1.0], [1.0, 1.0, 1.0])


def _trajectory(seed=0, n=25, keyframes=(8, 16, 24)):
    rng = np.random.default_rng(seed)
    frames = frames_to_render(n, keyframes, augment_every=10)
    m = len(frames)
    cam = Camera(intrinsics=np.tile(np.array([[100.0, 0, 4], [0, 100.0, 4], [0, 0, 1]]), (m, 1, 1)),
                 cam_to_world=np.tile(np.eye(4), (m, 1, 1)), width=8, height=8)
    g = np.ones(n, np.float32)
    g[16:] = 0.0
    return Trajectory(positions=rng.uniform(-0.5, 0.5, (n, 3)), eulers=np.zeros((n, 3)),
                      gripper_open=g, velocities=np.zeros((n, 3)),
                      keyframes=np.asarray(keyframes, np.int32), image_frames=frames,
                      images=rng.integers(0, 255, (m, 8, 8, 3), dtype=np.uint8), camera=cam,
                      task="toy", seed=seed)


def test_build_dataset_transitions():
    traj = _trajectory()
    ds = build_dataset([traj], WS, gamma=0.5, augment_every=10)
    # Start frames 0, 10, 20 (< last keyframe 24): chains 0->8->16->24, 10->16->24, 20->24.
    assert ds.num_transitions == 3 + 2 + 1
    # Unique images: frames 0, 8, 10, 16, 20, 24.
    assert ds.images.shape == (6, 8, 8, 3)
    np.testing.assert_allclose(ds.reward, [0, 0, 1, 0, 1, 1])
    np.testing.assert_allclose(ds.done, ds.reward)
    np.testing.assert_allclose(ds.mc_return, [0.25, 0.5, 1, 0.5, 1, 1])
    poses = traj.poses(WS)
    np.testing.assert_allclose(ds.action[0], poses[8])
    np.testing.assert_allclose(ds.next_action[0], poses[16])
    np.testing.assert_allclose(ds.next_action[2], ds.action[2])  # last of a chain
    np.testing.assert_allclose(ds.pose[3], poses[10])
    assert ds.action[1, 6] == -1.0 and ds.action[0, 6] == 1.0  # closed from frame 16
    np.testing.assert_array_equal(ds.images[ds.obs_index[3]], traj.images[2])  # frame 10
    assert ds.obs_index[1] == ds.next_obs_index[0]  # images referenced, not copied


def test_build_dataset_errors():
    with pytest.raises(ValueError, match="at least one"):
        build_dataset([], WS)
    traj = _trajectory()
    with pytest.raises(ValueError, match="no image for frame"):
        build_dataset([traj], WS, augment_every=3)


def test_round_trip(tmp_path):
    ds = build_dataset([_trajectory(0), _trajectory(1, n=31, keyframes=(12, 30))], WS)
    path = tmp_path / "demos.npz"
    save_dataset(path, ds)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    back = load_dataset(path)
    for field in ("images", "intrinsics", "cam_to_world", "obs_index", "next_obs_index", "pose",
                  "next_pose", "action", "next_action", "reward", "mc_return", "done", "episode"):
        a, b = np.asarray(getattr(ds, field)), np.asarray(getattr(back, field))
        assert a.dtype == b.dtype, field
        np.testing.assert_array_equal(a, b, err_msg=field)
    np.testing.assert_array_equal(np.asarray(back.workspace.low), np.asarray(ds.workspace.low))
    assert set(np.asarray(back.episode).tolist()) == {0, 1}


def test_rejects_truncated_corrupted_and_wrong_version(tmp_path):
    ds = build_dataset([_trajectory()], WS)
    path = tmp_path / "d.npz"
    save_dataset(path, ds)
    raw = path.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetFormatError, match="truncated or corrupted"):
        load_dataset(trunc)
    # Flip one byte inside the image payload: the zip is still readable, the checksum is not.
    bad = bytearray(raw)
    i = raw.index(b"images.npy") + 400
    bad[i] ^= 0xFF
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(bad))
    with pytest.raises(DatasetFormatError):
        load_dataset(corrupt)
    with np.load(path) as npz:
        payload = {k: npz[k] for k in npz.files}
    payload["format_version"] = np.asarray(FORMAT_VERSION + 1, np.int64)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **payload)
    with pytest.raises(DatasetFormatError, match=f"format_version {FORMAT_VERSION + 1}; this library reads versions"):
        load_dataset(wrong)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.npz")
