"""Attack names (as the CLI and experiment configs spell them) → constructors."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from luring.attacks.base import Attack
from luring.attacks.bsr import BSR
from luring.attacks.cw import CWL2
from luring.attacks.dim import DIM
from luring.attacks.eco import ECO
from luring.attacks.fgsm import FGSM
from luring.attacks.mim import MIM
from luring.attacks.pgd import PGD
from luring.attacks.sia import SIA
from luring.attacks.spsa import SPSA
from luring.attacks.ti import DIMTI, MIMTI
from luring.attacks.transfer import NIFGSM, SINIFGSM, VMIFGSM, VNIFGSM
from luring.errors import LuringError

__all__ = ["ATTACKS", "create", "attack_parameters"]

#: name → (class, fixed keyword arguments)
ATTACKS: dict[str, tuple[type[Attack], dict[str, Any]]] = {
    "fgsm": (FGSM, {}),
    "pgd": (PGD, {}),
    "mim": (MIM, {}),
    "mim-l2": (MIM, {"norm": "l2"}),
    "dim": (DIM, {}),
    "mim-ti": (MIMTI, {}),
    "dim-ti": (DIMTI, {}),
    "ni-fgsm": (NIFGSM, {}),
    "si-ni-fgsm": (SINIFGSM, {}),
    "vmi-fgsm": (VMIFGSM, {}),
    "vni-fgsm": (VNIFGSM, {}),
    "sia": (SIA, {}),
    "bsr": (BSR, {}),
    "spsa": (SPSA, {}),
    "eco": (ECO, {}),
    "cw-l2": (CWL2, {}),
}

_HIDDEN = {"model", "input_transform", "grad_transform"}


def _lookup(name: str) -> tuple[type[Attack], dict[str, Any]]:
    if name not in ATTACKS:
        raise LuringError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name]


def attack_parameters(name: str) -> list[str]:
    """The keyword parameters attack ``name`` accepts (besides the model)."""
    cls, fixed = _lookup(name)
    sig = inspect.signature(cls.__init__)
    return [p for p in sig.parameters if p not in {"self", *_HIDDEN, *fixed}]


def create(name: str, model: nn.Module | Callable, **params: Any) -> Attack:
    """Build attack ``name`` on ``model``; unknown names or parameters are a LuringError."""
    cls, fixed = _lookup(name)
    allowed = attack_parameters(name)
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise LuringError(f"attack {name} does not take {', '.join(bad)}; "
                          f"it takes {', '.join(allowed)}")
    return cls(model, **fixed, **params)
