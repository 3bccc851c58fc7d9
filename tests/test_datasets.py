"""Tests of datasets.py: file formats, the search rule, preprocessing, PCA, synthetic sets,
the datasets view, downloads from a local HTTP server, and the real Fashion-MNIST when present."""

import dataclasses
import gzip
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import datasets
from datasets import DataError

FILE_SETTINGS = settings(max_examples=20, deadline=None)


# ----------------------------------------------------------------------------------------------
# Writers of the two formats (independent of the readers under test)
# ----------------------------------------------------------------------------------------------

IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array, dtype="u1"):
    """The IDX encoding of `array` stored as `dtype`."""
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + np.asarray(array, dtype).tobytes()


def write_file(path, data, compress=False):
    """Write `data` to `path`, gzipped if asked; return the path."""
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def cifar_bytes(images, labels):
    """The CIFAR-10 binary encoding of images (n, 3, 32, 32) and labels (n,)."""
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                              np.asarray(images, np.uint8).reshape(len(labels), 3 * 32 * 32)], axis=1)
    return records.tobytes()


def class_samples(classes, per_class, shape, seed):
    """Random uint8 images of `shape` and labels, `per_class` of each class, in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.asarray(classes), per_class))
    return rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8), labels


def idx_set_files(name, per_class=(3, 1), seed=0):
    """{file name: bytes} of a small IDX set shaped like `name`, gzipped, with per_class
    samples of each class in its train and test files."""
    spec = datasets.SETS[name]
    files = {}
    for (images_name, labels_name), count, part_seed in zip(
            zip(spec.files[0::2], spec.files[1::2]), per_class, (seed, seed + 1)):
        images, labels = class_samples(spec.classes, count, spec.shape[1:], part_seed)
        files[images_name + ".gz"] = gzip.compress(idx_bytes(images))
        files[labels_name + ".gz"] = gzip.compress(idx_bytes(labels))
    return files


def cifar_set_files(per_batch=2):
    """{file name: bytes} of a small CIFAR-10 set, per_batch samples of each class per batch."""
    return {name: cifar_bytes(*class_samples(range(10), per_batch, (3, 32, 32), i))
            for i, name in enumerate(datasets.CIFAR10_FILES)}


def write_set(root, name, files):
    """Write {file name: bytes} into root/name; return root."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    return root


# ----------------------------------------------------------------------------------------------
# Readers: round trips
# ----------------------------------------------------------------------------------------------

@FILE_SETTINGS
@given(data=st.data(), dtype=st.sampled_from(list(IDX_CODES)),
       shape=st.lists(st.integers(0, 4), min_size=1, max_size=4), compress=st.booleans())
def test_idx_round_trip(tmp_path_factory, data, dtype, shape, compress):
    array = data.draw(hnp.arrays(np.dtype(dtype), tuple(shape)))
    path = write_file(tmp_path_factory.mktemp("idx") / "file", idx_bytes(array, dtype), compress)
    np.testing.assert_array_equal(datasets.read_idx(path), array)


def test_gzip_is_told_by_its_bytes_not_by_the_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gzipped = write_file(tmp_path / "images-idx3-ubyte", idx_bytes(array), compress=True)
    raw = write_file(tmp_path / "labels-idx1-ubyte.gz", idx_bytes(array))
    np.testing.assert_array_equal(datasets.read_idx(gzipped), array)
    np.testing.assert_array_equal(datasets.read_idx(raw), array)


@FILE_SETTINGS
@given(data=st.data(), n=st.integers(0, 4))
def test_cifar_round_trip(tmp_path_factory, data, n):
    images = data.draw(hnp.arrays(np.uint8, (n, 3, 32, 32)))
    labels = data.draw(hnp.arrays(np.uint8, (n,), elements=st.integers(0, 9)))
    path = write_file(tmp_path_factory.mktemp("cifar") / "data_batch_1.bin", cifar_bytes(images, labels))
    read_images, read_labels = datasets.read_cifar_bin(path)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_cifar_pixels_are_red_green_blue_planes(tmp_path):
    record = np.concatenate([[7], np.full(1024, 1), np.full(1024, 2), np.full(1024, 3)]).astype(np.uint8)
    images, labels = datasets.read_cifar_bin(write_file(tmp_path / "b.bin", record.tobytes()))
    assert labels.tolist() == [7]
    assert [images[0, c].max() for c in range(3)] == [1, 2, 3]


# ----------------------------------------------------------------------------------------------
# Readers: bad files
# ----------------------------------------------------------------------------------------------

GOOD_IDX = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("data, message", [
    (b"\x01" + GOOD_IDX[1:], "not an IDX file"),
    (GOOD_IDX[:2] + b"\x0a" + GOOD_IDX[3:], "not an IDX file"),
    (GOOD_IDX[:3] + b"\x00" + GOOD_IDX[4:], "not an IDX file"),
    (GOOD_IDX[:3], "not an IDX file"),
    (GOOD_IDX[:10], "truncated inside its header"),
    (GOOD_IDX[:-1], "truncated"),
    (GOOD_IDX + b"\x00", "longer than its header says"),
    (gzip.compress(GOOD_IDX)[:-9], "cannot be read"),
])
def test_bad_idx_file_names_the_file(tmp_path, data, message):
    path = write_file(tmp_path / "bad-idx", data)
    with pytest.raises(DataError, match=message) as error:
        datasets.read_idx(path)
    assert str(path) in str(error.value)


def test_cifar_file_of_partial_records(tmp_path):
    path = write_file(tmp_path / "data_batch_1.bin", bytes(datasets.CIFAR_RECORD + 5))
    with pytest.raises(DataError, match="not a whole number") as error:
        datasets.read_cifar_bin(path)
    assert str(path) in str(error.value)


def test_cifar_label_out_of_range(tmp_path):
    images = np.zeros((2, 3, 32, 32), np.uint8)
    path = write_file(tmp_path / "data_batch_1.bin", cifar_bytes(images, [3, 10]))
    with pytest.raises(DataError, match="label 10 at position 1") as error:
        datasets.read_cifar_bin(path)
    assert str(path) in str(error.value)


def test_images_and_labels_of_different_counts(tmp_path):
    files = idx_set_files("mnist")
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.arange(9, dtype=np.uint8)))
    root = write_set(tmp_path, "mnist", files)
    with pytest.raises(DataError, match="holds 10 images but .*t10k-labels.* holds 9 labels"):
        datasets.load("mnist", 1, 0, data_dir=root)


@pytest.mark.parametrize("name, bad_label", [("mnist", 10), ("emnist-letters", 0)])
def test_label_outside_the_classes_of_the_set(tmp_path, name, bad_label):
    files = idx_set_files(name)
    test_labels = datasets.SETS[name].files[3] + ".gz"
    labels = datasets.read_idx(write_file(tmp_path / "labels", files[test_labels]))
    labels[-1] = bad_label
    files[test_labels] = gzip.compress(idx_bytes(labels))
    with pytest.raises(DataError, match=f"{test_labels}: label {bad_label} at position {len(labels) - 1}"):
        datasets.load(name, 1, 0, data_dir=write_set(tmp_path, name, files))


def test_images_of_the_wrong_size(tmp_path):
    files = idx_set_files("kmnist")
    files["train-images-idx3-ubyte.gz"] = idx_bytes(np.zeros((30, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"train-images.*shape \(30, 27, 28\), expected \(n, 28, 28\)"):
        datasets.load("kmnist", 1, 0, data_dir=write_set(tmp_path, "kmnist", files))


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
    with pytest.raises(DataError, match=message):
        datasets.load("fashion", data_dir=fashion_root, **arguments)


def test_unknown_set_lists_the_names():
    with pytest.raises(DataError, match="unknown data set 'svhn': choose one of mnist, fashion-mnist"):
        datasets.load("svhn", 1, 1)


def test_synthetic_sets_have_no_files(tmp_path):
    with pytest.raises(DataError, match="stripe is a synthetic set"):
        datasets.download("stripe", cache_dir=tmp_path)


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
# Where the files are
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def places(tmp_path, monkeypatch):
    """Four data roots, for data_dir, $LAZYFEAT_DATA, the cache (a fake home) and the system."""
    roots = {key: tmp_path / key for key in ("arg", "env", "home", "system")}
    monkeypatch.setenv("HOME", str(roots["home"]))
    monkeypatch.setenv(datasets.ENV_VAR, str(roots["env"]))
    monkeypatch.setattr(datasets, "SYSTEM_ROOT", roots["system"])
    roots["cache"] = roots["home"] / ".cache" / "lazyfeat"
    return roots


def put_empty_set(root, name="fashion-mnist"):
    """Empty files with the names of a set's files in root/name (enough for `find`)."""
    return write_set(root, name, {file_name: b"" for file_name in datasets.SETS[name].files}) / name


def test_first_hit_wins(places):
    expected = [put_empty_set(places[key]) for key in ("arg", "env", "cache", "system")]
    for folder in expected:
        assert datasets.find("fashion", data_dir=places["arg"]) == folder
        for path in folder.iterdir():
            path.unlink()


def test_a_folder_lacking_a_file_is_no_hit(places):
    put_empty_set(places["env"])
    partial = put_empty_set(places["arg"])
    (partial / "t10k-labels-idx1-ubyte").unlink()
    assert datasets.find("fashion-mnist", data_dir=places["arg"]) == places["env"] / "fashion-mnist"


def test_not_found_lists_the_places_and_the_two_ways(places):
    with pytest.raises(DataError) as error:
        datasets.find("fashion-mnist", data_dir=places["arg"])
    message = str(error.value)
    for key in ("arg", "env", "cache", "system"):
        assert str(places[key] / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "python run.py download fashion-mnist" in message


def test_describe_reports_presence_counts_and_errors(places):
    write_set(places["arg"], "fashion-mnist", idx_set_files("fashion-mnist"))
    write_set(places["env"], "cifar10", cifar_set_files(per_batch=1))
    broken = put_empty_set(places["system"], "kmnist")
    entries = {entry["name"]: entry for entry in datasets.describe(data_dir=places["arg"])}
    assert list(entries) == list(datasets.NAMES)
    assert entries["fashion-mnist"]["present"] and entries["fashion-mnist"]["n_images"] == 40
    assert entries["fashion-mnist"]["path"] == str(places["arg"] / "fashion-mnist")
    assert entries["cifar10"]["n_images"] == 60 and entries["cifar10"]["shape"] == (3, 32, 32)
    assert not entries["mnist"]["present"] and entries["mnist"]["path"] is None
    searched = [str(places[key] / "mnist") for key in ("arg", "env", "cache", "system")]
    assert entries["mnist"]["searched"] == searched
    assert entries["kmnist"]["present"] and str(broken) in entries["kmnist"]["error"]


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
    with pytest.raises(DataError, match="d must be"):
        datasets.load("sphere", 5, 5, d=d)


# ----------------------------------------------------------------------------------------------
# Download, from a local HTTP server
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def server():
    """(base URL, {path: body}, {paths whose body is cut in the middle}) of a local HTTP server."""
    files, cut = {}, set()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path in cut else body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", files, cut
    httpd.shutdown()
    httpd.server_close()


def pin(monkeypatch, name, bodies):
    """Pin the sources of set `name` to the SHA-256 of `bodies` (by file name)."""
    spec = datasets.SETS[name]
    sources = tuple(dataclasses.replace(s, sha256=hashlib.sha256(bodies[s.filename]).hexdigest())
                    for s in spec.sources)
    monkeypatch.setitem(datasets.SETS, name, dataclasses.replace(spec, sources=sources))


def serve(files, bodies):
    """Put {file name: body} on the server."""
    files.update({f"/{name}": body for name, body in bodies.items()})


def test_download_accepts_good_files(server, tmp_path, monkeypatch):
    url, files, _ = server
    bodies = idx_set_files("fashion-mnist")
    serve(files, bodies)
    pin(monkeypatch, "fashion-mnist", bodies)
    folder = datasets.download("fashion", cache_dir=tmp_path, base_url=url, progress=False)
    assert folder == tmp_path / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(bodies)
    assert datasets.load("fashion", 40, 0, data_dir=tmp_path)[0].shape == (40, 1, 28, 28)


def test_download_rejects_a_corrupt_file(server, tmp_path):
    url, files, _ = server
    serve(files, idx_set_files("fashion-mnist"))  # generated files do not match the real pins
    with pytest.raises(DataError, match="checksum did not match"):
        datasets.download("fashion-mnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_download_leaves_nothing(server, tmp_path, monkeypatch):
    url, files, cut = server
    bodies = idx_set_files("mnist")
    serve(files, bodies)
    pin(monkeypatch, "mnist", bodies)
    cut.add("/train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="connection dropped"):
        datasets.download("mnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing(server, tmp_path, monkeypatch):
    url, files, _ = server
    bodies = idx_set_files("kmnist")
    serve(files, bodies)
    pin(monkeypatch, "kmnist", bodies)

    class InterruptedBar(datasets.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "tqdm", InterruptedBar)
    with pytest.raises(KeyboardInterrupt):
        datasets.download("kmnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_on_the_server(server, tmp_path):
    url, _, _ = server
    with pytest.raises(DataError, match="download failed .*404"):
        datasets.download("kmnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_files_already_there_are_kept(server, tmp_path, monkeypatch):
    url, files, _ = server
    bodies = idx_set_files("mnist")
    serve(files, bodies)
    pin(monkeypatch, "mnist", bodies)
    datasets.download("mnist", cache_dir=tmp_path, base_url=url, progress=False)
    files.clear()
    assert datasets.download("mnist", cache_dir=tmp_path, base_url=url, progress=False).is_dir()


def zip_of(members):
    """The bytes of a zip archive holding {member name: bytes}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz_of(members):
    """The bytes of a gzipped tar archive holding {member name: bytes}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_emnist_letters_come_out_of_the_zip(server, tmp_path, monkeypatch):
    url, files, _ = server
    letters = idx_set_files("emnist-letters", per_class=(1, 1))
    archive = zip_of({f"gzip/{name}": data for name, data in letters.items()}
                     | {"gzip/emnist-digits-test-labels-idx1-ubyte.gz": b"other split"})
    serve(files, {"gzip.zip": archive})
    pin(monkeypatch, "emnist-letters", {"gzip.zip": archive})
    folder = datasets.download("emnist-letters", cache_dir=tmp_path, base_url=url, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(letters)
    assert datasets.load("emnist-letters", 52, 0, data_dir=tmp_path)[1][0] == 1.0


def test_cifar10_comes_out_of_the_tarball_and_nothing_else(server, tmp_path, monkeypatch):
    url, files, _ = server
    batches = cifar_set_files(per_batch=1)
    archive = tar_gz_of({f"cifar-10-batches-bin/{name}": data for name, data in batches.items()}
                        | {"../escape.bin": b"x", "cifar-10-batches-bin/readme.html": b"x"})
    serve(files, {"cifar-10-binary.tar.gz": archive})
    pin(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    folder = datasets.download("cifar10", cache_dir=tmp_path, base_url=url, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(batches)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10"]
    assert datasets.load("cifar10", 60, 0, data_dir=tmp_path)[0].shape == (60, 3, 32, 32)


def test_an_archive_lacking_a_member_leaves_nothing(server, tmp_path, monkeypatch):
    url, files, _ = server
    batches = cifar_set_files(per_batch=1)
    archive = tar_gz_of({f"cifar-10-batches-bin/{name}": data for name, data in batches.items()
                         if name != "test_batch.bin"})
    serve(files, {"cifar-10-binary.tar.gz": archive})
    pin(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    with pytest.raises(DataError, match="cannot extract cifar-10-batches-bin/test_batch.bin"):
        datasets.download("cifar10", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# The real Fashion-MNIST
# ----------------------------------------------------------------------------------------------

def real_fashion():
    """The folder of the real Fashion-MNIST, or None where it is not installed."""
    try:
        return datasets.find("fashion-mnist")
    except DataError:
        return None


@pytest.mark.skipif(real_fashion() is None,
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    folder = real_fashion()
    labels = np.concatenate([datasets.read_idx(next(folder.glob(f"{part}-labels-idx1-ubyte*")))
                             for part in ("train", "t10k")])
    assert np.bincount(labels).tolist() == [7000] * 10
    x, y, _, _ = datasets.load("fashion", 70000, 0)
    assert x.shape == (70000, 1, 28, 28)
    np.testing.assert_array_equal(y[:100], np.tile([-1.0, 1.0], 50))
    np.testing.assert_allclose(np.linalg.norm(x[:100].reshape(100, -1), axis=1), 28.0)
