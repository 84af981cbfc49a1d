"""MNIST and Fashion-MNIST from the standard IDX files, downloaded once into a cache folder.

The IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero bytes, a type
code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and the number of
dimensions, then one 4-byte size per dimension, then the data in C order. MNIST images are
``0x00000803`` (2051: uint8, 3 dims), labels ``0x00000801`` (2049: uint8, 1 dim).

Downloads go to a temporary file in the target folder, are checked against the published SHA-256 of
each ``.gz`` file, and only then renamed into place (``os.replace``), so an interrupted or corrupted
download never leaves a file that looks complete. Files already in the folder (``.gz`` or
uncompressed) are used as they are; ``.gz`` ones are checked against the same checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_CODES = {np.dtype(dt).newbyteorder("=").str[1:]: code for code, dt in IDX_TYPES.items()}


class IDXFormatError(ValueError):
    """An IDX file whose header or size is not what it should be."""


class ChecksumError(ValueError):
    """A file whose SHA-256 differs from the published one."""


class DownloadError(OSError):
    """A data set that could not be downloaded (offline, or every mirror failed)."""


def _open(path: str | os.PathLike) -> Any:
    path = os.fspath(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzipped or not) into a native-endian NumPy array.

    Gzip is recognized by the file's first bytes, not by its name.

    Args:
      path: the file, e.g. ``"train-images-idx3-ubyte.gz"`` (MNIST's training images: ``(60000, 28, 28)``
        uint8).

    Returns:
      A new NumPy array of the shape and dtype in the header (uint8, int8, int16, int32, float32 or
      float64), in native byte order.

    Raises:
      IDXFormatError: a bad magic number (non-zero first bytes, unknown type code), or a data size that
        differs from the header's dimensions (truncated or padded file), or a file that cannot be read
        (a truncated gzip stream; also a missing file).

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     path = os.path.join(tmp, "images-idx3-ubyte.gz")
      ...     nnjax.data.write_idx(path, np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
      ...     images = nnjax.data.read_idx(path)
      >>> images.shape, images.dtype, images[1, 0].tolist()
      ((2, 2, 3), dtype('uint8'), [6, 7, 8])
    """
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as error:  # e.g. a truncated gzip stream
        raise IDXFormatError(f"read_idx: cannot read {os.fspath(path)!r}: {error}") from error
    if len(data) < 4:
        raise IDXFormatError(f"read_idx: {os.fspath(path)!r} is too short ({len(data)} bytes) to hold an IDX header.")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or code not in IDX_TYPES:
        raise IDXFormatError(
            f"read_idx: {os.fspath(path)!r} has magic number 0x{magic:08X}, not an IDX file (expected 0x0000TTDD with "
            f"type TT in {[f'0x{c:02X}' for c in IDX_TYPES]}). Hint: is it an HTML error page or another format?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"read_idx: {os.fspath(path)!r} ends inside its header ({len(data)} bytes).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXFormatError(
            f"read_idx: {os.fspath(path)!r} holds {len(data) - header} data bytes, but its header says shape {shape} "
            f"of {dtype.newbyteorder('=').name} ({expected} bytes): the file is truncated or corrupt."
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: Any) -> None:
    """Writes ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); the inverse of ``read_idx``.

    The data are written big-endian, as the format requires; an existing file is replaced.

    Args:
      path: the file to write; its folder must exist.
      array: any array-like of dtype uint8, int8, int16, int32, float32 or float64 and any shape.

    Returns:
      None.

    Raises:
      TypeError: a dtype IDX cannot hold (it stores uint8, int8, int16, int32, float32, float64), e.g.
        int64: convert first, ``array.astype(np.int32)``.
      ValueError: more than 255 dimensions.

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     path = os.path.join(tmp, "labels-idx1-ubyte")
      ...     nnjax.data.write_idx(path, np.array([3, 1, 4], np.uint8))
      ...     with open(path, "rb") as f:
      ...         header = f.read(8)
      ...     labels = nnjax.data.read_idx(path)
      >>> header.hex(), labels.tolist()   # magic 0x00000801 (uint8, 1 dim), then the size 3
      ('0000080100000003', [3, 1, 4])
    """
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in _TYPE_CODES:
        raise TypeError(
            f"write_idx: dtype {array.dtype} is not storable in IDX; use uint8, int8, int16, int32, float32 or float64."
        )
    if array.ndim > 255:
        raise ValueError(f"write_idx: at most 255 dimensions, given {array.ndim}.")
    code = _TYPE_CODES[key]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, IDX_TYPES[code]).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


class IDXFile(NamedTuple):
    """One published file: its name, SHA-256 of the ``.gz``, byte size, expected magic and shape."""

    name: str  # e.g. "train-images-idx3-ubyte" (without .gz)
    sha256: str | None
    size: int | None
    magic: int
    shape: tuple[int, ...]


class IDXDataset(NamedTuple):
    """A set of four IDX files and the mirrors that serve them (tried in order)."""

    title: str
    folder: str
    mirrors: tuple[str, ...]
    files: tuple[IDXFile, IDXFile, IDXFile, IDXFile]  # train images, train labels, test images, test labels
    homepage: str


IMAGES, LABELS = 0x00000803, 0x00000801

# SHA-256 of the published .gz files, as listed by torchvision, tensorflow-datasets and others.
MNIST = IDXDataset(
    "MNIST",
    "mnist",
    ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    (
        IDXFile(
            "train-images-idx3-ubyte",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            9912422,
            IMAGES,
            (60000, 28, 28),
        ),
        IDXFile(
            "train-labels-idx1-ubyte",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            28881,
            LABELS,
            (60000,),
        ),
        IDXFile(
            "t10k-images-idx3-ubyte",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            1648877,
            IMAGES,
            (10000, 28, 28),
        ),
        IDXFile(
            "t10k-labels-idx1-ubyte",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            4542,
            LABELS,
            (10000,),
        ),
    ),
    "http://yann.lecun.com/exdb/mnist/",
)

FASHION_MNIST = IDXDataset(
    "Fashion-MNIST",
    "fashion_mnist",
    (
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    (
        IDXFile(
            "train-images-idx3-ubyte",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            26421880,
            IMAGES,
            (60000, 28, 28),
        ),
        IDXFile(
            "train-labels-idx1-ubyte",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            29515,
            LABELS,
            (60000,),
        ),
        IDXFile(
            "t10k-images-idx3-ubyte",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            4422102,
            IMAGES,
            (10000, 28, 28),
        ),
        IDXFile(
            "t10k-labels-idx1-ubyte",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            5148,
            LABELS,
            (10000,),
        ),
    ),
    "https://github.com/zalandoresearch/fashion-mnist",
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The function that opens URLs; tests replace it to simulate offline machines and broken downloads.
urlopen: Callable[..., Any] = urllib.request.urlopen
CHUNK = 1 << 16


def data_home() -> Path:
    """The cache root: ``$NNJAX_DATA`` if set, else ``~/.cache/nnjax``."""
    return Path(os.environ.get("NNJAX_DATA") or Path.home() / ".cache" / "nnjax").expanduser()


def sha256_of(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"{what}: SHA-256 mismatch for {path}: expected {expected}, got {actual}. The file is corrupt or not "
            f"the published one; delete it so it is downloaded again (or replace it with the original file)."
        )


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Downloads ``url`` to ``dest`` through a temporary file in the same folder, renamed only when complete.

    The temporary file is removed on any failure (network error, interruption, checksum mismatch),
    so ``dest`` either holds the whole verified file or does not exist.

    Raises:
      ChecksumError: the downloaded bytes do not have the SHA-256 ``sha256``.
      OSError (urllib.error.URLError, ...): the network failed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ChecksumError(
                f"download: SHA-256 mismatch for {url}: expected {sha256}, got {digest.hexdigest()}; the file was "
                f"discarded. The mirror may serve a different or broken file."
            )
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dest


def _where_to_put(dataset: IDXDataset, folder: Path) -> str:
    names = ", ".join(f"{f.name}.gz" for f in dataset.files)
    return (
        f"Put the four files ({names}) in {folder} (gzipped or not), or pass data_dir= the folder holding them "
        f"(or set $NNJAX_DATA to a root folder: files in $NNJAX_DATA/{dataset.folder}). They are published at "
        f"{dataset.mirrors[0]} ({dataset.homepage})."
    )


def _fetch(dataset: IDXDataset, spec: IDXFile, folder: Path, download_missing: bool, verify: bool) -> Path:
    """The path of one file in ``folder``, downloading it if missing and allowed."""
    gz, raw = folder / f"{spec.name}.gz", folder / spec.name
    if gz.exists():
        if verify:
            _check_sha(gz, spec.sha256, f"load {dataset.title}")
        return gz
    if raw.exists():
        return raw
    if not download_missing:
        raise FileNotFoundError(
            f"{dataset.title}: {spec.name}(.gz) is not in {folder} and download=False. "
            + _where_to_put(dataset, folder)
        )
    errors = []
    for mirror in dataset.mirrors:
        url = mirror + f"{spec.name}.gz"
        try:
            return download(url, gz, sha256=spec.sha256 if verify else None)
        except ChecksumError as error:
            errors.append(f"{url}: {error}")
        except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts, bad URLs
            errors.append(f"{url}: {type(error).__name__}: {error}")
    tried = "\n  ".join(errors)
    raise DownloadError(
        f"{dataset.title}: could not download {spec.name}.gz (offline?). Tried:\n  {tried}\n"
        + _where_to_put(dataset, folder)
    )


def load_idx_dataset(
    dataset: IDXDataset, data_dir: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads the four files of ``dataset`` (see ``load_mnist``), checking magic numbers and shapes."""
    folder = Path(data_dir).expanduser() if data_dir is not None else data_home() / dataset.folder
    arrays = []
    for spec in dataset.files:
        path = _fetch(dataset, spec, folder, download, verify)
        with _open(path) as f:
            magic = int.from_bytes(f.read(4), "big")
        if magic != spec.magic:
            raise IDXFormatError(
                f"{dataset.title}: {path} has magic number 0x{magic:08X}, expected 0x{spec.magic:08X} "
                f"({'images: uint8, 3 dims' if spec.magic == IMAGES else 'labels: uint8, 1 dim'}). "
                "Hint: the file may be misnamed (images and labels swapped?) or corrupt; "
                "delete it to download it again."
            )
        array = read_idx(path)
        if array.shape != spec.shape:
            raise IDXFormatError(f"{dataset.title}: {path} holds shape {array.shape}, expected {spec.shape}.")
        arrays.append(array)
    x_train, y_train, x_test, y_test = arrays
    for labels, name in ((y_train, "train"), (y_test, "test")):
        if labels.size and labels.max() > 9:
            raise IDXFormatError(f"{dataset.title}: {name} labels go up to {labels.max()}, expected 0..9.")
    return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32)


def load_mnist(
    data_dir: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNIST handwritten digits: ``(x_train, y_train, x_test, y_test)``.

    Images are uint8 ``(60000, 28, 28)`` and ``(10000, 28, 28)`` in 0..255 (scale them before training,
    e.g. ``x.astype(np.float32) / 255``); labels int32 in 0..9.

    Args:
      data_dir: the folder holding (or to receive) the four IDX files; default ``$NNJAX_DATA/mnist`` or
        ``~/.cache/nnjax/mnist``.
      download: fetch missing files from the public mirrors (Google's CVDF bucket, then PyTorch's S3).
      verify: check each ``.gz`` file against its published SHA-256.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: ``x_train (60000, 28, 28)`` uint8, ``y_train (60000,)``
      int32, ``x_test (10000, 28, 28)`` uint8, ``y_test (10000,)`` int32.

    Raises:
      DownloadError: a file is missing and could not be downloaded; the message says where to put it.
      FileNotFoundError: a file is missing and ``download=False``.
      ChecksumError, IDXFormatError: a file is corrupt or not the published one (wrong magic number,
        shape or label range).

    Example:
      ``x_train, y_train, x_test, y_test = load_mnist()`` downloads the files once (about 11 MB) and
      reads them from the cache afterwards. Offline, with ``download=False``, a missing file raises:

      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as empty:
      ...     nnjax.data.load_mnist(empty, download=False)
      Traceback (most recent call last):
      ...
      FileNotFoundError: MNIST: train-images-idx3-ubyte(.gz) is not in ... and download=False. Put the four files ...
    """
    return load_idx_dataset(MNIST, data_dir, download=download, verify=verify)


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, *, download: bool = True, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST (Zalando's article images, MIT licence), a drop-in for MNIST; see ``load_mnist``.

    Class names, by label: ``FASHION_MNIST_CLASSES``. Images are uint8 in 0..255 and labels int32 in
    0..9, with MNIST's shapes.

    Args:
      data_dir: the folder holding (or to receive) the four IDX files; default
        ``$NNJAX_DATA/fashion_mnist`` or ``~/.cache/nnjax/fashion_mnist``.
      download: fetch missing files from the public mirrors (Zalando's GitHub repository, then its S3).
      verify: check each ``.gz`` file against its published SHA-256.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: ``x_train (60000, 28, 28)`` uint8, ``y_train (60000,)``
      int32, ``x_test (10000, 28, 28)`` uint8, ``y_test (10000,)`` int32.

    Raises:
      DownloadError: a file is missing and could not be downloaded; the message says where to put it.
      FileNotFoundError: a file is missing and ``download=False``.
      ChecksumError, IDXFormatError: a file is corrupt or not the published one.

    Example:
      ``x_train, y_train, x_test, y_test = load_fashion_mnist()`` downloads the files once (about 30 MB).
      Offline, with ``download=False``, a missing file raises:

      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as empty:
      ...     nnjax.data.load_fashion_mnist(empty, download=False)
      Traceback (most recent call last):
      ...
      FileNotFoundError: Fashion-MNIST: train-images-idx3-ubyte(.gz) is not in ... and download=False. ...
      >>> nnjax.data.FASHION_MNIST_CLASSES[:3]
      ('T-shirt/top', 'Trouser', 'Pullover')
    """
    return load_idx_dataset(FASHION_MNIST, data_dir, download=download, verify=verify)


__all__: Sequence[str] = [
    "FASHION_MNIST_CLASSES",
    "ChecksumError",
    "DownloadError",
    "IDXFormatError",
    "download",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "write_idx",
]
