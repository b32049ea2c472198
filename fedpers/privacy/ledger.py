"""The per-user privacy ledger: every mechanism that touched the user's data, persisted before it takes effect.

An entry is written (atomically: temp file, fsync, rename) with the full planned number of steps
*before* training starts, and only marked complete afterwards. A crash at any point therefore
leaves the ledger reporting at least what was spent, never less. The user's total across rounds
and runs is the composition of every entry.

A ledger may carry a ``cap`` (the epsilon the user consented to): recording an entry that would
take the composition past it raises :class:`BudgetExceededError` instead, so the computation
never starts. Subclasses keep the document elsewhere (e.g. an encrypted store) by overriding
:meth:`PrivacyLedger._read` and :meth:`PrivacyLedger._save`.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedpers.atomic import write_json
from fedpers.privacy.accounting import (
    BudgetExceededError,
    EpsilonReport,
    GaussianEvent,
    PrivacyEvent,
    epsilon_report,
)
from fedpers.privacy.skellam import SkellamEvent

LEDGER_VERSION = 1
DEFAULT_DELTA = 1e-5
# a simulated device keeps its ledgers as STATE_DIR/<user>/<file> (a real one in its encrypted store)
LEDGER_FILE = "ledger.json"
USER_LEVEL_LEDGER_FILE = "user-level-ledger.json"


class LedgerDeltaMismatch(ValueError):
    """The stored ledger accounts at another delta than the one asked for."""


def _event_from_dict(data: dict) -> PrivacyEvent:
    mechanism = data.get("mechanism")
    if mechanism is None:
        return GaussianEvent(**data)
    if mechanism == "skellam":
        return SkellamEvent.from_dict(data)
    raise ValueError(f"unknown privacy mechanism {mechanism!r} in the ledger; refusing to continue")


@dataclass
class LedgerEntry:
    """One private computation over the user's data (e.g. a round of DP-SGD, a private quantile).

    A Skellam event is stored with ``"mechanism": "skellam"``; an event without a ``"mechanism"`` is a
    :class:`GaussianEvent`, as in every ledger written before the Skellam mechanism existed.
    """

    purpose: str
    events: list[PrivacyEvent]
    details: dict = field(default_factory=dict)
    entry_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)
    status: str = "started"

    def to_dict(self) -> dict:
        return {
            "entry_id": self.entry_id,
            "purpose": self.purpose,
            "status": self.status,
            "started_at": self.started_at,
            "events": [e.to_dict() for e in self.events],
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LedgerEntry:
        return cls(
            purpose=data["purpose"],
            events=[_event_from_dict(e) for e in data["events"]],
            details=data.get("details", {}),
            entry_id=data["entry_id"],
            started_at=data["started_at"],
            status=data["status"],
        )


class PrivacyLedger:
    """A JSON file of :class:`LedgerEntry` records for one user.

    Every change re-reads the file under an exclusive lock and applies itself to what is on disk,
    so several ledger objects or processes for the same user never overwrite each other's entries.

    A ledger accounts at one ``delta`` for its whole life: it is stored with the document, and a
    caller that asks for another one gets a :class:`LedgerDeltaMismatch` (composing at a silently
    replaced delta would misstate what the caller planned). ``delta=None`` takes the stored one
    (``DEFAULT_DELTA`` for a new ledger).
    """

    def __init__(
        self, path: Path | str, user_id: str, delta: float | None = None, cap: float | None = None
    ) -> None:
        self.path = Path(path)
        self.user_id = user_id
        self.requested_delta = delta
        self.delta = DEFAULT_DELTA if delta is None else delta
        self.cap = cap
        self.entries: list[LedgerEntry] = []
        self._load()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _mutate(self, change: Callable[[], None]) -> None:
        with self._locked():
            self._load()
            change()
            self._write()

    def _read(self) -> dict | None:
        """The stored JSON document, or None when nothing is stored yet."""
        if not self.path.exists():
            return None
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{self.path}: privacy ledger is corrupt ({err}); refusing to continue"
            ) from err

    def _save(self, document: dict) -> None:
        write_json(self.path, document)

    def _load(self) -> None:
        data = self._read()
        if data is None:
            self.entries = []
            return
        if data.get("user_id") != self.user_id:
            raise ValueError(
                f"{self.path}: ledger belongs to user {data.get('user_id')!r}, not {self.user_id!r}"
            )
        stored = float(data.get("delta", DEFAULT_DELTA))
        if self.requested_delta is not None and not math.isclose(
            stored, self.requested_delta, rel_tol=1e-12
        ):
            raise LedgerDeltaMismatch(
                f"{self.path}: the ledger of user {self.user_id!r} accounts at delta {stored:g}, but delta "
                f"{self.requested_delta:g} was asked for; refusing rather than composing at another delta "
                f"(run with delta {stored:g})"
            )
        self.delta = stored
        self.entries = [LedgerEntry.from_dict(e) for e in data["entries"]]

    def _write(self) -> None:
        self._save(
            {
                "version": LEDGER_VERSION,
                "user_id": self.user_id,
                "delta": self.delta,
                "entries": [e.to_dict() for e in self.entries],
            }
        )

    def _check_cap(self, entry: LedgerEntry) -> None:
        if self.cap is None:
            return
        events = [e for stored in self.entries for e in stored.events] + list(entry.events)
        after = epsilon_report(events, self.delta).epsilon
        if after > self.cap + 1e-9:
            before = epsilon_report(events[: len(events) - len(entry.events)], self.delta).epsilon
            raise BudgetExceededError(
                f"{self.path}: '{entry.purpose}' would bring user {self.user_id}'s epsilon from {before:.3f} to "
                f"{after:.3f}, over the consented budget of {self.cap:g} (delta {self.delta:g}); refused, nothing was run"
            )

    def record(self, entry: LedgerEntry) -> LedgerEntry:
        """Persist ``entry`` (with its planned spending) before the computation runs; with a ``cap``,
        raise :class:`BudgetExceededError` instead when the entry would take the total past it."""

        def change() -> None:
            self._check_cap(entry)
            self.entries.append(entry)

        self._mutate(change)
        return entry

    def complete(self, entry: LedgerEntry, **details) -> None:
        """Mark ``entry`` as finished; its accounted events stay as recorded (never reduced)."""

        def change() -> None:
            stored = next((e for e in self.entries if e.entry_id == entry.entry_id), None)
            if stored is None:
                raise ValueError(f"{self.path}: entry {entry.entry_id} is not in the ledger")
            for target in {id(stored): stored, id(entry): entry}.values():
                target.status = "completed"
                target.details.update(details)

        self._mutate(change)

    def touch(self) -> None:
        """Store the ledger as it is (an empty one if none is stored yet)."""
        self._mutate(lambda: None)

    def reload(self) -> None:
        """Read what is on disk now (other objects or processes may have recorded since)."""
        with self._locked():
            self._load()

    def events(self) -> list[PrivacyEvent]:
        """Every recorded event, as on disk now."""
        self.reload()
        return [e for entry in self.entries for e in entry.events]

    def spent(self, delta: float | None = None) -> EpsilonReport:
        """Epsilon of the composition of every recorded entry (started or completed)."""
        return epsilon_report(self.events(), self.delta if delta is None else delta)
