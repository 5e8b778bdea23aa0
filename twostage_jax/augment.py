"""Image augmentation for stage 1: random shifts (DrQ, Kostrikov et al. 2020; RAD, Laskin et al. 2020).

A frame is padded by repeating its border pixels and a window of its own size is cut at a random
integer offset, so the content moves by up to `pad` pixels in each direction. From ~100
demonstrations this is the usual regulariser of an image policy. Only stage 1 uses it: stage 2's
crops are centred by projecting the tentative position, and a shift would move what that centre
means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from twostage_jax import _checks

AUGMENTATIONS = ("none", "shift")


def random_shift(key: jax.Array, images: jnp.ndarray, pad: int) -> jnp.ndarray:
    """Shifts each image by its own random integer offset in [-pad, pad] (edge padding).

    Args:
      key: PRNG key.
      images: [B, H, W, C] images (any dtype; returned in the same dtype).
      pad: maximum shift in pixels (static), >= 0.

    Returns:
      [B, H, W, C] shifted images.
    """
    _checks.check_key("key", key)
    _checks.check_rank("images", images, 4)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"`pad` must be an int >= 0; got {pad!r}.")
    if pad == 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def cut(image: jnp.ndarray, offset: jnp.ndarray) -> jnp.ndarray:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(cut)(padded, offsets)
