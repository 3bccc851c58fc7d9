"""minimal.py is the engine's computation: the same weights, steps, predictor and NTK as lazyfeat and kernels."""
import math

import numpy as np
from hypothesis import assume, given, settings, strategies as st

import kernels
import lazyfeat as lf
import minimal

ACTS = sorted(minimal.ACTIVATIONS)
SETTINGS = settings(max_examples=12, deadline=None)


@st.composite
def fc_case(draw):
    """A small FC net (without biases), its seed and activation, and p > d training points (so that
    the engine trains in the input's own coordinates, as minimal does) labelled by a stripe."""
    d, h, L = draw(st.integers(1, 5)), draw(st.integers(1, 8)), draw(st.integers(1, 3))
    act, seed = draw(st.sampled_from(ACTS)), draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x, x_test = rng.standard_normal((draw(st.integers(d + 1, 24)), d)), rng.standard_normal((16, d))
    label = lambda a: np.where(np.abs(a[:, 0] - 0.4) < 0.8, 1.0, -1.0)
    return d, h, L, act, seed, x, label(x), x_test, label(x_test)


@given(st.sampled_from(ACTS))
@SETTINGS
def test_normalisation_is_the_engines(act):
    assert math.isclose(minimal.normalisation(act), lf.normalisation(act), rel_tol=1e-13)


@given(fc_case())
@SETTINGS
def test_init_draws_the_engines_weights(case):
    d, h, L, act, seed, *_ = case
    for a, b in zip(minimal.init(d, h, L, seed), lf.FC(d, h, L, act).init(seed), strict=True):
        assert np.array_equal(a, b)


@given(fc_case(), st.sampled_from([1e-2, 0.3, 1.0, 10.0]), st.integers(0, 150))
@SETTINGS
def test_flow_takes_the_engines_steps_to_the_same_predictor(case, alpha, max_steps):
    """The same accepted and rejected steps, the same t and dt, the same test predictor to 1e-10."""
    d, h, L, act, seed, x, y, x_test, y_test = case
    net = lf.FC(d, h, L, act)
    run = lf.train(net, net.init(seed), x, y, alpha, x_test, y_test, max_steps=max_steps)
    assume(run.dt > 1e-9)  # not stuck at a relu kink, where steps below w's rounding are decided by rounding
    w0 = minimal.init(d, h, L, seed)
    w, status, t, dt, steps, rejected = minimal.gradient_flow(w0, x, y, alpha, act, max_steps=max_steps)
    assert (status, steps, rejected) == (run.status, run.steps_accepted, run.steps_rejected)
    assert math.isclose(t, run.t, rel_tol=1e-12) and math.isclose(dt, run.dt, rel_tol=1e-12)
    F_test = alpha * (minimal.forward(w, x_test, act)[0] - minimal.forward(w0, x_test, act)[0])
    np.testing.assert_allclose(F_test, run.F_test, rtol=1e-10, atol=1e-10)


@given(fc_case(), st.floats(0.0, 1.0))
@SETTINGS
def test_ntk_is_the_engines(case, perturbation):
    """J J^T equals kernels.ntk to 1e-12 at weights moved away from their initial values."""
    d, h, L, act, seed, x, *_ = case
    rng = np.random.default_rng(seed + 1)
    w = [W + perturbation * rng.standard_normal(W.shape) for W in minimal.init(d, h, L, seed)]
    if act == "relu":
        cache = minimal.forward(w, x, act)[1]
        z_min = min(np.abs(a @ W.T).min() for (a, _), W in zip(cache, w[:-1]))
        assume(z_min > 1e-9)  # rounding must not move a preactivation across relu's kink
    theta = kernels.ntk(lf.FC(d, h, L, act), w, x)
    np.testing.assert_allclose(minimal.ntk(w, x, act), theta, rtol=1e-12, atol=1e-12 * np.abs(theta).max())


def test_kernel_moves_in_the_feature_regime_and_not_in_the_lazy_one():
    """alpha sqrt(h) = 1e3 leaves Theta within 1% of Theta0; alpha sqrt(h) = 0.1 changes it by more than 100%."""
    rng = np.random.default_rng(0)
    d, h, L, act = 5, 30, 2, "softplus"
    x = rng.standard_normal((40, d))
    y = np.where(np.abs(x[:, 0] - 0.4) < 0.8, 1.0, -1.0)
    w0 = minimal.init(d, h, L, 0)
    change = {}
    for scale in (1e3, 0.1):
        w, status, *_ = minimal.gradient_flow(w0, x, y, scale / math.sqrt(h), act, max_steps=5000)
        assert status == "fitted"
        change[scale] = minimal.kernel_change(w, w0, x, act)
    assert change[1e3] < 0.01 and change[0.1] > 1.0
