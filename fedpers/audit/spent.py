"""What was spent: every ledger's (epsilon, delta), from our accountants and an independent one.

Our figures come from Opacus's RDP and PRV accountants (:mod:`fedpers.privacy.accounting`); the
cross-check is Google's ``dp-accounting`` (PLD and RDP), an implementation independent of Opacus.
The epsilon a report quotes is the largest of all four, so no figure is lower than the most
conservative accountant's. Every entry of a ledger counts, finished or not (a crashed round may
have released something), and the cumulative epsilon after each entry gives the curve over rounds.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import dp_accounting
from dp_accounting import pld, rdp

from fedpers.privacy.accounting import GaussianEvent, PrivacyEvent, epsilon_report
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.privacy.skellam import SkellamEvent

PLD_DISCRETIZATION = 1e-3
GROUP_DISCRETIZATION = 1e-2  # group epsilon of the canary audit (see group_epsilon)
# dp-accounting warns when an RDP order fails to converge and drops that order: fewer orders can only
# raise its epsilon, never lower it, so the warning carries no risk for the report and is silenced.
logging.getLogger("absl").setLevel(logging.ERROR)


def _dp_event(events: tuple[PrivacyEvent, ...]) -> dp_accounting.DpEvent:
    """``events`` as a dp-accounting event. dp-accounting has no Skellam mechanism: a Skellam release (user-level
    DP) is cross-checked as the Gaussian of the same variance and L2 sensitivity, which its RDP bound never
    undercuts (:mod:`fedpers.privacy.skellam`); the quoted figure, the largest of the four, is then ours."""
    parts: list[dp_accounting.DpEvent] = []
    for e in events:
        if isinstance(e, SkellamEvent):
            same = dp_accounting.GaussianDpEvent(math.sqrt(e.variance) / e.l2_sensitivity)
            parts.append(dp_accounting.SelfComposedDpEvent(same, e.steps))
            continue
        gaussian = dp_accounting.GaussianDpEvent(e.noise_multiplier)
        single = (
            gaussian
            if e.sample_rate >= 1.0
            else dp_accounting.PoissonSampledDpEvent(e.sample_rate, gaussian)
        )
        parts.append(dp_accounting.SelfComposedDpEvent(single, e.steps))
    return dp_accounting.ComposedDpEvent(parts)


def independent_epsilon(events: list[PrivacyEvent], delta: float) -> dict[str, float]:
    """Epsilon of the composition of ``events`` by dp-accounting's PLD and RDP accountants."""
    event = _dp_event(tuple(events))
    return {
        "pld": float(
            pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
            .compose(event)
            .get_epsilon(delta)
        ),
        "rdp": float(rdp.RdpAccountant().compose(event).get_epsilon(delta)),
    }


@dataclass(frozen=True)
class Accounted:
    """One composition of events, accounted four ways; ``epsilon`` is the largest."""

    rdp: float
    prv: float
    independent_pld: float
    independent_rdp: float

    @property
    def epsilon(self) -> float:
        return max(self.rdp, self.prv, self.independent_pld, self.independent_rdp)


@lru_cache(maxsize=256)  # simulated clients often share a ledger's shape: account each shape once
def account(events: tuple[PrivacyEvent, ...], delta: float) -> Accounted:
    """The composition of ``events`` at ``delta`` by all four accountants (zero when nothing was spent)."""
    if not events:
        return Accounted(0.0, 0.0, 0.0, 0.0)
    ours = epsilon_report(list(events), delta)
    theirs = independent_epsilon(list(events), delta)
    return Accounted(ours.rdp, ours.prv, theirs["pld"], theirs["rdp"])


@lru_cache(maxsize=256)
def group_epsilon(events: tuple[PrivacyEvent, ...], delta: float, group: int) -> float:
    """Epsilon at ``delta`` of the composition of ``events`` for a group of ``group`` identical records (dp-accounting PLD).

    Each event is ``steps`` Poisson-sampled Gaussian mechanisms whose records each move the clipped sum by at
    most one clipping norm ``C`` (noise std ``sigma * C``). The ``group`` copies of one record are sampled
    independently with rate ``q``; when ``k`` of them are in a batch they add ``k`` times the same clipped
    gradient, so one step is dominated by the mixture ``sum_k Binom(k; group, q) N(k C, sigma^2 C^2)`` against
    ``N(0, sigma^2 C^2)``, in both directions (a group added or removed). ``q = 1`` (an unsampled query such as
    the private clipping quantile) is a Gaussian of sensitivity ``group``. The PLD is pessimistic (it
    overestimates epsilon, never under), with a coarser grid than the sample-level figures
    (``GROUP_DISCRETIZATION``: building a mixture's PLD dominates the cost; the overestimate stays in the third
    decimal for the default scenario). Events of the same mechanism are composed together.
    ``group = 1`` is the usual sample-level epsilon."""
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        if not isinstance(e, GaussianEvent):
            raise ValueError(
                "group epsilon covers record-level ledgers (Gaussian mechanisms); got a Skellam release"
            )
        merged[(e.noise_multiplier, e.sample_rate)] = (
            merged.get((e.noise_multiplier, e.sample_rate), 0) + e.steps
        )
    total = None
    for (sigma, rate), steps in merged.items():
        if steps == 0:
            continue
        if rate >= 1.0:
            step = pld.privacy_loss_distribution.from_gaussian_mechanism(
                sigma, sensitivity=group, value_discretization_interval=GROUP_DISCRETIZATION
            )
        else:
            sensitivities = list(range(group + 1))
            probabilities = [
                math.comb(group, k) * rate**k * (1 - rate) ** (group - k) for k in sensitivities
            ]
            step = pld.privacy_loss_distribution.from_mixture_gaussian_mechanism(
                sigma,
                sensitivities,
                probabilities,
                value_discretization_interval=GROUP_DISCRETIZATION,
            )
        composed = step.self_compose(steps)
        total = composed if total is None else total.compose(composed)
    return 0.0 if total is None else float(total.get_epsilon_for_delta(delta))


def ledger_events(path: Path) -> tuple[PrivacyEvent, ...]:
    """Every mechanism of a ledger file, finished or not, in order."""
    return tuple(ev for e in read_ledger(path).entries for ev in e.events)


def read_ledger(path: Path) -> PrivacyLedger:
    """A ledger file, opened as its own user's."""
    path = Path(path)
    owner = json.loads(path.read_text()).get("user_id", path.stem) if path.exists() else path.stem
    return PrivacyLedger(path, owner)


@dataclass
class Spent:
    """One ledger's spending: the mechanisms, every accountant's epsilon, the one quoted, and a budget flag."""

    owner: str
    delta: float
    entries: list[dict]
    epsilon_rdp: float
    epsilon_prv: float
    independent_pld: float
    independent_rdp: float
    epsilon: float  # the largest of the four
    budget: float | None
    over_budget: bool
    unfinished_entries: int
    cumulative: list[dict] = field(default_factory=list)  # quoted epsilon after each entry

    @property
    def largest_difference(self) -> float:
        """Relative gap between our PRV figure and dp-accounting's PLD (both near-tight accountants)."""
        return abs(self.epsilon_prv - self.independent_pld) / max(self.independent_pld, 1e-12)

    def to_dict(self) -> dict:
        return asdict(self) | {"prv_vs_pld_relative_difference": self.largest_difference}


def spent_from_ledger(path: Path, budget: float | None = None) -> Spent:
    """Read one ledger file (a client's or a user-level adapter's) and account it four ways."""
    ledger = read_ledger(path)
    owner = ledger.user_id
    delta = ledger.delta
    entries, cumulative, events = [], [], []
    for e in ledger.entries:
        entries.append(
            {
                "purpose": e.purpose,
                "status": e.status,
                "started_at": e.started_at,
                "events": [ev.to_dict() for ev in e.events],
                "details": e.details,
            }
        )
        events += e.events
        cumulative.append(
            {
                "entry": len(entries) - 1,
                "purpose": e.purpose,
                "epsilon": account(tuple(events), delta).epsilon,
            }
        )
    total = account(tuple(events), delta)
    unfinished = sum(1 for e in ledger.entries if e.status != "completed")
    return Spent(
        owner,
        delta,
        entries,
        total.rdp,
        total.prv,
        total.independent_pld,
        total.independent_rdp,
        total.epsilon,
        budget,
        budget is not None and total.epsilon > budget * (1 + 1e-9),
        unfinished,
        cumulative,
    )
