"""The NTK of the FC net at infinite width (kernels.ntk_infinite): quadrature, table, limit, predictor."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import datasets
import kernels
import lazyfeat as lf
import machine

SETTINGS = settings(max_examples=20, deadline=None)


def on_sphere(n, D, seed):
    """n Gaussian points rescaled to norm sqrt(D), as the paper's preprocessing leaves them."""
    return datasets.normalize(np.random.default_rng(seed).standard_normal((n, D)))


def relu_ntk_closed_form(Sigma, q, L, bias):
    """Theta of the ReLU net from the arc-cosine kernels (Cho and Saul 2009), given Sigma = x.x'/D and
    q = |x||x'|/D: with c^2 = 2, c^2 E[relu(u) relu(v)] = q (sin t + (pi - t) cos t) / pi and
    c^2 E[relu'(u) relu'(v)] = (pi - t) / pi, cos t = Sigma / q the correlation (q stays the same)."""
    theta = Sigma + bias**2
    for layer in range(1, L + 1):
        t = np.arccos(np.clip(Sigma / q, -1, 1))
        Sigma, Sigma_dot = q * (np.sin(t) + (math.pi - t) * np.cos(t)) / math.pi, (math.pi - t) / math.pi
        theta = Sigma + theta * Sigma_dot + (bias**2 if layer < L else 0.0)
    return theta


variances = st.lists(st.floats(0.25, 4.0), min_size=8, max_size=8)
correlations = st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_quadrature_does_not_depend_on_its_chunks_or_on_how_many_cores_share_them_beyond_rounding(n, chunk, cores, seed):
    rng = np.random.default_rng(seed)
    q1, q2 = rng.uniform(0.25, 4.0, (2, n))
    q12 = rng.uniform(-1.0, 1.0, n) * np.sqrt(q1 * q2)
    reference = kernels.gaussian_expectations("softplus", q1, q12, q2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(kernels.PAIRS_PER_CHUNK, "cpu", chunk)
        patch.setattr(machine, "cpu_threads", lambda xp: cores)
        split = kernels.gaussian_expectations("softplus", q1, q12, q2)
    for a, b in zip(reference, split):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


@SETTINGS
@given(variances, variances, correlations)
def test_relu_quadrature_equals_the_arc_cosine_closed_form(q1, q2, rho):
    q1, q2, rho = np.array(q1), np.array(q2), np.array(rho)
    q12 = rho * np.sqrt(q1 * q2)
    E, E_dot = kernels.gaussian_expectations("relu", q1, q12, q2)
    t = np.arccos(np.clip(q12 / np.sqrt(q1 * q2), -1, 1))  # the correlation the quadrature sees
    np.testing.assert_allclose(E, np.sqrt(q1 * q2) * (np.sin(t) + (math.pi - t) * np.cos(t)) / (2 * math.pi),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(E_dot, (math.pi - t) / (2 * math.pi), rtol=0, atol=1e-10)


@settings(max_examples=5, deadline=None)
@given(variances, variances, correlations, st.sampled_from(sorted(lf.RAW_ACTIVATIONS)))
def test_quadrature_is_within_its_stated_error_of_a_rule_with_twice_the_nodes(q1, q2, rho, act):
    q1, q2, rho = np.array(q1), np.array(q2), np.array(rho)
    q12 = rho * np.sqrt(q1 * q2)
    finer = kernels.gaussian_expectations(act, q1, q12, q2, 2 * kernels.ANGLES_PER_ARC, 2 * kernels.RADII)
    for value, reference in zip(kernels.gaussian_expectations(act, q1, q12, q2), finer):
        np.testing.assert_allclose(value, reference, rtol=0, atol=kernels.QUADRATURE_ERROR)


@pytest.mark.parametrize("L, bias", [(1, 0.0), (3, 0.0), (2, 0.1)])
def test_relu_ntk_equals_the_closed_form_off_and_on_the_sphere(L, bias):
    """Off the sphere (direct quadrature) and on it (the table), diagonal included, to 1e-10."""
    rng = np.random.default_rng(L)
    x1, x2 = rng.standard_normal((6, 7)), rng.standard_normal((5, 7))
    q = np.sqrt(np.outer(np.sum(x1**2, axis=1), np.sum(x2**2, axis=1))) / 7
    np.testing.assert_allclose(kernels.ntk_infinite(x1, x2, L=L, act="relu", bias=bias),
                               relu_ntk_closed_form(x1 @ x2.T / 7, q, L, bias), rtol=0, atol=1e-10)
    x = on_sphere(9, 7, L)
    theta = relu_ntk_closed_form(x @ x.T / 7, 1.0, L, bias)
    np.fill_diagonal(theta, L + 1 + L * bias**2)  # Theta(x, x) of ReLU on the sphere
    np.testing.assert_allclose(kernels.ntk_infinite(x, L=L, act="relu", bias=bias), theta, rtol=0, atol=1e-10)


def relu_ntk_in_angles(t, q1, q2, L, bias):
    """Theta of the ReLU net from the arc-cosine kernels written in the angle t between the inputs,
    accurate to rounding near t = 0 and pi too: the angle of the next layer is
    t' = 2 arcsin(sqrt((1 - rho) / 2)) with 1 - rho = ((pi - t) 2 sin^2(t / 2) + (t - sin t)) / pi,
    t - sin t summed as a series for small t, and Sigma = sqrt(q1 q2) cos t at every layer (ReLU
    keeps the variances)."""
    scale = np.sqrt(q1 * q2)
    theta = scale * np.cos(t) + bias**2
    for layer in range(1, L + 1):
        small = t < 0.1
        ts = np.where(small, t, 0.0)
        t_minus_sin = np.where(small, ts**3 / 6 - ts**5 / 120 + ts**7 / 5040 - ts**9 / 362880 + ts**11 / 39916800,
                               t - np.sin(t))
        one_minus_rho = ((math.pi - t) * 2 * np.sin(t / 2) ** 2 + t_minus_sin) / math.pi
        Sigma_dot = (math.pi - t) / math.pi
        t = 2 * np.arcsin(np.sqrt(one_minus_rho / 2))
        theta = scale * np.cos(t) + theta * Sigma_dot + (bias**2 if layer < L else 0.0)
    return theta


def near_duplicates_and_opposites(n, D, seed):
    """n points on the sphere, each followed by a near-duplicate (1 - cos between 1e-14 and 1e-6)
    and by its opposite, with the angles between all of them computed exactly from the construction."""
    rng = np.random.default_rng(seed)
    x = on_sphere(n, D, seed)
    angles = 10.0 ** rng.uniform(-7, -3, n)  # 1 - cos t = t^2 / 2 in [5e-15, 5e-7]
    normal = rng.standard_normal((n, D))
    normal -= np.sum(normal * x, axis=1, keepdims=True) * x / D
    normal *= np.sqrt(D) / np.linalg.norm(normal, axis=1, keepdims=True)
    near = np.cos(angles)[:, None] * x + np.sin(angles)[:, None] * normal
    return np.concatenate([x, near, -x])


@pytest.mark.parametrize("L, bias", [(1, 0.0), (3, 0.0), (2, 0.1)])
@pytest.mark.parametrize("where", ["sphere table", "direct quadrature", "variance table"])
def test_relu_ntk_equals_the_closed_form_on_the_diagonal_at_near_duplicates_and_at_opposite_points(L, bias, where):
    """To 1e-10 of the kernel's largest entry, whichever way ntk_infinite reads the kernel: the
    diagonal (cos t = 1 exactly), near-duplicates (1 - cos t down to 1e-14) and opposite points (t = pi)."""
    x = near_duplicates_and_opposites(4 if where == "direct quadrature" else 25, 30, L)
    if where != "sphere table":
        x = x * np.sqrt(np.random.default_rng(L).uniform(0.5, 1.0, (len(x), 1)))
    pairs = len(x) ** 2
    if where != "sphere table":
        assert (pairs > kernels.table_pairs(kernels.octaves(0.5, 1.0))) == (where == "variance table")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    chord = np.linalg.norm(unit[:, None] - unit[None], axis=2)
    opposite = np.linalg.norm(unit[:, None] + unit[None], axis=2)
    t = np.where(chord < opposite, 2 * np.arcsin(np.minimum(chord / 2, 1)), math.pi - 2 * np.arcsin(np.minimum(opposite / 2, 1)))
    q = np.sum(x**2, axis=1) / 30
    reference = relu_ntk_in_angles(t, q[:, None], q[None, :], L, bias)
    theta = kernels.ntk_infinite(x, L=L, act="relu", bias=bias)
    np.testing.assert_allclose(theta, reference, rtol=0, atol=1e-10 * np.abs(reference).max())


@pytest.mark.parametrize("act, L, bias", [("softplus", 3, 0.0), ("relu", 3, 0.0), ("tanh", 5, 0.1),
                                          ("swish", 1, 0.1)])
def test_tabulated_kernel_equals_direct_quadrature_within_the_stated_accuracy(act, L, bias):
    x1, x2 = on_sphere(40, 6, 0), on_sphere(30, 6, 1)
    theta, nngp = kernels.ntk_infinite(x1, x2, L=L, act=act, bias=bias, nngp=True)
    direct = kernels.infinite_width_kernels(x1 @ x2.T / 6, 1.0, 1.0, L, act, bias)
    diagonal = kernels.infinite_width_kernels(np.ones(1), 1.0, 1.0, L, act, bias)
    for value, reference, scale in zip((theta, nngp), direct, diagonal):
        np.testing.assert_allclose(value, reference, rtol=0, atol=kernels.TABLE_ERROR * scale[0])


def test_the_table_over_log_variances_equals_direct_quadrature_within_the_stated_accuracy():
    """Inputs of norms between sqrt(D/2) and sqrt(D), more pairs than the table has nodes: read from
    variance_table; both kernels against the direct quadrature of the same pairs, and the cross kernel."""
    D, L, act, bias = 6, 2, "softplus", 0.1
    x = on_sphere(70, D, 0) * np.sqrt(np.random.default_rng(0).uniform(0.5, 1.0, (70, 1)))
    assert len(x) ** 2 > kernels.table_pairs(kernels.octaves(0.5, 1.0))
    theta, nngp = kernels.ntk_infinite(x, L=L, act=act, bias=bias, nngp=True)
    few = x[:12]
    q = np.sum(few**2, axis=1) / D
    direct = kernels.infinite_width_kernels(few @ few.T / D, q[:, None], q[None, :], L, act, bias)
    for value, reference in zip((theta, nngp), direct):
        np.testing.assert_allclose(value[:12, :12], reference, rtol=0,
                                   atol=kernels.TABLE_ERROR * reference.diagonal().max())
    np.testing.assert_allclose(kernels.ntk_infinite(x[:35], x[35:], L=L, act=act, bias=bias), theta[:35, 35:],
                               rtol=0, atol=kernels.TABLE_ERROR * theta.diagonal().max())


@SETTINGS
@given(st.integers(2, 9), st.integers(1, 6), st.integers(0, 2**16), st.booleans(),
       st.sampled_from([("softplus", 3, 0.0), ("relu", 1, 0.0)]))
def test_kernels_are_symmetric_and_positive_semidefinite(n, D, seed, sphere, case):
    act, L, bias = case
    x = on_sphere(n, D, seed) if sphere else np.random.default_rng(seed).standard_normal((n, D))
    for kernel in kernels.ntk_infinite(x, L=L, act=act, bias=bias, nngp=True):
        assert np.array_equal(kernel, kernel.T)
        eigenvalues = np.linalg.eigvalsh(kernel)
        assert eigenvalues.min() >= -1e-9 * eigenvalues.max()


@pytest.mark.parametrize("act", ["softplus", "relu"])
@pytest.mark.parametrize("L", [1, 3])
def test_the_empirical_ntk_approaches_the_limit_as_h_to_the_minus_one_half(act, L):
    """The mean over seeds of |Theta_h - Theta_inf|_F / |Theta_inf|_F against h has log-log slope -1/2 +- 0.2."""
    x = on_sphere(20, 10, 0)
    theta = kernels.ntk_infinite(x, L=L, act=act)
    hs = [64, 256, 1024, 4096]
    distance = [np.mean([np.linalg.norm(kernels.ntk(net, net.init(seed), x) - theta) for seed in range(3)])
                / np.linalg.norm(theta) for net in (lf.FC(10, h, L, act) for h in hs)]
    slope = np.polyfit(np.log(hs), np.log(distance), 1)[0]
    assert abs(slope + 0.5) <= 0.2, (slope, distance)


def test_the_infinite_width_predictor_agrees_with_a_wide_lazy_network():
    """h = 4096, alpha sqrt(h) = 1e4, L = 1, p = 60: the same sign on >= 98 % of the test points, and
    the two test predictors within 2.5 / sqrt(h) of each other (relative)."""
    x = on_sphere(360, 10, 0)
    y = np.where(x[:, 0] > 0, 1.0, -1.0)
    x, y, x_test, y_test = x[:60], y[:60], x[60:], y[60:]
    h = 4096
    alpha = 1e4 / math.sqrt(h)
    net = lf.FC(10, h, 1)
    network = lf.train(net, net.init(0), x, y, alpha, x_test, y_test, max_dgrad=1e-3)
    limit = kernels.flow(kernels.ntk_infinite(x, L=1), y, alpha, kernels.ntk_infinite(x_test, x, L=1), y_test,
                         max_dgrad=1e-3)
    assert network.status == limit.status == "fitted"
    assert np.mean(np.sign(limit.F_test) == np.sign(network.F_test)) >= 0.98
    assert np.linalg.norm(limit.F_test - network.F_test) <= 2.5 / math.sqrt(h) * np.linalg.norm(network.F_test)


@pytest.mark.parametrize("kwargs, message", [
    (dict(x2=np.ones((2, 4))), "same input dimension D, got 3 and 4"),
    (dict(L=0), "L must be an integer >= 1"),
    (dict(act="gelu"), "unknown activation 'gelu'"),
    (dict(bias=-0.1), "bias must be a finite number >= 0"),
    (dict(x1=np.ones(3)), "x1 must have shape \\(n, D\\)"),
])
def test_bad_input_is_a_clear_error(kwargs, message):
    arguments = {"x1": np.ones((2, 3)), "x2": None, "L": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        kernels.ntk_infinite(arguments.pop("x1"), arguments.pop("x2"), **arguments)


def test_inputs_on_the_gpu_stay_there_and_give_the_cpu_kernel(cupy):
    """On the table, by direct quadrature, and with near-duplicate and opposite points (input_angles)."""
    for x in (on_sphere(12, 5, 0), np.random.default_rng(0).standard_normal((7, 5)),
              near_duplicates_and_opposites(3, 5, 0) * 1.3):
        gpu = kernels.ntk_infinite(cupy.asarray(x), L=2, bias=0.1)
        assert isinstance(gpu, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(gpu), kernels.ntk_infinite(x, L=2, bias=0.1), rtol=0, atol=1e-12)
