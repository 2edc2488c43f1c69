"""End to end: `luring reproduce` (smoke profile) is deterministic, resumable after SIGKILL,
and refuses a second process on the same directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from luring.cli.main import main
from luring.models import save_checkpoint

pytestmark = pytest.mark.slow

CMD = [sys.executable, "-m", "luring.cli.main", "reproduce", "--dataset", "mnist-5k",
       "--profile", "smoke", "--seed", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory, trained_mnist_target):
    model, _, _ = trained_mnist_target
    d = tmp_path_factory.mktemp("target")
    save_checkpoint(model, d, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k", test_accuracy=None)
    return d


def _env():
    env = dict(os.environ, LURING_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get(
        "PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, target_dir):
    out = tmp_path_factory.mktemp("run") / "a"
    subprocess.run(CMD + ["--target", str(target_dir), "--out", str(out)], check=True,
                   env=_env(), capture_output=True, timeout=600)
    return out


def test_run_directory_contents(uninterrupted):
    names = {p.name for p in uninterrupted.iterdir()}
    assert {"config.json", "results.json", "report.md", "timings.json", "table_defend.csv",
            "table_clean.csv", "table_characterize.csv", "figure2.png"} <= names
    res = json.loads((uninterrupted / "results.json").read_text())
    assert res["dataset"] == "mnist-5k" and res["profile"] == "smoke" and res["seed"] == 0
    assert set(res["clean"]) == {"target", "stack", "auto", "ce", "luring"}
    attacks = {(r["experiment"], r["attack"]) for r in res["rows"]}
    assert {("defend", a) for a in ("spsa", "eco", "mim-w", "worst-case")} <= attacks
    assert {("characterize", a) for a in ("fgsm", "pgd", "mim", "mim-l2")} <= attacks
    for r in res["rows"]:
        assert r["n"] is not None and r["eps"] in (0.2, 0.3, 0.4)
        for k in ("ac_mop", "ac_m", "dac", "dr", "iar"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0
        if r["experiment"] == "defend":
            # the per-example worst case can only be worse than each attack alone
            worst = next(w for w in res["rows"] if w["attack"] == "worst-case"
                         and w["approach"] == r["approach"] and w["eps"] == r["eps"])
            assert worst["dac"] <= r["dac"] + 1e-12 and worst["ac_m"] <= r["ac_m"] + 1e-12
    report = (uninterrupted / "report.md").read_text()
    assert "Differences from the paper" in report
    # every defend number of the report comes from results.json
    mimw = next(r for r in res["rows"] if r["attack"] == "mim-w" and r["approach"] == "luring")
    assert f"{mimw['dac']:.3f}" in report


def test_sigkill_then_resume_gives_identical_results(tmp_path, target_dir, uninterrupted):
    out = tmp_path / "b"
    proc = subprocess.Popen(CMD + ["--target", str(target_dir), "--out", str(out)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = out / "units" / "characterize"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if units.exists() and len(list(units.glob("*.safetensors"))) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = len(list(units.glob("*.safetensors")))
    subprocess.run(CMD + ["--target", str(target_dir), "--out", str(out)], check=True,
                   env=_env(), capture_output=True, timeout=600)
    timings = json.loads((out / "timings.json").read_text())
    assert len(timings["units_reused"]) >= done >= 10
    assert (out / "results.json").read_bytes() == (uninterrupted / "results.json").read_bytes()


def test_second_process_on_same_directory_is_refused(tmp_path, target_dir, capsys):
    from luring.experiments.store import RunDir

    out = tmp_path / "c"
    with RunDir(out):
        code = main(["reproduce", "--profile", "smoke", "--target", str(target_dir),
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "is in use by luring process" in err
    assert len(err.strip().splitlines()) == 1


def test_rerun_with_other_settings_is_refused(uninterrupted, target_dir, capsys):
    before = (uninterrupted / "results.json").read_bytes()
    code = main(["reproduce", "--profile", "quick", "--target", str(target_dir),
                 "--out", str(uninterrupted)])
    assert code == 2 and "different settings" in capsys.readouterr().err
    assert (uninterrupted / "results.json").read_bytes() == before
