"""Each finding end to end at a tiny scale on synthetic data, and a finding's sweep resumed after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import findings
import report

ROOT = Path(__file__).resolve().parent.parent

TINY_GRID = {"dataset": "sphere", "d": 5, "p": 30, "p_test": 60, "L": 2, "h": [8, 32],
             "alpha_sqrt_h": [1e-2, 1e0, 1e2, 1e4], "seeds": 3, "kernel_points": 15}
TINY = {
    "crossover": {**TINY_GRID, "bisect_steps": 1, "c": 1.0},
    "regimes": {"fc": {**TINY_GRID, "h": [32], "ends": [1e-2, 1e4]},
                "pca": {**TINY_GRID, "L": 3, "h": [16], "ends": [1e-2, 1e4], "kernel_points": 0},
                "cnn": {**TINY_GRID, "d": [1, 19, 19], "arch": "cnn", "h": [2], "p": 12, "p_test": 20,
                        "ends": [1e-2, 1e4], "seeds": 2, "kernel_points": 0}},
    "fluctuations": {**TINY_GRID},
    "timescale": {**TINY_GRID},
    "kernels": {**TINY_GRID, "h": [16], "alpha_sqrt_h": [1e-2, 1e4], "seeds": 2},
}


@pytest.fixture(scope="module")
def tiny_context(tmp_path_factory):
    return findings.Context(str(tmp_path_factory.mktemp("results")), progress=False)


@pytest.mark.parametrize("name", list(findings.FINDINGS))
def test_each_finding_runs_end_to_end_and_writes_figure_results_and_verdict(name, tiny_context, tmp_path):
    outcome = findings.FINDINGS[name](tiny_context, TINY[name])
    assert outcome.claims and all(c.holds in (True, False, None) for c in outcome.claims)
    lines = report.save_outcome(outcome, str(tmp_path), {"scale": "tiny"})
    assert any(word in "\n".join(lines) for word in ("holds", "does not hold", "undecided"))
    for suffix in (".png", ".pdf", ".json"):
        assert (tmp_path / f"{name}{suffix}").stat().st_size > 0
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["finding"] == name and len(record["verdict"]) == len(outcome.claims)
    assert record["numbers"]


def test_the_report_gathers_every_finding(tiny_context, tmp_path):
    outcomes = [findings.FINDINGS[name](tiny_context, TINY[name]) for name in ("timescale", "kernels")]
    meta = {"scale": "tiny", "device": "cpu", "wall_s": 1.0, "computed": tiny_context.tally["computed"],
            "reused": tiny_context.tally["stored"]}
    path = report.write_report(outcomes, str(tmp_path), meta)
    text = Path(path).read_text()
    assert "![timescale](timescale.png)" in text and "| quantity |" in text and "Kernel baselines" in text


def test_overrides_reach_every_part_that_has_the_key_and_unknown_keys_fail():
    sizes = findings.sizes_for("regimes", "quick", {"p": 77})
    assert {part["p"] for part in sizes.values()} == {77}
    with pytest.raises(ValueError, match="has no size 'bisect_steps'"):
        findings.sizes_for("regimes", "quick", {"bisect_steps": 3})


CROSSOVER_COMMAND = [sys.executable, str(ROOT / "run.py"), "crossover", "--dataset", "sphere", "--d", "5",
                     "--p", "30", "--p-test", "60", "--L", "2", "--h", "8,16,32", "--alpha-sqrt-h", "0.01,1,100,10000",
                     "--seeds", "3", "--kernel-points", "15", "--set", "bisect_steps=0", "--no-progress"]


def stored(results):
    """The stored runs of a results folder: file name -> (modification time, content without wall times)."""
    def strip(text):
        record = json.loads(text)["result"]
        for key in ("wall_s", "ms_per_step"):
            record.pop(key)
        for r in record["records"]:
            r.pop("wall")
        return record

    return {p.name: (p.stat().st_mtime_ns, strip(p.read_text())) for p in results.glob("*.json")}


def test_a_killed_finding_resumes_computing_only_the_missing_runs(tmp_path):
    """Kill `run.py crossover` with SIGKILL part way, start it again: it computes only what is
    missing, and every stored run equals the one of an uninterrupted command."""
    results, figures = tmp_path / "results", tmp_path / "figures"
    command = CROSSOVER_COMMAND + ["--results", str(results), "--figures", str(figures)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(results.glob("*.json"))) < 8 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = stored(results)
    assert 8 <= len(before) < 36, "the kill must land part way through the 36 runs"
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    after = stored(results)
    assert len(after) == 36
    assert all(after[name] == before[name] for name in before)  # untouched: not recomputed
    fresh = tmp_path / "fresh"
    subprocess.run(CROSSOVER_COMMAND + ["--results", str(fresh), "--figures", str(tmp_path / "f2")], cwd=ROOT,
                   check=True, capture_output=True)
    assert {n: r for n, (_, r) in stored(fresh).items()} == {n: r for n, (_, r) in after.items()}
    verdict = [json.loads((d / "crossover.json").read_text())["verdict"] for d in (figures, tmp_path / "f2")]
    assert verdict[0] == verdict[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["crossover", "--dataset", "nope"], "unknown data set 'nope'"),
    (["crossover", "--alpha-sqrt-h", "1,-3"], "must be a finite number > 0"),
    (["crossover", "--h", ""], "empty sweep"),
    (["crossover", "--seeds", "0"], "empty sweep"),
    (["crossover", "--set", "ends=[1]"], "no finding here has the size"),
    (["regimes", "--set", "bogus"], "write KEY=VALUE"),
])
def test_bad_finding_input_exits_2_with_a_clear_message(args, message, tmp_path):
    result = run_cli(*args, "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "figures"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_unknown_finding_exits_2():
    result = run_cli("crossovr")
    assert result.returncode == 2 and "invalid choice: 'crossovr'" in result.stderr


def test_an_unwritable_results_folder_exits_2_and_loses_nothing(tmp_path):
    results = tmp_path / "results"
    first = run_cli(*CROSSOVER_COMMAND[2:], "--seeds", "1", "--h", "8", "--results", str(results),
                    "--figures", str(tmp_path / "f"))
    assert first.returncode == 0, first.stderr
    kept = stored(results)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    result = run_cli(*CROSSOVER_COMMAND[2:], "--results", str(blocked / "results"), "--figures", str(tmp_path / "f"))
    assert result.returncode == 2 and str(blocked / "results") in result.stderr
    assert stored(results) == kept
    assert os.path.exists(tmp_path / "f" / "crossover.json")
