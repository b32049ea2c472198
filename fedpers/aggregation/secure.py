"""Arithmetic of secure aggregation: mask keystreams and quantization settings for Flower's SecAgg+.

Masks: Flower's ``pseudo_rand_gen`` folds the 256-bit shared secret into a 32-bit seed for
``np.random.RandomState``, so anyone can search 2^32 seeds for a mask. :func:`keystream_masks` draws
the same kind of arrays from a ChaCha20 keystream keyed by SHA-256 of the whole secret instead.

Quantization: SecAgg+ maps each float in ``[-clipping_range, clipping_range]`` to an integer in
``[0, quantization_range]`` by stochastic rounding and sums modulo ``modulus_range``. A client
clips its update to L2 norm ``bound`` first, so every coordinate already lies in ``[-bound, bound]``
and the quantizer, set to that range, never truncates. With ``quantization_range = 2**30`` the
rounding error of one coordinate is below ``bound / 2**29``; the modulus leaves room for the sum
of ``max_clients`` uploads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MASK_DOMAIN = b"fedpers/secagg+/mask/v1"
QUANTIZATION_BITS = 30  # Flower's stochastic rounding casts to int32: at most 2**30 keeps headroom
NOISE_HEADROOM_BITS = 16


def keystream_masks(
    seed: bytes, mod_range: int, shapes: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """Arrays of ``shapes``, uniform on ``[0, mod_range)`` (int64), from ChaCha20 keyed by the whole ``seed``.

    A drop-in for Flower's ``pseudo_rand_gen(seed, num_range, dimensions_list)``; ``mod_range`` must be
    a power of two no larger than 2**63 so that masking the keystream's 64-bit words is exactly uniform.
    """
    if mod_range < 2 or mod_range & (mod_range - 1) or mod_range > 2**63:
        raise ValueError(f"mod_range must be a power of two in [2, 2**63], got {mod_range}")
    if len(seed) < 16:
        raise ValueError(f"a mask seed must have at least 128 bits, got {8 * len(seed)}")
    key = hashlib.sha256(MASK_DOMAIN + seed).digest()
    sizes = [int(np.prod(shape)) if len(shape) else 1 for shape in shapes]
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(bytes(8 * sum(sizes))), dtype="<u8")
    values = (words & np.uint64(mod_range - 1)).astype(np.int64)
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        chunk = values[start : start + size]
        out.append(np.array(chunk[0], dtype=np.int64) if len(shape) == 0 else chunk.reshape(shape))
        start += size
    return out


@dataclass(frozen=True)
class QuantizationPlan:
    """SecAgg+ ``clipping_range``, ``quantization_range``, ``modulus_range`` and ``max_weight`` for a bound.

    ``max_weight = 1`` with every client reporting ``num_examples = 1`` makes Flower's weighting
    factor exactly ``quantization_range``, so the unmasked result is the plain mean of the uploads
    over the ``n`` clients that were aggregated; ``n`` times it is their sum.
    """

    clipping_range: float
    quantization_range: int = 2**QUANTIZATION_BITS
    modulus_range: int = 2**40
    max_weight: float = 1.0

    @classmethod
    def for_bound(
        cls,
        bound: float,
        max_clients: int = 1000,
        bits: int = QUANTIZATION_BITS,
        noised: bool = False,
    ) -> QuantizationPlan:
        """The plan for uploads bounded by ``bound`` per coordinate, on ``2**bits`` levels.

        The modulus holds the sum of ``max_clients`` quantized uploads and the weighting factors with a
        factor 2 to spare; ``noised`` adds ``NOISE_HEADROOM_BITS`` for noise the devices add in the integer
        domain (user-level DP): summed noise of up to ``2**NOISE_HEADROOM_BITS / 40`` times the range ``2**bits``
        in standard deviation stays 20 standard deviations clear of wrapping around."""
        if not bound > 0 or not math.isfinite(bound):
            raise ValueError(
                f"the bound on upload coordinates must be positive and finite, got {bound}"
            )
        if not 2 <= bits <= QUANTIZATION_BITS:
            raise ValueError(f"quantization bits must be in [2, {QUANTIZATION_BITS}], got {bits}")
        clients_bits = max(1, math.ceil(math.log2(max_clients + 1)))
        modulus_bits = bits + clients_bits + 1 + (NOISE_HEADROOM_BITS if noised else 0)
        return cls(float(bound), 2**bits, 2**modulus_bits, 1.0)

    @property
    def step(self) -> float:
        """Width of one quantization level; stochastic rounding errs by less than this per coordinate."""
        return 2 * self.clipping_range / self.quantization_range


def centered_sum(total: int | np.ndarray, count: int, plan: QuantizationPlan) -> np.ndarray:
    """The integer sum of ``count`` quantized uploads from its residue ``total`` modulo ``modulus_range``.

    Each upload lies in ``[0, quantization_range]`` per coordinate, so the plain sum lies in
    ``[0, count * quantization_range]``; noise the devices add may take it below zero or above that. The
    representative nearest to the middle ``count * quantization_range / 2`` is the sum as long as the
    noise stays within half the modulus's headroom, which :meth:`QuantizationPlan.for_bound` sizes for.
    Without noise it is the plain residue (the modulus is more than twice the largest sum).
    """
    middle = count * plan.quantization_range // 2
    half = plan.modulus_range // 2
    shifted = (np.asarray(total, dtype=np.int64) - middle + half) % plan.modulus_range
    return shifted - half + middle
