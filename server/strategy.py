"""PersonaFedAvg: Flower's FedAvg, aggregating into one adapter per persona plus a global adapter.

Clients reply with an adapter delta and the index of the persona adapter they trained. Deltas are
averaged per persona (a persona with fewer than ``min_clients`` contributors is not updated) and
over everyone for the global adapter, then applied by a server optimizer (FedAvg or FedAdam).
All arrays of the K+1 adapters travel in one ArrayRecord as ``'<adapter>/<tensor>'``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedpers.aggregation import ClientUpdate, aggregate_by_persona, make_optimizer
from fedpers.federated import FederatedConfig, pack_adapters, unpack_adapters
from fedpers.rundir import GLOBAL

Adapters = dict[str, dict[str, np.ndarray]]


def to_record(adapters: Adapters) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in pack_adapters(adapters).items()})


def from_record(record: ArrayRecord) -> Adapters:
    return unpack_adapters({k: v.numpy() for k, v in record.items()})


class PersonaFedAvg(FedAvg):
    """Per-persona federated averaging with a minimum-contributors gate (see module docstring)."""

    def __init__(self, config: FederatedConfig, run_id: str, num_nodes: int, trained: Iterable[str] = ()) -> None:
        super().__init__(
            fraction_train=config.fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=min(config.min_clients, num_nodes),
            min_evaluate_nodes=num_nodes,
            min_available_nodes=num_nodes,
        )
        self.config = config
        self.run_id = run_id
        self.personas = config.persona_names
        kwargs = {"server_lr": config.server_lr} if config.server_lr > 0 else {}
        self.optimizers = {name: make_optimizer(config.server_optimizer, **kwargs) for name in [*self.personas, GLOBAL]}
        self.trained: set[str] = set(trained)
        self.adapters: Adapters = {}
        self.train_history: list[dict] = []
        self.eval_history: list[dict] = []
        self._round_started = 0.0

    def _config(self, server_round: int, base: ConfigRecord) -> ConfigRecord:
        record = ConfigRecord({**base, **self.config.to_record()})
        record["run-id"] = self.run_id
        record["trained-personas"] = ",".join(p for p in self.personas if p in self.trained)
        record["final"] = server_round == self.config.rounds
        return record

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.adapters = from_record(arrays)
        self._round_started = time.perf_counter()
        return super().configure_train(server_round, arrays, self._config(server_round, config), grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, failed = self._check_and_log_replies(replies, is_train=True)
        updates, epsilons, losses = [], [], {}
        for msg in valid:
            m = msg.content["metrics"]
            index = int(m["persona-index"])
            persona = self.personas[index] if index >= 0 else GLOBAL
            delta = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            updates.append(ClientUpdate(persona=persona, delta=delta, num_examples=int(m["num-examples"])))
            epsilons.append(float(m["epsilon"]))
            losses.setdefault(persona, []).append(float(m["train-loss"]))
        record = {"round": server_round, "participants": len(valid), "failures": len(failed), "released": []}
        if updates:
            agg = aggregate_by_persona(updates, [*self.personas, GLOBAL], self.config.min_clients)
            for persona in self.personas:
                delta = agg.persona_deltas.get(persona)
                if delta is not None:
                    self.adapters[persona] = self.optimizers[persona].step(self.adapters[persona], delta)
                    self.trained.add(persona)
                    record["released"].append(persona)
            if agg.global_delta is not None:
                self.adapters[GLOBAL] = self.optimizers[GLOBAL].step(self.adapters[GLOBAL], agg.global_delta)
            record["contributors"] = {p: c for p, c in agg.contributors.items() if c}
            record["gated"] = [p for p in agg.gated if p != GLOBAL]
        record["train_loss"] = {p: float(np.mean(v)) for p, v in losses.items()}
        record["epsilon_per_client"] = epsilons if self.config.dp else []
        record["train_seconds"] = time.perf_counter() - self._round_started
        self.train_history.append(record)
        privacy = f"max client epsilon {max(epsilons):.2f}" if self.config.dp and epsilons else "no DP: epsilon unbounded"
        log(INFO, "round %d: %d clients trained (%d failed); updated %s; %s",
            server_round, len(valid), len(failed), ", ".join(record["released"]) or "no persona", privacy)
        summary = MetricRecord({"participants": len(valid), "max-epsilon": max(epsilons, default=0.0)})
        return to_record(self.adapters), summary

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays, self._config(server_round, config), grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid, failed = self._check_and_log_replies(replies, is_train=False, validate=False)
        sums: dict[str, dict[str, float]] = {}
        tokens: dict[str, int] = {}
        users: dict[str, int] = {}
        for msg in valid:
            m = msg.content["metrics"]
            index = int(m["persona-index"])
            persona = self.personas[index] if index >= 0 else GLOBAL
            tokens[persona] = tokens.get(persona, 0) + int(m["tokens"])
            users[persona] = users.get(persona, 0) + 1
            for key, value in m.items():
                if key.startswith("loss-sum-"):
                    bucket = sums.setdefault(persona, {})
                    bucket[key.removeprefix("loss-sum-")] = bucket.get(key.removeprefix("loss-sum-"), 0.0) + float(value)
        losses = {p: {k: v / max(tokens[p], 1) for k, v in s.items()} for p, s in sums.items()}
        self.eval_history.append({"round": server_round, "heldout_loss": losses, "users": users, "tokens": tokens,
                                  "failures": len(failed), "round_seconds": time.perf_counter() - self._round_started})
        flat = {f"{p}-{k}": v for p, d in losses.items() for k, v in d.items()}
        log(INFO, "round %d held-out loss (persona adapter / global): %s", server_round,
            "; ".join(f"{p} {d.get('persona', float('nan')):.3f}/{d.get('global', float('nan')):.3f}" for p, d in losses.items()))
        return MetricRecord(flat) if flat else None
