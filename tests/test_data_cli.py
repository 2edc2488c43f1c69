"""``luring data info`` / ``list`` output, and every data error as one stderr line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_fixtures import make_cifar_bin, make_idx_set, single_line_error, write_idx

from luring.cli.main import main
from luring.data.files import CHECKSUMS


def test_info_mnist5k_text(capsys):
    assert main(["data", "info", "mnist-5k"]) == 0
    out = capsys.readouterr().out
    assert "location: embedded" in out
    assert "train: 4000 images, values in [0.000, 1.000]" in out
    assert "test: 1000 images" in out
    assert "1×28×28" in out
    assert out.count("    400      100") == 10  # every class: 400 train, 100 test


def test_info_mnist5k_json_without_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LURING_DATA", str(tmp_path / "nothing-here"))
    assert main(["data", "info", "mnist-5k", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["location"] == "embedded" and info["shape"] == [1, 28, 28]
    assert info["splits"]["train"]["size"] == 4000 and info["splits"]["test"]["size"] == 1000
    assert set(info["splits"]["test"]["per_class"].values()) == {100}
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["splits"]["train"]["min"] == 0.0 and info["splits"]["train"]["max"] == 1.0


def test_info_files_json(tmp_path, monkeypatch, capsys):
    made = make_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True, n_train=20, n_test=10)
    monkeypatch.setitem(CHECKSUMS, "fashion-mnist", made["md5"])
    assert main(["data", "info", "fashion-mnist", "--data-dir", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["location"] == str(tmp_path / "FashionMNIST" / "raw")
    assert info["splits"]["train"]["size"] == 20 and info["splits"]["test"]["size"] == 10
    assert info["splits"]["train"]["per_class"]["T-shirt/top"] == 2
    assert info["splits"]["train"]["per_class"]["Ankle boot"] == 2
    assert info["splits"]["train"]["min"] == 0.0 and info["splits"]["train"]["max"] == 1.0
    assert info["splits"]["test"]["files"][0].endswith("t10k-images-idx3-ubyte.gz")


def test_info_cifar_text(tmp_path, capsys):
    make_cifar_bin(tmp_path, n=3)
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"location: {tmp_path / 'cifar-10-batches-bin'}" in out
    assert "train: 15 images" in out and "test: 3 images" in out and "3×32×32" in out
    assert "airplane" in out and "truck" in out


def test_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist-5k", "mnist", "fashion-mnist", "cifar10", "svhn"):
        assert name in out


def _truncated(root):
    make_idx_set(root / "MNIST" / "raw", gz=False)
    p = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-1])
    return "is truncated"


def _wrong_magic(root):
    make_idx_set(root / "MNIST" / "raw", gz=False)
    write_idx(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros(6, np.uint8), 2049)
    return "magic number 2049, expected 2051"


def _bad_checksum(root):
    make_idx_set(root / "MNIST" / "raw", gz=True)  # not the published files
    return "fails its checksum"


def _missing(root):
    return f"luring data download mnist --data-dir {root}"


def _cifar_truncated(root):
    make_cifar_bin(root)
    p = root / "cifar-10-batches-bin" / "test_batch.bin"
    p.write_bytes(p.read_bytes()[:100])
    return "test_batch.bin is truncated"


@pytest.mark.parametrize("setup", [_truncated, _wrong_magic, _bad_checksum, _missing,
                                   _cifar_truncated])
def test_file_errors_are_one_line_exit_2(tmp_path, capsys, setup):
    root = tmp_path / "data"
    expected = setup(root)
    name = "cifar10" if setup is _cifar_truncated else "mnist"
    assert main(["data", "info", name, "--data-dir", str(root)]) == 2
    captured = capsys.readouterr()
    assert expected in single_line_error(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize("argv", [
    ["data", "info", "imagenet"],
    ["data", "info", "mnist", "--bogus"],
    ["data", "download", "mnist", "--timeout", "-1"],
    ["data", "download", "cifar10", "--format", "zip"],
    ["data", "frobnicate"],
])
def test_bad_arguments_are_one_line_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit through LuringParser.error
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "error:" in err


def test_data_without_action_prints_help_exit_2(capsys):
    assert main(["data"]) == 2
    assert "download" in capsys.readouterr().err
