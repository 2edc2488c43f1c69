"""What a run does differently from the paper, line by line, for the report's "Differences from
the paper".

Every line compares a *resolved* setting of the run (M's :func:`target_settings`, each
approach's :func:`defense_settings` with the profile's overrides, the profile's attack
parameters) with the paper's values (:mod:`luring.experiments.paper`), so changing a setting
makes its line appear or disappear. The one line with no setting behind it is the reading of
eq. 2's class b, fixed in :func:`luring.defense.loss.luring_classes`.
:func:`differences_from_paper` gives the protocol's lines (data, M, each P, the attacks'
parameters, the profile's overrides, the detector, the adaptive evaluation); each experiment
adds its own (``departures(settings)`` of its module, collected by
:mod:`luring.experiments.reproduce` in registry order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from luring.defense.build import CALIBRATION_FRACTION
from luring.defense.calibrate import DEFAULT_CONFIDENCE, DEFAULT_RULE, DEFAULT_TARGET_FPR
from luring.defense.settings import (
    QUICK_DATASET_NOTES,
    QUICK_NOTES,
    defense_settings,
    resolve_settings,
)
from luring.experiments.paper import PAPER, USED, num
from luring.experiments.profiles import approach_method, defense_profile, paper_profile
from luring.models.train import target_settings

__all__ = ["differences_from_paper", "disclosure", "target_lines", "defense_lines",
           "attack_lines", "attacker_lines"]

_CLASS_B = ("luring loss (eq. 2): class b is T's top class among the classes ≠ M(x), as in the "
            "authors' code; Algorithm 1 line 6 says T's second class — the two differ exactly "
            "when T(x) ≠ M(x)")


def _span(epochs: float) -> str:
    """``one-epoch``, ``0.5-epoch``: a warm-up's length as an adjective."""
    return "one-epoch" if epochs == 1 else f"{epochs:g}-epoch"


def _schedule(lrs: tuple[float, ...], milestones: tuple[int, ...]) -> str:
    if len(lrs) == 1:
        return num(lrs[0])
    after = " and ".join(str(m) for m in milestones)
    return f"{', '.join(num(v) for v in lrs)} (after epochs {after})"


def target_lines(settings: dict[str, Any]) -> list[str]:
    """M's departures from appendix A (and H.2 when adversarially trained). Settings the
    profile overrides (``settings["target"]``) are left to the generic override lines."""
    fam = settings["family"]
    if fam not in PAPER["target"]:  # ImageNet, a user's image folders: M comes from --target
        return [f"M is the user's model (--target); the paper's {fam} M is not trained here"
                + (" (appendix H.1: torchvision's MobileNetV2, 71.3% validation accuracy)"
                   if fam == "imagenet" else "")]
    over = dict(settings.get("target") or {})
    ts = target_settings(fam, **over)
    paper = PAPER["target"][fam]
    given = set(over) | ({"lrs"} if "lr" in over else set())
    out = []
    if not given & {"epochs", "batch_size"} and \
            (ts.epochs, ts.batch_size) != (paper["epochs"], paper["batch_size"]):
        out.append(f"M trained {ts.epochs} epochs, batch {ts.batch_size} (appendix A: "
                   f"{paper['epochs']} epochs, batch {paper['batch_size']})")
    if not given & {"lrs", "milestones"} and \
            (tuple(ts.lrs), tuple(ts.milestones)) != (paper["lrs"], paper["milestones"]):
        ratio = " (one tenth, as in the authors' code)" if all(
            abs(a - b / 10) <= 1e-12 for a, b in zip(ts.lrs, paper["lrs"], strict=False)) \
            and len(ts.lrs) == len(paper["lrs"]) else ""
        out.append(f"M trained with Adam at {_schedule(ts.lrs, ts.milestones)}{ratio} "
                   f"(appendix A's text: {_schedule(paper['lrs'], paper['milestones'])})")
    if "dropout" not in given and ts.dropout != paper["dropout"]:
        out.append(f"M ({ts.architecture}) with dropout {num(ts.dropout)} before its dense "
                   "layers (not in appendix A; the authors' code)")
    if not given & {"rotation_deg", "shift"} and \
            (ts.rotation_deg, ts.shift) != (paper["rotation_deg"], paper["shift"]):
        out.append(f"M trained on randomly rotated (±{num(ts.rotation_deg)}°) and shifted "
                   f"(±{100 * ts.shift:.3g}% of the side) images (not in appendix A; the "
                   "authors' code)")
    if ts.adv_train:
        got = (ts.adv_eps, ts.adv_steps, ts.adv_step_size)
        want = PAPER["adv_train"][fam]
        if got != want:
            out.append(f"M adversarially trained with PGD ε = {num(got[0])}, {got[1]} steps of "
                       f"{num(got[2])} (appendix H.2: ε = {num(want[0])}, {want[1]} steps "
                       f"of {num(want[2])})")
    return out


def _group(rows: list[tuple[str, str]], fmt: Callable[[str, str], str]) -> list[str]:
    """``rows`` of (method, detail) → one line per distinct detail naming its methods."""
    by: dict[str, list[str]] = {}
    for method, detail in rows:
        by.setdefault(detail, []).append(method)
    return [fmt(", ".join(methods), detail) for detail, methods in by.items()]


def _defense_settings(settings: dict[str, Any], dataset: str | None = None
                      ) -> dict[str, dict[str, Any]]:
    profile = defense_profile(settings.get("profile", "paper"))
    out = {}
    for a in settings.get("approaches", []):
        method, extra = approach_method(a)
        base = resolve_settings(defense_settings(settings["family"], method, profile, dataset),
                                **(settings.get("defense") or {}))
        out[a] = resolve_settings(base, **extra)
    return out


def defense_lines(settings: dict[str, Any], dataset: str | None = None) -> list[str]:
    """Each approach's P against appendices B and C (schedule, initialisation, held-out
    selection, dropout, augmentation, weight averaging, λ, step budget, P and loss options)
    and the reading of eq. 2; ``dataset`` picks that data set's quick settings."""
    fam = settings["family"]
    resolved = _defense_settings(settings, dataset)
    authors = PAPER["authors"]
    out: list[str] = []
    rows: dict[str, list[tuple[str, str]]] = {k: [] for k in (
        "init", "select", "dropout", "augment", "ema", "warmup")}
    for method, s in resolved.items():
        base = approach_method(method)[0]  # luring-neutral: the luring method's paper values
        p = PAPER["defense"].get((fam, base))
        if p is None:  # no paper values: H.1's luring schedule, stated
            p = PAPER["defense"][("imagenet", "luring")]
            out.append(f"{method} P on {fam}: not in the paper; its schedule is compared "
                       "below with appendix H.1's (ImageNet, luring)")
        opt = {"sgd": "SGD with momentum 0.9"}.get(s.get("optimizer", "adam"), "Adam")
        popt = {"sgd": "SGD with momentum 0.9"}.get(p.get("optimizer", "adam"), "Adam")
        if (s["epochs"], s["batch_size"], s["lr"], s["lr_decay"], s["lr_milestones"], opt) != \
                (p["epochs"], p["batch_size"], p["lr"], "piecewise", p["lr_milestones"], popt):
            unit = "epoch" if s["epochs"] == 1 else "epochs"
            why = ""
            if method == "stack" and s["lr"] < p["lr"]:
                why = ("; Adam at the text's rates does not train P+M, the authors' code runs a "
                       "tenth of them, as for M")
            out.append(f"{method} P trained {s['epochs']} {unit}, batch {s['batch_size']}, {opt} "
                       f"from {s['lr']:g} ({s['lr_decay']}) (paper: {p['epochs']} epochs, batch "
                       f"{p['batch_size']}, {'' if popt == opt else popt + ' from '}"
                       f"{p['lr']:g}{why})")
        stack_fix = method == "stack" and (s["init"] == "kaiming" or s["warmup_epochs"] > 0)
        if s["init"] != authors["p_init"] and not stack_fix:
            rows["init"].append((method, {"kaiming": "He normal weights and zero biases",
                                          "torch": "PyTorch's default initialisation"}
                                 .get(s["init"], s["init"])))
        if s["warmup_epochs"] > 0 and not stack_fix:
            rows["warmup"].append((method, _span(s["warmup_epochs"])))
        if s["val_fraction"] > 0:
            rule = {"reconstruction": "checkpoint of lowest reconstruction loss",
                    "last": "last checkpoint (the held-out part only measured)"}.get(
                s["selection"], "checkpoint whose T agrees most with M")
            every = f"every {s['eval_every']} steps" if s["eval_every"] else "every epoch"
            rows["select"].append((method, f"fitted to {100 * (1 - s['val_fraction']):g}% of "
                                           f"the training images, keeping the {rule} on the "
                                           f"other {100 * s['val_fraction']:g}% (evaluated "
                                           f"{every})"))
        d, pd = s["dropout"], p["dropout"]
        if pd == USED:
            detail = f"dropout {num(d)}" if d else "no dropout"
            rows["dropout"].append((method, f"{detail} (appendix B: \"Dropout is used\", no "
                                            "value given)"))
        elif d != pd:
            rows["dropout"].append((method, f"dropout {num(d)} (not in appendix B)"))
        aug = s.get("augment")
        if aug and (aug.get("shift") or aug.get("rotate")):
            ref = authors["p_augment"].get(fam)
            src = "; the authors' code augments CIFAR10 so" if ref and all(
                abs(aug.get(k, 0.0) - v) < 1e-9 for k, v in ref.items()) else ""
            rows["augment"].append((method, f"random shifts (±{100 * aug.get('shift', 0):.3g}% "
                                            f"of the side) and rotations "
                                            f"(±{num(aug.get('rotate', 0))}°) of the training "
                                            f"images, {aug.get('fill', 'zeros')} fill (not in "
                                            f"appendix B{src})"))
        if s.get("ema"):
            rows["ema"].append((method, num(s["ema"])))
        if base == "luring" and s["lambda"] != PAPER["lambda"].get(fam, 1.0):
            out.append(f"luring λ = {num(s['lambda'])} (appendix C: "
                       f"{num(PAPER['lambda'].get(fam, 1.0))})")
        if s.get("max_steps"):
            out.append(f"{method} P: at most {s['max_steps']} optimisation steps (a step "
                       "budget, whatever the number of training images; the schedule is "
                       "compressed to fit when it binds; appendix B counts epochs)")
        if s.get("width", 1) != 1 or s.get("residual"):
            parts = ([f"{s['width']}× the channels of table {5 if fam == 'mnist' else ''}"
                      .strip()] if s.get("width", 1) != 1 else []) + \
                (["residual: P(x) = clamp(x + tanh(f(x)), 0, 1), f started at zero (P = "
                  "identity at the first step)"] if s.get("residual") else [])
            out.append(f"{method} P: {'; '.join(parts)} (not in tables 5-7, whose P ends in "
                       "a sigmoid)")
        if base == "luring" and (s.get("cap") is not None or s.get("margin")):
            parts = ([f"first term bounded, -λ min(t_y - t_a, {num(s['cap'])})"]
                     if s.get("cap") is not None else []) + \
                ([f"hinge with margin {num(s['margin'])}, max(0, t_b - t_y + "
                  f"{num(s['margin'])})"] if s.get("margin") else [])
            out.append(f"{method} loss: {'; '.join(parts)} (equation 2: unbounded first term, "
                       "zero margin)")
        if stack_fix:
            parts = (["He initialisation"] if s["init"] == "kaiming" else []) + \
                ([f"a {_span(s['warmup_epochs'])} learning-rate warm-up"]
                 if s["warmup_epochs"] > 0 else [])
            out.append(f"stack: P+M trained with {' and '.join(parts)} added to appendix B's "
                       "schedule (without them it stays at chance through P's sigmoid "
                       "bottleneck)")
    out += _group(rows["init"], lambda m, d: f"{m} P initialised with {d} (appendix B and "
                  "Algorithm 1 only say \"randomly initialize\"; the authors' Keras layers "
                  "default to Glorot uniform)")
    out += _group(rows["warmup"], lambda m, d: f"{m} P: a {d} linear learning-rate warm-up "
                  "(not in appendix B)")
    out += _group(rows["select"], lambda m, d: f"{m} P: {d} (paper: fixed "
                  "epochs on all training images; the authors' code selected on a labelled "
                  "split)")
    out += _group(rows["dropout"], lambda m, d: f"{m} P with {d}")
    out += _group(rows["augment"], lambda m, d: f"{m} P: label-free {d}")
    out += _group(rows["ema"], lambda m, d: f"{m} P kept as an exponential moving average "
                  f"(decay {d}) of its weights and batch-norm statistics (not in the paper)")
    if "luring" in resolved:
        out.append(_CLASS_B)
    if fam == "mnist" and settings.get("profile") == "quick" and not settings.get("defense"):
        out.append(QUICK_DATASET_NOTES.get(dataset or "", QUICK_NOTES))
    return out


def attack_lines(settings: dict[str, Any]) -> list[str]:
    """The attacks' settings the paper does not state or that depart from F.1."""
    out_defend: list[str] = []
    left = [a for a in ("spsa", "eco")
            if a not in (settings.get("defend") or {}).get("attacks", ("spsa", "eco"))]
    if left:
        out_defend.append(f"{' and '.join(x.upper() for x in left)} left out of the defend "
                          "tables (tables 1 and 14 have them): a budget that fools T (AC_MoP ≤ "
                          "0.1) costs days on a CPU, and at the quick profile's budget they "
                          "left T right on 26-84% of the images, measuring attack failure; "
                          "the worst case there is over MIM-W's settings, and the adaptive "
                          "evaluation still checks that SPSA does not beat the gradient attacks")
    fam = settings["family"]
    authors = PAPER["authors"]
    defend = settings.get("defend") or {}
    out: list[str] = out_defend
    eco = defend.get("eco") if "eco" not in left else None
    if eco:
        loss = eco.get("loss", "xent")
        if loss == authors["eco_loss"]:
            out.append("ECO minimises the untargeted cross-entropy (Moon et al.'s reference code "
                       "and the authors' scripts; F.1 does not state ECO's objective)")
        else:
            out.append(f"ECO minimises the {loss} objective (F.1 does not state ECO's objective; "
                       "Moon et al.'s reference code and the authors' scripts use the "
                       "untargeted cross-entropy)")
        batch, theirs = eco.get("block_batch"), authors["eco_block_batch"].get(fam)
        if batch is not None and theirs is not None:
            ran = "as the authors ran it" if batch == theirs else f"the authors ran {theirs}"
            out.append(f"ECO searches {batch} blocks at a time ({ran} on {fam}; F.1 does not "
                       "state it)")
        if bool(eco.get("early_stop", False)) != PAPER["eco"]["early_stop"]:
            out.append("ECO stops each image at its first success (the reference code's "
                       "behaviour; paper F.1: no early stop, which gives more transferable "
                       "examples)")
    spsa = defend.get("spsa") if "spsa" not in left else None
    if spsa and "delta" in spsa:
        src = "the authors' code" if spsa["delta"] == authors["spsa_delta"] else \
            f"the authors' code: {num(authors['spsa_delta'])}"
        out.append(f"SPSA δ = {num(spsa['delta'])} ({src}; F.1 does not state it)")
    return out


#: Profile keys with their own lines above, left out of the generic override lines.
HANDLED = {"defend.eco.loss", "defend.eco.block_batch", "defend.eco.early_stop"}


def disclosure(settings: dict[str, Any], dataset: str) -> list[str]:
    """Every departure of a run with resolved profile ``settings`` on ``dataset`` from the
    paper: data, M, each P, the luring loss, the attacks, then each profile value that
    differs from the paper profile's (``path = value (paper: value)``)."""
    paper = paper_profile(settings["family"])
    out: list[str] = []
    if dataset == "mnist-5k":
        out.append("data: mnist-5k (4,000 training / 1,000 test real MNIST digits) instead of "
                   "full MNIST (60,000 / 10,000)")
    elif dataset not in ("mnist", "svhn", "cifar10", "imagenet"):
        out.append(f"data: {dataset}, which the paper does not use; it gets the "
                   f"{settings['family']} settings")
    if settings.get("defense_train_images"):
        out.append(f"each P trained on {settings['defense_train_images']} training images only")
    if settings.get("images_correct_for") != "all":
        out.append("attacked test images are those M classifies correctly (paper: M and every T)")
    out += target_lines(settings)
    out += defense_lines(settings, dataset)
    out += attack_lines(settings)

    def walk(a: Any, b: Any, path: str) -> None:
        if path in HANDLED:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                sub = f"{path}.{k}" if path else k
                if k in b:
                    walk(a[k], b[k], sub)
                elif sub not in HANDLED:
                    out.append(f"{sub} = {a[k]} (overrides the paper's default)")
        elif a != b:
            out.append(f"{path} = {a} (paper: {b})")

    for key in ("target", "defense", "characterize", "defend", "distortion", "logits"):
        walk(settings.get(key, {}), paper.get(key, {}), key)
    return out


def differences_from_paper(settings: dict[str, Any], dataset: str) -> list[str]:
    """Where a run with resolved profile ``settings`` on ``dataset`` departs from the paper's
    protocol (any profile, the paper's included): :func:`disclosure`, then the step budget of
    M, the detector and the adaptive evaluation with :func:`attacker_lines`. The
    experiments' own departures are added by the run."""
    out = disclosure(settings, dataset)
    budget = (settings.get("target") or {}).get("max_steps")
    if budget and not any("M trained at most" in d for d in out):
        out.append(f"M trained at most {budget:,} optimisation steps (appendix A: fixed epochs; "
                   "the budget binds only on data sets larger than mnist-5k)")
    if settings.get("approaches"):
        pct = round(100 * CALIBRATION_FRACTION)
        out.append(f"detector (not in the paper, beside its rule T ≠ M): each defense holds "
                   f"out {pct}% of its training images before P trains (so P sees the other "
                   f"{100 - pct}%, of which the held-out selection split above is a part) and "
                   f"sets a threshold on the {DEFAULT_RULE} score of T's and M's softmax "
                   f"outputs there so that the false-alarm rate on new clean images is at most "
                   f"{DEFAULT_TARGET_FPR:.0%} with probability {DEFAULT_CONFIDENCE:g} (an "
                   "order-statistic bound; the held-out rate is then below the target); "
                   "the tables give "
                   "DAC both with the paper's rule and at that operating point")
    if settings.get("adaptive"):
        out.append("adaptive evaluation, masking diagnostics, substitute attacker and paired "
                   "verdict: not in the paper (its DAC verdict compares numbers without a test)")
        out += attacker_lines(settings["adaptive"])
    return out


def attacker_lines(cfg: dict[str, Any]) -> list[str]:
    """Disclosure of the adaptive family's input transforms and the attacker's model S."""
    out = []
    for t in cfg.get("transforms") or []:
        copies, steps = t.get("num_copies", 20), t.get("steps", cfg.get("steps"))
        alpha = "ε/iterations" if "alpha" in t and t["alpha"] is None else \
            f"the family's step ({cfg.get('step_size')})"
        if copies != 20 or steps != 10 or not ("alpha" in t and t["alpha"] is None):
            out.append(f"{t['attack'].upper()} (adaptive family, not in the paper): {copies} "
                       f"copies per iteration, {steps} iterations, step {alpha} (its paper: "
                       "20 copies, 10 iterations of ε/10)")
    att = cfg.get("attacker") or {}
    if att.get("ensemble") or att.get("public"):
        out.append("the attacker's own model S (not in the paper): the family's M architecture "
                   "trained with labels exactly as M is, on the same training images with "
                   "another seed (M uses every training image, so no split is left that M did "
                   "not see); never M's weights")
    return out
