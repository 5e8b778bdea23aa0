"""MetaWorld env: projection of the tool centre point against the render, action mode, demos."""

import numpy as np
import pytest

mw = pytest.importorskip("twostage_jax.envs.metaworld")

from twostage_jax.geometry import project_points  # noqa: E402


def _pad_centroid(env):
    """Centroid (u, v) of the finger-pad geoms' pixels in MuJoCo's segmentation render."""
    import mujoco

    model = env.sim.model
    bodies = {model.body(name).id for name in ("rightpad", "leftpad")}
    pad_geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies]
    seg = env.render_segmentation()
    mask = np.isin(seg[..., 0], pad_geoms) & (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM))
    rows, cols = np.nonzero(mask)
    assert rows.size > 0, "finger pads not visible"
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


@pytest.mark.render
def test_tcp_projection_lands_on_rendered_gripper():
    """Projected tcp_center vs the centroid of the rendered finger pads (the tcp is defined as the
    midpoint of the two pads' end-effector sites), over several frames of three tasks."""
    errors = []
    for task in ("reach-v3", "pick-place-v3", "drawer-open-v3"):
        env = mw.MetaWorldEnv(task)
        obs = env.reset(7)
        rng = np.random.default_rng(0)
        for k in range(3):
            if k:
                target = obs.pose.copy()
                target[:3] = np.clip(target[:3] + rng.uniform(-0.25, 0.25, 3), -0.9, 0.9)
                target[2] = max(target[2], -0.3)
                obs, _, done, info = env.step(target)
                assert not info["sim_error"]
            uv, depth = project_points(env.camera, env.tcp_position())
            assert float(depth) > 0
            errors.append(np.linalg.norm(np.asarray(uv) - _pad_centroid(env)))
        assert obs.image.shape == (128, 128, 3) and obs.image.dtype == np.uint8
        env.close()
    print(f"tcp projection vs rendered pads: mean {np.mean(errors):.2f} px, max {np.max(errors):.2f} px")
    assert np.mean(errors) < 2.0, errors


@pytest.mark.sim
def test_action_mode_reaches_targets_and_clips():
    env = mw.MetaWorldEnv("reach-v3", mw.MetaWorldConfig(max_keyframes=3))
    obs = env.reset(0)
    np.testing.assert_allclose(obs.pose[3:6], 0.0, atol=0.05)  # neutral orientation = 0
    assert obs.pose[6] == 1.0
    target = obs.pose.copy()
    target[:3] += np.array([0.1, 0.1, 0.05])
    target[5] = 0.2  # yaw of 0.2 pi
    obs, _, done, info = env.step(target)
    assert info["position_error"] < 0.006 and not info["clipped"]
    np.testing.assert_allclose(obs.pose[5], 0.2, atol=0.03)
    far = target.copy()
    far[:3] = [1.0, 1.0, -1.0]  # below the table and beyond the mocap bounds
    obs, _, done, info = env.step(far)
    assert info["clipped"]
    obs, _, done, info = env.step(far)
    assert done  # max_keyframes
    with pytest.raises(RuntimeError, match="reset"):
        env.step(far)
    with pytest.raises(ValueError, match="action"):
        env.reset(0)
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="Valid names"):
        mw.MetaWorldEnv("no-such-task-v3")
    env.close()


@pytest.mark.render
@pytest.mark.sim
def test_demos_replay_and_build():
    from twostage_jax.data.dataset import build_dataset
    from twostage_jax.envs.metaworld_demos import record_demos, replay_keyframes

    trajs, stats = record_demos("pick-place-v3", 3, seed=200, progress=False)
    assert stats.kept == 3 and stats.keep_rate >= 0.5
    env = mw.MetaWorldEnv("pick-place-v3")
    for t in trajs:
        assert replay_keyframes(env, t.seed, t.keyframe_actions(env.workspace))
    ds = build_dataset(trajs, env.workspace)
    assert float(ds.done.sum()) >= 3 and ds.images.shape[1:] == (128, 128, 3)
    env.close()


@pytest.mark.render
def test_goal_marker_drawn_at_goal():
    """reach/push/pick-place: the goal (only a site in MetaWorld) is drawn where it is, from the
    first image of an episode on (MetaWorld's reset leaves the rendered site stale)."""
    import mujoco

    for task, seed in (("reach-v3", 3), ("push-v3", 4)):
        env = mw.MetaWorldEnv(task)
        for s in (seed, seed + 10):  # two layouts: the marker must follow the goal
            obs = env.reset(s)
            goal = np.asarray(env.sim._target_pos)
            np.testing.assert_allclose(env.goal_marker_position(), goal, atol=1e-6)
            seg = env.render_segmentation()
            mask = (seg[..., 0] == env._goal_site) & (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_SITE))
            rows, cols = np.nonzero(mask)
            assert rows.size >= 8, (task, s, rows.size)
            uv, _ = project_points(env.camera, goal)
            err = np.linalg.norm(np.array([cols.mean() + 0.5, rows.mean() + 0.5]) - np.asarray(uv))
            assert err < 1.5, (task, s, err)
            # The RGB image shows magenta there.
            r, g, b = (obs.image[rows, cols].astype(int).T)
            assert np.mean((r > 150) & (b > 150) & (g < 100)) > 0.5
        env.close()


@pytest.mark.render
@pytest.mark.sim
def test_the_imprecise_expert_is_the_scripted_plan_moved_by_its_offset():
    from twostage_jax.envs.metaworld_expert import ImpreciseExpert
    from twostage_jax.envs.with_base import BaseActingEnv

    def proposals(expert):
        env = BaseActingEnv(mw.MetaWorldEnv("reach-v3", mw.MetaWorldConfig(width=32, height=32)), expert)
        obs, out, success = env.reset(200_000), [], False
        while True:
            out.append(obs.tentative)
            obs, reward, done, _ = env.step(out[-1])
            success = success or reward > 0
            if done:
                env.close()
                return np.asarray(out), success

    exact, solved = proposals(ImpreciseExpert("reach-v3", offset_m=(0, 0, 0), noise_m=0))
    assert solved  # the scripted expert's keyframes, executed as they are, solve the layout
    offset = np.array([0.02, -0.02, 0.01])
    env = BaseActingEnv(mw.MetaWorldEnv("reach-v3", mw.MetaWorldConfig(width=32, height=32)),
                        ImpreciseExpert("reach-v3", offset_m=offset, noise_m=0))
    moved = env.reset(200_000).tentative[None]  # its first proposal
    env.close()
    ws = mw.default_workspace()
    scale = 2 / (np.asarray(ws.high) - np.asarray(ws.low))
    np.testing.assert_allclose(moved[0, :3] - exact[0, :3], scale * offset, atol=1e-6)
    np.testing.assert_array_equal(moved[0, 3:], exact[0, 3:])
    with pytest.raises(ValueError, match="`offset_m` must be 3 finite numbers"):
        ImpreciseExpert("reach-v3", offset_m=(0.1, float("nan"), 0))


@pytest.mark.render
def test_the_expert_labels_a_reached_state_with_its_next_keyframe_and_leaves_the_env_alone():
    from twostage_jax.envs.metaworld_expert import ImpreciseExpert
    from twostage_jax.envs.metaworld_labels import ExpertLabeler

    cfg = mw.MetaWorldConfig(width=32, height=32)
    env, labeler = mw.MetaWorldEnv("push-v3", cfg), ExpertLabeler("push-v3", cfg)
    plan = ImpreciseExpert("push-v3", offset_m=(0, 0, 0), noise_m=0)
    try:
        plan.reset(env, 200_000)  # the demos' keyframes of this layout, from its start
        obs = env.reset(200_000)
        labeler.begin(200_000)
        before = env.get_state()
        first = labeler.label(env)
        np.testing.assert_array_equal(first, plan.act(env, obs))  # at the start: the demo's first keyframe
        for k, v in env.get_state().items():  # the episode's simulator is untouched
            np.testing.assert_array_equal(v, before[k])
        # a state the demo never visits: 5 cm above the first keyframe; the label is where the
        # expert goes next from there, not the first keyframe again
        ws = mw.default_workspace()
        above = first.copy()
        above[2] += 0.05 * 2 / (ws.high[2] - ws.low[2])
        env.step(above)
        moved = labeler.label(env)
        assert moved is not None and np.abs(moved - first).max() > 1e-3
    finally:
        env.close()
        labeler.close()


@pytest.mark.sim
def test_a_wrist_camera_is_recorded_at_its_pose_of_every_frame_and_tracks_the_gripper():
    """Demos recorded from the front and the wrist camera: the wrist camera's extrinsics change
    between frames, and the end effector stays at one pixel of the wrist view (within 1.5 px)
    while it crosses the front view."""
    import jax

    from twostage_jax.actions import action_to_pose
    from twostage_jax.data.dataset import build_dataset
    from twostage_jax.envs.metaworld_demos import record_demos

    config = mw.MetaWorldConfig(cameras=("corner", "gripperPOV"))
    trajs, _ = record_demos("reach-v3", 1, seed=300, env_config=config, progress=False)
    assert trajs[0].images.shape[1:] == (2, 128, 128, 3)
    ds = build_dataset(trajs, mw.default_workspace())
    assert ds.num_views == 2 and ds.images.shape[0] == 2 * ds.num_frames
    frames = np.unique(np.asarray(ds.obs_index))
    pixels = {0: [], 1: []}
    for f in frames:
        pose = np.asarray(ds.pose)[np.asarray(ds.obs_index) == f][0]
        here = action_to_pose(pose, ds.workspace)[0]
        for v in (0, 1):
            cam = jax.tree_util.tree_map(np.asarray, ds.camera(int(ds.view_rows(f)[v])))
            uv, depth = project_points(cam, here)
            assert float(depth) > 0
            pixels[v].append(np.asarray(uv))
    wrist_poses = np.asarray(ds.cam_to_world)[ds.view_rows(frames)[:, 1]]
    assert np.ptp(wrist_poses[:, :3, 3], axis=0).max() > 0.05  # the wrist camera moved
    assert np.ptp(np.asarray(ds.cam_to_world)[ds.view_rows(frames)[:, 0]], axis=0).max() == 0.0
    front, wrist = np.stack(pixels[0]), np.stack(pixels[1])
    assert np.ptp(front, axis=0).max() > 10.0, front
    assert np.abs(wrist - wrist.mean(0)).max() < 1.5, wrist
