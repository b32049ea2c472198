"""The fedpers ClientApp: private local training and held-out evaluation, in Flower's legacy record layout.

Every aggregation is a ``TRAIN`` message (SecAgg+ handles only those), in the ``fitins``/``fitres``
layout that ``secaggplus_mod`` and ``fixedclipping_mod`` read. The config's ``task`` says what to
upload: ``train`` (the clipped adapter delta in the slot of the client's persona) or ``evaluate``
(held-out loss sums in the row of its persona); a ``QUERY`` with task ``persona`` asks for the
persona in clear (only when persona hiding is off). The computation is in :mod:`clients.tasks`.

On a device (node config ``store``) :func:`consent_mod` refuses every message, before SecAgg+ sees
it, unless the user opted in; training past the consented budget is refused too. A refusal is
logged in full on the device and sent back as an error reply that gives the reason without the
user id or epsilon figures.

This module imports only Flower and the store: under the deployment engine a ``flwr-clientapp``
process starts for every message, and most SecAgg+ stages never reach the model.
"""

from __future__ import annotations

from logging import ERROR

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.logger import log

from clients.consent import NOT_OPTED_IN, OVER_BUDGET, ParticipationRefused, read_consent
from clients.secagg import CLIENT_MODS
from clients.unlock import open_from_env


def _raw_config(msg: Message) -> dict:
    if msg.metadata.message_type == MessageType.QUERY:
        return dict(msg.content["config"])
    return dict(compat.recorddict_to_fitins(msg.content, keep_input=True).config)


def _prepare(msg: Message, context: Context):
    """The task of ``msg`` (refusals are logged)."""
    from clients.tasks import prepare

    try:
        return prepare(_raw_config(msg), dict(context.node_config))
    except ParticipationRefused as err:
        log(ERROR, "fedpers: %s", err.detail)
        raise


def _refusing(fn):
    """Log budget refusals of ``fn(task)`` in full; re-raise them as :class:`ParticipationRefused`."""
    from fedpers.privacy.accounting import BudgetExceededError

    def run(task):
        try:
            return fn(task)
        except BudgetExceededError as err:
            refused = ParticipationRefused(OVER_BUDGET, f"user {task.data.user_id}: refused to train: {err}")
            log(ERROR, "fedpers: %s", refused.detail)
            raise refused from err

    return run


def train(msg: Message, context: Context) -> Message:
    """Reply to a ``TRAIN`` message with this client's upload for the task in its config."""
    from clients.tasks import answer

    arrays, metrics = _refusing(answer)(_prepare(msg, context))
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def persona(msg: Message, context: Context) -> Message:
    """The client's persona index, in clear (aggregation without persona hiding)."""
    from clients.tasks import assignment, persona_index

    task = _prepare(msg, context)
    if task.config.persona_hiding:
        raise PermissionError("this run hides personas: the persona is not sent in clear")
    choice = _refusing(assignment)(task)
    return Message(RecordDict({"metrics": MetricRecord({"persona-index": persona_index(task.config, choice.persona)})}),
                   reply_to=msg)


def consent_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """On a device (node config ``store``): refuse any message unless the user opted in."""
    directory = context.node_config.get("store")
    if directory:
        store = open_from_env(str(directory))
        if not read_consent(store).opted_in:
            err = ParticipationRefused(NOT_OPTED_IN, f"the user of store {directory} has not opted in to federated "
                                       "training; nothing was used (`fedpers-client consent --opt-in` to take part)")
            log(ERROR, "fedpers: %s", err.detail)
            raise err
    return call_next(msg, context)


def make_client_app(mods: list | None = None, outer_mods: list | None = None) -> ClientApp:
    """The fedpers ClientApp: ``[*outer_mods, consent_mod, secaggplus_mod, fixedclipping_mod, *mods]``.

    ``outer_mods`` see what leaves the device (e.g. :func:`clients.wire.record_replies`); ``mods``
    see the plain upload before it is clipped and masked."""
    client_app = ClientApp(mods=[*(outer_mods or []), consent_mod, *CLIENT_MODS, *(mods or [])])
    client_app.train()(train)
    client_app.query()(persona)
    return client_app


app = make_client_app()
