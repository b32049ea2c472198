"""Checks on a round's unmasked sums before anything is applied: what honest, clipped uploads make possible.

Every honest device clips its delta to ``||D_u|| <= U`` (``update_clip``) and marks its slot in the count
vector with ``count_value`` (one client). For a round whose sums hold ``N`` uploads (``participants``) in
``K`` slots (personas and global), slot ``k``'s sum ``S_k = sum_{u in k} D_u + E_k + Z_k`` and count
``c_k = n_k + e_k + z_k`` (in clients), where ``E, e`` are SecAgg+'s rounding errors (each upload errs by
less than one quantization ``step`` per coordinate, so ``||E_k|| <= sqrt(d) N step`` and
``|e_k| <= N step / count_value``) and ``Z, z`` the devices' user-level noise (none without user-level DP).

Without noise the checks are exact consequences of clipping (triangle inequality):

- every coordinate of every sum and count is finite;
- every count is a whole number of clients (within the rounding error), none negative, and they add up to
  ``N``: ``|sum_k c_k - N| <= K N step / count_value``;
- every slot's norm ``||S_k|| <= round(c_k) U + sqrt(d) N step``.

With user-level noise of standard deviation at most ``sigma`` per coordinate of a sum (``sigma_c = sigma /
count_value`` on a count), the bounds widen by Gaussian tail terms at ``x = TAIL`` (false rejection of an
honest round below ``K e^{-x}`` per check for Gaussian noise; for Skellam noise of variance ``v`` levels^2 the
Chernoff bound at deviation ``t`` exceeds the Gaussian's by a factor ``exp(t^4 / (24 v^3))`` to leading order,
under 1 + 1e-3 at ``t = 7.5 sqrt(v)`` for the ``v >= 10^6`` of a user-level run's sums):

- ``|sum_k c_k - N| <= sqrt(2 x) sigma_c sqrt(K) + K N step / count_value``;
- ``||S_k|| <= max(c_k + sqrt(2 x) sigma_c, 0) U + sigma (sqrt(d) + sqrt(2 x)) + sqrt(d) N step``
  (Laurent & Massart's chi-square bound on ``||Z_k||``).

A failed check rejects the round (nothing is applied). What the checks cannot stop: a device that stays
within them — a shifted update of norm up to ``U`` (like any honest update), or, under user-level noise, a
shift hidden inside the noise's own norm ``~ sigma sqrt(d)`` — moves the sum by at most what the bound leaves.
Stopping those needs proofs that each masked upload is bounded (zero-knowledge norm proofs under secure
aggregation, e.g. RoFL or ACORN), which Flower's SecAgg+ does not provide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedpers.aggregation.updates import Arrays, delta_norm

TAIL = 28.0
"""``x`` of the tail bounds: each noise term is exceeded with probability at most ``e^{-x}`` (about 7e-13)."""


@dataclass(frozen=True)
class SumBounds:
    """What bounds a round's sums: the clip, SecAgg+'s quantization step (0: plain aggregation), the count
    vector's per-client value, and an upper bound on the user-level noise's standard deviation per coordinate
    of a sum (0: none)."""

    update_clip: float
    count_value: float
    quantization_step: float = 0.0
    noise_std: float = 0.0


def check_round_sums(
    sums: Mapping[str, Arrays],
    counts: Mapping[str, float],
    participants: int,
    bounds: SumBounds,
) -> list[str]:
    """Every check the round's sums fail (see the module docstring); empty when they pass."""
    problems: list[str] = []
    for slot, arrays in sums.items():
        bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
        if bad:
            problems.append(f"slot {slot}: non-finite values in {', '.join(sorted(bad)[:3])}")
    bad_counts = [slot for slot, c in counts.items() if not math.isfinite(c)]
    if bad_counts:
        problems.append(f"non-finite counts in slots {', '.join(bad_counts)}")
    if problems:
        return problems
    slots = max(len(counts), 1)
    step, n = bounds.quantization_step, participants
    count_rounding = n * step / bounds.count_value
    sigma_c = bounds.noise_std / bounds.count_value
    z = math.sqrt(2.0 * TAIL)
    total = sum(counts.values())
    tolerance = slots * count_rounding + z * sigma_c * math.sqrt(slots)
    if abs(total - n) > tolerance + 1e-9 * max(n, 1):
        problems.append(
            f"the counts add up to {total:.6g} clients, not the {n} whose uploads were summed "
            f"(tolerance {tolerance:.3g})"
        )
    for slot, c in counts.items():
        if bounds.noise_std == 0.0:
            whole = round(c)
            if abs(c - whole) > count_rounding + 1e-9 or whole < 0:
                problems.append(f"slot {slot}: count {c:.6g} is not a whole number of clients >= 0")
                continue
            clients = float(whole)
        else:
            clients = max(c + z * sigma_c, 0.0)
        if slot not in sums:
            continue
        arrays = sums[slot]
        d = sum(int(np.size(v)) for v in arrays.values())
        bound = (
            clients * bounds.update_clip
            + bounds.noise_std * (math.sqrt(d) + z)
            + math.sqrt(d) * n * step
        )
        norm = delta_norm(arrays)
        if norm > bound * (1 + 1e-6) + 1e-9:
            problems.append(
                f"slot {slot}: sum of norm {norm:.6g} exceeds the {bound:.6g} that {clients:.3g} clipped "
                f"updates (update_clip {bounds.update_clip:g})"
                + (" and the planned noise" if bounds.noise_std else "")
                + " allow"
            )
    return problems
