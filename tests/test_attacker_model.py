"""Issue #24 in the experiments: SIA/BSR and T+S ensembles as worst-case settings, the
adaptive unit's parts, the breakdown of a worst case, the profiles and their disclosure, and
the report's tables (the whole run: test_experiments_reproduce)."""

from __future__ import annotations

import pytest
import torch

from luring.attacks import Ensemble, bpda, worst_case_search
from luring.experiments.disclosure import attacker_lines
from luring.experiments.family import breakdown, ensemble_settings, family_unit, transform_settings
from luring.experiments.profiles import resolve_profile
from luring.experiments.public import judge, public_settings
from luring.report.adaptive import broken_by_table
from tests.helpers import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 12, seed: int = 3):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return x, tiny(0)(x).argmax(1)


@pytest.mark.parametrize("mode", ["logits", "loss"])
def test_ensemble_of_the_model_with_itself_is_the_plain_search(mode):
    model, target = tiny(0), tiny(1)
    x, y = _data()
    common = dict(steps=4, alpha=0.05, seed=5, progress=False, loss="margin", kappa=5.0,
                  settings=[{"attack": "mim"}, {"attack": "dim", "p": 1.0}])
    plain = worst_case_search(model, target, x, y, 0.2, **common)
    ens = worst_case_search(model, target, x, y, 0.2, **common,
                            grad_model=Ensemble([model, model], mode=mode))
    # 0.5·z + 0.5·z = z and 0.5·L + 0.5·L = L exactly: the same pixels, setting by setting
    assert torch.equal(plain.best_x_adv, ens.best_x_adv)
    assert torch.equal(plain.defended_all, ens.defended_all)
    assert [(r.ac_mop, r.ac_m, r.dac) for r in plain.settings] == \
        [(r.ac_mop, r.ac_m, r.dac) for r in ens.settings]
    assert ens.settings[0].params["grad_model"] == "Ensemble"


def test_loss_mode_ensemble_differs_from_logits_mode_with_two_models():
    model, other, target = tiny(0), tiny(2), tiny(1)
    x, y = _data()
    runs = [worst_case_search(model, target, x, y, 0.2, steps=4, alpha=0.05, seed=5,
                              progress=False, settings=[{"attack": "mim"}],
                              grad_model=Ensemble([model, other], mode=m))
            for m in ("logits", "loss")]
    assert not torch.equal(runs[0].best_x_adv, runs[1].best_x_adv)


def test_transform_settings_take_their_own_steps_and_step_size():
    model, target = tiny(0), tiny(1)
    x, y = _data()
    res = worst_case_search(model, target, x, y, 0.3, steps=50, alpha=0.001, seed=1,
                            progress=False, settings=[
                                {"attack": "sia", "steps": 3, "alpha": None, "num_copies": 2},
                                {"attack": "bsr", "num_copies": 2}])
    sia, bsr = (r.params for r in res.settings)
    assert sia["steps"] == 3 and sia["alpha"] == pytest.approx(0.1) and sia["num_copies"] == 2
    assert bsr["steps"] == 50 and bsr["alpha"] == pytest.approx(0.001)
    assert res.best_x_adv.sub(x).abs().max() <= 0.3 + 1e-6


def test_family_unit_parts_and_their_worst_case():
    model, target, attacker = tiny(0), tiny(1), tiny(2)
    x, y = _data()
    cfg = {"steps": 3, "step_size": 0.05, "mu": 1.0, "kappa": 5.0, "p_values": [1.0],
           "kernel_sizes": [], "transfer_attacks": [{"attack": "ni-fgsm"}],
           "passes": [["margin", "bpda"]],
           "transforms": [{"attack": "sia", "num_copies": 2}],
           "attacker": {"ensemble": {"weights": [0.5, 0.5], "settings": [{"attack": "mim"}],
                                     "passes": [["margin", "bpda", "logits"]]}}}
    t, meta = family_unit(model, target, x, y, 0.3, cfg, 7, attacker)
    assert meta["parts"] == ["family", "transforms", "ensemble"]
    for k in ("t_ok", "m_ok", "defended"):
        every = t[f"part_family_{k}"] & t[f"part_transforms_{k}"] & t[f"part_ensemble_{k}"]
        assert torch.equal(t[f"all_{k}"], every)
    assert {s["part"] for s in meta["per_setting"]} == {"family", "transforms", "ensemble"}
    # without the attacker and the transforms the unit is the family alone, as before
    plain = {k: v for k, v in cfg.items() if k not in ("transforms", "attacker")}
    t0, m0 = family_unit(model, target, x, y, 0.3, plain, 7)
    assert m0["parts"] == ["family"]
    assert torch.equal(t0["all_defended"], t["part_family_defended"])
    # the ensemble part is T (through BPDA) and S, attacked on T's predictions
    res = worst_case_search(model, target, x, y, 0.3, steps=3, alpha=0.05, seed=7,
                            progress=False, loss="margin", kappa=5.0,
                            settings=[{"attack": "mim"}],
                            grad_model=Ensemble([bpda(model), attacker], [0.5, 0.5]))
    assert torch.equal(res.defended_all, t["part_ensemble_defended"])


def test_breakdown_by_hand():
    T, F = True, False

    def b(defended, m_ok):
        return {"t_ok": torch.zeros(4, dtype=torch.bool),
                "m_ok": torch.tensor(m_ok), "defended": torch.tensor(defended)}

    out = breakdown({"a": [b([F, F, T, T], [F, F, T, T])],
                     "b": [b([F, T, F, T], [T, T, F, T])]})
    assert out["a"] == {"dac": 0.5, "ac_m": 0.5, "broke": 0.5, "only": 0.25, "n": 4}
    assert out["b"] == {"dac": 0.5, "ac_m": 0.75, "broke": 0.5, "only": 0.25, "n": 4}
    assert out["all"] == {"dac": 0.25, "ac_m": 0.25, "n": 4}
    # seeds pool: two seeds of two examples give the same figures
    two = breakdown({"a": [b([F, F, T, T], [F, F, T, T])] * 2})
    assert two["a"]["n"] == 8 and two["a"]["dac"] == 0.5 and two["a"]["only"] == 0.5


def test_public_judge_is_the_worst_case_over_crafted_sets():
    model, target = tiny(0), tiny(1)
    x, y = _data(6)
    crafted = [x, x.flip(-1)]
    out = judge(model, target, crafted, y)
    for xa in crafted:
        tp, mp = model(xa).argmax(1), target(xa).argmax(1)
        assert not (out["defended"] & ~((mp == y) | (tp != mp))).any()
    tp = [model(xa).argmax(1) for xa in crafted]
    assert torch.equal(out["t_ok"], (tp[0] == y) & (tp[1] == y))


@pytest.mark.parametrize("profile", ["paper", "standard", "quick", "smoke"])
def test_profiles_put_the_new_attacks_in_the_adaptive_family(profile):
    cfg = resolve_profile(profile, "mnist")["adaptive"]
    names = {t["attack"] for t in transform_settings(cfg)}
    assert names == ({"sia"} if profile in ("smoke", "quick") else {"sia", "bsr"})
    ens = cfg["attacker"]["ensemble"]
    assert ens["weights"] == [0.5, 0.5] and cfg["attacker"]["public"] is True
    assert all(mode in ("logits", "loss") for _, _, mode in ens["passes"])
    settings = ensemble_settings(cfg)
    if profile == "paper":   # the whole family and the transforms, all three passes
        assert len(settings) == 55 + 4 + 2 and len(ens["passes"]) == 3
        assert all(t["steps"] == 10 and t["alpha"] is None and t["num_copies"] == 20
                   for t in cfg["transforms"])
        assert not any(line.startswith(("SIA", "BSR")) for line in attacker_lines(cfg))
    else:
        assert settings[0] == {"attack": "mim"}
        # a departure from SIA's and BSR's papers is disclosed
        assert any(line.startswith("SIA") for line in attacker_lines(cfg))
    assert any("attacker's own model S" in line for line in attacker_lines(cfg))
    assert public_settings(cfg)[-1]["attack"] == ("sia" if profile in ("smoke", "quick")
                                                  else "bsr")


def test_broken_by_table_from_hand_made_results():
    bb = {"family": {"dac": 0.8, "ac_m": 0.7, "broke": 0.2, "only": 0.1, "n": 10},
          "ensemble": {"dac": 0.6, "ac_m": 0.5, "broke": 0.4, "only": 0.3, "n": 10},
          "all": {"dac": 0.5, "ac_m": 0.4, "n": 10}}
    res = {"rows": [{"experiment": "adaptive", "attack": "adaptive-worst",
                     "approach": "luring", "eps": 0.3, "n": 10, "broken_by": bb}]}
    md = broken_by_table(res)
    assert "| Luring | 0.300 | 10 | 0.800 (0.200 / 0.100) | 0.600 (0.400 / 0.300) | 0.500 |" \
        in md
    assert "T alone" in md and "T+S ensemble" in md and "SIA/BSR" not in md
    assert broken_by_table({"rows": []}) == ""
