"""Per-user train / held-out split that is deterministic and independent of input order."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from fedpers.data.schema import Conversation


def stable_unit(*parts: object) -> float:
    """Map ``parts`` to a float in ``[0, 1)`` via SHA-256; stable across processes and platforms."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def heldout_count(n: int, heldout_fraction: float) -> int:
    """How many of a user's ``n`` conversations are held out: rounded fraction, at least one of each side when ``n >= 2``."""
    if n < 2:
        return 0
    return min(max(round(n * heldout_fraction), 1), n - 1)


def train_heldout_split(
    conversations: Sequence[Conversation], heldout_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Conversation], list[Conversation]]:
    """Split each user's conversations into train and held-out.

    Within a user, conversations are ranked by a stable hash of ``(seed, user_id, conversation_id)``
    and the lowest-ranked :func:`heldout_count` are held out, so the assignment does not depend on
    input order. A user with a single conversation keeps it in train. Both lists keep input order.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    by_user: dict[str, list[Conversation]] = defaultdict(list)
    for conv in conversations:
        by_user[conv.user_id].append(conv)
    heldout_ids: set[tuple[str, str]] = set()
    for user_id, convs in by_user.items():
        ranked = sorted(
            convs, key=lambda c: (stable_unit(seed, user_id, c.conversation_id), c.conversation_id)
        )
        heldout_ids.update(
            (user_id, c.conversation_id)
            for c in ranked[: heldout_count(len(convs), heldout_fraction)]
        )
    train = [c for c in conversations if (c.user_id, c.conversation_id) not in heldout_ids]
    heldout = [c for c in conversations if (c.user_id, c.conversation_id) in heldout_ids]
    return train, heldout
