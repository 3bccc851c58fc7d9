"""Each finding end to end: on planted worlds where its claims hold or fail by construction, with one
side of the sweep empty, at a tiny scale on synthetic data, and its sweep resumed after a kill."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import findings
import planted
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


# ---------------------------------------------------------------------------
# Planted worlds (tests/planted.py): the verdicts against models with known answers
# ---------------------------------------------------------------------------

PLANTED_GRID = {"dataset": "sphere", "d": 5, "p": 20, "p_test": 400, "L": 2, "h": [4, 16, 64],
                "alpha_sqrt_h": [1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3, 1e4], "seeds": 8, "kernel_points": 10}
PLANTED_PART = {"dataset": "sphere", "d": 5, "p": 20, "p_test": 40, "h": [16], "ends": [1e-2, 1e4], "seeds": 8}
PLANTED = {
    "crossover": {**PLANTED_GRID, "bisect_steps": 2, "c": 1.0},
    "regimes": {"fc": {**PLANTED_PART, "L": 2}, "pca": {**PLANTED_PART, "pca": 3, "L": 3},
                "cnn": {**PLANTED_PART, "d": [1, 19, 19], "arch": "cnn"}},
    "fluctuations": PLANTED_GRID,
    "timescale": PLANTED_GRID,
    "kernels": {**PLANTED_GRID, "alpha_sqrt_h": [1e-2, 1e4]},
}


def run_planted(name, holds=True, model=None, context=None, **sizes):
    """A finding on its planted world. The planted worlds are the paper's world by construction, so the
    claims that are decided only at the paper's data and p are decided here too."""
    context = context or planted.PlantedContext(model=model or planted.MODELS[name], holds=holds)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(findings, "at_paper_data", lambda sizes, paper_data: True)
        return findings.FINDINGS[name](context, {**PLANTED[name], **sizes})


def verdicts_of(outcome):
    return {c.quantity: (c.holds, c.measured, c.low, c.high, c.note) for c in outcome.claims}


@pytest.mark.parametrize("name", list(findings.FINDINGS))
def test_every_claim_holds_in_a_world_planted_to_follow_the_paper(name):
    wrong = {q: v for q, v in verdicts_of(run_planted(name, holds=True)).items() if v[0] is not True}
    assert not wrong


@pytest.mark.parametrize("name", list(findings.FINDINGS))
def test_every_claim_does_not_hold_in_a_world_planted_against_the_paper(name):
    wrong = {q: v for q, v in verdicts_of(run_planted(name, holds=False)).items() if v[0] is not False}
    assert not wrong


# The planted answer of each measured number (tests/planted.py), and how close the finding must get.
KNOWN = {
    "crossover": {"kernel change slope, feature side (alpha sqrt(h) <= 1)": (-4 / 3, 0.02),
                  "kernel change slope, lazy side (alpha sqrt(h) >= 100)": (-1.0, 0.02),
                  "alpha* sqrt(h) where kernel change = 1, h=4": (50.0, 2.5),
                  "alpha* sqrt(h) where kernel change = 1, h=64": (50.0, 2.5),
                  "exponent of alpha* against h": (-0.5, 0.03)},
    "regimes": {"FC on images h=16: error lazy - feature": (-0.05, 0.005),
                "CNN h=16: error lazy - feature": (0.05, 0.005)},
    "fluctuations": {"exponent of Var F against h, feature end (alpha sqrt(h) = 0.01)": (-1.0, 0.05),
                     "exponent of Var F against h, lazy end (alpha sqrt(h) = 10000)": (-1.0, 0.05),
                     "lazy ensemble error at h=64 - h = inf error": (0.0, 1e-12)},
    "timescale": {"t1 ~ alpha^a h^b: a, feature side (alpha sqrt(h) <= 0.1)": (1.0, 0.03),
                  "t1 ~ alpha^a h^b: b, feature side (alpha sqrt(h) <= 0.1)": (0.5, 0.03),
                  "t1 / (alpha sqrt(h)), feature side (alpha sqrt(h) <= 0.1)": (2.5, 0.1),
                  "exponent of t1 against alpha sqrt(h), lazy side (alpha sqrt(h) >= 100)": (0.0, 0.02),
                  "|F - F_lin| / |F| at t1/10, feature side (alpha sqrt(h) <= 0.1)": (0.02, 0.002),
                  "|F - F_lin| / |F| at t1, feature side (alpha sqrt(h) <= 0.1)": (0.8, 0.08)},
    "kernels": {"h=16, lazy end: network - init. kernel error": (0.0, 0.001),
                "h=16, feature end: |init - network| - |final - network|": (0.03, 0.003)},
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_the_numbers_of_a_finding_recover_the_planted_values(name):
    measured = {q: v[1] for q, v in verdicts_of(run_planted(name)).items()}
    for quantity, (answer, tolerance) in KNOWN[name].items():
        assert measured[quantity] == pytest.approx(answer, abs=tolerance), quantity


def test_ensemble_errors_use_the_labels_of_the_runs_on_synthetic_data_with_d():
    """At h = 10^4 and 10^6 the planted spread of F (2 / sqrt(h)) is far below its margins (>= 0.05),
    so the ensemble errs exactly on the planted wrong points: 10 % at the feature end, 5 % at the
    lazy end. The labels must be those of the runs (sphere, d = 5); other labels give about 50 %."""
    numbers = run_planted("fluctuations", h=[10**4, 10**6], alpha_sqrt_h=[1e-2, 1e4]).numbers
    assert numbers["ensemble_error"] == {"feature": [0.10, 0.10], "lazy": [0.05, 0.05]}
    ends = {"feature": [0.10, 0.10], "lazy": [0.05, 0.05]}
    assert numbers["comparison"] == {"h": [10**4, 10**6], "p": 20, "ensemble_error": ends, "single_error": ends}


def test_finding_3_compares_lazy_and_feature_ensembles_on_the_runs_of_its_comparison_part():
    """With an ensemble_comparison part (its own p, h and seeds), the lazy - feature claim is measured on that
    part's runs and test labels alone: at h = 10^6 the planted spread is negligible, so the ensembles err
    exactly on the planted wrong points, 5 % (lazy) against 10 % (feature): -0.05, on the part's 5 seeds, and the
    claim is decided by the part's data and p (here not the paper's)."""
    part = {"dataset": "sphere", "d": 5, "p": 30, "p_test": 400, "L": 2, "h": [10**6], "seeds": 5, "kernel_points": 0}
    context = planted.PlantedContext(model=planted.MODELS["fluctuations"], holds=True)
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(findings, "at_paper_data", lambda sizes, paper_data: seen.append(sizes["p"]) or True)
        outcome = findings.fluctuations(context, {**PLANTED["fluctuations"], "ensemble_comparison": part})
    compared = {(c["p"], c["h"], c["alpha_sqrt_h"], c["seed"]) for desc, _, configs in context.sweeps
                if desc == "fluctuations ensemble comparison" for c in configs}
    assert compared == {(30, 10**6, a, s) for a in (1e-2, 1e4) for s in range(5)} and seen == [30]
    holds, measured, low, high, note = verdicts_of(outcome)["ensemble error lazy - feature (mean over h)"]
    assert holds is True and measured == pytest.approx(-0.05) and low < -0.05 < high < 0
    assert note.startswith("5 seeds at p=30, h=1000000")
    comparison = outcome.numbers["comparison"]
    assert (comparison["h"], comparison["p"]) == ([10**6], 30)
    for kind in ("ensemble_error", "single_error"):
        assert comparison[kind] == {"feature": [pytest.approx(0.10)], "lazy": [pytest.approx(0.05)]}


# ---------------------------------------------------------------------------
# A sweep with one side empty: undecided claims that say what is missing; the run goes on
# ---------------------------------------------------------------------------

SIDED = [name for name in findings.FINDINGS if name != "regimes"]  # regimes runs its two given ends


@pytest.mark.parametrize("name", SIDED)
@pytest.mark.parametrize("empty, alphas", [("feature", [1e2, 1e3, 1e4]), ("lazy", [1e-2, 1e-1, 1.0])])
def test_a_sweep_without_one_side_leaves_its_claims_undecided_naming_what_is_missing(name, empty, alphas, tmp_path):
    """Claims about the empty side are undecided with a note naming it; claims about the other side
    still hold in the paper's planted world; every undecided claim says why; the figure is drawn."""
    outcome = run_planted(name, alpha_sqrt_h=alphas)
    other = "lazy" if empty == "feature" else "feature"
    for c in outcome.claims:
        if c.holds is None:
            assert "in this sweep" in c.note or "straddles" in c.note, c
        if empty in c.quantity:
            assert c.holds is None and ("no alpha sqrt(h)" in c.note or "only 1 alpha sqrt(h)" in c.note), c
        elif other in c.quantity:
            assert c.holds is True, c
    report.save_outcome(outcome, str(tmp_path), {"scale": "planted"})
    assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_timescale_without_a_feature_side_says_so():
    """`--alpha-sqrt-h 1,1e4` used to end in a TypeError: the feature side of t1 (<= 0.1) is empty."""
    claims = verdicts_of(run_planted("timescale", alpha_sqrt_h=[1.0, 1e4]))
    feature_side = [v for q, v in claims.items() if "feature side (alpha sqrt(h) <= 0.1)" in q]
    assert len(feature_side) == 6
    assert all(holds is None and note == "no alpha sqrt(h) <= 0.1 in this sweep" for holds, *_, note in feature_side)
    holds, *_, note = claims["exponent of t1 against alpha sqrt(h), lazy side (alpha sqrt(h) >= 100)"]
    assert holds is None and note == "only 1 alpha sqrt(h) >= 100 in this sweep (needs 2)"


def test_a_world_where_t1_grows_with_alpha_alone_fails_the_width_exponent():
    """t1 ~ alpha (not sqrt(h) alpha) passes every claim on the product alpha sqrt(h) at one width; fitted in
    alpha and h separately, the exponent of h does not hold, and neither does t1 / (alpha sqrt(h))."""
    claims = verdicts_of(run_planted("timescale", model=planted.timescale_in_alpha_only))
    assert claims["t1 ~ alpha^a h^b: a, feature side (alpha sqrt(h) <= 0.1)"][0] is True
    assert claims["t1 ~ alpha^a h^b: b, feature side (alpha sqrt(h) <= 0.1)"][0] is False
    assert claims["t1 / (alpha sqrt(h)), feature side (alpha sqrt(h) <= 0.1)"][0] is False


def test_crossover_with_one_width_leaves_the_width_claims_undecided():
    claims = verdicts_of(run_planted("crossover", h=[16]))
    holds, *_, note = claims["exponent of alpha* against h"]
    assert holds is None and note == "only 1 width h whose kernel change crosses 1 in this sweep (needs 2)"
    holds, *_, note = claims["kernel change: spread against alpha sqrt(h) / against alpha"]
    assert holds is None and note == "only 1 width h in this sweep (needs 2)"
    assert claims["alpha* sqrt(h) where kernel change = 1, h=16"][0] is True


# ---------------------------------------------------------------------------
# Real runs at a tiny scale
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_context(tmp_path_factory):
    return findings.Context(str(tmp_path_factory.mktemp("results")), progress=False)


@pytest.mark.parametrize("name", list(findings.FINDINGS))
def test_each_finding_runs_end_to_end_and_writes_figure_results_and_verdict(name, tiny_context, tmp_path):
    """Every claim is measured (finite value and interval) or undecided with a note that says why, and
    the JSON record holds the same verdict."""
    outcome = findings.FINDINGS[name](tiny_context, TINY[name])
    assert outcome.claims
    for c in outcome.claims:
        if c.holds is None:
            assert c.note, c
        else:
            assert all(math.isfinite(v) for v in (c.measured, c.low, c.high)) and c.low <= c.high, c
    lines = report.save_outcome(outcome, str(tmp_path), {"scale": "tiny"})
    assert len(lines) == len(outcome.claims) + 3 + len(outcome.notes)
    for suffix in (".png", ".pdf", ".json"):
        assert (tmp_path / f"{name}{suffix}").stat().st_size > 0
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["finding"] == name
    assert [v["holds"] for v in record["verdict"]] == [c.holds for c in outcome.claims]
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


def test_a_dict_override_is_set_once_and_not_searched_for_its_own_key():
    """--set 'pca={"pca": 3}' once recursed into the dict it had just set, without end."""
    sizes = findings.sizes_for("regimes", "quick", {"pca": {"pca": 3}})
    assert sizes["pca"]["pca"] == {"pca": 3} and sizes["pca"]["L"] == 5


def test_an_override_named_like_a_part_sets_the_key_inside_the_part_and_keeps_the_part():
    sizes = findings.sizes_for("regimes", "quick", {"pca": 20})
    assert isinstance(sizes["pca"], dict) and sizes["pca"]["pca"] == 20 and sizes["pca"]["L"] == 5


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
    assert 8 <= len(before) < 37, "the kill must land part way through the 36 runs and the h = inf predictor"
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    after = stored(results)
    assert len(after) == 37
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
    (["crossover", "--kernel-points", "0"], "crossover measures the kernel change: give kernel_points >= 1"),
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


def test_the_command_line_goes_on_with_an_empty_side_and_says_what_is_missing(tmp_path):
    """`--alpha-sqrt-h 1,1e4` leaves timescale without its feature side (<= 0.1): exit 0, the claims say so."""
    result = run_cli("timescale", "--dataset", "sphere", "--d", "5", "--p", "30", "--p-test", "60", "--L", "2",
                     "--h", "8,16", "--alpha-sqrt-h", "1,1e4", "--seeds", "2", "--kernel-points", "0",
                     "--no-progress", "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "figures"))
    assert result.returncode == 0, result.stderr
    verdict = json.loads((tmp_path / "figures" / "timescale.json").read_text())["verdict"]
    feature_side = [v for v in verdict if "feature side" in v["quantity"]]
    assert feature_side and all(v["holds"] is None and v["note"] == "no alpha sqrt(h) <= 0.1 in this sweep"
                                for v in feature_side)
    assert (tmp_path / "figures" / "timescale.png").stat().st_size > 0


def test_setting_seeds_sets_finding_3s_end_seeds_unless_both_are_set():
    assert findings.sizes_for("fluctuations", "quick")["end_seeds"] == 10
    assert findings.sizes_for("fluctuations", "quick", {"seeds": 3})["end_seeds"] == 3
    assert findings.sizes_for("fluctuations", "quick", {"seeds": 3, "end_seeds": 7})["end_seeds"] == 7
    assert "end_seeds" not in findings.sizes_for("crossover", "quick", {"seeds": 3})


def test_finding_3_measures_its_ends_on_end_seeds_and_the_rest_on_seeds():
    """With 2 seeds per point and 8 at the two ends, every claim (all measured at the ends) holds in the
    planted world; the grid of 2 seeds alone does not decide them."""
    context = planted.PlantedContext(model=planted.MODELS["fluctuations"], holds=True)
    sizes = {**PLANTED["fluctuations"], "seeds": 2, "end_seeds": 8}
    outcome = run_planted("fluctuations", context=context, **sizes)
    trained = {(c["h"], c["alpha_sqrt_h"], c["seed"]) for _, fn, configs in context.sweeps if fn.__name__ == "fit"
               for c in configs}
    alphas, hs = sizes["alpha_sqrt_h"], sizes["h"]
    expected = {(h, a, s) for h in hs for a in alphas for s in range(8 if a in (min(alphas), max(alphas)) else 2)}
    assert trained == expected
    assert all(c.holds for c in outcome.claims)
    assert any("8 seeds" in c.note for c in outcome.claims)
    two = run_planted("fluctuations", **{**sizes, "end_seeds": 2})
    assert all(c.holds is None and c.note.startswith(("too few seeds", "not measurable")) for c in two.claims)


@pytest.mark.parametrize("integrator", ["paper", "rk23", "rkc", "auto"])
def test_sweeps_group_the_configs_of_every_integrator_into_ensembles(integrator):
    """Under every step rule an ensemble member runs as it would alone (test_integrators), so a sweep may group
    any configs that differ in seed and alpha sqrt(h)."""
    import experiments

    group = experiments.ensembles(max_members=8, max_memory=2**30)
    config = {"dataset": "sphere", "d": 5, "p": 10, "p_test": 10, "h": 8, "integrator": integrator}
    assert group.capacity(config) == 8


def test_findings_use_the_auto_step_rule_unless_told_otherwise():
    sizes = {"dataset": "sphere", "d": 5, "p": 20, "p_test": 20, "L": 2}
    assert findings.run_config(findings.Context(), sizes, 8, 1.0, 0)["integrator"] == "auto"
    assert findings.run_config(findings.Context(integrator="paper"), sizes, 8, 1.0, 0)["integrator"] == "paper"
