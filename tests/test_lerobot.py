"""Reading LeRobot v3 datasets: the fixture in tests/data/lerobot_v3/ was written by LeRobot's own
writer (tests/data/make_lerobot_fixture.py, whose numpy functions say what it holds)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data import make_lerobot_fixture as fx
from twostage_jax.data import lerobot
from twostage_jax.data.camera_file import (CalibrationFileError, load_calibration,
                                           save_calibration)
from twostage_jax.data.lerobot import (LeRobotSpec, check_lerobot_dataset, lerobot_pose,
                                       load_lerobot_dataset, load_lerobot_demos, read_lerobot_episode)

ROOT = Path(fx.OUT)
CALIBRATION = Path(fx.CALIBRATION)
SPEC = LeRobotSpec(image_keys=(fx.IMAGE_KEY,), pose_key="observation.state",
                   pose_convention="xyz_euler_xyz", neutral_quat=fx.NEUTRAL_QUAT)
VIDEO = ROOT / "videos" / fx.IMAGE_KEY / "chunk-000" / "file-000.mp4"
DATA = ROOT / "data" / "chunk-000" / "file-000.parquet"
EPISODES = ROOT / "meta" / "episodes" / "chunk-000" / "file-000.parquet"

# The video codec's tolerance: LeRobot encodes AV1 (its default, CRF 30) in 4:2:0 colour, so
# a decoded frame is not the frame given to the writer. On these smooth frames the mean absolute
# error of a frame is at most 2.8 grey levels (of 255) and 99% of the values are within 12
# (measured); single values reach ~100 at the edges of the coloured blobs, where the colour is
# kept at half resolution. Neighbouring frames of an episode differ by 10 or more on average, so
# each decoded frame must also be closer to its own frame than to either neighbour.
MEAN_TOLERANCE = 4.0
P99_TOLERANCE = 16.0


CHAINS = [(e, src, dst) for e, n in enumerate(fx.LENGTHS)
          for src, dst in [(0, 6), (6, 11), (11, n - 1), (10, 11), (11, n - 1)]]
"""The dataset's transitions (episode, from frame, to frame), in order: with augment_every=10,
chains start at frames 0 and 10 of every episode and go through its keyframes 6, 11, last."""


@pytest.fixture(scope="module")
def demos():
    return load_lerobot_demos(ROOT, SPEC, load_calibration(CALIBRATION).cameras, all_images=True)


def test_columns_are_read_exactly():
    for episode, n in enumerate(fx.LENGTHS):
        ep = read_lerobot_episode(ROOT, episode, ["observation.state", "action"])
        want = fx.episode_arrays(episode)
        assert ep.index == episode and ep.task == "pick up the object"
        np.testing.assert_array_equal(ep.columns["observation.state"], want["state"])
        np.testing.assert_array_equal(ep.columns["action"], want["action"])
        assert ep.columns["action"].dtype == np.float32
        np.testing.assert_allclose(ep.timestamps, np.arange(n) / fx.FPS, atol=1e-6)


def test_frames_poses_and_keyframes(demos):
    assert len(demos) == len(fx.LENGTHS)
    for episode, traj in enumerate(demos):
        want = fx.episode_arrays(episode)
        n = fx.LENGTHS[episode]
        # images, frame for frame, within the codec's tolerance
        assert traj.images.shape == (n, fx.SIZE, fx.SIZE, 3) and traj.images.dtype == np.uint8
        rendered = np.stack([fx.render(episode, f) for f in range(n)]).astype(np.float64)
        error = np.abs(traj.images - rendered)
        assert error.mean(axis=(1, 2, 3)).max() < MEAN_TOLERANCE
        assert np.percentile(error, 99) < P99_TOLERANCE
        for f in range(n):
            own = error[f].mean()
            for g in (f - 1, f + 1):
                if 0 <= g < n:
                    assert own < np.abs(traj.images[f] - rendered[g]).mean(), (episode, f, g)
        # poses: positions as stored; the orientation (roll pi, yaw) relative to pointing down
        np.testing.assert_array_equal(traj.positions, want["state"][:, :3].astype(np.float64))
        relative = np.zeros((n, 3))
        relative[:, 2] = want["state"][:, 5]
        np.testing.assert_allclose(traj.eulers, relative, atol=1e-6)
        np.testing.assert_array_equal(traj.gripper_open, (want["action"][:, 6] > 0).astype(np.float32))
        # keyframes by our rule: the stop (pose speed), the gripper change, the last frame
        assert tuple(traj.keyframes) == fx.KEYFRAMES[episode]
        assert traj.seed == episode and traj.task == "pick up the object"
        np.testing.assert_allclose(np.asarray(traj.camera.intrinsics)[0], fx.CAMERA_K, rtol=1e-6)


def test_dataset_actions_are_the_keyframe_poses(demos):
    ds = load_lerobot_dataset(ROOT, SPEC, CALIBRATION)
    lo, hi = np.asarray(fx.WORKSPACE_LOW), np.asarray(fx.WORKSPACE_HIGH)

    def pose(episode, frame):  # our 7-D form: normalised position, Euler / pi, gripper +-1
        s, a = fx.episode_arrays(episode)["state"][frame], fx.episode_arrays(episode)["action"][frame]
        return np.concatenate([2 * (s[:3] - lo) / (hi - lo) - 1, [0.0, 0.0, s[5] / np.pi],
                               [1.0 if a[6] > 0 else -1.0]])

    assert ds.num_transitions == len(CHAINS)
    for i, (e, src, dst) in enumerate(CHAINS):
        np.testing.assert_allclose(ds.action[i], pose(e, dst), atol=1e-6)
        np.testing.assert_allclose(ds.pose[i], pose(e, src), atol=1e-6)
        np.testing.assert_array_equal(ds.images[ds.obs_index[i]], demos[e].images[src])
        np.testing.assert_array_equal(ds.images[ds.next_obs_index[i]], demos[e].images[dst])
        assert ds.episode[i] == e
    np.testing.assert_allclose(np.asarray(ds.workspace.low), lo)


def test_pose_conventions_agree():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    pos = rng.uniform(-1, 1, (5, 3))
    rot = Rotation.from_euler("xyz", rng.uniform(-3, 3, (5, 3)))
    q = rot.as_quat()
    forms = {"xyz_euler_xyz": rot.as_euler("xyz"), "xyz_quat_xyzw": q,
             "xyz_quat_wxyz": q[:, [3, 0, 1, 2]], "xyz_rotvec": rot.as_rotvec()}
    for name, r in forms.items():
        p, quat = lerobot_pose(np.concatenate([pos, r], 1), name)
        np.testing.assert_array_equal(p, pos)
        np.testing.assert_allclose((Rotation.from_quat(quat) * rot.inv()).magnitude(), 0, atol=1e-9)
    mine = lerobot_pose(pos, lambda v: (v, np.tile([0.0, 0.0, 0.0, 1.0], (len(v), 1))))
    np.testing.assert_array_equal(mine[0], pos)
    with pytest.raises(ValueError, match="must return positions \\[5, 3\\] and quaternions \\[5, 4\\]"):
        lerobot_pose(pos, lambda v: (v, v))
    with pytest.raises(ValueError, match="pose_convention must be one of"):
        LeRobotSpec(image_keys=("a",), pose_key="b", pose_convention="xyz_euler_zyx")
    with pytest.raises(ValueError, match="pose_indices has 7 entries; pose_convention 'xyz_euler_xyz' "
                                         "takes 6"):
        LeRobotSpec(image_keys=("a",), pose_key="b", pose_convention="xyz_euler_xyz",
                    pose_indices=tuple(range(7)))


# --- bad input: each an error naming it, raised before any frame is decoded ---------------------

@pytest.fixture
def copy(tmp_path, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("a frame was decoded before the inputs were checked")

    monkeypatch.setattr(lerobot, "_decode", no_decoding)
    root = tmp_path / "lerobot_v3"
    shutil.copytree(ROOT, root)
    return root


def _cameras():
    return load_calibration(CALIBRATION).cameras


def _rewrite(path, edit):
    pq.write_table(edit(pq.read_table(path)), path)


def test_orientations_that_cannot_be_in_the_convention_are_named():
    # roll/pitch/yaw and a gripper read as a quaternion: norm ~3, not 1
    rpy = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 3.0, 1.0]])
    with pytest.raises(ValueError, match=r"'xyz_quat_xyzw': the quaternions must have unit norm .* norm 3.2.* "
                                         r"look like angles in radians"):
        lerobot_pose(rpy, "xyz_quat_xyzw")
    with pytest.raises(ValueError, match=r"'xyz_euler_xyz': Euler angles must be radians .* look like degrees"):
        lerobot_pose(np.array([[0.1, 0.2, 0.3, 90.0, 0.0, 45.0]]), "xyz_euler_xyz")
    with pytest.raises(ValueError, match=r"'xyz_quat_wxyz': the quaternions must have unit norm"):
        lerobot_pose(np.zeros((1, 7)), "xyz_quat_wxyz")
    lerobot_pose(np.array([[0.1, 0.2, 0.3, 0.0, 0.0, 0.6, 0.8]]), "xyz_quat_xyzw")  # unit: fine


def test_checking_decodes_nothing(copy):
    assert check_lerobot_dataset(copy, SPEC, CALIBRATION) == [0, 1, 2]
    assert check_lerobot_dataset(copy, SPEC, CALIBRATION, episodes=[2, 0]) == [2, 0]


def test_a_missing_key_is_named(copy):
    for field, value in (("image_keys", "observation.images.wrist"), ("pose_key", "observation.ee_pose"),
                         ("action_key", "actions"), ("gripper_key", "observation.gripper")):
        spec = LeRobotSpec(**{**SPEC.__dict__, field: (value,) if field == "image_keys" else value})
        with pytest.raises(ValueError, match=rf"LeRobotSpec.{field} '{value}' is not a feature of .*"
                                             r"features are \['action', 'observation.images.front'"):
            load_lerobot_demos(copy, spec, _cameras())
    # with a calibration file: a mistyped image key is named, not the camera the file lacks for it
    wrist = LeRobotSpec(**{**SPEC.__dict__, "image_keys": (fx.IMAGE_KEY, "observation.images.wrist")})
    with pytest.raises(ValueError, match="LeRobotSpec.image_keys 'observation.images.wrist' is not a feature"):
        check_lerobot_dataset(copy, wrist, CALIBRATION)
    with pytest.raises(ValueError, match="gripper_index 7 falls outside 'action', which has 7 components"):
        load_lerobot_demos(copy, LeRobotSpec(**{**SPEC.__dict__, "gripper_index": 7}), _cameras())
    with pytest.raises(ValueError, match="pose_indices .* fall outside 'observation.state', which has 7"):
        load_lerobot_demos(copy, LeRobotSpec(**{**SPEC.__dict__, "pose_indices": (0, 1, 2, 3, 4, 9)}),
                           _cameras())


def test_a_camera_without_calibration_is_named(copy, tmp_path):
    calibration = load_calibration(CALIBRATION)
    other = tmp_path / "calibration.json"
    save_calibration(other, {"observation.images.wrist": calibration.camera(fx.IMAGE_KEY)},
                     calibration.workspace)
    with pytest.raises(CalibrationFileError, match=r"no camera for image key 'observation.images.front' "
                                                   r"\(cameras: \['observation.images.wrist'\]\)"):
        load_lerobot_dataset(copy, SPEC, other)
    # a camera calibrated for another image size
    doc = json.loads(CALIBRATION.read_text())
    doc["cameras"][fx.IMAGE_KEY]["width"] = 128
    other.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="calibrated for 128x64 pixels, but its video is 64x64"):
        load_lerobot_dataset(copy, SPEC, other)
    # a malformed calibration file names the field
    doc["cameras"][fx.IMAGE_KEY]["cam_to_world"][0][0] = 2.0
    other.write_text(json.dumps(doc))
    with pytest.raises(CalibrationFileError, match=r"cameras\['observation.images.front'\].cam_to_world "
                                                   "must be a rigid transform"):
        load_calibration(other)


def test_a_video_shorter_than_its_index_is_named(copy):
    import av

    video = copy / VIDEO.relative_to(ROOT)
    with av.open(str(video), "w", format="mp4") as dst:  # the same frames, but only the first 50 of 54
        stream = dst.add_stream("mpeg4", rate=fx.FPS)
        stream.width = stream.height = fx.SIZE
        stream.pix_fmt = "yuv420p"
        frames = [fx.render(e, f) for e, n in enumerate(fx.LENGTHS) for f in range(n)][:50]
        for image in frames:
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        dst.mux(stream.encode())
    with pytest.raises(ValueError, match=r"episode 2 .* needs a frame of 'observation.images.front' at "
                                         r"5.3 s .* ends at 5 s .*the video is shorter than its index"):
        load_lerobot_demos(copy, SPEC, _cameras())
    # the episodes it does hold pass every check, up to decoding (stubbed out here)
    with pytest.raises(AssertionError, match="a frame was decoded"):
        load_lerobot_demos(copy, SPEC, _cameras(), episodes=[0, 1])


def test_mismatched_lengths_are_named(copy):
    data = copy / DATA.relative_to(ROOT)
    original = pq.read_table(data)
    # a parquet row of episode 1 is missing
    rows = np.arange(original.num_rows) != 20
    pq.write_table(original.filter(pa.array(rows)), data)
    for read in (lambda: load_lerobot_demos(copy, SPEC, _cameras()),
                 lambda: check_lerobot_dataset(copy, SPEC, CALIBRATION)):
        with pytest.raises(ValueError, match=r"episode 1 in .*: 17 parquet rows, but the episode table "
                                             "says length 18"):
            read()
    pq.write_table(original, data)
    # the episode table's length disagrees with its own index range
    episodes = copy / EPISODES.relative_to(ROOT)

    def shorter(table):
        length = table.column("length").to_numpy().copy()
        length[2] -= 1
        return table.set_column(table.schema.get_field_index("length"), "length", pa.array(length))

    _rewrite(episodes, shorter)
    with pytest.raises(ValueError, match=r"episode 2 .*length 19 but dataset_from_index..dataset_to_index "
                                         "spans 20 frames"):
        load_lerobot_demos(copy, SPEC, _cameras())


def test_other_bad_datasets_are_named(copy, tmp_path, monkeypatch):
    info = copy / "meta" / "info.json"
    doc = json.loads(info.read_text())
    info.write_text(json.dumps({**doc, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match="codebase_version 'v2.1'; this reader reads LeRobot's v3 format"):
        load_lerobot_demos(copy, SPEC, _cameras())
    info.write_text(json.dumps({**doc, "data_path": "data/{chunk_index.__class__}.parquet"}))
    with pytest.raises(ValueError, match="`data_path` .* may only use the fields"):
        load_lerobot_demos(copy, SPEC, _cameras())
    with pytest.raises(FileNotFoundError, match="No LeRobot dataset at"):
        load_lerobot_demos(tmp_path / "nowhere", SPEC, _cameras())
    # positions outside the workspace (e.g. millimetres for metres) are named before decoding
    calibration = load_calibration(CALIBRATION)
    small = tmp_path / "small.json"
    from twostage_jax.types import Workspace

    save_calibration(small, calibration.cameras, Workspace.create([-0.1, -0.1, 0.0], [0.1, 0.1, 0.1]))
    info.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="episode 0 .*'observation.state': positions span .* outside the "
                                         "workspace"):
        load_lerobot_dataset(copy, SPEC, small)
    # truncated parquet files are named, as truncated (the episode table's error said the video)
    for path, what in ((copy / EPISODES.relative_to(ROOT), "episode table"),
                       (copy / DATA.relative_to(ROOT), "data file of episode 0")):
        whole = path.read_bytes()
        path.write_bytes(whole[:100])
        with pytest.raises(ValueError, match=rf"^{what} '{path}' cannot be read: it is truncated or corrupted"):
            load_lerobot_demos(copy, SPEC, _cameras())
        path.write_bytes(whole)
    # without pyarrow / av, the error names the extra
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"the `lerobot` extra: pip install 'twostage_jax\[lerobot\]'"):
        load_lerobot_demos(copy, SPEC, _cameras())


# --- several cameras: a second video and a moving camera's pose per frame -----------------------

WRIST = "observation.images.wrist"
WRIST_POSE = "observation.wrist_pose"
WRIST_K = np.array([[40.0, 0.0, 32.0], [0.0, 40.0, 32.0], [0.0, 0.0, 1.0]])
SPEC2 = LeRobotSpec(**{**SPEC.__dict__, "image_keys": (fx.IMAGE_KEY, WRIST),
                       "extrinsics_keys": {WRIST: WRIST_POSE}})


def wrist_poses(episode):
    """[T, 4, 4] float32: the wrist camera's camera-to-world pose at each frame of `episode`, 10 cm
    above the end effector and looking straight down (camera x = world x, y = world -y, z =
    world -z)."""
    state = fx.episode_arrays(episode)["state"]
    poses = np.tile(np.eye(4), (len(state), 1, 1))
    poses[:, :3, :3] = np.diag([1.0, -1.0, -1.0])
    poses[:, :3, 3] = state[:, :3] + np.array([0.0, 0.0, 0.1])
    return poses.astype(np.float32)


def _add_wrist_camera(root, calibration):
    """Makes the fixture copy at `root` a two-camera dataset, laid out as LeRobot lays out a second
    video feature and a [4, 4] float32 feature: the video `WRIST` (a copy of the front video's
    file, so its frames are the front's), its episode-table columns, and `WRIST_POSE`
    (`wrist_poses`) in the data file as 4 lists of 4 per frame (the storage of Hugging Face's
    Array2D); and writes `calibration`: the fixture's, with the wrist camera's intrinsics
    `WRIST_K` (its cam_to_world, the identity, is not used: the feature gives the poses)."""
    shutil.copytree(root / "videos" / fx.IMAGE_KEY, root / "videos" / WRIST)
    info = root / "meta" / "info.json"
    doc = json.loads(info.read_text())
    doc["features"][WRIST] = doc["features"][fx.IMAGE_KEY]
    doc["features"][WRIST_POSE] = {"dtype": "float32", "shape": [4, 4], "names": None}
    info.write_text(json.dumps(doc, indent=4))
    episodes = root / EPISODES.relative_to(ROOT)
    table = pq.read_table(episodes)
    for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
        table = table.append_column(f"videos/{WRIST}/{c}", table.column(f"videos/{fx.IMAGE_KEY}/{c}"))
    pq.write_table(table, episodes)
    data = root / DATA.relative_to(ROOT)
    table = pq.read_table(data)
    rows = zip(table.column("episode_index").to_pylist(), table.column("frame_index").to_pylist())
    poses = [wrist_poses(e)[f].tolist() for e, f in rows]
    pq.write_table(table.append_column(WRIST_POSE, pa.array(poses, pa.list_(pa.list_(pa.float32())))), data)
    doc = json.loads(CALIBRATION.read_text())
    doc["cameras"][WRIST] = {"intrinsics": WRIST_K.tolist(), "cam_to_world": np.eye(4).tolist(),
                             "width": fx.SIZE, "height": fx.SIZE}
    calibration.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory):
    """(root, calibration file) of the fixture with a wrist camera added (`_add_wrist_camera`)."""
    folder = tmp_path_factory.mktemp("two_cameras")
    root, calibration = folder / "lerobot_v3", folder / "calibration.json"
    shutil.copytree(ROOT, root)
    _add_wrist_camera(root, calibration)
    return root, calibration


def test_two_cameras_with_the_moving_ones_pose_of_every_frame(two_cameras, demos):
    root, calibration = two_cameras
    trajs = load_lerobot_demos(root, SPEC2, load_calibration(calibration).cameras)
    for episode, traj in enumerate(trajs):
        frames = traj.image_frames
        m = len(frames)
        assert traj.num_views == 2 and traj.images.shape == (m, 2, fx.SIZE, fx.SIZE, 3)
        for v in (0, 1):  # both videos hold the front's frames: decoded as the one-camera reader does
            np.testing.assert_array_equal(traj.images[:, v], demos[episode].images[frames])
        k, pose = np.asarray(traj.camera.intrinsics), np.asarray(traj.camera.cam_to_world)
        assert k.shape == (m, 2, 3, 3) and pose.shape == (m, 2, 4, 4) and pose.dtype == np.float32
        np.testing.assert_allclose(k[:, 0], np.broadcast_to(fx.CAMERA_K, (m, 3, 3)), rtol=1e-6)
        np.testing.assert_array_equal(k[:, 1], np.broadcast_to(WRIST_K, (m, 3, 3)))
        # the front camera where the calibration file puts it; the wrist camera where the feature
        # says it was at each of these frames (its file pose, the identity, unused)
        np.testing.assert_allclose(pose[:, 0], np.broadcast_to(fx.CAM_TO_WORLD, (m, 4, 4)), atol=1e-6)
        np.testing.assert_array_equal(pose[:, 1], wrist_poses(episode)[frames])
        assert np.ptp(pose[:, 1, :3, 3], axis=0).max() > 0.05  # it moved
    # the dataset: two views per frame, each with its camera of that frame
    ds = load_lerobot_dataset(root, SPEC2, calibration)
    one = load_lerobot_dataset(root, SPEC, calibration)  # the front camera alone: no view axis
    assert ds.num_views == 2 and one.num_views == 1 and ds.images.shape[0] == 2 * one.images.shape[0]
    np.testing.assert_array_equal(ds.images[0::2], one.images)
    np.testing.assert_array_equal(ds.cam_to_world[0::2], one.cam_to_world)
    np.testing.assert_array_equal(ds.action, one.action)
    np.testing.assert_array_equal(ds.obs_index, one.obs_index)
    for i, (e, src, dst) in enumerate(CHAINS):
        rows = ds.view_rows(np.asarray(ds.obs_index)[i])
        np.testing.assert_array_equal(np.asarray(ds.cam_to_world)[rows[1]], wrist_poses(e)[src])
        np.testing.assert_array_equal(np.asarray(ds.intrinsics)[rows[1]], WRIST_K.astype(np.float32))


@pytest.fixture
def two_copy(two_cameras, tmp_path, monkeypatch):
    """A copy of the two-camera dataset (and its calibration) whose frames must not be decoded."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("a frame was decoded before the inputs were checked")

    monkeypatch.setattr(lerobot, "_decode", no_decoding)
    root, calibration = tmp_path / "lerobot_v3", tmp_path / "calibration.json"
    shutil.copytree(two_cameras[0], root)
    shutil.copy(two_cameras[1], calibration)
    return root, calibration


def test_bad_cameras_and_extrinsics_are_named_before_decoding(two_copy):
    root, calibration = two_copy
    assert check_lerobot_dataset(root, SPEC2, calibration) == [0, 1, 2]
    # the poses are read as stored: [T, 16], row-major
    ep = read_lerobot_episode(root, 1, [WRIST_POSE])
    np.testing.assert_array_equal(ep.columns[WRIST_POSE], wrist_poses(1).reshape(-1, 16))
    # a key absent from the camera file, or from the cameras given
    with pytest.raises(CalibrationFileError, match=rf"no camera for image key '{WRIST}'"):
        check_lerobot_dataset(root, SPEC2, CALIBRATION)
    with pytest.raises(ValueError, match=rf"`cameras` has no camera for image key '{WRIST}' \(LeRobotSpec."
                                         r"image_keys\); it has \['observation.images.front'\]"):
        load_lerobot_demos(root, SPEC2, _cameras())
    # an extrinsics feature the dataset lacks, or of another shape
    for feature, expect in (("observation.wrist.missing", "'observation.wrist.missing' is not a feature of"),
                            ("observation.state", "'observation.state' \\(the pose of camera "
                             f"'{WRIST}'\\) must hold a 4x4 camera-to-world matrix per frame, shape "
                             "\\[4, 4\\] or \\[16\\]; .* gives shape \\[7\\]")):
        spec = LeRobotSpec(**{**SPEC2.__dict__, "extrinsics_keys": {WRIST: feature}})
        with pytest.raises(ValueError, match=f"LeRobotSpec.extrinsics_keys {expect}"):
            check_lerobot_dataset(root, spec, calibration)
    # poses that are not finite, or not rigid, in the data file
    data = root / DATA.relative_to(ROOT)
    original = pq.read_table(data)

    def with_poses(edit):
        poses = np.asarray(original.column(WRIST_POSE).to_pylist(), np.float32)
        edit(poses)
        column = pa.array(poses.tolist(), pa.list_(pa.list_(pa.float32())))
        pq.write_table(original.set_column(original.schema.get_field_index(WRIST_POSE), WRIST_POSE, column), data)

    with_poses(lambda poses: poses.__setitem__((16 + 3, 0, 3), np.nan))  # episode 1, frame 3
    with pytest.raises(ValueError, match=rf"episode 1 of .*: LeRobotSpec.extrinsics_keys '{WRIST_POSE}' \(the "
                                         rf"pose of camera '{WRIST}'\) holds NaN or inf at 1 frame\(s\) \(the "
                                         r"first: frame 3\)"):
        load_lerobot_demos(root, SPEC2, load_calibration(calibration).cameras)
    with_poses(lambda poses: poses.__setitem__((2, slice(0, 3), slice(0, 3)), 2 * poses[2, :3, :3]))
    with pytest.raises(ValueError, match=r"episode 0 .* must hold rigid camera-to-world transforms .* 1 "
                                         r"frame\(s\) are not \(the first: frame 2, "):
        check_lerobot_dataset(root, SPEC2, calibration)
    # the same poses stored flat, [16] per frame, read alike
    stored = np.asarray(original.column(WRIST_POSE).to_pylist(), np.float32)
    flat = pa.array(stored.reshape(-1, 16).tolist(), pa.list_(pa.float32()))
    pq.write_table(original.set_column(original.schema.get_field_index(WRIST_POSE), WRIST_POSE, flat), data)
    info = root / "meta" / "info.json"
    doc = json.loads(info.read_text())
    doc["features"][WRIST_POSE]["shape"] = [16]
    info.write_text(json.dumps(doc))
    assert check_lerobot_dataset(root, SPEC2, calibration) == [0, 1, 2]
    np.testing.assert_array_equal(read_lerobot_episode(root, 1, [WRIST_POSE]).columns[WRIST_POSE],
                                  wrist_poses(1).reshape(-1, 16))
    # videos of different sizes
    doc["features"][WRIST]["info"]["video.width"] = 32
    info.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"LeRobotSpec.image_keys: the cameras' videos must share one size, "
                                         rf"but '{fx.IMAGE_KEY}' is 64x64, '{WRIST}' is 32x64"):
        check_lerobot_dataset(root, SPEC2, calibration)


def test_the_spec_names_bad_image_and_extrinsics_keys():
    base = {**SPEC.__dict__}
    for value in (fx.IMAGE_KEY, (), (fx.IMAGE_KEY, "")):
        with pytest.raises(ValueError, match=r"^LeRobotSpec.image_keys must be a non-empty tuple of video "
                                             r"feature names, e.g. \('observation.images.front',\)"):
            LeRobotSpec(**{**base, "image_keys": value})
    with pytest.raises(ValueError, match="LeRobotSpec.image_keys names a feature twice"):
        LeRobotSpec(**{**base, "image_keys": (fx.IMAGE_KEY, fx.IMAGE_KEY)})
    with pytest.raises(ValueError, match=r"LeRobotSpec.extrinsics_keys must name each moving camera once, by "
                                         rf"one of image_keys \['{fx.IMAGE_KEY}'\]; got \[\['{WRIST}', "):
        LeRobotSpec(**{**base, "extrinsics_keys": {WRIST: WRIST_POSE}})
    with pytest.raises(ValueError, match="LeRobotSpec.extrinsics_keys must be \\(image key, feature\\) pairs"):
        LeRobotSpec(**{**base, "extrinsics_keys": (fx.IMAGE_KEY, WRIST_POSE)})
    # a dict or pairs, stored as pairs; a list of keys as a tuple
    spec = LeRobotSpec(**{**base, "image_keys": [fx.IMAGE_KEY, WRIST], "extrinsics_keys": [[WRIST, WRIST_POSE]]})
    assert spec == SPEC2 and spec.image_keys == (fx.IMAGE_KEY, WRIST)
    assert SPEC2.extrinsics_keys == ((WRIST, WRIST_POSE),) and hash(SPEC2) == hash(spec)


# --- the launcher on a LeRobot dataset (--config.data.source=lerobot) ---------------------------

REPO = Path(__file__).resolve().parents[1]
LAUNCH = ["--config.data.source=lerobot", f"--config.data.root={ROOT.relative_to(REPO)}",
          f"--config.data.camera_file={CALIBRATION.relative_to(REPO)}",
          f"--config.data.image_keys={fx.IMAGE_KEY}", "--config.data.pose_key=observation.state",
          "--config.data.pose_convention=xyz_euler_xyz", f"--config.data.neutral_quat={fx.NEUTRAL_QUAT}",
          f"--config.demos.image_size={fx.SIZE}", "--config.demos.num_held_out=1",
          "--task=pick up the object"]
"""The smoke config's flags for the fixture (its last episode held out), its paths relative to
the repository (as a user gives them, from where the launcher runs)."""


def test_the_launcher_reads_a_lerobot_dataset_and_trains_on_it(tmp_path, monkeypatch):
    # --mode=demos, then stage 1 (stage 2 reads the same demos/ as on any dataset: left out of
    # the suite, whose time is tight; docs/launcher.md's command runs all three).
    from tests._launcher import launch_in_process
    from twostage_jax.data.dataset import load_dataset

    monkeypatch.chdir(REPO)
    wd = tmp_path / "wd"
    tiny = ["--num_seeds=1", "--config.stage1.num_steps=2", "--config.train.checkpoint_every=2"]
    for mode in ("demos", "stage1"):
        out = launch_in_process(f"--mode={mode}", f"--workdir={wd}", *LAUNCH, *tiny)
        assert out.returncode == 0, f"--mode={mode}: {out.stderr[-3000:]}"
    stats = json.loads((wd / "demos" / "stats.json").read_text())
    assert stats["source"] == "lerobot" and stats["demo_seeds"] == [0, 1] and stats["held_out_seeds"] == [2]
    ds, val = load_dataset(wd / "demos" / "dataset.npz"), load_dataset(wd / "demos" / "held_out.npz")
    assert ds.images.shape[1:] == (fx.SIZE, fx.SIZE, 3) and ds.num_transitions == 2 * 5  # as above
    assert val.num_transitions == 3  # keyframe to keyframe only: 0 -> 6 -> 11 -> last
    np.testing.assert_allclose(np.asarray(val.workspace.high), fx.WORKSPACE_HIGH)
    recorded = json.loads((wd / "demos" / "config.json").read_text())["config"]["data"]
    assert recorded["root"] == "tests/data/lerobot_v3"  # as given: no machine path in the workdir
    rows = [json.loads(x) for x in (wd / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] and np.isfinite(rows[0]["val_position_cm"])
    # a resume with another dataset spec than the stage was trained on is refused before any work
    out = launch_in_process("--mode=stage1", f"--workdir={wd}", "--resume", *LAUNCH, *tiny,
                            "--config.data.episodes=(0, 1)")
    assert out.returncode == 2 and "config.data.episodes: trained None, now [0, 1]" in out.stderr, out.stderr[-2000:]


def test_the_launcher_refuses_a_bad_lerobot_source_before_any_work(tmp_path, monkeypatch):
    from tests._launcher import refused

    monkeypatch.chdir(REPO)
    wd = tmp_path / "wd"
    demos = ["--mode=demos", f"--workdir={wd}", *LAUNCH]
    refused("--mode=demos", f"--workdir={wd}", "--config.data.source=lerobot",
            expect=["config.data.root must be set with config.data.source='lerobot'"])
    refused(*demos, "--config.data.pose_key=", expect=["config.data.pose_key must be set"])
    refused(*demos, "--config.data.image_keys=observation.images.wrist",
            expect=["error: config.data.image_keys 'observation.images.wrist' is not a feature of ",
                    "meta/info.json'; its features are ['action', 'observation.images.front'"])
    refused(*demos, f"--config.data.image_keys={fx.IMAGE_KEY},{WRIST}",
            expect=[f"error: config.data.image_keys '{WRIST}' is not a feature of "])
    refused(*demos, "--config.data.camera_file=missing.json", expect=["error: config.data.camera_file: "])
    doc = json.loads(CALIBRATION.read_text())
    doc["cameras"][fx.IMAGE_KEY]["width"] = 128
    (tmp_path / "wide.json").write_text(json.dumps(doc))
    refused(*demos, f"--config.data.camera_file={tmp_path / 'wide.json'}",
            expect=[f"error: config.data.camera_file: the camera of '{fx.IMAGE_KEY}' is calibrated for 128x64"])
    refused(*demos, "--config.data.episodes=(0, 7)",
            expect=["error: config.data.episodes: episode 7 is not in the episode table"])
    refused(*demos, "--config.demos.image_size=128", expect=["--config.demos.image_size=64"])
    refused(*demos, "--config.demos.num_held_out=3",  # all 3 episodes
            expect=["config.demos.num_held_out (3) holds out the last 3", "holds 3, leaving none"])
    refused(*demos, "--config.data.episodes=(0, 1)", "--config.demos.num_held_out=2",
            expect=["config.demos.num_held_out (2)", "config.data.episodes holds 2"])
    refused(*demos, "--num_demos=2", expect=["--num_demos does not apply", "--config.data.episodes"])
    refused(*demos, "--config.stage1.select=validation", expect=["config.stage1.select='validation' "
                                                                 "chooses checkpoints by rolling out"])
    for mode in ("eval", "all"):
        refused(f"--mode={mode}", f"--workdir={wd}", *LAUNCH,
                expect=[f"--mode={mode} rolls out in the simulator", "twostage_jax.make_policy"])
    assert not wd.exists(), "work started despite a bad LeRobot source"


def test_the_launcher_reads_two_cameras_and_a_moving_ones_poses(two_cameras, tmp_path):
    # --mode=demos only: the stages read a dataset of several views as the library's tests train it
    from tests._launcher import launch_in_process
    from twostage_jax.data.dataset import load_dataset

    root, calibration = two_cameras
    wd = tmp_path / "wd"
    flags = [f for f in LAUNCH if not f.startswith(("--config.data.root=", "--config.data.camera_file=",
                                                     "--config.data.image_keys="))]
    out = launch_in_process("--mode=demos", f"--workdir={wd}", *flags, f"--config.data.root={root}",
                            f"--config.data.camera_file={calibration}",
                            f"--config.data.image_keys={fx.IMAGE_KEY},{WRIST}",
                            f"--config.data.extrinsics_keys={{'{WRIST}': '{WRIST_POSE}'}}")
    assert out.returncode == 0, out.stderr[-3000:]
    ds, val = load_dataset(wd / "demos" / "dataset.npz"), load_dataset(wd / "demos" / "held_out.npz")
    assert ds.num_views == val.num_views == 2 and ds.num_transitions == 2 * 5
    wrist = np.asarray(val.cam_to_world)[val.view_rows(np.asarray(val.obs_index))[:, 1]]
    np.testing.assert_array_equal(wrist, wrist_poses(2)[[0, 6, 11]])  # episode 2 held out: 0 -> 6 -> 11 -> last
    recorded = json.loads((wd / "demos" / "config.json").read_text())["config"]["data"]
    assert recorded["image_keys"] == [fx.IMAGE_KEY, WRIST] and recorded["extrinsics_keys"] == [[WRIST, WRIST_POSE]]


def test_a_calibration_whose_camera_sees_no_demo_is_refused(tmp_path, monkeypatch):
    # its y translation flipped puts every end-effector position behind the camera: the demos
    # decoded, nothing is written, and the one error line names the file and the share
    from tests._launcher import launch_in_process

    monkeypatch.chdir(REPO)
    doc = json.loads(CALIBRATION.read_text())
    doc["cameras"][fx.IMAGE_KEY]["cam_to_world"][1][3] *= -1
    calibration = tmp_path / "behind.json"
    calibration.write_text(json.dumps(doc))
    wd = tmp_path / "wd"
    flags = [f for f in LAUNCH if not f.startswith("--config.data.camera_file=")]
    out = launch_in_process("--mode=demos", f"--workdir={wd}", *flags, f"--config.data.camera_file={calibration}")
    errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"config.data.camera_file ({calibration}) sees 0% of the demos' end-effector" in errors[0]
    assert "config.data.min_visible" in errors[0]
    assert not (wd / "demos" / "dataset.npz").exists()
