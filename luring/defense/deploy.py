"""The deployed M∘P defense (methods luring, ce, auto, stack): its directory (writing and
loading) and :class:`Defense`. (:func:`luring.defense.load` loads any defense directory, a
trapdoor one included; what all directories share is :mod:`luring.defense.directory`.)

Defense directory (contract with the other stages, format ``luring-defense/1``):

* ``defense.json``: ``format``, ``method``, ``lambda``, ``dataset``, ``target_dir``,
  ``config`` (fully resolved settings), ``seed``, ``selection``, ``clean``, ``history``,
  ``versions`` (plus ``input_shape``, ``num_classes``, ``component_architecture``,
  ``head_architecture``, ``training_seconds``) and ``detector``: the operating point
  ``{"rule", "threshold", "target_fpr", "heldout_fpr", "heldout_k", "n", "split"}`` chosen on
  held-out unlabelled clean images (``luring.defense.calibrate``; ``split`` says which
  images). Directories written before the detector existed have no ``detector``: they load
  with the paper rule (flag when T and M disagree) and a note;
* ``target.safetensors/.json``: a copy of M (a TorchScript M also ``target.pt``, its file;
  a user's ``module:callable`` M is rebuilt by importing its module, see
  :mod:`luring.models.user`); ``component.safetensors/.json``: P; for ``stack`` also
  ``head.safetensors/.json`` (the classifier retrained with P);
* ``calibration.safetensors``: T's and M's logits on the calibration images and their
  indices (what ``detect(rule=..., fpr=...)`` recalibrates from);
* ``config.json`` (how the run was asked for), ``results.json`` (the clean figures) and
  ``report.md`` (human summary).

``defense.json`` also records ``fingerprints`` (``luring.utils.fingerprint`` of each
``*.safetensors`` file's state dict, and the SHA-256 of ``target.pt``/``head.pt``):
:func:`load_augmented` refuses a swapped or damaged file.

The directory is written into a hidden sibling staging directory and then renamed into place
as a whole (:mod:`luring.defense.publish`): an interrupted or failed run leaves any previous
defense intact and no half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from luring.defense.calibrate import (
    CALIBRATION_FILE,
    DEFAULT_TARGET_FPR,
    load_calibration,
    operating_point,
    save_calibration,
)
from luring.defense.directory import FORMAT, read_defense, write_records
from luring.defense.evaluate import clean_table_markdown
from luring.defense.publish import publish, verify_fingerprints, write_defense
from luring.defense.scores import PAPER_THRESHOLD, SCORES, flag, score
from luring.defense.train import TrainedDefense
from luring.errors import LuringError
from luring.models import Stacked, load_checkpoint, predict_labels, save_checkpoint
from luring.models.predict import predict_logits
from luring.utils import check_images, resolve_device, versions

__all__ = ["FORMAT", "Defense", "Detection", "LEGACY_DETECTOR", "load_augmented",
           "save_defense", "publish"]

LEGACY_DETECTOR: dict[str, Any] = {
    "rule": "paper", "threshold": PAPER_THRESHOLD, "target_fpr": None, "heldout_fpr": None,
    "heldout_k": None, "n": 0, "split": None,
    "note": "this defense was written without a calibrated detector: using the paper rule "
            "(flag when T and M disagree)"}


class _Labels(NamedTuple):
    t_label: torch.Tensor
    m_label: torch.Tensor
    flagged: torch.Tensor


class Detection(_Labels):
    """Per-image output of :meth:`Defense.detect`: a named 3-tuple as before the operating
    point existed (``t, m, flagged = defense.detect(x)`` still works) — ``t_label`` (N,)
    int64 = T's label (what is answered), ``m_label`` (N,) int64 = M's label, ``flagged``
    (N,) bool = the score is above the operating point's threshold (for the ``paper`` rule:
    T and M disagree) — with the attributes ``score`` (N,) float64 in [0, 1] (higher = more
    suspicious), ``rule`` and ``threshold``."""

    score: torch.Tensor
    rule: str
    threshold: float

    def __new__(cls, t_label: torch.Tensor, m_label: torch.Tensor, flagged: torch.Tensor,
                score: torch.Tensor | None = None, rule: str = "paper",
                threshold: float = PAPER_THRESHOLD) -> Detection:
        self = super().__new__(cls, t_label, m_label, flagged)
        self.score = flagged.double() if score is None else score
        self.rule, self.threshold = rule, float(threshold)
        return self

    def __repr__(self) -> str:
        return (f"Detection(n={len(self.t_label)}, rule={self.rule!r}, "
                f"threshold={self.threshold:g}, flagged={int(self.flagged.sum())})")


class Defense:
    """A loaded defense: ``target`` (M), ``component`` (P), ``augmented`` (T = M∘P, or
    head∘P for stack) as frozen ``nn.Module`` s in eval mode, ``meta`` (``defense.json``),
    ``input_shape`` (C, H, W) and ``device``."""

    def __init__(self, target: nn.Module, component: nn.Module, augmented: nn.Module,
                 meta: dict[str, Any], input_shape: tuple[int, int, int],
                 device: torch.device, directory: Path | None = None) -> None:
        self.target, self.component, self.augmented = target, component, augmented
        self.meta, self.input_shape, self.device, self.directory = (meta, input_shape, device,
                                                                    directory)
        self._calibration: dict[str, torch.Tensor] | None = None

    @property
    def method(self) -> str:
        return str(self.meta.get("method"))

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """Validate images: float32 (N, C, H, W) in [0, 1] with (C, H, W) = ``input_shape``."""
        check_images(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            c, h, w = self.input_shape
            raise LuringError(f"images have shape {tuple(x.shape)}; this defense expects "
                              f"(N, {c}, {h}, {w})")
        return x

    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """T's labels, int64 (N,), for images float32 (N, C, H, W) in [0, 1]."""
        return predict_labels(self.augmented, self.check(x), batch_size, self.device)

    @property
    def detector(self) -> dict[str, Any]:
        """The stored operating point (``defense.json``'s ``detector``), or for a directory
        written before it existed :data:`LEGACY_DETECTOR` (the paper rule, with a note)."""
        det = self.meta.get("detector")
        return dict(det) if isinstance(det, dict) and det.get("rule") in SCORES else dict(
            LEGACY_DETECTOR)

    def calibration(self) -> dict[str, torch.Tensor]:
        """T's and M's logits on the stored calibration images (see
        :func:`~luring.defense.calibrate.load_calibration`), read once."""
        if self._calibration is None:
            if self.directory is None:
                raise LuringError("this defense was not loaded from a directory and has no "
                                  "calibration data")
            verify_fingerprints(self.directory, self.meta, ("calibration",))
            self._calibration = load_calibration(self.directory)
        return self._calibration

    def operating_point(self, rule: str | None = None, fpr: float | None = None,
                        confidence: float | None | str = "stored") -> dict[str, Any]:
        """The operating point to detect with. Without arguments (or with the stored rule
        and no ``fpr``): the stored one. ``rule="paper"`` without ``fpr``: the paper rule's
        fixed threshold 0. Otherwise the threshold of ``rule`` recalibrated on the stored
        calibration images (never on the inputs) for the target ``fpr`` in (0, 1)
        (default: the stored target, else 5%) and ``confidence`` (see
        :func:`~luring.defense.calibrate.exceedances`; default ``"stored"``: the stored
        operating point's, None for directories older than it; None: the plain held-out
        quantile). Returns a dict like ``detector``'s, with ``"source"`` = ``stored``,
        ``paper`` or ``recalibrated``."""
        stored = self.detector
        rule = stored["rule"] if rule is None else rule
        if rule not in SCORES:
            raise LuringError(f"unknown detection rule {rule!r}; choose one of "
                              f"{', '.join(SCORES)}")
        if fpr is not None and not 0.0 < float(fpr) < 1.0:
            raise LuringError(f"the false-alarm target must be in (0, 1), got {fpr}")
        if confidence == "stored":
            confidence = stored.get("confidence")
        elif confidence is not None and not 0.0 < float(confidence) < 1.0:
            raise LuringError(f"the calibration confidence must be in (0, 1), got {confidence}")
        same = confidence == stored.get("confidence")
        if fpr is None and rule == stored["rule"] and (same or rule == "paper"):
            return {**stored, "source": "stored"}
        if fpr is None and rule == "paper":
            if not self._has_calibration():
                return {**LEGACY_DETECTOR, "note": None, "source": "paper"}
            cal = self.calibration()  # only to report the paper rule's held-out rate
            op = operating_point(cal["t_logits"], cal["m_logits"], "paper", None)
            return {**op, "split": stored.get("split"), "source": "paper"}
        target = fpr if fpr is not None else stored.get("target_fpr")
        target = DEFAULT_TARGET_FPR if target is None else target
        cal = self.calibration()
        op = operating_point(cal["t_logits"], cal["m_logits"], rule, float(target), confidence)
        return {**op, "split": stored.get("split"), "source": "recalibrated"}

    def _has_calibration(self) -> bool:
        return self._calibration is not None or (
            self.directory is not None and (self.directory / CALIBRATION_FILE).is_file())

    def logits(self, x: torch.Tensor, batch_size: int = 1000
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """T's and M's logits, float32 (N, K) each on the CPU, for images (N, C, H, W)."""
        self.check(x)  # once for both models
        return (predict_logits(self.augmented, x, batch_size, self.device),
                predict_logits(self.target, x, batch_size, self.device))

    def detect(self, x: torch.Tensor, batch_size: int = 1000, *, rule: str | None = None,
               fpr: float | None = None, confidence: float | None | str = "stored"
               ) -> Detection:
        """Detect at an operating point (:meth:`operating_point`; default: the stored one):
        T's label, M's label, the score and whether it is above the threshold. With the
        ``paper`` rule an input is flagged exactly when T(x) ≠ M(x) (section 4.1).
        ``x``: float32 (N, C, H, W) in [0, 1]. Returns a :class:`Detection`."""
        op = self.operating_point(rule, fpr, confidence)
        t_logits, m_logits = self.logits(x, batch_size)
        s = score(t_logits, m_logits, op["rule"])
        return Detection(t_logits.argmax(1), m_logits.argmax(1), flag(s, op["threshold"]), s,
                         op["rule"], float(op["threshold"]))


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_augmented(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Defense:
    """Load an M∘P defense directory (method luring, ce, auto or stack) written by ``luring
    train-defense`` / :func:`save_defense` (:func:`luring.defense.load` loads any defense
    directory). Raises a one-line LuringError when it is missing, of another format or
    incomplete, a trapdoor one (no T = M∘P), or when a weights file is not the one its
    ``defense.json`` records (fingerprints)."""
    d, meta = read_defense(directory)
    if meta.get("method") == "trapdoor":
        raise LuringError(f"{d} holds a trapdoor defense (a trapdoored model, no M∘P); load it "
                          "with luring.defense.load_trapdoor")
    verify_fingerprints(d, meta, ("target", "component", "head"))
    dev = resolve_device(device)
    target, tmeta = load_checkpoint(d, "target", device=dev)
    component, _ = load_checkpoint(d, "component", device=dev)
    head = None
    if meta.get("method") == "stack":
        head, _ = load_checkpoint(d, "head", device=dev)
    _freeze(target)
    _freeze(component)
    augmented = _freeze(Stacked(component, _freeze(head) if head is not None else target))
    shape = tuple(int(v) for v in (meta.get("input_shape") or tmeta["input_shape"]))
    return Defense(target, component, augmented, meta, shape, dev, d)  # type: ignore[arg-type]


def save_defense(directory: str | os.PathLike, trained: TrainedDefense, *,
                 target_meta: dict[str, Any], dataset: str | None, seed: int,
                 clean: dict[str, Any] | None = None, target_dir: str | None = None,
                 config: dict[str, Any] | None = None, stage: Path | None = None,
                 detector: dict[str, Any] | None = None,
                 calibration: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the defense directory for ``trained`` into ``directory`` (staged, then moved into
    place). ``target_meta``: M's checkpoint sidecar (architecture, input shape, classes);
    ``clean``: :func:`~luring.defense.evaluate_clean`'s figures; ``config``: what was asked
    for (written to ``config.json``; defaults to the resolved settings); ``stage``: the
    staging directory of an :class:`~luring.defense.publish.OutputClaim` the caller holds
    (default: ``directory`` is claimed here; a concurrent writer fails); ``detector``: the
    operating point (``defense.json``'s ``detector``; None: the paper rule is used on
    loading); ``calibration``: ``{"t_logits", "m_logits", "index"}`` of the calibration
    images (written to ``calibration.safetensors``). Returns the directory.

    ``target_meta`` needs ``"architecture"`` (a registered name, ``module:callable`` or
    ``torchscript``: how a later process rebuilds M) and ``"input_shape"`` (C, H, W);
    ``"classes"`` / ``"num_classes"`` and ``"arch_kwargs"`` are optional. A missing key is a
    one-line LuringError."""
    missing = [k for k in ("architecture", "input_shape")
               if not isinstance(target_meta, dict) or not target_meta.get(k)]
    if missing:
        raise LuringError(
            f"target_meta lacks {', '.join(missing)}: pass M's checkpoint sidecar "
            "(luring.models.load_checkpoint(DIR, 'model')[1]), or a dict with 'architecture' "
            "(a name from luring.models.register_architecture, 'module:callable' or "
            "'torchscript') and 'input_shape' (C, H, W)")

    def write(d: Path) -> None:
        if calibration is not None:
            save_calibration(d, calibration["t_logits"], calibration["m_logits"],
                             calibration["index"])
        _write_all(d, trained, target_meta, dataset, seed, clean, target_dir, config, detector)

    return write_defense(directory, write, stage)


def _write_all(d: Path, tr: TrainedDefense, tmeta: dict[str, Any], dataset: str | None,
               seed: int, clean: dict[str, Any] | None, target_dir: str | None,
               config: dict[str, Any] | None, detector: dict[str, Any] | None) -> None:
    shape = list(tmeta["input_shape"])
    classes = tmeta.get("classes")
    num_classes = tmeta.get("num_classes") or (len(classes) if classes else None)
    save_checkpoint(tr.target, d, "target", architecture=tmeta["architecture"],
                    input_shape=shape, classes=classes, num_classes=num_classes,
                    dataset=tmeta.get("dataset"), test_accuracy=tmeta.get("test_accuracy"),
                    config=tmeta.get("config"), seed=tmeta.get("seed"),
                    arch_kwargs=tmeta.get("arch_kwargs"), extra={"source": target_dir})
    save_checkpoint(tr.component, d, "component", architecture=tr.component_arch,
                    input_shape=shape, dataset=dataset, config=tr.settings, seed=seed,
                    arch_kwargs=tr.component_kwargs,
                    extra={"role": "component", "method": tr.method})
    if tr.head is not None:
        save_checkpoint(tr.head, d, "head", architecture=str(tr.head_arch), input_shape=shape,
                        classes=classes, num_classes=num_classes, dataset=dataset,
                        test_accuracy=(clean or {}).get("accuracy_t"), config=tr.settings,
                        seed=seed, arch_kwargs=tr.head_kwargs, extra={"role": "head"})
    meta = {
        "format": FORMAT, "method": tr.method, "lambda": tr.settings.get("lambda"),
        "dataset": dataset, "target_dir": target_dir, "config": tr.settings, "seed": seed,
        "selection": tr.selection, "clean": clean, "history": tr.history,
        "versions": versions(), "input_shape": shape, "num_classes": num_classes,
        "component_architecture": tr.component_arch, "head_architecture": tr.head_arch,
        "training_seconds": round(tr.seconds, 2),
    }
    if detector is not None:
        meta["detector"] = detector
    results = {"format": "luring-defense-results/1", "method": tr.method, "dataset": dataset,
               "lambda": tr.settings.get("lambda"), "clean": clean, "selection": tr.selection,
               "training_seconds": round(tr.seconds, 2), "seed": seed,
               "detector": detector}
    write_records(d, meta, results, config if config is not None else tr.settings,
                  _report(meta))


def _report(meta: dict[str, Any]) -> str:
    s, sel = meta["config"], meta["selection"]
    lam = f", λ = {meta['lambda']}" if meta.get("lambda") is not None else ""
    lines = [f"# Defense: {meta['method']}{lam} on {meta['dataset']}", "",
             f"- target: `{meta['target_dir']}`",
             f"- component: {meta['component_architecture']}"
             + (f", head: {meta['head_architecture']}" if meta.get("head_architecture") else ""),
             f"- settings ({s.get('profile')} profile): {s['epochs']} epochs, batch "
             f"{s['batch_size']}, Adam lr {s['lr']:g} ({s.get('lr_decay')}, warm-up "
             f"{s.get('warmup_epochs', 0):g} epochs), dropout {s.get('dropout', 0):g}, "
             f"augment {s.get('augment')}, seed {meta['seed']}",
             f"- training time: {meta['training_seconds']:.1f} s",
             f"- kept checkpoint ({sel.get('rule')}, label-free, on {sel.get('n')} held-out "
             f"training images): epoch {sel.get('epoch')}"
             + (f", held-out agreement {100 * sel['agreement']:.1f}%"
                if sel.get("agreement") is not None else ""), ""]
    det = meta.get("detector")
    if det:
        split = det.get("split") or {}
        where = (f"{det['n']} held-out unlabelled training images ({split.get('kind')}, "
                 f"never seen by P)" if split else f"{det['n']} held-out images")
        lines.insert(-1, f"- detector: score `{det['rule']}`, flag when score > "
                     f"{det['threshold']:.6g}"
                     + (f", chosen for ≤ {100 * det['target_fpr']:g}% false alarms"
                        + (f" on new clean images with probability {det['confidence']:g} "
                           "(order-statistic bound)" if det.get("confidence") is not None
                           else "")
                        + f", from {where}: {100 * det['heldout_fpr']:.1f}% there"
                        if det.get("target_fpr") is not None and det.get("heldout_fpr") is not None
                        else " (the paper rule)"))
    if meta.get("clean"):
        lines += ["## Clean test images (paper table 8)", "", clean_table_markdown(meta["clean"])]
    return "\n".join(lines) + "\n"
