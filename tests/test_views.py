"""Several cameras per observation: projection into each view, masks, the wrist camera, and a
single camera giving exactly the outputs it gave before views existed."""

from __future__ import annotations

import numpy as np

from tests import _single_view


def test_a_single_camera_gives_exactly_the_outputs_pinned_before_views_existed():
    pinned = np.load(_single_view.PATH)
    now = _single_view.reference()
    assert sorted(now) == sorted(pinned.files)
    for name in pinned.files:
        np.testing.assert_array_equal(now[name], pinned[name], err_msg=name)
