"""Conversation JSONL format: dataclasses, validation, streaming reader and atomic writer."""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

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


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in one line of a JSONL file."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class DataValidationError(Exception):
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


def parse_line(
    raw: bytes, path: str, line: int
) -> tuple[Conversation | None, list[ValidationIssue]]:
    """Decode and validate one JSONL line; returns the conversation or the issues."""
    try:
        data = json.loads(raw.decode("utf-8").rstrip("\r\n"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        return None, [ValidationIssue(path, line, "<json>", f"invalid UTF-8 at byte {exc.start}")]
    except json.JSONDecodeError as exc:
        return None, [
            ValidationIssue(path, line, "<json>", f"invalid JSON: {exc.msg} (column {exc.colno})")
        ]
    except ValueError as exc:
        return None, [ValidationIssue(path, line, "<json>", f"invalid JSON: {exc}")]
    errors = validate_record(data)
    if errors:
        return None, [ValidationIssue(path, line, f, m) for f, m in errors]
    return Conversation._build(data), []


def read_jsonl(path: str | os.PathLike[str], mode: ReadMode = "strict") -> ImportResult:
    """Stream and validate a conversation JSONL file.

    Every line is validated in both modes. ``strict`` raises :class:`DataValidationError` with all
    issues if there is any; ``skip`` returns the valid conversations together with the issues.
    Blank lines are ignored; a repeated ``(user_id, conversation_id)`` is an issue on the later line.
    """
    if mode not in ("strict", "skip"):
        raise ValueError(f"mode must be 'strict' or 'skip', got {mode!r}")
    name = os.fspath(path)
    conversations: list[Conversation] = []
    issues: list[ValidationIssue] = []
    first_seen: dict[tuple[str, str], int] = {}
    lines_read = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            lines_read = lineno
            if not raw.strip():
                continue
            conv, line_issues = parse_line(raw, name, lineno)
            if conv is not None:
                key = (conv.user_id, conv.conversation_id)
                if key in first_seen:
                    message = f"duplicate conversation_id {conv.conversation_id!r} for user_id {conv.user_id!r} (first seen on line {first_seen[key]})"
                    line_issues = [ValidationIssue(name, lineno, "conversation_id", message)]
                    conv = None
                else:
                    first_seen[key] = lineno
            issues += line_issues
            if conv is not None and not (mode == "strict" and issues):
                conversations.append(conv)
    if mode == "strict" and issues:
        raise DataValidationError(issues)
    return ImportResult(conversations=conversations, issues=issues, lines_read=lines_read)


def write_jsonl(path: str | os.PathLike[str], conversations: Iterable[Conversation]) -> int:
    """Atomically write conversations as JSONL (temp file in the same directory, fsync, replace); returns the count.

    An existing file keeps its permissions; a new one is 0644.
    """
    target = Path(path)
    lines = [
        json.dumps(conv.to_dict(), ensure_ascii=False, allow_nan=False) + "\n"
        for conv in conversations
    ]
    write_text(target, "".join(lines), mode=_file_mode(target))
    return len(lines)


def _file_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644
