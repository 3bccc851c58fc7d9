"""Tests of sweep.py: keys, result files, resuming after a kill, parallel and Dask runs, groups."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sweep
from tests import sweep_fns
from tests.sweep_fns import CONFIGS, features

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "sweep_worker_script.py"
TIMEOUT = 60

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                         st.floats(allow_nan=False))
small_configs = st.dictionaries(st.text(max_size=5), json_scalars, min_size=1, max_size=5)


@pytest.fixture
def markers(tmp_path_factory, monkeypatch):
    """Make a fresh marker folder the one that sweep_fns records its calls in."""
    def fresh(name):
        folder = tmp_path_factory.mktemp(f"markers-{name}")
        monkeypatch.setenv("SWEEP_TEST_MARKERS", str(folder))
        return folder
    return fresh


def serial_results(folder):
    """The results of the test sweep, computed serially into `folder`."""
    return sweep.run(features, CONFIGS, folder, progress=False)


def seeds(configs):
    """How many times each seed occurs in `configs`."""
    return Counter(config["seed"] for config in configs)


def files(folder):
    """The name and content of each result file in `folder`."""
    return {path.name: path.read_bytes() for path in Path(folder).glob("*.json")}


def job_sizes(marker_folder):
    """The sorted numbers of configs in the calls recorded in `marker_folder`."""
    return sorted(map(len, sweep_fns.jobs(marker_folder)))


def one_parity_each(jobs):
    """Whether each job holds only even or only odd seeds."""
    return all(len({seed % 2 for seed in job}) == 1 for job in jobs)


@given(small_configs)
def test_key_does_not_depend_on_the_order_of_fields(config):
    reordered = dict(reversed(list(config.items())))
    assert sweep.key(features, config) == sweep.key(features, reordered)


@given(small_configs, json_scalars, st.data())
def test_key_changes_with_any_value(config, value, data):
    field = data.draw(st.sampled_from(sorted(config)))
    changed = {**config, field: value}
    if sweep.canonical(value) != sweep.canonical(config[field]):
        assert sweep.key(features, config) != sweep.key(features, changed)


def test_key_compares_floats_by_value_and_names_the_function():
    assert sweep.key(features, {"lr": 1e-2}) == sweep.key(features, {"lr": 0.01})
    assert sweep.key(features, {"lr": 0.1}) != sweep.key(features, {"lr": 0.1000001})
    assert sweep.key(features, {"lr": 0.1}) != sweep.key(sweep_fns.blas_threads, {"lr": 0.1})


def test_serial_sweep_returns_results_in_order_and_then_computes_nothing(tmp_path, markers):
    configs = [CONFIGS[4], CONFIGS[1], CONFIGS[4], CONFIGS[7]]
    expected = [features(config) for config in configs]
    first, tally = markers("first"), Counter()
    assert sweep.run(features, configs, tmp_path / "results", progress=False, tally=tally) == expected
    assert sweep_fns.calls(first) == {4: 1, 1: 1, 7: 1}
    assert tally == {"computed": 3, "stored": 0}
    second = markers("second")
    assert sweep.run(features, configs, tmp_path / "results", progress=False, tally=tally) == expected
    assert sweep_fns.calls(second) == {}
    assert tally == {"computed": 3, "stored": 3}
    assert len(list((tmp_path / "results").glob("*.json"))) == 3


def truncate(record, text):
    """A result file cut off half way."""
    return text[: len(text) // 2]


def change_result(record, text):
    """A result file whose result no longer matches its checksum."""
    record["result"]["norm"] += 1
    return json.dumps(record)


def change_config(record, text):
    """A result file that holds another configuration."""
    record["config"]["width"] = 4
    return json.dumps(record)


def not_a_record(record, text):
    """Valid JSON that is not a result record."""
    return "[1, 2, 3]"


@pytest.mark.parametrize("damage", [truncate, change_result, change_config, not_a_record])
def test_a_damaged_file_is_recomputed_and_only_it(damage, tmp_path, markers):
    expected = serial_results(tmp_path / "results")
    path = Path(sweep.result_path(features, CONFIGS[5], tmp_path / "results"))
    text = path.read_text()
    path.write_text(damage(json.loads(text), text))
    assert sweep.missing(features, CONFIGS, tmp_path / "results") == [CONFIGS[5]]
    recomputed = markers("recomputed")
    with pytest.warns(UserWarning, match=path.name):
        assert serial_results(tmp_path / "results") == expected
    assert sweep_fns.calls(recomputed) == {5: 1}
    assert path.read_text() == text


def start_sweep_script(results_dir, workers, marker_folder, sleep, capacity=None):
    """Start the test sweep in a new Python process, grouped by parity if `capacity` is given."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "SWEEP_TEST_SLEEP": str(sleep),
                   "SWEEP_TEST_MARKERS": str(marker_folder)}
    grouping = [] if capacity is None else [str(capacity)]
    return subprocess.Popen([sys.executable, str(SCRIPT), str(results_dir), str(workers), *grouping],
                            cwd=REPO, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_result_files(process, results_dir, count):
    """Wait until `results_dir` holds `count` result files, while `process` runs."""
    deadline = time.monotonic() + TIMEOUT
    while len(list(results_dir.glob("*.json"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep script produced no results in time"
        time.sleep(0.01)


@pytest.mark.parametrize("signum, workers", [(signal.SIGKILL, 1), (signal.SIGINT, 1),
                                             (signal.SIGINT, 2)],
                         ids=["SIGKILL", "SIGINT", "SIGINT-2-workers"])
def test_a_killed_sweep_resumes_with_only_the_missing_runs(signum, workers, tmp_path, markers):
    results_dir = tmp_path / "results"
    first_markers = markers("first")
    first = start_sweep_script(results_dir, workers, first_markers, sleep=0.4)
    wait_for_result_files(first, results_dir, 3)
    first.send_signal(signum)
    first.communicate(timeout=TIMEOUT)
    assert first.returncode != 0
    assert sweep_fns.calls(first_markers).total() < len(CONFIGS)
    left = sweep.missing(features, CONFIGS, results_dir)
    assert len(list(results_dir.glob("*.json"))) == len(CONFIGS) - len(left)

    second_markers = markers("second")
    second = start_sweep_script(results_dir, workers, second_markers, sleep=0)
    output, errors = second.communicate(timeout=TIMEOUT)
    assert second.returncode == 0, errors
    assert sweep_fns.calls(second_markers) == seeds(left)
    summary = json.loads(output)
    assert summary["results"] == serial_results(tmp_path / "uninterrupted")
    assert summary["dask_modules"] == []


def test_two_worker_processes_give_the_serial_results(tmp_path, markers):
    expected = serial_results(tmp_path / "serial")
    parallel = markers("parallel")
    configs = CONFIGS + CONFIGS[:2]
    results = sweep.run(features, configs, tmp_path / "parallel", workers=2, progress=False)
    assert results == expected + expected[:2]
    assert sweep_fns.calls(parallel) == seeds(CONFIGS)
    assert os.getpid() not in sweep_fns.caller_pids(parallel)


def test_workers_share_the_cores_between_their_blas_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    results = sweep.run(sweep_fns.blas_threads, CONFIGS[:2], tmp_path, workers=2, progress=False)
    share = str(max(1, os.cpu_count() // 2))
    assert results == [{"OPENBLAS_NUM_THREADS": share, "OMP_NUM_THREADS": "3"}] * 2
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_a_failing_run_in_a_worker_keeps_the_finished_results(tmp_path):
    with pytest.raises(sweep.SweepError, match=f'1 of {len(CONFIGS)} runs failed.*"seed":3.*unlucky'):
        sweep.run(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path, workers=2, progress=False)
    assert sweep.missing(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path) == [CONFIGS[3]]


def pids_of(folder, configs):
    """The ids of the processes that computed `configs`, from the markers in `folder`."""
    wanted = {str(config["seed"]) for config in configs}
    return {int(pid) for seeds, pid, _ in (name.split("-") for name in os.listdir(folder))
            if wanted & set(seeds.split("_"))}


def test_a_sweep_reuses_the_processes_of_the_last_one_unless_it_failed_or_what_they_inherit_changed(
        tmp_path, markers):
    """The processes stay for the next sweep with as many workers, their imports and data caches with
    them: the same process ids. A sweep that failed, or a changed environment (`markers` sets
    SWEEP_TEST_MARKERS anew), starts new ones."""
    def run(fn, configs, name):
        return sweep.run(fn, configs, tmp_path / name, workers=2, progress=False)

    folder = markers("same")
    run(features, CONFIGS[:4], "first")
    run(features, CONFIGS[4:8], "second")
    first = pids_of(folder, CONFIGS[:4])
    assert first and pids_of(folder, CONFIGS[4:8]) <= first
    with pytest.raises(sweep.SweepError):
        run(sweep_fns.fails_on_seed_3, CONFIGS[8:12] + [CONFIGS[3]], "fails")
    assert pids_of(folder, CONFIGS[8:12]) <= first
    run(features, CONFIGS[12:], "after the failure")
    after = pids_of(folder, CONFIGS[12:])
    assert after and after.isdisjoint(first)
    folder = markers("changed")
    run(features, CONFIGS[:4], "changed")
    changed = pids_of(folder, CONFIGS[:4])
    assert changed and changed.isdisjoint(after | first)


def test_a_failing_serial_run_raises_its_own_error_naming_its_config(tmp_path):
    with pytest.raises(ArithmeticError, match="unlucky") as error:
        sweep.run(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path, progress=False)
    assert '"seed":3' in "".join(error.value.__notes__)
    assert sweep.missing(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path) == CONFIGS[3:]


@pytest.mark.parametrize("group, sizes", [(None, [1] * 16), (sweep_fns.group(3), [2, 2, 3, 3, 3, 3])],
                         ids=["alone", "grouped"])
def test_a_dask_cluster_gives_the_serial_results(group, sizes, tmp_path, markers):
    import distributed

    expected = serial_results(tmp_path / "serial")
    on_dask = markers("dask")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        results = sweep.run(features, CONFIGS, tmp_path / "dask",
                            scheduler=cluster.scheduler_address, progress=False, group=group)
    assert results == expected
    assert files(tmp_path / "dask") == files(tmp_path / "serial")
    assert sweep_fns.calls(on_dask) == seeds(CONFIGS)
    assert job_sizes(on_dask) == sizes
    assert os.getpid() not in sweep_fns.caller_pids(on_dask)


def test_stale_temporary_files_are_removed_and_fresh_ones_kept(tmp_path):
    stale, fresh = tmp_path / ".tmp-stale", tmp_path / ".tmp-fresh"
    stale.write_text('{"half a')
    fresh.write_text('{"half a')
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert sweep.run(features, CONFIGS[:1], tmp_path, progress=False) == [features(CONFIGS[0])]
    assert not stale.exists()
    assert fresh.exists()


def test_result_files_are_readable_by_all(tmp_path):
    sweep.run(features, CONFIGS[:1], tmp_path, progress=False)
    path = Path(sweep.result_path(features, CONFIGS[0], tmp_path))
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_progress_bar_counts_runs_already_done(tmp_path, capsys):
    sweep.run(features, CONFIGS[:4], tmp_path, progress=False)
    sweep.run(features, CONFIGS, tmp_path, desc="width 3")
    bar = capsys.readouterr().err
    assert "width 3" in bar
    assert f"4/{len(CONFIGS)}" in bar
    assert f"{len(CONFIGS)}/{len(CONFIGS)}" in bar


@pytest.mark.parametrize("arguments, message", [
    ({"configs": []}, "empty sweep"),
    ({"configs": [{"lr": 0.1, "shape": {1, 2}}]}, r"config\['shape'\] is a set"),
    ({"configs": [{"lr": 0.1, 3: "three"}]}, "key 3, which is not a string"),
    ({"configs": ["lr=0.1"]}, "config must be a dict"),
    ({"workers": 0}, "at least 1"),
    ({"workers": 2, "scheduler": "tcp://127.0.0.1:8786"}, "not both"),
    ({"fn": lambda config: config}, "top level of a module"),
    ({"group": "by seed"}, "group must be a sweep.Group"),
    ({"group": sweep_fns.group(4, batch=lambda configs: configs)},
     "the group's batch must be a function defined at the top level"),
])
def test_bad_input_is_refused_before_anything_runs(arguments, message, tmp_path, markers):
    serial_results(tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.iterdir()}
    calls = markers("calls")
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run(**{"fn": features, "configs": CONFIGS, "results_dir": tmp_path,
                     "progress": False, **arguments})
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert sweep_fns.calls(calls) == {}


def test_a_results_folder_that_cannot_be_created_is_refused(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(sweep.SweepError, match=f"cannot write results into the folder.*{a_file.name}"):
        sweep.run(features, CONFIGS, a_file / "results", progress=False)


def test_results_come_back_as_they_read_back_from_json(tmp_path):
    fresh = sweep.run(sweep_fns.returns_a_tuple, CONFIGS[:1], tmp_path, progress=False)
    assert fresh == sweep.run(sweep_fns.returns_a_tuple, CONFIGS[:1], tmp_path, progress=False)
    assert fresh == [{"pair": [0, 1]}]


def test_a_result_that_is_not_json_is_refused_naming_its_field(tmp_path):
    with pytest.raises(sweep.SweepError, match=r"result.*\['when'\] is a module"):
        sweep.run(sweep_fns.returns_a_module, CONFIGS[:1], tmp_path, progress=False)


@given(group_sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       capacities=st.lists(st.integers(1, 12), min_size=4, max_size=4), workers=st.integers(1, 16),
       data=st.data())
def test_jobs_hold_each_config_once_within_one_key_and_capacity_and_are_balanced(
        group_sizes, capacities, workers, data):
    keys = data.draw(st.permutations([key for key, size in enumerate(group_sizes)
                                      for _ in range(size)]))
    configs = [{"seed": seed, "key": key} for seed, key in enumerate(keys)]
    group = sweep.Group(key=lambda config: str(config["key"]), batch=features,
                        capacity=lambda config: capacities[config["key"]])
    jobs = sweep._jobs(configs, group, workers)
    by_first_key = sorted(configs, key=lambda config: keys.index(config["key"]))
    assert [config for job in jobs for config in job] == by_first_key
    assert all(len({config["key"] for config in job}) == 1 for job in jobs)
    assert all(len(job) <= capacities[job[0]["key"]] for job in jobs)
    counts = Counter(keys)

    def fewest_jobs(size):
        """The fewest jobs of at most `size` configs (and within capacity) that hold all configs."""
        return sum(math.ceil(count / min(size, capacities[key])) for key, count in counts.items())

    assert len(jobs) == max(fewest_jobs(len(configs)), min(workers, len(configs)))
    for key in counts:
        sizes = [len(job) for job in jobs if job[0]["key"] == key]
        assert max(sizes) - min(sizes) <= 1
    largest = max(map(len, jobs))
    if len(jobs) > fewest_jobs(len(configs)) and largest > 1:
        assert fewest_jobs(largest - 1) > len(jobs)


def test_a_grouped_sweep_leaves_the_same_files_as_one_config_at_a_time(tmp_path, markers):
    expected = serial_results(tmp_path / "alone")
    grouped = markers("grouped")
    results = sweep.run(features, CONFIGS, tmp_path / "grouped", progress=False,
                        group=sweep_fns.group(5))
    assert results == expected
    assert files(tmp_path / "grouped") == files(tmp_path / "alone")
    assert sweep_fns.calls(grouped) == seeds(CONFIGS)
    assert job_sizes(grouped) == [4, 4, 4, 4]


def test_capacity_cuts_each_key_into_balanced_jobs_that_never_mix_keys(tmp_path, markers):
    cut = markers("cut")
    sweep.run(features, CONFIGS, tmp_path, progress=False, group=sweep_fns.group(3))
    assert job_sizes(cut) == [2, 2, 3, 3, 3, 3]
    assert one_parity_each(sweep_fns.jobs(cut))
    whole = markers("whole")
    sweep.run(features, CONFIGS, tmp_path / "whole", progress=False, group=sweep_fns.group(100))
    assert sweep_fns.jobs(whole) == [tuple(range(0, 16, 2)), tuple(range(1, 16, 2))]


def test_a_job_too_large_for_the_workers_is_split_between_worker_processes(tmp_path, markers):
    expected = serial_results(tmp_path / "serial")
    parallel = markers("parallel")
    together = sweep_fns.group(100, key=lambda config: "all")
    results = sweep.run(features, CONFIGS, tmp_path / "parallel", workers=2, progress=False,
                        group=together)
    assert results == expected
    assert files(tmp_path / "parallel") == files(tmp_path / "serial")
    assert job_sizes(parallel) == [8, 8]
    assert os.getpid() not in sweep_fns.caller_pids(parallel)


def test_a_grouped_sweep_counts_runs_not_jobs(tmp_path, capsys):
    sweep.run(features, CONFIGS[:4], tmp_path, progress=False)
    tally = Counter()
    sweep.run(features, CONFIGS, tmp_path, desc="grouped", tally=tally, group=sweep_fns.group(100))
    assert tally == {"computed": len(CONFIGS) - 4, "stored": 4}
    bar = capsys.readouterr().err
    assert f"4/{len(CONFIGS)}" in bar
    assert f"{len(CONFIGS)}/{len(CONFIGS)}" in bar


@pytest.mark.parametrize("first_capacity, second_capacity", [(2, 3), (None, 3), (2, None)],
                         ids=["grouped-then-grouped", "alone-then-grouped", "grouped-then-alone"])
def test_a_killed_sweep_resumes_across_grouping_with_only_the_missing_runs(
        first_capacity, second_capacity, tmp_path, markers):
    results_dir = tmp_path / "results"
    first_markers = markers("first")
    first = start_sweep_script(results_dir, 1, first_markers, sleep=0.4, capacity=first_capacity)
    wait_for_result_files(first, results_dir, 3)
    first.kill()
    first.communicate(timeout=TIMEOUT)
    assert sweep_fns.calls(first_markers).total() < len(CONFIGS)
    left = sweep.missing(features, CONFIGS, results_dir)

    second_markers = markers("second")
    second = start_sweep_script(results_dir, 2, second_markers, sleep=0, capacity=second_capacity)
    output, errors = second.communicate(timeout=TIMEOUT)
    assert second.returncode == 0, errors
    assert sweep_fns.calls(second_markers) == seeds(left)
    assert one_parity_each(sweep_fns.jobs(second_markers))
    assert max(job_sizes(second_markers)) <= (second_capacity or 1)
    assert json.loads(output)["results"] == serial_results(tmp_path / "uninterrupted")
    assert files(results_dir) == files(tmp_path / "uninterrupted")


def test_a_failing_job_in_a_worker_fails_its_runs_and_keeps_the_others(tmp_path):
    failing = sweep_fns.group(4, batch=sweep_fns.fails_on_seed_3_batch)
    with pytest.raises(sweep.SweepError, match=f"4 of {len(CONFIGS)} runs failed .*the others are "
                                               'saved.*job of 4 runs .*"seed":1.*unlucky'):
        sweep.run(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path, workers=2, progress=False,
                  group=failing)
    assert sweep.missing(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path) == CONFIGS[1:8:2]


def test_a_failing_serial_job_raises_its_own_error_naming_its_job(tmp_path):
    failing = sweep_fns.group(4, batch=sweep_fns.fails_on_seed_3_batch)
    with pytest.raises(ArithmeticError, match="unlucky") as error:
        sweep.run(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path, progress=False, group=failing)
    assert 'job of 4 runs starting with the config {"scale":0.1,"seed":1' in "".join(error.value.__notes__)
    assert sweep.missing(sweep_fns.fails_on_seed_3, CONFIGS, tmp_path) == CONFIGS[1::2]


def stored_then_refused(tmp_path, group, message):
    """Store four results, then check that a grouped sweep with `group` is refused and changes nothing."""
    sweep.run(features, CONFIGS[:4], tmp_path, progress=False)
    before = files(tmp_path)
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run(features, CONFIGS, tmp_path, progress=False, group=group)
    assert files(tmp_path) == before


@pytest.mark.parametrize("batch, got", [(sweep_fns.drops_the_last_result, "returned 5 results"),
                                        (sweep_fns.returns_a_dict_of_results, "returned a dict")])
def test_a_batch_without_one_result_per_config_is_refused_naming_it(batch, got, tmp_path):
    stored_then_refused(tmp_path, sweep_fns.group(100, batch=batch),
                        f"batch function tests.sweep_fns.{batch.__name__} {got} for 6 configs")


@pytest.mark.parametrize("capacity", [0, 2.5, "3", True, None])
def test_a_capacity_that_is_not_a_whole_number_above_0_is_refused_before_anything_runs(
        capacity, tmp_path, markers):
    calls = markers("calls")
    stored_then_refused(tmp_path, sweep_fns.group(capacity),
                        f"capacity must be a whole number.*config {{\"scale\":0.4,\"seed\":4"
                        f".*gave {capacity!r}")
    assert sweep_fns.calls(calls) == seeds(CONFIGS[:4])
