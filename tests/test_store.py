"""The on-device encrypted store: confidentiality, authenticity, atomic writes and forgetting."""

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clients.store import (
    HEADER,
    LOCK,
    MANIFEST,
    EncryptedStore,
    MissingItemError,
    ScryptParams,
    TamperedError,
    WrongKeyError,
    create_key_file,
)

LIGHT = ScryptParams(n=2**4)
REPO = Path(__file__).resolve().parents[1]
SECRET = "My badge 4471 stopped working after the Lisbon trip"


def _store(path: Path) -> EncryptedStore:
    return EncryptedStore.create(path, passphrase="correct horse", params=LIGHT)


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_through_a_reopened_store(tmp_path):
    store = _store(tmp_path / "s")
    store.put_json("conversations", [{"role": "user", "content": SECRET}])
    store.put("embedding", b"\x00safetensors bytes\xff")
    store.put("adapters/leadership", b"adapter A")
    store.put("adapters/leadership", b"adapter A, round 2")
    store.put_json("ledger", {"entries": []})

    again = EncryptedStore.open(tmp_path / "s", passphrase="correct horse")
    assert again.names() == ["adapters/leadership", "conversations", "embedding", "ledger"]
    assert again.get_json("conversations") == [{"role": "user", "content": SECRET}]
    assert again.get("embedding") == b"\x00safetensors bytes\xff"
    assert again.get("adapters/leadership") == b"adapter A, round 2"
    assert again.has("ledger") and not again.has("adapters/field_worker")
    with pytest.raises(MissingItemError, match="no item 'adapters/field_worker'"):
        again.get("adapters/field_worker")
    with pytest.raises(KeyError):
        again.delete("nothing")


def test_no_file_on_disk_holds_the_plaintext(tmp_path):
    store = _store(tmp_path)
    store.put_json("conversations", [{"role": "user", "content": SECRET}])
    store.put("adapters/leadership", SECRET.encode())
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(
        [HEADER, MANIFEST, LOCK, "conversations.enc", "leadership.enc"]
    )
    for path in files:
        data = path.read_bytes()
        assert b"badge 4471" not in data and b"Lisbon" not in data, path


def test_wrong_passphrase_is_a_wrong_key_not_tampering(tmp_path):
    _store(tmp_path).put("ledger", b"{}")
    with pytest.raises(
        WrongKeyError, match=re.escape(f"wrong passphrase or key file for store {tmp_path}")
    ):
        EncryptedStore.open(tmp_path, passphrase="correct horse ")
    with pytest.raises(ValueError, match="passphrase is empty"):
        EncryptedStore.create(tmp_path / "empty", passphrase="")
    with pytest.raises(WrongKeyError, match="unlocked with a passphrase, not a key file"):
        EncryptedStore.open(tmp_path, key_file=create_key_file(tmp_path.parent / "k"))


def test_default_scrypt_parameters_are_recorded_in_the_header(tmp_path):
    EncryptedStore.create(tmp_path, passphrase="pw").put("ledger", b"{}")
    kdf = json.loads((tmp_path / HEADER).read_text())["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", 2**15, 8, 1)
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert EncryptedStore.open(tmp_path, passphrase="pw").get("ledger") == b"{}"


def test_key_file_store(tmp_path):
    key = create_key_file(tmp_path / "keys" / "device.key")
    assert oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_bytes()) == 32
    with pytest.raises(FileExistsError):
        create_key_file(key)
    EncryptedStore.create(tmp_path / "s", key_file=key).put("embedding", b"e")
    assert EncryptedStore.open(tmp_path / "s", key_file=key).get("embedding") == b"e"
    with pytest.raises(WrongKeyError, match="wrong passphrase or key file"):
        EncryptedStore.open(
            tmp_path / "s", key_file=create_key_file(tmp_path / "keys" / "other.key")
        )
    with pytest.raises(WrongKeyError, match="unlocked with a key file, not a passphrase"):
        EncryptedStore.open(tmp_path / "s", passphrase="pw")
    with pytest.raises(ValueError, match="exactly one"):
        EncryptedStore.open(tmp_path / "s", passphrase="pw", key_file=key)


@pytest.mark.parametrize("position", [0, 20, -1])  # nonce, ciphertext, tag
def test_a_flipped_byte_in_an_item_is_detected(tmp_path, position):
    store = _store(tmp_path)
    store.put("adapters/leadership", b"adapter weights" * 10)
    _flip(tmp_path / "adapters" / "leadership.enc", position)
    with pytest.raises(
        TamperedError,
        match=r"adapters/leadership.enc \(item 'adapters/leadership'\) failed authentication",
    ):
        store.get("adapters/leadership")


def test_a_flipped_byte_in_the_header_check_value_is_tampering(tmp_path):
    _store(tmp_path)
    header = json.loads((tmp_path / HEADER).read_text())
    check = bytearray(base64.b64decode(header["check"]))
    check[-3] ^= 0x80
    header["check"] = base64.b64encode(bytes(check)).decode()
    (tmp_path / HEADER).write_text(json.dumps(header))
    with pytest.raises(
        TamperedError,
        match=re.escape(f"{tmp_path / HEADER} failed authentication: the file was modified"),
    ):
        EncryptedStore.open(tmp_path, passphrase="correct horse")


def test_swapped_or_foreign_files_are_detected(tmp_path):
    key = create_key_file(tmp_path / "device.key")
    store = EncryptedStore.create(tmp_path / "a", key_file=key)
    store.put("adapters/leadership", b"leadership")
    store.put("adapters/field_worker", b"field worker")
    os.replace(
        tmp_path / "a" / "adapters" / "leadership.enc",
        tmp_path / "a" / "adapters" / "field_worker.enc",
    )
    with pytest.raises(TamperedError, match="item 'adapters/field_worker'"):
        store.get("adapters/field_worker")

    other = EncryptedStore.create(tmp_path / "b", key_file=key)  # same key, another store
    other.put("ledger", b"other ledger")
    store.put("ledger", b"ledger")
    os.replace(tmp_path / "b" / "ledger.enc", tmp_path / "a" / "ledger.enc")
    with pytest.raises(TamperedError, match="item 'ledger'"):
        store.get("ledger")


def test_a_failed_rename_leaves_the_old_item(tmp_path, monkeypatch):
    store = _store(tmp_path)
    store.put("conversations", b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.put("conversations", b"new")
    monkeypatch.undo()
    assert store.get("conversations") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["conversations.enc", HEADER, LOCK, MANIFEST]
    )


def test_a_crash_before_the_rename_leaves_the_old_item(tmp_path):
    store = _store(tmp_path)
    store.put("conversations", b"old")
    crash = (
        "import os, sys\nfrom clients.store import EncryptedStore\n"
        "store = EncryptedStore.open(sys.argv[1], passphrase='correct horse')\n"
        "os.replace = lambda src, dst: os._exit(9)  # the device dies before the rename\n"
        "store.put('conversations', b'new')\n"
    )
    assert subprocess.run([sys.executable, "-c", crash, str(tmp_path)], cwd=REPO).returncode == 9
    (stray,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert store.names() == ["conversations"] and store.get("conversations") == b"old"
    reopened = EncryptedStore.open(tmp_path, passphrase="correct horse")
    assert not stray.exists() and reopened.get("conversations") == b"old"


def test_forget_keeps_the_ledger(tmp_path):
    store = _store(tmp_path / "s")
    for name in ("conversations", "embedding", "adapters/leadership", "adapters/admin_hr"):
        store.put(name, name.encode())
    store.put_json("ledger", {"entries": [{"purpose": "round 1"}]})
    store.delete("embedding")
    assert store.names() == ["adapters/admin_hr", "adapters/leadership", "conversations", "ledger"]
    assert store.forget() == ["adapters/admin_hr", "adapters/leadership", "conversations"]
    assert store.names() == ["ledger"] and store.get_json("ledger") == {
        "entries": [{"purpose": "round 1"}]
    }
    with pytest.raises(MissingItemError):
        store.get("conversations")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../ledger",
        "/etc/passwd",
        "adapters/../ledger",
        "a/b/c",
        ".hidden",
        "adapters/",
        "adapters/.x",
        "a b",
        "a\\b",
        "x" * 200,
        7,
    ],
)
def test_invalid_names_are_rejected(tmp_path, name):
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="invalid item name"):
        store.put(name, b"x")
    with pytest.raises(ValueError, match="invalid item name"):
        store.get(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([HEADER, LOCK, MANIFEST])
