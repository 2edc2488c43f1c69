"""Run directory: exclusive lock, atomic units, resume, settings check, profiles."""

from __future__ import annotations

import json

import pytest
import torch

from luring.errors import LuringError
from luring.experiments.common import select_images, unit_seed
from luring.experiments.profiles import differences_from_paper, resolve_profile, step_size
from luring.experiments.store import RunDir


def test_second_process_is_refused(tmp_path):
    with RunDir(tmp_path):
        with pytest.raises(LuringError, match="in use by luring process"):
            with RunDir(tmp_path):
                pass
    with RunDir(tmp_path):  # released after the first one ends
        pass


def test_unit_is_stored_once_and_reused(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"a": torch.arange(3)}, {"k": 1.5, "s": "x"}

    with RunDir(tmp_path) as run:
        t1, m1 = run.unit("kind", "key/with spaces", fn)
        t2, m2 = run.unit("kind", "key/with spaces", fn)
    assert calls == [1]
    assert torch.equal(t1["a"], t2["a"]) and m1 == m2 == {"k": 1.5, "s": "x"}
    assert run.ran == ["kind/key/with spaces"] and run.reused == ["kind/key/with spaces"]
    files = list((tmp_path / "units" / "kind").iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".")


def test_failed_unit_leaves_nothing(tmp_path):
    def boom():
        raise RuntimeError("killed")

    with RunDir(tmp_path) as run:
        with pytest.raises(RuntimeError):
            run.unit("kind", "k", boom)
    assert not (tmp_path / "units" / "kind" / "k.safetensors").exists()


def test_changed_settings_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"settings": {"a": 1}}))
    with RunDir(tmp_path) as run:
        run.check_settings({"a": 1})
        with pytest.raises(LuringError, match="different settings"):
            run.check_settings({"a": 2})


def test_profiles():
    paper = resolve_profile("paper", "mnist")
    assert paper["eps"] == [0.2, 0.3, 0.4]
    assert paper["defend"]["mim_w"]["steps"] == 1000 and paper["defend"]["n"] == 1000
    assert len(paper["defend"]["mim_w"]["p_values"]) == 10
    assert resolve_profile("paper", "cifar10")["approaches"] == ["stack", "ce", "luring"]
    assert resolve_profile("paper", "svhn")["defend"]["eco"]["block_size"] == 8
    quick = resolve_profile("quick", "mnist")
    diffs = differences_from_paper(quick, "mnist-5k")
    assert any("mnist-5k" in d for d in diffs)
    assert any(d.startswith("defend.n = 50 (paper: 1000)") for d in diffs)
    # every approach's shortened P training is stated against appendix B
    assert "luring P trained 20 epochs, batch 32, Adam from 0.006 (cosine) (paper: 64 epochs, " \
        "batch 64, 0.001)" in diffs
    assert sum(" P trained " in d for d in diffs) == 4
    # the quick profile trains MNIST's M with appendix A's epochs, and cuts SVHN's/CIFAR10's
    assert quick["target"] == {} and not any(d.startswith("target.") for d in diffs)
    for family in ("svhn", "cifar10"):
        q = resolve_profile("quick", family)
        assert "target.epochs = 3 (overrides the paper's default)" in \
            differences_from_paper(q, family)
    # the paper profile departs from the paper only where Stack would not train otherwise
    assert [d[:6] for d in differences_from_paper(paper, "mnist")] == ["stack:"]
    assert step_size("2.5*eps/steps", 0.4, 10) == pytest.approx(0.1)
    with pytest.raises(LuringError):
        resolve_profile("fast", "mnist")


def test_unit_seed_and_selection():
    assert unit_seed(0, "a", 1) == unit_seed(0, "a", 1) != unit_seed(0, "a", 2)

    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # predicts class 1 when the first pixel > 0.5
            v = x.flatten(1)[:, :1]
            return torch.cat([0.5 - v, v - 0.5], 1) + 0 * self.w

    x = torch.rand(50, 1, 2, 2)
    y = (x.flatten(1)[:, 0] > 0.5).long()
    y[:10] = 1 - y[:10]  # the first ten are misclassified
    idx = select_images(x, y, [Const()], 20, seed=3)
    assert len(idx) == 20 and (idx >= 10).all() and len(set(idx.tolist())) == 20
    assert torch.equal(idx, select_images(x, y, [Const()], 20, seed=3))
