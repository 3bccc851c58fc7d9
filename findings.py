"""findings: what each of the paper's findings computes, from its runs to its verdict.

Each finding takes a `Context` (where run results are stored and how runs are
executed) and its sizes, runs its sweep of `experiments.fit` configs through
`sweep.run`, measures the paper's quantities with intervals over the initialisation
seeds (verdicts.py says which interval for which statistic), and returns an `Outcome`:
the numbers that its figure is drawn from and the claims of its verdict table, each
decided against its entry in CLAIMS, the registry of the paper's claims.

Runs are shared: a config is identified by its content, so where two findings
ask for the same run (at quick scale crossover, fluctuations, timescale and the
FC part of regimes use one grid) it is computed once.
"""
import collections
import copy
import dataclasses
import math
import sys
from dataclasses import dataclass, field

import numpy as np

import bench
import datasets
import experiments
import lazyfeat as lf
import machine
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
        "kernels": {**QUICK_GRID, "h": [60], "alpha_sqrt_h": [1e-2, 1e0, 1e2, 1e4], "seeds": 10},
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
    parts = [part for part in sizes.values() if isinstance(part, dict)]  # not a dict value set here
    found = key in sizes and not isinstance(sizes[key], dict)
    if found:
        sizes[key] = value
    for part in parts:
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
# The findings' step rule: "auto" (lazyfeat.runge_kutta_flow) follows the same flow as the paper's rule in
# about a third of its gradient evaluations (`python run.py bench --suite integrators`); `--integrator
# paper` gives the paper's own rule.
INTEGRATOR = "auto"


def worker_cores(workers):
    """The cores each of `workers` sweep workers computes on (sweep gives each its share of BLAS threads)."""
    return max(1, machine.cpu_threads(np) // workers)


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
    and max_memory bytes (None: `ensemble_memory`);
    max_members = 1 trains one network at a time.
    integrator: the step rule of every gradient flow of the findings (lazyfeat.gradient_flow).
    """

    results_dir: str = "results"
    workers: int = 1
    scheduler: str = None
    device: str = "cpu"
    progress: bool = True
    tally: collections.Counter = field(default_factory=collections.Counter)
    max_members: int = None
    max_memory: float = None
    integrator: str = INTEGRATOR

    def ensembles(self):
        """How this context groups runs of `experiments.fit` into ensembles (a sweep.Group), or None."""
        members = self.max_members or default_members(self.device, self.workers)
        if members == 1:
            return None
        memory = self.max_memory or self.ensemble_memory()
        cores = worker_cores(self.workers) if self.device == "cpu" and not self.max_members else None
        return experiments.ensembles(members, memory, cores)

    def ensemble_memory(self):
        """The bytes each ensemble may use by default: half the free memory of the device, split evenly
        between the workers, which share it (the host's memory, or the one GPU that CuPy gives every
        process); the other half is left for what the bytes per member leave out."""
        return lf.available_memory(lf.backend(self.device)) / 2 / self.workers

    def sweep(self, configs, desc, fn=experiments.fit):
        group = self.ensembles() if fn is experiments.fit else None
        if fn is experiments.fit:
            print(self.projection(configs, desc), file=sys.stderr, flush=True)
        return sweep.run(fn, configs, self.results_dir, self.workers, self.scheduler,
                         self.progress, desc, self.tally, group)

    def projection(self, configs, desc):
        """What a sweep is about to compute and how long it would take here (bench.projected_sweep), and where
        that is many hours on the CPU, how else to run it. Printed before it starts; its progress bar's
        ETA refines it as runs finish."""
        todo = sweep.missing(experiments.fit, configs, self.results_dir)
        stored = len({sweep.key(experiments.fit, c) for c in configs}) - len(todo)
        line = f"{desc}: {len(todo)} runs to compute, {stored} stored"
        if not todo:
            return line
        hours, fc, other = bench.projected_sweep(todo, self.device)
        line += (f"; its {fc} FC runs projected at about {duration(hours)} on this {self.device} "
                 f"({bench.TYPICAL_STEPS} steps each, at the speed measured here)" if fc else "")
        line += f"; {other} CNN runs not projected" if other else ""
        if self.device == "cpu" and hours > bench.CPU_HOURS_WARNING:
            line += ("\n  that is long for a CPU: run it on a GPU (--device gpu), on a Dask cluster "
                     "(--scheduler tcp://host:port), or smaller (--scale quick, or fewer --seeds, --h, "
                     "--alpha-sqrt-h, or --set KEY=VALUE)")
        return line


def duration(hours):
    """A projected wall time in words: seconds, minutes, hours or days."""
    seconds = hours * 3600
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if hours < 2
            else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} days")


RUN_KEYS = ("dataset", "pca", "d", "p", "p_test", "L", "arch", "kernel_points")


def run_config(ctx, sizes, h, alpha_sqrt_h, seed, **extra):
    """The experiments config of one run of a finding (the same sizes give the same config). The findings
    read the test set at the end of a run only (its F_test and test error), so checkpoints skip it."""
    config = {key: sizes[key] for key in RUN_KEYS if sizes.get(key) is not None}
    config.update(h=h, alpha_sqrt_h=alpha_sqrt_h, seed=seed, store_F_test=True, test_along=False, checkpoints=20,
                  linear_gap=bool(config.get("kernel_points")), max_steps=MAX_STEPS, device=ctx.device,
                  integrator=ctx.integrator, **extra)
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
# What a sweep lacks to measure a claim
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


# ---------------------------------------------------------------------------
# The claims: one registry, fixed before any run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A claim of the paper: what it states, the band a measurement must lie in (verdicts' equivalence rule:
    the whole 95 % interval inside holds, wholly outside does not hold), where that band comes from, and the
    finding that measures it. A claim whose value depends on the data set or on p has `paper_data`: it is
    decided only on a run with the paper's data and p, and elsewhere only reported beside the paper's value."""

    finding: str
    statement: str
    band: tuple  # (lower, upper); either may be infinite
    source: str
    strict: bool = False  # an open band (x < upper, x > lower): a sign or a bound
    paper_data: tuple = ()  # (data set, p, pca): where the paper measured a data-dependent value


INF = math.inf
FASHION_10K = ("fashion-mnist", 10_000, None)
SLACK = "a measurement slack, since the paper gives no error bar"

CLAIMS = {
    # (i) alpha* ~ 1/sqrt(h): section 6 (i) of PAPER.md, the paper's figures of the test error and kernel change
    "kernel change collapse": Spec(
        "crossover", "kernel change collapses against alpha sqrt(h): spread ratio < 1", (-INF, 1.0),
        "(i): the curves of the three widths fall on one curve against alpha sqrt(h)", strict=True),
    "error collapse": Spec(
        "crossover", "rescaled test error collapses against alpha sqrt(h): spread ratio < 1", (-INF, 1.0),
        "(i): the rescaled errors of the three widths fall on one curve", strict=True),
    "kernel change slope, feature side": Spec(
        "crossover", "about -4/3", (-4 / 3 - 0.25, -4 / 3 + 0.25), f"(i) 'about -4/3'; +-0.25: {SLACK}"),
    "kernel change slope, lazy side": Spec(
        "crossover", "-1", (-1.2, -0.8), f"(i) '-1 on the lazy side'; +-0.2: {SLACK}"),
    "alpha* sqrt(h)": Spec(
        "crossover", "10^1.5 to 10^2", (10**1.5, 10**2), "(i): the kernel change crosses 1 there (Fashion-MNIST, "
        "p = 10k)", paper_data=FASHION_10K),
    "alpha* exponent": Spec(
        "crossover", "-1/2", (-0.6, -0.4), f"(i) alpha* ~ 1/sqrt(h); +-0.1: {SLACK}"),
    # (ii) which regime is better depends on the architecture and the data: section 6 (ii)
    "regime, FC on images": Spec(
        "regimes", "lazy better: error lazy - feature < 0", (-INF, 0.0), "(ii): FC on Fashion-MNIST, p = 10k",
        strict=True, paper_data=FASHION_10K),
    "regime, FC on 10-PCA": Spec(
        "regimes", "feature better: error lazy - feature > 0", (0.0, INF), "(ii): FC L = 5 on 10-PCA MNIST, p = 5k",
        strict=True, paper_data=("mnist", 5000, 10)),
    "regime, CNN": Spec(
        "regimes", "feature better: error lazy - feature > 0", (0.0, INF), "(ii): the CNN on MNIST, p = 5k",
        strict=True, paper_data=("mnist", 5000, None)),
    # (iii) delta F ~ h^(-1/2) in both regimes, and what the fluctuations cost: section 6 (iii)
    "Var F exponent": Spec(
        "fluctuations", "-1: delta F ~ h^(-1/2)", (-1.25, -0.75), f"(iii) Var F ~ 1/h at both ends; +-0.25: {SLACK}"),
    "single-net error falls with h": Spec(
        "fluctuations", "error at the largest h - at the smallest < 0", (-INF, 0.0),
        "(iii): the fluctuations make the performance increase with h", strict=True),
    "ensemble better than one net": Spec(
        "fluctuations", "ensemble - single-net error < 0", (-INF, 0.0),
        "(iii): averaging the outputs of several seeds removes the fluctuations' cost", strict=True),
    "ensemble removes most of the fall": Spec(
        "fluctuations", "|fall of the ensemble| - |fall of one net| / 2 < 0", (-INF, 0.0),
        "(iii): the ensemble error is nearly independent of h", strict=True),
    "lazy ensemble better than feature ensemble": Spec(
        "fluctuations", "ensemble error lazy - feature < 0 (2.4-2.5 % vs 2.9-3.0 %)", (-INF, 0.0),
        "(iii): Fashion-MNIST, p = 10k", strict=True, paper_data=FASHION_10K),
    "lazy ensemble reaches h = inf": Spec(
        "fluctuations", "lazy ensemble error at the largest h - h = inf error: 0 +- 0.005", (-0.005, 0.005),
        f"(iii) 'the ensemble reaches the error of much wider networks at moderate h'; +-0.5 %: {SLACK}"),
    # (iv) t1 ~ sqrt(h) alpha in the feature regime: section 6 (iv)
    "t1 exponent of alpha, feature side": Spec(
        "timescale", "1: t1 ~ alpha^a h^b with a = 1", (0.8, 1.2), f"(iv) t1 ~ sqrt(h) alpha; +-0.2: {SLACK}"),
    "t1 exponent of h, feature side": Spec(
        "timescale", "1/2: t1 ~ alpha^a h^b with b = 1/2", (0.3, 0.7), f"(iv) t1 ~ sqrt(h) alpha; +-0.2: {SLACK}"),
    "t1 / (alpha sqrt(h)), feature side": Spec(
        "timescale", "about 2-3", (1.5, 4.0), "(iv) 'about constant, of order 2 to 3'; 1.5-4 reads 'about'; "
        "Fashion-MNIST, p = 10k", paper_data=FASHION_10K),
    "t1 exponent of alpha, lazy side": Spec(
        "timescale", "0: t1 independent of alpha", (-0.1, 0.1), f"(iv); +-0.1: {SLACK}"),
    "linear before t1": Spec(
        "timescale", "|F - F_lin| / |F| at t1/10 < 0.1", (-INF, 0.1),
        f"(iv) 'for t << t1 the dynamics is linear': F against the flow of the initial NTK; 0.1: {SLACK}",
        strict=True),
    "not linear at t1": Spec(
        "timescale", "|F - F_lin| / |F| at t1 > 0.5", (0.5, INF),
        f"(iv): by t1 f has changed by ~sqrt(h), the kernel moves and F leaves the linear flow; 0.5 (of order "
        f"one): {SLACK}. Measured at t1, not 10 t1: the runs fit before 10 t1", strict=True),
    "growth collapse": Spec(
        "timescale", "|f(w_t) - f(w0)| / sqrt(h) collapses against t / t1 across alpha and h: spread ratio < 1",
        (-INF, 1.0),
        "(iv): f grows linearly until t1, by then by ~sqrt(h)", strict=True),
    # The kernel baselines: a check of section 3.5 of PAPER.md (the lazy limit is the initial kernel)
    "lazy network equals initial kernel": Spec(
        "kernels", "equal: network - init. kernel error within +-0.25 %", (-0.0025, 0.0025),
        f"section 3.5: the lazy limit is the flow of the initial NTK; +-0.25 %: {SLACK}"),
    "final kernel closer at the feature end": Spec(
        "kernels", "|init - network| - |final - network| > 0", (0.0, INF),
        "the kernel the network ends with explains it better than the one it starts with", strict=True),
}


def at_paper_data(sizes, paper_data):
    """Whether a finding's sizes use the data set, p and PCA at which the paper measured a claim."""
    dataset, p, pca = paper_data
    return (datasets.ALIASES.get(sizes.get("dataset"), sizes.get("dataset")) == dataset and sizes.get("p") == p
            and sizes.get("pca") == pca)


def decide(key, quantity, measure, n_seeds, sizes, lacking="", note=""):
    """The verdict of claim CLAIMS[key] on `measure()` = (estimate, (low, high)) from n_seeds seeds: undecided,
    saying what is missing, when the sweep lacks what it needs; reported without a verdict away from the
    paper's data and p when the claim's value depends on them."""
    spec = CLAIMS[key]
    if lacking:
        return V.missing(quantity, spec.statement, lacking)
    value, interval = measure()
    claim = V.verdict(quantity, value, interval, spec.statement, note, spec.band, spec.strict, n_seeds)
    if spec.paper_data and not at_paper_data(sizes, spec.paper_data):
        dataset, p, pca = spec.paper_data
        where = f"{pca}-PCA {dataset}" if pca else dataset
        claim = dataclasses.replace(claim, holds=None, note="; ".join(
            s for s in (f"compared, not decided: the paper's value is for {where} at p = {p}", note) if s))
    return claim


# ---------------------------------------------------------------------------
# The h = infinity predictor: the lazy limit at infinite width
# ---------------------------------------------------------------------------


def infinite_width(ctx, sizes, desc):
    """The result of the h = infinity predictor on a finding's data and depth (experiments.fit_infinite:
    the frozen-kernel flow with the infinite-width NTK), stored like a run."""
    config = {key: sizes[key] for key in RUN_KEYS if key != "kernel_points" and sizes.get(key) is not None}
    config.update(store_F_test=True, checkpoints=20, max_steps=MAX_STEPS, device=ctx.device, integrator=ctx.integrator)
    return ctx.sweep([config], desc, fn=experiments.fit_infinite)[0]


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

    def side_slope(side_alphas):
        x = [a for h in hs for a in side_alphas]
        return V.power_law(x, lambda idx: [np.mean(np.array(kc[h][a])[idx]) for h in hs for a in side_alphas], n)

    def collapse(values_of):
        return lambda: V.jackknife(lambda idx: V.collapse_ratio([alphas] * len(hs), [values_of(h, idx) for h in hs],
                                                                [math.sqrt(h) for h in hs]), n)

    kc_grid = {h: np.array([kc[h][a] for a in alphas]) for h in hs}
    curves_lacking = shortage(hs, 2, "width h") or shortage(alphas, 2, "alpha sqrt(h)")
    claims = [
        decide("kernel change collapse", "kernel change: spread against alpha sqrt(h) / against alpha",
               collapse(lambda h, idx: kc_grid[h][:, idx].mean(axis=1)), n, sizes, curves_lacking),
        decide("error collapse", "rescaled test error: spread against alpha sqrt(h) / against alpha",
               collapse(lambda h, idx: V.rescale(err[h][:, idx].mean(axis=1))), n, sizes, curves_lacking),
        decide("kernel change slope, feature side", f"kernel change slope, feature side ({feature_name})",
               lambda: side_slope(feature), n, sizes, shortage(feature, 2, feature_name)),
        decide("kernel change slope, lazy side", f"kernel change slope, lazy side ({lazy_name})",
               lambda: side_slope(lazy), n, sizes, shortage(lazy, 2, lazy_name)),
    ]
    for h in hs:
        claims.append(decide("alpha* sqrt(h)", f"alpha* sqrt(h) where kernel change = {c:g}, h={h}",
                             lambda h=h: V.jackknife(lambda idx: alpha_star_sqrt_h(idx)[h], n), n, sizes,
                             "" if h in crossed else f"no crossing of kernel change {c:g} in this sweep"))
    claims.append(decide("alpha* exponent", "exponent of alpha* against h",
                         lambda: V.power_law(crossed, lambda idx: [alpha_star_sqrt_h(idx)[h] / math.sqrt(h)
                                                                   for h in crossed], n), n, sizes,
                         shortage(crossed, 2, f"width h whose kernel change crosses {c:g}")))
    inf = infinite_width(ctx, sizes, "crossover h = inf")
    stars = alpha_star_sqrt_h(np.arange(n))
    numbers = {
        "h": hs, "alpha_sqrt_h": alphas, "c": c, "h_inf_error": inf["test_error"],
        "test_error_mean": {h: err[h].mean(axis=1).tolist() for h in hs},
        "test_error_std": {h: err[h].std(axis=1).tolist() for h in hs},
        "rescaled_error": {h: V.rescale(err[h].mean(axis=1)).tolist() for h in hs},
        "kernel_change_alphas": {h: curves[h][0].tolist() for h in hs},
        "kernel_change_mean": {h: curves[h][1].mean(axis=1).tolist() for h in hs},
        "alpha_star_sqrt_h": stars,
        "local_slopes": {  # of log y against log x between neighbouring x: a power law has them all equal
            **{f"kernel change, {name}": V.local_slopes([a for h in hs for a in ends],
                                                       [np.mean(kc[h][a]) for h in hs for a in ends]).tolist()
               for name, ends in ((feature_name, feature), (lazy_name, lazy)) if len(set(ends)) > 1},
            "alpha* against h": V.local_slopes(crossed, [stars[h] / math.sqrt(h) for h in crossed]).tolist(),
        },
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
        for h in s["h"]:
            lazy, feature = seed_array(runs[h, lazy_end], "test_error"), seed_array(runs[h, feature_end], "test_error")
            found = V.welch_interval(lazy, feature)
            verdict = "lazy better" if found[1][1] < 0 else "feature better" if found[1][0] > 0 else \
                "no significant difference"
            claims.append(decide(f"regime, {label}", f"{label} h={h}: error lazy - feature", lambda found=found: found,
                                 min(len(lazy), len(feature)), s, note=f"{verdict} at p={s['p']}"))
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
    return float(np.mean(ensemble_wrong(F, y, idx)))


def ensemble_wrong(F, y, idx):
    """Per test point, 1 where the sign of the seed-averaged predictor is wrong, else 0."""
    return (y * F[idx].mean(axis=0) <= 0).astype(float)


def single_wrong(F, y, idx):
    """Per test point, the fraction of the single networks (seeds idx) whose sign is wrong there."""
    return (y * F[idx] <= 0).mean(axis=0)


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
    h_min, h_max = min(hs), max(hs)
    width_lacking = shortage(hs, 2, "width h")
    claims = []
    for regime, a in ends.items():
        claims.append(decide("Var F exponent", f"exponent of Var F against h, {regime} end (alpha sqrt(h) = {a:g})",
                             lambda a=a: V.power_law(hs, lambda idx: [output_variance(F[h, a], idx) for h in hs], n),
                             n, sizes, lacking[regime] or width_lacking))
    for regime, a in ends.items():
        claims.append(decide("single-net error falls with h",
                             f"single-net error h={h_max} - h={h_min}, {regime} end",
                             lambda a=a: V.jackknife(lambda idx: single[h_max, a][idx].mean()
                                                     - single[h_min, a][idx].mean(), n),
                             n, sizes, lacking[regime] or width_lacking))
    for regime, a in ends.items():
        claims.append(decide("ensemble better than one net", f"ensemble - single-net error, {regime} end (mean over h)",
                             lambda a=a: V.jackknife(lambda idx: np.mean([ensemble_wrong(F[h, a], y, idx)
                                                                          - single_wrong(F[h, a], y, idx)
                                                                          for h in hs], axis=0), n, per_point=True),
                             n, sizes, lacking[regime], f"{n} seeds at p={sizes['p']}"))
    for regime, a in ends.items():
        def flatness(idx, a=a):
            fall = lambda kind: kind(F[h_min, a], y, idx).mean() - kind(F[h_max, a], y, idx).mean()
            return abs(fall(ensemble_wrong)) - abs(fall(single_wrong)) / 2
        claims.append(decide("ensemble removes most of the fall",
                             f"|ensemble fall| - |single-net fall| / 2 from h={h_min} to h={h_max}, {regime} end",
                             lambda flatness=flatness: V.jackknife(flatness, n), n, sizes,
                             lacking[regime] or width_lacking))
    part = sizes.get("ensemble_comparison")
    if part:
        c_hs, c_n, c_p = part["h"], part["seeds"], part["p"]
        compared = run_grid(ctx, part, c_hs, sorted(set(ends.values())), "fluctuations ensemble comparison")
        cF, c_single = seed_arrays(compared, "F_test"), seed_arrays(compared, "test_error")
        cy = run_test_labels(run_config(ctx, part, c_hs[0], ends["feature"], 0))
        c_sizes, notes = part, [f"ensemble comparison (p={c_p}): {status_note(compared)}"]
    else:
        cF, cy, c_single, c_hs, c_n, c_p, c_sizes, notes = F, y, single, hs, n, sizes["p"], sizes, []
    claims.append(decide("lazy ensemble better than feature ensemble", "ensemble error lazy - feature (mean over h)",
                         lambda: V.jackknife(lambda idx: np.mean([ensemble_wrong(cF[h, ends["lazy"]], cy, idx)
                                                                  - ensemble_wrong(cF[h, ends["feature"]], cy, idx)
                                                                  for h in c_hs], axis=0), c_n, per_point=True),
                         c_n, c_sizes, lacking["lazy"] or lacking["feature"],
                         f"{c_n} seeds at p={c_p}, h={', '.join(map(str, c_hs))}"))
    inf = infinite_width(ctx, sizes, "fluctuations h = inf")
    inf_wrong = (y * np.array(inf["F_test"]) <= 0).astype(float)
    claims.append(decide("lazy ensemble reaches h = inf", f"lazy ensemble error at h={h_max} - h = inf error",
                         lambda: V.jackknife(lambda idx: ensemble_wrong(F[h_max, ends["lazy"]], y, idx) - inf_wrong, n,
                                             per_point=True), n, sizes, lacking["lazy"]))
    all_seeds = np.arange(n)
    numbers = {
        "h": hs, "alpha_sqrt_h": alphas,
        "h_var": {h: [h * output_variance(F[h, a], np.arange(len(F[h, a]))) for a in alphas] for h in hs},
        "var_at_ends": {regime: [output_variance(F[h, a], all_seeds) for h in hs] for regime, a in ends.items()},
        "ensemble_error": {regime: [ensemble_error(F[h, a], y, all_seeds) for h in hs] for regime, a in ends.items()},
        "single_error": {regime: [float(single[h, a].mean()) for h in hs] for regime, a in ends.items()},
        "h_inf_error": inf["test_error"],
        "var_local_slopes": {regime: V.local_slopes(hs, [output_variance(F[h, a], all_seeds) for h in hs]).tolist()
                             for regime, a in ends.items()},
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


def t1_exponents(t1, keys):
    """(a, b): the least-squares fit log t1 = c + a log alpha + b log h over the (h, alpha sqrt(h)) keys,
    alpha = (alpha sqrt(h)) / sqrt(h), t1 a number per key (nan where any is not finite)."""
    t = np.array([t1[key] for key in keys], dtype=float)
    if not np.all(np.isfinite(t) & (t > 0)):
        return math.nan, math.nan
    design = np.array([[1.0, math.log(a / math.sqrt(h)), math.log(h)] for h, a in keys])
    return tuple(float(v) for v in np.linalg.lstsq(design, np.log(t), rcond=None)[0][1:])


def local_t1_exponents(t1, hs, alphas):
    """The exponents of alpha and of h between neighbouring points of the grid: at each h, the slope of log t1
    against log alpha between consecutive alphas; at each alpha sqrt(h), the slope against log h between
    consecutive h plus a/2 (alpha = (alpha sqrt(h)) / sqrt(h) moves with h), with a the fitted exponent."""
    a_fit = t1_exponents(t1, [(h, a) for h in hs for a in alphas])[0]
    in_alpha = [V.local_slopes([a / math.sqrt(h) for a in alphas], [t1[h, a] for a in alphas]) for h in hs]
    in_h = [V.local_slopes(hs, [t1[h, a] for h in hs]) + a_fit / 2 for a in alphas]
    return np.concatenate(in_alpha), np.concatenate(in_h)


def widened(estimate, local):
    """An (estimate, interval) widened to contain the local values: the lack of fit enters the interval."""
    value, (low, high) = estimate
    if not (math.isfinite(low) and np.all(np.isfinite(local))):
        return estimate
    return value, (float(min(low, *local)), float(max(high, *local)))


def growth_curve(run, h, t1):
    """(t / t1, |f(w_t) - f(w0)| / sqrt(h)) of the records after t = 0 of a run at width h: F_rms / (alpha
    sqrt(h)), F_rms the RMS of F = alpha (f - f0) over the training points."""
    records = [r for r in run["records"] if r["t"] > 0 and r["F_rms"] > 0]
    return (np.array([r["t"] / t1 for r in records]),
            np.array([r["F_rms"] for r in records]) / (run["alpha"] * math.sqrt(h)))


def growth_collapse(runs, t1, groups, seed):
    """The mean over `groups` (lists of keys) of the collapse ratio of seed `seed`'s growth curves in each
    group: their spread against t / t1 over their spread against t (< 1: t / t1 is the better variable)."""
    ratios = []
    for keys in groups:
        curves = [growth_curve(runs[key][seed], key[0], t1[key][seed]) for key in keys]
        ratios.append(V.collapse_ratio([x for x, _ in curves], [y for _, y in curves],
                                       [1 / t1[key][seed] for key in keys]))
    return float(np.mean(ratios))


def timescale(ctx, sizes):
    """Finding 4: alpha^2 L(t), t1 against alpha and h, the linear dynamics before t1, and the growth of f."""
    hs, alphas, n = sizes["h"], sizes["alpha_sqrt_h"], sizes["seeds"]
    runs = run_grid(ctx, sizes, hs, alphas, "timescale")
    t1 = {key: np.array([experiments.first_time_below(r["records"]) for r in rs]) for key, rs in runs.items()}
    (feature, feature_name), (lazy, lazy_name) = side(alphas, "feature", 0.1), side(alphas, "lazy")
    feature_keys = [(h, a) for h in hs for a in feature]
    fit_lacking = shortage(feature, 2, feature_name) or shortage(hs, 2, "width h")

    def mean_t1(idx):
        return {key: float(np.nanmean(t1[key][idx])) for key in runs}

    def exponent(k):
        return lambda: widened(V.jackknife(lambda idx: t1_exponents(mean_t1(idx), feature_keys)[k], n),
                               local_t1_exponents(mean_t1(np.arange(n)), hs, feature)[k])

    gaps = {key: np.array([r.get("linear_gap", {}).get("gaps", [math.nan] * 3) for r in rs], dtype=float)
            for key, rs in runs.items()}

    def gap_at(k):
        def measure():
            value = lambda idx: float(np.nanmean([gaps[key][idx, k] for key in feature_keys]))
            return V.jackknife(value, n) if np.any(np.isfinite([gaps[key][:, k] for key in feature_keys])) \
                else (math.nan, (math.nan, math.nan))
        return measure

    def collapse(groups):
        return lambda: V.jackknife(lambda idx: float(np.mean([growth_collapse(runs, t1, groups, s) for s in idx])), n)

    no_gap = "" if any("linear_gap" in r for key in feature_keys for r in runs[key]) else \
        "the runs measured no distance to the linear flow (kernel_points = 0)"
    claims = [
        decide("t1 exponent of alpha, feature side", f"t1 ~ alpha^a h^b: a, feature side ({feature_name})",
               exponent(0), n, sizes, fit_lacking),
        decide("t1 exponent of h, feature side", f"t1 ~ alpha^a h^b: b, feature side ({feature_name})",
               exponent(1), n, sizes, fit_lacking),
        decide("t1 / (alpha sqrt(h)), feature side", f"t1 / (alpha sqrt(h)), feature side ({feature_name})",
               lambda: V.jackknife(lambda idx: float(np.nanmean([mean_t1(idx)[h, a] / a for h, a in feature_keys])),
                                   n), n, sizes, shortage(feature, 1, feature_name)),
        decide("t1 exponent of alpha, lazy side", f"exponent of t1 against alpha sqrt(h), lazy side ({lazy_name})",
               lambda: V.power_law([a for h in hs for a in lazy],
                                   lambda idx: [mean_t1(idx)[h, a] for h in hs for a in lazy], n),
               n, sizes, shortage(lazy, 2, lazy_name)),
        decide("linear before t1", f"|F - F_lin| / |F| at t1/10, feature side ({feature_name})", gap_at(0), n,
               sizes, shortage(feature, 1, feature_name) or no_gap),
        decide("not linear at t1", f"|F - F_lin| / |F| at t1, feature side ({feature_name})", gap_at(1), n,
               sizes, shortage(feature, 1, feature_name) or no_gap),
        decide("growth collapse", f"|f - f0| / sqrt(h) against t / t1 across alpha and h, feature side "
               f"({feature_name})", collapse([feature_keys]), n, sizes,
               shortage(feature, 1, feature_name) or shortage(feature_keys, 2, "feature-side run")),
    ]
    h_show = hs[-1]
    all_t1 = mean_t1(np.arange(n))
    numbers = {
        "h": hs, "alpha_sqrt_h": alphas,
        "t1_mean": {h: [all_t1[h, a] for a in alphas] for h in hs},
        "t1_exponents": t1_exponents(all_t1, feature_keys) if not fit_lacking else None,
        "linear_gap_feature": [float(np.nanmean([gaps[key][:, k] for key in feature_keys])) if feature_keys
                               and np.any(np.isfinite([gaps[key][:, k] for key in feature_keys])) else None
                               for k in range(3)],
        "loss_curves": {a: [[r["t"], r["loss"]] for r in runs[h_show, a][0]["records"]] for a in alphas},
        "growth_curves": {a: np.transpose(growth_curve(runs[h_show, a][0], h_show, t1[h_show, a][0])).tolist()
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
        claims.append(decide("lazy network equals initial kernel", f"h={h}, lazy end: network - init. kernel error",
                             lambda lazy=lazy: V.t_interval(lazy["network"] - lazy["init_kernel"]), n, sizes,
                             end_lacking(alphas, "lazy")))
        closer = (np.abs(feature["init_kernel"] - feature["network"])
                  - np.abs(feature["final_kernel"] - feature["network"]))
        claims.append(decide("final kernel closer at the feature end",
                             f"h={h}, feature end: |init - network| - |final - network|",
                             lambda closer=closer: V.t_interval(closer), n, sizes, end_lacking(alphas, "feature")))
    inf = infinite_width(ctx, sizes, "kernels h = inf")
    numbers = {"h": hs, "alpha_sqrt_h": alphas, "h_inf_error": inf["test_error"],
               "errors": {h: {kind: [float(err[h, a][kind].mean()) for a in alphas]
                              for kind in ("network", "init_kernel", "final_kernel")} for h in hs}}
    return Outcome("kernels", "Kernel baselines: the network against its initial and final NTK",
                   numbers, claims, [status_note(runs)])


FINDINGS = {"crossover": crossover, "regimes": regimes, "fluctuations": fluctuations, "timescale": timescale,
            "kernels": kernels}
