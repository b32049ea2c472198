"""Per-persona aggregation of a round, with a minimum-contributors gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from fedpers.aggregation.updates import Arrays, ClientUpdate, weighted_mean

Weighting = Literal["examples", "uniform"]


@dataclass
class PersonaAggregate:
    """The outcome of one round: a mean delta per persona (``None`` when gated) and a global mean delta.

    A persona with fewer than ``min_clients`` contributors gets no update and is listed in ``gated``;
    the global delta (mean over every update) is ``None`` under the same rule.
    """

    persona_deltas: dict[str, Arrays | None]
    contributors: dict[str, int]
    global_delta: Arrays | None
    global_contributors: int
    gated: tuple[str, ...] = field(default_factory=tuple)

    @property
    def released(self) -> tuple[str, ...]:
        """Personas whose adapter receives an update this round."""
        return tuple(p for p, d in self.persona_deltas.items() if d is not None)


def _weights(updates: Sequence[ClientUpdate], weighting: Weighting) -> list[float]:
    if weighting == "examples":
        return [float(u.num_examples) for u in updates]
    if weighting == "uniform":
        return [1.0] * len(updates)
    raise ValueError(f"unknown weighting {weighting!r}: expected 'examples' or 'uniform'")


def aggregate_by_persona(
    updates: Sequence[ClientUpdate], personas: Sequence[str], min_clients: int, weighting: Weighting = "examples"
) -> PersonaAggregate:
    """Average the updates of each persona and of all clients; release nothing below ``min_clients``."""
    if min_clients < 1:
        raise ValueError(f"min_clients must be >= 1, got {min_clients}")
    _weights([], weighting)  # validate the name even when there are no updates
    unknown = sorted({u.persona for u in updates} - set(personas))
    if unknown:
        raise ValueError(f"updates for unknown personas {unknown}; known personas: {list(personas)}")
    by_persona = {p: [u for u in updates if u.persona == p] for p in personas}
    deltas: dict[str, Arrays | None] = {}
    for persona, group in by_persona.items():
        released = len(group) >= min_clients
        deltas[persona] = weighted_mean([u.delta for u in group], _weights(group, weighting)) if released else None
    global_delta = None
    if len(updates) >= min_clients:
        global_delta = weighted_mean([u.delta for u in updates], _weights(updates, weighting))
    return PersonaAggregate(
        persona_deltas=deltas,
        contributors={p: len(g) for p, g in by_persona.items()},
        global_delta=global_delta,
        global_contributors=len(updates),
        gated=tuple(p for p, d in deltas.items() if d is None),
    )
