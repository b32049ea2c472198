"""The vector a client uploads, and what its sum tells the server.

With persona hiding, a client's upload has one slot per adapter (global first, then each persona),
each shaped like the whole adapter: its delta sits in the slot of the adapter it trained and every
other slot is zero, followed by a count vector that holds ``count_value`` at the same index. The
sum over clients therefore gives per-persona sums of deltas and per-persona counts, and nothing
per client. Without hiding there is a single slot (the persona travels in clear instead).

Evaluation statistics use the same idea with one row per slot: ``STATS`` columns, the client's
sums in its own row, zeros elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedpers.aggregation.updates import Arrays, check_compatible

STATS_BOUND = float(2**20)  # SecAgg+ range of evaluation statistics: one client's sums stay below it
STATS = ("loss-sum-global", "loss-sum-persona", "loss-sum-base", "loss-sum-persona-embedding", "tokens", "count")


@dataclass(frozen=True)
class SlotLayout:
    """Tensor names and shapes of one adapter, and the names of the slots (adapters) an upload has."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    slots: tuple[str, ...]

    @classmethod
    def for_adapter(cls, adapter: Mapping[str, np.ndarray], slots: Sequence[str]) -> "SlotLayout":
        return cls(tuple((k, tuple(np.shape(v))) for k, v in sorted(adapter.items())), tuple(slots))

    @property
    def adapter_size(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.shapes)

    @property
    def num_arrays(self) -> int:
        return len(self.slots) * len(self.shapes) + 1

    def zeros(self) -> list[np.ndarray]:
        """An all-zero upload (the reference that Flower's ``fixedclipping_mod`` subtracts)."""
        return [np.zeros(s, dtype=np.float32) for _ in self.slots for _, s in self.shapes] + [
            np.zeros(len(self.slots), dtype=np.float32)]

    def pack(self, slot: str, delta: Mapping[str, np.ndarray], count_value: float) -> list[np.ndarray]:
        """The upload of a client whose ``delta`` belongs to ``slot``."""
        check_compatible(dict(self._zero_adapter()), delta)
        index = self.slots.index(slot)
        out = []
        for i, _ in enumerate(self.slots):
            for name, shape in self.shapes:
                out.append(np.asarray(delta[name], dtype=np.float32) if i == index else np.zeros(shape, dtype=np.float32))
        counts = np.zeros(len(self.slots), dtype=np.float32)
        counts[index] = count_value
        return out + [counts]

    def unpack(self, arrays: Sequence[np.ndarray], count_value: float) -> tuple[dict[str, Arrays], dict[str, float]]:
        """Per-slot sums of deltas and per-slot counts (in clients) from a summed upload."""
        if len(arrays) != self.num_arrays:
            raise ValueError(f"an upload has {self.num_arrays} arrays for slots {list(self.slots)}, got {len(arrays)}")
        sums: dict[str, Arrays] = {}
        it = iter(arrays[:-1])
        for slot in self.slots:
            sums[slot] = {}
            for name, shape in self.shapes:
                array = np.asarray(next(it), dtype=np.float64)
                if array.shape != shape:
                    raise ValueError(f"slot {slot} tensor {name}: shape {array.shape}, expected {shape}")
                sums[slot][name] = array
        counts = np.asarray(arrays[-1], dtype=np.float64) / count_value
        return sums, {slot: float(c) for slot, c in zip(self.slots, counts)}

    def _zero_adapter(self) -> Arrays:
        return {name: np.zeros(shape, dtype=np.float32) for name, shape in self.shapes}


def pack_stats(slots: Sequence[str], slot: str, values: Mapping[str, float]) -> list[np.ndarray]:
    """Evaluation statistics as one ``(len(slots), len(STATS))`` array: the client's row, zeros elsewhere."""
    unknown = sorted(set(values) - set(STATS))
    if unknown:
        raise ValueError(f"unknown statistics {unknown}; known: {list(STATS)}")
    too_large = {k: v for k, v in values.items() if not abs(float(v)) < STATS_BOUND}
    if too_large:
        raise ValueError(f"evaluation statistics {too_large} exceed the secure-aggregation range {STATS_BOUND:g}")
    table = np.zeros((len(slots), len(STATS)), dtype=np.float64)
    table[list(slots).index(slot)] = [float(values.get(name, 0.0)) for name in STATS]
    return [table]


def unpack_stats(slots: Sequence[str], arrays: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Summed statistics per slot; counts are whole clients, so they are rounded."""
    (table,) = arrays
    table = np.asarray(table, dtype=np.float64).reshape(len(slots), len(STATS))
    out = {}
    for slot, row in zip(slots, table):
        values = dict(zip(STATS, (float(v) for v in row)))
        values["count"] = float(round(values["count"]))
        out[slot] = values
    return out
