"""TorchScript files as target models M (``luring import-target --arch torchscript``).

A TorchScript file (``torch.jit.save``) holds a model's code and weights; ``torch.jit.load``
rebuilds it with no Python class of the user's (nothing is unpickled beyond TorchScript's own
restricted format). For the tool it is the *architecture* ``torchscript``: a checkpoint of it
is ``NAME.pt`` (the user's file, byte for byte), ``NAME.safetensors`` (the weights, which
override the file's own on loading) and ``NAME.json`` (``"architecture": "torchscript"``,
``"arch_kwargs": {"sha256": <the file's SHA-256>}``, ``"factory": {"kind": "torchscript",
"file": "NAME.pt"}``). Loading refuses a ``NAME.pt`` whose SHA-256 is not the recorded one.

Within a process the file's bytes are kept by SHA-256 (:func:`remember`), so that
``build("torchscript", sha256=...)`` can make a fresh copy (a Stack head of M's
architecture) and every copy of M (a defense directory's ``target.pt``) is the same file.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from luring.errors import LuringError
from luring.utils import atomic_write_bytes

__all__ = ["TORCHSCRIPT", "is_torchscript_file", "remember", "load_scripted", "read_scripted",
           "fresh", "write_source", "sha256_bytes"]

TORCHSCRIPT = "torchscript"
_SOURCES: dict[str, bytes] = {}  # SHA-256 hex → the TorchScript file's bytes (this process)
_CONV = ("Conv1d", "Conv2d", "Conv3d", "Linear")
_NORM = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm")


def sha256_bytes(data: bytes) -> str:
    """The SHA-256 of ``data``, hex."""
    return hashlib.sha256(data).hexdigest()


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a TorchScript archive (a zip with ``code/`` and
    ``constants.pkl``; a ``torch.save`` state dict has neither). Nothing is loaded."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def remember(data: bytes) -> str:
    """Keep a TorchScript file's bytes in this process; returns their SHA-256."""
    h = sha256_bytes(data)
    _SOURCES[h] = data
    return h


def load_scripted(data: bytes, where: str) -> nn.Module:
    """``torch.jit.load`` of TorchScript bytes on the CPU, in eval mode; anything else is a
    one-line LuringError naming ``where``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and others for bad archives
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LuringError(f"{where} is not a loadable TorchScript file ({why}); save it with "
                          "torch.jit.save(torch.jit.script(model), path)") from None
    return model.eval()


def read_scripted(path: str | os.PathLike, sha256: str | None = None) -> tuple[nn.Module, str]:
    """Load the TorchScript file ``path`` (kept in this process, see :func:`remember`);
    returns ``(module in eval mode, SHA-256)``. ``sha256``: the recorded digest; a file with
    another one is refused (one line: it was replaced or damaged)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise LuringError(f"TorchScript file {p} does not exist; a torchscript checkpoint keeps "
                          "its model there (re-import it with `luring import-target`)") from None
    except OSError as exc:
        raise LuringError(f"TorchScript file {p} cannot be read ({exc.strerror or exc})"
                          ) from None
    got = sha256_bytes(data)
    if sha256 is not None and got != sha256:
        raise LuringError(f"{p} is not the TorchScript file this checkpoint was written with "
                          f"(SHA-256 {got[:16]}…, recorded {str(sha256)[:16]}…): it was "
                          "replaced or damaged; put the original back or re-import the model")
    model = load_scripted(data, str(p))
    remember(data)
    return model, got


def _reset(module: nn.Module) -> nn.Module:
    """PyTorch's default initialisation of a scripted module's layers, by their original
    class name: Conv/Linear Kaiming uniform (a=√5) with uniform biases, normalisation layers
    weight 1, bias 0 and fresh running statistics. Other parameters keep the file's values."""
    with torch.no_grad():
        for m in module.modules():
            kind = getattr(m, "original_name", type(m).__name__)
            params = dict(m.named_parameters(recurse=False))
            if kind in _CONV and "weight" in params:
                w = params["weight"]
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                if params.get("bias") is not None and w.dim() > 1:
                    bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(w)[0])
                    nn.init.uniform_(params["bias"], -bound, bound)
            elif kind in _NORM:
                if "weight" in params:
                    params["weight"].fill_(1.0)
                if "bias" in params:
                    params["bias"].zero_()
                for name, buf in m.named_buffers(recurse=False):
                    if name == "running_mean":
                        buf.zero_()
                    elif name == "running_var":
                        buf.fill_(1.0)
                    elif name == "num_batches_tracked":
                        buf.zero_()
    return module


def fresh(sha256: str | None = None, **unknown: Any) -> nn.Module:
    """A fresh copy (train mode, layers re-initialised as PyTorch does) of the TorchScript
    model with SHA-256 ``sha256``, which must have been loaded in this process (by
    :func:`read_scripted`: loading its checkpoint, or ``import-target``)."""
    if unknown:
        raise LuringError(f"architecture torchscript takes no options {sorted(unknown)}")
    if not sha256:
        raise LuringError("architecture torchscript needs the file's sha256 (arch_kwargs); "
                          "import the model with `luring import-target --arch torchscript`")
    data = _SOURCES.get(str(sha256))
    if data is None:
        raise LuringError(f"the TorchScript model {str(sha256)[:16]}… is not loaded in this "
                          "process; load its checkpoint first (luring.models.load_checkpoint)")
    return _reset(load_scripted(data, f"TorchScript model {str(sha256)[:16]}…")).train()


def _scripted_part(model: nn.Module) -> nn.Module | None:
    """The TorchScript module in ``model`` (itself, or an adapter's ``model``), or None."""
    for m in (model, getattr(model, "model", None)):
        if isinstance(m, torch.jit.ScriptModule):
            return m
    return None


def write_source(model: nn.Module, path: Path, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Write the TorchScript file of ``model`` to ``path`` (atomically): the remembered file
    of ``arch_kwargs["sha256"]`` when there is one, else ``torch.jit.save`` of the scripted
    module inside ``model``. Returns ``arch_kwargs`` with the written file's ``sha256``."""
    data = _SOURCES.get(str(arch_kwargs.get("sha256")))
    if data is None:
        part = _scripted_part(model)
        if part is None:
            raise LuringError("architecture torchscript: the model holds no TorchScript module "
                              "and its file is not loaded in this process")
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(part, buf)
        data = buf.getvalue()
    atomic_write_bytes(path, data)
    return {**arch_kwargs, "sha256": remember(data)}
