"""Keyframe discovery on hand-made trajectories with known keyframes."""

import numpy as np
import pytest

from twostage_jax.data.keyframes import (KeyframeConfig, arm_keyframes, discover_keyframes,
                                         drop_close_keyframes, refine_path_keyframes)


def _segments(*pieces):
    """Concatenates (positions [n, 3], gripper [n]) pieces."""
    pos = np.concatenate([p for p, _ in pieces])
    g = np.concatenate([np.full(len(p), gv, np.float32) for p, gv in pieces])
    return pos, g


def _line(a, b, n):
    return np.linspace(a, b, n)


def _velocities(pos):
    vel = np.zeros_like(pos)
    vel[1:] = np.diff(pos, axis=0) / 0.01
    return vel


def test_gripper_change_stop_and_last():
    # Move 0->A (20 frames), pause 6 frames at A, move to B (20 frames), close gripper at B
    # (frame 46 onwards), then move to C (20 frames).
    a, b, c = np.array([0.0, 0, 0]), np.array([0.2, 0, 0]), np.array([0.2, 0.2, 0])
    pos, g = _segments((_line(np.zeros(3), a + [0.0, 0, 0.1], 20), 1.0),
                       (np.repeat([[0.0, 0, 0.1]], 6, 0), 1.0),
                       (_line([0.0, 0, 0.1], b, 20), 1.0),
                       (np.repeat([b], 3, 0), 0.0),
                       (_line(b, c, 20), 0.0))
    vel = _velocities(pos)
    kf = arm_keyframes(g, vel, stop_threshold=0.1, refractory=4)
    # Frame 20 is the first frame of the pause (velocity 0 from 20 on); the refractory period
    # suppresses 21..24; the pause continues to 25 (stopped again at 25). Gripper change at 46.
    assert kf[0] == 20
    assert 46 in kf
    assert kf[-1] == len(pos) - 1
    assert all(k > 0 for k in kf)


def test_arm_rule_refractory_and_consecutive_last():
    g = np.ones(12, np.float32)
    vel = np.ones((12, 2))
    vel[3:9] = 0.0  # stopped over frames 3..8
    kf = arm_keyframes(g, vel, stop_threshold=0.1, refractory=4)
    # Stops at 3, refractory 4..6 (buffer 4 -> counts down), stops again at 8; last frame 11.
    assert kf == [3, 8, 11]
    # A stop on the second-to-last frame is excluded; a keyframe right before the last is popped.
    vel2 = np.ones((6, 1))
    vel2[4] = 0.0
    assert arm_keyframes(np.ones(6), vel2, 0.1, 4) == [5]


def test_close_keyframe_rule_drops_first_of_close_pair():
    pos = np.zeros((10, 3))
    pos[3] = [0.1, 0, 0]
    pos[5] = [0.105, 0, 0]  # 5 mm from frame 3
    pos[9] = [0.3, 0, 0]
    g = np.ones(10)
    assert drop_close_keyframes([3, 5, 9], pos, g, min_distance=0.01) == [5, 9]
    assert drop_close_keyframes([3, 5, 9], pos, g, min_distance=0.004) == [3, 5, 9]
    assert drop_close_keyframes([3, 5, 9], pos, g, min_distance=0.0) == [3, 5, 9]


def test_close_rule_keeps_last_and_gripper_pulses():
    pos = np.zeros((10, 3))
    g = np.ones(10)
    g[4:7] = 0.0  # closed on 4..6, open again from 7: a close-then-open pulse at one place
    # keyframes 4 (close) and 7 (open) at the same position: 4 is a pulse (differs from both
    # neighbours: start open, next open) and must stay; 7 -> 9 close: 7 is dropped? g[7] == g[9]
    # so dropping 7 keeps the open state at 9; the last keyframe always stays.
    assert drop_close_keyframes([4, 7, 9], pos, g, min_distance=0.01) == [4, 9]


def test_discover_combines_rules_and_validates():
    pos = np.concatenate([_line([0, 0, 0], [0.2, 0, 0], 10), np.repeat([[0.2, 0, 0]], 8, 0),
                          _line([0.2, 0, 0], [0.2, 0.004, 0], 3)])
    g = np.ones(len(pos))
    kf = discover_keyframes(pos, g, _velocities(pos), KeyframeConfig(0.1, 4, 0.01))
    # Stop keyframes at 10 and 15 lie within 1 cm of the last frame (20): only 20 survives.
    assert kf == [20]
    with pytest.raises(ValueError, match="velocities"):
        arm_keyframes(np.ones(5), np.ones((4, 3)))
    with pytest.raises(ValueError, match="min_distance"):
        KeyframeConfig(min_distance=-1.0)
    with pytest.raises(ValueError, match="path_tolerance"):
        KeyframeConfig(path_tolerance=-0.01)
    with pytest.raises(ValueError, match="increasing"):
        drop_close_keyframes([5, 3], np.zeros((8, 3)), np.ones(8), 0.01)


def _never_stopping_l_path():
    """0 -> A -> B -> C at constant speed (1 cm per frame), never stopping: corners at 20, 40."""
    a, b, c = [0.2, 0, 0], [0.2, 0.2, 0], [0.2, 0.2, 0.2]
    pos = np.concatenate([_line([0.0, 0, 0], a, 21), _line(a, b, 21)[1:], _line(b, c, 21)[1:]])
    return pos, np.ones(len(pos), np.float32)


def test_path_refinement_marks_corners_of_a_never_stopping_path():
    pos, g = _never_stopping_l_path()
    vel = _velocities(pos)  # 1 m/s everywhere: the stop rule never fires
    assert arm_keyframes(g, vel, 0.2, 4) == [60]
    assert refine_path_keyframes([60], pos, 0.01) == [20, 40, 60]
    assert refine_path_keyframes([60], pos, 0.0) == [60]  # disabled
    # A straight path gains nothing.
    straight = _line([0.0, 0, 0], [0.3, 0, 0], 31)
    assert refine_path_keyframes([30], straight, 0.01) == [30]
    # The first segment starts at frame 0; existing keyframes are anchors and are kept.
    assert refine_path_keyframes([20, 60], pos, 0.01) == [20, 40, 60]


def test_path_refinement_tolerance_and_close_rule_order():
    # A 5 mm sideways bump at frame 10 of a straight 20-frame line.
    pos = _line([0.0, 0, 0], [0.2, 0, 0], 21)
    pos[10, 1] = 0.005
    assert refine_path_keyframes([20], pos, 0.01) == [20]
    assert refine_path_keyframes([20], pos, 0.006) == [20]
    # Below 5 mm the bump is a corner; its neighbours 9 and 11 then lie ~4.5 mm from the new
    # segments 0-10 and 10-20, so they are added at 2 mm but not at 4.6 mm.
    assert refine_path_keyframes([20], pos, 0.0046) == [10, 20]
    assert refine_path_keyframes([20], pos, 0.002) == [9, 10, 11, 20]
    # discover: ARM -> refinement -> close rule last. A corner 5 mm before the end (frame 40 of
    # a path whose last leg goes 5 mm up) is added by the refinement, then dropped by the close
    # rule; the other corner stays.
    a, b, c = [0.2, 0, 0], [0.2, 0.2, 0], [0.2, 0.2, 0.005]
    pos2 = np.concatenate([_line([0.0, 0, 0], a, 21), _line(a, b, 21)[1:], _line(b, c, 3)[1:]])
    g2 = np.ones(len(pos2))
    cfg = KeyframeConfig(stop_threshold=0.2, refractory=4, min_distance=0.01, path_tolerance=0.002)
    assert refine_path_keyframes(arm_keyframes(g2, _velocities(pos2), 0.2, 4), pos2, 0.002) == [20, 40, 42]
    assert discover_keyframes(pos2, g2, _velocities(pos2), cfg) == [20, 42]
    # A gripper change is an anchor: refinement works on each side of it.
    pos3, g3 = _never_stopping_l_path()
    g3[40:] = 0.0
    cfg3 = KeyframeConfig(stop_threshold=0.2, refractory=4, min_distance=0.01, path_tolerance=0.01)
    assert discover_keyframes(pos3, g3, _velocities(pos3), cfg3) == [20, 40, 60]
