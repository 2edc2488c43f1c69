"""Smoke tests of ``luring bench``: the whole benchmark code path at tiny sizes (JSON structure,
positive finite ratios, interleaving, memory, targets), the optional libraries' skip path and
the CLI's error path. The full benchmark is not run here."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from luring.benchmarks import libraries, preset
from luring.benchmarks.runner import FORMAT
from luring.benchmarks.timing import interleaved, rotation, schedule, stats
from luring.cli.main import main


def _finite_positive(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_tiny_run_writes_complete_json(tmp_path, monkeypatch, capsys):
    # libraries reported absent: exercises the graceful skip (and keeps the test fast)
    monkeypatch.setattr("luring.benchmarks.runner.available",
                        lambda: {name: None for name in libraries.LIBRARIES})
    out = tmp_path / "sub" / "bench.json"
    threads = torch.get_num_threads()
    assert main(["bench", "--tiny", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    cfg = preset("tiny")
    assert res["format"] == FORMAT and res["mode"] == "tiny"
    env = res["environment"]
    for key in ("device", "torch", "threads", "cpu_model", "libraries"):
        assert key in env
    assert env["threads"] == cfg.threads == 1  # tiny pins one thread ...
    assert torch.get_num_threads() == threads  # ... and restores the caller's
    # raw timings of every repetition, throughputs and their statistics
    transfer = ("nifgsm", "sinifgsm", "vmifgsm", "vnifgsm", "sia", "bsr")
    expected = {"bare_fwd_bwd_m", "bare_fwd_bwd_t", "bare_loop", "pgd", "mim", "dimti", "spsa",
                "bare_forward_spsa", "eco", "bare_forward_eco", "train_p", "bare_step_p",
                "train_m", "bare_step_m", "mimw_one_at_a_time", "mimw_batched", *transfer,
                "bare_loop_best", "bare_step_p_best", "bare_step_m_best"}
    assert set(res["contenders"]) == expected
    # precision: the tests' LURING_PRECISION (fp32) for luring; the best bare one measured
    assert res["precision"]["luring"] == "fp32" and res["precision"]["requested"] == "fp32"
    assert res["precision"]["best"] in ("fp32", "bf16")
    # the machine's peak and each contender's share of it, from counted FLOPs
    peak = res["peak"]
    assert peak["matmul_gflops"]["fp32"] > 0 and peak["flops_per_image"]["train_step_m"] > 0
    for name in ("bare_loop", "bare_loop_best", "mim", "train_p", "train_m"):
        frac = peak["contenders"][name]["fraction_of_peak"]
        assert 0 < frac < 5, (name, frac)   # tiny batches: a loose sanity bound
    # the batched MIM-W grid gives exactly the one-at-a-time results, every repetition
    assert res["mimw_same_results"] is True
    assert "mimw_batched_vs_one_at_a_time" in res["ratios"]
    for c in res["contenders"].values():
        assert len(c["seconds"]) == len(c["throughput"]) == cfg.reps
        assert all(_finite_positive(t) for t in c["throughput"])
        s = c["stats"]
        assert s["min"] <= s["median"] <= s["max"]
    # ratios: per repetition, positive and finite, with targets
    for key in ("pgd_vs_loop", "mim_vs_loop", "dimti_vs_loop", "spsa_vs_forward",
                "eco_vs_forward", "train_p_vs_step", "train_m_vs_step",
                *(f"{t}_vs_loop" for t in transfer)):
        r = res["ratios"][key]
        assert len(r["per_rep"]) == cfg.reps
        assert all(_finite_positive(v) for v in r["per_rep"])
    assert res["ratios"]["pgd_vs_loop"]["target"] == 0.9
    assert all(res["ratios"][f"{t}_vs_loop"]["target"] == 0.9 for t in transfer)
    # work = images x gradient evaluations: SI's 5 copies, VT's 1 + 20 per iteration
    per_run = {"mim": 1, "nifgsm": 1, "sinifgsm": 5, "vmifgsm": 21, "vnifgsm": 21, "sia": 5,
               "bsr": 5}
    for name, evals in per_run.items():
        assert res["contenders"][name]["work"] == [2 * cfg.batch * cfg.steps * evals] * cfg.reps
    assert isinstance(res["ratios"]["pgd_vs_loop"]["pass"], bool)
    # SPSA queries counted by the attack equal the bare forward's images
    assert res["contenders"]["spsa"]["work"] == res["contenders"]["bare_forward_spsa"]["work"]
    assert res["contenders"]["eco"]["work"] == res["contenders"]["bare_forward_eco"]["work"]
    # interleaving happened: each repetition runs each group as a palindrome of a rotated
    # order, so a contender and its baseline alternate in time
    inter = res["interleaving"]
    assert inter["interleaved"] is True
    groups = inter["groups"]
    assert ["bare_loop", "bare_loop_best", "pgd", "mim", "dimti", *transfer] in groups
    assert ["spsa", "bare_forward_spsa"] in groups
    assert inter["orders"][0] != inter["orders"][1]
    assert len(inter["events"]) == 2 * cfg.reps * len(expected)
    seq = [e["contender"] for e in inter["events"] if e["group"] == groups.index(
        ["spsa", "bare_forward_spsa"])]
    assert seq == ["spsa", "bare_forward_spsa", "bare_forward_spsa", "spsa",
                   "bare_forward_spsa", "spsa", "spsa", "bare_forward_spsa"][:len(seq)]
    starts = [e["start"] for e in inter["events"]]
    assert starts == sorted(starts)
    # memory: per contender and SPSA scaling in fresh processes
    mem = res["memory"]
    assert "method" in mem and set(mem["contenders"]) == expected
    sc = mem["spsa_scaling"]
    assert sc["samples"] == list(cfg.spsa_memory_samples) and not sc["errors"]
    assert all(_finite_positive(p) for p in sc["peak_rss_mb"])
    assert _finite_positive(sc["ratio_last_first"])
    # libraries skipped, with the reason; targets list covers everything
    assert set(res["skipped"]) == set(libraries.LIBRARIES)
    targets = {t["name"]: t for t in res["targets"]}
    assert targets["mim_vs_torchattacks"]["pass"] is None
    assert "not installed" in targets["mim_vs_art"]["note"]
    assert targets["spsa_memory_flat"]["pass"] in (True, False)
    assert targets["demo_wall_time"]["pass"] is None
    assert res["agreement"]["mim"]["success_rate"] >= 0
    printed = capsys.readouterr().out
    assert "median" in printed and "pgd_vs_loop" in printed and str(out) in printed


def test_bad_out_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["bench", "--tiny", "--out", str(blocker / "bench.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("luring: error:") and err.count("\n") == 1
    assert main(["bench", "--tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and err.count("\n") == 1
    assert not (tmp_path / "bench.json").exists()


def test_rotation_schedule_and_interleaving_check():
    names = ["a", "b", "c"]
    assert [rotation(names, r) for r in range(3)] == [["a", "b", "c"], ["b", "c", "a"],
                                                      ["c", "a", "b"]]
    groups = [names, ["x", "y"]]
    plan = [schedule(groups, r) for r in range(2)]
    assert plan[0] == [(0, ["a", "b", "c", "c", "b", "a"]), (1, ["x", "y", "y", "x"])]
    orders = [[seq for _, seq in p] for p in plan]
    assert interleaved(groups, orders)
    blocked = [[["a", "b", "c", "c", "b", "a"], ["x", "y", "y", "x"]]] * 2  # no rotation
    assert not interleaved(groups, blocked)
    assert not interleaved(groups, [[["a", "a", "b", "b", "c", "c"], ["x", "y", "y", "x"]]])
    assert stats([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}


def test_absent_library_is_reported_none(monkeypatch):
    monkeypatch.setattr(libraries, "LIBRARIES",
                        {"nope": ("no-such-dist", "no_such_module_luring_bench")})
    assert libraries.available() == {"nope": None}


@pytest.mark.parametrize("name, module", [("torchattacks_mifgsm", "torchattacks"),
                                          ("art_mim", "art")])
def test_library_contender_runs_when_installed(name, module):
    pytest.importorskip(module)
    from luring.benchmarks.env import build_env
    from luring.benchmarks.workloads import build_contender

    cfg = dataclasses.replace(preset("tiny"), batch=2, steps=1, agree_images=2)
    env = build_env(cfg, torch.device("cpu"), 0)
    assert build_contender(name, env).run() == 2.0
    agree = libraries.agreement(env, [name])
    assert 0 <= agree[name]["same_outcome"] <= 1
    assert agree[name]["max_abs_pixel_difference"] <= 2 * cfg.eps
