"""What crosses the wire: a Flower mod that records every reply a client sends.

The recorder serializes each reply's content exactly as Flower does for transport
(``recorddict_to_proto``) and writes the bytes plus a manifest line (round, message type, every
tensor's name, shape, dtype and byte count, SHA-256 of the payload). Tensors travel either as
arrays or, under SecAgg+, as ``.npy`` bytes inside config records; both are listed. The audit
(:mod:`fedpers.audit.wire`) scans the payloads for each user's text and token ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import recorddict_to_proto


def payload_bytes(msg: Message) -> bytes:
    """The serialized content of a message, as it travels."""
    return recorddict_to_proto(msg.content).SerializeToString()


def _npy_tensors(record: str, name: str, value) -> list[dict]:
    """Tensors carried as ``.npy`` bytes in a config value (SecAgg+ masked vectors); headers only, never unpickled."""
    out = []
    for i, blob in enumerate(value if isinstance(value, list) else [value]):
        if not isinstance(blob, bytes) or not blob.startswith(b"\x93NUMPY"):
            continue
        f = io.BytesIO(blob)
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        out.append({"record": record, "name": f"{name}[{i}]", "shape": list(shape), "dtype": str(dtype),
                    "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
    return out


def reply_contents(reply: Message, payload: bytes) -> dict:
    """What a reply carries: every tensor (name, shape, dtype, bytes, SHA-256), metric and config keys, payload size and hash."""
    arrays = []
    for record_name, record in reply.content.array_records.items():
        for name, array in record.items():
            arrays.append({"record": record_name, "name": name, "shape": list(array.shape), "dtype": array.dtype,
                           "bytes": len(array.data), "sha256": hashlib.sha256(array.data).hexdigest()})
    for record_name, record in reply.content.config_records.items():
        for name, value in record.items():
            arrays += _npy_tensors(record_name, name, value)
    return {
        "arrays": arrays,
        "metric_keys": {k: sorted(r.keys()) for k, r in reply.content.metric_records.items()},
        "config_keys": {k: sorted(r.keys()) for k, r in reply.content.config_records.items()},
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }


def message_round(msg: Message) -> int | None:
    """The server round a message belongs to (Flower's ``group_id``), if it names one."""
    return int(msg.metadata.group_id) if msg.metadata.group_id.isdigit() else None


def manifest_entry(msg: Message, reply: Message, context: Context, payload: bytes) -> dict:
    fitins = msg.content.config_records.get("fitins.config", {})
    return {
        "node_id": context.node_id,
        "partition_id": context.node_config.get("partition-id"),
        "round": message_round(msg),
        "message_type": msg.metadata.message_type,
        "task": fitins.get("task"),
        **reply_contents(reply, payload),
    }


def record_replies(directory: Path | str) -> Callable:
    """A client mod writing each reply's serialized payload and manifest line under ``directory``."""
    root = Path(directory)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)  # popped by secaggplus_mod
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        payload = payload_bytes(reply)
        entry = manifest_entry(msg, reply, context, payload) | {"secagg_stage": stage, "sent_at": time.time()}
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{entry['partition_id']}-{entry['round']}-{entry['message_type']}-{entry['payload_sha256'][:12]}"
        (root / f"{stem}.bin").write_bytes(payload)
        with (root / "manifest.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
        return reply

    return mod
