"""ECO, the parsimonious black-box attack (Moon et al. 2019, "Parsimonious black-box
adversarial attacks via efficient combinatorial optimization"), l∞, untargeted.

The perturbation is a corner of the ε-box: ``-ε`` or ``+ε`` on each block (one channel of a
``block_size``² square). Starting from ``-ε`` everywhere, the blocks are visited in a random
order, ``block_batch`` at a time; on each such set a local search runs ``max_iters`` rounds
of lazy-greedy *insertion* (flip a block from -ε to +ε) then *deletion* (back), minimising
the margin loss ``z_y - max_{j≠y} z_j`` on the logits:

* all candidate flips of the phase are evaluated; the best is taken (as the authors' code
  does, even when it raises the loss);
* then candidates are popped in order of their stale gain and re-evaluated one at a time; one
  that is still at least as good as the next stale gain is accepted if it lowers the loss
  (the phase ends at the first that does not), otherwise it is pushed back.

When every block of the current size has been visited the block size halves (down to 1,
``hierarchical=True``) and the order is reshuffled. Deviation from the reference code, which
re-queries the current image at the start of every local search: the current loss is always
known exactly, so it is not queried again.

Budget: every image makes exactly ``max_queries`` model evaluations (fewer only with
``early_stop=True``, which stops at the first misclassified image). With ``y=None`` the
label query is one of them. All images are searched in lockstep: the pending candidate
evaluations of every image go into one forward call (chunked by ``chunk_size``), so images
share forward passes while each follows its own search. The block order of example ``i``
comes from a CPU ``torch.Generator`` seeded with (seed, example index).
"""

from __future__ import annotations

import heapq
from collections.abc import Generator
from typing import Any

import torch
from torch import nn

from luring.attacks.base import Attack, check_int, example_seed, linf_box, margin
from luring.utils import make_generator

__all__ = ["ECO", "split_blocks"]

Block = tuple[int, int, int, int, int]            # channel, row0, row1, col0, col1
Search = Generator[torch.Tensor, list[float], tuple[torch.Tensor, int]]


def split_blocks(shape: tuple[int, int, int], size: int) -> list[Block]:
    """Blocks of ``size``×``size`` pixels of one channel covering an image (C, H, W); edge
    blocks are cut at the border. Order: rows, columns, then channels."""
    c, h, w = shape
    return [(ch, r, min(r + size, h), q, min(q + size, w))
            for r in range(0, h, size) for q in range(0, w, size) for ch in range(c)]


class ECO(Attack):
    """Parsimonious (ECO) l∞ attack.

    Args:
        model: classifier returning logits for (N, C, H, W) images in [0, 1].
        eps: l∞ bound in [0, 1] (default 0.3).
        max_queries: model evaluations per image (paper 20,000), respected exactly.
        block_size: initial block size (paper 2 MNIST, 8 SVHN, 4 CIFAR10; default 4).
        block_batch: blocks per local search (the reference's ``batch_size``, 64).
        max_iters: insertion/deletion rounds per local search (reference: 1).
        hierarchical: halve the block size after each pass over all blocks (default True).
        early_stop: stop an image at its first success (default False, as the paper).
        chunk_size: images per forward pass when evaluating candidates.
        seed, batch_size: see :class:`~luring.attacks.base.Attack`.

    After a call, ``queries`` (N,) holds the model evaluations each image used.
    """

    name = "eco"

    def __init__(self, model: nn.Module, eps: float = 0.3, max_queries: int = 20000,
                 block_size: int = 4, *, block_batch: int = 64, max_iters: int = 1,
                 hierarchical: bool = True, early_stop: bool = False, chunk_size: int = 1024,
                 seed: int = 0, batch_size: int | None = None) -> None:
        super().__init__(model, eps=eps, seed=seed, batch_size=batch_size)
        self.max_queries = check_int("max_queries", max_queries, 1)
        self.block_size = check_int("block_size", block_size, 1)
        self.block_batch = check_int("block_batch", block_batch, 1)
        self.max_iters = check_int("max_iters", max_iters, 1)
        self.hierarchical = bool(hierarchical)
        self.early_stop = bool(early_stop)
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        self.queries = torch.zeros(0, dtype=torch.long)
        self._queries: list[int] = []

    def _params(self) -> dict[str, Any]:
        return {"max_queries": self.max_queries, "block_size": self.block_size,
                "block_batch": self.block_batch, "max_iters": self.max_iters,
                "hierarchical": self.hierarchical, "early_stop": self.early_stop,
                "chunk_size": self.chunk_size}

    def _begin(self, n: int) -> None:
        self._queries = []

    def _end(self) -> None:
        extra = 1 if self.labels_from_model else 0
        self.queries = torch.tensor(self._queries, dtype=torch.long) + extra

    # ---- one image's search, as a coroutine --------------------------------------------
    def _search(self, x: torch.Tensor, gen: torch.Generator, budget: int) -> Search:
        """Yields candidate images (k, C, H, W), receives their losses (k floats), returns
        ``(adversarial image (C, H, W), queries used)``."""
        minus, plus = linf_box(x, self.eps)
        pos = torch.zeros(x.shape, dtype=torch.bool)        # +ε where True (CPU bookkeeping)
        img = minus.clone()
        used = 0

        def flip(b: Block) -> None:
            # a block's sign is read at its corner; flipping sets the whole block to the other
            # sign (blocks of a halved size are nested, so they are uniform in practice)
            c, r0, r1, c0, c1 = b
            to_plus = not bool(pos[c, r0, c0])
            pos[c, r0:r1, c0:c1] = to_plus
            img[c, r0:r1, c0:c1] = (plus if to_plus else minus)[c, r0:r1, c0:c1]

        def candidates(blocks: list[Block]) -> torch.Tensor:
            out = img.expand(len(blocks), *img.shape).clone()
            for j, (c, r0, r1, c0, c1) in enumerate(blocks):
                src = minus if bool(pos[c, r0, c0]) else plus
                out[j, c, r0:r1, c0:c1] = src[c, r0:r1, c0:c1]
            return out

        if budget <= 0:
            return img, 0
        cur = (yield img[None])[0]
        used += 1
        if self.early_stop and cur < 0:
            return img, used
        size = self.block_size
        while True:
            blocks = split_blocks(tuple(x.shape), size)
            order = torch.randperm(len(blocks), generator=gen).tolist()
            for b0 in range(0, len(blocks), self.block_batch):
                subset = [blocks[i] for i in order[b0:b0 + self.block_batch]]
                for _ in range(self.max_iters):
                    for inserting in (True, False):
                        cand = [b for b in subset if bool(pos[b[0], b[1], b[3]]) != inserting]
                        if not cand:
                            continue
                        k = min(len(cand), budget - used)
                        if k == 0:
                            return img, used
                        losses = yield candidates(cand[:k])
                        used += k
                        if self.early_stop and min(losses) < 0:
                            flip(cand[min(range(k), key=lambda j: (losses[j] >= 0, j))])
                            return img, used
                        heap = [(losses[j] - cur, j) for j in range(k)]
                        heapq.heapify(heap)
                        if k < len(cand):           # budget exhausted mid-scan
                            if heap[0][0] < 0:
                                flip(cand[heap[0][1]])
                            return img, used
                        _, j = heapq.heappop(heap)
                        cur = losses[j]
                        flip(cand[j])
                        while heap:
                            if used >= budget:
                                return img, used
                            _, j = heapq.heappop(heap)
                            loss = (yield candidates([cand[j]]))[0]
                            used += 1
                            gain = loss - cur
                            if not heap or gain <= heap[0][0]:
                                if gain > 0:
                                    break
                                cur = loss
                                flip(cand[j])
                                if self.early_stop and cur < 0:
                                    return img, used
                            else:
                                heapq.heappush(heap, (gain, j))
            if self.hierarchical and size >= 2:
                size //= 2

    # ---- lockstep driver ---------------------------------------------------------------
    @torch.no_grad()
    def _losses(self, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
        """Margin losses ``z_y - max_{j≠y} z_j`` (minimised), chunked forward passes."""
        out = [-margin(self._logits(images[s:s + self.chunk_size]), labels[s:s + self.chunk_size])
               for s in range(0, len(images), self.chunk_size)]
        return torch.cat(out).tolist()

    @torch.no_grad()
    def _run(self, x: torch.Tensor, y: torch.Tensor, index0: int) -> torch.Tensor:
        n = len(x)
        budget = self.max_queries - (1 if self.labels_from_model else 0)
        coros = [self._search(x[i], make_generator(example_seed(self.seed, index0 + i, "eco")),
                              budget) for i in range(n)]
        results: list[tuple[torch.Tensor, int] | None] = [None] * n
        pending: dict[int, torch.Tensor] = {}

        def advance(i: int, msg: list[float] | None) -> None:
            try:
                pending[i] = coros[i].send(msg)  # type: ignore[arg-type]
            except StopIteration as stop:
                results[i] = stop.value
                pending.pop(i, None)

        for i in range(n):
            advance(i, None)
        while pending:
            ids = list(pending)
            sizes = [len(pending[i]) for i in ids]
            images = torch.cat([pending[i] for i in ids])
            labels = y[ids].repeat_interleave(torch.tensor(sizes, device=y.device))
            losses = self._losses(images, labels)
            start = 0
            for i, k in zip(ids, sizes, strict=True):
                advance(i, losses[start:start + k])
                start += k
        self._queries.extend(r[1] for r in results)  # type: ignore[index]
        return torch.stack([r[0] for r in results])  # type: ignore[index]
