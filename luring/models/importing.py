"""Bringing in a user's own target M: weight files (safetensors, or ``.pth`` read with
``torch.load(weights_only=True)``, never a full unpickle) loaded into a registered
architecture, checked on the data set's images and written as a target directory
(``luring import-target``), the layout ``luring train-target`` writes: ``model.safetensors``
+ ``model.json`` (sidecar with the measured test accuracy and its n), ``config.json``,
``results.json`` and ``report.md``.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from luring.errors import LuringError
from luring.models.adapt import adapt, check_logits, split_adapt_kwargs
from luring.models.architectures import default_architectures
from luring.models.checkpoint import load_state_dict_file, load_weights_into, save_checkpoint
from luring.models.lookup import arch_spec, build
from luring.models.scripted import TORCHSCRIPT, is_torchscript_file, read_scripted
from luring.utils import (
    atomic_write_json,
    atomic_write_text,
    ensure_dir,
    make_generator,
    progress,
    resolve_device,
    versions,
)

__all__ = ["read_weights", "import_target", "accuracy_on_loader", "chance_warning",
           "TORCH_SUFFIXES", "CHANCE_FACTOR"]

TORCH_SUFFIXES = (".pth", ".pt")
#: A measured accuracy ≤ CHANCE_FACTOR / (number of classes) is "at chance level": the
#: weights do not fit the data as it is read (``import_target`` warns).
CHANCE_FACTOR = 1.5
_WRAPPERS = ("state_dict", "model_state_dict", "model")


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _as_state_dict(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} from what a weights file holds: the state dict itself, or one
    wrapped under ``state_dict`` / ``model_state_dict`` / ``model``; a ``module.`` prefix on
    every key (``nn.DataParallel``) is removed."""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise LuringError(f"{p} does not hold a state dict (a mapping of parameter names to "
                          "tensors); save model.state_dict()")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``: ``.safetensors``, or ``.pth``/``.pt`` read with
    ``torch.load(weights_only=True)`` (tensors and plain containers only, no code is run).
    A missing file, another suffix or unreadable content is a LuringError."""
    p = Path(path)
    if not p.is_file():
        raise LuringError(f"weights file {p} does not exist; pass the path of a .safetensors "
                          "or .pth file (--weights)")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return _as_state_dict(load_state_dict_file(p), p)
    if suffix not in TORCH_SUFFIXES:
        raise LuringError(f"weights file {p}: unknown format {suffix or '(no suffix)'!r}; use "
                          ".safetensors, or .pth/.pt saved with torch.save(model.state_dict())")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LuringError(f"{p} cannot be read as plain weights ({why}); it may be truncated "
                          "or hold pickled objects — save model.state_dict() with torch.save, "
                          "or convert it to safetensors") from None
    return _as_state_dict(obj, p)


@torch.no_grad()
def accuracy_on_loader(model: nn.Module, loader: Any, device: torch.device | str,
                       desc: str = "evaluate") -> tuple[int, int]:
    """(correct, n) of ``model`` (put in eval mode) over the batches ``(images (B, C, H, W)
    in [0, 1], labels int64 (B,))`` of ``loader``. Unlabelled images (label < 0) are a
    LuringError: accuracy needs labels."""
    model.eval()
    correct = n = 0
    for x, y in progress(loader, total=len(loader), desc=desc, unit="batch"):
        if bool((y < 0).any()):
            raise LuringError("the test split is unlabelled (a flat folder); accuracy needs "
                              "class sub-folders")
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        n += len(y)
    return correct, n


def _check_input(model: nn.Module, shape: tuple[int, int, int], arch: str, dataset: str,
                 device: torch.device, num_classes: int | None = None) -> None:
    """Run ``model`` on two black images of ``shape``: it must accept them and return
    (2, ``num_classes``) logits (:func:`~luring.models.adapt.check_logits`)."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape, device=device))
    except LuringError:
        raise
    except Exception as exc:  # a user's model may raise anything on a wrong input
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LuringError(f"architecture {arch} does not accept {dataset}'s "
                          f"{'×'.join(map(str, shape))} images ({first}); pass another "
                          "--arch or --dataset") from None
    check_logits(out, arch, num_classes, n=2)


def import_target(dataset: str, weights: str | os.PathLike, out: str | os.PathLike, *,
                  arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                  data_dir: str | os.PathLike | None = None, images: int | None = None,
                  seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 64,
                  workers: int = 0, force: bool = False, input_mean: Any = None,
                  input_std: Any = None, output_key: int | str | None = None
                  ) -> dict[str, Any]:
    """Load ``weights`` into architecture ``arch`` (default: the data set's target, or
    ``mobilenetv2`` for image folders; ``torchscript`` when ``weights`` is a TorchScript
    file) built for ``dataset``'s shape and classes, measure its test accuracy on ``images``
    test images (a seeded random subset; default all) and write the target directory ``out``
    (``model.json`` last: it marks a finished target). ``arch`` may be any name
    :func:`~luring.models.build` takes (``module:callable``, ``torchvision:NAME``,
    ``timm:NAME``, ``torchscript``: :mod:`luring.models.user`). ``input_mean`` /
    ``input_std`` (per channel, on the [0, 1] scale) put a normalisation inside the stored
    model, ``output_key`` takes the logits out of a tuple/dict/object output
    (:mod:`luring.models.adapt`; recorded in ``arch_kwargs``). Returns
    ``{"test_accuracy", "n_test", "architecture", "arch_kwargs", "out", "seconds",
    "warning"}``; ``warning`` (also in report.md and results.json) is :func:`chance_warning`'s
    line when the accuracy is at chance level, else None."""
    from luring.data import dataset_classes, get_spec, open_dataset
    from luring.data.imagefolder import make_loader

    t0 = time.perf_counter()
    spec = get_spec(dataset)
    outp = Path(out)
    if (outp / "model.json").exists() and not force:
        raise LuringError(f"{outp} already holds a model; pass --force to replace it or "
                          "choose another --out")
    dev = resolve_device(device)
    own = {k: v for k, v in (("input_mean", input_mean), ("input_std", input_std),
                             ("output_key", output_key)) if v is not None}
    own, kwargs = split_adapt_kwargs({**(arch_kwargs or {}), **own})
    scripted_file = is_torchscript_file(weights)
    name = arch or (TORCHSCRIPT if scripted_file else
                    default_architectures(spec.family, spec.shape)[0])
    if arch_spec(name).role != "target":
        raise LuringError(f"{name} is a defense component, not a target architecture")
    if scripted_file != (name == TORCHSCRIPT):
        raise LuringError(f"{weights} is a TorchScript file: pass --arch torchscript (or no "
                          "--arch)" if scripted_file else f"--arch torchscript takes a "
                          f"TorchScript file (torch.jit.save); {weights} is not one")
    state = None if scripted_file else read_weights(weights)
    test = open_dataset(dataset, "test", data_dir)
    classes = dataset_classes(dataset, data_dir)
    if not classes:
        raise LuringError(f"{dataset}: the test split has no class folders, so no accuracy "
                          "can be measured; sort the test images into class sub-folders")
    if state is None:
        if kwargs:
            raise LuringError(f"architecture torchscript takes no options {sorted(kwargs)}")
        model, sha = read_scripted(weights)
        kwargs = {"sha256": sha}
    else:
        try:
            model = build(name, in_channels=spec.shape[0], num_classes=len(classes), **kwargs)
        except TypeError as exc:
            raise LuringError(f"architecture {name} does not take {sorted(kwargs)} ({exc})"
                              ) from None
        try:
            load_weights_into(model, state, str(weights))
        except LuringError as exc:
            raise LuringError(f"{exc} (the model is built for {len(classes)} classes and "
                              f"{'×'.join(map(str, spec.shape))} images of {dataset})") from None
    model = adapt(model, **own).to(dev).eval()
    kwargs.update(own)
    _check_input(model, spec.shape, name, dataset, dev, len(classes))
    n_all = len(test)  # type: ignore[arg-type]
    if images is not None and images < 1:
        raise LuringError(f"--images must be ≥ 1, got {images}")
    if images is not None and images < n_all:
        order = torch.randperm(n_all, generator=make_generator(seed))[:images].sort().values
        test = Subset(test, order.tolist())
    loader = make_loader(test, batch_size, workers)
    correct, n = accuracy_on_loader(model, loader, dev, desc=f"import-target {dataset}")
    acc = correct / n
    warning = chance_warning(acc, n, len(classes), dataset)
    seconds = time.perf_counter() - t0
    wpath = Path(weights)
    config = {"command": "import-target", "dataset": dataset, "data_dir": data_dir,
              "architecture": name, "arch_kwargs": kwargs, "weights": str(wpath.resolve()),
              "weights_sha256": _sha256(wpath), "images": images, "seed": seed,
              "device": str(dev), "batch_size": batch_size, "n_test": n,
              "n_test_available": n_all}
    outp = ensure_dir(outp)
    atomic_write_json(outp / "config.json", config)
    atomic_write_json(outp / "results.json", {
        "test_accuracy": acc, "n_test": n, "correct": correct, "seconds": seconds,
        "history": [], "versions": versions(), "warning": warning})
    subset = f"a seeded random subset (seed {seed}) of {n} of the {n_all}" if n < n_all \
        else f"all {n}"
    atomic_write_text(outp / "report.md", (
        f"# Target model M — {dataset} (imported)\n\n"
        f"Architecture `{name}` {kwargs or ''}, weights `{wpath}` (sha256 "
        f"{config['weights_sha256'][:16]}…), not trained here.\n\n"
        f"**Test accuracy: {acc:.4f}** (n = {n}: {subset} test images), measured on "
        f"{dev} in {seconds:.1f} s.\n" + (f"\n**Warning:** {warning}\n" if warning else "")))
    save_checkpoint(model, outp, "model", architecture=name, input_shape=spec.shape,
                    classes=list(classes), dataset=dataset, test_accuracy=acc, config=config,
                    seed=seed, arch_kwargs=kwargs,
                    extra={"n_test": n, "imported_from": str(wpath.resolve())})
    return {"test_accuracy": acc, "n_test": n, "architecture": name, "arch_kwargs": kwargs,
            "out": str(outp), "seconds": seconds, "warning": warning}


def chance_warning(accuracy: float, n: int, num_classes: int, dataset: str) -> str | None:
    """A warning line when ``accuracy`` (in [0, 1], on ``n`` images) is at chance level for
    ``num_classes`` classes (≤ :data:`CHANCE_FACTOR` / ``num_classes``), naming the likely
    causes; None otherwise."""
    limit = CHANCE_FACTOR / max(num_classes, 1)
    if accuracy > limit:
        return None
    return (f"the measured test accuracy {100 * accuracy:.1f}% (n = {n}) is at chance level for "
            f"{num_classes} classes (≤ {100 * limit:.3g}%): these weights do not fit {dataset} "
            "as it is read here. Likely causes: another class order (output i must be the i-th "
            "class, for image folders the i-th class folder sorted by name), another input "
            "normalisation (--mean/--std, or --normalize imagenet|symmetric|none for "
            "MobileNetV2), or another "
            "data set than the one the weights were trained on (--dataset)")
