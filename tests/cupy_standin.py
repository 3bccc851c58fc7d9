"""A strict stand-in for CuPy, backed by NumPy, so that the GPU code path runs in CI without a GPU.

It behaves as CuPy does where code most often breaks on a first GPU run:
- its arrays refuse implicit conversion to NumPy (`np.asarray(a)` raises TypeError) and refuse NumPy
  arrays as operands or arguments; `.get()` (or `cupy.asnumpy`) is the explicit transfer;
- reductions give 0-d device arrays, never Python numbers;
- it has only the names that CuPy 14 has (the list in cupy14_names.json, read from the real wheel);
- `float()`, `int()`, `bool()`, `.item()`, `.tolist()` and printing of a device array work, as in
  CuPy, but each is a device-to-host transfer (a synchronisation), counted like `.get()`.
It counts the device-to-host transfers (`transfers`) and the live device bytes (its memory pool),
and calls CuPy-style memory hooks (`cupy.cuda.MemoryHook`) at every allocation.

`module()` makes a fresh stand-in; put it in `sys.modules["cupy"]` to make `import cupy` give it.

cupy14_names.json was made from the wheel itself, which imports without a GPU:
    pip download cupy-cuda12x==14.2.0 cuda-pathfinder --no-deps -d wheels
    pip install --no-deps --target cupy14 wheels/*.whl
    PYTHONPATH=cupy14 python -c "import cupy; print(dir(cupy))"   (and so for each namespace in the file)
"""
import json
import math
import pathlib
import types
import weakref

import numpy as np

NAMES = json.loads((pathlib.Path(__file__).with_name("cupy14_names.json")).read_text())
VERSION = NAMES["version"]
IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")


class Device:
    """The one device, its memory and its counters: D2H transfers and the live bytes of its arrays."""

    def __init__(self, memory=16 << 30):
        self.memory, self.transfers, self.used, self.cached = memory, 0, 0, 0
        self.live, self.hooks = {}, []

    def transfer(self):
        self.transfers += 1

    def allocate(self, a):
        """Count the buffer of the NumPy array a once, until it is garbage collected (a view is not new memory)."""
        root = a
        while root.base is not None and isinstance(getattr(root.base, "base", root.base), np.ndarray):
            root = root.base if isinstance(root.base, np.ndarray) else root.base.base  # as_strided's views too
        key = id(root)
        if key in self.live:
            return
        size = max(512, -(-root.nbytes // 512) * 512)  # CuPy's pool rounds every allocation up to 512 bytes
        self.live[key] = size, weakref.ref(root, lambda _, key=key: self.release(key))
        self.used += size
        self.cached = max(0, self.cached - size)
        for hook in self.hooks:
            hook.malloc_postprocess(device_id=0, size=root.nbytes, mem_size=size, mem_ptr=key, pmem_id=0)

    def release(self, key):
        size, _ = self.live.pop(key)
        self.used -= size
        self.cached += size


PLAIN = {int, float, bool, str, type(None), slice, type(Ellipsis), np.dtype}


def unwrap(value, allow_host=False):
    """The NumPy data behind device arrays in value (nested in lists, tuples, dicts); NumPy arrays
    raise TypeError unless allow_host (CuPy takes host data only where it uploads it: asarray, array)."""
    if type(value) in PLAIN:
        return value
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray) and not allow_host:
        raise TypeError(f"Unsupported type {type(value)}: a NumPy array where CuPy needs a cupy.ndarray "
                        "(move it to the device with cupy.asarray)")
    if isinstance(value, (list, tuple)):
        return type(value)([unwrap(v, allow_host) for v in value])
    if isinstance(value, dict):
        return {k: unwrap(v, allow_host) for k, v in value.items()}
    return value


class ndarray:
    """A device array: NumPy data that only `.get()` and the counted conversions bring to the host."""

    __module__ = "cupy"
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, a, device):
        self._a, self._device = a, device
        device.allocate(a)

    def _wrap(self, value):
        return wrap(value, self._device)

    # The explicit transfer, and the implicit ones CuPy allows (each a synchronisation, counted).
    def get(self, stream=None, order="C", out=None, blocking=True):
        self._device.transfer()
        return np.array(self._a, order=order)

    def _scalar(self, kind):
        self._device.transfer()
        return kind(self._a)

    def __float__(self):
        return self._scalar(float)

    def __int__(self):
        return self._scalar(int)

    def __index__(self):
        if self._a.dtype.kind not in "iub":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return self._scalar(int)

    def __bool__(self):
        return self._scalar(bool)

    def __complex__(self):
        return self._scalar(complex)

    def item(self, *args):
        self._device.transfer()
        return self._a.item(*args)

    def tolist(self):
        self._device.transfer()
        return self._a.tolist()

    def __repr__(self):
        self._device.transfer()
        return repr(self._a)

    def __str__(self):
        self._device.transfer()
        return str(self._a)

    def __format__(self, spec):
        self._device.transfer()
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    # What CuPy refuses.
    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy's ufuncs on device arrays go to CuPy's ufunc of the same name, as in CuPy; NumPy arrays
        among the inputs raise TypeError."""
        if method != "__call__" or ufunc.__name__ not in NAMES["names"]["cupy"]:
            return NotImplemented
        out = getattr(ufunc, method)(*unwrap(inputs), **unwrap(kwargs))
        return self._wrap(out)

    def __array_function__(self, func, types_, args, kwargs):
        if func.__module__ != "numpy" or func.__name__ not in NAMES["names"]["cupy"]:
            return NotImplemented
        return self._wrap(func(*unwrap(args), **unwrap(kwargs)))

    # Attributes.
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    dtype = property(lambda self: self._a.dtype)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: self._wrap(self._a.T))
    mT = property(lambda self: self._wrap(np.swapaxes(self._a, -1, -2)))
    real = property(lambda self: self._wrap(self._a.real))
    imag = property(lambda self: self._wrap(self._a.imag))
    flags = property(lambda self: self._a.flags)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self._wrap(row) for row in self._a)

    def __getitem__(self, key):
        return self._wrap(self._a[unwrap(key, allow_host=True)])

    def __setitem__(self, key, value):
        self._a[unwrap(key, allow_host=True)] = unwrap(value)

    def __dlpack__(self, *args, **kwargs):
        raise TypeError("the CuPy stand-in has no DLPack export")


def operator(name):
    numpy_op = getattr(np.ndarray, name)

    def op(self, *others):
        return self._wrap(numpy_op(self._a, *[unwrap(other) for other in others]))

    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    for _form in ("__{}__", "__r{}__", "__i{}__"):
        setattr(ndarray, _form.format(_name), operator(_form.format(_name)))
def method(name):
    def on_device(self, *args, **kwargs):
        return self._wrap(getattr(self._a, name)(*unwrap(args), **unwrap(kwargs)))

    on_device.__name__ = name
    return on_device


for _name in NAMES["names"]["cupy.ndarray"]:  # the array methods CuPy has (sum, reshape, astype, ...)
    if not hasattr(ndarray, _name) and callable(getattr(np.ndarray, _name, None)):
        setattr(ndarray, _name, method(_name))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", operator(f"__{_name}__"))


def wrap(value, device):
    """NumPy results as device arrays (scalars, as from a reduction, as 0-d arrays), in the same nesting."""
    if isinstance(value, np.ndarray):
        return ndarray(value, device)
    if isinstance(value, np.generic):
        return ndarray(np.asarray(value), device)
    if isinstance(value, tuple):
        return tuple(wrap(v, device) for v in value)
    if isinstance(value, list):
        return [wrap(v, device) for v in value]
    return value


class Namespace(types.ModuleType):
    """A CuPy namespace: the names CuPy 14 has there, each NumPy's function of that name run on
    device arrays, or one given in `own`. A name CuPy lacks raises AttributeError."""

    def __init__(self, name, numpy_module, device, own=None, uploads=()):
        super().__init__(name)
        self._numpy, self._device, self._own, self._uploads = numpy_module, device, own or {}, set(uploads)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in NAMES["names"][self.__name__]:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} (CuPy {VERSION})")
        if name in self._own:
            return self._own[name]
        target = getattr(self._numpy, name, None) if self._numpy is not None else None
        if target is None:
            raise AttributeError(f"{self.__name__}.{name} exists in CuPy {VERSION} but the stand-in does not "
                                 "implement it: add it to tests/cupy_standin.py")
        if isinstance(target, type) or not callable(target):
            return target  # dtypes and constants
        device, allow_host = self._device, name in self._uploads

        def on_device(*args, **kwargs):
            return wrap(target(*unwrap(args, allow_host), **unwrap(kwargs, allow_host)), device)

        on_device.__name__ = name
        return on_device


class MemoryPool:
    """CuPy's default memory pool: used (live arrays), free (cached blocks) and total bytes."""

    def __init__(self, device):
        self._device = device

    def used_bytes(self):
        return self._device.used

    def free_bytes(self):
        return self._device.cached

    def total_bytes(self):
        return self._device.used + self._device.cached

    def free_all_blocks(self, stream=None):
        self._device.cached = 0

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


def module(devices=1, memory=16 << 30):
    """A fresh stand-in `cupy` module with `devices` devices of `memory` bytes each (0: no device)."""
    device = Device(memory)
    pool = MemoryPool(device)

    class CUDARuntimeError(RuntimeError):
        pass

    class CudaDevice:
        def __init__(self, device_id=None):
            self.id = device_id or 0

        @property
        def mem_info(self):
            return device.memory - device.used - device.cached, device.memory

        compute_capability = "90"

        def synchronize(self):
            pass

        def use(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class MemoryHook:
        """CuPy's memory hook: `with hook:` calls its malloc_postprocess at every allocation."""

        name = "MemoryHook"

        def malloc_postprocess(self, **kwargs):
            pass

        def free_postprocess(self, **kwargs):
            pass

        def __enter__(self):
            device.hooks.append(self)
            return self

        def __exit__(self, *exc):
            device.hooks.remove(self)
            return False

    def device_count():
        if not devices:
            raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        return devices

    runtime = Namespace("cupy.cuda.runtime", None, device, {
        "getDeviceCount": device_count, "CUDARuntimeError": CUDARuntimeError,
        "memGetInfo": lambda: CudaDevice().mem_info, "deviceSynchronize": lambda: None})
    cuda = Namespace("cupy.cuda", None, device, {
        "runtime": runtime, "Device": CudaDevice, "MemoryPool": MemoryPool, "MemoryHook": MemoryHook,
        "is_available": lambda: devices > 0})
    stride_tricks = Namespace("cupy.lib.stride_tricks", np.lib.stride_tricks, device)
    lib = Namespace("cupy.lib", None, device, {"stride_tricks": stride_tricks})

    def asnumpy(a, stream=None, order="C", out=None, blocking=True):
        return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)

    def get_array_module(*args):
        return cupy if any(isinstance(a, ndarray) for a in args) else np

    cupy = Namespace("cupy", np, device, {
        "ndarray": ndarray, "cuda": cuda, "lib": lib, "linalg": Namespace("cupy.linalg", np.linalg, device),
        "fft": Namespace("cupy.fft", np.fft, device), "random": Namespace("cupy.random", None, device),
        "asnumpy": asnumpy, "get_array_module": get_array_module, "get_default_memory_pool": lambda: pool,
        "inf": math.inf, "nan": math.nan, "pi": math.pi, "e": math.e},
        uploads=("asarray", "array", "ascontiguousarray", "asanyarray"))
    cupy.__version__, cupy.device = VERSION, device
    return cupy
