"""The per-user privacy ledger: every mechanism that touched the user's data, persisted before it takes effect.

An entry is written (atomically: temp file, fsync, rename) with the full planned number of steps
*before* training starts, and only marked complete afterwards. A crash at any point therefore
leaves the ledger reporting at least what was spent, never less. The user's total across rounds
and runs is the composition of every entry.

A ledger may carry a ``cap`` (the epsilon the user consented to): recording an entry that would
take the composition past it raises :class:`BudgetExceededError` instead, so the computation
never starts. Subclasses keep the document elsewhere (e.g. an encrypted store) by overriding
:meth:`PrivacyLedger._read` and :meth:`PrivacyLedger._save`.

The entries form a hash chain. Entry ``i`` stores ``prev`` (the hash of entry ``i-1``; for the first
entry the chain's ``base``, 64 zeros for a new ledger) and ``hash``::

    hash_i = SHA-256(canonical JSON {prev: hash_{i-1}, entry_id, purpose, started_at, events})

covering everything that determines the spend (``status`` and ``details`` change when an entry is
completed and are not covered). The document's ``chain`` record holds ``base``, ``head`` (the last
hash, or ``base``) and ``count``; loading recomputes the chain and refuses a document whose entries
were edited, dropped, reordered or truncated (:class:`LedgerIntegrityError`). A plain file has no
key, so whoever can write it can also recompute the chain: there the chain catches accidents and
naive edits. Against deliberate ones the head and count must be bound by something authenticated,
as the device's encrypted store does (``clients.device.StoreLedger``). A document of version 1 (no
chain) is read as it is and chained at its next write.
"""

from __future__ import annotations

import fcntl
import hashlib
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

LEDGER_VERSION = 2
READABLE_VERSIONS = (1, 2)
GENESIS = "0" * 64  # the base of a new ledger's chain
RESTORED_PURPOSE = "restored-spend"
DEFAULT_DELTA = 1e-5
# a simulated device keeps its ledgers as STATE_DIR/<user>/<file> (a real one in its encrypted store)
LEDGER_FILE = "ledger.json"
USER_LEVEL_LEDGER_FILE = "user-level-ledger.json"


class LedgerDeltaMismatch(ValueError):
    """The stored ledger accounts at another delta than the one asked for."""


class LedgerIntegrityError(ValueError):
    """The ledger's entries do not match its hash chain: edited, dropped, reordered or truncated."""


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


HASHED_FIELDS = ("entry_id", "purpose", "started_at", "events")


def _hash_fields(prev: str, stored: dict) -> str:
    """The chain hash of an entry in its stored form (:meth:`LedgerEntry.to_dict`) after hash ``prev``."""
    body = {"prev": prev, **{k: stored[k] for k in HASHED_FIELDS}}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_hash(prev: str, entry: LedgerEntry) -> str:
    """The chain hash of ``entry`` after the entry (or base) whose hash is ``prev`` (module docstring)."""
    return _hash_fields(prev, entry.to_dict())


def chain_hashes(base: str, entries: list[LedgerEntry]) -> list[str]:
    """The hash of every entry of a chain starting at ``base``."""
    hashes, prev = [], base
    for entry in entries:
        prev = entry_hash(prev, entry)
        hashes.append(prev)
    return hashes


def events_from_dicts(data: list[dict]) -> list[PrivacyEvent]:
    """Privacy events from their ``to_dict`` form (as a ledger or the store's binding keeps them)."""
    return [_event_from_dict(e) for e in data]


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
        self,
        path: Path | str,
        user_id: str,
        delta: float | None = None,
        cap: float | None = None,
        load: bool = True,
    ) -> None:
        self.path = Path(path)
        self.user_id = user_id
        self.requested_delta = delta
        self.delta = DEFAULT_DELTA if delta is None else delta
        self.cap = cap
        self.entries: list[LedgerEntry] = []
        self.base = GENESIS
        if (
            load
        ):  # not for a ledger about to be restored (:meth:`restore`), whose document is damaged
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
            self.entries, self.base = [], GENESIS
            return
        if data.get("version", 1) not in READABLE_VERSIONS:
            raise ValueError(
                f"{self.path}: privacy ledger version {data.get('version')!r}, this code reads "
                f"{READABLE_VERSIONS}; refusing to continue"
            )
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
        self.base = GENESIS
        if data.get("version", 1) >= 2:  # version 1 has no chain: chained at the next write
            self._verify_chain(data)

    def _verify_chain(self, data: dict) -> None:
        """Refuse a document whose entries do not hash to its chain record (module docstring)."""
        try:
            chain = data["chain"]
            base, head, count = str(chain["base"]), str(chain["head"]), int(chain["count"])
        except (KeyError, TypeError, ValueError) as err:
            raise LedgerIntegrityError(
                f"{self.path}: the ledger's chain record is missing or malformed ({err!r}); "
                "refusing to continue"
            ) from err
        prev = base
        for i, (raw, entry) in enumerate(zip(data["entries"], self.entries, strict=True)):
            where = f"{self.path}: entry {i} ({entry.entry_id})"
            if raw.get("prev") != prev:
                raise LedgerIntegrityError(
                    f"{where} does not follow the previous entry of the chain (an entry was dropped, "
                    "reordered or inserted); refusing to continue"
                )
            try:  # hashed as stored: any edit of a hashed field changes the hash
                prev = _hash_fields(prev, raw)
            except (KeyError, TypeError, ValueError) as err:
                raise LedgerIntegrityError(f"{where}: malformed entry ({err!r})") from err
            if raw.get("hash") != prev:
                raise LedgerIntegrityError(
                    f"{where}: its content does not match its hash (the entry was edited); "
                    "refusing to continue"
                )
        if len(self.entries) != count or prev != head:
            raise LedgerIntegrityError(
                f"{self.path}: the ledger holds {len(self.entries)} entries, its chain records {count} "
                f"(head {head[:12]}, entries end at {prev[:12]}): entries were dropped or added; "
                "refusing to continue"
            )
        self.base = base

    @property
    def head(self) -> str:
        """The hash of the last entry (the chain's base for an empty ledger)."""
        hashes = chain_hashes(self.base, self.entries)
        return hashes[-1] if hashes else self.base

    def document(self) -> dict:
        """The JSON document stored for the ledger as it is in memory (version :data:`LEDGER_VERSION`)."""
        entries, prev = [], self.base
        for entry in self.entries:
            stored = entry.to_dict()
            digest = _hash_fields(prev, stored)
            entries.append({**stored, "prev": prev, "hash": digest})
            prev = digest
        return {
            "version": LEDGER_VERSION,
            "user_id": self.user_id,
            "delta": self.delta,
            "chain": {"base": self.base, "head": prev, "count": len(self.entries)},
            "entries": entries,
        }

    def _write(self) -> None:
        self._save(self.document())

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

    def restore(self, events: list[PrivacyEvent], base: str, details: dict) -> LedgerEntry:
        """Replace the stored document, without reading it, by one completed entry holding ``events``.

        For a ledger whose document was lost or rolled back when a record of its spend survived
        elsewhere (the events of every entry, and the chain head ``base`` they ended at): the
        composition of ``events`` is the spend recorded, never less, and the new chain continues the
        old one from ``base``."""
        entry = LedgerEntry(RESTORED_PURPOSE, list(events), dict(details), status="completed")
        with self._locked():
            self.entries, self.base = [entry], base
            self._write()
        return entry

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
