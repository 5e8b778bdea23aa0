"""`python -m twostage_jax.launch --mode=all --workdir=DIR`: the launcher (see `main`)."""

from twostage_jax.launch.main import run

run()
