"""Argument validation that names the argument, what was expected and what was received.

Shape, rank and dtype checks run at trace time, so they work under `jit`; the core ops (crop,
composition, transform, losses, updates) use only these, so eager and jitted calls raise the
same errors. Value checks (for example "every action component lies in [-1, 1]") need concrete
values and a device-to-host copy: only the boundaries call them (`validate_dataset` via
`prepare_data`, `make_policy`'s act, the launcher), on data that arrives from the host. One
exception, `check_image_values`, runs in the networks' `init`/`encode` but reads values only
when they are concrete (eager calls); under jit it checks nothing and costs nothing.
"""

# Not chex: its asserts raise AssertionErrors naming no argument; these name the argument, expected and got.

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ConfigError(ValueError):
    """A config field with a bad value, carrying the field's name.

    Args:
      owner: the config class ("TrainConfig"), or "" for a plain argument.
      field: the field's name ("min_move").
      message: what was expected and what was received ("must be >= 0 metres; got -1.").

    `str(e)` reads "TrainConfig.min_move must be >= 0 metres; got -1." (or "`field` ..."); a
    caller that nests the config (the launcher) names the field by its own path from `field`
    and `message`, without parsing the text.
    """

    def __init__(self, owner: str, field: str, message: str) -> None:
        self.owner, self.field, self.message = owner, field, message
        name = f"{owner}.{field}" if owner else f"`{field}`"
        super().__init__(f"{name}{'' if message[:1] in '=[' else ' '}{message}")

    def __reduce__(self):  # picklable across processes (its args are not the message)
        return type(self), (self.owner, self.field, self.message)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _describe(x: Any) -> str:
    dtype = getattr(x, "dtype", type(x).__name__)
    return f"shape {_shape(x)} and dtype {dtype}"


def is_concrete(x: Any) -> bool:
    """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_rank(name: str, x: Any, rank: int | Sequence[int]) -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if np.ndim(x) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"`{name}` must have rank {want}; got {_describe(x)}.")


def check_shape(name: str, x: Any, shape: Sequence[int | None], what: str = "") -> None:
    """Checks `x.shape` against `shape`, where None matches any size.

    A leading `...` is not supported; pass the exact rank.
    """
    got = _shape(x)
    ok = len(got) == len(shape) and all(w is None or w == g for w, g in zip(shape, got))
    if not ok:
        pattern = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        extra = f" ({what})" if what else ""
        raise ValueError(f"`{name}` must have shape {pattern}{extra}; got {_describe(x)}.")


def check_trailing(name: str, x: Any, trailing: Sequence[int], what: str = "") -> None:
    """Checks that the last dimensions of `x` equal `trailing` (any leading dims)."""
    got = _shape(x)
    n = len(trailing)
    if len(got) < n or tuple(got[len(got) - n :]) != tuple(trailing):
        pattern = "[..., " + ", ".join(str(s) for s in trailing) + "]"
        extra = f" ({what})" if what else ""
        raise ValueError(f"`{name}` must have shape {pattern}{extra}; got {_describe(x)}.")


def check_floating(name: str, x: Any) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got {_describe(x)}.")


def check_numeric(name: str, x: Any) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must be a numeric (integer or float) array; got {_describe(x)}.")


def check_range(name: str, x: Any, low: float, high: float, what: str = "") -> None:
    """Checks low <= x <= high (and finiteness) when `x` is concrete."""
    if not is_concrete(x):
        return
    arr = np.asarray(x)
    if arr.size == 0:
        return
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite; got NaN or inf in an array of shape {arr.shape}.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < low or hi > high:
        extra = f" ({what})" if what else ""
        raise ValueError(
            f"`{name}` must lie in [{low}, {high}]{extra}; got values in [{lo:.4g}, {hi:.4g}]."
        )


def check_image(name: str, x: Any, what: str = "") -> None:
    """An image array must be uint8 (0..255) or floating point (0..1); other dtypes are ambiguous."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not (dtype == jnp.uint8 or jnp.issubdtype(dtype, jnp.floating)):
        extra = f" {what}" if what else ""
        raise TypeError(f"`{name}` must be uint8 (0..255) or floating point (0..1){extra}; got "
                        f"{_describe(x)}. Convert integer frames with .astype(np.uint8).")


IMAGE_VALUE_TOLERANCE = 1e-3
"""Slack above 1 (and below 0) allowed in float images: bilinear crops of 255 round to ~1 + 1e-7."""


def check_image_values(name: str, x: Any) -> None:
    """A floating-point image must be finite and in [0, 1]; checked only when `x` is concrete.

    uint8 images are not read (their dtype fixes the scale). Floats in 0..255 are the mistake
    this catches: the networks would read them as 255x brighter frames. Under jit/vmap/grad `x`
    is a tracer and nothing is checked (a check there would need a host copy every step).
    """
    if not is_concrete(x) or getattr(x, "dtype", None) == jnp.uint8:
        return
    arr = np.asarray(x)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
        return
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite; got NaN or inf in an image of shape {arr.shape}.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -IMAGE_VALUE_TOLERANCE or hi > 1.0 + IMAGE_VALUE_TOLERANCE:
        raise ValueError(f"`{name}` is floating point, so it must lie in [0, 1] (uint8 images hold "
                         f"0..255); got values in [{lo:.4g}, {hi:.4g}]. Divide 0..255 frames by 255, "
                         "or pass them as uint8.")


def check_broadcastable(name_a: str, a: Any, name_b: str, b: Any, what: str = "") -> None:
    """Checks that `a` and `b` have shapes that broadcast together (trace time)."""
    try:
        np.broadcast_shapes(_shape(a), _shape(b))
    except ValueError:
        extra = f" ({what})" if what else ""
        raise ValueError(f"`{name_a}` and `{name_b}` must have the same shape, or shapes that "
                         f"broadcast{extra}; got `{name_a}` shape {_shape(a)} and `{name_b}` shape "
                         f"{_shape(b)}.") from None


def check_positive_int(name: str, x: Any) -> None:
    if not isinstance(x, (int, np.integer)) or isinstance(x, bool) or x <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {x!r}.")


def check_fields(name: str, obj: Any, fields: Sequence[str]) -> None:
    """Checks that a NamedTuple/dataclass/mapping `obj` has every field in `fields`, not None."""
    missing = []
    for f in fields:
        if isinstance(obj, Mapping):
            present = f in obj and obj[f] is not None
        else:
            present = getattr(obj, f, None) is not None
        if not present:
            missing.append(f)
    if missing:
        have = sorted(obj.keys()) if isinstance(obj, Mapping) else [
            f for f in getattr(obj, "_fields", dir(obj)) if not f.startswith("_")
        ]
        raise ValueError(
            f"`{name}` is missing required field(s) {missing} (absent or None); expected fields "
            f"{list(fields)} set, got fields {have}."
        )


def check_key(name: str, key: Any) -> None:
    """One PRNG key: a raw uint32 [2] (jax.random.PRNGKey) or a typed key of shape [] (jax.random.key)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        check_rank(name, key, 0)
        return
    check_shape(name, key, (2,), "one raw PRNG key, e.g. jax.random.PRNGKey(0)")
    if dtype != jnp.uint32:
        raise TypeError(f"`{name}` must be a PRNG key (uint32 [2] from jax.random.PRNGKey, or a typed "
                        f"key from jax.random.key); got dtype {dtype}.")


def available_memory(device: bool = True) -> tuple[int, str] | None:
    """(bytes, 'GPU device' / 'host') free on the first local device: the device's limit less
    what is in use where it reports them, else the host's MemAvailable; None if unknown.

    Args:
      device: ask the device; False reads the host's alone, without starting JAX's backend
        (which must wait for `jax.distributed.initialize` in a multi-process run).
    """
    stats = None
    if device:
        try:
            stats = jax.local_devices()[0].memory_stats()
        except Exception:  # not every backend implements it
            stats = None
    if stats and "bytes_limit" in stats:
        return (int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)),
                f"{jax.local_devices()[0].platform.upper()} device")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "host"
    except OSError:
        pass
    return None


def human_bytes(n: float) -> str:
    """A byte count as KiB, MiB, GiB or TiB, for messages."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if unit != "MiB" else f"{n / size:.0f} MiB"
    return f"{n / 2**10:.0f} KiB"


def check_fits(name: str, nbytes: float, what: str) -> None:
    """Refuses, naming `name`, an allocation of at least `nbytes` that the machine cannot hold
    (`available_memory`); nothing is refused where the free memory is unknown.

    Args:
      name: the argument or field that sets the size ("size", "config.eval.num_episodes").
      nbytes: a lower bound of the bytes it would take.
      what: what they hold, for the message ("the (S, S, 3) float32 crop").
    """
    found = available_memory()
    if found is not None and nbytes > found[0]:
        raise ValueError(f"`{name}` asks for at least {human_bytes(nbytes)} ({what}), but "
                         f"{human_bytes(found[0])} of {found[1]} memory is available.")


def check_names(field: str, names: Any, valid: Sequence[str], what: str = "camera names") -> tuple[str, ...]:
    """`names` as a tuple of distinct entries of `valid`, or a ValueError naming `field`, what is
    wrong and the valid names (e.g. a simulator's cameras).

    Args:
      field: how the message names the argument or config field.
      names: a non-empty tuple or list of names.
      valid: the names allowed.
      what: what the names are, for the message.
    """
    if isinstance(names, str) or not isinstance(names, (tuple, list)) or not names:
        raise ValueError(f"{field} must be a non-empty tuple of {what} from {list(valid)}; got {names!r}.")
    bad = [c for c in names if c not in valid]
    if bad or len(set(names)) != len(names):
        problem = f"unknown {bad}" if bad else "a name repeated"
        raise ValueError(f"{field} has {problem}; choose distinct names from {list(valid)} (got {list(names)}).")
    return tuple(names)
