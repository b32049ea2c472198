"""Fast search of recorded payloads for many byte patterns at once (a user's text fragments, token-id n-grams).

Searching each of thousands of patterns through megabytes of masked vectors one by one takes
minutes per client. Instead every pattern is reduced to its first ``PREFIX`` bytes (or all of it if
shorter); for each prefix length, a polynomial hash of every window of the payload is computed with
NumPy in one pass, matched against the patterns' hashes, and each candidate is confirmed by an exact
comparison. The result is exactly the set of patterns that occur.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Leak:
    """A user's text fragment or token-id n-gram found in a payload (``needle``: hex of its first bytes)."""

    what: str
    needle: str


def token_patterns(ids: Sequence[int], n: int) -> Iterable[tuple[bytes, str]]:
    """Byte patterns of each token-id n-gram: as int64, int32 and int16 arrays and as decimal text."""
    for start in range(0, max(len(ids) - n + 1, 0)):
        gram = list(ids[start : start + n])
        label = f"ids {gram}"
        yield np.asarray(gram, dtype="<i8").tobytes(), label
        yield np.asarray(gram, dtype="<i4").tobytes(), label
        if max(gram) < 2**15:
            yield np.asarray(gram, dtype="<i2").tobytes(), label
        yield ", ".join(map(str, gram)).encode(), label
        yield " ".join(map(str, gram)).encode(), label


def text_patterns(texts: Iterable[str], words: int = 5) -> Iterable[tuple[bytes, str]]:
    """Every run of ``words`` consecutive words (at least 12 characters), in UTF-8 and UTF-16."""
    for text in texts:
        tokens = text.split()
        for start in range(0, max(len(tokens) - words + 1, 1)):
            fragment = " ".join(tokens[start : start + words])
            if len(fragment) >= 12:
                yield fragment.encode("utf-8"), fragment
                yield fragment.encode("utf-16-le"), fragment


def user_patterns(
    texts: Iterable[str], token_ids: Iterable[Sequence[int]], ngram: int = 8
) -> dict[bytes, str]:
    """Everything of one user's that must never appear on the wire: text fragments and token-id n-grams."""
    patterns = dict(text_patterns(texts))
    for ids in token_ids:
        patterns.update(token_patterns(ids, ngram))
    return patterns


def scan(
    payloads: Iterable[bytes],
    texts: Iterable[str],
    token_ids: Iterable[Sequence[int]],
    ngram: int = 8,
) -> list[Leak]:
    """Every text fragment or token-id n-gram of the user found in any payload."""
    found = find(payloads, user_patterns(texts, token_ids, ngram))
    return sorted(
        {Leak(label, needle.hex()[:64]) for needle, label in found.items()},
        key=lambda leak: leak.what,
    )
