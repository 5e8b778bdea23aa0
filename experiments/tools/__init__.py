"""Developer tools: benchmarks, the float-rounding sensitivity check and the demo replay check.

Each is run as `python -m experiments.tools.NAME` and writes under runs/ unless told otherwise.
"""
