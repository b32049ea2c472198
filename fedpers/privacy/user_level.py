"""User-level DP (DP-FedAvg): what one round costs a user, charged to the user's own user-level ledger.

In a user-level DP round each device clips its whole upload ``u`` — the adapter delta (L2 norm at most
``update_clip``) plus its count entry (``update_clip``) — to ``C = sqrt(2) * update_clip``, and the server
adds ``N(0, (sigma * C)^2 I)`` to the sum of the uploads before anything is used. Adding or removing one
user changes that sum by at most ``C`` in L2 norm, so the round is a Gaussian mechanism of noise multiplier
``sigma`` on the user's whole contribution: ``GaussianEvent(sigma, 1.0, 1)`` (sampling rate 1: no
amplification by sampling is claimed). A user's user-level epsilon is the composition of one such event
per round the user uploaded in, over every run; the device charges it *before* the upload leaves, so a
crash can only over-report.
"""

from __future__ import annotations

import math

from fedpers.privacy.accounting import GaussianEvent
from fedpers.privacy.ledger import LedgerEntry

USER_LEVEL_PURPOSE = "user-level-dp-fedavg"


def upload_clip_norm(update_clip: float) -> float:
    """``C``: the L2 bound of a whole upload, the clipped delta plus the count entry, both at most ``update_clip``."""
    return math.sqrt(2.0) * update_clip


def user_level_entry(noise_multiplier: float, update_clip: float, **details) -> LedgerEntry:
    """One round's user-level release, ``GaussianEvent(noise_multiplier, 1.0, 1)``, as a ledger entry."""
    return LedgerEntry(
        USER_LEVEL_PURPOSE,
        [GaussianEvent(noise_multiplier, 1.0, 1)],
        {**details, "noise_multiplier": noise_multiplier, "clip": upload_clip_norm(update_clip)},
    )
