"""Settings of a federated run: one typed section per concern, one flat record of scalars on the wire.

:class:`FederatedConfig` holds seven sections (:class:`DataSettings`, :class:`ModelSettings`,
:class:`RoundSettings`, :class:`LocalSettings`, :class:`PrivacySettings`,
:class:`AggregationSettings`, :class:`OutputSettings`). Every setting is declared once, here, with its
default and its help text (field metadata): ``fedpers simulate --help``, the config files and the
Flower app config (``[tool.flwr.app.config]``, checked by a test) follow from these declarations.

Outside Python a setting is one flat key, its field name (``-`` or ``_``; names are unique across
sections): flags, ``--run-config``, TOML files (top-level keys, or the same keys inside ``[section]``
tables) and the ConfigRecord the ServerApp sends clients in every message (:meth:`FederatedConfig.to_record`),
so the same apps run under ``fedpers simulate``, ``flwr run`` and the deployment engine.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpers.data.personas import PERSONAS

if TYPE_CHECKING:
    from fedpers.models.lora import LoraSettings


BF16_SETTINGS = ("off", "auto", "on")
"""Values of the ``bf16`` setting (:mod:`fedpers.models.precision`)."""


def setting(default: Any, help: str) -> Any:
    """A setting: its default and the help text ``fedpers simulate --help`` shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class DataSettings:
    """Which conversations a run trains on, and how each user's are split and encoded."""

    data: str = setting(
        "synthetic",
        "'synthetic' (IT service desk), 'shakespeare' (the tinyshakespeare text shipped with fedpers) or a conversation JSONL path",
    )
    users_per_persona: int = setting(
        3,
        "users per persona; synthetic: generated; JSONL: chosen at random (data_seed) among the users declaring "
        "each persona of --personas, users of other or no personas left out (0: all; shakespeare: not used)",
    )
    conversations_per_user: int = setting(
        40,
        "conversations per user; synthetic: generated; JSONL: at most this many, chosen at random (data_seed); "
        "shakespeare: the first this many",
    )
    max_users: int = setting(
        20,
        "at most this many users in all (not synthetic; 0: no cap); JSONL: taken round-robin over the personas "
        "from the per-persona choice, as evenly as their users allow; shakespeare: the speakers with the most "
        "answers",
    )
    data_seed: int = setting(
        0,
        "seed of the synthetic data, of the users and conversations chosen from a JSONL file, and of each "
        "user's train / held-out split",
    )
    heldout_fraction: float = setting(
        0.25, "share of each user's conversations held out for evaluation"
    )
    max_length: int = setting(64, "tokens per training example (keeps the latest context)")
    personas: str = setting(",".join(PERSONAS), "comma-separated persona names")
    persona_mode: str = setting(
        "declared",
        "'declared' (persona field of the data) or 'inferred' (chosen on the device, privately: see persona_choice)",
    )
    persona_choice: str = setting(
        "auto",
        "inferred personas: 'prompts' (the device scores its prompts against persona centroids the server "
        "computes from public_data, one noisy choice per run), 'loss' (IFCA: the adapter with the lowest noisy "
        "loss on the device's data), 'auto' (prompts when the run has public data, else loss)",
    )
    canaries: str = setting(
        "",
        "conversation JSONL added to its users' training data (the canary attack sets it)",
    )
    public_data: str = setting(
        "",
        "public warm start: '' (none), 'synthetic' (the desk's public split, its own seed), 'shakespeare' "
        "(tinyshakespeare speakers no device holds) or a JSONL of "
        "conversations that are public by construction; the server trains the global adapter on it, "
        "without DP, before the first round",
    )
    public_steps: int = setting(0, "steps of the public warm start (0 = none)")
    persona_mix: str = setting(
        "auto",
        "layered personas: each persona adapter is published as global + w (persona - global); 'auto' chooses "
        "w per persona on the public data's held-out part (no public data: w = 1), or a fixed w in [0, 1]",
    )


@dataclass
class ModelSettings:
    """The base model and what is trained on it: LoRA adapters and the user embedding."""

    model: str = setting(
        "smollm2",
        "'smollm2' (packaged SmolLM2-135M-Instruct), 'tiny' (test model) or a local HF model directory",
    )
    lora_r: int = setting(
        4, "LoRA rank r: each adapted weight matrix W gets a trained update B @ A of rank r"
    )
    lora_alpha: int = setting(8, "LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_targets: str = setting("q_proj,v_proj", "comma-separated module names that get LoRA")
    lora_layers: int = setting(4, "LoRA on the top N layers (0 = all)")
    lora_train_a: bool = setting(
        True,
        "train LoRA's A matrices too; false: FFA-LoRA (A frozen at its seeded random initialisation, only B "
        "trained, so DP noise falls on half the dimensions)",
    )
    embedding_tokens: int = setting(
        8, "soft-prompt vectors in each user's embedding (stays on the device)"
    )
    embedding_layer: int = setting(
        0,
        "decoder layer the user embedding's prompt enters (0: the input embeddings; at most the first LoRA "
        "layer); above 0 a pass with it runs only the layers from there, from the user's cached states "
        "entering it",
    )
    bf16: str = setting(
        "off",
        "bfloat16 for the frozen computation: the LM head, the layers below the first LoRA layer (cached "
        "trunk states and the full path's alike), and every layer of passes that train no LoRA parameter "
        "(the user-embedding phase, evaluation); DP-SGD's LoRA layers, per-sample gradients, "
        "clipping and noise stay float32. 'off', 'on', or 'auto': on where the CPU has native bfloat16 "
        "(AVX512-BF16 or AMX)",
    )
    seed: int = setting(
        0, "seed of the LoRA initialisation and of inferred personas' starting points"
    )


@dataclass
class RoundSettings:
    """Rounds, sampling, the minimum-clients gate and the server optimizer."""

    rounds: int = setting(3, "federated rounds")
    fraction_train: float = setting(1.0, "fraction of users sampled per round")
    min_clients: int = setting(
        2, "minimum contributors before a persona (or the global) adapter is updated"
    )
    min_nodes: int = setting(
        0,
        "deployment engine: SuperNodes to wait for before the first round (0: --min-clients); "
        "a simulation starts one per user",
    )
    server_optimizer: str = setting("fedavg", "'fedavg' or 'fedadam'")
    server_lr: float = setting(
        0.0, "server learning rate; 0 = the optimizer's default (FedAvg 1.0, FedAdam 1e-2)"
    )


@dataclass
class LocalSettings:
    """What a device trains in one round: DP-SGD steps on the adapter, then the user embedding."""

    local_steps: int = setting(8, "DP-SGD steps per client per round")
    batch_size: int = setting(4, "expected Poisson batch size")
    learning_rate: float = setting(2e-2, "Adam learning rate of the LoRA adapter")
    embedding_steps: int = setting(4, "user-embedding steps per client per round (0 = none)")
    embedding_lr: float = setting(
        3e-2,
        "Adam learning rate of the user embedding at the input; at a deeper embedding-layer it is scaled by "
        "the ratio of the public initial prompt's mean norm there to its norm at the input",
    )


@dataclass
class PrivacySettings:
    """Sample-level DP-SGD on each device (the unit is one conversation) and user-level DP on the sum."""

    dp: bool = setting(True, "DP-SGD on the shared adapter (false only for comparison)")
    epsilon: float = setting(
        8.0, "per-user epsilon budget over all rounds of this run (plus earlier runs in the ledger)"
    )
    delta: float = setting(1e-5, "delta of every epsilon the run reports")
    noise_multiplier: float = setting(0.0, "0 = calibrate to --epsilon over all planned rounds")
    clip: float = setting(0.0, "per-sample clipping norm; 0 = private estimate at --clip-quantile")
    clip_quantile: float = setting(
        0.25,
        "the quantile of per-sample gradient norms the private clip estimate targets (with --clip 0)",
    )
    user_dp: bool = setting(
        False,
        "user-level DP: each device adds its share of Skellam noise to its clipped upload inside SecAgg+, so "
        "every sum the server unmasks is noised; needs secure aggregation and persona hiding",
    )
    user_noise_multiplier: float = setting(
        1.0,
        "user-level noise std of every unmasked sum, as a multiple of the upload's clipping norm "
        "(at the worst dropout SecAgg+ tolerates)",
    )
    router_epsilon: float = setting(
        4.0,
        "epsilon of the learned router's private statistics (user-level, charged to each device's user-level "
        "ledger; 4 leaves room for a second run under a consented budget of 8): after the last round every "
        "device sends its per-persona mean prompt embedding (mapped by the server's public feature map), context "
        "and count share, with its share of Skellam noise, inside SecAgg+; the run saves the router in "
        "RUN_DIR/router (0: no router round; needs secure aggregation and data that declares personas)",
    )
    noise_seed: int = setting(
        -1,
        "benchmark switch: seeds DP-SGD's sampling and noise (and the SecAgg+ rounding) on "
        "every device, for reproducible comparisons; such a run is marked NOT PRIVATE; -1: "
        "each device's OS CSPRNG",
    )


@dataclass
class AggregationSettings:
    """Flower's SecAgg+ (with ChaCha20 masks), persona hiding, and the bound every upload is clipped to."""

    secure_aggregation: bool = setting(
        True, "Flower's SecAgg+ with ChaCha20 masks (false: uploads in clear, for comparisons)"
    )
    persona_hiding: bool = setting(
        True,
        "upload one slot per persona so that no client sends its persona (the "
        "per-slot counts the server unmasks can still reveal it; false: persona in "
        "clear, one slot)",
    )
    update_clip: float = setting(
        32.0, "clients clip their adapter delta to this L2 norm; SecAgg+ quantizes within it"
    )
    update_clip_public: bool = setting(
        False,
        "before round 1 the server replaces update_clip with the median L2 norm of the deltas the public users "
        "get from one round of local training from the warm start (needs public_data; no budget spent)",
    )
    secagg_shares: float = setting(
        1.0, "fraction of the sampled clients each client shares its secrets with"
    )
    secagg_threshold: float = setting(
        0.5, "fraction of those shares needed to rebuild a dropped client's masks"
    )
    secagg_timeout: float = setting(3600.0, "seconds each SecAgg+ stage waits for replies")
    secagg_retries: int = setting(
        2, "times a failed secure round is run again before the run stops with an error"
    )


@dataclass
class OutputSettings:
    """What a run writes: evaluation, device state (simulation), wire recording, the audit, the registry."""

    evaluate: bool = setting(
        True,
        "held-out loss per persona after every round (simulation: the experimenter's "
        "evaluator, outside the federated protocol; devices never send it)",
    )
    state_dir: str = setting(
        "runs/client-state",
        "where simulated clients keep ledgers, user embeddings and plans",
    )
    record_wire: bool = setting(
        True,
        "record every reply a client sends (RUN_DIR/wire: manifest and payloads) for the audit",
    )
    keep_payloads: bool = setting(
        False,
        "keep the recorded payloads after the audit's leak scan (the manifest keeps their SHA-256)",
    )
    audit: bool = setting(
        True, "write the signed privacy audit report (audit.html, audit.json) at the end"
    )
    audit_attack: bool = setting(
        False,
        "add the canary attack to the audit: two more simulations with these settings (DP as set, DP off)",
    )
    registry: str = setting(
        "",
        "persona registry directory: each finished run's adapters are published as its next version "
        "(empty: not published)",
    )


SECTIONS: dict[str, type] = {
    "dataset": DataSettings,
    "model": ModelSettings,
    "server": RoundSettings,
    "local": LocalSettings,
    "privacy": PrivacySettings,
    "aggregation": AggregationSettings,
    "outputs": OutputSettings,
}
"""Section name (the attribute of :class:`FederatedConfig`, and the TOML table) -> its dataclass."""


@dataclass(frozen=True)
class Setting:
    """One flat setting: its section, field name, default, type and help."""

    section: str
    name: str
    default: Any
    help: str

    @property
    def kind(self) -> type:
        return type(self.default)


def all_settings() -> Iterator[Setting]:
    """Every setting, section by section, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            yield Setting(section, f.name, f.default, f.metadata["help"])


_SECTION_OF = {s.name: s.section for s in all_settings()}
_SETTINGS = {s.name: s for s in all_settings()}


def _key(key: str) -> str:
    return key.replace("-", "_")


@dataclass
class FederatedConfig:
    """Everything a round needs, by section (``fedpers simulate --help`` lists every setting).

    The defaults are the default scenario (``simulations/scenarios/default.toml``), sized for 2 CPU cores.
    """

    dataset: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    server: RoundSettings = field(default_factory=RoundSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> FederatedConfig:
        """Build from flat settings (``-`` or ``_``); an unknown key is an error naming it. Not yet validated."""
        by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in values.items():
            name = _key(key)
            if name not in _SECTION_OF:
                raise ValueError(f"unknown setting {key!r}")
            by_section[_SECTION_OF[name]][name] = value
        return cls(**{section: SECTIONS[section](**given) for section, given in by_section.items()})

    @classmethod
    def from_record(cls, record: Any) -> FederatedConfig:
        """Build from a ConfigRecord or dict, ignoring keys that are not settings (e.g. ``server-round``)."""
        return cls.from_flat(
            {k: v for k, v in dict(record).items() if _key(k) in _SECTION_OF}
        ).validated()

    def to_record(self) -> dict[str, Any]:
        """Every setting as one flat mapping of scalars (a ConfigRecord's content), in declaration order."""
        return {s.name: getattr(getattr(self, s.section), s.name) for s in all_settings()}

    def replace(self, **changes: Any) -> FederatedConfig:
        """A copy with flat ``changes`` (e.g. ``dp=False``), validated."""
        return FederatedConfig.from_flat(self.to_record() | changes).validated()

    @property
    def prompt_choice(self) -> bool:
        """Inferred personas chosen from the prompts against public centroids (:mod:`fedpers.personas.prompt_choice`)."""
        d = self.dataset
        return d.persona_mode == "inferred" and (
            d.persona_choice == "prompts" or (d.persona_choice == "auto" and bool(d.public_data))
        )

    @property
    def persona_names(self) -> list[str]:
        return [p for p in self.dataset.personas.split(",") if p]

    def lora(self) -> LoraSettings:
        # peft and torch: not for the ClientApp's light stages
        from fedpers.models.lora import (
            LoraSettings,
        )

        m = self.model
        return LoraSettings(
            r=m.lora_r,
            alpha=m.lora_alpha,
            target_modules=tuple(m.lora_targets.split(",")),
            top_layers=m.lora_layers or None,
            init_seed=m.seed,
            train_a=m.lora_train_a,
        )

    def validated(self) -> FederatedConfig:
        """Check every value's type (an integral float becomes an int, an int a float) and the rules across settings."""
        for s in all_settings():
            section = getattr(self, s.section)
            setattr(section, s.name, _checked(s, getattr(section, s.name)))
        d, r, p, a = self.dataset, self.server, self.privacy, self.aggregation
        if self.model.bf16 not in BF16_SETTINGS:
            raise ValueError(
                f"setting bf16: one of {', '.join(BF16_SETTINGS)}, got {self.model.bf16!r}"
            )
        if d.persona_mode not in ("declared", "inferred"):
            raise ValueError(
                f"setting persona_mode: 'declared' or 'inferred', got {d.persona_mode!r}"
            )
        if d.persona_choice not in ("auto", "prompts", "loss"):
            raise ValueError(
                f"setting persona_choice: 'auto', 'prompts' or 'loss', got {d.persona_choice!r}"
            )
        if d.persona_choice == "prompts" and not d.public_data:
            raise ValueError(
                "setting persona_choice: 'prompts' needs public_data (the persona centroids come from it)"
            )
        if r.server_optimizer not in ("fedavg", "fedadam"):
            raise ValueError(
                f"setting server_optimizer: 'fedavg' or 'fedadam', got {r.server_optimizer!r}"
            )
        if not self.persona_names:
            raise ValueError("setting personas: at least one persona is needed")
        if not a.update_clip > 0:
            raise ValueError(f"setting update_clip: must be > 0, got {a.update_clip}")
        if r.min_nodes < 0:
            raise ValueError(f"setting min_nodes: must be >= 0, got {r.min_nodes}")
        if not 0 < a.secagg_shares <= 1 or not 0 < a.secagg_threshold <= 1:
            raise ValueError("settings secagg_shares and secagg_threshold: fractions in (0, 1]")
        if p.user_dp and not a.persona_hiding:
            raise ValueError(
                "setting user_dp needs persona_hiding: the noise is calibrated to one upload holding every slot"
            )
        if a.update_clip_public and not d.public_data:
            raise ValueError(
                "setting update_clip_public needs public_data (the clip comes from the public users' deltas)"
            )
        if (self.dataset.public_steps > 0) != bool(self.dataset.public_data):
            raise ValueError(
                "settings public_data and public_steps: set both for a public warm start, or neither"
            )
        from fedpers.personas.layered import mix_weight_setting

        mix_weight_setting(self.dataset.persona_mix)
        if self.dataset.public_steps < 0:
            raise ValueError(f"setting public_steps: must be >= 0, got {self.dataset.public_steps}")
        if p.user_dp and not a.secure_aggregation:
            raise ValueError(
                "setting user_dp needs secure_aggregation: the devices add the noise inside SecAgg+'s integer domain"
            )
        if not 0 <= p.router_epsilon < float("inf"):
            raise ValueError(
                f"setting router_epsilon: a finite epsilon >= 0 (0: no router round), got {p.router_epsilon}"
            )
        if p.user_dp and not p.user_noise_multiplier > 0:
            raise ValueError(
                f"setting user_noise_multiplier: must be > 0 under user_dp, got {p.user_noise_multiplier}"
            )
        return self


def _checked(s: Setting, value: Any) -> Any:
    """``value`` as setting ``s``'s type, or a ValueError naming the setting."""
    if isinstance(s.default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"setting {s.name}: expected true/false, got {value!r}")
    elif isinstance(s.default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"setting {s.name}: expected an integer, got {value!r}")
    elif isinstance(s.default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"setting {s.name}: expected a number, got {value!r}")
        value = float(value)
    elif isinstance(s.default, str) and not isinstance(value, str):
        raise ValueError(f"setting {s.name}: expected a string, got {value!r}")
    return value


def load_config_file(path: Path) -> dict[str, Any]:
    """Flat settings from a TOML file: top-level keys, or the same keys inside ``[section]`` tables.

    An unknown key, or a known key in the wrong section, is an error naming the file and the key."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            for inner, v in value.items():
                if _SECTION_OF.get(_key(inner)) != key:
                    raise ValueError(f"{path}: [{key}] has no setting {inner!r}")
                values[_key(inner)] = v
            continue
        if _key(key) not in _SECTION_OF:
            raise ValueError(f"{path}: unknown setting {key!r}")
        values[_key(key)] = value
    return values


__all__ = [
    "SECTIONS",
    "AggregationSettings",
    "DataSettings",
    "FederatedConfig",
    "LocalSettings",
    "ModelSettings",
    "OutputSettings",
    "PrivacySettings",
    "RoundSettings",
    "Setting",
    "all_settings",
    "load_config_file",
    "setting",
]
