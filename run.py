"""lazyfeat: lazy (kernel) and feature training of deep networks, after Geiger et al. (arXiv:1906.08034).

    python run.py train      one training run with the paper's settings
    python run.py crossover  finding 1: alpha* ~ 1/sqrt(h)
    python run.py regimes    finding 2: which regime is better depends on architecture and data
    python run.py fluctuations  finding 3: delta F ~ h^(-1/2) in both regimes, ensembles
    python run.py timescale  finding 4: t1 ~ sqrt(h) alpha in the feature regime
    python run.py kernels    the init. and final kernel baselines against the network
    python run.py all        every finding, and figures/REPORT.md
    python run.py bench      speed and memory benchmarks
    python run.py data       which data sets are present, and where
    python run.py download   fetch a data set into the cache

Run `python run.py COMMAND --help` for the options of each.
"""
import argparse
import json
import math
import os
import sys
import time

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A mistake in the command line or in what it points to: reported, exit code 2."""


def positive_float(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def natural_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def dimension(text):
    """A synthetic input dimension: an int, or C,H,W for images."""
    parts = [positive_int(part) for part in text.split(",")]
    if len(parts) not in (1, 3):
        raise argparse.ArgumentTypeError(f"must be D or C,H,W, got {text}")
    return parts[0] if len(parts) == 1 else parts


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


def add_train(sub):
    import experiments
    import lazyfeat as lf

    d = experiments.DEFAULTS  # the defaults of a run, in one place
    parser = sub.add_parser("train", help="one training run with the paper's settings",
                            description="Train F = alpha [f(w) - f(w0)] by gradient flow (or Adam) on a binary "
                                        "task and report the test error. Default: FC L=3 h=100 softplus on "
                                        "Fashion-MNIST, p=1000, at the lazy end alpha sqrt(h) = 1e4.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=d["dataset"], help="fashion, mnist, kmnist, emnist-letters, cifar10, "
                      "or the synthetic stripe, sphere (default fashion)")
    data.add_argument("--p", type=positive_int, default=d["p"], help="training points (default %(default)s)")
    data.add_argument("--p-test", type=positive_int, default=d["p_test"], help="test points (default %(default)s)")
    data.add_argument("--pca", type=positive_int, help="project on the top PCA components and whiten")
    data.add_argument("--d", type=dimension, help="input dimension of a synthetic set: D or C,H,W")
    data.add_argument("--data-seed", type=natural_int, default=d["data_seed"],
                      help="seed of the data order (default %(default)s)")
    data.add_argument("--data-dir", help="a folder holding one folder per data set")
    net = parser.add_argument_group("network")
    net.add_argument("--arch", choices=["fc", "cnn"], default=d["arch"])
    net.add_argument("--h", type=positive_int, default=d["h"], help="width (channels for the CNN; default %(default)s)")
    net.add_argument("--L", type=positive_int, default=d["L"], help="hidden layers of the FC net (default %(default)s)")
    net.add_argument("--act", choices=sorted(lf.RAW_ACTIVATIONS), default=d["act"])
    net.add_argument("--bias", type=float, default=d["bias"], help="bias factor (the paper's appendix: 0.1)")
    scale = parser.add_argument_group("alpha (give at most one)").add_mutually_exclusive_group()
    scale.add_argument("--alpha", type=positive_float, help="the paper's alpha")
    scale.add_argument("--alpha-sqrt-h", type=positive_float, default=d["alpha_sqrt_h"],
                       help="alpha sqrt(h) (default %(default)g)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--seed", type=natural_int, default=d["seed"], help="seed of the initialisation (default %(default)s)")
    fit.add_argument("--method", choices=["flow", "adam"], default=d["method"])
    fit.add_argument("--loss", choices=sorted(lf.LOSSES), default=d["loss"])
    fit.add_argument("--integrator", choices=list(lf.INTEGRATORS), default=d["integrator"],
                     help="the flow's step rule: paper (the paper's adaptive Euler, default), rk23, rkc, auto")
    fit.add_argument("--keep-f0", action="store_true", help="F = alpha f(w) (the appendix's alphaf)")
    fit.add_argument("--tau", type=float, default=d["tau"], help="momentum time constant (default %(default)s)")
    fit.add_argument("--lr", type=positive_float, default=d["lr"], help="Adam's learning rate")
    fit.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help="Adam's batch size")
    fit.add_argument("--max-time", type=positive_float, help="stop at this time t")
    fit.add_argument("--max-wall", type=positive_float, help="stop after this many seconds")
    fit.add_argument("--max-steps", type=natural_int, help="stop after this many accepted steps")
    fit.add_argument("--kernel-points", type=natural_int, default=d["kernel_points"],
                     help="measure the kernel change on this many test points")
    fit.add_argument("--baselines", action="store_true", help="also train the init. and final kernel predictors")
    where = parser.add_argument_group("device")
    where.add_argument("--device", choices=["cpu", "gpu"], default=d["device"])
    where.add_argument("--dtype", choices=["float64", "float32"], default=d["dtype"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(command=command_train)


def train_config(args):
    """The experiments config of `python run.py train`."""
    alpha_sqrt_h = args.alpha * math.sqrt(args.h) if args.alpha else args.alpha_sqrt_h
    return {"dataset": args.dataset, "p": args.p, "p_test": args.p_test, "pca": args.pca, "d": args.d,
            "data_seed": args.data_seed, "arch": args.arch, "h": args.h, "L": args.L, "act": args.act,
            "bias": args.bias, "alpha_sqrt_h": alpha_sqrt_h, "seed": args.seed, "method": args.method,
            "loss": args.loss, "integrator": args.integrator, "subtract_f0": not args.keep_f0, "tau": args.tau, "lr": args.lr,
            "batch_size": args.batch_size, "max_time": args.max_time, "max_wall": args.max_wall,
            "max_steps": args.max_steps, "kernel_points": args.kernel_points, "baselines": args.baselines,
            "device": args.device, "dtype": args.dtype}


def command_train(args):
    import experiments

    if args.bias < 0 or not math.isfinite(args.bias):
        raise BadInput(f"--bias must be a finite number >= 0, got {args.bias}")
    if args.tau < 0:
        raise BadInput(f"--tau must be >= 0, got {args.tau}")
    if args.kernel_points > args.p_test:
        raise BadInput(f"--kernel-points {args.kernel_points} exceeds --p-test {args.p_test}")
    config = train_config(args)
    result = experiments.fit(config)
    summary = {k: v for k, v in result.items() if k != "records"}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{args.arch.upper()} h={args.h}{f' L={args.L}' if args.arch == 'fc' else ''} {args.act} on "
          f"{args.dataset}, p={args.p}, p_test={args.p_test}, alpha sqrt(h) = {config['alpha_sqrt_h']:.3g} "
          f"(alpha = {result['alpha']:.3g}), seed {args.seed}, {args.method}, {args.device} {args.dtype}")
    print(f"  status        {result['status']}")
    print(f"  test error    {100 * result['test_error']:.2f} %")
    print(f"  train error   {100 * result['train_error']:.2f} %   (alpha^2 L = {result['loss']:.3g})")
    print(f"  steps         {result['steps_accepted']} accepted, {result['steps_rejected']} rejected, "
          f"t = {result['t']:.4g}")
    print(f"  wall          {result['wall_s']:.1f} s ({result['ms_per_step']:.1f} ms per accepted step)")
    if "kernel_change" in result:
        print(f"  kernel change {result['kernel_change']:.3g}  (on {args.kernel_points} test points)")
    for name in ("init_kernel", "final_kernel"):
        if name in result:
            print(f"  {name.replace('_', ' '):<13} test error {100 * result[name]['test_error']:.2f} % "
                  f"({result[name]['status']})")


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------


def add_bench(sub):
    parser = sub.add_parser("bench", help="speed and memory benchmarks",
                            description="Time the loss gradient against the GEMM bound, the accepted steps of "
                                        "gradient flow on Fashion-MNIST, and the NTK (structured vs Jacobian).")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--steps", type=positive_int, default=500, help="accepted steps to time (default 500)")
    parser.add_argument("--jacobian-points", type=positive_int, default=128,
                        help="points for the FC Jacobian-method NTK (default 128)")
    parser.add_argument("--suite", choices=["engine", "device", "integrators"], default="engine",
                        help="engine: the benchmarks below (default); device: an ensemble of 64 FC nets (h=100, "
                             "p=10 000) against one net on the device and on the CPU, and a paper-scale subset "
                             "with the projected wall of each finding (for a GPU: .ci/device); integrators: "
                             "each integrator's evaluations, wall and accuracy to fit beside the paper rule's")
    parser.add_argument("--json", action="store_true", help="print one JSON object per benchmark")
    parser.set_defaults(command=command_bench)


def format_bench(row):
    """One benchmark as a line of text."""
    import bench

    if row["bench"] == "gradient":
        return (f"gradient  {row['case']:<34} {row['ms']:9.1f} ms   GEMM bound {row['gemm_ms']:8.1f} ms   "
                f"{row['of_gemm_bound']:.2f} of the bound   {row['gflop_per_s']:.0f} GFLOP/s")
    if row["bench"] == "steps":
        authors = (f", {row['of_authors']:.2f} of the authors' {bench.AUTHORS_CNN_MS[0]}-{bench.AUTHORS_CNN_MS[1]} ms"
                   if "of_authors" in row else "")
        return (f"steps     {row['case']:<34} {row['ms_per_step']:9.1f} ms per accepted step "
                f"({row['steps_rejected']} rejected){authors}")
    if row["bench"] == "span":
        return (f"span      {row['case']:<34} {row['span_ms']:9.1f} ms per accepted step in the span of the data, "
                f"{row['plain_ms']:.1f} without: {row['speedup']:.2f}x")
    if row["bench"] == "ensemble":
        split = (f"; one at a time on each core, side by side: {row['side_by_side_per_s']:.0f}, "
                 f"{row['split']:.2f}x" if "split" in row else "")
        return (f"ensemble  {row['case']:<34} {row['ensemble_per_s']:9.0f} member-steps/s together, "
                f"{row['solo_per_s']:.0f} one at a time: {row['speedup']:.2f}x "
                f"({row['member_steps']} member-steps{'' if row['same_steps'] else ', NOT the same steps'}, "
                f"{row['records_per_step']:.2f} checkpoints per step){split}")
    if row["bench"] == "throughput":
        return (f"throughput {row['case']:<44} {row['per_s']:9.1f} member-steps/s "
                f"({row['member_steps']} in {row['seconds']:.1f} s)")
    if row["bench"] == "projection":
        hours = ", ".join(f"{name} {h:.1f} h" for name, h in row["projected_hours"].items())
        bound = " (at least: not every run fitted)" if row["fitted"] < row["members"] else ""
        return (f"projection {row['case']:<44} {row['member_steps_per_s']:9.1f} member-steps/s, "
                f"{row['fitted']} of {row['members']} fitted in {row['seconds']:.0f} s, {row['steps_per_run']} "
                f"steps per run; paper scale{bound}: {hours}")
    if row["bench"] in ("integrators", "integrators_total"):
        lines = [f"integrators {row['case']}" + (f", DOP853 fit at t = {row['t_fit']:.4g}" if "t_fit" in row else "")]
        for name, m in row["integrators"].items():
            lines.append(f"  {name:<6} {m['evaluations']:6d} evaluations  {m['wall_s']:7.1f} s"
                         + (f"   {m['evaluations_ratio']:.2f}x and {m['wall_ratio']:.2f}x the paper rule's"
                            if "wall_ratio" in m else
                            f"   devF {m['dev_F']:.1e}  devW {m['dev_W']:.1e}  fit time {m['t_error']:+.1e}"))
        return "\n".join(lines)
    if row["bench"] == "infinite":
        return (f"infinite  {row['case']:<34} table {row['build_s']:.2f} s, then lookup {row['lookup_s']:.2f} s   "
                f"table error {row['table_error']:.1e}, against direct quadrature {row['direct_error']:.1e}")
    return (f"ntk       {row['case']:<48} {row['ms']:9.0f} ms   peak {row['peak_mb']:8.0f} MB   "
            f"{row['over_forward_backward']:.2f} x forward+backward")


def command_bench(args):
    import bench
    import lazyfeat as lf

    lf.backend(args.device)
    rows = (bench.device_benchmarks(args.device, args.dtype) if args.suite == "device"
            else bench.bench_integrators() if args.suite == "integrators"
            else bench.all_benchmarks(args.device, args.dtype, args.steps, args.jacobian_points))
    for row in rows:
        print(json.dumps(row) if args.json else format_bench(row), flush=True)


# ---------------------------------------------------------------------------
# data, download
# ---------------------------------------------------------------------------


def add_data(sub):
    parser = sub.add_parser("data", help="which data sets are present, and where")
    parser.add_argument("--data-dir", help="a folder holding one folder per data set")
    parser.set_defaults(command=command_data)
    parser = sub.add_parser("download", help="fetch a data set into ~/.cache/lazyfeat",
                            description="Download the official files of a data set, check their pinned SHA-256 "
                                        "sums, and place them where the loader looks.")
    parser.add_argument("name", help="mnist, fashion-mnist, kmnist, emnist-letters or cifar10")
    parser.add_argument("--cache-dir", help="download into CACHE_DIR/NAME instead")
    parser.set_defaults(command=command_download)


def command_data(args):
    import datafiles

    for entry in datafiles.describe(args.data_dir):
        shape = "x".join(map(str, entry["shape"]))
        if entry["error"]:
            state = f"damaged: {entry['error']}"
        elif entry["present"]:
            state = f"{entry['n_images']} images of {shape} in {entry['path']}"
        else:
            state = f"absent (searched {', '.join(entry['searched'])}); python run.py download {entry['name']}"
        print(f"{entry['name']:<16} {state}")
    print(f"{'stripe, sphere':<16} synthetic, generated on demand (any dimension)")


def command_download(args):
    import datafiles

    print(f"{args.name} is in {datafiles.download(args.name, cache_dir=args.cache_dir)}")


# ---------------------------------------------------------------------------
# the findings
# ---------------------------------------------------------------------------

FINDING_HELP = {
    "crossover": "finding 1: test error and kernel change against alpha sqrt(h); alpha* ~ 1/sqrt(h)",
    "regimes": "finding 2: lazy end against feature end for FC, FC on 10-PCA and the CNN",
    "fluctuations": "finding 3: Var over seeds of F ~ 1/h in both regimes; ensembles",
    "timescale": "finding 4: t1 ~ alpha sqrt(h) in the feature regime; linear growth of F for t << t1",
    "kernels": "the init. and final kernel baselines against the network",
}


def number_list(kind):
    """A comma-separated list of `kind` values (an empty string gives an empty list)."""
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def machine_cores():
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_findings(sub):
    import findings
    import lazyfeat as lf

    for name, description in [*FINDING_HELP.items(), ("all", "every finding in turn, and figures/REPORT.md")]:
        parser = sub.add_parser(name, help=description, description=description + ". Figures go to "
                                "FIGURES/<finding>.png/.pdf with their numbers and verdict in <finding>.json; "
                                "each run is stored in RESULTS, so an interrupted command resumes where it stopped.")
        parser.add_argument("--scale", choices=["quick", "paper"], default="quick",
                            help="quick: 2 CPU cores, minutes; paper: the paper's sizes, for a GPU")
        parser.add_argument("--results", default="results", help="where each run is stored (default results)")
        parser.add_argument("--figures", default="figures", help="where figures and verdicts go (default figures)")
        parser.add_argument("--workers", type=positive_int,
                            help=f"local processes (default: the cores of this machine, {machine_cores()} here; "
                                 "1 with --device gpu)")
        parser.add_argument("--scheduler", help="address of a Dask scheduler to run on (tcp://host:port)")
        parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
        parser.add_argument("--max-members", type=positive_int,
                            help="networks trained together as one ensemble (default 8 per core of a worker on "
                                 "the CPU, 64 on a GPU; 1: one at a time)")
        parser.add_argument("--max-memory", type=positive_float,
                            help="GiB one ensemble may use (default: half the free memory, split between the workers)")
        parser.add_argument("--integrator", choices=list(lf.INTEGRATORS), default=findings.INTEGRATOR,
                            help=f"step rule of the gradient flows (default {findings.INTEGRATOR}; paper: the paper's rule)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        sizes = parser.add_argument_group("sizes (override the scale's value wherever the finding has it)")
        sizes.add_argument("--dataset")
        sizes.add_argument("--d", type=dimension, help="input dimension of a synthetic set: D or C,H,W")
        sizes.add_argument("--p", type=positive_int)
        sizes.add_argument("--p-test", type=positive_int)
        sizes.add_argument("--L", type=positive_int)
        sizes.add_argument("--h", type=number_list(positive_int), help="widths, comma-separated")
        sizes.add_argument("--alpha-sqrt-h", type=number_list(positive_float), help="values, comma-separated")
        sizes.add_argument("--seeds", type=natural_int, help="number of initialisation seeds")
        sizes.add_argument("--kernel-points", type=natural_int)
        sizes.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="any other size, VALUE in JSON (e.g. --set bisect_steps=3 --set 'ends=[0.01,1e4]')")
        parser.add_argument("--data-dir", help="a folder holding one folder per data set")
        parser.set_defaults(command=command_finding, finding=name)


def overrides(args):
    """The size overrides given on the command line, as key -> value."""
    given = {key: getattr(args, key) for key in ("dataset", "d", "p", "p_test", "L", "h", "alpha_sqrt_h", "seeds",
                                                  "kernel_points") if getattr(args, key) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"--set {item!r}: write KEY=VALUE")
        try:
            given[key] = json.loads(value)
        except json.JSONDecodeError as error:
            raise BadInput(f"--set {item!r}: VALUE must be JSON ({error})") from error
    return given


def check_data(sizes):
    """Fail before any run when a data set of the sizes is unknown or absent."""
    import datafiles

    for key, value in sizes.items():
        if isinstance(value, dict):
            check_data(value)
        elif key == "dataset" and value not in datafiles.SYNTHETIC:
            datafiles.find(value)


def check_sizes(sizes):
    """Fail before any run on sizes that cannot make a sweep."""
    for key, value in sizes.items():
        if isinstance(value, dict):
            check_sizes(value)
        elif key in ("alpha_sqrt_h", "ends") and any(not (isinstance(a, (int, float)) and a > 0) for a in value):
            raise BadInput(f"{key} must hold numbers > 0, got {value}")
        elif key in ("h", "alpha_sqrt_h") and not value or key == "seeds" and value < 1:
            raise BadInput(f"empty sweep: {key} = {value!r} gives no runs; give at least one value")


def command_finding(args):
    import findings
    import lazyfeat as lf
    import report

    lf.backend(args.device)
    names = list(findings.FINDINGS) if args.finding == "all" else [args.finding]
    workers = args.workers or (1 if args.device == "gpu" else machine_cores())
    context = findings.Context(args.results, workers, args.scheduler, args.device, not args.no_progress,
                               max_members=args.max_members,
                               max_memory=args.max_memory and args.max_memory * 2**30, integrator=args.integrator)
    given = overrides(args)
    known = set().union(*(findings.size_keys(name, args.scale) for name in names))
    if set(given) - known:
        raise BadInput(f"no finding here has the size(s) {sorted(set(given) - known)}; known: {sorted(known)}")
    all_sizes = {name: findings.sizes_for(name, args.scale, given, strict=False) for name in names}
    for sizes in all_sizes.values():
        check_sizes(sizes)
        check_data(sizes)
    start, outcomes = time.perf_counter(), []
    for name in names:
        began = time.perf_counter()
        outcome = findings.FINDINGS[name](context, all_sizes[name])
        meta = {"scale": args.scale, "device": args.device, "sizes": all_sizes[name],
                "wall_s": time.perf_counter() - began}
        print("\n".join(report.save_outcome(outcome, args.figures, meta)), flush=True)
        print(f"  wall time {meta['wall_s']:.0f} s\n", flush=True)
        outcomes.append(outcome)
    if args.finding == "all":
        meta = {"scale": args.scale, "device": args.device, "wall_s": time.perf_counter() - start,
                "computed": context.tally["computed"], "reused": context.tally["stored"]}
        path = report.write_report(outcomes, args.figures, meta)
        print(f"report: {path}; total wall time {meta['wall_s']:.0f} s; {meta['computed']} runs computed, "
              f"{meta['reused']} read from {args.results}")


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def parser():
    top = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (add_train, add_findings, add_bench, add_data):
        add(sub)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    if getattr(args, "data_dir", None):
        os.environ["LAZYFEAT_DATA"] = args.data_dir  # seen by worker processes too
    try:
        args.command(args)
    except (BadInput, ValueError, RuntimeError) as error:
        # ValueError: bad values (DataError and SweepError are ValueErrors);
        # RuntimeError: e.g. --device gpu without CuPy or a GPU
        print(f"run.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("run.py: interrupted; finished runs are saved: run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
