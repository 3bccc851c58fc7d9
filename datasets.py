"""The data of the paper: its binary tasks, its preprocessing, and the synthetic sets.

Every task is binary, by the parity of the class index: y = +1 for odd classes, -1 for even ones.

    MNIST, KMNIST     digits (or classes) 1, 3, 5, 7, 9 against 0, 2, 4, 6, 8
    Fashion-MNIST     Trouser, Dress, Sandal, Sneaker, Ankle boot
                      against T-shirt/top, Pullover, Coat, Shirt, Bag
    EMNIST letters    A, C, E, ..., Y (classes 1, 3, ..., 25) against B, D, ..., Z
    CIFAR-10          automobile, cat, dog, horse, truck against airplane, bird, deer, frog, ship

The official train and test files of a real set (read by datafiles.py) are pooled, balanced by
class and preprocessed (`preprocess`, `pca_whiten`); the first p samples are the training set,
the next p_test the test set (PAPER.md, "Data").

The synthetic sets (SYNTHETIC) are Gaussian inputs labelled by a stripe or a sphere; they need
no file and are meant for smoke runs and tests.
"""

import functools
import math
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.special

from datafiles import SETS, SYNTHETIC, DataError, check_labels, find, read_set, real_set
from datafiles import ALIASES, NAMES  # noqa: F401  (the set names, for callers of datasets)
from lazyfeat import check_int


# x_1 ~ N(0, 1) falls in this stripe with probability 1/2 (the value of the authors' code).
STRIPE = (-0.3, 1.18549)
DEFAULT_SYNTHETIC_DIM = 10
CACHE_SIZE = 4  # pooled sets kept in memory (Fashion-MNIST: 0.44 GB each)


# ----------------------------------------------------------------------------------------------
# The call
# ----------------------------------------------------------------------------------------------

def load(name, p, p_test, seed=0, pca=None, data_dir=None, d=None):
    """(x_train, y_train, x_test, y_test) of set `name`, float64 NumPy arrays, labels +1/-1:
    the first p samples of the set train, the next p_test test.

    Real sets (NAMES, or the alias "fashion"): images (n, C, H, W) preprocessed with this seed
    (`preprocess`), or with pca=d whitened vectors (n, d) (`pca_whiten`); the files are looked
    for as `find` says; the pooled set is cached in memory and every call returns fresh arrays;
    `d` must be None.

    Synthetic sets (SYNTHETIC): see `synthetic`; `d` is an int (vectors (n, d), default 10) or a
    shape (C, H, W) (images); `pca` must be None; `data_dir` is not used.
    """
    p = check_int("p", p, 1)
    p_test = check_int("p_test", p_test, 0)
    seed = check_int("seed", seed, 0)
    if name in SYNTHETIC:
        return _load_synthetic(name, p, p_test, seed, pca, d)
    return _load_real(real_set(name), p, p_test, seed, pca, data_dir, d)


def _load_real(spec, p, p_test, seed, pca, data_dir, d):
    """`load` for a real set."""
    if d is not None:
        raise DataError(f"d={d!r} applies to the synthetic sets {', '.join(SYNTHETIC)}; {spec.name} "
                        f"has images of shape {spec.shape} (use pca=... to reduce the dimension)")
    if pca is not None:
        pca = _check_pca(pca, math.prod(spec.shape))
    x, y = _pooled(spec.name, find(spec.name, data_dir), seed, pca)
    if p + p_test > len(y):
        raise DataError(f"p + p_test = {p} + {p_test} = {p + p_test} exceeds the {len(y)} samples "
                        f"of {spec.name} (balanced pool); lower p or p_test")
    return _split(x, y, p, p_test)


def _load_synthetic(name, p, p_test, seed, pca, d):
    """`load` for a synthetic set."""
    if pca is not None:
        raise DataError(f"pca={pca!r} applies to the real sets; for {name} choose the dimension with d")
    return _split(*synthetic(name, p + p_test, seed, d), p, p_test)


def _check_pca(pca, dimension: int) -> int:
    """`pca` as an int; ValueError unless 1 <= pca <= dimension."""
    pca = check_int("pca", pca)
    if pca > dimension:
        raise DataError(f"pca={pca} is larger than the input dimension D = {dimension}; "
                        f"choose pca <= {dimension}")
    return pca


def _split(x, y, p, p_test):
    """Fresh copies of the first p samples (training set) and of the next p_test (test set)."""
    end = p + p_test
    return x[:p].copy(), y[:p].copy(), x[p:end].copy(), y[p:end].copy()


@functools.lru_cache(maxsize=CACHE_SIZE)
def _pooled(name: str, folder: Path, seed: int, pca):
    """The preprocessed pool (x, y) of a real set read from `folder`, kept in memory, read-only;
    the PCA variant is computed from the cached plain pool."""
    if pca is not None:
        x, y = _pooled(name, folder, seed, None)
        return _read_only(pca_whiten(x, pca)), y
    spec = SETS[name]
    x, y = preprocess(*read_set(spec, folder), spec.classes, seed)
    return _read_only(x), _read_only(y)


def _read_only(array: np.ndarray) -> np.ndarray:
    """`array`, marked read-only so that the cached pool cannot be changed by mistake."""
    array.flags.writeable = False
    return array


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

def preprocess(images, labels, classes: range, seed: int):
    """(x, y) with x the images, balanced, interleaved (`balanced_order`), as float64, centred
    (`center`) then normalised (`normalize`), and y their parity labels (PAPER.md, "Data").

    Normalising comes last, so every norm is exactly sqrt(D) while the per-pixel mean is only
    close to zero."""
    labels = np.asarray(labels)
    check_labels(labels, classes, "labels")
    order = balanced_order(labels, classes, seed)
    x = np.asarray(images)[order].astype(np.float64)
    return normalize(center(x)), parity_labels(labels[order])


def balanced_order(labels: np.ndarray, classes: range, seed: int) -> np.ndarray:
    """Indices that shuffle each class (in turn, with numpy.random.default_rng(seed)) and then
    interleave the classes round robin, c0 c1 c2 ... c0 c1 c2 ..., truncated to the smallest
    class so that every class has the same number of samples."""
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    smallest = min(len(m) for m in members)
    if smallest == 0:
        empty = [c for c, m in zip(classes, members) if len(m) == 0]
        raise DataError(f"labels: no sample of class {empty[0]}; a balanced set needs every class "
                        f"{classes.start}..{classes.stop - 1}")
    return np.stack([m[:smallest] for m in members], axis=1).ravel()


def center(x: np.ndarray) -> np.ndarray:
    """x minus its per-pixel mean over all the samples (axis 0)."""
    return x - x.mean(axis=0)


def normalize(x: np.ndarray) -> np.ndarray:
    """Every sample x_mu rescaled to norm sqrt(D), D the number of entries of one sample."""
    flat = x.reshape(len(x), -1)
    norms = np.linalg.norm(flat, axis=1)
    if np.any(norms == 0):
        raise DataError(f"sample {np.flatnonzero(norms == 0)[0]} has norm 0 (it equals the mean "
                        f"image) and cannot be rescaled to norm sqrt(D)")
    return (flat * (np.sqrt(flat.shape[1]) / norms)[:, None]).reshape(x.shape)


def parity_labels(classes: np.ndarray) -> np.ndarray:
    """+1.0 for odd class indices, -1.0 for even ones."""
    return np.where(np.asarray(classes) % 2 == 1, 1.0, -1.0)


def pca_whiten(x: np.ndarray, d: int) -> np.ndarray:
    """x (n, ...) projected on the top d eigenvectors V of its covariance C and whitened:
    z = (x - mean) V / sqrt(lambda), largest eigenvalue first, so that over the n samples the
    d components of z have zero mean, unit variance and no correlation."""
    flat = x.reshape(len(x), -1)
    d = _check_pca(d, flat.shape[1])
    centred = flat - flat.mean(axis=0)
    covariance = centred.T @ centred / len(flat)
    dimension = len(covariance)
    values, vectors = scipy.linalg.eigh(covariance, subset_by_index=(dimension - d, dimension - 1))
    if values[0] <= dimension * np.finfo(float).eps * values[-1]:
        raise DataError(f"pca={d} exceeds the rank of the data (the {d}-th eigenvalue of the "
                        f"covariance is {values[0]:.3g}); choose a smaller pca")
    return centred @ vectors[:, ::-1] / np.sqrt(values[::-1])


# ----------------------------------------------------------------------------------------------
# Synthetic sets
# ----------------------------------------------------------------------------------------------

def synthetic(name: str, n: int, seed: int, d=None):
    """(x, y): n points x ~ N(0, I_D) drawn with numpy.random.default_rng(seed) and their labels.

    d is the dimension D (vectors (n, D), default 10) or an image shape (C, H, W) (arrays
    (n, C, H, W), D = C H W); the label rule sees the flattened vector. "stripe": +1 when x_1 is
    in STRIPE, "sphere": +1 when |x|^2 is above the median of the chi-square law with D degrees
    of freedom; both give balanced classes in expectation. The points are neither centred nor
    renormalised: rescaling them to norm sqrt(D) would erase the sphere's label. The points come
    from one stream, so the first p do not depend on how many follow.
    """
    if name not in SYNTHETIC:
        raise DataError(f"unknown synthetic set {name!r}: choose one of {', '.join(SYNTHETIC)}")
    shape = _synthetic_shape(d)
    x = np.random.default_rng(seed).standard_normal((n, math.prod(shape)))
    labels = stripe_labels(x) if name == "stripe" else sphere_labels(x)
    return x.reshape(n, *shape), labels


def _synthetic_shape(d) -> tuple[int, ...]:
    """The shape of one synthetic point: (d,) for an int, (C, H, W) for a shape, (10,) for None."""
    if d is None:
        return (DEFAULT_SYNTHETIC_DIM,)
    if isinstance(d, (tuple, list)) and len(d) == 3:
        return tuple(check_int("d", size) for size in d)
    if isinstance(d, (tuple, list)):
        raise DataError(f"d must be an int or a shape (C, H, W), got {d!r}")
    return (check_int("d", d),)


def stripe_labels(x: np.ndarray) -> np.ndarray:
    """+1.0 where the first coordinate of x (n, D) lies in STRIPE, else -1.0."""
    low, high = STRIPE
    return np.where((x[:, 0] > low) & (x[:, 0] < high), 1.0, -1.0)


def sphere_labels(x: np.ndarray) -> np.ndarray:
    """+1.0 where |x|^2 exceeds the median of chi-square with D degrees of freedom (the median of
    |x|^2 for x ~ N(0, I_D); chdtri(D, 1/2) is the point whose upper tail is 1/2), else -1.0."""
    median = scipy.special.chdtri(x.shape[1], 0.5)
    return np.where(np.sum(x ** 2, axis=1) > median, 1.0, -1.0)
