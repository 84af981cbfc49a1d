"""IDX reading/writing, MNIST-style loading with checksums and safe downloads, and load_csv."""

import gzip
import hashlib
import io
import os
import urllib.error

import numpy as np
import pytest

from nnjax._src import idx
from nnjax._src.csv_data import load_csv
from nnjax._src.idx import ChecksumError, DownloadError, IDXFile, IDXFormatError, read_idx, write_idx


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a{suffix}"
    write_idx(path, array)
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert raw[:2] == b"\0\0" and raw[3] == 3 and int.from_bytes(raw[4:8], "big") == 2  # big-endian header
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(IDXFormatError, match="magic number 0x3C68746D"):
        read_idx(bad)
    good = tmp_path / "good"
    write_idx(good, np.zeros((10, 4), np.uint8))
    (tmp_path / "short").write_bytes(good.read_bytes()[:-3])
    with pytest.raises(IDXFormatError, match="37 data bytes.*shape \\(10, 4\\).*truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(TypeError, match="not storable"):
        write_idx(tmp_path / "c", np.zeros(3, np.complex64))


# --- a small MNIST-like data set, served by a fake network ---------------------------------------------


def small_files(rng):
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 50).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 20).astype(np.uint8),
    }


def gz_bytes(array):
    buffer = io.BytesIO()
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:
        f.write(header + array.tobytes())
    return buffer.getvalue()


@pytest.fixture
def small_mnist(monkeypatch):
    """Replaces MNIST's published files by small generated ones (with their real checksums)."""
    arrays = small_files(np.random.default_rng(0))
    blobs = {f"{name}.gz": gz_bytes(a) for name, a in arrays.items()}
    files = tuple(
        IDXFile(
            name,
            hashlib.sha256(blobs[f"{name}.gz"]).hexdigest(),
            len(blobs[f"{name}.gz"]),
            idx.IMAGES if a.ndim == 3 else idx.LABELS,
            a.shape,
        )
        for name, a in arrays.items()
    )
    dataset = idx.MNIST._replace(
        mirrors=("https://mirror-a.example/mnist/", "https://mirror-b.example/mnist/"), files=files
    )
    monkeypatch.setattr(idx, "MNIST", dataset)
    return arrays, blobs


class FakeNetwork:
    """Serves ``blobs`` by file name; ``broken`` maps a mirror prefix to what it does instead."""

    def __init__(self, blobs, broken=None):
        self.blobs, self.broken, self.requests = blobs, broken or {}, []

    def __call__(self, url, timeout=None):
        self.requests.append(url)
        for prefix, behaviour in self.broken.items():
            if url.startswith(prefix):
                return behaviour(self.blobs[url.rsplit("/", 1)[1]])
        return io.BytesIO(self.blobs[url.rsplit("/", 1)[1]])


class Interrupted(io.BytesIO):
    """A response that delivers one chunk and then fails (a dropped connection or Ctrl-C)."""

    def __init__(self, data, error):
        super().__init__(data)
        self.error, self.calls = error, 0

    def read(self, n=-1):
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return super().read(min(n, 100))


def no_partial_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")] == []


def test_load_mnist_downloads_verifies_and_parses(tmp_path, monkeypatch, small_mnist):
    arrays, blobs = small_mnist
    network = FakeNetwork(blobs)
    monkeypatch.setattr(idx, "urlopen", network)
    x_train, y_train, x_test, y_test = idx.load_mnist(tmp_path / "mnist")
    assert x_train.dtype == np.uint8 and x_train.shape == (50, 28, 28)
    assert y_train.dtype == np.int32 and y_test.shape == (20,)
    np.testing.assert_array_equal(x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(blobs)
    assert len(network.requests) == 4 and all(u.startswith("https://mirror-a.example/mnist/") for u in network.requests)
    idx.load_mnist(tmp_path / "mnist")  # cached: no new request
    assert len(network.requests) == 4


def test_default_folder_follows_nnjax_data(tmp_path, monkeypatch, small_mnist):
    _, blobs = small_mnist
    monkeypatch.setattr(idx, "urlopen", FakeNetwork(blobs))
    monkeypatch.setenv("NNJAX_DATA", str(tmp_path / "cache"))
    idx.load_mnist()
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(blobs)


def test_uncompressed_files_in_folder_are_used(tmp_path, monkeypatch, small_mnist):
    arrays, _ = small_mnist
    monkeypatch.setattr(idx, "urlopen", None)  # any network use would fail
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)
    x_train, *_ = idx.load_mnist(tmp_path, download=False)
    np.testing.assert_array_equal(x_train, arrays["train-images-idx3-ubyte"])


@pytest.mark.parametrize("error", [ConnectionResetError("connection reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch, small_mnist, error):
    _, blobs = small_mnist
    network = FakeNetwork(blobs, broken={"https://": lambda data: Interrupted(data, error)})
    monkeypatch.setattr(idx, "urlopen", network)
    folder = tmp_path / "mnist"
    with pytest.raises((DownloadError, KeyboardInterrupt)):
        idx.load_mnist(folder)
    assert list(folder.iterdir()) == []  # neither a half file under the real name nor a .part file
    if isinstance(error, ConnectionResetError):
        assert len(network.requests) == 2  # both mirrors were tried


def test_corrupt_mirror_is_rejected_and_next_mirror_used(tmp_path, monkeypatch, small_mnist):
    _, blobs = small_mnist
    corrupt = lambda data: io.BytesIO(data[:-1] + bytes([data[-1] ^ 1]))  # noqa: E731
    network = FakeNetwork(blobs, broken={"https://mirror-a.example/": corrupt})
    monkeypatch.setattr(idx, "urlopen", network)
    idx.load_mnist(tmp_path)
    assert len(network.requests) == 8  # each file: mirror a (bad checksum), then mirror b
    assert no_partial_files(tmp_path)
    for name, data in blobs.items():
        assert (tmp_path / name).read_bytes() == data


def test_all_mirrors_corrupt(tmp_path, monkeypatch, small_mnist):
    _, blobs = small_mnist
    corrupt = lambda data: io.BytesIO(b"\0" + data)  # noqa: E731
    monkeypatch.setattr(idx, "urlopen", FakeNetwork(blobs, broken={"https://": corrupt}))
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        idx.load_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_on_disk(tmp_path, monkeypatch, small_mnist):
    _, blobs = small_mnist
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    tampered = tmp_path / "t10k-labels-idx1-ubyte.gz"
    tampered.write_bytes(gz_bytes(np.zeros(20, np.uint8)))
    with pytest.raises(ChecksumError, match=r"SHA-256 mismatch for .*t10k-labels-idx1-ubyte\.gz.*delete it"):
        idx.load_mnist(tmp_path, download=False)
    _, _, _, y_test = idx.load_mnist(tmp_path, download=False, verify=False)  # the user's own file, on request
    assert (y_test == 0).all()


def test_wrong_magic_number(tmp_path, monkeypatch, small_mnist):
    arrays, _ = small_mnist
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)
    write_idx(tmp_path / "train-images-idx3-ubyte", arrays["train-labels-idx1-ubyte"])  # labels where images belong
    with pytest.raises(IDXFormatError, match="magic number 0x00000801, expected 0x00000803.*swapped"):
        idx.load_mnist(tmp_path, download=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", arrays["train-images-idx3-ubyte"][:49])
    with pytest.raises(IDXFormatError, match=r"shape \(49, 28, 28\), expected \(50, 28, 28\)"):
        idx.load_mnist(tmp_path, download=False)


def test_offline_message_names_the_folder(tmp_path, monkeypatch, small_mnist):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(idx, "urlopen", offline)
    folder = tmp_path / "my data"
    with pytest.raises(DownloadError) as info:
        idx.load_mnist(folder)
    message = str(info.value)
    assert str(folder) in message and "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "offline" in message and "NNJAX_DATA" in message and "mirror-a.example" in message
    with pytest.raises(FileNotFoundError, match=f"not in {folder}.*download=False"):
        idx.load_mnist(folder, download=False)


def test_published_checksums_are_recorded():
    for dataset in (idx.MNIST, idx.FASHION_MNIST):
        assert [f.name for f in dataset.files] == [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]
        assert all(len(f.sha256) == 64 and int(f.sha256, 16) >= 0 for f in dataset.files)
        assert [f.shape[0] for f in dataset.files] == [60000, 60000, 10000, 10000]
        assert all(m.startswith("http") and m.endswith("/") for m in dataset.mirrors)
    assert len({f.sha256 for d in (idx.MNIST, idx.FASHION_MNIST) for f in d.files}) == 8


def test_fashion_mnist_uses_its_own_folder(tmp_path, monkeypatch):
    requested = []

    def offline(url, timeout=None):
        requested.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(idx, "urlopen", offline)
    monkeypatch.setenv("NNJAX_DATA", str(tmp_path))
    with pytest.raises(DownloadError, match="(?s)Fashion-MNIST.*" + str(tmp_path / "fashion_mnist")):
        idx.load_fashion_mnist()
    assert requested[0].startswith("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/")
    assert os.listdir(tmp_path / "fashion_mnist") == []


# --- CSV ------------------------------------------------------------------------------------------------


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_csv_houses(tmp_path):
    path = write(
        tmp_path / "houses.csv",
        "\ufeffsquare_feet,bedrooms,distance_km,age_years,price\n"
        "1450,3,4.2,31,312.5\n2100, 4 ,12,5,401\n\n800,1,1.5,80,150.25\n",
    )
    x, y, names = load_csv(path, target="price")
    assert names == ("square_feet", "bedrooms", "distance_km", "age_years")
    assert x.dtype == np.float32 and x.shape == (3, 4) and y.shape == (3,)
    np.testing.assert_allclose(x[1], [2100, 4, 12, 5])
    np.testing.assert_allclose(y, [312.5, 401, 150.25])
    x2, y2, names2 = load_csv(path, target=["price", "age_years"], features=["bedrooms", "square_feet"])
    assert names2 == ("bedrooms", "square_feet") and y2.shape == (3, 2)
    np.testing.assert_allclose(x2[:, 0], [3, 4, 1])


def test_load_csv_errors(tmp_path):
    path = write(tmp_path / "h.csv", "a,b,price\n1,2,3\n4,,6\n7,x,9\n")
    with pytest.raises(ValueError, match=r"line 3, column 'b'.*missing.*dropna=True"):
        load_csv(path, target="price")
    with pytest.raises(KeyError, match=r"'cost' is not in the header.*\['a', 'b', 'price'\]"):
        load_csv(path, target="cost")
    path2 = write(tmp_path / "h2.csv", "a,b,price\n1,2,3\n4,,6\n7,x,9\n")
    with pytest.raises(ValueError, match=r"line 4, column 'b'.*not a number: 'x'"):
        load_csv(path2, target="price", dropna=True)
    x, y, _ = load_csv(write(tmp_path / "h3.csv", "a,b,price\n1,2,3\n4,NA,6\n"), target="price", dropna=True)
    assert x.tolist() == [[1, 2]] and y.tolist() == [3]
    semicolons = write(tmp_path / "h4.csv", "a;price\n1;2\n")
    with pytest.raises(KeyError, match="delimiter=';'"):
        load_csv(semicolons, target="price")
    assert load_csv(semicolons, target="price", delimiter=";").x.tolist() == [[1]]
    with pytest.raises(ValueError, match="line 2 .* 2 fields, the header 3"):
        load_csv(write(tmp_path / "h5.csv", "a,b,price\n1,2\n"), target="price")


def test_load_csv_refuses_binary_files_naming_them(tmp_path):
    rng = np.random.default_rng(0)
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes([0xA9]) + rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"weights\.bin' is not a text CSV file: byte 0xa9 at offset 0 is not UTF-8"):
        load_csv(binary, target="y")
    zipped = tmp_path / "houses.csv.gz"
    zipped.write_bytes(gzip.compress(b"a,y\n1,2\n"))
    with pytest.raises(ValueError, match=r"houses\.csv\.gz' is not a text CSV file \(it starts like a gzip file"):
        load_csv(zipped, target="y")
