"""Sweeps: many small runs of one function, each stored as its own result file.

A sweep calls ``fn(config)`` for every configuration in a list. Each result is
saved, the moment it is computed, in ``results_dir/<key>.json``, where the key
is a hash of the function's name and the full configuration. So a sweep that
is interrupted and started again computes only what is missing, and a result
file that was damaged is detected (by its checksum) and recomputed.

The unit of work is a job: by default one config, or, with a ``Group``, several
configs that one call of a batch function computes together (e.g. networks that
differ only in seed and alpha, trained as one ensemble). A grouped sweep still
stores each config's result as its own file, under the key of ``fn``: it leaves
the same files as an ungrouped one, and either resumes the other.

Jobs go one after the other in this process (``workers=1``, easy to debug), in
parallel over local processes (``workers=N``), or onto a Dask distributed
cluster (``scheduler="tcp://host:port"``; Dask is only imported then).

    results = sweep.run(train, [{"seed": s, "alpha": a} for ...], "results/")
    results = sweep.run(train, configs, "results/", group=sweep.Group(same_net, train_many, cap))

The public names are run, Group, load, missing, key and result_path; bad input
raises SweepError.
"""

import atexit
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import numbers
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable

from tqdm import tqdm

KEY_LENGTH = 20
TMP_PREFIX = ".tmp-"
STALE_SECONDS = 60
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class SweepError(ValueError):
    """A sweep was given bad input, or some of its runs failed."""


@dataclass(frozen=True)
class Group:
    """How the configs of a sweep may be computed together (e.g. an ensemble of networks).

    key: config -> str; configs with equal keys may share one job (called in the parent only).
    batch: a top-level function (workers import it by name): list of configs -> list of
        results, result i being what fn(configs[i]) would give.
    capacity: config -> int >= 1; at most this many configs of that key in one job
        (called in the parent only, on the first config of the key).
    """

    key: Callable
    batch: Callable
    capacity: Callable


def canonical(value):
    """The canonical JSON text of `value`: sorted keys, no spaces, floats by repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def checksum(value):
    """The sha256 hex digest of the canonical JSON text of `value`."""
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def _check_json(value, name):
    """Raise SweepError unless `value` is made only of JSON values; `name` says what it is."""
    if isinstance(value, dict):
        for field, item in value.items():
            if not isinstance(field, str):
                raise SweepError(f"{name} has the key {field!r}, which is not a string; "
                                 "JSON only allows string keys")
            _check_json(item, f"{name}[{field!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{name}[{index}]")
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise SweepError(f"{name} is a {type(value).__name__}, which is not JSON-serialisable; "
                         "use str, int, float, bool, None, lists and dicts "
                         "(e.g. float(x) or array.tolist())")


def _check_dict(value, name):
    """Raise SweepError unless `value` is a dict of JSON values."""
    if not isinstance(value, dict):
        raise SweepError(f"{name} must be a dict, got a {type(value).__name__}")
    _check_json(value, name)


def _fn_name(fn, role="fn"):
    """The full name "module.qualname" of a top-level function, which identifies it."""
    qualname = getattr(fn, "__qualname__", "<unnamed>")
    if "<" in qualname:
        raise SweepError(f"{role} must be a function defined at the top level of a module, "
                         f"not {qualname!r}: its name identifies its results, and worker "
                         "processes import it by that name")
    return f"{fn.__module__}.{qualname}"


def key(fn, config):
    """The sha256 hex digest that names the result of `fn` on `config`."""
    _check_dict(config, "the config")
    return checksum({"fn": _fn_name(fn), "config": config})


def result_path(fn, config, results_dir):
    """The file in which the result of `fn` on `config` is stored."""
    return os.path.join(results_dir, key(fn, config)[:KEY_LENGTH] + ".json")


def _record_problem(record, fn, config):
    """Why a parsed result file is not a valid record of `fn` on `config` (None if it is)."""
    if not isinstance(record, dict) or set(record) != {"fn", "config", "result", "sha256"}:
        return "it does not have the fields fn, config, result and sha256"
    if record["fn"] != _fn_name(fn) or canonical(record["config"]) != canonical(config):
        return "it holds the result of another function or configuration"
    if record["sha256"] != checksum(record["result"]):
        return "its result does not match its checksum"
    return None


def _stored(fn, config, results_dir):
    """The stored result of `fn` on `config` (or None) and, if its file is damaged, why."""
    try:
        with open(result_path(fn, config, results_dir), encoding="utf-8") as file:
            record = json.load(file)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:
        return None, f"it cannot be read as JSON ({error})"
    problem = _record_problem(record, fn, config)
    return (None, problem) if problem else (record["result"], None)


def load(fn, config, results_dir):
    """The stored result of `fn` on `config`, or None if it is absent or damaged."""
    return _stored(fn, config, results_dir)[0]


def missing(fn, configs, results_dir):
    """The distinct configs among `configs` that have no valid stored result."""
    unique = {result_path(fn, config, results_dir): config for config in configs}
    return [config for config in unique.values() if load(fn, config, results_dir) is None]


def _write_atomically(path, text):
    """Write `text` to `path`, which at any moment is absent, the old file or the new one.

    The file is readable by all, like one from open(); only its owner may change it.
    """
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=os.path.dirname(path),
                                     prefix=TMP_PREFIX, delete=False) as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.chmod(file.name, 0o644)
    os.replace(file.name, path)


def _save(fn, config, result, path):
    """Store `result` of `fn` on `config` at `path`; return it as it reads back from JSON."""
    _check_dict(result, f"the result of {_fn_name(fn)} for the config {canonical(config)}")
    record = {"fn": _fn_name(fn), "config": config, "result": result, "sha256": checksum(result)}
    _write_atomically(path, canonical(record))
    return json.loads(canonical(result))


def _prepare_folder(results_dir):
    """Create `results_dir` if needed and check, with a probe file, that it is writable."""
    try:
        os.makedirs(results_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=TMP_PREFIX):
            pass
    except OSError as error:
        raise SweepError(f"cannot write results into the folder {results_dir!r} ({error}); "
                         "give a folder that you can create and write to") from error


def _remove_stale_temporaries(results_dir):
    """Delete the temporary files that a killed sweep left behind in `results_dir`.

    Only files older than STALE_SECONDS are removed: younger ones may belong to
    another sweep that is writing into the same folder right now.
    """
    for entry in os.scandir(results_dir):
        if entry.name.startswith(TMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - entry.stat().st_mtime > STALE_SECONDS:
                    os.remove(entry.path)


def _check_arguments(configs, workers, scheduler, group):
    """Raise SweepError for an empty sweep, a bad number of workers or a bad group."""
    if not configs:
        raise SweepError("empty sweep: there are no configurations to run; "
                         "pass a non-empty list of config dicts")
    if not isinstance(workers, int) or workers < 1:
        raise SweepError(f"workers must be a whole number of processes, at least 1; got {workers!r}")
    if scheduler is not None and workers != 1:
        raise SweepError("give either workers (local processes) or a Dask scheduler, not both; "
                         "on a Dask cluster its workers run the sweep")
    if group is not None:
        if not isinstance(group, Group):
            raise SweepError(f"group must be a sweep.Group(key, batch, capacity), "
                             f"got a {type(group).__name__}")
        _fn_name(group.batch, "the group's batch")


def _each(fn, configs):
    """[fn(config) for config in configs]: the batch function of a sweep without a group."""
    return [fn(config) for config in configs]


def _alone(fn):
    """The group of a sweep without one: every config is a job of its own."""
    return Group(key=canonical, batch=functools.partial(_each, fn), capacity=lambda config: 1)


def _capacity(group, config):
    """group.capacity(config), checked to be a whole number >= 1."""
    capacity = group.capacity(config)
    if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
        raise SweepError(f"the group's capacity must be a whole number of configs per job, "
                         f"at least 1; for the config {canonical(config)} it gave {capacity!r}")
    return int(capacity)


def _split(configs, parts):
    """`configs` cut, in order, into `parts` pieces whose sizes differ by at most one."""
    size, extra = divmod(len(configs), parts)
    bounds = [part * size + min(part, extra) for part in range(parts + 1)]
    return [configs[start:stop] for start, stop in zip(bounds, bounds[1:])]


def _pieces(groups, capacities, workers):
    """How many jobs each group (a list of configs) is cut into.

    The fewest within its capacity; then, while there are fewer jobs than
    workers, one more for the group whose jobs are largest.
    """
    pieces = [math.ceil(len(configs) / capacity) for configs, capacity in zip(groups, capacities)]
    while sum(pieces) < min(workers, sum(map(len, groups))):
        largest = max(range(len(groups)), key=lambda index: len(groups[index]) / pieces[index])
        pieces[largest] += 1
    return pieces


def _jobs(configs, group, workers):
    """`configs` cut into jobs: lists of configs of one key, within its capacity.

    Groups keep the order in which their keys first appear; _pieces says how
    many jobs each is cut into.
    """
    by_key = {}
    for config in configs:
        by_key.setdefault(group.key(config), []).append(config)
    groups = list(by_key.values())
    capacities = [_capacity(group, members[0]) for members in groups]
    return [job for members, count in zip(groups, _pieces(groups, capacities, workers))
            for job in _split(members, count)]


def _describe(job):
    """Words that name the run, or the job of runs, of `job` in an error message."""
    if len(job) == 1:
        return f"the run with the config {canonical(job[0])}"
    return f"the job of {len(job)} runs starting with the config {canonical(job[0])}"


def _serially(batch, jobs):
    """Yield (job, results) for each job, computed here one after the other."""
    for job in jobs:
        try:
            results = batch(job)
        except Exception as error:
            error.add_note(f"raised by {_describe(job)} of the sweep")
            raise
        yield job, results


def _as_they_finish(futures, as_completed):
    """Yield (job, results) for each future of `futures` (future -> job) as it finishes.

    Failed jobs are collected; once all the others are through, SweepError
    reports how many runs they held and the first one's error.
    """
    failures = []
    for future in as_completed(futures):
        try:
            results = future.result()
        except Exception as error:
            failures.append((futures[future], error))
            continue
        yield futures[future], results
    if failures:
        failed = sum(len(job) for job, _ in failures)
        total = sum(len(job) for job in futures.values())
        job, error = failures[0]
        message = (f"{failed} of {total} runs failed (the others are saved); the first failure: "
                   f"{_describe(job)} raised {type(error).__name__}: {error}")
        raise SweepError(message) from error


@contextlib.contextmanager
def _blas_threads_for(workers):
    """Within this block, processes started get cpu_count // workers BLAS threads each.

    Variables the user has set are left alone; the others are removed afterwards.
    """
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    unset = [name for name in BLAS_THREAD_VARIABLES if name not in os.environ]
    os.environ.update({name: threads for name in unset})
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


# The local processes of the last sweep, by their number and what they inherited (the environment, the
# working directory, the import path): a sweep leaves them running for the next one, whose jobs then find
# the modules imported and the data sets loaded (each process caches what it read).
_POOLS = {}


@atexit.register
def _close_pools():
    """Stop the kept processes while this process can still do it cleanly."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown()


def _in_processes(batch, jobs, workers):
    """Yield (job, results) for each job, computed by `workers` local processes: those of the last sweep if
    it ended well with as many workers and they would inherit the same, else new ones."""
    with _blas_threads_for(workers):
        key = (workers, tuple(sorted(os.environ.items())), os.getcwd(), tuple(sys.path))
        pool = _POOLS.pop(key, None) or concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))
        for other in _POOLS.values():
            other.shutdown(wait=False)
        _POOLS.clear()
        try:
            futures = {pool.submit(batch, job): job for job in jobs}
            yield from _as_they_finish(futures, concurrent.futures.as_completed)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        _POOLS[key] = pool


def _on_dask(batch, jobs, scheduler):
    """Yield (job, results) for each job, computed on the Dask cluster at `scheduler`."""
    import distributed

    with distributed.Client(scheduler) as client:
        futures = {client.submit(batch, job, pure=False): job for job in jobs}
        yield from _as_they_finish(futures, distributed.as_completed)


def _execute(batch, jobs, workers, scheduler):
    """Yield (job, results) for each job as it finishes, wherever it runs."""
    if not jobs:
        return iter(())
    if scheduler is not None:
        return _on_dask(batch, jobs, scheduler)
    if workers > 1:
        return _in_processes(batch, jobs, workers)
    return _serially(batch, jobs)


def _check_batch(results, job, batch):
    """Raise SweepError unless `results`, from batch(job), is a list of one result per config."""
    if not isinstance(results, list) or len(results) != len(job):
        got = (f"{len(results)} results" if isinstance(results, list)
               else f"a {type(results).__name__}")
        raise SweepError(f"the batch function {_fn_name(batch)} returned {got} for {len(job)} "
                         "configs; it must return a list with the result of each config, "
                         "in their order")


def _stored_results(fn, paths, results_dir):
    """The valid stored results among `paths` (path -> config); warn about damaged files."""
    results = {}
    for path, config in paths.items():
        result, problem = _stored(fn, config, results_dir)
        if problem:
            warnings.warn(f"the result file {path} is damaged: {problem}; recomputing it",
                          stacklevel=3)
        if result is not None:
            results[path] = result
    return results


def run(fn, configs, results_dir, workers=1, scheduler=None, progress=True, desc=None, tally=None,
        group=None):
    """Compute `fn(config)` for every config that has no stored result; return all results.

    `fn` is a top-level function (its module and name identify its results)
    that takes a config, a dict of JSON values, and returns a dict of JSON
    values; it must be deterministic given its config. Results come back in
    the order of `configs`, as they read back from JSON. Duplicate configs are
    computed once. `workers` > 1 runs them in that many local processes;
    `scheduler`, the address of a Dask scheduler, runs them on that cluster.
    `progress` shows a bar with the time left on stderr, labelled `desc`.
    `tally`, a collections.Counter, counts the distinct runs "computed" and "stored" (found valid).
    `group`, a Group, computes configs of equal key together, in jobs of
    group.batch; without it each config is a job of its own. When there are
    fewer jobs than workers, jobs are split so that every worker has one.
    """
    configs = list(configs)
    _check_arguments(configs, workers, scheduler, group)
    group = _alone(fn) if group is None else group
    paths = [result_path(fn, config, results_dir) for config in configs]
    _prepare_folder(results_dir)
    _remove_stale_temporaries(results_dir)
    unique = dict(zip(paths, configs))
    results = _stored_results(fn, unique, results_dir)
    todo = [config for path, config in unique.items() if path not in results]
    jobs = _jobs(todo, group, workers)
    if tally is not None:
        tally.update(computed=len(todo), stored=len(unique) - len(todo))
    with tqdm(total=len(unique), initial=len(unique) - len(todo), desc=desc, unit="run",
              file=sys.stderr, disable=not progress) as bar:
        for job, job_results in _execute(group.batch, jobs, workers, scheduler):
            _check_batch(job_results, job, group.batch)
            for config, result in zip(job, job_results):
                path = result_path(fn, config, results_dir)
                results[path] = _save(fn, config, result, path)
                bar.update()
    return [results[path] for path in paths]
