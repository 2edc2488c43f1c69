"""Adversarial attacks as small callable objects.

``atk = MIM(model, eps=0.3, steps=100)``; ``x_adv = atk(x, y)`` with ``y=None`` attacking
the model's own predictions (what the paper's authors did). Inputs are float NCHW in [0, 1]
and are never modified; outputs lie in [0, 1] and within the norm bound exactly. Every
attack is batched (an example's result does not depend on the rest of its batch), runs on
the model's device, is deterministic under ``seed`` and counts its passes (``n_forward``,
``n_backward``, ``n_queries``); ``params()`` gives its resolved parameters.

Gradient attacks (FGSM, PGD, MIM, DIM, MIMTI, DIMTI, the transfer attacks NIFGSM,
SINIFGSM, VMIFGSM, VNIFGSM, and the input-transformation attacks SIA and BSR) share one
iterative loop with hooks (:mod:`luring.attacks.iterative`); each takes
``loss="ce"|"margin"`` (with ``kappa``) and a gradient source ``grad_model`` such as
:func:`bpda` (straight-through gradients for saturating layers) or an :class:`Ensemble` of
models (averaged logits, or averaged per-model losses with :func:`with_ensemble_loss`).
SPSA and ECO are query-only; CWL2 is the minimum-l2 attack; :func:`worst_case_search` is the
paper's MIM-W transfer search; :func:`train_substitute` is Papernot et al.'s substitute-model
attacker (queries only).
"""

from luring.attacks.base import Attack, enforce_bounds
from luring.attacks.bpda import BPDA, bpda
from luring.attacks.bsr import BSR, BlockShuffleRotate, block_shuffle_rotate
from luring.attacks.cw import CWL2
from luring.attacks.dim import DIM, DiverseInput, diverse_input
from luring.attacks.eco import ECO
from luring.attacks.ensemble import Ensemble, EnsembleLoss, with_ensemble_loss
from luring.attacks.fgsm import FGSM
from luring.attacks.iterative import IterativeAttack
from luring.attacks.losses import LOSSES, attack_loss
from luring.attacks.mim import MIM
from luring.attacks.pgd import PGD
from luring.attacks.registry import ATTACKS, attack_parameters, create
from luring.attacks.sia import SIA, StructureInvariant, structure_invariant
from luring.attacks.spsa import SPSA
from luring.attacks.substitute import Substitute, train_substitute
from luring.attacks.ti import DIMTI, MIMTI, GaussianSmoothing, gaussian_kernel
from luring.attacks.transfer import NIFGSM, SINIFGSM, VMIFGSM, VNIFGSM
from luring.attacks.worst_case import (
    SettingResult,
    WorstCaseResult,
    default_settings,
    worst_case_search,
)

__all__ = [
    "Attack",
    "IterativeAttack",
    "FGSM",
    "PGD",
    "MIM",
    "DIM",
    "MIMTI",
    "DIMTI",
    "NIFGSM",
    "SINIFGSM",
    "VMIFGSM",
    "VNIFGSM",
    "SIA",
    "BSR",
    "StructureInvariant",
    "structure_invariant",
    "BlockShuffleRotate",
    "block_shuffle_rotate",
    "Ensemble",
    "EnsembleLoss",
    "with_ensemble_loss",
    "SPSA",
    "ECO",
    "CWL2",
    "DiverseInput",
    "diverse_input",
    "GaussianSmoothing",
    "gaussian_kernel",
    "enforce_bounds",
    "bpda",
    "BPDA",
    "LOSSES",
    "attack_loss",
    "worst_case_search",
    "default_settings",
    "Substitute",
    "train_substitute",
    "WorstCaseResult",
    "SettingResult",
    "ATTACKS",
    "create",
    "attack_parameters",
]
