"""Several settings of the iterative loop on the same images, in one batched pass per step.

The MIM-W grid runs one attack per setting (MIM, DIM per p, MIM-TI per kernel size, ...) on
the same images. Each iteration of each is one forward and one backward of the same model on
the same N images, so S settings can share one pass of S·N images: every setting keeps its
own hooks (input transform, gradient transform, momentum, update, projection) and its own
state, and only the model call is batched. Since the loss is summed over examples and models
are in eval mode, an example's gradient does not depend on the rest of the batch: the results
are those of running the settings one after another (checked exactly in the tests), with
fewer, larger launches — what keeps a GPU busy.

Batched: iterative attacks with one gradient evaluation per step (FGSM, PGD, MIM, DIM, MIM-TI,
DIM-TI, NI-FGSM, with any loss and gradient source). SI-NI-FGSM's scale copies and VMI/VNI's
neighbours run on their own (:func:`batchable` says which).
"""

from __future__ import annotations

import torch

from luring import precision as prec
from luring.attacks.base import enforce_bounds, eval_frozen, linf_box
from luring.attacks.iterative import IterativeAttack
from luring.errors import LuringError
from luring.utils import check_images

__all__ = ["batchable", "run_together"]


def batchable(atk: object) -> bool:
    """Can ``atk`` share its passes with others (:func:`run_together`)?"""
    return (isinstance(atk, IterativeAttack) and atk.evals_per_step == 1
            and not atk.neighbors and atk.scales == 1
            and type(atk).step_grad is IterativeAttack.step_grad
            and type(atk)._run is IterativeAttack._run
            and type(atk).input_grad is IterativeAttack.input_grad
            and atk.batch_size is None)


def run_together(attacks: list[IterativeAttack], x: torch.Tensor, y: torch.Tensor
                 ) -> list[torch.Tensor]:
    """Run ``attacks`` (all :func:`batchable`, on the same model, gradient source and number of
    steps) on images x (N, C, H, W) in [0, 1] against labels y (N,), one batched forward and
    backward of S·N images per step. Returns each attack's x_adv (N, C, H, W), exactly as
    ``attack(x, y)`` would (in float32; in a lower precision the batched pass may round
    differently), on x's device; counts are kept per attack. The attacks must share the
    precision (:mod:`luring.precision`)."""
    if not attacks:
        return []
    bad = [type(a).__name__ for a in attacks if not batchable(a)]
    if bad:
        raise LuringError(f"these attacks cannot share a batched pass: {', '.join(bad)}")
    a0 = attacks[0]
    if any(a.model is not a0.model or a.grad_model is not a0.grad_model or a.steps != a0.steps
           for a in attacks):
        raise LuringError("attacks run together must share the model, the gradient source and "
                          "the number of steps")
    check_images(x, name="x")
    dev = a0.device or x.device
    x0 = x.detach().to(device=dev, dtype=torch.float32)
    y0 = torch.as_tensor(y).long().to(dev)
    n = len(x0)
    gm = a0.gradient_source
    with eval_frozen(a0.model), eval_frozen(gm):
        p = prec.resolve(a0.precision_requested, gm, dev, tuple(x0.shape[1:]))
        if any(prec.resolve(a.precision_requested, gm, dev, tuple(x0.shape[1:])) != p
               for a in attacks):
            raise LuringError("attacks run together must share the precision")
        twin = prec.gradient_twin(gm, p)
        cl = prec.uses_channels_last(p, twin)
        state = []
        for a in attacks:
            a.precision = p
            a.n_forward = a.n_backward = a.n_queries = 0
            a.labels_from_model = False
            if a.input_transform is not None:
                a.input_transform.setup(n, a.steps, a.seed, 0, dev)
            state.append([a.init_adv(x0, 0),
                          torch.zeros_like(x0) if a.mu is not None else None,
                          linf_box(x0, a.eps) if a.norm == "linf" else None])
        for step in range(a0.steps):
            points = [a.grad_point(s[0], s[1]).detach().requires_grad_(True)
                      for a, s in zip(attacks, state, strict=True)]
            with torch.enable_grad():
                x_in = torch.cat([a.transform_input(p, step)
                                  for a, p in zip(attacks, points, strict=True)])
                if cl:
                    x_in = prec.batch_format(x_in, p)
                with prec.autocast(p, dev):
                    logits = twin(x_in)
                logits = logits.float()
                loss = sum(a.objective(logits[i * n:(i + 1) * n], y0)
                           for i, a in enumerate(attacks))
                grads = torch.autograd.grad(loss, points)
            for a, s, g in zip(attacks, state, [g.contiguous() for g in grads], strict=True):
                a.n_forward += 1
                a.n_backward += 1
                a.n_queries += n
                d = a.accumulate(a.transform_grad(g), s[1])
                s[0] = a.project(a.update(s[0], d), x0, s[2])
        outs = [enforce_bounds(s[0].detach(), x0, **a._bounds())
                for a, s in zip(attacks, state, strict=True)]
    return [o.to(x.device) for o in outs]
