"""lazyfeat: lazy (kernel) and feature training of deep networks, from scratch.

This file is the engine behind Geiger, Spigler, Jacot and Wyart, "Disentangling
feature and lazy training in deep neural networks" (arXiv:1906.08034). It reads
top to bottom:

1. the backend: NumPy or CuPy behind one variable `xp`;
2. the activations, normalised so that E[sigma(z)^2] = 1 for z ~ N(0, 1);
3. the layers, each a small object with its forward pass, its backward pass
   (a hand-written vector-Jacobian product) and its own contribution to the
   neural tangent kernel (used by kernels.py);
4. the networks: a network is a list of layers (`FC` and `CNN` build them);
5. the losses and the alpha trick: F(w, x) = alpha [f(w, x) - f(w0, x)] and
   L(w) = 1 / (alpha^2 p) sum_mu l(y_mu F(w, x_mu));
6. the integrator of gradient flow dw/dt = -grad L with the paper's adaptive
   time step, generic over the state (kernels.py reuses it);
7. `train`: gradient flow or Adam on a network, with stop rules and records.
"""
import ctypes
import functools
import math
import time
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------
# 1. Backend
# ---------------------------------------------------------------------------


def backend(device="cpu"):
    """The array module `xp` for a device: NumPy for "cpu", CuPy for "gpu"."""
    if device == "cpu":
        return np
    if device != "gpu":
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "device='gpu' needs CuPy, which is not installed: "
            "pip install cupy-cuda12x (or the wheel matching your CUDA), or use device='cpu'"
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(f"device='gpu' but CUDA reports no usable device ({e}); use device='cpu'") from e
    if n == 0:
        raise RuntimeError("device='gpu' but no CUDA device is visible; use device='cpu'")
    return cupy


def keep_freed_memory():
    """Let glibc keep freed memory for reuse: a NumPy speed-up on Linux, run once at import.

    By default glibc serves blocks above 128 KiB with mmap and hands freed memory back
    to the system, so every NumPy temporary of that size (one activation map is 800 KB
    at p = 1000, h = 100) costs fresh page faults: chains of elementwise operations
    ran 3x slower here. Raising the mmap threshold (to 32 MiB) and the trim threshold
    (to 1 GiB) keeps such blocks in the heap. Without glibc it does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


keep_freed_memory()


def array_module(a):
    """NumPy or CuPy, whichever owns the array `a`."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(*scalars):
    """Bring 0-d device arrays (or numbers) to the host as Python floats, in one transfer.

    This is the only place where values cross from the device during a run.
    """
    device_values = [s for s in scalars if not isinstance(s, (int, float))]
    if not device_values:
        return [float(s) for s in scalars]
    xp = array_module(device_values[0])
    stacked = xp.stack([xp.asarray(s, dtype=xp.float64).reshape(()) for s in scalars])
    host = stacked.get() if hasattr(stacked, "get") else stacked
    return [float(v) for v in host]


def check_dtype(dtype):
    """float64 (the default) or float32, as a NumPy dtype."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype must be float64 or float32, got {dtype}")
    return dtype


# ---------------------------------------------------------------------------
# 2. Activations
# ---------------------------------------------------------------------------


def sigmoid(z, xp):
    """1 / (1 + exp(-z)) = exp(-|z|) / (1 + exp(-|z|)) for z < 0: never overflows, accurate in both tails."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0, e) / (1.0 + e)


def softplus(z, beta, xp):
    """log(1 + exp(beta z)) / beta = max(z, 0) + log1p(exp(-beta |z|)) / beta (stable form)."""
    return xp.maximum(z, 0.0) + xp.log1p(xp.exp(-beta * xp.abs(z))) / beta


# Each raw activation maps z to the pair (sigma(z), sigma'(z)): the forward pass keeps
# sigma' for the backward pass, and the two share their expensive parts.


def softplus5_pair(z, xp):
    """sigma = log(1 + exp(5 z)) / 5 = max(z, 0) + log(1 + e) / 5 with e = exp(-5 |z|),
    sigma' = 1 / (1 + exp(-5 z)) = exp(5 (z - sigma)), accurate in both tails.

    Hot code: log(1 + e) rather than log1p(e), because NumPy's log1p is not vectorised
    (about 8x slower); with e <= 1 its absolute error stays below 1e-16, which is all
    that counts next to max(z, 0) and in the O(1) sums of the next layer.
    """
    e = xp.exp(-5.0 * xp.abs(z))
    e += 1.0
    value = xp.log(e)
    value *= 0.2
    value += xp.maximum(z, 0.0)
    slope = z - value
    slope *= 5.0
    return value, xp.exp(slope, out=slope)


def relu_pair(z, xp):
    """sigma = max(z, 0), sigma' = 1 if z > 0 else 0."""
    return xp.maximum(z, 0.0), (z > 0).astype(z.dtype)


def tanh_pair(z, xp):
    """sigma = tanh z, sigma' = 1 - tanh^2 z."""
    t = xp.tanh(z)
    return t, 1.0 - t * t


def swish_pair(z, xp):
    """sigma = z s(z) with s the logistic sigmoid, sigma' = s (1 + z (1 - s))."""
    s = sigmoid(z, xp)
    return z * s, s * (1.0 + z * (1.0 - s))


RAW_ACTIVATIONS = {"softplus": softplus5_pair, "relu": relu_pair, "tanh": tanh_pair, "swish": swish_pair}


@functools.cache
def normalisation(name):
    """c = E_{z ~ N(0,1)}[sigma(z)^2]^(-1/2), by adaptive quadrature (split at z = 0)."""
    from scipy import integrate

    pair = RAW_ACTIVATIONS[name]

    def integrand(z):
        return pair(np.array([z]), np)[0][0] ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    second_moment = sum(integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-13)[0]
                        for a, b in ((-np.inf, 0.0), (0.0, np.inf)))
    return 1.0 / math.sqrt(second_moment)


# ---------------------------------------------------------------------------
# 3. Layers
#
# A layer has `n_params` (how many arrays it owns), `init(rng)` (those arrays,
# drawn on the host), `forward(params, a) -> (out, cache)`,
# `backward_input(params, cache, g)` (the gradient with respect to its input
# given g = d(sum_i g_i f_i)/d(out)) and, when it has parameters,
# `backward_params(params, cache, g)`, `jacobian(params, cache, g)` (the per-sample
# derivatives df(x_n)/dw of its weights) and `ntk(params, cache1, g1, cache2, g2)`,
# its contribution sum_{w in layer} df(x1)/dw df(x2)/dw, computed without forming
# the Jacobian where the layer's structure allows. For the last two, g are the
# per-sample backward signals of f itself (g = 1 at the output).
# ---------------------------------------------------------------------------


class Dense:
    """z = W a / sqrt(fan_in) + bias b, with W of shape (fan_out, fan_in), W_ij ~ N(0, 1).

    The optional bias follows the paper's appendix: b starts at 0 and enters as
    `bias * b` (the paper uses bias = 0.1); bias = 0 means no bias parameter.
    """

    def __init__(self, fan_in, fan_out, bias=0.0):
        self.fan_in, self.fan_out, self.bias = fan_in, fan_out, bias
        self.n_params = 2 if bias else 1

    def init(self, rng):
        W = rng.standard_normal((self.fan_out, self.fan_in))
        return [W, np.zeros(self.fan_out)] if self.bias else [W]

    def forward(self, params, a):
        z = (a @ params[0].T) * (1.0 / math.sqrt(self.fan_in))
        if self.bias:
            z += self.bias * params[1]
        return z, a

    def backward_input(self, params, a, g):
        return (g @ params[0]) * (1.0 / math.sqrt(self.fan_in))

    def backward_params(self, params, a, g):
        dW = (g.T @ a) * (1.0 / math.sqrt(self.fan_in))
        return [dW, self.bias * g.sum(axis=0)] if self.bias else [dW]

    def jacobian(self, params, a, g):
        """Per-sample df/dW_ij = g_i a_j / sqrt(fan_in) (and df/db_i = bias g_i), shape (n, n_weights)."""
        xp = array_module(a)
        dW = (g[:, :, None] * a[:, None, :]).reshape(len(a), -1) * (1.0 / math.sqrt(self.fan_in))
        return xp.concatenate([dW, self.bias * g], axis=1) if self.bias else dW

    def ntk(self, params, a1, g1, a2, g2):
        """Its jacobian(1) jacobian(2)^T without forming them: (A1 A2^T / fan_in + bias^2) * (G1 G2^T)."""
        return (a1 @ a2.T / self.fan_in + self.bias**2) * (g1 @ g2.T)


class Readout:
    """f = W . a / sqrt(h), the scalar output, with W of shape (h,)."""

    n_params = 1

    def __init__(self, h):
        self.h = h

    def init(self, rng):
        return [rng.standard_normal(self.h)]

    def forward(self, params, a):
        return (a @ params[0]) * (1.0 / math.sqrt(self.h)), a

    def backward_input(self, params, a, g):
        return g[:, None] * (params[0] * (1.0 / math.sqrt(self.h)))

    def backward_params(self, params, a, g):
        return [(g @ a) * (1.0 / math.sqrt(self.h))]

    def jacobian(self, params, a, g):
        """Per-sample df/dW_i = g a_i / sqrt(h), shape (n, h)."""
        return g[:, None] * a * (1.0 / math.sqrt(self.h))

    def ntk(self, params, a1, g1, a2, g2):
        """Its jacobian(1) jacobian(2)^T without forming them: (A1 A2^T / h) * (g1 g2^T)."""
        return (a1 @ a2.T / self.h) * (g1[:, None] * g2[None, :])


class Activation:
    """a = c sigma(z), elementwise, with c = normalisation(name); it keeps c sigma'(z) for backward."""

    n_params = 0

    def __init__(self, name):
        if name not in RAW_ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of {sorted(RAW_ACTIVATIONS)}")
        self.name, self.pair, self.c = name, RAW_ACTIVATIONS[name], normalisation(name)

    def init(self, rng):
        return []

    def forward(self, params, z):
        value, slope = self.pair(z, array_module(z))
        value *= self.c
        slope *= self.c
        return value, slope

    def backward_input(self, params, slope, g):
        return g * slope


class ChannelsFirst:
    """(n, C, H, W) images -> (C, n, H, W), the layout every conv layer works in.

    With channels first and samples second, a convolution over the whole batch is
    one matrix product W (out, C*k*k) @ columns (C*k*k, n*positions), and its
    output is already in the layout that the next layer takes. It is always the
    first layer, so it needs no backward pass.
    """

    n_params = 0

    def init(self, rng):
        return []

    def forward(self, params, x):
        return x.transpose(1, 0, 2, 3), None


def conv_output_size(size, k, stride, pad):
    """Positions along one axis: (size + 2 pad - k) // stride + 1."""
    return (size + 2 * pad - k) // stride + 1


def im2col(a, k, stride, pad):
    """(C, n, H, W) -> columns (C*k*k, n*OH*OW).

    Column (n, oh, ow) holds the k x k patch of the zero-padded input whose
    top-left corner is (stride*oh, stride*ow), ordered (c, i, j) like the weights.
    One strided copy per filter offset (i, j): no loop over samples or positions.
    """
    xp = array_module(a)
    C, n, H, W = a.shape
    OH, OW = conv_output_size(H, k, stride, pad), conv_output_size(W, k, stride, pad)
    padded = xp.zeros((C, n, H + 2 * pad, W + 2 * pad), dtype=a.dtype)
    padded[:, :, pad:pad + H, pad:pad + W] = a
    cols = xp.empty((C, k, k, n, OH, OW), dtype=a.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = padded[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride]
    return cols.reshape(C * k * k, n * OH * OW)


class Conv:
    """z = W * a / sqrt(C k^2): a k x k convolution, zero padding `pad`, no bias.

    W has shape (out_ch, in_ch, k, k); activations have the layout (C, n, H, W).
    """

    n_params = 1

    def __init__(self, in_ch, out_ch, stride, k=5, pad=1):
        self.in_ch, self.out_ch, self.stride, self.k, self.pad = in_ch, out_ch, stride, k, pad
        self.fan_in = in_ch * k * k

    def init(self, rng):
        return [rng.standard_normal((self.out_ch, self.in_ch, self.k, self.k))]

    def forward(self, params, a):
        C, n, H, W = a.shape
        cols = im2col(a, self.k, self.stride, self.pad)
        z = (params[0].reshape(self.out_ch, -1) @ cols) * (1.0 / math.sqrt(self.fan_in))
        OH, OW = (conv_output_size(s, self.k, self.stride, self.pad) for s in (H, W))
        return z.reshape(self.out_ch, n, OH, OW), (cols, a.shape)

    def backward_input(self, params, cache, g):
        """The transposed convolution: every output gradient is spread back onto the patch it came from.

        One filter offset (i, j) at a time: W[:, :, i, j]^T g, added onto the strided slice of
        the padded input that the offset touched (no (C k^2, n positions) buffer is formed).
        """
        xp = array_module(g)
        _, (C, n, H, W) = cache
        k, s, pad = self.k, self.stride, self.pad
        OH, OW = g.shape[2:]
        g2 = g.reshape(self.out_ch, -1)
        padded = xp.zeros((C, n, H + 2 * pad, W + 2 * pad), dtype=g.dtype)
        for i in range(k):
            for j in range(k):
                padded[:, :, i:i + s * OH:s, j:j + s * OW:s] += (params[0][:, :, i, j].T @ g2).reshape(C, n, OH, OW)
        return padded[:, :, pad:pad + H, pad:pad + W] * (1.0 / math.sqrt(self.fan_in))

    def backward_params(self, params, cache, g):
        cols, _ = cache
        dW = (g.reshape(self.out_ch, -1) @ cols.T) * (1.0 / math.sqrt(self.fan_in))
        return [dW.reshape(params[0].shape)]

    def jacobian(self, params, cache, g):
        """Per-sample df(x_n)/dW, shape (n, out_ch * in_ch * k * k): sum over positions of g x patch."""
        xp = array_module(g)
        cols, (C, n, H, W) = cache
        g_n = g.reshape(self.out_ch, n, -1).transpose(1, 0, 2)  # (n, out, Q)
        cols_n = cols.reshape(self.fan_in, n, -1).transpose(1, 2, 0)  # (n, Q, C k k)
        return xp.matmul(g_n, cols_n).reshape(n, -1) * (1.0 / math.sqrt(self.fan_in))

    def ntk(self, params, cache1, g1, cache2, g2):
        """J1 J2^T with the layer's per-sample Jacobians, built from its patches."""
        return self.jacobian(params, cache1, g1) @ self.jacobian(params, cache2, g2).T


class GlobalAvgPool:
    """(C, n, H, W) -> (n, C): the average of each channel over positions."""

    n_params = 0

    def init(self, rng):
        return []

    def forward(self, params, a):
        return a.mean(axis=(2, 3)).T, a.shape

    def backward_input(self, params, shape, g):
        C, n, H, W = shape
        xp = array_module(g)
        return xp.broadcast_to((g.T / (H * W))[:, :, None, None], shape)


# ---------------------------------------------------------------------------
# 4. Networks
# ---------------------------------------------------------------------------


class Network:
    """A list of layers applied in order; its parameters are one flat list of arrays.

    `params = net.init(seed)`, `f, cache = net.forward(params, x)` with f of shape
    (n,), and `grads = net.backward(params, cache, g)`, the gradient of
    sum_i g_i f(x_i) with respect to every parameter, shaped like params.
    """

    def __init__(self, layers, name, check_input):
        self.layers = layers
        self.name = name
        self.check_input = check_input
        offsets = np.cumsum([0] + [layer.n_params for layer in layers])
        self.slices = [slice(a, b) for a, b in zip(offsets[:-1], offsets[1:])]
        self.first_trained = next(i for i, layer in enumerate(layers) if layer.n_params)

    def __repr__(self):
        return self.name

    def init(self, seed, device="cpu", dtype="float64"):
        """Weights i.i.d. N(0, 1) from `seed` (drawn on the host, so CPU and GPU agree), biases 0."""
        xp, dtype = backend(device), check_dtype(dtype)
        rng = np.random.default_rng(seed)
        return [xp.asarray(w, dtype=dtype) for layer in self.layers for w in layer.init(rng)]

    def forward(self, params, x):
        """f(w, x) of shape (n,), and the cache (each layer's own) that backward needs."""
        self.check_input(x)
        cache = []
        a = x
        for layer, sl in zip(self.layers, self.slices):
            a, c = layer.forward(params[sl], a)
            cache.append(c)
        return a, cache

    def predict(self, params, x, chunk=2048):
        """f(w, x) by chunks of samples, keeping no cache (for evaluation)."""
        xp = array_module(params[0])
        return xp.concatenate([self.forward(params, x[i:i + chunk])[0] for i in range(0, len(x), chunk)])

    def signals(self, params, cache, g):
        """Yield (i, layer i, its params, its cache, g_out) from the readout down to the first trained layer.

        g_out is the gradient of sum_i g_i f(x_i) with respect to the layer's output;
        with g = 1 it is the per-sample backward signal df(x_i)/d(out_i).
        """
        for i in range(len(self.layers) - 1, self.first_trained - 1, -1):
            layer, p = self.layers[i], params[self.slices[i]]
            yield i, layer, p, cache[i], g
            if i > self.first_trained:
                g = layer.backward_input(p, cache[i], g)

    def backward(self, params, cache, g):
        """The vector-Jacobian product: d(sum_i g_i f(w, x_i))/dw, a list shaped like params."""
        grads = [None] * len(params)
        for i, layer, p, c, g_out in self.signals(params, cache, g):
            if layer.n_params:
                grads[self.slices[i]] = layer.backward_params(p, c, g_out)
        return grads


def check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def FC(d, h, L, act="softplus", bias=0.0):
    """The fully connected net of the paper: z1 = W0 x / sqrt(d), z_{l+1} = W_l sigma(z_l) / sqrt(h),
    f = W_L . sigma(z_L) / sqrt(h): L hidden layers of width h, input dimension d."""
    d, h, L = check_int("d", d), check_int("h", h), check_int("L", L)
    if not (isinstance(bias, (int, float)) and math.isfinite(bias) and bias >= 0):
        raise ValueError(f"bias must be a finite number >= 0 (0 disables biases), got {bias!r}")
    layers = [Dense(d, h, bias), Activation(act)]
    for _ in range(L - 1):
        layers += [Dense(h, h, bias), Activation(act)]
    layers.append(Readout(h))

    def check_input(x):
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"FC(d={d}) expects inputs of shape (n, {d}), got {tuple(x.shape)}; "
                             "flatten images with x.reshape(len(x), -1)")

    return Network(layers, f"FC(d={d}, h={h}, L={L}, act={act!r}, bias={bias})", check_input)


CNN_STRIDES = (2, 1, 2, 1)  # 2 blocks x 2 conv layers; stride 2 opens each block


def cnn_output_size(size):
    """Positions along one axis after the CNN's four conv layers (28 -> 13 -> 11 -> 5 -> 3)."""
    for stride in CNN_STRIDES:
        size = conv_output_size(size, 5, stride, 1)
    return size


def CNN(in_channels, h, act="softplus"):
    """The paper's CNN: 4 conv layers (5x5, padding 1, strides 2, 1, 2, 1) of h channels,
    an activation after each, a global average over positions, then f = W . a / sqrt(h)."""
    in_channels, h = check_int("in_channels", in_channels), check_int("h", h)
    layers = [ChannelsFirst()]
    channels = in_channels
    for stride in CNN_STRIDES:
        layers += [Conv(channels, h, stride), Activation(act)]
        channels = h
    layers += [GlobalAvgPool(), Readout(h)]

    def check_input(x):
        if x.ndim != 4 or x.shape[1] != in_channels:
            raise ValueError(f"CNN(in_channels={in_channels}) expects images of shape (n, {in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if cnn_output_size(min(x.shape[2:])) < 1:
            smallest = next(s for s in range(1, 100) if cnn_output_size(s) >= 1)
            raise ValueError(f"images of {x.shape[2]}x{x.shape[3]} are too small for the CNN's four 5x5 layers; "
                             f"they need at least {smallest}x{smallest} pixels")

    return Network(layers, f"CNN(in_channels={in_channels}, h={h}, act={act!r})", check_input)


# ---------------------------------------------------------------------------
# 5. Losses and the alpha trick
# ---------------------------------------------------------------------------

SOFT_HINGE_BETA = 20.0

# Each loss is a pair (l(z), l'(z)) of the margin z = y F.
LOSSES = {
    "softhinge": (
        lambda z, xp: softplus(1.0 - z, SOFT_HINGE_BETA, xp),
        lambda z, xp: -sigmoid(SOFT_HINGE_BETA * (1.0 - z), xp),
    ),
    "hinge": (lambda z, xp: xp.maximum(1.0 - z, 0.0), lambda z, xp: -(z < 1.0).astype(z.dtype)),
    "qhinge": (lambda z, xp: xp.maximum(1.0 - z, 0.0) ** 2 / 2, lambda z, xp: -xp.maximum(1.0 - z, 0.0)),
}


def check_loss(name):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) \
            or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def check_labels(y, n, what="y"):
    if y.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError(f"{what} must hold labels +1 or -1 only")


@dataclass
class Point:
    """What the integrator needs of the system at one state.

    F: the alpha-scaled predictor on the training points; margins: y F;
    loss: L (its 1/alpha^2 included); grad: dL/dstate, a list shaped like the state.
    """

    F: object
    margins: object
    loss: object
    grad: list = None


def fit_stats(margins, loss_fn):
    """alpha^2 L = mean l(y F), the error (fraction y F <= 0) and how many points have y F < 1."""
    xp = array_module(margins)
    return {"loss": xp.mean(loss_fn(margins, xp)), "err": xp.mean(margins <= 0),
            "unfitted": xp.sum(margins < 1)}


def fit_record(point, loss_fn, test_margins=None):
    """What a checkpoint records of the fit (device scalars): train fit, |F| (RMS), and the test fit."""
    xp = array_module(point.F)
    record = fit_stats(point.margins, loss_fn)
    record["F_rms"] = xp.sqrt(xp.mean(point.F**2))
    if test_margins is not None:
        test = fit_stats(test_margins, loss_fn)
        record.update({"test_loss": test["loss"], "test_err": test["err"]})
    return record


class Objective:
    """L(w) = 1 / (alpha^2 p) sum_mu l(y_mu F(w, x_mu)) with F(w, x) = alpha [f(w, x) - f(w0, x)].

    Its gradient is dL/dw = 1 / (alpha p) sum_mu l'(y_mu F_mu) y_mu df(x_mu)/dw: one
    backward pass with g_mu = l'(y_mu F_mu) y_mu / (alpha p). Samples are taken
    by chunks so that memory stays bounded.
    """

    def __init__(self, net, params0, x, y, alpha, x_test=None, y_test=None,
                 loss="softhinge", subtract_f0=True, chunk=2048):
        self.net, self.params0, self.alpha = net, params0, check_alpha(alpha)
        self.l, self.dl = check_loss(loss)
        self.chunk = check_int("chunk", chunk)
        xp, dtype = array_module(params0[0]), params0[0].dtype
        self.x, self.y = xp.asarray(x, dtype=dtype), xp.asarray(y, dtype=dtype)
        net.check_input(self.x)
        check_labels(self.y, len(self.x))
        self.f0 = net.predict(params0, self.x, self.chunk) if subtract_f0 else xp.zeros_like(self.y)
        self.x_test = self.y_test = None
        if x_test is not None:
            self.x_test, self.y_test = xp.asarray(x_test, dtype=dtype), xp.asarray(y_test, dtype=dtype)
            net.check_input(self.x_test)
            check_labels(self.y_test, len(self.x_test), "y_test")
            self.f0_test = (net.predict(params0, self.x_test, self.chunk) if subtract_f0
                            else xp.zeros_like(self.y_test))

    def evaluate(self, params, idx=None, need_grad=True):
        """F, y F, L and (if asked) dL/dw on the training set, or on its subset `idx` (a mini-batch)."""
        xp = array_module(params[0])
        x, y, f0 = (self.x, self.y, self.f0) if idx is None else (self.x[idx], self.y[idx], self.f0[idx])
        n = len(y)
        F_parts, grad = [], None
        for i in range(0, n, self.chunk):
            f, cache = self.net.forward(params, x[i:i + self.chunk])
            F = self.alpha * (f - f0[i:i + self.chunk])
            F_parts.append(F)
            if need_grad:
                y_c = y[i:i + self.chunk]
                g = self.dl(y_c * F, xp) * y_c * (1.0 / (self.alpha * n))
                g_chunk = self.net.backward(params, cache, g)
                grad = g_chunk if grad is None else [a + b for a, b in zip(grad, g_chunk)]
        F = xp.concatenate(F_parts) if len(F_parts) > 1 else F_parts[0]
        margins = y * F
        return Point(F, margins, xp.mean(self.l(margins, xp)) / self.alpha**2, grad)

    def F_test(self, params):
        """The test predictor alpha [f(w, x_test) - f(w0, x_test)]."""
        return self.alpha * (self.net.predict(params, self.x_test, self.chunk) - self.f0_test)

    def observe(self, params, point):
        """The records of one checkpoint (device scalars): train fit, |F|, test fit, and |w - w0|."""
        xp = array_module(params[0])
        test_margins = None if self.x_test is None else self.y_test * self.F_test(params)
        record = fit_record(point, self.l, test_margins)
        record["w_dist"] = xp.sqrt(sum(xp.sum((w - w0) ** 2) for w, w0 in zip(params, self.params0)))
        return record


# ---------------------------------------------------------------------------
# 6. The integrator
# ---------------------------------------------------------------------------

STATUSES = ("fitted", "time", "wall", "steps", "diverged")


@dataclass
class Run:
    """The outcome of a training run: why it stopped, where it ended, and its records.

    status: "fitted" (every y F >= 1), "time", "wall", "steps" (a limit reached) or
    "diverged" (the output became non-finite). records: one dict per checkpoint
    with host floats (t, dt, step, rejected, wall, loss = alpha^2 L, err,
    unfitted, F_rms, and w_dist, test_err, test_loss where they apply).
    """

    status: str
    state: list
    point: Point
    records: list
    steps_accepted: int
    steps_rejected: int
    t: float
    dt: float
    wall_s: float
    params: list = None
    F_test: object = None
    test_error: float = None

    @property
    def F(self):
        """The predictor on the training points at the end of the run."""
        return self.point.F

    def summary(self):
        """The scalars of the run, as a JSON-ready dict."""
        last = self.records[-1]
        return {"status": self.status, "test_error": self.test_error, "train_error": last["err"],
                "loss": last["loss"], "steps_accepted": self.steps_accepted,
                "steps_rejected": self.steps_rejected, "t": self.t, "dt": self.dt,
                "wall_s": self.wall_s}


class Limits:
    """The stop rules besides "fitted": a time t, a wall-clock budget in seconds, a number of steps."""

    def __init__(self, max_time=math.inf, max_wall=math.inf, max_steps=None):
        for name, value in (("max_time", max_time), ("max_wall", max_wall)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if max_steps is not None:
            check_int("max_steps", max_steps, 0)
        self.max_time, self.max_wall, self.max_steps = max_time, max_wall, max_steps
        self.start = time.perf_counter()

    def wall(self):
        return time.perf_counter() - self.start

    def reached(self, t, steps):
        """The status of a run that must stop now, or None."""
        if t >= self.max_time:
            return "time"
        if self.max_steps is not None and steps >= self.max_steps:
            return "steps"
        if self.wall() >= self.max_wall:
            return "wall"
        return None


def output_status(point):
    """"diverged" if the output is non-finite, "fitted" if every margin y F >= 1, else None."""
    xp = array_module(point.F)
    min_margin, F_max = to_host(xp.min(point.margins), xp.max(xp.abs(point.F)))
    if not math.isfinite(F_max):
        return "diverged"
    return "fitted" if min_margin >= 1 else None


class Recorder:
    """Records at log-spaced steps (0, 1, 2, ..., then `per_decade` per decade) and at the end."""

    def __init__(self, system, limits, per_decade=10, callback=None):
        self.system, self.limits, self.callback = system, limits, callback
        self.growth = 10 ** (1 / check_int("checkpoints", per_decade))
        self.next_step, self.records = 0, []

    def due(self, step):
        return step >= self.next_step

    def record(self, state, point, t, dt, step, rejected):
        """Append one record (one transfer of scalars to the host) and schedule the next."""
        observed = self.system.observe(state, point)
        values = to_host(*observed.values())
        record = {"t": t, "dt": dt, "step": step, "rejected": rejected, "wall": self.limits.wall(),
                  **dict(zip(observed, values))}
        if self.callback is not None:
            record.update(self.callback(state, record) or {})
        self.records.append(record)
        self.next_step = max(step + 1, math.ceil(step * self.growth))

    def finish(self, state, point, t, dt, step, rejected):
        """Record the final state unless the last checkpoint already is it."""
        if self.records[-1]["step"] != step:
            self.record(state, point, t, dt, step, rejected)


def euler_step(state, velocity, grad, dt, tau):
    """One explicit Euler step of dw/dt = -grad L, or with momentum of time constant tau:
    dv/dt = -(v + grad L) / tau, dw/dt = v (v updated first). New arrays: the old state is untouched."""
    if tau == 0:
        return [w - dt * g for w, g in zip(state, grad)], None
    velocity = [v - (dt / tau) * (v + g) for v, g in zip(velocity, grad)]
    return [w + dt * v for w, v in zip(state, velocity)], velocity


def step_change(old, new):
    """dout = max_mu |F_new - F_old| and dgrad = |g_new - g_old|^2 / (|g_old| |g_new|), as device scalars."""
    xp = array_module(old.F)
    dout = xp.max(xp.abs(new.F - old.F))
    diff2 = sum(xp.sum((a - b) ** 2) for a, b in zip(new.grad, old.grad))
    norm_old = xp.sqrt(sum(xp.sum(a**2) for a in old.grad))
    norm_new = xp.sqrt(sum(xp.sum(b**2) for b in new.grad))
    return dout, diff2 / (norm_old * norm_new)


def gradient_flow(system, state, *, max_dgrad=1e-4, max_dout=0.1, dt=1.0, tau=0.0, max_time=math.inf,
                  max_wall=math.inf, max_steps=None, checkpoints=10, callback=None, max_rejections=40):
    """Integrate dstate/dt = -grad with the paper's adaptive explicit Euler rule.

    From the current state take a trial step of size dt, then measure dout and
    dgrad (see `step_change`). Accept if dgrad < max_dgrad and dout < max_dout,
    and if both are below half of their bound, dt *= 1.1. Otherwise reject (keep
    the old state), dt /= 10 and retry. t is the sum of accepted dt; the last step
    is shortened to land exactly on max_time.

    `system` gives `evaluate(state) -> Point` and `observe(state, point) -> dict`.
    The run stops when every margin y F >= 1 ("fitted"), at a limit ("time",
    "wall", "steps"), or "diverged" when the output is non-finite or
    max_rejections trials in a row fail (dt has shrunk 10^max_rejections-fold).
    """
    if not (max_dgrad > 0 and max_dout > 0 and dt > 0 and tau >= 0):
        raise ValueError(f"need max_dgrad > 0, max_dout > 0, dt > 0 and tau >= 0; "
                         f"got {max_dgrad}, {max_dout}, {dt}, {tau}")
    limits = Limits(max_time, max_wall, max_steps)
    recorder = Recorder(system, limits, checkpoints, callback)
    xp = array_module(state[0])
    velocity = [xp.zeros_like(w) for w in state] if tau > 0 else None
    point = system.evaluate(state)
    t, accepted, rejected, streak = 0.0, 0, 0, 0
    status = output_status(point)
    recorder.record(state, point, t, dt, 0, 0)
    while status is None:
        status = limits.reached(t, accepted)
        if status:
            break
        h = min(dt, max_time - t)
        trial_state, trial_velocity = euler_step(state, velocity, point.grad, h, tau)
        trial = system.evaluate(trial_state)
        dout, dgrad, trial_min_margin = to_host(*step_change(point, trial), xp.min(trial.margins))
        if dgrad < max_dgrad and dout < max_dout:
            state, velocity, point = trial_state, trial_velocity, trial
            status = "fitted" if trial_min_margin >= 1 else None
            t = max_time if h < dt else t + h
            accepted += 1
            streak = 0
            if h == dt and dgrad < max_dgrad / 2 and dout < max_dout / 2:
                dt *= 1.1
            if recorder.due(accepted):
                recorder.record(state, point, t, dt, accepted, rejected)
        else:
            rejected += 1
            streak += 1
            dt = h / 10
            if streak >= max_rejections:
                status = "diverged"
    recorder.finish(state, point, t, dt, accepted, rejected)
    return Run(status, state, point, recorder.records, accepted, rejected, t, dt, limits.wall())


# ---------------------------------------------------------------------------
# 7. Training a network
# ---------------------------------------------------------------------------


class _NetworkSystem:
    """The objective seen by the integrator: the state is the list of parameters."""

    def __init__(self, objective):
        self.objective = objective

    def evaluate(self, params):
        return self.objective.evaluate(params)

    def observe(self, params, point):
        return self.objective.observe(params, point)


def minibatches(p, batch_size, rng):
    """Endless (indices, last_of_epoch) pairs: a fresh seeded permutation of the p points every epoch."""
    while True:
        order = rng.permutation(p)
        for i in range(0, p, batch_size):
            yield order[i:i + batch_size], i + batch_size >= p


def adam(objective, params, *, lr=1e-3, batch_size=32, seed=0, max_time=math.inf, max_wall=math.inf,
         max_steps=None, checkpoints=10, callback=None, betas=(0.9, 0.999), eps=1e-8):
    """Adam on mini-batches of the same alpha-scaled loss (as the paper trained its CNNs).

    m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, w <- w - lr m_hat / (sqrt(v_hat) + eps),
    with bias-corrected m_hat, v_hat. The time t is lr x steps. At the end of every
    epoch and at checkpoints the whole training set is evaluated: the run stops
    when it is fitted, or as "diverged" when the output is non-finite.
    """
    batch_size = check_int("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    limits = Limits(max_time, max_wall, max_steps)
    recorder = Recorder(_NetworkSystem(objective), limits, checkpoints, callback)
    xp = array_module(params[0])
    m = [xp.zeros_like(w) for w in params]
    v = [xp.zeros_like(w) for w in params]
    step = 0
    point = objective.evaluate(params, need_grad=False)
    status = output_status(point)
    recorder.record(params, point, 0.0, lr, 0, 0)
    for batch, last_of_epoch in minibatches(len(objective.y), batch_size, np.random.default_rng(seed)):
        status = status or limits.reached(lr * step, step)
        if status:
            break
        step += 1
        grad = objective.evaluate(params, idx=xp.asarray(batch)).grad
        m = [betas[0] * a + (1 - betas[0]) * g for a, g in zip(m, grad)]
        v = [betas[1] * a + (1 - betas[1]) * g**2 for a, g in zip(v, grad)]
        c1, c2 = 1 - betas[0] ** step, 1 - betas[1] ** step
        params = [w - lr * (a / c1) / (xp.sqrt(b / c2) + eps) for w, a, b in zip(params, m, v)]
        if last_of_epoch or recorder.due(step) or limits.reached(lr * step, step):
            point = objective.evaluate(params, need_grad=False)
            status = output_status(point)
            if recorder.due(step):
                recorder.record(params, point, lr * step, lr, step, 0)
    recorder.finish(params, point, lr * step, lr, step, 0)
    return Run(status, params, point, recorder.records, step, 0, lr * step, lr, limits.wall())


def train(net, params0, x, y, alpha, x_test=None, y_test=None, *, method="flow", loss="softhinge",
          subtract_f0=True, max_dgrad=1e-4, max_dout=0.1, dt=1.0, tau=0.0, lr=1e-3, batch_size=32,
          seed=0, max_time=math.inf, max_wall=math.inf, max_steps=None, checkpoints=10,
          callback=None, chunk=2048):
    """Train F(w, x) = alpha [f(w, x) - f(w0, x)] on (x, y) from w0 = params0.

    method "flow": gradient flow dw/dt = -grad L with the paper's adaptive step
    (max_dgrad, max_dout, initial dt, momentum tau); "adam": Adam with lr and
    batch_size. Stops when fitted, at max_time / max_wall (seconds) / max_steps, or
    when diverged. `callback(params, record)` runs at each checkpoint and may return
    a dict of extra fields for the record (e.g. the kernel change).
    Returns a `Run` with run.params, run.F_test and run.test_error (given test data).
    """
    if method not in ("flow", "adam"):
        raise ValueError(f"unknown method {method!r}; choose 'flow' or 'adam'")
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    objective = Objective(net, params0, x, y, alpha, x_test, y_test, loss, subtract_f0, chunk)
    limits = dict(max_time=max_time, max_wall=max_wall, max_steps=max_steps, checkpoints=checkpoints,
                  callback=callback)
    if method == "flow":
        run = gradient_flow(_NetworkSystem(objective), list(params0), max_dgrad=max_dgrad, max_dout=max_dout,
                            dt=dt, tau=tau, **limits)
    else:
        run = adam(objective, list(params0), lr=lr, batch_size=batch_size, seed=seed, **limits)
    run.params = run.state
    if x_test is not None:
        run.F_test = objective.F_test(run.params)
        run.test_error = run.records[-1]["test_err"]
    return run
