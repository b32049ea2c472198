"""Conversation JSONL format: dataclasses, validation, streaming reader and atomic writer."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from fedpers.atomic import write_text

ROLES = ("user", "assistant", "system")
SENTIMENTS = ("positive", "neutral", "negative")
RATING_RANGE = (1, 5)

CONVERSATION_FIELDS = ("user_id", "conversation_id", "persona", "profile", "turns")
TURN_FIELDS = ("role", "text", "ts", "feedback")
FEEDBACK_FIELDS = ("rating", "sentiment", "comment")

Scalar = str | int | float | bool | None
ReadMode = Literal["strict", "skip"]
FieldError = tuple[str, str]
"""A ``(field, message)`` pair; ``field`` is a dotted/indexed path such as ``turns[2].role``."""

MAX_LINE_BYTES = 1 << 20
"""Longest line read, in bytes, its line ending not counted (1 MiB; real conversations take a few KiB).

Checked before the line is decoded or parsed, so that one huge line costs neither the time nor the memory
of parsing it: the reader holds at most this many bytes of a line and skips the rest unread into memory.
:func:`write_jsonl` refuses a conversation whose line would be longer."""

MAX_NESTING_DEPTH = 64
"""Deepest nesting of JSON arrays and objects in a line (the format itself needs 4).

Checked before parsing, outside string literals, so that a line of nested brackets is reported as an
issue instead of exhausting the parser's recursion (a ``RecursionError`` that would end the whole read)."""

_DRAIN_CHUNK = 1 << 16
"""Bytes read at a time while skipping the rest of a line over :data:`MAX_LINE_BYTES`."""


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in one line of a JSONL file."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return printable(f"{self.path}:{self.line}: {self.field}: {self.message}")


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control characters, line separators and lone surrogates escaped (``\\x0a``, ``\\ud800``).

    Keeps a reported key or value on one line of the report, and encodable as UTF-8: a lone surrogate
    in a key would otherwise make printing the report fail."""
    return _UNPRINTABLE.sub(_escape, text)


class DataValidationError(ValueError):
    """Raised when conversation data does not match the schema; carries every issue found."""

    max_listed = 20

    def __init__(self, issues: list[ValidationIssue]) -> None:
        self.issues = list(issues)
        listed = "\n".join(f"  {issue}" for issue in self.issues[: self.max_listed])
        more = len(self.issues) - self.max_listed
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.issues)} validation issue(s):\n{listed}{tail}")

    def __reduce__(self) -> tuple[type[DataValidationError], tuple[list[ValidationIssue]]]:
        return type(self), (self.issues,)


class DataFileError(DataValidationError):
    """The path cannot be read as a JSONL file at all: missing, a directory, unreadable.

    Its one issue has line 0 and field ``<file>``; its message is ``{path}: {reason}``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        self.issues = [ValidationIssue(path, 0, "<file>", reason)]
        ValueError.__init__(self, printable(f"{path}: {reason}"))

    def __reduce__(self) -> tuple[type[DataFileError], tuple[str, str]]:  # type: ignore[override]
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class Feedback:
    """Optional user feedback attached to a turn."""

    rating: float | None = None
    sentiment: str | None = None
    comment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("rating", self.rating),
                ("sentiment", self.sentiment),
                ("comment", self.comment),
            )
            if v is not None
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feedback:
        _raise_if_invalid(_check_feedback(data, "feedback"))
        return cls._build(data)

    @classmethod
    def _build(cls, data: Mapping[str, Any]) -> Feedback:
        return cls(
            rating=data.get("rating"), sentiment=data.get("sentiment"), comment=data.get("comment")
        )


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    role: str
    text: str
    ts: str | None = None
    feedback: Feedback | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "text": self.text}
        if self.ts is not None:
            out["ts"] = self.ts
        if self.feedback is not None:
            out["feedback"] = self.feedback.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Turn:
        _raise_if_invalid(_check_turn(data, "turn"))
        return cls._build(data)

    @classmethod
    def _build(cls, data: Mapping[str, Any]) -> Turn:
        fb = data.get("feedback")
        return cls(
            role=data["role"],
            text=data["text"],
            ts=data.get("ts"),
            feedback=None if fb is None else Feedback._build(fb),
        )


@dataclass(frozen=True)
class Conversation:
    """One conversation of one user; the unit of a JSONL line."""

    user_id: str
    conversation_id: str
    turns: tuple[Turn, ...]
    persona: str | None = None
    profile: Mapping[str, Scalar] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": self.user_id, "conversation_id": self.conversation_id}
        if self.persona is not None:
            out["persona"] = self.persona
        if self.profile:
            out["profile"] = dict(self.profile)
        out["turns"] = [turn.to_dict() for turn in self.turns]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Conversation:
        """Validate ``data`` and build a conversation; raises :class:`DataValidationError`."""
        _raise_if_invalid(validate_record(data))
        return cls._build(data)

    @classmethod
    def _build(cls, data: Mapping[str, Any]) -> Conversation:
        return cls(
            user_id=data["user_id"],
            conversation_id=data["conversation_id"],
            turns=tuple(Turn._build(t) for t in data["turns"]),
            persona=data.get("persona"),
            profile=dict(data.get("profile") or {}),
        )

    def texts(self, role: str) -> list[str]:
        """Texts of the turns with ``role``, in order."""
        return [turn.text for turn in self.turns if turn.role == role]


@dataclass
class ImportResult:
    """Outcome of reading a JSONL file."""

    conversations: list[Conversation]
    issues: list[ValidationIssue]
    lines_read: int


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unknown_keys(
    data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str
) -> list[FieldError]:
    errors = []
    for key in data:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        errors.append((f"{prefix}{key}", f"unknown field{hint}"))
    return errors


def _check_nonempty_str(
    data: Mapping[str, Any], key: str, where: str, required: bool
) -> list[FieldError]:
    if key not in data:
        return [(where, "missing required field")] if required else []
    value = data[key]
    if not isinstance(value, str):
        return [(where, f"expected string, got {_json_type(value)}")]
    if not value.strip():
        return [(where, "must be a non-empty string")]
    return []


def _check_feedback(data: Any, where: str) -> list[FieldError]:
    if not isinstance(data, dict):
        return [(where, f"expected object, got {_json_type(data)}")]
    errors = _unknown_keys(data, FEEDBACK_FIELDS, f"{where}.")
    if "rating" in data:
        rating = data["rating"]
        lo, hi = RATING_RANGE
        if not _is_number(rating):
            errors.append((f"{where}.rating", f"expected number, got {_json_type(rating)}"))
        elif not (math.isfinite(rating) and lo <= rating <= hi):
            errors.append((f"{where}.rating", f"must be between {lo} and {hi}, got {rating}"))
    if "sentiment" in data:
        sentiment = data["sentiment"]
        if not isinstance(sentiment, str):
            errors.append((f"{where}.sentiment", f"expected string, got {_json_type(sentiment)}"))
        elif sentiment not in SENTIMENTS:
            errors.append(
                (f"{where}.sentiment", f"must be one of {_quoted(SENTIMENTS)}, got {sentiment!r}")
            )
    if "comment" in data and not isinstance(data["comment"], str):
        errors.append((f"{where}.comment", f"expected string, got {_json_type(data['comment'])}"))
    return errors


def _quoted(options: tuple[str, ...]) -> str:
    return ", ".join(repr(o) for o in options)


def _check_turn(data: Any, where: str) -> list[FieldError]:
    if not isinstance(data, dict):
        return [(where, f"expected object, got {_json_type(data)}")]
    errors = _unknown_keys(data, TURN_FIELDS, f"{where}.")
    if "role" not in data:
        errors.append((f"{where}.role", "missing required field"))
    elif not isinstance(data["role"], str):
        errors.append((f"{where}.role", f"expected string, got {_json_type(data['role'])}"))
    elif data["role"] not in ROLES:
        errors.append((f"{where}.role", f"must be one of {_quoted(ROLES)}, got {data['role']!r}"))
    errors += _check_nonempty_str(data, "text", f"{where}.text", required=True)
    if "ts" in data:
        errors += _check_timestamp(data["ts"], f"{where}.ts")
    if "feedback" in data:
        errors += _check_feedback(data["feedback"], f"{where}.feedback")
    return errors


def _check_timestamp(value: Any, where: str) -> list[FieldError]:
    if not isinstance(value, str):
        return [(where, f"expected string, got {_json_type(value)}")]
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return [(where, f"not an ISO-8601 timestamp: {value!r}")]
    return []


def _check_profile(data: Any) -> list[FieldError]:
    if not isinstance(data, dict):
        return [("profile", f"expected object, got {_json_type(data)}")]
    errors = []
    for key, value in data.items():
        if isinstance(value, list | dict):
            errors.append(
                (
                    f"profile.{key}",
                    f"expected a JSON scalar (string, number, boolean or null), got {_json_type(value)}",
                )
            )
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append((f"profile.{key}", "must be a finite number"))
    return errors


def _check_turns(data: Any) -> list[FieldError]:
    if not isinstance(data, list):
        return [("turns", f"expected array, got {_json_type(data)}")]
    if not data:
        return [("turns", "must contain at least one turn")]
    errors = []
    for i, turn in enumerate(data):
        errors += _check_turn(turn, f"turns[{i}]")
    roles = [t.get("role") if isinstance(t, dict) else None for t in data]
    if all(r in ROLES for r in roles) and "assistant" not in roles:
        errors.append(("turns", "must contain at least one assistant turn"))
    return errors


def validate_record(data: Any) -> list[FieldError]:
    """Check one decoded JSON value against the conversation schema; returns every ``(field, message)`` problem."""
    if not isinstance(data, dict):
        return [("<record>", f"expected a JSON object, got {_json_type(data)}")]
    errors = _unknown_keys(data, CONVERSATION_FIELDS, "")
    errors += _check_nonempty_str(data, "user_id", "user_id", required=True)
    errors += _check_nonempty_str(data, "conversation_id", "conversation_id", required=True)
    if data.get("persona") is not None:
        errors += _check_nonempty_str(data, "persona", "persona", required=False)
    if "profile" in data:
        errors += _check_profile(data["profile"])
    if "turns" not in data:
        errors.append(("turns", "missing required field"))
    else:
        errors += _check_turns(data["turns"])
    return errors


def _raise_if_invalid(errors: list[FieldError], path: str = "<dict>") -> None:
    if errors:
        raise DataValidationError([ValidationIssue(path, 0, f, m) for f, m in errors])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


class _Object(dict[str, Any]):
    """A decoded JSON object that was given some of its keys more than once (the last value kept)."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs: list[tuple[str, Any]], duplicates: dict[str, int]) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
_BAD_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
"""A ``\\u`` escape (not an escaped backslash followed by ``u``) of NUL or of a surrogate half."""


def _may_hold_bad_strings(text: str) -> bool:
    """Whether a line's decoded strings can hold a NUL or a lone surrogate (never a false "no").

    In a line read from a file, both can only come from ``\\u`` escapes (JSON forbids a raw NUL, and
    UTF-8 has no surrogates); a line built in memory may hold raw surrogates."""
    return ("\\u" in text and _BAD_ESCAPE.search(text) is not None) or (
        _SURROGATE.search(text) is not None
    )


def _nesting_error(text: str) -> str | None:
    """The issue message if ``text`` nests arrays and objects deeper than :data:`MAX_NESTING_DEPTH`.

    Brackets inside string literals do not count. Cheap for ordinary lines, which hold fewer brackets in
    all than the limit."""
    if text.count("[") + text.count("{") <= MAX_NESTING_DEPTH:
        return None
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                return (
                    f"nested deeper than {MAX_NESTING_DEPTH} levels of arrays and objects "
                    f"(column {match.start() + 1})"
                )
        elif token == "]" or token == "}":
            depth -= 1
    return None


def _string_problems(text: str) -> list[str]:
    problems = []
    if "\x00" in text:
        problems.append("contains a NUL character")
    surrogate = _SURROGATE.search(text)
    if surrogate:
        code = ord(surrogate.group())
        problems.append(f"contains a lone surrogate \\u{code:04x} (not a Unicode character)")
    return problems


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_strings(data: Any) -> list[FieldError]:
    """Problems JSON allows but the format does not, in every key and string of a decoded line, in order.

    A key given twice in one object (:func:`json.loads` keeps the last one silently, so what a reviewer
    reads is not what is stored), a NUL character (it cuts strings short in C code and in tokenizers), a
    lone surrogate (not a Unicode character: it cannot be encoded as UTF-8, nor tokenized). The field of
    a problem with a key is the path of that key.
    """
    errors: list[FieldError] = []
    stack: list[tuple[str, Any, str | None]] = [("", data, None)]
    while stack:
        where, value, key = stack.pop()
        if key is not None:
            errors += [(where, f"key {problem}") for problem in _string_problems(key)]
        if isinstance(value, str):
            errors += [(where or "<record>", problem) for problem in _string_problems(value)]
        elif isinstance(value, dict):
            for dup, n in getattr(value, "duplicates", {}).items():
                errors.append((_join(where, dup), f"duplicate key ({n} times in the same object)"))
            items = [(_join(where, k), v, k) for k, v in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{where}[{i}]", v, None) for i, v in enumerate(value)]))
    return errors


def _decode(text: str) -> tuple[Any, list[FieldError], bool]:
    """Parse one line's text: the decoded value or the ``<json>`` problem, and whether a key repeats."""
    nesting = _nesting_error(text)
    if nesting:
        return None, [("<json>", nesting)], False
    repeated: list[str] = []

    def from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        counts = Counter(key for key, _ in pairs)
        repeated.extend(key for key, n in counts.items() if n > 1)
        return _Object(pairs, {key: n for key, n in counts.items() if n > 1})

    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=from_pairs)
    except json.JSONDecodeError as exc:
        return None, [("<json>", f"invalid JSON: {exc.msg} (column {exc.colno})")], False
    except ValueError as exc:
        return None, [("<json>", f"invalid JSON: {exc}")], False
    except RecursionError:  # not reached within MAX_NESTING_DEPTH; kept so that no line ends a read
        return None, [("<json>", "nested too deeply to parse")], False
    return data, [], bool(repeated)


def _check_text(text: str) -> tuple[Conversation | None, list[FieldError]]:
    data, errors, repeated = _decode(text)
    if errors:
        return None, errors
    if repeated or _may_hold_bad_strings(text):
        errors = check_strings(data)
    errors += validate_record(data)
    if errors:
        return None, errors
    return Conversation._build(data), []


def _oversize(size: int) -> FieldError:
    return ("<line>", f"{size:,} bytes, over the limit of {MAX_LINE_BYTES:,} bytes per line")


def parse_line(
    raw: bytes, path: str, line: int
) -> tuple[Conversation | None, list[ValidationIssue]]:
    """Decode and validate one JSONL line; returns the conversation or the issues.

    In order: the size limit (:data:`MAX_LINE_BYTES`), UTF-8, the nesting limit
    (:data:`MAX_NESTING_DEPTH`), JSON, then the keys and strings (:func:`check_strings`) and the schema
    (:func:`validate_record`), whose problems are all reported."""
    content = _strip_line_ending(raw)
    if len(content) > MAX_LINE_BYTES:
        errors = [_oversize(len(content))]
        return None, [ValidationIssue(path, line, f, m) for f, m in errors]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [ValidationIssue(path, line, "<json>", f"invalid UTF-8 at byte {exc.start}")]
    conv, errors = _check_text(text)
    return conv, [ValidationIssue(path, line, f, m) for f, m in errors]


def _strip_line_ending(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


def _read_lines(fh: IO[bytes]) -> Iterator[tuple[bytes | None, int]]:
    """Each physical line as ``(bytes, size)``; ``(None, size)`` for one over :data:`MAX_LINE_BYTES`.

    ``size`` excludes the line ending. At most ``MAX_LINE_BYTES + 2`` bytes of a line are held: the rest
    of a longer one is read in chunks and dropped."""
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 2)
        if not raw:
            return
        if len(raw) == MAX_LINE_BYTES + 2 and not raw.endswith(b"\n"):
            size, tail, window = len(raw), raw, raw[-2:]
            while tail and not tail.endswith(b"\n"):
                tail = fh.readline(_DRAIN_CHUNK)
                size += len(tail)
                window = (window + tail)[-2:]
            yield None, size - (len(window) - len(_strip_line_ending(window)))
            continue
        yield raw, len(_strip_line_ending(raw))


def _open(path: str | os.PathLike[str]) -> IO[bytes]:
    """``path`` opened for reading; :class:`DataFileError` naming it if it cannot be."""
    name = os.fspath(path)
    if os.path.isdir(name):
        raise DataFileError(name, "is a directory, not a JSONL file")
    try:
        return open(name, "rb")
    except FileNotFoundError:
        raise DataFileError(name, "no such file") from None
    except IsADirectoryError:
        raise DataFileError(name, "is a directory, not a JSONL file") from None
    except PermissionError:
        raise DataFileError(name, "permission denied") from None
    except OSError as exc:
        raise DataFileError(name, exc.strerror or str(exc)) from None


def read_jsonl(path: str | os.PathLike[str], mode: ReadMode = "strict") -> ImportResult:
    """Stream and validate a conversation JSONL file.

    Every line is validated in both modes. ``strict`` raises :class:`DataValidationError` with all
    issues if there is any; ``skip`` returns the valid conversations together with the issues.
    Blank lines are ignored; a repeated ``(user_id, conversation_id)`` is an issue on the later line.
    A line over :data:`MAX_LINE_BYTES`, nested deeper than :data:`MAX_NESTING_DEPTH`, with a key given
    twice in one object, a NUL character or a lone surrogate is an issue of that line; the other lines
    are still read. A path that is not a readable file raises :class:`DataFileError` in both modes.
    """
    if mode not in ("strict", "skip"):
        raise ValueError(f"mode must be 'strict' or 'skip', got {mode!r}")
    name = os.fspath(path)
    conversations: list[Conversation] = []
    issues: list[ValidationIssue] = []
    first_seen: dict[tuple[str, str], int] = {}
    lines_read = 0
    try:
        with _open(path) as fh:
            for lineno, (raw, size) in enumerate(_read_lines(fh), start=1):
                lines_read = lineno
                if raw is None:
                    issues.append(ValidationIssue(name, lineno, *_oversize(size)))
                    continue
                if not raw.strip():
                    continue
                conv, line_issues = parse_line(raw, name, lineno)
                if conv is not None:
                    key = (conv.user_id, conv.conversation_id)
                    if key in first_seen:
                        line_issues = [_duplicate_issue(name, lineno, conv, first_seen[key])]
                        conv = None
                    else:
                        first_seen[key] = lineno
                issues += line_issues
                if conv is not None and not (mode == "strict" and issues):
                    conversations.append(conv)
    except OSError as exc:  # a read failing half-way
        raise DataFileError(name, exc.strerror or str(exc)) from None
    if mode == "strict" and issues:
        raise DataValidationError(issues)
    return ImportResult(conversations=conversations, issues=issues, lines_read=lines_read)


def _duplicate_issue(path: str, line: int, conv: Conversation, first: int) -> ValidationIssue:
    message = (
        f"duplicate conversation_id {conv.conversation_id!r} for user_id {conv.user_id!r} "
        f"(first seen on line {first})"
    )
    return ValidationIssue(path, line, "conversation_id", message)


def write_jsonl(path: str | os.PathLike[str], conversations: Iterable[Conversation]) -> int:
    """Atomically write conversations as JSONL (temp file in the same directory, fsync, replace); returns the count.

    An existing file keeps its permissions; a new one is 0644. A conversation that :func:`read_jsonl`
    would reject (schema, limits, NUL characters, lone surrogates, a repeated
    ``(user_id, conversation_id)``) raises :class:`DataValidationError` naming the line it would have
    had, and nothing is written.
    """
    target = Path(path)
    name = os.fspath(path)
    lines: list[str] = []
    issues: list[ValidationIssue] = []
    first_seen: dict[tuple[str, str], int] = {}
    for lineno, conv in enumerate(conversations, start=1):
        line, errors = _line_of(conv)
        if not errors:
            key = (conv.user_id, conv.conversation_id)
            if key in first_seen:
                issues.append(_duplicate_issue(name, lineno, conv, first_seen[key]))
            first_seen.setdefault(key, lineno)
        issues += [ValidationIssue(name, lineno, f, m) for f, m in errors]
        lines.append(line + "\n")
    if issues:
        raise DataValidationError(issues)
    write_text(target, "".join(lines), mode=_file_mode(target))
    return len(lines)


def _line_of(conv: Conversation) -> tuple[str, list[FieldError]]:
    """The JSONL line of ``conv`` and what reading it back would report."""
    data = conv.to_dict()
    try:
        line = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:  # a non-finite number, a cycle, a value JSON cannot hold
        return "", validate_record(data) or [("<record>", f"not writable as JSON: {exc}")]
    size = len(line.encode("utf-8", "surrogatepass"))
    if size > MAX_LINE_BYTES:
        return "", [_oversize(size)]
    return line, _check_text(line)[1]


def _file_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644
