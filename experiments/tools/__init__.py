"""Developer tools: benchmarks, the float-rounding sensitivity check and the demo replay check.

Each is run as `python -m experiments.tools.NAME` and writes under runs/ unless told otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags




def usage_error(message: str) -> None:
    """Prints a one-line usage error and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_tool_flags(flag_values: flags.FlagValues, prog: str, argv: Sequence[str] | None) -> None:
    """Parses a tool's own absl `flag_values` from `argv` (default: the command line), afresh;
    a bad flag or a positional argument is a one-line usage error."""
    flag_values.unparse_flags()
    try:
        rest = flag_values([prog, *(sys.argv[1:] if argv is None else argv)])
    except flags.Error as e:
        usage_error(str(e))
    if len(rest) > 1:
        usage_error(f"unexpected positional arguments {rest[1:]}; every option is a --flag.")
