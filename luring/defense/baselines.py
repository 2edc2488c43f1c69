"""The baselines Auto and Stack of section 3.1 as training plans (:class:`~luring.defense.
plans.Plan`) for :func:`luring.defense.train_defense`; what they train and why is in
:mod:`luring.defense.plans`' docstring (C_E shares the luring plan there)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring.defense.loss import reconstruction_loss
from luring.defense.plans import Plan, init_parameters
from luring.errors import LuringError
from luring.models import Stacked, build

__all__ = ["auto_plan", "stack_plan"]


def auto_plan(target: nn.Module, component: nn.Module) -> Plan:
    """Auto: the loss of a batch is P's binary cross-entropy reconstruction of the images."""

    def loss(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(component(xb).float(), xb.float())

    return Plan(list(component.parameters()), [component], loss, Stacked(component, target))


def stack_plan(component: nn.Module, labels: torch.Tensor | None, head_arch: str | None,
               head_kwargs: dict[str, Any], in_channels: int, num_classes: int | None,
               init: str, generator: torch.Generator, device: torch.device) -> Plan:
    """Stack: a fresh ``head_arch`` classifier after P, both trained with cross-entropy on
    ``labels`` (int64 (N,) aligned with the training images; required)."""
    if labels is None:
        raise LuringError("method stack trains with labels: pass the training labels "
                          "(it is the only method that reads them)")
    if head_arch is None:
        raise LuringError("method stack needs head_arch, the target's architecture name")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype != torch.int64:
        raise LuringError("stack labels must be an int64 tensor of shape (N,)")
    k = num_classes or int(labels.max().item()) + 1
    head = init_parameters(build(head_arch, in_channels=in_channels, num_classes=k,
                                 **head_kwargs), init, generator).to(device)
    t = Stacked(component, head)

    def loss(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(t(xb), labels[idx].to(xb.device))

    return Plan(list(component.parameters()) + list(head.parameters()), [component, head],
                loss, t, head=head, head_arch=head_arch, head_kwargs=dict(head_kwargs))
