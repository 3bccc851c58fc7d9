"""Run the test sweep of sweep_fns.features.

    python sweep_worker_script.py RESULTS_DIR WORKERS [CAPACITY]

The resume tests start this script, kill it part way and start it again. With
CAPACITY, the configs are grouped by the parity of their seed into jobs of at
most CAPACITY configs. At the end it prints, as JSON, the results and the Dask
modules it imported.
"""

import json
import signal
import sys

import sweep
from tests import sweep_fns


def main(results_dir, workers, capacity=None):
    """Run the sweep and print its results and the Dask modules loaded."""
    group = None if capacity is None else sweep_fns.group(capacity)
    results = sweep.run(sweep_fns.features, sweep_fns.CONFIGS, results_dir, workers=workers,
                        progress=False, group=group)
    dask_modules = sorted(name for name in sys.modules if name.split(".")[0] in ("dask", "distributed"))
    print(json.dumps({"results": results, "dask_modules": dask_modules}))


if __name__ == "__main__":
    # SIGINT raises KeyboardInterrupt even if whoever started us ignores it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main(sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:]))
