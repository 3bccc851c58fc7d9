"""CuPy and NumPy give the same numbers (float64, 1e-10), ensembles included. Skipped without CuPy or a
CUDA device; `.ci/device` runs them on a machine with a GPU."""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")

import kernels  # noqa: E402
import lazyfeat as lf  # noqa: E402


def device_count():
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(device_count() == 0, reason="no CUDA device")]

NETS = [lambda: lf.FC(12, 16, 3, "softplus", 0.1), lambda: lf.CNN(2, 4, "swish")]
SHAPES = [(9, 12), (5, 2, 21, 20)]


def close(gpu, cpu, tol=1e-10):
    gpu = cupy.asnumpy(gpu)
    return np.abs(gpu - cpu).max() <= tol * max(1.0, np.abs(cpu).max())


@pytest.mark.parametrize("make, shape", zip(NETS, SHAPES))
def test_forward_backward_and_ntk_agree_on_cpu_and_gpu(make, shape):
    net = make()
    x = np.random.default_rng(0).standard_normal(shape)
    cpu, gpu = net.init(1), net.init(1, device="gpu")
    assert all(close(g, c, 0) for g, c in zip(gpu, cpu))  # the same draws, on the host, for both
    f_cpu, cache_cpu = net.forward(cpu, x)
    f_gpu, cache_gpu = net.forward(gpu, cupy.asarray(x))
    assert close(f_gpu, f_cpu)
    g = np.linspace(-1, 1, len(x))
    for a, b in zip(net.backward(gpu, cache_gpu, cupy.asarray(g)), net.backward(cpu, cache_cpu, g)):
        assert close(a, b)
    assert close(kernels.ntk(net, gpu, cupy.asarray(x), chunk=4), kernels.ntk(net, cpu, x, chunk=4))


def test_training_and_kernel_flow_agree_on_cpu_and_gpu():
    rng = np.random.default_rng(0)
    x, xt = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    y, yt = np.sign(x[:, 0]), np.sign(xt[:, 0])
    net = lf.FC(6, 16, 2)
    runs = [lf.train(net, net.init(0, device=d), x, y, 1.0, xt, yt, max_steps=30) for d in ("cpu", "gpu")]
    assert runs[0].steps_accepted == runs[1].steps_accepted == 30
    assert close(runs[1].F_test, runs[0].F_test, 1e-8)
    assert isinstance(runs[1].records[-1]["loss"], float)
    theta = kernels.ntk(net, net.init(0), x)
    flows = [kernels.flow(t, y, 1.0, max_steps=50) for t in (theta, cupy.asarray(theta))]
    assert close(flows[1].F, flows[0].F, 1e-8)


def test_an_ensemble_trains_alike_on_cpu_and_gpu_and_each_member_is_its_solo_run():
    rng = np.random.default_rng(1)
    x, xt = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    y, yt = np.sign(x[:, 0]), np.sign(xt[:, 0])
    net, seeds, alphas = lf.FC(6, 16, 2), [0, 1, 2, 3], [1e-2, 1.0, 1e2, 1e4]
    cpu = lf.train(net, net.init(seeds), x, y, alphas, xt, yt, max_steps=40)
    gpu = lf.train(net, net.init(seeds, device="gpu"), x, y, alphas, xt, yt, max_steps=40)
    for c, g, seed, alpha in zip(cpu, gpu, seeds, alphas):
        assert c.steps_accepted == g.steps_accepted
        assert close(g.F_test, c.F_test, 1e-8)
        solo = lf.train(net, net.init(seed, device="gpu"), x, y, alpha, xt, yt, max_steps=40)
        assert close(g.F_test, cupy.asnumpy(solo.F_test), 1e-10)
    theta = kernels.ntk(net, net.init(seeds, device="gpu"), cupy.asarray(x[:8]))
    assert close(theta, kernels.ntk(net, net.init(seeds), x[:8]))


def test_float32_runs_on_the_gpu():
    net = lf.FC(6, 8, 2)
    params = net.init(0, device="gpu", dtype="float32")
    f, _ = net.forward(params, cupy.ones((3, 6), dtype=cupy.float32))
    assert f.dtype == cupy.float32
