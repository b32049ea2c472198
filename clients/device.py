"""What a device keeps about its user, in its encrypted store (:mod:`clients.store`).

Items (each one AES-256-GCM encrypted file):

    profile              user id, declared persona (optional)
    consent              opted in or out, epsilon budget (:mod:`clients.consent`)
    conversations        the user's conversations (the JSONL schema, as a JSON list)
    feedback             rated chat answers (conversations whose assistant turn carries the rating)
    ledger               the record-level privacy ledger (:class:`StoreLedger`)
    user-level-ledger    the user-level privacy ledger (user-level DP rounds); the ledgers are the only
                         items ``forget`` keeps
    embedding            the user embedding (safetensors)
    adapters/<name>      the adapters last received from the server (safetensors); ``adapters-info``
                         says from which run and round, with the run's settings
    dp-plan, persona-choice, uploads/<key>   the ClientApp's per-run state (as in :mod:`clients.state`)
    activations          the frozen trunk states of the user's conversations (safetensors after the
                         32-character key they were computed for, :func:`fedpers.userdata.attach_trunk`);
                         derived from the conversations, kept as encrypted as they are

The key never reaches the run config: the ClientApp process unlocks the store with the passphrase
or key file from its environment (:mod:`clients.unlock`).

The ledgers cannot silently shrink. Each is a hash chain (:mod:`fedpers.privacy.ledger`) whose head,
length and events the store's authenticated manifest binds at every write (:class:`StoreLedger`), and
the manifest lists the digest of every item file (:mod:`clients.store`). Deleting a ledger, putting an
older copy back or editing it is therefore tampering, raised on every read of it: the device then
refuses to train or upload (the budget check reads the ledger first) and ``fedpers-client status``
reports it instead of an epsilon. :meth:`DeviceStore.repair` never lowers the spend: a damaged
ledger is rebuilt from the highest spend the store records for it (the manifest's binding, or the
anchor's after a rollback of the whole store) as one ``restored-spend`` entry that continues the
chain; other damaged items are dropped. A ledger written before the chain existed is chained and
bound when its store is first opened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clients.consent import Consent, read_consent, write_consent
from clients.state import Upload, upload_from_bytes, upload_to_bytes
from clients.store import (
    ITEM_SUFFIX,
    REPAIR_HINT,
    EncryptedStore,
    ScryptParams,
    StoreError,
    StoreProblem,
    TamperedError,
)
from clients.unlock import open_from_env
from fedpers.data.schema import Conversation, DataValidationError, ValidationIssue, read_jsonl
from fedpers.privacy.accounting import epsilon_report
from fedpers.privacy.ledger import LedgerIntegrityError, PrivacyLedger, events_from_dicts
from fedpers.privacy.plan import DPPlan

PROFILE, CONVERSATIONS, FEEDBACK, LEDGER = "profile", "conversations", "feedback", "ledger"
USER_LEVEL_LEDGER = "user-level-ledger"
LEDGERS = (LEDGER, USER_LEVEL_LEDGER)
EMBEDDING, ADAPTERS_INFO, ADAPTER_PREFIX = "embedding", "adapters-info", "adapters/"
DP_PLAN, PERSONA_CHOICE, UPLOAD_PREFIX = "dp-plan", "persona-choice", "uploads/"
ACTIVATIONS = "activations"


@dataclass(frozen=True)
class Profile:
    """Who the device serves; ``persona`` is the one the user declared, if any."""

    user_id: str
    persona: str | None = None
    created_at: float = field(default_factory=time.time)


class StoreLedger(PrivacyLedger):
    """A :class:`PrivacyLedger` kept as the store's ``item`` (``ledger`` or ``user-level-ledger``), locked by a
    file beside it.

    Every write binds the ledger in the store's manifest: ``{user_id, delta, count, head, events}`` (the
    chain's length and head hash, and every event it composes). A read refuses a document whose chain
    differs from its binding; the store refuses a file whose digest differs from the manifest's."""

    def __init__(
        self,
        store: EncryptedStore,
        user_id: str,
        delta: float | None = None,
        cap: float | None = None,
        item: str = LEDGER,
        load: bool = True,
    ) -> None:
        self.store, self.item = store, item
        super().__init__(store.directory / f"{item}{ITEM_SUFFIX}", user_id, delta, cap, load=load)

    def _read(self) -> dict | None:
        if not self.store.has(self.item):
            return None
        data, binding = self.store.get_bound(self.item)
        document = json.loads(data)
        if binding is not None:
            chain = document.get("chain") or {}
            if (chain.get("count"), chain.get("head")) != (binding["count"], binding["head"]):
                raise TamperedError(
                    f"{self.path} (item {self.item!r}): the ledger's chain (count {chain.get('count')}, head "
                    f"{str(chain.get('head'))[:12]}) is not the one the store's manifest binds (count "
                    f"{binding['count']}, head {binding['head'][:12]}); {REPAIR_HINT}"
                )
        return document

    def _save(self, document: dict) -> None:
        binding = {
            "user_id": document["user_id"],
            "delta": document["delta"],
            "count": document["chain"]["count"],
            "head": document["chain"]["head"],
            "events": [e for entry in document["entries"] for e in entry["events"]],
        }
        self.store.put_json(self.item, document, binding=binding)


@dataclass(frozen=True)
class RecordedSpend:
    """The highest spend the store records for a ledger item, from a binding (:class:`StoreLedger`)."""

    item: str
    epsilon: float
    delta: float
    count: int
    head: str
    binding: dict


def _lines_of_records(path: Path) -> list[int]:
    """Line numbers of the non-blank lines of a JSONL file (one conversation each once it validated)."""
    with open(path, "rb") as fh:
        return [n for n, raw in enumerate(fh, start=1) if raw.strip()]


class DeviceStore:
    """The user's items in an :class:`EncryptedStore` (see the module docstring)."""

    def __init__(self, store: EncryptedStore) -> None:
        self.store = store
        self._bind_ledgers()

    def _bind_ledgers(self) -> None:
        """Chain and bind a ledger written before ledgers were chained (its first open since); a ledger
        that cannot be read is left for :meth:`integrity` to report."""
        for item in LEDGERS:
            try:
                if not self.store.has(item) or self.store.binding(item) is not None:
                    continue
                document = self.store.get_json(item)
            except StoreError:
                continue
            owner = str(document["user_id"]) if isinstance(document, dict) else ""
            StoreLedger(self.store, owner, item=item).touch()

    @classmethod
    def create(
        cls,
        directory: Path | str,
        user_id: str,
        persona: str | None = None,
        *,
        passphrase: str | None = None,
        key_file: Path | str | None = None,
        params: ScryptParams = ScryptParams(),  # noqa: B008 - frozen, so one shared default is safe
        anchor: Path | str | None = None,
    ) -> DeviceStore:
        """A new store for ``user_id``: profile, consent not given, and an empty ledger; with ``anchor``, the
        store keeps a copy of its manifest there (outside the store) to detect a rollback of the whole store."""
        if not user_id or not user_id.strip():
            raise ValueError("the user id is empty")
        device = cls(
            EncryptedStore.create(
                directory, passphrase=passphrase, key_file=key_file, params=params, anchor=anchor
            )
        )
        device.store.put_json(PROFILE, asdict(Profile(user_id, persona)))
        device.set_consent(Consent())
        StoreLedger(device.store, user_id).touch()  # the ledger exists from the start
        return device

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        passphrase: str | None = None,
        key_file: Path | str | None = None,
        recover: bool = False,
    ) -> DeviceStore:
        """The store in ``directory``; ``recover``: open a store older than its anchor, for a repair."""
        return cls(
            EncryptedStore.open(
                directory, passphrase=passphrase, key_file=key_file, recover=recover
            )
        )

    @classmethod
    def from_env(cls, directory: Path | str) -> DeviceStore:
        """Unlock with the key from the environment (how the ClientApp opens it, see :mod:`clients.unlock`)."""
        return cls(open_from_env(directory))

    @property
    def directory(self) -> Path:
        return self.store.directory

    # who, and whether they take part
    def profile(self) -> Profile | None:
        return Profile(**self.store.get_json(PROFILE)) if self.store.has(PROFILE) else None

    @property
    def user_id(self) -> str:
        """From the profile, or after ``forget`` from the ledger (which is kept)."""
        profile = self.profile()
        if profile is not None:
            return profile.user_id
        if self.store.has(LEDGER):
            return str(self.store.get_json(LEDGER)["user_id"])
        raise StoreError(
            f"{self.directory}: neither a profile nor a ledger; is this a fedpers-client store?"
        )

    def declared_persona(self) -> str | None:
        profile = self.profile()
        return profile.persona if profile else None

    def consent(self) -> Consent:
        return read_consent(self.store)

    def set_consent(self, consent: Consent) -> None:
        write_consent(self.store, consent)

    # data
    def conversations(self) -> list[Conversation]:
        if not self.store.has(CONVERSATIONS):
            return []
        return [Conversation._build(c) for c in self.store.get_json(CONVERSATIONS)]

    def import_jsonl(self, path: Path | str) -> int:
        """Add the conversations of a JSONL file; all or nothing.

        Validated strictly (every problem as ``file:line: field: message``); every conversation must
        belong to this store's user and be new. Raises :class:`DataValidationError` and stores nothing
        otherwise. Returns the number added."""
        path = Path(path)
        new = read_jsonl(path, mode="strict").conversations
        user, held = self.user_id, {c.conversation_id for c in self.conversations()}
        issues = []
        for line, conv in zip(_lines_of_records(path), new, strict=True):
            if conv.user_id != user:
                issues.append(
                    ValidationIssue(
                        str(path),
                        line,
                        "user_id",
                        f"{conv.user_id!r} is not this device's user {user!r}",
                    )
                )
            elif conv.conversation_id in held:
                issues.append(
                    ValidationIssue(
                        str(path),
                        line,
                        "conversation_id",
                        f"{conv.conversation_id!r} is already in the store",
                    )
                )
        if issues:
            raise DataValidationError(issues)
        self.store.put_json(CONVERSATIONS, [c.to_dict() for c in [*self.conversations(), *new]])
        return len(new)

    def feedback(self) -> list[Conversation]:
        return (
            [Conversation._build(c) for c in self.store.get_json(FEEDBACK)]
            if self.store.has(FEEDBACK)
            else []
        )

    def add_feedback(self, conversation: Conversation) -> None:
        Conversation.from_dict(conversation.to_dict())  # validated like imported data
        self.store.put_json(FEEDBACK, [c.to_dict() for c in [*self.feedback(), conversation]])

    # privacy
    def ledger(self, delta: float | None = None) -> StoreLedger:
        """The record-level ledger, capped at the consented budget (``delta``: the run's; ``None``: the stored one)."""
        return StoreLedger(self.store, self.user_id, delta, cap=self.consent().budget)

    def user_level_ledger(self, delta: float | None = None) -> StoreLedger:
        """The user-level ledger, capped at the consented budget too: the user accepts at most that epsilon
        whichever the unit protected (one conversation, or the whole user)."""
        return StoreLedger(
            self.store, self.user_id, delta, cap=self.consent().budget, item=USER_LEVEL_LEDGER
        )

    # what the ClientApp keeps (see clients.state.ClientState)
    def plan(self, run_id: str) -> DPPlan | None:
        if not self.store.has(DP_PLAN):
            return None
        data = self.store.get_json(DP_PLAN)
        return DPPlan(**data) if data.get("run_id") == run_id else None

    def save_plan(self, plan: DPPlan) -> None:
        self.store.put_json(DP_PLAN, asdict(plan))

    def persona_choice(self, run_id: str) -> str | None:
        if not self.store.has(PERSONA_CHOICE):
            return None
        data = self.store.get_json(PERSONA_CHOICE)
        return data["persona"] if data.get("run_id") == run_id else None

    def save_persona_choice(self, run_id: str, persona: str) -> None:
        self.store.put_json(PERSONA_CHOICE, {"run_id": run_id, "persona": persona})

    def embedding(self) -> bytes | None:
        return self.store.get(EMBEDDING) if self.store.has(EMBEDDING) else None

    def save_embedding(self, data: bytes) -> None:
        self.store.put(EMBEDDING, data)

    def upload(self, key: str) -> Upload | None:
        arrays, metrics = f"{UPLOAD_PREFIX}{key}", f"{UPLOAD_PREFIX}{key}.json"
        if not (self.store.has(arrays) and self.store.has(metrics)):
            return None
        return upload_from_bytes(self.store.get(arrays)), self.store.get_json(metrics)

    def save_upload(self, key: str, run_id: str, task: str, upload: Upload) -> None:
        for name in self.store.names():
            if name.startswith(f"{UPLOAD_PREFIX}{run_id}-") and name.removesuffix(".json").endswith(
                f"-{task}"
            ):
                self.store.delete(name)
        self.store.put(f"{UPLOAD_PREFIX}{key}", upload_to_bytes(upload[0]))
        self.store.put_json(f"{UPLOAD_PREFIX}{key}.json", upload[1])

    def activations(self, key: str) -> bytes | None:
        if not self.store.has(ACTIVATIONS):
            return None
        data = self.store.get(ACTIVATIONS)
        return data[len(key) :] if data[: len(key)] == key.encode() else None

    def save_activations(self, key: str, data: bytes) -> None:
        self.store.put(ACTIVATIONS, key.encode() + data)

    # adapters received from the server
    def keep_adapters(self, info: dict, adapters: dict[str, dict[str, np.ndarray]]) -> None:
        """Replace the adapters held with ``adapters``; ``info`` says where they come from (run, round, settings)."""
        from safetensors.numpy import save

        for name in self.adapter_names():
            if name not in adapters:
                self.store.delete(f"{ADAPTER_PREFIX}{name}")
        for name, arrays in adapters.items():
            self.store.put(
                f"{ADAPTER_PREFIX}{name}",
                save({k: np.ascontiguousarray(v) for k, v in arrays.items()}),
            )
        self.store.put_json(
            ADAPTERS_INFO, {**info, "adapters": sorted(adapters), "received_at": time.time()}
        )

    def adapter_names(self) -> list[str]:
        return [
            n[len(ADAPTER_PREFIX) :] for n in self.store.names() if n.startswith(ADAPTER_PREFIX)
        ]

    def adapters_info(self) -> dict | None:
        return self.store.get_json(ADAPTERS_INFO) if self.store.has(ADAPTERS_INFO) else None

    def adapters(self) -> dict[str, dict[str, np.ndarray]]:
        from safetensors.numpy import load

        return {
            name: load(self.store.get(f"{ADAPTER_PREFIX}{name}")) for name in self.adapter_names()
        }

    def forget(self, keep: Iterable[str] = LEDGERS) -> list[str]:
        """Delete everything but the ledgers (data, embedding, adapters, profile, consent); the names deleted."""
        return self.store.forget(keep)

    # integrity
    def integrity(self) -> list[StoreProblem]:
        """Every problem of the store (:meth:`EncryptedStore.verify`), and of each ledger's chain against its
        binding; empty for an intact store."""
        problems = self.store.verify()
        found = {p.item for p in problems}
        for item in LEDGERS:
            if item in found or not self.store.has(item):
                continue
            try:
                document = self.store.get_json(item)
                owner = str(document["user_id"]) if isinstance(document, dict) else ""
                StoreLedger(self.store, owner, item=item)
            except (StoreError, LedgerIntegrityError, KeyError, TypeError, ValueError) as err:
                path = str(self.directory / f"{item}{ITEM_SUFFIX}")
                problems.append(StoreProblem(item, path, "modified", str(err)))
        return problems

    def recorded_spend(self, item: str = LEDGER) -> RecordedSpend | None:
        """The highest spend the store records for ledger ``item`` (None if it records none), read from the
        bindings alone: what ``status`` shows and a repair restores when the ledger itself is damaged."""
        best: RecordedSpend | None = None
        for binding in self.store.bindings(item):
            events = events_from_dicts(binding["events"])
            delta = float(binding["delta"])
            spent = epsilon_report(events, delta).epsilon if events else 0.0
            count = int(binding["count"])
            if best is None or (spent, count) > (best.epsilon, best.count):
                best = RecordedSpend(item, spent, delta, count, str(binding["head"]), binding)
        return best

    def repair(self) -> list[str]:
        """Make the store usable again without lowering any recorded spend; what was done, one line each.

        After a rollback of the whole store (opened with ``recover``) the anchor's bindings are adopted
        first and consent is withdrawn (the consent on disk is an older one). A damaged ledger (deleted,
        rolled back, modified) is rebuilt at its highest recorded spend (:meth:`recorded_spend`): one
        ``restored-spend`` entry with every recorded event, continuing the chain from the recorded head;
        a ledger with no recorded spend is refused (:class:`StoreError`), never restarted at zero. Any
        other damaged item is dropped, a file the manifest does not list removed. A missing or unreadable
        anchor is left to :meth:`EncryptedStore.set_anchor`."""
        actions = []
        whole_store = self.store.anchored_manifest is not None
        adopted = self.store.adopt_anchor()
        if whole_store:
            actions.append(
                "the whole store was rolled back: recorded the newer state of "
                f"{', '.join(adopted) or 'no ledger'} from the anchor"
            )
        for problem in self.integrity():
            item = problem.item
            if item is None:
                continue
            if item in LEDGERS:
                spend = self.recorded_spend(item)
                if spend is None:
                    raise StoreError(
                        f"{problem.path}: {problem.message}; the store records no spend for this ledger, so it "
                        "cannot be rebuilt and is not restarted at zero: refusing to repair"
                    )
                ledger = StoreLedger(
                    self.store, str(spend.binding["user_id"]), item=item, load=False
                )
                ledger.delta = spend.delta
                ledger.restore(
                    events_from_dicts(spend.binding["events"]),
                    spend.head,
                    {
                        "reason": f"{problem.kind}: {problem.message}",
                        "entries_lost": spend.count,
                        "head_lost": spend.head,
                        "epsilon": spend.epsilon,
                        "restored_at": time.time(),
                    },
                )
                actions.append(
                    f"restored item {item!r} ({problem.kind}) at the highest spend the store records: epsilon "
                    f"{spend.epsilon:.3f} (delta {spend.delta:g}) of {spend.count} entries, as one entry"
                )
            elif problem.kind == "unlisted":
                self.store.remove_unlisted(item)
                actions.append(f"removed {problem.path}: no item of this store")
            else:
                self.store.delete(item)
                actions.append(f"dropped item {item!r} ({problem.kind}): it is gone from the store")
        if whole_store:
            try:
                budget = self.consent().budget
            except StoreError:
                budget = Consent().budget
            self.set_consent(Consent(opted_in=False, budget=budget))
            actions.append(
                "consent withdrawn: the store's consent was an older copy (`fedpers-client consent --opt-in`)"
            )
        return actions


def node_store(node_config: Mapping) -> DeviceStore:
    """The store a SuperNode's node config names (``store``), unlocked with the key from the environment
    and checked against the config's ``user-id`` if it has one."""
    device = DeviceStore.from_env(str(node_config["store"]))
    expected = node_config.get("user-id")
    if expected is not None and str(expected) != device.user_id:
        raise ValueError(
            f"node config user-id {expected!r}, but store {device.directory} holds user {device.user_id!r}"
        )
    return device
