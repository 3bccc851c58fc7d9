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
import lazyfeat as lf


# ---------------------------------------------------------------------------
# The NTK, layer by layer
# ---------------------------------------------------------------------------


def layer_signals(net, params, x):
    """One forward pass and one backward pass with g = 1 on the points x.

    Returns, for every layer with weights, (layer, its params, its cache, g_out):
    its inputs (in the cache) and the per-sample signals df(x_n)/d(out_n) at its
    outputs, which is all the layer needs to give its NTK contribution.
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
    """The Jacobian df(x_n)/dw of the whole network on these points, shape (n, P), in params order."""
    xp = lf.array_module(signals[0][3])
    return xp.concatenate([layer.jacobian(p, c, g) for layer, p, c, g in reversed(signals)], axis=1)


def block_by_jacobian(signals1, signals2):
    """Theta block = J1 J2^T, for tests and teaching: it forms the (n, P) Jacobians."""
    return jacobian(signals1) @ jacobian(signals2).T


BLOCKS = {"layers": block_by_layers, "jacobian": block_by_jacobian}


def ntk(net, params, x1, x2=None, chunk=1024, method="layers"):
    """The empirical NTK Theta(x1_i, x2_j), an (n1, n2) Gram matrix (x2 = x1 when omitted).

    Points are taken `chunk` at a time, so memory is bounded by the chunk size
    (plus the result); with x2 omitted only the blocks on and above the diagonal
    are computed and the result is exactly symmetric. method "layers" sums each
    layer's structured contribution; "jacobian" forms J1 J2^T (slow, for checks).
    """
    if method not in BLOCKS:
        raise ValueError(f"unknown NTK method {method!r}; choose one of {sorted(BLOCKS)}")
    chunk = lf.check_int("chunk", chunk)
    block = BLOCKS[method]
    xp = lf.array_module(params[0])
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    theta = xp.empty((len(x1), len(x2)), dtype=params[0].dtype)
    for i in range(0, len(x1), chunk):
        rows = layer_signals(net, params, x1[i:i + chunk])
        for j in range(i if symmetric else 0, len(x2), chunk):
            cols = rows if symmetric and j == i else layer_signals(net, params, x2[j:j + chunk])
            theta[i:i + chunk, j:j + chunk] = block(rows, cols)
            if symmetric and j != i:
                theta[j:j + chunk, i:i + chunk] = theta[i:i + chunk, j:j + chunk].T
    return theta


def kernel_change(theta, theta0):
    """|Theta - Theta0|_F / |Theta0|_F, as a host float."""
    xp = lf.array_module(theta)
    return lf.to_host(xp.linalg.norm(theta - theta0) / xp.linalg.norm(theta0))[0]


def kernel_change_callback(net, x, theta0, chunk=1024):
    """A training callback that adds the kernel change on the fixed points x to every record."""

    def callback(params, record):
        return {"kernel_change": kernel_change(ntk(net, params, x, chunk=chunk), theta0)}

    return callback


# ---------------------------------------------------------------------------
# Kernel dynamics: the lazy limit
# ---------------------------------------------------------------------------


class KernelSystem:
    """dF/dt = -(1/p) Theta l'(y F) y with Theta frozen, seen by the integrator.

    The state is [F on the training points] or [F_train, F_test]: the test rows
    Theta(x_test, x_mu) move F_test with the same integral, step by step.
    """

    def __init__(self, theta, y, alpha, theta_test_train=None, y_test=None, loss="softhinge"):
        self.theta, self.y, self.alpha = theta, y, lf.check_alpha(alpha)
        self.theta_test_train, self.y_test = theta_test_train, y_test
        self.l, self.dl = lf.check_loss(loss)

    def evaluate(self, state):
        xp = lf.array_module(state[0])
        F = state[0]
        margins = self.y * F
        v = self.dl(margins, xp) * self.y * (1.0 / len(self.y))
        grad = [self.theta @ v] + ([self.theta_test_train @ v] if self.theta_test_train is not None else [])
        return lf.Point(F, margins, xp.mean(self.l(margins, xp)) / self.alpha**2, grad)

    def observe(self, state, point):
        return lf.fit_record(point, self.l, None if self.theta_test_train is None else self.y_test * state[1])


def flow(theta_train, y, alpha, theta_test_train=None, y_test=None, *, loss="softhinge", F0=None,
         F0_test=None, **options):
    """Train the frozen-kernel predictor: dF/dt = -(1/p) Theta l'(y F) y from F = F0 (default 0).

    theta_train is Theta on the p training points (p, p); theta_test_train, if
    given, is Theta(x_test, x_train) and the test predictor follows the same
    integral. `options` are those of lazyfeat.gradient_flow (max_dgrad, max_dout,
    dt, tau, max_time, max_wall, max_steps, checkpoints, callback): the same
    integrator, stop rules and records as network training.
    """
    xp = lf.array_module(theta_train)
    p = len(theta_train)
    if theta_train.shape != (p, p):
        raise ValueError(f"theta_train must be square (p, p), got {tuple(theta_train.shape)}")
    y = xp.asarray(y, dtype=theta_train.dtype)
    lf.check_labels(y, p)
    state = [xp.zeros(p, dtype=theta_train.dtype) if F0 is None else xp.asarray(F0, dtype=theta_train.dtype)]
    if theta_test_train is not None:
        if y_test is None or theta_test_train.shape != (len(y_test), p):
            raise ValueError(f"theta_test_train must have shape (len(y_test), {p}) and y_test must be given")
        y_test = xp.asarray(y_test, dtype=theta_train.dtype)
        lf.check_labels(y_test, len(y_test), "y_test")
        state.append(xp.zeros(len(y_test), dtype=theta_train.dtype) if F0_test is None
                     else xp.asarray(F0_test, dtype=theta_train.dtype))
    run = lf.gradient_flow(KernelSystem(theta_train, y, alpha, theta_test_train, y_test, loss), state, **options)
    if theta_test_train is not None:
        run.F_test = run.state[1]
        run.test_error = run.records[-1]["test_err"]
    return run


def baseline(net, params, x, y, x_test, y_test, alpha, *, loss="softhinge", chunk=1024, **options):
    """The kernel predictor with Theta frozen at `params`: "init. kernel" at w0, "final kernel" at the end.

    Computes Theta on the training points and Theta(x_test, x_train), then `flow`.
    """
    theta = ntk(net, params, x, chunk=chunk)
    theta_test_train = ntk(net, params, x_test, x, chunk=chunk)
    return flow(theta, y, alpha, theta_test_train, y_test, loss=loss, **options)
