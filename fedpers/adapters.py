"""Adapters as arrays, and how several travel together.

An adapter is a mapping of tensor names (peft's state-dict keys) to NumPy arrays; a run has the
``global`` adapter and one per persona. Several adapters travel as one safetensors blob whose keys
are ``'<adapter>/<tensor>'`` (never pickles).

The blob's header metadata holds a SHA-256 of its content (:func:`content_digest`: every key, dtype,
shape and the tensor bytes, keys in sorted order), checked on reading: a blob cut short, a garbled
header or a flipped bit in the tensor data raises :class:`AdapterFormatError` instead of loading
wrong tensors. The digest detects corruption, not tampering (the channel's TLS does that). Non-finite
values are refused too: no adapter the server publishes holds them.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

GLOBAL = "global"
"""The adapter every client trains while it has no persona, and the cold-start answer."""
SEPARATOR = "/"
DIGEST_KEY = "fedpers-sha256"
"""The blob's metadata key holding :func:`content_digest`."""
Adapter = dict[str, np.ndarray]
Adapters = dict[str, Adapter]


class AdapterFormatError(ValueError):
    """Bytes that are not a whole, intact adapters blob (or adapter file); the message says what is wrong."""


def pack_adapters(adapters: Adapters) -> dict[str, np.ndarray]:
    """Several named adapters as one flat mapping ``'<adapter>/<tensor>'`` (for one ArrayRecord)."""
    return {
        f"{name}{SEPARATOR}{key}": array
        for name, arrays in adapters.items()
        for key, array in arrays.items()
    }


def unpack_adapters(flat: dict[str, np.ndarray]) -> Adapters:
    adapters: Adapters = {}
    for key, array in flat.items():
        name, _, tensor = key.partition(SEPARATOR)
        if not name or not tensor:
            raise AdapterFormatError(f"tensor {key!r} is not named '<adapter>/<tensor>'")
        adapters.setdefault(name, {})[tensor] = array
    return adapters


def content_digest(flat: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor's key, dtype, shape and bytes (C order), keys sorted."""
    digest = hashlib.sha256()
    for key in sorted(flat):
        array = np.ascontiguousarray(flat[key])
        head = json.dumps([key, array.dtype.str, list(array.shape)]).encode()
        digest.update(struct.pack("<Q", len(head)) + head)
        digest.update(struct.pack("<Q", array.nbytes) + array.tobytes())
    return digest.hexdigest()


def adapters_to_bytes(adapters: Adapters) -> bytes:
    """Several adapters as one safetensors blob (how the server sends them in a config record), with the
    content's SHA-256 in its metadata."""
    flat = {k: np.ascontiguousarray(v) for k, v in pack_adapters(adapters).items()}
    return save_tensors(flat, metadata={DIGEST_KEY: content_digest(flat)})


def safetensors_metadata(data: bytes) -> dict:
    """The safetensors header's ``__metadata__`` (call it after safetensors has parsed ``data``)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def check_tensors(flat: dict[str, np.ndarray], where: str) -> None:
    """:class:`AdapterFormatError` if a tensor holds a NaN or an infinity."""
    for key, array in flat.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise AdapterFormatError(f"{where}: tensor {key!r} holds non-finite values")


def adapters_from_bytes(data: bytes) -> Adapters:
    """The adapters of a blob of :func:`adapters_to_bytes`; :class:`AdapterFormatError` if it is not one,
    is cut short or garbled, fails its digest, or holds non-finite values."""
    try:
        flat = load_tensors(bytes(data))
    except SafetensorError as err:
        raise AdapterFormatError(f"adapters blob: not a safetensors blob ({err})") from None
    expected = safetensors_metadata(data).get(DIGEST_KEY)
    if expected is None:
        raise AdapterFormatError(f"adapters blob: no {DIGEST_KEY} in its metadata")
    if content_digest(flat) != expected:
        raise AdapterFormatError("adapters blob: its tensors do not match its SHA-256 (corrupted)")
    check_tensors(flat, "adapters blob")
    return unpack_adapters(flat)
