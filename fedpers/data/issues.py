"""What a skip-mode read dropped: lines counted per reason, and where the first ones are.

A reason is an issue with what varies from line to line taken out: list indices (``turns[3].role`` ->
``turns[].role``), the offending value (``, got 'bot'``), columns, byte offsets, sizes and the ids of a
repeated conversation. A dropped line counts once under each of its distinct reasons, so the counts can
add up to more than the lines dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fedpers.data.schema import ValidationIssue, printable

FIRST_SHOWN = 5
"""How many dropped lines a summary names (``file:line``)."""

_REWRITES = (
    (re.compile(r"\[\d+\]"), "[]", "field"),
    (re.compile(r", got .*$", re.DOTALL), "", "message"),
    (re.compile(r" \((?:column|first seen on line) \d+\)"), "", "message"),
    (re.compile(r" at byte \d+$"), "", "message"),
    (re.compile(r": '.*'$", re.DOTALL), "", "message"),
    (re.compile(r"^[\d,]+ bytes, over"), "over", "message"),
    (re.compile(r" \(\d+ times in the same object\)"), "", "message"),
    (re.compile(r"surrogate \\u[0-9a-f]{4}"), "surrogate", "message"),
    (
        re.compile(r"^duplicate conversation_id .* for user_id .*$", re.DOTALL),
        "duplicate conversation_id for its user_id",
        "message",
    ),
)


def reason(issue: ValidationIssue) -> str:
    """``field: message`` of ``issue`` without what varies from line to line (see the module doc)."""
    field, message = issue.field, issue.message
    for pattern, replacement, part in _REWRITES:
        if part == "field":
            field = pattern.sub(replacement, field)
        else:
            message = pattern.sub(replacement, message)
    return printable(f"{field}: {message}")


@dataclass(frozen=True)
class DroppedLines:
    """The lines a read dropped: how many, how many per reason (most first), and the first few."""

    lines: int
    by_reason: dict[str, int]
    first: tuple[str, ...]
    """``file:line`` of the first :data:`FIRST_SHOWN` dropped lines."""

    def describe(self, what: str = "dropped") -> list[str]:
        """The summary as lines of text (nothing when no line was dropped); ``what`` says what befell them."""
        if not self.lines:
            return []
        out = [f"{self.lines:,} line(s) {what}:"]
        out += [f"  {n:,} × {r}" for r, n in self.by_reason.items()]
        more = (
            f" (and {self.lines - len(self.first):,} more)" if self.lines > len(self.first) else ""
        )
        out.append(f"  first: {', '.join(self.first)}{more}")
        return out


def dropped_lines(issues: Sequence[ValidationIssue], first: int = FIRST_SHOWN) -> DroppedLines:
    """Summarize the ``issues`` of one read (each issue's line is a dropped line)."""
    reasons: dict[tuple[str, int], set[str]] = {}
    for issue in issues:
        reasons.setdefault((issue.path, issue.line), set()).add(reason(issue))
    counts = Counter(r for rs in reasons.values() for r in rs)
    return DroppedLines(
        lines=len(reasons),
        by_reason=dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
        first=tuple(printable(f"{path}:{line}") for path, line in list(reasons)[:first]),
    )
