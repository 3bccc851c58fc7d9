"""Fixtures shared by the test files: the GPU backend, real or the strict CuPy stand-in; and Hypothesis
drawing the same examples on every run, so that a failure in CI is one anyone can reproduce (search wider
with `python -m pytest --hypothesis-profile=search`)."""
import sys

import pytest
from hypothesis import settings

import cupy_standin

settings.register_profile("reproducible", derandomize=True)
settings.register_profile("search", derandomize=False)
settings.load_profile("reproducible")


def device_cupy():
    """Real CuPy when it is installed and sees a device, else None."""
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


REAL = device_cupy()


@pytest.fixture
def standin(monkeypatch):
    """The stand-in as `cupy`, for this test: `import cupy` and `lf.backend("gpu")` give it."""
    cupy = cupy_standin.module()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


@pytest.fixture
def cupy(request):
    """Real CuPy on a machine with a device, else the stand-in."""
    return REAL if REAL is not None else request.getfixturevalue("standin")
