"""Fashion-MNIST download: served by a local http.server on 127.0.0.1, never the internet.

Small fake IDX .gz files stand in for the official ones; the SHA-256 table is patched to their
digests. Every test runs under a guard that refuses connections to anything but 127.0.0.1.
"""

import gzip
import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

from fastcnn import data
from fastcnn.data import FashionMNIST, download_fashion_mnist

LOCAL = "127.0.0.1"


def idx_gz(arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return gzip.compress(header + arr.tobytes())


@pytest.fixture
def fake_files():
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 6), ("t10k", 3)):
        files[f"{split}-images-idx3-ubyte.gz"] = idx_gz(rng.integers(0, 256, (n, 28, 28), np.uint8))
        files[f"{split}-labels-idx1-ubyte.gz"] = idx_gz(rng.integers(0, 10, n, dtype=np.uint8))
    return files


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch, tmp_path):
    """Record every outgoing connection, refuse any not to 127.0.0.1; no proxies, no real HOME."""
    contacted = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        contacted.append(address[0] if isinstance(address, tuple) else address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != LOCAL:
            raise ConnectionRefusedError(f"test guard: connection to {address} refused")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    return contacted


@pytest.fixture
def server(fake_files, monkeypatch):
    """Serves /good/<name> whole and /cut/<name> with a Content-Length larger than the body."""
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            prefix, _, name = self.path.lstrip("/").partition("/")
            body = fake_files.get(name)
            if body is None or prefix not in ("good", "cut"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if prefix == "good" else body[: len(body) // 2])
            self.close_connection = True  # hang up: the client sees a short body

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer((LOCAL, 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    digests = {name: hashlib.sha256(body).hexdigest() for name, body in fake_files.items()}
    monkeypatch.setattr(data, "FASHION_MNIST_SHA256", digests)
    base = f"http://{LOCAL}:{httpd.server_address[1]}/"
    monkeypatch.setenv("FASTCNN_FASHION_MNIST_URL", base + "good/")
    yield base, requests
    httpd.shutdown()
    httpd.server_close()


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_then_load(tmp_path, server, fake_files, only_localhost):
    _, requests = server
    root = tmp_path / "fm"
    train = FashionMNIST(root, train=True, download=True)
    assert len(train) == 6 and train.images.shape == (6, 1, 28, 28)
    assert leftovers(root) == sorted(fake_files)  # no .part files
    for name, body in fake_files.items():
        assert (root / name).read_bytes() == body
    assert len(requests) == 4
    test = FashionMNIST(root, train=False, download=True)  # present now: nothing fetched
    assert len(test) == 3 and len(requests) == 4
    assert only_localhost and set(only_localhost) == {LOCAL}


def test_download_goes_to_the_cache_by_default(tmp_path, server, fake_files):
    cache = tmp_path / "home" / ".cache" / "fastcnn" / "fashion-mnist"
    assert data._fashion_mnist_dirs(None)[-1] == str(cache)
    download_fashion_mnist(cache)
    assert leftovers(cache) == sorted(fake_files)


def test_wrong_checksum_leaves_no_file(tmp_path, server, monkeypatch):
    name = "train-images-idx3-ubyte.gz"
    monkeypatch.setitem(data.FASHION_MNIST_SHA256, name, "0" * 64)
    root = tmp_path / "fm"
    with pytest.raises(ValueError, match=f"{name}: SHA-256 mismatch"):
        FashionMNIST(root, download=True)
    assert name not in leftovers(root)
    assert not [n for n in leftovers(root) if n.endswith(".part")]


def test_server_hanging_up_early_is_a_truncated_download(tmp_path, server, monkeypatch):
    base, _ = server
    monkeypatch.setenv("FASTCNN_FASHION_MNIST_URL", base + "cut/")
    root = tmp_path / "fm"
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: truncated download"):
        FashionMNIST(root, download=True)
    assert leftovers(root) == []


def test_truncated_file_fails_the_checksum(tmp_path, server, fake_files):
    name = "train-labels-idx1-ubyte.gz"
    fake_files[name] = fake_files[name][:-8]  # served whole, with a matching Content-Length
    root = tmp_path / "fm"
    with pytest.raises(ValueError, match=f"{name}: SHA-256 mismatch"):
        FashionMNIST(root, download=True)
    assert name not in leftovers(root)


def test_http_error_names_the_url(tmp_path, server, monkeypatch):
    base, _ = server
    monkeypatch.setenv("FASTCNN_FASHION_MNIST_URL", base + "missing/")
    with pytest.raises(OSError, match="could not download .*missing/train-images"):
        FashionMNIST(tmp_path / "fm", download=True)
    assert leftovers(tmp_path / "fm") == []


def test_no_download_without_permission(tmp_path, only_localhost, monkeypatch):
    monkeypatch.setattr(data, "_fashion_mnist_dirs", lambda root: [str(tmp_path / "none")])
    with pytest.raises(FileNotFoundError):
        FashionMNIST(download=False)
    assert only_localhost == []


def test_guard_refuses_other_hosts(tmp_path, monkeypatch, only_localhost):
    monkeypatch.setenv("FASTCNN_FASHION_MNIST_URL", "http://192.0.2.1/")  # TEST-NET-1
    with pytest.raises(OSError, match="could not download"):
        FashionMNIST(tmp_path / "fm", download=True)
    assert only_localhost == ["192.0.2.1"]
    assert leftovers(tmp_path / "fm") == []


def test_default_url_is_https():
    assert data.FASHION_MNIST_URL.startswith("https://")


@pytest.fixture
def no_debian_copy(tmp_path, monkeypatch):
    """Hide a Debian-installed Fashion-MNIST, so that FashionMNIST() without a root downloads."""
    monkeypatch.setattr(data, "DEBIAN_DIR", str(tmp_path / "no-debian"))


def assert_names_other_sources(message):
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FASTCNN_DATA" in message
    for name in data.FASHION_MNIST_FILES:
        assert name in message


def test_failed_download_says_how_else_to_get_the_data(server, monkeypatch, no_debian_copy):
    base, _ = server
    monkeypatch.setenv("FASTCNN_FASHION_MNIST_URL", base + "missing/")
    with pytest.raises(OSError, match="could not download .*missing/train-images") as info:
        FashionMNIST(download=True)
    assert_names_other_sources(str(info.value))


def test_missing_data_without_download_says_how_to_get_it(no_debian_copy, only_localhost):
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        FashionMNIST(download=False)
    assert_names_other_sources(str(info.value))
    assert only_localhost == []


def test_failed_download_with_a_root_names_that_folder(tmp_path, server, monkeypatch):
    base, _ = server
    monkeypatch.setenv("FASTCNN_FASHION_MNIST_URL", base + "missing/")
    root = tmp_path / "fm"
    with pytest.raises(OSError, match="could not download") as info:
        FashionMNIST(root, download=True)
    message = str(info.value)
    assert f"into {root}" in message  # the only folder FashionMNIST(root) looks in
    assert "FASTCNN_DATA" not in message  # not consulted when a root is given


def test_cli_train_without_data_says_how_to_get_it(
    tmp_path, server, monkeypatch, capsys, no_debian_copy
):
    from fastcnn import cli

    base, _ = server
    monkeypatch.setenv("FASTCNN_FASHION_MNIST_URL", base + "missing/")
    out = tmp_path / "model.safetensors"
    assert cli.main(["train", "--quiet", "--epochs", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastcnn: error: could not download")
    assert_names_other_sources(err)
    assert not out.exists()
