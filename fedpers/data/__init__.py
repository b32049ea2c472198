"""Conversation data: the JSONL format, per-user splits, the synthetic service desk and the tinyshakespeare importer."""

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
    "PERSONAS": "personas",
    "SyntheticConfig": "synthetic",
    "generate": "synthetic",
}

if TYPE_CHECKING:
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
    "Feedback",
    "ImportResult",
    "SyntheticConfig",
    "Turn",
    "ValidationIssue",
    "generate",
    "import_shakespeare",
    "parse_speeches",
    "read_jsonl",
    "speaker_slug",
    "train_heldout_split",
    "validate_record",
    "write_jsonl",
]
