"""The benchmark's contenders: luring's attacks and trainers and the bare loops they are
compared with, all on one model, batch and device; :func:`build_contender` builds any of
them by name, the other libraries' (:mod:`luring.benchmarks.libraries`) included. The bare
sign-gradient loop and training steps, in float32 and in the best precision, are written
once in :mod:`luring.benchmarks.fast`.

A :class:`~luring.benchmarks.env.Contender` is a name, a unit and a ``run()`` that does one
repetition of work and returns how much it did (images, image-iterations or queries), so
throughput is ``work / seconds``. Everything a contender needs is made when it is built
(models, inputs, the forward batch sizes an attack uses), so ``run()`` times only the work
itself.

Models: M is the paper's MNIST target (``mnist-target``, table 2), trained one epoch on
mnist-5k with :func:`luring.models.train.train_target` unless the config says otherwise;
P is ``mnist-component`` (table 5) with random weights (speed does not depend on them);
T = M∘P. M and P are in eval mode with frozen parameters for every contender (what the
attacks do themselves), so all contenders see the same model state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from luring.benchmarks import fast
from luring.benchmarks.env import (
    Contender,
    Env,
    attack_batch,
    epoch_batches,
    p_settings,
    record_forward_sizes,
)
from luring.benchmarks.libraries import LIBRARY_CONTENDERS

__all__ = ["Contender", "build_contender", "CONTENDERS"]


# ---- gradient group ---------------------------------------------------------------------
def _bare_fwd_bwd(env: Env, model: nn.Module) -> Callable[[], float]:
    x, y = attack_batch(env, env.cfg.batch)

    def run() -> float:
        for _ in range(env.cfg.passes):
            xx = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xx), y, reduction="sum")
            torch.autograd.grad(loss, xx)
        return float(len(x) * env.cfg.passes)

    return run


def _gradient_attack(env: Env, name: str) -> Callable[[], float]:
    """A luring gradient attack on M with true labels; its work is the images of all its
    gradient evaluations (``len(x) · n_backward``: SI's copies and VT's neighbours count one
    evaluation each), so its throughput compares per gradient evaluation with the bare loop.
    The transfer attacks run with their defaults (SI 5 copies, VT 20 neighbours); SIA and
    BSR with 5 copies (their papers: 20; the work per gradient evaluation is the same)."""
    from luring.attacks import BSR, DIMTI, MIM, NIFGSM, PGD, SIA, SINIFGSM, VMIFGSM, VNIFGSM

    cls = {"pgd": PGD, "mim": MIM, "dimti": DIMTI, "nifgsm": NIFGSM, "sinifgsm": SINIFGSM,
           "vmifgsm": VMIFGSM, "vnifgsm": VNIFGSM, "sia": SIA, "bsr": BSR}[name]
    extra = {"num_copies": 5} if name in ("sia", "bsr") else {}
    atk = cls(env.target, eps=env.cfg.eps, steps=env.cfg.steps, alpha=env.cfg.alpha,
              seed=env.seed, precision=env.precision, **extra)
    x, y = attack_batch(env, env.cfg.batch)

    def run() -> float:
        atk(x, y)
        return float(len(x) * atk.n_backward)

    return run


# ---- MIM-W grid: one setting at a time against all settings in one batched pass ----------
#: A 9-setting MIM-W grid (MIM; DIM p 0.5, 1.0; MIM-TI 5, 10; DIM-TI p × size).
_GRID = ({"attack": "mim"}, {"attack": "dim", "p": 0.5}, {"attack": "dim", "p": 1.0},
         {"attack": "mim-ti", "kernel_size": 5}, {"attack": "mim-ti", "kernel_size": 10},
         {"attack": "dim-ti", "p": 0.5, "kernel_size": 5},
         {"attack": "dim-ti", "p": 0.5, "kernel_size": 10},
         {"attack": "dim-ti", "p": 1.0, "kernel_size": 5},
         {"attack": "dim-ti", "p": 1.0, "kernel_size": 10})


def _mimw_grid(env: Env, together: int, notes: dict[str, list[float]]) -> Callable[[], float]:
    """worst_case_search over the quick grid on T (judged on M): ``together`` = 1 runs the
    nine settings one after another, 9 runs them in one batched pass per step. Work: images ×
    settings × steps. Each run records a fingerprint of its results in ``notes`` so the two
    contenders can be checked equal."""
    from luring.attacks import worst_case_search
    from luring.utils import fingerprint

    x, y = attack_batch(env, env.cfg.batch)

    def run() -> float:
        res = worst_case_search(env.augmented, env.target, x, y, env.cfg.eps,
                                steps=env.cfg.steps, alpha=env.cfg.alpha, settings=list(_GRID),
                                seed=env.seed, progress=False, together=together)
        notes.setdefault("results", []).append(int(fingerprint(
            res.best_x_adv, res.defended_all, res.ac_m_all)[:12], 16))
        return float(len(x) * len(_GRID) * env.cfg.steps)

    return run


# ---- query group ------------------------------------------------------------------------
def _query_attack(env: Env, name: str) -> Callable[[], float]:
    """luring's SPSA or ECO on M with true labels; its work is the queries it made."""
    from luring.attacks import ECO, SPSA

    c = env.cfg
    if name == "spsa":
        atk = SPSA(env.target, eps=c.eps, steps=c.spsa_steps, samples=c.spsa_samples,
                   chunk_size=c.spsa_chunk, seed=env.seed)
        x, y = attack_batch(env, c.spsa_images)
    else:
        atk = ECO(env.target, eps=c.eps, max_queries=c.eco_queries, block_size=c.eco_block,
                  seed=env.seed)
        x, y = attack_batch(env, c.eco_images)

    def run() -> float:
        atk(x, y)
        return float(atk.n_queries)

    return run


def _bare_forward(env: Env, attack: str) -> Callable[[], float]:
    """``torch.no_grad`` forwards of M on exactly the batch sizes ``attack`` used (recorded
    once from a run of the attack, or given in ``env.sizes``)."""
    if attack not in env.sizes:
        env.sizes[attack] = record_forward_sizes(env.target, _query_attack(env, attack))
    sizes = env.sizes[attack]
    gen = torch.Generator().manual_seed(env.seed)
    buf = torch.rand(max(sizes, default=1), *env.x_test.shape[1:], generator=gen).to(env.device)
    model = env.target

    def run() -> float:
        with torch.no_grad():
            for s in sizes:
                model(buf[:s])
        return float(sum(sizes))

    return run


# ---- training group ---------------------------------------------------------------------
def _train_p(env: Env, notes: dict[str, list[float]]) -> Callable[[], float]:
    from luring.defense.train import train_defense

    s = p_settings(env)
    x = env.x_train[:env.cfg.train_images]
    images = sum(b - a for a, b in epoch_batches(len(x), s["batch_size"])) * s["epochs"]
    loop = notes.setdefault("loop_seconds", [])

    def run() -> float:
        res = train_defense(env.target, x, method="luring", settings=s, seed=env.seed,
                            device=env.device, precision=env.precision)
        # the trainer's own clock: its optimisation loop, without the set-up before it
        # (M's logits on every training image, P's construction and initialisation)
        loop.append(float(res.history[-1]["seconds"]))
        return float(images)

    return run


def _train_m(env: Env) -> Callable[[], float]:
    from luring.models.train import target_settings, train_target

    c = env.cfg
    x, y = env.x_train[:c.train_images], env.y_train[:c.train_images]
    settings = target_settings("mnist", epochs=c.m_epochs, batch_size=c.m_batch)

    def run() -> float:
        train_target(x, y, settings, seed=env.seed, device=env.device,
                     precision=env.precision)
        return float(len(x) * c.m_epochs)

    return run


#: name → (group, unit, description, builder(env) -> run; None: built in build_contender)
CONTENDERS: dict[str, tuple[str, str, str, Callable[[Env], Callable[[], float]] | None]] = {
    "bare_fwd_bwd_m": ("fwd_bwd", "images/s", "bare forward+backward (input gradient) of M",
                       lambda e: _bare_fwd_bwd(e, e.target)),
    "bare_fwd_bwd_t": ("fwd_bwd", "images/s", "bare forward+backward (input gradient) of "
                       "T = M∘P", lambda e: _bare_fwd_bwd(e, e.augmented)),
    "bare_loop": ("gradient", "image-iterations/s", "plain sign-gradient loop on M "
                  "(requires_grad, CE, autograd.grad, sign step, clamp), float32 NCHW",
                  lambda e: fast.bare_loop(e, "fp32")),
    "bare_loop_best": ("gradient", "image-iterations/s", "the same loop in the best "
                       "precision (autocast + channels-last; float32 without one)",
                       fast.bare_loop_best),
    "pgd": ("gradient", "image-iterations/s", "luring.attacks.PGD on M",
            lambda e: _gradient_attack(e, "pgd")),
    "mim": ("gradient", "image-iterations/s", "luring.attacks.MIM on M",
            lambda e: _gradient_attack(e, "mim")),
    "dimti": ("gradient", "image-iterations/s", "luring.attacks.DIMTI on M",
              lambda e: _gradient_attack(e, "dimti")),
    "nifgsm": ("gradient", "image-iterations/s", "luring.attacks.NIFGSM on M",
               lambda e: _gradient_attack(e, "nifgsm")),
    "sinifgsm": ("gradient", "image-iterations/s", "luring.attacks.SINIFGSM on M (5 copies, "
                 "per gradient evaluation)", lambda e: _gradient_attack(e, "sinifgsm")),
    "vmifgsm": ("gradient", "image-iterations/s", "luring.attacks.VMIFGSM on M (20 "
                "neighbours, per gradient evaluation)", lambda e: _gradient_attack(e, "vmifgsm")),
    "vnifgsm": ("gradient", "image-iterations/s", "luring.attacks.VNIFGSM on M (20 "
                "neighbours, per gradient evaluation)", lambda e: _gradient_attack(e, "vnifgsm")),
    "sia": ("gradient", "image-iterations/s", "luring.attacks.SIA on M (5 copies, per gradient "
            "evaluation)", lambda e: _gradient_attack(e, "sia")),
    "bsr": ("gradient", "image-iterations/s", "luring.attacks.BSR on M (5 copies, per gradient "
            "evaluation)", lambda e: _gradient_attack(e, "bsr")),
    "mimw_one_at_a_time": ("mimw_grid", "image-iterations/s", "worst_case_search, a 9-setting "
                           "MIM-W grid on T, one setting at a time", None),
    "mimw_batched": ("mimw_grid", "image-iterations/s", "the same search with the 9 settings "
                     "in one batched pass per step (together=9)", None),
    "spsa": ("spsa", "queries/s", "luring.attacks.SPSA on M (n_queries)",
             lambda e: _query_attack(e, "spsa")),
    "bare_forward_spsa": ("spsa", "queries/s", "no_grad forwards of M on SPSA's batch sizes",
                          lambda e: _bare_forward(e, "spsa")),
    "eco": ("eco", "queries/s", "luring.attacks.ECO on M (n_queries)",
            lambda e: _query_attack(e, "eco")),
    "bare_forward_eco": ("eco", "queries/s", "no_grad forwards of M on ECO's batch sizes",
                         lambda e: _bare_forward(e, "eco")),
    "train_p": ("train_p", "images/s", "luring.defense.train_defense (luring loss), P of "
                "T = M∘P, M frozen", None),
    "bare_step_p": ("train_p", "images/s", "M's logits once, then plain Adam steps on P, "
                    "luring loss through M∘P, float32 NCHW",
                    lambda e: fast.bare_step_p(e, "fp32")),
    "bare_step_p_best": ("train_p", "images/s", "the same steps in the best precision",
                         fast.bare_step_p_best),
    "train_m": ("train_m", "images/s", "luring.models.train.train_target (M, CE)", _train_m),
    "bare_step_m": ("train_m", "images/s", "plain Adam step on M with CE, float32 NCHW",
                    lambda e: fast.bare_step_m(e, "fp32")),
    "bare_step_m_best": ("train_m", "images/s", "the same steps in the best precision",
                         fast.bare_step_m_best),
}


def build_contender(name: str, env: Env) -> Contender:
    """The contender ``name`` (one of :data:`CONTENDERS` or a library contender)."""
    if name == "train_p":
        group, unit, desc, _ = CONTENDERS[name]
        notes: dict[str, list[float]] = {}
        return Contender(name, group, unit, desc, _train_p(env, notes), notes)
    if name in ("mimw_one_at_a_time", "mimw_batched"):
        group, unit, desc, _ = CONTENDERS[name]
        notes = {}
        together = 1 if name == "mimw_one_at_a_time" else len(_GRID)
        return Contender(name, group, unit, desc, _mimw_grid(env, together, notes), notes)
    if name in CONTENDERS:
        group, unit, desc, make = CONTENDERS[name]
        return Contender(name, group, unit, desc, make(env))  # type: ignore[misc]
    group, unit, desc, make = LIBRARY_CONTENDERS[name]
    return Contender(name, group, unit, desc, make(env))
