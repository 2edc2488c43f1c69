"""The defense stage: train the luring component P for a frozen target M (T = M∘P, paper
section 2.4, Algorithm 1), the baselines of section 3.1 (C_E, Auto, Stack), clean evaluation
(table 8), the deployed defense with its detection scheme (section 4.1: detection scores and
a label-free calibrated operating point) and export of T.

Main entry points: :func:`luring_loss`, :func:`defense_settings`, :func:`train_defense`,
:func:`evaluate_clean`, :func:`save_defense`, :func:`build_defense` (the three in one
call, with the detector's calibration), :func:`load` (any defense directory: →
:class:`Defense`, or :class:`TrappedModel` for a trapdoor one; :func:`defense_method` says
which a directory holds), :func:`export_augmented`; detection: :func:`score`
(:data:`SCORES`), :func:`calibrate`, :func:`operating_point`. Trapdoor (Shan et al. 2019, paper
appendix I): :func:`trapdoor_settings`, :func:`train_trapdoor`, :func:`build_trapdoor`,
:func:`load_trapdoor` (→ :class:`TrappedModel`).

Modules, each importing only those listed before it: ``settings``, ``loss``, ``scores``,
``schedule``, ``calibrate``, ``evaluate``, ``directory`` (what every defense directory has),
``publish`` (writing one as a whole), ``parallel``, ``plans`` (what each method trains),
``train`` (the training loop), ``deploy`` (the M∘P directory and :class:`Defense`), ``build``,
``trapdoor`` (the method), ``trapdoor_store`` (its directory), ``trapdoor_train``, ``loader``
(:func:`load`), ``export``, ``inputs``.
"""

from luring.defense.build import build_defense
from luring.defense.calibrate import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RULE,
    DEFAULT_TARGET_FPR,
    calibrate,
    calibration_split,
    exceedances,
    load_calibration,
    operating_point,
)
from luring.defense.deploy import LEGACY_DETECTOR, Defense, Detection, save_defense
from luring.defense.directory import FORMAT, defense_method
from luring.defense.evaluate import evaluate_clean, wilson_interval
from luring.defense.export import export_augmented
from luring.defense.inputs import read_inputs
from luring.defense.loader import load
from luring.defense.loss import (
    luring_classes,
    luring_loss,
    reconstruction_loss,
    soft_cross_entropy,
)
from luring.defense.scores import SCORES, flag, score
from luring.defense.settings import METHODS, defense_settings, resolve_settings
from luring.defense.train import TrainedDefense, train_defense
from luring.defense.trapdoor import (
    TrapdoorDetection,
    TrappedModel,
    Triggers,
    make_triggers,
    resolve_trapdoor_settings,
    trapdoor_settings,
)
from luring.defense.trapdoor_train import (
    build_trapdoor,
    evaluate_trapdoor,
    load_trapdoor,
    save_trapdoor,
    train_trapdoor,
)

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RULE",
    "DEFAULT_TARGET_FPR",
    "FORMAT",
    "LEGACY_DETECTOR",
    "METHODS",
    "SCORES",
    "Defense",
    "Detection",
    "TrainedDefense",
    "TrapdoorDetection",
    "TrappedModel",
    "Triggers",
    "build_defense",
    "build_trapdoor",
    "calibrate",
    "exceedances",
    "calibration_split",
    "defense_method",
    "defense_settings",
    "evaluate_clean",
    "evaluate_trapdoor",
    "export_augmented",
    "flag",
    "load",
    "load_calibration",
    "load_trapdoor",
    "luring_classes",
    "luring_loss",
    "make_triggers",
    "operating_point",
    "read_inputs",
    "reconstruction_loss",
    "resolve_settings",
    "resolve_trapdoor_settings",
    "save_defense",
    "save_trapdoor",
    "score",
    "soft_cross_entropy",
    "train_defense",
    "train_trapdoor",
    "trapdoor_settings",
    "wilson_interval",
]
