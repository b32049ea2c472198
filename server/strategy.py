"""Strategies of a fedpers round (Flower's legacy ``Strategy`` API, which drives SecAgg+).

:class:`PersonaTraining` samples clients, sends them the round's :class:`~fedpers.instructions.RoundInstructions`
(settings, slots, the adapters as safetensors bytes) and sums what arrives: clients train and upload
their clipped adapter delta in the slot of their persona (:mod:`fedpers.aggregation.slots`). Devices
send nothing else: held-out evaluation is not part of the protocol (an upload of held-out loss sums
would be a release of the user's data that no ledger covers). How the sums become per-slot sums and
counts depends on the aggregation mode (:mod:`server.rounds`); how they become adapters does not
(:func:`fedpers.aggregation.rounds.apply_round`).

Under secure aggregation every ``FitRes`` the strategy receives carries the same unmasked mean of
the uploads (Flower's SecAgg+ design); in plain mode each carries one client's upload. Either way
:func:`upload_sum` gives the sum. With user-level DP the devices add Skellam noise inside SecAgg+
(:mod:`fedpers.privacy.user_level`): the sum the strategy receives is already noised, and the server adds
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from logging import INFO

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedpers.adapters import GLOBAL
from fedpers.aggregation.rounds import PersonaAdapters
from fedpers.aggregation.slots import SlotLayout
from fedpers.federated import FederatedConfig
from fedpers.instructions import PERSONA_INDEX, RoundInstructions, persona_from_index, round_slots
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.privacy.user_level import DistributedNoise, upload_clip_norm, user_level_entry


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


@dataclass(frozen=True)
class Received:
    """What the last ``aggregate_fit`` received: how many uploads and failures, and (plain aggregation with
    personas in clear only) each persona's summed uploads, grouped by the index the clients sent."""

    participants: int
    failures: int
    by_persona: dict[str, list[np.ndarray]] | None = None


class PersonaTraining(FitOnly):
    """Sampling, the round instructions, and the sum of the uploads (see the module docstring)."""

    def __init__(
        self,
        config: FederatedConfig,
        run_id: str,
        num_nodes: int,
        secure: bool,
        state: PersonaAdapters,
    ) -> None:
        super().__init__()
        self.config, self.run_id, self.num_nodes, self.secure, self.state = (
            config,
            run_id,
            num_nodes,
            secure,
            state,
        )
        self.slots = round_slots(config)
        self.layout = SlotLayout.for_adapter(state.adapters[GLOBAL], self.slots)
        # the node ids of one persona group, when personas travel in clear
        self.group: set[int] | None = None
        self.received: Received | None = None
        # inferred personas chosen from the prompts: the public centroids every instruction carries
        self.centroids_blob = b""

    @property
    def num_sampled(self) -> int:
        return max(
            min(self.config.server.min_clients, self.num_nodes),
            round(self.config.server.fraction_train * self.num_nodes),
        )

    @property
    def count_value(self) -> float:
        """What a client adds to its slot's count: the update clip, so that counts share the SecAgg+ range."""
        return self.config.aggregation.update_clip

    def reference(self) -> list[np.ndarray]:
        """``FitIns.parameters``: nothing (the adapters travel in the instructions)."""
        return []

    def user_level_noise(self) -> DistributedNoise:
        """What every round of a user-level DP run adds on the devices (same computation as theirs)."""
        return DistributedNoise.for_settings(
            self.config.privacy.user_noise_multiplier,
            self.config.aggregation.update_clip,
            self.layout.upload_size,
        )

    def instructions(self, server_round: int, task: str = "train") -> RoundInstructions:
        return RoundInstructions.for_round(
            self.config,
            self.run_id,
            server_round,
            self.state.adapters,
            self.state.trained,
            task,
            self.count_value,
            self.centroids_blob,
        )

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.reference())

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        if self.group is not None:
            clients = [c for c in client_manager.all().values() if c.node_id in self.group]
        else:
            clients = client_manager.sample(
                num_clients=self.num_sampled, min_num_clients=self.num_sampled
            )
        fit_ins = FitIns(
            ndarrays_to_parameters(self.reference()), self.instructions(server_round).to_record()
        )
        return [(client, fit_ins) for client in clients]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list
    ) -> tuple[Parameters | None, dict]:
        """The sum of the uploads (noised on the devices under user-level DP); what arrived goes to ``received``."""
        if not results:
            log(INFO, "round %d: no uploads to aggregate", server_round)
            self.received = None
            return None, {}
        total = upload_sum(results, self.secure)
        by_persona = None
        # plain, personas in clear: group here
        if not self.secure and not self.config.aggregation.persona_hiding:
            by_persona = {}
            for _, res in results:
                persona = persona_from_index(
                    self.config.persona_names, int(res.metrics[PERSONA_INDEX])
                )
                arrays = [
                    np.asarray(a, dtype=np.float64) for a in parameters_to_ndarrays(res.parameters)
                ]
                old = by_persona.get(persona)
                by_persona[persona] = (
                    arrays if old is None else [o + a for o, a in zip(old, arrays, strict=True)]
                )
        self.received = Received(len(results), len(failures), by_persona)
        return ndarrays_to_parameters([a.astype(np.float64) for a in total]), {
            "participants": len(results)
        }

    def slot_sums(
        self, parameters: Parameters | list[np.ndarray]
    ) -> tuple[dict[str, dict], dict[str, float]]:
        """Per-slot sums and counts of a summed upload (what ``aggregate_fit`` returned, noised under user-level DP)."""
        arrays = parameters if isinstance(parameters, list) else parameters_to_ndarrays(parameters)
        return self.layout.unpack(
            [np.asarray(a, dtype=np.float64) for a in arrays], self.count_value
        )

    def account(self, ledgers: dict[str, PrivacyLedger], server_round: int) -> dict[str, float]:
        """The server's record of user-level DP per adapter: each round releases the summed uploads once
        with the devices' Skellam noise (:mod:`fedpers.privacy.user_level`); every adapter is computed from
        that release, gated or not, so every adapter's record is charged. A user's guarantee is the
        user-level ledger on the user's device, charged before the upload left and composed across runs."""
        spent = {}
        for name, ledger in ledgers.items():
            entry = ledger.record(user_level_entry(self.user_level_noise(), round=server_round))
            ledger.complete(entry)
            spent[name] = ledger.spent().epsilon
        return spent


class RouterCollection(FitOnly):
    """The router's session (task ``router``, once after the last round): every connected device is sent
    ``instructions``; what SecAgg+ unmasks (the dequantized mean of the noised uploads) and how many uploads are
    behind it go to ``received`` (:mod:`fedpers.personas.router_round`). Nothing becomes the workflow's
    parameters."""

    def __init__(self, instructions: RoundInstructions) -> None:
        super().__init__()
        self.instructions = instructions
        self.received: tuple[list[np.ndarray], int, int] | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        fit_ins = FitIns(ndarrays_to_parameters([]), self.instructions.to_record())
        return [(client, fit_ins) for client in client_manager.all().values()]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list
    ) -> tuple[Parameters | None, dict]:
        self.received = None
        if results:
            mean = parameters_to_ndarrays(results[0][1].parameters)
            self.received = (mean, len(results), len(failures))
        return None, {}


def persona_adapters(
    config: FederatedConfig, adapters: dict, trained: Sequence[str] = ()
) -> PersonaAdapters:
    """Round 0 of a run with these settings: ``adapters`` with the configured server optimizer and gate."""
    return PersonaAdapters.start(
        adapters,
        config.persona_names,
        config.server.min_clients,
        config.server.server_optimizer,
        config.server.server_lr,
        trained,
        frozen=() if config.model.lora_train_a else [k for k in adapters[GLOBAL] if "lora_A" in k],
    )


def user_clip_norm(config: FederatedConfig) -> float:
    """L2 bound of a whole upload (:func:`fedpers.privacy.user_level.upload_clip_norm`)."""
    return upload_clip_norm(config.aggregation.update_clip)
