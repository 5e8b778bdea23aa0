"""How far float-rounding-level changes move training: the chaos behind run-to-run differences.

Trains the quickstart-size stage-2 BC trainer on the benchmark's synthetic dataset and prints
the largest relative parameter difference (max |a - b| / max |a| over parameter leaves) between
a reference run and:
  - the same program in two chunks (expected: exactly 0; a fixed program is deterministic);
  - the same steps vmapped over a single seed (a different XLA program, same maths);
  - the reference with every initial parameter scaled by (1 + 1e-7) (a rounding-size change).

    python -m experiments.tools.rounding_sensitivity [--steps=10,30,100]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
from absl import flags

from experiments.tools import parse_tool_flags, usage_error
from experiments.tools.benchmark import bench_dataset, size_config
from twostage_jax.training import make_train, prepare_data


def max_rel_diff(a, b) -> float:
    """max over leaves of max |a - b| / max |a|."""
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return max(float(jnp.abs(x - y).max() / (jnp.abs(x).max() + 1e-12)) for x, y in pairs)


_FLAGS = flags.FlagValues()  # this script's own: importing it beside other scripts defines nothing
flags.DEFINE_string("steps", "10,30,100", "comma-separated step counts", flag_values=_FLAGS)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    """Runs the comparison with the command-line flags `argv` (absl); returns it by step count."""
    parse_tool_flags(_FLAGS, "rounding_sensitivity", argv)
    steps = _FLAGS.steps
    try:
        counts = [int(x) for x in steps.split(",")]
    except ValueError:
        usage_error(f"--steps must be comma-separated ints; got {steps!r}")
    if not counts or min(counts) < 2:
        usage_error(f"--steps needs step counts >= 2; got {steps!r}")
    cfg = size_config("quickstart", 2, "bc")
    trainer, data = make_train(cfg, 2), prepare_data(bench_dataset(), cfg)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0), data)
    nudged = state.replace(params=jax.tree_util.tree_map(lambda x: x * (1 + 1e-7), state.params))
    run = jax.jit(trainer.run, static_argnums=2)
    run_vmapped = jax.jit(jax.vmap(trainer.run, in_axes=(0, None, None)), static_argnums=2)
    one = lambda s: jax.tree_util.tree_map(lambda x: x[None], s)
    out = {}
    print(f"{'steps':>6s} {'chunked':>10s} {'vmapped':>10s} {'params*(1+1e-7)':>16s}")
    for n in counts:
        ref = run(state, data, n)[0].params
        half = run(run(state, data, n // 2)[0], data, n - n // 2)[0].params
        vm = jax.tree_util.tree_map(lambda x: x[0], run_vmapped(one(state), data, n)[0].params)
        nud = run(nudged, data, n)[0].params
        out[n] = {"chunked": max_rel_diff(ref, half), "vmapped": max_rel_diff(ref, vm),
                  "nudged": max_rel_diff(ref, nud)}
        r = out[n]
        print(f"{n:6d} {r['chunked']:10.3g} {r['vmapped']:10.3g} {r['nudged']:16.3g}")
    return out


if __name__ == "__main__":
    main()
