"""The array arithmetic of aggregation: compatibility checks, norms and clipping.

An adapter (or a delta) is ``dict[str, np.ndarray]`` keyed by peft state-dict names, as produced
by :func:`fedpers.models.adapter_arrays`. Sums are accumulated in float64; results keep the
input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

Arrays = dict[str, np.ndarray]


def check_compatible(
    reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], what: str = "delta"
) -> None:
    """Raise ``ValueError`` unless ``other`` has exactly ``reference``'s keys and shapes."""
    if set(other) != set(reference):
        missing, extra = sorted(set(reference) - set(other)), sorted(set(other) - set(reference))
        raise ValueError(f"{what} keys do not match: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, ref in reference.items():
        if np.shape(other[key]) != np.shape(ref):
            raise ValueError(
                f"{what} '{key}' has shape {np.shape(other[key])}, expected {np.shape(ref)}"
            )


def delta_norm(delta: Mapping[str, np.ndarray]) -> float:
    """L2 norm over all arrays of ``delta`` taken together (float64)."""
    return math.sqrt(
        sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in delta.values())
    )


def scale_delta(delta: Mapping[str, np.ndarray], factor: float) -> Arrays:
    """``factor * delta`` in float64, returned in each array's dtype."""
    return {
        k: (np.asarray(v, dtype=np.float64) * factor).astype(np.asarray(v).dtype, copy=False)
        for k, v in delta.items()
    }


class NonFiniteUpdate(ValueError):
    """An update holding NaN or infinity: never clipped, quantized or sent."""


def clip_delta(delta: Mapping[str, np.ndarray], max_norm: float) -> tuple[Arrays, float]:
    """Scale ``delta`` so that its L2 norm is at most ``max_norm``; returns the clipped copy and the factor (<= 1).

    The bound holds after rounding to the arrays' dtype, so it can serve as a sensitivity bound. A delta with
    a non-finite coordinate (training that diverged) has no norm to clip to: :class:`NonFiniteUpdate`, and the
    device sends nothing (SecAgg+ would quantize NaN to an extreme level and corrupt the round's sum).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    bad = [k for k, v in delta.items() if not np.all(np.isfinite(v))]
    if bad:
        raise NonFiniteUpdate(
            f"the update has non-finite values in {', '.join(sorted(bad)[:3])}"
            + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
            + "; it is not sent"
        )
    norm = delta_norm(delta)
    if norm <= max_norm:
        return scale_delta(delta, 1.0), 1.0
    factor = max_norm / norm
    clipped = scale_delta(delta, factor)
    while delta_norm(clipped) > max_norm:  # rounding to float32 can overshoot by an ulp
        factor *= 1.0 - 1e-6
        clipped = scale_delta(delta, factor)
    return clipped, factor
