"""Study drivers: sweeps of the launcher, their summaries, held-out diagnostics and validation.

Each is run as `python -m experiments.studies.NAME` and writes under runs/ unless told otherwise.
"""
