"""Functions that the sweep tests run; a module so that worker processes can import them.

They read two environment variables, which are not part of the config (so they
do not change the result files' names): SWEEP_TEST_SLEEP, the seconds each run
sleeps, and SWEEP_TEST_MARKERS, a folder where each call leaves a marker file
named "<seed>-<pid>-<nanoseconds>".
"""

import collections
import os
import time

import numpy as np

CONFIGS = [{"seed": seed, "width": 3, "scale": 0.1 * seed} for seed in range(16)]


def leave_marker(config):
    """Record this call in the SWEEP_TEST_MARKERS folder, if it is set."""
    folder = os.environ.get("SWEEP_TEST_MARKERS")
    if folder:
        name = f"{config['seed']}-{os.getpid()}-{time.monotonic_ns()}"
        open(os.path.join(folder, name), "w").close()


def features(config):
    """A small deterministic computation of random floats, seeded by the config."""
    time.sleep(float(os.environ.get("SWEEP_TEST_SLEEP", "0")))
    leave_marker(config)
    values = np.random.default_rng(config["seed"]).normal(size=config["width"]) * config["scale"]
    return {"values": values.tolist(), "norm": float(np.linalg.norm(values)), "seed": config["seed"]}


def fails_on_seed_3(config):
    """Like features, but raises for the config with seed 3."""
    if config["seed"] == 3:
        raise ArithmeticError("seed 3 is unlucky")
    return features(config)


def blas_threads(config):
    """The BLAS thread settings that this process sees."""
    leave_marker(config)
    return {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}


def calls(folder):
    """How many times each seed was run, from the markers in `folder`."""
    return collections.Counter(int(name.split("-")[0]) for name in os.listdir(folder))


def caller_pids(folder):
    """The ids of the processes that left markers in `folder`."""
    return {int(name.split("-")[1]) for name in os.listdir(folder)}


def returns_a_module(config):
    """A result that is not JSON-serialisable."""
    return {"seed": config["seed"], "when": time}


def returns_a_tuple(config):
    """A result with a tuple, which JSON stores as a list."""
    return {"pair": (config["seed"], config["seed"] + 1)}
