"""machine: how the engine lays its work on the machine's cores, memory and caches.

None of this changes a result: it decides where and in which pieces lazyfeat.py computes.

- glibc keeps freed memory for reuse (`keep_freed_memory`, run once at import);
- NumPy's BLAS threads are read and limited at run time (`blas`, `cpu_threads`);
- work runs in threads, one core and one BLAS thread each (`in_parallel`): an ensemble's
  members split over the cores (`across_cores`), or one large network's samples (`sample_parts`,
  `sample_cores`);
- a convolution's products are cut into blocks sized for the cache or the GPU's memory
  (`max_block_positions`).

The figures behind each choice, and the commands that measure them, are in BENCHMARKS.md.
"""
import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import threadpoolctl


def keep_freed_memory():
    """Let glibc keep freed memory for reuse: a NumPy speed-up on Linux, run once at import.

    By default glibc serves blocks above 128 KiB with mmap and hands freed memory back
    to the system, so every NumPy temporary of that size (one activation map is 800 KB
    at p = 1000, h = 100) costs fresh page faults, which dominate chains of elementwise
    operations. Raising the mmap threshold (to 32 MiB) and the trim threshold (to 1 GiB)
    keeps such blocks in the heap. Without glibc it does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


keep_freed_memory()


@functools.cache
def blas():
    """NumPy's BLAS libraries, found once; their thread counts are read and set through it (threadpoolctl)."""
    return threadpoolctl.ThreadpoolController().select(user_api="blas")


def cpu_threads(xp):
    """The cores this process computes on: its BLAS threads for NumPy (a sweep worker gets its share
    of the machine's cores), 1 for CuPy (a GPU is filled by the member axis itself)."""
    if xp is not np:
        return 1
    return max((library.num_threads for library in blas().lib_controllers), default=1)


def in_parallel(fn, items, cores):
    """[fn(item) for item in items], computed by `cores` threads with one BLAS thread each when cores > 1.

    NumPy releases the GIL inside its loops and its BLAS calls, so the threads compute at
    the same time, each on a core of its own. The results come back in the order of items.
    """
    if cores <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with blas().limit(limits=1), ThreadPoolExecutor(min(cores, len(items))) as pool:
        return list(pool.map(fn, items))


def across_cores(fit, S, threads):
    """fit(idx) -> Runs of the members idx, for S members split over `threads` cores; the Runs in member order.

    On the CPU an ensemble's products are too small to keep two BLAS threads busy, and NumPy's
    elementwise operations use one core. So the members are dealt round-robin into one block
    per core (so that the blocks mix the sweep's alphas and take about as long), and each
    block is integrated in a thread of its own (`in_parallel`). Members are independent:
    how they are split changes no result.
    """
    threads = min(threads, S)
    blocks = [np.arange(k, S, threads) for k in range(threads)]
    runs = [None] * S
    for idx, block_runs in zip(blocks, in_parallel(fit, blocks, threads)):
        for i, run in zip(idx, block_runs):
            runs[i] = run
    return runs


def sample_parts(n, chunk, cores=1):
    """Slices that cut n samples into parts whose sizes differ by at most 1: a multiple of `cores`
    of them where n allows, so that the `cores` parts computed at once hold at most `chunk`
    samples in all, which bounds the memory."""
    size = max(1, chunk // cores)
    m = min(n, cores * -(-n // (cores * size)))
    return [slice(i * n // m, (i + 1) * n // m) for i in range(m)]


# On the CPU, a pass over the samples is split between the cores of one member block when each
# core's part keeps at least this much forward cache: its work then dwarfs the cost of the
# threads. Below it (a small FC net) the products already keep the BLAS threads busy and a
# split gains nothing; above it (the CNN) the products are too small to share between BLAS
# threads, and the split is what uses the cores. `python run.py bench` measures both.
CPU_SPLIT_BYTES = 8 << 20


def sample_cores(net, params, x, n, cores):
    """The cores a pass over n samples of one member is split between: `cores`, or 1 when each
    core's part would keep less than CPU_SPLIT_BYTES of forward cache."""
    if cores > 1 and net.cache_bytes(params, x, n // cores) >= CPU_SPLIT_BYTES:
        return cores
    return 1


# How many positions (rows of columns) a convolution's block multiplies at once. On the CPU, a
# product of at most 10^6 multiply-adds: the block's columns, copied from the patches, are
# multiplied while they are still in the cache, and OpenBLAS runs such products with its
# small-matrix kernels. They are too small for OpenBLAS to share between threads: a large pass
# uses the cores by splitting its samples instead (`sample_cores`). On a GPU, a block's columns and
# product take at most GPU_BLOCK_FRACTION of the device's total memory: a layer of a paper-size CNN
# ensemble (h = 128, 2048 samples a pass) then takes tens of blocks, each a few kernel launches. A
# sweep's ensemble takes at most half of the free memory (`findings.Context.ensemble_memory`), so two
# blocks (the next block's columns are copied while the previous block's are held) fit beside it. The
# total, not what is free at the moment, sets the blocks: the sums of a block's products, and so the
# rounding of a result, do not change with what else is on the device.
# `python run.py bench` times the CNN's gradient against the GEMM bound of its products.
CPU_BLOCK_MULTIPLY_ADDS = 10**6
GPU_BLOCK_FRACTION = 1 / 16


def free_gpu_memory(cupy):
    """The bytes free for arrays on CuPy's current GPU: what CUDA reports free, plus the blocks that CuPy's
    memory pool keeps for reuse. Processes sharing the GPU see each other's arrays and pools as used."""
    return cupy.cuda.runtime.memGetInfo()[0] + cupy.get_default_memory_pool().free_bytes()


def max_block_positions(xp, fan_in, width):
    """The most positions (rows) of a block's product (positions, fan_in) @ (fan_in, width), at least 1: on
    the CPU, CPU_BLOCK_MULTIPLY_ADDS multiply-adds; on a GPU, columns and product of 8 bytes a number
    within GPU_BLOCK_FRACTION of its total memory."""
    if xp.__name__ == "numpy":
        return max(1, CPU_BLOCK_MULTIPLY_ADDS // (fan_in * width))
    return max(1, int(GPU_BLOCK_FRACTION * xp.cuda.Device().mem_info[1]) // (8 * (fan_in + width)))
