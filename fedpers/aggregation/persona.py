"""Per-persona means of a round's summed updates, with a minimum-contributors gate; counts as outputs may show them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedpers.adapters import GLOBAL
from fedpers.aggregation.updates import Arrays


@dataclass
class PersonaAggregate:
    """The outcome of one round: a mean delta per persona (``None`` when gated) and a global mean delta.

    A persona with fewer than ``min_clients`` contributors gets no update; ``gated`` lists those that had
    some. The global delta (mean over every contributor) is ``None`` under the same rule.
    """

    persona_deltas: dict[str, Arrays | None]
    contributors: dict[str, float]
    global_delta: Arrays | None
    global_contributors: float
    gated: tuple[str, ...] = field(default_factory=tuple)

    @property
    def released(self) -> tuple[str, ...]:
        """Personas whose adapter receives an update this round."""
        return tuple(p for p, d in self.persona_deltas.items() if d is not None)


def means_from_sums(
    sums: Mapping[str, Mapping[str, np.ndarray]],
    counts: Mapping[str, float],
    personas: Sequence[str],
    min_clients: int,
) -> PersonaAggregate:
    """Means of per-slot delta sums over per-slot counts; nothing is released below ``min_clients``.

    Slots are persona names and ``global`` (clients without a persona yet). Counts may be noisy (user-level
    DP): they are compared with ``min_clients`` as given. Results are float32.
    """
    if min_clients < 1:
        raise ValueError(f"min_clients must be >= 1, got {min_clients}")
    unknown = sorted(set(sums) - set(personas) - {GLOBAL})
    if unknown:
        raise ValueError(f"sums for unknown personas {unknown}; known personas: {list(personas)}")
    deltas: dict[str, Arrays | None] = {}
    for persona in personas:
        count = float(counts.get(persona, 0.0))
        total = sums.get(persona)
        deltas[persona] = (
            {k: (np.asarray(v, np.float64) / count).astype(np.float32) for k, v in total.items()}
            if total is not None and count >= min_clients
            else None
        )
    everyone = float(sum(max(float(c), 0.0) for c in counts.values()))
    global_delta = None
    if sums and everyone >= min_clients:
        keys = next(iter(sums.values())).keys()
        global_delta = {
            k: (
                np.asarray(sum(np.asarray(s[k], np.float64) for s in sums.values())) / everyone
            ).astype(np.float32)
            for k in keys
        }
    return PersonaAggregate(
        persona_deltas=deltas,
        contributors={p: float(counts.get(p, 0.0)) for p in [*personas, GLOBAL]},
        global_delta=global_delta,
        global_contributors=everyone,
        gated=tuple(p for p in personas if deltas[p] is None and float(counts.get(p, 0.0)) >= 0.5),
    )


def published_count(count: float, min_clients: int) -> int | float | str:
    """A slot's count as a run's outputs may show it: the count when it reaches the gate (``count >=
    min_clients``), else the string ``"<min_clients"`` — zero included, so that no output tells an empty slot
    from one holding a single client. The server itself sees every count (SecAgg+ unmasks them); the gate
    governs only what it writes."""
    if float(count) < min_clients:
        return f"<{min_clients}"
    value = round(float(count), 3)  # noisy under user-level DP
    return int(value) if value.is_integer() else value


def published_counts(counts: Mapping[str, float], min_clients: int) -> dict[str, int | float | str]:
    """:func:`published_count` of every slot of ``counts``."""
    return {slot: published_count(count, min_clients) for slot, count in counts.items()}
