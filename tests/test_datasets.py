"""Tests of datasets.py: the call `load`, the preprocessing, PCA, the synthetic sets, and the
real Fashion-MNIST when present."""

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

import datafiles
import datasets
from datasets import DataError
from tests.data_writers import cifar_set_files, idx_set_files, real_fashion, write_set


# ----------------------------------------------------------------------------------------------
# The call: arguments
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def fashion_root(tmp_path):
    """A data root holding a small generated Fashion-MNIST look-alike: 4 samples per class."""
    return write_set(tmp_path, "fashion-mnist", idx_set_files("fashion-mnist"))


@pytest.mark.parametrize("arguments, message", [
    (dict(p=0, p_test=1), "p must be an integer >= 1, got 0"),
    (dict(p=1.5, p_test=1), "p must be an integer >= 1, got 1.5"),
    (dict(p=True, p_test=1), "p must be an integer >= 1, got True"),
    (dict(p=1, p_test=-1), "p_test must be an integer >= 0, got -1"),
    (dict(p=30, p_test=11), r"p \+ p_test = 30 \+ 11 = 41 exceeds the 40 samples"),
    (dict(p=1, p_test=1, pca=0), "pca must be an integer >= 1, got 0"),
    (dict(p=1, p_test=1, pca=785), "pca=785 is larger than the input dimension D = 784"),
    (dict(p=1, p_test=1, d=5), "d=5 applies to the synthetic sets"),
    (dict(p=1, p_test=1, seed=-1), "seed must be an integer >= 0"),
])
def test_bad_arguments_are_named(fashion_root, arguments, message):
    with pytest.raises(ValueError, match=message):
        datasets.load("fashion", data_dir=fashion_root, **arguments)


def test_unknown_set_lists_the_names():
    with pytest.raises(DataError, match="unknown data set 'svhn': choose one of mnist, fashion-mnist"):
        datasets.load("svhn", 1, 1)


def test_pca_of_a_synthetic_set_is_refused():
    with pytest.raises(DataError, match="pca=3 applies to the real sets"):
        datasets.load("stripe", 10, 10, pca=3)


# ----------------------------------------------------------------------------------------------
# The call: results
# ----------------------------------------------------------------------------------------------

def test_load_shapes_types_and_alternating_labels(fashion_root):
    x_train, y_train, x_test, y_test = datasets.load("fashion", 25, 15, data_dir=fashion_root)
    assert x_train.shape == (25, 1, 28, 28) and x_test.shape == (15, 1, 28, 28)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.float64)}
    labels = np.concatenate([y_train, y_test])
    np.testing.assert_array_equal(labels, np.tile([-1.0, 1.0], 20))


def test_train_and_test_are_consecutive_slices_of_one_order(fashion_root):
    x_all, y_all, _, _ = datasets.load("fashion-mnist", 40, 0, seed=3, data_dir=fashion_root)
    x_train, y_train, x_test, y_test = datasets.load("fashion-mnist", 30, 10, seed=3, data_dir=fashion_root)
    np.testing.assert_array_equal(np.concatenate([x_train, x_test]), x_all)
    np.testing.assert_array_equal(np.concatenate([y_train, y_test]), y_all)


def test_repeated_calls_return_fresh_equal_arrays(fashion_root):
    first = datasets.load("fashion", 20, 20, data_dir=fashion_root)
    first[0][:] = 0.0
    first[1][:] = 0.0
    second = datasets.load("fashion", 20, 20, data_dir=fashion_root)
    assert np.abs(second[0]).sum() > 0 and np.all(np.abs(second[1]) == 1)


def test_load_with_pca_gives_whitened_vectors(fashion_root):
    x_train, _, x_test, _ = datasets.load("fashion", 30, 10, pca=5, data_dir=fashion_root)
    z = np.concatenate([x_train, x_test])
    assert z.shape == (40, 5)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(5), atol=1e-8)


def test_emnist_letters_use_labels_one_to_26(tmp_path):
    root = write_set(tmp_path, "emnist-letters", idx_set_files("emnist-letters", per_class=(1, 1)))
    _, y_train, _, _ = datasets.load("emnist-letters", 52, 0, data_dir=root)
    np.testing.assert_array_equal(y_train, np.tile([1.0, -1.0], 26))  # A = 1 is odd


def test_cifar10_loads_images_of_three_channels(tmp_path):
    root = write_set(tmp_path, "cifar10", cifar_set_files(per_batch=2))
    x_train, y_train, x_test, _ = datasets.load("cifar10", 100, 20, data_dir=root)
    assert x_train.shape == (100, 3, 32, 32) and x_test.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(y_train[:10], np.tile([-1.0, 1.0], 5))



# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

@st.composite
def labelled_images(draw):
    """(images, labels, classes): Gaussian images of a small shape, a few samples of each of
    at least two classes (one sample of a single class would be its own mean: norm 0)."""
    first = draw(st.integers(0, 2))
    classes = range(first, first + draw(st.integers(2, 5)))
    counts = draw(st.lists(st.integers(1, 5), min_size=len(classes), max_size=len(classes)))
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(2, 3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = rng.permutation(np.repeat(np.asarray(classes), counts))
    return rng.standard_normal((len(labels), *shape)), labels, classes


@settings(max_examples=50, deadline=None)
@given(sample=labelled_images(), seed=st.integers(0, 2**32 - 1))
def test_preprocess_invariants(sample, seed):
    images, labels, classes = sample
    x, y = datasets.preprocess(images, labels, classes, seed)
    order = datasets.balanced_order(labels, classes, seed)
    smallest = min(np.sum(labels == c) for c in classes)
    assert x.shape == (len(classes) * smallest, *images.shape[1:]) and x.dtype == np.float64
    assert np.all(labels[order].reshape(smallest, len(classes)) == np.asarray(classes))
    assert len(set(order.tolist())) == len(order)
    np.testing.assert_allclose(np.linalg.norm(x.reshape(len(x), -1), axis=1), np.sqrt(images[0].size))
    np.testing.assert_array_equal(y, np.where(labels[order] % 2 == 1, 1.0, -1.0))
    np.testing.assert_array_equal(x, datasets.normalize(datasets.center(images[order])))
    x_again, y_again = datasets.preprocess(images, labels, classes, seed)
    np.testing.assert_array_equal(x_again, x)
    np.testing.assert_array_equal(y_again, y)


@settings(max_examples=30, deadline=None)
@given(sample=labelled_images())
def test_center_removes_the_mean_of_every_pixel(sample):
    images = sample[0]
    np.testing.assert_allclose(datasets.center(images).mean(axis=0), 0.0, atol=1e-12)


def test_different_seeds_give_different_orders():
    labels = np.repeat(np.arange(10), 50)
    orders = [datasets.balanced_order(labels, range(10), seed) for seed in range(5)]
    assert all(not np.array_equal(orders[i], orders[j]) for i in range(5) for j in range(i))


def test_parity_labels():
    np.testing.assert_array_equal(datasets.parity_labels(np.arange(4)), [-1.0, 1.0, -1.0, 1.0])


def test_a_class_without_samples_cannot_be_balanced():
    with pytest.raises(DataError, match="no sample of class 2"):
        datasets.preprocess(np.ones((4, 2)), np.array([0, 1, 0, 1]), range(3), 0)


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(DataError, match="labels: label 7 at position 1"):
        datasets.preprocess(np.ones((3, 2)), np.array([0, 7, 1]), range(2), 0)


def test_an_image_equal_to_the_mean_cannot_be_normalised():
    with pytest.raises(DataError, match="sample 1 has norm 0"):
        datasets.normalize(np.array([[1.0, 2.0], [0.0, 0.0]]))


# ----------------------------------------------------------------------------------------------
# PCA
# ----------------------------------------------------------------------------------------------

def test_pca_whitens_and_orders_by_variance():
    rng = np.random.default_rng(0)
    scales = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.2])
    x = 3.0 + rng.standard_normal((2000, 6)) * scales
    z = datasets.pca_whiten(x.reshape(2000, 1, 2, 3), 3)
    assert z.shape == (2000, 3)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(3), atol=1e-10)
    for k in range(3):
        assert abs(np.corrcoef(z[:, k], x[:, k])[0, 1]) > 0.99


def test_pca_beyond_the_rank_is_refused():
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(DataError, match="pca=4 exceeds the rank"):
        datasets.pca_whiten(np.concatenate([x, x[:, :1]], axis=1), 4)


def test_pca_larger_than_the_dimension_is_refused():
    with pytest.raises(DataError, match="pca=7 is larger than the input dimension D = 6"):
        datasets.pca_whiten(np.ones((10, 6)), 7)


# ----------------------------------------------------------------------------------------------
# Synthetic sets
# ----------------------------------------------------------------------------------------------

def test_the_stripe_holds_half_of_a_gaussian():
    low, high = datasets.STRIPE
    assert abs(scipy.stats.norm.cdf(high) - scipy.stats.norm.cdf(low) - 0.5) < 1e-6


@pytest.mark.parametrize("name", datasets.SYNTHETIC)
def test_synthetic_classes_are_balanced_in_expectation(name):
    _, y, _, _ = datasets.load(name, 20000, 0, d=7)
    assert abs(y.mean()) < 0.03


def test_synthetic_labels_follow_the_rules():
    x_train, y_train, _, _ = datasets.load("stripe", 200, 0, seed=4, d=5)
    inside = (x_train[:, 0] > -0.3) & (x_train[:, 0] < 1.18549)
    np.testing.assert_array_equal(y_train, np.where(inside, 1.0, -1.0))
    x_train, y_train, _, _ = datasets.load("sphere", 200, 0, seed=4, d=5)
    outside = np.sum(x_train ** 2, axis=1) > scipy.stats.chi2.median(5)
    np.testing.assert_array_equal(y_train, np.where(outside, 1.0, -1.0))


@pytest.mark.parametrize("d, shape", [(None, (10,)), (3, (3,)), ((2, 4, 4), (2, 4, 4))])
def test_synthetic_shapes(d, shape):
    x_train, y_train, x_test, y_test = datasets.load("sphere", 6, 4, d=d)
    assert x_train.shape == (6, *shape) and x_test.shape == (4, *shape)
    assert y_train.shape == (6,) and y_test.shape == (4,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.float64)}


def test_synthetic_image_labels_see_the_flattened_vector():
    x_train, y_train, _, _ = datasets.load("stripe", 50, 0, seed=1, d=(1, 2, 2))
    np.testing.assert_array_equal(y_train, datasets.stripe_labels(x_train.reshape(50, 4)))


def test_synthetic_train_set_does_not_depend_on_p_test():
    short = datasets.load("stripe", 30, 5, seed=2)
    long = datasets.load("stripe", 30, 500, seed=2)
    np.testing.assert_array_equal(short[0], long[0])
    np.testing.assert_array_equal(short[2], long[2][:5])
    assert not np.array_equal(short[0], datasets.load("stripe", 30, 5, seed=3)[0])


@pytest.mark.parametrize("d", [0, (2, 2), (1, 0, 3), 2.5])
def test_bad_synthetic_dimension(d):
    with pytest.raises(ValueError, match="d must be"):
        datasets.load("sphere", 5, 5, d=d)


# ----------------------------------------------------------------------------------------------
# The real Fashion-MNIST
# ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(real_fashion() is None,
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    folder = real_fashion()
    labels = np.concatenate([datafiles.read_idx(next(folder.glob(f"{part}-labels-idx1-ubyte*")))
                             for part in ("train", "t10k")])
    assert np.bincount(labels).tolist() == [7000] * 10
    x, y, _, _ = datasets.load("fashion", 70000, 0)
    assert x.shape == (70000, 1, 28, 28)
    np.testing.assert_array_equal(y[:100], np.tile([-1.0, 1.0], 50))
    np.testing.assert_allclose(np.linalg.norm(x[:100].reshape(100, -1), axis=1), 28.0)
