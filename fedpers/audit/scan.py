"""Fast search of recorded payloads for many byte patterns at once (a user's text fragments, token-id n-grams).

Searching each of thousands of patterns through megabytes of masked vectors one by one takes
minutes per client. Instead every pattern is reduced to its first ``PREFIX`` bytes (or all of it if
shorter); for each prefix length, a polynomial hash of every window of the payload is computed with
NumPy in one pass, matched against the patterns' hashes, and each candidate is confirmed by an exact
comparison. The result is exactly the set of patterns that occur.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

PREFIX = 16
_BASE = np.uint64(1099511628211)  # FNV prime: any odd 64-bit multiplier works


def _powers(length: int) -> np.ndarray:
    out = np.ones(length, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(length - 2, -1, -1):
            out[i] = out[i + 1] * _BASE
    return out


def _hash(data: np.ndarray, powers: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return data.astype(np.uint64) @ powers


def window_hashes(blob: bytes, length: int) -> np.ndarray:
    """Hash of every ``length``-byte window of ``blob`` (wrapping uint64 arithmetic)."""
    data = np.frombuffer(blob, dtype=np.uint8)
    if len(data) < length:
        return np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(data, length)
    powers = _powers(length)
    out = np.zeros(len(windows), dtype=np.uint64)
    step = 1 << 20
    for start in range(0, len(windows), step):
        out[start : start + step] = _hash(windows[start : start + step], powers)
    return out


def find(blobs: Iterable[bytes], patterns: Mapping[bytes, str]) -> dict[bytes, str]:
    """The patterns (byte string -> label) that occur in any blob."""
    by_length: dict[int, dict[int, list[bytes]]] = {}
    for needle in patterns:
        if not needle:
            continue
        k = min(len(needle), PREFIX)
        h = int(_hash(np.frombuffer(needle[:k], dtype=np.uint8)[None, :], _powers(k))[0])
        by_length.setdefault(k, {}).setdefault(h, []).append(needle)
    found: dict[bytes, str] = {}
    for blob in blobs:
        for k, table in by_length.items():
            hashes = window_hashes(blob, k)
            keys = np.fromiter(table.keys(), dtype=np.uint64, count=len(table))
            for pos in np.flatnonzero(np.isin(hashes, keys)):
                for needle in table[int(hashes[pos])]:
                    if needle not in found and blob[pos : pos + len(needle)] == needle:
                        found[needle] = patterns[needle]
    return found
