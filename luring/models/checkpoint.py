"""Safe checkpoints: weights in safetensors, metadata in a JSON sidecar. Nothing is unpickled.

A checkpoint ``NAME`` in directory ``DIR`` is two files: ``DIR/NAME.safetensors`` (the state
dict) and ``DIR/NAME.json`` (the sidecar: ``format``, ``architecture``, ``arch_kwargs``,
``dataset``, ``input_shape`` [C, H, W], ``classes``, ``num_classes``, ``test_accuracy``,
``config``, ``seed``, ``versions``; for a user's architecture also ``factory``). Both are
written atomically, weights first. A ``torchscript`` checkpoint has a third file,
``DIR/NAME.pt`` (the TorchScript file, written before the weights).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from luring.errors import LuringError
from luring.models import scripted, user
from luring.models.lookup import arch_spec, build
from luring.utils import atomic_write_bytes, atomic_write_json, read_json, versions

__all__ = ["save_checkpoint", "load_checkpoint", "load_state_dict_file", "load_weights_into",
           "read_sidecar", "FORMAT"]

FORMAT = "luring-model/1"


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, name: str = "model", *,
                    architecture: str, input_shape: tuple[int, int, int] | list[int],
                    classes: list[str] | None = None, num_classes: int | None = None,
                    dataset: str | None = None, test_accuracy: float | None = None,
                    config: dict[str, Any] | None = None, seed: int | None = None,
                    arch_kwargs: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict and its sidecar. Returns the sidecar's path. A user's
    architecture (:mod:`luring.models.user`) adds ``"factory"`` to the sidecar (how a fresh
    process rebuilds it); ``torchscript`` also writes ``NAME.pt``, the TorchScript file
    (:func:`luring.models.scripted.write_source`)."""
    d = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if classes is None and num_classes is not None:
        classes = [str(i) for i in range(num_classes)]
    arch_kwargs = dict(arch_kwargs or {})
    if architecture == scripted.TORCHSCRIPT:
        arch_kwargs = scripted.write_source(model, d / f"{name}.pt", arch_kwargs)
    factory = user.factory_record(architecture, name)
    sidecar = {
        "format": FORMAT,
        "architecture": architecture,
        "arch_kwargs": arch_kwargs,
        "dataset": dataset,
        "input_shape": list(input_shape),
        "classes": classes,
        "num_classes": len(classes) if classes is not None else num_classes,
        "test_accuracy": test_accuracy,
        "config": config or {},
        "seed": seed,
        "versions": versions(),
    }
    if factory is not None:
        sidecar["factory"] = factory
    if extra:
        sidecar.update(extra)
    atomic_write_bytes(d / f"{name}.safetensors", st_save(state))
    return atomic_write_json(d / f"{name}.json", sidecar)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a state dict; any other content is a LuringError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise LuringError(f"checkpoint {p} does not exist; train one or check the path") from None
    except OSError as exc:
        raise LuringError(f"checkpoint {p} cannot be read ({exc.strerror or exc})") from None
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LuringError(
            f"{p} is not a valid safetensors file ({msg}); it may be truncated or a pickle — "
            "re-save the weights with safetensors"
        ) from None


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model`` strictly; mismatched keys or shapes, and NaN or infinite
    values (damaged weights, or a training that diverged), are a LuringError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        raise LuringError(f"{source} does not match the architecture: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise LuringError(
                f"{source} does not match the architecture: {k} has shape {tuple(v.shape)}, "
                f"expected {tuple(own[k].shape)}"
            )
    bad = [k for k, v in state.items()
           if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        raise LuringError(f"{source} holds NaN or infinite values ({bad[0]}"
                          f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}): the "
                          "weights are damaged or their training diverged; retrain or re-export "
                          "them")
    model.load_state_dict(state, strict=True)
    return model


def read_sidecar(directory: str | os.PathLike, name: str = "model") -> dict[str, Any]:
    """Read and validate a checkpoint's JSON sidecar."""
    p = Path(directory) / f"{name}.json"
    if not p.exists():
        raise LuringError(f"no checkpoint sidecar {p}; expected {name}.json beside "
                          f"{name}.safetensors (train with `luring train-target`)")
    meta = read_json(p)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "architecture" not in meta:
        raise LuringError(f"{p} is not a luring checkpoint sidecar (format {FORMAT!r} expected)")
    return meta


def load_checkpoint(directory: str | os.PathLike, name: str = "model", *,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the architecture named in the sidecar, load the weights, return
    ``(model.eval(), sidecar)``. A user's architecture is made buildable first
    (:func:`luring.models.user.prepare_checkpoint`: its module imported, or ``NAME.pt``
    read and checked)."""
    d = Path(directory)
    meta = read_sidecar(d, name)
    spec = arch_spec(user.prepare_checkpoint(meta, d, name))
    shape = meta.get("input_shape") or list(spec.input_shape)
    num_classes = int(meta.get("num_classes") or 10)
    model = build(spec.name, in_channels=int(shape[0]), num_classes=num_classes,
                  **(meta.get("arch_kwargs") or {}))
    state = load_state_dict_file(d / f"{name}.safetensors")
    load_weights_into(model, state, str(d / f"{name}.safetensors"))
    return model.to(device).eval(), meta
