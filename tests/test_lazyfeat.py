"""Properties of the engine: networks, backward passes, losses, the integrator, training."""
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import lazyfeat as lf

ACTS = sorted(lf.RAW_ACTIVATIONS)
SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def fc_case(draw):
    """A small FC net, its parameters (perturbed from init, biases nonzero) and inputs."""
    d, h, L = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    act, bias = draw(st.sampled_from(ACTS)), draw(st.sampled_from([0.0, 0.1, 0.5]))
    net = lf.FC(d, h, L, act, bias)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    params = [w + 0.3 * rng.standard_normal(w.shape) for w in net.init(seed)]
    return net, params, rng.standard_normal((draw(st.integers(1, 5)), d))


@st.composite
def cnn_case(draw):
    """A small CNN, its parameters and images of drawn size (the smallest it accepts is 19x19)."""
    c, h, act = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.sampled_from(ACTS))
    net = lf.CNN(c, h, act)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    size = (draw(st.integers(1, 3)), c, draw(st.integers(19, 23)), draw(st.integers(19, 23)))
    return net, net.init(seed), rng.standard_normal(size)


def min_preactivation(net, params, x):
    """The smallest |z| entering an activation: relu's kink must stay out of the finite difference."""
    _, cache = net.forward(params, x)
    return min(np.abs(c).min() for layer, c in zip(net.layers, cache) if isinstance(layer, lf.Activation))


def directional_check(value, grads, params, rng, eps=1e-5):
    """<grad, V> from backward against (value(w + eps V) - value(w - eps V)) / (2 eps) for a random V.

    Returns the relative error; the rounding of the two values (about 1e-16 |value| / eps)
    is allowed for, so that a tiny derivative of a large value is not mistaken for an error.
    """
    V = [rng.standard_normal(w.shape) for w in params]
    analytic = sum(np.sum(g * v) for g, v in zip(grads, V))
    plus = value([w + eps * v for w, v in zip(params, V)])
    minus = value([w - eps * v for w, v in zip(params, V)])
    numeric = (plus - minus) / (2 * eps)
    rounding = 1e-14 * (abs(plus) + abs(minus)) / eps
    return max(0.0, abs(analytic - numeric) - rounding) / (abs(analytic) + abs(numeric) + 1e-300)


@SETTINGS
@given(st.one_of(fc_case(), cnn_case()), st.integers(0, 2**16))
def test_backward_equals_central_finite_differences(case, seed):
    net, params, x = case
    assume(min_preactivation(net, params, x) > 1e-3)
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(len(x))
    f, cache = net.forward(params, x)
    assert f.shape == (len(x),)
    grads = net.backward(params, cache, g)
    assert [a.shape for a in grads] == [w.shape for w in params]
    assert directional_check(lambda w: net.forward(w, x)[0] @ g, grads, params, rng) < 1e-6


@SETTINGS
@given(fc_case(), st.sampled_from(sorted(lf.LOSSES)), st.floats(-3, 3), st.booleans(), st.integers(0, 2**16))
def test_loss_gradient_equals_central_finite_differences(case, loss, log_alpha, subtract, seed):
    net, params, x = case
    assume(min_preactivation(net, params, x) > 1e-3)
    rng = np.random.default_rng(seed)
    y = rng.choice([-1.0, 1.0], len(x))
    alpha = 10.0**log_alpha
    objective = lf.Objective(net, net.init(seed + 1), x, y, alpha, loss=loss, subtract_f0=subtract)
    point = objective.evaluate(params)
    assume(np.abs(point.margins - 1).min() > 1e-3)  # the hinges' kink
    # the margins move alpha times faster than f: a step of 1e-5 / alpha keeps the
    # finite difference's own error (curvature of the soft hinge, beta = 20) below 1e-8
    eps = 1e-5 / max(1.0, alpha)
    assert directional_check(lambda w: objective.evaluate(w, need_grad=False).loss, point.grad, params, rng,
                             eps) < 1e-6


@pytest.mark.parametrize("name", ACTS)
def test_activation_normalisation_gives_unit_second_moment(name):
    """E[(c sigma(z))^2] = 1, checked by a trapezoid rule independent of the quadrature that set c."""
    z = np.linspace(-14, 14, 400_001)
    density = np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    a, _ = lf.Activation(name).forward([], z)
    assert abs(np.trapezoid(a**2 * density, z) - 1) < 1e-6


def test_relu_normalisation_is_sqrt_two():
    assert lf.normalisation("relu") == pytest.approx(math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize("name", ACTS)
def test_activation_derivative_equals_finite_differences(name):
    z = np.linspace(-4, 4, 801) + 1e-3  # relu's kink at 0 stays off the grid
    layer = lf.Activation(name)
    _, cache = layer.forward([], z)
    analytic = layer.backward_input([], cache, np.ones_like(z))
    numeric = (layer.forward([], z + 1e-6)[0] - layer.forward([], z - 1e-6)[0]) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def toy_task(p=60, p_test=200, d=5, seed=0):
    """Gaussian inputs labelled by the sign of their first coordinate."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p + p_test, d))
    y = np.where(x[:, 0] > 0, 1.0, -1.0)
    return x[:p], y[:p], x[p:], y[p:]


@SETTINGS
@given(st.one_of(fc_case(), cnn_case()), st.floats(-3, 3))
def test_predictor_is_zero_at_initialisation(case, log_alpha):
    net, params, x = case
    objective = lf.Objective(net, params, x, np.ones(len(x)), 10.0**log_alpha)
    assert np.all(objective.evaluate(params).F == 0)


def test_same_seed_gives_same_numbers_and_other_seeds_differ():
    net = lf.FC(5, 8, 2)
    assert all(np.array_equal(a, b) for a, b in zip(net.init(3), net.init(3)))
    assert not np.array_equal(net.init(3)[0], net.init(4)[0])
    x, y, xt, yt = toy_task()
    runs = [lf.train(net, net.init(3), x, y, 1.0, xt, yt, max_steps=50) for _ in range(2)]
    strip = [[{k: v for k, v in r.items() if k != "wall"} for r in run.records] for run in runs]
    assert strip[0] == strip[1]
    assert np.array_equal(runs[0].F_test, runs[1].F_test)


class Spy:
    """A system that remembers every state the integrator asks it to evaluate (and is the system otherwise)."""

    def __init__(self, system):
        self.system, self.seen = system, []

    def evaluate(self, state):
        self.seen.append([w.copy() for w in state])
        return self.system.evaluate(state)

    def __getattr__(self, name):
        return getattr(self.system, name)


def test_rejected_steps_leave_the_state_bit_identical():
    net = lf.FC(5, 8, 2)
    x, y, _, _ = toy_task()
    params0 = net.init([0])  # an ensemble of one: the integrator's own form
    snapshot = [w.copy() for w in params0]
    spy = Spy(lf.Objective(net, params0, x, y, 1.0))
    (run,) = lf.gradient_flow(spy, list(params0), dt=1e4, max_steps=1)
    assert run.steps_rejected >= 2 and run.steps_accepted == 1
    assert all(np.array_equal(a, b) for a, b in zip(params0, snapshot))
    grad0 = spy.system.evaluate(snapshot).grad
    # every trial started from the untouched w0, with dt divided by 10 each time
    for k, trial in enumerate(spy.seen[1:]):
        expected = [w - (1e4 / 10**k) * g for w, g in zip(snapshot, grad0)]
        assert all(np.array_equal(a, b) for a, b in zip(trial, expected))
    assert all(np.array_equal(a[None], b) for a, b in zip(run.state, spy.seen[-1]))


@pytest.mark.parametrize("method", ["flow", "adam"])
def test_small_run_reaches_fitted_and_its_loss_decreases(method):
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 20, 2)
    run = lf.train(net, net.init(0), x, y, 1.0, xt, yt, method=method, lr=1e-2, checkpoints=100_000)
    assert run.status == "fitted"
    assert np.all(y * run.F >= 1)
    assert run.test_error < 0.2
    losses = [r["loss"] for r in run.records]
    if method == "flow":  # every accepted step of gradient flow lowers the loss
        assert len(run.records) == run.steps_accepted + 1
        assert all(b <= a for a, b in zip(losses, losses[1:]))
    else:  # stochastic: only overall
        assert losses[-1] < 0.1 * losses[0]


def test_momentum_flow_reaches_fitted():
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 20, 2)
    run = lf.train(net, net.init(0), x, y, 1.0, xt, yt, tau=0.5)
    assert run.status == "fitted" and run.test_error < 0.2


@SETTINGS
@given(st.sampled_from([("flow", "paper"), ("flow", "auto"), ("adam", "paper")]),
       st.lists(st.floats(-2, 2), min_size=1, max_size=3), st.integers(5, 60), st.integers(0, 2**16))
def test_a_runs_test_error_is_that_of_its_test_predictor_whether_or_not_checkpoints_observe_the_test_set(
        rule, log_alphas, max_steps, seed):
    """test_error = the fraction of test points with y F_test <= 0, counted here on the host. Observing the
    test set at every checkpoint (test_along) adds test_err and test_loss to each record, the last one
    equal to the run's test error, and changes nothing else: the same records otherwise, the same ends."""
    method, integrator = rule
    x, y, xt, yt = toy_task(p=20, p_test=50, seed=seed)
    net = lf.FC(5, 8, 2)
    params0, alphas = net.init([seed, seed + 1, seed + 2][:len(log_alphas)]), [10.0**a for a in log_alphas]

    def runs(test_along):
        return lf.train(net, params0, x, y, alphas, xt, yt, method=method, integrator=integrator, lr=1e-2,
                        max_steps=max_steps, checkpoints=5, test_along=test_along)

    for along, end in zip(runs(True), runs(False)):
        assert along.test_error == end.test_error == np.mean(yt * end.F_test <= 0)
        assert along.records[-1]["test_err"] == along.test_error
        assert not any("test_err" in r or "test_loss" in r for r in end.records)
        assert [{k: v for k, v in r.items() if k not in ("test_err", "test_loss", "wall")} for r in along.records] \
            == [{k: v for k, v in r.items() if k != "wall"} for r in end.records]
        assert (along.status, along.steps_accepted, along.t) == (end.status, end.steps_accepted, end.t)
        np.testing.assert_array_equal(along.F_test, end.F_test)


def test_halving_the_step_bounds_shrinks_the_error_of_the_test_predictor():
    """Euler's error is first order in dt, and the adaptive dt shrinks with the bounds
    (as sqrt(max_dgrad) where dgrad binds): each halving brings F_test closer to a run
    with bounds 2^9 times tighter, at the same time t = 3."""
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 20, 2)
    params0 = net.init(0)

    def F_test(k):
        return lf.train(net, params0, x, y, 1.0, xt, yt, max_dgrad=1e-3 / 2**k, max_dout=0.5 / 2**k,
                        max_time=3.0).F_test

    reference = F_test(9)
    errors = [np.abs(F_test(k) - reference).max() for k in range(5)]
    assert errors[0] < 0.01 * np.abs(reference).max()
    assert all(b < 0.9 * a for a, b in zip(errors, errors[1:]))


def test_time_limit_is_met_exactly():
    x, y, _, _ = toy_task()
    net = lf.FC(5, 20, 2)
    run = lf.train(net, net.init(0), x, y, 1.0, max_time=0.37)
    assert run.status == "time" and run.t == 0.37


def test_diverged_is_reported_for_a_run_forced_to_blow_up():
    x, y, xt, yt = toy_task()
    net = lf.FC(5, 20, 2)
    flow = lf.train(net, net.init(0), x, y, 1.0, xt, yt, dt=1e300, max_dgrad=math.inf, max_dout=math.inf)
    assert flow.status == "diverged" and flow.steps_accepted == 0
    blown = [1e300 * w for w in net.init(0)]
    assert lf.train(net, blown, x, y, 1.0, subtract_f0=False).status == "diverged"
    adam = lf.train(net, net.init(0), x, y, 1.0, method="adam", lr=1e300)
    assert adam.status == "diverged"


@pytest.mark.parametrize("make, match", [
    (lambda: lf.FC(5, 0, 2), "h must be an integer >= 1"),
    (lambda: lf.FC(5, 3, 0), "L must be an integer >= 1"),
    (lambda: lf.FC(5, 3, 2, act="sigmoid"), "unknown activation 'sigmoid'"),
    (lambda: lf.CNN(1, 3, act="gelu"), "unknown activation 'gelu'"),
    (lambda: lf.FC(5, 3, 2, bias=-1), "bias must be a finite number >= 0"),
])
def test_bad_network_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("alpha", [0, -1.0, math.nan, math.inf])
def test_bad_alpha_raises_a_clear_error(alpha):
    x, y, _, _ = toy_task()
    net = lf.FC(5, 3, 2)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        lf.train(net, net.init(0), x, y, alpha)


def test_wrong_input_shapes_raise_clear_errors():
    x, y, _, _ = toy_task()
    fc, cnn = lf.FC(5, 3, 2), lf.CNN(1, 3)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(n, 5\)"):
        lf.train(fc, fc.init(0), x[:, :4], y, 1.0)
    with pytest.raises(ValueError, match="flatten images"):
        fc.forward(fc.init(0), np.zeros((3, 1, 5, 1)))
    with pytest.raises(ValueError, match=r"expects images of shape \(n, 1, H, W\)"):
        cnn.forward(cnn.init(0), np.zeros((3, 2, 28, 28)))
    with pytest.raises(ValueError, match="at least 19x19"):
        cnn.forward(cnn.init(0), np.zeros((3, 1, 12, 12)))


def test_bad_labels_loss_and_method_raise_clear_errors():
    x, y, _, _ = toy_task()
    net = lf.FC(5, 3, 2)
    with pytest.raises(ValueError, match=r"labels \+1 or -1"):
        lf.train(net, net.init(0), x, 2 * y, 1.0)
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        lf.train(net, net.init(0), x, y, 1.0, loss="mse")
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        lf.train(net, net.init(0), x, y, 1.0, method="sgd")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'gpu'"):
        net.init(0, device="tpu")


# ---------------------------------------------------------------------------
# The first layer in the span of the data (lazyfeat.DataSpan)
# ---------------------------------------------------------------------------


@SETTINGS
@given(st.integers(2, 8), st.integers(1, 7), st.integers(1, 5), st.integers(1, 3), st.booleans(), st.integers(0, 2**16))
def test_dense_weights_of_fewer_columns_equal_the_full_weights_on_inputs_padded_with_zeros(d, k, h, S, own, seed):
    """Dense(d) with the first k columns of W, on k features, computes what W computes on them followed by
    d - k zeros, and its weight gradient is the first k columns of W's (the others are zero); for a shared
    input and per-member inputs."""
    assume(k < d)
    rng = np.random.default_rng(seed)
    layer = lf.Dense(d, h)
    W = rng.standard_normal((S, h, d))
    a = rng.standard_normal((S, 4, k) if own else (4, k))
    padded = np.concatenate([a, np.zeros(a.shape[:-1] + (d - k,))], axis=-1)
    g = rng.standard_normal((S, 4, h))
    np.testing.assert_allclose(layer.forward([W[..., :k].copy()], a)[0], layer.forward([W], padded)[0],
                               rtol=1e-13, atol=1e-13)
    narrow, full = layer.backward_params([W[..., :k].copy()], a, g)[0], layer.backward_params([W], padded, g)[0]
    assert narrow.shape == (S, h, k) and not full[..., k:].any()
    np.testing.assert_allclose(narrow, full[..., :k], rtol=1e-13, atol=1e-13)


@st.composite
def span_task(draw):
    """An FC net with more input features than samples, some samples repeated (rank < p), and its data."""
    d, p = draw(st.integers(4, 12)), draw(st.integers(2, 6))
    assume(p < d)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((p, d))
    repeats = draw(st.integers(0, p - 1))
    x[:repeats] = x[p - 1]
    teacher = rng.standard_normal(d)  # repeated samples get the same label
    y = np.where(x @ teacher > 0, 1.0, -1.0)
    x_test = rng.standard_normal((7, d))
    net = lf.FC(d, draw(st.integers(2, 8)), draw(st.integers(1, 3)), draw(st.sampled_from(ACTS)),
                draw(st.sampled_from([0.0, 0.1])))
    return net, x, y, x_test, np.where(x_test @ teacher > 0, 1.0, -1.0), p - repeats


@SETTINGS
@given(span_task(), st.lists(st.floats(-2, 2), min_size=1, max_size=3), st.sampled_from([0.0, 0.3]))
def test_flow_in_the_span_of_the_data_is_the_same_run(task, log_alphas, tau):
    """The rotated run trains r = rank x input columns, and ends as the plain run does: same status and
    accepted steps (a step decision may flip on rounding: within 1 %) and, where the steps are the same,
    the same F_test, the same final weights in the input's own coordinates, and callbacks that see those
    coordinates at the same checkpoints."""
    net, x, y, x_test, y_test, rank = task
    S = len(log_alphas)
    params0, alphas = net.init(list(range(S))), [10.0**a for a in log_alphas]
    assert lf.DataSpan(net, net.members(params0)[0], x).r == rank

    def run(span):
        seen = [[] for _ in range(S)]  # per member: its callbacks may run in threads of their own
        callbacks = [lambda params, record, s=s: seen[s].append(net.predict(params, x_test)) or {} for s in range(S)]
        runs = lf.train(net, params0, x, y, alphas, x_test, y_test, tau=tau, max_steps=60, callback=callbacks,
                        checkpoints=5, data_span=span)
        return runs, [f for member in seen for f in member]

    (plain, plain_seen), (rotated, rotated_seen) = run(False), run(True)
    for a, b in zip(plain, rotated):
        assert a.status == b.status and abs(a.steps_accepted - b.steps_accepted) <= 0.01 * a.steps_accepted + 1
        if a.steps_accepted == b.steps_accepted:  # to 1e-8 of an output or a weight of order one
            np.testing.assert_allclose(b.F_test, a.F_test, atol=1e-8 * max(1.0, np.abs(a.F_test).max()))
            for u, v in zip(a.params, b.params):
                np.testing.assert_allclose(v, u, atol=1e-8 * max(1.0, np.abs(u).max()))
    if all(a.steps_accepted == b.steps_accepted for a, b in zip(plain, rotated)):  # else the checkpoints differ too
        assert len(plain_seen) == len(rotated_seen)
        for u, v in zip(plain_seen, rotated_seen):
            np.testing.assert_allclose(v, u, atol=1e-8 * max(1.0, np.abs(u).max()))


def test_the_data_span_serves_only_the_flow_of_an_fc_net_with_fewer_samples_than_features():
    fc, cnn = lf.FC(6, 3, 2), lf.CNN(1, 2)
    assert lf.DataSpan.applies(fc, np.zeros((5, 6)))
    assert not lf.DataSpan.applies(fc, np.zeros((6, 6)))
    assert not lf.DataSpan.applies(cnn, np.zeros((5, 1, 19, 19)))
    x, y, _, _ = toy_task(p=4, d=6)
    adam = [lf.train(fc, fc.init(0), x, y, 1.0, method="adam", max_steps=5, data_span=span) for span in (True, False)]
    assert all(np.array_equal(u, v) for u, v in zip(adam[0].params, adam[1].params))


def wait_until(condition, timeout=10.0):
    """Poll condition() until it holds; fail the test after `timeout` seconds (a deadlock)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out: the cache made a request wait for nothing"
        time.sleep(0.001)


def test_requests_for_a_basis_being_computed_wait_for_it_and_share_its_one_computation():
    cache, release, calls = lf.BasisCache(size=4), threading.Event(), []

    def compute():
        calls.append(1)
        assert release.wait(10.0)
        return "basis"

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, "x", compute) for _ in range(8)]
        wait_until(lambda: "x" in cache.entries and cache.entries["x"]["users"] == 8)
        release.set()
        assert [f.result(timeout=10.0) for f in futures] == ["basis"] * 8
    assert len(calls) == 1


def test_a_basis_in_use_is_never_evicted_and_the_cache_shrinks_back_to_its_size():
    """While one request for "a" is being computed, five other data sets pass through a cache of 2: a
    second request for "a" must still share the first one's computation."""
    cache, release, calls = lf.BasisCache(size=2), threading.Event(), []

    def compute(key, block=False):
        def run():
            calls.append(key)
            if block:
                assert release.wait(10.0)
            return key.upper()
        return run

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.get, "a", compute("a", block=True))
        wait_until(lambda: calls == ["a"])
        assert [cache.get(key, compute(key)) for key in "bcdef"] == list("BCDEF")
        second = pool.submit(cache.get, "a", compute("a"))
        wait_until(lambda: cache.entries["a"]["users"] == 2)
        release.set()
        assert first.result(timeout=10.0) == second.result(timeout=10.0) == "A"
    assert calls == list("abcdef") and len(cache.entries) == 2


def test_a_failed_computation_reaches_every_waiting_request_and_is_not_kept():
    cache, release = lf.BasisCache(), threading.Event()

    def fail():
        assert release.wait(10.0)
        raise np.linalg.LinAlgError("SVD did not converge")

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(cache.get, "x", fail) for _ in range(3)]
        wait_until(lambda: "x" in cache.entries and cache.entries["x"]["users"] == 3)
        release.set()
        for future in futures:
            with pytest.raises(np.linalg.LinAlgError):
                future.result(timeout=10.0)
    assert "x" not in cache.entries and cache.get("x", lambda: "retried") == "retried"


@pytest.mark.parametrize("trial", range(25))
def test_under_random_schedules_each_data_set_that_fits_in_the_cache_is_decomposed_once(trial, monkeypatch):
    """Up to 4 data sets, each asked for 1-6 times in a random order by 8 threads that sleep at random
    before asking and inside the SVD: whatever the schedule, one SVD per data set, each basis right."""
    rng = np.random.default_rng(trial)
    calls, calls_lock, svd = [], threading.Lock(), np.linalg.svd
    svd_sleeps = iter(rng.uniform(0, 0.004, 100))

    def slow_svd(a, **kwargs):
        with calls_lock:
            calls.append(a.tobytes())
            pause = next(svd_sleeps)
        time.sleep(pause)
        return svd(a, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", slow_svd)
    monkeypatch.setattr(lf.DataSpan, "bases", lf.BasisCache(size=4))
    data = [np.random.default_rng(1000 * trial + k).standard_normal((3, 5)) for k in range(rng.integers(1, 5))]
    requests = [x for x in data for _ in range(rng.integers(1, 7))]
    order = rng.permutation(len(requests))
    sleeps = rng.uniform(0, 0.004, len(requests))

    def ask(i):
        time.sleep(sleeps[i])
        return lf.DataSpan.basis(requests[i])

    with ThreadPoolExecutor(8) as pool:
        bases = dict(zip(order, pool.map(ask, order)))
    assert sorted(calls) == sorted(x.tobytes() for x in data)
    for i, x in enumerate(requests):
        Q, r = bases[i]
        assert r == 3 and np.allclose(Q @ Q.T, np.eye(5)) and np.allclose(x @ Q[:, r:], 0.0)
    assert len(lf.DataSpan.bases.entries) == len(data)
