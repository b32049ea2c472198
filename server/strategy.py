"""Strategies of a fedpers round (Flower's legacy ``Strategy`` API, which drives SecAgg+).

A round is one aggregation of sums of slot vectors (:mod:`fedpers.aggregation.slots`):
:class:`PersonaTraining` has clients train and upload their clipped adapter delta in the slot of
their persona. The sum gives per-persona sums and counts; each persona adapter (with at least
``min_clients`` contributors) and the global adapter take a server-optimizer step on the mean.
Devices send nothing else: held-out evaluation is not part of the protocol (an upload of held-out
loss sums would be a release of the user's data that no ledger covers).

Under secure aggregation every ``FitRes`` the strategy receives carries the same unmasked mean of
the uploads (Flower's SecAgg+ design); in plain mode each carries one client's upload. Either way
:func:`upload_sum` gives the sum. With user-level DP, :class:`PersonaTraining` is wrapped in Flower's
``DifferentialPrivacyClientSideFixedClipping``, which adds Gaussian noise to what ``aggregate_fit``
returns; the strategy therefore returns the round's sums (scaled by ``1 / num_sampled``, the
wrapper's convention) and applies them in :meth:`PersonaTraining.absorb`.

Adapters travel to clients as safetensors bytes in the config (``adapters``); ``FitIns.parameters``
is the all-zero upload, the reference Flower's ``fixedclipping_mod`` subtracts (empty when
user-level DP is off).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from logging import INFO

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedpers.aggregation import make_optimizer, means_from_sums, published_counts
from fedpers.aggregation.slots import SlotLayout
from fedpers.federated import FederatedConfig, adapters_to_bytes
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.privacy.user_level import upload_clip_norm, user_level_entry
from fedpers.rundir import GLOBAL

Adapters = dict[str, dict[str, np.ndarray]]
SINGLE_SLOT = "update"


def upload_sum(results: Sequence[tuple[ClientProxy, FitRes]], secure: bool) -> list[np.ndarray]:
    """The sum of the uploads behind ``results`` (secure: each carries the same unmasked mean)."""
    if secure:
        mean = parameters_to_ndarrays(results[0][1].parameters)
        return [np.asarray(a, dtype=np.float64) * len(results) for a in mean]
    total = None
    for _, res in results:
        arrays = [np.asarray(a, dtype=np.float64) for a in parameters_to_ndarrays(res.parameters)]
        total = arrays if total is None else [t + a for t, a in zip(total, arrays, strict=True)]
    return total or []


class FitOnly(Strategy):
    """A legacy strategy whose every aggregation is a ``fit`` (SecAgg+ secures only those): no
    centralized evaluation and no Flower ``evaluate`` round."""

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters([])

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _Rounds(FitOnly):
    """Sampling and the round instructions."""

    task = "train"

    def __init__(self, config: FederatedConfig, run_id: str, num_nodes: int, secure: bool, slots: Sequence[str]) -> None:
        super().__init__()
        self.config, self.run_id, self.num_nodes, self.secure = config, run_id, num_nodes, secure
        self.slots = tuple(slots)
        self.group: tuple[str, set[int]] | None = None  # (persona, node ids) when personas travel in clear

    @property
    def num_sampled(self) -> int:
        return max(min(self.config.min_clients, self.num_nodes), round(self.config.fraction_train * self.num_nodes))

    def reference(self) -> list[np.ndarray]:
        return []

    def start_round(self) -> None:
        """Start the clock of this round's aggregation (its wall time goes into the history)."""
        self._started = time.perf_counter()

    def current(self) -> tuple[Adapters, set[str]]:
        """The adapters clients receive, and the personas trained so far."""
        raise NotImplementedError

    def instructions(self, server_round: int) -> dict:
        adapters, trained = self.current()
        record = dict(self.config.to_record())
        record |= {"run-id": self.run_id, "server-round": server_round, "task": self.task,
                   "trained-personas": ",".join(p for p in self.config.persona_names if p in trained),
                   "final": server_round >= self.config.rounds, "slots": ",".join(self.slots),
                   "adapters": adapters_to_bytes(adapters)}
        return record

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        if self.group is not None:
            clients = [c for c in client_manager.all().values() if c.node_id in self.group[1]]
        else:
            clients = client_manager.sample(num_clients=self.num_sampled, min_num_clients=self.num_sampled)
        fit_ins = FitIns(ndarrays_to_parameters(self.reference()), self.instructions(server_round))
        return [(client, fit_ins) for client in clients]

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.reference())


class PersonaTraining(_Rounds):
    """Per-persona training rounds on summed slot vectors (see the module docstring)."""

    def __init__(self, config: FederatedConfig, run_id: str, num_nodes: int, secure: bool, adapters: Adapters,
                 trained: Sequence[str], user_dp_ledgers: dict[str, PrivacyLedger] | None = None) -> None:
        slots = (GLOBAL, *config.persona_names) if config.persona_hiding else (SINGLE_SLOT,)
        super().__init__(config, run_id, num_nodes, secure, slots)
        self.adapters = adapters
        self.trained = set(trained)
        self.layout = SlotLayout.for_adapter(adapters[GLOBAL], slots)
        kwargs = {"server_lr": config.server_lr} if config.server_lr > 0 else {}
        self.optimizers = {name: make_optimizer(config.server_optimizer, **kwargs) for name in [*config.persona_names, GLOBAL]}
        self.ledgers = user_dp_ledgers or {}
        self.history: list[dict] = []
        self._pending: dict | None = None
        self._group_sums: dict[str, tuple[dict, float]] = {}
        self._started = 0.0

    @property
    def count_value(self) -> float:
        return self.config.update_clip

    def current(self) -> tuple[Adapters, set[str]]:
        return self.adapters, self.trained

    def reference(self) -> list[np.ndarray]:
        return self.layout.zeros() if self.config.user_dp else []

    def instructions(self, server_round: int) -> dict:
        return super().instructions(server_round) | {"count-value": self.count_value}

    def configure_fit(self, server_round, parameters, client_manager):
        if self.group is None:
            self.start_round()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list) -> tuple[Parameters | None, dict]:
        if not results:
            log(INFO, "round %d: no uploads to aggregate", server_round)
            return None, {}
        total = upload_sum(results, self.secure)
        self._pending = {"round": server_round, "participants": len(results), "failures": len(failures)}
        if self.group is not None:  # personas in clear: one single-slot aggregation per persona group
            self._pending["group"] = self.group[0]
        elif not self.secure and not self.config.persona_hiding:  # plain, personas in clear: group here
            self._pending["by_persona"] = {}
            for _, res in results:
                persona = self.persona(int(res.metrics["persona-index"]))
                arrays = [np.asarray(a, dtype=np.float64) for a in parameters_to_ndarrays(res.parameters)]
                old = self._pending["by_persona"].get(persona)
                self._pending["by_persona"][persona] = arrays if old is None else [o + a for o, a in zip(old, arrays)]
        scale = 1.0 / self.num_sampled if self.config.user_dp else 1.0
        return ndarrays_to_parameters([(a * scale).astype(np.float64) for a in total]), {"participants": len(results)}

    def persona(self, index: int) -> str:
        return self.config.persona_names[index] if index >= 0 else GLOBAL

    def absorb(self, parameters: Parameters) -> None:
        """Apply a round's (noised, under user-level DP) sums: per-persona means, gate, optimizer steps."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        scale = self.num_sampled if self.config.user_dp else 1.0
        arrays = [np.asarray(a, dtype=np.float64) * scale for a in parameters_to_ndarrays(parameters)]
        if "by_persona" in pending:
            sums, counts = {}, {}
            for persona, group in pending.pop("by_persona").items():
                s, c = self.layout.unpack(group, self.count_value)
                sums[persona], counts[persona] = s[SINGLE_SLOT], c[SINGLE_SLOT]
        else:
            sums, counts = self.layout.unpack(arrays, self.count_value)
            if "group" in pending:
                self._group_sums[pending["group"]] = (sums[SINGLE_SLOT], counts[SINGLE_SLOT])
                return
        self._step(pending, sums, counts)

    def finish_groups(self, server_round: int, participants: int, failures: int) -> None:
        """After one single-slot aggregation per persona group: step every persona adapter."""
        sums = {p: s for p, (s, _) in self._group_sums.items()}
        counts = {p: c for p, (_, c) in self._group_sums.items()}
        self._group_sums = {}
        self._step({"round": server_round, "participants": participants, "failures": failures}, sums, counts)

    def _step(self, record: dict, sums: dict[str, dict], counts: dict[str, float]) -> None:
        if not self.config.user_dp:  # exact up to quantization: whole clients
            counts = {k: float(round(v)) for k, v in counts.items()}
        if SINGLE_SLOT in sums:
            raise ValueError("single-slot sums must be grouped by persona before a step")
        agg = means_from_sums(sums, counts, self.config.persona_names, self.config.min_clients)
        for persona in agg.released:
            self.adapters[persona] = self.optimizers[persona].step(self.adapters[persona], agg.persona_deltas[persona])
            self.trained.add(persona)
        if agg.global_delta is not None:
            self.adapters[GLOBAL] = self.optimizers[GLOBAL].step(self.adapters[GLOBAL], agg.global_delta)
        record |= {"released": list(agg.released), "contributors": published_counts(agg.contributors, self.config.min_clients),
                   "train_seconds": time.perf_counter() - self._started}
        if self.config.user_dp:
            record["user_dp"] = self._account(record["round"])
        self.history.append(record)
        log(INFO, "round %d: %d clients aggregated%s; updated %s", record["round"], record["participants"],
            " securely" if self.secure else "", ", ".join(record["released"]) or "no persona")

    def _account(self, server_round: int) -> dict[str, float]:
        """The server's record of user-level DP per adapter: each round releases the summed uploads once
        through the Gaussian mechanism (:mod:`fedpers.privacy.user_level`); every adapter is computed from
        that release, gated or not, so every adapter's record is charged. A user's guarantee is the
        user-level ledger on the user's device, charged before the upload left and composed across runs."""
        spent = {}
        for name, ledger in self.ledgers.items():
            entry = ledger.record(user_level_entry(self.config.user_noise_multiplier, self.config.update_clip, round=server_round))
            ledger.complete(entry)
            spent[name] = ledger.spent().epsilon
        return spent


def user_clip_norm(config: FederatedConfig) -> float:
    """L2 bound of a whole upload (:func:`fedpers.privacy.user_level.upload_clip_norm`)."""
    return upload_clip_norm(config.update_clip)
