"""The fast payload scan finds exactly the patterns that occur, like a naive search."""

import os

import numpy as np

from fedpers.audit.scan import find


def test_fast_scan_matches_naive_search_on_random_payloads():
    rng = np.random.default_rng(3)
    blobs = [rng.integers(0, 256, size=50_000, dtype=np.uint8).tobytes() for _ in range(3)]
    planted = {
        blobs[0][1000:1064]: "int64 8-gram",
        blobs[1][7:19]: "short text",
        blobs[2][-24:]: "at the end",
        blobs[2][:5]: "five bytes at the start",
    }
    absent = {os.urandom(n): f"absent {n}" for n in (5, 12, 16, 32, 64, 100)}
    patterns = planted | absent
    found = find(blobs, patterns)
    naive = {p: label for p, label in patterns.items() if any(p in b for b in blobs)}
    assert found == naive and set(planted) <= set(found)


def test_fast_scan_handles_thousands_of_patterns_over_megabytes():
    rng = np.random.default_rng(4)
    blob = rng.integers(0, 256, size=2_000_000, dtype=np.uint8).tobytes()
    patterns = {
        rng.integers(0, 256, size=int(n), dtype=np.uint8).tobytes(): "x"
        for n in rng.integers(12, 80, size=5000)
    }
    patterns[blob[123_456:123_520]] = "planted"
    found = find([blob], patterns)
    assert list(found.values()) == ["planted"]
