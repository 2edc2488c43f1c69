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
import torch

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
    # one thread per process: what torchrun gives each of its processes, so that the
    # single-process and the two-process runs compute with the same kernels
    env = dict(os.environ, LURING_NO_PROGRESS="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get(
        "PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, target_dir):
    out = tmp_path_factory.mktemp("run") / "a"
    subprocess.run(CMD + ["--target", str(target_dir), "--out", str(out)], check=True,
                   env=_env(), capture_output=True, timeout=600)
    return out


def test_run_directory_contents(uninterrupted, target_dir):
    names = {p.name for p in uninterrupted.iterdir()}
    assert {"config.json", "results.json", "report.md", "timings.json", "table_defend.csv",
            "table_clean.csv", "table_characterize.csv", "figure2.png"} <= names
    res = json.loads((uninterrupted / "results.json").read_text())
    assert res["dataset"] == "mnist-5k" and res["profile"] == "smoke" and res["seed"] == 0
    report = (uninterrupted / "report.md").read_text()
    assert set(res["clean"]) == {"target", "stack", "auto", "ce", "luring"}
    attacks = {(r["experiment"], r["attack"]) for r in res["rows"]}
    assert {("defend", a) for a in ("spsa", "eco", "mim-w", "worst-case")} <= attacks
    assert {("adaptive", a) for a in ("adaptive-w", "adaptive-worst", "substitute")} <= attacks
    assert set(res["diagnostics"]) == {"stack", "auto", "ce", "luring"}
    assert {v["attack"] for v in res["verdict"]} >= {"mim-w", "adaptive-worst"}
    for r in res["rows"]:
        if r["attack"] in ("spsa", "eco", "mim-w", "adaptive-w"):  # the detector's figures
            assert 0 <= r["detection_rate"] <= 1 and r["dac_op"] is not None
        if r["attack"] == "adaptive-worst":
            # the per-example worst case is at most the best single setting
            best = next(w for w in res["rows"] if w["attack"] == "adaptive-w"
                        and w["approach"] == r["approach"] and w["eps"] == r["eps"])
            assert r["dac"] <= best["dac"] + 1e-12 and r["ac_m"] <= best["ac_m"] + 1e-12
            assert r["ac_mop"] <= best["ac_mop"] + 1e-12 and r["n"] == best["n"]
    assert {"figure_roc_mim-w_eps0.3.png", "table_adaptive.csv", "table_verdict.csv"} <= names
    # issue #24: the attacker's own model S (another seed than M, not M's weights), the
    # T+S ensembles and SIA in the worst case, the public-model row beside it
    from luring.experiments.models import attacker_seed
    from luring.models import load_checkpoint

    s_model, s_meta = load_checkpoint(uninterrupted / "models" / "attacker-s0")
    m_model, _ = load_checkpoint(target_dir)
    assert s_meta["seed"] == attacker_seed(0) != 0
    assert any(not torch.equal(a, b) for a, b in zip(s_model.state_dict().values(),
                                                     m_model.state_dict().values(),
                                                     strict=True))
    assert {("adaptive", "public")} <= attacks
    for r in res["rows"]:
        if r["attack"] == "adaptive-worst":
            b = r["broken_by"]
            assert set(b) == {"family", "transforms", "ensemble", "all"}
            # adding attacks never helps the defender: the worst case is at most each part
            assert all(b["all"]["dac"] <= b[p]["dac"] + 1e-12 for p in b)
            assert b["all"]["dac"] == pytest.approx(r["dac"]) and b["all"]["n"] == r["n"]
            assert all(0 <= b[p]["only"] <= b[p]["broke"] <= 1 for p in b if p != "all")
        if r["attack"] == "public":
            assert r["attacker"]["test_accuracy"][0] > 0.1 and r["n"] > 0
            # M's accuracy on examples crafted on S does not depend on the approach
            same = [w["ac_m"] for w in res["rows"] if w["attack"] == "public"
                    and w["eps"] == r["eps"]]
            assert len(set(same)) == 1
    assert "Which attacks broke the worst case" in report and "public model" in report
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
    assert "Differences from the paper" in report
    # every defend number of the report comes from results.json
    mimw = next(r for r in res["rows"] if r["attack"] == "mim-w" and r["approach"] == "luring")
    assert f"{mimw['dac']:.3f}" in report


GOLDEN = Path(__file__).parent / "data" / "smoke_golden.json"


def _environment() -> dict[str, str]:
    """What decides the bytes of a run besides the code: the CPU (model and ISA), torch."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "model name", "cpu family", "model") and key not in info:
                info[key] = value.strip()
            if key == "flags" and "isa" not in info:
                flags = value.split()
                info["isa"] = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                                       if f in flags)
    except OSError:
        pass
    return info | {"torch": torch.__version__.split("+")[0]}


def _skeleton(res: dict) -> dict:
    """What must not change on any machine: the keys, the rows (which experiment, approach,
    attack, ε, in order), the verdict's attacks, the settings and the disclosure lines."""
    return {"keys": sorted(res), "rows": [[r["experiment"], r["approach"], r["attack"],
                                           r["eps"]] for r in res["rows"]],
            "verdict": [[v["attack"], v["eps"]] for v in res["verdict"]],
            "sections": {k: sorted(res[k]) for k in ("diagnostics", "roc") if k in res},
            "settings": res["settings"], "differences": res["differences_from_paper"]}


def test_smoke_results_match_the_pinned_run(uninterrupted):
    """The smoke run's results.json is the one recorded before the package was restructured
    (issue #25): byte for byte on the machine that recorded it (same CPU and torch), and the
    same structure, settings and disclosure anywhere else (other kernels round differently).
    ``LURING_UPDATE_GOLDEN=1`` records it again."""
    import hashlib

    blob = (uninterrupted / "results.json").read_bytes()
    res = json.loads(blob)
    now = {"environment": _environment(), "sha256": hashlib.sha256(blob).hexdigest(),
           "skeleton": _skeleton(res)}
    if os.environ.get("LURING_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    pinned = json.loads(GOLDEN.read_text())
    assert now["skeleton"] == pinned["skeleton"]
    if now["environment"] == pinned["environment"]:
        assert now["sha256"] == pinned["sha256"]


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
    # the resumed invocation's wall time is not the run's: the report says so
    assert f"which reused {len(timings['units_reused'])} stored units" in \
        (out / "report.md").read_text()
    assert "which reused" not in (uninterrupted / "report.md").read_text()
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
    err = capsys.readouterr().err
    assert code == 2 and "holds another run" in err and 'profile: "smoke" → "quick"' in err
    assert (uninterrupted / "results.json").read_bytes() == before


# ---- run identity: a rerun never mixes runs --------------------------------------------------

def _tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (but the lock) with its bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _refused(capsys, argv, out: Path, what: str) -> None:
    before = _tree(out)
    capsys.readouterr()  # what earlier commands printed
    code = main(argv + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "holds another run" in err and what in err and "--restart" in err
    assert _tree(out) == before  # nothing lost, nothing rewritten (config.json included)


BASE = ["reproduce", "--dataset", "mnist-5k", "--profile", "smoke", "--device", "cpu"]


def test_rerun_with_another_seed_or_seeds_is_refused(uninterrupted, target_dir, capsys):
    tgt = ["--target", str(target_dir)]
    _refused(capsys, BASE + tgt + ["--seed", "1"], uninterrupted, "seed: 0 → 1")
    _refused(capsys, BASE + tgt + ["--seeds", "2"], uninterrupted, "seeds: [0] → [0, 1]")


def test_rerun_with_another_target_is_refused(uninterrupted, target_dir, tmp_path, capsys,
                                              trained_mnist_target):
    model, _, _ = trained_mnist_target
    other = tmp_path / "other-target"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k in state if k.endswith("weight"))
    state[first][(0,) * state[first].dim()] += 1e-3  # one weight differs
    m2 = type(model)()
    m2.load_state_dict(state)
    save_checkpoint(m2, other, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k", test_accuracy=None)
    _refused(capsys, BASE + ["--target", str(other)], uninterrupted, "target:")
    _refused(capsys, BASE, uninterrupted, "target:")  # M trained in the directory instead


def test_rerun_with_another_dataset_of_the_family_is_refused(uninterrupted, target_dir,
                                                             tmp_path, capsys, monkeypatch):
    from test_data_fixtures import make_idx_set

    from luring.data.files import CHECKSUMS

    made = make_idx_set(tmp_path / "data" / "MNIST" / "raw", n_train=20, n_test=10)
    monkeypatch.setitem(CHECKSUMS, "mnist", made["md5"])
    argv = ["reproduce", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
            "--profile", "smoke", "--device", "cpu", "--target", str(target_dir)]
    _refused(capsys, argv, uninterrupted, 'dataset: "mnist-5k" → "mnist"')


def test_defense_trained_for_another_target_is_not_reused(uninterrupted, target_dir, tmp_path,
                                                          capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    ident = run / "models" / "luring-s0" / "identity.json"
    data = json.loads(ident.read_text())
    data["target"] = "0123456789abcdef"
    ident.write_text(json.dumps(data))
    before = _tree(run)
    code = main(BASE + ["--target", str(target_dir), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "models/luring-s0" in err and "trained from something else" in err
    errors = [line for line in err.splitlines() if line.startswith("luring: error:")]
    assert len(errors) == 1 and "target:" in errors[0] and "Traceback" not in err
    assert {k: v for k, v in _tree(run).items() if k != "config.json"} == \
        {k: v for k, v in before.items() if k != "config.json"}


def test_restart_gives_the_results_of_a_fresh_run(uninterrupted, target_dir, tmp_path, capsys):
    import shutil

    argv = ["saliency", "--dataset", "mnist-5k", "--profile", "smoke", "--device", "cpu",
            "--seed", "1", "--target", str(target_dir)]
    fresh = tmp_path / "fresh"
    assert main(argv + ["--out", str(fresh)]) == 0
    run = tmp_path / "old"
    shutil.copytree(uninterrupted, run)
    _refused(capsys, argv, run, "seed: 0 → 1")
    assert main(argv + ["--restart", "--out", str(run)]) == 0
    assert (run / "results.json").read_bytes() == (fresh / "results.json").read_bytes()
    # the report links only what this run produced; the old run's tables are gone
    names = {p.name for p in run.iterdir()}
    assert "table_defend.csv" not in names and "figure3_saliency.png" in names
    assert "table_defend" not in (run / "report.md").read_text()
    assert json.loads((run / "config.json").read_text())["experiments"] == ["saliency"]


def test_two_processes_under_torchrun_write_what_one_process_writes(uninterrupted, tmp_path):
    """`torchrun --nproc_per_node=2 -m luring reproduce` (gloo on loopback): the models are
    the single-process run's (copied with its config), every unit is recomputed by the two
    processes, and results.json is byte-identical to the single-process run's."""
    import shutil
    import socket

    run = tmp_path / "two"
    shutil.copytree(uninterrupted, run, ignore=shutil.ignore_patterns(
        "units", "results.json", "timings.json", "report.md", "*.csv", "*.png", ".lock"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = json.loads((uninterrupted / "config.json").read_text())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "luring.cli.main",
           *CMD[3:], "--target", cfg["target_dir"], "--out", str(run)]
    proc = subprocess.run(cmd, env=_env() | {"LURING_BACKEND": "gloo"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    timings = json.loads((run / "timings.json").read_text())
    assert timings["processes"] == 2 and timings["units_run"]  # rank 0's share, and ...
    assert len(timings["units_reused"]) > 0  # ... the other rank's, found stored
    assert (run / "results.json").read_bytes() == (uninterrupted / "results.json").read_bytes()
    assert proc.stdout.count("report:") == 1  # one summary, from rank 0
