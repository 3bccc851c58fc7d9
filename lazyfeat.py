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
   time step, generic over the state (kernels.py reuses it), and the same flow
   by error-controlled Runge-Kutta rules (rk23, rkc, auto), each member of an
   ensemble with its own step, method and stages;
7. `train`: gradient flow or Adam on a network, with stop rules and records
   (the flow moves an FC net's first layer within the span of its data: `DataSpan`).

An ensemble. The paper's findings need many networks of one architecture on one
data set, differing only in their initialisation seed and in alpha. The engine
trains S of them as one computation: every parameter array carries a leading
member axis of S (`net.init([seed_1, ..., seed_S])`), every activation too, and
each member keeps its own alpha, its own adaptive time step, its own records and
its own stop; its checkpoints are observed together with the others'. One
network is the case S = 1 of the same code: `net.init(seed)`
gives arrays without the member axis, and the engine adds and removes it. On the
CPU, `train` splits an ensemble's members over the cores, and the samples of one
large network: machine.py holds how the work is laid on the cores, memory and caches.
"""
import functools
import hashlib
import math
import numbers
import threading
import time
from dataclasses import dataclass

import numpy as np

import machine

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
            f"pip install '{CUPY_WHEEL}' (the wheel with its own CUDA toolkit), or use device='cpu'"
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(f"device='gpu' but CUDA reports no usable device ({e}); check the NVIDIA driver "
                           "(nvidia-smi), or use device='cpu'") from e
    if n == 0:
        raise RuntimeError("device='gpu' but no CUDA device is visible; use device='cpu'")
    first_kernels(cupy)
    return cupy


CUPY_WHEEL = "cupy-cuda12x[ctk]>=14,<15"


@functools.cache
def first_kernels(cupy):
    """Compile and run one elementwise kernel and one matrix product, once per process, so that a
    missing CUDA toolkit or a broken driver fails here, at the start, and not mid-run."""
    try:
        a = cupy.ones((2, 2))
        product = float(((a * 2 + 1) @ a).sum())
    except Exception as e:
        raise RuntimeError(
            f"device='gpu': CuPy could not run a first kernel on the GPU ({type(e).__name__}: {e}). "
            f"Install the CuPy wheel that brings its own CUDA toolkit (pip install '{CUPY_WHEEL}', for a "
            "driver of CUDA 12; cupy-cuda13x[ctk] for CUDA 13) and check the NVIDIA driver (nvidia-smi), "
            "or use device='cpu'") from e
    if product != 24.0:
        raise RuntimeError(f"device='gpu': a first matrix product on the GPU gave {product}, not 24.0: "
                           "check the NVIDIA driver and the CuPy wheel, or use device='cpu'")


def array_module(a):
    """NumPy or CuPy, whichever owns the array `a`."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(*values):
    """Bring device values to the host in one transfer: 0-d arrays (or numbers) as Python
    floats, 1-d arrays (one value per member of an ensemble) as NumPy arrays.

    This is the only place where values cross from the device during a run.
    """
    device_values = [v for v in values if not isinstance(v, numbers.Real)]
    if not device_values:
        return [float(v) for v in values]
    xp = array_module(device_values[0])
    flat = xp.concatenate([xp.asarray(v, dtype=xp.float64).reshape(-1) for v in values])
    host = flat.get() if hasattr(flat, "get") else flat
    out, i = [], 0
    for v in values:
        if getattr(v, "ndim", 0) == 0:
            out.append(float(host[i]))
            i += 1
        else:
            out.append(np.array(host[i:i + v.size]))
            i += v.size
    return out


def check_dtype(dtype):
    """float64 (the default) or float32, as a NumPy dtype."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype must be float64 or float32, got {dtype}")
    return dtype


def check_int(name, value, minimum=1):
    """`value` as an int, or a ValueError that names `name` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def per_member(values, like):
    """Reshape one value per member, shape (S,), to broadcast against an array `like` of shape (S, ...)."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def member_dot(a, b):
    """Each member's dot product of a and b over all their other axes: (S, ...), (S, ...) -> (S,)."""
    S = len(a)
    return array_module(a).einsum("ij,ij->i", a.reshape(S, -1), b.reshape(S, -1))


def add_scaled(w, c, g):
    """w + c g, with c one number per member (S,): one new array, two passes over memory."""
    out = g * per_member(c, g)
    out += w
    return out


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

    Hot code: log(1 + e) rather than log1p(e), because NumPy's log has a vectorised (SIMD)
    loop and its log1p lacks one in some versions (BENCHMARKS.md times both); with e <= 1
    its absolute error stays below 1e-16, which is all that counts next to max(z, 0) and
    in the O(1) sums of the next layer.
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
# ---------------------------------------------------------------------------


class Layer:
    """The layer protocol. Every parameter and every activation has a leading axis of S members.

    The input of the network (x, of shape (n, ...)) is shared by all members; the
    first layer with weights reads it once for all of them, or reads (S, n, ...)
    when each member has its own samples (Adam's mini-batches). A layer has:

    - `shapes()`: the shapes of its parameter arrays for one member, and
      `init(rng)`: those arrays for one member, drawn on the host (W_ij ~ N(0, 1));
    - `forward(params, a) -> (out, cache)`;
    - `backward_input(params, cache, g)`: the gradient with respect to its input, given
      g = d(sum f)/d(out) (not needed of the first trained layer);
    - where it has parameters, `backward_params(params, cache, g)` (the gradients of its
      arrays), `jacobian(params, cache, g)`, the per-sample derivatives df(x_n)/dw of
      shape (S, n, its weight count), and `ntk(params, cache1, g1, cache2, g2)`, its
      contribution sum_{w in layer} df(x1)/dw df(x2)/dw of shape (S, n1, n2), computed
      without forming the Jacobian where the layer's structure allows. For the last two
      g are the per-sample backward signals of f itself (g = 1 at the output).
    """

    def shapes(self):
        return []

    @property
    def n_params(self):
        return len(self.shapes())

    def init(self, rng):
        return [rng.standard_normal(shape) for shape in self.shapes()]


def shared(a, sample_ndim):
    """Whether the input `a` is shared by all members (no member axis): its ndim is that of one sample + 1."""
    return a.ndim == sample_ndim + 1


class Dense(Layer):
    """z = W a / sqrt(fan_in) + bias b, with W of shape (fan_out, fan_in), W_ij ~ N(0, 1).

    The optional bias follows the paper's appendix: b starts at 0 and enters as
    `bias * b` (the paper uses bias = 0.1); bias = 0 means no bias parameter.
    Weights of k < fan_in columns, W[:, :k], on inputs of k features compute what W does on
    those inputs followed by zeros (the training inputs of `DataSpan`); the normalisation
    stays 1 / sqrt(fan_in).
    """

    def __init__(self, fan_in, fan_out, bias=0.0):
        self.fan_in, self.fan_out, self.bias = fan_in, fan_out, bias

    def shapes(self):
        return [(self.fan_out, self.fan_in)] + ([(self.fan_out,)] if self.bias else [])

    def init(self, rng):
        W = rng.standard_normal((self.fan_out, self.fan_in))
        return [W, np.zeros(self.fan_out)] if self.bias else [W]

    def forward(self, params, a):
        """z[s] = a[s] W[s]^T / sqrt(fan_in); a shared input (n, fan_in) is one GEMM against all members' W."""
        W = params[0]
        S, k = len(W), W.shape[-1]
        if shared(a, 1):
            z = (a @ W.reshape(S * self.fan_out, k).T).reshape(len(a), S, self.fan_out).transpose(1, 0, 2)
        else:
            z = a @ W.transpose(0, 2, 1)
        z *= 1.0 / math.sqrt(self.fan_in)
        if self.bias:
            z += self.bias * params[1][:, None, :]
        return z, a

    def backward_input(self, params, a, g):
        return (g @ params[0]) * (1.0 / math.sqrt(self.fan_in))

    def backward_params(self, params, a, g):
        """dW[s] = g[s]^T a[s] / sqrt(fan_in); with a shared input, one GEMM for all members."""
        S, n, k = g.shape[0], g.shape[1], a.shape[-1]
        if shared(a, 1):
            dW = (g.transpose(0, 2, 1).reshape(S * self.fan_out, n) @ a).reshape(S, self.fan_out, k)
        else:
            dW = g.transpose(0, 2, 1) @ a
        dW *= 1.0 / math.sqrt(self.fan_in)
        return [dW, self.bias * g.sum(axis=1)] if self.bias else [dW]

    def jacobian(self, params, a, g):
        """Per-sample df/dW_ij = g_i a_j / sqrt(fan_in) (and df/db_i = bias g_i), shape (S, n, n_weights)."""
        xp = array_module(g)
        S, n = g.shape[:2]
        dW = (g[..., :, None] * a[..., None, :]).reshape(S, n, -1) * (1.0 / math.sqrt(self.fan_in))
        return xp.concatenate([dW, self.bias * g], axis=2) if self.bias else dW

    def ntk(self, params, a1, g1, a2, g2):
        """Its jacobian(1) jacobian(2)^T without forming them: (A1 A2^T / fan_in + bias^2) * (G1 G2^T)."""
        inputs = a1 @ a2.swapaxes(-1, -2) / self.fan_in + self.bias**2
        return inputs * (g1 @ g2.transpose(0, 2, 1))


class Readout(Layer):
    """f = W . a / sqrt(h), the scalar output, with W of shape (h,)."""

    def __init__(self, h):
        self.h = h

    def shapes(self):
        return [(self.h,)]

    def forward(self, params, a):
        return (a @ params[0][:, :, None])[..., 0] * (1.0 / math.sqrt(self.h)), a

    def backward_input(self, params, a, g):
        return g[:, :, None] * (params[0][:, None, :] * (1.0 / math.sqrt(self.h)))

    def backward_params(self, params, a, g):
        return [(g[:, None, :] @ a)[:, 0, :] * (1.0 / math.sqrt(self.h))]

    def jacobian(self, params, a, g):
        """Per-sample df/dW_i = g a_i / sqrt(h), shape (S, n, h)."""
        return g[:, :, None] * a * (1.0 / math.sqrt(self.h))

    def ntk(self, params, a1, g1, a2, g2):
        """Its jacobian(1) jacobian(2)^T without forming them: (A1 A2^T / h) * (g1 g2^T)."""
        return (a1 @ a2.transpose(0, 2, 1) / self.h) * (g1[:, :, None] * g2[:, None, :])


class Activation(Layer):
    """a = c sigma(z), elementwise, with c = normalisation(name); it keeps c sigma'(z) for backward."""

    def __init__(self, name):
        if name not in RAW_ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of {sorted(RAW_ACTIVATIONS)}")
        self.name, self.pair, self.c = name, RAW_ACTIVATIONS[name], normalisation(name)

    def forward(self, params, z):
        value, slope = self.pair(z, array_module(z))
        value *= self.c
        slope *= self.c
        return value, slope

    def backward_input(self, params, slope, g):
        return g * slope


def conv_output_size(size, k, stride, pad):
    """Positions along one axis: (size + 2 pad - k) // stride + 1."""
    return (size + 2 * pad - k) // stride + 1


def blocks(S, n, OH, OW, max_positions):
    """(members, samples, image rows) slices that cover S x n x OH, each block at most max_positions positions.

    A block takes image rows (of OW positions) of one sample, as many as fit (at least one); when
    all OH fit, as many whole samples as fit; when all n fit, as many members as fit.
    """
    rows = max(1, min(OH, max_positions // OW))
    samples = max(1, min(n, max_positions // (OH * OW))) if rows == OH else 1
    members = max(1, min(S, max_positions // (n * OH * OW))) if samples == n else 1
    return [(slice(s, s + members), slice(i, i + samples), slice(r, r + rows))
            for s in range(0, S, members) for i in range(0, n, samples) for r in range(0, OH, rows)]


def pad_positions(a, pad):
    """Zero padding of `pad` on both sides of the two position axes of (..., H, W, C)."""
    xp = array_module(a)
    return xp.pad(a, [(0, 0)] * (a.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)])


def patches(a, taps, stride, tap_stride, out_size):
    """The view (..., OH, OW, kh, kw, C) of a (..., H, W, C): patch[oh, ow, i, j] = a[stride oh + tap_stride i,
    stride ow + tap_stride j]. No copy; with tap_stride 1 each patch row of kw*C numbers is contiguous."""
    xp = array_module(a)
    sh, sw, sc = a.strides[-3:]
    shape = a.shape[:-3] + tuple(out_size) + tuple(taps) + a.shape[-1:]
    strides = a.strides[:-3] + (stride * sh, stride * sw, tap_stride * sh, tap_stride * sw, sc)
    return xp.lib.stride_tricks.as_strided(a, shape, strides)


def column_blocks(view, width):
    """Yield (block, columns) from a patch view: block = (members, samples, rows) as from `blocks`.

    The view is per member, (S, n, OH, OW, kh, kw, C), or shared, (n, OH, OW, kh, kw, C) (its
    blocks then take all members: slice(None)). The columns are the block's patches copied into a
    matrix, one row per position, in the order (i, j, c): (members, nb*rows*OW, kh*kw*C), or
    (nb*rows*OW, kh*kw*C) for a shared view; `width` is the number of columns of the caller's
    product with them.
    """
    xp, shared = array_module(view), view.ndim == 6
    S, n = (1, view.shape[0]) if shared else view.shape[:2]
    (OH, OW), fan_in = view.shape[-5:-3], view.shape[-3] * view.shape[-2] * view.shape[-1]
    for members, samples, rows in blocks(S, n, OH, OW, machine.max_block_positions(xp, fan_in, width)):
        if shared:
            yield (slice(None), samples, rows), view[samples, rows].reshape(-1, fan_in)
        else:
            cols = view[members, samples, rows]
            yield (members, samples, rows), cols.reshape(len(cols), -1, fan_in)


def correlate(view, F, out):
    """out[s, m, oh, ow, :] = sum_{i,j,c} patch[s, m, oh, ow, i, j, c] F[s, (i, j, c), :], F of shape (S, kh*kw*C, O).

    The patch view is per member, (S, n, OH, OW, kh, kw, C), or shared, (n, OH, OW, kh, kw, C). Per
    block, one product columns @ F, batched over the block's members; for a shared view, one
    product with all members' filters side by side, (kh*kw*C, S*O). Returns out, (S, n, OH, OW, O).
    """
    xp = array_module(view)
    S, fan_in, O = F.shape
    shared = view.ndim == 6
    if shared:
        F = xp.ascontiguousarray(F.transpose(1, 0, 2)).reshape(fan_in, S * O)
    for (members, samples, rows), cols in column_blocks(view, F.shape[-1]):
        block = out[members, samples, rows]
        if shared:
            block[...] = (cols @ F).reshape(block.shape[1:4] + (S, O)).transpose(3, 0, 1, 2, 4)
        else:
            block[...] = xp.matmul(cols, F[members]).reshape(block.shape)
    return out


class ChannelsLast(Layer):
    """Images (..., C, H, W) -> (..., H, W, C), the layout every conv layer works in.

    With channels last, the k x k patch of one position is k rows of k C contiguous
    numbers. It is always the first layer, so it needs no backward pass. The shared
    input (n, C, H, W) stays without a member axis: the first Conv multiplies it by
    all members' filters at once.
    """

    def forward(self, params, x):
        return array_module(x).moveaxis(x, -3, -1), None


class Conv(Layer):
    """z = W * a / sqrt(C k^2): a k x k cross-correlation, zero padding `pad` < k, stride `stride`, no bias.

    Per member, W has shape (out_ch, in_ch, k, k), W ~ N(0, 1); the ensemble stacks them to
    (S, out_ch, in_ch, k, k). The input is shared, (n, H, W, C), or per member, (S, n, H, W, C);
    the output is (S, n, OH, OW, out_ch). The cache is the padded input.
    """

    def __init__(self, in_ch, out_ch, stride, k=5, pad=1):
        if not 0 <= pad < k:
            raise ValueError(f"Conv needs 0 <= pad < k (wider padding only adds outputs that see zeros), "
                             f"got pad={pad}, k={k}")
        self.in_ch, self.out_ch, self.stride, self.k, self.pad = in_ch, out_ch, stride, k, pad
        self.fan_in = in_ch * k * k

    def shapes(self):
        return [(self.out_ch, self.in_ch, self.k, self.k)]

    def patches(self, a_pad):
        """The patch view (..., n, OH, OW, k, k, C) of a padded input, OH = (H + 2 pad - k) // stride + 1."""
        out_size = [conv_output_size(size - 2 * self.pad, self.k, self.stride, self.pad) for size in a_pad.shape[-3:-1]]
        return patches(a_pad, (self.k, self.k), self.stride, 1, out_size)

    def filters(self, W):
        """(S, O, C, k, k) -> (S, k*k*C, O) / sqrt(C k^2), the rows ordered (i, j, c) like the columns.

        Made contiguous: OpenBLAS's small-matrix kernels are slower on a transposed operand.
        """
        F = W.transpose(0, 3, 4, 2, 1).reshape(W.shape[0], self.fan_in, self.out_ch) * (1.0 / math.sqrt(self.fan_in))
        return array_module(W).ascontiguousarray(F)

    def forward(self, params, a):
        if a.shape[-1] != self.in_ch:
            raise ValueError(f"Conv(in_ch={self.in_ch}) got inputs with {a.shape[-1]} channels on the last axis; "
                             "conv layers take channels-last activations (..., H, W, C)")
        xp, a_pad, F = array_module(a), pad_positions(a, self.pad), self.filters(params[0])
        view = self.patches(a_pad)
        z = xp.empty((F.shape[0],) + view.shape[-6:-3] + (self.out_ch,), dtype=a.dtype)
        return correlate(view, F, z), a_pad

    def backward_params(self, params, a_pad, g):
        """dW[s] = sum over samples and positions of g[s] (x) patch / sqrt(C k^2): columns^T @ g, block by block."""
        xp = array_module(g)
        S, O, shared = g.shape[0], self.out_ch, a_pad.ndim == 4
        dF = xp.zeros((S, self.fan_in, O), dtype=g.dtype)
        for (members, samples, rows), cols in column_blocks(self.patches(a_pad), S * O if shared else O):
            g_block = g[members, samples, rows]
            if shared:
                g_all = xp.moveaxis(g_block, 0, -2).reshape(len(cols), S * O)
                dF += (cols.T @ g_all).reshape(self.fan_in, S, O).transpose(1, 0, 2)
            else:
                dF[members] += xp.matmul(cols.transpose(0, 2, 1), g_block.reshape(len(g_block), -1, O))
        dF *= 1.0 / math.sqrt(self.fan_in)
        dW = dF.reshape(S, self.k, self.k, self.in_ch, O).transpose(0, 4, 3, 1, 2)
        return [xp.ascontiguousarray(dW)]

    def backward_input(self, params, a_pad, g):
        """The transposed convolution da[y] = sum over (oh, i) with stride oh + i = y + pad of g[oh] W[i] / sqrt(C k^2).

        (Written for one axis; the same holds along both.) It is a convolution too: spread g with
        stride - 1 zeros between positions and k - 1 - pad zeros around them, then correlate at
        stride 1 with the flipped filter W'[i, j, o, c] = W[o, c, k-1-i, k-1-j]. For stride > 1 most
        of the spread is zero, so each phase (y mod stride, x mod stride) of da reads only the taps
        that land on g: every stride-th tap, from the first that does.
        """
        xp = array_module(g)
        S, n, OH, OW, O = g.shape
        k, s, C = self.k, self.stride, self.in_ch
        H, W = (size - 2 * self.pad for size in a_pad.shape[-3:-1])
        edge = k - 1 - self.pad
        spread = xp.zeros((S, n, H + k - 1, W + k - 1, O), dtype=g.dtype)
        spread[:, :, edge:edge + s * (OH - 1) + 1:s, edge:edge + s * (OW - 1) + 1:s] = g
        flipped = params[0][:, :, :, ::-1, ::-1].transpose(0, 3, 4, 1, 2) * (1.0 / math.sqrt(self.fan_in))
        da = xp.zeros((S, n, H, W, C), dtype=g.dtype)
        for ry in range(min(s, H)):
            for rx in range(min(s, W)):
                i0, j0 = (edge - ry) % s, (edge - rx) % s
                taps = flipped[:, i0::s, j0::s]
                if taps.size:
                    out_size = (len(range(ry, H, s)), len(range(rx, W, s)))
                    view = patches(spread[:, :, ry + i0:, rx + j0:], taps.shape[1:3], s, s, out_size)
                    correlate(view, xp.ascontiguousarray(taps).reshape(S, -1, C), da[:, :, ry::s, rx::s])
        return da

    def patch_jacobian(self, a_pad, g):
        """Per-sample df(x_m)/dW[s] = sum over positions of g (x) patch, shape (S, n, O, k*k*C), in patch order (i, j, c)."""
        xp = array_module(g)
        S, n, OH, OW, O = g.shape
        J = xp.zeros((S, n, O, self.fan_in), dtype=g.dtype)
        for (members, samples, rows), cols in column_blocks(self.patches(a_pad), O):
            g_block = g[members, samples, rows]
            positions = g_block.shape[2] * OW
            cols = cols.reshape(cols.shape[:-2] + (-1, positions, self.fan_in))
            g_T = xp.ascontiguousarray(g_block.reshape(g_block.shape[:2] + (positions, O)).transpose(0, 1, 3, 2))
            J[members, samples] += xp.matmul(g_T, cols)
        J *= 1.0 / math.sqrt(self.fan_in)
        return J

    def jacobian(self, params, a_pad, g):
        """Per-sample df(x_m)/dW[s], shape (S, n, O*C*k*k), in the order of W[s].ravel()."""
        S, n, O = g.shape[0], g.shape[1], self.out_ch
        J = self.patch_jacobian(a_pad, g).reshape(S, n, O, self.k, self.k, self.in_ch)
        return J.transpose(0, 1, 2, 5, 3, 4).reshape(S, n, -1)

    def ntk(self, params, a_pad1, g1, a_pad2, g2):
        """Its contribution J1 J2^T per member, (S, n1, n2); the order of the weights does not matter here."""
        xp = array_module(g1)
        S = g1.shape[0]
        J1 = self.patch_jacobian(a_pad1, g1).reshape(S, g1.shape[1], -1)
        J2 = J1 if (a_pad2 is a_pad1 and g2 is g1) else self.patch_jacobian(a_pad2, g2).reshape(S, g2.shape[1], -1)
        return xp.matmul(J1, J2.transpose(0, 2, 1))


class GlobalAvgPool(Layer):
    """(S, n, H, W, C) -> (S, n, C): the average of each channel over positions."""

    def forward(self, params, a):
        return a.mean(axis=(-3, -2)), a.shape

    def backward_input(self, params, shape, g):
        H, W = shape[-3:-1]
        return array_module(g).broadcast_to((g / (H * W))[..., None, None, :], shape)


# ---------------------------------------------------------------------------
# 4. Networks
# ---------------------------------------------------------------------------


CHUNK = 2048  # samples per forward and backward pass: memory is bounded by it


class Network:
    """A list of layers applied in order; its parameters are one flat list of arrays.

    `params = net.init(seed)` for one network, `net.init([seed_1, ..., seed_S])` for
    an ensemble (every array gets a leading axis of S members). `f, cache =
    net.forward(params, x)` gives f of shape (n,) for one network and (S, n) for an
    ensemble, and `grads = net.backward(params, cache, g)` the gradient of
    sum_i g_i f(x_i) with respect to every parameter, shaped like params.
    """

    def __init__(self, layers, name, check_input, sample_ndim):
        self.layers, self.name = layers, name
        self.check_input, self.sample_ndim = check_input, sample_ndim
        offsets = np.cumsum([0] + [layer.n_params for layer in layers])
        self.slices = [slice(a, b) for a, b in zip(offsets[:-1], offsets[1:])]
        self.first_trained = next(i for i, layer in enumerate(layers) if layer.n_params)
        self.member_ndim = len(layers[self.first_trained].shapes()[0])

    def __repr__(self):
        return self.name

    def init(self, seeds, device="cpu", dtype="float64"):
        """Weights i.i.d. N(0, 1) from each seed (drawn on the host, so CPU and GPU agree), biases 0.

        seeds: an int for one network, or a list of S ints for an ensemble whose
        member s equals init(seeds[s]) exactly.
        """
        xp, dtype = backend(device), check_dtype(dtype)
        if isinstance(seeds, numbers.Integral):
            return [xp.asarray(w, dtype=dtype) for w in self.draw(seeds)]
        seeds = list(seeds)
        if not seeds:
            raise ValueError("an empty ensemble: give at least one seed")
        members = [self.draw(seed) for seed in seeds]
        return [xp.asarray(np.stack(arrays), dtype=dtype) for arrays in zip(*members)]

    def draw(self, seed):
        """One member's weights, on the host, from its seed."""
        rng = np.random.default_rng(check_int("seed", seed, 0))
        return [w for layer in self.layers for w in layer.init(rng)]

    def members(self, params):
        """(params with the member axis, whether they were one network): one network becomes S = 1."""
        single = params[0].ndim == self.member_ndim
        return ([w[None] for w in params] if single else list(params)), single

    def forward(self, params, x):
        """f(w, x) and the cache (each layer's own) that backward needs.

        x of shape (n, ...) is shared by all members; (S, n, ...) gives each member its own samples.
        """
        self.check_input(x[0] if x.ndim == self.sample_ndim + 2 else x)
        params, single = self.members(params)
        cache, a = [], x
        for layer, sl in zip(self.layers, self.slices):
            a, c = layer.forward(params[sl], a)
            cache.append(c)
        return (a[0] if single else a), cache

    def predict(self, params, x, chunk=CHUNK, cores=1):
        """f(w, x) by parts of samples (`machine.sample_parts`) on `cores` cores, keeping no cache (for evaluation)."""
        xp = array_module(params[0])
        parts = machine.sample_parts(len(x), chunk, cores)
        f = machine.in_parallel(lambda part: self.forward(params, x[part])[0], parts, cores)
        return xp.concatenate(f, axis=-1)

    def signals(self, params, cache, g):
        """Yield (i, layer i, its params, its cache, g_out) from the readout down to the first trained layer.

        params have the member axis; g_out is the gradient of sum_i g_i f(x_i) with
        respect to the layer's output; with g = 1 it is the per-sample backward signal
        df(x_i)/d(out_i).
        """
        for i in range(len(self.layers) - 1, self.first_trained - 1, -1):
            layer, p = self.layers[i], params[self.slices[i]]
            yield i, layer, p, cache[i], g
            if i > self.first_trained:
                g = layer.backward_input(p, cache[i], g)

    def backward(self, params, cache, g):
        """The vector-Jacobian product: d(sum_i g_i f(w, x_i))/dw, a list shaped like params."""
        params, single = self.members(params)
        grads = [None] * len(params)
        for i, layer, p, c, g_out in self.signals(params, cache, g[None] if single else g):
            if layer.n_params:
                grads[self.slices[i]] = layer.backward_params(p, c, g_out)
        return [w[0] for w in grads] if single else grads

    def activation_bytes(self, params, x, n):
        """The bytes of one member's widest activation (one layer's output) on n samples."""
        member = [w[:1] for w in self.members(params)[0]]
        _, cache = self.forward(member, x[:1])
        per_member = [c for c in cache if getattr(c, "ndim", 0) == self.sample_ndim + 2]
        return n * max(nbytes(c) for c in per_member)

    def cache_bytes(self, params, x, n):
        """The bytes of one member's forward cache on n samples, measured on one sample."""
        member = [w[:1] for w in self.members(params)[0]]
        _, cache = self.forward(member, x[:1])
        return n * nbytes(cache)

    def bytes_per_member(self, params, x, n):
        """About the memory one member needs to train on n samples at a time, in bytes: its
        forward cache twice over (the backward pass's temporaries), plus ten copies of its
        weights (the state, a trial step, their gradients, w0, and the momentum or Adam's moments).
        """
        return 2 * self.cache_bytes(params, x, n) + 10 * sum(nbytes(w[0]) for w in self.members(params)[0])


def nbytes(value):
    """The bytes of the arrays in `value` (an array, or lists and tuples of them)."""
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return getattr(value, "nbytes", 0)


def available_memory(xp):
    """The bytes free for arrays: CuPy's free device memory, or the host's MemAvailable (Linux)."""
    if xp is not np:
        return machine.free_gpu_memory(xp)
    try:
        with open("/proc/meminfo") as file:
            fields = dict(line.split(":", 1) for line in file)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return math.inf


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

    return Network(layers, f"FC(d={d}, h={h}, L={L}, act={act!r}, bias={bias})", check_input, 1)


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
    layers = [ChannelsLast()]
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

    return Network(layers, f"CNN(in_channels={in_channels}, h={h}, act={act!r})", check_input, 3)


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
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def check_alphas(alpha, S):
    """One alpha per member, as a host array (S,): a number is shared by all S members."""
    if isinstance(alpha, numbers.Real):
        return np.full(S, check_alpha(alpha))
    alphas = [check_alpha(a) for a in alpha]
    if not alphas:
        raise ValueError("an empty ensemble: alpha is an empty sequence; give one alpha per network")
    if len(alphas) != S:
        raise ValueError(f"seeds and alphas of different lengths: {S} networks (seeds) but {len(alphas)} values "
                         "of alpha; give one alpha per network, or one number for all")
    return np.array(alphas)


def check_labels(y, n, what="y"):
    if y.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError(f"{what} must hold labels +1 or -1 only")


@dataclass
class Point:
    """What the integrator needs of the system at one state, one row per member.

    F: the alpha-scaled predictor on the training points (S, p); margins: y F;
    loss: L (its 1/alpha^2 included), shape (S,); grad: dL/dstate, a list shaped like the state.
    """

    F: object
    margins: object
    loss: object
    grad: list = None
    grad2: object = None

    def take(self, idx):
        """The point of the members idx (an index array, or an int for one member without the member axis)."""
        return Point(self.F[idx], self.margins[idx], self.loss[idx],
                     None if self.grad is None else [g[idx] for g in self.grad],
                     None if self.grad2 is None else self.grad2[idx])

    def grad_norm2(self):
        """|grad|^2 per member, (S,): computed once, then kept."""
        if self.grad2 is None:
            self.grad2 = sum(member_dot(g, g) for g in self.grad)
        return self.grad2


def error_of(margins):
    """Per member, the error: the fraction of points with y F <= 0."""
    return array_module(margins).mean(margins <= 0, axis=-1)


def fit_stats(margins, loss_fn):
    """Per member: alpha^2 L = mean l(y F), the error (fraction y F <= 0), how many points have y F < 1."""
    xp = array_module(margins)
    return {"loss": xp.mean(loss_fn(margins, xp), axis=-1), "err": error_of(margins),
            "unfitted": xp.sum(margins < 1, axis=-1)}


def fit_record(point, loss_fn, test_margins=None):
    """What a checkpoint records of the fit, per member: train fit, |F| (RMS), and the test fit."""
    xp = array_module(point.F)
    record = fit_stats(point.margins, loss_fn)
    record["F_rms"] = xp.sqrt(xp.mean(point.F**2, axis=-1))
    if test_margins is not None:
        test = fit_stats(test_margins, loss_fn)
        record.update({"test_loss": test["loss"], "test_err": test["err"]})
    return record


class Objective:
    """L(w) = 1 / (alpha^2 p) sum_mu l(y_mu F(w, x_mu)) with F(w, x) = alpha [f(w, x) - f(w0, x)].

    Its gradient is dL/dw = 1 / (alpha p) sum_mu l'(y_mu F_mu) y_mu df(x_mu)/dw: one
    backward pass with g_mu = l'(y_mu F_mu) y_mu / (alpha p). For an ensemble every
    member has its own w0 and alpha, and everything is computed for all members at
    once. Samples are taken by parts so that memory stays bounded, and on the CPU
    `cores` parts are computed at once (`split` sets it; `train` calls it).
    `frozen` (S, fan_out, d - k): the first layer's weights for the input features that
    the training inputs lack (all zero there, `DataSpan`), held fixed; the test inputs
    have every feature, and the test predictor reads them.
    test_along: observe the test set at every checkpoint (`observe`), or only at the end of a run (the
    Run's F_test and test_error): a pass over the test set is often the dearest part of a checkpoint.
    """

    def __init__(self, net, params0, x, y, alpha, x_test=None, y_test=None,
                 loss="softhinge", subtract_f0=True, chunk=CHUNK, frozen=None, test_along=True):
        self.net, self.frozen, self.test_along = net, frozen, test_along
        self.params0, self.single = net.members(params0)
        self.l, self.dl = check_loss(loss)
        self.chunk, self.cores = check_int("chunk", chunk), 1
        xp, dtype = array_module(params0[0]), params0[0].dtype
        S = len(self.params0[0])
        self.alpha = xp.asarray(check_alphas(alpha, S), dtype=dtype)[:, None]
        self.x, self.y = xp.asarray(x, dtype=dtype), xp.asarray(y, dtype=dtype)
        net.check_input(self.x)
        check_labels(self.y, len(self.x))
        self.f0 = self.initial(self.params0, self.x, subtract_f0)
        self.x_test = self.y_test = None
        if x_test is not None:
            self.x_test, self.y_test = xp.asarray(x_test, dtype=dtype), xp.asarray(y_test, dtype=dtype)
            net.check_input(self.x_test)
            check_labels(self.y_test, len(self.x_test), "y_test")
            self.f0_test = self.initial(self.complete(self.params0), self.x_test, subtract_f0)

    def initial(self, params0, x, subtract_f0):
        """f(w0, x) of every member, (S, n), or zeros when f(w0) is kept in F (the appendix's alpha f)."""
        if subtract_f0:
            return self.net.predict(params0, x, self.chunk, self.cores)
        return array_module(x).zeros((len(params0[0]), len(x)), dtype=x.dtype)

    def complete(self, params):
        """The parameters (member axis first) for inputs of every feature: the frozen columns appended."""
        if self.frozen is None:
            return params
        return [array_module(params[0]).concatenate([params[0], self.frozen], axis=-1)] + list(params[1:])

    def split(self, cores, n):
        """Compute passes over n samples on `cores` cores where that pays (`machine.sample_cores`), else on one."""
        self.cores = machine.sample_cores(self.net, self.params0, self.x, n, cores)

    def take(self, idx):
        """The objective of the members idx (an index array) only."""
        part = Objective.__new__(Objective)
        part.__dict__.update(self.__dict__)
        part.params0 = [w[idx] for w in self.params0]
        part.alpha, part.f0 = self.alpha[idx], self.f0[idx]
        part.frozen = None if self.frozen is None else self.frozen[idx]
        if self.x_test is not None:
            part.f0_test = self.f0_test[idx]
        return part

    def evaluate(self, params, idx=None, need_grad=True):
        """F, y F, L and (if asked) dL/dw on the training set, or on the mini-batches idx (S, batch), one per member."""
        params, single = self.net.members(params)
        xp = array_module(params[0])
        if idx is None:
            x, y, f0 = self.x, self.y[None, :], self.f0
        else:
            x, y, f0 = self.x[idx], self.y[idx], xp.take_along_axis(self.f0, idx, axis=1)
        n = y.shape[1]

        def part(sl):
            """F on the samples sl, and (if asked) their terms of dL/dw."""
            f, cache = self.net.forward(params, x[sl] if idx is None else x[:, sl])
            F = self.alpha * (f - f0[:, sl])
            if not need_grad:
                return F, None
            y_part = y[:, sl]
            g = self.dl(y_part * F, xp) * y_part * (1.0 / (self.alpha * n))
            return F, self.net.backward(params, cache, g)

        F_parts, grad, parts = [], None, machine.sample_parts(n, self.chunk, self.cores)
        for first in range(0, len(parts), self.cores):
            for F, g_part in machine.in_parallel(part, parts[first:first + self.cores], self.cores):
                F_parts.append(F)
                if need_grad:
                    grad = g_part if grad is None else [a + b for a, b in zip(grad, g_part)]
        F = xp.concatenate(F_parts, axis=1) if len(F_parts) > 1 else F_parts[0]
        margins = y * F
        point = Point(F, margins, xp.mean(self.l(margins, xp), axis=1) / self.alpha[:, 0] ** 2, grad)
        return point.take(0) if single else point

    def test_predictor(self, params):
        """The test predictor alpha [f(w, x_test) - f(w0, x_test)] of every member (S, n_test), or None."""
        if self.x_test is None:
            return None
        return self.alpha * (self.net.predict(self.complete(params), self.x_test, self.chunk, self.cores) - self.f0_test)

    def observe(self, params, point):
        """The records of one checkpoint, one device value per member: train fit, |F|, |w - w0|, and the
        test fit where the test set is observed along the run (test_along)."""
        xp = array_module(params[0])
        F_test = self.test_predictor(params) if self.test_along else None
        record = fit_record(point, self.l, None if F_test is None else self.y_test * F_test)
        record["w_dist"] = xp.sqrt(sum(member_dot(d, d) for d in (w - w0 for w, w0 in zip(params, self.params0))))
        return record


# ---------------------------------------------------------------------------
# 6. The integrator
# ---------------------------------------------------------------------------

STATUSES = ("fitted", "time", "wall", "steps", "diverged")


@dataclass
class Run:
    """The outcome of one training run: why it stopped, where it ended, and its records.

    status: "fitted" (every y F >= 1), "time", "wall", "steps" (a limit reached) or
    "diverged" (the output became non-finite). state: the parameters of a network
    (also `params`), or the predictor of a kernel run. records: one dict per
    checkpoint with host floats (t, dt, step, rejected, wall, loss = alpha^2 L, err,
    unfitted, F_rms, and w_dist, test_err, test_loss where they apply). F_test and
    test_error: the test predictor and its error, given test data. integrator: the step rule
    of the flow ("paper", "rk23", "rkc", "auto"; "adam" for Adam); evaluations: the evaluations
    of the system it made (rejected trials, stage values and estimates included).
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
    F_test: object = None
    test_error: float = None
    integrator: str = "paper"
    evaluations: int = 0

    @property
    def params(self):
        """The parameters of a network run at its end."""
        return self.state

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
                "wall_s": self.wall_s, "integrator": self.integrator, "evaluations": self.evaluations}


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


def output_extremes(point):
    """Per member, on the device: the smallest margin y F and the largest |F|."""
    xp = array_module(point.F)
    return xp.min(point.margins, axis=1), xp.max(xp.abs(point.F), axis=1)


def status_of(min_margin, F_max):
    """Per member, from its `output_extremes` on the host: "diverged" if its output is non-finite, "fitted" if
    every margin y F >= 1, else None."""
    return ["diverged" if not math.isfinite(f) else "fitted" if m >= 1 else None for m, f in zip(min_margin, F_max)]


class Recorder:
    """One member's records: at steps 0, 1, 2, ..., then `per_decade` per decade, and at the end."""

    def __init__(self, per_decade=10):
        self.growth = 10 ** (1 / check_int("checkpoints", per_decade))
        self.next_step, self.records = 0, []

    def due(self, step):
        return step >= self.next_step

    def add(self, record):
        self.records.append(record)
        self.next_step = max(record["step"] + 1, math.ceil(record["step"] * self.growth))


class TimeRecorder:
    """One member's records on a schedule in t: at t = 0, at the end of the first step (t = start), then
    `per_decade` per decade of t (start 10^(1/per_decade), ...), and at the end. next_t: the time of the next
    record, None for the end of the next step. The step rules with dense output use it."""

    def __init__(self, per_decade=10):
        self.per_decade, self.start = check_int("checkpoints", per_decade), None
        self.next_t, self.records = 0.0, []

    def add(self, record):
        self.records.append(record)
        t = record["t"]
        if self.start is None:
            self.start = t if t > 0 else None
            self.next_t = None if t == 0 else t * 10 ** (1 / self.per_decade)
            return
        k = max(0, math.floor(self.per_decade * math.log10(t / self.start)))
        while self.start * 10 ** (k / self.per_decade) <= t:
            k += 1
        self.next_t = self.start * 10 ** (k / self.per_decade)


def one_per_member(value, S, what):
    """A list of S values: `value` itself if it is a sequence of S (one per member), else S times value."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * S
    if len(values) != S:
        raise ValueError(f"give one {what} per network, or one for all: {S} networks but {len(values)} {what}s")
    return values


def choose(mask, new, old):
    """Per member, the new array where mask is true and the old one elsewhere."""
    xp = array_module(old[0])
    return [xp.where(per_member(mask, o), n, o) for n, o in zip(new, old)]


@dataclass
class Checkpoints:
    """Checkpoints taken and not yet observed (`Ensemble.record`): the members' ids, their records (the host
    fields so far), and their state and point on the device, at the rows `rows` of these arrays (None: all)."""

    ids: np.ndarray
    records: list
    state: list
    point: Point
    rows: list = None

    def arrays(self):
        """[*state, F, margins, loss], one row per checkpoint."""
        arrays = [*self.state, self.point.F, self.point.margins, self.point.loss]
        if self.rows is None:
            return arrays
        idx = array_module(arrays[0]).asarray(self.rows, dtype=np.int64)
        return [a[idx] for a in arrays]


class Ensemble:
    """The members of a run that are still going, and what each member leaves behind.

    It holds the system, the state, the current point and the `carried` arrays
    (momentum, Adam's moments) of the running members only: a member that stops
    is dropped from all of them and costs nothing from then on. Each running
    member has its own clock on the host (t, dt, accepted and rejected steps),
    its own records and, once stopped, its own Run.

    Checkpoints are observed together: a member's checkpoint waits on the device
    (`record`) until a waiting member is due again, the last member stops, or a
    step rule asks (`flush`); then one pass observes them all and one transfer
    brings them to the host, with the test errors of the members stopped since
    the last. Members drift apart through their rejected steps, yet
    the checkpoints of an ensemble of any size cost at most about one transfer per
    checkpoint of one member's schedule, and every record, callback and Run is that
    of an immediate observation (the callbacks run later, in each member's order).
    """

    def __init__(self, system, state, point, limits, checkpoints, callback, carried=(), integrator="paper",
                 in_t=False):
        S = len(state[0])
        self.system, self.state, self.point, self.carried = system, list(state), point, list(carried)
        self.limits, self.integrator = limits, integrator
        self.ids = np.arange(S)
        self.t, self.dt, self.rho = np.zeros(S), np.zeros(S), np.zeros(S)
        self.steps, self.rejected, self.streak = (np.zeros(S, dtype=int) for _ in range(3))
        self.evaluations, self.stiff, self.since = np.ones(S, dtype=int), np.zeros(S, dtype=bool), np.zeros(S, dtype=int)
        self.recorders = [TimeRecorder(checkpoints) if in_t else Recorder(checkpoints) for _ in range(S)]
        self.callbacks = one_per_member(callback, S, "callback")
        self.runs = [None] * S
        self.everyone, self.pending = system, []  # the system of all S members observes the pending checkpoints
        self.errors = []  # (ids, test error on the device) of stopped members, fetched with the next checkpoints

    def __len__(self):
        return len(self.ids)

    def subset(self, pos):
        """(system, state, point) of the running members at positions pos."""
        if len(pos) == len(self.ids):
            return self.system, self.state, self.point
        idx = array_module(self.state[0]).asarray(pos, dtype=np.int64)
        return self.system.take(idx), [w[idx] for w in self.state], self.point.take(idx)

    def fields(self, i, t):
        """The host fields of a record of the member at position i, at time t."""
        return {"t": float(t), "dt": float(self.dt[i]), "step": int(self.steps[i]),
                "rejected": int(self.rejected[i]), "wall": self.limits.wall()}

    def record(self, pos, at=None):
        """Take a checkpoint of the members at positions pos, to be observed with others (`flush`).

        Its record gets its host fields (t, dt, step, rejected, wall) and its place in the member's records
        now, and the member's recorder sets its next checkpoint now: the schedule is that of an immediate
        record. The member's state and point wait on the device, one pending copy per member at most: a
        member due again flushes every pending checkpoint, its new one included.
        at: (state, point, t) of those members, where they are recorded between two steps (dense output)."""
        if not len(pos):
            return
        pos = np.asarray(pos, dtype=np.int64)
        again = not self.pending_ids().isdisjoint(self.ids[pos])
        if at is not None:
            state, point, times = at
        else:
            state, point, times = self.state, self.point, self.t[pos]
            if len(pos) < len(self):
                idx = array_module(state[0]).asarray(pos, dtype=np.int64)
                state, point = [w[idx] for w in state], Point(point.F[idx], point.margins[idx], point.loss[idx])
        self.wait(Checkpoints(self.ids[pos], [self.fields(i, t) for i, t in zip(pos, times)], state, point))
        if again:
            self.flush()

    def wait(self, checkpoints):
        """Add the checkpoints to their members' records and to those waiting to be observed."""
        for s, record in zip(checkpoints.ids, checkpoints.records):
            self.recorders[s].add(record)
        point = checkpoints.point
        checkpoints.point = Point(point.F, point.margins, point.loss)  # what `observe` reads: no gradient held
        self.pending.append(checkpoints)

    def pending_ids(self):
        """The members with a checkpoint waiting to be observed."""
        return {s for checkpoints in self.pending for s in checkpoints.ids}

    def flush(self, point=None):
        """Observe every pending checkpoint: one `system.observe` of their rows stacked, one transfer to the
        host; then complete each record and call its member's callback with the member's state at that
        checkpoint, in the order the checkpoints were taken. Given `point` (of the running members), also
        return their statuses (`status_of` their `output_extremes`), fetched in the same transfer."""
        pending, self.pending = self.pending, []
        errors, self.errors = self.errors, []
        extremes = [] if point is None else list(output_extremes(point))
        if not pending and not errors and not extremes:
            return None
        observed = {}
        if pending:
            ids = np.concatenate([checkpoints.ids for checkpoints in pending])
            arrays = pending[0].arrays() if len(pending) == 1 else [
                array_module(rows[0]).concatenate(rows) for rows in zip(*(c.arrays() for c in pending))]
            *state, F, margins, loss = arrays
            system = self.everyone
            if not np.array_equal(ids, np.arange(len(self.runs))):
                system = system.take(array_module(F).asarray(ids, dtype=np.int64))
            observed = system.observe(state, Point(F, margins, loss))
        values = to_host(*observed.values(), *(error for _, error in errors), *extremes)
        for (ids, _), error in zip(errors, values[len(observed):]):
            for s, e in zip(ids, error):
                self.runs[s].test_error = float(e)
        k = 0
        for checkpoints in pending:
            for s, record in zip(checkpoints.ids, checkpoints.records):
                record.update({name: float(v[k]) for name, v in zip(observed, values)})
                if self.callbacks[s] is not None:
                    record.update(self.callbacks[s]([w[k] for w in state], record) or {})
                k += 1
        return None if point is None else status_of(*values[len(observed) + len(errors):])

    def start(self):
        """The first checkpoint of every member and the members already fitted or diverged: one transfer."""
        self.record(range(len(self)))
        self.stop(self.flush(self.point))

    def going(self):
        """Stop the members at a limit (time, steps, wall); whether any member is still going."""
        self.stop([self.limits.reached(t, steps) for t, steps in zip(self.t, self.steps)])
        return len(self) > 0

    def record_due(self, pos):
        """Record those of the members at positions pos whose checkpoint is due."""
        self.record([i for i in pos if self.recorders[self.ids[i]].due(self.steps[i])])

    def stop(self, statuses):
        """Finish the members whose status is not None and drop them: a final checkpoint where their last one
        is not at their t (it waits on the rows that their Run keeps), and their Run, with its test
        predictor F_test. Its records and its test_error (the error of F_test, on the device until then) are
        complete once the checkpoints are observed: at the latest when the last member stops."""
        pos = [i for i, status in enumerate(statuses) if status]
        if not pos:
            return
        system, state, point = self.subset(pos)
        final = [k for k, i in enumerate(pos) if self.recorders[self.ids[i]].records[-1]["t"] != self.t[i]]
        if final:
            at = [pos[k] for k in final]
            self.wait(Checkpoints(self.ids[at], [self.fields(i, self.t[i]) for i in at], state, point,
                                  None if len(final) == len(pos) else final))
        F_test = system.test_predictor(state)
        if F_test is not None:
            self.errors.append((self.ids[pos], error_of(system.y_test * F_test)))
        for k, i in enumerate(pos):
            records = self.recorders[self.ids[i]].records
            self.runs[self.ids[i]] = Run(
                statuses[i], [w[k] for w in state], point.take(k), records, int(self.steps[i]),
                int(self.rejected[i]), float(self.t[i]), float(self.dt[i]), self.limits.wall(),
                None if F_test is None else F_test[k], None, self.integrator,
                int(self.evaluations[i]))
        self.keep([i for i, status in enumerate(statuses) if not status])
        if not len(self):
            self.flush()

    def keep(self, pos):
        """Keep only the running members at positions pos."""
        if not pos:
            self.ids = self.ids[:0]
            return
        idx = array_module(self.state[0]).asarray(pos, dtype=np.int64)
        self.system, self.state, self.point = self.subset(pos)
        self.carried = [[w[idx] for w in arrays] for arrays in self.carried]
        for name in ("ids", "t", "dt", "rho", "steps", "rejected", "streak", "evaluations", "stiff", "since"):
            setattr(self, name, getattr(self, name)[pos])

    def accept(self, ok, state, point, carried):
        """Take the trial state, point and carried arrays of the members where ok; keep the others' (rejected)."""
        if ok.all():
            self.state, self.point, self.carried = state, point, carried
        elif ok.any():
            mask = array_module(self.state[0]).asarray(ok)
            self.state = choose(mask, state, self.state)
            F, margins, loss, grad2, *grad = choose(
                mask, [point.F, point.margins, point.loss, point.grad_norm2(), *point.grad],
                [self.point.F, self.point.margins, self.point.loss, self.point.grad_norm2(), *self.point.grad])
            self.point = Point(F, margins, loss, grad, grad2)
            self.carried = [choose(mask, new, old) for new, old in zip(carried, self.carried)]

    def advance(self, ok, t, state, point, carried):
        """The members where ok accept their trial (`accept`): they move to it, at time t, one more accepted
        step. The others reject it: they stay, one more rejected step, one more in a row (streak). Each
        member made one more evaluation of the system."""
        self.accept(ok, state, point, carried)
        self.t = np.where(ok, t, self.t)
        self.steps, self.rejected = self.steps + ok, self.rejected + ~ok
        self.streak, self.evaluations = np.where(ok, 0, self.streak + 1), self.evaluations + 1


def euler_step(state, velocity, grad, dt, tau):
    """One step of size dt (one per member) of dw/dt = -grad L, or with momentum of time constant tau,
    dv/dt = -(v + grad L) / tau and dw/dt = v, the velocity integrated exactly over the step (grad L
    held fixed): v <- e v - (1 - e) grad L with e = exp(-dt / tau), then w <- w + dt v.
    New arrays: the old state is untouched."""
    if tau == 0:
        return [add_scaled(w, -dt, g) for w, g in zip(state, grad)], None
    decay = array_module(dt).exp(-dt / tau)
    velocity = [add_scaled(per_member(decay, v) * v, decay - 1, g) for v, g in zip(velocity, grad)]
    return [add_scaled(w, dt, v) for w, v in zip(state, velocity)], velocity


def step_change(old, new):
    """Per member: dout = max_mu |F_new - F_old| and dgrad = |g_new - g_old|^2 / (|g_old| |g_new|).

    |g_new - g_old|^2 = |g_old|^2 + |g_new|^2 - 2 g_old . g_new: one pass over the gradients (their
    dot product), as each point keeps its |g|^2. In float64 the cancellation costs at most about
    1e-15 |g|^2, far below the max_dgrad of 1e-4 it is compared with. Where a gradient is exactly
    zero (a stationary point, e.g. a net of dead ReLUs), dgrad is 0 if the other is zero too
    (nothing changes) and infinite otherwise.
    """
    xp = array_module(old.F)
    dout = xp.max(xp.abs(new.F - old.F), axis=1)
    old2, new2 = old.grad_norm2(), new.grad_norm2()
    diff2 = xp.maximum(old2 + new2 - 2 * sum(member_dot(a, b) for a, b in zip(old.grad, new.grad)), 0.0)
    norms = xp.sqrt(old2 * new2)
    return dout, xp.where(norms > 0, diff2 / xp.where(norms > 0, norms, 1.0), xp.where(diff2 > 0, xp.inf, 0.0))


def gradient_flow(system, state, *, integrator="paper", max_dgrad=1e-4, max_dout=0.1, tolerance=None, dt=1.0,
                  tau=0.0, max_time=math.inf, max_wall=math.inf, max_steps=None, checkpoints=10, callback=None,
                  max_rejections=40):
    """Integrate dstate/dt = -grad with the paper's adaptive explicit Euler rule, for S members at once.

    From the current state each member takes a trial step of its own size dt, then
    measures dout and dgrad (see `step_change`). It accepts if dgrad < max_dgrad and
    dout < max_dout, and if both are below half of their bound, dt *= 1.1. Otherwise
    it rejects (keeps its old state), dt /= 10 and retries. Its t is the sum of its
    accepted dt; its last step is shortened to land exactly on max_time.

    `state` is a list of arrays with a leading member axis (S, ...). `system` gives
    `evaluate(state) -> Point`, `observe(state, point) -> dict` of per-member values,
    `test_predictor(state)` (or None) and `take(idx)`, the system of members idx.
    A member stops when every margin y F >= 1 ("fitted"), at a limit ("time",
    "wall", "steps"), or "diverged" when its output is non-finite or max_rejections
    trials in a row fail (dt has shrunk 10^max_rejections-fold); it is then dropped
    from the computation. Returns one Run per member.

    A step of the ensemble, whatever its size, makes one transfer to the host (every
    member's dout, dgrad and smallest margin), and its checkpoints about one more per
    checkpoint of one member (they are observed together: `Ensemble`).

    integrator: "paper" (this rule) or one of the error-controlled rules of `runge_kutta_flow`
    ("rk23", "rkc", "auto"), which take `tolerance` instead of max_dgrad and max_dout.
    """
    if not (max_dgrad > 0 and max_dout > 0 and dt > 0 and tau >= 0):
        raise ValueError(f"need max_dgrad > 0, max_dout > 0, dt > 0 and tau >= 0; "
                         f"got {max_dgrad}, {max_dout}, {dt}, {tau}")
    limits = Limits(max_time, max_wall, max_steps)
    if check_integrator(integrator) != "paper":
        return runge_kutta_flow(system, state, integrator, tolerance, max_dout, dt, tau, limits, checkpoints,
                                callback, max_rejections)
    xp = array_module(state[0])
    carried = [[xp.zeros_like(w) for w in state]] if tau > 0 else []
    run = Ensemble(system, state, system.evaluate(state), limits, checkpoints, callback, carried)
    run.dt[:] = dt
    run.start()
    while run.going():
        h = np.minimum(run.dt, max_time - run.t)  # the trial step: dt, or less to land on max_time
        last = h < run.dt
        trial_state, velocity = euler_step(run.state, run.carried[0] if tau > 0 else None, run.point.grad,
                                           xp.asarray(h, dtype=state[0].dtype), tau)
        trial = run.system.evaluate(trial_state)
        dout, dgrad, min_margin = to_host(*step_change(run.point, trial), xp.min(trial.margins, axis=1))
        ok = (dgrad < max_dgrad) & (dout < max_dout)  # accept, or reject and stay
        run.advance(ok, np.where(last, max_time, run.t + h), trial_state, trial, [velocity] if tau > 0 else [])
        run.dt[ok & ~last & (dgrad < max_dgrad / 2) & (dout < max_dout / 2)] *= 1.1  # both below half: grow
        run.dt[~ok] = h[~ok] / 10  # rejected: shrink, and retry
        run.record_due(np.flatnonzero(ok))
        run.stop(["fitted" if accepted and margin >= 1 else "diverged" if streak >= max_rejections else None
                  for accepted, margin, streak in zip(ok, min_margin, run.streak)])
    return run.runs


# The error-controlled step rules. Each integrates the same flow dy/dt = f(y) with a Runge-Kutta
# method and sets every member's step from an estimate of the method's own local error, measured
# against the step's own displacement: accept when |error| <= tolerance |y1 - y0|. (Weights are of
# order one but move by about 1/alpha: an error relative to |y| would mean nothing.) Two methods:
# - "rk23", the Bogacki-Shampine 3(2) pair (Bogacki and Shampine 1989): third order, three evaluations
#   per step (its last stage is the next step's first, FSAL), for where accuracy binds;
# - "rkc", the second-order Runge-Kutta-Chebyshev method (Sommeijer, Shampine and Verwer 1997), for
#   where stiffness binds: the flow's Jacobian is minus the Hessian of L, with a real spectrum, and the
#   s stages of RKC are stable for h rho <= beta(s) ~ 0.65 s^2 (rho the spectral radius, estimated by
#   power iteration), against h rho <= 2.5 for any three-stage method;
# - "auto" starts with rk23 and turns to rkc when rk23's step sits at its stability limit.
# A trial is also rejected where it moves an output by more than the paper's max_dout: a step must not
# leap over the soft hinge's width, where the curvature of the loss, and so the stiffness, jumps.
# Fits are found inside a step on the cubic Hermite interpolant of (y0, f0, y1, f1), and records are
# taken on a schedule in t from the same interpolant.

INTEGRATORS = ("paper", "rk23", "rkc", "auto")
TOLERANCE = 0.01  # the default |error| / |y1 - y0| of the Runge-Kutta rules
# The first trial of a Runge-Kutta rule is at most dt, and at most the step whose Euler error h^2 |J f0| / 2
# is tolerance times its displacement h |f0| (J = df/dy, |J f0| / |f0| measured by one probe of length
# dt * FIRST_STEP |f0|): the error of a first step from rest, relative to its displacement, goes into F at
# once, where later errors are diluted by the distance already travelled.
FIRST_STEP = 1e-2
RKC_DAMPING = 2 / 13
STIFF = (2.0, 1.0)  # "auto" turns to rkc where h rho > 2 (rk23 is stable to 2.5), and back where h rho < 1
MAX_STAGES = 200


def check_integrator(name):
    if name not in INTEGRATORS:
        raise ValueError(f"unknown integrator {name!r}; choose one of {list(INTEGRATORS)}")
    return name


class Flow:
    """The right-hand side f of dy/dt = f(y), the flow the Runge-Kutta rules integrate.

    Without momentum y = w and f(y) = -grad L(w). With momentum of time constant tau, y = (w, v) and
    f(y) = (v, -(v + grad L(w)) / tau): the equations of `euler_step`. `n`: the number of arrays of w.
    """

    def __init__(self, tau, n):
        self.tau, self.n = tau, n

    def join(self, state, carried):
        """y of the ensemble: its state and, with momentum, its velocity (the first carried list)."""
        return list(state) + (list(carried[0]) if self.tau > 0 else [])

    def rate(self, y, point):
        """f(y), given the point at y's weights."""
        if self.tau == 0:
            return [-g for g in point.grad]
        v = y[self.n:]
        return list(v) + [(a + g) * (-1 / self.tau) for a, g in zip(v, point.grad)]

    def __call__(self, system, y, need_grad=True):
        """The point at y's weights and f(y) (None when need_grad is false: a forward pass only)."""
        if not need_grad:
            return system.evaluate(y[:self.n], need_grad=False), None
        point = system.evaluate(y[:self.n])
        return point, self.rate(y, point)


def combine(*terms):
    """sum_i c_i a_i over lists of arrays a_i (member axis first); each c_i a number, or one per member (S,)."""
    out = []
    for arrays in zip(*(a for _, a in terms)):
        total = None
        for (c, _), a in zip(terms, arrays):
            term = a * (c if isinstance(c, numbers.Real) else per_member(array_module(a).asarray(c, dtype=a.dtype), a))
            if total is None:
                total = term
            else:
                total += term
        out.append(total)
    return out


def member_norm(arrays):
    """Per member, the Euclidean norm over all the arrays of a list, (S,)."""
    return array_module(arrays[0]).sqrt(sum(member_dot(a, a) for a in arrays))


def error_ratio(error, step, tolerance):
    """Per member |error| / (tolerance |step|): at most 1 accepts. A step of length zero is exact if its error
    is zero too (0), not otherwise (inf); a non-finite error gives inf."""
    xp = array_module(error[0])
    e, d = member_norm(error), tolerance * member_norm(step)
    return xp.where(d > 0, e / xp.where(d > 0, d, 1.0), xp.where(e == 0, 0.0, xp.inf))


@dataclass
class Trial:
    """One trial step of every member: the new y, its point and f(y), the displacement y - y0, the error
    estimate, the evaluations each member took (S,), and the stiffness its last two stages saw (rk23:
    |f(y1) - f(Y3)| / |y1 - Y3| <= rho, free: Shampine's test for stiffness; 0 for rkc)."""

    y: list
    point: Point
    f: list
    step: list
    error: list
    evaluations: np.ndarray
    stiffness: object


def bogacki_shampine(flow, system, y0, f0, h):
    """One step of the Bogacki-Shampine 3(2) pair from y0, f0 = f(y0), of size h (one per member):

    k2 = f(y0 + h/2 f0), k3 = f(y0 + 3h/4 k2), y1 = y0 + h (2/9 f0 + 1/3 k2 + 4/9 k3), k4 = f(y1) (the
    next step's f0), error = y1 - (the second-order solution) = h (-5/72 f0 + 1/12 k2 + 1/9 k3 - 1/8 k4).
    """
    _, k2 = flow(system, combine((1, y0), (h / 2, f0)))
    Y3 = combine((1, y0), (3 * h / 4, k2))
    _, k3 = flow(system, Y3)
    step = combine((2 * h / 9, f0), (h / 3, k2), (4 * h / 9, k3))
    y1 = combine((1, y0), (1, step))
    point, k4 = flow(system, y1)
    error = combine((-5 * h / 72, f0), (h / 12, k2), (h / 9, k3), (-h / 8, k4))
    stiffness = member_norm(combine((1, k4), (-1, k3))) / member_norm(combine((1, y1), (-1, Y3)))
    return Trial(y1, point, k4, step, error, np.full(len(h), 3), stiffness)


@functools.cache
def rkc_coefficients(s):
    """The s-stage RKC method with damping eps = 2/13 (Sommeijer, Shampine and Verwer 1997, section 2):
    (mu~_1, [(mu_j, nu_j, mu~_j, gamma~_j) for j = 2..s], beta), from the Chebyshev polynomials T_j at
    w0 = 1 + eps / s^2, w1 = T_s'(w0) / T_s''(w0), b_j = T_j''(w0) / T_j'(w0)^2 (b_0 = b_1 = b_2); stable for
    h rho <= beta = (1 + w0) / w1."""
    w0 = 1 + RKC_DAMPING / s**2
    T, dT, d2T = [1.0, w0], [0.0, 1.0], [0.0, 0.0]
    for j in range(2, s + 1):
        T.append(2 * w0 * T[j - 1] - T[j - 2])
        dT.append(2 * T[j - 1] + 2 * w0 * dT[j - 1] - dT[j - 2])
        d2T.append(4 * dT[j - 1] + 2 * w0 * d2T[j - 1] - d2T[j - 2])
    w1 = dT[s] / d2T[s]
    b = [d2T[max(j, 2)] / dT[max(j, 2)] ** 2 for j in range(s + 1)]
    rows = [(2 * b[j] * w0 / b[j - 1], -b[j] / b[j - 2], 2 * b[j] * w1 / b[j - 1],
             -(1 - b[j - 1] * T[j - 1]) * 2 * b[j] * w1 / b[j - 1]) for j in range(2, s + 1)]
    return b[1] * w1, rows, (1 + w0) / w1


def stages(h_rho):
    """The fewest RKC stages (at least 2, at most MAX_STAGES) stable for a step h rho."""
    s = 2
    while s < MAX_STAGES and rkc_coefficients(s)[2] < h_rho:
        s += 1
    return s


def members_of(system, arrays, pos, S):
    """The system and the rows of each list in `arrays` of the members at positions pos (host ints) of S:
    themselves when pos is every member."""
    if len(pos) == S:
        return system, arrays
    idx = array_module(arrays[0][0]).asarray(pos, dtype=np.int64)
    return system.take(idx), [take_rows(a, idx) for a in arrays]


def put_rows(arrays, pos, rows):
    """Copies of the arrays with the rows at positions pos (host ints) replaced by `rows`."""
    idx = array_module(arrays[0]).asarray(pos, dtype=np.int64)
    out = [a.copy() for a in arrays]
    for a, r in zip(out, rows):
        a[idx] = r
    return out


def chebyshev(flow, system, y0, f0, h, s):
    """One step of s-stage RKC from y0, f0 = f(y0), of size h, each member with its own h and s (host arrays):
    Y1 = y0 + mu~_1 h f0, Y_j = (1 - mu_j - nu_j) y0 + mu_j Y_{j-1} + nu_j Y_{j-2} + mu~_j h f(Y_{j-1})
    + gamma~_j h f0 for j = 2..s, y1 = Y_s; error = (12 (y0 - y1) + 6 h (f0 + f(y1))) / 15 (the method's own
    estimate); s evaluations. Stage j evaluates only the members with s >= j."""
    S, methods = len(h), [rkc_coefficients(k) for k in s]
    before, last = y0, combine((1, y0), (np.array([m[0] for m in methods]) * h, f0))
    for j in range(2, int(np.max(s)) + 1):
        pos = np.flatnonzero(s >= j)
        part, (y0_j, f0_j, last_j, before_j) = members_of(system, [y0, f0, last, before], pos, S)
        mu, nu, mu_t, gamma_t = np.array([methods[i][1][j - 2] for i in pos]).T
        _, f = flow(part, last_j)
        new = combine((1 - mu - nu, y0_j), (mu, last_j), (nu, before_j), (mu_t * h[pos], f), (gamma_t * h[pos], f0_j))
        before, last = (last, new) if len(pos) == S else (put_rows(before, pos, last_j), put_rows(last, pos, new))
    point, f1 = flow(system, last)
    step = combine((1, last), (-1, y0))
    error = combine((-12 / 15, step), (6 * h / 15, f0), (6 * h / 15, f1))
    return Trial(last, point, f1, step, error, np.asarray(s), array_module(y0[0]).zeros(S))


def trial_step(flow, system, y0, f0, h, s):
    """One trial of every member from y0, f0 = f(y0), of size h (host, one per member): the rk23 pair where
    s = 0, s-stage RKC elsewhere. Each method computes for its own members only, so that a member's trial is
    the one it would take alone."""
    S, xp = len(h), array_module(y0[0])
    parts = []
    for pos, method in ((np.flatnonzero(s == 0), "rk23"), (np.flatnonzero(s > 0), "rkc")):
        if len(pos):
            part, (y0_m, f0_m) = members_of(system, [y0, f0], pos, S)
            parts.append((pos, bogacki_shampine(flow, part, y0_m, f0_m, xp.asarray(h[pos], dtype=y0[0].dtype))
                          if method == "rk23" else chebyshev(flow, part, y0_m, f0_m, h[pos], s[pos])))
    if len(parts) == 1:
        return parts[0][1]
    (pos_a, a), (pos_b, b) = parts

    def merged(first, second):
        out = []
        for u, v in zip(first, second):
            w = xp.empty((S,) + u.shape[1:], dtype=u.dtype)
            w[xp.asarray(pos_a, dtype=np.int64)], w[xp.asarray(pos_b, dtype=np.int64)] = u, v
            out.append(w)
        return out

    F, margins, loss, stiffness, *grad = merged([a.point.F, a.point.margins, a.point.loss, a.stiffness, *a.point.grad],
                                                [b.point.F, b.point.margins, b.point.loss, b.stiffness, *b.point.grad])
    evaluations = np.empty(S, dtype=int)
    evaluations[pos_a], evaluations[pos_b] = a.evaluations, b.evaluations
    return Trial(merged(a.y, b.y), Point(F, margins, loss, grad), merged(a.f, b.f), merged(a.step, b.step),
                 merged(a.error, b.error), evaluations, stiffness)


def spectral_radius(flow, system, y0, f0, direction, size, iterations):
    """Per member, rho: the largest |eigenvalue| of df/dy at y0, by power iteration on differences of f.

    rho ~ |f(y0 + u) - f(y0)| / |u| with u along `direction` and |u| = size (one per member); then u <- the
    difference.
    Returns (rho, the last direction), on the device.
    """
    xp = array_module(y0[0])
    rho = None
    for _ in range(iterations):
        length = member_norm(direction)
        u = combine((size / xp.where(length > 0, length, 1.0), direction))
        _, f = flow(system, combine((1, y0), (1, u)))
        direction = combine((1, f), (-1, f0))
        rho = member_norm(direction) / xp.where(size > 0, size, 1.0)
    return rho, direction


def estimate_stiffness(run, flow, y0, f0, h):
    """Estimate rho again (`spectral_radius`, raised by a margin of 1.2) for the members that need it: those
    without an estimate (5 iterations), those 10 trials past their last one, and stiff members that were
    just rejected (2 iterations, from the last direction).

    The probe is short, sqrt(eps) (|y0| + h |f0|) and at most the step h |f0|, so that rho is the largest
    eigenvalue at y0 itself (as in RKC's own estimate, Sommeijer, Shampine and Verwer 1997, section 3): a
    probe as long as the step can leave in a direction where the flow bends sharply (the weights of a feature-
    regime net, or the soft hinge), and its secant then overstates rho a hundredfold."""
    xp, S = array_module(y0[0]), len(h)
    probe = math.sqrt(np.finfo(y0[0].dtype).eps)
    due = (run.since >= 10) | (run.rho == 0) | (run.stiff & (run.streak > 0))
    for iterations, pos in ((5, np.flatnonzero(due & (run.rho == 0))), (2, np.flatnonzero(due & (run.rho > 0)))):
        if not len(pos):
            continue
        part, (y0_m, f0_m, direction) = members_of(run.system, [y0, f0, run.carried[-1]], pos, S)
        step = xp.asarray(h[pos], dtype=y0[0].dtype) * member_norm(f0_m)
        size = xp.minimum(step, probe * (member_norm(y0_m) + step))
        rho, direction = spectral_radius(flow, part, y0_m, f0_m, direction, size, iterations)
        (rho,) = to_host(rho)
        run.rho[pos] = np.where(np.isfinite(rho), 1.2 * rho, 0.0)  # a probe that met a NaN: estimated again
        run.carried[-1] = direction if len(pos) == S else put_rows(run.carried[-1], pos, direction)
        run.evaluations[pos] += iterations
        run.since[pos] = 0


def hermite(y0, f0, y1, f1, h, s):
    """The cubic Hermite interpolant of a step at the fractions s (one per member) of it:
    y(s) = (2s^3 - 3s^2 + 1) y0 + (s^3 - 2s^2 + s) h f0 + (3s^2 - 2s^3) y1 + (s^3 - s^2) h f1, third-order accurate."""
    return combine((2 * s**3 - 3 * s**2 + 1, y0), ((s**3 - 2 * s**2 + s) * h, f0), (3 * s**2 - 2 * s**3, y1),
                   ((s**3 - s**2) * h, f1))


def fit_fraction(flow, system, ends, h, below, above, t_end, precision=1e-5, iterations=20):
    """Per member, the fraction s of its step at which its smallest margin min y F reaches 1, and the forward
    passes it took: regula falsi with the Illinois rule on the interpolant `ends` = (y0, f0, y1, f1), from the
    smallest margins below 1 at s = 0 and above at s = 1, until its bracket is shorter than precision t_end
    (each member on its own: a pass evaluates the members whose bracket is still too long). Returns the
    bracket's upper end, where every margin is >= 1."""
    xp, S = array_module(ends[0][0]), len(h)
    lo, hi, side = np.zeros(S), np.ones(S), np.zeros(S)
    g_lo, g_hi = below - 1, above - 1
    passes = np.zeros(S, dtype=int)
    while True:
        pos = np.flatnonzero((passes < iterations) & ((hi - lo) * h > precision * t_end) & (g_hi > 1e-12))
        if not len(pos):
            return hi, passes
        lo_m, hi_m, g_lo_m, g_hi_m, side_m = lo[pos], hi[pos], g_lo[pos], g_hi[pos], side[pos]
        s = np.clip((lo_m * g_hi_m - hi_m * g_lo_m) / (g_hi_m - g_lo_m), lo_m, hi_m)
        part, ends_m = members_of(system, list(ends), pos, S)
        point, _ = flow(part, hermite(*ends_m, h[pos], s), need_grad=False)
        (g,) = to_host(xp.min(point.margins, axis=1) - 1)
        passes[pos] += 1
        up = g >= 0
        g_lo[pos] = np.where(up & (side_m > 0), g_lo_m / 2, np.where(up, g_lo_m, g))
        g_hi[pos] = np.where(~up & (side_m < 0), g_hi_m / 2, np.where(up, g, g_hi_m))
        lo[pos], hi[pos], side[pos] = np.where(up, lo_m, s), np.where(up, s, hi_m), np.where(up, 1.0, -1.0)


def take_rows(arrays, idx):
    return [a[idx] for a in arrays]


def runge_kutta_flow(system, state, integrator, tolerance, max_dout, dt, tau, limits, checkpoints, callback,
                     max_rejections):
    """Gradient flow by an error-controlled Runge-Kutta rule ("rk23", "rkc" or "auto"), for S members at once,
    each member exactly as it would run alone.

    Each member has its own step h: it accepts a trial when r = max(|error| / (tolerance |y1 - y0|),
    (dout / max_dout)^2) <= 1 and its output is finite, then h *= 0.9 r^(-1/2) within [0.2, 5] (no growth
    just after a rejection; a non-finite trial: h /= 10). Each member also has its own method: rkc where it
    is stiff ("auto": h rho > 2, against rk23's stability limit 2.5, and back below h rho = 1), with the
    stages its own h rho needs. rho is estimated by power iteration (`estimate_stiffness`) and raised by
    what every rk23 trial's last stages see (`Trial`); an rk23 trial with h rho > 2 is rejected. A member that
    fits inside a step stops at the time its smallest margin reaches 1 (`fit_fraction`); records are taken
    `checkpoints` per decade of t (`TimeRecorder`). Stop rules and the Runs are those of `gradient_flow`,
    with run.evaluations counting every evaluation of the system: stages, rejected trials, spectral
    estimates and the fit's forward passes.
    """
    tolerance = TOLERANCE if tolerance is None else tolerance
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    xp = array_module(state[0])
    flow = Flow(tau, len(state))
    carried = [[xp.zeros_like(w) for w in state]] if tau > 0 else []
    start = system.evaluate(state)
    direction = flow.rate(flow.join(state, carried), start)
    run = Ensemble(system, state, start, limits, checkpoints, callback, carried + [direction], integrator, True)
    size = xp.asarray(np.full(len(run), dt * FIRST_STEP), dtype=state[0].dtype) * member_norm(direction)
    (rho,) = to_host(spectral_radius(flow, system, flow.join(state, carried), direction, direction, size, 1)[0])
    run.dt[:] = np.where(rho * dt > 2 * tolerance, 2 * tolerance / np.where(rho > 0, rho, 1.0), dt)
    run.evaluations += 1
    run.stiff[:] = integrator == "rkc"
    run.start()
    while run.going():
        to_end = limits.max_time - run.t
        h = np.minimum(run.dt, to_end)
        y0 = flow.join(run.state, run.carried)
        f0 = flow.rate(y0, run.point)
        if integrator != "rk23":
            estimate_stiffness(run, flow, y0, f0, h)
        if integrator == "auto":
            run.stiff = run.rho * h > np.where(run.stiff, STIFF[1], STIFF[0])
        h = np.where(run.stiff, np.minimum(h, rkc_coefficients(MAX_STAGES)[2] / np.maximum(run.rho, 1e-300)), h)
        s = np.array([stages(x) if stiff else 0 for x, stiff in zip(h * run.rho, run.stiff)])
        trial = trial_step(flow, run.system, y0, f0, h, s)
        run.since += 1
        ratio, dout, min_margin, before, stiffness = to_host(
            error_ratio(trial.error, trial.step, tolerance), xp.max(xp.abs(trial.point.F - run.point.F), axis=1),
            xp.min(trial.point.margins, axis=1), xp.min(run.point.margins, axis=1), trial.stiffness)
        ratio = np.maximum(ratio, (dout / max_dout) ** 2)
        ok = (ratio <= 1) & np.isfinite(min_margin)
        if integrator == "auto":  # a step at rk23's stability limit is not trusted: the member's next trial is rkc's
            run.rho = np.where(s == 0, np.maximum(run.rho, np.where(np.isfinite(stiffness), stiffness, 0.0)), run.rho)
            ok &= (s > 0) | (run.rho * h <= STIFF[0])
        factor = np.where(np.isfinite(ratio), np.clip(0.9 * np.maximum(ratio, 1e-10) ** -0.5, 0.2, 5.0), 0.1)
        factor = np.where(run.streak > 0, np.minimum(factor, 1.0), factor)
        clipped = h >= to_end  # the step lands on max_time
        t0, t1 = run.t, np.where(clipped, limits.max_time, run.t + h)
        ends = (y0, f0, trial.y, trial.f)
        fits = np.flatnonzero(ok & (min_margin >= 1))
        if len(fits):
            idx = xp.asarray(fits, dtype=np.int64)
            part, part_ends = run.system.take(idx), [take_rows(a, idx) for a in ends]
            s_fit, passes = fit_fraction(flow, part, part_ends, h[fits], before[fits], min_margin[fits], t1[fits])
            t1[fits] = t0[fits] + s_fit * h[fits]
            y_fit = hermite(*part_ends, h[fits], s_fit)
            point_fit, _ = flow(part, y_fit)
            for a, b in zip(trial.y, y_fit):
                a[idx] = b
            for name in ("F", "margins", "loss"):
                getattr(trial.point, name)[idx] = getattr(point_fit, name)
            for a, b in zip(trial.point.grad, point_fit.grad):
                a[idx] = b
            trial.point.grad2 = None
            (min_fit,) = to_host(xp.min(point_fit.margins, axis=1))
            min_margin[fits] = min_fit
            run.evaluations[fits] += passes + 1
        record_between(run, flow, ends, h, np.flatnonzero(ok), t0, t1)
        run.accept(ok, trial.y[:flow.n], trial.point, ([trial.y[flow.n:]] if tau > 0 else []) + [run.carried[-1]])
        run.t = np.where(ok, t1, run.t)
        run.dt = np.where(ok & clipped, run.dt, h * factor)
        run.steps, run.rejected = run.steps + ok, run.rejected + ~ok
        run.streak, run.evaluations = np.where(ok, 0, run.streak + 1), run.evaluations + trial.evaluations
        run.stop(["fitted" if accepted and margin >= 1 else "diverged" if streak >= max_rejections else None
                  for accepted, margin, streak in zip(ok, min_margin, run.streak)])
    return run.runs


def record_between(run, flow, ends, h, pos, t0, t1):
    """Record the members at positions pos at every checkpoint time t0 < t <= t1 of their step, on the step's
    interpolant `ends` = (y0, f0, y1, f1): one forward pass per round, each round one checkpoint per member."""
    xp = array_module(ends[0][0])
    while True:
        next_t = {i: run.recorders[run.ids[i]].next_t for i in pos}
        due = [i for i in pos if next_t[i] is None or next_t[i] <= t1[i]]
        if not due:
            return
        times = np.array([t1[i] if next_t[i] is None else next_t[i] for i in due])
        idx = xp.asarray(due, dtype=np.int64)
        system = run.system.take(idx) if len(due) < len(run) else run.system
        y = hermite(*[take_rows(a, idx) for a in ends], h[due], (times - t0[due]) / h[due])
        point, _ = flow(system, y, need_grad=False)
        run.record(due, (y[:flow.n], point, times))


# ---------------------------------------------------------------------------
# 7. Training a network
# ---------------------------------------------------------------------------


def minibatches(p, batch_size, rng):
    """Endless (indices, last_of_epoch) pairs: a fresh seeded permutation of the p points every epoch."""
    while True:
        order = rng.permutation(p)
        for i in range(0, p, batch_size):
            yield order[i:i + batch_size], i + batch_size >= p


def adam(objective, params, *, lr=1e-3, batch_size=32, seed=0, max_time=math.inf, max_wall=math.inf,
         max_steps=None, checkpoints=10, callback=None, betas=(0.9, 0.999), eps=1e-8):
    """Adam on mini-batches of the same alpha-scaled loss (as the paper trained its CNNs), S members at once.

    m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, w <- w - lr m_hat / (sqrt(v_hat) + eps),
    with bias-corrected m_hat, v_hat. Each member draws its mini-batches from its own
    seed (`seed`: one int for all, or one per member). The time t is lr x steps. At
    the end of every epoch, at checkpoints and at a limit the whole training set is
    evaluated: a member stops when it is fitted, or as "diverged" when its output is
    non-finite. One transfer brings the members' status and the records of the
    checkpoints, and the steps in between transfer nothing. Returns one Run per member.
    """
    batch_size = check_int("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    S = len(params[0])
    seeds = one_per_member(seed, S, "seed")
    limits = Limits(max_time, max_wall, max_steps)
    xp = array_module(params[0])
    zeros = [[xp.zeros_like(w) for w in params] for _ in range(2)]
    run = Ensemble(objective, params, objective.evaluate(params, need_grad=False), limits, checkpoints, callback,
                   zeros, "adam")
    batches = [minibatches(len(objective.y), batch_size, np.random.default_rng(s)) for s in seeds]
    run.dt[:] = lr
    run.start()
    step = 0
    while run.going():  # every member is at t = lr x step, after `step` steps
        drawn = [next(batches[i]) for i in run.ids]
        step += 1
        grad = run.system.evaluate(run.state, idx=xp.asarray(np.stack([b for b, _ in drawn]))).grad
        m = [betas[0] * a + (1 - betas[0]) * g for a, g in zip(run.carried[0], grad)]
        v = [betas[1] * a + (1 - betas[1]) * g**2 for a, g in zip(run.carried[1], grad)]
        c1, c2 = 1 - betas[0] ** step, 1 - betas[1] ** step
        run.state = [w - lr * (a / c1) / (xp.sqrt(b / c2) + eps) for w, a, b in zip(run.state, m, v)]
        run.carried = [m, v]
        run.steps[:], run.t[:], run.evaluations = step, lr * step, run.evaluations + 1
        due = run.recorders[run.ids[0]].due(step) or limits.reached(lr * step, step)  # at a limit: the last record
        if drawn[0][1] or due:
            run.point = run.system.evaluate(run.state, need_grad=False)
            run.evaluations += 1
            if due:
                run.record(range(len(run)))
            run.stop(run.flush(run.point))
    return run.runs


def check_memory(net, params, x, n):
    """Fail clearly, before any work, when an ensemble would not fit in the free memory."""
    S = len(params[0])
    each = net.bytes_per_member(params, x, n)
    free = available_memory(array_module(params[0]))
    if S * each > free:
        raise ValueError(f"an ensemble of {S} networks {net} needs about {S * each / 2**30:.2f} GiB "
                         f"({each / 2**20:.0f} MiB each, {n} samples at a time), but {free / 2**30:.2f} GiB are "
                         f"free; train at most {max(1, int(free // each))} networks at a time "
                         "(the sweep's --max-members), or lower chunk")


class BasisCache:
    """The bases of the last few training sets, keyed by their bytes: one SVD per data set.

    Whatever the order in which threads run, a request never computes a basis that another request
    is computing or that is kept: it waits for that one. Bases in use (requested and not yet
    returned) are never evicted; of the others, the least recently used go once more than `size`
    are kept.
    """

    def __init__(self, size=4):
        self.size, self.lock, self.entries = size, threading.Lock(), {}

    def get(self, key, compute):
        """compute()'s value for key, computed by the first request for key and shared by the rest."""
        with self.lock:
            entry = self.entries.pop(key, None)
            owner = entry is None
            if owner:
                entry = {"users": 0, "ready": threading.Event(), "value": None, "error": None}
            self.entries[key] = entry  # the most recently used last
            entry["users"] += 1
        try:
            if owner:
                try:
                    entry["value"] = compute()
                except BaseException as error:
                    entry["error"] = error
                    raise
                finally:
                    entry["ready"].set()
            entry["ready"].wait()
            if entry["error"] is not None:
                raise entry["error"]
            return entry["value"]
        finally:
            with self.lock:
                entry["users"] -= 1
                if entry["error"] is not None and self.entries.get(key) is entry:
                    del self.entries[key]
                self.evict()

    def evict(self):
        """Drop the least recently used bases that nobody uses until at most `size` are kept."""
        idle = [key for key, entry in self.entries.items() if entry["users"] == 0]
        for key in idle[:max(0, len(self.entries) - self.size)]:
            del self.entries[key]


class DataSpan:
    """Gradient flow moves the first layer of an FC net only within the span of the training inputs.

    The first layer's gradient dL/dW = sum_mu g_mu x_mu^T / sqrt(d) has every row in the span of
    the p inputs x_mu, and so has every step of the flow (with or without momentum): a sum of
    gradients. Rotate the input space by an orthogonal Q (d, d) whose first r columns span the
    inputs (r = rank x <= p, from an SVD). The net is the same function of the rotated weights W Q
    on the rotated inputs x Q, whose training inputs are zero beyond their first r features. So
    the flow trains the first r columns of W Q on the training inputs' first r features (`params0`,
    `x`), and the other columns keep their initial values (`frozen`, read only by test inputs).
    For p = 300 images of Fashion-MNIST, 300 columns instead of 784. Exact for the flow; not for
    Adam, whose steps are not sums of gradients.
    """

    bases = BasisCache()  # the trainings in threads of one process (a bench, a Dask worker) share it

    def __init__(self, net, params0, x):
        """params0 with the member axis; x the training inputs (p, d), p < d."""
        net.check_input(x)
        d = x.shape[1]
        self.Q, self.r = self.basis(x)
        self.x = x @ self.Q[:, :self.r]
        rotated = params0[0] @ self.Q
        self.params0 = [rotated[..., :self.r].copy()] + list(params0[1:])
        self.frozen = rotated[..., self.r:].copy()

        def check_input(a):
            if a.ndim != 2 or a.shape[1] not in (self.r, d):
                raise ValueError(f"{net} in the span of its data takes inputs of shape (n, {self.r}) (training) "
                                 f"or (n, {d}) (rotated), got {tuple(a.shape)}")

        self.net = Network(net.layers, f"{net} in the span of {self.r} inputs", check_input, net.sample_ndim)

    @classmethod
    def basis(cls, x):
        """(Q, r): Q the right singular vectors of x, r = rank x (the singular values above rounding)."""
        xp, host = array_module(x), x.get() if hasattr(x, "get") else x
        key = (xp.__name__, x.shape, str(x.dtype), hashlib.sha1(np.ascontiguousarray(host).tobytes()).hexdigest())

        def svd():
            _, s, vt = xp.linalg.svd(x, full_matrices=True)
            tolerance = max(x.shape) * np.finfo(x.dtype).eps * float(s[0])
            return vt.T, int((s > tolerance).sum())

        return cls.bases.get(key, svd)

    @staticmethod
    def applies(net, x):
        """Whether it pays: an FC net (a Dense layer reads the input) with fewer samples than features."""
        shape = np.shape(x)
        return len(shape) == 2 and net.first_trained == 0 and isinstance(net.layers[0], Dense) and shape[0] < shape[1]

    def inputs(self, x):
        """Other inputs, rotated: x Q."""
        return x @ self.Q

    def original(self, params, s, fixed=None):
        """Member s's weights back in the input's own coordinates: its first layer's [W Q] Q^T, the trained
        columns' W_r Q_r^T plus the frozen columns' part (`fixed_part`; given, or computed here)."""
        fixed = self.fixed_part(s) if fixed is None else fixed
        return [params[0] @ self.Q[:, :self.r].T + fixed] + list(params[1:])

    def fixed_part(self, s):
        """The frozen columns' part of member s's first layer in the input's coordinates: W_frozen Q_rest^T."""
        return self.frozen[s] @ self.Q[:, self.r:].T

    def callback(self, callback, s):
        """Member s's checkpoint callback, seeing the weights in the input's own coordinates (None stays None).
        The frozen columns' part is computed once, for every checkpoint."""
        if callback is None:
            return None
        fixed = self.fixed_part(s)
        return lambda params, record: callback(self.original(params, s, fixed), record)


def train(net, params0, x, y, alpha, x_test=None, y_test=None, *, method="flow", loss="softhinge",
          subtract_f0=True, max_dgrad=1e-4, max_dout=0.1, dt=1.0, tau=0.0, lr=1e-3, batch_size=32,
          seed=0, max_time=math.inf, max_wall=math.inf, max_steps=None, checkpoints=10,
          callback=None, chunk=CHUNK, data_span=True, integrator="paper", tolerance=None, test_along=True):
    """Train F(w, x) = alpha [f(w, x) - f(w0, x)] on (x, y) from w0 = params0.

    params0: one network (`net.init(seed)`) with alpha a number, or an ensemble
    (`net.init(seeds)`, S members) with alpha a sequence of S numbers (or one for
    all); the members are trained as one computation. method "flow": gradient flow
    dw/dt = -grad L with the paper's adaptive step (max_dgrad, max_dout, initial dt,
    momentum tau), or the error-controlled step rule `integrator` ("rk23", "rkc", "auto"
    of `runge_kutta_flow`, with its `tolerance`); "adam": Adam with lr, batch_size and the mini-batch order of
    `seed` (one per member, or one for all). Each member stops when fitted, at
    max_time / max_wall (seconds) / max_steps, or when diverged. `callback(params,
    record)` (one for all members, or a list of one per member) runs at each
    checkpoint with the member's parameters and may return a dict of extra fields
    for the record (e.g. the kernel change). data_span: train the flow of an FC net with
    fewer samples than input features in the span of its data (`DataSpan`; the same run,
    faster). test_along: records carry the test fit (test_err, test_loss) at every checkpoint;
    False: the test set is observed once, at the end (F_test, test_error), and checkpoints are cheaper.
    Returns a `Run` for one network, a list of S `Run`s for an ensemble.
    """
    if method not in ("flow", "adam"):
        raise ValueError(f"unknown method {method!r}; choose 'flow' or 'adam'")
    check_integrator(integrator)
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    params0, single = net.members(params0)
    S = len(params0[0])
    callbacks, seeds = one_per_member(callback, S, "callback"), one_per_member(seed, S, "seed")
    xp, dtype = array_module(params0[0]), params0[0].dtype
    span = frozen = None
    if method == "flow" and data_span and DataSpan.applies(net, x):
        span = DataSpan(net, params0, xp.asarray(x, dtype=dtype))
        net, params0, x, frozen = span.net, span.params0, span.x, span.frozen
        callbacks = [span.callback(c, s) for s, c in enumerate(callbacks)]
        x_test = None if x_test is None else span.inputs(xp.asarray(x_test, dtype=dtype))
    objective = Objective(net, params0, x, y, alpha, x_test, y_test, loss, subtract_f0, chunk, frozen, test_along)
    if not single:
        check_memory(net, params0, objective.x, min(chunk, len(objective.x)))
    limits = dict(max_time=max_time, max_wall=max_wall, max_steps=max_steps, checkpoints=checkpoints)

    def fit(idx):
        """Train the members idx (an index array) as one ensemble."""
        part, state = objective, params0
        if len(idx) < S:
            part, state = objective.take(array_module(params0[0]).asarray(idx)), [w[idx] for w in params0]
        kept = dict(limits, callback=[callbacks[i] for i in idx])
        if method == "flow":
            return gradient_flow(part, state, integrator=integrator, max_dgrad=max_dgrad, max_dout=max_dout,
                                 tolerance=tolerance, dt=dt, tau=tau, **kept)
        return adam(part, state, lr=lr, batch_size=batch_size, seed=[seeds[i] for i in idx], **kept)

    threads = machine.cpu_threads(xp)
    n = len(objective.x) if method == "flow" else min(check_int("batch_size", batch_size), len(objective.x))
    objective.split(threads // min(threads, S), n)
    runs = machine.across_cores(fit, S, threads)
    if span:
        for s, run in enumerate(runs):
            run.state = span.original(run.state, s)
    return runs[0] if single else runs
