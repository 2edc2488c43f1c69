"""The substitute-model attacker of Papernot et al. (2017), "Practical black-box attacks
against machine learning": the attacker of the paper's threat model who can only *query* the
deployed model T.

1. Label a pool of images (disjoint from the attacked ones) with T's answers — its labels
   (``labels="hard"``) or its softmax (``labels="soft"``: distillation).
2. Train a substitute classifier on them (default: the family's M architecture, fresh seed).
3. Optionally grow the pool with Jacobian-based augmentation rounds: each round adds
   ``x + λ·sign(∇ₓ S(x)[T(x)])`` for every pool image (clipped to [0, 1]), labelled by T, and
   retrains; the pool doubles every round.
4. Craft adversarial examples on the substitute (any attack), judge them on T and M.

Every query to T is counted (``Substitute.queries``). Randomness (initialisation, shuffles)
comes from the seed only, so the same seed gives the same substitute on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luring import precision as prec
from luring.attacks.base import check_float, check_int, eval_frozen, model_device
from luring.errors import LuringError
from luring.models import build, predict_logits
from luring.utils import check_images, make_generator

__all__ = ["Substitute", "train_substitute", "LABELS"]

LABELS = ("hard", "soft")


@dataclass
class Substitute:
    """A trained substitute: ``model`` (eval mode, frozen), ``queries`` (images T labelled),
    ``pool_size`` (final pool), ``agreement`` (share of the final pool on which the substitute
    predicts T's label), the resolved ``params`` and per-round ``history``."""

    model: nn.Module
    queries: int
    pool_size: int
    agreement: float
    params: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _oracle(model: nn.Module, x: torch.Tensor, labels: str) -> torch.Tensor:
    """T's answers on x: int64 labels (N,) or float softmax (N, K), on CPU."""
    logits = predict_logits(model, x)
    return logits.argmax(1) if labels == "hard" else logits.softmax(1)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dtype == torch.long:
        return F.cross_entropy(logits, target)
    return -(target * logits.log_softmax(1)).sum(1).mean()  # soft-label cross-entropy


def train_substitute(oracle: nn.Module, x_pool: torch.Tensor, *, arch: str = "mnist-target",
                     num_classes: int | None = None, labels: str = "hard", epochs: int = 10,
                     batch_size: int = 64, lr: float = 1e-3, rounds: int = 0,
                     lam: float = 0.1, seed: int = 0,
                     device: str | torch.device | None = None,
                     precision: str | None = None) -> Substitute:
    """Train a substitute of ``oracle`` (T) from its answers on ``x_pool``.

    Args:
        oracle: the queried model (logits); only its outputs are used, never its gradients.
        x_pool: (N, C, H, W) float in [0, 1], the attacker's own images (disjoint from the
            attacked ones).
        arch: a registered architecture name for the substitute (``luring.models.build``).
        num_classes: classes of the substitute (default: the oracle's output width).
        labels: ``"hard"`` (T's labels) or ``"soft"`` (T's softmax vectors).
        epochs: training epochs over the current pool, per round (round 0 included).
        batch_size, lr: Adam's mini-batch and learning rate.
        rounds: Jacobian-based augmentation rounds (each doubles the pool and retrains).
        lam: the augmentation step λ (Papernot et al. use 0.1 on MNIST).
        seed: initialisation and shuffling seed.
        device: where to train (default: the oracle's device).
        precision: the substitute's training steps (:mod:`luring.precision`; default the
            process default); T's answers and the agreement are float32.
    Returns:
        a :class:`Substitute`; ``queries`` = N · 2^rounds images labelled by T.
    """
    check_images(x_pool, name="x_pool")
    if len(x_pool) == 0:
        raise LuringError("the substitute attacker needs a non-empty image pool")
    if labels not in LABELS:
        raise LuringError(f"unknown substitute labels {labels!r}; choose hard or soft")
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    rounds = check_int("rounds", rounds, 0)
    lr = check_float("lr", lr, 0.0, 10.0, low_inclusive=False)
    lam = check_float("lam", lam, 0.0, 1.0)
    dev = torch.device(device) if device is not None else (model_device(oracle)
                                                          or torch.device("cpu"))
    started = time.perf_counter()
    with eval_frozen(oracle):
        pool = x_pool.detach().to("cpu", torch.float32)
        logits = predict_logits(oracle, pool)
        answers = logits.argmax(1) if labels == "hard" else logits.softmax(1)
        queries = len(pool)
        k = num_classes or int(logits.shape[1])
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)  # the substitute's initialisation only
            sub = build(arch, in_channels=pool.shape[1], num_classes=k).to(dev)
        opt = torch.optim.Adam(sub.parameters(), lr=lr)
        gen = make_generator(seed, "cpu")
        p = prec.resolve(precision, sub, dev, tuple(pool.shape[1:]))
        history: list[dict[str, Any]] = []
        for r in range(rounds + 1):
            sub.train()
            with prec.training_format(p, sub):
                for _ in range(epochs):
                    perm = torch.randperm(len(pool), generator=gen)
                    for i in range(0, len(pool), batch_size):
                        idx = perm[i:i + batch_size]
                        xb = prec.batch_format(pool[idx].to(dev), p)
                        with prec.autocast(p, dev):
                            out = sub(xb)
                        loss = _loss(out.float(), answers[idx].to(dev))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
            sub.eval()
            agree = _agreement(sub, pool, answers)
            history.append({"round": r, "pool": len(pool), "queries": queries,
                            "agreement": agree})
            if r == rounds:
                break
            new = _jacobian_step(sub, pool, answers, lam)
            new_answers = _oracle(oracle, new, labels)
            queries += len(new)
            pool = torch.cat([pool, new])
            answers = torch.cat([answers, new_answers])
    for p in sub.parameters():
        p.requires_grad_(False)
    params = {"arch": arch, "labels": labels, "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "rounds": rounds, "lam": lam, "seed": seed,
              "pool_images": len(x_pool)}
    return Substitute(sub, queries, len(pool), history[-1]["agreement"], params, history,
                      time.perf_counter() - started)


@torch.no_grad()
def _agreement(sub: nn.Module, pool: torch.Tensor, answers: torch.Tensor) -> float:
    pred = predict_logits(sub, pool).argmax(1)
    target = answers if answers.dtype == torch.long else answers.argmax(1)
    return float((pred == target).float().mean())


def _jacobian_step(sub: nn.Module, pool: torch.Tensor, answers: torch.Tensor, lam: float,
                   chunk: int = 500) -> torch.Tensor:
    """Papernot et al.'s augmentation: ``x + λ·sign(∂S(x)[c]/∂x)`` with c = T's label of x,
    clipped to [0, 1]. (N, C, H, W) → (N, C, H, W) on CPU."""
    dev = model_device(sub) or torch.device("cpu")
    target = answers if answers.dtype == torch.long else answers.argmax(1)
    out = []
    for s in range(0, len(pool), chunk):
        x = pool[s:s + chunk].to(dev).requires_grad_(True)
        with torch.enable_grad():
            z = sub(x).gather(1, target[s:s + chunk].to(dev)[:, None]).sum()
            (g,) = torch.autograd.grad(z, x)
        out.append((x.detach() + lam * g.sign()).clamp_(0, 1).cpu())
    return torch.cat(out)
