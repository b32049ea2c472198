"""Persona assignment for training, and routing of prompts to persona adapters at answer time."""

from fedpers.personas.answer import generate_answer
from fedpers.personas.assignment import Assignment, assign_persona
from fedpers.personas.routing import LossScorer, RouteDecision, Router, Scorer

__all__ = [
    "Assignment",
    "LossScorer",
    "RouteDecision",
    "Router",
    "Scorer",
    "assign_persona",
    "generate_answer",
]
