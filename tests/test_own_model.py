"""Protect your own model (issue #26, items 1, 2 and 6): any architecture in by name — a
factory in the user's module (``--arch module:callable``), a TorchScript file, a registered
name, torchvision/timm when installed — with normalisation (``--mean/--std``) and output
selection (``--output-key``), and every command working on it from fresh processes.

The user's module (a tiny ResNet-style model with BatchNorm for mnist-5k's 1×28×28 images) is
written into a temporary folder; the end-to-end runs are ``python -m luring`` subprocesses
with that folder on PYTHONPATH (the TorchScript run without it: no Python class needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line, run_cli

from luring.defense import load
from luring.errors import LuringError
from luring.models import build, load_checkpoint, register_architecture, save_checkpoint
from luring.models import user as user_mod
from luring.models.adapt import Adapted, select_output

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
MODULE = "own_model_mod"  # unique: the test process imports it too

SOURCE = '''
"""A user's own models (written by tests/test_own_model.py)."""
import torch
from torch import nn

from luring.models import register_architecture


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10, width=8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU())
        self.block = Block(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def make(num_classes: int = 10) -> nn.Module:
    return TinyResNet(1, num_classes)


class Pair(TinyResNet):
    """Returns (logits, probabilities): needs --output-key 0."""

    def forward(self, x):
        z = super().forward(x)
        return z, z.softmax(1)


@register_architecture("own-tiny-resnet", input_shape=(1, 28, 28))
def registered(num_classes: int = 10) -> nn.Module:
    return TinyResNet(1, num_classes)
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory, mnist5k):
    """The user's folder: ``own_model_mod.py``, ``w.pth`` (state dict of a TinyResNet trained
    briefly on mnist-5k, ~35% test accuracy) and ``m.pt`` (the same model scripted), plus
    ``x.npy`` (3 images). The module is importable in this process meanwhile."""
    d = tmp_path_factory.mktemp("user")
    (d / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(d))
    try:
        mod = __import__(MODULE)
        x, y, _, _ = mnist5k
        torch.manual_seed(0)
        model = mod.make()
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        for i in range(0, 3000, 50):
            idx = perm[i:i + 50]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        torch.save(model.state_dict(), d / "w.pth")
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript (still supported)
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(model), d / "m.pt")
        np.save(d / "x.npy", x[:3].numpy())
        yield d, mod, model
    finally:
        sys.path.remove(str(d))
        sys.modules.pop(MODULE, None)
        user_mod.unregister_architecture("own-tiny-resnet")
        for name in [n for n in user_mod._CACHE if n.startswith(MODULE)]:
            user_mod._CACHE.pop(name)


def luring_cli(cwd: Path, *argv, pythonpath: Path | None = None, timeout: int = 240
               ) -> subprocess.CompletedProcess:
    """``python -m luring ARGV`` in a fresh process (fp32, no progress bars, one thread)."""
    env = {**os.environ, "LURING_PRECISION": "fp32", "LURING_NO_PROGRESS": "1",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(p) for p in (pythonpath, REPO) if p])}
    return subprocess.run([sys.executable, "-m", "luring", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _pipeline(out: Path, pythonpath: Path | None, export: str) -> None:
    """train-defense → attack → detect (``out / "x.npy"``) → export → reproduce on the target
    ``out / "m"``, each in a fresh process run in ``out``."""
    t, dd = out / "m", out / "d"
    ok(luring_cli(out, "train-defense", "--target", t, "--out", dd, "--profile", "quick",
                  "--epochs", "1", "--device", "cpu", "--allow-weak", pythonpath=pythonpath))
    ok(luring_cli(out, "attack", "--source", dd, "--attack", "mim", "--eps", "0.3", "--steps",
                  "2", "--images", "8", "--out", out / "adv", "--device", "cpu",
                  pythonpath=pythonpath))
    assert json.loads((out / "adv" / "attack.json").read_text())["n"] == 8
    lines = ok(luring_cli(out, "detect", "--defense", dd, out / "x.npy",
                          pythonpath=pythonpath)).splitlines()
    assert len(lines) == 3 and {"t_label", "m_label", "flagged"} <= set(json.loads(lines[0]))
    ok(luring_cli(out, "export", "--defense", dd, "--format", export, "--out",
                  out / f"t.{'onnx' if export == 'onnx' else 'pt'}", pythonpath=pythonpath))
    ok(luring_cli(out, "reproduce", "--profile", "smoke", "--dataset", "mnist-5k", "--target", t,
                  "--out", out / "run", "--device", "cpu", pythonpath=pythonpath))
    assert (out / "run" / "results.json").is_file()


def test_module_callable_end_to_end(user, tmp_path):
    d, _, model = user
    shutil.copyfile(d / "x.npy", tmp_path / "x.npy")
    ok(luring_cli(tmp_path, "import-target", "--dataset", "mnist-5k", "--arch", f"{MODULE}:make",
                  "--weights", d / "w.pth", "--out", tmp_path / "m", pythonpath=d))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["architecture"] == f"{MODULE}:make"
    assert meta["factory"]["module"] == MODULE and meta["factory"]["callable"] == "make"
    loaded, _ = load_checkpoint(tmp_path / "m")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    _pipeline(tmp_path, d, "torchscript")
    # a fresh process without the module on PYTHONPATH: one line naming the fix
    proc = luring_cli(tmp_path, "detect", "--defense", tmp_path / "d", tmp_path / "x.npy")
    assert proc.returncode == 2 and one_line(proc.stderr)
    assert "PYTHONPATH" in proc.stderr and MODULE in proc.stderr


def test_torchscript_end_to_end(user, tmp_path):
    d, _, model = user
    shutil.copyfile(d / "x.npy", tmp_path / "x.npy")
    # auto-detected TorchScript file; the processes never see the user's module
    ok(luring_cli(tmp_path, "import-target", "--dataset", "mnist-5k", "--weights", d / "m.pt",
                  "--out", tmp_path / "m"))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["architecture"] == "torchscript" and meta["factory"]["file"] == "model.pt"
    assert (tmp_path / "m" / "model.pt").read_bytes() == (d / "m.pt").read_bytes()
    _pipeline(tmp_path, None, "onnx" if _has("onnx") else "torchscript")
    dd = tmp_path / "d"
    assert {"target.pt", "target.safetensors"} <= {p.name for p in dd.iterdir()}
    fps = json.loads((dd / "defense.json").read_text())["fingerprints"]
    assert fps["target.pt"].startswith("sha256:")
    defense = load(dd)
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(defense.target(x), model(x), atol=1e-6)
    # another TorchScript file with the same weights' names in place of the defense's M
    swapped = tmp_path / "swapped"
    shutil.copytree(dd, swapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(type(model)()), swapped / "target.pt")
    with pytest.raises(LuringError, match="target.pt is not the file") as info:
        load(swapped)
    assert "\n" not in str(info.value)
    # ... and in place of the target directory's
    shutil.copyfile(swapped / "target.pt", tmp_path / "m" / "model.pt")
    with pytest.raises(LuringError, match="model.pt is not the TorchScript file"):
        load_checkpoint(tmp_path / "m")


def test_torchscript_stack_head_is_fresh(user, tmp_path, mnist5k, monkeypatch, capsys):
    """Stack trains a fresh classifier of M's architecture: for a TorchScript M, the scripted
    file re-initialised (not M's weights), saved as head.pt + head.safetensors."""
    import luring.data

    d, _, model = user
    code, _, err = run_cli(["import-target", "--dataset", "mnist-5k", "--weights", d / "m.pt",
                            "--out", tmp_path / "m", "--images", "50"], capsys)
    assert code == 0, err
    x_tr, y_tr, x_te, y_te = mnist5k
    monkeypatch.setattr(luring.data, "load", lambda name, split="train", root=None:
                        (x_tr[:64], y_tr[:64]) if split == "train" else (x_te[:20], y_te[:20]))
    code, _, err = run_cli(["train-defense", "--target", tmp_path / "m", "--out", tmp_path / "s",
                            "--method", "stack", "--profile", "quick", "--epochs", "1",
                            "--batch-size", "32", "--device", "cpu", "--allow-weak"], capsys)
    assert code == 0, err
    defense = load(tmp_path / "s")
    head = defense.augmented.head
    assert isinstance(head, torch.jit.ScriptModule) and head is not defense.target
    assert not torch.equal(head.head.weight, model.head.weight)


def test_unimportable_module_is_one_line(user, tmp_path, capsys):
    d, _, _ = user
    for arch, needle in (("no_such_module_xyz:make", "PYTHONPATH"),
                         (f"{MODULE}:missing", "has no missing"),
                         ("os:system", "standard-library")):
        code, _, err = run_cli(["import-target", "--dataset", "mnist-5k", "--arch", arch,
                                "--weights", d / "w.pth", "--out", tmp_path / "m"], capsys)
        assert code == 2 and one_line(err) and needle in err, err
    with pytest.raises(LuringError, match="cannot import module no_such_module_xyz"):
        build("no_such_module_xyz:make")
    assert not (tmp_path / "m").exists()
    # trapdoor trains the paper's architectures only: a user's M is one line
    code, _, err = run_cli(["import-target", "--dataset", "mnist-5k", "--arch", f"{MODULE}:make",
                            "--weights", d / "w.pth", "--images", "20", "--out", tmp_path / "m"],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(["train-defense", "--target", tmp_path / "m", "--method", "trapdoor",
                            "--out", tmp_path / "t", "--profile", "quick"], capsys)
    assert code == 2 and one_line(err) and "trapdoor" in err


def test_tuple_output_needs_output_key(user, tmp_path, capsys):
    d, _, model = user
    argv = ["import-target", "--dataset", "mnist-5k", "--arch", f"{MODULE}:Pair", "--weights",
            d / "w.pth", "--images", "50"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "a"], capsys)
    assert code == 2 and one_line(err) and "--output-key" in err and "tuple" in err
    code, _, err = run_cli([*argv, "--out", tmp_path / "b", "--output-key", "0"], capsys)
    assert code == 0, err
    loaded, meta = load_checkpoint(tmp_path / "b")
    assert meta["arch_kwargs"]["output_key"] == 0 and isinstance(loaded, Adapted)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_mean_std_are_stored_and_applied(user, tmp_path, capsys):
    d, _, model = user
    mean, std = 0.25, 0.5
    x = torch.rand(5, 1, 28, 28)
    want = model((x - mean) / std)
    for weights, arch in ((d / "w.pth", [f"--arch={MODULE}:make"]), (d / "m.pt", [])):
        out = tmp_path / weights.stem
        code, _, err = run_cli(["import-target", "--dataset", "mnist-5k", *arch, "--weights",
                                weights, "--mean", str(mean), "--std", str(std), "--images",
                                "50", "--out", out], capsys)
        assert code == 0, err
        loaded, meta = load_checkpoint(out)
        assert meta["arch_kwargs"]["input_mean"] == [mean]
        assert meta["arch_kwargs"]["input_std"] == [std]
        assert torch.allclose(loaded(x), want, atol=1e-6)
    code, _, err = run_cli(["import-target", "--dataset", "mnist-5k", "--weights", d / "w.pth",
                            f"--arch={MODULE}:make", "--mean", "0.1,0.2,0.3", "--out",
                            tmp_path / "bad"], capsys)
    assert code == 2 and one_line(err) and "--mean" in err


def test_registered_architecture_rebuilds_in_a_fresh_process(user, tmp_path):
    d, _, _ = user
    torch.manual_seed(3)
    model = build("own-tiny-resnet").eval()
    save_checkpoint(model, tmp_path, "model", architecture="own-tiny-resnet",
                    input_shape=(1, 28, 28), num_classes=10, dataset="mnist-5k")
    side = json.loads((tmp_path / "model.json").read_text())
    assert side["factory"] == {"kind": "python", "module": MODULE, "callable": "registered",
                               "path": str((d / f"{MODULE}.py").resolve()),
                               "registered_as": "own-tiny-resnet"}
    x = torch.rand(2, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; from luring.models import load_checkpoint; "
            f"m, _ = load_checkpoint({str(tmp_path)!r}); "
            f"sys.stdout.write(repr(m(torch.load({str(tmp_path / 'x.pt')!r})).tolist()))")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(d), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert torch.allclose(torch.tensor(eval(proc.stdout)), model(x), atol=1e-6)


def test_register_architecture_rules():
    def factory(num_classes: int = 10) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))

    register_architecture("own-linear", factory, input_shape=(1, 2, 2))
    try:
        assert build("own-linear", num_classes=3)(torch.rand(2, 1, 2, 2)).shape == (2, 3)
        with pytest.raises(LuringError, match="already registered"):
            register_architecture("own-linear", lambda: factory(), input_shape=(1, 2, 2))
    finally:
        from luring.models import unregister_architecture

        unregister_architecture("own-linear")
    for name in ("mnist-target", "a:b", "torchscript"):
        with pytest.raises(LuringError):
            register_architecture(name, factory, input_shape=(1, 2, 2))


def test_select_output_forms():
    from collections import namedtuple

    z = torch.zeros(2, 3)
    assert select_output({"logits": z}, "logits") is z
    assert select_output((z, 1), 0) is z and select_output([1, z], "1") is z
    assert select_output(namedtuple("Out", "logits aux")(z, 1), "logits") is z
    with pytest.raises(LuringError, match="no entry 'x'"):
        select_output({"logits": z}, "x")


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_package_architectures(package):
    name = f"{package}:resnet18"
    if not _has(package):
        with pytest.raises(LuringError, match=f"pip install {package}"):
            build(name, in_channels=3, num_classes=4)
        pytest.skip(f"{package} is not installed (the one-line error was checked)")
    model = build(name, in_channels=3, num_classes=4).eval()
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 4)


def test_package_architecture_plumbing(monkeypatch):
    """``torchvision:NAME`` / ``timm:NAME`` call the package's own constructor (a stand-in
    package here): random weights, ``num_classes`` (and timm's ``in_chans``) set."""
    import importlib.machinery
    import types

    calls = []

    def net(**kw):
        calls.append(kw)
        return torch.nn.Sequential(torch.nn.Flatten(),
                                   torch.nn.Linear(kw.get("in_chans", 3) * 4, kw["num_classes"]))

    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    tv.models = types.SimpleNamespace(get_model=lambda name, weights, **kw: net(**kw))
    timm = types.ModuleType("timm")
    timm.__spec__ = importlib.machinery.ModuleSpec("timm", None)
    timm.create_model = lambda name, pretrained, **kw: net(**kw)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "timm", timm)
    try:
        assert build("torchvision:fake_net", in_channels=3, num_classes=5)(
            torch.rand(2, 3, 2, 2)).shape == (2, 5)
        with pytest.raises(LuringError, match="takes 3-channel images"):
            build("torchvision:fake_net", in_channels=1, num_classes=5)
        assert build("timm:fake_net", in_channels=1, num_classes=4)(
            torch.rand(2, 1, 2, 2)).shape == (2, 4)
        assert calls == [{"num_classes": 5}, {"in_chans": 1, "num_classes": 4}]
    finally:
        for name in ("torchvision:fake_net", "timm:fake_net"):
            user_mod._CACHE.pop(name, None)


def test_auto_precision_leaves_a_batchnorm_target_unchanged(user, mnist5k):
    """``--precision auto`` (the CLI's default) times T = M∘P once; M (here with BatchNorm)
    must stay in eval mode while P trains: its running statistics are never updated."""
    from luring.defense import defense_settings, resolve_settings, train_defense

    _, _, model = user
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = resolve_settings(defense_settings("mnist", "luring", "quick"), epochs=1,
                                batch_size=32)
    train_defense(model, mnist5k[0][:64], method="luring", settings=settings, family="mnist",
                  device="cpu", precision="auto")
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
