"""An ensemble of S networks trained as one computation: each member ends as its solo run does."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import experiments
import kernels
import lazyfeat as lf
import machine
import sweep
from test_lazyfeat import ACTS, toy_task

SETTINGS = settings(max_examples=12, deadline=None)


def images(n, seed, size=19):
    """Gaussian one-channel images with labels from the sign of their mean pixel."""
    x = np.random.default_rng(seed).standard_normal((n, 1, size, size))
    return x, np.where(x.mean(axis=(1, 2, 3)) > 0, 1.0, -1.0)


@st.composite
def ensemble_case(draw):
    """A network (FC of drawn width and depth, or a small CNN), its data, S seeds and S alphas."""
    S = draw(st.integers(1, 4))
    seeds = draw(st.lists(st.integers(0, 1000), min_size=S, max_size=S))
    alphas = [10.0 ** draw(st.sampled_from([-2, -1, 0, 1, 2, 4])) for _ in range(S)]
    if draw(st.booleans()):
        net = lf.FC(5, draw(st.integers(2, 24)), draw(st.integers(1, 3)), draw(st.sampled_from(ACTS)))
        x, y, xt, yt = toy_task(p=draw(st.integers(6, 40)), p_test=30, seed=draw(st.integers(0, 5)))
    else:  # smooth activations: a ReLU kink makes a trajectory hang on the last bit, and an ensemble's
        # convolution sums its products in another order than one network's
        net = lf.CNN(1, draw(st.integers(1, 3)), draw(st.sampled_from(["softplus", "tanh", "swish"])))
        (x, y), (xt, yt) = images(8, 0), images(6, 1)
    return net, seeds, alphas, (x, y, xt, yt)


def assert_member_is_its_solo_run(member, solo):
    assert member.status == solo.status
    assert abs(member.steps_accepted - solo.steps_accepted) <= 0.01 * solo.steps_accepted
    scale = np.abs(solo.F_test).max()
    assert np.abs(member.F_test - solo.F_test).max() <= 1e-5 * scale


@SETTINGS
@given(ensemble_case(), st.sampled_from(["flow", "adam"]))
def test_each_member_ends_as_its_solo_run(case, method):
    """Members stop at different times (they have different alphas and seeds); each one's status,
    accepted steps and test predictor are those of the same network trained alone."""
    net, seeds, alphas, (x, y, xt, yt) = case
    options = dict(method=method, lr=1e-2, batch_size=4, max_steps=300, checkpoints=5)
    runs = lf.train(net, net.init(seeds), x, y, alphas, xt, yt, seed=seeds, **options)
    assert isinstance(runs, list) and len(runs) == len(seeds)
    for member, seed, alpha in zip(runs, seeds, alphas):
        solo = lf.train(net, net.init(seed), x, y, alpha, xt, yt, seed=seed, **options)
        assert_member_is_its_solo_run(member, solo)
        assert [r["step"] for r in member.records] == [r["step"] for r in solo.records]


def weight_sum(params, record):
    """A callback's field: it sees the member's parameters at its checkpoint."""
    return {"weight_sum": float(sum(w.sum() for w in params))}


# rk23 with ReLU is left out: its norms over an ensemble sum in another order than one network's, and at a
# kink a difference of rounding can turn a rejection into an acceptance.
RULES_AND_ACTS = [("paper", act) for act in ACTS] + [("rk23", act) for act in ACTS if act != "relu"]


@SETTINGS
@given(st.integers(1, 3), st.integers(2, 10), st.integers(2, 3), st.sampled_from(RULES_AND_ACTS),
       st.integers(6, 20), st.integers(0, 5), st.integers(2, 6))
def test_checkpoints_observed_together_give_each_member_the_records_and_run_of_its_solo_run(
        S, h, L, rule_and_act, p, seed, checkpoints):
    """Members drift apart through their rejected steps, so their checkpoints fall on different steps of the
    ensemble and wait to be observed together (`Ensemble.flush`). Every member's records (all fields but
    wall, a callback's field included, in order) and its Run are those of the member trained alone: the
    same steps, and the same values to rounding (an ensemble sums some products in another order)."""
    integrator, act = rule_and_act
    net = lf.FC(5, h, L, act)
    x, y, xt, yt = toy_task(p=p, p_test=20, seed=seed)
    objective = lf.Objective(net, net.init(list(range(S))), x, y, list(np.geomspace(1e-2, 1e4, S)), xt, yt)
    options = dict(integrator=integrator, max_steps=60, checkpoints=checkpoints, callback=weight_sum)
    for s, member in enumerate(lf.gradient_flow(objective, objective.params0, **options)):
        alone = objective.take(np.array([s]))
        (solo,) = lf.gradient_flow(alone, alone.params0, **options)
        runs = (member, solo)
        assert len({(run.status, run.steps_accepted, run.steps_rejected, run.evaluations) for run in runs}) == 1
        records = [[{k: v for k, v in r.items() if k != "wall"} for r in run.records] for run in runs]
        assert [(r["step"], r["rejected"]) for r in records[0]] == [(r["step"], r["rejected"]) for r in records[1]]
        assert records[0] == [pytest.approx(r, rel=1e-6, abs=1e-12) for r in records[1]]
        ends = [[run.t, run.dt, run.test_error, *(a.ravel() for a in [*run.state, run.F_test])] for run in runs]
        assert all(np.allclose(a, b, rtol=1e-6, atol=1e-12) for a, b in zip(*ends))


def test_a_diverging_member_stops_alone_and_the_others_go_on():
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 16, 2)
    params = net.init([0, 1, 2])
    for w in params:
        w[1] *= 1e300  # member 1's output is not finite
    runs = lf.train(net, params, x, y, 1.0, xt, yt, subtract_f0=False)
    assert [run.status for run in runs] == ["fitted", "diverged", "fitted"]
    for s in (0, 2):
        assert_member_is_its_solo_run(runs[s], lf.train(net, net.init(s), x, y, 1.0, xt, yt, subtract_f0=False))


def test_members_that_stop_are_dropped_from_the_computation():
    """The member that fits first is no longer evaluated: the integrator sees fewer members."""
    x, y, _, _ = toy_task()
    net = lf.FC(5, 16, 2)
    objective = lf.Objective(net, net.init([0, 0]), x, y, [1e-2, 1e2])
    seen = []

    class Counting:
        def __init__(self, system):
            self.system = system

        def evaluate(self, state):
            seen.append(len(state[0]))
            return self.system.evaluate(state)

        def take(self, idx):
            return Counting(self.system.take(idx))

        def __getattr__(self, name):
            return getattr(self.system, name)

    runs = lf.gradient_flow(Counting(objective), objective.params0)
    first, last = sorted(run.steps_accepted + run.steps_rejected for run in runs)
    assert first < last and seen.count(2) == first + 1 and seen.count(1) == last - first


def test_init_of_a_list_of_seeds_stacks_the_single_inits():
    for net in (lf.FC(4, 6, 2, bias=0.1), lf.CNN(2, 3)):
        ensemble = net.init([5, 7, 5])
        for s, seed in enumerate([5, 7, 5]):
            assert all(np.array_equal(a[s], b) for a, b in zip(ensemble, net.init(seed)))


@SETTINGS
@given(ensemble_case())
def test_the_ensemble_ntk_is_the_ntk_of_each_member(case):
    net, seeds, _, (x, _, xt, _) = case
    theta = kernels.ntk(net, net.init(seeds), x[:6], xt[:5], chunk=4)
    assert theta.shape == (len(seeds), 6, 5)
    for s, seed in enumerate(seeds):
        np.testing.assert_allclose(theta[s], kernels.ntk(net, net.init(seed), x[:6], xt[:5]), rtol=1e-12, atol=1e-12)


def test_kernel_flow_of_S_alphas_or_S_kernels_is_each_solo_flow():
    x, y, xt, yt = toy_task(p=30, p_test=20)
    net = lf.FC(5, 16, 2)
    theta, theta_tx = kernels.ntk(net, net.init([0, 1]), x), kernels.ntk(net, net.init([0, 1]), xt, x)
    by_alpha = kernels.flow(theta[0], y, [0.1, 10.0], theta_tx[0], yt)
    by_kernel = kernels.flow(theta, y, [0.1, 10.0], theta_tx, yt)
    for s, alpha in enumerate([0.1, 10.0]):
        assert_member_is_its_solo_run(by_alpha[s], kernels.flow(theta[0], y, alpha, theta_tx[0], yt))
        assert_member_is_its_solo_run(by_kernel[s], kernels.flow(theta[s], y, alpha, theta_tx[s], yt))


SMALL = {"dataset": "sphere", "d": 5, "p": 20, "p_test": 30, "h": 8, "L": 2, "kernel_points": 6,
         "kernel_along": True, "store_F_test": True, "checkpoints": 5}


def without_timings(result):
    result = {k: v for k, v in result.items() if k not in ("wall_s", "ms_per_step")}
    result["records"] = [{k: v for k, v in r.items() if k != "wall"} for r in result["records"]]
    return result


def test_an_ensemble_of_configs_gives_each_configs_own_result():
    configs = [{**SMALL, "seed": s, "alpha_sqrt_h": a} for s, a in [(0, 1e-2), (1, 1.0), (0, 1e4)]]
    together = experiments.fit_ensemble(configs)
    for config, result in zip(configs, together):
        alone = experiments.fit(config)
        assert without_timings(result) == pytest.approx(without_timings(alone), rel=1e-9, abs=1e-12)


def test_a_sweep_grouped_into_ensembles_stores_the_same_results_as_one_config_at_a_time(tmp_path):
    configs = [{**SMALL, "h": h, "seed": s, "alpha_sqrt_h": a} for h in (4, 8) for s in (0, 1) for a in (1e-1, 1e3)]
    group = experiments.ensembles(max_members=3, max_memory=2**30)
    grouped = sweep.run(experiments.fit, configs, str(tmp_path / "grouped"), progress=False, group=group)
    alone = sweep.run(experiments.fit, configs, str(tmp_path / "alone"), progress=False)
    names = lambda folder: sorted(p.name for p in (tmp_path / folder).glob("*.json"))
    assert names("grouped") == names("alone") and len(names("alone")) == len(configs)
    for a, b in zip(grouped, alone):
        assert without_timings(a) == pytest.approx(without_timings(b), rel=1e-9, abs=1e-12)


def test_ensemble_capacity_respects_the_memory_cap():
    each = experiments.member_bytes(SMALL)
    assert experiments.ensembles(100, 3.5 * each).capacity(SMALL) == 3
    assert experiments.ensembles(2, 1e12).capacity(SMALL) == 2
    assert experiments.ensembles(100, 0.1 * each).capacity(SMALL) == 1


def test_seeds_and_alphas_of_different_lengths_are_a_clear_error():
    x, y, _, _ = toy_task()
    net = lf.FC(5, 4, 2)
    with pytest.raises(ValueError, match="seeds and alphas of different lengths: 3 networks .* 2 values"):
        lf.train(net, net.init([0, 1, 2]), x, y, [1.0, 2.0])
    with pytest.raises(ValueError, match="seeds and alphas of different lengths: 1 networks .* 2 values"):
        lf.train(net, net.init(0), x, y, [1.0, 2.0])
    with pytest.raises(ValueError, match="alphas of different lengths"):
        kernels.flow(np.eye(len(y))[None].repeat(2, 0), y, [1.0, 2.0, 3.0])


def test_an_empty_ensemble_is_a_clear_error():
    x, y, _, _ = toy_task()
    net = lf.FC(5, 4, 2)
    with pytest.raises(ValueError, match="an empty ensemble"):
        net.init([])
    with pytest.raises(ValueError, match="an empty ensemble"):
        lf.train(net, net.init([0]), x, y, [])


def test_an_ensemble_that_does_not_fit_in_memory_says_how_much_it_needs_and_what_to_set(monkeypatch):
    x, y, _, _ = toy_task()
    net = lf.FC(5, 64, 3)
    params = net.init([0, 1, 2, 3])
    each = net.bytes_per_member(params, x, len(x))
    monkeypatch.setattr(lf, "available_memory", lambda xp: 2.5 * each)
    with pytest.raises(ValueError, match=r"an ensemble of 4 networks .* needs about .* GiB .* train at most 2 "
                                         r"networks at a time \(the sweep's --max-members\)"):
        lf.train(net, params, x, y, 1.0)


def test_bytes_per_member_grows_with_samples_and_width():
    x = toy_task(p=100)[0]
    small, wide = lf.FC(5, 16, 2), lf.FC(5, 64, 2)
    p_small, p_wide = small.init(0), wide.init(0)
    assert small.bytes_per_member(p_small, x, 100) > small.bytes_per_member(p_small, x, 10)
    assert wide.bytes_per_member(p_wide, x, 100) > 3 * small.bytes_per_member(p_small, x, 100)
    per_sample = small.bytes_per_member(p_small, x, 2) - small.bytes_per_member(p_small, x, 1)
    assert per_sample >= 8 * 2 * 16 * 2  # at least two hidden layers' activations and slopes, in float64


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_momentum_changes_the_trajectory_and_converges_to_the_fine_step_reference(tau):
    """dv/dt = -(v + grad L)/tau, dw/dt = v: at t = 3 the momentum run differs from plain flow, and it is
    closer and closer to the same dynamics integrated with bounds 2^8 times tighter as the bounds tighten
    (ignoring tau fails both)."""
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 20, 2)
    params0 = net.init(0)

    def F_test(tau, k=0):
        return lf.train(net, params0, x, y, 1.0, xt, yt, tau=tau, max_dgrad=1e-4 / 2**k, max_dout=0.1 / 2**k,
                        max_time=3.0).F_test

    reference, plain = F_test(tau, 8), F_test(0.0)
    assert np.abs(plain - reference).max() > 0.05 * np.abs(reference).max()
    errors = [np.abs(F_test(tau, k) - reference).max() for k in (0, 2, 4, 6)]
    assert errors[0] < 0.25 * np.abs(plain - reference).max()
    assert all(b < a for a, b in zip(errors, errors[1:])) and errors[-1] < 0.1 * errors[0]


def test_momentum_with_tau_far_below_the_step_is_stable_and_is_plain_flow():
    """The velocity is integrated exactly, so steps dt >> tau stay stable (explicit Euler on v blows up once
    dt > 2 tau) and v relaxes to -grad L: the run matches plain gradient flow."""
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 20, 2)
    momentum = lf.train(net, net.init(0), x, y, 1.0, xt, yt, tau=1e-6, max_time=3.0)
    plain = lf.train(net, net.init(0), x, y, 1.0, xt, yt, max_time=3.0)
    assert momentum.status == "time" and min(r["dt"] for r in momentum.records[5:]) > 100 * 1e-6
    assert np.abs(momentum.F_test - plain.F_test).max() < 1e-3 * np.abs(plain.F_test).max()


def test_dgrad_at_a_stationary_point_is_zero_and_a_step_away_from_it_is_infinite():
    zero, one = [np.zeros((2, 3))], [np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])]
    F = np.zeros((2, 4))
    _, dgrad = lf.step_change(lf.Point(F, F, np.zeros(2), zero), lf.Point(F, F, np.zeros(2), one))
    assert dgrad.tolist() == [0.0, np.inf]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(2, 40), st.floats(1e-6, 1.0), st.integers(0, 100))
def test_step_change_from_kept_norms_equals_the_norm_of_the_difference(S, n, size, seed):
    """dgrad = |g_new - g_old|^2 / (|g_old| |g_new|), computed from |g|^2 and one dot product, equals
    the direct formula to 1e-9 relative, also for steps that change the gradient very little."""
    rng = np.random.default_rng(seed)
    old = [rng.standard_normal((S, n)), rng.standard_normal((S, 2, n))]
    new = [g + size * rng.standard_normal(g.shape) for g in old]
    F = np.zeros((S, 3))
    _, dgrad = lf.step_change(lf.Point(F, F, np.zeros(S), old), lf.Point(F, F, np.zeros(S), new))
    norm2 = lambda gs: sum((g.reshape(S, -1) ** 2).sum(axis=1) for g in gs)
    direct = norm2([a - b for a, b in zip(new, old)]) / np.sqrt(norm2(old) * norm2(new))
    np.testing.assert_allclose(dgrad, direct, rtol=1e-9, atol=1e-15)


def test_across_cores_deals_members_round_robin_and_returns_them_in_order():
    calls = []

    def fit(idx):
        calls.append(list(idx))
        return [f"run {i}" for i in idx]

    assert machine.across_cores(fit, 7, 3) == [f"run {i}" for i in range(7)]
    assert sorted(calls) == [[0, 3, 6], [1, 4], [2, 5]]
    calls.clear()
    assert machine.across_cores(fit, 2, 1) == ["run 0", "run 1"] and calls == [[0, 1]]


@pytest.mark.parametrize("method", ["flow", "adam"])
def test_how_an_ensemble_is_split_across_cores_changes_no_result(method, monkeypatch):
    """The same 5 members trained on 1 core (one block) and on 3 (three threads) end with the same
    status, steps, records and test predictor."""
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 12, 2)
    options = dict(method=method, lr=1e-2, batch_size=4, max_steps=200, checkpoints=5, seed=[3, 1, 4, 1, 5])
    alphas = [1e-2, 1e-1, 1.0, 1e2, 1e4]
    runs = {}
    for cores in (1, 3):
        monkeypatch.setattr(machine, "cpu_threads", lambda xp, cores=cores: cores)
        runs[cores] = lf.train(net, net.init([0, 1, 2, 3, 4]), x, y, alphas, xt, yt, **options)
    for one, three in zip(runs[1], runs[3]):
        assert (one.status, one.steps_accepted, one.steps_rejected) == (three.status, three.steps_accepted,
                                                                         three.steps_rejected)
        assert [r["loss"] for r in one.records] == pytest.approx([r["loss"] for r in three.records], rel=1e-12)
        np.testing.assert_allclose(one.F_test, three.F_test, rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 300), st.integers(1, 64), st.integers(1, 4))
def test_sample_parts_cover_the_samples_in_balanced_parts_and_those_computed_at_once_hold_at_most_chunk(n, chunk, cores):
    parts = machine.sample_parts(n, chunk, cores)
    assert [i for part in parts for i in range(n)[part]] == list(range(n))
    sizes = [len(range(n)[part]) for part in parts]
    assert len(parts) >= min(n, cores) and (len(parts) % cores == 0 or len(parts) == n)
    assert max(sizes, default=0) - min(sizes, default=0) <= 1
    assert all(sum(sizes[i:i + cores]) <= max(chunk, cores) for i in range(len(sizes)))


def test_in_parallel_returns_results_in_order_and_runs_each_thread_on_one_blas_thread():
    threads = []

    def fn(i):
        threads.append(machine.cpu_threads(np))
        return i * i

    assert machine.in_parallel(fn, list(range(5)), 2) == [0, 1, 4, 9, 16]
    assert threads == [1] * 5


def test_a_pass_is_split_over_cores_only_when_each_part_keeps_the_split_size_of_cache(monkeypatch):
    net = lf.FC(5, 12, 2)
    params, (x, *_) = net.init(0), toy_task()
    monkeypatch.setattr(machine, "CPU_SPLIT_BYTES", net.cache_bytes(params, x, 5))
    assert machine.sample_cores(net, params, x, 10, 2) == 2
    assert machine.sample_cores(net, params, x, 9, 2) == 1
    assert machine.sample_cores(net, params, x, 10, 1) == 1
    assert net.cache_bytes(params, x, 10) == 2 * net.cache_bytes(params, x, 5) > 0


@pytest.mark.parametrize("method", ["flow", "adam"])
def test_splitting_one_networks_samples_over_cores_changes_its_run_only_by_rounding(method, monkeypatch):
    """One CNN trained on 1 core and with its samples split over 2 (every pass split: CPU_SPLIT_BYTES
    = 0) ends with the same status and steps, and the same test predictor to 1e-10."""
    net = lf.CNN(1, 2)
    (x, y), (xt, yt) = images(12, 0), images(6, 1)
    options = dict(method=method, lr=1e-2, batch_size=6, max_steps=40, checkpoints=5)
    monkeypatch.setattr(machine, "CPU_SPLIT_BYTES", 0)
    cores_used, in_parallel = [], machine.in_parallel
    monkeypatch.setattr(machine, "in_parallel", lambda fn, items, cores: cores_used.append(cores) or in_parallel(fn, items, cores))
    runs = {}
    for cores in (1, 2):
        monkeypatch.setattr(machine, "cpu_threads", lambda xp, cores=cores: cores)
        cores_used.clear()
        runs[cores] = lf.train(net, net.init(3), x, y, 10.0, xt, yt, **options)
        assert max(cores_used) == cores
    one, two = runs[1], runs[2]
    assert (one.status, one.steps_accepted, one.steps_rejected) == (two.status, two.steps_accepted, two.steps_rejected)
    np.testing.assert_allclose(one.F_test, two.F_test, rtol=1e-10, atol=1e-12)


def test_ensembles_on_the_cpu_keep_a_few_activations_per_core_in_the_cache():
    """Narrow nets fill an ensemble up to its cap; wide ones get as many members per core as fit in
    CORE_CACHE_BYTES, and at least one per core."""
    narrow, wide = {**SMALL, "h": 8}, {**SMALL, "h": 4000}
    assert experiments.ensembles(16, 1e12, cores=2).capacity(narrow) == 16
    assert experiments.ensembles(16, 1e12, cores=2).capacity(wide) == 2
    activation = experiments.member_bytes(wide, "activation")
    assert activation == SMALL["p"] * 4000 * 8
    per_core = experiments.CORE_CACHE_BYTES // (experiments.LIVE_ACTIVATIONS * experiments.member_bytes(
        {**SMALL, "h": 400}, "activation"))
    assert experiments.ensembles(64, 1e12, cores=3).capacity({**SMALL, "h": 400}) == 3 * per_core
