"""Several processes on one command: ``torchrun --nproc_per_node=K -m luring COMMAND ...``.

torchrun starts K copies of the command and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in each; :func:`init_from_env` joins them in one process
group (gloo on the CPU, nccl on CUDA; ``LURING_BACKEND=gloo|nccl`` overrides). Without those
variables (or with ``WORLD_SIZE=1``) every function here is a no-op for a single process:
rank 0 of 1, nothing to gather, nothing to wait for.

The pieces a command needs::

    with process_group(device) as device:      # cuda:LOCAL_RANK under torchrun with CUDA
        lo, hi = shard_range(n, rank(), world_size())
        setup = everywhere(lambda: prepare())   # an error on any rank is raised on all
        full = gather_tensors(local, torch.arange(lo, hi), n)   # original order, CPU
        if is_main():
            write(full)

Shards never pad: every index ``0 .. n-1`` belongs to exactly one rank (some ranks get none
when ``n < world``), unlike ``torch.utils.data.DistributedSampler``, which repeats indices to
even out the ranks and would count those examples twice in an evaluation.

This module may be imported by every stage, like :mod:`luring.utils`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from luring.errors import LuringError
from luring.utils import resolve_device

__all__ = ["init_from_env", "rank", "local_rank", "world_size", "is_main", "barrier",
           "shard_range", "shard_indices", "gather_tensors", "gather_objects", "all_sum",
           "everywhere", "main_first", "strided_share", "device_for_rank", "process_group"]

T = TypeVar("T")
BACKENDS = ("gloo", "nccl")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise LuringError(f"environment variable {name}={text!r} is not an integer; unset "
                          "it or start the command with torchrun") from None


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes in the process group (1 without one)."""
    return dist.get_world_size() if _active() else 1


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``; 0 without a group)."""
    return _env_int("LOCAL_RANK", 0) if _active() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing in a single process)."""
    if world_size() > 1:
        dist.barrier()


def device_for_rank(device: str | torch.device | None = "auto") -> torch.device:
    """The device this process computes on: ``device`` resolved (``auto`` → CUDA when
    available), and under torchrun with CUDA the GPU ``cuda:LOCAL_RANK``, made the current
    CUDA device. A LuringError when there are fewer GPUs than processes on the node."""
    dev = resolve_device(device)
    if dev.type != "cuda" or _env_int("WORLD_SIZE", 1) <= 1:
        return dev
    local, count = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
    if local >= count:
        raise LuringError(f"process LOCAL_RANK={local} has no GPU: {count} visible on this "
                          f"node; start at most {count} processes per node "
                          "(torchrun --nproc_per_node) or pass --device cpu")
    dev = torch.device("cuda", local)
    torch.cuda.set_device(dev)
    return dev


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; True when this call started it
    (False: a single process, or a group already started by someone else).

    Backend: nccl when ``device`` is a CUDA device, else gloo (``LURING_BACKEND`` overrides).
    Call :func:`device_for_rank` first on CUDA so that nccl binds the right GPU."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1 or _active():
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise LuringError(f"WORLD_SIZE={world} is set but {', '.join(missing)} is not; start "
                          "the command with torchrun (torchrun --nproc_per_node=K -m luring "
                          "...) or unset WORLD_SIZE")
    dev = torch.device(device) if device is not None else None
    backend = os.environ.get("LURING_BACKEND") or (
        "nccl" if dev is not None and dev.type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise LuringError(f"LURING_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    dist.init_process_group(backend=backend, init_method="env://")
    return True


@contextlib.contextmanager
def process_group(device: str | torch.device | None = "auto") -> Iterator[torch.device]:
    """Resolve this process's device (:func:`device_for_rank`), join torchrun's process group
    (:func:`init_from_env`) and yield the device; the group this started is destroyed on the
    way out, whatever happens. A single process: just the resolved device."""
    dev = device_for_rank(device)
    started = init_from_env(dev)
    try:
        yield dev
    finally:
        if started and _active():
            dist.destroy_process_group()


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """``(lo, hi)``: rank ``rank``'s contiguous block ``lo .. hi-1`` of ``0 .. n-1`` split in
    ``world`` blocks whose sizes differ by at most one: ``lo = n·rank // world`` (empty
    blocks when ``n < world``). Every index is in exactly one block; nothing is padded."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer ≥ 0, got {n!r}")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an integer ≥ 1, got {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an integer in [0, {world}), got {rank!r}")
    return n * rank // world, n * (rank + 1) // world


def shard_indices(n: int, rank: int, world: int) -> torch.Tensor:
    """The indices of :func:`shard_range` as an int64 tensor (CPU), ascending."""
    lo, hi = shard_range(n, rank, world)
    return torch.arange(lo, hi, dtype=torch.long)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` alone)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: Sequence[int | float]) -> list[int | float]:
    """Element-wise sums of ``values`` over the ranks (exact for integers)."""
    return [sum(col) for col in zip(*gather_objects(list(values)), strict=True)]


def everywhere(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank, then raise, on every rank, the first rank's error as a
    LuringError (other exceptions become one line naming the rank and the exception), so
    that no rank is left waiting in a collective for one that failed and the CLI prints one
    line on rank 0. A single process: ``fn()`` unchanged."""
    if world_size() == 1:
        return fn()
    out: T | None = None
    err: str | None = None
    try:
        out = fn()
    except LuringError as exc:
        err = str(exc)
    except Exception as exc:  # noqa: BLE001 - shared with every rank, raised there
        first = (str(exc).splitlines() or [""])[0]
        err = f"process {rank()} failed: {type(exc).__name__}: {first}"
    first_error = next((e for e in gather_objects(err) if e), None)
    if first_error:
        raise LuringError(first_error)
    return out  # type: ignore[return-value]


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then, when it succeeded, on every other rank (rank 0 prepares
    what the others then load: a run directory's models); an error on any rank is raised on
    every rank as in :func:`everywhere`. A single process: ``fn()``."""
    if world_size() == 1:
        return fn()
    first = everywhere(lambda: fn() if is_main() else None)
    rest = everywhere(lambda: None if is_main() else fn())
    return first if is_main() else rest  # type: ignore[return-value]


def strided_share(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s items: every ``world``-th one from ``rank`` (each item exactly once
    over the ranks, none repeated, none padded; interleaved, so that work listed by seed
    spreads over the ranks)."""
    return list(items[rank::world])


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                               torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                               torch.bool)}


def gather_tensors(local: torch.Tensor | None, indices: torch.Tensor | Sequence[int],
                   n: int) -> torch.Tensor:
    """Assemble a tensor of ``n`` rows from every rank's rows.

    ``local`` (k, ...) holds the rows ``indices`` (k,) of the full tensor (``None``: this
    rank has no rows and does not know their shape; at least one rank must pass a tensor).
    Returns the full (n, ...) tensor in original order, on the CPU, on every rank. The ranks'
    indices must cover ``0 .. n-1`` exactly once (a ValueError otherwise). Under a process
    group the rows travel by ``all_gather`` of tensors padded to the longest shard (the true
    lengths sent first), on the GPU with nccl; values arrive bit for bit."""
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
    if local is None and len(idx):
        raise ValueError(f"{len(idx)} indices but no local tensor")
    if local is not None and len(local) != len(idx):
        raise ValueError(f"{len(local)} local rows for {len(idx)} indices")
    meta = None if local is None else (tuple(local.shape[1:]), str(local.dtype))
    metas = gather_objects((len(idx), meta))
    kinds = {m for _, m in metas if m is not None}
    if len(kinds) != 1:
        raise ValueError(f"the ranks' tensors must agree in trailing shape and dtype, got "
                         f"{sorted(kinds) or 'none'}")
    tail, dtype_name = kinds.pop()
    dtype = _DTYPES[dtype_name]
    lengths = [k for k, _ in metas]
    if world_size() == 1:
        parts = [(idx, local.detach().cpu())] if local is not None else []
    elif max(lengths) == 0:
        parts = []
    else:
        dev, longest = _comm_device(), max(lengths)
        wire = torch.uint8 if dtype == torch.bool else dtype
        buf = torch.zeros((longest, *tail), dtype=wire, device=dev)
        ibuf = torch.full((longest,), -1, dtype=torch.long, device=dev)
        if len(idx):
            buf[:len(idx)] = local.detach().to(dev).to(wire)
            ibuf[:len(idx)] = idx.to(dev)
        bufs = [torch.empty_like(buf) for _ in lengths]
        ibufs = [torch.empty_like(ibuf) for _ in lengths]
        dist.all_gather(bufs, buf)
        dist.all_gather(ibufs, ibuf)
        parts = [(ib[:k].cpu(), b[:k].cpu().to(dtype))
                 for k, b, ib in zip(lengths, bufs, ibufs, strict=True)]
    seen = torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
    if len(seen) != n or not torch.equal(seen.sort().values, torch.arange(n)):
        raise ValueError(f"the ranks' indices must cover 0..{n - 1} exactly once, got "
                         f"{len(seen)} indices")
    out = torch.empty((n, *tail), dtype=dtype)
    for i, t in parts:
        out[i] = t
    return out
