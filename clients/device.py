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
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clients.consent import Consent, read_consent, write_consent
from clients.state import Upload, upload_from_bytes, upload_to_bytes
from clients.store import ITEM_SUFFIX, EncryptedStore, ScryptParams, StoreError
from clients.unlock import open_from_env
from fedpers.data.schema import Conversation, DataValidationError, ValidationIssue, read_jsonl
from fedpers.privacy.ledger import PrivacyLedger
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
    file beside it."""

    def __init__(
        self,
        store: EncryptedStore,
        user_id: str,
        delta: float | None = None,
        cap: float | None = None,
        item: str = LEDGER,
    ) -> None:
        self.store, self.item = store, item
        super().__init__(store.directory / f"{item}{ITEM_SUFFIX}", user_id, delta, cap)

    def _read(self) -> dict | None:
        return self.store.get_json(self.item) if self.store.has(self.item) else None

    def _save(self, document: dict) -> None:
        self.store.put_json(self.item, document)


def _lines_of_records(path: Path) -> list[int]:
    """Line numbers of the non-blank lines of a JSONL file (one conversation each once it validated)."""
    with open(path, "rb") as fh:
        return [n for n, raw in enumerate(fh, start=1) if raw.strip()]


class DeviceStore:
    """The user's items in an :class:`EncryptedStore` (see the module docstring)."""

    def __init__(self, store: EncryptedStore) -> None:
        self.store = store

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
    ) -> DeviceStore:
        """A new store for ``user_id``: profile, consent not given, and an empty ledger."""
        if not user_id or not user_id.strip():
            raise ValueError("the user id is empty")
        device = cls(
            EncryptedStore.create(
                directory, passphrase=passphrase, key_file=key_file, params=params
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
    ) -> DeviceStore:
        return cls(EncryptedStore.open(directory, passphrase=passphrase, key_file=key_file))

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
