"""The pure math of a federated round: client updates, per-persona means with a gate, server optimizers."""

from fedpers.aggregation.optimizers import FedAdamOptimizer, FedAvgOptimizer, ServerOptimizer, make_optimizer
from fedpers.aggregation.persona import PersonaAggregate, aggregate_by_persona
from fedpers.aggregation.updates import Arrays, ClientUpdate, clip_delta, delta_norm, weighted_mean

__all__ = [
    "Arrays",
    "ClientUpdate",
    "FedAdamOptimizer",
    "FedAvgOptimizer",
    "PersonaAggregate",
    "ServerOptimizer",
    "aggregate_by_persona",
    "clip_delta",
    "delta_norm",
    "make_optimizer",
    "weighted_mean",
]
