"""The router's private statistics: per-persona sums of prompt embeddings and counts, noised on the devices.

**What a device sends.** Its upload has one row per persona slot, ``[text (d) | context (d_c) | count (1)]``.
The device embeds each of its prompts (unit norm, so clipping to norm one changes nothing; it is still
enforced), sums them per persona and divides by its number of prompts ``n``; the same for the prompts'
context vectors; the count entry of slot ``p`` is ``n_p / n``. A single-persona device therefore sends its
mean embedding, its mean context and a count of one in its slot. Each block has L2 norm at most one
(``sum_p ||sum_{i in p} e_i|| / n <= 1``), so the whole upload has norm at most ``C = sqrt(3)`` (``sqrt(2)``
for a layout without context): that is the user-level clip, whatever the number of prompts.

**Noise, exactly as the adapters' user-level DP** (:mod:`fedpers.privacy.user_level`): the upload is
quantized by stochastic rounding to the grid ``round(s (x + c))`` with ``c = 1`` and
``s = 2**NOISED_QUANTIZATION_BITS / 2`` levels per unit, and the device adds to every coordinate a share
``Poisson(v / 2t) - Poisson(v / 2t)`` of Skellam noise (:func:`fedpers.privacy.skellam.sample_skellam`,
generator seeded from OS entropy), ``v = (z C s)^2`` and ``t`` the SecAgg+ reconstruction threshold
(:meth:`DistributedNoise.share_variance`). Any sum SecAgg+ unmasks holds at least ``t`` shares, so carries
Skellam noise of variance at least ``v`` per coordinate: the server never sees a prompt, an embedding or a
per-device mean in clear, only noised per-persona sums and counts.

**Accounting.** One upload is one Skellam release of :class:`DistributedNoise` (``clip = C``, sensitivities
``l2 = s C + sqrt(D)``, ``l1 = sqrt(D) l2`` for ``D`` noised coordinates), composed by the existing accountant
(:func:`fedpers.privacy.accounting.epsilon`). The device records it in its ledger, under
:data:`ROUTER_STATS_PURPOSE`, *before* the upload is computed, so a crash can only over-report, and a ledger
cap refuses the upload instead of spending past it.

**Server.** The unmasked sum, centred (:func:`fedpers.aggregation.secure.centered_sum`), minus the offset
``n s c`` of ``n`` uploads and divided by ``s``, is the noised per-persona sums and counts
(:func:`statistics_from_sum`); their directions are the router's centroids
(:func:`fedpers.personas.centroid.model_from_statistics`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedpers.aggregation.secure import QuantizationPlan, centered_sum, keystream_masks
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger
from fedpers.privacy.skellam import noise_variance_for_epsilon, sample_skellam
from fedpers.privacy.user_level import (
    DROPOUT_ASSUMPTION,
    NOISED_QUANTIZATION_BITS,
    DistributedNoise,
)

# the ledger purpose and the release-manifest row live with the other releases
from fedpers.releases import ROUTER_RELEASE, ROUTER_STATS_PURPOSE  # noqa: F401

CLIPPING_RANGE = 1.0  # every coordinate of the upload lies in [-1, 1]
_NORM_SLACK = 1e-6


@dataclass(frozen=True)
class StatsLayout:
    """The upload's shape: one row ``[text | context | count]`` per persona, flattened."""

    personas: tuple[str, ...]
    text_dimension: int
    context_dimension: int

    def __post_init__(self) -> None:
        if not self.personas or len(set(self.personas)) != len(self.personas):
            raise ValueError(f"router statistics need distinct personas, got {self.personas}")
        if self.text_dimension < 1 or self.context_dimension < 0:
            raise ValueError(
                f"bad dimensions: text {self.text_dimension}, context {self.context_dimension}"
            )

    @property
    def blocks(self) -> int:
        """Text mean, context mean (when there is context), count share: each at most one in L2."""
        return 3 if self.context_dimension else 2

    @property
    def clip(self) -> float:
        """``C``: the L2 bound of a whole upload."""
        return math.sqrt(self.blocks)

    @property
    def row(self) -> int:
        return self.text_dimension + self.context_dimension + 1

    @property
    def dimension(self) -> int:
        return len(self.personas) * self.row

    def grid(self, max_clients: int = 1000) -> QuantizationPlan:
        """SecAgg+'s settings for these uploads: ``2**NOISED_QUANTIZATION_BITS`` levels over ``[-1, 1]``,
        modulus with room for ``max_clients`` uploads and the noise."""
        return QuantizationPlan.for_bound(
            CLIPPING_RANGE, max_clients, bits=NOISED_QUANTIZATION_BITS, noised=True
        )

    @property
    def levels_per_unit(self) -> float:
        return 2**NOISED_QUANTIZATION_BITS / (2 * CLIPPING_RANGE)


@dataclass(frozen=True)
class RouterStatistics:
    """Per-persona sums of (per-device mean) text embeddings and context vectors, and counts of devices."""

    personas: tuple[str, ...]
    text_sums: np.ndarray  # (K, d)
    context_sums: np.ndarray  # (K, d_c)
    counts: np.ndarray  # (K,)

    def __add__(self, other: RouterStatistics) -> RouterStatistics:
        if self.personas != other.personas:
            raise ValueError("statistics of different personas cannot be added")
        return RouterStatistics(
            self.personas,
            self.text_sums + other.text_sums,
            self.context_sums + other.context_sums,
            self.counts + other.counts,
        )


def router_noise(noise_multiplier: float, layout: StatsLayout) -> DistributedNoise:
    """The distributed noise of one router upload: ``v = (z C s)^2`` on the router's grid."""
    return DistributedNoise(noise_multiplier, layout.clip, layout.levels_per_unit, layout.dimension)


def noise_for_epsilon(epsilon: float, delta: float, layout: StatsLayout) -> DistributedNoise:
    """The smallest noise whose one release stays within ``(epsilon, delta)`` (Skellam RDP, calibrated by
    :func:`fedpers.privacy.skellam.noise_variance_for_epsilon`)."""
    probe = router_noise(1.0, layout)
    variance = noise_variance_for_epsilon(
        epsilon, delta, probe.l2_sensitivity, probe.l1_sensitivity
    )
    z = math.sqrt(variance) / (layout.clip * layout.levels_per_unit)
    noise = router_noise(z, layout)
    while noise.variance < variance:  # the square root may round below
        z = math.nextafter(z, math.inf)
        noise = router_noise(z, layout)
    return noise


def router_entry(noise: DistributedNoise, **details) -> LedgerEntry:
    """One router upload as a ledger entry: one Skellam event of ``noise``."""
    return LedgerEntry(ROUTER_STATS_PURPOSE, [noise.event()], {**details, **noise.details()})


def device_contribution(
    layout: StatsLayout,
    text: Mapping[str, np.ndarray],
    context: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The clean upload of one device (float64, length ``layout.dimension``), before quantization and noise.

    ``text[p]`` holds the embeddings of the device's prompts of persona ``p`` (rows), ``context[p]`` their
    context vectors (same number of rows; omitted: zeros). Each row is clipped to unit L2 norm, summed per
    persona and divided by the device's total number of prompts."""
    unknown = sorted(set(text) - set(layout.personas))
    if unknown:
        raise ValueError(
            f"prompts of unknown personas {unknown}; personas: {list(layout.personas)}"
        )
    rows = {
        p: _clip_rows(np.asarray(x, np.float64), layout.text_dimension) for p, x in text.items()
    }
    total = sum(len(x) for x in rows.values())
    out = np.zeros((len(layout.personas), layout.row))
    if total == 0:
        return out.ravel()
    for k, persona in enumerate(layout.personas):
        if persona not in rows or not len(rows[persona]):
            continue
        out[k, : layout.text_dimension] = rows[persona].sum(0) / total
        ctx = (context or {}).get(persona)
        if ctx is not None and layout.context_dimension:
            c = _clip_rows(np.asarray(ctx, np.float64), layout.context_dimension)
            if len(c) != len(rows[persona]):
                raise ValueError(
                    f"persona {persona!r}: {len(rows[persona])} prompts but {len(c)} context vectors"
                )
            out[k, layout.text_dimension : layout.row - 1] = c.sum(0) / total
        out[k, -1] = len(rows[persona]) / total
    return out.ravel()


def _clip_rows(x: np.ndarray, dimension: int) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != dimension:
        raise ValueError(f"expected rows of dimension {dimension}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings must be finite")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1.0)


def os_generator() -> np.random.Generator:
    """A generator seeded from the OS CSPRNG (what protects privacy on a device)."""
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def stochastic_round(x: np.ndarray, levels_per_unit: float, rng: np.random.Generator) -> np.ndarray:
    """``s (x + c)`` rounded up with probability its fractional part (the rule of SecAgg+'s quantizer,
    ``clients.secagg.quantize_upload``), int64. Unbiased; errs by less than one level per coordinate."""
    scaled = levels_per_unit * (np.clip(x, -CLIPPING_RANGE, CLIPPING_RANGE) + CLIPPING_RANGE)
    up = np.ceil(scaled).astype(np.int64)
    up[rng.random(up.shape) < up - scaled] -= 1
    return up


def private_upload(
    contribution: np.ndarray,
    layout: StatsLayout,
    noise: DistributedNoise,
    threshold: int,
    ledger: PrivacyLedger,
    rng: np.random.Generator | None = None,
    **details,
) -> np.ndarray:
    """What a device hands to SecAgg+ for the router: its quantized contribution plus a share of Skellam noise
    (int64 levels). The release is recorded in ``ledger`` first (a cap refuses it: nothing is computed).

    ``rng`` defaults to one seeded from the OS CSPRNG; pass one only to reproduce a benchmark."""
    x = np.asarray(contribution, dtype=np.float64)
    if x.shape != (layout.dimension,):
        raise ValueError(f"a router upload has {layout.dimension} coordinates, got {x.shape}")
    if not np.all(np.isfinite(x)) or np.linalg.norm(x) > layout.clip + _NORM_SLACK:
        raise ValueError(
            f"a router contribution must be finite with L2 norm at most sqrt({layout.blocks}) "
            f"(got {np.linalg.norm(x):.6g}); build it with device_contribution"
        )
    if noise.dimension != layout.dimension or noise.clip != layout.clip:
        raise ValueError("the noise was planned for another upload layout")
    entry = ledger.record(router_entry(noise, threshold=threshold, **details))
    rng = rng if rng is not None else os_generator()
    levels = stochastic_round(x, layout.levels_per_unit, rng)
    levels = levels + sample_skellam(levels.shape, noise.share_variance(threshold), rng)
    ledger.complete(entry)
    return levels


def secure_sum(
    uploads: Sequence[np.ndarray], plan: QuantizationPlan, pairwise_masks: bool = True
) -> np.ndarray:
    """What SecAgg+ would unmask from ``uploads`` (simulation): each upload masked with pairwise ChaCha20
    keystreams that cancel in the sum, everything modulo ``plan.modulus_range``, then centred. The result
    is the plain integer sum of the uploads as long as the noise stays within the plan's headroom.
    ``pairwise_masks=False`` skips the masks (they cancel exactly; quadratic in the number of uploads)."""
    n = len(uploads)
    if n == 0:
        raise ValueError("no uploads to sum")
    shape = np.asarray(uploads[0]).shape
    mod = plan.modulus_range
    masked = [np.asarray(u, dtype=np.int64) % mod for u in uploads]
    for i in range(n if pairwise_masks else 0):
        for j in range(i + 1, n):
            (mask,) = keystream_masks(os.urandom(32), mod, [shape])
            masked[i] = (masked[i] + mask) % mod
            masked[j] = (masked[j] - mask) % mod
    total = np.zeros(shape, dtype=np.int64)
    for m in masked:
        total = (total + m) % mod
    return centered_sum(total, n, plan)


def statistics_from_sum(total: np.ndarray, devices: int, layout: StatsLayout) -> RouterStatistics:
    """The noised per-persona sums and counts from the unmasked integer sum of ``devices`` uploads."""
    s = layout.levels_per_unit
    x = (np.asarray(total, dtype=np.float64) - devices * s * CLIPPING_RANGE) / s
    rows = x.reshape(len(layout.personas), layout.row)
    return RouterStatistics(
        layout.personas,
        rows[:, : layout.text_dimension],
        rows[:, layout.text_dimension : layout.row - 1],
        rows[:, -1],
    )


def clean_statistics(contributions: Sequence[np.ndarray], layout: StatsLayout) -> RouterStatistics:
    """The statistics without quantization or noise (a reference for what the private path approximates)."""
    total = np.sum(np.asarray(contributions, dtype=np.float64), axis=0)
    rows = total.reshape(len(layout.personas), layout.row)
    return RouterStatistics(
        layout.personas,
        rows[:, : layout.text_dimension],
        rows[:, layout.text_dimension : layout.row - 1],
        rows[:, -1],
    )


def privacy_summary(noise: DistributedNoise, delta: float, releases: int = 1) -> dict:
    """Epsilon of ``releases`` router uploads per user by the existing accountant, and the noise's settings."""
    from fedpers.privacy.accounting import epsilon_report

    report = epsilon_report([noise.event()] * releases, delta)
    return {
        "purpose": ROUTER_STATS_PURPOSE,
        "epsilon": report.epsilon,
        "delta": delta,
        "releases": releases,
        "noise_multiplier": noise.noise_multiplier,
        "clip": noise.clip,
        "variance_levels": noise.variance,
        "dropout_assumption": DROPOUT_ASSUMPTION,
    }
