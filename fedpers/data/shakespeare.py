"""Importer turning tinyshakespeare into conversations: one user per speaker, one conversation per answer.

A speech is a block of non-blank lines whose first line is ``NAME:``. A speech by speaker S that
directly follows a speech by a different speaker P is an *answer*: it becomes one conversation of
user S with P's speech as the user turn and S's speech as the assistant turn, so a model trained on
S's conversations learns to reply in S's voice. Speakers are identified by their slug, which merges
spellings that differ only in case (``Nurse``/``NURSE``); empty speeches (a name line with no text)
are dropped before pairing.
"""

from __future__ import annotations

import gzip
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from fedpers.data.schema import Conversation, Turn

DEFAULT_SHAKESPEARE_PATH = Path(__file__).resolve().parent / "texts" / "tinyshakespeare.txt.gz"
"""The text shipped with the package (gzip; public domain, see ``texts/NOTICE.md`` beside it)."""
SHAKESPEARE_ENV = "FEDPERS_SHAKESPEARE"
SHAKESPEARE_SOURCE = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


def shakespeare_path() -> Path:
    """Where the tinyshakespeare text is read from: ``$FEDPERS_SHAKESPEARE``, else the copy shipped with
    the package (:data:`DEFAULT_SHAKESPEARE_PATH`)."""
    env = os.environ.get(SHAKESPEARE_ENV)
    return Path(env).expanduser() if env else DEFAULT_SHAKESPEARE_PATH


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of ``path``, UTF-8, gunzipped when the name ends in ``.gz``."""
    source = Path(path)
    if source.suffix == ".gz":
        with gzip.open(source, "rt", encoding="utf-8") as fh:
            return fh.read()
    return source.read_text(encoding="utf-8")


_SPEAKER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9 ,.&'-]{0,40}):\s*$")


@dataclass(frozen=True)
class Speech:
    """One speech: the speaker's name as written, the text, and the 1-based line of the name."""

    speaker: str
    text: str
    line: int


def speaker_slug(name: str) -> str:
    """Lowercase slug of a speaker name, e.g. ``'KING RICHARD III'`` -> ``'king-richard-iii'``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_speeches(text: str) -> list[Speech]:
    """Split play text into non-empty speeches; a block without a ``NAME:`` line continues the previous speech."""
    speeches: list[Speech] = []
    block: list[tuple[int, str]] = []
    for lineno, line in enumerate([*text.splitlines(), ""], start=1):
        if line.strip():
            block.append((lineno, line.rstrip()))
            continue
        if block:
            _add_block(speeches, block)
            block = []
    return [s for s in speeches if s.text]


def _add_block(speeches: list[Speech], block: list[tuple[int, str]]) -> None:
    first_line, header = block[0]
    match = _SPEAKER_LINE.match(header)
    if match:
        body = "\n".join(line for _, line in block[1:]).strip()
        speeches.append(Speech(speaker=match.group(1).strip(), text=body, line=first_line))
    elif speeches:
        prev = speeches[-1]
        body = "\n".join(line for _, line in block)
        speeches[-1] = Speech(prev.speaker, f"{prev.text}\n\n{body}".strip(), prev.line)


def answer_pairs(speeches: list[Speech]) -> list[tuple[Speech, Speech]]:
    """``(prompt, answer)`` pairs: each speech that directly follows a speech by a different speaker."""
    return [
        (prev, cur)
        for prev, cur in zip(speeches, speeches[1:])
        if speaker_slug(prev.speaker) != speaker_slug(cur.speaker)
    ]


def _display_names(speeches: list[Speech]) -> dict[str, str]:
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for s in speeches:
        spellings[speaker_slug(s.speaker)][s.speaker] += 1
    return {slug: counts.most_common(1)[0][0] for slug, counts in spellings.items()}


def speeches_to_conversations(
    speeches: list[Speech], min_speeches: int = 30, max_users: int | None = None
) -> list[Conversation]:
    """Conversations for speakers with at least ``min_speeches`` answers, most answers first, then by slug."""
    names = _display_names(speeches)
    by_speaker: dict[str, list[tuple[Speech, Speech]]] = defaultdict(list)
    for prompt, answer in answer_pairs(speeches):
        by_speaker[speaker_slug(answer.speaker)].append((prompt, answer))
    kept = sorted(
        (slug for slug, pairs in by_speaker.items() if len(pairs) >= min_speeches),
        key=lambda s: (-len(by_speaker[s]), s),
    )
    if max_users is not None:
        kept = kept[:max_users]
    conversations = []
    for slug in kept:
        profile = {"speaker": names[slug]}
        for k, (prompt, answer) in enumerate(by_speaker[slug]):
            turns = (Turn(role="user", text=prompt.text), Turn(role="assistant", text=answer.text))
            conversations.append(
                Conversation(
                    user_id=slug,
                    conversation_id=f"{slug}-{k:04d}",
                    turns=turns,
                    persona=None,
                    profile=profile,
                )
            )
    return conversations


def import_shakespeare(
    path: str | os.PathLike[str] | None = None,
    min_speeches: int = 30,
    max_users: int | None = None,
) -> list[Conversation]:
    """Read tinyshakespeare from ``path`` (default :func:`shakespeare_path`) and return one conversation
    per answer (see module docstring)."""
    if min_speeches < 1:
        raise ValueError(f"min_speeches must be >= 1, got {min_speeches}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1, got {max_users}")
    source = Path(path) if path is not None else shakespeare_path()
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: tinyshakespeare text not found. Unset ${SHAKESPEARE_ENV} to use the copy shipped "
            f"with fedpers (not in Flower's app bundle: a ServerApp on the deployment engine needs "
            f"${SHAKESPEARE_ENV}), or point it (or `fedpers data import-shakespeare --src`) at a copy of "
            f"{SHAKESPEARE_SOURCE} (public domain; plain text or .gz)"
        )
    text = read_text(source)
    return speeches_to_conversations(
        parse_speeches(text), min_speeches=min_speeches, max_users=max_users
    )
