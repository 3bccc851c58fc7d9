"""verdicts: the statistics that compare a measurement with the paper's claim.

Every claim of the paper (its findings (i) to (iv), PAPER.md section 6) is a band of values: a
number with a tolerance (`near`), a range (`within`), a bound (`below`) or a sign (`sign_claim`,
`winner`). A measurement is an estimate and its 95 % interval over the initialisation seeds. One
rule, the equivalence rule, turns the two into a verdict:

- the claim holds when the whole interval lies inside the band,
- it does not hold when the whole interval lies outside the band,
- it is undecided otherwise, and the note says which edge of the band the interval straddles.

So a vaguer measurement (a wider interval) can only move a verdict towards undecided, never
towards holds. With fewer than MIN_SEEDS seeds no interval is trusted and every verdict is
undecided ("too few seeds").

The intervals keep their 95 % at the few seeds a run has (tests/test_verdicts.py measures their
coverage on planted data):

- a mean over seeds, or the mean of paired differences (the same seeds on both sides): Student's
  t interval (`t_interval`);
- two independent samples of seeds (`winner`, finding (ii)): Welch's t interval for the difference
  of their means, with the Welch-Satterthwaite degrees of freedom (`welch_interval`);
- any other statistic of the seeds, in particular one that averages over the seeds inside itself
  (an ensemble's test error, finding (iii)): the delete-one jackknife over seeds (`jackknife`).
  The estimate is the statistic on all n seeds, so an ensemble keeps its size; the n statistics on
  n - 1 seeds give only its spread. The jackknife variance errs on the large side (Efron and
  Stein, 1981), so for an ensemble's error the interval covers more than 95 %. Where the statistic
  is a mean over test points, the test set's own sampling noise is added;
- the exponent of a power law (findings (i), (iii), (iv)): the jackknife interval of the
  least-squares slope in log-log, widened to contain every local slope between consecutive points
  (`power_law`, `local_slopes`). A power law with an exponent in the band has its local slope in
  the band at every scale, so the lack of fit enters the interval, not only the seed noise.

Every interval contains its estimate; a `Claim` whose estimate lies outside its own interval is a
bug and raises.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # the coverage of every interval
MIN_SEEDS = 5  # fewer seeds than this: every verdict is undecided


# ---------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------


def t_quantile(df, level=LEVEL):
    """The two-sided Student-t quantile: P(|T_df| <= q) = level."""
    return stats.t.ppf((1 + level) / 2, df)


def _scalar(value):
    """A 0-d result as a float; arrays (one value per independent sample) as they are."""
    return float(value) if np.ndim(value) == 0 else value


def t_interval(values, level=LEVEL):
    """The mean over seeds (the last axis) and its Student-t interval: (mean, (low, high)).

    mean +- t_{n-1} s / sqrt(n), with s the standard deviation over the n seeds (ddof = 1). For
    paired differences (the same seeds on both sides) pass a - b. Leading axes are independent
    samples (arrays in, arrays out); n < 2 gives a nan interval.
    """
    values = np.asarray(values, dtype=float)
    n = values.shape[-1]
    mean = values.mean(axis=-1)
    if n < 2:
        return _scalar(mean), (_scalar(mean * math.nan), _scalar(mean * math.nan))
    half = t_quantile(n - 1, level) * values.std(axis=-1, ddof=1) / math.sqrt(n)
    return _scalar(mean), (_scalar(mean - half), _scalar(mean + half))


def welch_interval(a, b, level=LEVEL):
    """mean(a) - mean(b) for two independent samples (the last axis) and its Welch t interval.

    The difference +- t_nu sqrt(s_a^2 / n_a + s_b^2 / n_b), with the Welch-Satterthwaite degrees of
    freedom nu = (v_a + v_b)^2 / (v_a^2 / (n_a - 1) + v_b^2 / (n_b - 1)), v = s^2 / n. Both samples
    need 2 values or more (else the interval is nan).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = a.shape[-1], b.shape[-1]
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    if min(na, nb) < 2:
        return _scalar(diff), (_scalar(diff * math.nan), _scalar(diff * math.nan))
    va, vb = a.var(axis=-1, ddof=1) / na, b.var(axis=-1, ddof=1) / nb
    se = np.sqrt(va + vb)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(se > 0, (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)), na + nb - 2)
    half = t_quantile(df, level) * se
    return _scalar(diff), (_scalar(diff - half), _scalar(diff + half))


def jackknife(statistic, n_seeds, per_point=False, level=LEVEL):
    """statistic on all seeds and its delete-one jackknife interval over seeds: (value, (low, high)).

    statistic takes an integer array of seed indices (all n of them, or n - 1 with one left out)
    and returns a float, nan where it cannot be computed. With the values theta_i on the seeds
    without seed i, the jackknife variance is (n - 1)/n sum_i (theta_i - mean theta)^2, and the
    interval is value +- t_{n-1} times its square root. The value is taken on all n seeds, so a
    statistic of an ensemble keeps the ensemble's size; for a mean this is `t_interval` exactly.

    per_point: statistic returns one value per test point, and the statistic is their mean. The
    test points are a sample too: their variance over points / the number of points is added to
    the seeds' variance, with Welch-Satterthwaite degrees of freedom. Any nan gives a nan interval.
    """
    reduce = np.mean if per_point else float
    everything = np.arange(n_seeds)
    on_all = np.asarray(statistic(everything), dtype=float)
    value = float(reduce(on_all))
    if n_seeds < 2:
        return value, (math.nan, math.nan)
    left_out = np.array([reduce(np.asarray(statistic(np.delete(everything, i)), dtype=float))
                         for i in range(n_seeds)])
    if not (math.isfinite(value) and np.all(np.isfinite(left_out))):
        return value, (math.nan, math.nan)
    var_seeds = (n_seeds - 1) / n_seeds * float(np.sum((left_out - left_out.mean()) ** 2))
    var_points, df = 0.0, n_seeds - 1
    if per_point:
        n_points = on_all.size
        var_points = float(on_all.var(ddof=1)) / n_points
        if var_seeds + var_points > 0:
            df = (var_seeds + var_points) ** 2 / (var_seeds**2 / (n_seeds - 1) + var_points**2 / (n_points - 1))
    half = float(t_quantile(df, level)) * math.sqrt(var_seeds + var_points)
    return value, (value - half, value + half)


def estimate(statistic, n_seeds):
    """statistic on all seeds and its interval, (value, (low, high)): the `jackknife`."""
    return jackknife(statistic, n_seeds)


# ---------------------------------------------------------------------------
# Power laws, crossings and collapses
# ---------------------------------------------------------------------------


def slope(x, y):
    """The least-squares slope of log y against log x (both positive)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or not np.all(np.isfinite(y) & (y > 0)):
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def local_slopes(x, y):
    """The slopes of log y against log x between consecutive distinct x (sorted), as an array.

    Where x repeats (points pooled over curves), log y is averaged at each x first. A power law
    y = c x^b has every local slope b; a curve that bends has a spread of them.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not np.all(np.isfinite(y) & (y > 0)):
        return np.full(max(len(np.unique(x)) - 1, 0), math.nan)
    distinct, where = np.unique(x, return_inverse=True)
    log_y = np.bincount(where, np.log(y)) / np.bincount(where)
    return np.diff(log_y) / np.diff(np.log(distinct))


def power_law(x, statistic, n_seeds, level=LEVEL):
    """The exponent b of y ~ x^b and its interval: (b, (low, high)).

    statistic(seed indices) gives y at every x from those seeds (e.g. the variance over them).
    b is `slope` on all seeds; the interval is its `jackknife` interval widened to contain every
    `local_slopes` of y on all seeds, so that it carries the lack of fit as well as the seed noise.
    """
    value, (low, high) = jackknife(lambda idx: slope(x, statistic(idx)), n_seeds, level=level)
    local = local_slopes(x, statistic(np.arange(n_seeds)))
    if not (math.isfinite(low) and np.all(np.isfinite(local))):
        return value, (low, high)
    return value, (float(np.min(local, initial=low)), float(np.max(local, initial=high)))


def crossing(x, y, c):
    """The first x at which y falls through c (y decreasing in x), interpolated in log-log; nan if none.

    x increasing, y > 0. Between the bracketing points log y is taken linear in log x.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    for i in range(len(x) - 1):
        if y[i] >= c > y[i + 1]:
            lx, ly = np.log(x[i:i + 2]), np.log(y[i:i + 2])
            return float(np.exp(lx[0] + (math.log(c) - ly[0]) * (lx[1] - lx[0]) / (ly[1] - ly[0])))
    return math.nan


def rescale(errors):
    """(err - min) / (max - min) along the last axis: the rescaled error of finding 1."""
    errors = np.asarray(errors, dtype=float)
    low, high = errors.min(axis=-1, keepdims=True), errors.max(axis=-1, keepdims=True)
    return (errors - low) / np.where(high > low, high - low, np.nan)


def collapse_ratio(x_by_curve, y_by_curve, shift_by_curve, points=25):
    """How much better curves collapse against x than against x / shift: the spread ratio.

    Each curve k is y_k(x_k) (log x). The spread is the mean over a common grid of
    the standard deviation across curves of (log y, or y if it can be <= 0). The
    ratio spread(x) / spread(x / shift) is < 1 when x is the better variable.
    """
    def spread(xs):
        logs = [np.log(np.asarray(x, dtype=float)) for x in xs]
        grid = np.linspace(max(l.min() for l in logs), min(l.max() for l in logs), points)
        if grid[0] >= grid[-1]:
            return math.nan
        values = [np.interp(grid, l, _transform(y)) for l, y in zip(logs, y_by_curve)]
        return float(np.mean(np.std(values, axis=0)))

    if len(y_by_curve) < 2:
        return math.nan  # one curve always collapses onto itself
    shifted = [np.asarray(x, dtype=float) / s for x, s in zip(x_by_curve, shift_by_curve)]
    reference = spread(shifted)
    return spread(x_by_curve) / reference if reference > 0 else math.nan


def _transform(y):
    """log y for positive curves (kernel change), y itself otherwise (rescaled error)."""
    y = np.asarray(y, dtype=float)
    return np.log(y) if np.all(y > 0) else y


@dataclass
class Claim:
    """One line of a verdict table: what was measured, what the paper says, and whether it holds.

    An estimate outside its own interval is a bug of the interval's method: it raises.
    """

    quantity: str
    measured: float
    low: float
    high: float
    paper: str
    holds: object  # True, False, or None (undecided, or not measurable in this run)
    note: str = ""

    def __post_init__(self):
        if measurable(self.measured, (self.low, self.high)) and not self.low <= self.measured <= self.high:
            raise ValueError(f"{self.quantity}: the estimate {self.measured:.6g} lies outside its interval "
                             f"[{self.low:.6g}, {self.high:.6g}]; the interval's method is wrong for this statistic")

    def as_dict(self):
        return asdict(self)


def unmeasured(quantity, measured, interval, paper, note):
    """A claim that this run could not measure (a nan, e.g. no crossing in range)."""
    return Claim(quantity, measured, interval[0], interval[1], paper, None, note or "not measurable here")


def missing(quantity, paper, lacking):
    """A claim that the sweep gives nothing to measure for: undecided, and its note says what is
    missing (e.g. lacking = "no alpha sqrt(h) <= 0.1 in this sweep")."""
    return Claim(quantity, math.nan, math.nan, math.nan, paper, None, lacking)


def measurable(measured, interval):
    return all(math.isfinite(v) for v in (measured, *interval))


def equivalence(interval, lower=-math.inf, upper=math.inf, strict=False):
    """The equivalence rule: (holds, why undecided) for an interval against the band [lower, upper].

    True when the interval lies inside the band, False when it lies outside, None when it straddles
    an edge of the band (the reason names the edge). strict: the band excludes its edges (x < bound,
    x > 0), so an interval that touches an edge is not inside and one that ends on it is outside.
    """
    low, high = interval
    inside = (lower < low and high < upper) if strict else (lower <= low and high <= upper)
    outside = (high <= lower or low >= upper) if strict else (high < lower or low > upper)
    if inside:
        return True, ""
    if outside:
        return False, ""
    edges = [edge for edge in (lower, upper) if math.isfinite(edge) and low <= edge <= high]
    if len(edges) == 2:
        return None, f"the interval straddles both band edges, {lower:g} and {upper:g}"
    return None, f"the interval straddles the band edge {edges[0]:g}"


def verdict(quantity, measured, interval, paper, note, band, strict=False, n_seeds=None):
    """The claim that `measured` with its interval lies in `band` = (lower, upper) by the equivalence rule.

    Undecided when it is not measurable or n_seeds (when given) is below MIN_SEEDS; the note says why,
    before the caller's note.
    """
    if not measurable(measured, interval):
        return unmeasured(quantity, measured, interval, paper, note)
    low, high = interval
    if n_seeds is not None and n_seeds < MIN_SEEDS:
        holds, why = None, f"too few seeds (n < {MIN_SEEDS})"
    else:
        holds, why = equivalence(interval, *band, strict)
    return Claim(quantity, measured, low, high, paper, holds, "; ".join(s for s in (why, note) if s))


def near(quantity, measured, interval, target, tolerance, paper=None, note="", n_seeds=None):
    """The claim "the value is target +- tolerance": the band [target - tolerance, target + tolerance]."""
    paper = paper or f"{target:g} +- {tolerance:g}"
    return verdict(quantity, measured, interval, paper, note, (target - tolerance, target + tolerance),
                   n_seeds=n_seeds)


def within(quantity, measured, interval, lower, upper, paper, note="", n_seeds=None):
    """The claim "the value lies between lower and upper": the band [lower, upper]."""
    return verdict(quantity, measured, interval, paper, note, (lower, upper), n_seeds=n_seeds)


def below(quantity, measured, interval, bound, paper, note="", n_seeds=None):
    """The claim "the value is below bound" (e.g. a ratio < 1: a collapse): the band x < bound."""
    return verdict(quantity, measured, interval, paper, note, (-math.inf, bound), strict=True, n_seeds=n_seeds)


def sign_claim(quantity, measured, interval, expected_sign, paper, note="", n_seeds=None):
    """The claim "the value has the sign expected_sign" (+1 or -1): the band x > 0 or x < 0."""
    band = (0.0, math.inf) if expected_sign > 0 else (-math.inf, 0.0)
    return verdict(quantity, measured, interval, paper, note, band, strict=True, n_seeds=n_seeds)


def winner(quantity, a_name, a, b_name, b, paper_winner, note=""):
    """The claim "paper_winner has the lower mean" (a test error) for two independent seed samples:
    `sign_claim` on mean(a) - mean(b) with its `welch_interval`; the seeds are the smaller sample's."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff, (low, high) = welch_interval(a, b)
    found = f"{a_name} better" if high < 0 else f"{b_name} better" if low > 0 else "no significant difference"
    expected = -1 if paper_winner == a_name else +1
    return sign_claim(quantity, diff, (low, high), expected, f"{paper_winner} better",
                      f"{found}; {note}" if note else found, n_seeds=min(len(a), len(b)))


def verdict_word(holds):
    return {True: "holds", False: "does not hold", None: "undecided"}[holds]


def table(claims):
    """The verdict table as aligned text lines."""
    rows = [("quantity", "measured [95% interval]", "paper", "verdict", "note")]
    for c in claims:
        rows.append((c.quantity, f"{c.measured:.4g} [{c.low:.4g}, {c.high:.4g}]", c.paper, verdict_word(c.holds),
                     c.note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]


def markdown_table(claims):
    """The verdict table in Markdown."""
    lines = ["| quantity | measured [95% interval] | paper | verdict | note |", "|---|---|---|---|---|"]
    for c in claims:
        cells = (c.quantity, f"{c.measured:.4g} [{c.low:.4g}, {c.high:.4g}]", c.paper, verdict_word(c.holds), c.note)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines
