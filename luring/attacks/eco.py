"""ECO, the parsimonious black-box attack (Moon et al. 2019, "Parsimonious black-box
adversarial attacks via efficient combinatorial optimization"), l∞, untargeted.

The perturbation is a corner of the ε-box: ``-ε`` or ``+ε`` on each pixel, changed a block at
a time (one channel of a ``block_size``² square). Starting from ``-ε`` everywhere, the blocks
are visited in a random order, ``block_batch`` at a time; on each such set a local search runs
``max_iters`` rounds of lazy-greedy *insertion* (flip a block whose corner pixel is at -ε)
then *deletion* (flip one whose corner is at +ε), minimising the objective ``loss``:

* ``"xent"`` (default): minus the cross-entropy of the label, ``log softmax(z)_y`` — the
  untargeted objective of Moon et al.'s reference code and of the luring authors' scripts;
* ``"margin"``: the margin ``z_y - max_{j≠y} z_j`` on the logits.

A flip changes the sign of every pixel of the block (as the reference code does). Blocks of a
halved size nest in the previous ones, so in practice each block is uniform; with sizes that
do not nest (e.g. 5 then 2) a block may be mixed, it is classified by its corner pixel and its
flip still changes each pixel's sign.

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
``early_stop=True``, the reference code's behaviour, which stops an image at the first
evaluation where the model's top class is not the label; the paper (F.1) ran without it).
With ``y=None`` the label query is one of them. All images are searched in lockstep: the
pending candidate evaluations of every image go into one forward call (chunked by
``chunk_size``), so images share forward passes while each follows its own search. The block
order of example ``i`` comes from a CPU ``torch.Generator`` seeded with (seed, example index).
"""

from __future__ import annotations

import heapq
from collections.abc import Generator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring.attacks.base import Attack, check_int, example_seed, linf_box, margin
from luring.errors import LuringError
from luring.utils import make_generator

__all__ = ["ECO", "split_blocks", "ECO_LOSSES"]

Block = tuple[int, int, int, int, int]            # channel, row0, row1, col0, col1
Scores = tuple[list[float], list[bool]]           # losses (minimised), fooled flags
Search = Generator[torch.Tensor, Scores, tuple[torch.Tensor, int]]
ECO_LOSSES = ("xent", "margin")  # "ce" is accepted as another name of "xent"


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
        loss: objective minimised, ``"xent"`` (minus the cross-entropy: the reference code
            and the authors' scripts; default; ``"ce"`` is the same, the gradient attacks'
            name for it) or ``"margin"`` (``z_y - max_{j≠y} z_j``).
        block_batch: blocks per local search (the reference's ``batch_size``; default 64,
            the authors ran 256 on MNIST and SVHN, 512 on CIFAR10).
        max_iters: insertion/deletion rounds per local search (reference: 1).
        hierarchical: halve the block size after each pass over all blocks (default True).
        early_stop: stop an image at its first success (the reference code's behaviour;
            default False, as the paper, F.1).
        chunk_size: images per forward pass when evaluating candidates.
        seed, batch_size: see :class:`~luring.attacks.base.Attack`.

    After a call, ``queries`` (N,) holds the model evaluations each image used.
    """

    name = "eco"

    def __init__(self, model: nn.Module, eps: float = 0.3, max_queries: int = 20000,
                 block_size: int = 4, *, loss: str = "xent", block_batch: int = 64,
                 max_iters: int = 1,
                 hierarchical: bool = True, early_stop: bool = False, chunk_size: int = 1024,
                 seed: int = 0, batch_size: int | None = None) -> None:
        super().__init__(model, eps=eps, seed=seed, batch_size=batch_size)
        self.max_queries = check_int("max_queries", max_queries, 1)
        self.block_size = check_int("block_size", block_size, 1)
        loss = "xent" if loss == "ce" else loss
        if loss not in ECO_LOSSES:
            raise LuringError(f"ECO loss must be one of {', '.join(ECO_LOSSES)} (ce meaning "
                              f"xent), got {loss!r}")
        self.loss = loss
        self.block_batch = check_int("block_batch", block_batch, 1)
        self.max_iters = check_int("max_iters", max_iters, 1)
        self.hierarchical = bool(hierarchical)
        self.early_stop = bool(early_stop)
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        self.queries = torch.zeros(0, dtype=torch.long)
        self._queries: list[int] = []

    def _params(self) -> dict[str, Any]:
        return {"max_queries": self.max_queries, "block_size": self.block_size,
                "loss": self.loss, "block_batch": self.block_batch, "max_iters": self.max_iters,
                "hierarchical": self.hierarchical, "early_stop": self.early_stop,
                "chunk_size": self.chunk_size}

    def _begin(self, n: int) -> None:
        self._queries = []

    def _end(self) -> None:
        extra = 1 if self.labels_from_model else 0
        self.queries = torch.tensor(self._queries, dtype=torch.long) + extra

    # ---- one image's search, as a coroutine --------------------------------------------
    def _search(self, x: torch.Tensor, gen: torch.Generator, budget: int) -> Search:
        """Yields candidate images (k, C, H, W), receives their ``(losses, fooled)`` (k floats,
        k bools), returns ``(adversarial image (C, H, W), queries used)``."""
        minus, plus = linf_box(x, self.eps)
        pos = torch.zeros(x.shape, dtype=torch.bool)        # +ε where True (CPU bookkeeping)
        pos_x = pos if x.device.type == "cpu" else pos.to(x.device)  # the same, beside x
        img = minus.clone()
        used = 0

        def flipped(c: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
            """The block with the sign of each of its pixels changed."""
            return torch.where(pos_x[c, r0:r1, c0:c1], minus[c, r0:r1, c0:c1],
                               plus[c, r0:r1, c0:c1])

        def flip(b: Block) -> None:
            c, r0, r1, c0, c1 = b
            img[c, r0:r1, c0:c1] = flipped(*b)
            pos[c, r0:r1, c0:c1] = ~pos[c, r0:r1, c0:c1]
            if pos_x is not pos:
                pos_x[c, r0:r1, c0:c1] = ~pos_x[c, r0:r1, c0:c1]

        def candidates(blocks: list[Block]) -> torch.Tensor:
            out = img.expand(len(blocks), *img.shape).clone()
            for j, (c, r0, r1, c0, c1) in enumerate(blocks):
                out[j, c, r0:r1, c0:c1] = flipped(c, r0, r1, c0, c1)
            return out

        if budget <= 0:
            return img, 0
        losses, fooled = yield img[None]
        cur = losses[0]
        used += 1
        if self.early_stop and fooled[0]:
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
                        losses, fooled = yield candidates(cand[:k])
                        used += k
                        if self.early_stop and any(fooled):
                            flip(cand[fooled.index(True)])
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
                            one, hit = yield candidates([cand[j]])
                            used += 1
                            gain = one[0] - cur
                            if not heap or gain <= heap[0][0]:
                                if gain > 0:
                                    break
                                cur = one[0]
                                flip(cand[j])
                                if self.early_stop and hit[0]:
                                    return img, used
                            else:
                                heapq.heappush(heap, (gain, j))
            if self.hierarchical and size >= 2:
                size //= 2

    # ---- lockstep driver ---------------------------------------------------------------
    @torch.no_grad()
    def _scores(self, images: torch.Tensor, labels: torch.Tensor) -> Scores:
        """The objective (minimised; see ``loss``) of each image and whether the model's top
        class is not its label, by chunked forward passes."""
        losses, fooled = [], []
        for s in range(0, len(images), self.chunk_size):
            z, y = self._logits(images[s:s + self.chunk_size]), labels[s:s + self.chunk_size]
            z = z.float()
            losses.append(-F.cross_entropy(z, y, reduction="none") if self.loss == "xent"
                          else -margin(z, y))
            fooled.append(z.argmax(1) != y)
        return torch.cat(losses).tolist(), torch.cat(fooled).tolist()

    @torch.no_grad()
    def _run(self, x: torch.Tensor, y: torch.Tensor, index0: int) -> torch.Tensor:
        n = len(x)
        budget = self.max_queries - (1 if self.labels_from_model else 0)
        coros = [self._search(x[i], make_generator(example_seed(self.seed, index0 + i, "eco")),
                              budget) for i in range(n)]
        results: list[tuple[torch.Tensor, int] | None] = [None] * n
        pending: dict[int, torch.Tensor] = {}

        def advance(i: int, msg: Scores | None) -> None:
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
            losses, fooled = self._scores(images, labels)
            start = 0
            for i, k in zip(ids, sizes, strict=True):
                advance(i, (losses[start:start + k], fooled[start:start + k]))
                start += k
        self._queries.extend(r[1] for r in results)  # type: ignore[index]
        return torch.stack([r[0] for r in results])  # type: ignore[index]
