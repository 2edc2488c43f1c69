"""Export the augmented model T = M∘P alone: the model to deploy where attackers can reach it.

M stays private (section 4.1): only T's graph and weights go into the file. The file carries
no metadata naming the defense. Formats:

* ``onnx``: input ``images`` float32 (N, C, H, W) in [0, 1] with a dynamic batch axis,
  output ``logits`` (N, K); opset 17, through PyTorch's TorchScript-based exporter (needs the
  ``onnx`` package: ``pip install luring[export]``);
* ``torchscript``: a traced module (``torch.jit.load`` it; same input and output).

Files are written atomically.
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from luring.errors import LuringError
from luring.utils import atomic_write_bytes

__all__ = ["export_augmented", "FORMATS"]

FORMATS = ("onnx", "torchscript")
OPSET = 17


class _Exported(nn.Module):
    """T as a plain module, input ``images`` → output ``logits``."""

    def __init__(self, augmented: nn.Module) -> None:
        super().__init__()
        self.augmented = augmented

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.augmented(images)


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        raise LuringError("ONNX export needs the onnx package: pip install luring[export]"
                          ) from None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
            model = torch.jit.trace(model, (example,))  # a TorchScript M: export the whole trace
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["images"],
                          output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def _torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,))
        torch.jit.save(traced, buf)
    return buf.getvalue()


def export_augmented(defense, fmt: str, out: str | os.PathLike) -> Path:
    """Export ``defense.augmented`` (T) to ``out`` in ``fmt`` (``onnx`` or ``torchscript``).
    ``defense``: a :class:`~luring.defense.Defense` (uses its ``input_shape``). The export runs
    on the CPU; the defense's modules are not modified. Returns the written path."""
    if fmt not in FORMATS:
        raise LuringError(f"unknown export format {fmt!r}; choose onnx or torchscript")
    c, h, w = defense.input_shape
    model = _Exported(defense.augmented).eval()
    device = next(model.parameters()).device
    if device.type != "cpu":
        import copy

        model = copy.deepcopy(model).cpu()
    example = torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(0))
    try:
        data = _onnx_bytes(model, example) if fmt == "onnx" else _torchscript_bytes(model,
                                                                                     example)
    except LuringError:
        raise
    except Exception as exc:  # exporter failures: report them in one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LuringError(f"{fmt} export failed ({msg})") from None
    try:
        return atomic_write_bytes(out, data)
    except OSError as exc:
        raise LuringError(f"cannot write {out} ({exc.strerror or exc}); choose another --out"
                          ) from None
