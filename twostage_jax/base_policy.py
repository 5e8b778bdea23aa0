"""Foreign base policies: any callable `base(image, pose) -> action` in place of stage 1.

The correction (stage 2) never sees stage 1 while it trains (Algo. 1 perturbs the demos'
actions), so it can correct any policy that acts in the same action space: a policy you already
have, trained in another framework or scripted. Such a base policy is a host-side callable

    base(image, pose) -> action

with image [B, H, W, 3] uint8 camera frames, pose [B, 7] float32 end-effector poses in the
action form (normalised position, Euler angles / pi, gripper; see `twostage_jax.types`), both
numpy arrays, and action [B, 7] in [-1, 1] (a numpy or JAX array, or anything `np.asarray`
reads). It is called outside `jit`, so it may run any code (PyTorch, a remote call, ...).

`call_base_policy` calls it and checks its output where it enters the library: a wrong shape,
a value outside [-1, 1] or a NaN raises a ValueError that names the base policy, what was
expected and what it returned, instead of failing later inside XLA. `base_policy_actions`
runs it over a `Dataset`'s transitions in batches (what calibration needs).

A base policy may instead run beside the simulator, in the process that steps it: a
`SimBasePolicy` (`reset(env, seed)`, `act(env, observation) -> [7]`). It may read the
simulator's state, as a stand-in for a controller or a policy trained elsewhere whose inputs
the library does not have; `twostage_jax.envs.with_base.BaseActingEnv` attaches it to an env,
whose observations then carry its action (`Observation.tentative`). Stage 2 still sees only the
image and the pose.

The launcher names a base policy by a factory, `module:function` (`load_base_policy`):
`function(BaseContext) -> BasePolicy | SimBasePolicy`, called once in each process that acts.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import numpy as np

from twostage_jax import _checks
from twostage_jax.types import ACTION_DIM, Dataset, Workspace, validate_dataset

BasePolicy = Callable[[np.ndarray, np.ndarray], Any]
"""`base(image [B, H, W, 3] uint8, pose [B, 7] float32) -> action [B, 7] in [-1, 1]`."""


def base_policy_name(base: Any) -> str:
    """How errors name a base policy: its module-qualified `__qualname__`, an object by its
    class's ('a package.Class'), else its repr."""
    qualname = getattr(base, "__qualname__", None)
    if isinstance(qualname, str):
        module = getattr(base, "__module__", None)
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    kind = type(base)
    if type(kind).__repr__ is type.__repr__ and kind.__repr__ is object.__repr__:  # no repr of its own
        return f"a {kind.__module__}.{kind.__qualname__}"
    text = repr(base)
    return text if len(text) <= 120 else text[:117] + "..."


class BasePolicyError(ValueError):
    """A base policy of the user's raised, or returned actions it must not; the message names
    the base policy."""


def check_base_output(base: Any, output: Any, batch_size: int) -> np.ndarray:
    """A base policy's output as a [B, 7] float32 array, or a ValueError naming the base policy.

    Args:
      base: the base policy (only used to name it in errors).
      output: what it returned for a batch of `batch_size` observations.
      batch_size: B.

    Returns:
      [B, 7] float32 actions in [-1, 1].

    Raises:
      BasePolicyError: the output is not a numeric [B, 7] array, holds NaN or inf, or leaves [-1, 1].
    """
    name = base_policy_name(base)
    try:
        arr = np.asarray(output)
    except Exception as err:  # e.g. a ragged list, or an object np.asarray cannot read
        raise BasePolicyError(f"base policy {name} must return a [B, 7] array of actions in [-1, 1]; "
                         f"got {type(output).__name__}, which is not an array ({err}).") from err
    want = f"[{batch_size}, {ACTION_DIM}]"
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating)
                                 or np.issubdtype(arr.dtype, np.integer)):
        raise BasePolicyError(f"base policy {name} must return a numeric {want} array of actions in "
                         f"[-1, 1]; got {type(output).__name__} with dtype {arr.dtype} and shape "
                         f"{arr.shape}.")
    if arr.shape != (batch_size, ACTION_DIM):
        raise BasePolicyError(f"base policy {name} must return actions of shape {want} (one row of 7 = "
                         f"xyz, Euler xyz, gripper per observation); got shape {arr.shape}.")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0]).tolist()
        raise BasePolicyError(f"base policy {name} must return finite actions in [-1, 1]; got NaN or "
                         f"inf in row(s) {rows[:10]} of its {want} output.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1.0 or hi > 1.0:
        rows = np.unique(np.nonzero(np.abs(arr) > 1.0)[0]).tolist()
        raise BasePolicyError(f"base policy {name} must return actions in [-1, 1] (tanh space: position "
                         f"normalised by the workspace, Euler angles / pi, gripper); got values in "
                         f"[{lo:.4g}, {hi:.4g}] (row(s) {rows[:10]}).")
    return arr


def call_base_policy(base: BasePolicy, image: Any, pose: Any) -> np.ndarray:
    """Calls `base(image, pose)` on the host and checks what it returns.

    Args:
      base: the base policy.
      image: [B, H, W, 3] uint8 frames.
      pose: [B, 7] poses in the action form.

    Returns:
      [B, 7] float32 actions in [-1, 1].
    """
    if not callable(base):
        raise TypeError(f"`base` must be a callable base(image, pose) -> action; got "
                        f"{type(base).__name__}.")
    image = np.asarray(image)
    pose = np.asarray(pose, np.float32)
    try:
        output = base(image, pose)
    except Exception as err:  # the user's code: say whose it was, in one line
        raise BasePolicyError(f"base policy {base_policy_name(base)} raised {type(err).__name__}: {err}") from err
    return check_base_output(base, output, image.shape[0])


def base_policy_actions(base: BasePolicy, dataset: Dataset, batch_size: int = 64,
                        next_obs: bool = False) -> np.ndarray:
    """The base policy's actions on every transition of a dataset, in batches.

    Transition i is shown the image of frame `dataset.obs_index[i]` ([H, W, 3], or [V, H, W, 3]
    from V cameras: `Dataset.observed`) and the pose `dataset.pose[i]`; its target (for
    calibration) is `dataset.action[i]`. With `next_obs`,
    it is shown its next state instead (`next_obs_index[i]`, `next_pose[i]`).

    Args:
      base: the base policy.
      dataset: a valid `Dataset` (e.g. held-out demos).
      batch_size: observations per call (the last call may get fewer).
      next_obs: act at each transition's next state.

    Returns:
      [N, 7] float32 actions, row i for transition i.
    """
    _checks.check_positive_int("batch_size", batch_size)
    validate_dataset(dataset)
    index = np.asarray(dataset.next_obs_index if next_obs else dataset.obs_index)
    pose = np.asarray(dataset.next_pose if next_obs else dataset.pose, np.float32)
    out = [call_base_policy(base, dataset.observed(index[s:s + batch_size])[0], pose[s:s + batch_size])
           for s in range(0, index.shape[0], batch_size)]
    return np.concatenate(out, axis=0)


@runtime_checkable
class SimBasePolicy(Protocol):
    """A base policy that acts beside the simulator (see the module docstring).

    `reset(env, seed)` is called before each episode's `env.reset(seed)` (it may use the env
    freely then, e.g. to plan from the layout); `act(env, observation)` after each observation
    the agent gets, returning the [7] action in [-1, 1] it proposes there.
    """

    def reset(self, env: Any, seed: int) -> None: ...

    def act(self, env: Any, observation: Any) -> Any: ...


class BaseContext(NamedTuple):
    """What a base-policy factory is told (`load_base_policy`).

    Attributes:
      task: the task's name.
      env: the simulator ('metaworld', 'rlbench').
      workspace: the position bounds that normalise actions and poses.
    """

    task: str
    env: str
    workspace: Workspace


SOURCE_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
"""`module.path:function`: an importable module and a factory in it."""


def check_base_source(source: str) -> Callable[[BaseContext], Any]:
    """The factory a `module:function` source names, imported and checked (nothing is called).

    Raises:
      ValueError: naming `source` when it is not `module:function`, the module does not import,
        it has no such attribute, or the attribute is not callable.
    """
    if not isinstance(source, str) or not SOURCE_PATTERN.fullmatch(source):
        raise ValueError(f"base policy source must be 'module.path:function' (a factory "
                         f"function(BaseContext) -> base policy); got {source!r}.")
    module_name, attr = source.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the user's module raised on import
        raise ValueError(f"base policy source {source!r}: module {module_name!r} does not import "
                         f"({type(err).__name__}: {err}); is it on PYTHONPATH?") from err
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"base policy source {source!r}: module {module_name!r} has no attribute "
                         f"{attr!r}.")
    if not callable(factory):
        raise ValueError(f"base policy source {source!r}: {attr!r} is a {type(factory).__name__}, "
                         "not a factory function(BaseContext) -> base policy.")
    return factory


def load_base_policy(source: str, context: BaseContext) -> BasePolicy | SimBasePolicy:
    """Imports the factory `source` names and calls it with `context`.

    Args:
      source: 'module.path:function'.
      context: the task, simulator and workspace.

    Returns:
      A `BasePolicy` (a callable base(image, pose)) or a `SimBasePolicy`.

    Raises:
      ValueError: naming `source`, as `check_base_source` does, or when the factory fails or
        returns neither kind of base policy.
    """
    factory = check_base_source(source)
    try:
        base = factory(context)
    except Exception as err:
        raise ValueError(f"base policy source {source!r}: the factory raised "
                         f"{type(err).__name__}: {err}") from err
    if not (isinstance(base, SimBasePolicy) or callable(base)):
        raise ValueError(f"base policy source {source!r}: the factory returned a "
                         f"{type(base).__name__}; expected a callable base(image, pose) -> [B, 7] "
                         "or an object with reset(env, seed) and act(env, observation) "
                         "(a SimBasePolicy).")
    return base


def check_sim_base_action(base: Any, action: Any) -> np.ndarray:
    """A `SimBasePolicy`'s action as a [7] float32 array, checked as `check_base_output`
    checks a batch (the error names the base policy)."""
    shape = np.shape(action) if not isinstance(action, (str, bytes)) else None
    if shape != (ACTION_DIM,):
        raise BasePolicyError(f"base policy {base_policy_name(base)} must return one action of shape "
                         f"[{ACTION_DIM}] (xyz, Euler xyz, gripper) from act(env, observation); got "
                         f"{type(action).__name__} of shape {shape}.")
    return check_base_output(base, np.asarray(action)[None], 1)[0]
