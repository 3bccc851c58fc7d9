"""The measurements of findings.py on inputs whose answer is known in closed form or by construction."""
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import experiments
import findings
import kernels
import lazyfeat as lf
import planted

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
    assert experiments.first_time_below(records) == pytest.approx(half_time, rel=2e-3)
    assert experiments.first_time_below(records, fraction=0.25) == pytest.approx(2 * half_time, rel=2e-3)


def test_first_time_below_is_exact_on_a_power_law_segment():
    """Between t = 1 and t = 4 the loss is 0.8 / t, a straight line in log-log: it is 1/2 of 1 at t = 1.6."""
    records = [{"t": 0.0, "loss": 1.0}, {"t": 1.0, "loss": 0.8}, {"t": 4.0, "loss": 0.2}]
    assert experiments.first_time_below(records) == pytest.approx(1.6, rel=1e-12)


def test_first_time_below_takes_the_first_record_after_t0_and_nan_if_never_below():
    assert experiments.first_time_below([{"t": 0.0, "loss": 1.0}, {"t": 0.5, "loss": 0.3}]) == 0.5
    assert math.isnan(experiments.first_time_below([{"t": 0.0, "loss": 1.0}, {"t": 9.0, "loss": 0.6}]))


@SETTINGS
@given(st.floats(0.3, 2.0), st.floats(-1.0, 1.5), st.floats(-3, 3))
def test_t1_exponents_recover_a_planted_power_law_in_alpha_and_h(a, b, log_c):
    """t1 = c alpha^a h^b on a grid of alpha sqrt(h) and h: the fit gives a and b separately, and every local
    exponent is a and b too (no lack of fit)."""
    hs, alphas = [20, 60, 180], [1e-2, 1e-1]
    t1 = {(h, s): 10**log_c * (s / math.sqrt(h)) ** a * h**b for h in hs for s in alphas}
    assert findings.t1_exponents(t1, list(t1)) == pytest.approx((a, b), abs=1e-9)
    in_alpha, in_h = findings.local_t1_exponents(t1, hs, alphas)
    np.testing.assert_allclose(in_alpha, a, atol=1e-9)
    np.testing.assert_allclose(in_h, b, atol=1e-9)


def test_t1_in_alpha_alone_has_no_width_exponent():
    """The world of issue 18: t1 ~ alpha, not sqrt(h) alpha. The product alpha sqrt(h) alone cannot tell
    them apart on one width; the fit in alpha and h gives b = 0."""
    t1 = {(h, s): 2.5 * s / math.sqrt(h) for h in (20, 60, 180) for s in (1e-2, 1e-1)}
    assert findings.t1_exponents(t1, list(t1)) == pytest.approx((1.0, 0.0), abs=1e-9)


def test_widened_interval_contains_the_local_values_and_keeps_the_estimate():
    assert findings.widened((1.0, (0.9, 1.1)), np.array([0.7, 1.05])) == (1.0, (0.7, 1.1))
    assert findings.widened((1.0, (0.9, 1.1)), np.array([1.0])) == (1.0, (0.9, 1.1))


def test_growth_curves_collapse_against_t_over_t1_exactly_when_f_grows_with_t_over_t1():
    """|f - f0| / sqrt(h) = 0.01 t / t1 with t1 = 2.5 alpha sqrt(h): one curve against t / t1 (ratio 0);
    the same curves as functions of t alone (t1 fixed at 1 for all) collapse against t, not t / t1."""
    def run(alpha_sqrt_h, h, t1, depends_on_t1):
        alpha = alpha_sqrt_h / math.sqrt(h)
        ts = np.logspace(-4, 2, 40) * t1
        scale = t1 if depends_on_t1 else 1.0
        return {"alpha": alpha, "records": [{"t": 0.0, "F_rms": 0.0}] + [
            {"t": t, "F_rms": 0.01 * alpha * math.sqrt(h) * t / scale} for t in ts]}

    keys = [(h, a) for h in (20, 180) for a in (1e-2, 1e-1)]
    t1 = {(h, a): np.array([2.5 * a]) for h, a in keys}
    collapsing = {key: [run(key[1], key[0], t1[key][0], True)] for key in keys}
    assert findings.growth_collapse(collapsing, t1, [keys], 0) == pytest.approx(0.0, abs=1e-12)
    in_t = {key: [run(key[1], key[0], t1[key][0], False)] for key in keys}
    assert findings.growth_collapse(in_t, t1, [keys], 0) > 10


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


def test_a_claim_holds_only_when_its_whole_interval_lies_in_its_registered_band():
    band = findings.CLAIMS["alpha* exponent"].band  # (-0.6, -0.4)
    sizes = {"dataset": "sphere", "p": 20}
    decide = lambda interval: findings.decide("alpha* exponent", "q", lambda: (sum(interval) / 2, interval), 5,
                                              sizes)  # noqa: E731
    assert decide((band[0] + 0.01, band[1] - 0.01)).holds is True
    assert decide((band[1] + 0.01, band[1] + 0.2)).holds is False
    straddling = decide((band[0] - 0.05, band[0] + 0.05))
    assert straddling.holds is None and "straddles the band edge -0.6" in straddling.note
    assert findings.decide("alpha* exponent", "q", lambda: (-0.5, (-0.55, -0.45)), 4, sizes).holds is None


def test_a_lacking_sweep_leaves_the_claim_undecided_without_measuring():
    def measure():
        raise AssertionError("a claim the sweep lacks must not be measured")

    lacking = findings.decide("alpha* exponent", "q", measure, 5, {}, "no x in this sweep")
    assert (lacking.holds, lacking.note) == (None, "no x in this sweep") and math.isnan(lacking.measured)


@pytest.mark.parametrize("dataset, p, decided", [("fashion", 10_000, True), ("fashion-mnist", 10_000, True),
                                                 ("fashion", 300, False), ("mnist", 10_000, False)])
def test_a_claim_of_the_papers_data_and_p_is_decided_only_there(dataset, p, decided):
    claim = findings.decide("alpha* sqrt(h)", "q", lambda: (50.0, (40.0, 60.0)), 5, {"dataset": dataset, "p": p})
    assert claim.holds is (True if decided else None) and claim.measured == 50.0
    assert ("compared, not decided: the paper's value is for fashion-mnist at p = 10000" in claim.note) != decided


def test_every_registered_claim_names_its_finding_a_band_and_a_source():
    for key, spec in findings.CLAIMS.items():
        assert spec.finding in findings.FINDINGS and spec.source and spec.statement, key
        assert spec.band[0] < spec.band[1], key


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


def linear_gap_case(seed=0):
    """A LinearGap of a small FC net on random inputs, and the checkpoint times of a run to t = 30."""
    rng = np.random.default_rng(seed)
    x, x_kernel = rng.standard_normal((8, 5)), rng.standard_normal((4, 5))
    y = np.where(rng.standard_normal(8) > 0, 1.0, -1.0)
    net = lf.FC(5, 16, 2)
    gap = experiments.LinearGap(net, net.init(seed), x, y, x_kernel, 1.0, "softhinge")
    records = [{"t": t, "loss": math.exp(-t / 3)} for t in np.concatenate([[0.0], np.logspace(-3, np.log10(30), 200)])]
    return gap, records


def test_the_linear_flow_is_the_frozen_initial_kernel_flow_of_kernels_flow():
    gap, _ = linear_gap_case()
    theta, theta_kernel = gap.theta, gap.theta_kernel
    reference = kernels.flow(theta, gap.y, 1.0, theta_kernel, np.ones(len(theta_kernel)), max_time=2.0,
                             max_dout=1e-4, max_dgrad=1e-8)
    np.testing.assert_allclose(gap.linear_flow(np.array([2.0]))[0], reference.F_test, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("factor, expected", [(1.0, 0.0), (2.0, 0.5), (-1.0, 2.0)])
def test_the_linear_gap_is_the_relative_distance_to_the_linear_flow_at_t1_over_10_t1_and_10_t1(factor, expected):
    """A 'network' whose F is factor x F_lin at every checkpoint: |F - F_lin| / |F| = |1 - 1/factor| at t1/10,
    t1 and 10 t1 (t1 = 3 ln 2 from the records' loss exp(-t / 3)), up to reading F linearly in log t between
    checkpoints 44 per decade apart (1e-3); nan past the last checkpoint."""
    gap, records = linear_gap_case()
    times = np.array([r["t"] for r in records[1:]])
    for t, F in zip(times, gap.linear_flow(times)):
        gap.kept.append((t, factor * F))
    measured = gap.at_t1(records)
    assert measured["t1"] == pytest.approx(3 * math.log(2), rel=1e-3)
    np.testing.assert_allclose(measured["gaps"], expected, atol=1e-3)
    gap.kept = [(t, F) for t, F in gap.kept if t < 10]
    assert math.isnan(gap.at_t1(records)["gaps"][2])


def test_paper_md_lists_every_registered_claim_with_its_statement_and_source():
    text = (Path(__file__).resolve().parent.parent / "PAPER.md").read_text()
    section = text[text.index("## 8. The claims"):]
    rows = {line.split(" | ")[0][2:]: line for line in section.splitlines() if line.startswith("| ")}
    assert set(rows) - {"claim"} == set(findings.CLAIMS)
    for key, spec in findings.CLAIMS.items():
        row = rows[key]
        assert f"| {spec.finding} |" in row and spec.statement.replace("|", "\\|") in row, key
        assert spec.source.replace("|", "\\|") in row, key
