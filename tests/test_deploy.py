"""fedpers across real processes: a SuperLink with TLS and SuperNode authentication, three devices
with encrypted stores joining as SuperNodes, two federated rounds with SecAgg+, the registry.

``FEDPERS_TEST_CLIENT_PYTHON`` may name the interpreter of a client-only installation (no Ray) to run
the devices with."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from clients.cli import main as client_main
from clients.device import DeviceStore
from fedpers.data import SyntheticConfig, generate
from fedpers.wirelog import read_manifest
from server.registry import LATEST, VERSION_FILE, latest
from simulations.federation import flower_env, local_federation, module_command

PERSONAS = ("leadership", "field_worker", "new_employee")
SETTINGS = (
    'model="tiny" rounds=2 min-nodes=3 min-clients=1 personas="leadership,field_worker,new_employee" '
    "local-steps=2 embedding-steps=1 batch-size=2 max-length=48 lora-layers=2 data-seed=5 secure-aggregation=true "
    "persona-hiding=true evaluate=false secagg-timeout=300.0 noise-seed=3"
)
RUN_TIMEOUT = 420
CLIENT_PYTHON = os.environ.get("FEDPERS_TEST_CLIENT_PYTHON", sys.executable)

pytestmark = pytest.mark.slow  # deployment engine: SuperLink and SuperNodes as processes


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    conversations = generate(
        SyntheticConfig(users_per_persona=1, conversations_per_user=8, seed=5, personas=PERSONAS)
    )
    with local_federation(root, conversations, client_python=CLIENT_PYTHON) as fed:
        yield fed


def test_a_supernode_with_an_unregistered_key_is_refused(federation):
    procs, certs = federation.procs, federation.certs
    store, key = next(iter(federation.stores.values()))
    intruder = procs.start(
        "intruder",
        module_command(
            "clients.cli",
            "--store",
            str(store),
            "--key-file",
            str(key),
            "join",
            "--superlink",
            federation.address,
            "--root-certificates",
            str(certs / "ca.crt"),
            "--auth-key",
            str(certs / "node-4.key"),
        ),
        flower_env(federation.root / "flwr-intruder"),
    )
    assert intruder.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in procs.log("intruder")
    assert "No SuperNode found with the given public key" in procs.log("superlink")


def _check_audit(run_dir, published) -> float:
    """The run's audit report covers what the server holds, validates, verifies, and was published; its ceiling."""
    import jsonschema

    from simulations.cli import main as fedpers_main

    audit = json.loads((run_dir / "audit.json").read_text())
    schema = json.loads((Path(__file__).parent.parent / "docs" / "audit-schema.json").read_text())
    jsonschema.validate(audit, schema, format_checker=jsonschema.FormatChecker())
    assert audit["run"]["engine"] == "deployment" and audit["run"]["clients"] == 3
    assert (
        audit["spent"]["ledgers"] == "devices"
        and audit["spent"]["clients"] == []
        and audit["spent"]["ceiling"] == 8.0
    )
    wire = audit["wire"]
    assert wire["recorded_by"] == "server" and wire["secure_aggregation"] and wire["scan"] is None
    manifest = wire["manifest"]
    assert len({e["node_id"] for e in manifest}) == 3 and {e["round"] for e in manifest} == {1, 2}
    masked = [
        t for e in manifest if e["secagg_stage"] == "collect masked vectors" for t in e["arrays"]
    ]
    # masked integers, never floats
    assert len(masked) >= 6 and all(t["dtype"].startswith(("int", "uint")) for t in masked)
    assert not [t for e in manifest for t in e["arrays"] if t["dtype"].startswith("float")]
    assert fedpers_main(["audit", "verify", str(run_dir)]) == 0
    assert (published / "audit.json").read_bytes() == (run_dir / "audit.json").read_bytes()
    assert (published / "audit.html").is_file() and (published / "audit.sig.json").is_file()
    return audit["spent"]["ceiling"]


def _check_releases(run_dir) -> dict[int, float]:
    """Every field of every reply the server received is in the release manifest; when each round's unmasking began."""
    from fedpers.releases import recorded_fields, recorded_stage, undeclared_fields
    from fedpers.wirelog import read_manifest

    manifest = read_manifest(run_dir)
    assert manifest
    for entry in manifest:
        assert (
            undeclared_fields(entry["message_type"], recorded_stage(entry), recorded_fields(entry))
            == []
        ), entry
    return {
        r: min(
            e["received_at"] for e in manifest if e["round"] == r and recorded_stage(e) == "unmask"
        )
        for r in (1, 2)
    }


def test_two_rounds_across_processes_produce_persona_adapters(federation):
    root, procs, stores = federation.root, federation.procs, federation.stores
    run_dir, registry = root / "run", root / "registry"
    started = time.perf_counter()
    run = federation.run(SETTINGS, run_dir, registry, timeout=RUN_TIMEOUT)
    wall = time.perf_counter() - started
    logs = "\n".join(
        f"--- {n}\n{procs.log(n)[-3000:]}" for n in ("superlink", "node-1", "node-2", "node-3")
    )
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}\n{logs}"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["participants"] == 3 for r in metrics["rounds"]), metrics["rounds"]
    assert metrics["aggregation"]["secure"] and metrics["aggregation"]["sessions"]
    print(
        f"\ndeployment: 2 rounds in {metrics['wall_seconds']:.1f} s inside the ServerApp ({wall:.1f} s with submission); "
        f"train seconds per round {[round(r['train_seconds'], 1) for r in metrics['rounds']]}"
    )

    version = latest(registry)
    assert version is not None and version.name == "v0001" and (registry / LATEST).is_symlink()
    record = json.loads((version.path / VERSION_FILE).read_text())
    assert (
        record["adapters"] == sorted(["global", *PERSONAS])
        and record["run_id"] == metrics["run_id"]
    )
    # the router round after the last round: learned through the private path, published with the adapters
    from fedpers.personas.centroid import has_router, load_router

    assert metrics["router"]["status"] == "saved" and metrics["router"]["devices"] == 3, metrics
    assert has_router(run_dir) and has_router(version.path) and record["router"] is True
    assert load_router(version.path).info["run_id"] == metrics["run_id"]
    received = [e for e in read_manifest(run_dir) if e.get("session") == "router"]
    assert {e["secagg_stage"] for e in received} == {
        "setup",
        "share keys",
        "collect masked vectors",
        "unmask",
    }
    router_unmasking = min(e["received_at"] for e in received if e["secagg_stage"] == "unmask")
    initial = load_file(str(version.path / "adapters" / "global" / "adapter_model.safetensors"))
    for persona in PERSONAS:
        arrays = load_file(str(version.path / "adapters" / persona / "adapter_model.safetensors"))
        assert any(("lora_B" in k) and abs(v).sum() > 0 for k, v in arrays.items()), (
            f"{persona} was never updated"
        )
    assert initial

    ceiling = _check_audit(run_dir, version.path)
    unmasking = _check_releases(run_dir)
    for user, (store, key) in stores.items():
        device = DeviceStore.open(store, key_file=key)
        assert sorted(device.adapter_names()) == sorted(["global", *PERSONAS])
        assert (
            device.adapters_info()["run_id"] == metrics["run_id"] and device.embedding() is not None
        )
        spent = device.ledger().spent().epsilon
        # what the server's report claims, on each device
        assert 0 < spent <= ceiling * (1 + 1e-9), (
            user,
            spent,
            ceiling,
        )
        charged = [e for e in device.ledger().entries if e.purpose == "dp-sgd"]
        assert [(e.details["run_id"], e.details["round"]) for e in charged] == [
            (metrics["run_id"], 1),
            (metrics["run_id"], 2),
        ]
        # charged on the device before its upload left: before the round's unmasking began
        for entry in charged:
            assert entry.started_at < unmasking[entry.details["round"]]
        # the router's release: once, in the user-level ledger, before the router's unmasking began
        (released,) = device.user_level_ledger().entries
        assert released.purpose == "router-statistics-skellam" and released.status == "completed"
        assert released.details["run_id"] == metrics["run_id"]
        assert released.started_at < router_unmasking
        clear = sorted(
            p.name
            for p in store.rglob("*")
            if p.is_file() and not p.name.endswith((".enc", ".lock"))
        )
        # the header and the manifest (encrypted and authenticated, see clients/store.py); every item is encrypted
        assert clear == ["store.json", "store.manifest"]

    store, key = next(iter(stores.values()))
    assert (
        client_main(
            [
                "--store",
                str(store),
                "--key-file",
                str(key),
                "chat",
                "My VPN drops at the depot",
                "--rating",
                "4",
                "--max-new-tokens",
                "8",
                "--version",
                str(version.path),
            ]
        )
        == 0
    )
    (rated,) = DeviceStore.open(store, key_file=key).feedback()
    assert rated.turns[1].feedback.rating == 4
