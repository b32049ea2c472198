"""The wire log of a run: ``RUN_DIR/wire/manifest.jsonl`` (one JSON line per recorded reply) and, in a
simulation, each reply's serialized payload beside it. Its lines are built by :mod:`fedpers.wire`;
the audit (:mod:`fedpers.audit.wire`) reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

WIRE = "wire"
"""The run directory's folder of recorded replies."""
MANIFEST = "manifest.jsonl"
"""One JSON line per recorded reply, in that folder."""


def payload_name(entry: dict) -> str:
    """The file name of a recorded payload, from its manifest line."""
    return f"{entry['partition_id']}-{entry['round']}-{entry['message_type']}-{entry['payload_sha256'][:12]}.bin"


def append_manifest(path: Path, entry: dict) -> None:
    """Append one manifest line (the folder is created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def read_manifest(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / WIRE / MANIFEST
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not a JSON manifest entry ({err})") from None
    return out


def payload_path(run_dir: Path, entry: dict) -> Path:
    return Path(run_dir) / WIRE / payload_name(entry)
