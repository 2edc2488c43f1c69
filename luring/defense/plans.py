"""What a method trains, as a :class:`Plan` for the training loop of
:func:`luring.defense.train_defense` (which imports this module and
:mod:`luring.defense.baselines`; neither imports it).

* ``luring`` (Algorithm 1) and ``ce``: P trained through the frozen M against M's logits,
  computed once per training image before the first step — the luring loss (paper eq. 2), or
  for C_E the cross-entropy between M's softmax (soft targets, detached) and T's logits.
  :func:`luring_plan` serves both (only the loss differs).

The other baselines of section 3.1 (:mod:`luring.defense.baselines`):

* ``auto``: P an auto-encoder trained alone with binary cross-entropy reconstruction. M is
  not involved in training; the checkpoint is selected by the lowest held-out reconstruction
  loss (label-free and M-free; T's held-out agreement with M is recorded too).
* ``stack``: the whole P+head architecture (a fresh P and a fresh target-architecture
  "head") trained from scratch with labels and cross-entropy — the only method that reads
  labels. Training through P's sigmoid bottleneck stalled at chance with the paper's plain
  Adam 1e-3 in a prototype (reference notes), and with the luring loss we saw P collapse to
  a constant image under PyTorch's and Keras' default initialisations. We therefore use He
  (Kaiming normal, zero bias) initialisation for P and the head (:func:`init_parameters`),
  which keeps the ReLU activations of the randomly initialised P alive so that its sigmoid
  output still varies with the input, and a one-epoch linear learning-rate warm-up so that
  the first large Adam steps do not saturate the sigmoid (quick profile: 4 epochs, batch 32,
  cosine decay from 1e-3: 92.9% on mnist-5k; which of the two changes matters most was not
  ablated). The architecture is unchanged. Selection: the held-out agreement of T = head∘P
  with M, like luring (label-free).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from luring.defense.loss import luring_loss, soft_cross_entropy
from luring.errors import LuringError
from luring.models import Stacked

__all__ = ["Plan", "init_parameters", "luring_plan"]


@dataclass
class Plan:
    """What a method trains: its parameters, the modules to switch to train mode, the loss of
    one batch ``loss(images, index)``, and T for the held-out evaluation (for ``stack`` also
    the fresh head, its architecture and options)."""

    params: list[nn.Parameter]
    modules: list[nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    augmented: nn.Module
    head: nn.Module | None = None
    head_arch: str | None = None
    head_kwargs: dict[str, Any] = field(default_factory=dict)


def init_parameters(module: nn.Module, scheme: str, generator: torch.Generator) -> nn.Module:
    """Re-initialise every Conv/Linear of ``module`` from ``generator``: ``torch`` (PyTorch's
    default: Kaiming uniform a=√5, uniform biases), ``glorot`` (Xavier uniform, zero biases:
    the Keras default) or ``kaiming`` (He normal for ReLU, zero biases). BatchNorm layers keep
    weight 1 and bias 0."""
    for m in module.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight
        with torch.no_grad():
            if scheme == "torch":
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(w)[0])
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
                continue
            if scheme == "glorot":
                nn.init.xavier_uniform_(w, generator=generator)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
            else:
                raise LuringError(f"unknown init scheme {scheme!r}; use torch, glorot or kaiming")
            if m.bias is not None:
                m.bias.zero_()
    return module


def luring_plan(target: nn.Module, component: nn.Module, m_logits: torch.Tensor,
                method: str, lam: float | None, cap: float | None = None,
                margin: float = 0.0) -> Plan:
    """Luring or C_E: P trained through the frozen M against M's logits ``m_logits`` (N, K),
    already on the training device, indexed by each batch's image indices (luring: with the
    loss options ``cap`` and ``margin`` of :func:`luring_loss`)."""
    t = Stacked(component, target)
    if method == "luring":
        lam_f = float(lam)  # type: ignore[arg-type]

        def loss(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return luring_loss(t(xb).float(), m_logits[idx], lam_f, cap=cap, margin=margin)
    else:
        def loss(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return soft_cross_entropy(t(xb).float(), m_logits[idx])

    return Plan(list(component.parameters()), [component], loss, t)
