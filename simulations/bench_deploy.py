"""Deployment against simulation: per-round wall time of the same federated run on both engines.

One run of this script starts a local federation (SuperLink with TLS and node authentication on
127.0.0.1, one ``fedpers-client join`` SuperNode per user with its encrypted store and its device
worker), runs the fedpers ServerApp on it, then runs ``fedpers simulate`` with the same settings and
the same users' data, one after the other on this machine. It breaks the deployment's fixed
per-round cost down from what each ClientApp process records (``FEDPERS_CLIENT_TIMINGS``,
:mod:`clients.timings`) and what the server received when. ``--write`` puts the section of the
model into BENCHMARKS.md.

    python -m simulations.bench_deploy [--model tiny|smollm2] [--rounds N] [--no-worker] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fedpers.data import SyntheticConfig, generate
from fedpers.federated import FederatedConfig
from fedpers.releases import recorded_stage
from fedpers.wirelog import read_manifest
from simulations.bench_dp_step import print_section
from simulations.bench_scenarios import round_seconds
from simulations.federation import local_federation
from simulations.simulate import simulate

APP = Path(__file__).resolve().parents[1]
MARKS = {"tiny": "deploy", "smollm2": "deploy-smollm2"}
MODEL_NAMES = {"tiny": "tiny model", "smollm2": "SmolLM2-135M-Instruct"}
DEFAULT_ROUNDS = {"tiny": 3, "smollm2": 2}
TIMINGS_ENV = "FEDPERS_CLIENT_TIMINGS"  # clients.timings (simulations import no device code)
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
PERSONAS = ("leadership", "field_worker", "new_employee")
SETTINGS = {
    "model": "tiny",
    "min_clients": 1,
    "personas": ",".join(PERSONAS),
    "users_per_persona": 1,
    "conversations_per_user": 8,
    "data_seed": 5,
    "local_steps": 2,
    "embedding_steps": 1,
    "batch_size": 2,
    "max_length": 48,
    "lora_layers": 2,
    "secure_aggregation": True,
    "persona_hiding": True,
    "evaluate": False,
    "secagg_timeout": 300.0,
    "noise_seed": 3,
    "epsilon": 8.0,
}


def run_config(settings: dict) -> str:
    """``--run-config`` text of ``settings`` (Flower's TOML-like key=value pairs)."""

    def value(v):
        return (
            ("true" if v else "false")
            if isinstance(v, bool)
            else json.dumps(v)
            if isinstance(v, str)
            else repr(v)
        )

    return " ".join(f"{k.replace('_', '-')}={value(v)}" for k, v in settings.items())


def replies_sent(logs: Path) -> int:
    """Replies the SuperNodes sent (Flower logs ``Sending: ... message`` once per reply), from their logs."""
    return sum(
        log.read_text(errors="replace").count("Sending: ") for log in logs.glob("node-*.log")
    )


def clientapp_start_seconds(repeats: int = 3) -> float:
    """Median wall time of starting ``flwr-clientapp`` (new interpreter, Flower imported) and leaving at once."""
    command = [
        shutil.which("flwr-clientapp") or str(Path(sys.executable).parent / "flwr-clientapp"),
        "--help",
    ]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bundle_install_seconds(repeats: int = 3) -> float:
    """Median wall time of what each ``flwr-clientapp`` does with the app's bundle (FAB) before loading the
    ClientApp: unpack it and check its hashes (the installed copy is then kept)."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.install import install_from_fab

    fab = build_fab_from_disk(APP)
    with tempfile.TemporaryDirectory(prefix="fedpers-bench-fab-") as home:
        install_from_fab(fab, Path(home), skip_prompt=True)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            install_from_fab(fab, Path(home), skip_prompt=True)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def app_import_seconds(repeats: int = 3) -> float:
    """Median time to import the ClientApp (``clients.app``) in a new process that has imported Flower's
    ClientApp runtime already, as ``flwr-clientapp`` has by then."""
    code = (
        "import time, flwr.supernode.runtime.run_clientapp; t = time.perf_counter(); "
        "import clients.app; print(time.perf_counter() - t)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")]),
    }
    return statistics.median(
        float(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(repeats)
    )


def _read_timings(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def breakdown(timings: list[dict], manifest: list[dict], rounds: int) -> dict[str, float] | None:
    """Per round (mean over rounds) where the SecAgg+ stages' time went, on each stage's critical path:
    the device whose ClientApp finished last. ``None`` without ClientApp timings (an older ClientApp)."""
    received: dict[tuple, float] = {}
    for entry in manifest:
        key = (int(entry["round"]), recorded_stage(entry))
        received[key] = max(received.get(key, 0.0), float(entry["received_at"]))
    by_stage: dict[tuple, dict] = {}
    for record in timings:  # a retried stage: its last attempt
        if record.get("stage") in STAGES and record.get("process_started"):
            key = (int(record["round"]), record["stage"], record["node_id"])
            by_stage[key] = record
    totals: dict[str, float] = defaultdict(float)
    stages = 0
    for (server_round, stage), end in received.items():
        records = [r for (rd, st, _), r in by_stage.items() if (rd, st) == (server_round, stage)]
        if not records:
            continue
        stages += 1
        last = max(records, key=lambda r: r["handler_ended"])
        handler = last["handler"]
        load = handler.get("prepare", handler.get("worker_prepare", 0.0))
        train = handler.get("answer", handler.get("worker_answer", 0.0))
        totals["message to ClientApp process"] += last["process_started"] - last["created_at"]
        loaded = last.get("app_loaded", last["handler_started"])
        totals["process start"] += loaded - last["process_started"]
        totals["app import"] += last["handler_started"] - loaded
        totals["model and data load"] += load
        totals["training"] += train
        totals["rest of the handler"] += (
            last["handler_ended"] - last["handler_started"] - load - train
        )
        totals["reply to server"] += end - last["handler_ended"]
        totals["stages"] += end - min(r["created_at"] for r in records)
    if not stages:
        return None
    result = {k: v / rounds for k, v in totals.items()}
    result["processes"] = len(timings)
    result["with torch"] = sum(1 for r in timings if "torch" in r.get("heavy_modules", []))
    return result


def deploy(settings: dict, conversations, root: Path, worker: bool) -> tuple[dict, int, list]:
    """The run on the deployment engine: its metrics, the replies sent, the ClientApps' timings."""
    timings_path = root / "clientapp-timings.jsonl"
    previous = os.environ.get(TIMINGS_ENV)
    os.environ[TIMINGS_ENV] = str(timings_path)
    try:
        with local_federation(root / "federation", conversations, worker=worker) as federation:
            done = federation.run(run_config(settings | {"min_nodes": 3}), root / "deploy")
            if done.returncode != 0:
                raise RuntimeError(
                    f"the deployment run failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
                )
            replies = replies_sent(federation.procs.logs)
    finally:
        if previous is None:
            os.environ.pop(TIMINGS_ENV, None)
        else:
            os.environ[TIMINGS_ENV] = previous
    metrics = json.loads((root / "deploy" / "metrics.json").read_text())
    metrics["manifest"] = read_manifest(root / "deploy")
    return metrics, replies, _read_timings(timings_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=sorted(MARKS), default="tiny")
    p.add_argument("--rounds", type=int, help="rounds (default: 3 for tiny, 2 for smollm2)")
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="devices join without their worker: every training message loads the model again",
    )
    p.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    p.add_argument(
        "--keep", type=Path, metavar="DIR", help="copy the processes' logs and timings into DIR"
    )
    args = p.parse_args(argv)
    rounds = args.rounds or DEFAULT_ROUNDS[args.model]
    settings = SETTINGS | {"model": args.model, "rounds": rounds}
    conversations = generate(
        SyntheticConfig(users_per_persona=1, conversations_per_user=8, seed=5, personas=PERSONAS)
    )
    with tempfile.TemporaryDirectory(prefix="fedpers-bench-deploy-") as tmp:
        root = Path(tmp)
        deployed, replies, timings = deploy(settings, conversations, root, not args.no_worker)
        if args.keep:
            shutil.copytree(root / "federation" / "logs", args.keep / "logs", dirs_exist_ok=True)
            for path in root.glob("clientapp-timings.jsonl"):
                shutil.copy(path, args.keep)
        config = FederatedConfig.from_flat(
            settings | {"audit": False, "record_wire": False, "state_dir": str(root / "sim-state")}
        ).validated()
        simulated = simulate(config, root / "simulate")
    start, install, imports = (
        clientapp_start_seconds(),
        bundle_install_seconds(),
        app_import_seconds(),
    )
    rows = []
    worker = "without" if args.no_worker else "with"
    for label, metrics in (
        (f"deployment engine (3 SuperNodes, TLS, node auth, {worker} device workers)", deployed),
        ("simulation engine (Ray)", simulated),
    ):
        times = [round_seconds(r) for r in metrics["rounds"]]
        rows.append((label, times, statistics.mean(times), metrics["wall_seconds"]))
    ratio, overhead = rows[0][2] / rows[1][2], rows[0][2] - rows[1][2]
    model = MODEL_NAMES[args.model]
    suffix = "" if args.model == "tiny" else " (SmolLM2)"
    lines = [
        f"## Deployment engine against simulation{suffix}",
        "",
        f"`python -m simulations.bench_deploy --model {args.model}{' --no-worker' if args.no_worker else ''} --write`: "
        f"the same run ({model}, 3 users of 3 personas, {rounds} rounds, {settings['local_steps']} local steps, "
        "SecAgg+ with persona hiding, DP-SGD) on Flower's deployment engine (a SuperLink with TLS and SuperNode "
        "authentication on 127.0.0.1, each device a `fedpers-client join` SuperNode reading its encrypted store, "
        f"{worker} its device worker) and on the simulation engine, one after the other on this machine "
        f"({platform.machine()}, 2 cores shared with other jobs).",
        "",
        "| engine | seconds per round | mean | run (ServerApp) |",
        "|---|---|---|---|",
    ]
    for label, times, mean, wall in rows:
        lines.append(
            f"| {label} | {', '.join(f'{t:.1f}' for t in times)} | {mean:.1f} | {wall:.1f} s |"
        )
    devices = len({c.user_id for c in conversations})
    per_round = replies / (devices * rounds)
    lines += [
        "",
        f"Deployment / simulation, mean round time{suffix}: {ratio:.2f}x; fixed per-round overhead (deployment "
        f"minus simulation mean round time): {overhead:.1f} s. Each device answered {per_round:.1f} messages per "
        f"round (the SecAgg+ stages; {replies} replies in the SuperNodes' logs from {devices} devices), each in a "
        "`flwr-clientapp` process of its own, started ahead of its message (`clients/superexec.py`).",
    ]
    split = breakdown(timings, deployed["manifest"], rounds)
    if split is not None:
        round_mean = rows[0][2]
        lines += [
            "",
            "Where a deployment round's time goes, per round (mean), along each SecAgg+ stage's critical path (the "
            "device whose ClientApp finished last), from the ClientApp processes' own records and the server's "
            "receipts:",
            "",
            "| part | seconds per round |",
            "|---|---|",
            "| poll waits: message created to its ClientApp process started (SuperNode's 3 s poll, "
            f"SuperExec's poll, transfer) | {split['message to ClientApp process']:.1f} |",
            "| poll waits: reply sent to the server holding all replies (SuperNode, ServerApp polls) | "
            f"{split['reply to server']:.1f} |",
            "| ClientApp process, from its task to the app loaded: task pull, bundle (FAB) install (the "
            "interpreter and Flower's imports came before the task, in the process started ahead) | "
            f"{split['process start']:.1f} |",
            f"| ClientApp import and set-up | {split['app import']:.1f} |",
            f"| model and data load (`clients.tasks.prepare`) | {split['model and data load']:.1f} |",
            f"| local training (`clients.tasks.answer`) | {split['training']:.1f} |",
            "| rest of the ClientApp (SecAgg+ keys and masking, consent, ledger check; worker round trip) | "
            f"{split['rest of the handler']:.1f} |",
            f"| server between stages (aggregation, unmasking, instructions) | {round_mean - split['stages']:.1f} |",
            "",
            f"Measured alone on this machine: starting `flwr-clientapp` (interpreter and Flower) {start:.2f} s, "
            f"installing the app's bundle {install:.2f} s, importing the ClientApp {imports:.2f} s. "
            f"{split['with torch']:.0f} of {split['processes']:.0f} ClientApp processes imported torch.",
        ]
    else:
        lines += [
            "",
            f"Measured alone on this machine: starting `flwr-clientapp` (interpreter and Flower) {start:.2f} s, "
            f"installing the app's bundle {install:.2f} s, importing the ClientApp {imports:.2f} s.",
        ]
    print_section(lines, args.write, MARKS[args.model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
