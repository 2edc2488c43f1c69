"""The paper's own values: what its text states (appendix A: M; appendix B: each P; appendix
C: λ; F.1: ECO; H.2: adversarial training) and, under ``"authors"``, what the authors' code
ran where the text says nothing. Appendices A, B and H.2 are written once, beside the code
that trains them (:data:`luring.models.appendix.APPENDIX_A_TEXT`, ``APPENDIX_H2_TEXT``,
:data:`luring.defense.settings.APPENDIX_B_TEXT`), which derives the run's settings from them
with its departures stated there. The disclosure of every experiment
compares a run's resolved settings with these. (The published result tables the report
prints beside a run's figures are :mod:`luring.report.paper_numbers`.)
"""

from __future__ import annotations

import copy
from typing import Any

from luring.defense.settings import APPENDIX_B_TEXT, DROPOUT_USED
from luring.models.appendix import APPENDIX_A_TEXT, APPENDIX_H2_TEXT

__all__ = ["PAPER", "USED", "num"]

#: Appendix B's "Dropout is used" with no value given.
USED = DROPOUT_USED

PAPER: dict[str, Any] = {
    # Appendix A: M's training (the text's values, kept with M's training code)
    "target": copy.deepcopy(APPENDIX_A_TEXT),
    # Appendix H.2: PGD adversarial training of M, (ε, steps, step size).
    "adv_train": dict(APPENDIX_H2_TEXT),
    # Appendix B (and H.1): each P, fixed epochs on all training images, "randomly
    # initialized" (Algorithm 1 line 2); the text's values, kept with P's settings
    "defense": copy.deepcopy(APPENDIX_B_TEXT),
    "lambda": {"mnist": 1.0, "svhn": 1.0, "cifar10": 0.15, "imagenet": 1.0},  # C, H.1
    "eco": {"early_stop": False},  # F.1 (budget and block sizes: the paper profile's walk)
    # Where the text is silent: the authors' code and scripts.
    "authors": {
        "p_init": "glorot",  # Keras' default initialiser
        "p_augment": {"cifar10": {"shift": 5 / 32, "rotate": 10.0}},
        "eco_loss": "xent",
        "eco_block_batch": {"mnist": 256, "svhn": 256, "cifar10": 512},
        "spsa_delta": 0.01,
    },
}


def num(v: float) -> str:
    """A number as the disclosure lines print it (``%g``)."""
    return f"{v:g}"
