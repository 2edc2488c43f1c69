"""``luring data download`` against a local HTTP server on 127.0.0.1 (no internet needed):
checksums, resuming with Range, servers that ignore Range, errors, safe tar extraction."""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_data_fixtures import make_cifar_bin, make_cifar_py, make_idx_set, make_tar
from test_data_fixtures import single_line_error as one_line

from luring.cli.main import main
from luring.data import load
from luring.data.download import download_dataset, fetch
from luring.data.files import CHECKSUMS
from luring.errors import LuringError


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` when ``server.honor_range``; closes the
    connection after ``server.cut`` body bytes when set; logs (path, Range) in requests."""

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and srv.honor_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut is not None:
            body = body[:srv.cut]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("LURING_DATA_URL", raising=False)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.honor_range, srv.cut = {}, [], True, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _payload(n: int = 200_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_download_mnist_end_to_end(tmp_path, server, monkeypatch, capsys):
    made = make_idx_set(tmp_path / "src", gz=True)
    server.files = {n: (tmp_path / "src" / n).read_bytes() for n in made["md5"]}
    monkeypatch.setitem(CHECKSUMS, "mnist", made["md5"])
    root = tmp_path / "root"
    argv = ["data", "download", "mnist", "--data-dir", str(root), "--url-base", server.url]
    assert main(argv) == 0
    assert "4 files ready" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(made["md5"])
    x, y = load("mnist", "train", root)
    assert np.array_equal((x[:, 0] * 255).round().byte().numpy(), made["train"][0])
    assert np.array_equal(y.numpy(), made["train"][1])
    n = len(server.requests)
    assert main(argv) == 0  # already present and verified: nothing fetched again
    assert len(server.requests) == n
    assert "already present, md5 verified" in capsys.readouterr().out


def test_resume_with_range_request(tmp_path, server):
    data = _payload()
    server.files = {"big.bin": data}
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(data[:70_000])
    fetch(f"{server.url}/big.bin", dest, _md5(data))
    assert server.requests == [("/big.bin", "bytes=70000-")]
    assert dest.read_bytes() == data
    assert not (tmp_path / "big.bin.part").exists()


def test_interrupted_download_keeps_part_and_resumes(tmp_path, server, monkeypatch, capsys):
    data = _payload(seed=1)
    server.files = {"train_32x32.mat": data, "test_32x32.mat": b"x" * 10}
    monkeypatch.setitem(CHECKSUMS, "svhn", {"train_32x32.mat": _md5(data),
                                            "test_32x32.mat": _md5(b"x" * 10)})
    server.cut = 50_000
    argv = ["data", "download", "svhn", "--data-dir", str(tmp_path), "--url-base", server.url]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "connection closed after 50000 of 200000 bytes" in line and "resume" in line
    part = tmp_path / "svhn" / "train_32x32.mat.part"
    assert part.stat().st_size == 50_000 and not (tmp_path / "svhn" / "train_32x32.mat").exists()
    server.cut = None
    assert main(argv) == 0
    assert ("/train_32x32.mat", "bytes=50000-") in server.requests
    assert (tmp_path / "svhn" / "train_32x32.mat").read_bytes() == data
    assert not part.exists()


def test_server_ignoring_range_restarts(tmp_path, server):
    data = _payload(seed=2)
    server.files, server.honor_range = {"f.gz": data}, False
    (tmp_path / "f.gz.part").write_bytes(data[:1000])
    fetch(f"{server.url}/f.gz", tmp_path / "f.gz", _md5(data))
    assert server.requests == [("/f.gz", "bytes=1000-")]  # asked, got a 200 with everything
    assert (tmp_path / "f.gz").read_bytes() == data


def test_stale_part_is_refetched_from_scratch(tmp_path, server):
    data = _payload(seed=3)
    server.files = {"f.gz": data}
    (tmp_path / "f.gz.part").write_bytes(b"garbage!" * 100)  # not a prefix of the file
    fetch(f"{server.url}/f.gz", tmp_path / "f.gz", _md5(data))
    assert server.requests == [("/f.gz", "bytes=800-"), ("/f.gz", None)]
    assert (tmp_path / "f.gz").read_bytes() == data


def test_complete_part_is_not_fetched_again(tmp_path, server):
    data = _payload(seed=4)
    (tmp_path / "f.gz.part").write_bytes(data)
    fetch(f"{server.url}/f.gz", tmp_path / "f.gz", _md5(data))
    assert server.requests == [] and (tmp_path / "f.gz").read_bytes() == data


def test_checksum_mismatch_leaves_no_file(tmp_path, server, monkeypatch, capsys):
    made = make_idx_set(tmp_path / "src", gz=True)
    server.files = {n: (tmp_path / "src" / n).read_bytes() for n in made["md5"]}
    bad = dict(made["md5"], **{"train-images-idx3-ubyte.gz": "0" * 32})
    monkeypatch.setitem(CHECKSUMS, "mnist", bad)
    root = tmp_path / "root"
    assert main(["data", "download", "mnist", "--data-dir", str(root),
                 "--url-base", server.url]) == 2
    line = one_line(capsys.readouterr().err)
    assert "checksum mismatch" in line and "train-images-idx3-ubyte.gz" in line
    raw = root / "MNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte.gz").exists()
    assert not (raw / "train-images-idx3-ubyte.gz.part").exists()


def test_http_404(tmp_path, server, capsys):
    assert main(["data", "download", "fashion-mnist", "--data-dir", str(tmp_path),
                 "--url-base", server.url + "/missing/"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "HTTP 404" in line and "/missing/train-images-idx3-ubyte.gz" in line
    assert not list((tmp_path / "FashionMNIST" / "raw").iterdir())


def test_network_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LURING_DATA_URL", f"http://127.0.0.1:{port}")
    assert main(["data", "download", "svhn", "--data-dir", str(tmp_path),
                 "--timeout", "5"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"download of http://127.0.0.1:{port}/train_32x32.mat failed" in line


@pytest.mark.parametrize("variant", ["bin", "py"])
def test_cifar10_tarball_is_extracted(tmp_path, server, monkeypatch, variant):
    src = tmp_path / "src"
    made = make_cifar_bin(src) if variant == "bin" else make_cifar_py(src)
    batch_dir = src / ("cifar-10-batches-bin" if variant == "bin" else "cifar-10-batches-py")
    members = {f"{batch_dir.name}/{p.name}": p.read_bytes() for p in sorted(batch_dir.iterdir())}
    members[f"{batch_dir.name}/batches.meta.txt"] = b"airplane\n"
    tar_name = "cifar-10-binary.tar.gz" if variant == "bin" else "cifar-10-python.tar.gz"
    server.files = {tar_name: make_tar(members)}
    monkeypatch.setitem(CHECKSUMS, "cifar10",
                        {tar_name: _md5(server.files[tar_name]), **made.get("md5", {})})
    root = tmp_path / "root"
    argv = ["data", "download", "cifar10", "--data-dir", str(root), "--url-base", server.url]
    assert main(argv + ["--format", variant]) == 0
    assert (root / tar_name).is_file()
    assert not (root / batch_dir.name / "batches.meta.txt").exists()  # only the six batches
    x, y = load("cifar10", "train", root)
    assert np.array_equal((x * 255).round().byte().reshape(len(x), -1).numpy(), made["train"][0])
    assert np.array_equal(y.numpy(), made["train"][1])


def test_cifar10_tarball_traversal_and_links_are_not_extracted(tmp_path, server, monkeypatch,
                                                              capsys):
    src = tmp_path / "src"
    make_cifar_bin(src)
    d = src / "cifar-10-batches-bin"
    members = {f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in sorted(d.iterdir())
               if p.name != "test_batch.bin"}
    members["cifar-10-batches-bin/../../escaped.bin"] = b"evil"
    members["/tmp/absolute-escape.bin"] = b"evil"
    links = {"cifar-10-batches-bin/test_batch.bin": "/etc/passwd"}
    server.files = {"cifar-10-binary.tar.gz": make_tar(members, symlinks=links)}
    monkeypatch.setitem(CHECKSUMS, "cifar10",
                        {"cifar-10-binary.tar.gz": _md5(server.files["cifar-10-binary.tar.gz"])})
    root = tmp_path / "a" / "root"
    assert main(["data", "download", "cifar10", "--data-dir", str(root),
                 "--url-base", server.url]) == 2
    line = one_line(capsys.readouterr().err)
    assert "lacks cifar-10-batches-bin/test_batch.bin" in line
    assert not (tmp_path / "escaped.bin").exists() and not (tmp_path / "a" / "escaped.bin").exists()
    assert not Path("/tmp/absolute-escape.bin").exists()
    assert not (root / "cifar-10-batches-bin" / "test_batch.bin").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".extract-")]


def test_embedded_and_unknown(tmp_path, capsys):
    assert download_dataset("mnist-5k", tmp_path) == []
    assert main(["data", "download", "mnist-5k"]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert main(["data", "download", "no-such-set", "--data-dir", str(tmp_path)]) == 2
    assert "unknown data set 'no-such-set'" in one_line(capsys.readouterr().err)
    # ImageNet is known but has no download (it must be obtained from image-net.org)
    assert main(["data", "download", "imagenet", "--data-dir", str(tmp_path)]) == 2
    assert "no download is known for data set 'imagenet'" in one_line(capsys.readouterr().err)
    with pytest.raises(LuringError, match="cifar10 only"):
        download_dataset("mnist", tmp_path, variant="py")
