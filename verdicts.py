"""verdicts: the statistics that compare a measurement with the paper's claim.

Every number a finding reports comes with an interval from a bootstrap over
initialisation seeds (resample the seeds with replacement, recompute the
statistic, take the 2.5 and 97.5 percentiles). A `Claim` then says whether the
paper's value or statement holds for that interval: it holds when the interval
meets the paper's value widened by a stated tolerance, does not hold when it
misses it, and is undecided (None) when the run could not measure it.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 1000


def bootstrap(statistic, n_seeds, n_boot=N_BOOT, seed=0):
    """The 95 % percentile interval of statistic(seed_indices) over resampled seeds.

    statistic takes an integer array of n_seeds seed indices drawn with replacement
    and returns a float (nan when it cannot be computed on that resample: left out).
    """
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n_seeds, n_seeds)) for _ in range(n_boot)], dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < n_boot // 2:
        return (math.nan, math.nan)
    return tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))


def estimate(statistic, n_seeds, n_boot=N_BOOT):
    """statistic on all seeds, and its bootstrap interval: (value, (low, high))."""
    return float(statistic(np.arange(n_seeds))), bootstrap(statistic, n_seeds, n_boot)


def slope(x, y):
    """The least-squares slope of log y against log x (both positive)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or not np.all(np.isfinite(y) & (y > 0)):
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


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
    """One line of a verdict table: what was measured, what the paper says, and whether it holds."""

    quantity: str
    measured: float
    low: float
    high: float
    paper: str
    holds: object  # True, False, or None (not measurable in this run)
    note: str = ""

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


def near(quantity, measured, interval, target, tolerance, paper=None, note=""):
    """Compare with the paper's value widened to [target - tolerance, target + tolerance].

    Holds when the interval meets that band and is no wider than 4 tolerances;
    does not hold when it misses the band; undecided when it meets it but is too
    wide to tell.
    """
    paper = paper or f"{target:g} +- {tolerance:g}"
    if not measurable(measured, interval):
        return unmeasured(quantity, measured, interval, paper, note)
    low, high = interval
    if high < target - tolerance or low > target + tolerance:
        return Claim(quantity, measured, low, high, paper, False, note)
    if high - low > 4 * tolerance:
        return Claim(quantity, measured, low, high, paper, None, note or "interval too wide to decide")
    return Claim(quantity, measured, low, high, paper, True, note)


def within(quantity, measured, interval, lower, upper, paper, note=""):
    """Holds when the interval meets the range [lower, upper] that the paper gives, else does not."""
    if not measurable(measured, interval):
        return unmeasured(quantity, measured, interval, paper, note)
    low, high = interval
    return Claim(quantity, measured, low, high, paper, bool(low <= upper and high >= lower), note)


def below(quantity, measured, interval, bound, paper, note=""):
    """Holds when the whole interval is below `bound` (e.g. a ratio < 1: a collapse), does not hold
    when it is all above, and is undecided when it straddles the bound."""
    if not measurable(measured, interval):
        return unmeasured(quantity, measured, interval, paper, note)
    low, high = interval
    holds = True if high < bound else False if low >= bound else None
    return Claim(quantity, measured, low, high, paper, holds,
                 note or ("the interval contains the bound" if holds is None else ""))


def sign_claim(quantity, measured, interval, expected_sign, paper, note=""):
    """Holds when the interval excludes 0 on the expected side (+1 or -1), does not hold when it
    excludes 0 on the other side, and is undecided (None) when it contains 0."""
    if not measurable(measured, interval):
        return unmeasured(quantity, measured, interval, paper, note)
    low, high = interval
    sign = 1 if low > 0 else -1 if high < 0 else 0
    return Claim(quantity, measured, low, high, paper, None if sign == 0 else sign == expected_sign,
                 note or ("no significant difference" if sign == 0 else ""))


def winner(quantity, a_name, a, b_name, b, paper_winner, note=""):
    """Which of two independent seed samples is lower (a test error), by the bootstrap interval of
    mean(a) - mean(b): the claim "paper_winner is better" (see sign_claim)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(0)
    boot = [a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean()
            for _ in range(N_BOOT)]
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    found = f"{a_name} better" if high < 0 else f"{b_name} better" if low > 0 else "no significant difference"
    expected = -1 if paper_winner == a_name else +1
    return sign_claim(quantity, float(a.mean() - b.mean()), (low, high), expected, f"{paper_winner} better",
                      f"{found}; {note}" if note else found)


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
        lines.append(f"| {c.quantity} | {c.measured:.4g} [{c.low:.4g}, {c.high:.4g}] | {c.paper} | "
                     f"{verdict_word(c.holds)} | {c.note} |")
    return lines
