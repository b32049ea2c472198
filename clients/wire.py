"""What leaves the device: a Flower mod that records every reply a client sends.

Each reply's serialized payload and its manifest line (:mod:`fedpers.wire`) go to a folder; the
audit (:mod:`fedpers.audit.wire`) scans the payloads for each user's text and token ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedpers.instructions import instructed_task
from fedpers.wire import message_round, payload_bytes, reply_contents
from fedpers.wirelog import MANIFEST, append_manifest, payload_name


def manifest_entry(msg: Message, reply: Message, context: Context, payload: bytes) -> dict:
    # Flower's legacy layout of a TRAIN message
    fitins = msg.content.config_records.get("fitins.config")
    return {
        "node_id": context.node_id,
        "partition_id": context.node_config.get("partition-id"),
        "round": message_round(msg),
        "message_type": msg.metadata.message_type,
        "task": instructed_task(fitins),
        **reply_contents(reply, payload),
    }


def record_replies(directory: Path | str) -> Callable:
    """A client mod writing each reply's serialized payload and manifest line under ``directory``."""
    root = Path(directory)

    def mod(
        msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        # popped by secaggplus_mod
        stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        payload = payload_bytes(reply)
        entry = manifest_entry(msg, reply, context, payload) | {
            "secagg_stage": stage,
            "sent_at": time.time(),
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / payload_name(entry)).write_bytes(payload)
        append_manifest(root / MANIFEST, entry)
        return reply

    return mod
