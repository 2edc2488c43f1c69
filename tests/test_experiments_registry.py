"""Experiments are plug-ins: one module with ``run(ctx)`` and ``departures(settings)``,
registered in one place, is a new experiment of ``luring reproduce`` (its rows, sections,
departures and per-example outcomes merged into the run's results)."""

from __future__ import annotations

import types

import pytest

from luring.errors import LuringError
from luring.experiments import registry
from luring.experiments.context import Result
from luring.experiments.reproduce import reproduce
from luring.models import save_checkpoint
from luring.utils import read_json

pytestmark = pytest.mark.slow


def _probe_module() -> types.ModuleType:
    """An experiment measuring M's and the luring T's clean accuracy on 16 eligible images."""
    mod = types.ModuleType("probe_experiment")
    mod.SUMMARY = "a probe"
    mod.APPROACHES = ("luring",)
    mod.SHARDED = False
    mod.seen = {}

    def run(ctx):
        x, y, ident = ctx.images(16, "probe")
        t = ctx.defenses["luring"][ctx.seed].augmented
        mod.seen.update(approaches=sorted(ctx.defenses), final=ctx.final, n=len(x),
                        outcomes=dict(ctx.outcomes))
        t_ok = t(x).argmax(1).cpu() == y.cpu()
        m_ok = ctx.target(x).argmax(1).cpu() == y.cpu()
        return Result(rows=[{"experiment": "probe", "approach": "luring", "attack": "none",
                             "eps": None, "n": len(x), "ac_mop": float(t_ok.float().mean()),
                             "ac_m": float(m_ok.float().mean()), "dac": None, "dr": None,
                             "iar": None, "ci": {}}],
                      sections={"probe": {"n": len(x)}},
                      outcomes={(ctx.seed, "luring", "probe", 0.0):
                                {"t_ok": t_ok, "m_ok": m_ok, "defended": m_ok}},
                      departures=["probe: measured after the run"])

    mod.run = run
    mod.departures = lambda settings: [f"probe: {settings['profile']} profile"]
    return mod


@pytest.fixture()
def probe():
    mod = _probe_module()
    registry.register("probe", mod)
    yield mod
    registry.unregister("probe")


def test_a_registered_module_is_an_experiment_of_the_run(tmp_path, probe,
                                                        trained_mnist_target):
    model, _, _ = trained_mnist_target
    tdir = tmp_path / "m"
    save_checkpoint(model, tdir, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k")
    out = tmp_path / "run"
    assert "probe" in registry.names(default=False)
    assert "probe" not in registry.names(default=True)
    res = reproduce("mnist-5k", out, profile="smoke", device="cpu", target_dir=str(tdir),
                    experiments=("probe",), log=lambda m: None)
    # it ran once, in the final pass, with only the approaches it asked for trained
    assert probe.seen["approaches"] == ["luring"] and probe.seen["final"]
    assert probe.seen["n"] == 16 and probe.seen["outcomes"] == {}
    assert not (out / "models" / "stack-s0").exists()
    assert [r["experiment"] for r in res["rows"]] == ["probe"]
    assert res["probe"] == {"n": 16} and 0.0 <= res["rows"][0]["ac_m"] <= 1.0
    # its departures follow the protocol's, the static line then the measured one
    assert res["differences_from_paper"][-2:] == ["probe: smoke profile",
                                                  "probe: measured after the run"]
    assert read_json(out / "config.json")["experiments"] == ["probe"]
    # its outcome is not an attack of the verdict: no verdict row names it
    assert all(v["attack"] != "probe" for v in res.get("verdict", []))
    # the probe's accuracy is M's on images M classifies correctly: all of them
    assert res["rows"][0]["ac_m"] == 1.0


def test_registry_refuses_duplicates_and_modules_without_run():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("defend", types.ModuleType("x"))
    bare = types.ModuleType("bare")
    with pytest.raises(ValueError, match="no run"):
        registry.register("bare", bare)
    assert "bare" not in registry.names()


def test_unknown_experiment_names_the_registered_ones(tmp_path):
    with pytest.raises(LuringError, match="unknown experiment.*choose from characterize"):
        reproduce("mnist-5k", tmp_path / "r", profile="smoke", experiments=("nope",),
                  log=lambda m: None)
