"""Several processes on one run (``torchrun --nproc_per_node=K -m luring reproduce ...``).

torchrun sets ``RANK`` and ``WORLD_SIZE``; the processes share the run directory (one file
system). Rank 0 holds the directory's lock, checks its identity and trains the models; then
every process computes the units of its share of the work, and rank 0 aggregates them. A
user error on any rank is raised on every rank (the CLI prints it once, on rank 0), so no
process is left waiting. Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from luring.errors import LuringError

__all__ = ["rank_world", "rank0_first", "run_everywhere", "my_share"]

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` from torchrun's environment, initialising the default process
    group (gloo on CPU, nccl with CUDA) on first use; ``(0, 1)`` without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get(
            "LURING_BACKEND", "") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist.get_rank(), dist.get_world_size()


def _agree(error: str | None) -> None:
    """Share every rank's error (None when fine); raise the first one on every rank."""
    errors: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e), None)
    if first:
        raise LuringError(first)


def _guard(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    try:
        return fn(), None
    except LuringError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - reported on every rank, then re-raised here
        return None, f"rank {dist.get_rank()} failed: {type(exc).__name__}: {exc}"


def rank0_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then (if it succeeded) on every other rank; one process: ``fn()``."""
    _, world = rank_world()
    if world == 1:
        return fn()
    rank = dist.get_rank()
    out, err = _guard(fn) if rank == 0 else (None, None)
    _agree(err)
    if rank != 0:
        out, err = _guard(fn)
    _agree(err)
    return out  # type: ignore[return-value]


def run_everywhere(fn: Callable[[], Any]) -> None:
    """Run ``fn`` on every rank and wait for all; any rank's error is raised on every rank."""
    _, world = rank_world()
    if world == 1:
        fn()
        return
    _, err = _guard(fn)
    _agree(err)


def my_share(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items of ``rank``: every ``world``-th one from ``rank`` (each item exactly once
    over the ranks, none repeated, none padded)."""
    return list(items[rank::world])
