"""Functions that the sweep tests run; a module so that worker processes can import them.

They read two environment variables, which are not part of the config (so they
do not change the result files' names): SWEEP_TEST_SLEEP, the seconds each call
sleeps, and SWEEP_TEST_MARKERS, a folder where each call leaves a marker file
named "<seed>_<seed>...-<pid>-<nanoseconds>", with the seeds of the configs it computed.
"""

import collections
import os
import time

import numpy as np

import sweep

CONFIGS = [{"seed": seed, "width": 3, "scale": 0.1 * seed} for seed in range(16)]


def leave_marker(configs):
    """Record this call, on `configs`, in the SWEEP_TEST_MARKERS folder, if it is set."""
    folder = os.environ.get("SWEEP_TEST_MARKERS")
    if folder:
        seeds = "_".join(str(config["seed"]) for config in configs)
        open(os.path.join(folder, f"{seeds}-{os.getpid()}-{time.monotonic_ns()}"), "w").close()


def features_batch(configs):
    """A small deterministic computation of random floats for each config, seeded by it."""
    time.sleep(float(os.environ.get("SWEEP_TEST_SLEEP", "0")))
    leave_marker(configs)
    results = []
    for config in configs:
        rng = np.random.default_rng(config["seed"])
        values = rng.normal(size=config["width"]) * config["scale"]
        results.append({"values": values.tolist(), "norm": float(np.linalg.norm(values)),
                        "seed": config["seed"]})
    return results


def features(config):
    """features_batch on one config."""
    return features_batch([config])[0]


def fails_on_seed_3_batch(configs):
    """Like features_batch, but raises if a config has seed 3."""
    if any(config["seed"] == 3 for config in configs):
        raise ArithmeticError("seed 3 is unlucky")
    return features_batch(configs)


def fails_on_seed_3(config):
    """Like features, but raises for the config with seed 3."""
    return fails_on_seed_3_batch([config])[0]


def drops_the_last_result(configs):
    """A bad batch function: one result too few."""
    return features_batch(configs)[:-1]


def returns_a_dict_of_results(configs):
    """A bad batch function: a dict, not a list."""
    return dict(enumerate(features_batch(configs)))


def parity(config):
    """The group key of the tests: configs of even seeds may share a job, and of odd seeds."""
    return "odd" if config["seed"] % 2 else "even"


def group(capacity, key=parity, batch=features_batch):
    """A Group of the test configs: jobs of at most `capacity` configs of one key."""
    return sweep.Group(key=key, batch=batch, capacity=lambda config: capacity)


def blas_threads(config):
    """The BLAS thread settings that this process sees."""
    leave_marker([config])
    return {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}


def jobs(folder):
    """The seeds of each call, from the markers in `folder`, sorted."""
    return sorted(tuple(int(seed) for seed in name.split("-")[0].split("_"))
                  for name in os.listdir(folder))


def calls(folder):
    """How many times each seed was run, from the markers in `folder`."""
    return collections.Counter(seed for job in jobs(folder) for seed in job)


def caller_pids(folder):
    """The ids of the processes that left markers in `folder`."""
    return {int(name.split("-")[1]) for name in os.listdir(folder)}


def returns_a_module(config):
    """A result that is not JSON-serialisable."""
    return {"seed": config["seed"], "when": time}


def returns_a_tuple(config):
    """A result with a tuple, which JSON stores as a list."""
    return {"pair": (config["seed"], config["seed"] + 1)}
