"""Which users and conversations of a conversation JSONL file a run takes: per declared persona, seeded.

Rule (:func:`select_conversations`), for a file whose users declare personas:

1. A user's persona is the ``persona`` of its first conversation in the file; its conversations declaring
   another persona are left out (counted in :attr:`Selection.conflicting`). Users whose persona is not one
   of the run's ``personas``, or who declare none, are left out (counted in :attr:`Selection.unlisted` and
   :attr:`Selection.unlabelled`).
2. For each declared persona :math:`p`, its users are ranked by :math:`h(s, \\text{user}, p, u)`, a SHA-256
   of the seed :math:`s` and the user id (:func:`fedpers.data.split.stable_unit`): a seeded random order
   that does not depend on the file's order. The first ``users_per_persona`` are taken (0: all).
3. ``max_users`` (0: no cap) caps the total: the lists of step 2 are taken round-robin, one user of each
   persona in declared order per turn, until the cap, so per-persona counts differ by at most one unless a
   persona runs out of users.
4. Each chosen user keeps at most ``conversations_per_user`` conversations: the lowest-ranked by
   :math:`h(s, \\text{conversation}, u, c)`, again seeded and order-free. The result keeps file order.

A file in which no user declares a persona (e.g. for ``persona_mode = "inferred"``) is one pool:
``max_users`` users by the same ranking, ``users_per_persona`` not applying. A file whose users declare
personas, none of them the run's, is an error (its devices could train no declared persona).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedpers.data.schema import Conversation
from fedpers.data.split import stable_unit


@dataclass(frozen=True)
class PersonaPool:
    """One declared persona: how many users of the data declare it, and those chosen (in rank order)."""

    persona: str
    available: int
    selected: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    """What :func:`select_conversations` chose from a file, and what it left out."""

    conversations: tuple[Conversation, ...]
    users: tuple[str, ...]
    """Chosen users in file order (a simulation's node ``i`` is ``users[i]``)."""
    personas: tuple[PersonaPool, ...]
    """One per declared persona, in declared order; empty for a file in which no user declares a persona."""
    unlisted: Mapping[str, int] = field(default_factory=dict)
    """Persona declared in the file but not among the run's personas -> its users (left out)."""
    unlabelled: int = 0
    """Users declaring no persona in a file whose other users do (left out)."""
    conflicting: int = 0
    """Conversations left out because they declare another persona than their user's first conversation."""
    available_users: int = 0
    capped: bool = False
    """Whether ``max_users`` cut the users the per-persona choice took."""
    users_per_persona: int = 0
    conversations_per_user: int = 0
    max_users: int = 0
    seed: int = 0

    def counts(self) -> dict[str, int]:
        """Chosen users per declared persona."""
        return {pool.persona: len(pool.selected) for pool in self.personas}


def _users_by_persona(
    conversations: Sequence[Conversation],
) -> tuple[dict[str, str | None], dict[str, list[Conversation]]]:
    persona: dict[str, str | None] = {}
    by_user: dict[str, list[Conversation]] = {}
    for conv in conversations:
        persona.setdefault(conv.user_id, conv.persona)
        by_user.setdefault(conv.user_id, []).append(conv)
    return persona, by_user


def _ranked(users: list[str], seed: int, group: str) -> list[str]:
    return sorted(users, key=lambda u: (stable_unit(seed, "user", group, u), u))


def _round_robin(lists: Sequence[Sequence[str]], cap: int) -> list[list[str]]:
    taken: list[list[str]] = [[] for _ in lists]
    total, turn = 0, 0
    while total < cap and any(turn < len(xs) for xs in lists):
        for i, xs in enumerate(lists):
            if turn < len(xs) and total < cap:
                taken[i].append(xs[turn])
                total += 1
        turn += 1
    return taken


def select_conversations(
    conversations: Sequence[Conversation],
    personas: Sequence[str],
    users_per_persona: int,
    conversations_per_user: int,
    max_users: int,
    seed: int,
) -> Selection:
    """The users and conversations a run takes from a file's valid ``conversations`` (rule: module doc)."""
    for name, value in (
        ("users_per_persona", users_per_persona),
        ("max_users", max_users),
    ):
        if value < 0:
            raise ValueError(f"setting {name}: must be >= 0 (0: no limit), got {value}")
    if conversations_per_user < 1:
        raise ValueError(
            f"setting conversations_per_user: must be >= 1, got {conversations_per_user}"
        )
    persona_of, by_user = _users_by_persona(conversations)
    labels = Counter(p for p in persona_of.values() if p is not None)
    declared = list(dict.fromkeys(personas))
    pools: list[PersonaPool] = []
    capped = False
    if not labels:  # no persona in the file: one pool
        ranked = _ranked(list(by_user), seed, "")
        chosen = set(ranked[:max_users] if max_users else ranked)
        capped = len(chosen) < len(ranked)
    else:
        if not set(labels) & set(declared):
            raise ValueError(
                f"no user of the data declares any of the personas {', '.join(declared)} "
                f"(setting personas); the file declares: {', '.join(sorted(labels))}"
            )
        lists = []
        for p in declared:
            ranked = _ranked([u for u, q in persona_of.items() if q == p], seed, p)
            lists.append(ranked[:users_per_persona] if users_per_persona else ranked)
        wanted = sum(len(xs) for xs in lists)
        if max_users and wanted > max_users:
            lists, capped = _round_robin(lists, max_users), True
        pools = [
            PersonaPool(p, labels.get(p, 0), tuple(xs))
            for p, xs in zip(declared, lists, strict=True)
        ]
        chosen = {u for pool in pools for u in pool.selected}
    kept_ids: set[tuple[str, str]] = set()
    conflicting = 0
    for user in chosen:
        own = [c for c in by_user[user] if c.persona == persona_of[user]]
        conflicting += len(by_user[user]) - len(own)
        ranked_convs = sorted(
            own,
            key=lambda c: (
                stable_unit(seed, "conversation", user, c.conversation_id),
                c.conversation_id,
            ),
        )
        kept_ids.update((user, c.conversation_id) for c in ranked_convs[:conversations_per_user])
    kept = tuple(c for c in conversations if (c.user_id, c.conversation_id) in kept_ids)
    unlisted = {p: n for p, n in sorted(labels.items()) if p not in declared}
    return Selection(
        conversations=kept,
        users=tuple(dict.fromkeys(c.user_id for c in kept)),
        personas=tuple(pools),
        unlisted=unlisted,
        unlabelled=sum(1 for p in persona_of.values() if p is None) if labels else 0,
        conflicting=conflicting,
        available_users=len(by_user),
        capped=capped,
        users_per_persona=users_per_persona,
        conversations_per_user=conversations_per_user,
        max_users=max_users,
        seed=seed,
    )
