"""The two-stage act function: stage 1 -> transform f -> stage 2 -> composition g.

Depends on networks, transform and actions only (not on training): the stage configs it takes
are read for their network, algo, image size and `Stage2Config` fields. Stage 1 may be any
host-side base policy instead (`correct_base_policy`; see `twostage_jax.base_policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from twostage_jax import _checks
from twostage_jax.base_policy import BasePolicy, call_base_policy
from twostage_jax.networks import Networks, make_networks, tanh_gaussian_sample
from twostage_jax.transform import Stage2Config, resize_images, transform_batch
from twostage_jax.types import ACTION_DIM, Camera, Stage1Obs, Stage2Obs, Workspace

if TYPE_CHECKING:  # annotations only: the policy does not import the training code
    from twostage_jax.training import TrainConfig


class PolicyOutput(NamedTuple):
    """What `act` returns (each [B, 7]).

    Attributes:
      action: the executed action a = g(a^1, a^2) (or a^1 in stage-1-only mode).
      tentative: a^1 from stage 1.
      correction: a^2 from stage 2 (zeros in stage-1-only mode).
      choice: [B] int32, with `critic_samples`: which candidate the critic chose (0 no
        correction, 1 the actor's mode, 2.. its samples); else None.
    """

    action: jnp.ndarray
    tentative: jnp.ndarray
    correction: jnp.ndarray
    choice: jnp.ndarray | None = None


def _act_one_stage(networks: Networks, params: dict, obs: Any, key: jax.Array, deterministic: bool) -> jnp.ndarray:
    out = networks.actor(params, networks.encode(params, obs))
    if not networks.stochastic:
        return out
    mean, log_std = out
    if deterministic:
        return jnp.tanh(mean)
    return tanh_gaussian_sample(key, mean, log_std)[0]


_ACT_PARAMS = ("encoder", "actor")  # what act reads; a critic or log_alpha may be present or not


def _param_paths(params: Any) -> frozenset[tuple[str, ...]]:
    """The key paths of the encoder's and actor's leaves, e.g. ('encoder', 'params', 'CNN_0', ...)."""
    def name(entry: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = (tuple(name(e) for e in path) for path, _ in leaves)
    return frozenset(p for p in paths if p and p[0] in _ACT_PARAMS)


def _encoder_modules(paths: frozenset[tuple[str, ...]]) -> list[str]:
    """The encoder's top modules (['CNN_0', 'MLP_0'] for stage 1): what tells the stages apart."""
    return sorted({p[2] for p in paths if len(p) > 2 and p[0] == "encoder"})


class _ParamsCheck:
    """Compares `act`'s params1 / params2 with the trees their stages' `init` builds.

    The expected trees come from `jax.eval_shape` of each stage's `init` on a small example
    (nothing is allocated or compiled; the leaf paths do not depend on the image or crop size),
    computed on the first call and cached. Each call then flattens the two params trees. Only
    the encoder and actor are compared: they are what act reads.
    """

    def __init__(self, nets1: Networks | None, nets2: Networks | None, s2: Stage2Config | None):
        self._nets1, self._nets2, self._s2 = nets1, nets2, s2
        self._expected: dict[int, tuple[frozenset | None, frozenset | None]] = {}

    def _expect(self, views: int) -> tuple[frozenset | None, frozenset | None]:
        """The trees for observations of `views` cameras (0: one camera, no view axis)."""
        if views not in self._expected:
            key = jax.ShapeDtypeStruct((2,), jnp.uint32)
            vec = jax.ShapeDtypeStruct((1, ACTION_DIM), jnp.float32)
            v = (views,) if views else ()
            obs1 = Stage1Obs(jax.ShapeDtypeStruct((1, *v, 32, 32, 3), jnp.uint8), vec)
            want1 = (None if self._nets1 is None else  # a base policy stands in for stage 1
                     _param_paths(jax.eval_shape(self._nets1.init, key, obs1)))
            want2 = None
            if self._nets2 is not None:
                c, e = self._s2.crop_size, self._s2.ee_crop_size
                mask = jax.ShapeDtypeStruct((1, views), jnp.float32) if views else None
                obs2 = Stage2Obs(jax.ShapeDtypeStruct((1, *v, c, c, 3), jnp.float32),
                                 jax.ShapeDtypeStruct((1, *v, e, e, 3), jnp.float32), vec, vec, mask)
                want2 = _param_paths(jax.eval_shape(self._nets2.init, key, obs2))
            self._expected[views] = (want1, want2)
        return self._expected[views]

    def __call__(self, params1: Any, params2: Any, views: int = 0) -> None:
        want1, want2 = self._expect(views)
        got1 = _param_paths(params1) if want1 is not None else None
        got2 = _param_paths(params2) if want2 is not None else None
        if got1 == want1 and got2 == want2:
            return
        if want1 is not None and want2 is not None and got1 == want2 and got2 == want1:
            raise ValueError(
                "`params1` and `params2` look swapped: `params1` holds stage 2's networks (encoder "
                f"modules {_encoder_modules(got1)}) and `params2` stage 1's (encoder modules "
                f"{_encoder_modules(got2)}). Pass stage 1's params first: act(params1, params2, ...).")
        name, want, got = ("params1", want1, got1) if got1 != want1 else ("params2", want2, got2)
        missing, extra = sorted(want - got), sorted(got - want)
        detail = "; ".join(
            f"{what} {len(paths)} parameter(s), e.g. {'/'.join(paths[0])}"
            for what, paths in (("missing", missing), ("unexpected", extra)) if paths)
        raise ValueError(
            f"`{name}` does not match stage {1 if name == 'params1' else 2}'s networks as this "
            f"policy's config builds them: expected encoder modules {_encoder_modules(want)}, got "
            f"{_encoder_modules(got)} ({detail}). Pass the params trained with that stage's config.")


def check_corrected_dims(corrected_dims: Sequence[int]) -> np.ndarray:
    """`make_policy`'s `corrected_dims` as a [7] bool mask, or a ValueError naming what is wrong.

    Args:
      corrected_dims: 7 flags, each 0 / 1 (or False / True), at least one of them 1.

    Returns:
      [7] bool array.
    """
    flags = list(corrected_dims) if isinstance(corrected_dims, (list, tuple, np.ndarray)) else None
    if (flags is None or len(flags) != ACTION_DIM
            or not all(isinstance(f, (bool, int, np.integer)) and int(f) in (0, 1) for f in flags)
            or not any(int(f) for f in flags)):
        raise _checks.ConfigError("", "corrected_dims", f"must be {ACTION_DIM} flags of 0 / 1 (x, y, z, roll, "
                         f"pitch, yaw, gripper), at least one 1; got {corrected_dims!r}.")
    return np.asarray([bool(int(f)) for f in flags])


def check_observation(image: Any, pose: Any, camera: Camera) -> None:
    """Checks a policy's observation batch where it enters from the host.

    Args:
      image: [B, H, W, 3] uint8 frames at the camera's resolution, or [B, V, H, W, 3] from V
        cameras.
      pose: [B, 7] floating poses in [-1, 1].
      camera: the single `Camera` of the batch (or intrinsics [B, 3, 3] and cam_to_world
        [B, 4, 4], one per row: a moving camera in several episodes); with V cameras,
        intrinsics [V, 3, 3] and cam_to_world [V, 4, 4] (shared by the batch) or [B, V, ...].

    Raises:
      ValueError / TypeError naming `image`, `camera` or `pose`.
    """
    if np.ndim(image) == 5:
        b, v = np.shape(image)[:2]
        _checks.check_shape("image", image, (None, v, camera.height, camera.width, 3),
                            "[B, V, H, W, 3] at the cameras' resolution")
        shared = np.ndim(camera.intrinsics) == 3
        lead = (v,) if shared else (b, v)
        _checks.check_shape("camera.intrinsics", camera.intrinsics, (*lead, 3, 3),
                            f"one camera per view of the image's {v}: [V, 3, 3] or [B, V, 3, 3]")
        _checks.check_shape("camera.cam_to_world", camera.cam_to_world, (*lead, 4, 4),
                            "[V, 4, 4] or [B, V, 4, 4], as the intrinsics")
    else:
        _checks.check_rank("image", image, 4)
        _checks.check_shape("image", image, (None, camera.height, camera.width, 3),
                            "[B, H, W, 3] at the camera's resolution")
        lead = () if np.ndim(camera.intrinsics) == 2 else (np.shape(image)[0],)
        _checks.check_shape("camera.intrinsics", camera.intrinsics, (*lead, 3, 3),
                            "one camera for [B, H, W, 3] frames: [3, 3], or [B, 3, 3] per row")
        _checks.check_shape("camera.cam_to_world", camera.cam_to_world, (*lead, 4, 4),
                            "[4, 4], or [B, 4, 4] as the intrinsics")
    if np.shape(image)[0] == 0:
        raise ValueError(f"`image` must hold at least one frame (batch size B >= 1); got batch "
                         f"size 0 (shape {np.shape(image)}).")
    if getattr(image, "dtype", None) != jnp.uint8:
        raise TypeError(f"`image` must be uint8 camera frames (0..255), as the dataset stores them; "
                        f"got dtype {getattr(image, 'dtype', type(image).__name__)}. Convert float "
                        "frames in [0, 1] with (image * 255).round().astype(np.uint8).")
    _checks.check_shape("pose", pose, (image.shape[0], ACTION_DIM), "[B, 7]")
    _checks.check_floating("pose", pose)
    _checks.check_range("pose", pose, -1.0, 1.0, "poses are normalised like actions")


MAX_CORRECTION_PASSES = 16
"""`make_policy`'s bound on `correction_passes`: each pass is one more stage-2 network unrolled
into the compiled policy (the paper corrects once)."""


def make_policy(
    stage1: TrainConfig | None,
    stage2: TrainConfig | None,
    workspace: Workspace,
    deterministic: bool = True,
    row_by_row: bool = False,
    correction_passes: int = 1,
    corrected_dims: Sequence[int] | None = None,
    critic_samples: int = 0,
    refine: TrainConfig | None = None,
) -> Callable[..., PolicyOutput]:
    """Builds the jitted, batched two-stage policy.

    With `stage2=None` the policy is stage 1 alone (the paper's BC(1)/CQL(1) baselines). With
    `stage1=None` there is no stage-1 network: every call must pass `tentative` (the actions of
    another base policy; `correct_base_policy` does this for a host-side callable).

    Args:
      stage1: stage 1's training config (network sizes, algo, input image size), or None when
        the tentative actions always come from elsewhere.
      stage2: stage 2's training config, or None for stage 1 alone.
      workspace: position bounds used to normalise actions.
      deterministic: act with the policy's mode (tanh of the mean for CQL actors).
      row_by_row: compute the rows of a batch one after another inside the one jitted call
        (`jax.lax.map` over batch-1 programs), so that every row is bitwise what a batch-1 call
        returns, whatever the batch size: row i of a [B] call equals the batched policy's
        batch-1 call on that row with key `jax.random.split(key, B)[i]`, so a sampling policy
        draws independent noise for every row. A batched call rounds differently: XLA CPU picks
        other kernels for other batch sizes (up to ~1e-7 apart in the actions, measured). Parallel
        evaluation uses it so that results do not depend on the number of workers; on CPU it was
        also faster than the batched call at batch 2.
      correction_passes: how many times stage 2 corrects (1, the paper). With N > 1 each pass
        re-crops around the previous pass's composed action and corrects it again, a^(k+1) =
        g(a^(k), pi2(f(s, a^(k)))): stage 2 is trained on Algorithm 1's perturbations of every
        size up to about sigma, so the smaller error a first pass leaves is also in its
        training distribution. `correction` is then the last pass's a^2.
      corrected_dims: None (the paper: the correction composes on every dimension), or 7 flags
        (0 / 1, `check_corrected_dims`) naming the action dimensions the correction changes;
        the others keep the tentative action's value exactly, e.g. (1, 1, 1, 0, 0, 0, 1) keeps
        stage 1's orientation. Stage 2's inputs and training are unchanged.
      critic_samples: 0 (the paper), or K > 0 with a CQL stage 2: its critic (the minimum of
        its two heads) scores K + 2 candidate corrections on the same crops, no correction
        (stage 1's action as it is), the actor's mode and K samples of the actor, and the best
        is executed (ties go to no correction, then the mode). The samples' noise comes from
        `key` folded with the observation, so a deterministic policy stays a function of
        what it sees. One correction pass only.
      refine: None (the paper), or a second stage 2's training config (a zoom, usually with a
        smaller crop): after stage 2's passes it re-crops around their composed action and
        corrects it once more with its own networks, a = g(a', pi2'(f'(s, a'))). `params2` then
        holds its parameters under the key 'refine', beside the first stage 2's; it is trained
        on the first pass's corrected actions (`first_pass_actions`). `correction` is its a^2.

    Returns:
      `act(params1, params2, image, pose, camera, key, tentative) -> PolicyOutput`, where image
      is [B, H, W, 3] uint8 at the camera's full resolution, pose [B, 7], camera a single
      `Camera` shared by the batch or one per row (intrinsics [B, 3, 3]; with V cameras: image
      [B, V, H, W, 3] and the cameras' intrinsics [V, 3, 3] / cam_to_world [V, 4, 4], or
      [B, V, ...] per row; stage 2 crops every view, `transform.transform_views`), key a PRNG key (required when the policy samples, i.e.
      deterministic=False with a CQL stage: pass a fresh one per call; may be None
      otherwise), params1 is ignored (pass None) when stage1 is None, and params2 is ignored
      (pass None) in stage-1-only mode. Values are
      checked here, at the boundary: pose and tentative must be finite and in [-1, 1]. `tentative` ([B, 7], optional)
      replaces stage 1's output, e.g. to test stage 2 on Algo. 1's perturbed actions. The
      batch must hold at least one frame, and the encoder and actor leaves of params1 / params2
      must be those their stage's config builds (a ValueError names the argument, and says
      when the two look swapped).
    """
    if (isinstance(correction_passes, bool) or not isinstance(correction_passes, int)
            or not 1 <= correction_passes <= MAX_CORRECTION_PASSES):
        raise ValueError(f"`correction_passes` must be an integer in [1, {MAX_CORRECTION_PASSES}] (each pass "
                         f"is unrolled into the compiled policy); got {correction_passes!r}.")
    mask = None if corrected_dims is None else check_corrected_dims(corrected_dims)
    if isinstance(critic_samples, bool) or not isinstance(critic_samples, int) or critic_samples < 0:
        raise ValueError(f"`critic_samples` must be an int >= 0; got {critic_samples!r}.")
    if critic_samples and (stage2 is None or stage2.algo != "cql" or correction_passes != 1):
        raise ValueError("`critic_samples` > 0 lets stage 2's critic choose the correction: it needs a "
                         "CQL stage 2 (stage2.algo='cql') and correction_passes=1; got "
                         f"{None if stage2 is None else stage2.algo!r} and {correction_passes}.")
    if refine is not None and (stage2 is None or critic_samples):
        raise ValueError("`refine` corrects stage 2's action again: it needs a `stage2` config, and "
                         "the critic's choice (`critic_samples` > 0) is of one correction only; got "
                         f"stage2={None if stage2 is None else 'a config'}, critic_samples={critic_samples}.")
    if not isinstance(workspace, Workspace):
        raise TypeError(f"`workspace` must be the dataset's Workspace (the action's position bounds); got "
                        f"{type(workspace).__name__}.")
    if stage1 is None and stage2 is None:
        raise ValueError("`stage1` and `stage2` are both None: a policy needs stage 1, stage 2 or both.")
    nets1 = make_networks(stage1.network, 1, stage1.algo) if stage1 is not None else None
    nets2 = make_networks(stage2.network, 2, stage2.algo) if stage2 is not None else None
    stochastic = not deterministic and any(n is not None and n.stochastic for n in (nets1, nets2))
    s2: Stage2Config | None = stage2.stage2 if stage2 is not None else None
    check_params = _ParamsCheck(nets1, nets2, s2)
    nets_r = make_networks(refine.network, 2, refine.algo) if refine is not None else None
    s_r: Stage2Config | None = refine.stage2 if refine is not None else None
    check_refine = _ParamsCheck(None, nets_r, s_r) if refine is not None else None
    stochastic = stochastic or (not deterministic and nets_r is not None and nets_r.stochastic)

    def _batch(params1: dict, params2: Any, image: jnp.ndarray, pose: jnp.ndarray, camera: Camera,
               key: jax.Array, tentative: jnp.ndarray | None) -> PolicyOutput:
        k1, k2 = jax.random.split(key)
        if tentative is None:
            size = stage1.image_size or image.shape[-3]
            small = resize_images(image, size)
            a1 = _act_one_stage(nets1, params1, Stage1Obs(small, pose), k1, deterministic)
        else:
            a1 = tentative
        if nets2 is None:
            return PolicyOutput(action=a1, tentative=a1, correction=jnp.zeros_like(a1))
        if critic_samples:
            return _critic_choice(params2, image, pose, camera, k2, a1)
        action = a1
        for k in jax.random.split(k2, correction_passes) if correction_passes > 1 else [k2]:
            obs2 = transform_batch(image, pose, action, camera, workspace, s2)
            a2 = _act_one_stage(nets2, params2, obs2, k, deterministic)
            composed = s2.compose(action, a2)
            action = composed if mask is None else jnp.where(mask, composed, action)
        if nets_r is not None:  # the second zoom, with its own crop and networks
            obs2 = transform_batch(image, pose, action, camera, workspace, s_r)
            a2 = _act_one_stage(nets_r, params2["refine"], obs2, jax.random.fold_in(k2, 1), deterministic)
            composed = s_r.compose(action, a2)
            action = composed if mask is None else jnp.where(mask, composed, action)
        return PolicyOutput(action=action, tentative=a1, correction=a2)

    def _critic_choice(params2: Any, image: jnp.ndarray, pose: jnp.ndarray, camera: Camera,
                       key: jax.Array, a1: jnp.ndarray) -> PolicyOutput:
        obs2 = transform_batch(image, pose, a1, camera, workspace, s2)
        feat = nets2.encode(params2, obs2)
        mean, log_std = nets2.actor(params2, feat)
        seen = jnp.sum(jax.lax.bitcast_convert_type(pose.astype(jnp.float32), jnp.int32))
        keys = jax.random.split(jax.random.fold_in(key, seen), critic_samples)
        samples = jax.vmap(lambda k: tanh_gaussian_sample(k, mean, log_std)[0])(keys)  # [K, B, 7]
        none = jnp.zeros_like(a1) if s2.mode == "correction" else a1  # composes to a1 itself
        candidates = jnp.concatenate([none[None], jnp.tanh(mean)[None], samples])  # [K + 2, B, 7]
        q = jnp.min(nets2.critic(params2, feat, candidates), axis=0)  # [K + 2, B]
        choice = jnp.argmax(q, axis=0)  # the first maximum: no correction on a tie
        a2 = jnp.take_along_axis(candidates, choice[None, :, None], axis=0)[0]
        action = s2.compose(a1, a2)
        if mask is not None:
            action = jnp.where(mask, action, a1)
        return PolicyOutput(action=action, tentative=a1, correction=a2, choice=choice.astype(jnp.int32))

    @jax.jit
    def _act(params1: dict, params2: Any, image: jnp.ndarray, pose: jnp.ndarray, camera: Camera,
             key: jax.Array, tentative: jnp.ndarray | None) -> PolicyOutput:
        if not row_by_row:
            return _batch(params1, params2, image, pose, camera, key, tentative)

        per_row = camera.intrinsics.ndim == image.ndim - 1  # a camera (set) per row

        def one(row: tuple) -> PolicyOutput:
            im, z, t, k, cam = row
            cam = jax.tree_util.tree_map(lambda x: x[None], cam) if per_row else camera
            out = _batch(params1, params2, im[None], z[None], cam, k,
                         None if t is None else t[None])
            return jax.tree_util.tree_map(lambda x: x[0], out)

        keys = jax.random.split(key, image.shape[0])  # each row its own noise
        return jax.lax.map(one, (image, pose, tentative, keys, camera if per_row else None))

    def act(params1: dict, params2: Any, image: jnp.ndarray, pose: jnp.ndarray, camera: Camera,
            key: jax.Array | None = None, tentative: jnp.ndarray | None = None) -> PolicyOutput:
        check_observation(image, pose, camera)
        if nets1 is None and tentative is None:
            raise ValueError("`tentative` is None, but this policy was built with stage1=None: pass "
                             "the base policy's actions as tentative=[B, 7] (or use "
                             "correct_base_policy).")
        if nets2 is not None and params2 is None:
            raise ValueError("`params2` is None but the policy was built with a stage-2 config; "
                             "pass stage 2's params or build with stage2=None.")
        views = int(np.shape(image)[1]) if np.ndim(image) == 5 else 0
        check_params(params1, params2, views)
        if check_refine is not None:
            if not isinstance(params2, Mapping) or "refine" not in params2:
                raise ValueError("this policy was built with `refine`: `params2` must hold the second "
                                 "stage 2's parameters under the key 'refine', beside the first's.")
            check_refine(None, params2["refine"], views)
        if critic_samples and "critic" not in params2:
            raise ValueError("`params2` holds no 'critic', which `critic_samples` > 0 scores the "
                             "candidate corrections with: pass stage 2's whole CQL params.")
        if tentative is not None:
            _checks.check_shape("tentative", tentative, (image.shape[0], ACTION_DIM), "[B, 7]")
            _checks.check_range("tentative", tentative, -1.0, 1.0, "a tanh-space action")
            tentative = jnp.asarray(tentative, jnp.float32)
        if key is None:
            if stochastic:
                raise ValueError("`key` is None, but this policy samples (deterministic=False with a "
                                 "CQL stage): pass a fresh PRNG key per call, or build it with "
                                 "deterministic=True.")
            key = jax.random.PRNGKey(0)  # a deterministic policy draws no noise from it
        else:
            _checks.check_key("key", key)
        return _act(params1, params2, jnp.asarray(image), jnp.asarray(pose, jnp.float32), camera, key,
                    tentative)

    return act


def correct_base_policy(
    base: BasePolicy,
    stage2: TrainConfig,
    workspace: Workspace,
    deterministic: bool = True,
    row_by_row: bool = False,
    correction_passes: int = 1,
    corrected_dims: Sequence[int] | None = None,
) -> Callable[..., PolicyOutput]:
    """The two-stage policy with any host-side base policy as stage 1, corrected by stage 2.

    Stage 2 trains from the demos alone (Algo. 1 never calls stage 1), so a stage 2 trained
    with this library corrects a policy you already have, as long as it acts in the same
    action space (a [7] action in [-1, 1] per observation; see `twostage_jax.base_policy`).
    Each call runs `base(image, pose)` on the host, checks its output (`call_base_policy`: a
    wrong shape, a value outside [-1, 1] or a NaN is a ValueError naming the base policy), then
    the jitted `make_policy(None, stage2, ...)` act with `tentative=` the base actions: crop
    around where they project, stage 2, composition.

    Args:
      base: `base(image [B, H, W, 3] uint8, pose [B, 7] float32) -> [B, 7]` actions in [-1, 1]
        (numpy or JAX), called with numpy arrays outside jit.
      stage2: stage 2's training config (network, algo, `Stage2Config`).
      workspace: position bounds that normalise actions (the stage-2 training data's).
      deterministic, row_by_row, correction_passes, corrected_dims: as in `make_policy`.

    Returns:
      `corrected(params2, image, pose, camera, key=None) -> PolicyOutput`: image [B, H, W, 3]
      uint8 at the camera's resolution, pose [B, 7], camera a single `Camera`; `key` as in
      `make_policy`'s act. `tentative` of the output is the base policy's action, `action` the
      corrected one; equal to `make_policy(..., stage2, ...)`'s act given
      `tentative=base(image, pose)`.
    """
    if not callable(base):
        raise TypeError(f"`base` must be a callable base(image, pose) -> action; got "
                        f"{type(base).__name__}.")
    if stage2 is None:
        raise ValueError("`stage2` is None: correct_base_policy needs stage 2's training config "
                         "(the base policy alone needs no library call).")
    act = make_policy(None, stage2, workspace, deterministic=deterministic, row_by_row=row_by_row,
                      correction_passes=correction_passes, corrected_dims=corrected_dims)

    def corrected(params2: Any, image: Any, pose: Any, camera: Camera,
                  key: jax.Array | None = None) -> PolicyOutput:
        check_observation(image, pose, camera)  # before the base policy sees them
        tentative = call_base_policy(base, image, pose)
        return act(None, params2, image, pose, camera, key=key, tentative=tentative)

    return corrected
