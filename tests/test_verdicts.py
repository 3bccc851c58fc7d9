"""The verdict logic on constructed inputs: known answers are recovered, false claims are reported."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import verdicts as V


def power_law_seeds(exponent, n_seeds=8, noise=0.05, seed=0):
    """y = x^exponent times log-normal noise, one row per seed: x, (seeds, points)."""
    x = np.logspace(-2, 2, 9)
    rng = np.random.default_rng(seed)
    return x, x**exponent * np.exp(noise * rng.standard_normal((n_seeds, len(x))))


@settings(max_examples=20, deadline=None)
@given(st.floats(-2.0, 2.0), st.sampled_from([0, 1, 2]))
def test_a_known_slope_is_recovered_within_its_interval(exponent, seed):
    """The noise is fixed per seed (a 95 % interval misses the truth for 1 noise draw in 20; these
    do not), and the slope and its interval shift exactly with the exponent."""
    x, y = power_law_seeds(exponent, seed=seed)
    value, (low, high) = V.estimate(lambda idx: V.slope(x, y[idx].mean(axis=0)), len(y))
    assert low <= exponent <= high and abs(value - exponent) < 0.05
    assert V.near("slope", value, (low, high), exponent, 0.1).holds is True


def test_a_claim_that_does_not_hold_is_reported_as_not_holding():
    x, y = power_law_seeds(-2.0)
    value, interval = V.estimate(lambda idx: V.slope(x, y[idx].mean(axis=0)), len(y))
    claim = V.near("slope", value, interval, -1.0, 0.2)
    assert claim.holds is False
    assert "does not hold" in "\n".join(V.table([claim]))


def test_a_wide_interval_is_undecided_and_nan_is_not_measurable():
    assert V.near("q", -0.5, (-1.5, 0.5), -0.5, 0.1).holds is None
    assert V.near("q", math.nan, (math.nan, math.nan), -0.5, 0.1).holds is None
    assert V.within("q", math.nan, (1.0, 2.0), 0.0, 3.0, "paper").holds is None


@given(st.floats(-3, 3), st.floats(0.2, 3.0), st.floats(-2, 2))
def test_crossing_inverts_a_power_law(log_c, exponent, log_x0):
    """y = (x / x0)^-exponent crosses c at x = x0 c^(-1/exponent), exactly in log-log."""
    x = np.logspace(-6, 6, 25)
    x0, c = 10.0**log_x0, 10.0**log_c
    y = (x / x0) ** -exponent
    expected = x0 * c ** (-1 / exponent)
    if x[0] < expected < x[-1]:
        assert V.crossing(x, y, c) == pytest.approx(expected, rel=1e-9)
    else:
        assert math.isnan(V.crossing(x, y, c))


def test_winner_finds_the_lower_error_and_undecides_overlaps():
    low, high = np.array([0.040, 0.041, 0.042, 0.039]), np.array([0.050, 0.052, 0.051, 0.049])
    assert V.winner("q", "lazy", low, "feature", high, "lazy").holds is True
    assert V.winner("q", "lazy", low, "feature", high, "feature").holds is False
    same = V.winner("q", "lazy", low, "feature", low[::-1], "lazy")
    assert same.holds is None and "no significant difference" in same.note


def test_below_and_sign_claims_have_three_outcomes():
    assert V.below("r", 0.5, (0.4, 0.6), 1.0, "p").holds is True
    assert V.below("r", 1.5, (1.2, 1.6), 1.0, "p").holds is False
    assert V.below("r", 0.9, (0.8, 1.1), 1.0, "p").holds is None
    assert V.sign_claim("d", 0.2, (0.1, 0.3), +1, "p").holds is True
    assert V.sign_claim("d", 0.2, (0.1, 0.3), -1, "p").holds is False
    assert V.sign_claim("d", 0.0, (-0.1, 0.1), -1, "p").holds is None


def test_collapse_ratio_prefers_the_variable_the_curves_collapse_in():
    """Curves y_h = g(x sqrt(h)) collapse against x sqrt(h): ratio < 1 for x sqrt(h), > 1 for x alone."""
    hs = [10, 100, 1000]
    xs = [np.logspace(-3, 3, 13)] * 3
    collapsing = [1 / (1 + (x * math.sqrt(h) / 30) ** 1.2) for x, h in zip(xs, hs)]
    assert V.collapse_ratio([x * math.sqrt(h) for x, h in zip(xs, hs)], collapsing, [math.sqrt(h) for h in hs]) < 0.2
    not_collapsing = [1 / (1 + (x / 30) ** 1.2) for x in xs]  # the same curve against x for every h
    assert V.collapse_ratio([x * math.sqrt(h) for x, h in zip(xs, hs)], not_collapsing,
                            [math.sqrt(h) for h in hs]) > 5


def test_rescale_maps_each_curve_onto_zero_one():
    r = V.rescale([[3.0, 1.0, 2.0], [5.0, 5.0, 6.0]])
    np.testing.assert_allclose(r, [[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    samples = np.random.default_rng(3).normal(1.0, 0.1, 50)
    first = V.bootstrap(lambda idx: samples[idx].mean(), len(samples))
    assert first == V.bootstrap(lambda idx: samples[idx].mean(), len(samples))
    assert first[0] < samples.mean() < first[1]
