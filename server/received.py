"""What reached the server: a manifest line for every reply a secure-aggregation session received.

On the deployment engine the devices' own recordings stay on the devices, so the server keeps
its side of the wire: for each reply, the node, round, SecAgg+ stage, every tensor's name, shape,
dtype and byte count, and the SHA-256 of the payload as it travelled. Only the manifest is kept,
not the payloads. The privacy audit of the run reads it (``fedpers.audit.wire``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Message

from fedpers.wire import message_round, payload_bytes, reply_contents
from fedpers.wirelog import MANIFEST, WIRE, append_manifest


class ReceivedManifest:
    """An observer (``observer(stage, reply)``) appending each reply's manifest line to ``RUN_DIR/wire/manifest.jsonl``."""

    def __init__(self, run_dir: Path | str, session: str) -> None:
        self.path, self.session = Path(run_dir) / WIRE / MANIFEST, session

    def __call__(self, stage: str, reply: Message) -> None:
        if reply.has_error():
            return
        entry = {
            "recorded_by": "server",
            "node_id": reply.metadata.src_node_id,
            "partition_id": None,
            "round": message_round(reply),
            "message_type": reply.metadata.message_type,
            "task": None,
            "session": self.session,
            "secagg_stage": stage,
            "received_at": time.time(),
            **reply_contents(reply, payload_bytes(reply)),
        }
        append_manifest(self.path, entry)


def both(first: Callable | None, second: Callable | None) -> Callable | None:
    """One observer calling ``first`` then ``second`` (either may be None)."""
    if first is None or second is None:
        return first or second

    def observe(stage: str, reply: Message) -> None:
        first(stage, reply)
        second(stage, reply)

    return observe
