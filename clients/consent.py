"""The user's consent to federated training: opted in or out, and the epsilon budget they accept.

A device trains only for a user who opted in, and only while each of the user's privacy ledgers
(record-level, and user-level for rounds under user-level DP) stays within the consented budget (all
runs together, at the ledger's delta). Until the user decides, consent
is not given: a new store does not train.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from clients.store import EncryptedStore

DEFAULT_BUDGET = 8.0
CONSENT = "consent"  # the store item
NOT_OPTED_IN = (
    "refused: the user of this device has not opted in to federated training; nothing was used"
)
BUDGET_SPENT = "refused: the user's consented privacy budget is spent; nothing was run"
OVER_BUDGET = "refused: this round would take the user's privacy spending past a limit (the run's epsilon or the consented budget, as the reason names); nothing was run"


class ParticipationRefused(PermissionError):
    """The device refuses a federated task: the user opted out, or the budget does not allow it.

    ``str()`` is what the error reply tells the server: the reason, without the user id or numbers.
    ``detail`` says everything, for the device's log and its user."""

    def __init__(self, public: str, detail: str | None = None) -> None:
        super().__init__(public)
        self.detail = detail or public


@dataclass(frozen=True)
class Consent:
    """Whether the user takes part, and the epsilon their ledger may reach at most."""

    opted_in: bool = False
    budget: float = DEFAULT_BUDGET
    updated_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.opted_in, bool):
            raise ValueError(f"consent.opted_in: expected true/false, got {self.opted_in!r}")
        if (
            isinstance(self.budget, bool)
            or not isinstance(self.budget, (int, float))
            or not math.isfinite(self.budget)
            or self.budget <= 0
        ):
            raise ValueError(f"consent.budget: expected a positive epsilon, got {self.budget!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Consent:
        unknown = set(data) - {"opted_in", "budget", "updated_at"}
        if unknown:
            raise ValueError(f"consent: unknown fields {sorted(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        return (
            f"opted in, budget epsilon {self.budget:g}"
            if self.opted_in
            else "not given (opted out)"
        )


def check_participation(user_id: str, consent: Consent, spent: float) -> None:
    """Raise :class:`ParticipationRefused` unless the user opted in and has budget left."""
    if not consent.opted_in:
        raise ParticipationRefused(
            NOT_OPTED_IN,
            f"user {user_id} has not opted in to federated training; nothing was "
            "used (`fedpers-client consent --opt-in` to take part)",
        )
    if spent >= consent.budget:
        raise ParticipationRefused(
            BUDGET_SPENT,
            f"user {user_id}'s privacy budget is spent: epsilon {spent:.3f} of the "
            f"consented {consent.budget:g}; refusing to train (`fedpers-client consent --budget EPS` "
            "to raise it)",
        )


def read_consent(store: EncryptedStore) -> Consent:
    """The consent recorded in ``store`` (not given when none is)."""
    return Consent.from_dict(store.get_json(CONSENT)) if store.has(CONSENT) else Consent()


def write_consent(store: EncryptedStore, consent: Consent) -> None:
    store.put_json(CONSENT, consent.to_dict())
