"""Run directory: exclusive lock, atomic units, resume, settings check, profiles."""

from __future__ import annotations

import json

import pytest
import torch

from luring.errors import LuringError
from luring.experiments.common import unit_seed
from luring.experiments.context import select_images
from luring.experiments.disclosure import differences_from_paper
from luring.experiments.profiles import resolve_profile, step_size
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


def test_changed_identity_is_refused_with_what_differs(tmp_path):
    ident = {"dataset": "mnist-5k", "seed": 0, "settings": {"defend": {"n": 50}}}
    (tmp_path / "config.json").write_text(json.dumps({"identity": ident}))
    with RunDir(tmp_path) as run:
        assert run.check_identity(ident) == {"identity": ident}
        other = {"dataset": "fashion-mnist", "seed": 0, "settings": {"defend": {"n": 20}}}
        with pytest.raises(LuringError) as err:
            run.check_identity(other)
    msg = str(err.value)
    assert 'dataset: "mnist-5k" → "fashion-mnist"' in msg and "settings.defend.n: 50 → 20" in msg
    assert "--restart" in msg and "\n" not in msg and "seed" not in msg


def test_directory_from_an_older_version_or_without_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"settings": {"a": 1}}))
    with RunDir(tmp_path) as run, pytest.raises(LuringError, match="older luring"):
        run.check_identity({"settings": {"a": 1}})
    (tmp_path / "config.json").unlink()
    (tmp_path / "units").mkdir()
    with RunDir(tmp_path) as run, pytest.raises(LuringError, match="no config.json"):
        run.check_identity({"a": 1})


def test_restart_clears_everything_but_the_lock(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "units" / "k").mkdir(parents=True)
    (tmp_path / "units" / "k" / "u.safetensors").write_bytes(b"x")
    (tmp_path / ".trash-1").mkdir()  # left by a killed restart
    with RunDir(tmp_path, restart=True) as run:
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
        assert run.check_identity({"a": 1}) is None


def test_unit_made_for_another_identity_is_recomputed(tmp_path):
    calls = []

    def fn(v):
        def f():
            calls.append(v)
            return {"a": torch.tensor([v])}, {"v": v}
        return f

    idx = torch.arange(4)
    with RunDir(tmp_path) as run:
        run.unit("kind", "k", fn(1), {"indices": idx, "seed": 0})
        t, m = run.unit("kind", "k", fn(2), {"indices": idx.clone(), "seed": 0})  # same
        assert calls == [1] and m == {"v": 1}
        t, m = run.unit("kind", "k", fn(3), {"indices": idx + 1, "seed": 0})
        assert calls == [1, 3] and m == {"v": 3} and t["a"].tolist() == [3]
        assert run.recomputed == ["kind/k"]
        # the replacement is what is reused next
        t, m = run.unit("kind", "k", fn(4), {"indices": idx + 1, "seed": 0})
        assert calls == [1, 3] and m == {"v": 3}


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
    assert any(d.startswith("defend.n = 200 (paper: 1000)") for d in diffs)
    # every approach's shortened P training is stated against appendix B
    assert "luring P trained 20 epochs, batch 32, Adam from 0.006 (cosine) (paper: 64 epochs, " \
        "batch 64, 0.001)" in diffs
    assert sum(" P trained " in d for d in diffs) == 4
    # the quick profile trains MNIST's M with appendix A's epochs, and cuts SVHN's/CIFAR10's
    assert quick["target"] == {"max_steps": 4000}  # 643 steps on mnist-5k: not binding
    assert "M trained at most 4,000 optimisation steps (appendix A: fixed epochs; the budget " \
        "binds only on data sets larger than mnist-5k)" in diffs
    for family in ("svhn", "cifar10"):
        q = resolve_profile("quick", family)
        assert "target.epochs = 3 (overrides the paper's default)" in \
            differences_from_paper(q, family)
    # the paper profile departs from the paper only where Stack would not train otherwise
    pd = differences_from_paper(paper, "mnist")
    assert any(d.startswith("stack:") for d in pd)
    assert any(d.startswith("luring loss (eq. 2): class b") for d in pd)
    assert not any("overrides the paper's default" in d for d in pd)
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


def test_aggregate_over_seeds_pools_examples_and_keeps_every_seed():
    from luring.experiments.common import aggregate
    from luring.metrics import Rate
    from luring.utils import wilson_interval

    # seed 3: 6 of 10 defended; seed 4: 1 of 5 (different n, as characterize's masks give)
    row = aggregate("characterize", "luring", "mim", 0.3,
                    [{"dr": Rate.of(6, 10)}, {"dr": Rate.of(1, 5)}], seeds=[3, 4])
    assert row["dr"] == pytest.approx(7 / 15) and row["n"] == 15
    assert row["ci"]["dr"] == pytest.approx(list(wilson_interval(7, 15)))
    assert row["mean"]["dr"] == pytest.approx(0.4)
    assert row["std"]["dr"] == pytest.approx(((0.6 - 0.4) ** 2 + (0.2 - 0.4) ** 2) ** 0.5)
    assert row["per_seed"]["dr"] == [{"seed": 3, "value": 0.6, "k": 6, "n": 10},
                                     {"seed": 4, "value": 0.2, "k": 1, "n": 5}]
    assert row["n_per_seed"] == [10, 5]
    # one seed: the plain rate, its n and interval, and nothing per seed
    one = aggregate("defend", "ce", "spsa", 0.2, [{"dac": Rate.of(3, 4)}], seeds=[0])
    assert one["dac"] == 0.75 and one["n"] == 4 and "per_seed" not in one and "std" not in one
    assert one["ci"]["dac"] == pytest.approx(list(wilson_interval(3, 4)))


def test_rates_of_reads_a_units_prefixed_outcomes():
    from luring.experiments.common import rates_of

    b = torch.tensor
    unit = {"best_t_ok": b([True, False, False, False]), "best_m_ok": b([True, True, False, True]),
            "best_defended": b([True, True, True, False]),
            "t_ok": b([False, False]), "m_ok": b([True, False]), "defended": b([True, True])}
    best = rates_of(unit, "best")
    assert (best["ac_mop"].k, best["ac_m"].k, best["dac"].k) == (1, 3, 3)
    assert best["dac"].n == 4 and best["dac"].value == 0.75
    plain = rates_of(unit)
    assert (plain["ac_mop"].k, plain["ac_m"].k, plain["dac"].k, plain["dac"].n) == (0, 1, 2, 2)
    with pytest.raises(KeyError):
        rates_of(unit, "all")


def test_model_reuse_is_recorded(tmp_path):
    built = []

    def build(d):
        built.append(1)
        (d / "model.json").write_text("{}")

    with RunDir(tmp_path) as run:
        run.model("m", {"a": 1}, build, marker="model.json")
        assert run.models_reused == []
    with RunDir(tmp_path) as run:  # a later invocation finds it
        run.model("m", {"a": 1}, build, marker="model.json")
        assert run.models_reused == ["m"] and built == [1]
