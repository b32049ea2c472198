"""Conversation data: the JSONL format, per-user splits, the synthetic service desk and the tinyshakespeare importer."""

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
from fedpers.data.synthetic import PERSONAS, SyntheticConfig, generate

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
