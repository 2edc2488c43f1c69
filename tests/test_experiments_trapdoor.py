"""Appendix I (table 20): the transfer search with a pluggable detector, and the ``trapdoor``
experiment's smoke profile end to end (model, units, the stated DAC definition, report)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from luring.cli.main import main
from luring.experiments.search import search_settings, transfer_search
from luring.models import predict_labels, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = {"steps": 2, "step_size": "2.5*eps/steps", "mu": 1.0, "p_values": [1.0],
       "kernel_sizes": [5]}


@pytest.fixture(scope="module")
def images(trained_mnist_target):
    model, x_te, y_te = trained_mnist_target
    keep = predict_labels(model, x_te[:40]) == y_te[:40]
    return x_te[:40][keep][:10], y_te[:40][keep][:10]


def test_search_grid_is_fgsm_then_mimw():
    names = [s["attack"] for s in search_settings(CFG)]
    assert names == ["fgsm", "mim", "dim", "mim-ti", "dim-ti"]


def test_detector_decides_dac(trained_mnist_target, images):
    model, _, _ = trained_mnist_target
    x, y = images
    # source = target: the paper rule never flags, so DAC = AC_M and the best setting is
    # the one of lowest AC_M
    t, meta = transfer_search(model, model, x, y, 0.3, CFG, seed=1)
    assert torch.equal(t["best_defended"], t["best_m_ok"]) and not t["best_flagged"].any()
    assert torch.equal(t["rule_best_defended"], t["best_m_ok"])
    assert meta["rule_best"] == meta["best"]
    acs = [s["ac_m"] for s in meta["per_setting"]]
    assert meta["per_setting"][acs.index(min(acs))]["attack"] == meta["best"]["attack"]
    assert t["best_m_ok"].float().mean().item() == pytest.approx(min(acs))
    assert torch.equal(t["all_m_ok"], t["all_defended"])
    # a detector that flags everything defends every example under every setting
    t, meta = transfer_search(model, model, x, y, 0.3, CFG, seed=1,
                              flag=lambda xa: torch.ones(len(xa), dtype=torch.bool))
    assert t["best_defended"].all() and t["all_defended"].all()
    assert all(s["dac"] == 1.0 and s["flagged"] == 1.0 for s in meta["per_setting"])
    # ... while the paper's rule on the public model still gives DAC = AC_M
    assert all(s["dac_rule"] == s["ac_m"] for s in meta["per_setting"])
    assert torch.equal(t["rule_all_defended"], t["all_m_ok"])


def test_mimw_part_matches_worst_case_search(trained_mnist_target, images):
    """The MIM-W settings give exactly the defend experiment's search results."""
    from luring.attacks import worst_case_search
    from luring.experiments.profiles import mimw_settings

    model, _, _ = trained_mnist_target
    x, y = images
    source = torch.nn.Sequential(torch.nn.AvgPool2d(3, 1, 1), model).eval()  # another T
    _, meta = transfer_search(source, model, x, y, 0.2, CFG, seed=5)
    ref = worst_case_search(source, model, x, y, 0.2, steps=2, mu=1.0, alpha=0.25,
                            settings=mimw_settings(CFG), seed=5, progress=False)
    ours = meta["per_setting"][1:]
    assert [(s["ac_mop"], s["ac_m"], s["dac"]) for s in ours] == \
        [(r.ac_mop, r.ac_m, r.dac) for r in ref.settings]
    assert meta["per_setting"][0]["attack"] == "fgsm"


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_mnist_target):
    """``luring trapdoor --profile smoke`` with a given M."""
    model, _, _ = trained_mnist_target
    tdir = tmp_path_factory.mktemp("target")
    save_checkpoint(model, tdir, "model", architecture="mnist-target", input_shape=(1, 28, 28),
                    num_classes=10, dataset="mnist-5k", test_accuracy=None)
    out = tmp_path_factory.mktemp("run") / "a"
    assert main(["trapdoor", "--profile", "smoke", "--target", str(tdir), "--out", str(out),
                 "--device", "cpu"]) == 0
    return out


def test_smoke_results_and_dac_definition(run):
    from safetensors.torch import load_file

    res = json.loads((run / "results.json").read_text())
    part = res["trapdoor"]
    assert part["n"] == 8 and part["eps"] == [0.2, 0.3, 0.4]
    assert part["settings"]["trap_epochs"] == 1 and part["settings"]["architecture"] == \
        "mnist-target"
    rows = {(r["approach"], r["attack"], r["eps"]): r for r in part["rows"]}
    assert len(rows) == 12
    for (a, attack, e), r in rows.items():
        assert r["n"] == 8 and r["dac"] >= r["ac_m"]
        if attack == "worst-case":  # per example, never better than the best setting
            best = rows[(a, "best", e)]
            for k in ("ac_mop", "ac_m", "dac"):
                assert r[k] <= best[k] + 1e-12
        else:
            assert r["setting"]["attack"] in ("fgsm", "mim", "dim", "mim-ti", "dim-ti")
            assert 0 <= r["detection_rate"] <= 1 and r["dac_rule"] >= r["ac_m"]
        if a == "luring":  # for T = M∘P the two readings are one
            assert r["dac_rule"] == r["dac"]
    # caught = flagged by the trapdoor's detector, or M right: checked on the stored examples
    t = load_file(run / "units" / "trapdoor" / "s0-trapdoor-eps0.3.safetensors")
    assert torch.equal(t["best_defended"], t["best_m_ok"] | t["best_flagged"])
    r = rows[("trapdoor", "best", 0.3)]
    assert r["dac"] == pytest.approx(t["best_defended"].float().mean().item())
    assert r["detection_rate"] == pytest.approx(t["best_flagged"].float().mean().item())
    assert "flags it" in part["dac_definition"]
    assert part["dac_definition"] in res["differences_from_paper"]
    clean = part["clean"]
    assert clean["n"] == 1000 and clean["heldout_n"] == 60 and clean["target_false_alarm"] == 0.05
    assert clean["heldout_false_alarm_rate"] == pytest.approx(3 / 60)
    meta = json.loads((run / "models" / "trapdoor-s0" / "defense.json").read_text())
    config = dict(meta["config"])
    assert config.pop("precision") == "fp32"      # what trained it (the tests' precision)
    assert meta["method"] == "trapdoor" and config == part["settings"]
    assert (run / "models" / "trapdoor-s0" / "identity.json").exists()


def test_smoke_report_and_csv(run):
    report = (run / "report.md").read_text()
    assert "(paper table 20)" in report and "(paper table 18)" not in report
    assert "Trapdoor DAC (not defined in the paper)" in report
    assert "| 0.300 | paper (full MNIST, 1,000 images) | 1000 | 0.00 | 0.54 | 0.94 | — | — | " \
           "0.13 | 0.69 | 0.75 |" in report
    with open(run / "table_trapdoor.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    best = next(r for r in rows if (r["approach"], r["attack"], r["eps"]) ==
                ("trapdoor", "best", "0.4"))
    assert (float(best["paper_ac_mop"]), float(best["paper_ac_m"]),
            float(best["paper_dac"])) == (0.0, 0.27, 0.87)
    assert float(best["dac_ci_low"]) <= float(best["dac"]) <= float(best["dac_ci_high"])
