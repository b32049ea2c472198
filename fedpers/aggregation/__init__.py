"""The pure math of a federated round: upload slots, per-persona means with a gate, server optimizers, SecAgg+ arithmetic."""

from fedpers.aggregation.optimizers import FedAdamOptimizer, FedAvgOptimizer, ServerOptimizer, make_optimizer
from fedpers.aggregation.persona import PersonaAggregate, means_from_sums, published_count, published_counts
from fedpers.aggregation.updates import Arrays, ClientUpdate, clip_delta, delta_norm, weighted_mean

__all__ = [
    "Arrays",
    "ClientUpdate",
    "FedAdamOptimizer",
    "FedAvgOptimizer",
    "PersonaAggregate",
    "ServerOptimizer",
    "clip_delta",
    "delta_norm",
    "make_optimizer",
    "means_from_sums",
    "published_count",
    "published_counts",
    "weighted_mean",
]
