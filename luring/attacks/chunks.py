"""Fixed chunks: an attack's unit of batched work, cut at global offsets so that an image
meets the same batch shape (hence the same convolution kernels) whatever call, batch size or
process it comes in (see :mod:`luring.attacks.base`)."""

from __future__ import annotations

import os

import torch

from luring.errors import LuringError

__all__ = ["CHUNK", "default_chunk", "chunk_bounds"]

#: Default chunk size (images per batched pass of an attack) by device type: on a CPU a
#: forward and backward of the paper's models runs fastest at about 128 images; a GPU wants
#: large launches. ``$LURING_CHUNK`` overrides both.
CHUNK = {"cpu": 128, "cuda": 1024}


def default_chunk(device: torch.device | str | None = None) -> int:
    """The chunk size for ``device``: ``$LURING_CHUNK`` when set, else :data:`CHUNK`."""
    env = os.environ.get("LURING_CHUNK")
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise LuringError(f"$LURING_CHUNK must be an integer ≥ 1, got {env!r}")
        return value
    kind = torch.device(device).type if device is not None else "cpu"
    return CHUNK.get(kind, CHUNK["cuda"])


def chunk_bounds(start: int, n: int, chunk: int) -> list[tuple[int, int]]:
    """The chunks ``[(lo, hi), ...]`` (offsets relative to ``start``) of examples
    ``start .. start+n-1`` cut at the global multiples of ``chunk``."""
    out, i = [], 0
    while i < n:
        hi = min(n, ((start + i) // chunk + 1) * chunk - start)
        out.append((i, hi))
        i = hi
    return out
