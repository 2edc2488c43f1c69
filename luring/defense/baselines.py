"""The baselines of section 3.1, as training plans for :func:`luring.defense.train_defense`.

* ``ce``: P trained with the cross-entropy between M's softmax (soft targets, detached) and
  T's logits — shares the luring plan in ``luring.defense.train`` (only the loss differs).
* ``auto``: P an auto-encoder trained alone with binary cross-entropy reconstruction. M is
  not involved in training; the checkpoint is selected by the lowest held-out reconstruction
  loss (label-free and M-free; T's held-out agreement with M is recorded too).
* ``stack``: the whole P+head architecture (a fresh P and a fresh target-architecture
  "head") trained from scratch with labels and cross-entropy — the only method that reads
  labels. Training through P's sigmoid bottleneck stalled at chance with the paper's plain
  Adam 1e-3 in a prototype (reference notes), and with the luring loss we saw P collapse to
  a constant image under PyTorch's and Keras' default initialisations. We therefore use He
  (Kaiming normal, zero bias) initialisation for P and the head, which keeps the ReLU
  activations of the randomly initialised P alive so that its sigmoid output still varies
  with the input, and a one-epoch linear learning-rate warm-up so that the first large Adam
  steps do not saturate the sigmoid (quick profile: 4 epochs, batch 32, cosine decay from
  1e-3: 92.9% on mnist-5k; which of the two changes matters most was not ablated). The
  architecture is unchanged. Selection: the held-out agreement of T = head∘P with M, like
  luring (label-free).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring.defense.loss import reconstruction_loss
from luring.errors import LuringError
from luring.models import Stacked, build

__all__ = ["auto_plan", "stack_plan"]


def auto_plan(target: nn.Module, component: nn.Module):
    """Auto: the loss of a batch is P's binary cross-entropy reconstruction of the images."""
    from luring.defense.train import _Plan

    def loss(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(component(xb).float(), xb.float())

    return _Plan(list(component.parameters()), [component], loss, Stacked(component, target))


def stack_plan(component: nn.Module, labels: torch.Tensor | None, head_arch: str | None,
               head_kwargs: dict[str, Any], in_channels: int, num_classes: int | None,
               init: str, generator: torch.Generator, device: torch.device):
    """Stack: a fresh ``head_arch`` classifier after P, both trained with cross-entropy on
    ``labels`` (int64 (N,) aligned with the training images; required)."""
    from luring.defense.train import _Plan, init_parameters

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

    return _Plan(list(component.parameters()) + list(head.parameters()), [component, head],
                 loss, t, head=head, head_arch=head_arch, head_kwargs=dict(head_kwargs))
