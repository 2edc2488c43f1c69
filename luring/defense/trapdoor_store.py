"""Trapdoor defense directories (format ``luring-defense/1``, method ``trapdoor``): writing
one (staged, published as a whole, fingerprints of its files in ``defense.json``) and loading
it back as a :class:`~luring.defense.trapdoor.TrappedModel` (fingerprints checked). The method
itself is :mod:`luring.defense.trapdoor`; its training :mod:`luring.defense.trapdoor_train`
(which re-exports these functions); :func:`luring.defense.load` loads any defense directory.

The directory, written into a hidden staging sibling and renamed into place as a whole
(:mod:`luring.defense.publish`):

* ``defense.json``: ``format``, ``method``, ``dataset``, ``config`` (resolved settings),
  ``seed``, ``triggers`` (their parameters), ``threshold``, ``calibration`` (target and
  held-out false-alarm rate, n; also as ``detector`` in the field names of the other
  defenses' operating point), ``clean`` (``evaluate_trapdoor`` on test images),
  ``history``, ``signature_layer``, ``architecture``, ``input_shape``, ``num_classes``,
  ``training_seconds``, ``versions`` (``lambda`` and ``target_dir`` are null: no M involved);
* ``model.safetensors/.json``: the trapdoored model (``luring.models.save_checkpoint``);
* ``trapdoor.safetensors``: ``masks`` and ``patterns`` float32 (K, C, H, W), ``signatures``
  float32 (K, D);
* ``config.json``, ``results.json``, ``report.md``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from luring.defense.directory import FORMAT, read_defense, write_records
from luring.defense.publish import verify_fingerprints, write_defense
from luring.defense.trapdoor import TrappedModel, Triggers, penultimate_layer
from luring.errors import LuringError
from luring.models import load_checkpoint, save_checkpoint
from luring.models.checkpoint import load_state_dict_file
from luring.utils import atomic_write_bytes, read_json, resolve_device, versions

__all__ = ["save_trapdoor", "load_trapdoor", "check_out", "METHOD", "TENSORS"]

METHOD = "trapdoor"
TENSORS = "trapdoor.safetensors"


def save_trapdoor(directory: str | os.PathLike, trapped: TrappedModel, *, dataset: str | None,
                  classes: list[str] | None = None, clean: dict[str, Any] | None = None,
                  config: dict[str, Any] | None = None, stage: Path | None = None) -> Path:
    """Write the trapdoor defense directory for ``trapped`` (staged, then moved into place).
    ``clean``: :func:`evaluate_trapdoor` on test images; ``config``: how the run was asked
    for (``config.json``; default the settings); ``stage``: an
    :class:`~luring.defense.publish.OutputClaim`'s (default: claimed here). Returns the
    directory; ``defense.json`` records the weights' fingerprints. A directory holding
    another model's ``model.json`` (a target run directory) is refused, never overwritten."""
    check_out(directory)
    return write_defense(directory, lambda d: _write_all(d, trapped, dataset, classes, clean,
                                                         config), stage)


def check_out(directory: str | os.PathLike) -> None:
    """Raise a LuringError when ``directory`` holds a ``model.json`` that is not a trapdoored
    model's (e.g. a target run directory, whose M would be overwritten)."""
    side = Path(directory) / "model.json"
    if side.is_file():
        meta = read_json(side)
        if not (isinstance(meta, dict) and meta.get("method") == METHOD):
            raise LuringError(f"{directory} holds another model ({side}); choose another --out "
                              "for the trapdoor defense")


def _write_all(d: Path, tm: TrappedModel, dataset: str | None, classes: list[str] | None,
               clean: dict[str, Any] | None, config: dict[str, Any] | None) -> None:
    m = tm.meta
    s, shape, k = m["settings"], list(tm.input_shape), tm.triggers.num_classes
    save_checkpoint(tm.model, d, "model", architecture=m["architecture"], input_shape=shape,
                    classes=classes, num_classes=k, dataset=dataset,
                    test_accuracy=(clean or {}).get("accuracy"), config=s, seed=m["seed"],
                    arch_kwargs=m["arch_kwargs"], extra={"role": "trapdoored", "method": METHOD})
    atomic_write_bytes(d / TENSORS, st_save({
        "masks": tm.triggers.masks.contiguous(), "patterns": tm.triggers.patterns.contiguous(),
        "signatures": tm.signatures.contiguous()}))
    meta = {"format": FORMAT, "method": METHOD, "lambda": None, "target_dir": None,
            "dataset": dataset, "config": s, "seed": m["seed"], "triggers": tm.triggers.params,
            "threshold": tm.threshold, "calibration": m["calibration"], "clean": clean,
            "detector": _detector(tm),
            "selection": {"rule": "last", "epoch": s["clean_epochs"] + s["trap_epochs"]},
            "history": m["history"], "signature_layer": m["signature_layer"],
            "architecture": m["architecture"], "input_shape": shape, "num_classes": k,
            "training_seconds": round(m["training_seconds"], 2), "versions": versions()}
    results = {"format": "luring-defense-results/1", "method": METHOD, "dataset": dataset,
               "clean": clean, "calibration": m["calibration"], "threshold": tm.threshold,
               "training_seconds": meta["training_seconds"], "seed": m["seed"]}
    write_records(d, meta, results, config if config is not None else s, _report(meta))


def _detector(tm: TrappedModel) -> dict[str, Any]:
    """The operating point in the field names of the other defenses' ``detector``."""
    cal = tm.meta["calibration"]
    return {"rule": "trapdoor-cosine", "threshold": tm.threshold,
            "target_fpr": cal["false_alarm_target"], "heldout_fpr": cal["false_alarm_rate"],
            "heldout_k": cal["flagged"], "n": cal["n"], "split": "held-out training images"}


def _report(meta: dict[str, Any]) -> str:
    s, cal, c = meta["config"], meta["calibration"], meta.get("clean")
    lines = [f"# Defense: trapdoor on {meta['dataset']}", "",
             f"- model: {meta['architecture']} trained from scratch ({s['profile']} profile): "
             f"{s['clean_epochs']} clean + {s['trap_epochs']} trapdoor epochs, batch "
             f"{s['batch_size']}, Adam lr {s['lr']:g}"
             + "".join(f" (from epoch {e + 1} of a phase: {v:g})" for e, v in s["lr_milestones"])
             + f", injection ratio {s['inject_ratio']:g}, "
             f"seed {meta['seed']}, {meta['training_seconds']:.1f} s",
             f"- triggers: {s['squares']} squares of {s['square_size']}x{s['square_size']} "
             f"pixels per label, mask ratio {s['mask_ratio']:g}",
             f"- signatures at the {meta['signature_layer']}; threshold {meta['threshold']:.4f} "
             f"(held-out false alarms {100 * cal['false_alarm_rate']:.1f}%, target "
             f"{100 * cal['false_alarm_target']:.1f}%, n = {cal['n']})", ""]
    if c:
        lines += [f"## Test images (n = {c['n']})", "", "| figure | value |", "|---|---|",
                  f"| clean accuracy | {100 * c['accuracy']:.1f}% |",
                  f"| clean false alarms | {100 * c['false_alarm_rate']:.1f}% |",
                  f"| trapdoor success (mean over labels) | {100 * c['trapdoor_success']:.1f}% |",
                  f"| trapdoor success (worst label) | {100 * c['trapdoor_success_min']:.1f}% |",
                  f"| stamped images flagged | {100 * c['trigger_detection']:.1f}% |"]
    return "\n".join(lines) + "\n"


def load_trapdoor(directory: str | os.PathLike,
                  device: str | torch.device = "cpu") -> TrappedModel:
    """Load a trapdoor defense directory written by :func:`save_trapdoor`. Raises a one-line
    LuringError when it is missing, of another format or method, or inconsistent."""
    d, meta = read_defense(directory, "`luring train-defense --method trapdoor`")
    if meta.get("method") != METHOD:
        raise LuringError(f"{d} holds a {meta.get('method')!r} defense, not a trapdoor one; "
                          "load it with luring.defense.load")
    verify_fingerprints(d, meta)  # a swapped or damaged weights file is refused
    dev = resolve_device(device)
    model, mmeta = load_checkpoint(d, "model", device=dev)
    for p in model.parameters():
        p.requires_grad_(False)
    tensors = load_state_dict_file(d / TENSORS)
    shape = tuple(int(v) for v in mmeta["input_shape"])
    k = int(mmeta.get("num_classes") or 0)
    masks, patterns, sigs = (tensors.get(n) for n in ("masks", "patterns", "signatures"))
    width = penultimate_layer(model)[1].in_features
    threshold = meta.get("threshold")
    if masks is None or patterns is None or sigs is None \
            or tuple(masks.shape) != (k, *shape) or tuple(patterns.shape) != (k, *shape) \
            or tuple(sigs.shape) != (k, width):
        raise LuringError(f"{d / TENSORS} does not match the model: masks and patterns "
                          f"({k}, {', '.join(map(str, shape))}) and signatures ({k}, {width}) "
                          "expected; retrain the defense")
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise LuringError(f"{d / 'defense.json'} has no finite threshold; retrain the defense")
    triggers = Triggers(masks.float(), patterns.float(), dict(meta.get("triggers") or {}))
    info = {"settings": meta.get("config"), "seed": meta.get("seed"),
            "history": meta.get("history"), "calibration": meta.get("calibration"),
            "architecture": mmeta["architecture"], "arch_kwargs": mmeta.get("arch_kwargs"),
            "num_classes": k, "signature_layer": meta.get("signature_layer"),
            "training_seconds": meta.get("training_seconds"), "defense": meta, "directory": d}
    return TrappedModel(model.eval(), triggers, sigs, float(threshold), info, shape, dev)
