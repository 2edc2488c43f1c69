"""Defense directories that cannot lie and are never half-written (issue #26): fingerprints
checked on loading, `--force` for an existing `--out`, one writer at a time, leftovers of a
killed run cleared, a full disk reported in one line with the previous contents intact, and
a weak defense refused unless `--allow-weak`. Tiny settings: an untrained M, 64 training
images, one epoch."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line, run_cli

import luring.data
from luring.cli.main import main
from luring.defense import Defense, TrappedModel, defense_method, load, load_trapdoor
from luring.errors import LuringError
from luring.models import build, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _save_target(d: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(build("mnist-target"), d, "model", architecture="mnist-target",
                    input_shape=(1, 28, 28), num_classes=10, dataset="mnist-5k")
    return d


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    return _save_target(tmp_path_factory.mktemp("target"), 0)


@pytest.fixture(scope="module")
def other_target(tmp_path_factory):
    return _save_target(tmp_path_factory.mktemp("other"), 1)


def _tiny(mnist5k):
    """A `luring.data.load` giving 64 training and 20 test images of mnist-5k."""
    x_tr, y_tr, x_te, y_te = mnist5k

    def fake(name, split="train", root=None):
        return (x_tr[:64], y_tr[:64]) if split == "train" else (x_te[:20], y_te[:20])
    return fake


@pytest.fixture(autouse=True)
def tiny_data(monkeypatch, mnist5k):
    """64 training and 20 test images of mnist-5k for every `luring.data.load`."""
    monkeypatch.setattr(luring.data, "load", _tiny(mnist5k))


def train_args(target, out, *extra):
    return ["train-defense", "--target", target, "--out", out, "--profile", "quick",
            "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--allow-weak", *extra]


def _write_once(argv, mnist5k) -> None:
    """`luring argv` on the tiny data, for a module-scoped fixture (no `monkeypatch`)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(luring.data, "load", _tiny(mnist5k))
    try:
        assert main([str(a) for a in argv]) == 0
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def built(target_dir, tmp_path_factory, mnist5k):
    """A defense directory written by `train-defense` (kept unmodified: tests copy it)."""
    out = tmp_path_factory.mktemp("built") / "def"
    _write_once(train_args(target_dir, out), mnist5k)
    return out


@pytest.fixture(scope="module")
def trapdoor_built(target_dir, tmp_path_factory, mnist5k):
    """A trapdoor defense directory written by `train-defense --method trapdoor` (kept
    unmodified: tests copy it)."""
    out = tmp_path_factory.mktemp("trapdoor") / "td"
    _write_once(["train-defense", "--target", target_dir, "--out", out, "--method", "trapdoor",
                 "--profile", "quick", "--epochs", "1", "--clean-epochs", "0",
                 "--batch-size", "32", "--device", "cpu"], mnist5k)
    return out


def copy_of(built: Path, where: Path) -> Path:
    return Path(shutil.copytree(built, where))


def test_fingerprints_are_recorded_and_a_swapped_file_is_refused(built, other_target,
                                                                 tmp_path, capsys):
    d = copy_of(built, tmp_path / "def")
    meta = json.loads((d / "defense.json").read_text())
    assert set(meta["fingerprints"]) == {"target", "component", "calibration"}
    assert all(len(v) == 16 for v in meta["fingerprints"].values())
    load(d)  # intact: loads
    shutil.copyfile(other_target / "model.safetensors", d / "target.safetensors")
    with pytest.raises(LuringError, match="target.safetensors is not the file") as info:
        load(d)
    assert "\n" not in str(info.value)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 28, 28), dtype=np.float32))
    for argv in (["detect", "--defense", d, x],
                 ["export", "--defense", d, "--format", "torchscript", "--out",
                  tmp_path / "t.pt"]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "target.safetensors" in err and one_line(err)
    assert not (tmp_path / "t.pt").exists()
    # a component of another defense
    d2 = copy_of(built, tmp_path / "def2")
    torch.manual_seed(5)
    save_checkpoint(build("mnist-component"), tmp_path / "p", "component",
                    architecture="mnist-component", input_shape=(1, 28, 28))
    shutil.copyfile(tmp_path / "p" / "component.safetensors", d2 / "component.safetensors")
    with pytest.raises(LuringError, match="component.safetensors"):
        load(d2)
    # calibration logits of another defense: refused when read (recalibration)
    from luring.defense.calibrate import save_calibration

    d4 = copy_of(built, tmp_path / "def4")
    save_calibration(d4, torch.zeros(6, 10), torch.zeros(6, 10), torch.arange(6))
    defense = load(d4)  # the stored operating point needs no calibration file
    with pytest.raises(LuringError, match="calibration.safetensors is not the file"):
        defense.detect(torch.zeros(2, 1, 28, 28), fpr=0.2)
    # a directory written before fingerprints existed still loads
    d3 = copy_of(built, tmp_path / "def3")
    meta.pop("fingerprints")
    (d3 / "defense.json").write_text(json.dumps(meta))
    assert load(d3).method == "luring"


def test_trapdoor_loader_checks_fingerprints(trapdoor_built, other_target, tmp_path):
    out = copy_of(trapdoor_built, tmp_path / "td")
    meta = json.loads((out / "defense.json").read_text())
    assert set(meta["fingerprints"]) == {"model", "trapdoor"}
    load_trapdoor(out)
    shutil.copyfile(other_target / "model.safetensors", out / "model.safetensors")
    with pytest.raises(LuringError, match="model.safetensors is not the file"):
        load_trapdoor(out)
    with pytest.raises(LuringError, match="model.safetensors is not the file"):
        load(out)  # the one loader checks them too


def test_one_loader_for_every_defense_directory(built, trapdoor_built, target_dir, mnist5k):
    """`luring.defense.load` returns what each method deploys: the trapdoored model for a
    trapdoor directory, the M∘P Defense for a luring one; `defense_method` says which."""
    assert defense_method(trapdoor_built) == "trapdoor" and defense_method(built) == "luring"
    assert defense_method(target_dir) is None  # a target directory: no defense.json
    x = mnist5k[2][:8]
    trapped = load(trapdoor_built)
    assert isinstance(trapped, TrappedModel) and trapped.method == "trapdoor"
    direct = load_trapdoor(trapdoor_built)
    assert trapped.threshold == direct.threshold
    assert torch.equal(trapped.signatures, direct.signatures)
    assert torch.equal(trapped.detect(x).scores, direct.detect(x).scores)
    defense = load(built)
    assert isinstance(defense, Defense) and defense.method == "luring"
    assert isinstance(load(built, augmented=True), Defense)
    assert torch.equal(defense.predict(x), load(built, augmented=True).predict(x))
    for call, word in ((lambda: load(trapdoor_built, augmented=True), "load_trapdoor"),
                       (lambda: load_trapdoor(built), "not a trapdoor"),
                       (lambda: load(target_dir), "not a defense directory"),
                       (lambda: load(target_dir / "missing"), "does not exist")):
        with pytest.raises(LuringError, match=word) as info:
            call()
        assert "\n" not in str(info.value)


def test_existing_out_needs_force(built, target_dir, tmp_path, capsys):
    d = copy_of(built, tmp_path / "def")
    (d / "notes.txt").write_text("mine")
    before = snapshot(d)
    code, _, err = run_cli(train_args(target_dir, d, "--seed", "7"), capsys)
    assert code == 2 and "--force" in err and "already holds a defense" in err and one_line(err)
    assert snapshot(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["def"]  # no lock, no staging left
    code, _, err = run_cli(train_args(target_dir, d, "--seed", "7", "--force"), capsys)
    assert code == 0, err
    assert json.loads((d / "defense.json").read_text())["seed"] == 7
    assert (d / "notes.txt").read_text() == "mine"  # the user's file is carried over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["def"]
    load(d)
    # a non-empty directory that is not a defense directory is never replaced, even --force
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    for extra in ((), ("--force",)):
        code, _, err = run_cli(train_args(target_dir, other, *extra), capsys)
        assert code == 2 and one_line(err)
        assert [p.name for p in other.iterdir()] == ["thesis.tex"]
    # export: an existing file is kept byte for byte without --force, replaced with it
    t = tmp_path / "t.pt"
    t.write_bytes(b"old export")
    argv = ["export", "--defense", d, "--format", "torchscript", "--out", t]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--force" in err and one_line(err)
    assert t.read_bytes() == b"old export"
    code, _, err = run_cli([*argv, "--force"], capsys)
    assert code == 0, err
    assert t.read_bytes() != b"old export" and t.stat().st_size > 1000
    code, _, err = run_cli(["export", "--defense", d, "--format", "torchscript", "--out",
                            tmp_path, "--force"], capsys)
    assert code == 2 and "is a directory" in err and one_line(err)


def test_two_concurrent_writers_exactly_one_succeeds(target_dir, tmp_path, capsys):
    out = tmp_path / "def"
    codes: list[int] = []
    start = threading.Barrier(2)

    def writer(seed: int) -> None:
        start.wait()
        codes.append(main([str(a) for a in train_args(target_dir, out, "--seed", str(seed))]))

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = capsys.readouterr().err
    assert sorted(codes) == [0, 2], err
    assert "another luring run is writing" in err or "already holds a defense" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["def"]
    load(out)


def test_leftovers_of_a_killed_run_are_cleared(built, target_dir, tmp_path, capsys):
    out = tmp_path / "def"
    (tmp_path / ".def.staging-99999-abc").mkdir()
    (tmp_path / ".def.staging-99999-abc" / "target.safetensors").write_bytes(b"half")
    (tmp_path / ".def.partial-xyz").mkdir()
    (tmp_path / ".def.lock").write_text("99999\n")  # a lock file nobody holds
    code, _, err = run_cli(train_args(target_dir, out), capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["def"]
    # killed between the two renames of a replacement: the previous defense is put back
    # (and, without --force, kept)
    shutil.rmtree(out)
    aside = copy_of(built, tmp_path / ".def.old-99999-0")
    before = snapshot(aside)
    code, _, err = run_cli(train_args(target_dir, out), capsys)
    assert code == 2 and "already holds a defense" in err
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["def"]
    # killed just after an exchange: the staging name holds the previous directory, whose
    # files of the user's move into the new one
    old = copy_of(built, tmp_path / ".def.staging-99998-x")
    (old / "notes.txt").write_text("mine")
    code, _, err = run_cli(train_args(target_dir, out, "--force"), capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["def"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A mount point for a tmpfs of a given size (in bytes); skips where mounting fails."""
    mounted: list[Path] = []

    def make(size: int) -> Path:
        where = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(where)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}): "
                        "needs root or CAP_SYS_ADMIN")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_full_disk_is_one_line_and_keeps_the_previous_defense(built, target_dir, tmp_path,
                                                              small_tmpfs, capsys):
    size = sum(p.stat().st_size for p in built.iterdir())
    fs = small_tmpfs(size + (2 << 20))  # the old defense fits; a second copy of M does not
    d = copy_of(built, fs / "def")
    before = snapshot(d)
    code, _, err = run_cli(train_args(target_dir, d, "--force", "--seed", "3"), capsys)
    assert code == 2 and "No space left on device" in err and one_line(err), err
    assert snapshot(d) == before
    assert sorted(p.name for p in fs.iterdir()) == ["def"]  # no staging, no lock left
    load(d)
    # export onto a full disk: one line, the previous file intact
    (fs / "t.pt").write_bytes(b"previous")
    code, _, err = run_cli(["export", "--defense", d, "--format", "torchscript", "--out",
                            fs / "t.pt", "--force"], capsys)
    assert code == 2 and "No space left on device" in err and one_line(err), err
    assert (fs / "t.pt").read_bytes() == b"previous"
    assert sorted(p.name for p in fs.iterdir()) == ["def", "t.pt"]


def test_weak_defense_is_refused_unless_allowed(target_dir, tmp_path, capsys, monkeypatch):
    import luring.defense.build as build_mod

    monkeypatch.setattr(build_mod, "AGREEMENT_FLOOR", 1.01)  # every defense is "weak"
    out = tmp_path / "def"
    argv = [a for a in train_args(target_dir, out) if a != "--allow-weak"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and one_line(err)
    assert "agrees with M on only" in err and "--allow-weak" in err and "101% floor" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    code, stdout, err = run_cli([*argv, "--allow-weak"], capsys)
    assert code == 0 and "wrote" in stdout
    assert "luring: WARNING: T agrees with M on only" in err and "--allow-weak" in err
    load(out)


@pytest.mark.parametrize("meta", [None, {}, {"architecture": "mnist-target"}])
def test_save_defense_names_the_missing_target_meta(meta, tmp_path):
    """save_defense without M's sidecar keys: one line naming them and where they come from,
    nothing written."""
    import torch

    from luring.defense import save_defense, train_defense
    from luring.defense.settings import defense_settings

    m = build("mnist-target").eval()
    s = defense_settings("mnist", "luring", "quick") | {"max_steps": 1, "eval_every": 1}
    d = train_defense(m, torch.rand(16, 1, 28, 28), method="luring", settings=s)
    with pytest.raises(LuringError, match="target_meta lacks .*input_shape.*load_checkpoint"):
        save_defense(tmp_path / "d", d, target_meta=meta, dataset="mnist-5k", seed=0)
    assert not (tmp_path / "d").exists()
