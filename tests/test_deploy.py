"""fedpers across real processes: a SuperLink with TLS and SuperNode authentication, three devices
with encrypted stores joining as SuperNodes, two federated rounds with SecAgg+, the registry.

``FEDPERS_TEST_CLIENT_PYTHON`` may name the interpreter of a client-only installation (no Ray) to run
the devices with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from clients.cli import main as client_main
from clients.device import DeviceStore
from clients.join import free_port
from fedpers.certs import generate_ca, generate_node_keys, generate_server_cert
from fedpers.data import SyntheticConfig, generate, write_jsonl
from server.registry import LATEST, VERSION_FILE, latest

PERSONAS = ("leadership", "field_worker", "new_employee")
SETTINGS = ('model="tiny" rounds=2 min-nodes=3 min-clients=1 personas="leadership,field_worker,new_employee" '
            "local-steps=2 embedding-steps=1 batch-size=2 max-length=48 lora-layers=2 data-seed=5 secure-aggregation=true "
            "persona-hiding=true evaluate=false secagg-timeout=300.0 noise-seed=3")
RUN_TIMEOUT = 420
CLIENT_PYTHON = os.environ.get("FEDPERS_TEST_CLIENT_PYTHON", sys.executable)


class Processes:
    """Processes this test started, each in its own process group; all of them are killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []

    def start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


def _env(flwr_home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDPERS_STORE")}
    env.update({"FLWR_HOME": str(flwr_home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1", **extra})
    return env


def _wait_for(predicate, timeout: float, what: str, logs: callable) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.5)


def _cli(module: str, *args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", module, *args]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    certs = root / "certs"
    generate_ca(certs)
    generate_server_cert(certs, ["127.0.0.1"])
    for i in range(1, 5):
        generate_node_keys(certs, f"node-{i}")
    (root / "logs").mkdir()
    procs = Processes(root / "logs")
    server_env = _env(root / "flwr-server")
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        procs.start("superlink", _cli("server.cli", "superlink", "--certs", str(certs), "--port", str(port)), server_env)
        _wait_for(lambda: "Uvicorn running" in procs.log("superlink"), 60, "the SuperLink", lambda: procs.log("superlink"))
        register = subprocess.run(_cli("server.cli", "register", *(str(certs / f"node-{i}.pub") for i in (1, 2, 3)),
                                       "--superlink", address, "--root-certificates", str(certs / "ca.crt")),
                                  env=server_env, capture_output=True, text=True, timeout=120)
        assert register.returncode == 0, register.stdout + register.stderr
        assert register.stdout.count("registered successfully") == 3

        conversations = generate(SyntheticConfig(users_per_persona=1, conversations_per_user=8, seed=5, personas=PERSONAS))
        stores = {}
        for i, user in enumerate(sorted({c.user_id for c in conversations}), start=1):
            store, key = root / f"device-{i}" / "store", root / f"device-{i}" / "store.key"
            data = root / f"device-{i}" / "conversations.jsonl"
            write_jsonl(data, [c for c in conversations if c.user_id == user])
            base = ["--store", str(store), "--key-file", str(key)]
            assert client_main([*base, "init", "--user-id", user]) == 0
            assert client_main([*base, "import", str(data)]) == 0
            assert client_main([*base, "consent", "--opt-in", "--budget", "20"]) == 0
            procs.start(f"node-{i}", _cli("clients.cli", *base, "join", "--superlink", address, "--root-certificates",
                                          str(certs / "ca.crt"), "--auth-key", str(certs / f"node-{i}.key"),
                                          python=CLIENT_PYTHON),
                        _env(root / f"flwr-node-{i}"))
            stores[user] = (store, key)
        yield {"root": root, "certs": certs, "address": address, "server_env": server_env, "stores": stores, "procs": procs}
    finally:
        procs.stop()


def test_a_supernode_with_an_unregistered_key_is_refused(federation):
    procs, certs = federation["procs"], federation["certs"]
    store, key = next(iter(federation["stores"].values()))
    intruder = procs.start("intruder", _cli("clients.cli", "--store", str(store), "--key-file", str(key), "join",
                                            "--superlink", federation["address"], "--root-certificates",
                                            str(certs / "ca.crt"), "--auth-key", str(certs / "node-4.key")),
                           _env(federation["root"] / "flwr-intruder"))
    assert intruder.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in procs.log("intruder")
    assert "No SuperNode found with the given public key" in procs.log("superlink")


def test_two_rounds_across_processes_produce_persona_adapters(federation):
    root, procs, stores = federation["root"], federation["procs"], federation["stores"]
    run_dir, registry = root / "run", root / "registry"
    started = time.perf_counter()
    run = subprocess.run(_cli("server.cli", "run", "--run-config", SETTINGS, "--run-dir", str(run_dir),
                              "--registry", str(registry)),
                         env=federation["server_env"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    wall = time.perf_counter() - started
    logs = "\n".join(f"--- {n}\n{procs.log(n)[-3000:]}" for n in ("superlink", "node-1", "node-2", "node-3"))
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}\n{logs}"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["participants"] == 3 for r in metrics["rounds"]), metrics["rounds"]
    assert metrics["aggregation"]["secure"] and metrics["aggregation"]["sessions"]
    print(f"\ndeployment: 2 rounds in {metrics['wall_seconds']:.1f} s inside the ServerApp ({wall:.1f} s with submission); "
          f"train seconds per round {[round(r['train_seconds'], 1) for r in metrics['rounds']]}")

    version = latest(registry)
    assert version is not None and version.name == "v0001" and (registry / LATEST).is_symlink()
    record = json.loads((version.path / VERSION_FILE).read_text())
    assert record["adapters"] == sorted(["global", *PERSONAS]) and record["run_id"] == metrics["run_id"]
    initial = load_file(str(version.path / "adapters" / "global" / "adapter_model.safetensors"))
    for persona in PERSONAS:
        arrays = load_file(str(version.path / "adapters" / persona / "adapter_model.safetensors"))
        assert any(("lora_B" in k) and abs(v).sum() > 0 for k, v in arrays.items()), f"{persona} was never updated"
    assert initial

    for user, (store, key) in stores.items():
        device = DeviceStore.open(store, key_file=key)
        assert sorted(device.adapter_names()) == sorted(["global", *PERSONAS])
        assert device.adapters_info()["run_id"] == metrics["run_id"] and device.embedding() is not None
        spent = device.ledger().spent().epsilon
        assert 0 < spent <= 20, (user, spent)
        assert [e.purpose for e in device.ledger().entries].count("dp-sgd") == 2
        clear = [p.name for p in store.rglob("*") if p.is_file() and not p.name.endswith((".enc", ".lock"))]
        assert clear == ["store.json"]  # the header; every item is encrypted

    store, key = next(iter(stores.values()))
    assert client_main(["--store", str(store), "--key-file", str(key), "chat", "My VPN drops at the depot", "--rating", "4",
                        "--max-new-tokens", "8"]) == 0
    (rated,) = DeviceStore.open(store, key_file=key).feedback()
    assert rated.turns[1].feedback.rating == 4
