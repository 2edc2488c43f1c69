"""Paired comparison of two approaches on the same examples: McNemar's exact test and a 95%
interval for the difference of the two rates.

``a`` and ``b`` are per-example booleans on the same N examples (e.g. :func:`dac_ok` of luring
and of the best other approach against the same adversarial inputs, or their worst case over
attacks). The 2×2 table counts ``both`` (a and b true), ``only_a``, ``only_b`` and
``neither``. Only the discordant pairs carry information on which is better:

* the exact McNemar test is the two-sided binomial test of ``only_a`` out of
  d = ``only_a + only_b`` against p = ½: p = min(1, 2 · P(X ≤ min(only_a, only_b))),
  X ~ Bin(d, ½) (equal to ``scipy.stats.binomtest(only_a, d, 0.5).pvalue``); ``mid_p``
  subtracts P(X = min) once (less conservative). No discordant pair gives p = 1;
* the interval for rate_a − rate_b = (only_a − only_b) / N is Newcombe's method 10 (Newcombe
  1998, "Improved confidence intervals for the difference between binomial proportions
  based on paired data", Statist. Med. 17:2635): Wilson score limits (l₁, u₁), (l₂, u₂) of
  the two rates combined as  θ̂ − √((p₁ − l₁)² − 2φ(p₁ − l₁)(u₂ − p₂) + (u₂ − p₂)²)  and
  θ̂ + √((u₁ − p₁)² − 2φ(u₁ − p₁)(p₂ − l₂) + (p₂ − l₂)²), with the correlation
  φ = (ad − bc) / √((a+b)(c+d)(a+c)(b+d)) whose numerator, when positive, is reduced to
  max(ad − bc − N/2, 0) (the paper's correction), and φ = 0 when a margin is empty. It stays
  inside [−1, 1] and does not collapse to a point without discordant pairs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import torch

from luring.errors import LuringError
from luring.utils import Z95, wilson_interval

__all__ = ["PairedComparison", "mcnemar", "mcnemar_p_value", "newcombe_interval"]


@dataclass(frozen=True)
class PairedComparison:
    """The result of :func:`mcnemar`: the 2×2 counts, both rates, their difference
    ``rate_a − rate_b`` with its 95% interval ``[ci_low, ci_high]`` and the p-value (None
    for all figures when ``n == 0``)."""

    n: int
    both: int
    only_a: int
    only_b: int
    neither: int
    rate_a: float | None
    rate_b: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    mid_p: bool

    def a_better(self, alpha: float = 0.05) -> bool:
        """True when ``a``'s rate is higher and the test rejects equality at level ``alpha``."""
        return self.p_value is not None and self.p_value < alpha and self.only_a > self.only_b

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers (or None), with the interval as ``"ci": [low, high]``."""
        d = asdict(self)
        d["ci"] = [d.pop("ci_low"), d.pop("ci_high")]
        return d


def _mask(name: str, v: Any) -> torch.Tensor:
    t = torch.as_tensor(v).detach().cpu()
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise LuringError(f"{name} must be a 1-D tensor of per-example booleans, got shape "
                          f"{tuple(t.shape)}")
    if t.numel() and t.dtype != torch.bool and not ((t == 0) | (t == 1)).all():
        raise LuringError(f"{name} must hold booleans (or 0/1), not other values")
    return t.bool()


def mcnemar_p_value(only_a: int, only_b: int, *, mid_p: bool = False) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial, p = ½), exact
    rational arithmetic rounded once. Example: (only_a, only_b) = (1, 5): 2 · 7/64 = 0.21875;
    mid-p 2 · 7/64 − 6/64 = 0.125."""
    if only_a < 0 or only_b < 0:
        raise LuringError(f"discordant counts must be ≥ 0, got {only_a} and {only_b}")
    d, k = only_a + only_b, min(only_a, only_b)
    if d == 0:
        return 1.0
    tail, c = 0, 1
    for i in range(k + 1):  # c = C(d, i)
        tail += c
        c = c * (d - i) // (i + 1)
    c_k = math.comb(d, k)
    p = Fraction(2 * tail - (c_k if mid_p else 0), 2 ** d)
    return float(min(p, Fraction(1)))


def newcombe_interval(both: int, only_a: int, only_b: int, neither: int, z: float = Z95
                      ) -> tuple[float, float]:
    """Newcombe's method-10 interval for rate_a − rate_b from the paired 2×2 counts (see the
    module docstring). Example: (36, 12, 2, 0) → (0.0569, 0.3404) (his table III)."""
    a, b, c, d = (int(v) for v in (both, only_a, only_b, neither))
    if min(a, b, c, d) < 0:
        raise LuringError(f"paired counts must be ≥ 0, got {(a, b, c, d)}")
    n = a + b + c + d
    if n == 0:
        raise LuringError("a paired interval needs at least one pair")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    num = a * d - b * c
    if num > 0:
        num = max(num - n / 2, 0.0)
    phi = num / math.sqrt(margins) if margins else 0.0
    theta = p1 - p2
    lo = theta - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
                               + (u2 - p2) ** 2, 0.0))
    hi = theta + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)
                               + (p2 - l2) ** 2, 0.0))
    return max(-1.0, lo), min(1.0, hi)


def mcnemar(a: Any, b: Any, *, mid_p: bool = False, z: float = Z95) -> PairedComparison:
    """Compare two per-example boolean outcomes ``a`` and ``b`` (N,) on the same examples:
    the exact McNemar test and Newcombe's interval for ``rate_a − rate_b`` (module
    docstring). Returns a :class:`PairedComparison`."""
    ma, mb = _mask("a", a), _mask("b", b)
    if ma.shape != mb.shape:
        raise LuringError(f"paired outcomes must have the same length, got {len(ma)} and "
                          f"{len(mb)}")
    n = len(ma)
    both, only_a = int((ma & mb).sum()), int((ma & ~mb).sum())
    only_b, neither = int((~ma & mb).sum()), int((~ma & ~mb).sum())
    if n == 0:
        return PairedComparison(0, 0, 0, 0, 0, None, None, None, None, None, None, mid_p)
    lo, hi = newcombe_interval(both, only_a, only_b, neither, z)
    return PairedComparison(n, both, only_a, only_b, neither, (both + only_a) / n,
                            (both + only_b) / n, (only_a - only_b) / n, lo, hi,
                            mcnemar_p_value(only_a, only_b, mid_p=mid_p), mid_p)
