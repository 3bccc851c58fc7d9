"""kernels: the neural tangent kernel of a network, and training with it frozen.

The NTK (Jacot et al. 2018) of the network function f (without alpha) is

    Theta(x, x') = sum over all weights w of df(x)/dw df(x')/dw.

In the lazy limit alpha sqrt(h) -> infinity the weights barely move, Theta stays
at its initial value, and the alpha-scaled predictor F follows the kernel dynamics

    dF(x)/dt = -(1/p) sum_mu Theta(x, x_mu) l'(y_mu F(x_mu)) y_mu,

which is what gradient flow on L = 1/(alpha^2 p) sum_mu l(y_mu F_mu) gives when
F is linear in the weights (the alphas cancel). `flow` integrates it with the
same adaptive integrator as network training (lazyfeat.gradient_flow).
"""
import copy
import functools
import math
import numbers

import numpy as np

import lazyfeat as lf
import machine


# ---------------------------------------------------------------------------
# The NTK, layer by layer
# ---------------------------------------------------------------------------


def layer_signals(net, params, x):
    """One forward pass and one backward pass with g = 1 on the points x, for every member.

    Returns, for every layer with weights, (layer, its params, its cache, g_out):
    its inputs (in the cache) and the per-sample signals df(x_n)/d(out_n) at its
    outputs, which is all the layer needs to give its NTK contribution. params
    carry the member axis.
    """
    xp = lf.array_module(params[0])
    x = xp.asarray(x, dtype=params[0].dtype)
    f, cache = net.forward(params, x)
    return [(layer, p, c, g) for _, layer, p, c, g in net.signals(params, cache, xp.ones_like(f))
            if layer.n_params]


def block_by_layers(signals1, signals2):
    """Theta block = sum over layers of the layer's own contribution (no Jacobian formed)."""
    return sum(layer.ntk(p, c1, g1, c2, g2) for (layer, p, c1, g1), (_, _, c2, g2) in zip(signals1, signals2))


def jacobian(signals):
    """The Jacobian df(x_n)/dw of every member on these points, shape (S, n, P), in params order."""
    xp = lf.array_module(signals[0][3])
    return xp.concatenate([layer.jacobian(p, c, g) for layer, p, c, g in reversed(signals)], axis=2)


def block_by_jacobian(signals1, signals2):
    """Theta block = J1 J2^T, for tests and teaching: it forms the (S, n, P) Jacobians."""
    return jacobian(signals1) @ jacobian(signals2).transpose(0, 2, 1)


BLOCKS = {"layers": block_by_layers, "jacobian": block_by_jacobian}


def ntk(net, params, x1, x2=None, chunk=1024, method="layers"):
    """The empirical NTK Theta(x1_i, x2_j), an (n1, n2) Gram matrix (x2 = x1 when omitted).

    For an ensemble (params with a member axis) it is the NTK of every member,
    (S, n1, n2). Points are taken `chunk` at a time, so memory is bounded by the
    chunk size (plus the result); with x2 omitted only the blocks on and above the
    diagonal are computed and the result is exactly symmetric. method "layers"
    sums each layer's structured contribution; "jacobian" forms J1 J2^T (slow, for checks).
    """
    if method not in BLOCKS:
        raise ValueError(f"unknown NTK method {method!r}; choose one of {sorted(BLOCKS)}")
    chunk = lf.check_int("chunk", chunk)
    block = BLOCKS[method]
    params, single = net.members(params)
    xp = lf.array_module(params[0])
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    theta = xp.empty((len(params[0]), len(x1), len(x2)), dtype=params[0].dtype)
    for i in range(0, len(x1), chunk):
        rows = layer_signals(net, params, x1[i:i + chunk])
        for j in range(i if symmetric else 0, len(x2), chunk):
            cols = rows if symmetric and j == i else layer_signals(net, params, x2[j:j + chunk])
            theta[:, i:i + chunk, j:j + chunk] = block(rows, cols)
            if symmetric and j != i:
                theta[:, j:j + chunk, i:i + chunk] = theta[:, i:i + chunk, j:j + chunk].transpose(0, 2, 1)
    return theta[0] if single else theta


def kernel_change(theta, theta0):
    """|Theta - Theta0|_F / |Theta0|_F: a host float, or one per member for (S, n, n) kernels."""
    xp = lf.array_module(theta)
    norm = lambda a: xp.sqrt(xp.sum(a**2, axis=(-2, -1)))
    return lf.to_host(norm(theta - theta0) / norm(theta0))[0]


def kernel_change_callback(net, x, theta0, chunk=1024):
    """A training callback that adds the kernel change on the fixed points x to every record."""

    def callback(params, record):
        return {"kernel_change": kernel_change(ntk(net, params, x, chunk=chunk), theta0)}

    return callback


# ---------------------------------------------------------------------------
# Kernel dynamics: the lazy limit
# ---------------------------------------------------------------------------


class KernelSystem:
    """dF/dt = -(1/p) Theta l'(y F) y with Theta frozen, for S members, seen by the integrator.

    The state is [F on the training points] or [F_train, F_test], each (S, n): the
    test rows Theta(x_test, x_mu) move F_test with the same integral, step by step.
    Theta is one kernel for all members (p, p) or one per member (S, p, p); every
    member has its own alpha (which sets only the loss's 1/alpha^2 scale).
    """

    def __init__(self, theta, y, alpha, theta_test_train=None, y_test=None, loss="softhinge"):
        self.theta, self.y, self.alpha = theta, y, alpha
        self.theta_test_train, self.y_test = theta_test_train, y_test
        self.l, self.dl = lf.check_loss(loss)

    def take(self, idx):
        """The system of the members idx only."""
        part = copy.copy(self)
        part.alpha = self.alpha[idx]
        if self.theta.ndim == 3:
            part.theta = self.theta[idx]
            part.theta_test_train = None if self.theta_test_train is None else self.theta_test_train[idx]
        return part

    @staticmethod
    def apply(theta, v):
        """Theta v for every member: v (S, p) against one kernel (n, p) or one per member (S, n, p)."""
        return v @ theta.T if theta.ndim == 2 else (theta @ v[:, :, None])[:, :, 0]

    def evaluate(self, state, need_grad=True):
        xp = lf.array_module(state[0])
        F = state[0]
        margins = self.y * F
        if not need_grad:
            return lf.Point(F, margins, xp.mean(self.l(margins, xp), axis=1) / self.alpha**2)
        v = self.dl(margins, xp) * self.y * (1.0 / self.y.shape[-1])
        grad = [self.apply(self.theta, v)]
        if self.theta_test_train is not None:
            grad.append(self.apply(self.theta_test_train, v))
        return lf.Point(F, margins, xp.mean(self.l(margins, xp), axis=1) / self.alpha**2, grad)

    def test_predictor(self, state):
        return state[1] if self.theta_test_train is not None else None

    def observe(self, state, point):
        return lf.fit_record(point, self.l, None if self.theta_test_train is None else self.y_test * state[1])


def flow(theta_train, y, alpha, theta_test_train=None, y_test=None, *, loss="softhinge", F0=None,
         F0_test=None, **options):
    """Train the frozen-kernel predictor: dF/dt = -(1/p) Theta l'(y F) y from F = F0 (default 0).

    theta_train is Theta on the p training points (p, p); theta_test_train, if
    given, is Theta(x_test, x_train) and the test predictor follows the same
    integral. S members at once: alpha a sequence of S values (one kernel for all),
    or kernels with a member axis (S, p, p) and (S, n_test, p). `options` are those
    of lazyfeat.gradient_flow (integrator, max_dgrad, max_dout, tolerance, dt, tau, max_time,
    max_wall, max_steps, checkpoints, callback): the same integrators, stop rules and records
    as network training. Returns a Run, or a list of S Runs for S members.
    """
    xp = lf.array_module(theta_train)
    p = theta_train.shape[-1]
    if theta_train.ndim not in (2, 3) or theta_train.shape[-2] != p:
        raise ValueError(f"theta_train must be square (p, p), or (S, p, p) for S members, "
                         f"got {tuple(theta_train.shape)}")
    single = theta_train.ndim == 2 and isinstance(alpha, numbers.Real)
    S = len(theta_train) if theta_train.ndim == 3 else 1 if single else len(alpha)
    dtype = theta_train.dtype
    alpha = xp.asarray(lf.check_alphas(alpha, S), dtype=dtype)
    y = xp.asarray(y, dtype=dtype)
    lf.check_labels(y, p)
    state = [start(F0, (S, p), xp, dtype)]
    if theta_test_train is not None:
        if y_test is None or theta_test_train.shape[-2:] != (len(y_test), p) \
                or theta_test_train.ndim != theta_train.ndim:
            raise ValueError(f"theta_test_train must have shape (len(y_test), {p}) (with the member axis of "
                             "theta_train, if any) and y_test must be given")
        y_test = xp.asarray(y_test, dtype=dtype)
        lf.check_labels(y_test, len(y_test), "y_test")
        state.append(start(F0_test, (S, len(y_test)), xp, dtype))
    runs = lf.gradient_flow(KernelSystem(theta_train, y, alpha, theta_test_train, y_test, loss), state, **options)
    return runs[0] if single else runs


def start(F0, shape, xp, dtype):
    """The initial predictor of every member: zeros, or F0 (one for all members, or one per member)."""
    if F0 is None:
        return xp.zeros(shape, dtype=dtype)
    return xp.array(xp.broadcast_to(xp.asarray(F0, dtype=dtype), shape))


def baseline(net, params, x, y, x_test, y_test, alpha, *, loss="softhinge", chunk=1024, **options):
    """The kernel predictor with Theta frozen at `params`: "init. kernel" at w0, "final kernel" at the end.

    Computes Theta on the training points and Theta(x_test, x_train), then `flow`.
    """
    theta = ntk(net, params, x, chunk=chunk)
    theta_test_train = ntk(net, params, x_test, x, chunk=chunk)
    return flow(theta, y, alpha, theta_test_train, y_test, loss=loss, **options)


# ---------------------------------------------------------------------------
# The NTK at infinite width
# ---------------------------------------------------------------------------
#
# As h -> infinity the NTK of lazyfeat.FC at initialisation becomes a fixed kernel
# (Jacot et al. 2018). With the engine's conventions (weights N(0, 1), every layer
# divided by sqrt(fan_in), activations a = c sigma(z) with c = lf.normalisation(act),
# biases entering as bias * b with b = 0 at initialisation, no bias on the readout),
# the preactivations z_l(x) of every layer are Gaussian with covariance Sigma_l, and
# in the form of Arora et al. 2019 (their Theorem 3.1):
#
#     Sigma_1(x, x') = x.x' / D
#     Sigma_{l+1}    = c^2 E[sigma(u) sigma(v)]     (u, v) ~ N(0, Sigma_l on x, x')
#     Sigma'_{l+1}   = c^2 E[sigma'(u) sigma'(v)]
#     Theta_1        = Sigma_1 + bias^2
#     Theta_{l+1}    = Sigma_{l+1} + bias^2 + Theta_l Sigma'_{l+1}      (l < L)
#     Theta          = Sigma_{L+1} + Theta_L Sigma'_{L+1}                (the readout)
#
# The bias weights add bias^2 to the NTK of every hidden layer but nothing to Sigma
# (b = 0 at initialisation). Sigma_{L+1} is the NNGP kernel: the covariance of
# f(w0, x) over initialisations.
#
# The expectations are computed by quadrature, once per table. A pair of inputs
# enters only through its angle arccos(x.x' / |x||x'|) and the variances q = |x|^2 / D
# of its two points. With the paper's preprocessing (section 5: every input has norm
# sqrt(D)) q = 1 for all points, and so at every layer (that is what c normalises):
# the kernel is a function of the angle alone, tabulated once per (L, act, bias).
# Inputs of other norms (PCA-whitened data) use a table over the angle and the two
# log variances.

ANGLES_PER_ARC = 40  # Gauss-Legendre nodes in the angle, on each of the four arcs
RADII = 64  # Gauss-Legendre nodes in the radius, on [0, R_MAX]
R_MAX = 14.0  # the Gaussian weight beyond it, exp(-R_MAX^2 / 2), is below 1e-42
QUADRATURE_ERROR = 1e-11  # bound on the error of each expectation, variances in [1/4, 4]
# Pairs (x, x') whose quadrature nodes (4 x 40 angles x 64 radii each) are held in memory at once. On the
# CPU few enough that a chunk's arrays stay in a core's cache, and the cores share the chunks
# (BENCHMARKS.md: the tables built with 8 and with 256 pairs per chunk). On a GPU, enough to fill it.
PAIRS_PER_CHUNK = {"cpu": 8, "gpu": 256}
TABLE_ANGLES = 48  # Chebyshev nodes in the input angle [0, pi] where a table is computed by quadrature
TABLE_NODES_PER_OCTAVE = 6  # Chebyshev nodes in each log variance (inputs off the sphere), per factor 2
TABLE_POINTS = 1025  # the uniform grid of the angle on which tables are read (piecewise cubic)
TABLE_ERROR = 1e-9  # bound on the error of a table, relative to Theta(x, x), for L <= 5
SPHERE_TOLERANCE = 1e-10  # |x|^2 / D within this of 1 counts as on the sphere
NEAR_PARALLEL = 1e-2  # where |cos t| > 1 - NEAR_PARALLEL, angles are read from distances (input_angles)
PAIRS_PER_DISTANCE_CHUNK = 4096  # pairs whose unit-vector differences are held at once


@functools.cache
def polar_rule(angles=ANGLES_PER_ARC, radii=RADII):
    """Gauss-Legendre nodes t on [-1, 1] and weights for the angle; radii r and weights w with
    sum_k w_k g(r_k) = int_0^R_MAX g(r) r exp(-r^2 / 2) dr (host arrays)."""
    t, t_weights = np.polynomial.legendre.leggauss(angles)
    s, s_weights = np.polynomial.legendre.leggauss(radii)
    r = (s + 1) * (R_MAX / 2)
    return t, t_weights, r, s_weights * (R_MAX / 2) * r * np.exp(-r * r / 2)


def arcs(theta, t, t_weights):
    """The angles phi (n, 4 * len(t)) of the nodes t on the four arcs of each circle, and their weights.

    The arcs end where u = 0 or v = 0: at phi = -pi/2, theta - pi/2, pi/2, theta + pi/2, 3 pi/2.
    """
    xp = lf.array_module(theta)
    edges = xp.asarray([-1.0, -1.0, 1.0, 1.0, 3.0]) * (math.pi / 2) + theta[:, None] * xp.asarray([0.0, 1, 0, 1, 0])
    start, half = edges[:, :-1, None], (edges[:, 1:, None] - edges[:, :-1, None]) / 2
    return (start + half * (t + 1)).reshape(len(theta), -1), (half * t_weights).reshape(len(theta), -1)


def polar_sums(pair, q1, angle, q2, rule, integrands):
    """polar_quadrature on flat arrays of a few pairs: the sums of integrands(sigma(u), sigma'(u),
    sigma(v), sigma'(v)), shape (k, n)."""
    xp = lf.array_module(angle)
    t, t_weights, r, r_weights = rule
    phi, phi_weights = arcs(angle, t, t_weights)
    u = (xp.sqrt(q1)[:, None] * xp.cos(phi))[:, :, None] * r
    v = (xp.sqrt(q2)[:, None] * xp.cos(phi - angle[:, None]))[:, :, None] * r
    (su, du), (sv, dv) = pair(u, xp), pair(v, xp)
    return xp.stack([(f @ r_weights * phi_weights).sum(axis=1) for f in integrands(su, du, sv, dv)]) / (2 * math.pi)


def polar_quadrature(act, q1, angle, q2, integrands, count, angles=ANGLES_PER_ARC, radii=RADII):
    """E[g(sigma(u), sigma'(u), sigma(v), sigma'(v))] for the `count` functions g that
    integrands(su, du, sv, dv, part) returns, (u, v) centred Gaussian with Var u = q1, Var v = q2 and
    correlation cos(angle) (arrays of one shape; `part` the slice of the flat pairs at hand), shape (count,) + shape.

    In the polar coordinates (r, phi) of a standard Gaussian pair, u = sqrt(q1) r cos(phi) and
    v = sqrt(q2) r cos(phi - angle), and the density is r exp(-r^2 / 2) dr dphi / (2 pi). The lines
    u = 0 and v = 0, where ReLU has its kink, cut the circle into four arcs (`arcs`); on each the
    integrand is smooth in phi and r, so Gauss-Legendre on each arc and on 0 <= r <= R_MAX converges
    fast. With the default nodes the error is below QUADRATURE_ERROR for variances in [1/4, 4] and
    any correlation (ReLU: exact up to rounding); tests check it against the closed form of ReLU and
    against twice the nodes.
    """
    xp = lf.array_module(angle)
    pair = lf.RAW_ACTIVATIONS[act]
    shape = angle.shape
    q1, angle, q2 = (xp.ascontiguousarray(q).ravel() for q in (q1, angle, q2))
    rule = [xp.asarray(a) for a in polar_rule(angles, radii)]
    sums = xp.empty((count, angle.size))
    chunk = PAIRS_PER_CHUNK["cpu" if xp is np else "gpu"]

    def fill(pairs):
        """The sums of a range of pairs, chunk by chunk."""
        for i in range(pairs.start, pairs.stop, chunk):
            part = slice(i, min(i + chunk, pairs.stop))
            sums[:, part] = polar_sums(pair, q1[part], angle[part], q2[part], rule,
                                       lambda su, du, sv, dv: integrands(su, du, sv, dv, part))

    cores = machine.cpu_threads(xp)
    machine.in_parallel(fill, machine.sample_parts(angle.size, angle.size, cores), cores)
    return sums.reshape((count,) + shape)


def gaussian_expectations(act, q1, q12, q2, angles=ANGLES_PER_ARC, radii=RADII, angle=None):
    """E[sigma(u) sigma(v)] and E[sigma'(u) sigma'(v)] for (u, v) centred Gaussian with Var u = q1,
    Var v = q2 and Cov(u, v) = q12 (arrays that broadcast; sigma the raw activation `act`), by
    polar_quadrature. `angle`, when given, is the angle arccos(q12 / sqrt(q1 q2)) of the
    correlation computed more accurately than from q12 (input_angles, next_angles).
    """
    xp = lf.array_module(q12)
    q1, q12, q2 = xp.broadcast_arrays(*(xp.asarray(q, dtype=xp.float64) for q in (q1, q12, q2)))
    if angle is None:
        angle = xp.arccos(xp.clip(q12 / xp.maximum(xp.sqrt(q1 * q2), 1e-300), -1.0, 1.0))
    angle = xp.broadcast_to(xp.asarray(angle, dtype=xp.float64), q12.shape)
    E, E_dot = polar_quadrature(act, q1, angle, q2, lambda su, du, sv, dv, part: (su * sv, du * dv), 2,
                                angles, radii)
    return E, E_dot


def next_angles(act, q1, angle, q2, E, E1, E2):
    """The angle between the activations sigma(u), sigma(v) of the next layer, from their second moments
    E = E[sigma(u) sigma(v)], E1 = E[sigma(u)^2], E2 = E[sigma(v)^2]: arccos(E / sqrt(E1 E2)), except
    where that correlation is within NEAR_PARALLEL of +-1 and arccos would lose half the digits: there
    t = 2 arcsin(c / 2), c^2 = E[(sigma(u) / sqrt(E1) -+ sigma(v) / sqrt(E2))^2] by quadrature (the
    distance of the unit vectors, as in input_angles), pi minus that near -1.
    """
    xp = lf.array_module(E)
    rho = xp.clip(E / xp.sqrt(E1 * E2), -1.0, 1.0)
    out = xp.arccos(rho)
    near = xp.nonzero(xp.abs(rho) > 1 - NEAR_PARALLEL)
    if len(near[0]) == 0:
        return out
    q1, angle, q2, E1, E2 = (xp.broadcast_to(a, out.shape) for a in (q1, angle, q2, E1, E2))
    a, b, sign = xp.sqrt(E1[near]), xp.sqrt(E2[near]), xp.sign(rho[near])

    def chord(su, du, sv, dv, part):
        """(sigma(u) / sqrt(E1) -+ sigma(v) / sqrt(E2))^2 at the nodes of the pairs `part`."""
        a_, b_, s_ = (c[part, None, None] for c in (a, b, sign))
        return ((su / a_ - s_ * sv / b_) ** 2,)

    chord2 = polar_quadrature(act, q1[near], angle[near], q2[near], chord, 1)[0]
    t = 2 * xp.arcsin(xp.minimum(xp.sqrt(chord2) / 2, 1.0))
    out[near] = xp.where(sign > 0, t, math.pi - t)
    return out


def infinite_width_kernels(Sigma, q1, q2, L, act, bias, angle=None):
    """(Theta, Sigma_{L+1}) by the layer recursion at the top of this section, every pair by quadrature.

    Sigma = x.x' / D on the pairs; q1 = |x|^2 / D and q2 = |x'|^2 / D, the variances
    of the two points (arrays that broadcast with Sigma), follow the same recursion. `angle`, when
    given, is the angle between x and x' (input_angles), more accurate than arccos(Sigma / sqrt(q1 q2));
    each layer passes its angle on to the next (next_angles), exactly 0 for a point with itself.
    """
    xp = lf.array_module(Sigma)
    c2 = lf.normalisation(act) ** 2
    theta = Sigma + bias**2
    q1, Sigma, q2 = (xp.asarray(q, dtype=xp.float64) for q in (q1, Sigma, q2))
    if angle is None:
        angle = xp.arccos(xp.clip(Sigma / xp.maximum(xp.sqrt(q1 * q2), 1e-300), -1.0, 1.0))
    for layer in range(1, L + 1):
        E, E_dot = gaussian_expectations(act, q1, Sigma, q2, angle=angle)
        E1, E2 = (gaussian_expectations(act, q, q, q)[0] for q in (q1, q2))
        if layer < L:
            angle = next_angles(act, q1, angle, q2, E, E1, E2)
        q1, q2 = c2 * E1, c2 * E2
        Sigma, Sigma_dot = c2 * E, c2 * E_dot
        theta = Sigma + theta * Sigma_dot + (bias**2 if layer < L else 0.0)
    return theta, Sigma


# Tables: a kernel computed by quadrature at Chebyshev nodes, and read by interpolation.


def chebyshev_nodes(n, low, high):
    """The n Chebyshev points of [low, high] (host array)."""
    return (low + high) / 2 + (high - low) / 2 * np.cos(math.pi * (np.arange(n) + 0.5) / n)


def chebyshev_basis(x, n, low, high):
    """T_0 .. T_{n-1} at the points x of [low, high], shape x.shape + (n,)."""
    xp = lf.array_module(x)
    t = (2 * x - (low + high)) * (1.0 / (high - low))
    T = [xp.ones_like(t), t]
    for _ in range(n - 2):
        T.append(2 * t * T[-1] - T[-2])
    return xp.stack(T[:n], axis=-1)


def chebyshev_coefficients(values, low, high, axis):
    """The coefficients along `axis` of the Chebyshev series through values at chebyshev_nodes."""
    n = values.shape[axis]
    inverse = np.linalg.inv(chebyshev_basis(chebyshev_nodes(n, low, high), n, low, high))
    return np.moveaxis(np.tensordot(inverse, values, axes=(1, axis)), 0, axis)


def cubic_pieces(values):
    """The coefficients (..., 4, n - 1) of 1, s, s^2, s^3 on each interval [i, i + 1] of a table of
    n values along the last axis, s = position - i: the cubic through the four nearest points
    (i - 1 .. i + 2, shifted inwards at the two ends). Its error is about 0.02 step^4 |f''''|."""
    n = values.shape[-1]
    interval = np.arange(n - 1)[:, None]
    points = np.clip(interval - 1, 0, n - 4) + np.arange(4)
    inverse = np.linalg.inv((points - interval)[:, :, None] ** np.arange(4.0))
    return np.einsum("ikm,...im->...ki", inverse, values[..., points])


def angle_pieces(values):
    """Cubic pieces on TABLE_POINTS uniform angles in [0, pi] from values at TABLE_ANGLES Chebyshev
    angles (last axis): the Chebyshev interpolant read on the uniform grid."""
    grid = np.linspace(0.0, math.pi, TABLE_POINTS)
    coefficients = chebyshev_coefficients(values, 0.0, math.pi, -1)
    return cubic_pieces(coefficients @ chebyshev_basis(grid, TABLE_ANGLES, 0.0, math.pi).T)


def interpolate(pieces, angle):
    """The piecewise cubics `pieces` (4, n) in the angle on [0, pi], or one per row of angle (rows, 4, n),
    at `angle`."""
    xp = lf.array_module(angle)
    n = pieces.shape[-1]
    position = angle * (n / math.pi)
    i = xp.minimum(position.astype(np.int64), n - 1)
    s = position - i
    if pieces.ndim == 3:
        i += xp.arange(len(pieces))[:, None] * (4 * n)
    flat = pieces.reshape(-1)
    value = xp.take(flat, i + 3 * n)
    for k in (2, 1, 0):
        value *= s
        value += xp.take(flat, i + k * n)
    return value


@functools.cache
def sphere_table(L, act, bias):
    """Theta and the NNGP kernel of inputs of norm sqrt(D) as cubic pieces (2, 4, TABLE_POINTS - 1) in the
    input angle (host array), computed once.

    Tabulated against the angle, not the cosine: the kernel is smooth in the angle up to 0 and pi,
    where ReLU's is not in the cosine (arc-cosine kernels).
    """
    angles = chebyshev_nodes(TABLE_ANGLES, 0.0, math.pi)
    return angle_pieces(np.stack(infinite_width_kernels(np.cos(angles), 1.0, 1.0, L, act, bias, angles)))


def octaves(q_min, q_max):
    """The whole powers of 2 (a, b) with 2^a <= q_min and q_max <= 2^b, b > a: the range of a variance_table."""
    low = math.floor(math.log2(q_min))
    return low, max(math.ceil(math.log2(q_max)), low + 1)


def log_variance_nodes(octave_range):
    """How many Chebyshev nodes a variance_table has in each log variance."""
    return TABLE_NODES_PER_OCTAVE * (octave_range[1] - octave_range[0]) + 4


def table_pairs(octave_range):
    """How many pairs a variance_table computes by quadrature (its nodes, by the symmetry of the pair)."""
    n = log_variance_nodes(octave_range)
    return n * (n + 1) // 2 * TABLE_ANGLES


@functools.cache
def variance_table(L, act, bias, octave_range):
    """Theta and the NNGP kernel of inputs with variances |x|^2 / D in [2^a, 2^b], (a, b) = octave_range:
    Chebyshev coefficients in the two log variances (TABLE_NODES_PER_OCTAVE (b - a) + 4 nodes each) and
    cubic pieces in the angle, an array (2, n, n, 4, TABLE_POINTS - 1), with the range [low, high] of the
    log variances."""
    low, high = (k * math.log(2) for k in octave_range)
    n = log_variance_nodes(octave_range)
    q = np.exp(chebyshev_nodes(n, low, high))
    angles = chebyshev_nodes(TABLE_ANGLES, 0.0, math.pi)
    i, j = np.triu_indices(n)
    values = np.empty((2, n, n, TABLE_ANGLES))
    values[:, i, j] = np.stack(infinite_width_kernels(np.sqrt(q[i] * q[j])[:, None] * np.cos(angles), q[i][:, None],
                                                      q[j][:, None], L, act, bias, angles))
    values[:, j, i] = values[:, i, j]
    coefficients = chebyshev_coefficients(chebyshev_coefficients(values, low, high, 1), low, high, 2)
    return angle_pieces(coefficients), (low, high)


def interpolate_variances(pieces, low, high, s1, s2, angle):
    """sum_k sum_l T_k(s1_i) T_l(s2_j) c_kl(angle_ij) for pieces (n, n, 4, m) of variance_table:
    Chebyshev in the log variances s1, s2, cubic in the angle."""
    n, m = pieces.shape[0], pieces.shape[-1]
    T1, T2 = (chebyshev_basis(s, n, low, high) for s in (s1, s2))
    value = 0.0
    for l in range(n):
        rows = (T1 @ pieces[:, l].reshape(n, 4 * m)).reshape(len(s1), 4, m)
        value = value + T2[:, l] * interpolate(rows, angle)
    return value


def gram_blocks(x1, x2, block, count, chunk):
    """The `count` matrices (count, n1, n2) that block(rows of x1, rows of x2) gives, `chunk` x `chunk` at a time.

    With x2 None (x2 = x1) only the blocks on and above the diagonal are computed; the result is
    exactly symmetric.
    """
    xp = lf.array_module(x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    out = xp.empty((count, len(x1), len(x2)))
    for i in range(0, len(x1), chunk):
        for j in range(i if symmetric else 0, len(x2), chunk):
            values = block(x1[i:i + chunk], x2[j:j + chunk])
            if symmetric and i == j:
                values = (values + values.transpose(0, 2, 1)) / 2
            out[:, i:i + chunk, j:j + chunk] = values
            if symmetric and j != i:
                out[:, j:j + chunk, i:i + chunk] = values.transpose(0, 2, 1)
    return out


def input_angles(a, b):
    """The angles t_ij in [0, pi] between the rows a_i and b_j, accurate near 0 and pi as well.

    arccos of the cosine loses half the digits there: a rounding error eps of the cosine moves t by
    about sqrt(2 eps) ~ 2e-8 (and ReLU's kernel, which is smooth in t, with it). So where
    |cos t| > 1 - NEAR_PARALLEL, t = 2 arcsin(|u_i - v_j| / 2) from the unit vectors u = a / |a|,
    v = b / |b| (pi minus that of -v_j near pi): accurate to rounding, and exactly 0 for a point
    with itself and pi for its opposite.
    """
    xp = lf.array_module(a)
    u, v = (c / xp.maximum(xp.sqrt(xp.sum(c * c, axis=1, keepdims=True)), 1e-300) for c in (a, b))
    cosine = xp.clip(u @ v.T, -1.0, 1.0)
    angle = xp.arccos(cosine)
    i, j = xp.nonzero(xp.abs(cosine) > 1 - NEAR_PARALLEL)
    for k in range(0, len(i), PAIRS_PER_DISTANCE_CHUNK):
        ii, jj = i[k:k + PAIRS_PER_DISTANCE_CHUNK], j[k:k + PAIRS_PER_DISTANCE_CHUNK]
        sign = xp.sign(cosine[ii, jj])
        near = 2 * xp.arcsin(xp.minimum(xp.sqrt(xp.sum((u[ii] - sign[:, None] * v[jj]) ** 2, axis=1)) / 2, 1.0))
        angle[ii, jj] = xp.where(sign > 0, near, math.pi - near)
    return angle


def check_infinite_width_input(x1, x2, L, act, bias):
    """ValueError unless x1 (n1, D) and x2 (n2, D) share D, L >= 1, act is known and bias >= 0."""
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and x.ndim != 2:
            raise ValueError(f"{name} must have shape (n, D), got {tuple(x.shape)}; "
                             "flatten images with x.reshape(len(x), -1)")
    if x2 is not None and x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x1 and x2 must have the same input dimension D, got {x1.shape[1]} and {x2.shape[1]}")
    lf.check_int("L", L)
    if act not in lf.RAW_ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(lf.RAW_ACTIVATIONS)}")
    if not (isinstance(bias, (int, float)) and math.isfinite(bias) and bias >= 0):
        raise ValueError(f"bias must be a finite number >= 0 (0 disables biases), got {bias!r}")


def ntk_infinite(x1, x2=None, *, L, act="softplus", bias=0.0, nngp=False, chunk=1024):
    """The NTK Theta(x1_i, x2_j) of lazyfeat.FC(D, h, L, act, bias) at h = infinity, (n1, n2)
    (x2 = x1 when omitted); with nngp=True the pair (Theta, NNGP kernel Sigma_{L+1}).

    It follows the recursion at the top of this section. When every input has norm sqrt(D), the
    kernel is read from sphere_table(L, act, bias) at the angles of the pairs. Otherwise it is read
    from variance_table at their angles and log variances, or, when there are fewer pairs than that
    table has nodes (or an input is 0), every pair is computed by quadrature (`infinite_width_kernels`,
    each expectation to QUADRATURE_ERROR: the slow path). Tables are built once on
    the host and hold to TABLE_ERROR x Theta(x, x). Every method reads the angle between the inputs
    from input_angles, exact for a point with itself and its opposite, and accurate near them, where
    ReLU's kernel has a square root in the cosine (arc-cosine kernels). Inputs on the GPU stay there;
    the result is float64 on their device.
    """
    check_infinite_width_input(x1, x2, L, act, bias)
    xp = lf.array_module(x1)
    x1 = xp.asarray(x1, dtype=xp.float64)
    x2 = None if x2 is None else xp.asarray(x2, dtype=xp.float64)
    D, bias, which = x1.shape[1], float(bias), slice(0, 2 if nngp else 1)
    q = xp.sum(x1 * x1, axis=1) / D if x2 is None else xp.concatenate([xp.sum(x * x, axis=1) / D for x in (x1, x2)])
    pairs = len(x1) * len(x1 if x2 is None else x2)
    q_min, q_max = lf.to_host(q.min(), q.max())
    if 1 - SPHERE_TOLERANCE <= q_min and q_max <= 1 + SPHERE_TOLERANCE:
        pieces = xp.asarray(sphere_table(L, act, bias)[which])

        def block(a, b):
            angle = input_angles(a, b)
            return xp.stack([interpolate(p, angle) for p in pieces])
    elif q_min > 0 and pairs > table_pairs(octaves(q_min, q_max)):
        table, (low, high) = variance_table(L, act, bias, octaves(q_min, q_max))
        pieces = xp.asarray(table[which])

        def block(a, b):
            qa, qb = xp.sum(a * a, axis=1) / D, xp.sum(b * b, axis=1) / D
            angle = input_angles(a, b)
            return xp.stack([interpolate_variances(p, low, high, xp.log(qa), xp.log(qb), angle) for p in pieces])
    else:
        def block(a, b):
            qa, qb = xp.sum(a * a, axis=1)[:, None] / D, xp.sum(b * b, axis=1)[None, :] / D
            angle = input_angles(a, b)
            kernel = infinite_width_kernels(xp.sqrt(qa * qb) * xp.cos(angle), qa, qb, L, act, bias, angle)
            return xp.stack(kernel[which])
    out = gram_blocks(x1, x2, block, 2 if nngp else 1, lf.check_int("chunk", chunk))
    return (out[0], out[1]) if nngp else out[0]
