"""Hostile and malformed conversation JSONL: nesting and size limits, duplicate keys, NUL characters,
lone surrogates, paths that are not files, and the CLIs that read such files.

Every problem is reported as ``file:line: field: message`` and never as a traceback; in skip mode the
other lines of the file are still read and reported.
"""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.cli import main as client_main
from fedpers.data import (
    Conversation,
    DataValidationError,
    Feedback,
    Turn,
    read_jsonl,
    schema,
    write_jsonl,
)
from simulations.cli import main as fedpers_main


def record(conversation_id: str = "c1", user_id: str = "u1", **overrides: object) -> dict:
    base: dict = {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "profile": {"location": "Oslo"},
        "turns": [
            {"role": "user", "text": "VPN drops every 5 min."},
            {"role": "assistant", "text": "Switch to the field profile."},
        ],
    }
    base.update(overrides)
    return base


def line(conversation_id: str = "c1", **overrides: object) -> str:
    return json.dumps(record(conversation_id, **overrides))


def write_raw(path: Path, lines: list[str | bytes]) -> Path:
    """Write ``lines`` as they are (str as UTF-8), one per line."""
    with open(path, "wb") as fh:
        for item in lines:
            fh.write((item.encode("utf-8") if isinstance(item, str) else item) + b"\n")
    return path


def skip_issues(path: Path) -> list[str]:
    return [str(issue) for issue in read_jsonl(path, mode="skip").issues]


def kept_ids(path: Path) -> list[str]:
    return [c.conversation_id for c in read_jsonl(path, mode="skip").conversations]


# ------------------------------------------------------------------------ nesting depth


@pytest.fixture
def deep_file(tmp_path: Path) -> Path:
    """Line 2 is 100,000 nested arrays; line 3 has a bad role; lines 1 and 4 are valid."""
    bad_role = record("c3")
    bad_role["turns"][0]["role"] = "bot"
    return write_raw(
        tmp_path / "deep.jsonl", [line("c1"), "[" * 100_000, json.dumps(bad_role), line("c4")]
    )


def test_deep_nesting_in_strict_mode_is_a_value_error_naming_file_and_line(deep_file: Path) -> None:
    with pytest.raises(ValueError) as caught:
        read_jsonl(deep_file, mode="strict")
    assert isinstance(caught.value, DataValidationError)
    message = str(caught.value)
    assert f"{deep_file}:2: <json>: nested deeper than {schema.MAX_NESTING_DEPTH} levels" in message
    assert f"{deep_file}:3: turns[0].role:" in message


def test_deep_nesting_in_skip_mode_is_reported_and_the_other_lines_are_kept(
    deep_file: Path,
) -> None:
    result = read_jsonl(deep_file, mode="skip")
    assert [c.conversation_id for c in result.conversations] == ["c1", "c4"]
    assert [(i.line, i.field) for i in result.issues] == [(2, "<json>"), (3, "turns[0].role")]
    assert f"(column {schema.MAX_NESTING_DEPTH + 1})" in result.issues[0].message
    assert result.lines_read == 4


def test_the_depth_limit_counts_arrays_and_objects_outside_strings(tmp_path: Path) -> None:
    limit = schema.MAX_NESTING_DEPTH
    at_limit = "[" * limit + "]" * limit
    over = "[" * (limit + 1) + "]" * (limit + 1)
    objects_over = '{"a":' * (limit + 1) + "1" + "}" * (limit + 1)
    brackets_in_text = record("c4")
    brackets_in_text["turns"][1]["text"] = '[{"' * 5_000 + "\\" + '"]' * 5_000
    path = write_raw(
        tmp_path / "depth.jsonl", [at_limit, over, objects_over, json.dumps(brackets_in_text)]
    )
    assert skip_issues(path) == [
        f"{path}:1: <record>: expected a JSON object, got array",
        f"{path}:2: <json>: nested deeper than {limit} levels of arrays and objects (column {limit + 1})",
        f"{path}:3: <json>: nested deeper than {limit} levels of arrays and objects "
        f"(column {5 * limit + 1})",
    ]
    assert kept_ids(path) == ["c4"]


# ------------------------------------------------------------------------ line size


def padded_line(conversation_id: str, size: int) -> str:
    """A valid conversation line of exactly ``size`` bytes (newline not counted)."""
    short = line(conversation_id, profile={"location": "Oslo", "note": ""})
    pad = "x" * (size - len(short.encode("utf-8")))
    return line(conversation_id, profile={"location": "Oslo", "note": pad})


def test_a_line_over_the_size_limit_is_reported_and_not_parsed(tmp_path: Path) -> None:
    limit = schema.MAX_LINE_BYTES
    exact = padded_line("c1", limit)
    assert len(exact.encode("utf-8")) == limit
    over_valid = padded_line("c2", limit + 1)
    over_invalid = "{" + "x" * (3 * limit)  # would be invalid JSON: never parsed, only measured
    path = write_raw(tmp_path / "big.jsonl", [exact, over_valid, over_invalid, line("c4")])
    assert skip_issues(path) == [
        f"{path}:2: <line>: {limit + 1:,} bytes, over the limit of {limit:,} bytes per line",
        f"{path}:3: <line>: {3 * limit + 1:,} bytes, over the limit of {limit:,} bytes per line",
    ]
    assert kept_ids(path) == ["c1", "c4"]
    with pytest.raises(ValueError, match=f"{path}:2: <line>: "):
        read_jsonl(path, mode="strict")
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(exact.encode("utf-8") + b"\r\n" + line("c2").encode("utf-8"))
    assert kept_ids(crlf) == ["c1", "c2"]  # the line ending is not counted, nor is a missing one


def test_an_oversize_line_is_never_held_in_memory_whole(tmp_path: Path) -> None:
    size = 8 * schema.MAX_LINE_BYTES
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"user_id": "' + b"u" * size + b'"}\n')
    tracemalloc.start()
    try:
        issues = read_jsonl(path, mode="skip").issues
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(i.line, i.field) for i in issues] == [(1, "<line>")]
    assert peak < 3 * schema.MAX_LINE_BYTES


# ------------------------------------------------------------------------ duplicate keys, NUL, surrogates


def test_duplicate_keys_are_rejected_with_their_field(tmp_path: Path) -> None:
    turns = '[{"role": "user", "text": "a"}, {"role": "assistant", "text": "b", "text": "c"}]'
    path = write_raw(
        tmp_path / "dup.jsonl",
        [
            '{"user_id": "alice", "conversation_id": "c1", "user_id": "mallory", "turns": '
            '[{"role": "assistant", "text": "hi"}]}',
            f'{{"user_id": "u1", "conversation_id": "c2", "turns": {turns}}}',
            '{"user_id": "u1", "conversation_id": "c3", "profile": {"a": 1, "a": 1, "a": 2}, '
            '"turns": [{"role": "assistant", "text": "hi"}]}',
            line("c4"),
        ],
    )
    assert skip_issues(path) == [
        f"{path}:1: user_id: duplicate key (2 times in the same object)",
        f"{path}:2: turns[1].text: duplicate key (2 times in the same object)",
        f"{path}:3: profile.a: duplicate key (3 times in the same object)",
    ]
    assert kept_ids(path) == ["c4"]
    with pytest.raises(ValueError, match=f"{path}:1: user_id: duplicate key"):
        read_jsonl(path)


def test_nul_characters_are_rejected_in_values_and_keys(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "nul.jsonl",
        [
            line("c1").replace("Switch to", "Switch\\u0000to"),
            line("c2", profile={"location": "Os\x00lo"}),
            line("c3", profile={"lo\x00cation": "Oslo"}),
            line("c4").replace("VPN drops", "VPN\x00drops").encode("utf-8"),  # raw: not JSON
            line("c5"),
        ],
    )
    issues = skip_issues(path)
    assert issues[:3] == [
        f"{path}:1: turns[1].text: contains a NUL character",
        f"{path}:2: profile.location: contains a NUL character",
        f"{path}:3: profile.lo\\x00cation: key contains a NUL character",
    ]
    assert issues[3].startswith(f"{path}:4: <json>: invalid JSON: Invalid control character")
    assert all("\x00" not in issue for issue in issues)
    assert kept_ids(path) == ["c5"]


def test_lone_surrogates_are_rejected_and_reported_printably(tmp_path: Path) -> None:
    emoji = line("c5").replace("Switch to", "\\ud83d\\ude00 Switch to")  # a proper pair is fine
    path = write_raw(
        tmp_path / "surrogate.jsonl",
        [
            line("c1").replace("Switch to", "Switch \\ud800to"),
            line("c2").replace('"u1"', '"\\udc00u1"'),
            line("c3").replace("VPN", "\\udc00\\ud800VPN"),  # a pair the wrong way round
            line("c4").replace('"location"', '"\\ud800"'),
            emoji,
        ],
    )
    issues = skip_issues(path)
    assert issues == [
        f"{path}:1: turns[1].text: contains a lone surrogate \\ud800 (not a Unicode character)",
        f"{path}:2: user_id: contains a lone surrogate \\udc00 (not a Unicode character)",
        f"{path}:3: turns[0].text: contains a lone surrogate \\udc00 (not a Unicode character)",
        f"{path}:4: profile.\\ud800: key contains a lone surrogate \\ud800 (not a Unicode character)",
    ]
    for issue in issues:
        issue.encode("utf-8")  # printable on any UTF-8 terminal
    [kept] = read_jsonl(path, mode="skip").conversations
    assert kept.turns[1].text.startswith("\U0001f600 ")


# ------------------------------------------------------------------------ paths that are not files


def test_a_directory_or_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    for mode in ("strict", "skip"):
        with pytest.raises(DataValidationError) as caught:
            read_jsonl(tmp_path, mode=mode)  # type: ignore[arg-type]
        assert str(caught.value) == f"{tmp_path}: is a directory, not a JSONL file"
        assert isinstance(caught.value, ValueError)
        with pytest.raises(DataValidationError) as caught:
            read_jsonl(tmp_path / "missing.jsonl", mode=mode)  # type: ignore[arg-type]
        assert str(caught.value) == f"{tmp_path / 'missing.jsonl'}: no such file"


# ------------------------------------------------------------------------ the CLIs


def test_fedpers_data_validate_reports_every_line_and_no_traceback(
    deep_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for mode in ("strict", "skip"):
        assert fedpers_main(["data", "validate", "--mode", mode, str(deep_file)]) == 1
        out, err = capsys.readouterr()
        assert out.splitlines()[0].startswith(f"{deep_file}:2: <json>: nested deeper than")
        assert out.splitlines()[1].startswith(f"{deep_file}:3: turns[0].role: must be one of")
        assert "Traceback" not in err and "RecursionError" not in err
    assert "2 issue(s) on 2 line(s); 2 valid conversations kept" in err


def test_fedpers_data_validate_prints_hostile_keys_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_raw(
        tmp_path / "keys.jsonl",
        [line("c1").replace('"profile"', '"\\ud800\\n\\u0000"'), line("c2")],
    )
    assert fedpers_main(["data", "validate", str(path)]) == 1
    key = "\\ud800\\x0a\\x00"
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:1: {key}: key contains a NUL character",
        f"{path}:1: {key}: key contains a lone surrogate \\ud800 (not a Unicode character)",
        f"{path}:1: {key}: unknown field",
    ]


def test_fedpers_data_validate_on_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fedpers_main(["data", "validate", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == f"error: {tmp_path}: is a directory, not a JSONL file" and not out


def test_fedpers_client_import_of_bad_input_is_one_error_line(
    tmp_path: Path, deep_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--store", str(tmp_path / "store"), "--key-file", str(tmp_path / "store.key")]
    assert client_main([*args, "init", "--user-id", "u1"]) == 0
    dup = write_raw(
        tmp_path / "dup.jsonl",
        [line("c1").replace('"user_id": "u1"', '"user_id": "u1", "user_id": "u2"')],
    )
    for bad, expected in [
        (tmp_path, f"fedpers-client: error: {tmp_path}: is a directory, not a JSONL file"),
        (tmp_path / "nowhere.jsonl", f"{tmp_path / 'nowhere.jsonl'}: no such file"),
        (deep_file, f"{deep_file}:2: <json>: nested deeper than"),
        (dup, f"{dup}:1: user_id: duplicate key"),
    ]:
        capsys.readouterr()
        assert client_main([*args, "import", str(bad)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
    capsys.readouterr()
    assert client_main([*args, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conversations"] == 0


# ------------------------------------------------------------------------ properties

ODD = ["\x00", "\ud800", "\udfff", "[", "{", "]", "}", '"', "\\", "\n", "\r", " ", ":", ","]
odd_text = st.lists(st.one_of(st.characters(), st.sampled_from(ODD)), max_size=24).map("".join)
"""Any string, NUL characters, lone surrogates, brackets, quotes and line breaks made likely."""
clean_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=16
)
nonblank = clean_text.filter(str.strip)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text
)
timestamps = st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)


def conversations(
    text: st.SearchStrategy[str], nonempty: st.SearchStrategy[str]
) -> st.SearchStrategy[Conversation]:
    """Conversations whose free texts come from ``text`` and whose required strings from ``nonempty``."""
    feedback = st.builds(
        Feedback,
        rating=st.none() | st.integers(1, 5) | st.floats(1, 5),
        sentiment=st.none() | st.sampled_from(schema.SENTIMENTS),
        comment=st.none() | text,
    )
    turn = st.builds(
        Turn,
        role=st.sampled_from(schema.ROLES),
        text=nonempty,
        ts=st.none() | timestamps,
        feedback=st.none() | feedback,
    )
    answer = st.builds(
        Turn, role=st.just("assistant"), text=nonempty, feedback=st.none() | feedback
    )
    return st.builds(
        Conversation,
        user_id=nonempty,
        conversation_id=nonempty,
        turns=st.tuples(st.lists(turn, max_size=3), answer).map(lambda t: (*t[0], t[1])),
        persona=st.none() | nonempty,
        profile=st.dictionaries(text, scalars, max_size=4),
    )


valid = conversations(clean_text, nonblank)
any_conversation = conversations(clean_text | odd_text, nonblank | odd_text)


@settings(max_examples=150, deadline=None)
@given(st.lists(valid, max_size=3, unique_by=lambda c: (c.user_id, c.conversation_id)))
def test_what_the_writer_writes_reads_back_equal(convs: list[Conversation]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        assert write_jsonl(path, convs) == len(convs)
        assert read_jsonl(path, mode="strict").conversations == convs


@settings(max_examples=150, deadline=None)
@given(st.lists(any_conversation, max_size=3))
def test_the_writer_refuses_what_the_reader_would_reject(convs: list[Conversation]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        try:
            write_jsonl(path, convs)
        except DataValidationError as err:
            assert err.issues and not path.exists()  # refused: nothing written
        else:
            assert read_jsonl(path, mode="strict").conversations == convs


json_values = st.recursive(
    scalars | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=12,
)
raw_lines = st.one_of(
    odd_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.tuples(st.integers(0, 3000), st.sampled_from("[{"), odd_text).map(
        lambda t: (t[1] * t[0] + t[2]).encode("utf-8", "surrogatepass")
    ),
    valid.map(lambda c: json.dumps(c.to_dict(), ensure_ascii=False).encode()),
    st.tuples(valid, st.sampled_from(["user_id", "turns", "persona"]), json_values).map(
        lambda t: (
            f"{{{json.dumps(t[1])}: {json.dumps(t[2])}, " + json.dumps(t[0].to_dict())[1:]
        ).encode()
    ),
    any_conversation.map(lambda c: json.dumps(c.to_dict()).encode()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_lines, max_size=4))
def test_arbitrary_lines_raise_only_the_readers_error(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "any.jsonl"
        path.write_bytes(b"\n".join(lines))
        result = read_jsonl(path, mode="skip")  # never raises
        for issue in result.issues:
            text = str(issue)
            text.encode("utf-8")  # printable
            assert "\n" not in text and "\r" not in text
            assert text.startswith(f"{path}:{issue.line}: ")
        try:
            strict = read_jsonl(path, mode="strict")
        except DataValidationError as err:
            assert err.issues == result.issues
        else:
            assert not result.issues and strict.conversations == result.conversations
