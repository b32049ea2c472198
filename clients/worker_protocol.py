"""The local protocol between the ClientApp and the device's worker (:mod:`clients.worker`).

The worker listens on a Unix-domain socket in the store directory (:func:`socket_path`, mode 0600,
and it serves only connections from its own user id). One connection carries one request and its
response, each one frame::

    b"FPW" + protocol version (1 byte) | header length (4 bytes, big-endian) | header (JSON, UTF-8)
    | the attachments, one after another (their lengths are in the header)

Nothing is pickled: the header is JSON, the attachments raw bytes: the ``bytes`` values of the
message's instructions (the adapters blob), and in a response the upload arrays as safetensors.

This module imports neither torch nor the model: the ClientApp uses it in every process it starts.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL = 1
MAGIC = b"FPW" + bytes([PROTOCOL])
SOCKET_NAME = "worker.sock"
OPS = ("train", "persona", "ping")
"""``train``: the upload of a ``train`` task; ``persona``: the persona index in clear; ``ping``: is it there."""
OK, REFUSED, ERROR = "ok", "refused", "error"
MAX_HEADER = 16 << 20
MAX_ATTACHMENT = 1 << 32
_PREFIX = struct.Struct(">4sI")
_SCALARS = (str, int, float, bool)


class ProtocolError(RuntimeError):
    """A frame that does not follow this protocol (truncated, malformed header)."""


class VersionMismatch(ProtocolError):
    """The other side speaks another version of the protocol: nothing was computed."""


def socket_path(store: Path | str) -> Path:
    """Where the worker of the store in ``store`` listens."""
    return Path(store) / SOCKET_NAME


@dataclass(frozen=True)
class Request:
    """What the ClientApp asks for: ``op`` on the message's instructions for this node.

    ``record`` is the instructions' ConfigRecord as a dict (scalars, lists of scalars and bytes);
    ``node_config`` the node's config (``store``, ``user-id``), as the ClientApp received it."""

    op: str
    record: dict[str, Any] = field(default_factory=dict)
    node_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ProtocolError(f"unknown op {self.op!r}; expected one of {list(OPS)}")

    def encode(self) -> bytes:
        values, attachments = _split(self.record)
        header = {
            "op": self.op,
            "record": values,
            "node_config": _plain(self.node_config, "node config"),
        }
        return _frame(header, attachments)

    @classmethod
    def decode(cls, header: dict, attachments: list[bytes]) -> Request:
        return cls(
            str(header["op"]),
            _join(header.get("record", {}), attachments),
            dict(header.get("node_config", {})),
        )


@dataclass(frozen=True)
class Response:
    """The worker's answer.

    ``ok``: ``arrays`` and ``metrics`` (a ``train`` upload; ``persona`` puts the index in ``metrics``).
    ``refused``: the device refused the task (:class:`clients.consent.ParticipationRefused`):
    ``reason`` is what the error reply may tell the server, ``detail`` the full account for the device's log.
    ``error``: the computation failed; ``error_type`` and ``detail`` say how.
    ``timings``: seconds the worker spent (``prepare``, ``answer``), for the benchmark."""

    status: str
    arrays: list[np.ndarray] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    detail: str = ""
    error_type: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in (OK, REFUSED, ERROR):
            raise ProtocolError(f"unknown response status {self.status!r}")

    def encode(self) -> bytes:
        from clients.state import upload_to_bytes

        header = {
            "status": self.status,
            "metrics": _plain(self.metrics, "metrics"),
            "reason": self.reason,
            "detail": self.detail,
            "error_type": self.error_type,
            "timings": {k: float(v) for k, v in self.timings.items()},
            "arrays": len(self.arrays),
        }
        return _frame(header, [upload_to_bytes(self.arrays)] if self.arrays else [])

    @classmethod
    def decode(cls, header: dict, attachments: list[bytes]) -> Response:
        from clients.state import upload_from_bytes

        count = int(header.get("arrays", 0))
        arrays = upload_from_bytes(attachments[0]) if count else []
        if len(arrays) != count:
            raise ProtocolError(f"response announced {count} arrays, carried {len(arrays)}")
        return cls(
            str(header["status"]),
            arrays,
            dict(header.get("metrics", {})),
            str(header.get("reason", "")),
            str(header.get("detail", "")),
            str(header.get("error_type", "")),
            {k: float(v) for k, v in dict(header.get("timings", {})).items()},
        )


def _plain(values: dict, what: str) -> dict:
    """``values`` if every value is a scalar or a list of scalars (what JSON carries exactly)."""
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, _SCALARS) for v in items):
            raise TypeError(f"{what} {key!r}: {type(value).__name__} cannot travel to the worker")
    return dict(values)


def _split(record: dict[str, Any]) -> tuple[dict, list[bytes]]:
    """The record's JSON part, with each ``bytes`` value replaced by ``{"attachment": i}``, and the attachments."""
    values: dict[str, Any] = {}
    attachments: list[bytes] = []
    for key, value in record.items():
        if isinstance(value, bytes | bytearray | memoryview):
            values[key] = {"attachment": len(attachments)}
            attachments.append(bytes(value))
        else:
            values.update(_plain({key: value}, "instructions"))
    return values, attachments


def _join(values: dict[str, Any], attachments: list[bytes]) -> dict[str, Any]:
    """The inverse of :func:`_split`."""
    return {
        k: attachments[v["attachment"]] if isinstance(v, dict) else v for k, v in values.items()
    }


def _frame(header: dict, attachments: list[bytes]) -> bytes:
    header = {**header, "attachments": [len(a) for a in attachments]}
    text = json.dumps(header, allow_nan=True).encode()
    return b"".join([_PREFIX.pack(MAGIC, len(text)), text, *attachments])


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ProtocolError(f"connection closed {left} bytes before the end of the frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> tuple[dict, list[bytes]]:
    """One frame from ``sock``: its header and attachments."""
    magic, length = _PREFIX.unpack(_read_exactly(sock, _PREFIX.size))
    if magic[:3] != MAGIC[:3]:
        raise ProtocolError("not a fedpers worker frame")
    if magic != MAGIC:
        raise VersionMismatch(f"worker protocol version {magic[3]}, this side speaks {PROTOCOL}")
    if length > MAX_HEADER:
        raise ProtocolError(f"frame header of {length} bytes is over the limit")
    try:
        header = json.loads(_read_exactly(sock, length))
        sizes = [int(n) for n in header.pop("attachments")]
    except (ValueError, KeyError, TypeError) as err:
        raise ProtocolError(f"malformed frame header: {err}") from None
    if any(not 0 <= n <= MAX_ATTACHMENT for n in sizes):
        raise ProtocolError("attachment size out of range")
    return header, [_read_exactly(sock, n) for n in sizes]


def exchange(path: Path | str, request: Request, timeout: float | None = None) -> Response | None:
    """Send ``request`` to the worker listening at ``path`` and return its response.

    ``None`` when no worker listens there (no socket, or nobody accepts on it): the caller computes
    in-process instead. :class:`VersionMismatch` when the worker speaks another version (it computed
    nothing). Any other failure once the request is sent raises: the worker may have acted on it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return None
        sock.settimeout(timeout)
        sock.sendall(request.encode())
        sock.shutdown(socket.SHUT_WR)
        return Response.decode(*read_frame(sock))
    finally:
        sock.close()
