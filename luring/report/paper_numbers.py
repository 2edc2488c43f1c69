"""The paper's own numbers, transcribed from the paper (reference data, not our results).

Source: "Luring of transferable adversarial perturbations in the black-box paradigm"
(/work/shared/paper.md): table 1 (SVHN, CIFAR10 defense), table 14 (MNIST defense), table 8
(clean accuracy and agreement), table 9 (CWL2 mean l2 / l∞), table 10 (Ω rates), tables 11-13
(MIM-TI / DIM-TI kernel sizes), appendix F.2 (DIM p), tables 18-19 (adversarially trained M,
appendix H.2) and table 20 (Trapdoor, appendix I). The attack and analysis numbers
are over 1,000 test images of the full data set, table 8 over its whole test set. Approach
keys follow ours: ``target`` (BASE/TARGET), ``stack``, ``auto``, ``ce`` (C_E), ``luring``.
``None`` marks a cell the paper leaves empty.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PAPER_LABEL",
    "TABLE8",
    "TABLE9",
    "TABLE10",
    "DEFEND",
    "DIM_P",
    "TI_KERNELS",
    "TABLE18",
    "TABLE19",
    "TABLE20",
    "paper_label",
]

_FULL_NAME = {"mnist": "MNIST", "svhn": "SVHN", "cifar10": "CIFAR10"}

#: How every paper column of the attack tables is labelled in the report, per family.
PAPER_LABEL = {fam: f"paper (full {name}, 1,000 images)" for fam, name in _FULL_NAME.items()}


def paper_label(family: str, scope: str = "1,000 images") -> str:
    """The report's label for the paper's numbers of ``family``; ``scope`` says what they
    were measured on (the attack tables: 1,000 test images; table 8: the test set)."""
    name = _FULL_NAME.get(family)
    return f"paper (full {name}, {scope})" if name else f"paper ({family})"


#: Table 8: (test accuracy, agreement on the ground-truth label) per family and model.
TABLE8: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "mnist": {"target": (0.991, None), "stack": (0.98, 0.976), "auto": (0.971, 0.969),
              "ce": (0.982, 0.977), "luring": (0.974, 0.969)},
    "svhn": {"target": (0.961, None), "stack": (0.925, 0.913), "auto": (0.95, 0.943),
             "ce": (0.919, 0.907), "luring": (0.920, 0.917)},
    "cifar10": {"target": (0.893, None), "stack": (0.902, 0.842), "auto": (None, None),
                "ce": (0.860, 0.834), "luring": (0.853, 0.822)},
}

#: Table 9: (mean l2, mean l∞) of CWL2 adversarial examples per family and attacked model.
TABLE9: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "mnist": {"target": (0.96, 0.27), "stack": (0.87, 0.25), "auto": (0.94, 0.35),
              "ce": (0.92, 0.34), "luring": (0.94, 0.31)},
    "svhn": {"target": (0.32, 0.04), "stack": (0.34, 0.05), "auto": (0.29, 0.04),
             "ce": (0.29, 0.04), "luring": (0.31, 0.04)},
    "cifar10": {"target": (0.42, 0.04), "stack": (0.4, 0.03), "auto": (None, None),
                "ce": (0.41, 0.04), "luring": (0.39, 0.04)},
}

#: Table 10: share of examples whose Ω_c is higher for Luring than for the other approaches,
#: per class. The paper numbers classes 1..10; the keys here are our 0-based "0".."9".
#: The paper reports no MNIST row.
TABLE10: dict[str, dict[str, float]] = {
    "svhn": dict(zip([str(i) for i in range(10)],
                     [0.81, 0.85, 0.86, 0.89, 0.86, 0.82, 0.83, 0.84, 0.83, 0.82], strict=True)),
    "cifar10": dict(zip([str(i) for i in range(10)],
                        [0.86, 0.88, 0.88, 0.87, 0.88, 0.87, 0.89, 0.86, 0.88, 0.85],
                        strict=True)),
}

_Cell = tuple[float, float, float]  # (AC_MoP, AC_M, DAC)


def _rows(eps: tuple[float, ...], **cols: tuple[_Cell, ...]) -> dict[float, dict[str, _Cell]]:
    return {e: {a: cells[i] for a, cells in cols.items()} for i, e in enumerate(eps)}


#: Tables 14 (MNIST) and 1 (SVHN, CIFAR10): family → attack → ε → approach →
#: (AC_MoP, AC_M, DAC). CIFAR10 has no Auto column.
DEFEND: dict[str, dict[str, dict[float, dict[str, _Cell]]]] = {
    "mnist": {
        "spsa": _rows((0.2, 0.3, 0.4),
                      stack=((0.0, 0.96, 0.97), (0.0, 0.86, 0.89), (0.0, 0.72, 0.77)),
                      auto=((0.03, 0.95, 0.95), (0.03, 0.90, 0.92), (0.0, 0.85, 0.87)),
                      ce=((0.0, 0.97, 0.98), (0.0, 0.94, 0.95), (0.0, 0.88, 0.91)),
                      luring=((0.14, 0.99, 0.99), (0.05, 0.96, 0.97), (0.02, 0.95, 0.96))),
        "eco": _rows((0.2, 0.3, 0.4),
                     stack=((0.03, 0.86, 0.92), (0.02, 0.56, 0.65), (0.01, 0.35, 0.54)),
                     auto=((0.03, 0.86, 0.88), (0.03, 0.68, 0.7), (0.03, 0.36, 0.46)),
                     ce=((0.01, 0.91, 0.93), (0.01, 0.8, 0.87), (0.01, 0.45, 0.48)),
                     luring=((0.05, 0.99, 1.0), (0.02, 0.91, 0.96), (0.03, 0.77, 0.79))),
        "mim-w": _rows((0.2, 0.3, 0.4),
                       stack=((0.0, 0.79, 0.82), (0.0, 0.31, 0.45), (0.0, 0.07, 0.24)),
                       auto=((0.0, 0.81, 0.82), (0.0, 0.35, 0.45), (0.0, 0.07, 0.17)),
                       ce=((0.0, 0.85, 0.88), (0.0, 0.43, 0.57), (0.0, 0.13, 0.31)),
                       luring=((0.19, 0.92, 0.93), (0.13, 0.69, 0.75), (0.07, 0.34, 0.45))),
    },
    "svhn": {
        "spsa": _rows((0.03, 0.06, 0.08),
                      stack=((0.10, 0.54, 0.56), (0.01, 0.21, 0.24), (0.0, 0.13, 0.15)),
                      auto=((0.06, 0.37, 0.38), (0.0, 0.10, 0.11), (0.0, 0.06, 0.06)),
                      ce=((0.06, 0.67, 0.68), (0.0, 0.37, 0.42), (0.0, 0.23, 0.28)),
                      luring=((0.0, 0.96, 0.97), (0.0, 0.96, 0.96), (0.0, 0.94, 0.96))),
        "eco": _rows((0.03, 0.06, 0.08),
                     stack=((0.06, 0.42, 0.44), (0.0, 0.11, 0.12), (0.0, 0.03, 0.07)),
                     auto=((0.14, 0.48, 0.49), (0.06, 0.09, 0.11), (0.06, 0.09, 0.09)),
                     ce=((0.18, 0.66, 0.68), (0.1, 0.35, 0.39), (0.08, 0.29, 0.32)),
                     luring=((0.20, 0.97, 0.98), (0.1, 0.86, 0.88), (0.09, 0.84, 0.86))),
        "mim-w": _rows((0.03, 0.06, 0.08),
                       stack=((0.04, 0.32, 0.35), (0.0, 0.06, 0.09), (0.0, 0.03, 0.06)),
                       auto=((0.01, 0.20, 0.21), (0.0, 0.03, 0.05), (0.0, 0.01, 0.02)),
                       ce=((0.03, 0.41, 0.45), (0.0, 0.10, 0.18), (0.0, 0.06, 0.13)),
                       luring=((0.11, 0.81, 0.87), (0.0, 0.58, 0.71), (0.0, 0.48, 0.67))),
    },
    "cifar10": {
        "spsa": _rows((0.02, 0.03, 0.04),
                      stack=((0.01, 0.75, 0.78), (0.0, 0.57, 0.62), (0.0, 0.38, 0.42)),
                      ce=((0.06, 0.68, 0.71), (0.01, 0.45, 0.49), (0.0, 0.22, 0.24)),
                      luring=((0.12, 0.78, 0.82), (0.02, 0.59, 0.64), (0.01, 0.42, 0.50))),
        "eco": _rows((0.02, 0.03, 0.04),
                     stack=((0.15, 0.7, 0.71), (0.09, 0.44, 0.59), (0.05, 0.29, 0.29)),
                     ce=((0.14, 0.6, 0.63), (0.09, 0.36, 0.42), (0.04, 0.28, 0.34)),
                     luring=((0.16, 0.81, 0.87), (0.2, 0.65, 0.67), (0.09, 0.35, 0.44))),
        "mim-w": _rows((0.02, 0.03, 0.04),
                       stack=((0.0, 0.49, 0.52), (0.0, 0.24, 0.28), (0.0, 0.13, 0.16)),
                       ce=((0.02, 0.4, 0.43), (0.0, 0.15, 0.19), (0.0, 0.05, 0.1)),
                       luring=((0.03, 0.58, 0.64), (0.0, 0.30, 0.39), (0.0, 0.18, 0.28))),
    },
}

#: Appendix F.2: the DIM / DIM-TI transformation probability p the paper found optimal.
DIM_P: dict[str, float] = {"mnist": 1.0, "svhn": 1.0, "cifar10": 0.6}

#: Tables 11-13: kernel size k (k×k) of MIM-TI / DIM-TI per family → attack → approach,
#: one entry per ε of ``TI_KERNELS[family]["eps"]``. Table 11 (MNIST) lists ε 0.3/0.4/0.5
#: although table 14 uses 0.2/0.3/0.4; transcribed as printed.
TI_KERNELS: dict[str, dict] = {
    "mnist": {"eps": (0.3, 0.4, 0.5),
              "mim-ti": {"stack": (5, 5, 5), "auto": (10, 5, 5), "ce": (10, 10, 5),
                         "luring": (5, 5, 10)},
              "dim-ti": {"stack": (5, 5, 5), "auto": (5, 5, 5), "ce": (10, 10, 10),
                         "luring": (5, 5, 5)}},
    "svhn": {"eps": (0.03, 0.06, 0.08),
             "mim-ti": {"stack": (5, 5, 5), "auto": (5, 5, 5), "ce": (5, 10, 5),
                        "luring": (10, 10, 10)},
             "dim-ti": {"stack": (5, 5, 5), "auto": (5, 5, 5), "ce": (5, 5, 5),
                        "luring": (10, 10, 10)}},
    "cifar10": {"eps": (0.02, 0.03, 0.04),
                "mim-ti": {"stack": (3, 3, 3), "auto": (3, 3, 3), "ce": (3, 10, 3),
                           "luring": (3, 3, 3)},
                "dim-ti": {"stack": (3, 3, 3), "auto": (3, 3, 3), "ce": (3, 3, 3),
                           "luring": (3, 3, 3)}},
}


#: Table 18 (appendix H.2): (test accuracy, agreement on the ground-truth label) per family
#: and model: ``base`` (M), ``base-luring`` (its luring T), ``advtrain`` (M adversarially
#: trained), ``advtrain-luring``. The paper leaves the agreement of an M empty.
TABLE18: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "mnist": {"base": (0.991, None), "base-luring": (0.97, 0.97), "advtrain": (0.99, None),
              "advtrain-luring": (0.96, 0.96)},
    "svhn": {"base": (0.961, None), "base-luring": (0.92, 0.92), "advtrain": (0.93, None),
             "advtrain-luring": (0.87, 0.85)},
    "cifar10": {"base": (0.893, None), "base-luring": (0.85, 0.82), "advtrain": (0.79, None),
                "advtrain-luring": (0.78, 0.76)},
}

#: Table 19 (appendix H.2): per family its one ε and, for ``base-luring`` and
#: ``advtrain-luring``, (AC_M,wb, AC_M, DAC) under MIM-W.
TABLE19: dict[str, dict[str, Any]] = {
    "mnist": {"eps": 0.3, "base-luring": (0.0, 0.69, 0.75), "advtrain-luring": (0.82, 0.97, 0.98)},
    "svhn": {"eps": 0.03, "base-luring": (0.0, 0.81, 0.87),
             "advtrain-luring": (0.45, 0.898, 0.911)},
    "cifar10": {"eps": 0.03, "base-luring": (0.0, 0.30, 0.39),
                "advtrain-luring": (0.41, 0.85, 0.88)},
}

#: Table 20 (appendix I): family → ε → approach (``trapdoor``, ``luring``) → the optimal
#: (AC_MoP, AC_M, DAC) among FGSM, MIM, DIM, MIM-TI and DIM-TI.
TABLE20: dict[str, dict[float, dict[str, _Cell]]] = {
    "mnist": _rows((0.2, 0.3, 0.4),
                   trapdoor=((0.06, 0.82, 0.97), (0.0, 0.54, 0.94), (0.0, 0.27, 0.87)),
                   luring=((0.19, 0.92, 0.93), (0.13, 0.69, 0.75), (0.07, 0.34, 0.45))),
    "svhn": _rows((0.03, 0.06, 0.08),
                  trapdoor=((0.1, 0.48, 0.58), (0.07, 0.38, 0.48), (0.01, 0.23, 0.38)),
                  luring=((0.11, 0.81, 0.87), (0.0, 0.58, 0.71), (0.0, 0.48, 0.67))),
    "cifar10": _rows((0.02, 0.03, 0.04),
                     trapdoor=((0.0, 0.71, 0.84), (0.0, 0.58, 0.77), (0.0, 0.45, 0.78)),
                     luring=((0.03, 0.58, 0.64), (0.0, 0.30, 0.39), (0.0, 0.16, 0.27))),
}
