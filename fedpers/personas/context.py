"""Context features a device knows before its user types anything: device, location, time of day.

The JSONL schema carries a free-form ``profile`` per conversation and an optional ISO-8601 ``ts`` per turn;
the synthetic desk fills ``profile.device`` (persona-specific models), ``profile.location`` (shared by all
personas) and timestamps (working hours for every persona). tinyshakespeare carries none of them (its
profile is the speaker's name, which is the user's identity and not context).

Each present feature is hashed (SHA-256 of ``"name=value"``) to one of :data:`CONTEXT_DIMENSION` buckets
and the vector is scaled to unit L2 norm, so a context vector is bounded exactly like a prompt embedding
(the router's private statistics clip both to norm one). No feature at all gives the zero vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np

CONTEXT_DIMENSION = 64
CONTEXT_KEYS = ("device", "location")
# time of day in four parts: night, morning, afternoon, evening
DAY_PARTS = ((0, "night"), (6, "morning"), (12, "afternoon"), (18, "evening"))


def day_part(hour: int) -> str:
    if not 0 <= hour <= 23:
        raise ValueError(f"hour must be in 0..23, got {hour}")
    return [name for start, name in DAY_PARTS if hour >= start][-1]


@dataclass(frozen=True)
class Context:
    """What the device knows about the situation of a prompt (each part optional)."""

    device: str | None = None
    location: str | None = None
    hour: int | None = None

    def __post_init__(self) -> None:
        if self.hour is not None:
            day_part(self.hour)

    @classmethod
    def of(cls, profile: Mapping[str, object] | None, ts: str | None = None) -> Context:
        """The context of a conversation: its profile's device and location, the hour of ``ts``."""
        profile = profile or {}
        hour = None
        if ts:
            try:
                hour = datetime.fromisoformat(ts.replace("Z", "+00:00")).hour
            except ValueError as err:
                raise ValueError(f"context: timestamp {ts!r} is not ISO 8601") from err

        def text(key: str) -> str | None:
            value = profile.get(key)
            return value if isinstance(value, str) and value else None

        return cls(text("device"), text("location"), hour)

    @property
    def features(self) -> tuple[str, ...]:
        out = []
        if self.device:
            out.append(f"device={self.device}")
        if self.location:
            out.append(f"location={self.location}")
        if self.hour is not None:
            out.append(f"time={day_part(self.hour)}")
        return tuple(out)

    def vector(self, dimension: int = CONTEXT_DIMENSION) -> np.ndarray:
        """The hashed one-hot features, unit L2 norm (zero without features), float32."""
        x = np.zeros(dimension, dtype=np.float64)
        if dimension == 0:
            return x.astype(np.float32)
        for feature in self.features:
            digest = hashlib.sha256(feature.encode("utf-8")).digest()
            x[int.from_bytes(digest[:8], "big") % dimension] += 1.0
        norm = np.linalg.norm(x)
        return (x / norm if norm > 0 else x).astype(np.float32)


def parse_context(items: list[str] | None) -> Context:
    """``--context key=value`` arguments (keys: device, location, hour or time HH:MM) as a :class:`Context`."""
    values: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise ValueError(f"--context {item!r}: expected KEY=VALUE")
        if key not in ("device", "location", "hour", "time"):
            raise ValueError(
                f"--context {item!r}: unknown key {key!r}; keys: device, location, hour, time"
            )
        values[key] = value.strip()
    hour = None
    if "hour" in values or "time" in values:
        raw = values.get("hour") or values["time"].split(":")[0]
        try:
            hour = int(raw)
        except ValueError as err:
            raise ValueError(f"--context: hour {raw!r} is not an integer") from err
    return Context(values.get("device"), values.get("location"), hour)
