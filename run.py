"""The command line of lazyfeat: parsing, dispatch and printing.

    python run.py train      one training run with the paper's settings
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
    parser = sub.add_parser("train", help="one training run with the paper's settings",
                            description="Train F = alpha [f(w) - f(w0)] by gradient flow (or Adam) on a binary "
                                        "task and report the test error. Default: FC L=3 h=100 softplus on "
                                        "Fashion-MNIST, p=1000, at the lazy end alpha sqrt(h) = 1e4.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="fashion", help="fashion, mnist, kmnist, emnist-letters, cifar10, "
                      "or the synthetic stripe, sphere (default fashion)")
    data.add_argument("--p", type=positive_int, default=1000, help="training points (default 1000)")
    data.add_argument("--p-test", type=positive_int, default=10000, help="test points (default 10000)")
    data.add_argument("--pca", type=positive_int, help="project on the top PCA components and whiten")
    data.add_argument("--d", type=dimension, help="input dimension of a synthetic set: D or C,H,W")
    data.add_argument("--data-seed", type=natural_int, default=0, help="seed of the data order (default 0)")
    data.add_argument("--data-dir", help="a folder holding one folder per data set")
    net = parser.add_argument_group("network")
    net.add_argument("--arch", choices=["fc", "cnn"], default="fc")
    net.add_argument("--h", type=positive_int, default=100, help="width (channels for the CNN; default 100)")
    net.add_argument("--L", type=positive_int, default=3, help="hidden layers of the FC net (default 3)")
    net.add_argument("--act", choices=["softplus", "relu", "tanh", "swish"], default="softplus")
    net.add_argument("--bias", type=float, default=0.0, help="bias factor (the paper's appendix: 0.1)")
    scale = parser.add_argument_group("alpha (give at most one)").add_mutually_exclusive_group()
    scale.add_argument("--alpha", type=positive_float, help="the paper's alpha")
    scale.add_argument("--alpha-sqrt-h", type=positive_float, help="alpha sqrt(h) (default 1e4)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--seed", type=natural_int, default=0, help="seed of the initialisation (default 0)")
    fit.add_argument("--method", choices=["flow", "adam"], default="flow")
    fit.add_argument("--loss", choices=["softhinge", "hinge", "qhinge"], default="softhinge")
    fit.add_argument("--keep-f0", action="store_true", help="F = alpha f(w) (the appendix's alphaf)")
    fit.add_argument("--tau", type=float, default=0.0, help="momentum time constant (default 0)")
    fit.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate")
    fit.add_argument("--batch-size", type=positive_int, default=32, help="Adam's batch size")
    fit.add_argument("--max-time", type=positive_float, help="stop at this time t")
    fit.add_argument("--max-wall", type=positive_float, help="stop after this many seconds")
    fit.add_argument("--max-steps", type=natural_int, help="stop after this many accepted steps")
    fit.add_argument("--kernel-points", type=natural_int, default=0,
                     help="measure the kernel change on this many test points")
    fit.add_argument("--baselines", action="store_true", help="also train the init. and final kernel predictors")
    where = parser.add_argument_group("device")
    where.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    where.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(command=command_train)


def train_config(args):
    """The experiments config of `python run.py train`."""
    alpha_sqrt_h = args.alpha * math.sqrt(args.h) if args.alpha else (args.alpha_sqrt_h or 1e4)
    return {"dataset": args.dataset, "p": args.p, "p_test": args.p_test, "pca": args.pca, "d": args.d,
            "data_seed": args.data_seed, "arch": args.arch, "h": args.h, "L": args.L, "act": args.act,
            "bias": args.bias, "alpha_sqrt_h": alpha_sqrt_h, "seed": args.seed, "method": args.method,
            "loss": args.loss, "subtract_f0": not args.keep_f0, "tau": args.tau, "lr": args.lr,
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
    parser.add_argument("--json", action="store_true", help="print one JSON object per benchmark")
    parser.set_defaults(command=command_bench)


def format_bench(row):
    """One benchmark as a line of text."""
    if row["bench"] == "gradient":
        return (f"gradient  {row['case']:<34} {row['ms']:9.1f} ms   GEMM bound {row['gemm_ms']:8.1f} ms   "
                f"{row['of_gemm_bound']:.2f} of the bound   {row['gflop_per_s']:.0f} GFLOP/s")
    if row["bench"] == "steps":
        return (f"steps     {row['case']:<34} {row['ms_per_step']:9.1f} ms per accepted step "
                f"({row['steps_rejected']} rejected)")
    return (f"ntk       {row['case']:<48} {row['ms']:9.0f} ms   peak {row['peak_mb']:8.0f} MB   "
            f"{row['over_forward_backward']:.2f} x forward+backward")


def command_bench(args):
    import bench
    import lazyfeat as lf

    lf.backend(args.device)
    for row in bench.all_benchmarks(args.device, args.dtype, args.steps, args.jacobian_points):
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
    import datasets

    for entry in datasets.describe(args.data_dir):
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
    import datasets

    print(f"{args.name} is in {datasets.download(args.name, cache_dir=args.cache_dir)}")


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def parser():
    top = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (add_train, add_bench, add_data):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
