"""What a client keeps between rounds and runs, keyed by user: privacy ledger, user embedding, DP plan."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedpers.privacy.ledger import PrivacyLedger
from fedpers.rundir import write_json


@dataclass
class DPPlan:
    """Noise and clipping fixed at a user's first round of a run, so that all planned rounds fit the budget."""

    run_id: str
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    planned_steps: int


class UserState:
    """Files under ``state_dir/<user_id>/``."""

    def __init__(self, state_dir: Path | str, user_id: str) -> None:
        self.user_id = user_id
        self.root = Path(state_dir) / user_id
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def embedding_path(self) -> Path:
        return self.root / "user_embedding.safetensors"

    def ledger(self, delta: float) -> PrivacyLedger:
        return PrivacyLedger(self.root / "ledger.json", self.user_id, delta)

    def plan(self, run_id: str) -> DPPlan | None:
        path = self.root / "dp-plan.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return DPPlan(**data) if data.get("run_id") == run_id else None

    def save_plan(self, plan: DPPlan) -> None:
        write_json(self.root / "dp-plan.json", asdict(plan))
