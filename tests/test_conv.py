"""Properties of the CNN layers (channels last, with the ensemble's member axis), on small sizes."""
import math
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazyfeat as lf
import machine

SETTINGS = settings(max_examples=25, deadline=None)


@contextmanager
def block_size(multiply_adds):
    """Products of at most this many multiply-adds per block (1: one output row of one sample of one member)."""
    with mock.patch.object(machine, "CPU_BLOCK_MULTIPLY_ADDS", multiply_adds):
        yield


@st.composite
def conv_cases(draw):
    """A Conv layer, S members' weights, an input (shared or per member) and an output signal g."""
    k = draw(st.integers(1, 5))
    stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, k - 1))
    S, n, C, O = (draw(st.integers(1, 3)) for _ in range(4))
    H, W = (draw(st.integers(max(1, k - 2 * pad), 9)) for _ in range(2))
    shared = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layer = lf.Conv(C, O, stride, k, pad)
    params = [np.stack([layer.init(rng)[0] for _ in range(S)])]
    a = rng.standard_normal((n, H, W, C) if shared else (S, n, H, W, C))
    OH, OW = ((size + 2 * pad - k) // stride + 1 for size in (H, W))
    g = rng.standard_normal((S, n, OH, OW, O))
    return layer, params, a, g, draw(st.sampled_from([1, 300, 3000, 10**6]))


def member_inputs(a, S):
    """The input as (S, n, H, W, C), a shared input repeated for every member."""
    return np.broadcast_to(a, (S,) + a.shape) if a.ndim == 4 else a


def naive_conv(W, x, stride, pad):
    """z[m, oh, ow, o] = sum_{c,i,j} W[o,c,i,j] x_pad[m, stride oh + i, stride ow + j, c] / sqrt(C k^2), by loops."""
    O, C, k, _ = W.shape
    x_pad = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    OH, OW = ((size - k) // stride + 1 for size in x_pad.shape[1:3])
    z = np.zeros((len(x), OH, OW, O))
    for oh in range(OH):
        for ow in range(OW):
            patch = x_pad[:, stride * oh:stride * oh + k, stride * ow:stride * ow + k, :]
            z[:, oh, ow, :] = np.einsum("mijc,ocij->mo", patch, W)
    return z / math.sqrt(C * k * k)


def assert_equal_pairings(x, g, a, grad):
    """<x, g> = <a, grad> up to rounding, i.e. 1e-12 of the sum of the terms' sizes."""
    tolerance = 1e-12 * np.sum(np.abs(x * g))
    assert math.isclose(np.sum(x * g), np.sum(a * grad), rel_tol=0, abs_tol=tolerance)


def pairing(layer, params, a, g):
    """<conv(a), g>: the scalar whose derivatives backward_input and backward_params give."""
    z, _ = layer.forward(params, a)
    return float(np.sum(z * g))


@SETTINGS
@given(conv_cases())
def test_forward_equals_naive_loop_convolution_for_each_member(case):
    layer, params, a, g, block = case
    with block_size(block):
        z, _ = layer.forward(params, a)
    x = member_inputs(a, len(params[0]))
    for s, W in enumerate(params[0]):
        np.testing.assert_allclose(z[s], naive_conv(W, x[s], layer.stride, layer.pad), rtol=0, atol=1e-12)


@SETTINGS
@given(conv_cases())
def test_backward_input_is_the_adjoint_of_forward(case):
    layer, params, a, g, block = case
    a = member_inputs(a, len(params[0])).copy()
    with block_size(block):
        z, cache = layer.forward(params, a)
        grad = layer.backward_input(params, cache, g)
    assert grad.shape == a.shape
    assert_equal_pairings(z, g, a, grad)


@SETTINGS
@given(conv_cases())
def test_backward_params_equals_central_finite_differences(case):
    layer, params, a, g, block = case
    with block_size(block):
        _, cache = layer.forward(params, a)
        (dW,) = layer.backward_params(params, cache, g)
    W, eps = params[0], 1e-3
    numeric = np.zeros_like(W)
    for index in np.ndindex(W.shape):
        step = np.zeros_like(W)
        step[index] = eps
        numeric[index] = (pairing(layer, [W + step], a, g) - pairing(layer, [W - step], a, g)) / (2 * eps)
    np.testing.assert_allclose(dW, numeric, rtol=1e-8, atol=1e-9)


@SETTINGS
@given(conv_cases())
def test_jacobian_rows_equal_backward_params_of_one_hot_g(case):
    layer, params, a, g, block = case
    with block_size(block):
        _, cache = layer.forward(params, a)
        J = layer.jacobian(params, cache, g)
        S, n = g.shape[:2]
        for m in range(n):
            one_hot = np.zeros_like(g)
            one_hot[:, m] = g[:, m]
            (dW,) = layer.backward_params(params, cache, one_hot)
            np.testing.assert_allclose(J[:, m], dW.reshape(S, -1), rtol=0, atol=1e-12)


@SETTINGS
@given(conv_cases(), st.integers(0, 1), st.integers(0, 2**32 - 1))
def test_ntk_equals_jacobian_times_its_transpose(case, extra, seed):
    layer, params, a, g, block = case
    rng = np.random.default_rng(seed)
    a2 = rng.standard_normal(a.shape[:-4] + (a.shape[-4] + extra,) + a.shape[-3:])
    g2 = rng.standard_normal(g.shape[:1] + (g.shape[1] + extra,) + g.shape[2:])
    with block_size(block):
        _, cache = layer.forward(params, a)
        _, cache2 = layer.forward(params, a2)
        J, J2 = layer.jacobian(params, cache, g), layer.jacobian(params, cache2, g2)
        theta_same = layer.ntk(params, cache, g, cache, g)
        theta_cross = layer.ntk(params, cache, g, cache2, g2)
    np.testing.assert_allclose(theta_same, J @ J.transpose(0, 2, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(theta_cross, J @ J2.transpose(0, 2, 1), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(conv_cases())
def test_each_member_equals_its_solo_computation(case):
    layer, params, a, g, block = case
    with block_size(block):
        z, cache = layer.forward(params, a)
        ensemble = [z, layer.backward_input(params, cache, g), layer.backward_params(params, cache, g)[0],
                    layer.jacobian(params, cache, g), layer.ntk(params, cache, g, cache, g)]
        for s in range(len(params[0])):
            solo_params, solo_a, solo_g = [params[0][s:s + 1]], a if a.ndim == 4 else a[s:s + 1], g[s:s + 1]
            z1, cache1 = layer.forward(solo_params, solo_a)
            solo = [z1, layer.backward_input(solo_params, cache1, solo_g),
                    layer.backward_params(solo_params, cache1, solo_g)[0],
                    layer.jacobian(solo_params, cache1, solo_g), layer.ntk(solo_params, cache1, solo_g, cache1, solo_g)]
            for got, want in zip(ensemble, solo):
                np.testing.assert_allclose(got[s], want[0], rtol=1e-12, atol=1e-12)


@SETTINGS
@given(conv_cases())
def test_shared_input_equals_the_input_repeated_for_every_member(case):
    layer, params, a, g, block = case
    if a.ndim == 5:
        a = a[0]
    repeated = member_inputs(a, len(params[0])).copy()
    with block_size(block):
        outputs = []
        for x in (a, repeated):
            z, cache = layer.forward(params, x)
            outputs.append([z, layer.backward_params(params, cache, g)[0], layer.ntk(params, cache, g, cache, g)])
    for shared, per_member in zip(*outputs):
        np.testing.assert_allclose(shared, per_member, rtol=1e-12, atol=1e-12)


def test_conv_rejects_inputs_whose_last_axis_is_not_its_channels():
    layer = lf.Conv(3, 2, 1, 3, 1)
    with pytest.raises(ValueError, match="channels-last"):
        layer.forward([np.zeros((1, 2, 3, 3, 3))], np.zeros((4, 3, 8, 8)))


@pytest.mark.parametrize("k, pad", [(3, 3), (1, 1), (5, -1)])
def test_conv_rejects_padding_outside_zero_to_k_minus_one(k, pad):
    with pytest.raises(ValueError, match="pad < k"):
        lf.Conv(1, 1, 1, k, pad)


def test_channels_last_moves_channels_to_the_last_axis():
    x = np.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    out, _ = lf.ChannelsLast().forward([], x)
    assert out.shape == (2, 4, 5, 3)
    assert out[1, 2, 3, 0] == x[1, 0, 2, 3] and out[0, 3, 4, 2] == x[0, 2, 3, 4]


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_global_avg_pool_is_the_mean_over_positions_and_its_adjoint(S, n, H, W, seed):
    rng = np.random.default_rng(seed)
    a, g = rng.standard_normal((S, n, H, W, 3)), rng.standard_normal((S, n, 3))
    pool = lf.GlobalAvgPool()
    pooled, shape = pool.forward([], a)
    np.testing.assert_allclose(pooled, a.sum(axis=(2, 3)) / (H * W), rtol=1e-13)
    assert_equal_pairings(pooled, g, a, pool.backward_input([], shape, g))


def test_cnn_shapes_follow_the_papers_sizes():
    """28 -> 13 -> 11 -> 5 -> 3 with k = 5, pad = 1, strides 2, 1, 2, 1 (the paper's CNN)."""
    rng = np.random.default_rng(0)
    a, _ = lf.ChannelsLast().forward([], rng.standard_normal((2, 1, 28, 28)))
    sizes, channels = [], 1
    for stride in (2, 1, 2, 1):
        layer = lf.Conv(channels, 4, stride)
        a, _ = layer.forward([np.stack([layer.init(rng)[0]] * 3)], a)
        sizes.append(a.shape[2:4])
        channels = 4
    assert sizes == [(13, 13), (11, 11), (5, 5), (3, 3)] and a.shape == (3, 2, 3, 3, 4)
