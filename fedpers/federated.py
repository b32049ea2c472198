"""Settings of a federated run: one flat record of scalars.

The ServerApp owns a :class:`FederatedConfig` and sends it to clients in every message, so the
same apps run under ``fedpers simulate``, ``flwr run`` and the deployment engine.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from fedpers.data import PERSONAS
from fedpers.models.lora import LoraSettings


@dataclass
class FederatedConfig:
    """Everything a round needs; every field is a ConfigRecord scalar (``fedpers simulate --help`` lists them).

    The defaults are the default scenario (``simulations/scenarios/default.toml``), sized for 2 CPU cores.
    """

    # data and model
    model: str = "smollm2"
    data: str = "synthetic"  # 'synthetic', 'shakespeare' or a conversation JSONL path
    users_per_persona: int = 3
    conversations_per_user: int = 40
    max_users: int = 20
    data_seed: int = 0
    heldout_fraction: float = 0.25
    max_length: int = 64
    personas: str = ",".join(PERSONAS)
    persona_mode: str = "declared"  # 'declared' (from the data) or 'inferred' (IFCA on the client)
    # adapters
    lora_r: int = 4
    lora_alpha: int = 8
    lora_targets: str = "q_proj,v_proj"
    lora_layers: int = 4
    embedding_tokens: int = 8
    # rounds and server
    rounds: int = 3
    fraction_train: float = 1.0
    min_clients: int = 2
    min_nodes: int = 0  # deployment: SuperNodes to wait for before the first round (0: min_clients)
    server_optimizer: str = "fedavg"
    server_lr: float = 0.0  # 0: the optimizer's own default (FedAvg 1.0, FedAdam 1e-2)
    # local training
    local_steps: int = 8
    batch_size: int = 4
    learning_rate: float = 2e-2
    embedding_steps: int = 4
    embedding_lr: float = 3e-2
    # privacy (per user, sample level: one conversation)
    dp: bool = True
    epsilon: float = 8.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0  # 0: calibrate to epsilon over all planned rounds
    clip: float = 0.0  # 0: private median of per-sample gradient norms
    clip_quantile: float = 0.25
    # aggregation: Flower's SecAgg+ (with ChaCha20 masks) and persona hiding (K slots per upload)
    secure_aggregation: bool = True
    persona_hiding: bool = True  # false: one slot, the persona travels in clear
    update_clip: float = 32.0  # clients clip their adapter delta to this L2 norm; it sets the SecAgg+ range
    secagg_shares: float = 1.0  # share a client's secrets with this fraction of the sampled clients
    secagg_threshold: float = 0.5  # fraction of shares needed to remove the masks of a dropped client
    secagg_timeout: float = 3600.0  # seconds each SecAgg+ stage waits for replies
    secagg_retries: int = 2  # a failed secure round is logged and run again this many times
    evaluate: bool = True  # held-out loss sums per persona after every round (aggregated like updates)
    # user-level DP (DP-FedAvg): whole-upload clipping on the client, Gaussian noise on the sum
    user_dp: bool = False
    user_noise_multiplier: float = 1.0
    noise_seed: int = -1  # >= 0 seeds DP noise (reproducible comparisons only); -1: fresh OS entropy
    # where clients keep their state (ledger, user embedding, plan) between rounds and runs
    state_dir: str = "runs/client-state"
    # the privacy audit report (simulation): wire recording, the report itself, the canary attack
    record_wire: bool = True  # record every reply a client sends (manifest + payloads for the leak scan)
    keep_payloads: bool = False  # keep the recorded payloads after the scan (the manifest keeps their SHA-256)
    audit: bool = True  # write audit.html / audit.json (signed) at the end of the run
    audit_attack: bool = False  # also run the canary attack (two more simulations with these settings)
    canaries: str = ""  # conversation JSONL added to its users' training data (set by the canary attack)
    # the server's persona registry: each finished run's adapters become its next version (empty: none)
    registry: str = ""
    seed: int = 0

    @property
    def persona_names(self) -> list[str]:
        return [p for p in self.personas.split(",") if p]

    def lora(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, target_modules=tuple(self.lora_targets.split(",")),
                            top_layers=self.lora_layers or None, init_seed=self.seed)

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record) -> "FederatedConfig":
        """Build from a ConfigRecord or dict, ignoring keys that are not settings (e.g. ``server-round``)."""
        known = {f.name: f.type for f in fields(cls)}
        values = {}
        for key, value in dict(record).items():
            name = key.replace("-", "_")
            if name in known:
                values[name] = value
        return cls(**values).validated()

    def validated(self) -> "FederatedConfig":
        for f in fields(self):
            default = f.default
            value = getattr(self, f.name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"setting {f.name}: expected true/false, got {value!r}")
            elif isinstance(default, int) and not isinstance(value, bool):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                if not isinstance(value, int):
                    raise ValueError(f"setting {f.name}: expected an integer, got {value!r}")
            elif isinstance(default, float):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ValueError(f"setting {f.name}: expected a number, got {value!r}")
                value = float(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise ValueError(f"setting {f.name}: expected a string, got {value!r}")
            setattr(self, f.name, value)
        if self.persona_mode not in ("declared", "inferred"):
            raise ValueError(f"setting persona_mode: 'declared' or 'inferred', got {self.persona_mode!r}")
        if self.server_optimizer not in ("fedavg", "fedadam"):
            raise ValueError(f"setting server_optimizer: 'fedavg' or 'fedadam', got {self.server_optimizer!r}")
        if not self.persona_names:
            raise ValueError("setting personas: at least one persona is needed")
        if not self.update_clip > 0:
            raise ValueError(f"setting update_clip: must be > 0, got {self.update_clip}")
        if self.min_nodes < 0:
            raise ValueError(f"setting min_nodes: must be >= 0, got {self.min_nodes}")
        if not 0 < self.secagg_shares <= 1 or not 0 < self.secagg_threshold <= 1:
            raise ValueError("settings secagg_shares and secagg_threshold: fractions in (0, 1]")
        if self.user_dp and not self.persona_hiding:
            raise ValueError("setting user_dp needs persona_hiding: the noise is calibrated to one upload holding every slot")
        return self


def load_config_file(path: Path) -> dict:
    """Settings from a TOML file: top-level keys are :class:`FederatedConfig` fields (``-`` or ``_``)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from None
    known = {f.name for f in fields(FederatedConfig)}
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"{path}: unknown setting {key!r}")
        values[name] = value
    return values
