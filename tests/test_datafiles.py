"""Tests of datafiles.py: the file formats, the search rule, the datasets view, and downloads
from a local HTTP server."""

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
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import datafiles
from datafiles import DataError
from tests.data_writers import (IDX_CODES, cifar_bytes, cifar_set_files, idx_bytes, idx_set_files,
                                write_file, write_set)

FILE_SETTINGS = settings(max_examples=20, deadline=None)


# ----------------------------------------------------------------------------------------------
# Readers: round trips
# ----------------------------------------------------------------------------------------------

@FILE_SETTINGS
@given(data=st.data(), dtype=st.sampled_from(list(IDX_CODES)),
       shape=st.lists(st.integers(0, 4), min_size=1, max_size=4), compress=st.booleans())
def test_idx_round_trip(tmp_path_factory, data, dtype, shape, compress):
    array = data.draw(hnp.arrays(np.dtype(dtype), tuple(shape)))
    path = write_file(tmp_path_factory.mktemp("idx") / "file", idx_bytes(array, dtype), compress)
    np.testing.assert_array_equal(datafiles.read_idx(path), array)


def test_gzip_is_told_by_its_bytes_not_by_the_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gzipped = write_file(tmp_path / "images-idx3-ubyte", idx_bytes(array), compress=True)
    raw = write_file(tmp_path / "labels-idx1-ubyte.gz", idx_bytes(array))
    np.testing.assert_array_equal(datafiles.read_idx(gzipped), array)
    np.testing.assert_array_equal(datafiles.read_idx(raw), array)


@FILE_SETTINGS
@given(data=st.data(), n=st.integers(0, 4))
def test_cifar_round_trip(tmp_path_factory, data, n):
    images = data.draw(hnp.arrays(np.uint8, (n, 3, 32, 32)))
    labels = data.draw(hnp.arrays(np.uint8, (n,), elements=st.integers(0, 9)))
    path = write_file(tmp_path_factory.mktemp("cifar") / "data_batch_1.bin", cifar_bytes(images, labels))
    read_images, read_labels = datafiles.read_cifar_bin(path)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_cifar_pixels_are_red_green_blue_planes(tmp_path):
    record = np.concatenate([[7], np.full(1024, 1), np.full(1024, 2), np.full(1024, 3)]).astype(np.uint8)
    images, labels = datafiles.read_cifar_bin(write_file(tmp_path / "b.bin", record.tobytes()))
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
        datafiles.read_idx(path)
    assert str(path) in str(error.value)


def test_cifar_file_of_partial_records(tmp_path):
    path = write_file(tmp_path / "data_batch_1.bin", bytes(datafiles.CIFAR_RECORD + 5))
    with pytest.raises(DataError, match="not a whole number") as error:
        datafiles.read_cifar_bin(path)
    assert str(path) in str(error.value)


def test_cifar_label_out_of_range(tmp_path):
    images = np.zeros((2, 3, 32, 32), np.uint8)
    path = write_file(tmp_path / "data_batch_1.bin", cifar_bytes(images, [3, 10]))
    with pytest.raises(DataError, match="label 10 at position 1") as error:
        datafiles.read_cifar_bin(path)
    assert str(path) in str(error.value)


def test_images_and_labels_of_different_counts(tmp_path):
    files = idx_set_files("mnist")
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.arange(9, dtype=np.uint8)))
    folder = write_set(tmp_path, "mnist", files) / "mnist"
    with pytest.raises(DataError, match="holds 10 images but .*t10k-labels.* holds 9 labels"):
        datafiles.read_set(datafiles.SETS["mnist"], folder)


@pytest.mark.parametrize("name, bad_label", [("mnist", 10), ("emnist-letters", 0)])
def test_label_outside_the_classes_of_the_set(tmp_path, name, bad_label):
    files = idx_set_files(name)
    test_labels = datafiles.SETS[name].files[3] + ".gz"
    labels = datafiles.read_idx(write_file(tmp_path / "labels", files[test_labels]))
    labels[-1] = bad_label
    files[test_labels] = gzip.compress(idx_bytes(labels))
    with pytest.raises(DataError, match=f"{test_labels}: label {bad_label} at position {len(labels) - 1}"):
        datafiles.read_set(datafiles.SETS[name], write_set(tmp_path, name, files) / name)


def test_images_of_the_wrong_size(tmp_path):
    files = idx_set_files("kmnist")
    files["train-images-idx3-ubyte.gz"] = idx_bytes(np.zeros((30, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"train-images.*shape \(30, 27, 28\), expected \(n, 28, 28\)"):
        datafiles.read_set(datafiles.SETS["kmnist"], write_set(tmp_path, "kmnist", files) / "kmnist")


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

def test_unknown_set_lists_the_names():
    with pytest.raises(DataError, match="unknown data set 'svhn': choose one of mnist, fashion-mnist"):
        datafiles.find("svhn")


def test_synthetic_sets_have_no_files(tmp_path):
    with pytest.raises(DataError, match="stripe is a synthetic set"):
        datafiles.download("stripe", cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# Where the files are
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def places(tmp_path, monkeypatch):
    """Four data roots, for data_dir, $LAZYFEAT_DATA, the cache (a fake home) and the system."""
    roots = {key: tmp_path / key for key in ("arg", "env", "home", "system")}
    monkeypatch.setenv("HOME", str(roots["home"]))
    monkeypatch.setenv(datafiles.ENV_VAR, str(roots["env"]))
    monkeypatch.setattr(datafiles, "SYSTEM_ROOT", roots["system"])
    roots["cache"] = roots["home"] / ".cache" / "lazyfeat"
    return roots


def put_empty_set(root, name="fashion-mnist"):
    """Empty files with the names of a set's files in root/name (enough for `find`)."""
    return write_set(root, name, {file_name: b"" for file_name in datafiles.SETS[name].files}) / name


def test_first_hit_wins(places):
    expected = [put_empty_set(places[key]) for key in ("arg", "env", "cache", "system")]
    for folder in expected:
        assert datafiles.find("fashion", data_dir=places["arg"]) == folder
        for path in folder.iterdir():
            path.unlink()


def test_a_folder_lacking_a_file_is_no_hit(places):
    put_empty_set(places["env"])
    partial = put_empty_set(places["arg"])
    (partial / "t10k-labels-idx1-ubyte").unlink()
    assert datafiles.find("fashion-mnist", data_dir=places["arg"]) == places["env"] / "fashion-mnist"


def test_not_found_lists_the_places_and_the_two_ways(places):
    with pytest.raises(DataError) as error:
        datafiles.find("fashion-mnist", data_dir=places["arg"])
    message = str(error.value)
    for key in ("arg", "env", "cache", "system"):
        assert str(places[key] / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "python run.py download fashion-mnist" in message


def test_describe_reports_presence_counts_and_errors(places):
    write_set(places["arg"], "fashion-mnist", idx_set_files("fashion-mnist"))
    write_set(places["env"], "cifar10", cifar_set_files(per_batch=1))
    broken = put_empty_set(places["system"], "kmnist")
    entries = {entry["name"]: entry for entry in datafiles.describe(data_dir=places["arg"])}
    assert list(entries) == list(datafiles.NAMES)
    assert entries["fashion-mnist"]["present"] and entries["fashion-mnist"]["n_images"] == 40
    assert entries["fashion-mnist"]["path"] == str(places["arg"] / "fashion-mnist")
    assert entries["cifar10"]["n_images"] == 60 and entries["cifar10"]["shape"] == (3, 32, 32)
    assert not entries["mnist"]["present"] and entries["mnist"]["path"] is None
    searched = [str(places[key] / "mnist") for key in ("arg", "env", "cache", "system")]
    assert entries["mnist"]["searched"] == searched
    assert entries["kmnist"]["present"] and str(broken) in entries["kmnist"]["error"]


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
    spec = datafiles.SETS[name]
    sources = tuple(dataclasses.replace(s, sha256=hashlib.sha256(bodies[s.filename]).hexdigest())
                    for s in spec.sources)
    monkeypatch.setitem(datafiles.SETS, name, dataclasses.replace(spec, sources=sources))


def serve(files, bodies):
    """Put {file name: body} on the server."""
    files.update({f"/{name}": body for name, body in bodies.items()})


def test_download_accepts_good_files(server, tmp_path, monkeypatch):
    url, files, _ = server
    bodies = idx_set_files("fashion-mnist")
    serve(files, bodies)
    pin(monkeypatch, "fashion-mnist", bodies)
    folder = datafiles.download("fashion", cache_dir=tmp_path, base_url=url, progress=False)
    assert folder == tmp_path / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(bodies)
    assert datafiles.find("fashion", data_dir=tmp_path) == folder
    assert datafiles.read_set(datafiles.SETS["fashion-mnist"], folder)[0].shape == (40, 1, 28, 28)


def test_download_rejects_a_corrupt_file(server, tmp_path):
    url, files, _ = server
    serve(files, idx_set_files("fashion-mnist"))  # generated files do not match the real pins
    with pytest.raises(DataError, match="checksum did not match"):
        datafiles.download("fashion-mnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_download_leaves_nothing(server, tmp_path, monkeypatch):
    url, files, cut = server
    bodies = idx_set_files("mnist")
    serve(files, bodies)
    pin(monkeypatch, "mnist", bodies)
    cut.add("/train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="connection dropped"):
        datafiles.download("mnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing(server, tmp_path, monkeypatch):
    url, files, _ = server
    bodies = idx_set_files("kmnist")
    serve(files, bodies)
    pin(monkeypatch, "kmnist", bodies)

    class InterruptedBar(datafiles.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(datafiles, "tqdm", InterruptedBar)
    with pytest.raises(KeyboardInterrupt):
        datafiles.download("kmnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_on_the_server(server, tmp_path):
    url, _, _ = server
    with pytest.raises(DataError, match="download failed .*404"):
        datafiles.download("kmnist", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_files_already_there_are_kept(server, tmp_path, monkeypatch):
    url, files, _ = server
    bodies = idx_set_files("mnist")
    serve(files, bodies)
    pin(monkeypatch, "mnist", bodies)
    datafiles.download("mnist", cache_dir=tmp_path, base_url=url, progress=False)
    files.clear()
    assert datafiles.download("mnist", cache_dir=tmp_path, base_url=url, progress=False).is_dir()


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
    folder = datafiles.download("emnist-letters", cache_dir=tmp_path, base_url=url, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(letters)
    labels = datafiles.read_set(datafiles.SETS["emnist-letters"], folder)[1]
    assert np.unique(labels).tolist() == list(range(1, 27))


def test_cifar10_comes_out_of_the_tarball_and_nothing_else(server, tmp_path, monkeypatch):
    url, files, _ = server
    batches = cifar_set_files(per_batch=1)
    archive = tar_gz_of({f"cifar-10-batches-bin/{name}": data for name, data in batches.items()}
                        | {"../escape.bin": b"x", "cifar-10-batches-bin/readme.html": b"x"})
    serve(files, {"cifar-10-binary.tar.gz": archive})
    pin(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    folder = datafiles.download("cifar10", cache_dir=tmp_path, base_url=url, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(batches)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10"]
    assert datafiles.read_set(datafiles.SETS["cifar10"], folder)[0].shape == (60, 3, 32, 32)


def test_an_archive_lacking_a_member_leaves_nothing(server, tmp_path, monkeypatch):
    url, files, _ = server
    batches = cifar_set_files(per_batch=1)
    archive = tar_gz_of({f"cifar-10-batches-bin/{name}": data for name, data in batches.items()
                         if name != "test_batch.bin"})
    serve(files, {"cifar-10-binary.tar.gz": archive})
    pin(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": archive})
    with pytest.raises(DataError, match="cannot extract cifar-10-batches-bin/test_batch.bin"):
        datafiles.download("cifar10", cache_dir=tmp_path, base_url=url, progress=False)
    assert list(tmp_path.iterdir()) == []
