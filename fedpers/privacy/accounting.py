"""Privacy accounting over a history of (sub)sampled Gaussian and Skellam mechanisms.

A history of Gaussian mechanisms only (:class:`GaussianEvent`) is composed by Opacus's RDP and PRV
accountants. A history with any Skellam mechanism (:class:`~fedpers.privacy.skellam.SkellamEvent`,
the integer noise of distributed DP under secure aggregation) is composed in RDP on the integer
orders :data:`fedpers.privacy.skellam.ORDERS`, where the Skellam bound holds: RDP adds under
composition, so::

    rdp(alpha) = sum_gaussian compute_rdp(q, sigma, steps, alpha) + sum_skellam steps * skellam_rdp(alpha)

converted to ``(epsilon, delta)`` with Opacus's ``get_privacy_spent`` (Balle et al. 2020). Opacus's PRV
accountant has no Skellam mechanism, so for such a history the "prv" figure is this RDP figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TypeAlias, cast

import numpy as np

from fedpers.privacy.skellam import ORDERS, SkellamEvent, epsilon_from_rdp

ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class GaussianEvent:
    """``steps`` compositions of a Gaussian mechanism with Poisson sampling rate ``sample_rate``.

    Sensitivity is one clipping norm, so ``noise_multiplier`` = noise std / clipping norm.
    ``sample_rate=1`` is an unsampled Gaussian mechanism (e.g. a private quantile query).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0:
            raise ValueError("noise_multiplier must be positive: without noise nothing is private")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be non-negative, got {self.steps}")

    def to_dict(self) -> dict:
        return asdict(self)


# Every mechanism a ledger records.
PrivacyEvent: TypeAlias = GaussianEvent | SkellamEvent


@dataclass(frozen=True)
class EpsilonReport:
    """Epsilon at ``delta`` from each accountant; ``epsilon`` is the most conservative of them.

    For a history with a Skellam mechanism Opacus's PRV accountant does not apply: ``prv`` then holds
    the RDP figure (the same number as ``rdp``).
    """

    delta: float
    rdp: float
    prv: float

    @property
    def epsilon(self) -> float:
        return max(self.rdp, self.prv)

    def to_dict(self) -> dict:
        return {"delta": self.delta, "rdp": self.rdp, "prv": self.prv, "epsilon": self.epsilon}


class BudgetExceededError(ValueError):
    """The user's privacy budget cannot cover the requested computation."""


def _history(events: Iterable[GaussianEvent]) -> list[tuple[float, float, int]]:
    return [(e.noise_multiplier, e.sample_rate, e.steps) for e in events if e.steps > 0]


def _mixed_history(events: Iterable[PrivacyEvent]) -> tuple[tuple, ...]:
    """A hashable history: ``("gaussian", sigma, q, steps)`` and ``("skellam", v, l2, l1, steps)``."""
    history: list[tuple] = []
    for e in events:
        if e.steps <= 0:
            continue
        if isinstance(e, SkellamEvent):
            history.append(("skellam", e.variance, e.l2_sensitivity, e.l1_sensitivity, e.steps))
        elif isinstance(e, GaussianEvent):
            history.append(("gaussian", e.noise_multiplier, e.sample_rate, e.steps))
        else:
            raise TypeError(f"not a privacy event: {e!r}")
    return tuple(history)


def epsilon(events: Sequence[PrivacyEvent], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` under one accountant (0 for no events).

    Gaussian-only histories go to Opacus's ``accountant`` ("rdp" or "prv"). A history with any
    :class:`SkellamEvent` is composed in RDP on the integer orders ``skellam.ORDERS`` (Gaussian events
    by Opacus's ``compute_rdp``, Skellam events by their bound), for "rdp" and "prv" alike: Opacus's
    PRV accountant does not cover the Skellam mechanism, so both return the RDP figure. That figure is
    never below the RDP figure of the Gaussian events alone (the larger of two valid bounds is a valid
    bound), so recording a Skellam event never lowers a reported epsilon even where Opacus's orders
    (up to 63, with fractional ones) and :data:`~fedpers.privacy.skellam.ORDERS` (integers up to 512)
    pick different optima.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose from {ACCOUNTANTS}")
    events = list(events)
    if any(isinstance(e, SkellamEvent) for e in events):
        mixed = _epsilon_mixed_rdp(_mixed_history(events), delta)
        gaussian = _history(e for e in events if isinstance(e, GaussianEvent))
        return max(mixed, _epsilon(tuple(gaussian), delta, "rdp")) if gaussian else mixed
    history = _history(cast(list[GaussianEvent], events))
    if not history:
        return 0.0
    return _epsilon(tuple(history), delta, accountant)


@lru_cache(maxsize=1024)
def _epsilon_mixed_rdp(history: tuple[tuple, ...], delta: float) -> float:
    """RDP composition of a Gaussian and Skellam history on ``skellam.ORDERS`` (see :func:`epsilon`)."""
    if not history:
        return 0.0
    # torch: loaded only when epsilon is computed
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = list(ORDERS)
    total = np.zeros(len(orders))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for kind, *params in history:
            if kind == "gaussian":
                sigma, q, steps = params
                total = total + compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
            else:
                variance, l2, l1, steps = params
                total = total + SkellamEvent(variance, l2, l1, steps).rdp(orders)
        return epsilon_from_rdp(total, delta, orders)


@lru_cache(maxsize=1024)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """:func:`epsilon`, remembered per process: a device's budget check before a round composes the same
    events as the cap check of the round before, and each composition takes seconds."""
    # torch: loaded only when epsilon is computed
    from opacus.accountants import (
        PRVAccountant,
        RDPAccountant,
    )

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta))


def epsilon_report(events: Sequence[PrivacyEvent], delta: float) -> EpsilonReport:
    """Epsilon at ``delta`` from both accountants (equal, the RDP figure, for a history with Skellam events)."""
    return EpsilonReport(delta, epsilon(events, delta, "rdp"), epsilon(events, delta, "prv"))


ACCOUNTANT_MARGIN = 0.005
"""Relative room left under a ceiling when noise is calibrated to it. The audit quotes the largest epsilon of
four accountants; dp-accounting's PLD (grid 1e-3) overestimated a calibrated ledger by 0.15 % (8.002 at a
ceiling of 8: an inferred persona's choice, the private clip estimate and 24 DP-SGD steps), so a calibration
that only Opacus's accountants check must leave room for it."""


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: Sequence[PrivacyEvent] = (),
    *,
    tolerance: float = 0.01,
    max_noise_multiplier: float = 50.0,
) -> float:
    """Smallest noise multiplier (within ``tolerance``) keeping ``prior`` plus this training at ``target_epsilon``.

    ``prior`` may hold Skellam events (the composition is then accounted as in :func:`epsilon`).
    Both accountants must stay within ``target_epsilon * (1 - ACCOUNTANT_MARGIN)``, so the result is valid for
    the more conservative one, and the audit report's independent PLD accountant (dp-accounting, pessimistic by
    its discretization; not installed on devices) finds no more than ``target_epsilon`` either. Raises :class:`BudgetExceededError` if the prior spending already exceeds
    the target, or if staying within it would take more than ``max_noise_multiplier`` (training
    under that much noise learns nothing).
    """
    return _calibrate(
        target_epsilon,
        delta,
        sample_rate,
        steps,
        tuple(prior),
        tolerance,
        max_noise_multiplier,
    )


@lru_cache(maxsize=256)
def _calibrate(
    target: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: tuple[PrivacyEvent, ...],
    tolerance: float,
    max_sigma: float,
) -> float:
    bound = target * (1.0 - ACCOUNTANT_MARGIN)

    def rdp_ok(sigma: float) -> bool:
        return epsilon([*prior, GaussianEvent(sigma, sample_rate, steps)], delta, "rdp") <= bound

    def both_ok(sigma: float) -> bool:
        return (
            epsilon_report([*prior, GaussianEvent(sigma, sample_rate, steps)], delta).epsilon
            <= bound
        )

    if epsilon_report(prior, delta).epsilon >= bound:
        raise BudgetExceededError(
            f"the privacy budget epsilon={target} is already spent by earlier training"
        )
    low, high = 0.1, 1.0
    while not rdp_ok(high):  # bracket and bisect with the cheap RDP bound ...
        low, high = high, high * 2
        if high > max_sigma:
            raise BudgetExceededError(
                f"the budget left under epsilon={target} is too small for {steps} more steps at sample rate {sample_rate:.3g}"
            )
    while high - low > tolerance:
        mid = (low + high) / 2
        low, high = (low, mid) if rdp_ok(mid) else (mid, high)
    # ... then make sure the conservative maximum of both accountants holds
    while not both_ok(high):
        high += tolerance
        if high > max_sigma:
            raise BudgetExceededError(
                f"no noise multiplier up to {max_sigma} keeps epsilon within {target}"
            )
    return high
