"""Architecture names → models: :func:`arch_spec` looks a name up — a built-in or registered
one (:data:`~luring.models.architectures.ARCHITECTURES`), ``default-component-HxW``, or one
resolved by :mod:`luring.models.user` (``module:callable``, ``torchvision:NAME``,
``timm:NAME``, ``torchscript``) — and :func:`build` constructs it. This module sits above
both: ``architectures`` and ``user`` never import it."""

from __future__ import annotations

import re

from torch import nn

from luring.errors import LuringError
from luring.models import user
from luring.models.adapt import adapt, split_adapt_kwargs
from luring.models.architectures import ARCHITECTURES, ArchSpec
from luring.models.components import DefaultComponent

__all__ = ["arch_spec", "build"]

_DEFAULT_COMPONENT = re.compile(r"default-component-([1-9][0-9]*)x([1-9][0-9]*)")


def arch_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` for ``name``: a registered one, ``default-component-HxW``, or
    one of a user's (:mod:`luring.models.user`: ``module:callable``, ``torchvision:NAME``,
    ``timm:NAME``, ``torchscript``); an unknown name is a LuringError listing the known
    names."""
    if name not in ARCHITECTURES and user.is_dynamic(name):
        return user.dynamic_spec(name)
    m = _DEFAULT_COMPONENT.fullmatch(name) if isinstance(name, str) else None
    if m and name not in ARCHITECTURES:
        h, w = int(m.group(1)), int(m.group(2))
        return ArchSpec(name, "component", (3, h, w),
                        lambda c=3, k=None, **kw: DefaultComponent(c, (h, w), **kw), 0,
                        f"default encoder/decoder planned for {h}x{w} images")
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise LuringError(f"unknown architecture {name!r}; choose one of: {known}, "
                          "default-component-HxW, module:callable (a factory in your module), "
                          "torchvision:NAME, timm:NAME or torchscript")
    return ARCHITECTURES[name]


def build(name: str, in_channels: int | None = None, num_classes: int | None = None,
          **kwargs) -> nn.Module:
    """Construct architecture ``name`` (randomly initialised, in train mode) for
    ``in_channels`` (default: the architecture's) and ``num_classes`` (default: the
    architecture's fixed count, else 10). ``kwargs``: the architecture's options, and for
    every architecture :data:`~luring.models.adapt.ADAPT_KEYS` (``input_mean``,
    ``input_std``, ``output_key``), which wrap the model in
    :class:`~luring.models.adapt.Adapted`."""
    spec = arch_spec(name)
    own, rest = split_adapt_kwargs(kwargs)
    c = in_channels if in_channels is not None else (spec.input_shape[0] or None)
    k = num_classes if num_classes is not None else (spec.num_classes or 10)
    return adapt(spec.make(c, k, **rest), **own)
