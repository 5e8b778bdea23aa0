"""The cameras each simulator offers, by name, without importing any simulator.

The launcher checks `config.cameras` against these before any work; the adapters
(`envs.metaworld`, `envs.rlbench`) render them.
"""

from __future__ import annotations

from twostage_jax._checks import check_names

METAWORLD_CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
"""The cameras of MetaWorld v3's scene. 'corner' is the front camera `MetaWorldConfig` places
(`camera_position`, `camera_lookat`, `fovy`); the others keep MetaWorld's placement."""

METAWORLD_MOVING = ("behindGripper", "gripperPOV")
"""MetaWorld's cameras that move with the hand: their pose is read at every frame."""

DEFAULT_CAMERAS = {"metaworld": ("corner",), "rlbench": ("front",)}
"""Each simulator's camera when none is named: the single camera every result so far used."""


def check_camera_names(field: str, cameras: object, valid: tuple[str, ...]) -> tuple[str, ...]:
    """`cameras` as a tuple of distinct names from `valid`, or a ValueError naming `field`
    (e.g. 'MetaWorldConfig.cameras'), what is wrong and the valid names (`_checks.check_names`)."""
    return check_names(field, cameras, valid)
