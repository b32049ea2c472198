"""The server's side of the progress display: each exchange with the clients is a step of the stage,
counted reply by reply (:mod:`fedpers.progress`).

:class:`CountingGrid` wraps the round's grid: its ``send_and_receive`` is Flower's (push the messages,
pull the replies until all arrived or ``timeout`` passed), and tells the stage how many replies
arrived at each pull. Everything else goes to the wrapped grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedpers.progress import Stage as ProgressStage

# what the clients do in each SecAgg+ exchange
SECAGG_STEPS = {
    Stage.SETUP: "key setup",
    Stage.SHARE_KEYS: "key sharing",
    Stage.COLLECT_MASKED_VECTORS: "local training",
    Stage.UNMASK: "unmasking",
}


def exchange_name(messages: list[Message]) -> str:
    """What the clients do with ``messages``: a SecAgg+ exchange, local training or the persona query."""
    if not messages:
        return ""
    first = messages[0]
    configs = first.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is not None and Key.STAGE in configs:
        return SECAGG_STEPS.get(str(configs[Key.STAGE]), str(configs[Key.STAGE]))
    if first.metadata.message_type == MessageType.QUERY:
        return "persona query"
    return "local training"


class CountingGrid:
    """A grid whose exchanges are steps of ``stage``, counted as the replies arrive."""

    def __init__(self, grid, stage: ProgressStage, pull_interval: float | None = None) -> None:
        self._grid, self._stage = grid, stage
        self._interval = pull_interval or getattr(grid, "pull_interval", 0.1)

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        messages = list(messages)
        self._stage.step(exchange_name(messages), len(messages), "clients")
        pending = set(self._grid.push_messages(messages))
        del messages
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            arrived = list(self._grid.pull_messages(pending))
            if arrived:
                replies.extend(arrived)
                pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
                self._stage.advance(len(arrived))
            if not pending:
                break
            time.sleep(self._interval)
        return replies
