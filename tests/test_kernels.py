"""Properties of the NTK and of the frozen-kernel (lazy limit) dynamics."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kernels
import lazyfeat as lf
from test_lazyfeat import cnn_case, fc_case, toy_task

SETTINGS = settings(max_examples=20, deadline=None)
nets = st.one_of(fc_case(), cnn_case())


def backward_jacobian(net, params, x):
    """J[n] = df(x_n)/dw from one backward pass per sample with g = e_n: independent of the NTK code."""
    _, cache = net.forward(params, x)
    return np.stack([np.concatenate([g.ravel() for g in net.backward(params, cache, e)]) for e in np.eye(len(x))])


@SETTINGS
@given(nets)
def test_ntk_equals_J_J_transpose(case):
    net, params, x = case
    J = backward_jacobian(net, params, x)
    theta = kernels.ntk(net, params, x)
    np.testing.assert_allclose(theta, J @ J.T, rtol=0, atol=1e-10 * np.abs(theta).max())


@SETTINGS
@given(nets)
def test_structured_ntk_equals_the_jacobian_method(case):
    net, params, x = case
    theta = kernels.ntk(net, params, x)
    np.testing.assert_allclose(kernels.ntk(net, params, x, method="jacobian"), theta,
                               rtol=0, atol=1e-12 * np.abs(theta).max())


@SETTINGS
@given(nets)
def test_ntk_is_symmetric_and_positive_semidefinite(case):
    net, params, x = case
    theta = kernels.ntk(net, params, x)
    assert np.array_equal(theta, theta.T)
    eigenvalues = np.linalg.eigvalsh(theta)
    assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


@SETTINGS
@given(fc_case(), st.integers(1, 4), st.integers(0, 2**16))
def test_cross_ntk_equals_the_block_of_the_stacked_ntk(case, n2, seed):
    net, params, x1 = case
    x2 = np.random.default_rng(seed).standard_normal((n2, x1.shape[1]))
    full = kernels.ntk(net, params, np.concatenate([x1, x2]))
    np.testing.assert_allclose(kernels.ntk(net, params, x1, x2), full[:len(x1), len(x1):],
                               rtol=0, atol=1e-12 * np.abs(full).max())


@SETTINGS
@given(nets, st.integers(1, 4))
def test_chunking_does_not_change_the_ntk(case, chunk):
    net, params, x = case
    whole = kernels.ntk(net, params, x)
    np.testing.assert_allclose(kernels.ntk(net, params, x, chunk=chunk), whole, rtol=0,
                               atol=1e-12 * np.abs(whole).max())
    np.testing.assert_allclose(kernels.ntk(net, params, x, x[::-1], chunk=chunk), whole[:, ::-1], rtol=0,
                               atol=1e-12 * np.abs(whole).max())


@pytest.mark.parametrize("alpha", [1e-2, 1.0, 1e3])
def test_first_step_of_network_flow_follows_the_kernel(alpha):
    """(F(w - dt grad L) - F(w)) / dt -> -(1/p) Theta l'(y F) y as dt -> 0, with error O(dt)."""
    x, y, _, _ = toy_task(p=30)
    net = lf.FC(5, 16, 3)
    params0 = net.init(0)
    objective = lf.Objective(net, params0, x, y, alpha)
    params = [w + 0.1 * np.random.default_rng(1).standard_normal(w.shape) for w in params0]  # F != 0
    point = objective.evaluate(params)
    theta = kernels.ntk(net, params, x)
    predicted = -kernels.KernelSystem(theta, y, np.array([alpha])).evaluate([point.F[None]]).grad[0][0]
    scale = np.abs(predicted).max()
    errors = []
    for dt in np.array([1e-1, 1e-2, 1e-3]) * min(1.0, alpha) / scale:  # F is more curved in w at small alpha
        stepped = objective.evaluate([w - dt * g for w, g in zip(params, point.grad)], need_grad=False)
        errors.append(np.abs((stepped.F - point.F) / dt - predicted).max())
    assert errors[2] < 1e-3 * scale
    assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1]


def test_lazy_limit_network_and_kernel_flow_give_the_same_test_predictor():
    """At alpha sqrt(h) = 1e6 the network is its linearisation to relative order 1e-6, so the two runs
    integrate the same ODE and differ by their Euler errors. Both are stopped at the same time t = 20
    (before either is fitted) with bounds 16 times tighter than the paper's; the kernel run with
    bounds 4 times tighter still measures that error, and the tolerance is 3 times it."""
    x, y, xt, yt = toy_task(p=60, p_test=100)
    h = 64
    net = lf.FC(5, h, 3)
    params0 = net.init(0)
    alpha = 1e6 / np.sqrt(h)
    bounds = dict(max_dgrad=1e-4 / 16, max_dout=0.1 / 16, max_time=20.0)
    theta_test = kernels.ntk(net, params0, xt[:50])
    run = lf.train(net, params0, x, y, alpha, xt, yt, **bounds,
                   callback=kernels.kernel_change_callback(net, xt[:50], theta_test))
    theta, theta_tx = kernels.ntk(net, params0, x), kernels.ntk(net, params0, xt, x)
    lazy = kernels.flow(theta, y, alpha, theta_tx, yt, **bounds)
    finer = kernels.flow(theta, y, alpha, theta_tx, yt, max_dgrad=1e-4 / 64, max_dout=0.1 / 64, max_time=20.0)
    assert run.status == lazy.status == "time"
    euler_error = np.abs(lazy.F_test - finer.F_test).max()
    assert euler_error < 1e-3 * np.abs(lazy.F_test).max()
    assert np.abs(run.F_test - lazy.F_test).max() < 3 * euler_error
    assert run.records[-1]["kernel_change"] < 1e-4


def test_feature_regime_moves_the_kernel():
    x, y, xt, yt = toy_task(p=60)
    h = 64
    net = lf.FC(5, h, 3)
    params0 = net.init(0)
    theta0 = kernels.ntk(net, params0, xt[:50])
    run = lf.train(net, params0, x, y, 1e-2 / np.sqrt(h), callback=kernels.kernel_change_callback(net, xt[:50], theta0))
    assert run.status == "fitted"
    assert run.records[-1]["kernel_change"] > 1
    assert kernels.kernel_change(kernels.ntk(net, run.params, xt[:50]), theta0) == run.records[-1]["kernel_change"]


def linear_solution(theta, theta_test_train, y, t):
    """F on the training and test points at time t of dF/dt = (1/p) Theta (y - F) from F = 0: with
    Theta = V diag(lam) V^T, F(t) = Theta V diag((1 - exp(-lam t / p)) / lam) V^T y (t / p where lam = 0)."""
    lam, vec = np.linalg.eigh(theta)
    positive = lam > 1e-12 * lam.max()
    gain = np.where(positive, -np.expm1(-lam * t / len(y)) / np.where(positive, lam, 1.0), t / len(y))
    coefficients = vec @ (gain * (vec.T @ y))
    return theta @ coefficients, theta_test_train @ coefficients


@pytest.mark.parametrize("end", ["init", "final"])
def test_kernel_baselines_from_both_ends_follow_the_linear_solution_and_fit(end):
    """With the quadratic hinge l = (1 - yF)^2 / 2 and every margin below 1, the kernel dynamics are
    dF/dt = (1/p) Theta (y - F), solved in closed form. Up to t = 2 p / lam_max (margins reach about
    0.8) the baseline with Theta at w0 or at the end of training matches it to 1 % of |F_test|
    (its Euler error at the paper's bounds is about 0.3 %), and closer with 16 times tighter
    bounds. With the soft hinge it runs until "fitted": every training margin >= 1."""
    x, y, xt, yt = toy_task(p=40, p_test=50)
    net = lf.FC(5, 32, 2)
    params0 = net.init(0)
    params = params0 if end == "init" else lf.train(net, params0, x, y, 1.0, xt, yt).params
    theta = kernels.ntk(net, params, x)
    t = 2 * len(y) / np.linalg.eigvalsh(theta).max()
    F, F_test = linear_solution(theta, kernels.ntk(net, params, xt, x), y, t)
    assert np.max(y * F) < 1  # the quadratic hinge is (1 - yF)^2 / 2 all along: the dynamics are linear
    errors = []
    for tighter in (1, 16):
        run = kernels.baseline(net, params, x, y, xt, yt, 1.0, loss="qhinge", max_time=t,
                               max_dgrad=1e-4 / tighter, max_dout=0.1 / tighter)
        assert run.status == "time"
        errors.append(np.abs(run.F_test - F_test).max() / np.abs(F_test).max())
    assert errors[0] < 1e-2 and errors[1] < errors[0] / 2
    fitted = kernels.baseline(net, params, x, y, xt, yt, 1.0)
    assert fitted.status == "fitted" and np.min(y * fitted.state[0]) >= 1
    assert fitted.records[-1]["unfitted"] == 0


def test_bad_kernel_arguments_raise_clear_errors():
    x, y, xt, yt = toy_task(p=10)
    net = lf.FC(5, 4, 2)
    params = net.init(0)
    theta = kernels.ntk(net, params, x)
    with pytest.raises(ValueError, match="unknown NTK method"):
        kernels.ntk(net, params, x, method="autodiff")
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        kernels.ntk(net, params, x, chunk=0)
    with pytest.raises(ValueError, match="theta_train must be square"):
        kernels.flow(theta[:, :5], y, 1.0)
    with pytest.raises(ValueError, match="theta_test_train must have shape"):
        kernels.flow(theta, y, 1.0, theta[:3, :5], yt[:3])
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        kernels.flow(theta, y, -1.0)
