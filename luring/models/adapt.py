"""Fitting a user's model to the tool's contract: images in, logits out.

Every model the tool handles takes float32 NCHW images **in [0, 1]** and returns logits of
shape (N, K). A model trained on normalised inputs gets a :class:`Normalize` layer in front of
it (``input_mean`` / ``input_std``, one value per channel or one for all, on the [0, 1] scale:
ImageNet's are 0.485,0.456,0.406 / 0.229,0.224,0.225; a model that expects 0-255 pixels takes
mean 0 and std 1/255); a model returning a tuple, a dict or an object gets the entry
``output_key`` (an index or a key/attribute name) taken out of its output. Both are
architecture options (``arch_kwargs``: :data:`ADAPT_KEYS`) that
:func:`luring.models.build` handles for every architecture: the checkpoint's sidecar records
them and the same wrapper is rebuilt on loading. The wrapped model is :class:`Adapted`; its
state dict is the user's model's under ``model.`` plus ``normalize.mean`` / ``normalize.std``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from luring.errors import LuringError

__all__ = ["ADAPT_KEYS", "Adapted", "Normalize", "adapt", "split_adapt_kwargs",
           "select_output", "check_logits", "parse_output_key", "channel_values"]

#: The architecture options every architecture takes (see the module docstring).
ADAPT_KEYS = ("input_mean", "input_std", "output_key")


def channel_values(values: Any, name: str) -> list[float]:
    """``values`` (a number or a sequence of numbers) as a non-empty list of finite floats;
    a LuringError naming ``name`` otherwise."""
    seq = [values] if isinstance(values, (int, float)) else values
    try:
        out = [float(v) for v in seq]
    except (TypeError, ValueError):
        raise LuringError(f"{name} must be numbers (one per channel, or one for all), got "
                          f"{values!r}") from None
    if not out or not all(v == v and abs(v) != float("inf") for v in out):
        raise LuringError(f"{name} must be finite numbers (one per channel, or one for all), "
                          f"got {values!r}")
    return out


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel. Input (N, C, H, W) in [0, 1]; ``mean`` and ``std``:
    C values or one value (std > 0), stored as buffers of shape (1, C or 1, 1, 1)."""

    def __init__(self, mean: Sequence[float] | float = 0.0,
                 std: Sequence[float] | float = 1.0) -> None:
        super().__init__()
        m, s = channel_values(mean, "input_mean"), channel_values(std, "input_std")
        if min(s) <= 0:
            raise LuringError(f"input_std must be > 0, got {s}")
        if len(m) != len(s) and 1 not in (len(m), len(s)):
            raise LuringError(f"input_mean has {len(m)} values and input_std {len(s)}; give "
                              "one per channel (or one for all) for both")
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def select_output(out: Any, key: int | str) -> Any:
    """The entry ``key`` of a model's output: a dict's key (also ``str(key)``), a sequence's
    index (an int, or a string of digits), else an attribute (a named tuple's field, an
    output object's member). A missing entry is a LuringError."""
    if isinstance(out, Mapping):
        for k in (key, str(key)):
            if k in out:
                return out[k]
    elif isinstance(out, (tuple, list)):
        idx = key if isinstance(key, int) else int(key) if str(key).lstrip("-").isdigit() \
            else None
        if idx is not None and -len(out) <= idx < len(out):
            return out[idx]
    if isinstance(key, str) and hasattr(out, key) and not isinstance(out, torch.Tensor):
        return getattr(out, key)
    if isinstance(out, torch.Tensor):
        raise LuringError(f"the model returns {describe_output(out)} already; drop "
                          f"--output-key {key}")
    raise LuringError(f"the model's output ({describe_output(out)}) has no entry {key!r}; "
                      "pass --output-key with one of its keys or indices")


class Adapted(nn.Module):
    """A user's model made to take images in [0, 1] and return logits: ``normalize`` (a
    :class:`Normalize`, or the identity) before it, the output entry ``output_key`` (None:
    the output itself) after it. Input (N, C, H, W) in [0, 1]; output what ``model`` returns
    (the logits tensor (N, K) when ``output_key`` is right)."""

    def __init__(self, model: nn.Module, input_mean: Sequence[float] | float | None = None,
                 input_std: Sequence[float] | float | None = None,
                 output_key: int | str | None = None) -> None:
        super().__init__()
        normalise = input_mean is not None or input_std is not None
        self.normalize: nn.Module = Normalize(0.0 if input_mean is None else input_mean,
                                              1.0 if input_std is None else input_std) \
            if normalise else nn.Identity()
        self.model = model
        self.output_key = output_key

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(self.normalize(x))
        return out if self.output_key is None else select_output(out, self.output_key)


def split_adapt_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the :data:`ADAPT_KEYS` options that are set, every other option)."""
    own = {k: v for k, v in kwargs.items() if k in ADAPT_KEYS and v is not None}
    return own, {k: v for k, v in kwargs.items() if k not in ADAPT_KEYS}


def adapt(model: nn.Module, input_mean: Any = None, input_std: Any = None,
          output_key: int | str | None = None) -> nn.Module:
    """``model`` wrapped in :class:`Adapted` when any option is set, else ``model`` itself."""
    if input_mean is None and input_std is None and output_key is None:
        return model
    return Adapted(model, input_mean, input_std, output_key)


def parse_output_key(text: str) -> int | str:
    """``--output-key``: an integer index (``0``, ``-1``) or a key/attribute name."""
    t = text.strip()
    if not t:
        raise LuringError("--output-key must be an index or a key, got an empty string")
    return int(t) if t.lstrip("-").isdigit() else t


def describe_output(out: Any) -> str:
    """A short description of a model output, e.g. ``a tuple of 2 items`` or ``a dict with
    keys 'logits', 'features'``."""
    if isinstance(out, Mapping):
        keys = ", ".join(repr(k) for k in list(out)[:6])
        return f"a {type(out).__name__} with keys {keys}" + (" ..." if len(out) > 6 else "")
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)
        extra = f" (fields {', '.join(fields)})" if fields else ""
        return f"a {type(out).__name__} of {len(out)} items{extra}"
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    return f"a {type(out).__name__} object"


def _suggestion(out: Any, n: int) -> str:
    """The keys or indices of ``out``'s entries that look like logits ((n, K) tensors)."""
    if isinstance(out, Mapping):
        items = list(out.items())
    elif isinstance(out, (tuple, list)):
        items = list(enumerate(out))
    else:
        items = [(k, v) for k, v in vars(out).items() if not k.startswith("_")] \
            if hasattr(out, "__dict__") else []
    good = [k for k, v in items if isinstance(v, torch.Tensor) and v.dim() == 2
            and v.shape[0] == n]
    return f" (e.g. --output-key {good[0]})" if good else ""


def check_logits(out: Any, arch: str, num_classes: int | None, n: int = 1) -> torch.Tensor:
    """``out``, a model's output on ``n`` images, when it is a logits tensor (n, num_classes);
    otherwise a one-line LuringError: a tuple/dict/object names ``--output-key``, a tensor of
    another shape names the expected one."""
    if not isinstance(out, torch.Tensor):
        raise LuringError(f"architecture {arch} returns {describe_output(out)}, not a logits "
                          "tensor; pass --output-key KEY (an index or a dict key) to take its "
                          f"logits{_suggestion(out, n)}")
    if out.dim() != 2 or out.shape[0] != n:
        raise LuringError(f"architecture {arch} returns shape {tuple(out.shape)}, not (N, "
                          "classes) logits; pass a target architecture (or --output-key)")
    if num_classes is not None and out.shape[1] != num_classes:
        raise LuringError(f"architecture {arch} returns {out.shape[1]} logits per image but the "
                          f"data set has {num_classes} classes; build it for {num_classes} "
                          "classes (a num_classes parameter of the factory) or pick the data set "
                          "it was trained on")
    return out
