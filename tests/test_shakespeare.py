"""tinyshakespeare importer: exact pairs on a small text, speaker counts and schema round-trip on the real file."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import pytest

from fedpers.data import (
    import_shakespeare,
    parse_speeches,
    read_jsonl,
    speaker_slug,
    write_jsonl,
)
from fedpers.data.cli import register
from fedpers.data.shakespeare import answer_pairs, read_text, shakespeare_path

SMALL_PLAY = """\
ALICE:
Hello there.

BOB:
Hi Alice.
How are you?

BOB:
Still me.

Alice:
Fine.

CAROL:

ALICE:
Carol said nothing.

and kept saying it.

KING DAVE III:
Bye.
"""

real_file = pytest.mark.skipif(
    "FEDPERS_SHAKESPEARE" in os.environ,
    reason="these tests read the text shipped with fedpers ($FEDPERS_SHAKESPEARE points elsewhere)",
)


@pytest.fixture
def small_play(tmp_path: Path) -> Path:
    path = tmp_path / "play.txt"
    path.write_text(SMALL_PLAY, encoding="utf-8")
    return path


def test_parse_speeches_small() -> None:
    speeches = parse_speeches(SMALL_PLAY)
    assert [(s.speaker, s.text, s.line) for s in speeches] == [
        ("ALICE", "Hello there.", 1),
        ("BOB", "Hi Alice.\nHow are you?", 4),
        ("BOB", "Still me.", 8),
        ("Alice", "Fine.", 11),
        ("ALICE", "Carol said nothing.\n\nand kept saying it.", 16),
        ("KING DAVE III", "Bye.", 21),
    ]


def test_answer_pairs_skip_same_speaker_and_case_variants() -> None:
    pairs = answer_pairs(parse_speeches(SMALL_PLAY))
    assert [(p.speaker, a.speaker) for p, a in pairs] == [
        ("ALICE", "BOB"),
        ("BOB", "Alice"),
        ("ALICE", "KING DAVE III"),
    ]


def test_import_small_exact(small_play: Path) -> None:
    convs = import_shakespeare(small_play, min_speeches=1)
    assert [c.to_dict() for c in convs] == [
        {
            "user_id": "alice",
            "conversation_id": "alice-0000",
            "profile": {"speaker": "ALICE"},
            "turns": [
                {"role": "user", "text": "Still me."},
                {"role": "assistant", "text": "Fine."},
            ],
        },
        {
            "user_id": "bob",
            "conversation_id": "bob-0000",
            "profile": {"speaker": "BOB"},
            "turns": [
                {"role": "user", "text": "Hello there."},
                {"role": "assistant", "text": "Hi Alice.\nHow are you?"},
            ],
        },
        {
            "user_id": "king-dave-iii",
            "conversation_id": "king-dave-iii-0000",
            "profile": {"speaker": "KING DAVE III"},
            "turns": [
                {"role": "user", "text": "Carol said nothing.\n\nand kept saying it."},
                {"role": "assistant", "text": "Bye."},
            ],
        },
    ]
    assert all(c.persona is None for c in convs)
    assert import_shakespeare(small_play, min_speeches=2) == []


def test_speaker_slug() -> None:
    assert speaker_slug("KING RICHARD III") == "king-richard-iii"
    assert speaker_slug("Senators, &C") == "senators-c"
    assert speaker_slug("Second murderer") == speaker_slug("Second Murderer")


def test_argument_checks(small_play: Path) -> None:
    with pytest.raises(ValueError, match="min_speeches"):
        import_shakespeare(small_play, min_speeches=0)
    with pytest.raises(ValueError, match="max_users"):
        import_shakespeare(small_play, max_users=0)


@pytest.fixture(scope="module")
def real_conversations():
    return import_shakespeare(shakespeare_path(), min_speeches=30)


@real_file
def test_real_file_speaker_counts(real_conversations) -> None:
    # The data README counts 75 speakers with >= 30 speeches, treating names case-sensitively. Counting answers
    # (speeches that follow a different speaker, empty speeches dropped) reproduces that number case-sensitively;
    # our users are slugs, which merge "Second Murderer" (29 answers) with "Second murderer" (1): 30, so 76.
    speeches = parse_speeches(read_text(shakespeare_path()))
    case_sensitive = Counter(
        a.speaker for p, a in zip(speeches, speeches[1:]) if p.speaker != a.speaker
    )
    assert sum(1 for n in case_sensitive.values() if n >= 30) == 75
    assert case_sensitive["Second Murderer"] == 29 and case_sensitive["Second murderer"] == 1

    per_user = Counter(c.user_id for c in real_conversations)
    assert len(per_user) == 76
    assert per_user["second-murderer"] == 30
    assert min(per_user.values()) >= 30
    assert per_user.most_common(1) == [("gloucester", 211)]


@real_file
def test_real_file_ordering_and_limits(real_conversations) -> None:
    users = list(dict.fromkeys(c.user_id for c in real_conversations))
    counts = Counter(c.user_id for c in real_conversations)
    assert users == sorted(users, key=lambda u: (-counts[u], u))
    top = import_shakespeare(shakespeare_path(), min_speeches=30, max_users=5)
    assert list(dict.fromkeys(c.user_id for c in top)) == users[:5]


@real_file
def test_real_file_roundtrip_through_schema(real_conversations, tmp_path: Path) -> None:
    path = tmp_path / "shakespeare.jsonl"
    assert write_jsonl(path, real_conversations) == len(real_conversations)
    result = read_jsonl(path, mode="strict")
    assert result.conversations == real_conversations
    for conv in result.conversations:
        assert [t.role for t in conv.turns] == ["user", "assistant"]
        assert (
            conv.profile["speaker"] and speaker_slug(str(conv.profile["speaker"])) == conv.user_id
        )


def test_cli_import(small_play: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="fedpers")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "out.jsonl"
    args = parser.parse_args(
        ["import-shakespeare", "--src", str(small_play), "--min-speeches", "1", "--out", str(out)]
    )
    assert args.func(args) == 0
    assert "3 conversations (3 speakers)" in capsys.readouterr().out
    assert len(read_jsonl(out).conversations) == 3


def test_a_missing_text_names_where_it_was_looked_for_and_where_to_get_it(
    tmp_path, monkeypatch, small_play
):
    monkeypatch.setenv("FEDPERS_SHAKESPEARE", str(tmp_path / "nowhere.txt"))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.txt.*FEDPERS_SHAKESPEARE.*char-rnn"):
        import_shakespeare()
    monkeypatch.setenv("FEDPERS_SHAKESPEARE", str(small_play))
    assert shakespeare_path() == small_play
    assert import_shakespeare(min_speeches=1) == import_shakespeare(small_play, min_speeches=1)


def test_the_text_ships_with_the_package_with_its_notice():
    from fedpers.data.shakespeare import DEFAULT_SHAKESPEARE_PATH

    assert DEFAULT_SHAKESPEARE_PATH.is_file()
    text = read_text(DEFAULT_SHAKESPEARE_PATH)
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    notice = (DEFAULT_SHAKESPEARE_PATH.parent / "NOTICE.md").read_text(encoding="utf-8")
    assert "public domain" in notice.lower()
