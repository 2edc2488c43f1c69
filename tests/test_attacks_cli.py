"""`luring attack` end to end on a saved mnist-5k checkpoint, and its error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from safetensors.torch import load_file

from luring.cli.main import main
from luring.models import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source_dir(trained_mnist_target, tmp_path_factory):
    model = trained_mnist_target[0]
    d = tmp_path_factory.mktemp("target")
    save_checkpoint(model, d, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k")
    return d


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:                  # argparse errors
        return int(exc.code)


def test_attack_cli_end_to_end(source_dir, tmp_path, capsys):
    out = tmp_path / "adv"
    code = run(["attack", "--source", str(source_dir), "--attack", "mim", "--eps", "0.3",
                "--steps", "5", "--alpha", "0.06", "--images", "20", "--out", str(out),
                "--device", "cpu", "--chunk", "8", "--batch-size", "16", "--seed", "1"])
    assert code == 0
    assert "success rate" in capsys.readouterr().out
    t = load_file(out / "adversarial.safetensors")
    assert set(t) == {"x", "x_adv", "y", "pred_clean", "pred_adv"}
    assert t["x"].shape == t["x_adv"].shape == (20, 1, 28, 28)
    assert (t["x_adv"] - t["x"]).abs().max() <= 0.3
    assert t["x_adv"].min() >= 0 and t["x_adv"].max() <= 1
    meta = json.loads((out / "attack.json").read_text())
    assert meta["attack"] == "mim" and meta["n"] == 20 and meta["seed"] == 1
    assert meta["params"]["steps"] == 5 and meta["params"]["alpha"] == 0.06
    assert meta["params"]["mu"] == 1.0 and meta["eps"] == 0.3
    assert meta["n_backward"] == 3 * 5 and meta["n_queries"] == 20 * 6
    assert meta["success_rate"] == pytest.approx(
        float((t["pred_adv"] != t["pred_clean"]).float().mean()))
    assert meta["success_rate"] > 0.5 and meta["dataset"] == "mnist-5k"
    assert meta["device"] == "cpu" and meta["params"]["batch_size"] == 8
    assert {"torch", "luring"} <= set(meta["versions"]) and meta["wall_time_s"] > 0
    assert not list(out.glob(".*.tmp"))


def test_attack_cli_transfer_attack_margin_bpda_and_n_alias(source_dir, tmp_path):
    out = tmp_path / "vni"
    assert run(["attack", "--source", str(source_dir), "--attack", "vni-fgsm", "--eps", "0.3",
                "--steps", "2", "--neighbors", "2", "--beta", "1.0", "--loss", "margin",
                "--kappa", "2", "--bpda", "--p", "0.5", "--n", "3", "--out", str(out),
                "--device", "cpu"]) == 0
    meta = json.loads((out / "attack.json").read_text())
    p = meta["params"]
    assert meta["attack"] == "vni-fgsm" and meta["class"] == "VNIFGSM" and meta["n"] == 3
    assert (p["loss"], p["kappa"], p["grad_model"], p["neighbors"], p["beta"], p["p"]) == (
        "margin", 2.0, "BPDA", 2, 1.0, 0.5)
    assert p["alpha"] == pytest.approx(0.15) and meta["bpda"] is True
    # 2 steps x (1 + 2 neighbours) gradient evaluations of 3 images, + the label query
    assert meta["n_backward"] == 6 and meta["n_queries"] == 3 * 7
    out = tmp_path / "si"
    assert run(["attack", "--source", str(source_dir), "--attack", "si-ni-fgsm", "--eps", "0.2",
                "--steps", "1", "--scales", "2", "--images", "2", "--out", str(out),
                "--device", "cpu"]) == 0
    meta = json.loads((out / "attack.json").read_text())
    assert meta["params"]["scales"] == 2 and meta["params"]["loss"] == "ce"
    assert meta["bpda"] is False and meta["n_backward"] == 2
    # SIA and BSR with their own options: copies count one gradient evaluation each
    for name, extra in (("sia", ["--num-block", "2"]), ("bsr", ["--max-angle", "0"])):
        out = tmp_path / name
        assert run(["attack", "--source", str(source_dir), "--attack", name, "--eps", "0.2",
                    "--steps", "2", "--num-copies", "3", *extra, "--images", "2", "--out",
                    str(out), "--device", "cpu"]) == 0
        meta = json.loads((out / "attack.json").read_text())
        assert meta["params"]["num_copies"] == 3 and meta["n_backward"] == 6
        assert meta["params"]["alpha"] == pytest.approx(0.1)   # eps / steps, as the papers


def test_attack_cli_defense_source(trained_mnist_target, tmp_path, monkeypatch):
    # a stand-in for luring.defense with its announced API: defense_method(DIR) says whether
    # DIR is a defense directory, load(DIR, device, augmented=True) gives T = M∘P and its meta
    calls = []

    def defense_method(directory):
        calls.append(("method", Path(directory)))
        return "luring"

    def load(directory, device="cpu", *, augmented=False):
        calls.append(("load", Path(directory), str(device), augmented))
        return types.SimpleNamespace(augmented=trained_mnist_target[0],
                                     meta={"format": "luring-defense/1", "dataset": "mnist-5k"})

    monkeypatch.setitem(sys.modules, "luring.defense",
                        types.SimpleNamespace(defense_method=defense_method, load=load))
    src = tmp_path / "defense"
    src.mkdir()
    out = tmp_path / "out"
    assert run(["attack", "--source", str(src), "--attack", "fgsm", "--eps", "0.2",
                "--images", "4", "--out", str(out), "--device", "cpu"]) == 0
    assert calls == [("method", src), ("load", src, "cpu", True)]
    meta = json.loads((out / "attack.json").read_text())
    assert meta["source_kind"] == "defense" and meta["dataset"] == "mnist-5k"


def test_attack_cli_dataset_defaults_and_eco(source_dir, tmp_path):
    out = tmp_path / "eco"
    assert run(["attack", "--source", str(source_dir), "--attack", "eco", "--eps", "0.3",
                "--max-queries", "30", "--images", "3", "--out", str(out), "--device", "cpu"]) == 0
    meta = json.loads((out / "attack.json").read_text())
    assert meta["params"]["block_size"] == 2                   # paper's MNIST block size
    assert meta["queries"] == [30, 30, 30] and meta["n_queries"] == 90
    out = tmp_path / "l2"
    assert run(["attack", "--source", str(source_dir), "--attack", "mim-l2", "--eps", "0.3",
                "--steps", "1", "--images", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "attack.json").read_text())["params"]["eps_l2"] == 30.0


@pytest.mark.parametrize("args, message", [
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--eps", "1.5"], "must be in [0, 1]"),
    (["--eps", "-0.1"], "must be in [0, 1]"),
    (["--images", "5000"], "--images 5000 is larger than the mnist-5k test set"),
    (["--n", "5000"], "pass --images 1000 or less"),
    (["--loss", "hinge", "--attack", "mim"], "unknown loss 'hinge'"),
    (["--kappa", "-1", "--attack", "mim"], "must be a finite number ≥ 0"),
    (["--kappa", "1", "--attack", "mim"], "pass --loss margin with it"),
    (["--bpda", "", "--attack", "spsa"], "--bpda does not apply to spsa"),
    (["--scales", "3", "--attack", "mim"], "--scales does not apply to mim"),
    (["--num-copies", "3", "--attack", "mim"], "--num-copies does not apply to mim"),
    (["--max-angle", "10", "--attack", "sia"], "--max-angle does not apply to sia"),
    (["--mu", "0.5", "--attack", "spsa"], "--mu does not apply to spsa"),
    (["--samples", "3", "--attack", "spsa"], "samples must be even"),
])
def test_attack_cli_errors(args, message, source_dir, tmp_path, capsys):
    base = {"--source": str(source_dir), "--attack": "fgsm", "--eps": "0.1", "--images": "2",
            "--out": str(tmp_path / "o"), "--device": "cpu"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["attack"] + [s for kv in base.items() for s in kv if s != ""]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_attack_cli_bad_source_and_out(source_dir, tmp_path, capsys):
    common = ["--attack", "fgsm", "--eps", "0.1", "--images", "2", "--device", "cpu"]
    assert run(["attack", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                *common]) == 2
    assert "is not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["attack", "--source", str(empty), "--out", str(tmp_path / "o"), *common]) == 2
    assert "neither model.json nor defense.json" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    assert run(["attack", "--source", str(broken), "--out", str(tmp_path / "o"), *common]) == 2
    assert "not readable JSON" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(["attack", "--source", str(source_dir), "--out", str(blocker / "sub"),
                *common]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and err.count("\n") == 1


def test_attack_cli_subprocess_error_is_one_line(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "luring.cli.main", "attack", "--source", str(tmp_path / "none"),
         "--attack", "pgd", "--eps", "0.3", "--images", "1", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, cwd=root, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("luring: error:") and proc.stderr.count("\n") == 1
