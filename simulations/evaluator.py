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
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clients.state import UserState
from fedpers.adapters import GLOBAL, Adapters
from fedpers.aggregation import published_count
from fedpers.data.select import Selection
from fedpers.evaluation import evaluate
from fedpers.federated import FederatedConfig
from fedpers.models import load_adapter_arrays
from fedpers.models.environment import ModelEnvironment, model_environment
from fedpers.models.user_embedding import UserEmbedding
from fedpers.personas.assignment import assign_persona
from fedpers.progress import Stage
from fedpers.userdata import attach_trunk, conversations, user_data

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
                model.user_embedding.embedding.weight.copy_(UserEmbedding.from_bytes(embedding)[0])
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


COVERAGE_REASONS = {
    "missing": "no user of the data declares it: no persona adapter was trained",
    "below_gate": "fewer than min_clients={gate} users (none, or too few, in the data chosen): no persona "
    "adapter was trained, the published one is where it started",
    "not_released": "no round had min_clients={gate} of its users contributing: its adapter was never updated",
    "not_scored": "fewer than min_clients={gate} of its users hold held-out conversations: not scored",
    "trained": "",
}
"""Why a declared persona has no (or no trained) row in the table, by status."""

SHORT_REASONS = {
    "missing": "no users: no persona adapter",
    "below_gate": "fewer than min_clients={gate} users: no persona adapter",
    "not_released": "never reached min_clients={gate} contributors in a round",
    "not_scored": "fewer than min_clients={gate} users with held-out data: not scored",
    "trained": "",
}
"""The same, as the table's row says it."""


def _declared_counts(config: FederatedConfig, selection: Selection | None) -> dict[str, int] | None:
    """Users per declared persona that the run's devices train under (``None`` for inferred personas)."""
    if config.dataset.persona_mode != "declared":
        return None
    if selection is not None and selection.personas:
        return selection.counts()
    first: dict[str, str | None] = {}
    for conv in conversations(config):
        first.setdefault(conv.user_id, conv.persona)
    counts = dict.fromkeys(config.persona_names, 0)
    for persona in first.values():
        if persona in counts:
            counts[persona] += 1
    return counts


def persona_coverage(config: FederatedConfig, metrics: dict, selection: Selection | None) -> dict:
    """Every declared persona's fate in a finished run, and what the data choice left out.

    A persona's status: ``below_gate`` (fewer than ``min_clients`` users chosen, so no round can update
    its adapter; ``missing`` instead when the gate is 1 and it has none), ``not_released`` (enough users, but no
    round released its aggregate), ``not_scored`` (trained, but too few users with held-out conversations
    for the evaluator's table), else ``trained``. User counts are published as the gate allows
    (:func:`fedpers.aggregation.published_count`): a persona with no user and one with a single user read
    alike, and ``imbalanced`` compares the published counts, so that it tells them apart neither."""
    gate = config.server.min_clients
    declared = config.persona_names
    counts = _declared_counts(config, selection)
    released = {p for r in metrics.get("rounds", []) for p in r.get("released", [])}
    evaluation = metrics.get("evaluation")
    scored = set((evaluation or {}).get("rows", {})) - {GLOBAL}
    rows: dict[str, dict] = {}
    for p in declared:
        n = None if counts is None else counts.get(p, 0)
        if n is not None and n < gate:
            status = "missing" if n == 0 and gate <= 1 else "below_gate"
        elif p not in released:
            status = "not_released"
        elif evaluation is not None and p not in scored:
            status = "not_scored"
        else:
            status = "trained"
        row: dict = {"status": status, "reason": COVERAGE_REASONS[status].format(gate=gate)}
        if n is not None:
            row["users"] = published_count(n, gate)
        rows[p] = row
    shown = {p: str(r["users"]) for p, r in rows.items() if "users" in r}
    imbalanced = len(set(shown.values())) > 1
    notes = []
    if imbalanced:
        wanted = (
            f" (users_per_persona {selection.users_per_persona})"
            if selection is not None and selection.personas and selection.users_per_persona
            else ""
        )
        notes.append(
            "users per persona differ: " + ", ".join(f"{p} {n}" for p, n in shown.items()) + wanted
        )
    notes += [f"{p}: {r['reason']}" for p, r in rows.items() if r["status"] != "trained"]
    if selection is not None:
        notes += selection_notes(selection)
    return {
        "declared": len(declared),
        "scored": len(scored & set(declared)),
        "min_clients": gate,
        "personas": rows,
        "imbalanced": imbalanced,
        "notes": notes,
    }


def selection_notes(selection: Selection) -> list[str]:
    """What the choice of users and conversations left out of the file (:mod:`fedpers.data.select`)."""
    notes = []
    if selection.unlisted:
        listed = ", ".join(f"{p} {n}" for p, n in selection.unlisted.items())
        notes.append(f"users of personas not among the run's personas, left out: {listed}")
    if selection.unlabelled:
        notes.append(f"{selection.unlabelled} user(s) declaring no persona left out")
    if selection.conflicting:
        notes.append(
            f"{selection.conflicting} conversation(s) left out: they declare another persona than their "
            "user's first conversation"
        )
    if selection.capped:
        notes.append(
            f"max_users {selection.max_users} capped the users chosen (taken round-robin over the personas)"
        )
    return notes


_WINS = re.compile(r"^(persona adapter below global adapter for \d+ of \d+) personas$")


def amend_table(text: str, coverage: dict) -> str:
    """The server's table (:func:`server.outputs.format_table`) with a row for every declared persona it lacks,
    saying why, the count of declared personas, and the coverage notes; unchanged when there is nothing to
    say."""
    if not coverage["notes"] and coverage["scored"] == coverage["declared"]:
        return text
    lines = text.splitlines()
    shown = {line.split(" ", 1)[0] for line in lines}
    extra = [
        f"{p:<18}{str(row.get('users', '—')):>6}  — "
        + SHORT_REASONS[row["status"]].format(gate=coverage["min_clients"])
        for p, row in coverage["personas"].items()
        if p not in shown
    ]
    mean = next((i for i, line in enumerate(lines) if line.startswith("mean ")), len(lines))
    lines[mean:mean] = extra
    missing = [p for p in coverage["personas"] if p not in shown]
    for i, line in enumerate(lines):
        match = _WINS.match(line)
        if match and coverage["scored"] != coverage["declared"]:
            lines[i] = (
                f"{match.group(1)} scored personas ({coverage['declared']} declared; "
                f"not scored: {', '.join(missing)})"
            )
    if coverage["notes"]:
        lines += ["data and personas:", *(f"  - {note}" for note in coverage["notes"])]
    return "\n".join(lines)
