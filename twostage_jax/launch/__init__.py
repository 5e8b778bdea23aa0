"""The launcher: demos -> stage 1 -> stage 2 -> evaluation in a workdir (`python -m twostage_jax.launch`).

Nothing in the pure core (`twostage_jax/*.py`) imports this package.
"""
