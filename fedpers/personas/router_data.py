"""From conversations to what the router learns from and is measured on: each user's prompts and contexts.

A *prompt* is the opening user message of a conversation (what routing decides on before any answer);
its context is the conversation's profile (device, location) and the hour of that message
(:class:`fedpers.personas.context.Context`). Learning the router from devices (:func:`learn_router`) runs
the whole private path: per-device contributions, each device's noised quantized upload recorded in its
own ledger, the SecAgg+ sum, the server's centroids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpers.data.schema import Conversation, Turn
from fedpers.personas.centroid import CentroidRouterModel, model_from_statistics
from fedpers.personas.context import CONTEXT_DIMENSION, Context
from fedpers.personas.encoder import TextEncoder
from fedpers.personas.features import IDENTITY, FeatureMap
from fedpers.personas.router_stats import (
    RouterStatistics,
    StatsLayout,
    clean_statistics,
    device_contribution,
    private_upload,
    secure_sum,
    statistics_from_sum,
)
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.privacy.user_level import DistributedNoise


@dataclass(frozen=True)
class UserPrompts:
    """One user's prompts in order, their contexts and the user's persona (``None`` when undeclared)."""

    user_id: str
    persona: str | None
    prompts: tuple[str, ...]
    contexts: tuple[Context, ...]


def opening_turn(conversation: Conversation) -> Turn | None:
    """The conversation's first user message (``None``: it has none, or an empty one)."""
    first = next((t for t in conversation.turns if t.role == "user"), None)
    return first if first is not None and first.text.strip() else None


def user_prompts(conversations: Iterable[Conversation]) -> list[UserPrompts]:
    """The opening user message of each conversation, grouped by user in input order."""
    by_user: dict[str, list[Conversation]] = {}
    for conv in conversations:
        by_user.setdefault(conv.user_id, []).append(conv)
    out = []
    for user_id, convs in by_user.items():
        prompts, contexts = [], []
        for conv in convs:
            first = opening_turn(conv)
            if first is None:
                continue
            prompts.append(first.text)
            contexts.append(Context.of(conv.profile, first.ts))
        personas = {c.persona for c in convs}
        if len(personas) != 1:
            raise ValueError(f"user {user_id!r}: conversations of several personas {personas}")
        out.append(UserPrompts(user_id, personas.pop(), tuple(prompts), tuple(contexts)))
    return out


@dataclass(frozen=True)
class EncodedUser:
    """A user's prompt embeddings (rows) and context vectors (rows), and its persona (label)."""

    user_id: str
    persona: str | None
    text: np.ndarray
    context: np.ndarray


def encode_users(
    users: Sequence[UserPrompts], encoder: TextEncoder, context_dimension: int = CONTEXT_DIMENSION
) -> list[EncodedUser]:
    """Every user's prompts embedded in one batch."""
    texts = [p for u in users for p in u.prompts]
    rows = encoder.encode(texts) if texts else np.zeros((0, encoder.dimension), np.float32)
    out, start = [], 0
    for u in users:
        n = len(u.prompts)
        ctx = (
            np.stack([c.vector(context_dimension) for c in u.contexts])
            if n
            else np.zeros((0, context_dimension), np.float32)
        )
        out.append(EncodedUser(u.user_id, u.persona, rows[start : start + n], ctx))
        start += n
    return out


def mapped(user: EncodedUser, features: FeatureMap) -> EncodedUser:
    """``user`` with its prompt embeddings mapped by the public ``features`` map (unit rows)."""
    if not len(user.text):
        return EncodedUser(
            user.user_id,
            user.persona,
            np.zeros((0, features.dimension(user.text.shape[1])), np.float32),
            user.context,
        )
    return EncodedUser(user.user_id, user.persona, features(user.text), user.context)


def contributions(
    users: Sequence[EncodedUser],
    layout: StatsLayout,
    labels: Mapping[str, str] | None = None,
    use_context: bool = True,
) -> list[np.ndarray]:
    """Each device's clean contribution; its slot is its persona (or ``labels[user_id]``)."""
    out = []
    for u in users:
        slot = labels[u.user_id] if labels is not None else u.persona
        if slot is None:
            raise ValueError(f"user {u.user_id!r} has no persona and no label")
        ctx = {slot: u.context} if use_context else None
        out.append(device_contribution(layout, {slot: u.text}, ctx))
    return out


def private_statistics(
    contributions: Sequence[np.ndarray],
    layout: StatsLayout,
    noise: DistributedNoise,
    ledger_dir: Path,
    user_ids: Sequence[str],
    threshold: int | None = None,
    rng: np.random.Generator | None = None,
    pairwise_masks: bool = True,
    **details,
) -> RouterStatistics:
    """The whole private path, simulated: every device's noised quantized upload (recorded in its ledger under
    ``ledger_dir/<user>/router-ledger.json`` first), the SecAgg+ sum with pairwise masks, the server's
    statistics. ``threshold`` (SecAgg+'s reconstruction threshold, default: every device) sets each share."""
    n = len(contributions)
    t = n if threshold is None else threshold
    grid = layout.grid(max(1000, n))
    uploads = []
    for user_id, contribution in zip(user_ids, contributions, strict=True):
        ledger = PrivacyLedger(Path(ledger_dir) / user_id / "router-ledger.json", user_id)
        uploads.append(private_upload(contribution, layout, noise, t, ledger, rng, **details))
    return statistics_from_sum(secure_sum(uploads, grid, pairwise_masks), n, layout)


def learn_router(
    users: Sequence[EncodedUser],
    personas: Sequence[str],
    noise: DistributedNoise | None = None,
    ledger_dir: Path | None = None,
    min_count: float = 1.0,
    use_context: bool = True,
    rng: np.random.Generator | None = None,
    features: FeatureMap = IDENTITY,
    prior: RouterStatistics | None = None,
    **settings,
) -> CentroidRouterModel:
    """A router from devices' data: private (``noise`` and ``ledger_dir`` given) or clean (neither). Each
    device maps its embeddings with the public ``features`` map before its contribution. ``prior``: clean
    statistics of public users (:func:`public_statistics`) added to the devices' before the centroids."""
    if not users:
        raise ValueError("no users to learn the router from")
    if features.kind != "identity":
        users = [mapped(u, features) for u in users]
    layout = StatsLayout(
        tuple(personas), users[0].text.shape[1], users[0].context.shape[1] if use_context else 0
    )
    parts = contributions(users, layout, use_context=use_context)
    if noise is None:
        stats = clean_statistics(parts, layout)
    else:
        if ledger_dir is None:
            raise ValueError("the private path needs a ledger directory for the devices' ledgers")
        stats = private_statistics(
            parts, layout, noise, ledger_dir, [u.user_id for u in users], rng=rng
        )
    if prior is not None:
        stats = stats + prior
    if not use_context:
        settings = {"context_weight": 0.0, **settings}
    return model_from_statistics(stats, min_count=min_count, features=features, **settings)


def public_statistics(
    users: Sequence[EncodedUser],
    personas: Sequence[str],
    features: FeatureMap = IDENTITY,
    use_context: bool = True,
) -> RouterStatistics | None:
    """The router's public warm start: the statistics public users (documented as public; never a device's
    data) would send, clean, under the same ``features`` map and layout as the devices'. Added to the
    devices' noised sums, each public user counts as one more device whose contribution needs no noise:
    a persona with few (or no) devices keeps a centroid, and the devices' data moves it. Users of personas
    outside ``personas`` are left out; ``None`` when none is left."""
    keep = [u for u in users if u.persona in set(personas)]
    if not keep:
        return None
    if features.kind != "identity":
        keep = [mapped(u, features) for u in keep]
    layout = StatsLayout(
        tuple(personas), keep[0].text.shape[1], keep[0].context.shape[1] if use_context else 0
    )
    return clean_statistics(contributions(keep, layout, use_context=use_context), layout)
