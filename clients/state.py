"""What a client keeps between rounds and runs, keyed by user: privacy ledgers, user embedding, DP plan,
persona choice, cached uploads and the cached trunk states of the user's examples.

Two privacy ledgers, both composed over every round and run: the record-level one (the unit is one
conversation: DP-SGD, the private clipping quantile, the private persona choice) and the user-level one
(the unit is the whole user: one Skellam release per round uploaded under user-level DP,
:mod:`fedpers.privacy.user_level`).

:class:`ClientState` is what the ClientApp needs; :class:`UserState` keeps it in plain files (the
simulation's devices, under ``state_dir/<user_id>/``), :class:`clients.device.DeviceStore` in the
device's encrypted store.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np

from fedpers.atomic import write_bytes, write_json
from fedpers.privacy.ledger import LEDGER_FILE, USER_LEVEL_LEDGER_FILE, PrivacyLedger
from fedpers.privacy.plan import DPPlan

Upload = tuple[list[np.ndarray], dict]


class ClientState(Protocol):
    """The per-user state the ClientApp reads and writes."""

    user_id: str

    def ledger(self, delta: float | None = None) -> PrivacyLedger: ...

    def user_level_ledger(self, delta: float | None = None) -> PrivacyLedger: ...

    def plan(self, run_id: str) -> DPPlan | None: ...

    def save_plan(self, plan: DPPlan) -> None: ...

    def persona_choice(self, run_id: str) -> str | None: ...

    def save_persona_choice(self, run_id: str, persona: str) -> None: ...

    def embedding(self) -> bytes | None: ...

    def save_embedding(self, data: bytes) -> None: ...

    def upload(self, key: str) -> Upload | None: ...

    def save_upload(self, key: str, run_id: str, task: str, upload: Upload) -> None: ...

    def activations(self, key: str) -> bytes | None: ...

    def save_activations(self, key: str, data: bytes) -> None: ...


def upload_to_bytes(arrays: list[np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({f"{i:05d}": np.ascontiguousarray(a) for i, a in enumerate(arrays)})


def upload_from_bytes(data: bytes) -> list[np.ndarray]:
    from safetensors.numpy import load

    stored = load(data)
    return [stored[k] for k in sorted(stored)]


class UserState:
    """Files under ``state_dir/<user_id>/`` (what a simulated device keeps)."""

    def __init__(self, state_dir: Path | str, user_id: str) -> None:
        self.user_id = user_id
        self.root = Path(state_dir) / user_id
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def embedding_path(self) -> Path:
        return self.root / "user_embedding.safetensors"

    def ledger(self, delta: float | None = None) -> PrivacyLedger:
        return PrivacyLedger(self.root / LEDGER_FILE, self.user_id, delta)

    def user_level_ledger(self, delta: float | None = None) -> PrivacyLedger:
        return PrivacyLedger(self.root / USER_LEVEL_LEDGER_FILE, self.user_id, delta)

    def plan(self, run_id: str) -> DPPlan | None:
        path = self.root / "dp-plan.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return DPPlan(**data) if data.get("run_id") == run_id else None

    def save_plan(self, plan: DPPlan) -> None:
        write_json(self.root / "dp-plan.json", asdict(plan))

    def persona_choice(self, run_id: str) -> str | None:
        path = self.root / f"persona-{run_id}.txt"
        return path.read_text().strip() if path.exists() else None

    def save_persona_choice(self, run_id: str, persona: str) -> None:
        (self.root / f"persona-{run_id}.txt").write_text(persona)

    def embedding(self) -> bytes | None:
        return self.embedding_path.read_bytes() if self.embedding_path.exists() else None

    def save_embedding(self, data: bytes) -> None:
        write_bytes(self.embedding_path, data)

    def upload(self, key: str) -> Upload | None:
        arrays_path, metrics_path = (
            self.root / "uploads" / f"{key}.safetensors",
            self.root / "uploads" / f"{key}.json",
        )
        if not (arrays_path.exists() and metrics_path.exists()):
            return None
        return upload_from_bytes(arrays_path.read_bytes()), json.loads(metrics_path.read_text())

    def save_upload(self, key: str, run_id: str, task: str, upload: Upload) -> None:
        """Keep ``upload`` under ``key``, replacing this run's earlier uploads of ``task``."""
        folder = self.root / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{run_id}-*-{task}.*"):
            old.unlink()
        (folder / f"{key}.safetensors").write_bytes(upload_to_bytes(upload[0]))
        write_json(folder / f"{key}.json", upload[1])

    def activations(self, key: str) -> bytes | None:
        """The cached trunk states stored under ``key`` (:func:`fedpers.userdata.attach_trunk`)."""
        path = self.root / f"trunk-{key}.safetensors"
        return path.read_bytes() if path.exists() else None

    def save_activations(self, key: str, data: bytes) -> None:
        """Keep one set of trunk states: ``data`` under ``key``, replacing any other."""
        for old in self.root.glob("trunk-*.safetensors"):
            if old.name != f"trunk-{key}.safetensors":
                old.unlink(missing_ok=True)
        write_bytes(self.root / f"trunk-{key}.safetensors", data)
