"""The experimenter's held-out evaluation of a simulation, outside the federated protocol.

In a simulation the experimenter made (or imported) every user's data, held-out split included, so
the headline table is computed here, in the process that drives the simulation, from each user's
held-out conversations and the adapters the server holds after the round. No client message
carries any of it: devices send only their training uploads, and a deployment has no such table
(an upload of held-out loss sums would be a release of the user's data that no ledger covers).

For each user :math:`u` with persona :math:`p(u)` (declared, or the choice its simulated device
made privately for this run; the global adapter before any), the evaluator sums, per persona row
:math:`p`, the assistant-token losses :math:`L_u(\\theta)` and token counts :math:`T_u` of the
held-out conversations under each adapter :math:`\\theta`:
global, persona, and in the final round the base model (LoRA delta 0) and the persona adapter
with the user's own embedding (read from the simulated device's state). A row's loss is
:math:`\\sum_{u: p(u)=p} L_u(\\theta) / \\sum_{u: p(u)=p} T_u`, the token-weighted mean. Like every output of a
run, the record shows no persona with fewer than ``min_clients`` users: its user count reads ``"<min_clients"``
and it has no loss row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from clients.state import UserState
from fedpers.adapters import GLOBAL, Adapters
from fedpers.aggregation import published_count
from fedpers.evaluation import evaluate
from fedpers.federated import FederatedConfig
from fedpers.models import load_adapter_arrays
from fedpers.models.environment import ModelEnvironment, model_environment
from fedpers.personas.assignment import assign_persona
from fedpers.progress import Stage
from fedpers.userdata import attach_trunk, user_data

BASE = "base model"  # not an adapter name: the zero adapter
SOURCE = "the experimenter's evaluator in the simulation driver, outside the federated protocol (no device sent these figures)"


@dataclass
class SimulationEvaluator:
    """``evaluator(round, adapters, trained, run_id, final, progress)`` for :func:`server.app.run_server` in a
    simulation."""

    config: FederatedConfig
    users: list[str]
    source: str = SOURCE

    def persona(self, user_id: str, declared: str | None, trained: set[str], run_id: str) -> str:
        """The adapter the user's device trains this run, by the devices' rule (:func:`fedpers.personas.assign_persona`):
        declared, else its private choice (read from the simulated device's state) once adapters are trained,
        else global."""
        chosen = None
        if declared is None and trained:
            chosen = UserState(self.config.outputs.state_dir, user_id).persona_choice(run_id)

        def score(p: str) -> float:  # the device's recorded choice scores best
            return 0.0 if p == chosen else math.inf

        return assign_persona(declared, self.config.persona_names, score, trained).persona

    def _losses(
        self,
        env: ModelEnvironment,
        arrays: dict[str, np.ndarray],
        heldout,
        embedding: bytes | None = None,
    ):
        model = env.model
        load_adapter_arrays(model.lm, arrays)
        model.use_user_embedding = embedding is not None
        if embedding is not None:
            with torch.no_grad():
                model.user_embedding.embedding.weight.copy_(load_tensors(embedding)["embedding"])
        try:
            result = evaluate(model, heldout, env.pad_token_id)
        finally:
            model.use_user_embedding = False
        return result.loss * result.tokens, float(result.tokens)

    def __call__(
        self,
        server_round: int,
        adapters: Adapters,
        trained: set[str],
        run_id: str,
        final: bool,
        progress: Stage | None = None,
    ) -> dict:
        """``progress``, when given, counts the users evaluated."""
        started = time.perf_counter()
        if progress is not None:
            progress.step("scoring held-out conversations", len(self.users), "users", whole=True)
        env = model_environment(self.config)
        rows: dict[str, dict[str, list[float]]] = {}  # persona -> variant -> [loss sum, tokens]
        base = {
            k: np.zeros_like(v) for k, v in adapters[GLOBAL].items()
        }  # LoRA B = 0: the base model
        users: dict[str, int] = {}
        for user_id in _counted(self.users, progress):
            state = UserState(self.config.outputs.state_dir, user_id)
            data = attach_trunk(user_data(self.config, user_id, env), env, state)
            if not data.heldout:
                continue
            persona = self.persona(user_id, data.declared_persona, trained, run_id)
            # variant -> (adapter, user embedding); the same pair is evaluated once (persona == global at cold start)
            variants: dict[str, tuple[str, bytes | None]] = {
                "global": (GLOBAL, None),
                "persona": (persona, None),
            }
            if final:
                variants["base"] = (BASE, None)
                embedding = state.embedding()
                if embedding is not None:
                    variants["persona-embedding"] = (persona, embedding)
            users[persona] = users.get(persona, 0) + 1
            row = rows.setdefault(persona, {})
            done: dict[tuple[str, bytes | None], tuple[float, float]] = {}
            for name, (adapter, embedding) in variants.items():
                if (adapter, embedding) not in done:
                    arrays = base if adapter == BASE else adapters[adapter]
                    done[adapter, embedding] = self._losses(env, arrays, data.heldout, embedding)
                loss_sum, tokens = done[adapter, embedding]
                total = row.setdefault(name, [0.0, 0.0])
                total[0], total[1] = total[0] + loss_sum, total[1] + tokens
        gate = self.config.server.min_clients
        shown = {
            p: row for p, row in rows.items() if users[p] >= gate
        }  # the outputs show no persona below the gate
        losses = {
            p: {name: s / max(t, 1.0) for name, (s, t) in row.items()} for p, row in shown.items()
        }
        counts = {p: 0 for p in self.config.persona_names} | users
        return {
            "round": server_round,
            "heldout_loss": losses,
            "users": {p: published_count(n, gate) for p, n in counts.items()},
            "tokens": {p: int(row["global"][1]) for p, row in shown.items()},
            "evaluate_seconds": time.perf_counter() - started,
        }


def _counted(users: list[str], progress: Stage | None) -> Iterator[str]:
    """``users``, each counted done when the loop moves past it."""
    for user in users:
        yield user
        if progress is not None:
            progress.advance()
