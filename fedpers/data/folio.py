"""Genre personas for tinyshakespeare's speakers: the play each speaker speaks in, and that play's genre.

The First Folio (1623) groups Shakespeare's plays as comedies, histories and tragedies. tinyshakespeare holds
nine plays; a speaker with at least 30 answers in it speaks in one of them, except the generic parts
(``First Citizen``, ``Servant``, ``Messenger``), which several plays share and which get no genre:

- comedies: The Tempest, Measure for Measure, The Taming of the Shrew, The Winter's Tale;
- histories: Richard II, Henry VI Part 3, Richard III (``Gloucester``, ``Queen Margaret``, ``Duchess of
  York`` speak in two of them, both histories);
- tragedies: Coriolanus, Romeo and Juliet.

:func:`with_genres` declares each speaker's genre as the ``persona`` of its conversations and leaves out the
speakers without one, so the import is a conversation JSONL with declared personas made from real text that
no one on this project wrote. :func:`public_speakers` names the speakers of each genre set aside as public
data (the public warm start and the layered personas' held-out scoring), so that no device holds them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from fedpers.data.schema import Conversation

GENRES: tuple[str, ...] = ("history", "tragedy", "comedy")
PUBLIC_PER_GENRE = 3
"""Speakers per genre set aside as public data by default (``--public-per-genre``, the genre scenario)."""

PLAY_GENRES: dict[str, str] = {
    "The Tempest": "comedy",
    "Measure for Measure": "comedy",
    "The Taming of the Shrew": "comedy",
    "The Winter's Tale": "comedy",
    "Richard II": "history",
    "Henry VI Part 3": "history",
    "Richard III": "history",
    "Coriolanus": "tragedy",
    "Romeo and Juliet": "tragedy",
}

_PLAYS: dict[str, tuple[str, ...]] = {
    "The Tempest": ("prospero", "miranda", "gonzalo", "sebastian", "antonio"),
    "Measure for Measure": (
        "duke-vincentio",
        "isabella",
        "lucio",
        "angelo",
        "escalus",
        "provost",
        "pompey",
        "claudio",
    ),
    "The Taming of the Shrew": (
        "petruchio",
        "tranio",
        "katharina",
        "baptista",
        "hortensio",
        "grumio",
        "lucentio",
        "gremio",
        "biondello",
    ),
    "The Winter's Tale": (
        "leontes",
        "camillo",
        "paulina",
        "polixenes",
        "autolycus",
        "clown",
        "florizel",
        "shepherd",
        "hermione",
    ),
    "Richard II": (
        "king-richard-ii",
        "henry-bolingbroke",
        "northumberland",
        "duke-of-york",
        "duke-of-aumerle",
    ),
    "Henry VI Part 3": (
        "warwick",
        "king-henry-vi",
        "york",
        "clifford",
        "edward",
        "richard",
        "prince-edward",
    ),
    "Richard III": (
        "gloucester",
        "king-richard-iii",
        "queen-elizabeth",
        "king-edward-iv",
        "buckingham",
        "queen-margaret",
        "duchess-of-york",
        "clarence",
        "hastings",
        "lady-anne",
        "first-murderer",
        "second-murderer",
        "catesby",
    ),
    "Coriolanus": (
        "menenius",
        "coriolanus",
        "sicinius",
        "brutus",
        "cominius",
        "volumnia",
        "aufidius",
        "marcius",
        "first-senator",
    ),
    "Romeo and Juliet": (
        "romeo",
        "juliet",
        "nurse",
        "benvolio",
        "mercutio",
        "friar-laurence",
        "capulet",
        "lady-capulet",
    ),
}

SPEAKER_PLAYS: dict[str, str] = {s: play for play, speakers in _PLAYS.items() for s in speakers}
"""Speaker slug -> the play (of :data:`PLAY_GENRES`) the speaker speaks in."""


def speaker_genre(slug: str) -> str | None:
    """The First Folio genre of the speaker ``slug`` (:func:`fedpers.data.speaker_slug`); ``None`` for a
    speaker not in :data:`SPEAKER_PLAYS` (a part several plays share, or one with too few answers)."""
    play = SPEAKER_PLAYS.get(slug)
    return PLAY_GENRES[play] if play is not None else None


def with_genres(conversations: Sequence[Conversation]) -> list[Conversation]:
    """``conversations`` whose speaker has a genre, each declaring it as its ``persona``; the rest left out."""
    out = []
    for c in conversations:
        genre = speaker_genre(c.user_id)
        if genre is not None:
            out.append(replace(c, persona=genre))
    return out


def public_speakers(conversations: Sequence[Conversation], per_genre: int) -> set[str]:
    """The ``per_genre`` speakers of each genre with the fewest answers in ``conversations`` (ties: by slug),
    set aside as public data."""
    if per_genre < 0:
        raise ValueError(f"per_genre must be >= 0, got {per_genre}")
    answers = Counter(c.user_id for c in conversations)
    chosen: set[str] = set()
    for genre in GENRES:
        speakers = sorted(
            (s for s in answers if speaker_genre(s) == genre), key=lambda s: (answers[s], s)
        )
        chosen.update(speakers[:per_genre])
    return chosen


def split_public(
    conversations: Sequence[Conversation], per_genre: int
) -> tuple[list[Conversation], list[Conversation]]:
    """``conversations`` as (devices', public): the public part is the conversations of
    :func:`public_speakers`, the rest stay the devices'."""
    public = public_speakers(conversations, per_genre)
    return (
        [c for c in conversations if c.user_id not in public],
        [c for c in conversations if c.user_id in public],
    )
