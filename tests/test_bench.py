"""The arithmetic of the benchmarks' projections (their timings are measured, not tested)."""
import pytest

import bench
import run
from tests.data_writers import real_fashion


def test_fc_cost_counts_the_multiply_adds_of_one_forward_pass_per_sample():
    """d h + (L - 1) h^2 + h: 784 x 300 + 2 x 300^2 + 300, and a PCA input of 10 through L = 5 layers of 800."""
    assert bench.fc_cost(300) == 415_500
    assert bench.fc_cost(800, L=5, d=10) == 8_000 + 4 * 640_000 + 800


def test_paper_runs_count_each_findings_fc_runs_at_the_papers_sizes():
    """Finding 1 at paper scale: 3 widths x 23 half decades of alpha sqrt(h) x 10 seeds on p = 10 000; the
    kernels: h = 300, 10 values x 3 seeds on p = 5000; finding 2: its two ends x 10 seeds, FC on images and
    FC L = 5 on 10 PCA components of MNIST (p = 5000); the CNN is not counted."""
    assert bench.paper_runs("crossover") == {(h, 3, 784, 10_000): 230 for h in (100, 300, 1000)}
    assert bench.paper_runs("kernels") == {(300, 3, 784, 5000): 30}
    assert bench.paper_runs("regimes") == {**{(h, 3, 784, 10_000): 20 for h in (100, 300, 1000)},
                                           (100, 5, 10, 5000): 20, (800, 5, 10, 5000): 20}
    assert sum(bench.paper_runs("fluctuations").values()) == 8 * 9 * 20


def test_projected_hours_scale_each_run_by_its_points_and_width():
    """1000 steps per run at 1 member-step per second, measured at h = 100 on p = 10 000: the 30 kernel runs
    (h = 300 on p = 5000) cost 30 x 1000 x (5000 x 415 500) / (10 000 x 98 500) seconds, 17.576 hours."""
    hours = bench.projected_hours(1000, 1.0, 100, 10_000)
    assert hours["kernels"] == pytest.approx(30 * 1000 * 0.5 * 415_500 / 98_500 / 3600)
    assert hours["kernels"] == pytest.approx(17.576, abs=1e-3)
    assert bench.projected_hours(1000, 2.0, 100, 10_000)["kernels"] == pytest.approx(hours["kernels"] / 2)
    assert hours["crossover"] == pytest.approx(230 * 1000 * sum(bench.fc_cost(h) for h in (100, 300, 1000))
                                               / bench.fc_cost(100) / 3600)


@pytest.mark.parametrize("fitted, words", [(23, False), (5, True)])
def test_a_projection_from_runs_that_did_not_all_fit_says_it_is_a_lower_bound(fitted, words):
    row = {"bench": "projection", "case": "23 x FC", "seconds": 240.0, "fitted": fitted, "members": 23,
           "steps_per_run": 1000, "member_steps_per_s": 50.0, "projected_hours": {"crossover": 1.5}}
    assert ("at least" in run.format_bench(row)) == words


@pytest.mark.skipif(real_fashion() is None,
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_the_device_suite_runs_end_to_end_on_the_cpu_at_small_sizes():
    """`.ci/device`'s benchmarks (never run here on a GPU) at toy sizes on the CPU: an ensemble of 3 nets and one
    net for 2 accepted steps each, one net for 1 step, and the 23-member projection, each printable."""
    rows = list(bench.device_benchmarks("cpu", members=3, p=200, steps=2, max_wall=2))
    assert [row["bench"] for row in rows] == ["throughput"] * 3 + ["projection"]
    assert [row["member_steps"] for row in rows[:3]] == [6, 2, 1]
    projection = rows[3]
    assert projection["members"] == 23 and 0 <= projection["fitted"] <= 23
    assert set(projection["projected_hours"]) == {"crossover", "regimes", "fluctuations", "timescale", "kernels"}
    assert all(run.format_bench(row) for row in rows)


def test_a_sweep_is_projected_from_the_step_cost_of_its_fc_runs_and_cnn_runs_are_only_counted(monkeypatch):
    """Two FC runs, one of 4x the calibration's cost per step, at 100 steps each and 50 member-steps per second
    measured: (1 + 4) x 100 / 50 s; a CNN run is counted apart."""
    monkeypatch.setattr(bench, "member_steps_per_s", lambda device: 50.0)
    same = {k: bench.CALIBRATION[k] for k in ("dataset", "d", "p", "h", "L")}
    four_times = {**same, "p": 4 * same["p"]}
    cnn = {**same, "arch": "cnn"}
    hours, fc, other = bench.projected_sweep([same, four_times, cnn], steps_per_run=100)
    assert (fc, other) == (2, 1) and hours * 3600 == pytest.approx(5 * 100 / 50, rel=1e-12)
    assert bench.input_dimension({"dataset": "fashion"}) == 784 and bench.input_dimension({"pca": 10}) == 10
    assert bench.input_dimension({"dataset": "cifar10"}) == 3072


def test_a_paper_scale_sweep_on_the_cpu_prints_its_size_projection_and_alternatives_before_it_starts(
        monkeypatch, tmp_path, capsys):
    import findings
    import sweep

    class Started(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Started

    monkeypatch.setattr(bench, "member_steps_per_s", lambda device: 100.0)
    monkeypatch.setattr(sweep, "run", refuse)
    context = findings.Context(str(tmp_path), workers=2, progress=False)
    with pytest.raises(Started):
        findings.crossover(context, findings.sizes_for("crossover", "paper"))
    printed = capsys.readouterr().err
    runs = len(findings.PAPER_GRID["h"]) * len(findings.PAPER_GRID["alpha_sqrt_h"]) * findings.PAPER_GRID["seeds"]
    assert f"{runs} runs to compute, 0 stored" in printed and "projected at" in printed
    assert "--device gpu" in printed and "--scheduler" in printed


def test_the_infinite_width_benchmark_reports_the_table_within_its_stated_accuracy():
    """The table's error at the midpoints of its grid (read in the angle, as ntk_infinite reads it) and the
    kernel against direct quadrature are both below kernels.TABLE_ERROR: a benchmark that fed the table
    cosines instead of angles would report an error of order one."""
    import kernels

    row = bench.bench_infinite(p=40, D=20, L=2, check_points=8)
    assert row["table_error"] < kernels.TABLE_ERROR and row["direct_error"] < kernels.TABLE_ERROR
