"""The vector a client uploads, and what its sum tells the server.

With persona hiding, a client's upload has one slot per adapter (global first, then each persona),
each shaped like the whole adapter: its delta sits in the slot of the adapter it trained and every
other slot is zero, followed by a count vector that holds ``count_value`` at the same index. The
sum over clients therefore gives per-persona sums of deltas and per-persona counts, and nothing
per client. Without hiding there is a single slot (the persona travels in clear instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedpers.aggregation.updates import Arrays, check_compatible


@dataclass(frozen=True)
class SlotLayout:
    """Tensor names and shapes of one adapter, and the names of the slots (adapters) an upload has."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    slots: tuple[str, ...]

    @classmethod
    def for_adapter(cls, adapter: Mapping[str, np.ndarray], slots: Sequence[str]) -> SlotLayout:
        return cls(tuple((k, tuple(np.shape(v))) for k, v in sorted(adapter.items())), tuple(slots))

    @property
    def adapter_size(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.shapes)

    @property
    def upload_size(self) -> int:
        """Coordinates of one upload: every slot shaped like the adapter, plus the count vector."""
        return len(self.slots) * (self.adapter_size + 1)

    @property
    def num_arrays(self) -> int:
        return len(self.slots) * len(self.shapes) + 1

    def zeros(self) -> list[np.ndarray]:
        """An all-zero upload (what every slot but one of a client's upload holds; its size is the upload's)."""
        return [np.zeros(s, dtype=np.float32) for _ in self.slots for _, s in self.shapes] + [
            np.zeros(len(self.slots), dtype=np.float32)
        ]

    def pack(
        self, slot: str, delta: Mapping[str, np.ndarray], count_value: float
    ) -> list[np.ndarray]:
        """The upload of a client whose ``delta`` belongs to ``slot``."""
        check_compatible(dict(self._zero_adapter()), delta)
        index = self.slots.index(slot)
        out = []
        for i, _ in enumerate(self.slots):
            for name, shape in self.shapes:
                out.append(
                    np.asarray(delta[name], dtype=np.float32)
                    if i == index
                    else np.zeros(shape, dtype=np.float32)
                )
        counts = np.zeros(len(self.slots), dtype=np.float32)
        counts[index] = count_value
        return out + [counts]

    def unpack(
        self, arrays: Sequence[np.ndarray], count_value: float
    ) -> tuple[dict[str, Arrays], dict[str, float]]:
        """Per-slot sums of deltas and per-slot counts (in clients) from a summed upload."""
        if len(arrays) != self.num_arrays:
            raise ValueError(
                f"an upload has {self.num_arrays} arrays for slots {list(self.slots)}, got {len(arrays)}"
            )
        sums: dict[str, Arrays] = {}
        it = iter(arrays[:-1])
        for slot in self.slots:
            sums[slot] = {}
            for name, shape in self.shapes:
                array = np.asarray(next(it), dtype=np.float64)
                if array.shape != shape:
                    raise ValueError(
                        f"slot {slot} tensor {name}: shape {array.shape}, expected {shape}"
                    )
                sums[slot][name] = array
        counts = np.asarray(arrays[-1], dtype=np.float64) / count_value
        return sums, {slot: float(c) for slot, c in zip(self.slots, counts)}

    def _zero_adapter(self) -> Arrays:
        return {name: np.zeros(shape, dtype=np.float32) for name, shape in self.shapes}
