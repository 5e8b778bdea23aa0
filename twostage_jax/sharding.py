"""Seeds across devices and hosts, with JAX's own sharding (a `Mesh` axis named 'seeds').

Every state leaf carries a leading seed axis [S, ...]. On a 1-D mesh with axis `SEED_AXIS`,
that axis is sharded (`NamedSharding(mesh, P('seeds'))`), the dataset is replicated
(`P()`), and `shard_map` runs each device's block of seeds with no communication: each
device trains its own seeds (octo's data-parallel pattern, applied to seeds; the JAX guide
"Distributed arrays and automatic parallelization", docs.jax.dev/en/latest/sharding.html,
and `jax.shard_map`, docs.jax.dev/en/latest/notebooks/shard_map.html).

Seed counts that do not divide the device count are padded and dropped: the last seed is
repeated up to the next multiple of the device count, trained with the others, and cut off
before results are returned, so every device holds the same number of seeds. Results of the
real seeds do not depend on the padding (each seed's computation is independent). Only then
is the returned state not seed-sharded (XLA lays out the [S] slice as it likes).

Several hosts (multi-controller JAX): every process runs the same program on the global
mesh of all processes' devices (`jax.distributed.initialize`, see
docs.jax.dev/en/latest/multi_process.html); inputs are built identically on every process and
turned into global arrays (`jax.make_array_from_callback`), each process computes the seeds
on its own devices, and `to_host` gathers results (`multihost_utils.process_allgather`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from twostage_jax._checks import ConfigError

SEED_AXIS = "seeds"

RunFn = Callable[[Any, Any], tuple[Any, Any]]


def parse_seed_devices(value: Any) -> int | None:
    """'all' -> None (every device); a positive int (or its string) -> that int.

    Raises:
      ValueError: anything else, naming `seed_devices`.
    """
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if isinstance(value, bool) or n <= 0 or str(n) != str(value).strip():
        raise ConfigError("", "seed_devices", f"must be 'all' or a positive int (devices to shard seeds "
                         f"over); got {value!r}.")
    return n


def seed_mesh(devices: int | str | Sequence[jax.Device] | None = "all") -> Mesh | None:
    """A 1-D mesh with axis 'seeds' over the chosen devices, or None for a single device.

    Args:
      devices: 'all' (every device, of every process after `jax.distributed.initialize`),
        a count N (the first N devices; a single process only), or explicit devices.

    Returns:
      The mesh, or None when it would hold one device (the unsharded path: today's
      behaviour on one device).

    Raises:
      ValueError: a count above the device count, or a count with several processes.
    """
    if isinstance(devices, (str, int, np.integer)) or devices is None:
        n = parse_seed_devices("all" if devices is None else devices)
        available = jax.devices()
        if n is None:
            chosen = available
        elif n > len(available):
            raise ValueError(f"seed_devices={n} exceeds the {len(available)} "
                             f"{jax.default_backend()} device(s) available.")
        elif jax.process_count() > 1 and n != len(available):
            raise ValueError(f"seed_devices={n}: with {jax.process_count()} processes, seeds shard "
                             f"over all {len(available)} devices; use 'all'.")
        else:
            chosen = available[:n]
    else:
        chosen = list(devices)
    if len(chosen) <= 1:
        return None
    return Mesh(np.asarray(chosen), (SEED_AXIS,),
                axis_types=(jax.sharding.AxisType.Auto,))


def check_seed_mesh(mesh: Mesh) -> None:
    """Raises ValueError unless `mesh` is a `Mesh` with an axis named 'seeds'."""
    if not isinstance(mesh, Mesh) or SEED_AXIS not in mesh.axis_names:
        raise ValueError(f"`mesh` must be a jax.sharding.Mesh with an axis named {SEED_AXIS!r}; got "
                         f"{getattr(mesh, 'axis_names', type(mesh).__name__)!r}.")


def num_seed_shards(mesh: Mesh) -> int:
    """Devices along the 'seeds' axis."""
    return int(mesh.shape[SEED_AXIS])


def padded_count(num_seeds: int, mesh: Mesh) -> int:
    """`num_seeds` rounded up to a multiple of the devices along 'seeds'."""
    d = num_seed_shards(mesh)
    return -(-int(num_seeds) // d) * d


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis over 'seeds', the rest replicated."""
    return NamedSharding(mesh, P(SEED_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def _global(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1 or isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)
    # Several processes: every process holds the same host values; each supplies its shards.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of `tree` replicated on every device of `mesh` (global arrays).

    With several processes each must pass the same values (e.g. the same dataset file).
    """
    return jax.tree_util.tree_map(lambda x: _global(x, replicated(mesh)), tree)


def state_sharding(num_seeds: int, mesh: Mesh) -> NamedSharding:
    """How a [num_seeds, ...] state is laid out: seed-sharded if the count divides, else
    replicated (a padded run's kept seeds)."""
    return seed_sharding(mesh) if num_seeds % num_seed_shards(mesh) == 0 else replicated(mesh)


def abstract_state(like: Any, mesh: Mesh | None) -> Any:
    """`jax.ShapeDtypeStruct`s of `like` ([S, ...] leaves) placed on `mesh` (or on this
    process's first device for None): the target of a checkpoint restore, so a state saved
    on any number of devices is read back onto the devices of this run."""
    if mesh is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    else:
        sharding = state_sharding(int(jax.tree_util.tree_leaves(like)[0].shape[0]), mesh)
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                  like)


def _pad(tree: Any, num: int) -> Any:
    """Repeats the last entry of every leaf's leading axis until it has `num` entries."""
    def pad(x):
        extra = num - x.shape[0]
        return x if extra == 0 else jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])
    return jax.tree_util.tree_map(pad, tree)


def shard_seeds(run_one: RunFn, mesh: Mesh, strategy: str = "vmap") -> RunFn:
    """Turns a per-seed `run(state, data) -> (state, metrics)` into one jitted program over
    states with a leading seed axis sharded on `mesh`.

    Each device runs its block of seeds: vmapped ('vmap') or one after another with
    `lax.map` ('sequential'), with no communication between devices. The dataset is
    replicated. Seed counts are padded to a multiple of the devices and the padding dropped
    (see the module docstring); one program is compiled per seed count.

    Args:
      run_one: pure function of one seed's state and the (replicated) data.
      mesh: a mesh with an axis named 'seeds'.
      strategy: 'vmap' or 'sequential', within each device.

    Returns:
      run(states [S, ...], data) -> (states [S, ...], metrics [S, ...]). With S a multiple
      of the seed devices, both outputs are sharded over 'seeds'.
    """
    check_seed_mesh(mesh)
    if strategy not in ("vmap", "sequential"):
        raise ValueError(f"`strategy` must be 'vmap' or 'sequential' within a device; got {strategy!r}.")

    def local(states: Any, data: Any) -> tuple[Any, Any]:
        if strategy == "vmap":
            return jax.vmap(run_one, in_axes=(0, None))(states, data)
        return jax.lax.map(lambda s: run_one(s, data), states)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(SEED_AXIS), P()), out_specs=P(SEED_AXIS))
    cache: dict[int, Callable] = {}

    def run(states: Any, data: Any) -> tuple[Any, Any]:
        num = int(jax.tree_util.tree_leaves(states)[0].shape[0])
        if num not in cache:
            total = padded_count(num, mesh)

            def program(states_: Any, data_: Any) -> tuple[Any, Any]:
                out = mapped(_pad(states_, total), data_)
                return jax.tree_util.tree_map(lambda x: x[:num], out)

            cache[num] = jax.jit(program, out_shardings=state_sharding(num, mesh))
        return cache[num](states, data)

    return run


def init_seeds(init_one: Callable[[jax.Array], Any], keys: jax.Array, mesh: Mesh) -> Any:
    """`vmap(init_one)(keys)` with the result laid out by `state_sharding` on `mesh`.

    Args:
      init_one: key -> one seed's state.
      keys: [S, 2] raw (or [S] typed) keys, identical on every process.
    """
    keys = put_replicated(keys, mesh)
    num = int(keys.shape[0])
    return jax.jit(jax.vmap(init_one), out_shardings=state_sharding(num, mesh))(keys)


def to_host(tree: Any) -> Any:
    """numpy copies of every leaf; gathers from every process when a leaf spans several
    (a collective: with several processes, all of them must call it)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int,
                           check_only: bool = False) -> None:
    """`jax.distributed.initialize` for one process of several, with CPU collectives (gloo)
    so that the CPU backend can run programs spanning processes.

    Call before any other JAX work. The values are checked first, naming the flag.

    Args:
      coordinator_address: 'host:port' of process 0.
      num_processes: total processes (>= 1).
      process_id: this process, in [0, num_processes).
      check_only: only check the values.
    """
    if not coordinator_address or ":" not in coordinator_address:
        raise ValueError(f"--coordinator_address must be 'host:port' of process 0; got "
                         f"{coordinator_address!r}.")
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"--num_processes must be a positive int; got {num_processes!r}.")
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id must lie in [0, {num_processes}); got {process_id!r}.")
    if check_only:
        return
    # The CPU client needs a collectives implementation for cross-process programs
    # (jax config `jax_cpu_collectives_implementation`: 'gloo' or 'mpi'); GPU/TPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
