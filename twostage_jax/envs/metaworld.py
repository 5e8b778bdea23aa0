"""MetaWorld (MuJoCo) as a keyframe-level `Env`: the embedded default simulator.

What the agent gets (see `twostage_jax.envs.base` for the action/pose convention):
  * a 128x128 RGB image from a fixed front camera in the spirit of RLBench's `front` camera: it
    stands on the far side of the table, facing the robot, looking slightly down, so the whole
    workspace is in view. Pose and field of view are set by `MetaWorldConfig`; shadows and
    reflections are off for speed;
  * the pose z of the tool centre point (MetaWorld's `tcp_center`, midway between the finger
    pads), its orientation relative to the neutral downward-pointing hand, and the commanded
    gripper state (+1 open, -1 closed);
  * the camera calibration (`Camera.from_mujoco`).

Action mode (RLBench's MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete()) in spirit):
  1. the target position is clipped to the workspace and to MetaWorld's mocap bounds, and
     roll/pitch to +-`max_tilt` (`info['clipped']` reports any clipping);
  2. arm: a P-controller on the tool-centre-point error moves the mocap body by
     clip(gain * error, -1, 1) * 1 cm per low-level step (MetaWorld's own experts use the same
     law with gain 10), with the mocap orientation set to R(euler) @ R_neutral, the gripper
     held at its previous command, until the position error is below `tolerance` (and the
     orientation error below 0.05 rad) or after
     `max_move_steps` low-level steps;
  3. gripper: if the command changed, the arm is held still and the fingers are driven for up
     to `max_gripper_steps` low-level steps, stopping early once they have stopped moving.
Success is MetaWorld's `info['success']`, checked after every low-level step (MetaWorld's own
convention: success at any time). For `SUCCESS_OBS_TASKS`, `evaluate_state` gets an observation
vector with only the entries it reads filled in (see there); the success is the same. Reward is 1.0 on success; the episode ends on success, on a
simulator instability, or after `max_keyframes` actions.

A fresh random layout is drawn from the seed at every `reset(seed)`, using the raw task env with
`_freeze_rand_vec = False` and `seeded_rand_vec = True` (MetaWorld's benchmark wrappers instead
cycle through 50 pre-drawn layouts).

Goal visibility (the agent sees only the image). MetaWorld sets the randomised goal as the
position of a site called 'goal' (`model.site_pos`), but its `reset` leaves the rendered site
position (`data.site_xpos`) at the previous episode's / the XML's value until the next
kinematics pass, so the first image of an episode showed the goal in the wrong place;
`reset` now runs `mj_forward`. In reach-v3, push-v3 and pick-place-v3 nothing else determines
the goal, so there the goal site is the marker the agent must see: `GOAL_MARKER_TASKS` get it
recoloured to `GOAL_MARKER_RGBA` (magenta: distinct from the red arm, red objects, cyan
fingers and the table) with radius `GOAL_MARKER_RADIUS` (about 6 px wide at 128x128), and,
because one view cannot tell the height of a floating sphere, a thin vertical stem of the same
colour from the table top to the goal (a visual-only decoration added to the rendered scene, no
physics; for push-v3 the goal lies on the table and the stem has no length). In the other
default tasks the goal follows from visible objects: the button (button-press-topdown), the
drawer (drawer-open; its goal site is also drawn, green, at the open position), the door
(door-open; green goal dot), the box with the hole (peg-insert-side) and the hoop (basketball).

Headless rendering: unless `MUJOCO_GL` is already set, this module picks `egl` when libEGL is
present, else `osmesa`, before MuJoCo is imported.
"""

from __future__ import annotations

import atexit
import ctypes.util
import dataclasses
import os
import sys
import weakref
from typing import Any

import numpy as np


_MUJOCO_IMPORTED_EARLY = "mujoco" in sys.modules and not os.environ.get("MUJOCO_GL")


def _select_gl_backend() -> None:
    if os.environ.get("MUJOCO_GL"):
        return
    if ctypes.util.find_library("EGL"):
        os.environ["MUJOCO_GL"] = "egl"
    elif ctypes.util.find_library("OSMesa"):
        os.environ["MUJOCO_GL"] = "osmesa"
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    else:
        # Leave it to MuJoCo; `_make_renderer` turns a failure into a clear message.
        os.environ["MUJOCO_GL"] = "egl"


_select_gl_backend()

import mujoco  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from twostage_jax import actions as _actions  # noqa: E402
from twostage_jax import _checks  # noqa: E402
from twostage_jax.envs.base import Observation, check_action  # noqa: E402
from twostage_jax.envs.camera_names import METAWORLD_CAMERAS, METAWORLD_MOVING, check_camera_names  # noqa: E402
from twostage_jax.types import Camera, Workspace  # noqa: E402

DEFAULT_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "button-press-topdown-v3",
    "drawer-open-v3",
    "door-open-v3",
    "peg-insert-side-v3",
    "basketball-v3",
)
"""The default benchmark: eight MetaWorld v3 tasks of varying difficulty."""

GOAL_MARKER_TASKS: tuple[str, ...] = ("reach-v3", "push-v3", "pick-place-v3")
"""Tasks whose goal is only the invisible-in-spirit 'goal' site: drawn as a marker + stem."""
GOAL_MARKER_RGBA = (1.0, 0.0, 1.0, 1.0)
GOAL_MARKER_RADIUS = 0.025  # metres
GOAL_STEM_RADIUS = 0.004  # metres
TABLE_Z = 0.0  # the table top's height (metres) in MetaWorld's scenes

WORKSPACE_LOW = (-0.5, 0.35, -0.05)
WORKSPACE_HIGH = (0.5, 1.05, 0.5)
"""Tool-centre-point bounds (metres) that normalise positions, shared by every MetaWorld task.

They contain MetaWorld's hand range (x in [-0.5, 0.5], y in [0.4, 1.0], hand z in [0.05, 0.5];
the tool centre point sits ~4.5 cm below the hand) with a margin."""

NEUTRAL_MOCAP_QUAT = np.array([1.0, 0.0, 1.0, 0.0]) / np.sqrt(2.0)
"""MetaWorld's hand orientation (MuJoCo w, x, y, z): +90 degrees about world y, fingers down."""

R_NEUTRAL = Rotation.from_quat(NEUTRAL_MOCAP_QUAT[[1, 2, 3, 0]]).as_matrix()
"""[3, 3] neutral hand orientation; poses report R_hand @ R_NEUTRAL^T as Euler angles."""

SUCCESS_OBS_TASKS: frozenset[str] = frozenset(DEFAULT_TASKS)
"""Tasks whose `evaluate_state` (metaworld 3.1.1) reads only entries 0:7 (hand position, finger
gap, first object position) and the goal (the last 3) of its observation argument. For them the
success check of every low-level step skips the rest of `_get_obs` (other objects' positions,
SciPy quaternions, frame stacking), about a fifth of a keyframe step, and leaves zeros there.
Success, rewards and every other info value are unchanged: tested against the full observation
at sampled states of each task, and on recorded episodes."""

_ANGLE_TOLERANCE = 0.05  # radians; the arm motion also waits for the orientation to settle
OPEN, CLOSED = 1.0, -1.0
_EFFORT = {OPEN: -1.0, CLOSED: 1.0}  # our gripper state -> MetaWorld grab effort


@dataclasses.dataclass(frozen=True)
class MetaWorldConfig:
    """Configuration of `MetaWorldEnv`.

    Attributes:
      width: image width in pixels.
      height: image height in pixels.
      camera_position: [3] world position of the front camera (metres). The robot's base is near
        the origin and the table centre near (0, 0.6, 0).
      camera_lookat: [3] world point the camera looks at (the image centre).
      fovy: vertical field of view in degrees.
      max_keyframes: keyframe actions per episode before it ends as a failure.
      gain: P-controller gain (mocap step = clip(gain * error, -1, 1) * 1 cm).
      tolerance: position error (metres) at which the arm motion stops.
      max_move_steps: low-level steps allowed for one arm motion.
      max_gripper_steps: low-level steps allowed for one gripper actuation.
      max_tilt: bound on |roll| and |pitch| (radians) of the commanded orientation.
      shadows: render shadows (slow on CPU).
      reflections: render reflections (slow on CPU).
      cameras: the cameras each observation holds, in order, from `METAWORLD_CAMERAS`: 'corner' is the
        front camera above (placed by `camera_position`, `camera_lookat`, `fovy`); the others
        keep MetaWorld's placement and field of view. 'gripperPOV' and 'behindGripper' move
        with the hand: their pose is read from the simulator at every frame. One camera gives
        [H, W, 3] images, several [V, H, W, 3].
    """

    width: int = 128
    height: int = 128
    camera_position: tuple[float, float, float] = (0.0, 1.45, 1.0)
    camera_lookat: tuple[float, float, float] = (0.0, 0.6, 0.05)
    fovy: float = 50.0
    max_keyframes: int = 20
    gain: float = 10.0
    tolerance: float = 0.005
    max_move_steps: int = 100
    max_gripper_steps: int = 25
    max_tilt: float = np.pi / 4
    shadows: bool = False
    reflections: bool = False
    cameras: tuple[str, ...] = ("corner",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", check_camera_names("MetaWorldConfig.cameras", self.cameras,
                                                                   METAWORLD_CAMERAS))
        _checks.check_positive_int("width", self.width)
        _checks.check_positive_int("height", self.height)
        _checks.check_positive_int("max_keyframes", self.max_keyframes)
        _checks.check_positive_int("max_move_steps", self.max_move_steps)
        _checks.check_positive_int("max_gripper_steps", self.max_gripper_steps)
        _checks.check_shape("camera_position", self.camera_position, (3,))
        _checks.check_shape("camera_lookat", self.camera_lookat, (3,))
        if np.linalg.norm(np.subtract(self.camera_lookat, self.camera_position)) < 1e-6:
            raise ValueError("`camera_lookat` must differ from `camera_position`.")
        if not 0.0 < self.fovy < 180.0:
            raise ValueError(f"`fovy` must lie in (0, 180) degrees; got {self.fovy!r}.")
        for name in ("gain", "tolerance", "max_tilt"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0; got {getattr(self, name)!r}.")


def task_names() -> list[str]:
    """All MetaWorld v3 task names (those with a scripted expert are the usable ones for demos)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS.keys())


def default_workspace() -> Workspace:
    """The `Workspace` shared by all MetaWorld tasks (`WORKSPACE_LOW`, `WORKSPACE_HIGH`)."""
    return Workspace.create(WORKSPACE_LOW, WORKSPACE_HIGH)


def _camera_quat(position: np.ndarray, lookat: np.ndarray) -> np.ndarray:
    """MuJoCo (w, x, y, z) quaternion of a camera at `position` looking at `lookat`, world z up
    appearing up in the image (MuJoCo cameras look along -z with y up)."""
    forward = lookat - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    if np.linalg.norm(right) < 1e-6:  # looking straight down: image up = world +y
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    mat = np.stack([right, up, -forward], axis=1)  # columns: camera x, y, z in the world
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.reshape(-1))
    return quat


def _make_renderer(model: Any, height: int, width: int) -> Any:
    try:
        return mujoco.Renderer(model, height=height, width=width)
    except Exception as err:  # noqa: BLE001 - any GL failure gets the same advice
        raise RuntimeError(
            f"MuJoCo could not create an offscreen renderer with MUJOCO_GL="
            f"{os.environ.get('MUJOCO_GL')!r} ({type(err).__name__}: {err}). Headless rendering "
            "needs EGL (Debian/Ubuntu package `libegl1`, with Mesa `libegl-mesa0`) or OSMesa "
            "(`libosmesa6`); install one and set MUJOCO_GL=egl or MUJOCO_GL=osmesa before "
            "importing twostage_jax.envs.metaworld."
            + (" Note: `mujoco` was imported before this module could set MUJOCO_GL (e.g. by "
               "importing metaworld first), so MuJoCo used its default backend; import "
               "twostage_jax.envs.metaworld first or set MUJOCO_GL yourself."
               if _MUJOCO_IMPORTED_EARLY else "")
        ) from err


_LIVE_RENDERERS: "weakref.WeakSet[Any]" = weakref.WeakSet()
_ATEXIT_REGISTERED = []


def _close_renderers() -> None:
    # Free GL contexts before the EGL/OSMesa libraries are torn down at interpreter exit.
    for renderer in list(_LIVE_RENDERERS):
        try:
            renderer.close()
        except Exception:  # noqa: BLE001
            pass


class MetaWorldEnv:
    """A MetaWorld v3 task behind the keyframe-level `Env` protocol.

    Args:
      task: a MetaWorld v3 task name such as "pick-place-v3" (see `task_names()`).
      config: rendering, camera and controller settings.
      workspace: position bounds for actions and poses (default `default_workspace()`).

    Attributes:
      sim: the underlying MetaWorld env. PRIVILEGED (object positions, goal): for the scripted
        demonstration recorder only; agents must use observations.
    """

    def __init__(
        self, task: str, config: MetaWorldConfig | None = None, workspace: Workspace | None = None
    ) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"`task` must be a MetaWorld v3 task name; got {task!r}. Valid names: "
                f"{sorted(ALL_V3_ENVIRONMENTS)}."
            )
        self._task = task
        self._config = config if config is not None else MetaWorldConfig()
        if not isinstance(self._config, MetaWorldConfig):
            raise TypeError(f"`config` must be a MetaWorldConfig; got {type(self._config).__name__}.")
        self._workspace = workspace if workspace is not None else default_workspace()
        env = ALL_V3_ENVIRONMENTS[task]()
        # Goal observable (the scripted experts read it from the last 3 obs entries), a fresh
        # seeded layout on every reset, and no 500-step horizon (episodes end by keyframes).
        env._partially_observable = False
        if "sawyer_observation_space" in env.__dict__:
            del env.sawyer_observation_space  # cached_property; recomputed for the goal
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.max_path_length = 10**9
        self.sim = env
        model = env.model
        if not self._config.shadows:
            model.light_castshadow[:] = 0
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner")
        if cam_id < 0 or model.cam_bodyid[cam_id] != 0:
            raise RuntimeError(f"MetaWorld model of {task!r} lacks the world-fixed camera 'corner'.")
        pos = np.asarray(self._config.camera_position, np.float64)
        model.cam_pos[cam_id] = pos
        model.cam_quat[cam_id] = _camera_quat(pos, np.asarray(self._config.camera_lookat, np.float64))
        model.cam_fovy[cam_id] = self._config.fovy
        model.cam_mode[cam_id] = mujoco.mjtCamLight.mjCAMLIGHT_FIXED
        self._cam_id = cam_id
        self._cam_ids = []
        for name in self._config.cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cid < 0:
                have = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
                raise ValueError(f"MetaWorldConfig.cameras: the MetaWorld model of {task!r} has no camera "
                                 f"{name!r}; it has {have}.")
            self._cam_ids.append(cid)
        mujoco.mj_forward(model, env.data)
        self._fixed = [None if name in METAWORLD_MOVING else self._camera_now(cid)
                       for name, cid in zip(self._config.cameras, self._cam_ids)]
        self._mocap_id = int(model.body_mocapid[env.data.body("mocap").id])
        self._goal_site = -1
        if task in GOAL_MARKER_TASKS:
            self._goal_site = int(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal"))
            if self._goal_site < 0:
                raise RuntimeError(f"MetaWorld model of {task!r} lacks the 'goal' site.")
            model.site_rgba[self._goal_site] = GOAL_MARKER_RGBA
            model.site_size[self._goal_site, 0] = GOAL_MARKER_RADIUS
            model.site_type[self._goal_site] = mujoco.mjtGeom.mjGEOM_SPHERE
            model.site_group[self._goal_site] = 0
        self._renderer: Any = None
        self._seg_renderer: Any = None
        self._gripper = OPEN
        self._num_steps = 0
        self._done = True
        self._lo = np.asarray(self._workspace.low, np.float64)
        self._hi = np.asarray(self._workspace.high, np.float64)
        self.full_success_obs = task not in SUCCESS_OBS_TASKS  # True: the full `_get_obs` path
        self._hand = env.data.body("hand")
        self._claws = (env.data.body("rightclaw"), env.data.body("leftclaw"))

    # -- Env protocol ------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self._task

    @property
    def workspace(self) -> Workspace:
        return self._workspace

    @property
    def camera(self) -> Camera:
        """The cameras of the current state: one `Camera`, or with several cameras intrinsics
        [V, 3, 3] and cam_to_world [V, 4, 4] (a moving camera where it is now)."""
        cams = [fixed if fixed is not None else self._camera_now(cid)
                for fixed, cid in zip(self._fixed, self._cam_ids)]
        if len(cams) == 1:
            return cams[0]
        return Camera(intrinsics=np.stack([np.asarray(c.intrinsics) for c in cams]),
                      cam_to_world=np.stack([np.asarray(c.cam_to_world) for c in cams]),
                      width=self._config.width, height=self._config.height)

    def _camera_now(self, cam_id: int) -> Camera:
        """Camera `cam_id` at its pose in the current simulator state."""
        d, m = self.sim.data, self.sim.model
        return Camera.from_mujoco(float(m.cam_fovy[cam_id]), d.cam_xpos[cam_id].copy(),
                                  d.cam_xmat[cam_id].copy(), self._config.width, self._config.height)

    @property
    def max_keyframes(self) -> int:
        return self._config.max_keyframes

    @property
    def config(self) -> MetaWorldConfig:
        return self._config

    def reset(self, seed: int) -> Observation:
        """Starts an episode on a fresh layout drawn from `seed`.

        Args:
          seed: a non-negative int; the same seed gives the same layout.

        Returns:
          The first `Observation` (gripper open, hand at MetaWorld's start position).
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int; got {seed!r}.")
        self.sim.seed(int(seed))
        self.sim.reset()
        # MetaWorld moves the goal site in model.site_pos; recompute data.site_xpos so the first
        # image shows the goal where it is (see the module docstring).
        mujoco.mj_forward(self.sim.model, self.sim.data)
        self._gripper = OPEN
        self._num_steps = 0
        self._done = False
        return self.observe()

    def step(self, action: Any) -> tuple[Observation, float, bool, dict[str, Any]]:
        """Moves the tool centre point to the target pose, then actuates the gripper.

        Args:
          action: [7] target pose in [-1, 1] (see `twostage_jax.envs.base`).

        Returns:
          (observation, reward, done, info) with info keys: 'success' (bool), 'clipped' (bool),
          'move_steps' and 'gripper_steps' (low-level steps used), 'position_error' (metres, at
          the end of the arm motion), 'sim_error' (bool).
        """
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset(seed) first.")
        act = check_action(action)
        info = self.execute(act)
        self._num_steps += 1
        reward = 1.0 if info["success"] else 0.0
        done = bool(info["success"] or info["sim_error"] or self._num_steps >= self.max_keyframes)
        self._done = done
        return self.observe(), reward, done, info

    def close(self) -> None:
        for r in (self._renderer, self._seg_renderer):
            if r is not None:
                r.close()
        self._renderer = self._seg_renderer = None
        self.sim.close()

    # -- pieces shared with the demonstration recorder ------------------------------------------
    def tcp_position(self) -> np.ndarray:
        """[3] current tool-centre-point position (metres)."""
        return np.array(self.sim.tcp_center, dtype=np.float64)

    def relative_euler(self) -> np.ndarray:
        """[3] Euler angles (radians) of the hand orientation relative to the neutral one."""
        r_hand = self.sim.data.body("hand").xmat.reshape(3, 3)
        return Rotation.from_matrix(r_hand @ R_NEUTRAL.T).as_euler("xyz")

    def pose(self, gripper: float | None = None) -> np.ndarray:
        """[7] float32 current pose z (gripper = the commanded state unless given)."""
        g = self._gripper if gripper is None else gripper
        return np.asarray(
            _actions.pose_to_action(self.tcp_position(), self.relative_euler(), g, self._workspace),
            np.float32,
        )

    def goal_marker_position(self) -> np.ndarray | None:
        """[3] world position of the drawn goal marker (`GOAL_MARKER_TASKS`), else None."""
        if self._goal_site < 0:
            return None
        return self.sim.data.site_xpos[self._goal_site].copy()

    def render(self) -> np.ndarray:
        """The current simulator state seen by `config.cameras`: [H, W, 3] uint8 from one
        camera, [V, H, W, 3] from several."""
        if self._renderer is None:
            self._renderer = self._setup(_make_renderer(self.sim.model, self._config.height,
                                                        self._config.width))
        views = []
        for cid in self._cam_ids:
            self._renderer.update_scene(self.sim.data, camera=cid)
            self._add_goal_stem(self._renderer.scene)
            views.append(self._renderer.render().copy())
        return views[0] if len(views) == 1 else np.stack(views)

    def _add_goal_stem(self, scene: Any) -> None:
        """Draws the goal marker's vertical stem (table top to goal) into the scene."""
        goal = self.goal_marker_position()
        if goal is None or goal[2] - TABLE_Z <= GOAL_MARKER_RADIUS or scene.ngeom >= scene.maxgeom:
            return
        geom = scene.geoms[scene.ngeom]
        mujoco.mjv_initGeom(geom, mujoco.mjtGeom.mjGEOM_CAPSULE, np.zeros(3), np.zeros(3),
                            np.eye(3).reshape(-1), np.asarray(GOAL_MARKER_RGBA, np.float32))
        mujoco.mjv_connector(geom, mujoco.mjtGeom.mjGEOM_CAPSULE, GOAL_STEM_RADIUS,
                             np.array([goal[0], goal[1], TABLE_Z]), goal)
        scene.ngeom += 1

    def render_segmentation(self) -> np.ndarray:
        """[H, W, 2] int32 segmentation (object id, object type) of the front camera's view."""
        if self._seg_renderer is None:
            self._seg_renderer = self._setup(_make_renderer(self.sim.model, self._config.height,
                                                            self._config.width))
            self._seg_renderer.enable_segmentation_rendering()
        self._seg_renderer.update_scene(self.sim.data, camera=self._cam_id)
        return self._seg_renderer.render().copy()

    def _setup(self, renderer: Any) -> Any:
        _LIVE_RENDERERS.add(renderer)
        if not _ATEXIT_REGISTERED:
            # Registered after MuJoCo's GL module has registered its own teardown, so (atexit
            # being last-in first-out) our contexts are freed while the display still exists.
            atexit.register(_close_renderers)
            _ATEXIT_REGISTERED.append(True)
        flags = renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(self._config.shadows)
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(self._config.reflections)
        return renderer

    def observe(self) -> Observation:
        """The current `Observation` (renders one frame)."""
        return Observation(image=self.render(), pose=self.pose(), camera=self.camera)

    def get_state(self) -> dict[str, np.ndarray]:
        """A copy of the simulator state needed to re-render a frame (qpos, qvel, mocap)."""
        d = self.sim.data
        return {"qpos": d.qpos.copy(), "qvel": d.qvel.copy(), "mocap_pos": d.mocap_pos.copy(),
                "mocap_quat": d.mocap_quat.copy()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores a `get_state()` snapshot (kinematics recomputed; for rendering)."""
        d = self.sim.data
        d.qpos[:] = state["qpos"]
        d.qvel[:] = state["qvel"]
        d.mocap_pos[:] = state["mocap_pos"]
        d.mocap_quat[:] = state["mocap_quat"]
        mujoco.mj_forward(self.sim.model, d)

    def execute(self, action: np.ndarray) -> dict[str, Any]:
        """Runs the move-then-gripper action mode for one [7] normalised action (no episode
        bookkeeping, no rendering). Returns the `info` dict of `step`."""
        pos, euler, g = _actions.action_to_pose(np.asarray(action, np.float32), self._workspace)
        target = np.asarray(pos, np.float64)
        euler = np.asarray(euler, np.float64)
        clipped = bool(np.any(np.abs(np.asarray(action)[:3]) >= 1.0))
        tilt = np.clip(euler[:2], -self._config.max_tilt, self._config.max_tilt)
        if np.any(tilt != euler[:2]):
            clipped = True
            euler = np.concatenate([tilt, euler[2:]])
        r_target = Rotation.from_euler("xyz", euler).as_matrix() @ R_NEUTRAL
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, r_target.reshape(-1))
        # Keep the target reachable: the mocap (hand) is confined to [mocap_low, mocap_high].
        offset = np.asarray(self.sim.data.mocap_pos[self._mocap_id]) - self.tcp_position()
        reach = np.clip(target + offset, self.sim.mocap_low, self.sim.mocap_high) - offset
        if np.any(np.abs(reach - target) > 1e-6):
            clipped = True
            target = reach
        gripper = OPEN if float(g) >= 0.0 else CLOSED
        success = False
        sim_error = False
        move_steps = 0
        err = np.inf
        effort = _EFFORT[self._gripper]
        for move_steps in range(1, self._config.max_move_steps + 1):
            delta = np.clip(self._config.gain * (target - self.tcp_position()), -1.0, 1.0)
            mocap = self.sim.data.mocap_pos[self._mocap_id] + delta * self.sim.action_scale
            success |= self._low_level_step(mocap, quat, effort)
            err = float(np.linalg.norm(target - self.tcp_position()))
            if self.sim._did_see_sim_exception:
                sim_error = True
                break
            if err < self._config.tolerance and self._angle_error(r_target) < _ANGLE_TOLERANCE:
                break
        gripper_steps = 0
        if gripper != self._gripper and not sim_error:
            self._gripper = gripper
            effort = _EFFORT[gripper]
            hold = self.sim.data.mocap_pos[self._mocap_id].copy()
            prev = self._finger_gap()
            for gripper_steps in range(1, self._config.max_gripper_steps + 1):
                success |= self._low_level_step(hold, quat, effort)
                gap = self._finger_gap()
                if self.sim._did_see_sim_exception:
                    sim_error = True
                    break
                if gripper_steps >= 3 and abs(gap - prev) < 2e-4:
                    break
                prev = gap
        if not self.full_success_obs and not sim_error:
            # What the last `_get_obs` of the full path would have left for frame stacking.
            self.sim._prev_obs = self.sim._get_curr_obs_combined_no_goal()
        return {"success": bool(success), "clipped": clipped, "move_steps": move_steps,
                "gripper_steps": gripper_steps, "position_error": err, "sim_error": sim_error}

    def _angle_error(self, r_target: np.ndarray) -> float:
        r_hand = self.sim.data.body("hand").xmat.reshape(3, 3)
        cos = 0.5 * (np.trace(r_target.T @ r_hand) - 1.0)
        return float(np.arccos(np.clip(cos, -1.0, 1.0)))

    def _finger_gap(self) -> float:
        d = self.sim.data
        return float(np.linalg.norm(d.body("rightclaw").xpos - d.body("leftclaw").xpos))

    def _low_level_step(self, mocap_pos: np.ndarray, quat: np.ndarray, effort: float) -> bool:
        sim = self.sim
        sim.data.mocap_pos[self._mocap_id] = np.clip(mocap_pos, sim.mocap_low, sim.mocap_high)
        sim.data.mocap_quat[self._mocap_id] = quat
        sim.do_simulation([effort, -effort], n_frames=sim.frame_skip)
        sim.curr_path_length += 1
        for site in sim._target_site_config:
            sim._set_pos_site(*site)
        if sim._did_see_sim_exception:
            return False
        mujoco.mj_forward(sim.model, sim.data)
        obs = sim._get_obs() if self.full_success_obs else self.success_obs()
        obs = np.clip(obs, sim.sawyer_observation_space.low, sim.sawyer_observation_space.high)
        _, info = sim.evaluate_state(obs, np.array([0.0, 0.0, 0.0, effort]))
        return bool(info.get("success", False))

    def success_obs(self) -> np.ndarray:
        """[39] MetaWorld observation with only what `evaluate_state` reads in
        `SUCCESS_OBS_TASKS` filled in, computed as `_get_obs` computes it: hand position [0:3],
        finger gap [3], first object position [4:7], goal [-3:]; zeros elsewhere."""
        sim = self.sim
        obs = np.zeros(sim.sawyer_observation_space.shape[0])
        obs[0:3] = self._hand.xpos
        gap = np.linalg.norm(self._claws[0].xpos - self._claws[1].xpos)
        obs[3] = np.clip(gap / 0.1, 0.0, 1.0)
        obs[4:7] = sim._get_pos_objects()[:3]
        obs[-3:] = sim._get_pos_goal()
        return obs
