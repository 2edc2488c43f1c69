"""The paper's metrics: rates with Wilson intervals (DR, IAR, AC, DAC, table-8 clean rates),
detector curves (ROC, AUROC, detection rate at a threshold), paired comparisons (McNemar's
exact test, Newcombe's interval), adversarial distortion (l2, l∞, l0), Ω_c logit analysis and
saliency maps.

Tensors in, plain floats (or :class:`Rate`) out. Imports only torch, numpy and
``luring.utils``/``luring.errors``.
"""

from luring.metrics.detection import auroc, detection_rate, roc_curve
from luring.metrics.distortion import (
    L0_THRESHOLD,
    distortion_summary,
    distortions,
    l0_distortion,
    l2_distortion,
    linf_distortion,
)
from luring.metrics.gradients import (
    component_saliency,
    input_saliency,
    logit_gradients,
    omega,
    omega_comparison,
)
from luring.metrics.paired import (
    PairedComparison,
    mcnemar,
    mcnemar_p_value,
    newcombe_interval,
)
from luring.metrics.rates import (
    Z95,
    Rate,
    adversarial_accuracy,
    agreement,
    clean_accuracy,
    correct,
    dac,
    dac_ok,
    disagreement_rate,
    false_alarm_rate,
    inefficient_rate,
    rate,
    transfer_metrics,
    wilson_interval,
    worst_case,
)

__all__ = [
    "Z95",
    "Rate",
    "wilson_interval",
    "rate",
    "correct",
    "dac_ok",
    "adversarial_accuracy",
    "disagreement_rate",
    "inefficient_rate",
    "dac",
    "clean_accuracy",
    "agreement",
    "false_alarm_rate",
    "transfer_metrics",
    "worst_case",
    "roc_curve",
    "auroc",
    "detection_rate",
    "PairedComparison",
    "mcnemar",
    "mcnemar_p_value",
    "newcombe_interval",
    "L0_THRESHOLD",
    "l2_distortion",
    "linf_distortion",
    "l0_distortion",
    "distortions",
    "distortion_summary",
    "logit_gradients",
    "omega",
    "omega_comparison",
    "component_saliency",
    "input_saliency",
]
