"""RLBench on-disk reader (RLBench absent) and the adapter's pure conversions."""

import pickle
import re
import sys
import types

import numpy as np
import pytest
from PIL import Image

from twostage_jax.data.dataset import build_dataset
from twostage_jax.data.rlbench_conventions import RLBENCH_CAMERAS
from twostage_jax.data.rlbench_io import load_rlbench_demos
from twostage_jax.envs import rlbench as rb
from twostage_jax.types import Workspace

WS = Workspace.create(rb.RLBENCH_WORKSPACE_LOW, rb.RLBENCH_WORKSPACE_HIGH)
K_RLBENCH = np.array([[-110.0, 0, 64], [0, -110.0, 64], [0, 0, 1]])
EXTR = np.array([[0.0, 0, -1, 1.8], [1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])
DOWN = [0.0, 1.0, 0.0, 0.0]
WRIST_OFFSET = np.array([0.0, 0.0, 0.1])
"""The fake wrist camera sits this far from the gripper's position (world frame)."""
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
"""RLBench's camera frame (x left, y up) to ours (`Camera.from_rlbench`)."""


def _camera_misc(camera, size, gripper_xyz):
    """misc entries of one fake RLBench camera: view v of `RLBENCH_CAMERAS` has focal length
    -(110 + 10 v) at 128 px; the fixed cameras sit at EXTR moved 0.1 v m along y, the wrist
    camera at the gripper's position + WRIST_OFFSET (EXTR's rotation). The front camera is
    K_RLBENCH and EXTR exactly."""
    v = RLBENCH_CAMERAS.index(camera)
    k = K_RLBENCH * np.array([[size / 128, 1, size / 128], [1, size / 128, size / 128], [1, 1, 1]])
    k[0, 0] = k[1, 1] = -(110.0 + 10 * v) * size / 128
    extr = EXTR.copy()
    if camera == "wrist":
        extr[:3, 3] = np.asarray(gripper_xyz) + WRIST_OFFSET
    else:
        extr[1, 3] += 0.1 * v
    return {f"{camera}_camera_intrinsics": k, f"{camera}_camera_extrinsics": extr,
            f"{camera}_camera_near": 0.01, f"{camera}_camera_far": 4.5}


def _rlbench_classes():
    """Stand-ins for rlbench.backend.observation.Observation and rlbench.demo.Demo, with their
    real module paths and fields (stepjam/RLBench rlbench/backend/observation.py, rlbench/demo.py)."""

    class Observation:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class Demo:
        def __init__(self, observations, random_seed=None, num_reset_attempts=None):
            self._observations = observations
            self.random_seed = random_seed
            self.num_reset_attempts = num_reset_attempts

    Observation.__module__, Observation.__qualname__ = "rlbench.backend.observation", "Observation"
    Demo.__module__, Demo.__qualname__ = "rlbench.demo", "Demo"
    return Observation, Demo


def _write_fixture(root, n=24, episodes=1, size=128, task="reach_target", protocol=None,
                   cameras=("front",), misc_cameras=None):
    """Writes episodes in RLBench's dataset-generator layout (rlbench/backend/const.py,
    tools/dataset_generator.py): TASK/variation0/variation_descriptions.pkl and
    TASK/variation0/episodes/episodeK/{low_dim_obs.pkl, front_rgb/i.png, ...}, with fake rlbench
    modules in sys.modules only while pickling, so the pickles name RLBench's real classes.

    Each of `cameras` gets its {camera}_rgb/ folder, pixel values frame + 10 episode + 40 v (v its
    index in `RLBENCH_CAMERAS`), and the misc entries of `_camera_misc` (for `misc_cameras`,
    default `cameras`) in every frame."""
    names = ["rlbench", "rlbench.demo", "rlbench.backend", "rlbench.backend.observation"]
    assert not any(m in sys.modules for m in names)
    mods = {m: types.ModuleType(m) for m in names}
    Observation, Demo = _rlbench_classes()
    mods["rlbench.backend.observation"].Observation = Observation
    mods["rlbench.demo"].Demo = Demo
    misc_cameras = cameras if misc_cameras is None else misc_cameras
    var = root / task / "variation0"
    var.mkdir(parents=True)
    with open(var / "variation_descriptions.pkl", "wb") as f:
        pickle.dump(["reach the red target"], f)
    for e in range(episodes):
        obs = []
        for i in range(n):
            # Moves for 10 frames, stands still, closes the gripper at 16, moves again from 17.
            x = 0.2 + 0.01 * min(i, 10) + 0.02 * max(i - 16, 0)
            g = 1.0 if i < 16 else 0.0
            jv = np.full(7, 0.5) if i < 10 or i > 16 else np.zeros(7)
            image_fields = {f"{c}_{m}": None for c in ("left_shoulder", "right_shoulder", "overhead",
                                                        "wrist", "front")
                            for m in ("rgb", "depth", "mask", "point_cloud")}
            misc = {"variation_index": 0}
            for c in misc_cameras:
                misc.update(_camera_misc(c, size, [x, 0.05 * e, 1.0]))
            obs.append(Observation(
                **image_fields, gripper_pose=np.array([x, 0.05 * e, 1.0, *DOWN]), gripper_open=g,
                joint_velocities=jv, joint_positions=np.zeros(7), joint_forces=np.zeros(7),
                gripper_matrix=np.eye(4), gripper_joint_positions=np.zeros(2),
                gripper_touch_forces=np.zeros(6), task_low_dim_state=np.zeros(3), misc=misc))
        ep = var / "episodes" / f"episode{e}"
        for c in cameras:
            for folder in ("rgb", "depth", "mask"):
                (ep / f"{c}_{folder}").mkdir(parents=True)
        sys.modules.update(mods)
        try:
            with open(ep / "low_dim_obs.pkl", "wb") as f:
                pickle.dump(Demo(obs, random_seed=3), f, protocol=protocol)
        finally:
            for m in names:
                del sys.modules[m]
        for c in cameras:
            value = 10 * e + 40 * RLBENCH_CAMERAS.index(c)
            for i in range(n):
                Image.fromarray(np.full((size, size, 3), i + value, np.uint8)).save(ep / f"{c}_rgb" / f"{i}.png")
    return var / "episodes" / "episode0"


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


class _CreatesFile:
    """Unpickles as `open(path, "w")`: a global outside RLBench's, called while loading."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_reader_refuses_globals_a_demo_does_not_need(tmp_path):
    ep = _write_fixture(tmp_path, n=3, size=16)
    pkl = ep / "low_dim_obs.pkl"
    # The payload is real: a plain unpickler calls it and creates the file.
    control = tmp_path / "created_by_pickle"
    pickle.loads(pickle.dumps(_CreatesFile(control)))
    assert control.exists()
    target = tmp_path / "pwned"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        pkl.write_bytes(pickle.dumps({"_observations": [_CreatesFile(target)]}, protocol=protocol))
        with pytest.raises(ValueError, match=r"(?s)Refusing to unpickle RLBench demo .*low_dim_obs\.pkl.*"
                                             r"names the global `io\.open`"):
            load_rlbench_demos(tmp_path, "reach_target")
        assert not target.exists()
    touched = tmp_path / "touched"  # os.system("touch ...") as protocol 2 writes it
    cmd = f"touch {touched}".encode()
    pkl.write_bytes(b"\x80\x02cposix\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R.")
    with pytest.raises(ValueError, match=rf"{re.escape(str(pkl))}.*`posix\.system`"):
        load_rlbench_demos(tmp_path, "reach_target")
    assert not touched.exists()


def test_reader_reads_numpy_1_and_2_pickles_of_every_protocol(tmp_path):
    # RLBench's demos were pickled with numpy 1.x (`numpy.core.multiarray`); numpy 2 names
    # `numpy._core`; protocol 2 adds `_codecs.encode` (bytes), protocol 5 `_frombuffer`.
    (ref,) = load_rlbench_demos(_write_root(tmp_path / "ref", None), "reach_target")
    for protocol in (2, 3, 5):
        root = _write_root(tmp_path / f"p{protocol}", protocol)
        pkl = root / "reach_target/variation0/episodes/episode0/low_dim_obs.pkl"
        if protocol == 2:  # as numpy 1.x writes it (GLOBAL opcodes are text lines)
            data = pkl.read_bytes().replace(b"cnumpy._core.", b"cnumpy.core.")
            assert b"cnumpy.core.multiarray\n_reconstruct\n" in data and b"c_codecs\nencode\n" in data
            pkl.write_bytes(data)
        if protocol == 5:
            assert b"_frombuffer" in pkl.read_bytes()
        (traj,) = load_rlbench_demos(root, "reach_target")
        np.testing.assert_array_equal(traj.positions, ref.positions)
        np.testing.assert_array_equal(traj.velocities, ref.velocities)
        np.testing.assert_array_equal(traj.camera.cam_to_world, ref.camera.cam_to_world)


def _write_root(root, protocol):
    root.mkdir()
    _write_fixture(root, size=16, protocol=protocol)
    return root


def test_reader_reads_every_camera_with_its_pose_of_each_frame(tmp_path):
    _write_fixture(tmp_path, size=16, cameras=RLBENCH_CAMERAS)
    (traj,) = load_rlbench_demos(tmp_path, "reach_target", cameras=RLBENCH_CAMERAS)
    # frames 0, 10, 20 (augment_every) and the keyframes 16, 23, each seen by the 5 cameras
    assert traj.image_frames.tolist() == [0, 10, 16, 20, 23] and traj.num_views == 5
    assert traj.images.shape == (5, 5, 16, 16, 3) and traj.images.dtype == np.uint8
    assert np.asarray(traj.camera.intrinsics).shape == (5, 5, 3, 3)
    assert np.asarray(traj.camera.cam_to_world).shape == (5, 5, 4, 4)
    for v in range(5):  # each view is its own camera's PNG, with its own focal length
        np.testing.assert_array_equal(traj.images[:, v, 0, 0, 0], np.array([0, 10, 16, 20, 23]) + 40 * v)
        np.testing.assert_allclose(np.asarray(traj.camera.intrinsics)[:, v, 0, 0], (110 + 10 * v) / 8)
    pose = np.asarray(traj.camera.cam_to_world, np.float64)
    # the wrist camera moves with the gripper (x = 0.2, 0.3, 0.3, 0.38, 0.44 at these frames): its
    # pose is each frame's own, not the first frame's plus an offset
    wrist = RLBENCH_CAMERAS.index("wrist")
    gripper = np.array([[0.2, 0, 1], [0.3, 0, 1], [0.3, 0, 1], [0.38, 0, 1], [0.44, 0, 1]])
    np.testing.assert_allclose(pose[:, wrist, :3, 3], gripper + WRIST_OFFSET, atol=1e-6)
    assert len(np.unique(pose[:, wrist, 0, 3].round(6))) == 4
    # the fixed cameras do not move: the front camera is RLBench's EXTR in our frame, every frame
    np.testing.assert_allclose(pose[:, 0], np.broadcast_to(EXTR @ FLIP, (5, 4, 4)), atol=1e-6)
    for v in range(4):
        assert np.ptp(pose[:, v], axis=0).max() == 0.0
    ds = build_dataset([traj], WS)
    assert ds.num_views == 5 and ds.images.shape == (5 * ds.num_frames, 16, 16, 3)
    # the cameras in the order asked for
    (two,) = load_rlbench_demos(tmp_path, "reach_target", cameras=("wrist", "front"))
    np.testing.assert_array_equal(two.images, traj.images[:, [wrist, 0]])
    np.testing.assert_array_equal(two.camera.cam_to_world, traj.camera.cam_to_world[:, [wrist, 0]])
    # one camera: no view axis, the arrays of that view
    (front,) = load_rlbench_demos(tmp_path, "reach_target")
    assert front.images.shape == (5, 16, 16, 3) and front.num_views == 1
    np.testing.assert_array_equal(front.images, traj.images[:, 0])
    np.testing.assert_array_equal(front.camera.intrinsics, traj.camera.intrinsics[:, 0])
    np.testing.assert_array_equal(front.camera.cam_to_world, traj.camera.cam_to_world[:, 0])


def test_reader_names_a_bad_or_missing_camera(tmp_path):
    ep = _write_fixture(tmp_path, n=12, size=8, cameras=("front", "wrist"), misc_cameras=("front",))
    with pytest.raises(ValueError, match=r"`cameras` has unknown \['gripper'\]; choose distinct names "
                                         r"from \['front', 'left_shoulder', 'right_shoulder', 'overhead', 'wrist'\]"):
        load_rlbench_demos(tmp_path, "reach_target", cameras=("front", "gripper"))
    with pytest.raises(ValueError, match="`cameras` has a name repeated"):
        load_rlbench_demos(tmp_path, "reach_target", cameras=("front", "front"))
    with pytest.raises(ValueError, match="`cameras` must be a non-empty tuple of RLBench camera names"):
        load_rlbench_demos(tmp_path, "reach_target", cameras="front")
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(ep))}' has no folder overhead_rgb/ for the "
                                                r"overhead camera \(it has \['front_rgb', 'wrist_rgb'\]\)"):
        load_rlbench_demos(tmp_path, "reach_target", cameras=("front", "overhead"))
    # the wrist's PNGs are there, but the frames' misc lacks its calibration
    with pytest.raises(ValueError, match=rf"Frame 0 of {re.escape(repr(str(ep / 'low_dim_obs.pkl')))} lacks "
                                         r"misc\['wrist_camera_intrinsics'\] \(the wrist camera's calibration"):
        load_rlbench_demos(tmp_path, "reach_target", cameras=("front", "wrist"))
    (traj,) = load_rlbench_demos(tmp_path, "reach_target")  # the front camera alone is whole
    assert traj.images.shape[1:] == (8, 8, 3)


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


# ---------------------------------------------------------------------------------------------
# Conventions (twostage_jax.data.rlbench_conventions), checked against RLBench / ARM / PerAct sources


def test_workspace_is_arm_and_peracts_scene_bounds():
    from twostage_jax.data import rlbench_conventions as rc

    # stepjam/ARM arm/c2farm/launch_utils.py (depth_0bounds) and peract/peract conf/config.yaml
    assert rc.SCENE_BOUNDS == (-0.3, -0.5, 0.6, 0.7, 0.5, 1.6)
    ws = rc.default_workspace()
    np.testing.assert_allclose(ws.low, [-0.3, -0.5, 0.6])
    np.testing.assert_allclose(ws.high, [0.7, 0.5, 1.6])
    assert rb.RLBENCH_WORKSPACE_LOW == rc.WORKSPACE_LOW and rb.RLBENCH_WORKSPACE_HIGH == rc.WORKSPACE_HIGH


def test_neutral_points_the_approach_axis_down():
    from scipy.spatial.transform import Rotation

    from twostage_jax.data import rlbench_conventions as rc

    # The tip's z column is the approach axis (NVlabs/M2T2 m2t2/rlbench_utils.py).
    np.testing.assert_allclose(Rotation.from_quat(rc.NEUTRAL_QUAT).as_matrix()[:, 2], [0, 0, -1],
                               atol=1e-12)


def test_yaw_wrap_average_is_a_half_turn_of_the_gripper():
    """BC averages keyframes just inside +pi and -pi to yaw 0; modulo the parallel-jaw gripper's
    half-turn symmetry that is as close to both as the two demos are to each other."""
    from scipy.spatial.transform import Rotation

    from twostage_jax.data import rlbench_conventions as rc

    d = 0.1
    neutral = Rotation.from_quat(rc.NEUTRAL_QUAT)
    poses = [np.concatenate([[0.2, 0.0, 1.0], (Rotation.from_euler("z", s * (np.pi - d)) * neutral).as_quat()])
             for s in (1, -1)]
    acts = rc.rlbench_pose_to_ours(np.stack(poses), np.ones(2), WS)
    # a pure turn about the vertical is the yaw component alone, at +-(pi - d) / pi
    np.testing.assert_allclose(acts[:, 3:5], 0.0, atol=1e-6)
    np.testing.assert_allclose(acts[:, 5], [(np.pi - d) / np.pi, -(np.pi - d) / np.pi], atol=1e-6)
    mean = acts.mean(axis=0)
    assert abs(mean[5]) < 1e-6  # the averaged yaw
    q = rc.action_to_rlbench(mean, WS)[3:7]
    yaw = (Rotation.from_quat(q) * neutral.inv()).as_euler("xyz")[2]
    np.testing.assert_allclose(rc.yaw_distance_mod_half_turn(yaw, [np.pi - d, -(np.pi - d)]), d, atol=1e-6)
    # and the approach axis still points down
    np.testing.assert_allclose(Rotation.from_quat(q).as_matrix()[:, 2], [0, 0, -1], atol=1e-6)


def test_camera_from_misc_keys_are_rlbenchs():
    from twostage_jax.data import rlbench_conventions as rc

    # rlbench/backend/scene.py _get_misc: '%s_extrinsics' etc. with name 'front_camera'
    assert [k.format(camera="front") for k in rc.CAMERA_MISC_KEYS] == [
        "front_camera_intrinsics", "front_camera_extrinsics", "front_camera_near", "front_camera_far"]
    cam = rc.camera_from_misc({"left_shoulder_camera_intrinsics": K_RLBENCH,
                               "left_shoulder_camera_extrinsics": EXTR}, 128, 128, "left_shoulder")
    assert float(cam.intrinsics[0, 0]) == 110.0


def test_reader_does_not_import_the_simulator_adapter():
    import ast
    from pathlib import Path

    import twostage_jax.data.rlbench_io as io

    tree = ast.parse(Path(io.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "twostage_jax.envs.rlbench" not in imported
    assert "twostage_jax.data.rlbench_conventions" in imported


def test_light_imports_load_no_simulator_orbax_or_rliable():
    import subprocess

    code = ("import sys, twostage_jax, twostage_jax.data, twostage_jax.data.rlbench_conventions, "
            "twostage_jax.data.rlbench_io, twostage_jax.envs.rlbench, twostage_jax.envs.metaworld_demos; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'mujoco', 'metaworld', 'rlbench', 'pyrep', 'orbax', 'rliable'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _fake_observation(misc, size, x=0.2):
    """An RLBench observation of every camera (`{camera}_rgb` filled with 40 v) with the gripper
    at (x, 0, 1); `misc` a dict, or a function of the gripper position giving it."""
    rgb = {f"{c}_rgb": np.full((size, size, 3), 40 * v, np.uint8) for v, c in enumerate(RLBENCH_CAMERAS)}
    xyz = np.array([x, 0.0, 1.0])
    return types.SimpleNamespace(misc=misc(xyz) if callable(misc) else misc, gripper_open=1.0,
                                 gripper_pose=np.array([*xyz, *DOWN]), **rgb)


def _fake_rlbench(monkeypatch, misc, size=32):
    """Just enough of RLBench's API for RLBenchEnv, in sys.modules; counts task resets. Each step
    moves the gripper 5 cm along x. Returns the resets and the environments' keyword arguments."""
    mods = {}
    for name in ("rlbench", "rlbench.action_modes", "rlbench.action_modes.action_mode",
                 "rlbench.action_modes.arm_action_modes", "rlbench.action_modes.gripper_action_modes",
                 "rlbench.environment", "rlbench.observation_config", "rlbench.utils",
                 "rlbench.backend", "rlbench.backend.exceptions", "pyrep", "pyrep.errors"):
        mods[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mods[name])
    resets, made = [], []

    class Task:
        x = 0.2

        def reset(self):
            resets.append(1)
            self.x = 0.2
            return ["reach"], _fake_observation(misc, size, self.x)

        def step(self, action):
            self.x += 0.05
            return _fake_observation(misc, size, self.x), 0.0, False

    class Environment:
        def __init__(self, **kw):
            made.append(kw)

        def launch(self):
            pass

        def get_task(self, cls):
            return Task()

        def shutdown(self):
            pass

    class ObservationConfig:  # rlbench/observation_config.py: a CameraConfig per camera
        def __init__(self):
            for c in RLBENCH_CAMERAS:
                setattr(self, f"{c}_camera", types.SimpleNamespace(rgb=True, image_size=(128, 128)))

        def set_all(self, value):
            for c in RLBENCH_CAMERAS:
                getattr(self, f"{c}_camera").rgb = value

    class Refused(Exception):
        pass

    mods["rlbench.action_modes.action_mode"].MoveArmThenGripper = lambda *a: None
    mods["rlbench.action_modes.arm_action_modes"].EndEffectorPoseViaPlanning = lambda: None
    mods["rlbench.action_modes.gripper_action_modes"].Discrete = lambda: None
    mods["rlbench.environment"].Environment = Environment
    mods["rlbench.observation_config"].ObservationConfig = ObservationConfig
    mods["rlbench.utils"].name_to_task_class = lambda name: name
    mods["rlbench.backend.exceptions"].InvalidActionError = Refused
    mods["pyrep.errors"].ConfigurationPathError = mods["pyrep.errors"].IKError = Refused
    return resets, made


def test_env_camera_is_known_before_the_first_reset(monkeypatch):
    """Evaluation (EnvPool) reads env.camera right after building the env."""
    from twostage_jax.evaluation import EnvPool

    k = K_RLBENCH * np.array([[0.25, 1, 0.25], [1, 0.25, 0.25], [1, 1, 1]])
    resets, _ = _fake_rlbench(monkeypatch, {"front_camera_intrinsics": k, "front_camera_extrinsics": EXTR})
    with EnvPool(lambda: rb.RLBenchEnv("reach_target", image_size=32), 1) as pool:
        cam = pool.camera
    np.testing.assert_allclose(np.asarray(cam.intrinsics)[0, 0], 27.5)
    assert cam.width == 32 and len(resets) == 1
    env = rb.RLBenchEnv("reach_target", image_size=32)
    obs = env.reset(5)
    assert env.camera is obs.camera and len(resets) == 2  # no extra reset once known


def test_env_observes_each_camera_and_the_wrist_camera_where_it_is_at_each_step(monkeypatch):
    def misc(xyz):
        out = {}
        for c in RLBENCH_CAMERAS:
            out.update(_camera_misc(c, 32, xyz))
        return out

    _, made = _fake_rlbench(monkeypatch, misc)
    env = rb.RLBenchEnv("reach_target", image_size=32, cameras=("front", "wrist"))
    assert env.cameras == ("front", "wrist")
    config = made[-1]["obs_config"]  # the cameras asked for, and only those, render rgb at 32 px
    assert [c for c in RLBENCH_CAMERAS if getattr(config, f"{c}_camera").rgb] == ["front", "wrist"]
    assert config.wrist_camera.image_size == (32, 32)
    first = env.reset(0)
    assert first.image.shape == (2, 32, 32, 3) and first.image.dtype == np.uint8
    np.testing.assert_array_equal(first.image[:, 0, 0, 0], [0, 160])  # front, then wrist
    assert np.shape(first.camera.intrinsics) == (2, 3, 3) and np.shape(first.camera.cam_to_world) == (2, 4, 4)
    np.testing.assert_allclose(np.asarray(first.camera.intrinsics)[:, 0, 0], [27.5, 37.5])  # (110, 150) / 4
    second, *_ = env.step(np.zeros(7, np.float32))
    before, after = np.asarray(first.camera.cam_to_world), np.asarray(second.camera.cam_to_world)
    np.testing.assert_array_equal(after[0], before[0])  # the front camera is fixed
    np.testing.assert_allclose(before[1, :3, 3], [0.2, 0.0, 1.1], atol=1e-6)  # gripper + WRIST_OFFSET
    np.testing.assert_allclose(after[1, :3, 3], [0.25, 0.0, 1.1], atol=1e-6)  # where the step left it
    assert env.camera is second.camera
    # one camera: today's observation, no view axis
    one = rb.RLBenchEnv("reach_target", image_size=32).reset(0)
    assert one.image.shape == (32, 32, 3) and np.shape(one.camera.intrinsics) == (3, 3)
    np.testing.assert_array_equal(one.camera.cam_to_world, first.camera.cam_to_world[0])


def test_env_and_observation_name_a_bad_camera():
    # checked before RLBench is imported: the names are RLBench's, listed
    with pytest.raises(ValueError, match=r"`RLBenchEnv.cameras` has unknown \['gripper'\]; choose distinct "
                                         r"names from \['front', 'left_shoulder', 'right_shoulder', 'overhead', "
                                         r"'wrist'\]"):
        rb.RLBenchEnv("reach_target", cameras=("front", "gripper"))
    obs = _fake_observation(_camera_misc("front", 16, [0.2, 0, 1]), 16)
    obs.wrist_rgb = None  # a camera RLBench was not asked to render
    with pytest.raises(ValueError, match=r"no `wrist_rgb` image: enable the wrist camera's rgb"):
        rb.observation_from_rlbench(obs, ("front", "wrist"), 16, WS)
    with pytest.raises(ValueError, match=r"`front_rgb` has shape \(16, 16, 3\); expected \(32, 32, 3\)"):
        rb.observation_from_rlbench(obs, ("front",), 32, WS)
    obs.wrist_rgb = np.zeros((16, 16, 3), np.uint8)  # rendered, but misc lacks its calibration
    with pytest.raises(ValueError, match=r"must hold \['wrist_camera_intrinsics', 'wrist_camera_extrinsics'\]"):
        rb.observation_from_rlbench(obs, ("front", "wrist"), 16, WS)
    out = rb.observation_from_rlbench(obs, ("front",), 16, WS)
    np.testing.assert_allclose(np.asarray(out.camera.intrinsics)[0, 0], 13.75)
    np.testing.assert_allclose(out.pose, rb.rlbench_pose_to_ours(obs.gripper_pose, 1.0, WS))


# ---------------------------------------------------------------------------------------------
# The launcher on RLBench's on-disk demos, with no RLBench installed


def _launch(*args):
    """The launcher (flags, checks, modes) in this process, with the smoke config."""
    from tests._launcher import launch_in_process

    return launch_in_process(*args)


def _rlbench_installed() -> bool:
    return rb.rlbench_missing() is None


@pytest.mark.skipif(_rlbench_installed(), reason="checks the path without RLBench")
def test_launcher_demos_stage1_stage2_on_rlbench_demos(tmp_path):
    import json

    _write_fixture(tmp_path / "data", n=24, episodes=4, size=32)
    wd = tmp_path / "wd"
    common = [f"--workdir={wd}", "--config.env=rlbench", f"--config.rlbench_root={tmp_path / 'data'}",
              "--task=reach_target", "--config.demos.image_size=32", "--num_demos=3",
              "--config.demos.num_held_out=1", "--num_seeds=1", "--config.stage1.num_steps=4",
              "--config.stage2.num_steps=4", "--config.train.checkpoint_every=4"]
    for mode in ("demos", "stage1", "stage2"):  # the launcher's rlbench defaults: calibrated stage 2
        out = _launch(f"--mode={mode}", *common)
        assert out.returncode == 0, f"--mode={mode}: {out.stderr[-3000:]}"
    stats = json.loads((wd / "demos" / "stats.json").read_text())
    assert stats["env"] == "rlbench" and stats["demo_seeds"] == [0, 1, 2]
    assert stats["held_out_seeds"] == [3]  # the folder's last episode is held out
    from twostage_jax.data.dataset import load_dataset

    ds = load_dataset(wd / "demos" / "dataset.npz")
    np.testing.assert_allclose(ds.workspace.low, rb.RLBENCH_WORKSPACE_LOW)
    assert ds.images.shape[1:] == (32, 32, 3)
    assert (wd / "stage2" / "calibration.json").exists()
    assert json.loads((wd / "stage2" / "summary.json").read_text())["final_step"] == 4


def test_rlbench_demos_errors_name_the_field(tmp_path):
    from twostage_jax.configs import smoke
    from twostage_jax.launch.demos import run_demos
    from twostage_jax.launch.launch_config import check_config
    from twostage_jax.launch.errors import PipelineError

    _write_fixture(tmp_path / "data", n=24, episodes=2, size=32)

    from twostage_jax.launch.launch_config import replace_path

    def rlbench(task, **fields):
        return replace_path(smoke.get_config(), {"env": "rlbench", "rlbench_root": str(tmp_path / "data"),
                                                 "task": task, **fields})

    def demos(**fields):
        c = rlbench("reach_target", **{f"demos.{k}": v for k, v in
                                       {"image_size": 32, "num_held_out": 1, **fields}.items()})
        check_config(c)
        return run_demos(c, tmp_path / "wd", force=True)

    with pytest.raises(PipelineError, match=r"config.demos.num_held_out \(2\) .* has 2;"):
        demos(num_held_out=2)  # nothing left to train on
    with pytest.raises(PipelineError, match="--config.demos.image_size=32"):
        demos(image_size=64)
    with pytest.raises(PipelineError, match="config.rlbench_root: No RLBench episodes"):
        run_demos(rlbench("no_task"), tmp_path / "wd2")
    info = demos(num_demos=5)  # fewer episodes than asked for: what there is, and a warning
    assert info["demo_seeds"] == [0] and info["held_out_seeds"] == [1]


@pytest.mark.skipif(_rlbench_installed(), reason="checks the error without RLBench")
def test_launcher_eval_without_rlbench_fails_before_work(tmp_path):
    wd = tmp_path / "wd"
    out = _launch("--mode=eval", f"--workdir={wd}", "--config.env=rlbench",
                  f"--config.rlbench_root={tmp_path}", "--task=reach_target")
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --mode=eval")
    assert "RLBench is not installed" in lines[0] and "CoppeliaSim" in lines[0]
    assert not wd.exists()  # nothing was created


@pytest.mark.parametrize("damage, expect", [
    ("truncated", "Could not unpickle RLBench demo"),
    ("no_png", "lacks image"),
    ("no_pickle", "has no low_dim_obs.pkl"),
])
def test_launcher_reports_a_malformed_episode_in_one_line(tmp_path, damage, expect):
    _write_fixture(tmp_path / "data", n=24, episodes=3, size=32)
    episode = tmp_path / "data" / "reach_target" / "variation0" / "episodes" / "episode1"
    pkl = episode / "low_dim_obs.pkl"
    if damage == "truncated":
        pkl.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    elif damage == "no_png":
        for png in (episode / "front_rgb").glob("*.png"):
            png.unlink()
    else:
        pkl.unlink()
    wd, line = _refused_demos(tmp_path)
    assert line.startswith("error: config.rlbench_root: a malformed RLBench episode: ")
    assert expect in line and str(episode) in line, line
    assert not (wd / "demos" / "dataset.npz").exists()


def test_a_full_disk_while_writing_demos_leaves_demos_as_it_was(tmp_path, monkeypatch):
    import errno

    from twostage_jax.data import dataset
    from twostage_jax.launch import demos

    _write_fixture(tmp_path / "data", n=24, episodes=3, size=32)
    save = dataset.save_dataset

    def disk_full(path, ds):
        if path.name == "dataset.npz":  # held_out.npz was written before it
            raise OSError(errno.ENOSPC, "No space left on device")
        save(path, ds)

    monkeypatch.setattr(demos, "save_dataset", disk_full)
    wd, line = _refused_demos(tmp_path)
    assert line.startswith(f"error: no space left on the device while writing demos/dataset.npz to "
                           f"{wd / 'demos'} ("), line
    assert line.endswith("free there); demos/ is as it was; free some space and record the demos again.")
    assert list((wd / "demos").iterdir()) == [], "a half-written demos/ was left"


def _refused_demos(tmp_path):
    """--mode=demos on the RLBench folder tmp_path/data, refused: (workdir, its one error line)."""
    wd = tmp_path / "wd"
    out = _launch("--mode=demos", f"--workdir={wd}", "--config.env=rlbench", "--task=reach_target",
                  f"--config.rlbench_root={tmp_path / 'data'}", "--config.demos.image_size=32",
                  "--config.demos.num_held_out=1")
    lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]  # (and log lines)
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return wd, lines[0]
