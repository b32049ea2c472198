"""What the server tells the clients in every message of a round: :class:`RoundInstructions`.

The instructions travel as one Flower ``ConfigRecord`` of scalars (:meth:`RoundInstructions.to_record`),
read back by :meth:`RoundInstructions.from_record`; no other code reads that record. They hold the
run's settings (:class:`~fedpers.federated.FederatedConfig`, underscore keys), the round, the task,
the upload's slots, the personas trained so far, and the adapters as one safetensors blob.

Slots. An upload is a vector of slots (:mod:`fedpers.aggregation.slots`): with persona hiding one per
adapter, ``(global, persona_1, ..., persona_K)``, and a client writes its delta into its persona's slot
(the global slot while it has none); without persona hiding a single slot ``update``, and the
persona travels in clear as an index into the run's persona list (``-1``: the global adapter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fedpers.adapters import GLOBAL, Adapters, adapters_from_bytes, adapters_to_bytes
from fedpers.federated import FederatedConfig

SINGLE_SLOT = "update"
"""The one slot of an upload without persona hiding."""
TASKS = ("train", "persona", "router")
"""``train``: upload the clipped adapter delta; ``persona``: tell the persona in clear (no persona hiding);
``router``: upload the router's private statistics once, after the last round
(:mod:`fedpers.personas.router_round`)."""
SECAGG_THRESHOLD = "reconstruction-threshold"
"""The key under which a device's SecAgg+ mod hands the task its reconstruction threshold ``t`` (the router's noise
share is ``1/t`` of the noise): the device's own SecAgg+ state, not a server setting (nor a setting's name:
``secagg_threshold`` is the fraction the server computes ``t`` from)."""
ROUTER_FEATURES = "router-features"
"""The key of the router task's public feature map (safetensors, :meth:`fedpers.personas.features.FeatureMap.to_bytes`):
learned by the server from public data only; a device maps its embeddings with it before clipping, so whatever map
a server sends, the upload keeps its bound and its noise (a bad map costs accuracy, not privacy)."""
PERSONA_CENTROIDS = "persona-centroids"
"""The key of the public persona centroids (safetensors, :meth:`fedpers.personas.prompt_choice.PromptCentroids.to_bytes`)
that devices of an inferred-persona run score their prompts against: public; a bad set of centroids costs the
choice its accuracy, not its privacy (the score's clip and noise do not depend on them)."""
PERSONA_INDEX = "persona-index"
"""The metric that carries a persona in clear (:func:`persona_index`)."""

# the record's own keys (hyphens, so that they never clash with a setting's underscore name)
_RUN_ID, _ROUND, _TASK, _SLOTS, _TRAINED, _FINAL, _ADAPTERS, _COUNT = (
    "run-id",
    "server-round",
    "task",
    "slots",
    "trained-personas",
    "final",
    "adapters",
    "count-value",
)


def round_slots(config: FederatedConfig) -> tuple[str, ...]:
    """The slots of every upload in a run with these settings."""
    return (GLOBAL, *config.persona_names) if config.aggregation.persona_hiding else (SINGLE_SLOT,)


def persona_index(personas: list[str], persona: str) -> int:
    """How a persona travels in clear: its index in the run's persona list; ``-1`` for the global adapter."""
    return personas.index(persona) if persona != GLOBAL else -1


def persona_from_index(personas: list[str], index: int) -> str:
    """The inverse of :func:`persona_index` (an index out of range is an error, not the global adapter)."""
    if index == -1:
        return GLOBAL
    if not 0 <= index < len(personas):
        raise ValueError(f"persona index {index} outside the run's {len(personas)} personas")
    return personas[index]


def instructed_task(record: Any) -> str | None:
    """The task a record of instructions names, without reading the rest (``None``: not instructions)."""
    task = dict(record).get(_TASK) if record else None
    return str(task) if task is not None else None


def _names(value: Any) -> tuple[str, ...]:
    return tuple(p for p in str(value).split(",") if p)


@dataclass(frozen=True)
class RoundInstructions:
    """One message's instructions: settings, round, task, slots, trained personas and the adapters."""

    config: FederatedConfig
    run_id: str
    server_round: int
    task: str = "train"
    slots: tuple[str, ...] = ()  # empty: the run's (:func:`round_slots`)
    trained_personas: tuple[str, ...] = ()
    # safetensors: the adapters the client starts from
    adapters_blob: bytes = field(default=b"", repr=False)
    count_value: float = 0.0  # what a client adds to its slot's count (the SecAgg+ range sets it)
    secagg_threshold: int = 0  # set on the device by its SecAgg+ mod (router task); 0: none
    # router task: the public feature map (safetensors; empty: none)
    features_blob: bytes = field(default=b"", repr=False)
    # inferred personas chosen from the prompts: the public persona centroids (safetensors; empty: none)
    centroids_blob: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {list(TASKS)}")
        if not self.slots:
            object.__setattr__(self, "slots", round_slots(self.config))
        unknown = set(self.trained_personas) - set(self.config.persona_names)
        if unknown:
            raise ValueError(f"trained personas {sorted(unknown)} are not personas of this run")

    @classmethod
    def for_round(
        cls,
        config: FederatedConfig,
        run_id: str,
        server_round: int,
        adapters: Adapters,
        trained: set[str] | tuple[str, ...],
        task: str = "train",
        count_value: float = 0.0,
        centroids_blob: bytes = b"",
    ) -> RoundInstructions:
        """The server's instructions: ``trained`` in the run's persona order, ``adapters`` packed once."""
        return cls(
            config,
            run_id,
            server_round,
            task,
            round_slots(config),
            tuple(p for p in config.persona_names if p in trained),
            adapters_to_bytes(adapters),
            count_value,
            centroids_blob=centroids_blob,
        )

    @property
    def final(self) -> bool:
        return self.server_round >= self.config.server.rounds

    @cached_property
    def adapters(self) -> Adapters:
        """The adapters the client starts from (decoded once)."""
        return adapters_from_bytes(self.adapters_blob)

    def slot_for(self, persona: str) -> str:
        """The slot a client of ``persona`` writes into: its own, the single slot, or the global slot."""
        if persona in self.slots:
            return persona
        return self.slots[0] if len(self.slots) == 1 else GLOBAL

    def persona_index(self, persona: str) -> int:
        return persona_index(self.config.persona_names, persona)

    def to_record(self) -> dict[str, Any]:
        """The ConfigRecord's content: every setting, then the round's own keys."""
        return (
            dict(self.config.to_record())
            | {
                _RUN_ID: self.run_id,
                _ROUND: self.server_round,
                _TASK: self.task,
                _TRAINED: ",".join(self.trained_personas),
                _FINAL: self.final,
                _SLOTS: ",".join(self.slots),
                _ADAPTERS: self.adapters_blob,
                _COUNT: self.count_value,
            }
            | ({SECAGG_THRESHOLD: self.secagg_threshold} if self.secagg_threshold else {})
            | ({ROUTER_FEATURES: self.features_blob} if self.features_blob else {})
            | ({PERSONA_CENTROIDS: self.centroids_blob} if self.centroids_blob else {})
        )

    @classmethod
    def from_record(cls, record: Any) -> RoundInstructions:
        """Read a ConfigRecord (or dict) written by :meth:`to_record`; a missing key is a clear error."""
        raw = dict(record)
        missing = [k for k in (_RUN_ID, _ROUND, _TASK) if k not in raw]
        if missing:
            raise ValueError(f"round instructions without {', '.join(missing)}")
        return cls(
            FederatedConfig.from_record(raw),
            str(raw[_RUN_ID]),
            int(raw[_ROUND]),
            str(raw[_TASK]),
            _names(raw.get(_SLOTS, "")),
            _names(raw.get(_TRAINED, "")),
            bytes(raw.get(_ADAPTERS, b"")),
            float(raw.get(_COUNT, 0.0)),
            int(raw.get(SECAGG_THRESHOLD, 0)),
            bytes(raw.get(ROUTER_FEATURES, b"")),
            bytes(raw.get(PERSONA_CENTROIDS, b"")),
        )
