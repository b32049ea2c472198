"""The Skellam mechanism: integer noise for distributed DP under secure aggregation, and its accounting.

**Mechanism.** Each device quantizes its upload to integers and, before SecAgg+ masks it, adds a
share of symmetric Skellam noise to every coordinate: ``Z = P1 - P2`` with ``P1, P2`` independent
``Poisson(v/2)``, so ``E[Z] = 0`` and ``Var[Z] = v``. The server only ever sees the unmasked sum.

**Sums of shares stay Skellam.** A sum of independent Poisson variables is Poisson with the summed
rate, so ``sum_i (P1_i - P2_i) = Poisson(sum_i v_i/2) - Poisson(sum_i v_i/2)``: ``n`` shares of
variance ``v_i`` add up to exactly one symmetric Skellam of variance ``sum_i v_i`` (no Gaussian
approximation, no discretisation error). The accounting below therefore applies to the noise in the
*sum*, whichever devices contributed it (dropped devices' shares are missing, so a deployment
accounts only for the shares of the devices whose uploads were unmasked).

**Units.** Everything is in the integer (quantized) domain. ``variance`` is the per-coordinate
variance ``mu`` of the noise in the unmasked sum; ``l2_sensitivity`` (``D2``) and ``l1_sensitivity``
(``D1``) are the L2 and L1 norms of the largest change of that integer sum when one user's upload is
replaced by the all-zero upload.

**RDP bound** (Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021, arXiv:2110.04995, Theorem 3.5 written with ``mu`` the per-coordinate
variance). For an integer order ``alpha > 1`` the multi-dimensional Skellam mechanism is
``(alpha, eps(alpha))``-RDP with::

    eps(alpha) <= alpha D2^2 / (2 mu)
                  + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2),  3 D1 / (2 mu) )

The first term is the Gaussian mechanism's RDP at the same variance; the second is the price of
discreteness and vanishes like ``1/mu^2`` for large variance. The bound holds for integer orders
only, hence :data:`ORDERS`. ``steps`` compositions add the RDP, and RDP converts to
``(epsilon, delta)`` with the conversion Opacus uses (Balle et al. 2020, Theorem 21)::

    epsilon = min_alpha  rdp(alpha) - (log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha)

This module needs only numpy; Opacus (and with it torch) is imported only when an epsilon is
converted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Integer RDP orders: the Skellam bound holds for integer alpha.
ORDERS: tuple[int, ...] = tuple(range(2, 64)) + tuple(range(64, 513, 8))
# numpy's Poisson sampler works in double precision: above 2**53 its integers are no longer exact,
# so a variance (twice the Poisson rate) above 2**52 is refused.
MAX_VARIANCE = float(2**52)
# Calibration: relative width of the final bracket of the bisection in log-variance.
_CALIBRATION_RTOL = 1e-3


def _check_orders(orders: Sequence[int] | np.ndarray) -> np.ndarray:
    a = np.asarray(orders, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("orders must be a non-empty sequence of integers")
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)) or np.any(a <= 1):
        raise ValueError(f"the Skellam RDP bound holds for integer orders > 1 only, got {orders!r}")
    return a


def _rdp_bound(orders: np.ndarray, variance: float, l2: float, l1: float) -> np.ndarray:
    """The bound of the module docstring at each order (one composition)."""
    gaussian = orders * l2**2 / (2 * variance)
    discrete = np.minimum(
        ((2 * orders - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance)
    )
    return gaussian + discrete


def _check_parameters(variance: float, l2: float, l1: float) -> None:
    for name, value in (("variance", variance), ("l2_sensitivity", l2), ("l1_sensitivity", l1)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if variance <= 0:
        raise ValueError("variance must be positive: without noise nothing is private")
    if l2 <= 0 or l1 <= 0:
        raise ValueError(f"sensitivities must be positive, got l2={l2}, l1={l1}")
    # an L1 norm is never below the L2 norm (equal for a single non-zero coordinate; allow rounding)
    if l1 < l2 * (1 - 1e-12):
        raise ValueError(f"l1_sensitivity ({l1}) cannot be below l2_sensitivity ({l2})")


def skellam_rdp(order: int, variance: float, l2: float, l1: float) -> float:
    """RDP of order ``order`` (an integer > 1) of one Skellam mechanism of per-coordinate variance
    ``variance`` and sensitivities ``l2``, ``l1`` (integer units)::

        alpha D2^2 / (2 mu) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2),  3 D1 / (2 mu) )
    """
    _check_parameters(variance, l2, l1)
    return float(_rdp_bound(_check_orders([order]), variance, l2, l1)[0])


@dataclass(frozen=True)
class SkellamEvent:
    """``steps`` compositions of a Skellam mechanism: noise of per-coordinate ``variance`` on an integer
    sum that one user moves by at most ``l2_sensitivity`` (L2) and ``l1_sensitivity`` (L1)."""

    variance: float
    l2_sensitivity: float
    l1_sensitivity: float
    steps: int

    def __post_init__(self) -> None:
        _check_parameters(self.variance, self.l2_sensitivity, self.l1_sensitivity)
        if self.steps < 0 or int(self.steps) != self.steps:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps}")

    def to_dict(self) -> dict:
        return {
            "mechanism": "skellam",
            "variance": self.variance,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SkellamEvent:
        fields = {k: v for k, v in data.items() if k != "mechanism"}
        return cls(**fields)

    def rdp(self, orders: Sequence[int] | np.ndarray = ORDERS) -> np.ndarray:
        """``steps`` times the Skellam RDP bound at each (integer) order."""
        a = _check_orders(orders)
        return self.steps * _rdp_bound(a, self.variance, self.l2_sensitivity, self.l1_sensitivity)


def sample_skellam(
    shape: int | tuple[int, ...], variance: float, rng: np.random.Generator
) -> np.ndarray:
    """Symmetric Skellam noise of per-coordinate ``variance``: ``Poisson(v/2) - Poisson(v/2)``, int64.

    ``variance = 0`` gives zeros (a share of nothing). Variances above ``2**52`` are refused: the
    Poisson sampler's integers are no longer exact there.
    """
    if not math.isfinite(variance) or variance < 0:
        raise ValueError(f"variance must be finite and non-negative, got {variance}")
    if variance > MAX_VARIANCE:
        raise ValueError(
            f"variance {variance:g} is above 2**52: numpy's Poisson sampler loses integer precision "
            "there; scale the quantization down instead"
        )
    if variance == 0:
        return np.zeros(shape, dtype=np.int64)
    rate = variance / 2
    return rng.poisson(rate, shape).astype(np.int64) - rng.poisson(rate, shape).astype(np.int64)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders: Sequence[int] = ORDERS) -> float:
    """``(epsilon, delta)`` of an RDP curve on ``orders``, with Opacus's conversion (Balle et al. 2020)."""
    _check_delta(delta)
    # torch: loaded only when epsilon is computed
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        eps, _ = get_privacy_spent(
            orders=list(orders), rdp=np.asarray(rdp, dtype=float), delta=delta
        )
    return float(eps)


def skellam_epsilon(events: Iterable[SkellamEvent], delta: float) -> float:
    """Epsilon at ``delta`` of the composition of Skellam ``events`` (RDP on :data:`ORDERS`; 0 for none)."""
    active = [e for e in events if e.steps > 0]
    if not active:
        return 0.0
    total = np.zeros(len(ORDERS))
    for e in active:
        total = total + e.rdp(ORDERS)
    return epsilon_from_rdp(total, delta)


def noise_variance_for_epsilon(
    target_epsilon: float, delta: float, l2: float, l1: float, steps: int = 1
) -> float:
    """Smallest variance (relative tolerance 1e-3) at which ``steps`` Skellam mechanisms of sensitivities
    ``l2``, ``l1`` stay within ``(target_epsilon, delta)``.

    Epsilon decreases with the variance (every term of the bound does), so a bisection in
    ``log(variance)`` finds it; the upper end of the final bracket is returned, so the epsilon at the
    returned variance is never above the target. Raises ``ValueError`` for invalid inputs and for a
    target no variance up to ``2**52`` reaches (RDP on finitely many orders has a floor in epsilon).
    """
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be positive and finite, got {target_epsilon}")
    _check_delta(delta)
    _check_parameters(1.0, l2, l1)
    if steps < 1 or int(steps) != steps:
        raise ValueError(f"steps must be a positive integer, got {steps}")

    def eps(variance: float) -> float:
        return skellam_epsilon([SkellamEvent(variance, l2, l1, steps)], delta)

    if eps(MAX_VARIANCE) > target_epsilon:
        raise ValueError(
            f"no Skellam variance up to 2**52 keeps {steps} steps of sensitivity l2={l2:g} within "
            f"epsilon={target_epsilon:g} at delta={delta:g}"
        )
    log_hi = math.log(max(l2**2, 1e-6))
    while eps(math.exp(log_hi)) > target_epsilon:  # too little noise: double up
        log_hi += math.log(2)
    log_hi = min(log_hi, math.log(MAX_VARIANCE))
    log_lo = log_hi - math.log(2)
    while eps(math.exp(log_lo)) <= target_epsilon:  # enough noise already: halve down
        log_hi, log_lo = log_lo, log_lo - math.log(2)
    while log_hi - log_lo > math.log1p(_CALIBRATION_RTOL):
        mid = (log_lo + log_hi) / 2
        if eps(math.exp(mid)) <= target_epsilon:
            log_hi = mid
        else:
            log_lo = mid
    variance = math.exp(log_hi)
    # exp(log(v)) may round below the point tested: step up until the guarantee holds exactly
    while eps(variance) > target_epsilon:
        variance = math.nextafter(variance, math.inf)
    return variance
