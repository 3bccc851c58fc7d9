"""The GPU path (CuPy) gives the numbers of the CPU path (NumPy), and keeps its data on the device.

Where CuPy and a CUDA device are present (`.ci/device`), these tests run on them. Elsewhere (CI) they
run on a strict stand-in for CuPy (tests/cupy_standin.py): NumPy-backed arrays that refuse implicit
conversion to NumPy and NumPy operands, with only the names of CuPy 14, and that count device-to-host
transfers. Either way none of them is skipped. The transfer counts are checked on the stand-in.
"""
import json
import sys

import numpy as np
import pytest

import bench
import cupy_standin
import experiments
import findings
import kernels
import lazyfeat as lf
import machine
import run as cli


def close(gpu, cpu, tol=1e-10):
    gpu = gpu.get() if hasattr(gpu, "get") else gpu
    return np.abs(gpu - cpu).max() <= tol * max(1.0, np.abs(cpu).max())


def data(p=40, d=6, p_test=30, seed=0):
    rng = np.random.default_rng(seed)
    x, xt = rng.standard_normal((p, d)), rng.standard_normal((p_test, d))
    return x, np.sign(x[:, 0]), xt, np.sign(xt[:, 0])


def on_both(net, seeds, x, y, alpha, xt, yt, dtype="float64", **options):
    """The same training on the CPU and on the GPU, from NumPy data (train moves it to the device)."""
    return [lf.train(net, net.init(seeds, device=device, dtype=dtype), x, y, alpha, xt, yt, **options)
            for device in ("cpu", "gpu")]


# ---------------------------------------------------------------------------
# The stand-in is as strict as CuPy
# ---------------------------------------------------------------------------


def test_the_standin_refuses_implicit_conversion_numpy_operands_and_names_cupy_lacks(standin):
    a = standin.arange(6.0)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="NumPy array"):
        a + np.ones(6)
    with pytest.raises(TypeError):
        np.ones(6) * a
    with pytest.raises(AttributeError, match="CuPy 14"):
        standin.einsum_path  # NumPy has it, CuPy does not
    total = a.sum()
    assert isinstance(total, standin.ndarray) and total.ndim == 0
    before = standin.device.transfers
    assert float(total) == 15.0 and a.get().tolist() == list(range(6))
    assert standin.device.transfers == before + 2


def test_backend_fails_at_the_start_naming_the_fix_when_a_first_kernel_cannot_run(standin, monkeypatch):
    def no_toolkit(*args, **kwargs):
        raise RuntimeError("nvrtc: error: failed to open libnvrtc-builtins.so.12")

    monkeypatch.setattr(standin.ndarray, "__mul__", no_toolkit)
    with pytest.raises(RuntimeError, match=r"first kernel.*nvrtc.*cupy-cuda12x\[ctk\].*driver"):
        lf.backend("gpu")


def test_backend_says_no_device_is_visible_when_cuda_sees_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", cupy_standin.module(devices=0))
    with pytest.raises(RuntimeError, match="no usable device.*device='cpu'"):
        lf.backend("gpu")


# ---------------------------------------------------------------------------
# The same numbers on both devices
# ---------------------------------------------------------------------------

NETS = [lambda: lf.FC(12, 16, 3, "softplus", 0.1), lambda: lf.CNN(2, 4, "swish")]
SHAPES = [(9, 12), (5, 2, 21, 20)]


@pytest.mark.parametrize("make, shape", zip(NETS, SHAPES))
def test_forward_backward_and_ntk_agree_on_cpu_and_gpu(cupy, make, shape):
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


@pytest.mark.parametrize("method, options", [
    ("flow", {}),
    ("flow", {"tau": 5.0}),  # momentum
    ("adam", {"lr": 1e-2, "batch_size": 8}),
    ("flow", {"integrator": "rk23"}),
    ("flow", {"integrator": "rkc"}),
    ("flow", {"integrator": "auto", "tau": 5.0}),
])
def test_training_agrees_on_cpu_and_gpu(cupy, method, options):
    x, y, xt, yt = data()
    cpu, gpu = on_both(lf.FC(6, 16, 2), 0, x, y, 1.0, xt, yt, method=method, max_steps=30, **options)
    assert cpu.steps_accepted == gpu.steps_accepted and cpu.status == gpu.status
    assert close(gpu.F_test, cpu.F_test, 1e-8)
    assert all(close(g, c, 1e-8) for g, c in zip(gpu.params, cpu.params))
    assert isinstance(gpu.records[-1]["loss"], float)
    assert [r["step"] for r in gpu.records] == [r["step"] for r in cpu.records]


def test_an_auto_ensemble_of_lazy_and_feature_members_agrees_on_cpu_and_gpu(cupy):
    """Members on rk23 and on rkc with their own stages in one trial, fits found inside a step, checkpoints
    interpolated: the same runs on both devices."""
    x, y, xt, yt = data()
    alphas = [1e-2, 1.0, 30.0, 1e3]
    cpu, gpu = on_both(lf.FC(6, 16, 2), [0, 1, 2, 3], x, y, alphas, xt, yt, integrator="auto")
    for c, g in zip(cpu, gpu):
        assert (c.status, c.steps_accepted, c.evaluations) == (g.status, g.steps_accepted, g.evaluations) == (
            "fitted", c.steps_accepted, c.evaluations)
        assert close(g.F_test, c.F_test, 1e-8)
        assert [r["t"] for r in g.records] == pytest.approx([r["t"] for r in c.records], rel=1e-9)


def test_training_in_the_span_of_the_data_agrees_on_cpu_and_gpu_and_with_the_full_input_space(cupy):
    x, y, xt, yt = data(p=10, d=30)  # p < d: the flow trains the first layer in the span of the 10 inputs
    net = lf.FC(30, 16, 2)
    assert lf.DataSpan.applies(net, x)
    cpu, gpu = on_both(net, 0, x, y, 1.0, xt, yt, max_steps=30)
    full = lf.train(net, net.init(0, device="gpu"), x, y, 1.0, xt, yt, max_steps=30, data_span=False)
    assert cpu.steps_accepted == gpu.steps_accepted == full.steps_accepted
    assert close(gpu.F_test, cpu.F_test, 1e-8) and close(gpu.F_test, full.F_test.get(), 1e-8)
    assert gpu.params[0].shape == (16, 30) and close(gpu.params[0], cpu.params[0], 1e-8)


def test_float32_training_on_the_gpu_stays_float32_and_follows_float64(cupy):
    x, y, xt, yt = data()
    net = lf.FC(6, 8, 2)
    run32 = lf.train(net, net.init(0, device="gpu", dtype="float32"), x, y, 1.0, xt, yt, max_steps=20)
    run64 = lf.train(net, net.init(0, device="gpu"), x, y, 1.0, xt, yt, max_steps=20)
    assert run32.F_test.dtype == cupy.float32 and all(w.dtype == cupy.float32 for w in run32.params)
    assert close(run32.F_test, run64.F_test.get(), 1e-3)


def test_an_ensemble_trains_alike_on_cpu_and_gpu_and_each_member_is_its_solo_run(cupy):
    x, y, xt, yt = data(seed=1)
    net, seeds, alphas = lf.FC(6, 16, 2), [0, 1, 2, 3], [1e-2, 1.0, 1e2, 1e4]
    cpu, gpu = on_both(net, seeds, x, y, alphas, xt, yt, max_steps=40)
    for c, g, seed, alpha in zip(cpu, gpu, seeds, alphas):
        assert c.steps_accepted == g.steps_accepted
        assert close(g.F_test, c.F_test, 1e-8)
        solo = lf.train(net, net.init(seed, device="gpu"), x, y, alpha, xt, yt, max_steps=40)
        assert close(g.F_test, solo.F_test.get(), 1e-10)
    theta = kernels.ntk(net, net.init(seeds, device="gpu"), cupy.asarray(x[:8]))
    assert close(theta, kernels.ntk(net, net.init(seeds), x[:8]))


def test_kernel_flow_and_baselines_agree_on_cpu_and_gpu(cupy):
    x, y, xt, yt = data()
    net = lf.FC(6, 16, 2)
    theta = kernels.ntk(net, net.init(0), x)
    flows = [kernels.flow(t, y, 1.0, max_steps=50) for t in (theta, cupy.asarray(theta))]
    assert close(flows[1].F, flows[0].F, 1e-8)
    cpu = kernels.baseline(net, net.init(0), x, y, xt, yt, 1.0, max_steps=50)
    gpu = kernels.baseline(net, net.init(0, device="gpu"), cupy.asarray(x), cupy.asarray(y), cupy.asarray(xt),
                           cupy.asarray(yt), 1.0, max_steps=50)
    assert cpu.steps_accepted == gpu.steps_accepted and close(gpu.F_test, cpu.F_test, 1e-8)


CONFIG = {"dataset": "sphere", "d": 5, "p": 20, "p_test": 30, "L": 2, "h": 8, "max_steps": 40,
          "kernel_points": 6, "kernel_along": True, "baselines": True, "store_F_test": True}


def test_experiment_configs_and_the_infinite_width_predictor_agree_on_cpu_and_gpu(cupy):
    for fn in (experiments.fit, experiments.fit_infinite):
        cpu, gpu = (fn({**CONFIG, "device": device}) for device in ("cpu", "gpu"))
        assert gpu["steps_accepted"] == cpu["steps_accepted"]
        assert close(np.array(gpu["F_test"]), np.array(cpu["F_test"]), 1e-8)
        assert json.dumps(gpu["records"][-1]["step"]) == json.dumps(cpu["records"][-1]["step"])
    assert close(np.array(gpu["records"][-1]["loss"]), np.array(cpu["records"][-1]["loss"]), 1e-8)


# ---------------------------------------------------------------------------
# Every finding at toy size, through the command line
# ---------------------------------------------------------------------------

TOY = ["--dataset", "sphere", "--d", "5", "--p", "16", "--p-test", "24", "--L", "2", "--seeds", "1",
       "--kernel-points", "6", "--h", "8"]
FINDING_SIZES = {
    "crossover": ["--alpha-sqrt-h", "0.01,10000", "--set", "bisect_steps=1"],
    "regimes": ["--d", "1,19,19", "--p", "8", "--p-test", "12", "--set", "pca=null", "--set", "ends=[0.01,10000]"],
    "fluctuations": ["--alpha-sqrt-h", "0.01,10000", "--seeds", "2"],
    "timescale": ["--alpha-sqrt-h", "0.01,1,10000"],
    "kernels": ["--alpha-sqrt-h", "0.01,10000"],
}


def numbers_alike(gpu, cpu, path="numbers"):
    """Whether two findings' numbers (nested dicts and lists) agree: floats to 1e-6, the rest exactly."""
    if isinstance(cpu, dict):
        assert gpu.keys() == cpu.keys(), path
        return all(numbers_alike(gpu[k], cpu[k], f"{path}.{k}") for k in cpu if "wall" not in k and "ms_" not in k)
    if isinstance(cpu, list):
        assert len(gpu) == len(cpu), path
        return all(numbers_alike(g, c, f"{path}[{i}]") for i, (g, c) in enumerate(zip(gpu, cpu)))
    if isinstance(cpu, float):
        assert gpu == pytest.approx(cpu, rel=1e-6, abs=1e-9, nan_ok=True), path
        return True
    assert gpu == cpu, path
    return True


@pytest.mark.parametrize("name", list(FINDING_SIZES))
def test_each_finding_on_the_gpu_gives_the_numbers_and_verdicts_of_the_cpu(cupy, name, tmp_path):
    records = {}
    for device in ("cpu", "gpu"):
        figures = tmp_path / f"figures-{device}"
        argv = [name, *TOY, *FINDING_SIZES[name], "--device", device, "--results", str(tmp_path / device),
                "--figures", str(figures), "--no-progress", "--workers", "1"]
        assert cli.main(argv) == 0
        records[device] = json.loads((figures / f"{name}.json").read_text())
    gpu, cpu = records["gpu"], records["cpu"]
    assert [v["holds"] for v in gpu["verdict"]] == [v["holds"] for v in cpu["verdict"]]
    assert numbers_alike(gpu["numbers"], cpu["numbers"])


# ---------------------------------------------------------------------------
# One transfer per step; memory
# ---------------------------------------------------------------------------


# Transfers a training makes once, before its first step: the checks of the training and test labels. The
# first status of its members (is any fitted, any diverged) comes with their first checkpoint.
SETUP_TRANSFERS = 2
# And at most once more at its end: the test errors of the last members to stop come with their last
# checkpoints, or alone where those were observed already.
END_TRANSFERS = 1


def transfers_of_training(standin, S, **options):
    """(transfers, loop iterations, checkpoints, runs) of a training of an ensemble of S FC nets on the
    stand-in. A checkpoint is one count of the transfer counter seen by the members it records (the callback)."""
    x, y, xt, yt = data(p=64, d=5, p_test=20)
    net = lf.FC(5, 8, 2)
    params = net.init(list(range(S)), device="gpu")
    checkpoints = set()

    def note(params, record):
        checkpoints.add(standin.device.transfers)

    start = standin.device.transfers
    runs = lf.train(net, params, x, y, list(np.geomspace(1e-2, 1e4, S)), xt, yt, callback=note, **options)
    iterations = max(r.steps_accepted + r.steps_rejected for r in runs)
    return standin.device.transfers - start, iterations, len(checkpoints), runs


@pytest.mark.parametrize("S", [1, 8, 64])
def test_a_flow_step_of_an_ensemble_of_any_size_costs_one_transfer_plus_one_per_checkpoint_of_one_member(standin, S):
    """Per loop iteration (one trial step of every running member): one transfer for the step. The members'
    checkpoints are observed together, however far apart their rejected steps take them: they cost no more
    transfers than one member's schedule has checkpoints, whatever S."""
    transfers, iterations, checkpoints, runs = transfers_of_training(standin, S, max_steps=60)
    schedule = max(len(run.records) for run in runs)
    assert checkpoints <= schedule, (checkpoints, schedule)
    assert transfers <= iterations + checkpoints + SETUP_TRANSFERS + END_TRANSFERS, (transfers, iterations, checkpoints)


def test_adam_makes_one_transfer_per_epoch_end_or_checkpoint_and_none_between(standin):
    """Adam evaluates the whole training set at the end of each epoch, at checkpoints and at its limit: one
    transfer brings the members' status and the checkpoint's records. The steps in between transfer nothing."""
    steps, per_epoch = 64, 64 // 8
    transfers, iterations, _, runs = transfers_of_training(standin, 2, method="adam", batch_size=8,
                                                           max_steps=steps)
    assert iterations == steps
    evaluations = set(range(per_epoch, steps + 1, per_epoch)) | {r["step"] for run in runs for r in run.records}
    assert transfers <= SETUP_TRANSFERS + len(evaluations) + END_TRANSFERS, (transfers, sorted(evaluations))


def test_peak_memory_on_the_gpu_measures_the_call_alone_not_what_was_allocated_before(cupy):
    kept = cupy.zeros((1024, 1024))  # 8 MiB held by the caller across the call
    once = bench.peak_memory(lambda: cupy.ones((256, 1024)) * 2, cupy)  # two 2 MiB arrays at once
    assert 4 << 20 <= once < 6 << 20
    assert kept.shape == (1024, 1024)


# ---------------------------------------------------------------------------
# Memory on a shared device; convolution blocks
# ---------------------------------------------------------------------------


def test_sweep_workers_sharing_a_gpu_size_each_ensemble_to_their_share_of_its_free_memory(standin):
    """Every worker's ensembles fit in its share of half the free memory, so that all of them fit together."""
    config = {**CONFIG, "alpha_sqrt_h": 1.0, "seed": 0, "device": "gpu"}
    each = experiments.member_bytes(config)
    standin.device.memory = standin.device.used + 64 * each
    free = lf.available_memory(standin)
    capacity = {workers: findings.Context(workers=workers, device="gpu", max_members=1000).ensembles()
                .capacity(config) for workers in (1, 2, 4)}
    for workers, members in capacity.items():
        assert members >= 1 and workers * members * each <= free / 2, (workers, members, free / each)
    assert capacity[1] > capacity[2] > capacity[4]


H200_FREE = 140 << 30  # what CUDA reports free on an H200 (141 GB) once it has started


def conv_products(net, S, n, size):
    """(members, samples, OH, OW, fan_in, width) of each conv layer's product in a forward pass of an
    ensemble of S CNNs on n images of size x size: its gradient's products take the same blocks. The first
    layer's input is shared by the members: it is multiplied by all members' filters at once."""
    products = []
    for i, conv in enumerate(layer for layer in net.layers if isinstance(layer, lf.Conv)):
        size = lf.conv_output_size(size, conv.k, conv.stride, conv.pad)
        shared = i == 0
        products.append((1 if shared else S, n, size, size, conv.fan_in, conv.out_ch * (S if shared else 1)))
    return products


@pytest.mark.parametrize("h", [32, 128])  # the widths of the paper's CNN (finding 2, MNIST p = 5000)
def test_a_paper_size_cnn_layer_takes_tens_of_gpu_blocks_and_two_blocks_fit_beside_the_ensemble(monkeypatch, h):
    """An ensemble of the paper's CNN, as many members as a sweep puts on one H200, on a pass of lf.CHUNK
    images: each conv layer's product is cut into tens of blocks (blocks of 256 MiB cut the widest into
    450 to 550, and a pass into thousands), and two blocks' columns and products fit in what the ensemble
    leaves free. The blocks depend on the device's total memory only, not on what is free."""
    monkeypatch.setitem(sys.modules, "cupy", cupy_standin.module(memory=H200_FREE))
    net = lf.CNN(1, h)
    each = net.bytes_per_member(net.init(0), np.zeros((1, 1, 28, 28)), lf.CHUNK)
    S = min(findings.ENSEMBLE_MEMBERS["gpu"], int(findings.Context(device="gpu").ensemble_memory() // each))
    left = H200_FREE - S * each  # free beside the ensemble
    cupy = cupy_standin.module(memory=H200_FREE)
    for members, n, OH, OW, fan_in, width in conv_products(net, S, lf.CHUNK, 28):
        max_positions = machine.max_block_positions(cupy, fan_in, width)
        cupy.device.used = S * each  # the ensemble allocated: the blocks stay the same
        assert machine.max_block_positions(cupy, fan_in, width) == max_positions
        blocks = lf.blocks(members, n, OH, OW, max_positions)
        assert len(blocks) < 100, (h, S, OH, len(blocks))
        for block in blocks:
            positions = np.prod([len(range(total)[part]) for total, part in zip((members, n, OH), block)]) * OW
            assert 2 * 8 * positions * (fan_in + width) <= left
