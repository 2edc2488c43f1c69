"""Appendix I: a trapdoored model as the public model (table 20), beside luring.

The threat model is the paper's: the attacker reaches a public model and transfers to M. For
*Trapdoor* the public model is a model of M's architecture trained from scratch with a
trapdoor per label (Shan et al. 2019; :mod:`luring.defense.trapdoor`), for *Luring* it is the
run's T = M∘P. Per ε of the run and per seed, on the first n test images (in the run's seeded
order) that M and every public model classify correctly (``images_correct_for: target``: M
alone), FGSM and the MIM-W grid are crafted on the public model and transferred to M
(:func:`luring.experiments.search.transfer_search`). Rows ``best`` (the setting best for the
adversary, the paper's "optimal" values) and ``worst-case`` (per example) hold AC_MoP (on the
public model), AC_M, DAC, ``detection_rate`` (share of examples flagged) and ``dac_rule``
(the DAC of the other reading below; for Luring it equals DAC).

DAC: for Luring, eq. 4 (caught when T(x') ≠ M(x'), or M right). For Trapdoor the paper does
not define it; here an example counts as caught when the trapdoor's detector flags it
(cosine similarity with its predicted label's signature above the threshold calibrated for 5%
clean false alarms on held-out training images) or M classifies it correctly. Beside it,
``dac_rule`` reads the paper's sentence "a defense similar to ours where the public model is
... the trapdoored model" literally: caught when the trapdoored model's label differs from
M's (eq. 4's rule with the trapdoored model as T), or M right; each reading takes the setting
best for the adversary under it.

Models: ``models/trapdoor-s<seed>`` (a trapdoor defense directory, with ``identity.json``).
Units: ``trapdoor/s<seed>-<trapdoor|luring>-eps<ε>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from luring.data import get_spec, load
from luring.errors import LuringError
from luring.experiments.common import aggregate, select_images, unit_seed
from luring.experiments.models import build_dir, check_reuse
from luring.experiments.search import transfer_search
from luring.experiments.store import RunDir
from luring.metrics import rate
from luring.utils import fingerprint, progress, read_json

__all__ = ["run_trapdoor_exp", "trapdoor_run_settings", "trapdoor_lines", "target_architecture",
           "DAC_DEFINITION"]

DAC_DEFINITION = ("Trapdoor DAC (not defined in the paper): an adversarial example counts as "
                  "caught when the trapdoor's detector flags it (cosine similarity of its "
                  "penultimate activation with its predicted label's signature above the "
                  "threshold set for 5% false alarms on clean held-out training images) or M "
                  "classifies it correctly; Luring's DAC is eq. 4 (caught when T ≠ M, or M "
                  "right). Beside it, \"DAC, T ≠ M reading\": eq. 4's rule with the trapdoored "
                  "model as T (caught when its label differs from M's, or M right), each "
                  "reading with the setting best for the adversary under it")


def trapdoor_run_settings(settings: dict[str, Any], architecture: str | None = None
                          ) -> dict[str, Any]:
    """The trapdoor settings of a run: the reference code's (paper profile) or the quick
    ones (quick and smoke profiles), M's architecture, then ``trapdoor.settings``."""
    from luring.defense.trapdoor import resolve_trapdoor_settings, trapdoor_settings

    profile = "paper" if settings["profile"] == "paper" else "quick"
    base = trapdoor_settings(settings["family"], profile)
    over = dict(settings["trapdoor"].get("settings") or {})
    if architecture:
        over.setdefault("architecture", architecture)
    return resolve_trapdoor_settings(base, **over)


def target_architecture(defenses: dict[str, dict[int, Any]]) -> str | None:
    """M's architecture, read from a defense's copy of M (``target.json``; None without)."""
    for per in defenses.values():
        for d in per.values():
            side = d.directory / "target.json" if d.directory is not None else None
            if side is not None and side.is_file():
                return read_json(side).get("architecture")
    return None


def _models(run: RunDir, dataset: str, settings: dict[str, Any], ts: dict[str, Any],
            seeds: list[int], device: torch.device, data_dir: str | None,
            fps: dict[str, str], test: tuple[torch.Tensor, torch.Tensor],
            log: Callable[[str], None]) -> dict[int, Any]:
    """Train or reuse the trapdoored model of each seed; returns {seed: TrappedModel}."""
    from luring.defense.trapdoor_train import build_trapdoor, load_trapdoor

    spec = get_spec(dataset)
    models = run.path / "models"
    models.mkdir(exist_ok=True)
    limit = settings["trapdoor"].get("train_images")
    out: dict[int, Any] = {}
    train: list[tuple[torch.Tensor, torch.Tensor]] = []
    for s in seeds:
        ddir = models / f"trapdoor-s{s}"
        ident = {"method": "trapdoor", "seed": s, "dataset": dataset, "data": fps["train"],
                 "settings": ts, "train_images": limit}
        if not (ddir / "defense.json").exists():
            if not train:
                x, y = load(dataset, "train", data_dir)
                if fingerprint(x, y) != fps["train"]:
                    raise LuringError(f"the {dataset} training split changed during the run; "
                                      "rerun with --restart")
                train.append((x, y))
            x_tr, y_tr = train[0]
            if limit:  # the smoke profile trains on a seeded subset, to keep tests short
                keep = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(s))
                x_tr, y_tr = x_tr[keep[:limit]], y_tr[keep[:limit]]
            log(f"training the trapdoored model (seed {s}) ...")
            build_dir(ddir, lambda d, s=s, x_tr=x_tr, y_tr=y_tr: build_trapdoor(
                d, x_tr, y_tr, test, settings=ts, family=spec.family, dataset=dataset,
                classes=list(spec.classes), seed=s, device=device,
                desc=f"trapdoor (seed {s})"), ident)
        else:
            check_reuse(run, ddir, ident)
        out[s] = load_trapdoor(ddir, device=device)
    return out


def _clean(trapped: dict[int, Any], seeds: list[int]) -> dict[str, Any]:
    """Each trapdoored model's clean figures (test split, written when it was trained) and
    its held-out calibration, under ``per_seed``; at the top level, the first seed's."""
    per = []
    for s in seeds:
        meta = trapped[s].meta.get("defense") or {}
        c, cal = meta.get("clean") or {}, trapped[s].meta.get("calibration") or {}
        per.append({"seed": s, "n": c.get("n"), "accuracy": c.get("accuracy"),
                    "false_alarm_rate": c.get("false_alarm_rate"),
                    "trapdoor_success": c.get("trapdoor_success"),
                    "trapdoor_success_min": c.get("trapdoor_success_min"),
                    "intervals": c.get("intervals"), "threshold": trapped[s].threshold,
                    "heldout_false_alarm_rate": cal.get("false_alarm_rate"),
                    "heldout_n": cal.get("n"), "target_false_alarm": cal.get("false_alarm_target")})
    return {"per_seed": per} | {k: per[0][k] for k in per[0] if k != "seed"}


def run_trapdoor_exp(run: RunDir, dataset: str, target: torch.nn.Module,
                     defenses: dict[str, dict[int, Any]], settings: dict[str, Any], seed: int,
                     seeds: list[int], device: torch.device, data_dir: str | None,
                     test: tuple[torch.Tensor, torch.Tensor], fps: dict[str, str],
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or reuse) the trapdoored models, run (or reuse) every unit and return
    ``results["trapdoor"]``: ``rows`` (per approach ``trapdoor``/``luring``, attack
    ``best``/``worst-case`` and ε: ac_mop, ac_m, dac, detection_rate, n, ci), ``clean`` (the
    trapdoored models' clean figures), ``settings`` (resolved trapdoor settings), ``n``,
    ``eps`` and ``dac_definition``. ``defenses["luring"]``: the run's luring T per seed."""
    if "luring" not in defenses:
        raise LuringError("the trapdoor experiment compares with the run's luring defense; "
                          "keep 'luring' among the profile's approaches")
    cfg = settings["trapdoor"]
    ts = trapdoor_run_settings(settings, target_architecture(defenses))
    trapped = _models(run, dataset, settings, ts, seeds, device, data_dir, fps, test, log)
    lur = defenses["luring"]
    x_test, y_test = test
    models = [target]
    if settings.get("images_correct_for") == "all":
        models += [t.model for t in trapped.values()] + [d.augmented for d in lur.values()]
    idx = select_images(x_test, y_test, models, int(cfg["n"]), seed)
    if len(idx) < int(cfg["n"]):
        log(f"note: only {len(idx)} test images are classified correctly by M and every public "
            f"model; trapdoor uses {len(idx)} instead of {cfg['n']}")
    x, y = x_test[idx].to(device), y_test[idx]
    ident = {"data": fps["test"], "indices": idx, "seed": seed,
             "models": {"target": fingerprint(target),
                        "trapdoor": {s: fingerprint(t.model) for s, t in trapped.items()},
                        "threshold": {s: t.threshold for s, t in trapped.items()},
                        "luring": {s: fingerprint(d.augmented) for s, d in lur.items()}}}
    mw = settings["defend"]["mim_w"]
    units: dict[tuple, Any] = {}
    jobs = [(a, s, e) for s in seeds for a in ("trapdoor", "luring") for e in settings["eps"]]
    for a, s, e in progress(jobs, desc="trapdoor", unit="unit"):
        useed = unit_seed(seed, s, a, "trapdoor", e)
        if a == "trapdoor":
            def craft(t=trapped[s], e=e, u=useed):
                return transfer_search(t.model, target, x, y, e, mw, u,
                                       flag=lambda xa: t.detect(xa).flagged)
        else:
            def craft(m=lur[s].augmented, e=e, u=useed):
                return transfer_search(m, target, x, y, e, mw, u)
        units[(a, s, e)] = run.unit("trapdoor", f"s{s}-{a}-eps{e}", craft,
                                    {"run": ident, "params": mw, "eps": e})
    rows = []
    for a in ("trapdoor", "luring"):
        for e in settings["eps"]:
            per: dict[str, list] = {"best": [], "worst-case": []}
            chosen, rule_chosen = [], []
            for s in seeds:
                t, meta = units[(a, s, e)]
                per["best"].append({"ac_mop": rate(t["best_t_ok"]), "ac_m": rate(t["best_m_ok"]),
                                    "dac": rate(t["best_defended"]),
                                    "detection_rate": rate(t["best_flagged"]),
                                    "dac_rule": rate(t["rule_best_defended"])})
                per["worst-case"].append({"ac_mop": rate(t["all_t_ok"]),
                                          "ac_m": rate(t["all_m_ok"]),
                                          "dac": rate(t["all_defended"]),
                                          "dac_rule": rate(t["rule_all_defended"])})
                chosen.append(meta["best"])
                rule_chosen.append(meta["rule_best"])
            rows.append(aggregate("trapdoor", a, "best", e, per["best"],
                                  {"setting": chosen[0], "settings_per_seed": chosen,
                                   "rule_setting": rule_chosen[0]}, seeds=seeds))
            rows.append(aggregate("trapdoor", a, "worst-case", e, per["worst-case"],
                                  seeds=seeds))
    return {"eps": list(settings["eps"]), "n": len(idx), "rows": rows,
            "clean": _clean(trapped, seeds), "settings": ts, "dac_definition": DAC_DEFINITION}


def trapdoor_lines(settings: dict[str, Any]) -> list[str]:
    """The trapdoor experiment's departures from appendix I (table 20) and from the
    reference code of Shan et al. (``Shawn-Shan/trapdoor``) that the paper says it used."""
    from luring.defense.trapdoor import QUICK_NOTES, trapdoor_settings

    fam, cfg = settings["family"], settings["trapdoor"]
    ts = trapdoor_run_settings(settings)
    ref = trapdoor_settings(fam, "paper")
    keys = ("clean_epochs", "trap_epochs", "batch_size", "lr", "lr_milestones", "inject_ratio",
            "squares", "square_size", "mask_ratio", "false_alarm", "dropout")
    diffs = [f"{k} {_value(ts[k])} (reference: {_value(ref[k])})" for k in keys
             if ts[k] != ref[k]]
    out = []
    if diffs:
        out.append("trapdoored model trained with " + "; ".join(diffs))
    if settings["profile"] != "paper" and not cfg.get("settings") and fam == "mnist":
        out.append(f"trapdoor {QUICK_NOTES}")
    if cfg.get("train_images"):
        out.append(f"trapdoored model trained on {cfg['train_images']} training images only")
    out.append("trapdoor (appendix I gives no settings; the reference code's, see "
               "luring.defense.trapdoor): the last epoch is kept (reference: the epoch of best "
               "trapdoor success above a clean-accuracy floor, chosen on its test images); the "
               f"signatures and the threshold come from the {100 * ts['val_fraction']:g}% of "
               "the training images held out (reference: signatures from all training images)")
    out.append(f"table 20 on the first {cfg['n']} test images that M"
               + (", the trapdoored model and the luring T all"
                  if settings.get("images_correct_for") == "all" else " alone")
               + " classif" + ("y" if settings.get("images_correct_for") == "all" else "ies")
               + " correctly (paper: not stated); the optimal values are the setting "
               "best for the adversary among FGSM and the defend experiment's MIM-W grid; the "
               "per-example worst case beside them is not in the paper")
    out.append(DAC_DEFINITION)
    return out


def _value(v: Any) -> str:
    """A setting's value for a disclosure line: numbers with ``%g``, the rest as JSON."""
    import json

    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else \
        json.dumps(v)
