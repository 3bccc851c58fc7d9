"""Sweeps: many small runs of one function, each stored as its own result file.

A sweep calls ``fn(config)`` for every configuration in a list. Each result is
saved, the moment it is computed, in ``results_dir/<key>.json``, where the key
is a hash of the function's name and the full configuration. So a sweep that
is interrupted and started again computes only what is missing, and a result
file that was damaged is detected (by its checksum) and recomputed.

Runs go one after the other in this process (``workers=1``, easy to debug), in
parallel over local processes (``workers=N``), or onto a Dask distributed
cluster (``scheduler="tcp://host:port"``; Dask is only imported then).

    results = sweep.run(train, [{"seed": s, "alpha": a} for ...], "results/")

The public functions are run, load, missing, key and result_path; bad input
raises SweepError.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
import warnings

from tqdm import tqdm

KEY_LENGTH = 20
TMP_PREFIX = ".tmp-"
STALE_SECONDS = 60
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class SweepError(ValueError):
    """A sweep was given bad input, or some of its runs failed."""


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


def _fn_name(fn):
    """The full name "module.qualname" of a top-level function, which identifies it."""
    qualname = getattr(fn, "__qualname__", "<unnamed>")
    if "<" in qualname:
        raise SweepError(f"fn must be a function defined at the top level of a module, "
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


def _check_arguments(configs, workers, scheduler):
    """Raise SweepError for an empty sweep or a bad number of workers."""
    if not configs:
        raise SweepError("empty sweep: there are no configurations to run; "
                         "pass a non-empty list of config dicts")
    if not isinstance(workers, int) or workers < 1:
        raise SweepError(f"workers must be a whole number of processes, at least 1; got {workers!r}")
    if scheduler is not None and workers != 1:
        raise SweepError("give either workers (local processes) or a Dask scheduler, not both; "
                         "on a Dask cluster its workers run the sweep")


def _serially(fn, configs):
    """Yield (config, result) for each config, computed here one after the other."""
    for config in configs:
        try:
            result = fn(config)
        except Exception as error:
            error.add_note(f"in the sweep run with the config {canonical(config)}")
            raise
        yield config, result


def _as_they_finish(futures, as_completed):
    """Yield (config, result) for each future of `futures` (future -> config) as it finishes.

    Failed runs are collected; once all the others are through, SweepError
    reports them.
    """
    failures = []
    for future in as_completed(futures):
        try:
            result = future.result()
        except Exception as error:
            failures.append((futures[future], error))
            continue
        yield futures[future], result
    if failures:
        config, error = failures[0]
        raise SweepError(f"{len(failures)} of {len(futures)} runs failed (the others are saved); "
                         f"the first, with the config {canonical(config)}, raised "
                         f"{type(error).__name__}: {error}") from error


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


def _in_processes(fn, configs, workers):
    """Yield (config, result) for each config, computed by `workers` local processes."""
    context = multiprocessing.get_context("spawn")
    with _blas_threads_for(workers):
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
        try:
            futures = {pool.submit(fn, config): config for config in configs}
            yield from _as_they_finish(futures, concurrent.futures.as_completed)
        finally:
            pool.shutdown(cancel_futures=True)


def _on_dask(fn, configs, scheduler):
    """Yield (config, result) for each config, computed on the Dask cluster at `scheduler`."""
    import distributed

    with distributed.Client(scheduler) as client:
        futures = {client.submit(fn, config, pure=False): config for config in configs}
        yield from _as_they_finish(futures, distributed.as_completed)


def _execute(fn, configs, workers, scheduler):
    """Yield (config, result) for each config as its run finishes, wherever it runs."""
    if not configs:
        return iter(())
    if scheduler is not None:
        return _on_dask(fn, configs, scheduler)
    if workers > 1:
        return _in_processes(fn, configs, workers)
    return _serially(fn, configs)


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


def run(fn, configs, results_dir, workers=1, scheduler=None, progress=True, desc=None, tally=None):
    """Compute `fn(config)` for every config that has no stored result; return all results.

    `fn` is a top-level function (its module and name identify its results)
    that takes a config, a dict of JSON values, and returns a dict of JSON
    values; it must be deterministic given its config. Results come back in
    the order of `configs`, as they read back from JSON. Duplicate configs are
    computed once. `workers` > 1 runs them in that many local processes;
    `scheduler`, the address of a Dask scheduler, runs them on that cluster.
    `progress` shows a bar with the time left on stderr, labelled `desc`.
    `tally`, a collections.Counter, counts the distinct runs "computed" and "stored" (found valid).
    """
    configs = list(configs)
    _check_arguments(configs, workers, scheduler)
    paths = [result_path(fn, config, results_dir) for config in configs]
    _prepare_folder(results_dir)
    _remove_stale_temporaries(results_dir)
    unique = dict(zip(paths, configs))
    results = _stored_results(fn, unique, results_dir)
    todo = [config for path, config in unique.items() if path not in results]
    if tally is not None:
        tally.update(computed=len(todo), stored=len(unique) - len(todo))
    with tqdm(total=len(unique), initial=len(unique) - len(todo), desc=desc, unit="run",
              file=sys.stderr, disable=not progress) as bar:
        for config, result in _execute(fn, todo, workers, scheduler):
            path = result_path(fn, config, results_dir)
            results[path] = _save(fn, config, result, path)
            bar.update()
    return [results[path] for path in paths]
