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


# ---------------------------------------------------------------------------
# Known answers of each statistic and the edges of each verdict
# ---------------------------------------------------------------------------


@given(st.floats(-3, 3), st.floats(-2, 2))
def test_slope_of_an_exact_power_law_is_its_exponent(exponent, log_prefactor):
    x = np.logspace(-3, 3, 7)
    assert V.slope(x, 10.0**log_prefactor * x**exponent) == pytest.approx(exponent, abs=1e-9)


def test_slope_is_nan_without_two_points_or_with_a_non_positive_value():
    assert math.isnan(V.slope([1.0], [2.0]))
    assert math.isnan(V.slope([], []))
    assert math.isnan(V.slope([1.0, 2.0], [1.0, 0.0]))


def test_crossing_takes_the_first_fall_through_c_and_is_nan_without_one():
    """y = 4, 2, 1/2: through 1 between x = 2 and 4, at x = 2 sqrt(2) in log-log; then up to 8 and down to
    1/2 again (a second crossing, not taken)."""
    x, y = [1.0, 2.0, 4.0, 8.0, 16.0], [4.0, 2.0, 0.5, 8.0, 0.5]
    assert V.crossing(x, y, 1.0) == pytest.approx(2.0 * 2 ** (math.log(2) / math.log(4)), rel=1e-12)
    assert math.isnan(V.crossing(x, y, 100.0))


def test_rescale_of_a_flat_curve_is_nan():
    assert np.all(np.isnan(V.rescale([0.2, 0.2, 0.2])))


def test_collapse_ratio_of_shifted_power_laws_is_the_ratio_of_their_offset_spreads():
    """log y_k = log x + b_k with b = (0, 0.1, 0.2): spread std(b) against x; against x / s_k with
    log s = (0, 1, 2), log y = log(x / s_k) + b_k + log s_k: spread std(b + log s). Ratio 0.1 / 1.1."""
    x = np.logspace(-3, 3, 13)
    b, log_s = np.array([0.0, 0.1, 0.2]), np.array([0.0, 1.0, 2.0])
    curves = [x * math.exp(bk) for bk in b]
    assert V.collapse_ratio([x] * 3, curves, np.exp(log_s)) == pytest.approx(1 / 11, rel=1e-9)
    assert math.isnan(V.collapse_ratio([x], curves[:1], [1.0]))  # one curve: nothing to compare


def test_bootstrap_interval_of_a_mean_is_about_1_96_standard_errors():
    """For the mean of n = 400 normal samples the 95 % interval is mean +- 1.96 s / sqrt(n) (to the
    bootstrap's own noise, a few %); it would be 20 times wider if it resampled single values."""
    samples = np.random.default_rng(5).normal(3.0, 2.0, 400)
    low, high = V.bootstrap(lambda idx: samples[idx].mean(), len(samples))
    half_width = 1.96 * samples.std() / math.sqrt(len(samples))
    assert (low + high) / 2 == pytest.approx(samples.mean(), abs=0.1 * half_width)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_bootstrap_leaves_out_nan_resamples_and_gives_up_when_most_are_nan():
    """nan when the first resampled seed is 0 or 1 (1/4 of resamples), else 1: the interval is (1, 1).
    nan on every resample: (nan, nan)."""
    assert V.bootstrap(lambda idx: math.nan if idx[0] < 2 else 1.0, 8) == (1.0, 1.0)
    assert all(math.isnan(v) for v in V.bootstrap(lambda idx: math.nan, 8))


def test_estimate_is_the_statistic_on_all_seeds_with_its_bootstrap_interval():
    values = np.array([1.0, 2.0, 4.0, 9.0])
    statistic = lambda idx: values[idx].max()  # noqa: E731
    value, interval = V.estimate(statistic, 4)
    assert value == 9.0 and interval == V.bootstrap(statistic, 4)
    assert interval[0] >= 1.0 and interval[1] == 9.0


@pytest.mark.parametrize("interval, holds", [
    ((0.5, 0.79), False), ((0.5, 0.81), True), ((1.21, 1.5), False), ((1.19, 1.5), True),
    ((0.0, 0.81), None), ((0.2, 0.99), True),
])
def test_near_holds_when_the_interval_meets_the_band_and_is_at_most_four_tolerances_wide(interval, holds):
    """Target 1 +- 0.2: the band is [0.8, 1.2]; an interval wider than 0.8 that meets it is undecided."""
    assert V.near("q", sum(interval) / 2, interval, 1.0, 0.2).holds is holds


@pytest.mark.parametrize("interval, holds", [((0.5, 0.99), False), ((0.5, 1.0), True), ((3.0, 3.5), True),
                                             ((6.0, 7.0), True), ((6.01, 7.0), False)])
def test_within_holds_when_the_interval_meets_the_range(interval, holds):
    assert V.within("q", sum(interval) / 2, interval, 1.0, 6.0, "1 to 6").holds is holds


def test_below_is_decided_only_when_the_interval_is_on_one_side_of_the_bound():
    assert V.below("r", 0.9, (0.8, 0.999), 1.0, "p").holds is True
    assert V.below("r", 1.1, (1.0, 1.2), 1.0, "p").holds is False
    straddling = V.below("r", 1.0, (0.999, 1.2), 1.0, "p")
    assert straddling.holds is None and straddling.note == "the interval contains the bound"


def test_sign_claim_reads_the_side_of_zero_the_interval_lies_on():
    assert V.sign_claim("d", -0.2, (-0.3, -0.01), -1, "p").holds is True
    assert V.sign_claim("d", -0.2, (-0.3, -0.01), +1, "p").holds is False
    assert V.sign_claim("d", 0.1, (0.0, 0.3), +1, "p").holds is None


def test_winner_measures_the_difference_of_the_means():
    """a = (1, 2, 3), b = a + 10: a - b is -10, and every resample's difference lies in [-12, -8]."""
    a = np.array([1.0, 2.0, 3.0])
    claim = V.winner("q", "lazy", a, "feature", a + 10, "lazy")
    assert claim.measured == -10.0 and -12.0 <= claim.low <= -10.0 <= claim.high <= -8.0
    assert claim.holds is True and claim.note == "lazy better"


def test_missing_is_undecided_and_the_tables_say_so():
    claim = V.missing("slope", "-1", "no alpha sqrt(h) <= 1 in this sweep")
    assert claim.holds is None and math.isnan(claim.measured) and claim.paper == "-1"
    decided = V.near("slope", -1.0, (-1.1, -0.9), -1.0, 0.2)
    lines = V.table([claim, decided])
    assert "undecided" in lines[1] and "no alpha sqrt(h) <= 1 in this sweep" in lines[1]
    assert "holds" in lines[2] and "undecided" not in lines[2]
    assert "| undecided | no alpha sqrt(h) <= 1 in this sweep |" in V.markdown_table([claim])[2]
