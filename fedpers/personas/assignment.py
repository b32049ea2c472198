"""Which persona adapter a client trains: the declared one, else the best-scoring trained one (IFCA), else global."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fedpers.adapters import GLOBAL

Source = Literal["declared", "inferred", "global"]


@dataclass(frozen=True)
class Assignment:
    """The chosen adapter, how it was chosen, and the scores behind an inferred choice (lower is better)."""

    persona: str
    source: Source
    scores: dict[str, float] = field(default_factory=dict)


def check_known(persona: str, personas: Sequence[str]) -> None:
    if persona not in personas:
        raise ValueError(f"unknown persona {persona!r}; known personas: {list(personas)}")


def lowest(scores: dict[str, float]) -> str | None:
    """The key with the lowest finite score, ties broken by order; ``None`` if no score is finite."""
    finite = [name for name, s in scores.items() if math.isfinite(s)]
    return min(finite, key=scores.__getitem__) if finite else None


def assign_persona(
    declared: str | None,
    personas: Sequence[str],
    score: Callable[[str], float] | None,
    trained: Collection[str],
) -> Assignment:
    """Assign a client to a persona.

    A declared persona wins (it must be one of ``personas``). Otherwise, IFCA-style, every persona
    whose adapter is in ``trained`` is scored (e.g. held-out loss, lower is better) and the lowest
    wins, ties going to the earlier persona. With no trained persona adapter yet (cold start), or no
    finite score, the client uses the global adapter.
    """
    if declared is not None:
        check_known(declared, personas)
        return Assignment(declared, "declared")
    candidates = [p for p in personas if p in trained]
    if not candidates:
        return Assignment(GLOBAL, "global")
    if score is None:
        raise ValueError("inferring a persona needs a score function")
    scores = {p: float(score(p)) for p in candidates}
    best = lowest(scores)
    return (
        Assignment(best, "inferred", scores)
        if best is not None
        else Assignment(GLOBAL, "global", scores)
    )
