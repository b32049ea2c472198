"""How the ClientApp process unlocks the device's store: a passphrase or key file from its environment.

The key never travels in the run or node config. ``fedpers-client join`` puts it in the environment
of ``flower-supernode``, whose ``flwr-clientapp`` processes inherit it.
"""

from __future__ import annotations

import os
from pathlib import Path

from clients.store import EncryptedStore, StoreError

PASSPHRASE_ENV = "FEDPERS_STORE_PASSPHRASE"
KEY_FILE_ENV = "FEDPERS_STORE_KEY_FILE"


def key_from_env() -> dict:
    """``{"key_file": ...}`` or ``{"passphrase": ...}`` for :meth:`EncryptedStore.open`, from the environment."""
    if os.environ.get(KEY_FILE_ENV):
        return {"key_file": os.environ[KEY_FILE_ENV]}
    if os.environ.get(PASSPHRASE_ENV):
        return {"passphrase": os.environ[PASSPHRASE_ENV]}
    raise StoreError(
        f"the store is locked: set {PASSPHRASE_ENV} or {KEY_FILE_ENV} in the environment "
        "(of the SuperNode, for the ClientApp)"
    )


def open_from_env(directory: Path | str) -> EncryptedStore:
    """The store in ``directory``, unlocked with the key from the environment."""
    return EncryptedStore.open(directory, **key_from_env())
