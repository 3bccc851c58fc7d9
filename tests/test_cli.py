"""The command line: `run.py train`, `run.py data`, and their errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import datafiles
from data_writers import idx_set_files, write_set

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "sphere", "--d", "5", "--p", "30", "--p-test", "50", "--h", "8", "--L", "2"]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True)


def test_train_json_reports_the_run():
    result = run_cli("train", *SMALL, "--alpha-sqrt-h", "10", "--kernel-points", "10", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for key in ("status", "test_error", "steps_accepted", "steps_rejected", "t", "wall_s", "kernel_change"):
        assert key in summary
    assert summary["status"] == "fitted" and 0 <= summary["test_error"] <= 1
    assert summary["alpha"] == pytest.approx(10 / 8**0.5)


def test_train_prints_a_readable_summary_and_alpha_is_the_papers_alpha():
    result = run_cli("train", *SMALL, "--alpha", "0.5", "--baselines")
    assert result.returncode == 0, result.stderr
    assert "alpha sqrt(h) = 1.41 (alpha = 0.5)" in result.stdout
    assert "test error" in result.stdout and "init kernel" in result.stdout and "final kernel" in result.stdout


def test_train_runs_the_cnn_on_image_shaped_data():
    result = run_cli("train", "--dataset", "sphere", "--d", "1,19,19", "--arch", "cnn", "--h", "2", "--p", "10",
                     "--p-test", "10", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "fitted"


@pytest.mark.parametrize("args, message", [
    (["--alpha", "0"], "argument --alpha: must be a finite number > 0"),
    (["--alpha", "nan"], "argument --alpha: must be a finite number > 0"),
    (["--alpha-sqrt-h", "-2"], "argument --alpha-sqrt-h: must be a finite number > 0"),
    (["--alpha", "1", "--alpha-sqrt-h", "1"], "not allowed with argument"),
    (["--h", "0"], "argument --h: must be an integer >= 1"),
    (["--p-test", "0"], "argument --p-test: must be an integer >= 1"),
    (["--act", "gelu"], "argument --act: invalid choice"),
    (["--dataset", "nope"], "unknown data set 'nope'"),
    (["--d", "2,3"], "argument --d: must be D or C,H,W"),
    (["--kernel-points", "100"], "--kernel-points 100 exceeds --p-test 50"),
    (["--arch", "cnn"], "the CNN needs images"),
    (["--bias", "-1"], "--bias must be a finite number >= 0"),
])
def test_bad_train_arguments_exit_2_and_name_the_argument(args, message):
    result = run_cli("train", *SMALL, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_gpu_without_cupy_or_device_is_a_clear_error():
    try:
        import cupy  # noqa: F401

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:
        pass
    result = run_cli("train", *SMALL, "--device", "gpu")
    assert result.returncode == 2 and "device='gpu'" in result.stderr and "device='cpu'" in result.stderr


def on_system(name):
    """Whether /usr/share/datasets/NAME holds every file of the set (gzipped or not), looked at directly."""
    folder = datafiles.SYSTEM_ROOT / name
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in datafiles.SETS[name].files)


@pytest.mark.parametrize("with_mnist", [True, False])
def test_data_lists_each_set_as_present_where_its_files_are_and_absent_elsewhere(with_mnist, tmp_path):
    """--data-dir holds a small MNIST (10 classes x (3 + 1) images) or nothing, the home has no cache and
    LAZYFEAT_DATA is unset: a set is listed in the data dir or the system folder exactly where its files
    are, and as absent (with the download command) where they are nowhere."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if with_mnist:
        write_set(data_dir, "mnist", idx_set_files("mnist"))
    env = {k: v for k, v in os.environ.items() if k != "LAZYFEAT_DATA"} | {"HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "data", "--data-dir", str(data_dir)], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in datafiles.NAMES:
        if name == "mnist" and with_mnist:
            assert listed[name].endswith(f"40 images of 1x28x28 in {data_dir / 'mnist'}")
        elif on_system(name):
            assert listed[name].endswith(f"in {datafiles.SYSTEM_ROOT / name}")
        else:
            assert "absent (searched" in listed[name] and f"python run.py download {name}" in listed[name]


class Stop(Exception):
    """Raised by a stand-in findings.Context once it has seen the workers a command asked for."""


@pytest.mark.parametrize("argv, expected", [(["crossover"], 3), (["crossover", "--device", "gpu"], 1),
                                            (["crossover", "--workers", "2"], 2)])
def test_findings_run_one_worker_per_core_of_the_machine_unless_told_otherwise(argv, expected, monkeypatch):
    import findings
    import lazyfeat as lf
    import run

    seen = []

    def context(results, workers, *rest, **options):
        seen.append(workers)
        raise Stop

    monkeypatch.setattr(run, "machine_cores", lambda: 3)
    monkeypatch.setattr(lf, "backend", lambda device: None)
    monkeypatch.setattr(findings, "Context", context)
    with pytest.raises(Stop):
        run.main(argv)
    assert seen == [expected]


def test_findings_help_names_the_default_workers_as_this_machines_cores():
    import run

    result = run_cli("crossover", "--help")
    assert result.returncode == 0 and f"the cores of this machine, {run.machine_cores()} here" in " ".join(
        result.stdout.split())
