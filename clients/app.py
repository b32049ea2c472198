"""The fedpers ClientApp: private local training, in Flower's legacy record layout.

Every aggregation is a ``TRAIN`` message (SecAgg+ handles only those), in the ``fitins``/``fitres``
layout that ``secaggplus_mod`` reads. The config's ``task`` says what to
upload: ``train`` (the clipped adapter delta in the slot of the client's persona), or, once per run after
the last round, ``router`` (the router's private statistics, :mod:`fedpers.personas.router_round`);
a ``QUERY`` with task ``persona`` asks for the persona in clear (only when persona hiding is off).
Devices answer no evaluation request: held-out figures never leave them. The computation is in :mod:`clients.tasks`.

On a device (node config ``store``) :func:`consent_mod` refuses every message, before SecAgg+ sees
it, unless the user opted in; training past the consented budget is refused too. A refusal is
logged in full on the device and sent back as an error reply that gives the reason without the
user id or epsilon figures.

On a device that runs the worker (:mod:`clients.worker`, started by ``fedpers-client join``) the
``train`` and ``persona`` answers are computed there, where the model stays loaded between
messages; the ClientApp sends it the message's instructions and node config over a local socket
and computes in its own process when no worker answers (the simulation engine, ``join --no-worker``).

This module imports only Flower and the store: under the deployment engine a ``flwr-clientapp``
process starts for every message, and most SecAgg+ stages never reach the model (nor does any
stage, on a device with a worker).
"""

from __future__ import annotations

import time
from logging import ERROR, WARNING

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

import clients.worker_protocol as protocol
from clients.consent import NOT_OPTED_IN, OVER_BUDGET, ParticipationRefused, read_consent
from clients.secagg import CLIENT_MODS
from clients.state import Upload
from clients.timings import TIMINGS, timing_mod
from clients.unlock import open_from_env
from clients.worker_protocol import Request, Response, VersionMismatch, exchange, socket_path
from fedpers.instructions import PERSONA_INDEX, RoundInstructions, instructed_task
from fedpers.privacy.user_level import USER_LEVEL_PURPOSE
from fedpers.releases import (
    ROUTER_STATS_PURPOSE,
    fields_of,
    required_ledger,
    undeclared_fields,
)


class UnaccountedRelease(RuntimeError):
    """A reply would carry a field outside the release manifest, or a DP field whose ledger entry is missing."""


def _instructions_record(msg: Message) -> dict:
    """The instructions record a ``TRAIN`` (``fitins`` layout) or ``QUERY`` message carries."""
    if msg.metadata.message_type == MessageType.QUERY:
        return dict(msg.content["config"])
    return dict(compat.recorddict_to_fitins(msg.content, keep_input=True).config)


def _instructions(msg: Message) -> RoundInstructions:
    """The round instructions a ``TRAIN`` (``fitins`` layout) or ``QUERY`` message carries."""
    return RoundInstructions.from_record(_instructions_record(msg))


def _refusing(fn):
    """``fn(task)``, with a budget refusal raised again as :class:`ParticipationRefused`."""
    from fedpers.privacy.accounting import BudgetExceededError

    def run(task):
        try:
            return fn(task)
        except BudgetExceededError as err:
            raise ParticipationRefused(
                OVER_BUDGET, f"user {task.state.user_id}: refused to train: {err}"
            ) from err

    return run


def _timed(timings: dict | None, name: str, fn, *args):
    started = time.perf_counter()
    try:
        return fn(*args)
    finally:
        if timings is not None:
            timings[name] = time.perf_counter() - started


def compute_train(
    instructions: RoundInstructions, node_config: dict, timings: dict | None = None
) -> Upload:
    """This client's upload for a ``train`` task, computed in this process (the ClientApp's, or the
    device worker's: :mod:`clients.worker`). Refusals raise :class:`ParticipationRefused`."""
    from clients.tasks import answer, prepare

    task = _timed(timings, "prepare", prepare, instructions, node_config)
    return _timed(timings, "answer", _refusing(answer), task)


def compute_persona(
    instructions: RoundInstructions, node_config: dict, timings: dict | None = None
) -> int:
    """The client's persona index, in clear, computed in this process (see :func:`compute_train`)."""
    from clients.tasks import assignment, prepare

    task = _timed(timings, "prepare", prepare, instructions, node_config)
    if task.config.aggregation.persona_hiding:
        raise PermissionError("this run hides personas: the persona is not sent in clear")
    choice = _timed(timings, "answer", _refusing(assignment), task)
    return task.instructions.persona_index(choice.persona)


class WorkerFailed(RuntimeError):
    """The device worker could not compute the answer (its error, by type and message)."""


_RAISED_AGAIN = {"ValueError": ValueError, "PermissionError": PermissionError}


def _from_worker(op: str, msg: Message, context: Context) -> Response | None:
    """The device worker's response to ``op`` on ``msg``; ``None`` when no worker serves this node."""
    store = context.node_config.get("store")
    if not store:
        return None
    request = Request(op, _instructions_record(msg), dict(context.node_config))
    try:
        response = exchange(socket_path(str(store)), request)
    except VersionMismatch as err:
        log(WARNING, "fedpers: the device worker speaks another protocol (%s); computing here", err)
        return None
    if response is None:
        return None
    if response.status == protocol.REFUSED:
        raise ParticipationRefused(response.reason, response.detail)
    if response.status == protocol.ERROR:
        error = _RAISED_AGAIN.get(response.error_type)
        if error is not None:
            raise error(response.detail)
        raise WorkerFailed(f"{response.error_type}: {response.detail}")
    return response


def _local_train(instructions: RoundInstructions, node_config: dict, timings: dict) -> Response:
    arrays, metrics = compute_train(instructions, node_config, timings)
    return Response(protocol.OK, list(arrays), dict(metrics))


def _local_persona(instructions: RoundInstructions, node_config: dict, timings: dict) -> Response:
    index = compute_persona(instructions, node_config, timings)
    return Response(protocol.OK, metrics={PERSONA_INDEX: index})


def _answer(op: str, msg: Message, context: Context) -> Response:
    """The device worker's answer to ``op``, else this process's; a refusal is logged in full here,
    as the device's record, and raised again."""
    timings = TIMINGS["handler"] = {}
    started = time.perf_counter()
    try:
        response = _from_worker(op, msg, context)
        if response is not None:
            timings.update({f"worker_{k}": v for k, v in response.timings.items()})
            timings["worker"] = time.perf_counter() - started
            return response
        local = _local_train if op == "train" else _local_persona
        return local(_instructions(msg), dict(context.node_config), timings)
    except ParticipationRefused as err:
        log(ERROR, "fedpers: %s", err.detail)
        raise


def train(msg: Message, context: Context) -> Message:
    """Reply to a ``TRAIN`` message with this client's upload for the task in its config."""
    answered = _answer("train", msg, context)
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(answered.arrays), 1, answered.metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def persona(msg: Message, context: Context) -> Message:
    """The client's persona index, in clear (aggregation without persona hiding)."""
    index = _answer("persona", msg, context).metrics[PERSONA_INDEX]
    return Message(RecordDict({"metrics": MetricRecord({PERSONA_INDEX: index})}), reply_to=msg)


def consent_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """On a device (node config ``store``): refuse any message unless the user opted in."""
    directory = context.node_config.get("store")
    if directory:
        store = open_from_env(str(directory))
        if not read_consent(store).opted_in:
            err = ParticipationRefused(
                NOT_OPTED_IN,
                f"the user of store {directory} has not opted in to federated "
                "training; nothing was used (`fedpers-client consent --opt-in` to take part)",
            )
            log(ERROR, "fedpers: %s", err.detail)
            raise err
    return call_next(msg, context)


def _ledger_has(state, purpose: str, run_id: str, server_round: int) -> bool:
    user_level = purpose in (USER_LEVEL_PURPOSE, ROUTER_STATS_PURPOSE)
    ledger = state.user_level_ledger() if user_level else state.ledger()
    return any(
        e.purpose == purpose
        and e.details.get("run_id") == run_id
        and (purpose == "persona-choice" or e.details.get("round") == server_round)
        for e in ledger.entries
    )


def _client_state(instructions: RoundInstructions, node_config: dict):
    """The user's state: on a device its store (read without importing the model code: this runs in
    every process the SuperNode starts), else the simulation's files."""
    if node_config.get("store"):
        from clients.device import node_store

        return node_store(node_config)
    from clients.tasks import client_state

    return client_state(instructions.config, node_config)


def _check_ledger(instructions: RoundInstructions, context: Context, needed: set[str]) -> None:
    """Every ledger entry ``needed`` is on the device for this run (and round), written before the reply leaves."""
    config = instructions.config
    state = _client_state(instructions, dict(context.node_config))
    run_id, server_round = instructions.run_id, instructions.server_round
    if config.dataset.persona_mode != "inferred" or not instructions.trained_personas:
        needed = needed - {
            "persona-choice"
        }  # declared, or cold start on the global adapter: nothing was chosen
    missing = sorted(p for p in needed if not _ledger_has(state, p, run_id, server_round))
    if missing:
        raise UnaccountedRelease(
            f"user {state.user_id}: reply of round {server_round} not sent: no ledger entry "
            f"{', '.join(missing)} for run {run_id} on the device"
        )


def _task_of(msg: Message) -> str | None:
    """The task a message's instructions name (``None``: a SecAgg+ stage without instructions)."""
    if msg.metadata.message_type == MessageType.QUERY:
        return instructed_task(msg.content.config_records.get("config"))
    return instructed_task(msg.content.config_records.get("fitins.config"))


def release_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Let a reply leave only if every field is in the release manifest (:mod:`fedpers.releases`) and every
    DP field's ledger entry is already on the device; otherwise log it and send an error instead."""
    # secaggplus_mod pops it
    stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
    task = _task_of(msg)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    message_type, fields = reply.metadata.message_type, fields_of(reply.content)
    undeclared = undeclared_fields(message_type, stage, fields, task)
    if undeclared:
        err = UnaccountedRelease(
            f"reply not sent: fields outside the release manifest: {', '.join(undeclared)}"
        )
        log(ERROR, "fedpers: %s", err)
        raise err
    # the other SecAgg+ stages carry no instructions
    if stage not in (
        None,
        Stage.COLLECT_MASKED_VECTORS,
    ):
        return reply
    instructions = _instructions(msg)
    config = instructions.config
    needed = required_ledger(
        message_type,
        stage,
        fields,
        config.privacy.dp,
        config.dataset.persona_mode == "inferred",
        config.privacy.user_dp,
        instructions.task,
    )
    if needed:
        try:
            _check_ledger(instructions, context, needed)
        except UnaccountedRelease as err:
            log(ERROR, "fedpers: %s", err)
            raise
    return reply


def make_client_app(mods: list | None = None, outer_mods: list | None = None) -> ClientApp:
    """The fedpers ClientApp: ``[timing_mod, *outer_mods, release_guard, consent_mod, secaggplus_mod, *mods]``.

    ``outer_mods`` see what leaves the device (e.g. :func:`clients.wire.record_replies`); ``mods``
    see the plain (already clipped) upload before it is noised and masked. :func:`release_guard` stops any reply that
    the release manifest does not cover."""
    client_app = ClientApp(
        mods=[
            timing_mod,
            *(outer_mods or []),
            release_guard,
            consent_mod,
            *CLIENT_MODS,
            *(mods or []),
        ]
    )
    client_app.train()(train)
    client_app.query()(persona)
    return client_app


app = make_client_app()
