"""What a reply carries on the wire, as both sides of the federation describe it.

A reply is serialized exactly as Flower does for transport (``recorddict_to_proto``). Its manifest
line (:func:`reply_contents`) lists every tensor's name, shape, dtype and byte count and the SHA-256
of the payload. Tensors travel either as arrays or, under SecAgg+, as ``.npy`` bytes inside config
records; both are listed (headers only, never unpickled). Devices record what they send
(:func:`clients.wire.record_replies`), the server what it received (:mod:`server.received`), both
into the wire log (:mod:`fedpers.wirelog`) that the audit reads.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from flwr.app import Message
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
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
        out.append(
            {
                "record": record,
                "name": f"{name}[{i}]",
                "shape": list(shape),
                "dtype": str(dtype),
                "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
        )
    return out


def reply_contents(reply: Message, payload: bytes) -> dict:
    """What a reply carries: every tensor (name, shape, dtype, bytes, SHA-256), metric and config keys, payload size and hash."""
    arrays = []
    for record_name, record in reply.content.array_records.items():
        for name, array in record.items():
            arrays.append(
                {
                    "record": record_name,
                    "name": name,
                    "shape": list(array.shape),
                    "dtype": array.dtype,
                    "bytes": len(array.data),
                    "sha256": hashlib.sha256(array.data).hexdigest(),
                }
            )
    for config_name, config in reply.content.config_records.items():
        for name, value in config.items():
            arrays += _npy_tensors(config_name, name, value)
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
