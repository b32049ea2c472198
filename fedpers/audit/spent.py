"""What was spent: every ledger's (epsilon, delta), from our accountants and an independent one.

Our figures come from Opacus's RDP and PRV accountants (:mod:`fedpers.privacy.accounting`); the
cross-check is Google's ``dp-accounting`` (PLD and RDP), an implementation independent of Opacus.
The epsilon a report quotes is the largest of all four, so no figure is lower than the most
conservative accountant's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import dp_accounting
from dp_accounting import pld, rdp

from fedpers.privacy.accounting import GaussianEvent, epsilon_report
from fedpers.privacy.ledger import PrivacyLedger

PLD_DISCRETIZATION = 1e-3


def _dp_event(events: list[GaussianEvent]) -> dp_accounting.DpEvent:
    parts = []
    for e in events:
        gaussian = dp_accounting.GaussianDpEvent(e.noise_multiplier)
        single = gaussian if e.sample_rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(e.sample_rate, gaussian)
        parts.append(dp_accounting.SelfComposedDpEvent(single, e.steps))
    return dp_accounting.ComposedDpEvent(parts)


def independent_epsilon(events: list[GaussianEvent], delta: float) -> dict[str, float]:
    """Epsilon of the composition of ``events`` by dp-accounting's PLD and RDP accountants."""
    event = _dp_event(events)
    return {
        "pld": float(pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION).compose(event).get_epsilon(delta)),
        "rdp": float(rdp.RdpAccountant().compose(event).get_epsilon(delta)),
    }


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

    @property
    def largest_difference(self) -> float:
        """Relative gap between our PRV figure and dp-accounting's PLD (both near-tight accountants)."""
        return abs(self.epsilon_prv - self.independent_pld) / max(self.independent_pld, 1e-12)

    def to_dict(self) -> dict:
        return asdict(self) | {"prv_vs_pld_relative_difference": self.largest_difference}


def spent_from_ledger(path: Path, budget: float | None = None) -> Spent:
    """Read one ledger file (a client's or a user-level adapter's) and account it four ways."""
    ledger = PrivacyLedger(path, Path(path).stem)
    owner, delta = ledger.user_id, ledger.delta
    events = ledger.events()
    entries = [{"purpose": e.purpose, "status": e.status, "events": [ev.to_dict() for ev in e.events], "details": e.details}
               for e in ledger.entries]
    if not events:
        return Spent(owner, delta, entries, 0.0, 0.0, 0.0, 0.0, 0.0, budget, False, 0)
    ours = epsilon_report(events, delta)
    theirs = independent_epsilon(events, delta)
    quoted = max(ours.rdp, ours.prv, theirs["pld"], theirs["rdp"])
    unfinished = sum(1 for e in ledger.entries if e.status != "completed")
    return Spent(owner, delta, entries, ours.rdp, ours.prv, theirs["pld"], theirs["rdp"], quoted, budget,
                 budget is not None and quoted > budget * (1 + 1e-9), unfinished)
