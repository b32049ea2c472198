"""The on-device encrypted store: everything a device keeps about its user, in one directory.

A user's conversations, user embedding, received adapters and privacy ledger are personal data at
rest on the device, so each is kept as one file encrypted with AES-256-GCM: a fresh random 96-bit
nonce per write, and the store's id and the item's name as associated data, so a file moved onto
another item (or from another store) fails authentication instead of being read as that item.

The key is derived from a passphrase with scrypt (salt and parameters in the plaintext header
``store.json``, the parameters bounded so an edited header cannot make the derivation take hours)
or read from a key file of 32 random bytes. The header also holds a key id (an HMAC of the key) and
a check value (an encryption of a constant, with the header's version, store id, kdf record and key
id as associated data) that authenticates it. A key whose id differs from the header's is a wrong
key, unless the check value opens under the header with that key's id put back: then the key is
right and the header's ``key_id`` was edited, which is tampering.

The manifest. Authenticated encryption of each file does not stop a file from being deleted or
replaced by an older copy of itself (an older ``ledger.enc`` is as authentic as the current one).
So the store keeps an encrypted, authenticated manifest (``store.manifest``, associated data: the
store id) holding

    generation   a counter raised at every write of the manifest, never lowered
    items        for every item, the SHA-256 of its file, and optionally a *binding*: what the rest
                 of the store must agree with (the privacy ledgers bind their hash chain's head and
                 length, and the events they compose, ``clients.device.StoreLedger``)
    pending      the item writes and deletions under way
    anchor       the path of the anchor copy, if any (below)

An item is read only if its file's digest is the one the manifest lists. A listed item whose file
is gone is *deleted* (:class:`ItemDeletedError`); a file that decrypts as that item but has another
digest is an older (or other) authentic version, *rolled back* (:class:`RollbackError`); one that
does not decrypt is *modified*; an item file the manifest does not list is no item (*unlisted*).
All are :class:`TamperedError`, which :meth:`EncryptedStore.verify` lists without raising.

A write is crash-safe in three atomic steps: the manifest records the new digest as pending, the
item file is replaced, the manifest commits it. A crash between them leaves the old or the new
file, and either digest is accepted until the next open settles the pending entry. Every operation
reads the manifest from disk under a lock on ``store.lock`` (shared for reads, exclusive for
writes), so the ClientApp, the device worker and ``fedpers-client`` may use one store at once.

What is detected, and what is not. Within the store directory: deleting, truncating or editing any
item, the manifest or the header; putting back older copies of any set of item files while the
manifest stays current, or an older manifest while the items it lists changed since. Not detected:
an older copy of the *whole* directory (header, manifest and items together), or deleting the
manifest together with putting back the header of a store made before manifests existed (that store
is then migrated as found): an older directory is a consistent store of its own and the device has
no other memory. (An older copy of a current store's header alone changes nothing: the header only
changes when a store is migrated.) Against those, the
store can keep an *anchor*: a copy of the encrypted manifest written after every manifest write to a
file outside the directory (e.g. in the user's configuration directory, :meth:`EncryptedStore.set_anchor`).
Every open then compares generations: a manifest older than its anchor is a rollback of the whole
store (:class:`RollbackError`), a missing or unreadable anchor is tampering. The anchor's path is kept
in the manifest, so it guards only copies of the directory made after it was set; it does not help
when it is rolled back together with the directory (or kept on the medium a backup restores), nor
against a deleted manifest with a first-format header put back (that store migrates with no anchor).

Stores written before manifests existed (header version 1) are migrated when first opened: each item
file is checked to decrypt, its digest listed in a new manifest, and the header rewritten as version
2; a file that fails authentication stops the migration (nothing is changed).

Writes are atomic (temp file, fsync, rename, fsync of the directory): a crash leaves the old item,
never a half-written one; temp files a crash leaves behind are not items and are removed on open.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedpers.atomic import TEMP_SUFFIX, fsync_dir, write_bytes

STORE_VERSION = 2
FIRST_VERSION = 1  # no manifest: migrated on open
ITEM_AAD_VERSION = (
    1  # items' associated data keep the first format's tag: migration rewrites no item
)
HEADER = "store.json"
MANIFEST = "store.manifest"
LOCK = "store.lock"
KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16
CHECK_CONSTANT = b"fedpers encrypted store key check"
ITEM_SUFFIX = ".enc"
_PART = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
NAME_PATTERN = re.compile(rf"{_PART}(/{_PART})?")
# scrypt bounds accepted from a header: the default is n=2**15, r=8, p=1
MAX_SCRYPT = {"n": 2**20, "r": 32, "p": 16}
REPAIR_HINT = (
    "`fedpers-client repair` shows what was found and restores the highest spend the store knows"
)


class StoreError(Exception):
    """Base class of the store's errors."""


class WrongKeyError(StoreError):
    """The passphrase or key file does not unlock the store."""


class TamperedError(StoreError):
    """A file of the store failed authentication: it was modified, corrupted, moved or removed."""


class RollbackError(TamperedError):
    """A file (or the whole store) is an authentic but older version than the one the store last wrote."""


class ItemDeletedError(TamperedError):
    """The manifest lists an item whose file is gone."""


class MissingItemError(StoreError, KeyError):
    """No item of that name in the store."""

    __str__ = StoreError.__str__


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: n=2**15, r=8 takes 32 MiB and about 0.1 s per unlock; tests use less."""

    n: int = 2**15
    r: int = 8
    p: int = 1


@dataclass(frozen=True)
class StoreProblem:
    """One thing :meth:`EncryptedStore.verify` found: ``kind`` is ``deleted``, ``rolled-back``, ``modified``,
    ``unlisted`` or ``anchor``; ``item`` is None for the store as a whole."""

    item: str | None
    path: str
    kind: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


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


TAG_BYTES = 16


def _open_sealed(aead: AESGCM, blob: bytes, aad: bytes) -> bytes | None:
    """The plaintext of ``nonce + ciphertext + tag``; None when it fails authentication (a file too short to
    hold a nonce and a tag, e.g. a truncated one, fails too)."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        return None
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


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


def _check_kdf(path: Path, kdf: dict) -> None:
    """Refuse scrypt parameters out of bounds before deriving anything (an edited header could ask for hours)."""
    if kdf.get("name") != "scrypt":
        return
    for param, bound in MAX_SCRYPT.items():
        value = kdf[param]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise TamperedError(
                f"{path}: field 'kdf.{param}' is {value!r}, outside 1..{bound}: the header was modified"
            )


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


def _unlock(
    directory: Path, passphrase: str | None, key_file: Path | str | None
) -> tuple[dict, bytes]:
    """The authenticated header of the store in ``directory`` and its key."""
    path = directory / HEADER
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no encrypted store ({HEADER} missing)")
    corrupt = f"{path} failed authentication: the file was modified or corrupted"
    try:
        header = json.loads(path.read_bytes())
        if header["version"] not in (FIRST_VERSION, STORE_VERSION):
            raise StoreError(
                f"{path}: store version {header['version']!r}, this code reads "
                f"{FIRST_VERSION} and {STORE_VERSION}"
            )
        if not isinstance(header["store_id"], str) or not re.fullmatch(
            r"[0-9a-f]{32}", header["store_id"]
        ):
            raise ValueError(f"store_id {header['store_id']!r}")
        _check_kdf(path, header["kdf"])
        check, aad = base64.b64decode(header["check"], validate=True), _header_aad(header)
        key = _read_key(directory, header["kdf"], passphrase, key_file)
        key_id = str(header["key_id"])
    except (ValueError, KeyError, TypeError, OverflowError) as err:
        raise TamperedError(f"{corrupt} ({err!r})") from err
    aead = AESGCM(key)
    given = _key_id(key)
    if not hmac.compare_digest(given.encode(), key_id.encode()):
        # A wrong key, or the right key and an edited key_id: the check value authenticates the header
        # with the key's true id, so it opens under the header with this key's id only for the right key.
        if _open_sealed(aead, check, _header_aad({**header, "key_id": given})) is None:
            raise WrongKeyError(f"wrong passphrase or key file for store {directory}")
        raise TamperedError(
            f"{path}: field 'key_id' was edited (the key given opens the header's check value, whose "
            "key id is another): the header was tampered with"
        )
    if _open_sealed(aead, check, aad) is None:
        raise TamperedError(corrupt)
    return header, key


def _write_header(directory: Path, header: dict, key: bytes) -> None:
    header = {k: header[k] for k in ("version", "store_id", "kdf", "key_id")}
    nonce = secrets.token_bytes(NONCE_BYTES)
    header["check"] = _b64(nonce + AESGCM(key).encrypt(nonce, CHECK_CONSTANT, _header_aad(header)))
    write_bytes(directory / HEADER, json.dumps(header, indent=1).encode(), mode=0o600)


@dataclass
class _Manifest:
    generation: int
    items: dict[str, dict]  # name -> {"digest": hex, "binding"?: dict}
    pending: dict[str, dict]  # name -> the state being written; {"digest": None}: being deleted
    anchor: str | None = None
    # name -> bindings of newer versions than the file's, taken from the anchor after a rollback of the
    # whole store; the item reads as rolled back until a write replaces it (a repair)
    recovered: dict[str, list[dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "generation": self.generation,
            "items": self.items,
            "pending": self.pending,
            "anchor": self.anchor,
            "recovered": self.recovered,
        }

    @classmethod
    def from_dict(cls, data: dict) -> _Manifest:
        manifest = cls(
            int(data["generation"]),
            dict(data["items"]),
            dict(data["pending"]),
            data["anchor"],
            {str(k): list(v) for k, v in data["recovered"].items()},
        )
        for name, state in [*manifest.items.items(), *manifest.pending.items()]:
            validate_name(name)
            if not isinstance(state, dict) or "digest" not in state:
                raise ValueError(f"manifest entry {name!r}: {state!r}")
        return manifest

    def candidates(self, name: str) -> list[dict | None]:
        """The states the item's file may be in: the committed one, and the one being written."""
        states = [self.items.get(name)]
        if name in self.pending:
            pending = self.pending[name]
            states.append(pending if pending.get("digest") else None)
        return states

    def listed(self, name: str) -> bool:
        """Whether the item exists as far as the manifest knows (its file may be missing or damaged)."""
        return name in self.recovered or any(state is not None for state in self.candidates(name))

    def names(self) -> set[str]:
        return {
            *self.items,
            *(n for n, s in self.pending.items() if s.get("digest")),
            *self.recovered,
        }


class EncryptedStore:
    """Named items (bytes) encrypted in one directory; :meth:`create` or :meth:`open` one."""

    def __init__(self, directory: Path, key: bytes, store_id: str) -> None:
        self.directory = directory
        self.store_id = store_id
        self._aead = AESGCM(key)
        # recover mode: what the anchor holds when the store is older than it (see open)
        self.anchor_problem: StoreProblem | None = None
        self.anchored_manifest: _Manifest | None = None

    # creating and opening

    @classmethod
    def create(
        cls,
        directory: Path | str,
        passphrase: str | None = None,
        key_file: Path | str | None = None,
        params: ScryptParams = ScryptParams(),
        anchor: Path | str | None = None,
    ) -> EncryptedStore:
        """A new, empty store in ``directory`` (which may exist but must hold no store); with ``anchor``, a
        copy of its manifest is kept at that path outside the directory (see the module docstring)."""
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
        store = cls(directory, key, str(header["store_id"]))
        directory.mkdir(parents=True, exist_ok=True)
        anchor_path = None if anchor is None else str(Path(anchor).expanduser().resolve())
        store._save_manifest(_Manifest(0, {}, {}, anchor_path))
        _write_header(directory, header, key)
        return store

    @classmethod
    def open(
        cls,
        directory: Path | str,
        passphrase: str | None = None,
        key_file: Path | str | None = None,
        *,
        recover: bool = False,
    ) -> EncryptedStore:
        """Unlock the store in ``directory``; removes temp files an interrupted write left behind, settles
        writes a crash interrupted, and migrates a store of the first format (module docstring).

        A manifest older than the store's anchor raises :class:`RollbackError`, a missing or unreadable
        anchor :class:`TamperedError`; with ``recover`` the store opens anyway, the problem kept in
        :attr:`anchor_problem` (and the anchor's newer manifest in :attr:`anchored_manifest`) for a repair."""
        _one_key_source(passphrase, key_file)
        directory = Path(directory)
        header, key = _unlock(directory, passphrase, key_file)
        store = cls(directory, key, header["store_id"])
        with store._locked(exclusive=True):
            for tmp in [*directory.glob(f".*{TEMP_SUFFIX}"), *directory.glob(f"*/.*{TEMP_SUFFIX}")]:
                tmp.unlink()
            if header["version"] == FIRST_VERSION:
                store._migrate(header, key)
            manifest = store._load_manifest()
            if manifest.pending:
                store._settle(manifest)
            store._check_anchor(manifest, recover)
        return store

    def _migrate(self, header: dict, key: bytes) -> None:
        """List every item file of a first-format store in a new manifest, then mark the header version 2."""
        if not (self.directory / MANIFEST).exists():  # else a migration was interrupted after it
            items = {}
            for name in self._files():
                blob = self._path(name).read_bytes()
                if self._decrypt(name, blob) is None:
                    raise TamperedError(
                        f"{self._path(name)} (item {name!r}) failed authentication: the file was modified "
                        "or corrupted; the store was not migrated to the current format (nothing was changed)"
                    )
                items[name] = {"digest": _digest(blob)}
            self._save_manifest(_Manifest(0, items, {}, None))
        _write_header(self.directory, {**header, "version": STORE_VERSION}, key)

    # the manifest

    @contextmanager
    def _locked(self, exclusive: bool = False) -> Iterator[None]:
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _manifest_aad(self) -> bytes:
        return f"fedpers-store/manifest/{self.store_id}".encode()

    def _open_manifest(self, blob: bytes, where: Path) -> _Manifest:
        plain = _open_sealed(self._aead, blob, self._manifest_aad())
        if plain is None:
            raise TamperedError(
                f"{where} failed authentication: the file was modified, corrupted or belongs to another store"
            )
        try:
            return _Manifest.from_dict(json.loads(plain))
        except (
            ValueError,
            KeyError,
            TypeError,
        ) as err:  # authentic, so written by a broken version
            raise StoreError(f"{where}: unreadable manifest ({err!r})") from err

    def _load_manifest(self) -> _Manifest:
        path = self.directory / MANIFEST
        try:
            blob = path.read_bytes()
        except FileNotFoundError as err:
            raise TamperedError(
                f"{path} is missing: the store's list of items and their versions was deleted, so no "
                "item can be trusted (restore the whole store directory from a backup)"
            ) from err
        return self._open_manifest(blob, path)

    def _seal_manifest(self, manifest: _Manifest) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        plain = json.dumps(manifest.to_dict(), sort_keys=True).encode()
        return nonce + self._aead.encrypt(nonce, plain, self._manifest_aad())

    def _save_manifest(self, manifest: _Manifest) -> None:
        """Raise the generation and write the manifest, then its anchor copy (unless a repair holds it)."""
        manifest.generation += 1
        blob = self._seal_manifest(manifest)
        write_bytes(self.directory / MANIFEST, blob, mode=0o600)
        if manifest.anchor is not None and self.anchor_problem is None:
            write_bytes(manifest.anchor, blob, mode=0o600)

    def _check_anchor(self, manifest: _Manifest, recover: bool) -> None:
        if manifest.anchor is None:
            return
        path = Path(manifest.anchor)
        problem, newer = None, None
        try:
            anchored = self._open_manifest(path.read_bytes(), path)
        except FileNotFoundError:
            problem = StoreProblem(
                None,
                str(path),
                "anchor",
                f"the store's anchor {path} is missing: a rollback of the whole store cannot be ruled out "
                f"(if the anchor was moved, {REPAIR_HINT} and `--anchor FILE` sets it again)",
            )
        except TamperedError as err:
            problem = StoreProblem(None, str(path), "anchor", f"the store's anchor: {err}")
        else:
            if anchored.generation > manifest.generation or (
                anchored.generation == manifest.generation and anchored != manifest
            ):
                newer = anchored
                problem = StoreProblem(
                    None,
                    str(self.directory / MANIFEST),
                    "rolled-back",
                    f"the store {self.directory} is older than its anchor {path} (generation "
                    f"{manifest.generation}, the anchor's {anchored.generation}): the whole store was "
                    f"rolled back to an earlier copy; {REPAIR_HINT}",
                )
            elif anchored.generation < manifest.generation:  # a crash between manifest and anchor
                write_bytes(path, (self.directory / MANIFEST).read_bytes(), mode=0o600)
        if problem is None:
            return
        if not recover:
            error = RollbackError if problem.kind == "rolled-back" else TamperedError
            raise error(problem.message)
        self.anchor_problem, self.anchored_manifest = problem, newer

    @property
    def generation(self) -> int:
        """How many times the manifest was written (raised by every write and deletion)."""
        with self._locked():
            return self._load_manifest().generation

    @property
    def anchor(self) -> Path | None:
        """Where the anchor copy of the manifest is kept, if anywhere."""
        with self._locked():
            anchor = self._load_manifest().anchor
        return None if anchor is None else Path(anchor)

    def set_anchor(self, path: Path | str | None) -> None:
        """Keep the anchor copy of the manifest at ``path`` from now on (None: no anchor).

        Above the generation of the anchor it replaces, if that one is newer (after a repair)."""
        with self._locked(exclusive=True):
            manifest = self._load_manifest()
            if self.anchored_manifest is not None:
                manifest.generation = max(manifest.generation, self.anchored_manifest.generation)
            manifest.anchor = None if path is None else str(Path(path).expanduser().resolve())
            self.anchor_problem, self.anchored_manifest = None, None
            self._save_manifest(manifest)

    def adopt_anchor(self) -> list[str]:
        """After a rollback of the whole store (recover mode): record the anchor's bindings of items that
        differ in the store's own manifest, above the anchor's generation, and write the anchor again.

        Those items then read as rolled back until rewritten (a repair restores the ledgers from the
        bindings); the names recorded. A crash after this step loses nothing: the manifest and the
        anchor both hold what the anchor held."""
        newer = self.anchored_manifest
        if newer is None:
            return []
        with self._locked(exclusive=True):
            manifest = self._load_manifest()
            adopted = []
            for name in sorted(newer.names()):
                ours = [s.get("binding") for s in manifest.candidates(name) if s is not None]
                for state in newer.candidates(name):
                    binding = None if state is None else state.get("binding")
                    recorded = manifest.recovered.setdefault(name, [])
                    if binding is not None and binding not in ours and binding not in recorded:
                        recorded.append(binding)
                        adopted.append(name)
                if not manifest.recovered[name]:
                    del manifest.recovered[name]
            manifest.generation = max(manifest.generation, newer.generation)
            self.anchor_problem, self.anchored_manifest = None, None
            self._save_manifest(manifest)
        return sorted(set(adopted))

    # items

    def _path(self, name: str) -> Path:
        return self.directory / f"{validate_name(name)}{ITEM_SUFFIX}"

    def _aad(self, name: str) -> bytes:
        return f"fedpers-store/v{ITEM_AAD_VERSION}/{self.store_id}/{name}".encode()

    def _decrypt(self, name: str, blob: bytes) -> bytes | None:
        return _open_sealed(self._aead, blob, self._aad(name))

    def _files(self) -> list[str]:
        """The item names of the files in the directory (listed in the manifest or not)."""
        files = [*self.directory.glob(f"*{ITEM_SUFFIX}"), *self.directory.glob(f"*/*{ITEM_SUFFIX}")]
        names = (
            p.relative_to(self.directory).as_posix()[: -len(ITEM_SUFFIX)]
            for p in files
            if p.is_file()
        )
        return sorted(n for n in names if NAME_PATTERN.fullmatch(n))

    def _resolve(self, manifest: _Manifest, name: str) -> tuple[dict | None, bytes | None]:
        """The manifest state the item's file is in and the file's bytes; ``(None, None)`` if absent.

        Raises the :class:`TamperedError` that says what is wrong otherwise (module docstring)."""
        path = self._path(name)
        if name in manifest.recovered:
            raise RollbackError(
                f"{path} (item {name!r}) is older than the version the store's anchor recorded "
                f"(the whole store was rolled back); {REPAIR_HINT}"
            )
        candidates = manifest.candidates(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            if None in candidates:
                return None, None
            raise ItemDeletedError(
                f"{path} (item {name!r}) was deleted: the store's manifest lists it; {REPAIR_HINT}"
            ) from None
        digest = _digest(blob)
        for state in candidates:
            if state is not None and hmac.compare_digest(state["digest"], digest):
                return state, blob
        if all(state is None for state in candidates):
            raise TamperedError(
                f"{path} is not in the store's manifest: the file is no item of this store (it was put "
                f"there, or brought back after its deletion); {REPAIR_HINT}"
            )
        if self._decrypt(name, blob) is not None:
            raise RollbackError(
                f"{path} (item {name!r}) is an authentic but another version than the one the store last "
                f"wrote (an older copy was put back); {REPAIR_HINT}"
            )
        raise TamperedError(
            f"{path} (item {name!r}) failed authentication: the file was modified or corrupted; {REPAIR_HINT}"
        )

    def _settle(self, manifest: _Manifest) -> None:
        """Commit each pending write or deletion as the crash left it (what the file holds now)."""
        for name in list(manifest.pending):
            try:
                state, _ = self._resolve(manifest, name)
            except TamperedError:
                continue  # left for verify and repair to report
            if state is None:
                manifest.items.pop(name, None)
            else:
                manifest.items[name] = state
            del manifest.pending[name]
        self._save_manifest(manifest)

    def put(self, name: str, data: bytes, binding: dict | None = None) -> None:
        """Encrypt ``data`` as item ``name`` (replacing it atomically if present); ``binding`` is kept with its
        digest in the manifest (:meth:`binding`)."""
        path = self._path(name)
        nonce = secrets.token_bytes(NONCE_BYTES)
        blob = nonce + self._aead.encrypt(nonce, bytes(data), self._aad(name))
        state: dict = {"digest": _digest(blob)}
        if binding is not None:
            state["binding"] = binding
        with self._locked(exclusive=True):
            manifest = self._load_manifest()
            manifest.pending[name] = state
            self._save_manifest(manifest)
            write_bytes(path, blob, mode=0o600)
            del manifest.pending[name]
            manifest.items[name] = state
            manifest.recovered.pop(name, None)
            self._save_manifest(manifest)

    def get(self, name: str) -> bytes:
        """The decrypted item; :class:`MissingItemError` if absent, a :class:`TamperedError` if the file is
        not the one the manifest lists (deleted, rolled back, modified, unlisted)."""
        return self.get_bound(name)[0]

    def get_bound(self, name: str) -> tuple[bytes, dict | None]:
        """:meth:`get` and :meth:`binding` of the same version of the item, read under one lock."""
        with self._locked():
            state, blob = self._resolve(self._load_manifest(), name)
        if state is None or blob is None:
            raise MissingItemError(f"no item {name!r} in store {self.directory}")
        data = self._decrypt(name, blob)
        if data is None:
            raise TamperedError(
                f"{self._path(name)} (item {name!r}) failed authentication although the manifest lists it"
            )
        return data, state.get("binding")

    def binding(self, name: str) -> dict | None:
        """What item ``name`` was bound to when written (:meth:`put`), for the version of it on disk."""
        with self._locked():
            state, _ = self._resolve(self._load_manifest(), name)
        return None if state is None else state.get("binding")

    def bindings(self, name: str) -> list[dict]:
        """Every binding of item ``name`` the store knows, without reading its file: the manifest's and, in
        recover mode after a rollback of the whole store, the anchor's (a repair takes the highest spend)."""
        with self._locked():
            manifest = self._load_manifest()
        found = list(manifest.recovered.get(name, []))
        for source in (manifest, self.anchored_manifest):
            for state in [] if source is None else source.candidates(name):
                if state is not None and "binding" in state and state["binding"] not in found:
                    found.append(state["binding"])
        return found

    def put_json(self, name: str, value: object, binding: dict | None = None) -> None:
        self.put(name, json.dumps(value, sort_keys=True).encode(), binding)

    def get_json(self, name: str) -> object:
        return json.loads(self.get(name))

    def has(self, name: str) -> bool:
        """Whether the manifest lists item ``name`` (its file may still be missing or damaged: :meth:`get` says)."""
        path = self._path(name)
        with self._locked():
            manifest = self._load_manifest()
        if not manifest.listed(name):
            return False
        return path.is_file() or None not in manifest.candidates(name) or name in manifest.recovered

    def delete(self, name: str) -> None:
        """Remove item ``name`` (also when its file is missing or damaged); :class:`MissingItemError` if the
        manifest does not list it."""
        path = self._path(name)
        with self._locked(exclusive=True):
            manifest = self._load_manifest()
            if not manifest.listed(name):
                raise MissingItemError(f"no item {name!r} in store {self.directory}")
            manifest.pending[name] = {"digest": None}
            self._save_manifest(manifest)
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
            del manifest.pending[name]
            manifest.items.pop(name, None)
            manifest.recovered.pop(name, None)
            self._save_manifest(manifest)

    def remove_unlisted(self, name: str) -> None:
        """Remove the file of ``name`` the manifest does not list (what :meth:`verify` calls unlisted)."""
        path = self._path(name)
        with self._locked(exclusive=True):
            if self._load_manifest().listed(name):
                raise ValueError(
                    f"{path}: item {name!r} is listed in the manifest; delete it instead"
                )
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)

    def names(self) -> list[str]:
        """Every item's name the manifest lists, sorted (temp files and unlisted files are not items)."""
        with self._locked():
            manifest = self._load_manifest()
        return sorted(
            name
            for name in manifest.names()
            if self._path(name).is_file()
            or None not in manifest.candidates(name)
            or name in manifest.recovered
        )

    def verify(self) -> list[StoreProblem]:
        """Every problem of the store, without raising: each listed item's file checked against the
        manifest, files the manifest does not list, and (in recover mode) the anchor's finding."""
        problems = [] if self.anchor_problem is None else [self.anchor_problem]
        kinds = [
            (ItemDeletedError, "deleted"),
            (RollbackError, "rolled-back"),
            (TamperedError, "modified"),
        ]
        with self._locked():
            manifest = self._load_manifest()
            for name in sorted(manifest.names() | set(self._files())):
                try:
                    state, _ = self._resolve(manifest, name)
                except TamperedError as err:
                    listed = manifest.listed(name)
                    kind = (
                        next(k for cls, k in kinds if isinstance(err, cls))
                        if listed
                        else "unlisted"
                    )
                    problems.append(StoreProblem(name, str(self._path(name)), kind, str(err)))
        return problems

    def forget(self, keep: Iterable[str] = ("ledger",)) -> list[str]:
        """Delete every item except those in ``keep`` (by default the privacy ledger); the names deleted."""
        keep = {validate_name(n) for n in keep}
        forgotten = [n for n in self.names() if n not in keep]
        for name in forgotten:
            self.delete(name)
        return forgotten
