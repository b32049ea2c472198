"""What crosses the wire: a Flower mod that records every reply a client sends, and a scan for leaks.

The recorder serializes each reply's content exactly as Flower does for transport
(``recorddict_to_proto``) and writes the bytes plus a manifest line (round, message type, tensor
names, shapes, dtypes, byte counts, SHA-256). The scan searches such payloads for a user's own
text fragments and token-id n-grams.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import recorddict_to_proto


def payload_bytes(msg: Message) -> bytes:
    """The serialized content of a message, as it travels."""
    return recorddict_to_proto(msg.content).SerializeToString()


def manifest_entry(msg: Message, reply: Message, context: Context, payload: bytes) -> dict:
    arrays = []
    for record_name, record in reply.content.array_records.items():
        for name, array in record.items():
            arrays.append({"record": record_name, "name": name, "shape": list(array.shape), "dtype": array.dtype,
                           "bytes": len(array.data), "sha256": hashlib.sha256(array.data).hexdigest()})
    metrics = {k: sorted(r.keys()) for k, r in reply.content.metric_records.items()}
    configs = {k: sorted(r.keys()) for k, r in reply.content.config_records.items()}
    fitins = msg.content.config_records.get("fitins.config", {})
    return {
        "node_id": context.node_id,
        "partition_id": context.node_config.get("partition-id"),
        "round": int(msg.metadata.group_id) if msg.metadata.group_id.isdigit() else None,
        "message_type": msg.metadata.message_type,
        "task": fitins.get("task"),
        "arrays": arrays,
        "metric_keys": metrics,
        "config_keys": configs,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
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
        entry = manifest_entry(msg, reply, context, payload) | {"secagg_stage": stage}
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{entry['partition_id']}-{entry['round']}-{entry['message_type']}-{entry['payload_sha256'][:12]}"
        (root / f"{stem}.bin").write_bytes(payload)
        with (root / "manifest.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
        return reply

    return mod


@dataclass(frozen=True)
class Leak:
    what: str
    needle: str


def token_patterns(ids: Sequence[int], n: int) -> Iterable[tuple[str, bytes]]:
    """Byte patterns of each token-id n-gram: as int64, int32 and int16 arrays and as decimal text."""
    for start in range(0, max(len(ids) - n + 1, 0)):
        gram = list(ids[start : start + n])
        yield f"ids {gram}", np.asarray(gram, dtype="<i8").tobytes()
        yield f"ids {gram}", np.asarray(gram, dtype="<i4").tobytes()
        if max(gram) < 2**15:
            yield f"ids {gram}", np.asarray(gram, dtype="<i2").tobytes()
        yield f"ids {gram}", ", ".join(map(str, gram)).encode()
        yield f"ids {gram}", " ".join(map(str, gram)).encode()


def text_patterns(texts: Iterable[str], words: int = 5) -> Iterable[tuple[str, bytes]]:
    """Every run of ``words`` consecutive words, in UTF-8 and UTF-16."""
    for text in texts:
        tokens = text.split()
        for start in range(0, max(len(tokens) - words + 1, 1)):
            fragment = " ".join(tokens[start : start + words])
            if len(fragment) >= 12:
                yield fragment, fragment.encode("utf-8")
                yield fragment, fragment.encode("utf-16-le")


def scan(payloads: Iterable[bytes], texts: Iterable[str], token_ids: Iterable[Sequence[int]], ngram: int = 8) -> list[Leak]:
    """Every text fragment or token-id n-gram of the user found in any payload."""
    blobs = list(payloads)
    found: list[Leak] = []
    patterns = list(text_patterns(texts))
    for ids in token_ids:
        patterns += list(token_patterns(ids, ngram))
    for what, needle in patterns:
        if any(needle in blob for blob in blobs):
            found.append(Leak(what, needle.hex()[:64]))
    return found
