"""Deployment against simulation: per-round wall time of the same federated run on both engines.

One run of this script starts a local federation (SuperLink with TLS and node authentication on
127.0.0.1, one ``fedpers-client join`` SuperNode per user with its encrypted store), runs the fedpers
ServerApp on it, then runs ``fedpers simulate`` with the same settings and the same users' data, one
after the other on this machine. ``--write`` puts the table into BENCHMARKS.md.

    python -m simulations.bench_deploy [--write] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedpers.data import SyntheticConfig, generate
from fedpers.federated import FederatedConfig
from simulations.bench_dp_step import print_section
from simulations.bench_scenarios import round_seconds
from simulations.federation import local_federation
from simulations.simulate import simulate

MARK = "deploy"
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    args = p.parse_args(argv)
    settings = SETTINGS | {"rounds": args.rounds}
    conversations = generate(
        SyntheticConfig(users_per_persona=1, conversations_per_user=8, seed=5, personas=PERSONAS)
    )
    with tempfile.TemporaryDirectory(prefix="fedpers-bench-deploy-") as tmp:
        root = Path(tmp)
        with local_federation(root / "federation", conversations) as federation:
            done = federation.run(run_config(settings | {"min_nodes": 3}), root / "deploy")
            if done.returncode != 0:
                raise RuntimeError(
                    f"the deployment run failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
                )
            replies = replies_sent(federation.procs.logs)
        deployed = json.loads((root / "deploy" / "metrics.json").read_text())
        config = FederatedConfig.from_flat(
            settings | {"audit": False, "record_wire": False, "state_dir": str(root / "sim-state")}
        ).validated()
        simulated = simulate(config, root / "simulate")
    start = clientapp_start_seconds()
    rows = []
    for label, metrics in (
        ("deployment engine (3 SuperNodes, TLS, node auth)", deployed),
        ("simulation engine (Ray)", simulated),
    ):
        times = [round_seconds(r) for r in metrics["rounds"]]
        rows.append((label, times, statistics.mean(times), metrics["wall_seconds"]))
    ratio = rows[0][2] / rows[1][2]
    lines = [
        "## Deployment engine against simulation",
        "",
        f"`python -m simulations.bench_deploy --write`: the same run (tiny model, 3 users of 3 personas, {args.rounds} rounds, "
        "SecAgg+ with persona hiding, DP-SGD) on Flower's deployment engine (a SuperLink with TLS and SuperNode "
        "authentication on 127.0.0.1, each device a `fedpers-client join` SuperNode reading its encrypted store) and "
        f"on the simulation engine, one after the other on this machine ({platform.machine()}, 2 cores).",
        "",
        "| engine | seconds per round | mean | run (ServerApp) |",
        "|---|---|---|---|",
    ]
    for label, times, mean, wall in rows:
        lines.append(
            f"| {label} | {', '.join(f'{t:.1f}' for t in times)} | {mean:.1f} | {wall:.1f} s |"
        )
    devices = len({c.user_id for c in conversations})
    per_round = replies / (devices * args.rounds)
    lines += [
        "",
        f"Deployment / simulation, mean round time: {ratio:.2f}x. Where the difference goes, measured in the same run: "
        f"each device answered {per_round:.1f} messages per round (the SecAgg+ stages; {replies} replies in the "
        f"SuperNodes' logs from {devices} devices), each handled by a new `flwr-clientapp` process, "
        f"and starting that process alone (interpreter and Flower imports) took {start:.2f} s here; an idle "
        "SuperNode asks the SuperLink for work every 3 s (Flower's `start_client_internal`). The simulation "
        "keeps its ClientApp actors, and the model, loaded between messages.",
    ]
    print_section(lines, args.write, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
