"""Bootstrap intervals (rliable): reproducible, paired for gains, and checked inputs."""

import numpy as np
import pytest

from twostage_jax.evaluation import bootstrap_interval, difference_interval


def test_intervals_are_reproducible_and_leave_global_rng_alone():
    scores = np.random.default_rng(0).uniform(size=(5, 3))
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    first = bootstrap_interval(scores, reps=500)
    after = np.random.random()
    assert first == bootstrap_interval(scores, reps=500)
    assert before == after  # the caller's global numpy stream is restored
    assert first.low <= first.mean <= first.high


def test_difference_interval_is_paired():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.0, 0.8, size=(5, 4))
    same = difference_interval(a, a, reps=500)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    # a constant per-run gain of 0.2 is known exactly when runs are paired
    shifted = difference_interval(a, a + 0.2, reps=500)
    np.testing.assert_allclose([shifted.mean, shifted.low, shifted.high], 0.2, atol=1e-9)
    # unpaired noise gives a proper interval around the mean difference
    b = np.clip(a + rng.normal(0.1, 0.1, size=a.shape), 0, 1)
    gain = difference_interval(a, b, reps=500)
    assert gain.low < gain.mean < gain.high
    assert gain.mean == pytest.approx(b.mean() - a.mean())


def test_interval_inputs_are_checked():
    with pytest.raises(ValueError, match="`scores` must lie in"):
        bootstrap_interval([0.5, 1.5])
    with pytest.raises(ValueError, match="same shape"):
        difference_interval(np.zeros((3, 2)), np.zeros((3, 1)))


def test_iqm_improvement_and_profiles():
    from twostage_jax.evaluation import improvement_probability, iqm_interval, performance_profile

    rng = np.random.default_rng(2)
    x = rng.uniform(size=(8, 3))
    iqm = iqm_interval(x, reps=300)
    middle = np.sort(x.ravel())[6:18]  # 24 scores, the middle half
    assert iqm.mean == pytest.approx(middle.mean()) and iqm.low <= iqm.mean <= iqm.high
    assert iqm == iqm_interval(x, reps=300)
    with pytest.raises(ValueError, match="`x` must lie in"):
        improvement_probability(x + 2, x, reps=10)
    with pytest.raises(ValueError, match="same number of tasks"):
        improvement_probability(x, x[:, :2], reps=10)
    better = improvement_probability(np.clip(x + 0.5, 0, 1), x * 0.5, reps=300)
    assert better.mean == 1.0 and better.low == 1.0
    even = improvement_probability(x, x, reps=300)
    assert even.mean == 0.5 and even.low < 0.5 < even.high
    profiles, cis = performance_profile({"a": x, "b": x * 0.5}, [0.0, 0.5, 1.0], reps=200)
    np.testing.assert_allclose(profiles["a"], [np.mean(x > t) for t in (0.0, 0.5, 1.0)])
    assert cis["b"].shape == (2, 3) and profiles["b"][1] == 0.0
