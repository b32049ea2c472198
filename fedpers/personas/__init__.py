"""Persona assignment for training, and routing of prompts to persona adapters at answer time.

The names below load on first use, so that importing one light submodule (e.g. the ``fedpers route``
parser in :mod:`fedpers.personas.cli`) does not import torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedpers.personas.answer import generate_answer
    from fedpers.personas.assignment import Assignment, assign_persona
    from fedpers.personas.centroid import (
        CentroidRouterModel,
        CentroidScorer,
        load_router,
        save_router,
    )
    from fedpers.personas.routing import ConfidentScorer, LossScorer, RouteDecision, Router, Scorer

_EXPORTS = {
    "generate_answer": "answer",
    "Assignment": "assignment",
    "assign_persona": "assignment",
    "CentroidRouterModel": "centroid",
    "CentroidScorer": "centroid",
    "load_router": "centroid",
    "save_router": "centroid",
    "ConfidentScorer": "routing",
    "LossScorer": "routing",
    "RouteDecision": "routing",
    "Router": "routing",
    "Scorer": "routing",
}

__all__ = [
    "Assignment",
    "CentroidRouterModel",
    "CentroidScorer",
    "ConfidentScorer",
    "LossScorer",
    "RouteDecision",
    "Router",
    "Scorer",
    "assign_persona",
    "generate_answer",
    "load_router",
    "save_router",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
