"""The pure math of a federated round: upload slots, per-persona means with a gate, server optimizers, SecAgg+ arithmetic."""

from fedpers.aggregation.optimizers import (
    FedAdamOptimizer,
    FedAvgOptimizer,
    ServerOptimizer,
    make_optimizer,
)
from fedpers.aggregation.persona import (
    PersonaAggregate,
    means_from_sums,
    published_count,
    published_counts,
)
from fedpers.aggregation.updates import Arrays, clip_delta, delta_norm

__all__ = [
    "Arrays",
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
]
