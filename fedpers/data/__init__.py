"""Conversation data: the JSONL format, per-user splits, the choice of users and conversations from a file, the
synthetic service desk and the tinyshakespeare importer."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

# loaded on first use: the synthetic service desk reads its phrase banks when imported, and most
# processes (a ClientApp handling one SecAgg+ stage, say) only need the schema
_EXPORTS = {
    "ROLES": "schema",
    "SENTIMENTS": "schema",
    "Conversation": "schema",
    "DataValidationError": "schema",
    "Feedback": "schema",
    "ImportResult": "schema",
    "Turn": "schema",
    "ValidationIssue": "schema",
    "read_jsonl": "schema",
    "validate_record": "schema",
    "write_jsonl": "schema",
    "DEFAULT_SHAKESPEARE_PATH": "shakespeare",
    "import_shakespeare": "shakespeare",
    "parse_speeches": "shakespeare",
    "speaker_slug": "shakespeare",
    "train_heldout_split": "split",
    "Selection": "select",
    "select_conversations": "select",
    "DroppedLines": "issues",
    "dropped_lines": "issues",
    "PERSONAS": "personas",
    "SyntheticConfig": "synthetic",
    "generate": "synthetic",
}

if TYPE_CHECKING:
    from fedpers.data.issues import DroppedLines, dropped_lines
    from fedpers.data.personas import PERSONAS
    from fedpers.data.schema import (
        ROLES,
        SENTIMENTS,
        Conversation,
        DataValidationError,
        Feedback,
        ImportResult,
        Turn,
        ValidationIssue,
        read_jsonl,
        validate_record,
        write_jsonl,
    )
    from fedpers.data.select import Selection, select_conversations
    from fedpers.data.shakespeare import (
        DEFAULT_SHAKESPEARE_PATH,
        import_shakespeare,
        parse_speeches,
        speaker_slug,
    )
    from fedpers.data.split import train_heldout_split
    from fedpers.data.synthetic import SyntheticConfig, generate


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"fedpers.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_SHAKESPEARE_PATH",
    "PERSONAS",
    "ROLES",
    "SENTIMENTS",
    "Conversation",
    "DataValidationError",
    "DroppedLines",
    "Feedback",
    "ImportResult",
    "Selection",
    "SyntheticConfig",
    "Turn",
    "ValidationIssue",
    "dropped_lines",
    "generate",
    "import_shakespeare",
    "parse_speeches",
    "read_jsonl",
    "select_conversations",
    "speaker_slug",
    "train_heldout_split",
    "validate_record",
    "write_jsonl",
]
