"""The deployed defense: the defense directory (writing and loading) and :class:`Defense`.

Defense directory (contract with the other stages, format ``luring-defense/1``):

* ``defense.json``: ``format``, ``method``, ``lambda``, ``dataset``, ``target_dir``,
  ``config`` (fully resolved settings), ``seed``, ``selection``, ``clean``, ``history``,
  ``versions`` (plus ``input_shape``, ``num_classes``, ``component_architecture``,
  ``head_architecture``, ``training_seconds``);
* ``target.safetensors/.json``: a copy of M; ``component.safetensors/.json``: P;
  for ``stack`` also ``head.safetensors/.json`` (the classifier retrained with P);
* ``config.json`` (how the run was asked for), ``results.json`` (the clean figures) and
  ``report.md`` (human summary).

The directory is written into a hidden sibling staging directory first and then moved into
place file by file with ``os.replace``: an interrupted or failed run leaves any previous
defense intact and no half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from luring.defense.evaluate import clean_table_markdown
from luring.defense.train import TrainedDefense
from luring.errors import LuringError
from luring.models import Stacked, load_checkpoint, predict_labels, save_checkpoint
from luring.utils import (
    atomic_write_json,
    atomic_write_text,
    check_images,
    read_json,
    resolve_device,
    versions,
)

__all__ = ["FORMAT", "Defense", "Detection", "load", "save_defense", "staging_dir", "publish"]

FORMAT = "luring-defense/1"
_MODEL_FILES = [f"{n}.{e}" for n in ("target", "component", "head") for e in ("safetensors",
                                                                              "json")]
_OWN_FILES = _MODEL_FILES + ["defense.json", "config.json", "results.json", "report.md"]


class Detection(NamedTuple):
    """Per-image output of :meth:`Defense.detect`: ``t_label`` (N,) int64 = T's label (what is
    answered), ``m_label`` (N,) int64 = M's label, ``flagged`` (N,) bool = they disagree."""

    t_label: torch.Tensor
    m_label: torch.Tensor
    flagged: torch.Tensor


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

    def detect(self, x: torch.Tensor, batch_size: int = 1000) -> Detection:
        """The detection scheme of section 4.1: T's label, M's label and whether they differ
        (an input is flagged as adversarial exactly when T(x) ≠ M(x))."""
        self.check(x)  # once for both models
        t = predict_labels(self.augmented, x, batch_size, self.device)
        m = predict_labels(self.target, x, batch_size, self.device)
        return Detection(t, m, t != m)


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Defense:
    """Load a defense directory written by ``luring train-defense`` / :func:`save_defense`.
    Raises a one-line LuringError when it is missing, of another format or incomplete."""
    d = Path(directory)
    if not d.is_dir():
        raise LuringError(f"defense directory {d} does not exist; train one with "
                          "`luring train-defense`")
    meta = read_json(d / "defense.json") if (d / "defense.json").exists() else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LuringError(f"{d} is not a defense directory (defense.json with format "
                          f"{FORMAT!r} expected)")
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


def staging_dir(out: str | os.PathLike) -> Path:
    """Create the hidden sibling directory a run writes into before :func:`publish`; raises a
    LuringError at once when ``out``'s location cannot be written (so that nothing is trained
    for nothing)."""
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise LuringError(f"--out {o} exists and is not a directory; choose another --out")
    try:
        o.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{o.name}.partial-", dir=o.parent))
    except OSError as exc:
        raise LuringError(f"output directory {o} cannot be written ({exc.strerror or exc}); "
                          "choose another --out or fix its permissions") from None


def publish(staging: Path, out: str | os.PathLike) -> Path:
    """Move the staged files into ``out`` (each with ``os.replace``, models first and
    ``defense.json`` last), remove our files a previous run left that this one does not
    have (e.g. ``head.*``), then delete the staging directory."""
    o = Path(out)
    try:
        o.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in staging.iterdir())
        for name in sorted(names, key=lambda n: (n == "defense.json", n)):
            os.replace(staging / name, o / name)
        for name in _OWN_FILES:
            if name not in names:
                with contextlib.suppress(FileNotFoundError):
                    (o / name).unlink()
    except OSError as exc:
        raise LuringError(f"cannot write the defense into {o} ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return o


def save_defense(directory: str | os.PathLike, trained: TrainedDefense, *,
                 target_meta: dict[str, Any], dataset: str | None, seed: int,
                 clean: dict[str, Any] | None = None, target_dir: str | None = None,
                 config: dict[str, Any] | None = None, stage: Path | None = None) -> Path:
    """Write the defense directory for ``trained`` into ``directory`` (staged, then moved into
    place). ``target_meta``: M's checkpoint sidecar (architecture, input shape, classes);
    ``clean``: :func:`~luring.defense.evaluate_clean`'s figures; ``config``: what was asked
    for (written to ``config.json``; defaults to the resolved settings); ``stage``: a
    directory from :func:`staging_dir` made earlier (default: a new one). Returns the
    directory."""
    stage = stage if stage is not None else staging_dir(directory)
    try:
        _write_all(stage, trained, target_meta, dataset, seed, clean, target_dir, config)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return publish(stage, directory)


def _write_all(d: Path, tr: TrainedDefense, tmeta: dict[str, Any], dataset: str | None,
               seed: int, clean: dict[str, Any] | None, target_dir: str | None,
               config: dict[str, Any] | None) -> None:
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
    results = {"format": "luring-defense-results/1", "method": tr.method, "dataset": dataset,
               "lambda": tr.settings.get("lambda"), "clean": clean, "selection": tr.selection,
               "training_seconds": round(tr.seconds, 2), "seed": seed}
    atomic_write_json(d / "config.json", config if config is not None else tr.settings)
    atomic_write_json(d / "results.json", results)
    atomic_write_text(d / "report.md", _report(meta))
    atomic_write_json(d / "defense.json", meta)


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
    if meta.get("clean"):
        lines += ["## Clean test images (paper table 8)", "", clean_table_markdown(meta["clean"])]
    return "\n".join(lines) + "\n"
