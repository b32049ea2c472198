"""A SuperLink crash does not lose the run: across real processes (SuperLink with TLS and SuperNode
authentication, three devices with encrypted stores, SecAgg+), the SuperLink is killed (SIGKILL, with its
ServerApp) once round 1 of 2 is checkpointed, started again, and ``fedpers-server run --resume`` ends with
the same adapters as an uninterrupted run of the same settings under the benchmark switch ``noise_seed``.

Why bit for bit: with ``noise_seed`` every device draws DP-SGD's batches and noise and the SecAgg+
rounding from seeds of (user, round); the LoRA update of a round does not depend on the user embedding
(two-phase training, :mod:`fedpers.local`); SecAgg+ sums integers modulo its field, so the masks cancel
exactly whatever the order; and the checkpoint holds the adapters and FedAdam/FedAvg state bit for bit. A
device that had already computed round 2 when the SuperLink died re-sends its cached upload for (run,
round 2); one that had not computes the same one again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.numpy import load_file

from clients.device import DeviceStore
from fedpers.data import SyntheticConfig, generate
from server.checkpoint import read_checkpoint
from simulations.federation import flower_env, local_federation, module_command, wait_for

pytestmark = pytest.mark.slow  # deployment engine: SuperLink and SuperNodes as processes

PERSONAS = ("leadership", "field_worker", "new_employee")
SETTINGS = (
    'model="tiny" rounds=2 min-nodes=3 min-clients=1 personas="leadership,field_worker,new_employee" '
    "local-steps=2 embedding-steps=1 batch-size=2 max-length=48 lora-layers=2 data-seed=5 "
    "secure-aggregation=true persona-hiding=true evaluate=false secagg-timeout=300.0 noise-seed=3 "
    'server-optimizer="fedadam"'
)
RUN_TIMEOUT = 600
CLIENT_PYTHON = os.environ.get("FEDPERS_TEST_CLIENT_PYTHON", sys.executable)


def _adapters(run_dir) -> dict:
    return {
        p.parent.name: load_file(str(p))
        for p in sorted((run_dir / "adapters").glob("*/adapter_model.safetensors"))
    }


def _comparable(metrics: dict) -> dict:
    """metrics.json without what differs between any two runs: ids, times, the resume marker."""
    out = {
        k: v
        for k, v in metrics.items()
        if k not in ("run_id", "wall_seconds", "resumed_after_rounds")
    }
    out["settings"] = {k: v for k, v in out["settings"].items() if k != "registry"}
    out["rounds"] = [{k: v for k, v in r.items() if k != "train_seconds"} for r in out["rounds"]]
    out["aggregation"] = {
        **out["aggregation"],
        "sessions": [
            {k: v for k, v in s.items() if k not in ("seconds", "server_seconds")}
            for s in out["aggregation"]["sessions"]
        ],
    }
    return out


def _logs(procs, names) -> str:
    return "\n".join(
        f"--- {n}\n{procs.log(n)[-3000:]}" for n in names if (procs.logs / f"{n}.log").exists()
    )


def test_a_superlink_killed_after_round_1_resumes_to_the_uninterrupted_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    conversations = generate(
        SyntheticConfig(users_per_persona=1, conversations_per_user=8, seed=5, personas=PERSONAS)
    )
    nodes = [f"node-{i}" for i in range(1, 4)]
    # the reference: an uninterrupted run. Its own devices: a device's ledger composes across runs, and
    # the run's epsilon is a limit on the user's whole spending (a second run on them is refused)
    reference = root / "reference"
    with local_federation(
        root / "uninterrupted", conversations, client_python=CLIENT_PYTHON
    ) as fed:
        started = time.perf_counter()
        run = fed.run(SETTINGS, reference, root / "registry-reference", timeout=RUN_TIMEOUT)
        uninterrupted_seconds = time.perf_counter() - started
        assert run.returncode == 0, (
            f"{run.stdout[-4000:]}\n{run.stderr[-2000:]}\n{_logs(fed.procs, ['superlink', *nodes])}"
        )
        reference_ledgers = {
            user: [
                e.details["round"]
                for e in DeviceStore.open(store, key_file=key).ledger().entries
                if e.purpose == "dp-sgd"
            ]
            for user, (store, key) in fed.stores.items()
        }
    assert all(rounds == [1, 2] for rounds in reference_ledgers.values()), reference_ledgers

    # the same settings, users and data on fresh devices; the SuperLink (and its ServerApp) killed
    # once round 1 is checkpointed
    root = root / "crashed"
    root.mkdir()
    with local_federation(root, conversations, client_python=CLIENT_PYTHON) as fed:
        procs = fed.procs
        run_dir, registry = root / "run", root / "registry"
        submitted = subprocess.Popen(
            module_command(
                "server.cli",
                "run",
                "--run-config",
                SETTINGS,
                "--run-dir",
                str(run_dir),
                "--registry",
                str(registry),
            ),
            env=fed.server_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        checkpoint = run_dir / "checkpoint" / "checkpoint.json"
        wait_for(
            lambda: checkpoint.exists() or submitted.poll() is not None,
            RUN_TIMEOUT,
            "the checkpoint of round 1",
            lambda: _logs(procs, ["superlink", *nodes]),
        )
        if not checkpoint.exists():
            pytest.fail(
                f"the run ended before round 1 was checkpointed:\n{submitted.communicate()[0][-6000:]}"
            )
        assert read_checkpoint(run_dir).round == 1, "the run went past round 1 before the kill"
        superlink = next(p for name, p in procs.started if name == "superlink")
        os.killpg(superlink.pid, signal.SIGKILL)
        killed = time.monotonic()
        output, _ = submitted.communicate(timeout=120)
        assert submitted.returncode != 0, output
        assert not (run_dir / "metrics.json").exists()
        assert read_checkpoint(run_dir).round == 1

        # the SuperLink comes back on the same address (state in memory: the keys registered again)
        port = fed.address.split(":")[1]
        procs.start(
            "superlink-2",
            module_command("server.cli", "superlink", "--certs", str(fed.certs), "--port", port),
            fed.server_env,
        )
        wait_for(
            lambda: "Uvicorn running" in procs.log("superlink-2"),
            120,
            "the restarted SuperLink",
            lambda: procs.log("superlink-2"),
        )
        register = subprocess.run(
            module_command(
                "server.cli", "register", *(str(fed.certs / f"node-{i}.pub") for i in range(1, 4))
            ),
            env=fed.server_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert register.returncode == 0, register.stdout + register.stderr

        # devices whose SuperNode left (the new SuperLink does not know their old node ids) join again
        rejoined = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for i, name in enumerate(nodes, start=1):
                proc = next(p for n, p in procs.started if n == name)
                if proc.poll() is not None and name not in rejoined:
                    store, key = fed.stores[sorted(fed.stores)[i - 1]]
                    procs.start(
                        f"{name}-rejoined",
                        module_command(
                            "clients.cli",
                            "--store",
                            str(store),
                            "--key-file",
                            str(key),
                            "join",
                            "--superlink",
                            fed.address,
                            "--root-certificates",
                            str(fed.certs / "ca.crt"),
                            "--auth-key",
                            str(fed.certs / f"node-{i}.key"),
                            python=CLIENT_PYTHON,
                        ),
                        flower_env(
                            root / f"flwr-node-{i}",
                            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                        ),
                    )
                    rejoined.append(name)
            if len(rejoined) == len(nodes):
                break
            time.sleep(2)
        print(
            f"\nafter the restart: {len(rejoined)} device(s) joined again, the others reconnected"
        )

        resumed = subprocess.run(
            module_command(
                "server.cli", "run", "--resume", str(run_dir), "--registry", str(registry)
            ),
            env=fed.server_env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        names = ["superlink-2", *nodes, *(f"{n}-rejoined" for n in rejoined)]
        assert resumed.returncode == 0, (
            f"{resumed.stdout[-5000:]}\n{resumed.stderr[-3000:]}\n{_logs(procs, names)}"
        )
        resume_seconds = time.monotonic() - killed
        assert "after round 1 of 2" in resumed.stdout

        metrics = json.loads((run_dir / "metrics.json").read_text())
        expected = json.loads((reference / "metrics.json").read_text())
        assert [r["round"] for r in metrics["rounds"]] == [1, 2]
        assert metrics["resumed_after_rounds"] == [1]
        assert _comparable(metrics) == _comparable(expected)

        # the adapters of the resumed run are those of the uninterrupted one, bit for bit
        ours, theirs = _adapters(run_dir), _adapters(reference)
        assert set(ours) == set(theirs) == {"global", *PERSONAS}
        differing = {
            f"{name}/{key}": float(abs(ours[name][key] - theirs[name][key]).max())
            for name in theirs
            for key in theirs[name]
            if not (ours[name][key] == theirs[name][key]).all()
        }
        assert not differing, differing

        # published, audited; every round's replies recorded once
        assert (registry / "latest" / "adapters" / "global" / "adapter_model.safetensors").is_file()
        audit = json.loads((run_dir / "audit.json").read_text())
        reference_audit = json.loads((reference / "audit.json").read_text())
        manifest_rounds = sorted({e["round"] for e in audit["wire"]["manifest"]})
        assert manifest_rounds == [1, 2]
        assert len(audit["wire"]["manifest"]) == len(reference_audit["wire"]["manifest"])
        assert audit["spent"] == reference_audit["spent"]

        # on the devices: each round of the resumed run charged, none missing; a round charged twice (a
        # device that trained round 2 again after the crash) over-reports, never under-reports
        for user, (store, key) in fed.stores.items():
            ledger = DeviceStore.open(store, key_file=key).ledger()
            charged = [
                e.details["round"]
                for e in ledger.entries
                if e.purpose == "dp-sgd" and e.details.get("run_id") == metrics["run_id"]
            ]
            assert sorted(set(charged)) == [1, 2], (user, charged)
            assert len(charged) >= len(reference_ledgers[user]), (user, charged)
        print(
            f"uninterrupted run {uninterrupted_seconds:.0f} s; from the kill to the resumed run's end "
            f"{resume_seconds:.0f} s; adapters identical bit for bit"
        )
