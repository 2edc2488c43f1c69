"""Training P on 2 processes (torchrun, gloo on loopback): DistributedDataParallel over the
trained modules only gives every rank the same P, and that P is one process's optimisation
(the same batches, the batch's mean gradient) up to rounding; `luring train-defense` under
torchrun writes what one process writes."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from luring.cli.main import main
from tests.test_distributed import SHIM, torchrun

pytestmark = pytest.mark.usefixtures("one_thread")

# A P without batch norm (a slice's batch statistics would differ from the batch's) and
# without dropout: with it, 2 processes must reproduce one process's steps.
COMMON = '''
import sys, torch
from torch import nn
import luring.defense.train as tr
from luring.data import load
from luring.defense import defense_settings, resolve_settings, train_defense
from luring.models.train import target_settings, train_target


class SmallP(nn.Module):
    def __init__(self, c=1):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, 4, 3, padding=1), nn.Conv2d(4, c, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.b(torch.relu(self.a(x))))


_build = tr.build
tr.build = lambda name, in_channels=None, **kw: SmallP(in_channels) \\
    if name == "mnist-component" else _build(name, in_channels=in_channels, **kw)

x, y = load("mnist-5k", "train")
x, y = x[::50][:76].contiguous(), y[::50][:76].contiguous()
torch.manual_seed(0)
m = train_target(x, y, target_settings("mnist", epochs=1, batch_size=25), seed=5)[0].eval()


def run(method, parallel, dev="cpu"):
    s = resolve_settings(defense_settings("mnist", method, "quick"), epochs=2, batch_size=25,
                         val_fraction=0.2, eval_every=2)
    head = dict(head_arch="mnist-target", head_kwargs={}) if method == "stack" else {}
    return train_defense(m, x, method=method, settings=s, labels=y, seed=2, device=dev,
                         parallel=parallel, **head)
'''

WORKER = COMMON + '''
from luring import distributed

out = sys.argv[1]
with distributed.process_group("cpu") as dev:
    r = distributed.rank()
    res = {}
    for method in ("luring", "stack"):
        d = run(method, True, dev)
        res[method] = {"component": d.component.state_dict(), "history": d.history,
                       "selection": d.selection,
                       "head": d.head.state_dict() if d.head is not None else None}
    torch.save(res, f"{out}/rank{r}.pt")
'''

SINGLE = COMMON + '''
out = sys.argv[1]
res = {}
for method in ("luring", "stack"):
    d = run(method, False)
    res[method] = {"component": d.component.state_dict(), "history": d.history,
                   "selection": d.selection,
                   "head": d.head.state_dict() if d.head is not None else None}
torch.save(res, f"{out}/single.pt")
'''


def test_two_processes_train_p_like_one(tmp_path):
    import subprocess
    import sys

    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    (tmp_path / "single.py").write_text(textwrap.dedent(SINGLE))
    proc = torchrun(str(tmp_path / "worker.py"), str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tests.test_distributed import ROOT
    single = subprocess.run([sys.executable, str(tmp_path / "single.py"), str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                 "LURING_NO_PROGRESS": "1", "PATH": "/usr/bin:/bin"})
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    one = torch.load(tmp_path / "single.pt")
    for method in ("luring", "stack"):
        a, b, ref = ranks[0][method], ranks[1][method], one[method]
        # every rank returns the same P (and head), history and selection ...
        for part in ("component", "head"):
            if ref[part] is None:
                assert a[part] is None and b[part] is None
                continue
            for k, v in a[part].items():
                assert torch.equal(v, b[part][k]), (method, part, k)
        assert a["history"] == b["history"] and a["selection"] == b["selection"]
        # ... and it is the single process's optimisation, up to float rounding
        for part in ("component", "head"):
            for k, v in (ref[part] or {}).items():
                if v.is_floating_point():
                    assert (v - a[part][k]).abs().max() < 1e-4, (method, part, k)
        assert [h["step"] for h in a["history"]] == [h["step"] for h in ref["history"]]
        for h1, h2 in zip(ref["history"], a["history"], strict=True):
            assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-4)   # the ranks' sum
            assert abs(h1["val_agreement"] - h2["val_agreement"]) <= 1 / 15
        assert a["selection"]["step"] == ref["selection"]["step"]


def test_train_defense_cli_two_processes(tmp_path, monkeypatch, capsys):
    """The command under torchrun (the package's own P, with batch norm): rank 0 alone writes
    the same files one process writes, records 2 processes, and P keeps M's decisions."""
    import luring.data
    from luring.data import load as real_load

    def subset(name, split, root=None):  # what the shim loads
        x, y = real_load(name, split, root)
        return (x[::20], y[::20]) if split == "train" else (x[:100], y[:100])

    monkeypatch.setattr(luring.data, "load", subset)
    target = tmp_path / "m"
    assert main(["train-target", "--dataset", "mnist-5k", "--epochs", "2", "--out",
                 str(target)]) == 0
    shim = tmp_path / "shim.py"
    shim.write_text(textwrap.dedent(SHIM))
    argv = ["train-defense", "--target", str(target), "--method", "luring", "--epochs", "2",
            "--batch-size", "32", "--device", "cpu",
            "--allow-weak"]  # 20 calibration images: their agreement may fall below the floor
    proc = torchrun(str(shim), *argv, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1                      # rank 0 alone prints
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    c1, c2 = (json.loads((d / "config.json").read_text()) for d in (one, two))
    assert (c1.pop("processes"), c2.pop("processes")) == (1, 2)
    assert c1 == c2
    d2 = json.loads((two / "defense.json").read_text())
    assert d2["detector"]["n"] == 20 and d2["clean"]["n"] == 100
    assert d2["clean"]["agreement"] > 0.5
    assert not list(tmp_path.glob(".two.partial-*"))             # no staging left behind
