"""How one round is collected, per aggregation mode: each ends in the same per-slot sums and counts.

A mode runs the round's aggregation session(s) through Flower's workflow API and returns a
:class:`~fedpers.aggregation.rounds.RoundSums` (or ``None`` when nothing arrived); the server then
applies it with :func:`fedpers.aggregation.rounds.apply_round`, whatever the mode.

- :class:`SlotRound` (persona hiding, SecAgg+ or plain): one aggregation of uploads with one slot
  per adapter; the summed vector (noised under user-level DP) unpacks into every slot's sum and count.
- :class:`PersonaGroupRounds` (SecAgg+, personas in clear): clients first tell their persona, then
  each persona group is aggregated in its own SecAgg+ session, single slot each.
- :class:`PlainInClearRound` (plain, personas in clear): one plain aggregation; the server groups the
  individual uploads by the persona each client sent.

A session is Flower's plain ``default_fit_workflow`` or :class:`server.secagg.SecAggPlusRound`:
``session(grid, context)`` drives the strategy's ``configure_fit`` / ``aggregate_fit`` and leaves the
aggregated parameters in the context, which :func:`aggregated` reads.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO
from typing import Protocol

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Parameters
from flwr.common.logger import log
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid

from fedpers.aggregation.rounds import RoundSums
from fedpers.instructions import PERSONA_INDEX, SINGLE_SLOT, persona_from_index
from server.strategy import PersonaTraining, Received

Session = Callable[[Grid, LegacyContext], None]


class RoundMode(Protocol):
    def collect(self, grid: Grid, context: LegacyContext, server_round: int) -> RoundSums | None:
        """Run the round's aggregation; its per-slot sums and counts, or ``None`` if no upload arrived."""
        ...


def aggregated(context: LegacyContext) -> Parameters:
    """The parameters the last session left in the workflow's context (what ``aggregate_fit`` returned)."""
    return compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
    )


class _OneSession:
    """A round of one aggregation session over every sampled client."""

    def __init__(self, training: PersonaTraining, session: Session) -> None:
        self.training, self.session = training, session

    def _run(self, grid: Grid, context: LegacyContext) -> Received | None:
        """Run the session; what its ``aggregate_fit`` received (``None``: nothing)."""
        self.training.received = None
        self.session(grid, context)
        return self.training.received


class SlotRound(_OneSession):
    """Persona hiding: one aggregation; every upload holds one slot per adapter."""

    def collect(self, grid: Grid, context: LegacyContext, server_round: int) -> RoundSums | None:
        received = self._run(grid, context)
        if received is None:
            return None
        sums, counts = self.training.slot_sums(aggregated(context))
        return RoundSums(server_round, sums, counts, received.participants, received.failures)


class PlainInClearRound(_OneSession):
    """Plain aggregation with personas in clear: the server sees each upload and groups them by persona."""

    def collect(self, grid: Grid, context: LegacyContext, server_round: int) -> RoundSums | None:
        received = self._run(grid, context)
        if received is None or received.by_persona is None:
            return None
        sums, counts = {}, {}
        for persona, group in received.by_persona.items():
            s, c = self.training.slot_sums(group)
            sums[persona], counts[persona] = s[SINGLE_SLOT], c[SINGLE_SLOT]
        return RoundSums(server_round, sums, counts, received.participants, received.failures)


class PersonaGroupRounds:
    """SecAgg+ with personas in clear: ask each client its persona once, then one session per persona group.

    A group below the minimum-clients gate is not aggregated (the log says no count below the gate,
    :func:`fedpers.aggregation.persona.published_count`)."""

    def __init__(self, training: PersonaTraining, session: Session) -> None:
        self.training, self.session = training, session
        self.personas: dict[int, str] = {}

    def _ask(self, grid: Grid, server_round: int) -> None:
        unknown = [n for n in grid.get_node_ids() if n not in self.personas]
        if not unknown:
            return
        instructions = self.training.instructions(server_round, task="persona")
        content = RecordDict({"config": ConfigRecord(instructions.to_record())})
        replies = grid.send_and_receive(
            [
                Message(
                    content=content,
                    dst_node_id=n,
                    message_type=MessageType.QUERY,
                    group_id=str(server_round),
                )
                for n in unknown
            ],
            timeout=self.training.config.aggregation.secagg_timeout,
        )
        for reply in replies:
            if not reply.has_error():
                index = int(reply.content["metrics"][PERSONA_INDEX])
                self.personas[reply.metadata.src_node_id] = persona_from_index(
                    self.training.config.persona_names, index
                )

    def collect(self, grid: Grid, context: LegacyContext, server_round: int) -> RoundSums | None:
        training = self.training
        self._ask(grid, server_round)
        count = training.num_sampled
        sampled = {c.node_id for c in context.client_manager.sample(count, count)}
        groups: dict[str, set[int]] = {}
        for node, persona in self.personas.items():
            if node in sampled:
                groups.setdefault(persona, set()).add(node)
        sums, counts, participants = {}, {}, 0
        smallest = max(2, training.config.server.min_clients)
        for persona, nodes in sorted(groups.items()):
            if len(nodes) < smallest:
                log(
                    INFO,
                    "round %d: %s has fewer than %d clients; not aggregated",
                    server_round,
                    persona,
                    smallest,
                )
                continue
            training.group, training.received = nodes, None
            try:
                self.session(grid, context)
                if training.received is not None:
                    s, c = training.slot_sums(aggregated(context))
                    sums[persona], counts[persona] = s[SINGLE_SLOT], c[SINGLE_SLOT]
            finally:
                training.group = None
            participants += len(nodes)
        return RoundSums(server_round, sums, counts, participants, 0)


def round_mode(training: PersonaTraining, session: Session) -> RoundMode:
    """The mode of these settings (see the module docstring)."""
    config = training.config
    if config.aggregation.persona_hiding:
        return SlotRound(training, session)
    if config.aggregation.secure_aggregation:
        return PersonaGroupRounds(training, session)
    return PlainInClearRound(training, session)
