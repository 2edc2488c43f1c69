"""What the paper's text states for training M: appendix A (epochs, batch, Adam's learning
rates and milestones; no dropout or augmentation) and appendix H.2 (PGD adversarial training).
Written only here: :func:`luring.models.train.target_settings` trains them with the departures
it states, and the report compares a run's M with them (``luring.experiments.disclosure``)."""

from __future__ import annotations

from typing import Any

__all__ = ["APPENDIX_A_TEXT", "APPENDIX_H2_TEXT"]

#: Appendix A's text for M (SVHN: 50 epochs; table 3 says 5), written only here.
APPENDIX_A_TEXT: dict[str, dict[str, Any]] = {
    "mnist": dict(epochs=5, batch_size=28, lrs=(1e-2,), milestones=(), dropout=0.0,
                  rotation_deg=0.0, shift=0.0),
    "svhn": dict(epochs=50, batch_size=28, lrs=(1e-2,), milestones=(), dropout=0.0,
                 rotation_deg=0.0, shift=0.0),
    "cifar10": dict(epochs=200, batch_size=32, lrs=(0.1, 0.01, 0.001), milestones=(80, 120),
                    dropout=0.0, rotation_deg=0.0, shift=0.0),
}

#: Appendix H.2's PGD adversarial training, (ε, steps, step size) (MNIST: the step H.2 gives;
#: its 0.01 is the white-box evaluation PGD's), trained as stated (``_ADV``).
APPENDIX_H2_TEXT = {"mnist": (0.3, 40, 0.1), "svhn": (0.03, 10, 0.008),
                    "cifar10": (0.03, 10, 0.008)}
