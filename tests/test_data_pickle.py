"""The restricted unpickler: numpy arrays and plain containers load; any other global is
refused before it can run."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess

import numpy as np
import pytest
from test_data_fixtures import make_cifar_py, single_line_error

from luring.cli.main import main
from luring.data import load
from luring.data.files import CHECKSUMS, md5sum
from luring.data.safe_pickle import ForbiddenGlobal, safe_loads
from luring.errors import LuringError


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious pickle does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _marker_command(marker) -> str:
    return f"touch {marker}"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_os_system_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Reduce(os.system, _marker_command(marker))},
                           protocol=protocol)
    with pytest.raises(ForbiddenGlobal, match=r"\.system") as info:
        safe_loads(payload, source="evil.pkl")
    assert "evil.pkl" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("func,args", [
    (builtins.eval, ("__import__('os').getpid()",)),
    (builtins.exec, ("x = 1",)),
    (subprocess.Popen, (["true"],)),
    (getattr, ("text", "upper")),
    (builtins.__import__, ("os",)),
])
def test_other_dangerous_globals_are_refused(func, args):
    payload = pickle.dumps(_Reduce(func, *args), protocol=2)
    with pytest.raises(ForbiddenGlobal) as info:
        safe_loads(payload)
    assert f"{func.__module__}.{func.__name__}" in str(info.value)


def test_codecs_encode_is_limited_to_latin1():
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00utf-8\x86R."
    with pytest.raises(ForbiddenGlobal, match="encoding 'utf-8'"):
        safe_loads(payload)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_and_containers_round_trip(protocol):
    obj = {
        b"data": np.arange(24, dtype=np.uint8).reshape(2, 12),
        "f": np.linspace(0, 1, 5, dtype=np.float32),
        "i": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "scalar": np.float64(2.5),
        "u8": np.uint8(7),
        "list": [1, 2.5, "three", b"four", None, True, (5, 6)],
        "nested": {"a": [{"b": np.zeros(3, np.float32)}]},
    }
    back = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert back.keys() == obj.keys()
    for key in (b"data", "f", "i", "fortran"):
        assert back[key].dtype == obj[key].dtype
        np.testing.assert_array_equal(back[key], obj[key])
    assert back["scalar"] == 2.5 and back["u8"] == 7
    assert back["list"] == obj["list"]
    np.testing.assert_array_equal(back["nested"]["a"][0]["b"], np.zeros(3))


def test_numpy_1_module_names_are_accepted():
    arr = np.arange(10, dtype=np.uint8)
    payload = pickle.dumps(arr, protocol=2)
    assert b"numpy._core.multiarray" in payload
    old = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    np.testing.assert_array_equal(safe_loads(old), arr)


def test_python2_style_strings_decode_as_latin1():
    # protocol 2 with SHORT_BINSTRING ('U'), as Python 2 writes str: {'labels': [1, 2]}
    payload = b"\x80\x02}q\x00U\x06labelsq\x01]q\x02(K\x01K\x02es."
    assert safe_loads(payload) == {"labels": [1, 2]}


def test_malformed_pickle_is_a_luring_error():
    with pytest.raises(LuringError, match="not a readable pickle"):
        safe_loads(pickle.dumps({"a": 1})[:-3])


def test_malicious_cifar_batch_is_refused_by_load_and_cli(tmp_path, monkeypatch, capsys):
    made = make_cifar_py(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": _Reduce(os.system, _marker_command(marker)),
                                    b"labels": [0]}, protocol=2))
    monkeypatch.setitem(CHECKSUMS, "cifar10", {**made["md5"], "test_batch": md5sum(batch)})
    with pytest.raises(LuringError, match=r"test_batch: refusing to unpickle .*system"):
        load("cifar10", "test", tmp_path)
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 2
    line = single_line_error(capsys.readouterr().err)
    assert "system" in line and "malicious" in line
    assert not marker.exists()
