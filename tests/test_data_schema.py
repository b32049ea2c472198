"""Conversation JSONL schema: validation messages, strict vs skip reading, atomic writing."""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path

import pytest

from fedpers.data import (
    Conversation,
    DataValidationError,
    Feedback,
    Turn,
    ValidationIssue,
    read_jsonl,
    validate_record,
    write_jsonl,
)
from fedpers.data.cli import register


def record(user_id: str = "u1", conversation_id: str = "c1", **overrides: object) -> dict:
    base: dict = {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "persona": "field_worker",
        "profile": {"role": "Surveyor", "location": "Oslo", "remote": True, "floor": 3},
        "turns": [
            {"role": "user", "text": "VPN drops every 5 min.", "ts": "2024-03-05T09:14:00Z"},
            {
                "role": "assistant",
                "text": "Switch to the field profile.",
                "feedback": {"rating": 5, "sentiment": "positive"},
            },
        ],
    }
    base.update(overrides)
    return base


def write_lines(path: Path, lines: list[object]) -> Path:
    """Write raw lines: dicts/lists are JSON-encoded, strings are written as-is."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def issue_strings(path: Path) -> list[str]:
    return [str(i) for i in read_jsonl(path, mode="skip").issues]


# ------------------------------------------------------------------------ dataclasses


def test_validation_issue_str() -> None:
    assert (
        str(ValidationIssue("data.jsonl", 7, "turns[2].role", "bad"))
        == "data.jsonl:7: turns[2].role: bad"
    )


def test_roundtrip_dict_keeps_everything() -> None:
    data = record()
    conv = Conversation.from_dict(data)
    assert conv.to_dict() == data
    assert conv.turns[1].feedback == Feedback(rating=5, sentiment="positive")
    assert conv.texts("assistant") == ["Switch to the field profile."]


def test_optional_fields_are_omitted_and_defaulted() -> None:
    conv = Conversation(
        user_id="u", conversation_id="c", turns=(Turn("user", "hi"), Turn("assistant", "hello"))
    )
    assert conv.to_dict() == {
        "user_id": "u",
        "conversation_id": "c",
        "turns": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}],
    }
    back = Conversation.from_dict(conv.to_dict())
    assert back == conv and back.persona is None and dict(back.profile) == {}


def test_from_dict_raises_with_field_paths() -> None:
    with pytest.raises(DataValidationError) as err:
        Conversation.from_dict(record(turns=[{"role": "assistant", "text": ""}]))
    assert [str(i) for i in err.value.issues] == [
        "<dict>:0: turns[0].text: must be a non-empty string"
    ]


def test_null_persona_is_allowed() -> None:
    assert validate_record(record(persona=None)) == []


# ------------------------------------------------------------------------ exact messages


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"user_id": "u1",',
            ["<json>: invalid JSON: Expecting property name enclosed in double quotes (column 18)"],
        ),
        ('{"user_id": "u1"} trailing', ["<json>: invalid JSON: Extra data (column 19)"]),
        ('{"user_id": NaN}', ["<json>: invalid JSON: non-standard JSON constant NaN"]),
        ("[1, 2]", ["<record>: expected a JSON object, got array"]),
        (
            {k: v for k, v in record().items() if k != "user_id"},
            ["user_id: missing required field"],
        ),
        ({k: v for k, v in record().items() if k != "turns"}, ["turns: missing required field"]),
        (record(user_id=42), ["user_id: expected string, got integer"]),
        (record(conversation_id="  "), ["conversation_id: must be a non-empty string"]),
        (record(persona=7), ["persona: expected string, got integer"]),
        (record(turns="hello"), ["turns: expected array, got string"]),
        (record(turns=[]), ["turns: must contain at least one turn"]),
        (
            record(turns=[{"role": "user", "text": "hi"}]),
            ["turns: must contain at least one assistant turn"],
        ),
        (
            record(turns=[{"role": "user", "text": "hi"}, {"role": "bot", "text": "hello"}]),
            ["turns[1].role: must be one of 'user', 'assistant', 'system', got 'bot'"],
        ),
        (
            record(turns=[{"role": "assistant", "text": ""}]),
            ["turns[0].text: must be a non-empty string"],
        ),
        (record(turns=[{"role": "assistant"}]), ["turns[0].text: missing required field"]),
        (
            record(turns=[{"role": "assistant", "text": 3}]),
            ["turns[0].text: expected string, got integer"],
        ),
        (record(turns=["hello"]), ["turns[0]: expected object, got string"]),
        (record(usr_id="u1"), ["usr_id: unknown field (did you mean 'user_id'?)"]),
        (record(colour="red"), ["colour: unknown field"]),
        (
            record(turns=[{"role": "assistant", "text": "ok", "txt": "x"}]),
            ["turns[0].txt: unknown field (did you mean 'text'?)"],
        ),
        (
            record(turns=[{"role": "assistant", "text": "ok", "ts": "yesterday"}]),
            ["turns[0].ts: not an ISO-8601 timestamp: 'yesterday'"],
        ),
        (
            record(turns=[{"role": "assistant", "text": "ok", "feedback": {"rating": 7}}]),
            ["turns[0].feedback.rating: must be between 1 and 5, got 7"],
        ),
        (
            record(turns=[{"role": "assistant", "text": "ok", "feedback": {"rating": True}}]),
            ["turns[0].feedback.rating: expected number, got boolean"],
        ),
        (
            record(
                turns=[
                    {"role": "assistant", "text": "ok", "feedback": {"sentiment": "meh", "note": 1}}
                ]
            ),
            [
                "turns[0].feedback.note: unknown field",
                "turns[0].feedback.sentiment: must be one of 'positive', 'neutral', 'negative', got 'meh'",
            ],
        ),
        (
            record(turns=[{"role": "assistant", "text": "ok", "feedback": 5}]),
            ["turns[0].feedback: expected object, got integer"],
        ),
        (record(profile=["a"]), ["profile: expected object, got array"]),
        (
            record(profile={"devices": ["a", "b"]}),
            [
                "profile.devices: expected a JSON scalar (string, number, boolean or null), got array"
            ],
        ),
    ],
)
def test_exact_issue_messages(tmp_path: Path, line: object, expected: list[str]) -> None:
    path = write_lines(tmp_path / "in.jsonl", [line])
    assert issue_strings(path) == [f"{path}:1: {e}" for e in expected]


def test_all_problems_of_a_line_are_reported(tmp_path: Path) -> None:
    bad = {"user_id": "", "conversation_id": 5, "turns": [{"role": "bot", "text": ""}], "extra": 1}
    path = write_lines(tmp_path / "in.jsonl", [bad])
    assert issue_strings(path) == [
        f"{path}:1: extra: unknown field",
        f"{path}:1: user_id: must be a non-empty string",
        f"{path}:1: conversation_id: expected string, got integer",
        f"{path}:1: turns[0].role: must be one of 'user', 'assistant', 'system', got 'bot'",
        f"{path}:1: turns[0].text: must be a non-empty string",
    ]


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps(record()).encode() + b"\n\xff\xfe\n")
    assert issue_strings(path) == [f"{path}:2: <json>: invalid UTF-8 at byte 0"]


def test_duplicate_names_the_first_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "in.jsonl", [record("u1", "c1"), record("u2", "c1"), "", record("u1", "c1")]
    )
    assert issue_strings(path) == [
        f"{path}:4: conversation_id: duplicate conversation_id 'c1' for user_id 'u1' (first seen on line 1)"
    ]


# ------------------------------------------------------------------------ strict vs skip


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "mixed.jsonl",
        [
            record("u1", "c1"),
            "not json",
            record("u1", "c2"),
            "   ",
            record("u2", "c1", turns=[{"role": "bot", "text": "x"}]),
            "",
            record("u2", "c2"),
            record("u1", "c1"),
            record("u3", "c1", rating=4),
            record("u3", "c2"),
        ],
    )


def test_skip_mode_keeps_every_valid_line(mixed_file: Path) -> None:
    result = read_jsonl(mixed_file, mode="skip")
    assert [(c.user_id, c.conversation_id) for c in result.conversations] == [
        ("u1", "c1"),
        ("u1", "c2"),
        ("u2", "c2"),
        ("u3", "c2"),
    ]
    assert [str(i) for i in result.issues] == [
        f"{mixed_file}:2: <json>: invalid JSON: Expecting value (column 1)",
        f"{mixed_file}:5: turns[0].role: must be one of 'user', 'assistant', 'system', got 'bot'",
        f"{mixed_file}:8: conversation_id: duplicate conversation_id 'c1' for user_id 'u1' (first seen on line 1)",
        f"{mixed_file}:9: rating: unknown field",
    ]
    assert result.lines_read == 10
    assert len({issue.line for issue in result.issues}) == 4


def test_strict_mode_raises_with_all_issues(mixed_file: Path) -> None:
    with pytest.raises(DataValidationError) as err:
        read_jsonl(mixed_file, mode="strict")
    assert [i.line for i in err.value.issues] == [2, 5, 8, 9]
    message = str(err.value)
    assert message.startswith("4 validation issue(s):\n")
    assert f"{mixed_file}:9: rating: unknown field" in message


def test_strict_mode_returns_clean_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ok.jsonl", [record("u1", "c1"), "", record("u1", "c2")])
    result = read_jsonl(path)
    assert len(result.conversations) == 2 and result.issues == [] and result.lines_read == 3


def test_error_message_lists_first_twenty(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ["{"] * 25)
    with pytest.raises(DataValidationError) as err:
        read_jsonl(path)
    lines = str(err.value).splitlines()
    assert lines[0] == "25 validation issue(s):"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 5 more"
    assert len(err.value.issues) == 25


def test_unknown_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        read_jsonl(write_lines(tmp_path / "x.jsonl", [record()]), mode="lenient")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ writing


def test_write_then_read_roundtrip(tmp_path: Path) -> None:
    convs = [
        Conversation.from_dict(record("u1", f"c{i}", persona=None if i % 2 else "admin_hr"))
        for i in range(5)
    ]
    convs.append(
        Conversation(
            "ü-ser",
            "c",
            (Turn("system", "Be brief."), Turn("user", "Grüße ✓"), Turn("assistant", "Hej!")),
        )
    )
    path = tmp_path / "sub" / "dir" / "out.jsonl"
    assert write_jsonl(path, convs) == 6
    assert read_jsonl(path).conversations == convs
    assert "Grüße ✓" in path.read_text(encoding="utf-8")


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [Conversation.from_dict(record())])
    before = path.read_bytes()

    def failing():
        yield Conversation.from_dict(record("u9", "c9"))
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl(path, failing())
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(
        path, [Conversation.from_dict(record("a", "1")), Conversation.from_dict(record("a", "2"))]
    )
    write_jsonl(path, [Conversation.from_dict(record("b", "1"))])
    assert [c.user_id for c in read_jsonl(path).conversations] == ["b"]
    assert os.stat(path).st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------ CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedpers")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_validate_prints_every_issue(
    mixed_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for mode in ("strict", "skip"):
        assert run_cli("validate", "--mode", mode, str(mixed_file)) == 1
        out = capsys.readouterr()
        assert out.out.splitlines() == [str(i) for i in read_jsonl(mixed_file, mode="skip").issues]
    assert "4 valid conversations kept" in out.err


def test_cli_validate_clean_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "ok.jsonl", [record()])
    assert run_cli("validate", str(path)) == 0
    assert capsys.readouterr().out.strip() == f"{path}: OK, 1 conversations"
    assert run_cli("validate", str(tmp_path / "missing.jsonl")) == 2


def test_documented_example_line_is_valid() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "data-format.md"
    block = doc.read_text(encoding="utf-8").split("```json\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 1
    assert validate_record(json.loads(lines[0])) == []


def test_validation_error_survives_pickling() -> None:
    err = DataValidationError([ValidationIssue("f.jsonl", 2, "user_id", "missing required field")])
    back = pickle.loads(pickle.dumps(err))
    assert back.issues == err.issues and str(back) == str(err)
