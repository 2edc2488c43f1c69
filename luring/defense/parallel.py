"""Training P on several processes (``torchrun ... -m luring train-defense``): the pieces
:func:`luring.defense.train.train_defense` uses when ``parallel=True`` and torchrun started
more than one process.

Every rank draws the same batches (one seeded generator, the same on every rank: the order
and the augmentation), takes its slice of each batch (:func:`luring.distributed.shard_range`:
no padding, no duplicates) and computes the loss of its slice; the trained modules are wrapped
in one DistributedDataParallel (:class:`LossModule`), whose reducer averages exactly the
trained parameters' gradients — P's for luring, C_E and Auto, P's and the new head's for
Stack; M is frozen and never synchronised. Each rank's loss is weighted by
``len(slice) · K / B`` (K processes, batch B), so the averaged gradient is the gradient of
the whole batch's mean loss, the one a single process computes. Selection and weight
averaging run on every rank with rank 0's batch-norm statistics (:func:`broadcast_buffers`),
and rank 0's chosen state is broadcast at the end, so every rank returns the same P.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from luring import distributed
from luring.errors import LuringError

__all__ = ["LossModule", "wrap", "rank_slice", "broadcast_buffers", "broadcast_state",
           "broadcast_object"]


class LossModule(nn.Module):
    """The trained modules of a plan as one module whose ``forward(images, index)`` is the
    plan's loss (a scalar): what DistributedDataParallel wraps, so that its reducer sees the
    trained parameters and nothing else."""

    def __init__(self, modules: Sequence[nn.Module],
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.trained = nn.ModuleList(modules)
        self._loss = loss

    def forward(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._loss(images, index)


def wrap(modules: Sequence[nn.Module], loss: Callable[[torch.Tensor, torch.Tensor],
                                                        torch.Tensor],
         device: torch.device, batch_size: int, seed: int) -> nn.Module:
    """DistributedDataParallel over :class:`LossModule` (``modules``, ``loss``), for the
    current process group (:mod:`luring.distributed`). Dropout masks are reseeded per rank
    (rank 0 keeps ``seed``'s). Raises LuringError when ``batch_size`` < the process count."""
    world, rank = distributed.world_size(), distributed.rank()
    if batch_size < world:
        raise LuringError(f"--batch-size {batch_size} is smaller than the {world} processes; "
                          f"pass --batch-size {world} or more")
    if rank:
        torch.manual_seed(seed + 1_000_003 * rank)
    ids = [torch.cuda.current_device() if device.index is None else device.index] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(LossModule(modules, loss), device_ids=ids)


def rank_slice(images: torch.Tensor, index: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's slice of a batch (images (B, C, H, W), index (B,)) and its loss weight
    ``len(slice) · K / B``. A rank whose slice is empty (B < K) steps on the whole batch with
    weight 0, so that every rank's reducer and optimizer step."""
    world, rank = distributed.world_size(), distributed.rank()
    lo, hi = distributed.shard_range(len(index), rank, world)
    if hi == lo:
        return images, index, 0.0
    return images[lo:hi], index[lo:hi], (hi - lo) * world / len(index)


def broadcast_buffers(modules: Sequence[nn.Module], src: int = 0) -> None:
    """Copy rank ``src``'s floating-point buffers (batch-norm statistics) of ``modules`` to
    every rank, in place."""
    for m in modules:
        for b in m.buffers():
            if b.is_floating_point():
                dist.broadcast(b.data, src)


def broadcast_state(modules: Sequence[nn.Module], src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers of ``modules`` to every rank, in place."""
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object made by this process group's own code)
    on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]
