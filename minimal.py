"""minimal: the method of Geiger, Spigler, Jacot and Wyart (arXiv:1906.08034) on one page.

One fully connected network in plain NumPy: one network, no ensemble, no threads, no chunks.
It is the computation of the engine (lazyfeat.py) for an FC net without biases trained by
gradient flow, written to be read top to bottom (tests/test_minimal.py checks they agree):

1. the network f(w, x), its hand-written backward pass and its Jacobian df(x)/dw;
2. the alpha trick: F(w, x) = alpha [f(w, x) - f(w0, x)] and L(w) = 1/(alpha^2 p) sum_mu l(y_mu F_mu);
3. gradient flow dw/dt = -grad L with the paper's adaptive Euler step;
4. the neural tangent kernel Theta = J J^T.

`python minimal.py` trains one net at a lazy and at a feature alpha sqrt(h) and prints the test
error and the kernel change of each.
"""
import functools
import math

import numpy as np

# 1. The network --------------------------------------------------------------

# Each activation as the pair (sigma, sigma'); softplus is the paper's, log(1 + exp(5 z)) / 5.
ACTIVATIONS = {
    "softplus": (lambda z: np.logaddexp(0.0, 5.0 * z) / 5.0, lambda z: np.exp(5.0 * z - np.logaddexp(0.0, 5.0 * z))),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0) * 1.0),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
}


@functools.cache
def normalisation(act, nodes=200, R=14.0):
    """c = E_{z ~ N(0,1)}[sigma(z)^2]^(-1/2), so that c sigma keeps unit variance layer after layer.

    Gauss-Legendre quadrature on [-R, 0] and [0, R] (each side smooth; the tail beyond R is below 1e-40).
    """
    t, weights = np.polynomial.legendre.leggauss(nodes)
    z = np.concatenate([R * (t - 1) / 2, R * (t + 1) / 2])
    density = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return 1.0 / math.sqrt(np.sum(np.concatenate([weights, weights]) * R / 2 * ACTIVATIONS[act][0](z) ** 2 * density))


def init(d, h, L, seed):
    """w = [W_0 (h, d), W_1 ... W_{L-1} (h, h), W_L (h,)], every entry N(0, 1), drawn in this order
    from the seed (as lazyfeat's FC(d, h, L).init(seed))."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((h, d))] + [rng.standard_normal((h, h)) for _ in range(L - 1)] + [rng.standard_normal(h)]


def forward(w, x, act):
    """f(w, x) = W_L . a_L / sqrt(h), with a_0 = x, z_{l+1} = W_l a_l / sqrt(fan_in), a_{l+1} = c sigma(z_{l+1}).

    Returns f (n,) and the cache: for each layer l, its input a_l and c sigma'(z_l) (None for x).
    """
    sigma, slope = ACTIVATIONS[act]
    c = normalisation(act)
    a, a_slope, cache = x, None, []
    for W in w[:-1]:
        cache.append((a, a_slope))
        z = a @ W.T / math.sqrt(a.shape[1])
        a, a_slope = c * sigma(z), c * slope(z)
    cache.append((a, a_slope))
    return a @ w[-1] / math.sqrt(a.shape[1]), cache


def backward(w, cache, g):
    """Backpropagation of sum_mu g_mu f(x_mu). For each layer l, (a_l, delta_l) with delta_l the
    derivative with respect to the layer's output, per sample: delta_L = g at the readout, and
    delta_{l-1} = (delta_l W_l / sqrt(fan_in)) * c sigma'(z_l) below it."""
    delta, signals = g[:, None], []
    for W, (a, a_slope) in zip(reversed(w), reversed(cache)):
        signals.append((a, delta))
        if a_slope is not None:
            delta = (delta @ W.reshape(delta.shape[1], -1) / math.sqrt(a.shape[1])) * a_slope
    return signals[::-1]


def gradient(w, cache, g):
    """d(sum_mu g_mu f(x_mu))/dW_l = delta_l^T a_l / sqrt(fan_in), shaped like W_l."""
    return [(delta.T @ a / math.sqrt(a.shape[1])).reshape(W.shape) for W, (a, delta) in zip(w, backward(w, cache, g))]


def jacobian(w, x, act):
    """J[mu] = df(x_mu)/dw, shape (n, number of weights): per layer delta_l(x_mu) (x) a_l(x_mu) / sqrt(fan_in)."""
    _, cache = forward(w, x, act)
    return np.concatenate([(delta[:, :, None] * a[:, None, :]).reshape(len(x), -1) / math.sqrt(a.shape[1])
                           for a, delta in backward(w, cache, np.ones(len(x)))], axis=1)


# 2. The alpha trick ----------------------------------------------------------


def soft_hinge(z, beta=20.0):
    """(l(z), l'(z)) with l(z) = log(1 + exp(beta (1 - z))) / beta, the paper's smooth hinge."""
    l = np.logaddexp(0.0, beta * (1.0 - z)) / beta
    return l, -np.exp(beta * (1.0 - z) - beta * l)


def objective(w, x, y, f0, alpha, act):
    """F = alpha [f(w, x) - f(w0, x)] on the training set, L = 1/(alpha^2 p) sum_mu l(y_mu F_mu), and
    dL/dw = 1/(alpha p) sum_mu l'(y_mu F_mu) y_mu df(x_mu)/dw: one backward pass."""
    f, cache = forward(w, x, act)
    F = alpha * (f - f0)
    l, dl = soft_hinge(y * F)
    return F, np.mean(l) / alpha**2, gradient(w, cache, dl * y / (alpha * len(y)))


# 3. Gradient flow ------------------------------------------------------------


def gradient_change(g, g_new):
    """dgrad = |g_new - g|^2 / (|g| |g_new|): 0 if both vanish, infinite if only one does."""
    diff2 = sum(np.sum((a - b) ** 2) for a, b in zip(g_new, g))
    norms = math.sqrt(sum(np.sum(a * a) for a in g) * sum(np.sum(b * b) for b in g_new))
    return diff2 / norms if norms > 0 else (math.inf if diff2 > 0 else 0.0)


def gradient_flow(w0, x, y, alpha, act, max_dgrad=1e-4, max_dout=0.1, dt=1.0, max_time=math.inf,
                  max_steps=math.inf, max_rejections=40):
    """dw/dt = -grad L(w) from w0, by the paper's adaptive explicit Euler rule.

    A trial step w' = w - dt grad L(w) is accepted if dgrad < max_dgrad and dout = max_mu |F'_mu - F_mu|
    < max_dout; then, if both are below half their bound, dt *= 1.1. Otherwise it is rejected and
    dt /= 10. t sums the accepted steps; the last one is shortened to land on max_time. It stops
    when every y_mu F_mu >= 1 ("fitted"), at max_time ("time") or max_steps ("steps"), or after
    max_rejections rejections in a row ("diverged"). Returns (w, status, t, dt, steps, rejected).
    """
    f0 = forward(w0, x, act)[0]
    w, t, steps, rejected, streak = w0, 0.0, 0, 0, 0
    F, _, g = objective(w, x, y, f0, alpha, act)
    status = "diverged" if not np.all(np.isfinite(F)) else "fitted" if np.min(y * F) >= 1 else None
    while status is None:
        status = "time" if t >= max_time else "steps" if steps >= max_steps else None
        if status:
            break
        step = min(dt, max_time - t)
        w_new = [W - step * G for W, G in zip(w, g)]
        F_new, _, g_new = objective(w_new, x, y, f0, alpha, act)
        dout, dgrad = np.max(np.abs(F_new - F)), gradient_change(g, g_new)
        if dgrad < max_dgrad and dout < max_dout:
            w, F, g, steps, streak = w_new, F_new, g_new, steps + 1, 0
            t = max_time if step < dt else t + step
            if step == dt and dgrad < max_dgrad / 2 and dout < max_dout / 2:
                dt *= 1.1
            status = "fitted" if np.min(y * F) >= 1 else None
        else:
            dt, rejected, streak = step / 10, rejected + 1, streak + 1
            status = "diverged" if streak >= max_rejections else None
    return w, status, t, dt, steps, rejected


# 4. The neural tangent kernel ------------------------------------------------


def ntk(w, x, act):
    """Theta(x_mu, x_nu) = sum over weights of df(x_mu)/dw df(x_nu)/dw = (J J^T)_{mu nu}."""
    J = jacobian(w, x, act)
    return J @ J.T


def kernel_change(w, w0, x, act):
    """|Theta(w) - Theta(w0)|_F / |Theta(w0)|_F on the points x."""
    theta0 = ntk(w0, x, act)
    return np.linalg.norm(ntk(w, x, act) - theta0) / np.linalg.norm(theta0)


# The demonstration: the two regimes ------------------------------------------


def load_data(p, p_test):
    """Fashion-MNIST's parity task (images flattened to 784 numbers) if its files are found, else the
    synthetic stripe in d = 10 (datasets.py: the same preprocessing as the engine's runs)."""
    import datasets
    from datafiles import DataError

    try:
        x, y, x_test, y_test = datasets.load("fashion", p, p_test)
        name = "Fashion-MNIST"
    except DataError:
        x, y, x_test, y_test = datasets.load("stripe", p, p_test)
        name = "the synthetic stripe (no Fashion-MNIST found: see GUIDE.md, Data)"
    return x.reshape(len(x), -1), y, x_test.reshape(len(x_test), -1), y_test, name


def demo(h=64, L=2, p=128, p_test=1000, act="softplus", seed=0, scales=(1e3, 1e-1), max_steps=3000):
    """Train one net at a lazy and at a feature alpha sqrt(h); print test error and kernel change."""
    x, y, x_test, y_test, name = load_data(p, p_test)
    print(f"{name}: p = {p} training and {p_test} test points; FC net h = {h}, L = {L}, {act}")
    w0 = init(x.shape[1], h, L, seed)
    for scale in scales:
        alpha = scale / math.sqrt(h)
        w, status, t, dt, steps, rejected = gradient_flow(w0, x, y, alpha, act, max_steps=max_steps)
        F_test = alpha * (forward(w, x_test, act)[0] - forward(w0, x_test, act)[0])
        regime = "lazy" if scale > 1 else "feature"
        print(f"alpha sqrt(h) = {scale:g} ({regime}): {status} at t = {t:.3g} after {steps} steps; "
              f"test error {np.mean(y_test * F_test <= 0):.3f}, kernel change {kernel_change(w, w0, x[:100], act):.3g}")


if __name__ == "__main__":
    demo()
