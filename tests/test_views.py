"""Several cameras per observation: projection into each view, masks, the wrist camera, and a
single camera giving exactly the outputs it gave before views existed."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twostage_jax as tj
from tests import _single_view
from tests._tiny import TINY_NET, TINY_S2
from twostage_jax.data.dataset import load_dataset, save_dataset
from twostage_jax.geometry import look_at
from twostage_jax.testing import make_synthetic_dataset
from twostage_jax.transform import in_view, transform_views


def test_a_single_camera_gives_exactly_the_outputs_pinned_before_views_existed():
    pinned = np.load(_single_view.PATH)
    now = _single_view.reference()
    assert sorted(now) == sorted(pinned.files)
    for name in pinned.files:
        np.testing.assert_array_equal(now[name], pinned[name], err_msg=name)


F, C, SIZE = 100.0, 64.0, 128
K = np.array([[F, 0, C], [0, F, C], [0, 0, 1]], np.float32)
WS = tj.Workspace.create([-1.0, -1.0, -1.0], [1.0, 1.0, 1.0])  # action position = world position


def _camera(eye, target, up):
    return tj.Camera.create(K, np.asarray(look_at(eye, target, up)), SIZE, SIZE)


def _stack(cams):
    return tj.Camera(intrinsics=jnp.stack([c.intrinsics for c in cams]),
                     cam_to_world=jnp.stack([c.cam_to_world for c in cams]), width=SIZE, height=SIZE)


def _uv_images(views):
    """Images whose pixel (row i, column j) holds (j, i, 0): a crop's centre reads where it sampled."""
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    img = np.stack([cols, rows, np.zeros_like(rows)], -1).astype(np.uint8)
    return jnp.asarray(np.broadcast_to(img, (views, SIZE, SIZE, 3)))


def _centre_uv(crop):
    """The continuous (u, v) the crop's centre pixel sampled: pixel j's centre is j + 0.5."""
    return np.asarray(crop[crop.shape[0] // 2, crop.shape[1] // 2, :2]) * 255.0 + 0.5


def test_a_point_projects_to_the_hand_worked_pixel_in_each_of_three_cameras_one_moving():
    above = _camera((0.0, 0.0, 2.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # x -> +u, y -> -v
    side = _camera((2.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))  # y -> +u, z -> -v
    point = np.array([0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    pose = np.array([0.1, 0.2, 0.5, 0.0, 0.0, 0.0, 1.0], np.float32)
    # a wrist camera 0.5 m above the hand, looking down, at two instants of an episode
    for wrist_eye, wrist_uv in (((0.1, 0.2, 0.5), (64.0, 64.0)), ((0.0, 0.2, 0.5), (84.0, 64.0))):
        wrist = _camera(wrist_eye, (wrist_eye[0], wrist_eye[1], 0.0), (0.0, 1.0, 0.0))
        obs = transform_views(_uv_images(3), pose, point, _stack([above, side, wrist]), WS, 9, 5, rotate=False)
        # above: camera frame (0.1, -0.2, 2) -> u = 64 + 100 * 0.1 / 2, v = 64 - 100 * 0.2 / 2
        # side: (0.2, 0, 1.9) -> u = 64 + 100 * 0.2 / 1.9; wrist: (x_p - x_eye, 0, 0.5)
        want = [(69.0, 54.0), (64.0 + 20.0 / 1.9, 64.0), wrist_uv]
        for v in range(3):
            np.testing.assert_allclose(_centre_uv(obs.crop[v]), want[v], atol=1e-3, err_msg=f"view {v}")
        np.testing.assert_array_equal(obs.mask, [1.0, 1.0, 1.0])


def test_a_point_behind_or_outside_a_camera_gets_a_zero_crop_and_a_zero_mask():
    above = _camera((0.0, 0.0, 2.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    below = _camera((0.0, 0.0, -2.0), (0.0, 0.0, -3.0), (0.0, 1.0, 0.0))  # looks away: the point is behind
    aside = _camera((0.0, 0.0, 2.0), (3.0, 0.0, 2.0), (0.0, 0.0, 1.0))  # looks sideways, point out of frame
    point = np.array([0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    assert float(in_view(below, point[:3])) == 0.0 and float(in_view(above, point[:3])) == 1.0
    obs = transform_views(_uv_images(3), point, point, _stack([above, below, aside]), WS, 9, 5)
    np.testing.assert_array_equal(obs.mask, [1.0, 0.0, 0.0])
    assert float(jnp.abs(obs.crop[1]).max()) == 0.0 and float(jnp.abs(obs.crop[2]).max()) == 0.0
    assert float(jnp.abs(obs.ee_crop[1]).max()) == 0.0 and float(obs.crop[0].max()) > 0


def test_a_view_crop_scale_zooms_out_about_the_same_centre():
    above = _camera((0.0, 0.0, 2.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    point = np.array([0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    plain = transform_views(_uv_images(2), point, point, _stack([above, above]), WS, 9, 5, rotate=False,
                            crop_scales=(1.0, 2.0))
    np.testing.assert_allclose(_centre_uv(plain.crop[1]), (69.0, 54.0), atol=1e-3)
    # the corner pixel (0, 0) lies 4 crop pixels left and up: 4 image pixels at scale 1, 8 at 2
    np.testing.assert_allclose(np.asarray(plain.crop[0, 0, 0, :2]) * 255 + 0.5, (65.0, 50.0), atol=1e-3)
    np.testing.assert_allclose(np.asarray(plain.crop[1, 0, 0, :2]) * 255 + 0.5, (61.0, 46.0), atol=1e-3)


def test_several_cameras_train_vmapped_over_seeds_and_act_with_each_view_encoding(tmp_path):
    ds = make_synthetic_dataset(num_episodes=3, steps_per_episode=3, image_size=32, num_views=3)
    path = tmp_path / "views.npz"
    save_dataset(path, ds)
    back = load_dataset(path)
    assert back.num_views == 3 and back.num_frames == ds.num_frames
    images, cams = back.observed(np.asarray(back.obs_index[:2]))
    assert images.shape == (2, 3, 32, 32, 3) and cams.intrinsics.shape == (2, 3, 3, 3)
    shared = tj.Camera(intrinsics=cams.intrinsics[0], cam_to_world=cams.cam_to_world[0], width=32, height=32)
    # (every encoding builds its networks; one per algorithm trains and acts: compiles are the cost)
    trained = {("bc", "stacked"), ("cql", "separate")}
    for algo in ("bc", "cql"):
        for encoders in ("shared", "separate", "stacked"):
            net = dataclasses.replace(TINY_NET, view_encoders=encoders)
            cfg = tj.TrainConfig(algo=algo, batch_size=4, network=net, stage2=TINY_S2, image_size=16)
            data = tj.prepare_data(back, cfg)
            b1 = tj.batch_at(data, jnp.arange(4), jax.random.PRNGKey(0), 1)
            b2 = tj.batch_at(data, jnp.arange(4), jax.random.PRNGKey(0), 2, cfg.stage2)
            assert b1.obs.image.shape == (4, 3, 16, 16, 3) and b2.obs.crop.shape == (4, 3, 8, 8, 3)
            assert b2.obs.mask.shape == (4, 3) and b2.next_obs.ee_crop.shape == (4, 3, 4, 4, 3)
            params = [tj.make_networks(net, s, algo).init(jax.random.PRNGKey(s), b.obs)
                      for s, b in ((1, b1), (2, b2))]
            cnns = sorted(k for k in params[1]["encoder"]["params"] if k.startswith("crop_cnn"))
            assert cnns == (["crop_cnn", "crop_cnn_view1", "crop_cnn_view2"] if encoders == "separate" else ["crop_cnn"])
            first = params[1]["encoder"]["params"]["crop_cnn"]["Conv_0"]["kernel"]
            assert first.shape[2] == (9 if encoders == "stacked" else 3)  # the views' channels, stacked
            if (algo, encoders) not in trained:
                continue
            train = tj.make_train(cfg, 2)  # two seeds vmapped over one copy of the 3-view data
            states = tj.init_seeds(train, jax.random.split(jax.random.PRNGKey(0), 2), data)
            states, metrics = tj.run_seeds(train, states, data, 2, strategy="vmap")
            assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(metrics))
            act = tj.make_policy(cfg, cfg, back.workspace)
            for cam in (cams, shared):  # a camera set per row, or one shared by the batch
                out = act(params[0], params[1], jnp.asarray(images), jnp.asarray(back.pose[:2]), cam)
                assert out.action.shape == (2, 7) and np.all(np.isfinite(np.asarray(out.action)))
    with pytest.raises(ValueError, match="camera.intrinsics"):
        act(params[0], params[1], jnp.asarray(images), jnp.asarray(back.pose[:2]), back.camera(0))


def test_a_version_1_dataset_file_loads_as_one_camera(tmp_path):
    from twostage_jax.data import dataset as io

    ds = make_synthetic_dataset(num_episodes=2, steps_per_episode=2, image_size=16)
    arrays = {k: v for k, v in io._to_arrays(ds).items() if k != "num_views"}
    np.savez(tmp_path / "v1.npz", format_version=np.asarray(1, np.int64),
             checksum=np.frombuffer(io._checksum(arrays).encode(), np.uint8), **arrays)
    back = load_dataset(tmp_path / "v1.npz")
    assert back.num_views == 1
    np.testing.assert_array_equal(back.images, ds.images)
    with pytest.raises(ValueError, match="not a multiple of dataset.num_views"):
        tj.validate_dataset(ds.replace(num_views=4))  # 6 images


def test_the_view_crops_figure_draws_every_view(tmp_path):
    from twostage_jax.evaluation import plots

    above = _camera((0.0, 0.0, 2.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    side = _camera((2.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    point = np.array([0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    obs = transform_views(_uv_images(2), point, point, _stack([above, side]), WS, 9, 5)
    plots.view_crops(np.asarray(_uv_images(2)), _stack([above, side]), WS, point, point, obs.crop,
                     tmp_path / "views.png", names=["above", "side"])
    assert (tmp_path / "views.png").stat().st_size > 1000
