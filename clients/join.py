"""How a device joins a federation: the ``flower-supernode`` command for its store.

The SuperNode is Flower's, started through :mod:`clients.supernode`, which only shortens its waits
between messages while a run is active.

The SuperNode dials the SuperLink over TLS (``--root-certificates``) and authenticates with the
device's node key (``--auth-supernode-private-key``; its public key must be registered with the
SuperLink first). Its node config names the store and user, which the ClientApp reads; the store's
key reaches the ClientApp through the environment only (:mod:`clients.unlock`).

Beside the SuperNode runs the device's worker (:mod:`clients.worker`), which keeps the model loaded
between messages; it inherits the same environment, and stops when the SuperNode has exited (or when
``join`` itself dies).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedpers.network import check_address, free_port
from fedpers.processes import run_foreground

WORKER_STOP_SECONDS = 10.0
SUPEREXEC_POLL_SECONDS = "0.25"
"""How often the SuperNode's SuperExec asks it (locally) for a message to start a ClientApp for
(``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``; Flower's default is 1 s)."""


@dataclass(frozen=True)
class JoinConfig:
    """Where the SuperLink is and how to reach it."""

    superlink: str  # HOST:PORT
    root_certificates: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False  # local tests only: no TLS, no node authentication
    runtime_port: int = 0  # the SuperNode's local Runtime API port; 0: a free one
    max_retries: int | None = None
    max_wait_time: float | None = None

    def __post_init__(self) -> None:
        check_address(self.superlink)
        if not 0 <= self.runtime_port <= 65535:
            raise ValueError(f"--runtime-port must be in 0..65535, got {self.runtime_port}")
        if self.insecure:
            if self.root_certificates or self.auth_key:
                raise ValueError(
                    "--insecure runs without TLS: it takes neither --root-certificates nor --auth-key"
                )
            return
        if self.root_certificates is None or self.auth_key is None:
            raise ValueError(
                "joining needs --root-certificates CA.crt and --auth-key NODE.key (or --insecure for a local test)"
            )
        for flag, path in (
            ("--root-certificates", self.root_certificates),
            ("--auth-key", self.auth_key),
        ):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path}: no such file")


def _toml_string(value: str, what: str) -> str:
    if "'" in value or "\n" in value:
        raise ValueError(f"{what} {value!r}: may not contain a quote (') or a line break")
    return f"'{value}'"


def node_config(store: Path, user_id: str) -> str:
    """The SuperNode's ``--node-config``: the store's absolute path and the user id."""
    return f"store={_toml_string(str(Path(store).resolve()), 'store path')} user-id={_toml_string(user_id, 'user id')}"


def supernode_command(join: JoinConfig, store: Path, user_id: str) -> list[str]:
    """``flower-supernode`` (through :mod:`clients.supernode`) with TLS, node authentication and the
    node config for ``store``."""
    command = [sys.executable, "-m", "clients.supernode", "--superlink", join.superlink]
    if join.insecure:
        command.append("--insecure")
    else:
        command += [
            "--root-certificates",
            str(Path(join.root_certificates).resolve()),
            "--auth-supernode-private-key",
            str(Path(join.auth_key).resolve()),
        ]
    command += [
        "--node-config",
        node_config(store, user_id),
        "--port",
        str(join.runtime_port or free_port()),
    ]
    if join.max_retries is not None:
        command += ["--max-retries", str(join.max_retries)]
    if join.max_wait_time is not None:
        command += ["--max-wait-time", str(join.max_wait_time)]
    return command


def worker_command(store: Path, parent_pid: int) -> list[str]:
    """The device worker for ``store``, stopping when process ``parent_pid`` exits."""
    return [
        sys.executable,
        "-m",
        "clients.worker",
        "--store",
        str(Path(store).resolve()),
        "--parent-pid",
        str(parent_pid),
    ]


def stop(proc: subprocess.Popen, timeout: float = WORKER_STOP_SECONDS) -> None:
    """Terminate ``proc`` and wait for it; kill it if it does not leave within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_supernode(
    command: list[str], env: Mapping[str, str], store: Path | None, parent_pid: int
) -> int:
    """Run the SuperNode ``command`` in the foreground, with the worker for ``store`` beside it (none
    when ``store`` is ``None``); the worker is stopped once the SuperNode has exited. Its exit status."""
    worker = (
        None
        if store is None
        else subprocess.Popen(worker_command(store, parent_pid), env=dict(env))
    )
    try:
        return run_foreground(command, env)
    finally:
        if worker is not None:
            stop(worker)
