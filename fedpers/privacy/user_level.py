"""User-level distributed DP: Skellam noise added on the devices, inside SecAgg+'s integer domain.

In a user-level DP round every device's upload ``u`` — its clipped adapter delta (L2 norm at most
``update_clip``) in its slot, plus its count entry (``update_clip``) — has L2 norm at most
``C = sqrt(2) * update_clip``. SecAgg+ quantizes each coordinate ``x`` to ``round(s * (x + c))`` with
``s = R / (2c)`` levels per unit (``c`` the quantizer's range, ``R`` its number of levels) and stochastic
rounding. Before masking, the device adds to every coordinate (every slot and the count vector) an
independent share of symmetric Skellam noise ``Poisson(v_i / 2) - Poisson(v_i / 2)`` drawn from OS entropy,
``v_i = v / t`` with ``t`` the SecAgg+ reconstruction threshold. Sums of independent Skellam variables are
Skellam, and SecAgg+ cannot unmask a sum of fewer than ``t`` uploads (each device's masks need ``t``
shares), so every sum the server unmasks carries Skellam noise of variance at least

    v = (z * C * s)^2        (z: ``user_noise_multiplier``; noise std z * C in the adapter's units)

on each coordinate: the server never sees an un-noised per-persona sum or count, nor one contributor's
update in clear. Dropouts down to the threshold leave at least ``v``; more survivors only add noise. The
guarantee assumes a server that follows the protocol (honest but curious): it cannot choose which sum it
learns, only observe it.

Sensitivity, replacing one user's upload by the all-zero upload (the quantizer's offset ``s * c`` is the
same for both): ``||round(s u)||_2 <= s * C + sqrt(d)`` for ``d`` noised coordinates (stochastic rounding
moves each by less than one level), and ``||round(s u)||_1 <= sqrt(d) * ||round(s u)||_2``. One round is
one Skellam release with these, accounted by the Skellam RDP bound (Agarwal, Kairouz & Liu, "The Skellam
Mechanism for Differentially Private Federated Learning", NeurIPS 2021; :mod:`fedpers.privacy.skellam`).
A user's user-level epsilon is the composition of one such release per round the user uploaded in, over
every run; the device charges it to its own ledger *before* the upload leaves, so a crash can only
over-report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedpers.privacy.ledger import LedgerEntry
from fedpers.privacy.skellam import SkellamEvent

USER_LEVEL_PURPOSE = "user-level-dp-skellam"
# the SecAgg+ grid of a noised round: R = 2**17 levels over [-c, c], i.e. s * C = 2**16 * sqrt(2) levels
# per clipping norm; fine enough that rounding adds under 1 % to the sensitivity of a 200k-coordinate
# upload, coarse enough that the Poisson draws stay exact integers (variance far below 2**52)
NOISED_QUANTIZATION_BITS = 17
DROPOUT_ASSUMPTION = (
    "each device adds 1/t of the noise, t the SecAgg+ reconstruction threshold; SecAgg+ cannot unmask a sum "
    "of fewer than t uploads, so any sum the server unmasks, after any dropouts, carries at least the full noise"
)


def upload_clip_norm(update_clip: float) -> float:
    """``C``: the L2 bound of a whole upload, the clipped delta plus the count entry, both at most ``update_clip``."""
    return math.sqrt(2.0) * update_clip


@dataclass(frozen=True)
class DistributedNoise:
    """One round's distributed Skellam noise, in integer levels of the SecAgg+ grid (see the module docstring).

    ``levels_per_unit`` is ``s = R / (2c)``; ``dimension`` the number of noised coordinates of an upload.
    """

    noise_multiplier: float
    clip: float
    levels_per_unit: float
    dimension: int

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(
                f"user_noise_multiplier must be positive, got {self.noise_multiplier}: "
                "without noise nothing is private"
            )
        if not (self.clip > 0 and self.levels_per_unit > 0 and self.dimension > 0):
            raise ValueError(
                f"distributed noise needs a positive clip, grid and dimension, got {self.clip}, "
                f"{self.levels_per_unit}, {self.dimension}"
            )

    @classmethod
    def for_round(
        cls,
        noise_multiplier: float,
        update_clip: float,
        clipping_range: float,
        quantization_range: int,
        dimension: int,
    ) -> DistributedNoise:
        """The noise of a round whose SecAgg+ quantizer maps ``[-clipping_range, clipping_range]`` to
        ``quantization_range`` levels."""
        return cls(
            noise_multiplier,
            upload_clip_norm(update_clip),
            quantization_range / (2.0 * clipping_range),
            dimension,
        )

    @classmethod
    def for_settings(
        cls, noise_multiplier: float, update_clip: float, dimension: int
    ) -> DistributedNoise:
        """The noise of a round on the grid a user-level DP run uses: ``2**NOISED_QUANTIZATION_BITS`` levels
        over ``[-update_clip, update_clip]`` (every coordinate of a clipped upload lies there)."""
        return cls.for_round(
            noise_multiplier, update_clip, update_clip, 2**NOISED_QUANTIZATION_BITS, dimension
        )

    @property
    def variance(self) -> float:
        """``v``: the per-coordinate variance, in levels squared, of the noise in every unmasked sum."""
        return (self.noise_multiplier * self.clip * self.levels_per_unit) ** 2

    @property
    def l2_sensitivity(self) -> float:
        return self.clip * self.levels_per_unit + math.sqrt(self.dimension)

    @property
    def l1_sensitivity(self) -> float:
        return math.sqrt(self.dimension) * self.l2_sensitivity

    def share_variance(self, threshold: int) -> float:
        """``v / t``: what one device adds when SecAgg+ needs ``t`` shares to unmask (so at least ``t``
        uploads are in any sum it unmasks)."""
        if threshold < 1:
            raise ValueError(f"a SecAgg+ threshold is at least 1, got {threshold}")
        return self.variance / threshold

    def event(self) -> SkellamEvent:
        return SkellamEvent(self.variance, self.l2_sensitivity, self.l1_sensitivity, 1)

    def details(self) -> dict:
        return {
            "mechanism": "skellam, added on the devices before SecAgg+ masking",
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "levels_per_unit": self.levels_per_unit,
            "dimension": self.dimension,
            "dropout_assumption": DROPOUT_ASSUMPTION,
        }


def user_level_entry(noise: DistributedNoise, **details) -> LedgerEntry:
    """One round's user-level release, a Skellam event of ``noise``, as a ledger entry."""
    return LedgerEntry(USER_LEVEL_PURPOSE, [noise.event()], {**details, **noise.details()})
