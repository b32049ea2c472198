"""Server optimizers (Reddi et al., 2020, "Adaptive Federated Optimization"), one instance per adapter.

The pseudo-gradient of a round is the aggregated mean delta. ``FedAvgOptimizer`` adds it (times
``server_lr``); ``FedAdamOptimizer`` follows Flower's ``FedAdam`` exactly, including its
bias-corrected step size. State is float64 and can be saved and restored as named arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from fedpers.aggregation.updates import Arrays, check_compatible


@runtime_checkable
class ServerOptimizer(Protocol):
    """Applies a round's mean delta to an adapter; never mutates its inputs."""

    def step(
        self, params: Mapping[str, np.ndarray], mean_delta: Mapping[str, np.ndarray]
    ) -> Arrays: ...


def _as_dtype_of(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    return value.astype(np.asarray(like).dtype, copy=False)


class FedAvgOptimizer:
    """``params + server_lr * mean_delta`` (``server_lr=1`` is FedAvg: the mean of the clients' adapters)."""

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def step(
        self, params: Mapping[str, np.ndarray], mean_delta: Mapping[str, np.ndarray]
    ) -> Arrays:
        check_compatible(params, mean_delta, what="mean delta")
        return {
            k: _as_dtype_of(
                np.asarray(x, np.float64) + self.server_lr * np.asarray(mean_delta[k], np.float64),
                x,
            )
            for k, x in params.items()
        }


class FedAdamOptimizer:
    """FedAdam as in Flower's ``FedAdam.aggregate_train``, with ``delta_t`` the mean client delta::

        m_t = beta_1 m_{t-1} + (1 - beta_1) delta_t
        v_t = beta_2 v_{t-1} + (1 - beta_2) delta_t^2
        eta_t = server_lr sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))
        x_t = x_{t-1} + eta_t m_t / (sqrt(v_t) + tau)

    ``t`` counts this optimizer's steps from 1 (Flower's ``server_round`` when the adapter is updated
    every round; its bias correction uses the exponent ``t + 1``, kept here to match). The default
    ``server_lr=1e-2`` moves each LoRA weight by about 0.01 per round at most (Adam's steps are
    sign-like), a fraction of LoRA A's initial scale of ``1/sqrt(hidden_size)`` (0.04 for SmolLM2);
    ``tau`` damps coordinates whose deltas are far below it.
    """

    def __init__(
        self, server_lr: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if not (0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {beta_1}, {beta_2}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.server_lr, self.beta_1, self.beta_2, self.tau = server_lr, beta_1, beta_2, tau
        self.t = 0
        self.m_t: Arrays = {}
        self.v_t: Arrays = {}

    def step(
        self, params: Mapping[str, np.ndarray], mean_delta: Mapping[str, np.ndarray]
    ) -> Arrays:
        check_compatible(params, mean_delta, what="mean delta")
        if self.m_t:
            check_compatible(self.m_t, params, what="params (against the optimizer state)")
        delta = {k: np.asarray(d, np.float64) for k, d in mean_delta.items()}
        m_prev = self.m_t or {k: np.zeros_like(d) for k, d in delta.items()}
        v_prev = self.v_t or {k: np.zeros_like(d) for k, d in delta.items()}
        self.t += 1
        self.m_t = {k: self.beta_1 * m_prev[k] + (1 - self.beta_1) * d for k, d in delta.items()}
        self.v_t = {k: self.beta_2 * v_prev[k] + (1 - self.beta_2) * d**2 for k, d in delta.items()}
        eta_norm = (
            self.server_lr
            * np.sqrt(1 - self.beta_2 ** (self.t + 1.0))
            / (1 - self.beta_1 ** (self.t + 1.0))
        )
        return {
            k: _as_dtype_of(
                np.asarray(x, np.float64)
                + eta_norm * self.m_t[k] / (np.sqrt(self.v_t[k]) + self.tau),
                x,
            )
            for k, x in params.items()
        }


OPTIMIZERS = {"fedavg": FedAvgOptimizer, "fedadam": FedAdamOptimizer}


def make_optimizer(name: str, **kwargs: float) -> ServerOptimizer:
    """A fresh server optimizer: ``fedavg`` or ``fedadam`` (keyword arguments go to its constructor)."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown server optimizer {name!r}: expected one of {sorted(OPTIMIZERS)}"
        ) from None
    return cls(**kwargs)
