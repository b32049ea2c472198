"""A whole federation on this machine, across real processes: a SuperLink with TLS and SuperNode
authentication, and devices with encrypted stores joining as SuperNodes (``fedpers-client join``).

Used by the deployment test and benchmark. Every process is started in its own process group and
killed when the federation closes; Flower's configuration lives in temporary ``FLWR_HOME`` folders,
never the user's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from clients.cli import main as client_main
from clients.worker_protocol import OK, ProtocolError, Request, exchange, socket_path
from fedpers.certs import generate_ca, generate_node_keys, generate_server_cert
from fedpers.data import Conversation, write_jsonl
from fedpers.network import free_port


class Processes:
    """Processes started here, each in its own process group; all of them are killed by :meth:`stop`."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in self.started:  # the whole group: flower-superexec and app processes too
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def flower_env(flwr_home: Path, **extra: str) -> dict:
    """This environment with its own ``FLWR_HOME``, this interpreter's ``bin`` first on ``PATH``, no store keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDPERS_STORE")}
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.5)


def workers_ready(stores) -> bool:
    """Whether the worker of every ``(store, key file)`` answers (it does once its imports are done)."""
    for store, _ in stores:
        try:
            response = exchange(socket_path(store), Request("ping"), timeout=2)
        except (OSError, ProtocolError):  # still importing, or gone
            return False
        if response is None or response.status != OK:
            return False
    return True


def module_command(module: str, *args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", module, *args]


@dataclass
class Federation:
    root: Path
    certs: Path
    address: str
    server_env: dict
    procs: Processes
    stores: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # user -> (store, key file)

    def run(
        self, settings: str, run_dir: Path, registry: Path | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """``fedpers-server run`` with ``settings`` (a ``--run-config`` string) on this federation."""
        extra = ["--registry", str(registry)] if registry else []
        return subprocess.run(
            module_command(
                "server.cli", "run", "--run-config", settings, "--run-dir", str(run_dir), *extra
            ),
            env=self.server_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextmanager
def local_federation(
    root: Path,
    conversations: list[Conversation],
    spare_keys: int = 1,
    budget: float = 20.0,
    client_python: str = sys.executable,
    worker: bool = True,
    device_env: Mapping[int, Mapping[str, str]] | None = None,
) -> Iterator[Federation]:
    """A SuperLink on 127.0.0.1 and one joined device per user of ``conversations`` (plus unregistered spare keys);
    ``worker=False`` joins them without the device worker (``join --no-worker``); ``device_env`` adds
    environment variables to the processes of device ``i`` (1-based, in user order)."""
    users = sorted({c.user_id for c in conversations})
    certs = root / "certs"
    generate_ca(certs)
    generate_server_cert(certs, ["127.0.0.1"])
    for i in range(1, len(users) + spare_keys + 1):
        generate_node_keys(certs, f"node-{i}")
    procs = Processes(root / "logs")
    server_env = flower_env(root / "flwr-server")
    address = f"127.0.0.1:{free_port()}"
    try:
        procs.start(
            "superlink",
            module_command(
                "server.cli", "superlink", "--certs", str(certs), "--port", address.split(":")[1]
            ),
            server_env,
        )
        wait_for(
            lambda: "Uvicorn running" in procs.log("superlink"),
            60,
            "the SuperLink",
            lambda: procs.log("superlink"),
        )
        register = subprocess.run(
            module_command(
                "server.cli",
                "register",
                *(str(certs / f"node-{i}.pub") for i in range(1, len(users) + 1)),
                "--superlink",
                address,
                "--root-certificates",
                str(certs / "ca.crt"),
            ),
            env=server_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if register.returncode != 0 or register.stdout.count("registered successfully") != len(
            users
        ):
            raise RuntimeError(
                f"registering the devices' keys failed:\n{register.stdout}\n{register.stderr}"
            )
        federation = Federation(root, certs, address, server_env, procs)
        for i, user in enumerate(users, start=1):
            device = root / f"device-{i}"
            store, key, data = (
                device / "store",
                device / "store.key",
                device / "conversations.jsonl",
            )
            write_jsonl(data, [c for c in conversations if c.user_id == user])
            base = ["--store", str(store), "--key-file", str(key)]
            for command in (
                ["init", "--user-id", user],
                ["import", str(data)],
                ["consent", "--opt-in", "--budget", str(budget)],
            ):
                if client_main([*base, *command]) != 0:
                    raise RuntimeError(f"fedpers-client {command[0]} failed for {user}")
            procs.start(
                f"node-{i}",
                module_command(
                    "clients.cli",
                    *base,
                    "join",
                    "--superlink",
                    address,
                    "--root-certificates",
                    str(certs / "ca.crt"),
                    "--auth-key",
                    str(certs / f"node-{i}.key"),
                    *([] if worker else ["--no-worker"]),
                    python=client_python,
                ),
                # one thread per device, as the simulation engine gives each client one CPU (Ray sets
                # OMP_NUM_THREADS for its actors): the devices share this machine's cores
                flower_env(
                    root / f"flwr-node-{i}",
                    OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                    **dict((device_env or {}).get(i, {})),
                ),
            )
            federation.stores[user] = (store, key)
        if worker:  # joined devices wait for runs with their model libraries loaded
            wait_for(
                lambda: workers_ready(federation.stores.values()),
                300,
                "the devices' workers",
                lambda: "\n".join(procs.log(f"node-{i}")[-2000:] for i in range(1, len(users) + 1)),
            )
        yield federation
    finally:
        procs.stop()
