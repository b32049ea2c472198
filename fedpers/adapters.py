"""Adapters as arrays, and how several travel together.

An adapter is a mapping of tensor names (peft's state-dict keys) to NumPy arrays; a run has the
``global`` adapter and one per persona. Several adapters travel as one safetensors blob whose keys
are ``'<adapter>/<tensor>'`` (never pickles).
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

GLOBAL = "global"
"""The adapter every client trains while it has no persona, and the cold-start answer."""
SEPARATOR = "/"
Adapter = dict[str, np.ndarray]
Adapters = dict[str, Adapter]


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
        adapters.setdefault(name, {})[tensor] = array
    return adapters


def adapters_to_bytes(adapters: Adapters) -> bytes:
    """Several adapters as one safetensors blob (how the server sends them in a config record)."""
    return save_tensors({k: np.ascontiguousarray(v) for k, v in pack_adapters(adapters).items()})


def adapters_from_bytes(data: bytes) -> Adapters:
    return unpack_adapters(load_tensors(data))
