"""Integrity of an audit report: an Ed25519 signature over the SHA-256 of every file it covers.

``audit.sig.json`` holds the algorithm, the signer's raw public key, the file hashes and the
signature over the canonical JSON of those three. :func:`verify` recomputes the hashes and checks
the signature, optionally against a public key the reader trusts (a signature by some other key
only proves the files were not changed after that key signed them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedpers.atomic import write_json

SIGNATURE_FILE = "audit.sig.json"


def default_key_path() -> Path:
    """``$FEDPERS_AUDIT_KEY``, else ``~/.config/fedpers/audit-signing-key.pem``."""
    return Path(
        os.environ.get(
            "FEDPERS_AUDIT_KEY", Path.home() / ".config" / "fedpers" / "audit-signing-key.pem"
        )
    )


def load_or_create_key(path: Path | None = None) -> Ed25519PrivateKey:
    """The signing key in ``path`` (default :func:`default_key_path`; PEM, PKCS#8), created owner-only if absent."""
    path = Path(path or default_key_path())
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _signed_bytes(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_files(directory: Path, names: list[str], key: Ed25519PrivateKey) -> dict:
    """Sign ``names`` (paths relative to ``directory``) and write ``audit.sig.json`` there."""
    directory = Path(directory)
    body = {
        "algorithm": "Ed25519",
        "public_key": base64.b64encode(public_key_bytes(key)).decode(),
        "files": {name: _sha256(directory / name) for name in sorted(names)},
    }
    record = body | {"signature": base64.b64encode(key.sign(_signed_bytes(body))).decode()}
    write_json(directory / SIGNATURE_FILE, record)
    return record


@dataclass
class Verification:
    ok: bool
    signer: str = ""
    problems: list[str] = field(default_factory=list)


def verify(directory: Path, trusted_public_key: bytes | None = None) -> Verification:
    """Check the signature in ``directory`` and that every file it covers is unchanged."""
    directory = Path(directory)
    path = directory / SIGNATURE_FILE
    if not path.exists():
        return Verification(False, problems=[f"{path}: no signature file"])
    try:
        record = json.loads(path.read_text())
        body = {k: record[k] for k in ("algorithm", "public_key", "files")}
        public = base64.b64decode(record["public_key"])
        signature = base64.b64decode(record["signature"])
    except (KeyError, ValueError) as err:
        return Verification(False, problems=[f"{path}: malformed ({err})"])
    signer = public.hex()
    problems = []
    if body["algorithm"] != "Ed25519":
        problems.append(f"{path}: unsupported algorithm {body['algorithm']!r}")
    if trusted_public_key is not None and public != trusted_public_key:
        problems.append(
            f"{path}: signed by key {signer[:16]}…, not by the trusted key {trusted_public_key.hex()[:16]}…"
        )
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, _signed_bytes(body))
    except (InvalidSignature, ValueError):
        problems.append(f"{path}: the signature does not match the signed content")
    for name, expected in body["files"].items():
        target = directory / name
        if not target.exists():
            problems.append(f"{target}: covered by the signature but missing")
        elif _sha256(target) != expected:
            problems.append(f"{target}: changed since it was signed (SHA-256 differs)")
    return Verification(not problems, signer, problems)
