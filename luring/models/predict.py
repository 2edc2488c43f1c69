"""Chunked inference of any model (M, P, T = M∘P): the one loop every stage uses to get
logits or labels of many images without a gradient."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["predict_logits", "predict_labels", "model_device"]


def model_device(model: object) -> torch.device | None:
    """The device of ``model``'s first parameter or buffer; None for a model with neither
    (or an object that is not an ``nn.Module``)."""
    tensors = itertools.chain(model.parameters(), model.buffers()) \
        if isinstance(model, nn.Module) else iter(())
    first = next(tensors, None)
    return first.device if first is not None else None


def _device(model: nn.Module, images: torch.Tensor,
            device: torch.device | str | None) -> torch.device | str:
    if device is not None:
        return device
    return model_device(model) or images.device


def _map_chunks(model: nn.Module, images: torch.Tensor, batch_size: int,
                device: torch.device | str | None,
                fn: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """``fn(model(chunk))`` for each chunk of ``batch_size`` images, run on ``device`` (CPU
    chunks go to CUDA from pinned memory, without blocking)."""
    dev = torch.device(_device(model, images, device))
    pin = dev.type == "cuda" and images.device.type == "cpu"
    return [fn(model(images[i:i + batch_size].pin_memory().to(dev, non_blocking=True) if pin
                     else images[i:i + batch_size].to(dev)))
            for i in range(0, len(images), batch_size)]


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``model``'s outputs on ``images`` (N, C, H, W), in chunks of ``batch_size``, no
    gradient; returned as float32 on the CPU. ``device``: where the chunks are run (default:
    the model's). The model's mode is left as it is (call ``.eval()`` first)."""
    outs = _map_chunks(model, images, batch_size, device, lambda z: z.float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def predict_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Top-1 labels, int64 (N,) on the CPU, of ``model`` for ``images`` (N, C, H, W), in
    chunks of ``batch_size``, no gradient (an empty input gives an empty tensor)."""
    outs = _map_chunks(model, images, batch_size, device, lambda z: z.argmax(1).cpu())
    return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long)
