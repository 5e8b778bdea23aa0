"""The cameras each simulator offers, by name, without importing any simulator.

The launcher checks `config.cameras` against these before any work; the adapters
(`envs.metaworld`, `envs.rlbench`) render them.
"""

from __future__ import annotations

METAWORLD_CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
"""The cameras of MetaWorld v3's scene. 'corner' is the front camera `MetaWorldConfig` places
(`camera_position`, `camera_lookat`, `fovy`); the others keep MetaWorld's placement."""

METAWORLD_MOVING = ("behindGripper", "gripperPOV")
"""MetaWorld's cameras that move with the hand: their pose is read at every frame."""

DEFAULT_CAMERAS = {"metaworld": ("corner",), "rlbench": ("front",)}
"""Each simulator's camera when none is named: the single camera every result so far used."""


def check_camera_names(field: str, cameras: object, valid: tuple[str, ...]) -> tuple[str, ...]:
    """`cameras` as a tuple of distinct names from `valid`.

    Args:
      field: the config field, named in the error (e.g. 'MetaWorldConfig.cameras').
      cameras: a tuple (or list) of camera names.
      valid: the names the simulator offers.

    Raises:
      ValueError: naming `field`, what is wrong and the valid names.
    """
    if isinstance(cameras, str) or not isinstance(cameras, (tuple, list)) or not cameras:
        raise ValueError(f"{field} must be a non-empty tuple of camera names from {list(valid)}; "
                         f"got {cameras!r}.")
    bad = [c for c in cameras if c not in valid]
    if bad or len(set(cameras)) != len(cameras):
        what = f"unknown {bad}" if bad else "a name repeated"
        raise ValueError(f"{field} has {what}; choose distinct names from {list(valid)} (got {list(cameras)}).")
    return tuple(cameras)
