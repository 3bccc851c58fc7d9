"""Planted worlds: a findings.Context whose sweep returns results made from a known model of each run.

Each finding has a model where every claim of the paper holds by construction and one where each
claim fails. A model maps a full experiments config to the fields `experiments.fit` returns
(test_error, kernel_change, F_test, records with t, loss and F_rms, status, the kernel
baselines), with seeded noise per run, so the findings' measurements and verdicts can be checked
against known answers without training anything.
"""
import functools
import json
import math
from dataclasses import dataclass, field

import numpy as np

import experiments
import findings

INFINITE_WIDTH = 10**12  # the h at which a model gives the h = infinity predictor


def noise(c, salt=0):
    """A standard normal draw fixed by the run (seed, h, alpha sqrt(h)) and a salt."""
    rng = np.random.default_rng([c["seed"], c["h"], int(1e6 * c["alpha_sqrt_h"]), salt])
    return rng.standard_normal()


def width_term(h, holds):
    """The part of a test error that depends on the width: 0.04 / sqrt(h) when the paper holds (finite h
    approaches h = infinity), else 0.005 ln h (moving away from it)."""
    return 0.04 / math.sqrt(h) if holds else 0.005 * math.log(h)


def result(c, test_error, records=None, **fields):
    """A result dict with the fields of experiments.fit."""
    records = records or [{"t": 0.0, "loss": 1.0, "F_rms": 0.0}]
    return {"status": "fitted", "test_error": float(test_error), "alpha": c["alpha_sqrt_h"] / math.sqrt(c["h"]),
            "records": records, **fields}


# ---------------------------------------------------------------------------
# Finding 1: kernel change and test error against alpha sqrt(h)
# ---------------------------------------------------------------------------


def crossover(c, holds):
    """holds: kernel change 50 a^(-4/3) for a = alpha sqrt(h) < 1, 50 / a above (alpha* sqrt(h) = 50 for
    every h), test error a function of a (plus width_term). Else: kernel change (alpha / 1000)^(-1/2) and
    the error a function of alpha = a / sqrt(h): no collapse, slopes -1/2, alpha* = 1000 for every h."""
    a, alpha = c["alpha_sqrt_h"], c["alpha_sqrt_h"] / math.sqrt(c["h"])
    if holds:
        change, error = (50 * a ** (-4 / 3) if a < 1 else 50 / a), 0.10 + 0.05 / (1 + a / 50)
    else:
        change, error = (alpha / 1000) ** -0.5, 0.10 + 0.05 / (1 + alpha / 3)
    return result(c, error + width_term(c["h"], holds) + 0.001 * noise(c, 1),
                  kernel_change=change * math.exp(0.05 * noise(c, 2)))


# ---------------------------------------------------------------------------
# Finding 2: lazy end against feature end
# ---------------------------------------------------------------------------

PAPER_WINNER = {part: winner for part, _, winner in findings.REGIME_PARTS}


def regimes(c, holds):
    """The paper's winner of the part of the config (FC on images: lazy; on PCA and CNN: feature) has
    error 0.10, the other end 0.15 (swapped when not holds), plus width_term and noise 0.003."""
    part = "cnn" if c["arch"] == "cnn" else "pca" if c["pca"] else "fc"
    regime = "lazy" if c["alpha_sqrt_h"] >= 100 else "feature"
    better = (regime == PAPER_WINNER[part]) == holds
    return result(c, (0.10 if better else 0.15) + width_term(c["h"], holds) + 0.003 * noise(c))


# ---------------------------------------------------------------------------
# Finding 3: output fluctuations and ensembles
# ---------------------------------------------------------------------------


DATA_KEYS = ("dataset", "d", "p", "p_test", "data_seed", "pca", "arch")


@functools.lru_cache(maxsize=None)
def data_labels(data):
    return experiments.load_data(json.loads(data))[3]


def run_labels(c):
    """The test labels of run c, through the data path of experiments.fit (experiments.load_data)."""
    return data_labels(json.dumps({key: c[key] for key in DATA_KEYS}))


WRONG = {True: {"feature": 0.10, "lazy": 0.05}, False: {"feature": 0.3, "lazy": 0.5}}  # points the mean gets wrong


def wrong_fraction(regime, holds, h):
    """The fraction of test points that the seed-averaged predictor gets wrong: WRONG, and when the paper
    does not hold, 0.04 more per doubling of finite h (so that wider networks do worse, ensembles included,
    and move away from the h = infinity predictor, which keeps WRONG)."""
    if holds or h >= INFINITE_WIDTH:
        return WRONG[holds][regime]
    return min(1.0, WRONG[holds][regime] + 0.04 * math.log2(h))


def mean_margin(n, regime, holds, h):
    """y m(x) of the seed-averaged predictor m on n test points: the first wrong_fraction are wrong.

    holds: wrong by -1, the rest right by U(0.5, 1). Else: wrong by -0.6 (the noise, 1, flips
    each single net there less often than their average), the rest right by 5.
    """
    wrong = np.arange(n) < wrong_fraction(regime, holds, h) * n
    right = np.random.default_rng(7).uniform(0.5, 1.0, n) if holds else np.full(n, 5.0)
    return np.where(wrong, -1.0 if holds else -0.6, right)


def fluctuations(c, holds):
    """F = y m(x) + sigma z with z standard normal per run and point; sigma = 2 / sqrt(h) (holds)
    or 1 (Var F ~ h^0). The end is the regime of alpha sqrt(h); the error is that of F itself."""
    y = run_labels(c)
    regime = "lazy" if c["alpha_sqrt_h"] >= 100 else "feature"
    sigma = 2 / math.sqrt(c["h"]) if holds else 1.0
    rng = np.random.default_rng([c["seed"], c["h"], int(1e6 * c["alpha_sqrt_h"]), 3])
    F = y * mean_margin(len(y), regime, holds, c["h"]) + sigma * rng.standard_normal(len(y))
    return result(c, np.mean(y * F <= 0), F_test=F.tolist())


# ---------------------------------------------------------------------------
# Finding 4: the time scale t1
# ---------------------------------------------------------------------------


def records(t1, growth):
    """alpha^2 L = 2^(-t / t1) (half time t1) and F_rms = growth(t), at t = 0 and t1 2^((k + 1/2) / 4) for
    k = -60 .. 15."""
    ts = [0.0] + [t1 * 2 ** ((k + 0.5) / 4) for k in range(-60, 16)]
    return [{"t": t, "loss": 2 ** (-t / t1), "F_rms": growth(t)} for t in ts]


LINEAR_GAPS = {True: [0.02, 0.8, 2.0], False: [0.4, 0.3, 0.1]}  # |F - F_lin| / |F| at t1/10, t1, 10 t1


def timescale(c, holds, t1_of=None):
    """holds: t1 = 2.5 alpha sqrt(h) up to alpha sqrt(h) = 1, then 2.5; |f - f0| / sqrt(h) = 0.01 t / t1 (F_rms
    = alpha sqrt(h) times that); F near the linear flow at t1/10, far from it at t1 and after. Else t1 = 0.05
    (alpha sqrt(h))^(1/2) everywhere, |f - f0| / sqrt(h) = 0.01 t / 0.05 whatever t1, and F as far
    from the linear flow before t1 as after. t1_of(alpha, h) replaces the t1 of holds. Seed noise 5 % on t1
    and on the gaps, 5 % (holds) or 10 % on the scale of each growth curve."""
    a, h = c["alpha_sqrt_h"], c["h"]
    t1 = t1_of(a / math.sqrt(h), h) if t1_of else 2.5 * min(a, 1.0) if holds else 0.05 * a**0.5
    t1 *= math.exp(0.05 * noise(c))
    scale = 0.01 * a * math.exp((0.05 if holds else 0.1) * noise(c, 4))
    growth = (lambda t: scale * t / t1) if holds else (lambda t: scale * t / 0.05)
    gaps = [g * math.exp(0.05 * noise(c, 5 + k)) for k, g in enumerate(LINEAR_GAPS[holds])]
    return result(c, 0.1, records(t1, growth), linear_gap={"t1": t1, "gaps": gaps})


def timescale_in_alpha_only(c, holds):
    """t1 = 2.5 alpha on the feature side, whatever h (t1 ~ alpha alone, not sqrt(h) alpha); else as timescale."""
    return timescale(c, holds, t1_of=lambda alpha, h: 2.5 * min(alpha, 1 / math.sqrt(h)))


# ---------------------------------------------------------------------------
# Kernel baselines
# ---------------------------------------------------------------------------


def kernels(c, holds):
    """holds: at the lazy end the init. kernel error equals the network's (+- 0.05 %), at the feature
    end the final kernel is within 0.2 % of the network and the init. kernel 3 % off. Else: init.
    kernel 2 % off at the lazy end, and at the feature end the final kernel 3 % off, the init. close."""
    network = 0.12 + width_term(c["h"], holds) + 0.003 * noise(c, 1)
    if c["alpha_sqrt_h"] >= 100:
        init = network + (0.0005 * noise(c, 2) if holds else 0.02)
        final = network + 0.001 * noise(c, 3)
    else:
        close, far = network + 0.002 * noise(c, 2), network + 0.03
        init, final = (far, close) if holds else (close, far)
    return result(c, network, init_kernel={"status": "fitted", "test_error": init},
                  final_kernel={"status": "fitted", "test_error": final})


MODELS = {"crossover": crossover, "regimes": regimes, "fluctuations": fluctuations, "timescale": timescale,
          "kernels": kernels}


# ---------------------------------------------------------------------------
# The context
# ---------------------------------------------------------------------------


@dataclass
class PlantedContext(findings.Context):
    """A findings.Context whose sweep answers from model(config, holds) instead of training.

    experiments.fit gets model(full config); the h = infinity predictor (experiments.fit_infinite)
    gets the model's run at h = INFINITE_WIDTH, at the config's alpha sqrt(h) or the lazy end.
    Every sweep is kept in `sweeps` as (desc, fn, configs).
    """

    model: object = None
    holds: bool = True
    progress: bool = False
    sweeps: list = field(default_factory=list)

    def sweep(self, configs, desc, fn=experiments.fit):
        self.sweeps.append((desc, fn, configs))
        return [self.answer(fn, config) for config in configs]

    def answer(self, fn, config):
        if fn is experiments.fit:
            return self.model(experiments.full_config(config), self.holds)
        if fn.__name__ == "fit_infinite":
            known = {k: v for k, v in config.items() if k in experiments.DEFAULTS}
            c = {**experiments.DEFAULTS, **known, "h": INFINITE_WIDTH, "seed": 0,
                 "alpha_sqrt_h": config.get("alpha_sqrt_h") or 1e4}
            run = self.model(c, self.holds)
            return {key: run[key] for key in ("status", "test_error", "F_test") if key in run}
        raise AssertionError(f"the findings swept an unexpected function {fn!r}")
