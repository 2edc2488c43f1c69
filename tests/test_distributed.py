"""luring.distributed (shards without padding, gathering, errors agreed on every rank) and the
commands under torchrun: 2 processes with the gloo backend on loopback against one process
(`attack` byte for byte; `train-target`'s DistributedDataParallel against one process's
optimisation; the directory layout rank 0 writes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from luring import distributed
from luring.cli.main import main
from luring.errors import LuringError
from luring.models import save_checkpoint
from luring.models.train import target_settings, train_target

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 ARGS`` (gloo on 127.0.0.1, one thread per process)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1", LURING_NO_PROGRESS="1", LURING_BACKEND="gloo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# ---- shards --------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 101])
def test_shards_hold_every_index_once_without_padding(n, world):
    shards = [distributed.shard_indices(n, r, world) for r in range(world)]
    assert all(s.dtype == torch.long for s in shards)
    assert torch.equal(torch.cat(shards), torch.arange(n))    # in order, once each, no pad
    sizes = [len(s) for s in shards]
    assert sum(sizes) == n and set(sizes) <= {n // world, -(-n // world)}
    if n < world:
        assert sizes.count(1) == n and sizes.count(0) == world - n
    for r, s in enumerate(shards):
        lo, hi = distributed.shard_range(n, r, world)
        assert torch.equal(s, torch.arange(lo, hi))             # contiguous


def test_shard_range_values_and_bad_arguments():
    assert [distributed.shard_range(10, r, 4) for r in range(4)] == [(0, 2), (2, 5), (5, 7),
                                                                     (7, 10)]
    assert [distributed.shard_range(1, r, 2) for r in range(2)] == [(0, 0), (0, 1)]
    for n, r, w in ((-1, 0, 1), (3, 2, 2), (3, -1, 2), (3, 0, 0), (2.0, 0, 1), (3, True, 2)):
        with pytest.raises(ValueError):
            distributed.shard_range(n, r, w)


def test_options_pass_through_torchruns_parser():
    """torchrun's parser takes abbreviations of its own options from anywhere on the command
    line: no option of `attack` or `train-target` may be the prefix of one (`--n` is the
    single-process alias of `--images`)."""
    from torch.distributed.run import get_args_parser

    from luring.cli.main import build_parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings]
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
               and "attack" in a.choices)
    clashes = sorted({o for name in ("attack", "train-target")
                      for a in sub.choices[name]._actions for o in a.option_strings
                      if o not in ("-h", "--help") and any(t.startswith(o) for t in theirs)})
    assert clashes == ["--n"]
    assert "--amp" in sub.choices["train-target"]._option_string_actions


# ---- one process ---------------------------------------------------------------------------

def test_single_process_is_a_no_op(monkeypatch):
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    with distributed.process_group("cpu") as dev:
        assert dev == torch.device("cpu")
        assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == \
            (0, 1, 0)
        assert distributed.is_main() and not torch.distributed.is_initialized()
        distributed.barrier()
        assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
        assert distributed.all_sum([2, 0.5]) == [2, 0.5]
        with pytest.raises(ValueError, match="plain"):   # not turned into a LuringError
            distributed.everywhere(lambda: (_ for _ in ()).throw(ValueError("plain")))
        assert distributed.everywhere(lambda: 7) == 7
        rows = torch.tensor([[2.0, 2.5], [0.0, 0.5], [1.0, 1.5]])
        out = distributed.gather_tensors(rows, torch.tensor([2, 0, 1]), 3)
        assert torch.equal(out, torch.tensor([[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]))
        assert out.dtype == torch.float32 and out.device.type == "cpu"
        for idx, n in (([0, 0, 1], 3), ([0, 1, 2], 4), ([0, 1, 3], 3)):
            with pytest.raises(ValueError, match="exactly once"):
                distributed.gather_tensors(rows, torch.tensor(idx), n)
        with pytest.raises(ValueError, match="local rows"):
            distributed.gather_tensors(rows, torch.tensor([0, 1]), 2)
    assert distributed.init_from_env("cpu") is False


def test_init_from_env_needs_torchrun_variables(monkeypatch):
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is False           # torchrun with one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(LuringError, match="MASTER_ADDR, MASTER_PORT is not; start the "
                                          "command with torchrun"):
        distributed.init_from_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("LURING_BACKEND", "mpi")
    with pytest.raises(LuringError, match="LURING_BACKEND='mpi' is not one of gloo, nccl"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(LuringError, match="WORLD_SIZE='two' is not an integer"):
        distributed.init_from_env()
    assert not torch.distributed.is_initialized()


# ---- two processes: primitives and DistributedDataParallel training ------------------------

def _train_images():
    from luring.data import load

    x, y = load("mnist-5k", "train")
    return x[::50][:76].contiguous(), y[::50][:76].contiguous()   # every class, 76 images


# the worker below trains on these 76 images in batches of 25: 12/13 per rank, then a last
# batch of 1 (rank 0's slice is empty: it joins while rank 1 steps)
TRAIN = dict(epochs=2, batch_size=25)

WORKER = '''
import sys, torch
from luring import distributed
from luring.errors import LuringError
from luring.models.train import target_settings, train_target
from luring.data import load

out = sys.argv[1]
with distributed.process_group("cpu") as dev:
    r, w = distributed.rank(), distributed.world_size()
    res = {"rank": r, "world": w, "sum": distributed.all_sum([r, 1, 0.5])}
    idx = distributed.shard_indices(5, r, w)                      # [0, 1] and [2, 3, 4]
    rows = torch.stack([idx * 1.5, -idx.double()], 1).float()
    res["rows"] = distributed.gather_tensors(rows, idx, 5)
    res["bool"] = distributed.gather_tensors(idx % 2 == 0, idx, 5)
    one = distributed.shard_indices(1, r, w)                      # rank 0 has nothing
    res["one"] = distributed.gather_tensors(None if r == 0 else one + 10, one, 1)
    for exc in (LuringError("boom on rank 1"), ValueError("bad value\\nsecond line")):
        def fail(exc=exc):
            if r == 1:
                raise exc
            return "fine"
        try:
            distributed.everywhere(fail)
        except LuringError as e:
            res.setdefault("errors", []).append(str(e))
    x, y = load("mnist-5k", "train")
    x, y = x[::50][:76].contiguous(), y[::50][:76].contiguous()
    model, info = train_target(x, y, target_settings("mnist", epochs=2, batch_size=25), seed=3,
                               device=dev, x_test=x[:30], y_test=y[:30], parallel=True)
    res["state"], res["info"] = model.state_dict(), info
    if r == 0:  # alone inside the group (as reproduce's rank 0 trains): no DDP, no waiting
        res["solo"] = train_target(x, y, target_settings("mnist", epochs=1, batch_size=25),
                                   seed=3, device=dev, x_test=x[:30], y_test=y[:30])[1]
    distributed.barrier()
    torch.save(res, f"{out}/rank{r}.pt")
'''


def test_two_processes_gather_agree_on_errors_and_train_like_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    proc = torchrun(str(script), str(tmp_path), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r, got in enumerate(res):
        assert (got["rank"], got["world"], got["sum"]) == (r, 2, [1, 2, 1.0])
        assert torch.equal(got["rows"], torch.tensor(
            [[0.0, 0.0], [1.5, -1.0], [3.0, -2.0], [4.5, -3.0], [6.0, -4.0]]))
        assert torch.equal(got["bool"], torch.tensor([True, False, True, False, True]))
        assert torch.equal(got["one"], torch.tensor([10]))
        assert got["errors"] == ["boom on rank 1",
                                 "process 1 failed: ValueError: bad value"]
    # every rank holds the same model ...
    for k, v in res[0]["state"].items():
        assert torch.equal(v, res[1]["state"][k]), k
    assert res[0]["info"]["history"] == res[1]["info"]["history"]
    # ... and it is one process's optimisation (same batches, mean gradient), up to rounding
    x, y = _train_images()
    ref, info = train_target(x, y, target_settings("mnist", **TRAIN), seed=3, device="cpu",
                             x_test=x[:30], y_test=y[:30])
    # (a rank skipping its optimizer step on the empty slice drifts by ~1e-1 here)
    init = train_target(x, y, target_settings("mnist", epochs=0, batch_size=25),
                        seed=3)[0].state_dict()
    for k, v in ref.state_dict().items():
        step_one, step_two = v - init[k], res[0]["state"][k] - init[k]
        assert step_one.abs().max() > 1e-3                      # training moved the weights
        assert (step_one - step_two).norm() <= 1e-4 * step_one.norm(), k
        assert (step_one - step_two).abs().max() < 1e-4, k
    solo = train_target(x, y, target_settings("mnist", epochs=1, batch_size=25), seed=3,
                        x_test=x[:30], y_test=y[:30])[1]
    assert res[0]["solo"]["history"] == solo["history"]         # bit for bit: one process
    for a, b in zip(info["history"], res[0]["info"]["history"], strict=True):
        assert a["epoch"] == b["epoch"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert abs(a["train_accuracy"] - b["train_accuracy"]) <= 1 / 76
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 1 / 30
    assert info["history"][0]["train_accuracy"] > 0.2          # it learnt something


# ---- `luring attack` under torchrun ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """A tiny trained M (200 mnist-5k images, one epoch) saved as a target directory."""
    from luring.data import load

    x, y = load("mnist-5k", "train")
    model, _ = train_target(x[::20], y[::20], target_settings("mnist", epochs=1, batch_size=20),
                            seed=0)
    d = tmp_path_factory.mktemp("tiny-target")
    save_checkpoint(model, d, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k")
    return d


@pytest.mark.parametrize("attack", [
    # random start per example (start_index seeds), 13 images in chunks of 4: 8 + 5
    ["--attack", "pgd", "--eps", "0.2", "--steps", "3", "--images", "13", "--chunk", "4"],
    # per-example extras (success, l2) and a non-sign update; 3 chunks of 2: 2 on rank 0
    ["--attack", "cw-l2", "--eps", "1", "--steps", "3", "--binary-steps", "2", "--images", "5",
     "--chunk", "2"],
    # MIM in bf16 (where the CPU runs it) with calls of 16 images over chunks of 8
    ["--attack", "mim", "--eps", "0.3", "--steps", "3", "--images", "21", "--chunk", "8",
     "--batch-size", "16", "--precision", "auto"],
])
def test_attack_two_processes_write_what_one_process_writes(attack, tiny_source, tmp_path,
                                                            capsys):
    common = ["attack", "--source", str(tiny_source), *attack, "--device", "cpu", "--seed", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--out", str(one)]) == 0
    capsys.readouterr()
    proc = torchrun("-m", "luring", *common, "--out", str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("success rate") == 1 and "2 processes" in proc.stdout
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == [
        "adversarial.safetensors", "attack.json"]
    assert (two / "adversarial.safetensors").read_bytes() == \
        (one / "adversarial.safetensors").read_bytes()
    a, b = (json.loads((d / "attack.json").read_text()) for d in (one, two))
    assert a.pop("wall_time_s") > 0 and b.pop("wall_time_s") > 0
    assert a == b
    if "cw-l2" in attack:
        assert len(b["success"]) == len(b["l2"]) == 5
    elif "mim" in attack:
        assert b["n_backward"] == 3 * 3 and b["chunk"] == 8
    else:
        assert b["n_backward"] == 4 * 3 and b["n_queries"] == 13 * 4   # 4 chunks, summed


def test_attack_error_under_torchrun_is_one_line_from_rank_0(tiny_source, tmp_path):
    proc = torchrun("-m", "luring", "attack", "--source", str(tiny_source), "--attack", "fgsm",
                    "--eps", "0.1", "--images", "5000", "--out", str(tmp_path / "o"),
                    "--device", "cpu")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("luring: error:")]
    assert lines == ["luring: error: --images 5000 is larger than the mnist-5k test set "
                     "(1000 images); pass --images 1000 or less"]
    # torchrun lists the failed processes it saw (one or both, by timing); each exited 2
    assert proc.stderr.count("exitcode  : 2") >= 1
    assert "exitcode  : 1" not in proc.stderr
    assert not (tmp_path / "o" / "attack.json").exists()


# ---- `luring train-target` under torchrun ------------------------------------------------

SHIM = '''
import sys
import luring.data
from luring.cli.main import main

_load = luring.data.load


def load(name, split, root=None):  # a few hundred mnist-5k images
    x, y = _load(name, split, root)
    return (x[::20], y[::20]) if split == "train" else (x[:100], y[:100])


luring.data.load = load
sys.exit(main(sys.argv[1:]))
'''


def test_train_target_two_processes_smoke(tmp_path, monkeypatch, capsys):
    from luring.data import load as real_load
    from luring.models import load_checkpoint
    from luring.models.train import evaluate_accuracy

    shim = tmp_path / "shim.py"
    shim.write_text(textwrap.dedent(SHIM))
    argv = ["train-target", "--dataset", "mnist-5k", "--epochs", "1", "--batch-size", "16",
            "--device", "cpu"]
    proc = torchrun(str(shim), *argv, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1 and "(2 processes)" in proc.stdout
    import luring.data

    def subset(name, split, root=None):  # what the shim loads
        x, y = real_load(name, split, root)
        return (x[::20], y[::20]) if split == "train" else (x[:100], y[:100])

    monkeypatch.setattr(luring.data, "load", subset)
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == [
        "config.json", "model.json", "model.safetensors", "report.md", "results.json"]
    c1, c2 = (json.loads((d / "config.json").read_text()) for d in (one, two))
    assert (c1.pop("processes"), c2.pop("processes")) == (1, 2)
    assert c1 == c2 and c2["n_train"] == 200 and c2["n_test"] == 100 and c2["amp"] == "off"
    r2 = json.loads((two / "results.json").read_text())
    assert [h["epoch"] for h in r2["history"]] == [1] and r2["n_test"] == 100
    # the accuracy the two ranks measured together is the saved model's on the 100 images
    model, meta = load_checkpoint(two, "model")
    x_te, y_te = real_load("mnist-5k", "test")
    assert r2["test_accuracy"] == evaluate_accuracy(model, x_te[:100], y_te[:100])
    assert meta["test_accuracy"] == r2["test_accuracy"] > 0.3


# ---- mixed precision ----------------------------------------------------------------------

def test_amp_bf16_trains_and_fp16_needs_cuda(tmp_path, capsys):
    from luring.data import load

    x, y = load("mnist-5k", "train")
    x, y = x[::40].contiguous(), y[::40].contiguous()
    s = target_settings("mnist", epochs=1, batch_size=20)
    off, _ = train_target(x, y, s, seed=1)
    bf16, info = train_target(x, y, s, seed=1, amp="bf16", x_test=x, y_test=y)
    w_off, w_bf16 = off.state_dict(), bf16.state_dict()
    assert all(v.dtype == torch.float32 for v in w_bf16.values())   # weights stay float32
    assert any(not torch.equal(v, w_bf16[k]) for k, v in w_off.items())  # autocast was on
    assert torch.isfinite(torch.tensor(info["history"][0]["loss"]))
    assert 0.0 <= info["test_accuracy"] <= 1.0
    for mode, message in (("fp16", "needs a CUDA device"), ("half", "unknown --amp 'half'")):
        with pytest.raises(LuringError, match=message):
            train_target(x, y, s, amp=mode)
    assert main(["train-target", "--epochs", "0", "--amp", "fp16", "--device", "cpu",
                 "--out", str(tmp_path / "fp16")]) == 2
    err = capsys.readouterr().err
    assert "--amp fp16 needs a CUDA device" in err and err.count("\n") == 1
    assert main(["train-target", "--epochs", "0", "--amp", "--device", "cpu",
                 "--out", str(tmp_path / "bf16")]) == 0
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert (cfg["amp"], cfg["processes"]) == ("bf16", 1)
