"""The on-device encrypted store: everything a device keeps about its user, in one directory.

A user's conversations, user embedding, received adapters and privacy ledger are personal data at
rest on the device, so each is kept as one file encrypted with AES-256-GCM: a fresh random 96-bit
nonce per write, and the store's id and the item's name as associated data, so a file moved onto
another item (or from another store) fails authentication instead of being read as that item.

The key is derived from a passphrase with scrypt (salt and parameters in the plaintext header
``store.json``) or read from a key file of 32 random bytes. The header also holds a key id (an
HMAC of the key), telling a wrong passphrase apart from tampering, and a check value (an
encryption of a constant, with the rest of the header as associated data) that authenticates it.

Writes are atomic (temp file, fsync, rename, fsync of the directory): a crash leaves the old item,
never a half-written one; temp files a crash leaves behind are not items and are removed on open.
One process at a time uses a store.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedpers.atomic import TEMP_SUFFIX, fsync_dir, write_bytes

STORE_VERSION = 1
HEADER = "store.json"
KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16
CHECK_CONSTANT = b"fedpers encrypted store key check"
ITEM_SUFFIX = ".enc"
_PART = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
NAME_PATTERN = re.compile(rf"{_PART}(/{_PART})?")


class StoreError(Exception):
    """Base class of the store's errors."""


class WrongKeyError(StoreError):
    """The passphrase or key file does not unlock the store."""


class TamperedError(StoreError):
    """A file of the store failed authentication: it was modified, corrupted or moved."""


class MissingItemError(StoreError, KeyError):
    """No item of that name in the store."""

    __str__ = StoreError.__str__


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: n=2**15, r=8 takes 32 MiB and about 0.1 s per unlock; tests use less."""

    n: int = 2**15
    r: int = 8
    p: int = 1


def create_key_file(path: Path | str) -> Path:
    """Write 32 random bytes to a new file only its owner can read (refuses to overwrite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))
        f.flush()
        os.fsync(f.fileno())
    return path


def validate_name(name: str) -> str:
    """``name`` if it is a valid item name (letters, digits, ``._-``, at most one ``/``), else ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid item name {name!r}: use [A-Za-z0-9._-] (not starting with '.'), "
            "with at most one '/' (e.g. 'adapters/leadership')"
        )
    return name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _key_id(key: bytes) -> str:
    return hmac.new(key, b"fedpers encrypted store key id", "sha256").hexdigest()[:32]


def _header_aad(header: dict) -> bytes:
    body = {k: header[k] for k in ("version", "store_id", "kdf", "key_id")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _one_key_source(passphrase: str | None, key_file: Path | str | None) -> None:
    if (passphrase is None) == (key_file is None):
        raise ValueError("give exactly one of passphrase and key_file")
    if passphrase == "":
        raise ValueError("the passphrase is empty")


def _read_key(
    directory: Path, kdf: dict, passphrase: str | None, key_file: Path | str | None
) -> bytes:
    """The store's key from the header's ``kdf`` record and what the user gave."""
    if kdf["name"] == "scrypt":
        if passphrase is None:
            raise WrongKeyError(f"store {directory} is unlocked with a passphrase, not a key file")
        scrypt = Scrypt(
            salt=base64.b64decode(kdf["salt"]), length=KEY_BYTES, n=kdf["n"], r=kdf["r"], p=kdf["p"]
        )
        return scrypt.derive(passphrase.encode())
    if kdf["name"] == "key-file":
        if key_file is None:
            raise WrongKeyError(f"store {directory} is unlocked with a key file, not a passphrase")
        key = Path(key_file).read_bytes()
        if len(key) != KEY_BYTES:
            raise WrongKeyError(
                f"{key_file}: a key file holds {KEY_BYTES} bytes, this one {len(key)}"
            )
        return key
    raise StoreError(f"{directory / HEADER}: unsupported key derivation {kdf['name']!r}")


class EncryptedStore:
    """Named items (bytes) encrypted in one directory; :meth:`create` or :meth:`open` one."""

    def __init__(self, directory: Path, key: bytes, store_id: str) -> None:
        self.directory = directory
        self.store_id = store_id
        self._aead = AESGCM(key)

    @classmethod
    def create(
        cls,
        directory: Path | str,
        passphrase: str | None = None,
        key_file: Path | str | None = None,
        params: ScryptParams = ScryptParams(),
    ) -> EncryptedStore:
        """A new, empty store in ``directory`` (which may exist but must hold no store)."""
        _one_key_source(passphrase, key_file)
        directory = Path(directory)
        if (directory / HEADER).exists():
            raise FileExistsError(f"{directory} already holds an encrypted store")
        if passphrase is not None:
            kdf = {
                "name": "scrypt",
                **asdict(params),
                "salt": _b64(secrets.token_bytes(SALT_BYTES)),
            }
        else:
            kdf = {"name": "key-file"}
        key = _read_key(directory, kdf, passphrase, key_file)
        header = {
            "version": STORE_VERSION,
            "store_id": uuid.uuid4().hex,
            "kdf": kdf,
            "key_id": _key_id(key),
        }
        nonce = secrets.token_bytes(NONCE_BYTES)
        header["check"] = _b64(
            nonce + AESGCM(key).encrypt(nonce, CHECK_CONSTANT, _header_aad(header))
        )
        write_bytes(directory / HEADER, json.dumps(header, indent=1).encode(), mode=0o600)
        return cls(directory, key, header["store_id"])

    @classmethod
    def open(
        cls,
        directory: Path | str,
        passphrase: str | None = None,
        key_file: Path | str | None = None,
    ) -> EncryptedStore:
        """Unlock the store in ``directory``; removes temp files an interrupted write left behind."""
        _one_key_source(passphrase, key_file)
        directory = Path(directory)
        path = directory / HEADER
        if not path.exists():
            raise FileNotFoundError(f"{directory}: no encrypted store ({HEADER} missing)")
        corrupt = f"{path} failed authentication: the file was modified or corrupted"
        try:
            header = json.loads(path.read_bytes())
            if header["version"] != STORE_VERSION:
                raise StoreError(
                    f"{path}: store version {header['version']!r}, this code reads {STORE_VERSION}"
                )
            check, aad = base64.b64decode(header["check"]), _header_aad(header)
            key = _read_key(directory, header["kdf"], passphrase, key_file)
        except (ValueError, KeyError, TypeError) as err:
            raise TamperedError(f"{corrupt} ({err})") from err
        if not hmac.compare_digest(_key_id(key).encode(), str(header["key_id"]).encode()):
            raise WrongKeyError(f"wrong passphrase or key file for store {directory}")
        try:
            AESGCM(key).decrypt(check[:NONCE_BYTES], check[NONCE_BYTES:], aad)
        except InvalidTag as err:
            raise TamperedError(corrupt) from err
        for tmp in [*directory.glob(f".*{TEMP_SUFFIX}"), *directory.glob(f"*/.*{TEMP_SUFFIX}")]:
            tmp.unlink()
        return cls(directory, key, header["store_id"])

    def _path(self, name: str) -> Path:
        return self.directory / f"{validate_name(name)}{ITEM_SUFFIX}"

    def _aad(self, name: str) -> bytes:
        return f"fedpers-store/v{STORE_VERSION}/{self.store_id}/{name}".encode()

    def put(self, name: str, data: bytes) -> None:
        """Encrypt ``data`` as item ``name`` (replacing it atomically if present)."""
        path = self._path(name)
        nonce = secrets.token_bytes(NONCE_BYTES)
        write_bytes(
            path, nonce + self._aead.encrypt(nonce, bytes(data), self._aad(name)), mode=0o600
        )

    def get(self, name: str) -> bytes:
        """The decrypted item; :class:`MissingItemError` if absent, :class:`TamperedError` if not authentic."""
        path = self._path(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as err:
            raise MissingItemError(f"no item {name!r} in store {self.directory}") from err
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self._aad(name))
        except InvalidTag as err:
            raise TamperedError(
                f"{path} (item {name!r}) failed authentication: the file was modified or corrupted"
            ) from err

    def put_json(self, name: str, value: object) -> None:
        self.put(name, json.dumps(value, sort_keys=True).encode())

    def get_json(self, name: str) -> object:
        return json.loads(self.get(name))

    def has(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        """Remove item ``name``; :class:`MissingItemError` if absent."""
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError as err:
            raise MissingItemError(f"no item {name!r} in store {self.directory}") from err
        fsync_dir(path.parent)

    def names(self) -> list[str]:
        """Every item's name, sorted (temp files of interrupted writes are not items)."""
        files = [*self.directory.glob(f"*{ITEM_SUFFIX}"), *self.directory.glob(f"*/*{ITEM_SUFFIX}")]
        names = (
            p.relative_to(self.directory).as_posix()[: -len(ITEM_SUFFIX)]
            for p in files
            if p.is_file()
        )
        return sorted(n for n in names if NAME_PATTERN.fullmatch(n))

    def forget(self, keep: Iterable[str] = ("ledger",)) -> list[str]:
        """Delete every item except those in ``keep`` (by default the privacy ledger); the names deleted."""
        keep = {validate_name(n) for n in keep}
        forgotten = [n for n in self.names() if n not in keep]
        for name in forgotten:
            self.delete(name)
        return forgotten
