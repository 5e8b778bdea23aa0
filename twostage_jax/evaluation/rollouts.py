"""Rollouts of trained policies: one episode in this process, or many in a pool of simulators.

Rollouts talk to a simulator only through the `twostage_jax.envs.Env` protocol, so MetaWorld
and RLBench go through the same code. `rollout` runs one episode in the calling process;
`EnvPool` runs many episodes in worker processes (one simulator each) and batches the policy
over the workers that wait for an action, in one call.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from twostage_jax.base_policy import BasePolicyError
from twostage_jax.types import Camera


class Episode(NamedTuple):
    """One rollout.

    Attributes:
      success: whether the task was solved.
      num_steps: keyframe actions taken.
      frames: [T, H, W, 3] uint8 observed images (empty unless recorded).
      tentative: [T, 7] tentative actions a^1 (empty unless recorded).
      actions: [T, 7] executed actions (empty unless recorded).
      clipped: keyframe actions the env had to clip.
      choices: [T] int32 the policy's `choice` at each step (`make_policy`'s `critic_samples`),
        or empty when it makes none.
    """

    success: bool
    num_steps: int
    frames: np.ndarray
    tentative: np.ndarray
    actions: np.ndarray
    clipped: int
    choices: np.ndarray = np.zeros((0,), np.int32)


def rollout(env: Any, act: Callable[[np.ndarray, np.ndarray, Any], Any], seed: int,
            record: bool = False) -> Episode:
    """Runs one episode of `act` in `env` from layout `seed`.

    Args:
      env: an `Env` (MetaWorld, RLBench, ...).
      act: (image [1, H, W, 3] uint8, pose [1, 7], camera) -> `PolicyOutput` with [1, 7] fields;
        called with `tentative=` [1, 7] too when the env's observations carry a base policy's
        action (`Observation.tentative`).
      seed: the layout seed passed to `env.reset`.
      record: keep images and actions for visualisation.

    Returns:
      The `Episode`.
    """
    obs = env.reset(seed)
    frames, tentative, actions, choices = [], [], [], []
    success, steps, clipped = False, 0, 0
    done = False
    while not done:
        extra = {} if obs.tentative is None else {"tentative": np.asarray(obs.tentative)[None]}
        out = act(obs.image[None], np.asarray(obs.pose, np.float32)[None], obs.camera, **extra)
        action = np.asarray(jax.device_get(out.action))[0]
        if getattr(out, "choice", None) is not None:
            choices.append(int(np.asarray(out.choice)[0]))
        if record:
            frames.append(obs.image)
            tentative.append(np.asarray(out.tentative)[0])
            actions.append(action)
        obs, reward, done, info = env.step(action)
        steps += 1
        clipped += int(bool(info.get("clipped", False)))
        success = success or reward > 0
    if record:
        frames.append(obs.image)
    empty = np.zeros((0, 7), np.float32)
    return Episode(
        success=bool(success), num_steps=steps,
        frames=np.stack(frames) if frames else np.zeros((0,), np.uint8),
        tentative=np.stack(tentative) if tentative else empty,
        actions=np.stack(actions) if actions else empty,
        clipped=clipped, choices=np.asarray(choices, np.int32),
    )


def success_rate(episodes: Sequence[Episode]) -> float:
    """Fraction of successful episodes."""
    if not episodes:
        raise ValueError("`episodes` is empty; evaluate at least one episode.")
    return float(np.mean([e.success for e in episodes]))


ActFn = Callable[..., Any]
"""(images [B, H, W, 3] uint8, poses [B, 7] float32, camera) -> an object with [B, 7] fields
`action` and `tentative` (e.g. `twostage_jax.policy.PolicyOutput`); rows are independent. When
the env's observations carry a base policy's actions (`Observation.tentative`), it is also
given `tentative=` [B, 7]."""


class Job(NamedTuple):
    """One episode for `EnvPool.run`.

    Attributes:
      act: the batched policy (`ActFn`). Jobs that share one `act` object are batched together.
      seed: the layout seed passed to `env.reset`, a non-negative int.
      record: keep images and actions (as in `rollout`).
    """

    act: ActFn
    seed: int
    record: bool = False


def default_workers() -> int:
    """The number of CPU cores this process may run on (the default number of eval workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_main(conn: Connection, env_fn: Callable[[], Any]) -> None:
    """A worker process: builds its env, then answers ('reset', seed) / ('step', action) with
    ('obs', image, pose, reward, done, clipped, tentative, camera) until ('close', None) or a
    closed pipe (the camera of each observation: a moving camera's pose changes)."""
    # The env's few eager jnp ops need neither an accelerator (a GPU backend would preallocate
    # memory in every worker) nor a thread pool (XLA's would spin beside the simulators). Both
    # settings act before the first jnp op initialises a backend in this process.
    jax.config.update("jax_platforms", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    try:
        env = env_fn()
        conn.send(("ready", jax.tree_util.tree_map(np.asarray, env.camera)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc(), _one_line(err)))
        return
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                break
            if cmd == "reset":
                obs, reward, done, clipped = env.reset(arg), 0.0, False, False
            else:
                obs, reward, done, info = env.step(arg)
                clipped = bool(info.get("clipped", False))
            conn.send(("obs", obs.image, np.asarray(obs.pose, np.float32), float(reward),
                       bool(done), clipped, obs.tentative, jax.tree_util.tree_map(np.asarray, obs.camera)))
    except (EOFError, KeyboardInterrupt):  # the parent went away or was interrupted
        pass
    except BaseException as err:  # noqa: BLE001
        try:
            conn.send(("error", traceback.format_exc(), _one_line(err)))
        except OSError:
            pass
    finally:
        env.close()


def _one_line(err: BaseException) -> BasePolicyError | None:
    """A worker's error the parent re-raises as it is (a base policy's, which names it), or None
    for any other, which the parent reports with the worker's traceback."""
    return BasePolicyError(str(err)) if isinstance(err, BasePolicyError) else None


class _Running:
    """Book-keeping of the episode one worker is running (mirrors `rollout`'s locals)."""

    def __init__(self, index: int, job: Job) -> None:
        self.index, self.job = index, job
        self.image: np.ndarray | None = None
        self.pose: np.ndarray | None = None
        self.base_action: np.ndarray | None = None
        self.camera: Any = None
        self.frames: list[np.ndarray] = []
        self.tentative: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.choices: list[int] = []
        self.steps = self.clipped = 0
        self.success = False

    def episode(self) -> Episode:
        empty = np.zeros((0, 7), np.float32)
        return Episode(
            success=bool(self.success), num_steps=self.steps,
            frames=np.stack(self.frames) if self.frames else np.zeros((0,), np.uint8),
            tentative=np.stack(self.tentative) if self.tentative else empty,
            actions=np.stack(self.actions) if self.actions else empty,
            clipped=self.clipped, choices=np.asarray(self.choices, np.int32))


def _batch_camera(cameras: list[Any]) -> Any:
    """The rows' cameras as act takes them: the first when every row's is the same (fixed
    cameras), else one per row (intrinsics [B, ...]: a moving camera differs between episodes)."""
    first = cameras[0]
    if all(np.array_equal(c.intrinsics, first.intrinsics) and np.array_equal(c.cam_to_world, first.cam_to_world)
           for c in cameras[1:]):
        return first
    return Camera(intrinsics=np.stack([c.intrinsics for c in cameras]),
                  cam_to_world=np.stack([c.cam_to_world for c in cameras]),
                  width=first.width, height=first.height)


# Hand-written: no stdlib or gymnasium pool keeps a simulator per worker and batches the policy across them.
class EnvPool:
    """Runs evaluation episodes on `workers` simulators.

    workers == 1 is the sequential path: one env in this process and `rollout` per job.
    workers > 1 starts one worker process per simulator with multiprocessing's 'spawn' context
    (JAX is not fork-safe); each builds its own env with `env_fn` while this process goes on
    (e.g. compiling the policy). This process keeps the policy: whenever workers wait for an
    action, their observations are stacked and each policy among them is called once, on a batch
    padded (with copies of its first row) to the next power of two up to `workers`, so a policy
    compiles for few shapes. Episodes are bitwise those of the sequential path (same layout
    seeds, same actions, same success; tested) when a row's action does not depend on the batch
    size, as with `make_policy(..., row_by_row=True)`. With a plainly batched policy, XLA's
    batched kernels round differently from batch 1 (~1e-7 in the actions), so an episode whose
    outcome hinges on that rounding can differ. Workers run JAX on the CPU only (the env's few
    eager ops); on a GPU machine the in-process path (workers=1) runs those ops on the GPU,
    which may round differently.

    Args:
      env_fn: a picklable zero-argument callable returning an `Env`, e.g.
        `functools.partial(twostage_jax.envs.make_env, "reach-v3")`; called once per worker.
      workers: the number of simulators, a positive int.

    Use as a context manager (or call `close`): it stops the workers.
    """

    def __init__(self, env_fn: Callable[[], Any], workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"`workers` must be a positive int; got {workers!r}.")
        if not callable(env_fn):
            raise TypeError(f"`env_fn` must be a callable returning an Env; got {env_fn!r}.")
        self.workers = int(workers)
        self._env: Any = None
        self._camera: Any = None
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._ready: list[bool] = []
        if self.workers == 1:
            self._env = env_fn()
            self._camera = self._env.camera
            return
        ctx = mp.get_context("spawn")
        try:
            for _ in range(self.workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, args=(child, env_fn), daemon=True)
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
                self._ready.append(False)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (empty with workers=1)."""
        return [p.pid for p in self._procs]

    @property
    def camera(self) -> Any:
        """The env's `Camera` (waits for the workers' envs to be built)."""
        self._wait_ready()
        return self._camera

    def _recv(self, w: int, what: str) -> tuple:
        try:
            msg = self._conns[w].recv()
        except (EOFError, OSError) as e:
            self._procs[w].join(timeout=5)
            raise RuntimeError(f"evaluation worker {w} died (exit code {self._procs[w].exitcode}) "
                               f"while {what}.") from e
        if msg[0] == "error":
            if msg[2] is not None:  # a base policy of the user's failed: its own one-line error
                raise msg[2]
            raise RuntimeError(f"evaluation worker {w} failed while {what}:\n{msg[1]}")
        return msg

    def _wait_ready(self) -> None:
        for w, ready in enumerate(self._ready):
            if not ready:
                self._camera = self._recv(w, "building its env")[1]
                self._ready[w] = True

    def run(self, jobs: Sequence[Job], on_episode: Callable[[int, Episode], None] | None = None
            ) -> list[Episode]:
        """Runs every job's episode; returns the `Episode`s in the order of `jobs`.

        Args:
          jobs: the episodes to run.
          on_episode: called as on_episode(job_index, episode) when an episode ends (in the
            order episodes end, which with several workers is not the order of `jobs`).

        Returns:
          One `Episode` per job, as `rollout(env, job.act, job.seed, job.record)` returns it.
        """
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            if not isinstance(job, Job):
                raise TypeError(f"`jobs[{i}]` must be an evaluation.Job; got {type(job).__name__}.")
            if isinstance(job.seed, bool) or not isinstance(job.seed, (int, np.integer)) or job.seed < 0:
                raise ValueError(f"`jobs[{i}].seed` must be a non-negative int; got {job.seed!r}.")
        if self._env is None and not self._procs:
            raise RuntimeError("this EnvPool is closed.")
        if self.workers == 1:
            out = []
            for i, job in enumerate(jobs):
                out.append(rollout(self._env, job.act, int(job.seed), job.record))
                if on_episode is not None:
                    on_episode(i, out[-1])
            return out
        try:
            return self._run_parallel(jobs, on_episode)
        except BaseException:
            self.close()  # workers are mid-episode: the pool cannot be reused
            raise

    def _run_parallel(self, jobs: list[Job], on_episode: Callable[[int, Episode], None] | None
                      ) -> list[Episode]:
        self._wait_ready()
        results: list[Episode | None] = [None] * len(jobs)
        running: dict[int, _Running] = {}
        queue = iter(enumerate(jobs))

        def start(w: int) -> None:
            nxt = next(queue, None)
            if nxt is not None:
                running[w] = _Running(*nxt)
                self._conns[w].send(("reset", int(nxt[1].seed)))

        for w in range(self.workers):
            start(w)
        while running:
            waiting: list[int] = []
            for conn in wait([self._conns[w] for w in running]):
                w = self._conns.index(conn)
                r = running[w]
                stepped = r.image is not None
                _, image, pose, reward, done, clipped, base_action, camera = self._recv(
                    w, f"running layout seed {r.job.seed}")
                if stepped:
                    r.steps += 1
                    r.clipped += int(clipped)
                    r.success = r.success or reward > 0
                if done:
                    if r.job.record:
                        r.frames.append(image)
                    results[r.index] = r.episode()
                    del running[w]
                    if on_episode is not None:
                        on_episode(r.index, results[r.index])
                    start(w)
                else:
                    r.image, r.pose, r.base_action, r.camera = image, pose, base_action, camera
                    waiting.append(w)
            groups: dict[int, list[int]] = {}
            for w in waiting:
                groups.setdefault(id(running[w].job.act), []).append(w)
            for ws in groups.values():
                self._act(ws, running)
        return results  # type: ignore[return-value]

    def _act(self, ws: list[int], running: dict[int, _Running]) -> None:
        """One policy call for the waiting workers `ws` (same act), padded to a power of two."""
        rows = [running[w] for w in ws]
        size = min(self.workers, 1 << (len(rows) - 1).bit_length())  # few shapes, few compiles
        pad = [rows[0]] * (size - len(rows))
        images = np.stack([r.image for r in rows + pad])
        poses = np.stack([r.pose for r in rows + pad])
        extra = {}
        if rows[0].base_action is not None:
            extra["tentative"] = np.stack([r.base_action for r in rows + pad]).astype(np.float32)
        out = rows[0].job.act(images, poses, _batch_camera([r.camera for r in rows + pad]), **extra)
        actions = np.asarray(jax.device_get(out.action))
        tentative = np.asarray(out.tentative) if any(r.job.record for r in rows) else None
        choice = None if getattr(out, "choice", None) is None else np.asarray(out.choice)
        for i, (w, r) in enumerate(zip(ws, rows)):
            if choice is not None:
                r.choices.append(int(choice[i]))
            if r.job.record:
                r.frames.append(r.image)
                r.tentative.append(tentative[i])
                r.actions.append(actions[i])
            self._conns[w].send(("step", actions[i]))

    def close(self) -> None:
        """Closes the env(s) and stops the workers (idempotent)."""
        if self._env is not None:
            self._env.close()
            self._env = None
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._ready = [], [], []
