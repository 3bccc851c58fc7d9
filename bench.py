"""bench: speed and memory of the engine, measured (never asserted by tests).

- gradient: one full-batch loss gradient (forward + backward) against the GEMM
  bound, the time of the very matrix products that pass contains;
- steps: milliseconds per accepted step of real gradient-flow training, and of
  the FC net with its first layer in the span of the data against without;
- ntk: the structured NTK against the Jacobian method (time and peak memory),
  and against one forward + backward on the same points;
- infinite: the NTK at infinite width on p = 10 000 points (its table, then the
  lookup) and its errors.
"""
import collections
import functools
import math
import statistics
import time
import tracemalloc

import numpy as np

import experiments
import kernels
import lazyfeat as lf
import machine


def synchronize(xp):
    """Wait for the GPU to finish (a no-op for NumPy), so that timings are real."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def median_time(fn, xp, repeat=5):
    """The median wall time of fn() over `repeat` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        synchronize(xp)
        start = time.perf_counter()
        fn()
        synchronize(xp)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(fn, xp):
    """The peak memory in bytes that fn() allocates beyond what was allocated before the call (NumPy:
    tracemalloc; CuPy: the high-water mark of the memory pool's used bytes, read at every allocation)."""
    if xp is np:
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak
    pool = xp.get_default_memory_pool()
    synchronize(xp)

    class HighWater(xp.cuda.MemoryHook):
        name = "HighWater"
        used = pool.used_bytes()

        def malloc_postprocess(self, **kwargs):
            self.used = max(self.used, pool.used_bytes())

    before = HighWater.used
    with HighWater() as hook:
        fn()
        synchronize(xp)
    return hook.used - before


def gemm_shapes(net, cache):
    """The (m, k, n) of every matrix product in one forward + backward pass of one network, read off the caches.

    Dense (its cache is its input): forward (n, in) x (in, out), weight gradient (out, n) x (n, in),
    input gradient (n, out) x (out, in). Conv (its cache is its padded input), with K = C k^2 and
    N = n x positions: (N, K) x (K, out), (K, N) x (N, out), and its input gradient, a convolution
    of the same size. The first trained layer needs no input gradient; the readout's
    matrix-vector products are left out.
    """
    shapes = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, lf.Dense):
            n, k = cache[i].shape[-2:]
            m = layer.fan_out
            shapes += [(n, k, m), (m, n, k)] + ([(n, m, k)] if i > net.first_trained else [])
        elif isinstance(layer, lf.Conv):
            n, H, W, _ = cache[i].shape[-4:]
            OH, OW = (lf.conv_output_size(size - 2 * layer.pad, layer.k, layer.stride, layer.pad) for size in (H, W))
            N, K, O = n * OH * OW, layer.fan_in, layer.out_ch
            shapes += [(N, K, O), (K, N, O)] + ([(N, O, K)] if i > net.first_trained else [])
    return shapes


def gemm_bound(shapes, xp, dtype):
    """The time of the plain matrix products of these shapes on random matrices."""
    rng = np.random.default_rng(0)
    pairs = [(xp.asarray(rng.standard_normal((m, k)), dtype=dtype), xp.asarray(rng.standard_normal((k, n)), dtype=dtype))
             for m, k, n in shapes]
    return median_time(lambda: [a @ b for a, b in pairs], xp)


def bench_gradient(name, net, x, device="cpu", dtype="float64"):
    """One full-batch loss gradient of `net` on x, its samples split over the cores as training does,
    against its GEMM bound."""
    params = net.init(0, device, dtype)
    xp = lf.array_module(params[0])
    y = np.where(np.arange(len(x)) % 2 == 0, 1.0, -1.0)
    objective = lf.Objective(net, params, x, y, 1.0)
    objective.split(machine.cpu_threads(xp), len(x))
    seconds = median_time(lambda: objective.evaluate(params), xp)
    _, cache = net.forward(params, objective.x)
    shapes = gemm_shapes(net, cache)
    bound = gemm_bound(shapes, xp, params[0].dtype)
    gflop = sum(2 * m * k * n for m, k, n in shapes) / 1e9
    return {"bench": "gradient", "case": name, "ms": 1e3 * seconds, "gemm_ms": 1e3 * bound,
            "of_gemm_bound": bound / seconds, "gflop": gflop, "gflop_per_s": gflop / seconds}


def bench_steps(steps=500, device="cpu", dtype="float64"):
    """ms per accepted step of the paper's gradient flow: FC L=3 h=100 on Fashion-MNIST, p=1000."""
    config = {"dataset": "fashion", "p": 1000, "p_test": 1000, "h": 100, "L": 3, "alpha_sqrt_h": 1e4,
              "max_steps": steps, "device": device, "dtype": dtype}
    result = experiments.fit(config)
    return {"bench": "steps", "case": f"FC h=100 L=3 fashion p=1000, {result['steps_accepted']} steps",
            "ms_per_step": result["ms_per_step"], "steps_rejected": result["steps_rejected"]}


def bench_data_span(h=180, steps=300, repeat=3, device="cpu", dtype="float64"):
    """ms per accepted step of gradient flow, FC L=3 width h on Fashion-MNIST p=300 (fewer samples than its
    784 features), with the first layer trained in the span of the data (lazyfeat.DataSpan) and without:
    the two sides in turn, `repeat` times, the median of each."""
    x, y, _, _ = experiments.load_data(experiments.full_config({"dataset": "fashion", "p": 300, "p_test": 0}))
    net = lf.FC(x.shape[1], h, 3)
    params = net.init(0, device, dtype)
    ms = collections.defaultdict(list)
    for _ in range(repeat):
        for span in (True, False):
            run = lf.train(net, params, x, y, 1e4 / math.sqrt(h), max_steps=steps, data_span=span)
            ms[span].append(1e3 * run.wall_s / run.steps_accepted)
    span_ms, plain_ms = statistics.median(ms[True]), statistics.median(ms[False])
    return {"bench": "span", "case": f"FC L=3 h={h} fashion p=300, {steps} steps", "span_ms": span_ms,
            "plain_ms": plain_ms, "speedup": plain_ms / span_ms}


ENSEMBLE_ALPHAS = [1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3, 1e4]  # alpha sqrt(h): the quick scale's 7 values
ENSEMBLE_SEEDS = 4


def bench_ensemble(h, steps=100, repeat=3, device="cpu", dtype="float64"):
    """Member-steps per second of 7 alphas x 4 seeds trained as ensembles of the size that a sweep with
    one worker gives them (findings.Context.ensembles: its default cap, lowered to stay in the cache),
    against the same 28 networks trained one at a time (FC L=3, Fashion-MNIST p=300, at most `steps`
    accepted steps each).

    Both sides do the same accepted steps (an ensemble member is its solo run), so the
    ratio of their walls is the speed-up. Each network records 1 checkpoint per decade of steps (at
    steps 0, 1, 10, 100): a few per cent of its steps, as in a real run of thousands of steps, where
    the default 20 per decade would record a third of these first 100 steps. The sides run in turn, `repeat` times; the
    median wall of each counts. On a CPU of several cores a third side trains the
    networks one at a time on each core, the cores side by side (`machine.in_parallel`):
    what splitting the members over the cores gains without sharing any work (`split`,
    against one at a time). An ensemble beats it only by sharing work between its members.
    """
    import findings

    base = {"dataset": "fashion", "p": 300, "p_test": 300, "h": h, "L": 3, "max_steps": steps, "checkpoints": 1,
            "device": device, "dtype": dtype}
    configs = [{**base, "alpha_sqrt_h": a, "seed": s} for s in range(ENSEMBLE_SEEDS) for a in ENSEMBLE_ALPHAS]
    experiments.load_data(experiments.full_config(base))  # the data set is read before the clock starts
    jobs = math.ceil(len(configs) / findings.Context(device=device).ensembles().capacity(base))
    size = math.ceil(len(configs) / jobs)  # balanced sizes, as sweeps cut a group
    cores = machine.cpu_threads(lf.backend(device))
    walls = collections.defaultdict(list)

    def timed(side, train):
        start = time.perf_counter()
        runs = train()
        walls[side].append(time.perf_counter() - start)
        return runs

    for _ in range(repeat):
        together = timed("ensemble", lambda: [r for i in range(0, len(configs), size)
                                              for r in experiments.fit_ensemble(configs[i:i + size])])
        alone = timed("solo", lambda: [experiments.fit(c) for c in configs])
        if cores > 1:
            timed("side by side", lambda: machine.in_parallel(experiments.fit, configs, cores))
    member_steps = sum(r["steps_accepted"] for r in together)
    per_s = {side: member_steps / statistics.median(wall) for side, wall in walls.items()}
    row = {"bench": "ensemble", "case": f"FC L=3 h={h} fashion p=300, {len(configs)} networks by {size}, "
                                        f"{cores} cores",
           "member_steps": member_steps, "same_steps": member_steps == sum(r["steps_accepted"] for r in alone),
           "records_per_step": sum(len(r["records"]) for r in together) / member_steps,
           "ensemble_per_s": per_s["ensemble"], "solo_per_s": per_s["solo"],
           "speedup": per_s["ensemble"] / per_s["solo"]}
    if cores > 1:
        row.update(side_by_side_per_s=per_s["side by side"], split=per_s["side by side"] / per_s["solo"])
    return row


AUTHORS_CNN_MS = (390, 397)  # the authors' PyTorch code, h=16 p=500 float64, measured beside this code (BENCHMARKS.md)


def bench_cnn_steps(steps=20, repeat=3, device="cpu", dtype="float64"):
    """ms per accepted step of gradient flow for the paper's CNN, h=16 channels, Fashion-MNIST p=500:
    the median of `repeat` runs (the same steps each time)."""
    config = {"dataset": "fashion", "arch": "cnn", "h": 16, "p": 500, "p_test": 100, "alpha_sqrt_h": 1e4,
              "max_steps": steps, "device": device, "dtype": dtype}
    results = [experiments.fit(config) for _ in range(repeat)]
    ms = statistics.median(r["ms_per_step"] for r in results)
    return {"bench": "steps", "case": f"CNN h=16 fashion p=500, {results[0]['steps_accepted']} steps, "
                                      f"median of {repeat}",
            "ms_per_step": ms, "steps_rejected": results[0]["steps_rejected"], "of_authors": ms / np.mean(AUTHORS_CNN_MS)}


def reference_flow(objective, params0, tau=0.0, rtol=1e-10):
    """The flow of one network by SciPy's DOP853 at a tight tolerance: a reference for the integrators.

    objective: an Objective of one member, params0 its weights with the member axis. dw/dt = -grad L, or
    with momentum dw/dt = v, dv/dt = -(v + grad L) / tau. Integrates until the smallest margin reaches 1
    (an event, located on DOP853's dense output). Returns (t_fit, w(t)), w(t) the weights at any
    0 <= t <= t_fit, with the member axis.
    """
    import scipy.integrate

    shapes = [w.shape for w in params0]
    ends = np.cumsum([w.size for w in params0])
    n = int(ends[-1])

    def weights(z):
        return [part.reshape(shape) for part, shape in zip(np.split(z[:n], ends[:-1]), shapes)]

    def rate(t, z):
        grad = np.concatenate([g.ravel() for g in objective.evaluate(weights(z)).grad])
        return -grad if tau == 0 else np.concatenate([z[n:], -(z[n:] + grad) / tau])

    def fitted(t, z):
        return float(objective.evaluate(weights(z), need_grad=False).margins.min()) - 1

    fitted.terminal, fitted.direction = True, 1
    z0 = np.concatenate([w.ravel() for w in params0] + ([np.zeros(n)] if tau > 0 else []))
    solution = scipy.integrate.solve_ivp(rate, (0, 1e12), z0, method="DOP853", rtol=rtol, atol=1e-14,
                                         dense_output=True, events=fitted)
    if not solution.t_events[0].size:
        raise RuntimeError(f"the reference flow did not fit: {solution.message}")
    return float(solution.t_events[0][0]), lambda t: weights(solution.sol(t))


def deviations(net, params0, x_test, alpha, checkpoints, reference):
    """devF: the largest over the checkpoints of max |F_test - F_test_ref| / max |F_test_ref|, and devW: the
    largest of |w - w_ref| / |w_ref - w0|, for checkpoints [(t, w)] against reference(t) (weights, no member axis)."""
    f0 = net.forward(params0, x_test)[0]
    dev_F = dev_W = 0.0
    for t, w in checkpoints:
        if t <= 0:
            continue
        w_ref = reference(t)
        F_ref = alpha * (net.forward(w_ref, x_test)[0] - f0)
        F = alpha * (net.forward(w, x_test)[0] - f0)
        dev_F = max(dev_F, float(np.abs(F - F_ref).max() / np.abs(F_ref).max()))
        distance = lambda a, b: math.sqrt(sum(float(((u - v) ** 2).sum()) for u, v in zip(a, b)))
        dev_W = max(dev_W, distance(w, w_ref) / distance(w_ref, params0))
    return dev_F, dev_W


# The cases of issue 20: (h, p, alpha sqrt(h)) of FC L=3 on Fashion-MNIST, lazy, crossover and feature.
INTEGRATOR_CASES = ((100, 300, 1e4), (100, 300, 1.0), (100, 300, 1e-2), (20, 300, 1e4), (20, 300, 1e-2),
                    (100, 1000, 1.0))


def bench_integrators(cases=INTEGRATOR_CASES, integrators=lf.INTEGRATORS, p_test=500, seed=0):
    """Each integrator's gradient evaluations and wall to fit, side by side with the paper's rule, and its
    accuracy against a DOP853 reference (`reference_flow`, rtol 1e-10): devF and devW over its checkpoints
    and the error of its fit time. One row per case, then one with the evaluations and walls summed over
    the cases, as ratios to the paper rule's. The wall leaves out the time the checkpoints spend on devF's
    copies of the weights; CPU, float64."""
    totals = collections.defaultdict(lambda: [0, 0.0])
    for h, p, alpha_sqrt_h in cases:
        config = experiments.full_config({"dataset": "fashion", "p": p, "p_test": p_test, "h": h})
        x, y, x_test, _ = experiments.load_data(config)
        net, alpha = lf.FC(x.shape[1], h, 3), alpha_sqrt_h / math.sqrt(h)
        params0 = net.init(seed)
        span = lf.DataSpan(net, [w[None] for w in params0], x)
        t_fit, w_span = reference_flow(lf.Objective(span.net, span.params0, span.x, y, alpha), span.params0)
        reference = lambda t: span.original([w[0] for w in w_span(t)], 0)
        row = {"bench": "integrators", "case": f"FC L=3 h={h} p={p} alpha sqrt(h)={alpha_sqrt_h:g}",
               "t_fit": t_fit, "integrators": {}}
        for integrator in integrators:
            checkpoints, copying = [], [0.0]

            def keep(params, record):
                start = time.perf_counter()
                checkpoints.append((record["t"], [w.copy() for w in params]))
                copying[0] += time.perf_counter() - start

            run = lf.train(net, params0, x, y, alpha, integrator=integrator, callback=keep, checkpoints=10)
            dev_F, dev_W = deviations(net, params0, x_test, alpha, checkpoints, reference)
            row["integrators"][integrator] = {"evaluations": run.evaluations, "wall_s": run.wall_s - copying[0],
                                              "status": run.status, "dev_F": dev_F, "dev_W": dev_W,
                                              "t_error": run.t / t_fit - 1}
            totals[integrator][0] += run.evaluations
            totals[integrator][1] += run.wall_s - copying[0]
        yield row
    paper = totals["paper"]
    yield {"bench": "integrators_total", "case": f"{len(cases)} cases", "integrators": {
        name: {"evaluations": e, "wall_s": w, "evaluations_ratio": e / paper[0], "wall_ratio": w / paper[1]}
        for name, (e, w) in totals.items()}}


def bench_throughput(members, h, p, steps, device="cpu", dtype="float64"):
    """Member-steps per second of an ensemble of `members` FC nets (L=3, Fashion-MNIST, p points), each
    trained for `steps` accepted steps at alpha sqrt(h) spread over 1e-2 .. 1e4 (seeds 0, 1, ...)."""
    alphas = np.logspace(-2, 4, members).tolist()
    configs = [{"dataset": "fashion", "p": p, "p_test": 1000, "h": h, "L": 3, "alpha_sqrt_h": a, "seed": s,
                "max_steps": steps, "device": device, "dtype": dtype} for s, a in enumerate(alphas)]
    experiments.fit_ensemble(configs[:1])  # warm-up: the data set, the device's kernels
    start = time.perf_counter()
    results = experiments.fit_ensemble(configs)
    seconds = time.perf_counter() - start
    member_steps = sum(r["steps_accepted"] for r in results)
    return {"bench": "throughput", "case": f"{members} x FC L=3 h={h} fashion p={p}, {device}",
            "member_steps": member_steps, "seconds": seconds, "per_s": member_steps / seconds}


def fc_cost(h, L=3, d=784):
    """Multiply-adds per sample of one forward pass of the FC net, d h + (L - 1) h^2 + h: a step's cost scale."""
    return d * h + (L - 1) * h * h + h


def paper_runs(name):
    """{(h, L, d, p): number of runs} of the FC runs of a finding at paper scale (crossover without its
    bisection); d is the input dimension (784 pixels, or the PCA's)."""
    import findings

    sizes = findings.SCALES["paper"][name]
    parts = [part for part in sizes.values() if isinstance(part, dict) and part.get("arch", "fc") == "fc"] \
        if name == "regimes" else [sizes]
    runs = collections.Counter()
    for part in parts:
        for h in part["h"]:
            shape = (h, part["L"], part.get("pca") or 784, part["p"])
            runs[shape] += len(part["ends"] if "ends" in part else part["alpha_sqrt_h"]) * part["seeds"]
    return runs


def projected_hours(steps_per_run, member_steps_per_s, h, p):
    """{finding: hours} of each finding's FC runs at paper scale, from member-steps per second measured at width h
    (L=3, d=784) on p points: every run takes steps_per_run steps (those measured; runs on fewer points may
    need fewer), each costing p' fc_cost(h', L', d') / (p fc_cost(h)) of a measured step."""
    import findings

    def relative_cost(shape):
        width, L, d, points = shape
        return points * fc_cost(width, L, d) / (p * fc_cost(h))

    return {name: sum(n * steps_per_run * relative_cost(shape) for shape, n in paper_runs(name).items())
            / member_steps_per_s / 3600 for name in findings.SCALES["paper"]}


# Projecting a sweep before it starts: findings.Context prints it.

TYPICAL_STEPS = 2200  # the fewest accepted steps the authors' code took to fit at p = 1000 (PAPER.md, section 7)
CALIBRATION = {"dataset": "sphere", "d": 784, "p": 300, "p_test": 10, "h": 100, "L": 3, "max_steps": 10,
               "checkpoints": 1}
CALIBRATION_MEMBERS = 8
CPU_HOURS_WARNING = 3.0  # a sweep projected to take longer on the CPU says how else to run it


def input_dimension(config):
    """The input dimension d of an FC run: its PCA's, its synthetic d, or its data set's image size."""
    import datafiles
    import datasets

    if config.get("pca"):
        return config["pca"]
    if config.get("d"):
        return math.prod(config["d"]) if isinstance(config["d"], (list, tuple)) else config["d"]
    name = datafiles.ALIASES.get(config["dataset"], config["dataset"])
    return math.prod(datafiles.SETS[name].shape) if name in datafiles.SETS else datasets.DEFAULT_SYNTHETIC_DIM


@functools.cache
def member_steps_per_s(device="cpu"):
    """Member-steps per second of an ensemble of CALIBRATION_MEMBERS FC nets of CALIBRATION's size on this
    device, over its few steps: the speed that projected_sweep scales (measured once per process)."""
    configs = [{**CALIBRATION, "alpha_sqrt_h": 1e4, "seed": seed, "device": device}
               for seed in range(CALIBRATION_MEMBERS)]
    experiments.load_data(experiments.full_config(configs[0]))
    start = time.perf_counter()
    results = experiments.fit_ensemble(configs)
    return sum(r["steps_accepted"] for r in results) / (time.perf_counter() - start)


def projected_sweep(configs, device="cpu", steps_per_run=TYPICAL_STEPS):
    """(hours, FC runs, other runs) of the runs of experiments.fit `configs` on this device: each FC run
    takes steps_per_run steps of p fc_cost(h, L, d) multiply-adds per point, timed against the calibration
    (member_steps_per_s). CNN runs are counted, not projected."""
    fc = [c for c in configs if c.get("arch", "fc") == "fc"]
    units = sum(c["p"] * fc_cost(c["h"], c.get("L", 3), input_dimension(c)) for c in fc)
    per_step = CALIBRATION["p"] * fc_cost(CALIBRATION["h"], CALIBRATION["L"], CALIBRATION["d"])
    hours = steps_per_run * units / per_step / member_steps_per_s(device) / 3600 if fc else 0.0
    return hours, len(fc), len(configs) - len(fc)


def paper_projection(h, p, p_test, members, max_wall, device="cpu", dtype="float64"):
    """Train `members` networks of finding 1's paper grid (FC L=3 width h, seed 0, alpha sqrt(h) spread over
    the paper's half decades) to the end or for max_wall seconds, and project each finding's FC runs at paper
    scale (`projected_hours`) with the accepted steps of the longest member: a lower bound unless every
    member fitted."""
    import findings

    half_decades = findings.PAPER_GRID["alpha_sqrt_h"]
    alphas = half_decades[:: max(1, len(half_decades) // members)][:members]
    configs = [{"dataset": "fashion", "p": p, "p_test": p_test, "h": h, "L": 3, "alpha_sqrt_h": a, "seed": 0,
                "max_wall": max_wall, "device": device, "dtype": dtype} for a in alphas]
    start = time.perf_counter()
    results = experiments.fit_ensemble(configs)
    seconds = time.perf_counter() - start
    per_s = sum(r["steps_accepted"] for r in results) / seconds
    steps = max(r["steps_accepted"] for r in results)
    fitted = sum(r["status"] == "fitted" for r in results)
    return {"bench": "projection", "case": f"{len(configs)} x FC L=3 h={h} p={p} p_test={p_test}, {device}",
            "seconds": seconds, "fitted": fitted, "members": len(configs), "steps_per_run": steps,
            "member_steps_per_s": per_s, "projected_hours": projected_hours(steps, per_s, h, p)}


def device_benchmarks(device="gpu", dtype="float64", members=64, p=10_000, steps=50, max_wall=30):
    """The device checks' benchmarks: an ensemble of `members` FC nets (h=100, p points) against one net
    on the device and one net on the CPU, and a paper-scale subset with its projection."""
    yield bench_throughput(members, 100, p, steps, device, dtype)
    yield bench_throughput(1, 100, p, steps, device, dtype)
    yield bench_throughput(1, 100, p, max(1, steps // 5), "cpu", dtype)
    yield paper_projection(100, p, 5 * p, 23, max_wall, device, dtype)


def bench_ntk(name, net, x, method, chunk=1024, device="cpu", dtype="float64"):
    """The NTK of `net` on the points x by `method`: time, peak memory, and time over one forward + backward."""
    params = net.init(0, device, dtype)
    xp = lf.array_module(params[0])
    x = xp.asarray(x, dtype=params[0].dtype)
    seconds = median_time(lambda: kernels.ntk(net, params, x, chunk=chunk, method=method), xp, repeat=1)
    peak = peak_memory(lambda: kernels.ntk(net, params, x, chunk=chunk, method=method), xp)

    def forward_backward():
        f, cache = net.forward(params, x)
        net.backward(params, cache, xp.ones_like(f))

    pass_seconds = median_time(forward_backward, xp)
    return {"bench": "ntk", "case": f"{name}, {method}, chunk {chunk}", "ms": 1e3 * seconds,
            "peak_mb": peak / 2**20, "over_forward_backward": seconds / pass_seconds}


def bench_infinite(p=10_000, D=784, L=3, act="softplus", check_points=64, device="cpu"):
    """kernels.ntk_infinite on p points of norm sqrt(D), float64: the time to build the table of
    (L, act) and the time to read the (p, p) kernel from it; the table's error at the midpoints of its
    grid (where the cubic's error is largest) and the error against direct quadrature on the pairs of
    the first `check_points` points, both relative to Theta(x, x)."""
    xp = lf.backend(device)
    x_host = random_inputs((p, D))
    x = xp.asarray(x_host)
    kernels.sphere_table.cache_clear()
    start = time.perf_counter()
    pieces = kernels.sphere_table(L, act, 0.0)[0]
    build_s = time.perf_counter() - start
    lookup_s = median_time(lambda: kernels.ntk_infinite(x, L=L, act=act), xp, repeat=1)
    diagonal = kernels.infinite_width_kernels(np.ones(1), 1.0, 1.0, L, act, 0.0)[0][0]
    midpoints = (np.arange(kernels.TABLE_POINTS - 1) + 0.5) * (math.pi / (kernels.TABLE_POINTS - 1))
    exact = kernels.infinite_width_kernels(np.cos(midpoints), 1.0, 1.0, L, act, 0.0, midpoints)[0]
    table_error = np.abs(kernels.interpolate(pieces, midpoints) - exact).max() / diagonal
    few = x_host[:check_points]
    i, j = np.triu_indices(check_points)
    q = np.sum(few**2, axis=1) / D
    direct = kernels.infinite_width_kernels(np.sum(few[i] * few[j], axis=1) / D, q[i], q[j], L, act, 0.0)[0]
    direct_error = np.abs(kernels.ntk_infinite(few, L=L, act=act)[i, j] - direct).max() / diagonal
    return {"bench": "infinite", "case": f"FC L={L} {act}, p={p} D={D}", "build_s": build_s, "lookup_s": lookup_s,
            "table_error": float(table_error), "direct_error": float(direct_error)}


def random_inputs(shape, seed=0):
    """Gaussian inputs with the norm of preprocessed images (|x| = sqrt(D))."""
    x = np.random.default_rng(seed).standard_normal(shape)
    flat = x.reshape(len(x), -1)
    return x * (math.sqrt(flat.shape[1]) / np.linalg.norm(flat, axis=1)).reshape((-1,) + (1,) * (x.ndim - 1))


def all_benchmarks(device="cpu", dtype="float64", steps=500, jacobian_points=128):
    """Every benchmark of the project, one dict each, as they are measured.

    The Jacobian method of the FC net (h = 1000: 2.8 million weights) forms
    chunk x 2.8e6 matrices and needs minutes and gigabytes on 1000 points: it
    is timed on its first `jacobian_points`, beside the structured NTK on the same points.
    """
    yield bench_gradient("FC L=3 h=100 p=1000 D=784", lf.FC(784, 100, 3), random_inputs((1000, 784)), device, dtype)
    yield bench_gradient("FC L=3 h=1000 p=1000 D=784", lf.FC(784, 1000, 3), random_inputs((1000, 784)), device, dtype)
    yield bench_gradient("CNN h=32 p=256 28x28", lf.CNN(1, 32), random_inputs((256, 1, 28, 28)), device, dtype)
    yield bench_steps(steps, device, dtype)
    yield bench_data_span(device=device, dtype=dtype)
    yield bench_cnn_steps(device=device, dtype=dtype)
    for h in (20, 180):  # on a GPU each side is timed once, to fit the device checks' budget (.ci/device)
        yield bench_ensemble(h, repeat=1 if device == "gpu" else 3, device=device, dtype=dtype)
    fc, x_fc = lf.FC(784, 1000, 3), random_inputs((1000, 784))
    yield bench_ntk("FC L=3 h=1000, 1000 points", fc, x_fc, "layers", device=device, dtype=dtype)
    few = f"FC L=3 h=1000, {jacobian_points} points"
    yield bench_ntk(few, fc, x_fc[:jacobian_points], "layers", device=device, dtype=dtype)
    yield bench_ntk(few, fc, x_fc[:jacobian_points], "jacobian", 64, device, dtype)
    cnn, x_cnn = lf.CNN(1, 32), random_inputs((500, 1, 28, 28))
    yield bench_ntk("CNN h=32, 500 points 28x28", cnn, x_cnn, "layers", 250, device, dtype)
    yield bench_ntk("CNN h=32, 500 points 28x28", cnn, x_cnn, "jacobian", 125, device, dtype)
    yield bench_infinite(device=device)
