"""The measurements of findings.py on inputs whose answer is known in closed form or by construction."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import experiments
import findings
import planted
import verdicts as V

SETTINGS = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------
# Finding 4: t1 and the early growth of F
# ---------------------------------------------------------------------------


def decay_records(half_time, per_halving=8):
    """alpha^2 L = 3 * 2^(-t / half_time) at t = 0 and half-way between the points half_time 2^(k / per_halving)."""
    ts = [0.0] + [half_time * 2 ** ((k + 0.5) / per_halving) for k in range(-5 * per_halving, 4 * per_halving)]
    return [{"t": t, "loss": 3 * 2 ** (-t / half_time)} for t in ts]


@SETTINGS
@given(st.floats(-3, 3))
def test_first_time_below_is_the_half_time_of_an_exponential_decay(log_half_time):
    """No record lies on t1; the log-log interpolation between the neighbours 2^(1/16) apart is within
    0.2 % (taking either neighbour would be 4 % off)."""
    half_time = 10.0**log_half_time
    records = decay_records(half_time)
    assert findings.first_time_below(records) == pytest.approx(half_time, rel=2e-3)
    assert findings.first_time_below(records, fraction=0.25) == pytest.approx(2 * half_time, rel=2e-3)


def test_first_time_below_is_exact_on_a_power_law_segment():
    """Between t = 1 and t = 4 the loss is 0.8 / t, a straight line in log-log: it is 1/2 of 1 at t = 1.6."""
    records = [{"t": 0.0, "loss": 1.0}, {"t": 1.0, "loss": 0.8}, {"t": 4.0, "loss": 0.2}]
    assert findings.first_time_below(records) == pytest.approx(1.6, rel=1e-12)


def test_first_time_below_takes_the_first_record_after_t0_and_nan_if_never_below():
    assert findings.first_time_below([{"t": 0.0, "loss": 1.0}, {"t": 0.5, "loss": 0.3}]) == 0.5
    assert math.isnan(findings.first_time_below([{"t": 0.0, "loss": 1.0}, {"t": 9.0, "loss": 0.6}]))


@SETTINGS
@given(st.floats(0.2, 3.0), st.floats(-2, 2))
def test_early_growth_slope_is_k_for_F_growing_like_t_to_the_k(k, log_t1):
    """|F(t) - F(0)| = 3 t^k up to t1/10 and constant after: the slope is k, later records ignored."""
    t1 = 10.0**log_t1
    ts = [0.0, *(t1 * np.logspace(-6, 1, 36))]
    records = [{"t": t, "F_rms": 3 * min(t, t1 / 10) ** k} for t in ts]
    assert findings.early_growth_slope(records, t1) == pytest.approx(k, rel=1e-9)


def test_early_growth_slope_needs_three_early_points():
    records = [{"t": t, "F_rms": t} for t in (0.0, 0.01, 0.02, 5.0)]
    assert math.isnan(findings.early_growth_slope(records, 1.0))


# ---------------------------------------------------------------------------
# Finding 3: output variance and ensembles
# ---------------------------------------------------------------------------


def test_output_variance_is_the_unbiased_seed_variance_averaged_over_points():
    """F[s, x] = m(x) + c_x delta_s with delta = (-1, 1): Var over seeds (ddof 1) = 2 c_x^2, mean over
    c = (1, 2, 3): 28/3. Seeds (0, 0, 1) give delta = (-1, -1, 1), variance 4/3: 56/9."""
    m, c, delta = np.array([5.0, -2.0, 0.5]), np.array([1.0, 2.0, 3.0]), np.array([-1.0, 1.0])
    F = m + delta[:, None] * c
    assert findings.output_variance(F, np.array([0, 1])) == pytest.approx(28 / 3, rel=1e-12)
    assert findings.output_variance(F, np.array([0, 0, 1])) == pytest.approx(56 / 9, rel=1e-12)
    assert math.isnan(findings.output_variance(F, np.array([1, 1])))  # one seed: no variance


def test_ensemble_error_is_the_error_of_the_sign_of_the_seed_mean():
    """Seed mean (-1/3, -1/3, 2/3, 0) against y = (1, -1, 1, -1): wrong, right, right, and a tie (counted
    wrong): 1/2. Seed 1 alone is right everywhere; seed 0 alone is wrong on the last two points."""
    y = np.array([1.0, -1.0, 1.0, -1.0])
    F = np.array([[1.0, -1.0, -1.0, 1.0], [1.0, -1.0, 2.0, -2.0], [-3.0, 1.0, 1.0, 1.0]])
    assert findings.ensemble_error(F, y, np.arange(3)) == 0.5
    assert findings.ensemble_error(F, y, np.array([1, 1])) == 0.0
    assert findings.ensemble_error(F, y, np.array([0])) == 0.5


def test_the_ensemble_of_one_real_run_has_its_test_error_with_the_labels_of_its_data_path():
    """A real run on the sphere task with d = 5 (not the default 10): the sign error of its stored F_test
    against findings.run_test_labels is exactly the run's own test error."""
    sizes = {"dataset": "sphere", "d": 5, "p": 20, "p_test": 200, "L": 2, "kernel_points": 0}
    config = findings.run_config(findings.Context(), sizes, 8, 1e4, 0)
    run = experiments.fit(config)
    y = findings.run_test_labels(config)
    assert findings.ensemble_error(np.array([run["F_test"]]), y, np.array([0])) == run["test_error"]


def test_unfitted_runs_are_counted_in_the_status_note():
    runs = {"a": [{"status": "fitted"}, {"status": "time"}], "b": [{"status": "fitted"}]}
    assert findings.unfitted(runs) == 1
    assert findings.status_note(runs) == "2 of 3 runs fitted; 1 stopped early (counted as they ended)"


# ---------------------------------------------------------------------------
# Finding 1: the crossing of the kernel change with c
# ---------------------------------------------------------------------------


def test_bracket_finds_the_evaluated_alphas_around_the_crossing_of_the_seed_mean():
    """Seed mean 30 / a crosses 1 between 10 and 100 (the alphas given in any order); seed 0 alone (a
    fifth of the mean) crosses between 1 and 10, which the bracket must not follow."""
    alphas = np.array([100.0, 1.0, 1000.0, 10.0])
    changes = (30 / alphas)[:, None] * np.array([0.2, 1.8])
    assert findings.bracket(alphas, changes, 1.0) == (10.0, 100.0)
    assert findings.bracket(alphas, changes, 100.0) is None  # never that large


STARS = {10: 30.0, 1000: 3.0}  # the planted alpha* sqrt(h) of each width


class CrossingContext(findings.Context):
    """Kernel change alpha* sqrt(h) / (alpha sqrt(h)) times (0.5, 1.5) for seeds 0, 1: seed mean exactly
    crossing 1 at STARS[h]. Records the alpha sqrt(h) of every sweep."""

    def __init__(self):
        super().__init__(progress=False)
        self.swept = []

    def sweep(self, configs, desc, fn=experiments.fit):
        self.swept.append(sorted({(c["h"], c["alpha_sqrt_h"]) for c in configs}))
        return [{"kernel_change": STARS[c["h"]] / c["alpha_sqrt_h"] * (0.5 + c["seed"])} for c in configs]


def bisected(steps, alphas):
    ctx = CrossingContext()
    sizes = {"h": list(STARS), "seeds": 2, "bisect_steps": steps, "c": 1.0, "dataset": "sphere", "d": 5}
    kc = {h: {a: [STARS[h] / a * 0.5, STARS[h] / a * 1.5] for a in alphas} for h in STARS}
    findings.bisect_alpha_star(ctx, sizes, kc)
    return ctx, kc


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_bisection_halves_the_log_bracket_around_the_planted_crossing_at_each_step(steps):
    """From decades, after n steps in log alpha the bracket of each h is 2^-n decades wide and holds alpha*;
    each step sweeps both seeds at the geometric midpoint of each bracket."""
    ctx, kc = bisected(steps, [1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3])
    assert len(ctx.swept) == steps
    for h, star in STARS.items():
        low, high = findings.bracket(list(kc[h]), list(kc[h].values()), 1.0)
        assert low <= star < high
        assert math.log10(high / low) == pytest.approx(2.0**-steps, rel=1e-9)
    (h1, mid1), (h2, mid2) = ctx.swept[0]  # the first brackets: (10, 100) for h = 10, (1, 10) for h = 1000
    assert (h1, h2) == (10, 1000) and (mid1, mid2) == pytest.approx((10**1.5, 10**0.5), rel=1e-12)


def test_bisection_sweeps_nothing_when_no_width_crosses():
    ctx, kc = bisected(3, [1e3, 1e4])  # kernel change < 1 throughout
    assert ctx.swept == [] and all(len(k) == 2 for k in kc.values())


# ---------------------------------------------------------------------------
# What a sweep lacks, and the claim made of a statistic
# ---------------------------------------------------------------------------


def test_sides_split_alpha_sqrt_h_at_their_bounds():
    alphas = [1e-2, 1e-1, 1.0, 10.0, 100.0, 1e4]
    assert findings.side(alphas, "feature") == ([1e-2, 1e-1, 1.0], "alpha sqrt(h) <= 1")
    assert findings.side(alphas, "feature", 0.1) == ([1e-2, 1e-1], "alpha sqrt(h) <= 0.1")
    assert findings.side(alphas, "lazy") == ([100.0, 1e4], "alpha sqrt(h) >= 100")
    assert findings.end_lacking([1.0, 1e4], "feature") == ""
    assert findings.end_lacking([3.0, 1e4], "feature") == "no alpha sqrt(h) <= 1 in this sweep"


def test_shortage_names_what_is_missing():
    assert findings.shortage([1.0, 2.0], 2, "width h") == ""
    assert findings.shortage([5.0, 5.0], 2, "width h") == "only 1 width h in this sweep (needs 2)"
    assert findings.shortage([], 1, "alpha sqrt(h) <= 0.1") == "no alpha sqrt(h) <= 0.1 in this sweep"


def test_claim_is_the_verdict_of_the_estimate_or_undecided_when_lacking():
    values = np.array([1.0, 1.1, 0.9, 1.05])
    statistic = lambda idx: values[idx].mean()  # noqa: E731
    made = findings.claim(V.near, "q", statistic, 4, 1.0, 0.2, paper="1")
    assert made == V.near("q", *V.estimate(statistic, 4), 1.0, 0.2, paper="1")
    assert made.holds is True
    lacking = findings.claim(V.near, "q", lambda idx: 1 / 0, 4, 1.0, 0.2, paper="1", lacking="no x in this sweep")
    assert (lacking.holds, lacking.note, lacking.paper) == (None, "no x in this sweep", "1")
    assert math.isnan(lacking.measured)


def test_planted_labels_follow_the_run_config():
    """The planted worlds take their labels from experiments.load_data: the sphere with d = 5 differs from
    the default d, so a finding that drops d cannot pass the planted tests by chance."""
    base = experiments.full_config({"dataset": "sphere", "p": 10, "p_test": 400})
    with_d, without_d = planted.run_labels({**base, "d": 5}), planted.run_labels(base)
    assert 0.3 < np.mean(with_d != without_d) < 0.7


def test_the_fc_net_flattens_images_even_without_test_points():
    config = experiments.full_config({"dataset": "sphere", "d": [1, 6, 6], "p": 5, "p_test": 0})
    x, y, x_test, y_test = experiments.load_data(config)
    assert x.shape == (5, 36) and x_test.shape == (0, 36) and len(y_test) == 0
