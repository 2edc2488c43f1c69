"""The report's "Differences from the paper": complete for every profile (the paper's included)
and generated from the resolved settings, so that changing one setting makes its line appear
or disappear."""

from __future__ import annotations

import copy

import pytest

from luring.defense import settings as defense_settings_module
from luring.experiments import disclosure
from luring.experiments.disclosure import differences_from_paper
from luring.experiments.profiles import resolve_profile
from luring.models import train as target_train

CLASS_B = "luring loss (eq. 2): class b is T's top class among the classes ≠ M(x)"
HELD_OUT = "P: fitted to 90% of the training images, keeping the checkpoint whose T agrees"
HE = "P initialised with He normal weights and zero biases"


def diffs(profile: str = "paper", family: str = "mnist", dataset: str | None = None,
          **changes) -> list[str]:
    """The lines for ``profile``/``family`` after ``changes`` (``section={key: value}``
    merged into the resolved profile)."""
    s = resolve_profile(profile, family)
    for section, values in changes.items():
        if isinstance(s.get(section), dict):
            target = s[section]
            for k, v in values.items():
                if isinstance(v, dict) and isinstance(target.get(k), dict):
                    target[k].update(v)
                else:
                    target[k] = v
        else:
            s[section] = values
    return differences_from_paper(s, dataset or family)


def has(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)


@pytest.mark.parametrize("family", ["mnist", "svhn", "cifar10"])
def test_paper_profile_states_every_departure(family):
    lines = diffs("paper", family)
    assert all(isinstance(d, str) and "\n" not in d for d in lines)
    assert has(lines, CLASS_B) and has(lines, "Algorithm 1 line 6 says T's second class")
    assert has(lines, "stack, ce, luring " + HELD_OUT)
    assert has(lines, HE)
    assert has(lines, "stack: P+M trained with He initialisation and a one-epoch learning-rate "
                      "warm-up added to appendix B's schedule")
    text_lr = {"mnist": "0.01", "svhn": "0.01",
               "cifar10": "0.1, 0.01, 0.001 (after epochs 80 and 120)"}[family]
    assert has(lines, f"(one tenth, as in the authors' code) (appendix A's text: {text_lr})")
    batch = {"mnist": 256, "svhn": 256, "cifar10": 512}[family]
    assert f"ECO searches {batch} blocks at a time (as the authors ran it on {family}; F.1 " \
        "does not state it)" in lines
    assert has(lines, "ECO minimises the untargeted cross-entropy")
    assert not has(lines, "early stop") and not has(lines, "defend.")  # F.1's budget and sizes
    assert not has(lines, "overrides the paper's default")
    if family == "cifar10":
        assert "M (cifar10-target) with dropout 0.25 before its dense layers (not in appendix "\
            "A; the authors' code)" in lines
        assert has(lines, "M trained on randomly rotated (±10°) and shifted (±15.6% of the side)")
        assert has(lines, "stack, ce, luring P: label-free random shifts (±15.6% of the side) "
                          "and rotations (±10°)")
        assert has(lines, 'ce, luring P with dropout 0.3 (appendix B: "Dropout is used", no '
                          'value given)')
        assert has(lines, "stack P trained 200 epochs, batch 32, Adam from 0.01 (piecewise) "
                          "(paper: 200 epochs, batch 32, 0.1; Adam at the text's rates does "
                          "not train P+M")
        assert not has(lines, "auto")
    else:
        assert not has(lines, "dropout 0.25") and not has(lines, "label-free random shifts")
        assert not has(lines, " P trained ")  # appendix B's schedules, as written
    if family == "svhn":
        assert has(lines, 'luring P with dropout 0.15 (appendix B: "Dropout is used"')


def test_target_lines_follow_the_settings_and_the_table(monkeypatch):
    line = "M trained with Adam at 0.001 (one tenth, as in the authors' code)"
    assert has(diffs(), line)
    # the code's default set to the text's rate: no line
    monkeypatch.setitem(target_train._PAPER, "mnist", {**target_train._PAPER["mnist"],
                                                       "lrs": (1e-2,)})
    assert not has(diffs(), "M trained with Adam")
    monkeypatch.undo()
    # the paper's table is the other side of the comparison
    monkeypatch.setitem(disclosure.PAPER["target"], "mnist",
                        {**disclosure.PAPER["target"]["mnist"], "lrs": (1e-3,)})
    assert not has(diffs(), "M trained with Adam")
    monkeypatch.undo()
    # an override is stated once, as an override
    lines = diffs(target={"lr": 5e-4})
    assert "target.lr = 0.0005 (overrides the paper's default)" in lines
    assert not has(lines, "M trained with Adam")
    lines = diffs(target={"epochs": 7})
    assert "target.epochs = 7 (overrides the paper's default)" in lines
    assert not has(lines, "M trained 7 epochs")
    monkeypatch.setitem(target_train._PAPER, "svhn", {**target_train._PAPER["svhn"],
                                                      "epochs": 5})
    assert has(diffs("paper", "svhn"), "M trained 5 epochs, batch 28 (appendix A: 50 epochs, "
                                       "batch 28)")


def test_adversarial_training_step(monkeypatch):
    # H.2: 40 steps of 0.1 at ε = 0.3 on MNIST — the default, so nothing to state
    assert not has(diffs(target={"adv_train": True}), "adversarially")
    monkeypatch.setitem(target_train._ADV, "mnist", (0.3, 40, 0.01))
    assert "M adversarially trained with PGD ε = 0.3, 40 steps of 0.01 (appendix H.2: ε = 0.3, "\
        "40 steps of 0.1)" in diffs(target={"adv_train": True})


def test_defense_lines_follow_the_settings(monkeypatch):
    base = diffs()
    assert has(base, HELD_OUT) and has(base, HE) and not has(base, "moving average")
    lines = diffs(defense={"val_fraction": 0.0})
    assert not has(lines, "fitted to") and "defense.val_fraction = 0.0 (overrides the paper's "\
        "default)" in lines
    lines = diffs(defense={"val_fraction": 0.2, "eval_every": 50})
    assert has(lines, "fitted to 80% of the training images, keeping the checkpoint whose T "
                      "agrees most with M on the other 20% (evaluated every 50 steps)")
    lines = diffs(defense={"init": "glorot"})
    assert not has(lines, HE)
    assert has(lines, "stack: P+M trained with a one-epoch learning-rate warm-up added")
    lines = diffs(defense={"ema": 0.99})
    assert "stack, auto, ce, luring P kept as an exponential moving average (decay 0.99) of " \
        "its weights and batch-norm statistics (not in the paper)" in lines
    assert "luring λ = 0.5 (appendix C: 1)" in diffs(defense={"lambda": 0.5})
    assert not has(diffs(), "λ =")
    assert 'luring P with no dropout (appendix B: "Dropout is used", no value given)' in \
        diffs("paper", "svhn", defense={"dropout": 0.0})
    assert "stack, auto, ce, luring P with dropout 0.2 (not in appendix B)" in \
        diffs(defense={"dropout": 0.2})
    assert not has(diffs("paper", "cifar10", defense={"augment": {"shift": 0, "rotate": 0}}),
                   "label-free")
    monkeypatch.setattr(defense_settings_module, "_PAPER_AUGMENT", {})
    assert not has(diffs("paper", "cifar10"), "label-free")
    monkeypatch.undo()
    # CIFAR10 Stack's rate set back to the text's 0.1: its schedule line goes
    assert has(diffs("paper", "cifar10"), "stack P trained 200 epochs")
    key = ("cifar10", "stack")
    monkeypatch.setitem(defense_settings_module.APPENDIX_B, key,
                        {**defense_settings_module.APPENDIX_B[key], "lr": 0.1,
                         "lr_milestones": [[80, 0.01], [120, 0.001]]})
    assert not has(diffs("paper", "cifar10"), "stack P trained")


def test_class_b_line_only_with_luring():
    assert has(diffs(), CLASS_B)
    assert not has(diffs(approaches=["stack", "ce"]), CLASS_B)


def test_attack_lines_follow_the_settings():
    lines = diffs(defend={"eco": {"loss": "margin", "block_batch": 64, "early_stop": True}})
    assert "ECO minimises the margin objective (F.1 does not state ECO's objective; Moon et " \
        "al.'s reference code and the authors' scripts use the untargeted cross-entropy)" in lines
    assert "ECO searches 64 blocks at a time (the authors ran 256 on mnist; F.1 does not state " \
        "it)" in lines
    assert has(lines, "ECO stops each image at its first success")
    assert not has(lines, "defend.eco")  # stated once, by the lines above
    assert not has(diffs(), "first success")
    assert "SPSA δ = 0.02 (the authors' code: 0.01; F.1 does not state it)" in \
        diffs(defend={"spsa": {"delta": 0.02}})
    assert "defend.eco.max_queries = 100 (paper: 20000)" in \
        diffs(defend={"eco": {"max_queries": 100}})


def test_quick_and_smoke_keep_their_lines():
    quick = diffs("quick", "mnist", "mnist-5k")
    assert "luring P trained 20 epochs, batch 32, Adam from 0.006 (cosine) (paper: 64 epochs, " \
        "batch 64, 0.001)" in quick
    assert sum(" P trained " in d for d in quick) == 4
    assert has(quick, "defend.n = 200 (paper: 1000)") and has(quick, "mnist-5k (4,000 training")
    assert has(quick, "ce, luring P kept as an exponential moving average (decay 0.995)")
    assert has(quick, "ce P: label-free random shifts (±8% of the side)")
    assert has(quick, "quick profile (mnist-5k, 2-core CPU")
    smoke = diffs("smoke", "mnist", "mnist-5k")
    assert "each P trained on 600 training images only" in smoke
    assert "luring P trained 1 epoch, batch 32, Adam from 0.006 (cosine) (paper: 64 epochs, " \
        "batch 64, 0.001)" in smoke
    assert not has(smoke, "quick profile (mnist-5k")  # its P settings are overridden


def test_data_lines():
    assert has(diffs("paper", "mnist", "fashion-mnist"),
               "data: fashion-mnist, which the paper does not use; it gets the mnist settings")
    assert not has(diffs("paper", "mnist", "mnist"), "data:")


def test_settings_are_not_modified():
    s = resolve_profile("quick", "cifar10")
    before = copy.deepcopy(s)
    differences_from_paper(s, "cifar10")
    assert s == before
