"""The files of the real data sets: their formats, where they are found, and their downloads.

The real sets (NAMES) are the official files of MNIST, Fashion-MNIST, KMNIST and EMNIST letters
(IDX format, gzip or raw) and of CIFAR-10 (its binary version: plain bytes, nothing is ever
unpickled). What the paper does with them (the tasks, the preprocessing) is in datasets.py.

The files of a set NAME are looked for in these folders, first hit wins:

    DATA_DIR/NAME              the data_dir argument (run.py's --data-dir)
    $LAZYFEAT_DATA/NAME        the environment variable
    ~/.cache/lazyfeat/NAME     where `python run.py download NAME` puts them
    /usr/share/datasets/NAME   where Debian's package dataset-fashion-mnist puts Fashion-MNIST

Every place is a root that holds one folder per set, so the IDX sets, whose files have the same
names, never get mixed up.
"""

import contextlib
import gzip
import hashlib
import http.client
import math
import os
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm


class DataError(ValueError):
    """A data set that cannot be found or read, or an argument that asks for data that is not there."""


# ----------------------------------------------------------------------------------------------
# The sets
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One official file to download: its URL, its pinned SHA-256 and, for an archive, the
    members to extract (each is kept under its base name; the archive itself is not kept)."""

    url: str
    sha256: str
    members: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        """The name of the file on the server."""
        return _url_name(self.url)

    @property
    def targets(self) -> tuple[str, ...]:
        """The names of the files that this source leaves in the set's folder."""
        return tuple(PurePosixPath(m).name for m in self.members) or (self.filename,)


def _url_name(url: str) -> str:
    """The last part of the path of `url`."""
    return PurePosixPath(urlsplit(url).path).name


@dataclass(frozen=True)
class RealSet:
    """A real data set: its folder name, file format ("idx" or "cifar"), the files it needs
    (idx: images, labels, images, labels; cifar: the batches), the shape (C, H, W) of one image,
    its class indices, its official downloads and the Debian package that holds it, if any."""

    name: str
    fmt: str
    files: tuple[str, ...]
    shape: tuple[int, int, int]
    classes: range
    sources: tuple[Source, ...]
    debian: str | None = None


def _idx_files(train: str, test: str) -> tuple[str, ...]:
    """The four IDX files of a set whose train and test files start with `train` and `test`."""
    return tuple(f"{part}-{kind}" for part in (train, test)
                 for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def _gz_sources(base_url: str, pins: dict[str, str]) -> tuple[Source, ...]:
    """One Source per file name of `pins`, fetched from `base_url`."""
    return tuple(Source(base_url + name, sha256) for name, sha256 in pins.items())


# Pinned SHA-256 sums, from tensorflow/datasets (tensorflow_datasets/url_checksums/*.txt),
# each cross-checked against other projects that pin the same files.
MNIST_PINS = {  # the same files as Yann LeCun's originals
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_PINS = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
KMNIST_PINS = {
    "train-images-idx3-ubyte.gz": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
    "train-labels-idx1-ubyte.gz": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
    "t10k-images-idx3-ubyte.gz": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
    "t10k-labels-idx1-ubyte.gz": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
}
EMNIST_LETTERS_FILES = _idx_files("emnist-letters-train", "emnist-letters-test")
EMNIST_ZIP = Source(
    "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
    "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e",
    tuple(f"gzip/{name}.gz" for name in EMNIST_LETTERS_FILES),
)
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR10_TAR = Source(
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    tuple(f"cifar-10-batches-bin/{name}" for name in CIFAR10_FILES),
)

SETS = {spec.name: spec for spec in (
    RealSet("mnist", "idx", _idx_files("train", "t10k"), (1, 28, 28), range(10),
            _gz_sources("https://ossci-datasets.s3.amazonaws.com/mnist/", MNIST_PINS)),
    RealSet("fashion-mnist", "idx", _idx_files("train", "t10k"), (1, 28, 28), range(10),
            _gz_sources("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", FASHION_PINS),
            debian="dataset-fashion-mnist"),
    RealSet("kmnist", "idx", _idx_files("train", "t10k"), (1, 28, 28), range(10),
            _gz_sources("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", KMNIST_PINS)),
    RealSet("emnist-letters", "idx", EMNIST_LETTERS_FILES, (1, 28, 28), range(1, 27), (EMNIST_ZIP,)),
    RealSet("cifar10", "cifar", CIFAR10_FILES, (3, 32, 32), range(10), (CIFAR10_TAR,)),
)}
NAMES = tuple(SETS)
SYNTHETIC = ("stripe", "sphere")  # generated by datasets.synthetic: no files
ALIASES = {"fashion": "fashion-mnist"}

ENV_VAR = "LAZYFEAT_DATA"
SYSTEM_ROOT = Path("/usr/share/datasets")
SUFFIXES = {"idx": ("", ".gz"), "cifar": ("",)}  # how a file of each format may end


def real_set(name: str) -> RealSet:
    """The RealSet called `name` (or one of its ALIASES); DataError for an unknown name."""
    canonical = ALIASES.get(name, name)
    if canonical in SYNTHETIC:
        raise DataError(f"{name} is a synthetic set: it is generated, it has no files")
    if canonical not in SETS:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(NAMES + SYNTHETIC)} "
                        f"(or the alias 'fashion')")
    return SETS[canonical]


# ----------------------------------------------------------------------------------------------
# Where the files are
# ----------------------------------------------------------------------------------------------

def find(name, data_dir=None) -> Path:
    """The folder that holds every file of set `name`: the first of DATA_DIR/NAME,
    $LAZYFEAT_DATA/NAME, ~/.cache/lazyfeat/NAME and /usr/share/datasets/NAME that has them all.
    DataError lists the places searched and the ways to get the data."""
    spec = real_set(name)
    places = _places(spec.name, data_dir)
    hit = _first_hit(spec, places)
    if hit is None:
        raise DataError(_not_found_message(spec, places))
    return hit


def _places(name: str, data_dir) -> list[tuple[str, Path]]:
    """(where it comes from, folder) for every place to search, in order."""
    roots = [("data_dir", data_dir), (f"${ENV_VAR}", os.environ.get(ENV_VAR)),
             ("cache", _cache_root()), ("system", SYSTEM_ROOT)]
    return [(origin, Path(root).expanduser() / name) for origin, root in roots if root]


def _cache_root() -> Path:
    """~/.cache/lazyfeat, where downloads go."""
    return Path.home() / ".cache" / "lazyfeat"


def _first_hit(spec: RealSet, places) -> Path | None:
    """The first folder of `places` that holds every file of the set, else None."""
    return next((folder for _, folder in places if not _missing(spec, folder)), None)


def _missing(spec: RealSet, folder: Path) -> list[str]:
    """The files of the set that `folder` lacks."""
    return [name for name in spec.files if _locate(spec, folder, name) is None]


def _locate(spec: RealSet, folder: Path, name: str) -> Path | None:
    """The file `name` in `folder`, with one of the suffixes its format allows, else None."""
    candidates = (folder / (name + suffix) for suffix in SUFFIXES[spec.fmt])
    return next((path for path in candidates if path.is_file()), None)


def _not_found_message(spec: RealSet, places) -> str:
    """Why set `spec` was not found: each place searched and what it lacks; how to get the set."""
    lines = [f"data set {spec.name} not found. Searched:"]
    for origin, folder in places:
        why = f"lacks {', '.join(_missing(spec, folder))}" if folder.is_dir() else "no such folder"
        lines.append(f"  {folder}  ({origin}: {why})")
    if spec.debian:
        lines += ["Get it with either:", f"  apt-get install {spec.debian}   (Debian's package)"]
    else:
        lines += [f"Get it with (no Debian package holds {spec.name}):"]
    lines.append(f"  python run.py download {spec.name}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Reading the files
# ----------------------------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_HEADER_MAX = 4 + 4 * 255  # magic, then at most 255 sizes
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes


def read_set(spec: RealSet, folder: Path):
    """The images (n, C, H, W) and class indices (n,) of all the official files of a set that
    `folder` holds, train and test files pooled in that order."""
    paths = [_locate(spec, folder, name) for name in spec.files]
    if spec.fmt == "cifar":
        parts = [read_cifar_bin(path) for path in paths]
    else:
        parts = [_read_idx_pair(spec, images, labels) for images, labels in zip(paths[0::2], paths[1::2])]
    return np.concatenate([images for images, _ in parts]), np.concatenate([labels for _, labels in parts])


def _read_idx_pair(spec: RealSet, images_path: Path, labels_path: Path):
    """Images (n, 1, H, W) and labels (n,) from an IDX images file and its labels file, checked
    against each other and against the set (image size, class indices)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape[1:] != spec.shape[1:]:
        raise DataError(f"{images_path}: holds an array of shape {images.shape}, expected "
                        f"(n, {spec.shape[1]}, {spec.shape[2]}) images of {spec.name}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds an array of shape {labels.shape}, expected (n,) labels")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels; both files must come from the same release")
    check_labels(labels, spec.classes, labels_path)
    return images[:, None], labels


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file, gzip or raw (told by the first bytes, 1f 8b, not by the
    name). The header is 0, 0, a type code, the number of dimensions n, then n big-endian uint32
    sizes; the payload that follows must have exactly the size the header announces."""
    path = Path(path)
    data = _read_bytes(path)
    dtype, dims, start = _idx_header(data, path)
    expected = start + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"{path}: {what}: a header of sizes {dims} needs {expected} bytes, the file "
                        f"has {len(data)}; fetch the file again")
    return np.frombuffer(data, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_header(data: bytes, path: Path):
    """(dtype, sizes, offset of the payload) from the header at the start of `data`."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES or data[3] == 0:
        raise DataError(f"{path}: not an IDX file (it starts with bytes {data[:4].hex(' ')}, expected "
                        f"00 00, a type code among {', '.join(f'{c:02x}' for c in IDX_TYPES)}, "
                        f"and a number of dimensions >= 1)")
    start = 4 + 4 * data[3]
    if len(data) < start:
        raise DataError(f"{path}: truncated inside its header; fetch the file again")
    dims = tuple(int(size) for size in np.frombuffer(data, ">u4", count=data[3], offset=4))
    return np.dtype(IDX_TYPES[data[2]]), dims, start


def _read_bytes(path: Path, limit: int = -1) -> bytes:
    """The bytes of a file (the first `limit` only, if given), gunzipped when it starts with 1f 8b."""
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if is_gzip else raw
            return stream.read(limit)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read ({err}); fetch the file again") from err


def read_cifar_bin(path):
    """Images (n, 3, 32, 32) uint8 and labels (n,) of a CIFAR-10 binary batch: n records of one
    label byte (0..9) followed by 3072 pixel bytes (red, green, blue planes of 32 x 32)."""
    path = Path(path)
    n = _cifar_count(path)
    records = np.fromfile(path, np.uint8).reshape(n, CIFAR_RECORD)
    labels = records[:, 0].copy()
    check_labels(labels, range(10), path)
    return records[:, 1:].reshape(n, 3, 32, 32), labels


def _cifar_count(path: Path) -> int:
    """The number of records of a CIFAR-10 binary batch, from its size."""
    size = path.stat().st_size
    if size % CIFAR_RECORD:
        raise DataError(f"{path}: {size} bytes is not a whole number of {CIFAR_RECORD}-byte records; "
                        f"the file is truncated or not a CIFAR-10 binary batch")
    return size // CIFAR_RECORD


def check_labels(labels: np.ndarray, classes: range, where) -> None:
    """DataError naming `where` unless every label is one of `classes`."""
    outside = np.flatnonzero(~np.isin(labels, np.asarray(classes)))
    if outside.size:
        i = outside[0]
        raise DataError(f"{where}: label {labels[i]} at position {i} is not a class index "
                        f"{classes.start}..{classes.stop - 1}")


# ----------------------------------------------------------------------------------------------
# The datasets view
# ----------------------------------------------------------------------------------------------

def describe(data_dir=None) -> list[dict]:
    """One dict per real set: name, present, path (str or None), n_images (from the file headers,
    no pixel decoded), shape (C, H, W), searched (the folders looked at, in order) and error
    (why a present set cannot be read, else None)."""
    return [_describe_one(SETS[name], data_dir) for name in NAMES]


def _describe_one(spec: RealSet, data_dir) -> dict:
    """The `describe` entry of one set."""
    places = _places(spec.name, data_dir)
    hit = _first_hit(spec, places)
    entry = {"name": spec.name, "present": hit is not None, "path": str(hit) if hit else None,
             "n_images": None, "shape": spec.shape,
             "searched": [str(folder) for _, folder in places], "error": None}
    if hit is not None:
        try:
            entry["n_images"] = _count_images(spec, hit)
        except DataError as err:
            entry["error"] = str(err)
    return entry


def _count_images(spec: RealSet, folder: Path) -> int:
    """The number of images in the files of a set, read from headers and file sizes."""
    paths = [_locate(spec, folder, name) for name in spec.files]
    if spec.fmt == "cifar":
        return sum(_cifar_count(path) for path in paths)
    return sum(_idx_header(_read_bytes(path, IDX_HEADER_MAX), path)[1][0] for path in paths[0::2])


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without an answer before a download fails


def download(name, cache_dir=None, base_url=None, progress=True) -> Path:
    """Fetch the official files of set `name` into CACHE_DIR/NAME (default ~/.cache/lazyfeat/NAME)
    and return that folder. Every file is checked against its pinned SHA-256 in a temporary file
    of that folder, then moved into place with os.replace: a partial or corrupt download never
    sits where the loader looks, and on any failure nothing new is left. Files already there are
    kept. `base_url` replaces the official server (tests); `progress` shows a tqdm bar."""
    spec = real_set(name)
    folder = Path(cache_dir if cache_dir is not None else _cache_root()).expanduser() / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for source in spec.sources:
            if not all((folder / target).is_file() for target in source.targets):
                _fetch_source(source, folder, base_url, progress)
    finally:
        if not any(folder.iterdir()):
            folder.rmdir()
    return folder


def _fetch_source(source: Source, folder: Path, base_url, progress: bool) -> None:
    """Download one source into a temporary file, check its pin, then move the file (or the
    archive members it holds) into `folder`."""
    url = source.url if base_url is None else f"{base_url.rstrip('/')}/{source.filename}"
    with _temporary(folder) as part:
        digest = _fetch(url, part, progress)
        if digest != source.sha256:
            raise DataError(f"{url}: the checksum did not match (got sha256 {digest}, pinned "
                            f"{source.sha256}); the file was discarded, try the download again")
        if source.members:
            _extract(part, source.members, folder)
        else:
            os.replace(part, folder / source.filename)


@contextlib.contextmanager
def _temporary(folder: Path):
    """A new hidden file in `folder`, deleted on exit (whatever happened) unless moved away."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _fetch(url: str, target: Path, progress: bool) -> str:
    """Stream `url` into `target` with a progress bar; return the SHA-256 of the bytes received."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(target, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=_url_name(url),
                      disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            received = out.tell()
    except (OSError, http.client.HTTPException) as err:
        raise DataError(f"{url}: the download failed ({err}); nothing was kept, try again") from err
    if size is not None and received != size:
        raise DataError(f"{url}: the connection dropped after {received} of {size} bytes; "
                        f"nothing was kept, try again")
    return digest.hexdigest()


def _extract(archive: Path, members: tuple[str, ...], folder: Path) -> None:
    """Write each named member of a zip or tar archive into `folder` under its base name,
    atomically, once all of them have been read; nothing else of the archive is read (no
    extractall), so no member can land outside `folder`."""
    contents = {member: _read_member(archive, member) for member in members}
    for member, data in contents.items():
        with _temporary(folder) as part:
            part.write_bytes(data)
            os.replace(part, folder / PurePosixPath(member).name)


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of one regular-file member of a zip or tar archive."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                return zipped.read(member)
        with tarfile.open(archive) as tarred:
            info = tarred.getmember(member)
            if not info.isfile():
                raise DataError(f"the downloaded archive's member {member} is not a regular file")
            return tarred.extractfile(info).read()
    except (KeyError, OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as err:
        raise DataError(f"cannot extract {member} from the downloaded archive ({err})") from err
