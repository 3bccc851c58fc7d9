"""findings: what each of the paper's findings computes, from its runs to its verdict.

Each finding takes a `Context` (where run results are stored and how runs are
executed) and its sizes, runs its sweep of `experiments.fit` configs through
`sweep.run`, measures the paper's quantities with bootstrap intervals over the
initialisation seeds, and returns an `Outcome`: the numbers that its figure is
drawn from and the claims of its verdict table.

Runs are shared: a config is identified by its content, so where two findings
ask for the same run (at quick scale crossover, fluctuations, timescale and the
FC part of regimes use one grid) it is computed once.
"""
import collections
import copy
import math
from dataclasses import dataclass, field

import numpy as np

import datasets
import experiments
import lazyfeat as lf
import sweep
import verdicts as V

# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------

MAX_STEPS = 50_000  # a deterministic safety net: a run that has not fitted by then stops

QUICK_GRID = {"dataset": "fashion", "d": None, "p": 300, "p_test": 2000, "L": 3, "h": [20, 60, 180],
              "alpha_sqrt_h": [1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3, 1e4], "seeds": 5, "kernel_points": 100}
HALF_DECADES = [10.0 ** (k / 2) for k in range(-8, 15)]  # 1e-4 .. 1e7
PAPER_GRID = {"dataset": "fashion", "d": None, "p": 10_000, "p_test": 50_000, "L": 3, "h": [100, 300, 1000],
              "alpha_sqrt_h": HALF_DECADES, "seeds": 10, "kernel_points": 1000}

SCALES = {
    "quick": {
        "crossover": {**QUICK_GRID, "bisect_steps": 2, "c": 1.0},
        "regimes": {
            "fc": {**QUICK_GRID, "h": [180], "ends": [1e-2, 1e4]},
            "pca": {"dataset": "fashion", "d": None, "pca": 10, "p": 500, "p_test": 2000, "L": 5, "h": [100],
                    "ends": [1e-2, 1e4], "seeds": 6, "kernel_points": 0},
            "cnn": {"dataset": "fashion", "d": None, "arch": "cnn", "p": 64, "p_test": 1000, "h": [8],
                    "ends": [1e-2, 1e4], "seeds": 2, "kernel_points": 0},
        },
        "fluctuations": {**QUICK_GRID, "end_seeds": 10,
                         "ensemble_comparison": {"dataset": "fashion", "d": None, "p": 1000, "p_test": 2000, "L": 3,
                                                 "h": [20], "seeds": 10, "kernel_points": 0}},
        "timescale": {**QUICK_GRID},
        "kernels": {**QUICK_GRID, "h": [60], "alpha_sqrt_h": [1e-2, 1e0, 1e2, 1e4], "seeds": 2},
    },
    "paper": {
        "crossover": {**PAPER_GRID, "bisect_steps": 5, "c": 1.0},
        "regimes": {
            "fc": {**PAPER_GRID, "h": [100, 300, 1000], "ends": [1e-4, 1e7]},
            "pca": {"dataset": "mnist", "d": None, "pca": 10, "p": 5000, "p_test": 50_000, "L": 5, "h": [100, 800],
                    "ends": [1e-4, 1e7], "seeds": 10, "kernel_points": 0},
            "cnn": {"dataset": "mnist", "d": None, "arch": "cnn", "p": 5000, "p_test": 50_000, "h": [32, 128],
                    "ends": [1e-4, 1e7], "seeds": 5, "kernel_points": 0},
        },
        "fluctuations": {**PAPER_GRID, "p": 1000, "h": [27, 59, 128, 277, 600, 1300, 2800, 5170], "seeds": 20,
                         "alpha_sqrt_h": [10.0 ** k for k in range(-3, 6)], "end_seeds": 20},
        "timescale": {**PAPER_GRID},
        "kernels": {**PAPER_GRID, "p": 5000, "h": [300], "alpha_sqrt_h": [10.0 ** k for k in range(-3, 7)],
                    "seeds": 3},
    },
}

# What the paper used where this project's quick scale may use something else.
PAPER_DATA = {"pca": "mnist", "cnn": "mnist", "fc": "fashion-mnist"}


def sizes_for(finding, scale, overrides=None, strict=True):
    """The sizes of a finding at a scale, with `overrides` (key -> value) applied wherever the key occurs.

    strict: a key that the finding does not have is an error (else it is skipped). Setting `seeds`
    sets `end_seeds` (finding 3's extra seeds at the ends) too, unless that is set as well.
    """
    sizes = copy.deepcopy(SCALES[scale][finding])
    overrides = dict(overrides or {})
    if "seeds" in overrides and "end_seeds" not in overrides:
        _override(sizes, "end_seeds", overrides["seeds"])
    for key, value in overrides.items():
        if not _override(sizes, key, value) and strict:
            raise ValueError(f"{finding} has no size {key!r}; its sizes are {sorted(_keys(sizes))}")
    return sizes


def size_keys(finding, scale):
    """Every size key of a finding, nested parts included."""
    return _keys(SCALES[scale][finding])


def _override(sizes, key, value):
    """Set `key` in `sizes` and in every nested part that has it; whether any had it.

    A part (a nested dict, e.g. regimes' "pca") is never replaced: its own keys are.
    """
    found = key in sizes and not isinstance(sizes[key], dict)
    if found:
        sizes[key] = value
    for part in sizes.values():
        if isinstance(part, dict):
            found = _override(part, key, value) or found
    return found


def _keys(sizes):
    return set(sizes) | {k for part in sizes.values() if isinstance(part, dict) for k in _keys(part)}


# ---------------------------------------------------------------------------
# Running configs
# ---------------------------------------------------------------------------


# Networks per ensemble by default: on a GPU, enough to fill it; on the CPU, 8 per core that a
# worker computes on (lazyfeat.train splits an ensemble into one block of members per core), and
# fewer for wide networks (experiments.ensembles keeps a few activations per member in the cache).
ENSEMBLE_MEMBERS = {"cpu": 8, "gpu": 64}


def worker_cores(workers):
    """The cores each of `workers` sweep workers computes on (sweep gives each its share of BLAS threads)."""
    return max(1, lf.cpu_threads(np) // workers)


def default_members(device, workers):
    """Networks per ensemble when the user sets no cap: ENSEMBLE_MEMBERS, times each worker's cores on the CPU
    (where `experiments.ensembles` may take fewer, to stay in the cache)."""
    if device != "cpu":
        return ENSEMBLE_MEMBERS[device]
    return ENSEMBLE_MEMBERS["cpu"] * worker_cores(workers)


@dataclass
class Context:
    """Where run results are stored, how runs are executed, and how many were computed or found stored.

    Runs of `experiments.fit` that differ only in seed and alpha sqrt(h) are trained
    together as ensembles of at most max_members networks (None: `default_members`)
    and max_memory bytes (None: half the free memory);
    max_members = 1 trains one network at a time.
    """

    results_dir: str = "results"
    workers: int = 1
    scheduler: str = None
    device: str = "cpu"
    progress: bool = True
    tally: collections.Counter = field(default_factory=collections.Counter)
    max_members: int = None
    max_memory: float = None

    def ensembles(self):
        """How this context groups runs of `experiments.fit` into ensembles (a sweep.Group), or None."""
        members = self.max_members or default_members(self.device, self.workers)
        if members == 1:
            return None
        memory = self.max_memory or lf.available_memory(lf.backend(self.device)) / 2
        cores = worker_cores(self.workers) if self.device == "cpu" and not self.max_members else None
        return experiments.ensembles(members, memory, cores)

    def sweep(self, configs, desc, fn=experiments.fit):
        group = self.ensembles() if fn is experiments.fit else None
        return sweep.run(fn, configs, self.results_dir, self.workers, self.scheduler,
                         self.progress, desc, self.tally, group)


RUN_KEYS = ("dataset", "pca", "d", "p", "p_test", "L", "arch", "kernel_points")


def run_config(ctx, sizes, h, alpha_sqrt_h, seed, **extra):
    """The experiments config of one run of a finding (the same sizes give the same config)."""
    config = {key: sizes[key] for key in RUN_KEYS if sizes.get(key) is not None}
    config.update(h=h, alpha_sqrt_h=alpha_sqrt_h, seed=seed, store_F_test=True, checkpoints=20,
                  max_steps=MAX_STEPS, device=ctx.device, **extra)
    return config


def run_grid(ctx, sizes, hs, alphas, desc, **extra):
    """Every (h, alpha sqrt(h), seed) run; returns {(h, alpha sqrt(h)): [result of each seed]}.

    The widest networks come first, so that a sweep's last jobs are short ones and every worker stays busy.
    """
    keys = [(h, a) for h in sorted(hs, reverse=True) for a in alphas]
    configs = [run_config(ctx, sizes, h, a, seed, **extra) for h, a in keys for seed in range(sizes["seeds"])]
    results = ctx.sweep(configs, desc)
    n = sizes["seeds"]
    return {key: results[i * n:(i + 1) * n] for i, key in enumerate(keys)}


def seed_array(runs, field_name):
    """One field of the runs of every seed, as an array with the seeds first."""
    return np.array([run[field_name] for run in runs], dtype=float)


def seed_arrays(runs_by_key, field_name):
    """seed_array of every key: e.g. {(h, alpha sqrt(h)): F_test of shape (seeds, points)}."""
    return {key: seed_array(runs, field_name) for key, runs in runs_by_key.items()}


def run_test_labels(config):
    """The test labels of a run, from the data path of the run itself (experiments.load_data)."""
    return experiments.load_data(experiments.full_config(config))[3]


def unfitted(runs_by_key):
    """How many runs did not reach "fitted"."""
    return sum(run["status"] != "fitted" for runs in runs_by_key.values() for run in runs)


@dataclass
class Outcome:
    """A finding's result: its numbers (what the figure shows) and the claims of its verdict."""

    name: str
    title: str
    numbers: dict
    claims: list
    notes: list = field(default_factory=list)


def status_note(runs_by_key):
    n = unfitted(runs_by_key)
    total = sum(len(runs) for runs in runs_by_key.values())
    return f"{total - n} of {total} runs fitted" + ("" if n == 0 else f"; {n} stopped early (counted as they ended)")


# ---------------------------------------------------------------------------
# Claims, and what a sweep lacks to measure them
# ---------------------------------------------------------------------------

SIDES = {"feature": ("<=", 1.0), "lazy": (">=", 100.0)}  # the alpha sqrt(h) of each regime (default bounds)


def side(alphas, regime, bound=None):
    """The alpha sqrt(h) of the sweep in a regime (feature: <= bound, lazy: >= bound), and their name."""
    op, default = SIDES[regime]
    bound = default if bound is None else bound
    return [a for a in alphas if (a <= bound if op == "<=" else a >= bound)], f"alpha sqrt(h) {op} {bound:g}"


def shortage(values, needed, what):
    """What the sweep lacks for a measurement that needs `needed` distinct `values` of `what`; "" if nothing."""
    have = len(set(values))
    if have >= needed:
        return ""
    return f"no {what} in this sweep" if have == 0 else f"only {have} {what} in this sweep (needs {needed})"


def end_lacking(alphas, regime):
    """What the sweep lacks to have an end in a regime; "" if nothing."""
    values, name = side(alphas, regime)
    return shortage(values, 1, name)


def claim(verdict, quantity, statistic, n_seeds, *args, paper, lacking="", **kwargs):
    """verdict(quantity, value, interval, *args) on statistic(seed indices) over all seeds and its
    bootstrap interval; undecided, saying what is missing, when the sweep lacks what it needs."""
    if lacking:
        return V.missing(quantity, paper, lacking)
    return verdict(quantity, *V.estimate(statistic, n_seeds), *args, paper=paper, **kwargs)


# ---------------------------------------------------------------------------
# The h = infinity predictor: the lazy limit at infinite width
# ---------------------------------------------------------------------------

H_INF_TOLERANCE = 0.02  # how close (in test error) the lazy end at the largest h must come to h = infinity


def infinite_width(ctx, sizes, desc):
    """The result of the h = infinity predictor on a finding's data and depth (experiments.fit_infinite:
    the frozen-kernel flow with the infinite-width NTK), stored like a run."""
    config = {key: sizes[key] for key in RUN_KEYS if key != "kernel_points" and sizes.get(key) is not None}
    config.update(store_F_test=True, checkpoints=20, max_steps=MAX_STEPS, device=ctx.device)
    return ctx.sweep([config], desc, fn=experiments.fit_infinite)[0]


def infinite_claim(quantity, gap, n_seeds, lacking):
    """gap(seed indices) = lazy-end error at the largest h - the h = infinity error: near 0."""
    return claim(V.near, quantity, gap, n_seeds, 0.0, H_INF_TOLERANCE, lacking=lacking,
                 paper=f"0: large h reaches h = inf (+- {H_INF_TOLERANCE:g})")


# ---------------------------------------------------------------------------
# 1. crossover: alpha* ~ 1/sqrt(h)
# ---------------------------------------------------------------------------


def bracket(alphas, changes, c):
    """The adjacent evaluated alphas between which the seed-averaged kernel change crosses c, or None."""
    order = np.argsort(alphas)
    a, m = np.asarray(alphas)[order], np.asarray(changes).mean(axis=1)[order]
    for i in range(len(a) - 1):
        if m[i] >= c > m[i + 1]:
            return float(a[i]), float(a[i + 1])
    return None


def bisect_alpha_star(ctx, sizes, kc):
    """Bisection in log alpha for the crossing of the seed-averaged kernel change with c.

    kc maps h -> {alpha sqrt(h): kernel changes of the seeds}; every step runs the
    seeds at the geometric midpoint of each h's bracket and adds them to kc.
    """
    seeds = range(sizes["seeds"])
    for step in range(sizes["bisect_steps"]):
        midpoints = {}
        for h in sizes["h"]:
            found = bracket(list(kc[h]), list(kc[h].values()), sizes["c"])
            if found:
                midpoints[h] = math.sqrt(found[0] * found[1])
        if not midpoints:
            return
        configs = [run_config(ctx, sizes, h, mid, s) for h, mid in midpoints.items() for s in seeds]
        results = iter(ctx.sweep(configs, f"crossover bisection {step + 1}/{sizes['bisect_steps']}"))
        for h, mid in midpoints.items():
            kc[h][mid] = [next(results)["kernel_change"] for _ in seeds]


def crossover(ctx, sizes):
    """Finding 1: the test error and the kernel change against alpha sqrt(h), and alpha*(h)."""
    hs, alphas, n, c = sizes["h"], sizes["alpha_sqrt_h"], sizes["seeds"], sizes["c"]
    if not sizes.get("kernel_points"):
        raise ValueError("crossover measures the kernel change: give kernel_points >= 1 (e.g. --kernel-points 100)")
    runs = run_grid(ctx, sizes, hs, alphas, "crossover")
    err = {h: np.array([seed_array(runs[h, a], "test_error") for a in alphas]) for h in hs}  # (alphas, seeds)
    kc = {h: {a: list(seed_array(runs[h, a], "kernel_change")) for a in alphas} for h in hs}
    bisect_alpha_star(ctx, sizes, kc)
    curves = {h: (np.array(sorted(kc[h])), np.array([kc[h][a] for a in sorted(kc[h])])) for h in hs}

    crossed = [h for h in hs if bracket(list(kc[h]), list(kc[h].values()), c)]
    (feature, feature_name), (lazy, lazy_name) = side(alphas, "feature"), side(alphas, "lazy")

    def alpha_star_sqrt_h(idx):
        return {h: V.crossing(a, k[:, idx].mean(axis=1), c) for h, (a, k) in curves.items()}

    def exponent(idx):
        stars = alpha_star_sqrt_h(idx)
        return V.slope(crossed, [stars[h] / math.sqrt(h) for h in crossed])

    def side_slope(idx, side_alphas):
        points = [(a, kc[h][a]) for h in hs for a in side_alphas]
        return V.slope([a for a, _ in points], [np.mean(np.array(k)[idx]) for _, k in points])

    def collapse(values_of):
        return lambda idx: V.collapse_ratio([alphas] * len(hs), [values_of(h, idx) for h in hs],
                                            [math.sqrt(h) for h in hs])

    kc_grid = {h: np.array([kc[h][a] for a in alphas]) for h in hs}
    curves_lacking = shortage(hs, 2, "width h") or shortage(alphas, 2, "alpha sqrt(h)")
    claims = [
        claim(V.below, "kernel change: spread against alpha sqrt(h) / against alpha",
              collapse(lambda h, idx: kc_grid[h][:, idx].mean(axis=1)), n, 1.0,
              paper="collapses against alpha sqrt(h) (ratio < 1)", lacking=curves_lacking),
        claim(V.below, "rescaled test error: spread against alpha sqrt(h) / against alpha",
              collapse(lambda h, idx: V.rescale(err[h][:, idx].mean(axis=1))), n, 1.0,
              paper="collapses against alpha sqrt(h) (ratio < 1)",
              note=f"the error differences between regimes are small at p={sizes['p']}; the paper's collapse is at "
                   "p=10k with 10 seeds", lacking=curves_lacking),
        claim(V.near, f"kernel change slope, feature side ({feature_name})", lambda idx: side_slope(idx, feature), n,
              -4 / 3, 0.25, paper="about -4/3 (+- 0.25)", lacking=shortage(feature, 2, feature_name)),
        claim(V.near, f"kernel change slope, lazy side ({lazy_name})", lambda idx: side_slope(idx, lazy), n,
              -1.0, 0.2, paper="about -1 (+- 0.2)", lacking=shortage(lazy, 2, lazy_name)),
    ]
    for h in hs:
        claims.append(claim(V.within, f"alpha* sqrt(h) where kernel change = {c:g}, h={h}",
                            lambda idx, h=h: alpha_star_sqrt_h(idx)[h], n, 10**1.0, 10**2.5, paper="10^1.5 to 10^2",
                            note="tolerance: half a decade on each side",
                            lacking="" if h in crossed else f"no crossing of kernel change {c:g} in this sweep"))
    claims.append(claim(V.near, "exponent of alpha* against h", exponent, n, -0.5, 0.1, paper="-1/2 (+- 0.1)",
                        lacking=shortage(crossed, 2, f"width h whose kernel change crosses {c:g}")))
    inf = infinite_width(ctx, sizes, "crossover h = inf")
    h_max, lazy_end = max(hs), int(np.argmax(alphas))
    claims.append(infinite_claim(f"lazy end (alpha sqrt(h) = {alphas[lazy_end]:g}), h={h_max}: error - h = inf error",
                                 lambda idx: err[h_max][lazy_end, idx].mean() - inf["test_error"], n,
                                 end_lacking(alphas, "lazy")))
    stars = alpha_star_sqrt_h(np.arange(n))
    numbers = {
        "h": hs, "alpha_sqrt_h": alphas, "c": c, "h_inf_error": inf["test_error"],
        "test_error_mean": {h: err[h].mean(axis=1).tolist() for h in hs},
        "test_error_std": {h: err[h].std(axis=1).tolist() for h in hs},
        "rescaled_error": {h: V.rescale(err[h].mean(axis=1)).tolist() for h in hs},
        "kernel_change_alphas": {h: curves[h][0].tolist() for h in hs},
        "kernel_change_mean": {h: curves[h][1].mean(axis=1).tolist() for h in hs},
        "alpha_star_sqrt_h": stars,
    }
    return Outcome("crossover", "Finding 1: the crossover alpha* ~ 1/sqrt(h)", numbers, claims, [status_note(runs)])


# ---------------------------------------------------------------------------
# 2. regimes: which regime is better depends on architecture and data
# ---------------------------------------------------------------------------

REGIME_PARTS = (("fc", "FC on images", "lazy"), ("pca", "FC on 10-PCA", "feature"), ("cnn", "CNN", "feature"))


def regimes(ctx, sizes):
    """Finding 2: test error at the lazy end against the feature end, for FC, FC on PCA, and the CNN."""
    claims, numbers, notes = [], {}, []
    for part, label, paper_winner in REGIME_PARTS:
        s = sizes[part]
        feature_end, lazy_end = s["ends"]
        runs = run_grid(ctx, s, s["h"], [feature_end, lazy_end], f"regimes {part}")
        if datasets.ALIASES.get(s["dataset"], s["dataset"]) != PAPER_DATA[part]:
            notes.append(f"{label}: run on {s['dataset']} (the paper used {PAPER_DATA[part]})")
        notes.append(f"{label}: {status_note(runs)}")
        inf = infinite_width(ctx, s, f"regimes {part} h = inf") if s.get("arch", "fc") == "fc" else None
        if inf:
            h_max = max(s["h"])
            lazy = seed_array(runs[h_max, lazy_end], "test_error")
            claims.append(infinite_claim(f"{label}, lazy end, h={h_max}: error - h = inf error",
                                         lambda idx, lazy=lazy: lazy[idx].mean() - inf["test_error"], len(lazy), ""))
        for h in s["h"]:
            lazy, feature = seed_array(runs[h, lazy_end], "test_error"), seed_array(runs[h, feature_end], "test_error")
            note = (f"p={s['p']}; the paper's FC claim is for p=10k (at p=1000 the authors' code finds "
                    "feature better)" if part == "fc" else f"p={s['p']}")
            claims.append(V.winner(f"{label} h={h}: error lazy - feature", "lazy", lazy, "feature", feature,
                                   paper_winner, note))
            numbers[f"{part} h={h}"] = {"lazy": lazy.tolist(), "feature": feature.tolist(), "paper": paper_winner,
                                        **({"h_inf": inf["test_error"]} if inf else {})}
    return Outcome("regimes", "Finding 2: which regime is better depends on architecture and data",
                   numbers, claims, notes)


# ---------------------------------------------------------------------------
# 3. fluctuations: delta F ~ h^(-1/2) in both regimes; ensembles
# ---------------------------------------------------------------------------


def output_variance(F, idx):
    """Var over the chosen seeds of F(x), averaged over the test points x. F: (seeds, points)."""
    return float(np.var(F[idx], axis=0, ddof=1).mean()) if len(set(idx.tolist())) > 1 else math.nan


def ensemble_error(F, y, idx):
    """The test error of the sign of the seed-averaged predictor."""
    return float(np.mean(y * F[idx].mean(axis=0) <= 0))


def fluctuations(ctx, sizes):
    """Finding 3: Var over seeds of F against h in both regimes, h Var against alpha sqrt(h), ensembles.

    The two ends of alpha sqrt(h), which every claim measures, get `end_seeds` seeds (at least `seeds`):
    a variance over a few seeds is itself noisy, and an ensemble gains with its size. The lazy ensemble
    against the feature ensemble is a statement at large p (the paper's is at p = 10k, and on its
    fluctuation scan at p = 1000): with an `ensemble_comparison` part (its own data, p, L, h and seeds)
    it is measured on that part's runs, else on the scan's.
    """
    hs, alphas = sizes["h"], sizes["alpha_sqrt_h"]
    ends = {"feature": min(alphas), "lazy": max(alphas)}
    n = max(sizes["seeds"], sizes.get("end_seeds", 0))
    runs = run_grid(ctx, sizes, hs, alphas, "fluctuations")
    runs.update(run_grid(ctx, {**sizes, "seeds": n}, hs, sorted(set(ends.values())), "fluctuations ends"))
    y = run_test_labels(run_config(ctx, sizes, hs[0], alphas[0], 0))
    F, single = seed_arrays(runs, "F_test"), seed_arrays(runs, "test_error")
    lacking = {regime: end_lacking(alphas, regime) for regime in ends}
    claims = []
    for regime, a in ends.items():
        claims.append(claim(V.near, f"slope of Var F against h, {regime} end (alpha sqrt(h) = {a:g})",
                            lambda idx, a=a: V.slope(hs, [output_variance(F[h, a], idx) for h in hs]), n,
                            -1.0, 0.25, paper="-1 (+- 0.25)", lacking=lacking[regime] or shortage(hs, 2, "width h")))
    for regime, a in ends.items():
        gain = lambda idx, a=a: np.mean([ensemble_error(F[h, a], y, idx) - single[h, a][idx].mean() for h in hs])
        claims.append(claim(V.below, f"ensemble - single-net error, {regime} end (mean over h)", gain, n, 0.0,
                            paper="ensemble better", lacking=lacking[regime],
                            note=f"{n} seeds at p={sizes['p']}; the paper averages 20 seeds at p=1000"))
    part = sizes.get("ensemble_comparison")
    if part:
        c_hs, c_n, c_p = part["h"], part["seeds"], part["p"]
        compared = run_grid(ctx, part, c_hs, sorted(set(ends.values())), "fluctuations ensemble comparison")
        cF, c_single = seed_arrays(compared, "F_test"), seed_arrays(compared, "test_error")
        cy = run_test_labels(run_config(ctx, part, c_hs[0], ends["feature"], 0))
        notes = [f"ensemble comparison (p={c_p}): {status_note(compared)}"]
    else:
        cF, cy, c_single, c_hs, c_n, c_p, notes = F, y, single, hs, n, sizes["p"], []
    lazy_minus_feature = lambda idx: np.mean([ensemble_error(cF[h, ends["lazy"]], cy, idx)
                                              - ensemble_error(cF[h, ends["feature"]], cy, idx) for h in c_hs])
    claims.append(claim(V.sign_claim, "ensemble error lazy - feature (mean over h)", lazy_minus_feature, c_n, -1,
                        paper="lazy ensemble better (2.4-2.5 % vs 2.9-3.0 % at p=10k)",
                        lacking=lacking["lazy"] or lacking["feature"],
                        note=f"{c_n} seeds at p={c_p}, h={', '.join(map(str, c_hs))}: a large-p statement, "
                             "like finding 2's FC claim"))
    inf = infinite_width(ctx, sizes, "fluctuations h = inf")
    h_max = max(hs)
    claims.append(infinite_claim(f"lazy ensemble error at h={h_max} - h = inf error",
                                 lambda idx: ensemble_error(F[h_max, ends["lazy"]], y, idx) - inf["test_error"], n,
                                 lacking["lazy"]))
    all_seeds = np.arange(n)
    numbers = {
        "h": hs, "alpha_sqrt_h": alphas,
        "h_var": {h: [h * output_variance(F[h, a], np.arange(len(F[h, a]))) for a in alphas] for h in hs},
        "var_at_ends": {regime: [output_variance(F[h, a], all_seeds) for h in hs] for regime, a in ends.items()},
        "ensemble_error": {regime: [ensemble_error(F[h, a], y, all_seeds) for h in hs] for regime, a in ends.items()},
        "single_error": {regime: [float(single[h, a].mean()) for h in hs] for regime, a in ends.items()},
        "h_inf_error": inf["test_error"],
        "comparison": {
            "h": c_hs, "p": c_p,
            "ensemble_error": {regime: [ensemble_error(cF[h, a], cy, np.arange(c_n)) for h in c_hs]
                               for regime, a in ends.items()},
            "single_error": {regime: [float(c_single[h, a].mean()) for h in c_hs] for regime, a in ends.items()},
        },
    }
    return Outcome("fluctuations", "Finding 3: output fluctuations delta F ~ h^(-1/2) in both regimes",
                   numbers, claims, [status_note(runs)] + notes)


# ---------------------------------------------------------------------------
# 4. timescale: t1 ~ sqrt(h) alpha in the feature regime
# ---------------------------------------------------------------------------


def first_time_below(records, fraction=0.5):
    """t1: the first time alpha^2 L falls below `fraction` of its initial value (log-interpolated)."""
    target = fraction * records[0]["loss"]
    for before, after in zip(records, records[1:]):
        if after["loss"] <= target < before["loss"]:
            if before["t"] <= 0:
                return after["t"]
            u = (math.log(target) - math.log(before["loss"])) / (math.log(after["loss"]) - math.log(before["loss"]))
            return math.exp(math.log(before["t"]) + u * (math.log(after["t"]) - math.log(before["t"])))
    return math.nan


def early_growth_slope(records, t1):
    """The log-log slope of |F(t) - F(0)| (RMS over training points) against t for 0 < t < t1 / 10."""
    early = [r for r in records if 0 < r["t"] < t1 / 10 and r["F_rms"] > 0]
    return V.slope([r["t"] for r in early], [r["F_rms"] for r in early]) if len(early) >= 3 else math.nan


def timescale(ctx, sizes):
    """Finding 4: alpha^2 L(t), t1 against alpha sqrt(h), and the linear growth of F for t << t1."""
    hs, alphas, n = sizes["h"], sizes["alpha_sqrt_h"], sizes["seeds"]
    runs = run_grid(ctx, sizes, hs, alphas, "timescale")
    t1 = {key: np.array([first_time_below(r["records"]) for r in rs]) for key, rs in runs.items()}
    (feature, feature_name), (lazy, lazy_name) = side(alphas, "feature", 0.1), side(alphas, "lazy")

    def pooled_slope(side_alphas, idx):
        points = [(a, np.nanmean(t1[h, a][idx])) for h in hs for a in side_alphas]
        return V.slope(*zip(*points))

    ratio = lambda idx: float(np.nanmean([np.nanmean(t1[h, a][idx]) / a for h in hs for a in feature]))
    growth = {key: np.array([early_growth_slope(r["records"], t) for r, t in zip(rs, t1[key])])
              for key, rs in runs.items()}
    mean_growth = lambda idx: float(np.nanmean([growth[key][idx] for key in runs]))
    claims = [
        claim(V.near, f"slope of t1 against alpha sqrt(h), feature side ({feature_name})",
              lambda idx: pooled_slope(feature, idx), n, 1.0, 0.2, paper="1: t1 ~ alpha sqrt(h) (+- 0.2)",
              lacking=shortage(feature, 2, feature_name)),
        claim(V.within, f"t1 / (alpha sqrt(h)), feature side ({feature_name})", ratio, n, 1.0, 6.0,
              paper="about 2-3", note="tolerance: a factor 2", lacking=shortage(feature, 1, feature_name)),
        claim(V.near, f"slope of t1 against alpha sqrt(h), lazy side ({lazy_name})",
              lambda idx: pooled_slope(lazy, idx), n, 0.0, 0.1, paper="0: t1 independent of alpha (+- 0.1)",
              lacking=shortage(lazy, 2, lazy_name)),
        claim(V.near, "slope of |F(t) - F(0)| against t for t < t1/10", mean_growth, n, 1.0, 0.1,
              paper="1: linear growth (+- 0.1)"),
    ]
    h_show = hs[-1]
    numbers = {
        "h": hs, "alpha_sqrt_h": alphas,
        "t1_mean": {h: [float(np.nanmean(t1[h, a])) for a in alphas] for h in hs},
        "loss_curves": {a: [[r["t"], r["loss"]] for r in runs[h_show, a][0]["records"]] for a in alphas},
        "growth_curves": {a: [[r["t"] / t1[h_show, a][0], r["F_rms"]] for r in runs[h_show, a][0]["records"]]
                          for a in alphas},
        "h_shown": h_show,
    }
    return Outcome("timescale", "Finding 4: the time scale t1 ~ sqrt(h) alpha of the feature regime",
                   numbers, claims, [status_note(runs)])


# ---------------------------------------------------------------------------
# 5. kernels: the init. and final kernel baselines against the network
# ---------------------------------------------------------------------------


def kernels(ctx, sizes):
    """The network against the kernel predictors with Theta frozen at w0 and at the end of training."""
    hs, alphas, n = sizes["h"], sizes["alpha_sqrt_h"], sizes["seeds"]
    runs = run_grid(ctx, sizes, hs, alphas, "kernels", baselines=True)
    err = {key: {"network": seed_array(rs, "test_error"),
                 "init_kernel": np.array([r["init_kernel"]["test_error"] for r in rs]),
                 "final_kernel": np.array([r["final_kernel"]["test_error"] for r in rs])} for key, rs in runs.items()}
    claims = []
    for h in hs:
        lazy, feature = err[h, max(alphas)], err[h, min(alphas)]
        claims.append(claim(V.near, f"h={h}, lazy end: network - init. kernel error",
                            lambda idx: (lazy["network"][idx] - lazy["init_kernel"][idx]).mean(), n, 0.0, 0.0025,
                            paper="equal: the lazy limit is the init. kernel (+- 0.25 %)",
                            lacking=end_lacking(alphas, "lazy")))
        closer = lambda idx: (np.abs(feature["init_kernel"][idx] - feature["network"][idx]).mean()
                              - np.abs(feature["final_kernel"][idx] - feature["network"][idx]).mean())
        claims.append(claim(V.sign_claim, f"h={h}, feature end: |init - network| - |final - network|", closer, n,
                            +1, paper="the final kernel is closer to the network",
                            lacking=end_lacking(alphas, "feature")))
    inf = infinite_width(ctx, sizes, "kernels h = inf")
    h_max = max(hs)
    claims.append(infinite_claim(f"h={h_max}, lazy end: init. kernel error - h = inf kernel error",
                                 lambda idx: err[h_max, max(alphas)]["init_kernel"][idx].mean() - inf["test_error"],
                                 n, end_lacking(alphas, "lazy")))
    numbers = {"h": hs, "alpha_sqrt_h": alphas, "h_inf_error": inf["test_error"],
               "errors": {h: {kind: [float(err[h, a][kind].mean()) for a in alphas]
                              for kind in ("network", "init_kernel", "final_kernel")} for h in hs}}
    return Outcome("kernels", "Kernel baselines: the network against its initial and final NTK",
                   numbers, claims, [status_note(runs)])


FINDINGS = {"crossover": crossover, "regimes": regimes, "fluctuations": fluctuations, "timescale": timescale,
            "kernels": kernels}
