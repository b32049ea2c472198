"""The per-user privacy ledger: every mechanism that touched the user's data, persisted before it takes effect.

An entry is written (atomically: temp file, fsync, rename) with the full planned number of steps
*before* training starts, and only marked complete afterwards. A crash at any point therefore
leaves the ledger reporting at least what was spent, never less. The user's total across rounds
and runs is the composition of every entry.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fedpers.privacy.accounting import EpsilonReport, GaussianEvent, epsilon_report

LEDGER_VERSION = 1


@dataclass
class LedgerEntry:
    """One private computation over the user's data (e.g. a round of DP-SGD, a private quantile)."""

    purpose: str
    events: list[GaussianEvent]
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
    def from_dict(cls, data: dict) -> "LedgerEntry":
        return cls(
            purpose=data["purpose"],
            events=[GaussianEvent(**e) for e in data["events"]],
            details=data.get("details", {}),
            entry_id=data["entry_id"],
            started_at=data["started_at"],
            status=data["status"],
        )


class PrivacyLedger:
    """A JSON file of :class:`LedgerEntry` records for one user."""

    def __init__(self, path: Path | str, user_id: str, delta: float = 1e-5) -> None:
        self.path = Path(path)
        self.user_id = user_id
        self.delta = delta
        self.entries: list[LedgerEntry] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: privacy ledger is corrupt ({err}); refusing to continue") from err
        if data.get("user_id") != self.user_id:
            raise ValueError(f"{self.path}: ledger belongs to user {data.get('user_id')!r}, not {self.user_id!r}")
        self.delta = data.get("delta", self.delta)
        self.entries = [LedgerEntry.from_dict(e) for e in data["entries"]]

    def _write(self) -> None:
        payload = {"version": LEDGER_VERSION, "user_id": self.user_id, "delta": self.delta,
                   "entries": [e.to_dict() for e in self.entries]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record(self, entry: LedgerEntry) -> LedgerEntry:
        """Persist ``entry`` (with its planned spending) before the computation runs."""
        self.entries.append(entry)
        self._write()
        return entry

    def complete(self, entry: LedgerEntry, **details) -> None:
        """Mark ``entry`` as finished; its accounted events stay as recorded (never reduced)."""
        entry.status = "completed"
        entry.details.update(details)
        self._write()

    def events(self) -> list[GaussianEvent]:
        return [e for entry in self.entries for e in entry.events]

    def spent(self, delta: float | None = None) -> EpsilonReport:
        """Epsilon of the composition of every recorded entry (started or completed)."""
        return epsilon_report(self.events(), self.delta if delta is None else delta)
