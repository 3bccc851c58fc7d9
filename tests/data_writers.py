"""Writers of the two file formats of the real sets (IDX, CIFAR-10 binary), independent of the
readers under test, and of small generated sets shaped like the real ones; and where the real
Fashion-MNIST is, for the tests that read it."""

import gzip

import numpy as np

import datafiles
from datafiles import DataError


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
    spec = datafiles.SETS[name]
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
            for i, name in enumerate(datafiles.CIFAR10_FILES)}


def write_set(root, name, files):
    """Write {file name: bytes} into root/name; return root."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    return root


def real_fashion():
    """The folder of the real Fashion-MNIST, or None where it is not installed."""
    try:
        return datafiles.find("fashion-mnist")
    except DataError:
        return None
