"""Orbax checkpoints of the training state and its config.

A checkpoint directory holds one orbax step directory per saved step, each with two items:
`state` (the `AgentState` pytree, with a leading seed axis when seeds are vmapped; sharded
states are saved by every process holding a shard, see `Checkpointer.restore`) and `meta`
(JSON: step, config, and for stage 2 the stage-1 checkpoint it pairs with). Orbax writes each
step to a temporary directory and renames it when complete, so a run killed mid-save leaves
the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from twostage_jax._io import json_default


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the expected state."""


def _brief(e: BaseException) -> str:
    """One line naming an exception: its type and the start of its first line."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


class Checkpointer:
    """Saves every `every` steps, keeps the last `keep` (and any of `keep_steps`), and restores
    the latest.

    Args:
      directory: checkpoint directory (created if missing).
      keep: number of most recent checkpoints to keep.
      keep_steps: steps whose checkpoints are never deleted (e.g. those evaluated for learning
        curves), on top of the latest `keep`.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, keep_steps: tuple[int, ...] = ()):
        if keep <= 0:
            raise ValueError(f"`keep` must be a positive int; got {keep!r}.")
        self.directory = Path(directory).absolute()
        self.keep_steps = tuple(int(s) for s in keep_steps)
        if keep_steps:
            from orbax.checkpoint import checkpoint_managers as cm

            policy = cm.AnyPreservationPolicy([cm.LatestN(n=keep),
                                               cm.CustomSteps([int(s) for s in keep_steps])])
            options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                                   enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                   enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete step, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves `state` and JSON `meta` at `step` (blocking; atomic per step)."""
        meta = json.loads(json.dumps({**meta, "step": int(step)}, default=json_default))
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores (state, meta) at `step` (default: latest) into the structure of `like`.

        Arrays are placed as `like` says: a leaf with a sharding (e.g. from
        `twostage_jax.sharding.abstract_state(like, mesh)`: seeds sharded over a mesh) is read
        onto those devices, one without onto this process's first device. The layout the
        checkpoint was saved with is never used, so a state saved on N devices restores onto
        any other number (orbax reads each device's slice of the stored array).

        Args:
          like: a state pytree with the expected structure, shapes and dtypes (e.g. a freshly
            initialised state, or `jax.eval_shape` of one); its structure and shardings are used.
          step: the step to restore, default the latest.

        Raises:
          CheckpointError: no checkpoint, or it cannot be read or does not match `like`.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}.")
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                           sharding=getattr(x, "sharding", None) or here), like)
        try:
            out = self._manager.restore(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for damaged or mismatched files
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} could not be restored "
                f"({_brief(e)}). It is damaged or was written by a different configuration.") from e
        return out["state"], dict(out["meta"])

    def verify(self, step: int) -> None:
        """Reads every array and the metadata of `step`, whatever the config that wrote them.

        Raises:
          CheckpointError: a file of the step is missing or unreadable.
        """
        try:
            out = self._manager.restore(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
            jax.block_until_ready(out["state"])
        except Exception as e:  # orbax raises many types for damaged files
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is damaged "
                                  f"({_brief(e)}).") from e

    def set_aside(self, step: int, folder: str | os.PathLike) -> Path:
        """Moves step `step` out of the checkpoint directory into `folder`, keeping its files.

        Returns:
          Where the step now lies (`folder/STEP`, or `folder/STEP-N` if that exists).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dest, n = folder / str(step), 1
        while dest.exists():
            dest, n = folder / f"{step}-{n}", n + 1
        os.replace(self.directory / str(step), dest)
        self._manager.reload()
        return dest

    def read_meta(self, step: int | None = None) -> dict:
        """Reads only the JSON metadata of `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}.")
        path = self.directory / str(step) / "meta" / "metadata"
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint metadata {path} is unreadable ({e}).") from e

    def close(self) -> None:
        self._manager.close()
