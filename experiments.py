"""experiments: one training run described by a plain config, and its measurements.

A config is a dict of JSON values (so that a sweep can hash it and store its
result): the data, the network, alpha sqrt(h), the seeds, the training method
and what to measure. `fit(config)` runs it and returns a JSON-ready result:
the run's summary and records, the kernel change on fixed test points, and,
when asked, the test predictor and the init./final kernel baselines.
"""
import math

import numpy as np

import datasets
import kernels
import lazyfeat as lf
import sweep

# Every key a config may have, with its default. A config names only what differs.
DEFAULTS = {
    # data: the first p samples of `dataset` (shuffled with data_seed) train, the next p_test test
    "dataset": "fashion", "pca": None, "d": None, "p": 1000, "p_test": 10000, "data_seed": 0,
    # network
    "arch": "fc", "h": 100, "L": 3, "act": "softplus", "bias": 0.0,
    # the alpha trick: alpha = alpha_sqrt_h / sqrt(h) (default: the lazy end); subtract f(w0) or not
    "alpha_sqrt_h": 1e4, "subtract_f0": True, "loss": "softhinge",
    # training: the seed of the initialisation, the method and its settings, the limits
    "seed": 0, "method": "flow", "integrator": "paper", "max_dgrad": 1e-4, "max_dout": 0.1, "tau": 0.0,
    "lr": 1e-3, "batch_size": 32, "max_time": None, "max_wall": None, "max_steps": None, "checkpoints": 20,
    # measurements: the kernel change on the first kernel_points test points (0: none), also
    # along the run; the test fit at every checkpoint (else at the end only); the test predictor;
    # the frozen-kernel baselines
    "kernel_points": 0, "kernel_along": False, "test_along": True, "store_F_test": False, "baselines": False,
    # and the distance of F on those points to the linear (frozen initial NTK) flow at t1/10, t1, 10 t1
    "linear_gap": False,
    # where and how
    "device": "cpu", "dtype": "float64",
}


def full_config(config):
    """The config with every default filled in; unknown keys are an error that names them."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **config}


def build_network(c, x_shape):
    """The network of config `c` for inputs of shape x_shape (n, ...)."""
    if c["arch"] == "fc":
        return lf.FC(math.prod(x_shape[1:]), c["h"], c["L"], c["act"], c["bias"])
    if c["arch"] == "cnn":
        if len(x_shape) != 4:
            raise ValueError(f"the CNN needs images; {c['dataset']} gives inputs of shape {x_shape[1:]} "
                             "(drop pca, or give d as (C, H, W) for a synthetic set)")
        return lf.CNN(x_shape[1], c["h"], c["act"])
    raise ValueError(f"unknown architecture {c['arch']!r}; choose 'fc' or 'cnn'")


def load_data(c):
    """The data of config `c`, shaped for its architecture (flattened for the FC net)."""
    d = tuple(c["d"]) if isinstance(c["d"], list) else c["d"]
    x, y, x_test, y_test = datasets.load(c["dataset"], c["p"], c["p_test"], seed=c["data_seed"],
                                         pca=c["pca"], d=d)
    if c["arch"] == "fc":
        x, x_test = (a.reshape(len(a), math.prod(a.shape[1:])) for a in (x, x_test))
    return x, y, x_test, y_test


def alpha_of(c):
    """The paper's alpha from the control variable: alpha = (alpha sqrt(h)) / sqrt(h)."""
    return lf.check_alpha(c["alpha_sqrt_h"]) / math.sqrt(c["h"])


def limits_of(c):
    """The stop limits of config `c` (None: no limit)."""
    return {"max_time": c["max_time"] or math.inf, "max_wall": c["max_wall"] or math.inf,
            "max_steps": c["max_steps"]}


def to_list(a):
    """A device array as a list of floats (for JSON)."""
    return [float(v) for v in (a.get() if hasattr(a, "get") else a)]


def run_result(run):
    """What a result stores of any run: its summary, its wall per accepted step and its records."""
    return {**run.summary(), "ms_per_step": 1e3 * run.wall_s / max(run.steps_accepted, 1), "records": run.records}


MEMBER_KEYS = ("seed", "alpha_sqrt_h")  # what may differ between the members of an ensemble


def ensemble_key(config):
    """What configs must share to be trained as one ensemble: everything but the seed and alpha sqrt(h)."""
    c = full_config(config)
    return sweep.canonical({k: v for k, v in c.items() if k not in MEMBER_KEYS})


def fit(config):
    """Run config `config` from start to end and return its JSON-ready result."""
    return fit_ensemble([config])[0]


def fit_ensemble(configs):
    """Run configs that differ only in seed and alpha sqrt(h) as one ensemble: one result per config,
    each what `fit` gives for it alone."""
    cs = [full_config(config) for config in configs]
    if len({ensemble_key(c) for c in cs}) > 1:
        raise ValueError("an ensemble's configs may differ only in " + " and ".join(MEMBER_KEYS))
    c = cs[0]
    x, y, x_test, y_test = load_data(c)
    if c["kernel_points"] > len(x_test):
        raise ValueError(f"kernel_points={c['kernel_points']} exceeds p_test={len(x_test)}")
    net = build_network(c, x.shape)
    params0 = net.init([m["seed"] for m in cs], c["device"], c["dtype"])
    xp, dtype = lf.array_module(params0[0]), params0[0].dtype
    x, y, x_test, y_test = (xp.asarray(a, dtype=dtype) for a in (x, y, x_test, y_test))
    x_kernel = x_test[:c["kernel_points"]]
    theta0 = kernels.ntk(net, params0, x_kernel) if c["kernel_points"] else None
    callbacks = [kernels.kernel_change_callback(net, x_kernel, theta0[s]) for s in range(len(cs))] \
        if c["kernel_along"] and theta0 is not None else [None] * len(cs)
    gaps = [LinearGap(net, [w[s] for w in params0], x, y, x_kernel, alpha_of(m), c["loss"])
            for s, m in enumerate(cs)] if c["linear_gap"] and theta0 is not None else []
    for s, gap in enumerate(gaps):
        callbacks[s] = gap.callback(callbacks[s])
    alphas = [alpha_of(m) for m in cs]
    runs = lf.train(net, params0, x, y, alphas, x_test, y_test, method=c["method"], loss=c["loss"],
                    subtract_f0=c["subtract_f0"], integrator=c["integrator"], max_dgrad=c["max_dgrad"],
                    max_dout=c["max_dout"], tau=c["tau"],
                    lr=c["lr"], batch_size=c["batch_size"], seed=[m["seed"] for m in cs],
                    checkpoints=c["checkpoints"], callback=callbacks, test_along=c["test_along"], **limits_of(c))
    n_params = sum(int(w[0].size) for w in params0)
    results = []
    for s, (run, alpha) in enumerate(zip(runs, alphas)):
        member0 = [w[s] for w in params0]
        result = {**run_result(run), "alpha": alpha, "n_params": n_params}
        if theta0 is not None:
            result["kernel_change"] = kernels.kernel_change(kernels.ntk(net, run.params, x_kernel), theta0[s])
        if c["store_F_test"]:
            result["F_test"] = to_list(run.F_test)
        if gaps:
            result["linear_gap"] = gaps[s].at_t1(run.records)
        if c["baselines"]:
            result.update(baselines(c, net, member0, run.params, x, y, x_test, y_test, alpha))
        results.append(result)
    return results


def first_time_below(records, fraction=0.5):
    """t1: the first time alpha^2 L falls below `fraction` of its initial value (log-interpolated)."""
    target = fraction * records[0]["loss"]
    for before, after in zip(records, records[1:]):
        if after["loss"] <= target < before["loss"]:
            if before["t"] <= 0:
                return after["t"]
            u = (math.log(target) - math.log(before["loss"])) / (math.log(after["loss"]) - math.log(before["loss"]))
            return math.exp(math.log(before["t"]) + u * (math.log(after["t"]) - math.log(before["t"])))
    return math.nan


class LinearGap:
    """How far a network's F is from the linear dynamics, at t1/10, t1 and 10 t1 (finding (iv)).

    The linear dynamics is the flow of the initial NTK (section 3.5 of PAPER.md): dF/dt = -(1/p) Theta_0
    l'(y F) y on the training points, with F on other points following the same integral. At each
    checkpoint the callback keeps the network's F on the kernel points; after the run, at_t1 gives
    |F - F_lin| / |F| (Euclidean norms over the kernel points) at t1/10, t1 and 10 t1, with F read
    between checkpoints linearly in log t and F_lin solved to 1e-10 (scipy's LSODA, on the host).
    """

    FACTORS = (0.1, 1.0, 10.0)

    def __init__(self, net, params0, x, y, x_kernel, alpha, loss):
        self.net, self.x_kernel, self.alpha, self.loss = net, x_kernel, alpha, loss
        self.f0 = net.predict(params0, x_kernel)
        self.theta = kernels.ntk(net, params0, x)
        self.theta_kernel = kernels.ntk(net, params0, x_kernel, x)
        self.y, self.kept = y, []

    def callback(self, then=None):
        """The checkpoint callback: keeps (t, F on the kernel points), then calls `then` (if any)."""
        def keep(params, record):
            self.kept.append((record["t"], self.alpha * (self.net.predict(params, self.x_kernel) - self.f0)))
            return then(params, record) if then else None
        return keep

    def linear_flow(self, times):
        """F_lin on the kernel points at `times` (increasing, > 0), shape (len(times), n)."""
        import scipy.integrate

        theta, theta_kernel, y = (on_host(a) for a in (self.theta, self.theta_kernel, self.y))
        p, dl = len(y), lf.check_loss(self.loss)[1]

        def rate(t, F):
            v = dl(y * F[:p], np) * y / p
            return -np.concatenate([theta @ v, theta_kernel @ v])

        solution = scipy.integrate.solve_ivp(rate, (0.0, times[-1]), np.zeros(p + len(theta_kernel)),
                                             method="LSODA", t_eval=times, rtol=1e-10, atol=1e-12)
        return solution.y[p:].T

    def at_t1(self, records):
        """{"t1", "gaps"}: the run's t1 and |F - F_lin| / |F| at FACTORS x t1 (nan where no checkpoint reached)."""
        t1 = first_time_below(records)
        kept = [(t, on_host(F)) for t, F in self.kept if t > 0]
        log_t, F = np.log([t for t, _ in kept]), np.array([F for _, F in kept])
        times = [f * t1 for f in self.FACTORS]
        inside = [t for t in times if math.isfinite(t) and len(log_t) and log_t[0] <= math.log(t) <= log_t[-1]]
        gaps = dict.fromkeys(times, math.nan)
        if inside:
            for t, linear in zip(inside, self.linear_flow(np.array(inside))):
                network = np.array([np.interp(math.log(t), log_t, column) for column in F.T])
                gaps[t] = float(np.linalg.norm(network - linear) / np.linalg.norm(network))
        return {"t1": t1, "gaps": [gaps[t] for t in times]}


def on_host(a):
    """A device array as a NumPy array (NumPy arrays as they are)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def baselines(c, net, params0, params, x, y, x_test, y_test, alpha):
    """The init. and final kernel predictors of one network (Theta frozen at w0 and at the end)."""
    options = dict(loss=c["loss"], integrator=c["integrator"], max_dgrad=c["max_dgrad"], max_dout=c["max_dout"],
                   **limits_of(c))
    if not c["subtract_f0"]:  # the kernel predictors start where the network started
        options.update(F0=alpha * net.predict(params0, x), F0_test=alpha * net.predict(params0, x_test))
    return {name: kernels.baseline(net, w, x, y, x_test, y_test, alpha, **options).summary()
            for name, w in (("init_kernel", params0), ("final_kernel", params))}


def member_bytes(config, what="memory"):
    """About the bytes one member of an ensemble of this config needs: its "memory" in all (see
    Network.bytes_per_member), or its widest "activation" (one layer's output on the training set)."""
    c = full_config(config)
    x = load_data(c)[0]
    net = build_network(c, x.shape)
    params = net.init(c["seed"], c["device"], c["dtype"])
    xp = lf.array_module(params[0])
    x1, n = xp.asarray(x[:1], dtype=params[0].dtype), min(lf.CHUNK, len(x))
    return net.bytes_per_member(params, x1, n) if what == "memory" else net.activation_bytes(params, x1, n)


# On the CPU, an ensemble is fast only while a few of each member's activations (z, sigma(z),
# sigma'(z), the backward signal) stay in a core's cache (CORE_CACHE_BYTES, a typical L2): beyond
# it, its members share no work that the cache misses do not cost back (BENCHMARKS.md, "Ensembles
# and the cache", measures both sides of that bound).
CORE_CACHE_BYTES = 2 << 20
LIVE_ACTIVATIONS = 4


def ensembles(max_members, max_memory, cores=None):
    """How a sweep groups configs into ensembles: by `ensemble_key`, at most max_members networks and
    max_memory bytes in one ensemble; with `cores` (CPU), also at most as many members per core as
    keep LIVE_ACTIVATIONS of their activations in CORE_CACHE_BYTES (at least one)."""
    def capacity(config):
        members = min(max_members, int(max_memory // member_bytes(config)))
        if cores:
            per_core = CORE_CACHE_BYTES // (LIVE_ACTIVATIONS * member_bytes(config, "activation"))
            members = min(members, cores * max(1, per_core))
        return max(1, members)

    return sweep.Group(key=ensemble_key, batch=fit_ensemble, capacity=capacity)


def fit_infinite(config):
    """The lazy-limit predictor at h = infinity of config `config`: kernels.flow with the NTK of the FC net
    at infinite width (kernels.ntk_infinite) on its data, its loss and its integrator bounds, from F = 0.

    The config is that of `fit` (arch "fc"); h, alpha sqrt(h), the seed and dtype play no part (the kernel
    is float64; the dynamics of F do not depend on alpha, which only scales the recorded loss alpha^2 L,
    so alpha = 1). Returns the run's summary and records, and the test predictor F_test when store_F_test.
    """
    c = full_config(config)
    if c["arch"] != "fc":
        raise ValueError(f"fit_infinite needs arch 'fc' (the infinite-width NTK is that of the FC net), "
                         f"got {c['arch']!r}")
    if not c["subtract_f0"]:
        raise ValueError("fit_infinite starts from F = 0, as subtract_f0=True does; with subtract_f0=False "
                         "the start would be a random draw of f(w0): set subtract_f0=True")
    xp = lf.backend(c["device"])
    x, y, x_test, y_test = (xp.asarray(a, dtype=xp.float64) for a in load_data(c))
    net = dict(L=c["L"], act=c["act"], bias=c["bias"])
    run = kernels.flow(kernels.ntk_infinite(x, **net), y, 1.0, kernels.ntk_infinite(x_test, x, **net), y_test,
                       loss=c["loss"], integrator=c["integrator"], max_dgrad=c["max_dgrad"], max_dout=c["max_dout"],
                       checkpoints=c["checkpoints"], **limits_of(c))
    result = run_result(run)
    if c["store_F_test"]:
        result["F_test"] = to_list(run.F_test)
    return result
