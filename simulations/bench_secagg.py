"""Benchmark: the cost of secure aggregation and persona hiding on the default scenario, in one run.

Four full ``fedpers simulate`` runs of the default scenario, one after another, differing only in
aggregation: plain or SecAgg+, with or without persona hiding. DP noise is seeded the same way in
all four, so their adapters differ only by SecAgg+'s quantization. For each: the wall time of each
round at the server (its training aggregation), the server's own compute time inside
SecAgg+ sessions, and the bytes each client uploads per round (every reply, serialized as Flower
sends it). Ratios are against plain aggregation without hiding.

    python -m simulations.bench_secagg --write
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from fedpers.federated import FederatedConfig, load_config_file
from fedpers.rundir import load_adapters
from simulations.bench_dp_step import print_section
from simulations.bench_scenarios import round_seconds
from simulations.simulate import SCENARIOS, simulate

MARK = "secagg"
VARIANTS = {
    "plain": ("plain, persona in clear", {"secure_aggregation": False, "persona_hiding": False}),
    "plain-hiding": (
        "plain, persona hiding",
        {"secure_aggregation": False, "persona_hiding": True},
    ),
    "secagg": (
        "SecAgg+, persona in clear (one session per persona)",
        {"secure_aggregation": True, "persona_hiding": False},
    ),
    "secagg-hiding": (
        "SecAgg+, persona hiding (default)",
        {"secure_aggregation": True, "persona_hiding": True},
    ),
}


def upload_bytes(wire: Path) -> dict[int, float]:
    """Mean bytes a client uploads per round (all replies of the round), by round."""
    per: dict[tuple[int, int], int] = {}
    for line in (wire / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        key = (entry["round"], entry["partition_id"])
        per[key] = per.get(key, 0) + entry["payload_bytes"]
    rounds = sorted({r for r, _ in per})
    return {r: statistics.mean(v for (rr, _), v in per.items() if rr == r) for r in rounds}


def relative_difference(a: dict, b: dict) -> float:
    num = sum(float(np.sum((a[n][k].astype(np.float64) - b[n][k]) ** 2)) for n in a for k in a[n])
    den = sum(float(np.sum(a[n][k].astype(np.float64) ** 2)) for n in a for k in a[n])
    return (num / den) ** 0.5


def run_variant(name: str, root: Path, rounds: int | None, scenario: str = "default") -> dict:
    run_dir = (root / name).resolve()
    values = (
        load_config_file(SCENARIOS / f"{scenario}.toml") | VARIANTS[name][1] | {"noise_seed": 11}
    )
    if rounds:
        values["rounds"] = rounds
    config = FederatedConfig.from_flat(
        values | {"state_dir": str(run_dir / "client-state")}
    ).validated()
    metrics = simulate(config, run_dir)  # records every reply (record_wire) for the byte counts
    sessions = metrics["aggregation"]["sessions"]
    result = {
        "round_seconds": [round_seconds(r) for r in metrics["rounds"]],
        "train_seconds": [r["train_seconds"] for r in metrics["rounds"]],
        "server_seconds": sum(s["server_seconds"] for s in sessions)
        / max(len(metrics["rounds"]), 1)
        if sessions
        else None,
        "upload_bytes": upload_bytes(run_dir / "wire"),
        "upload_floats": metrics["aggregation"]["upload_floats"],
        "wall_seconds": metrics["wall_seconds"],
        "evaluation": metrics["evaluation"],
        "run_dir": str(run_dir),
    }
    (root / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result


def table(results: dict[str, dict]) -> list[str]:
    base = results["plain"]
    base_round = statistics.mean(base["round_seconds"])
    base_bytes = statistics.mean(base["upload_bytes"].values())
    lines = [
        "| aggregation | round wall time at the server (s), per round | mean | vs plain | SecAgg+ server compute per round (s) "
        "| upload per client per round (MB) | vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        mean_round = statistics.mean(r["round_seconds"])
        mb = statistics.mean(r["upload_bytes"].values())
        server = f"{r['server_seconds']:.2f}" if r["server_seconds"] is not None else "—"
        lines.append(
            f"| {VARIANTS[name][0]} | {', '.join(f'{s:.0f}' for s in r['round_seconds'])} | {mean_round:.0f} | "
            f"**{mean_round / base_round:.2f}** | {server} | {mb / 1e6:.3f} | **{mb / base_bytes:.2f}** |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs", type=Path, default=Path("runs/bench-secagg"), help="where the run directories go"
    )
    p.add_argument(
        "--scenario",
        default="default",
        help="scenario file in simulations/scenarios/ (tiny: a quick check)",
    )
    p.add_argument("--rounds", type=int, help="rounds per run (default: the scenario's)")
    p.add_argument(
        "--only", help=f"comma-separated subset of: {', '.join(VARIANTS)} (plain is always run)"
    )
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = p.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    chosen = [
        "plain",
        *[v for v in (args.only.split(",") if args.only else VARIANTS) if v != "plain"],
    ]
    results = {name: run_variant(name, args.runs, args.rounds, args.scenario) for name in chosen}
    reference = load_adapters(Path(results["plain"]["run_dir"]))
    lines = [
        "## Secure aggregation and persona hiding: overhead on the default scenario",
        "",
        "`python -m simulations.bench_secagg --write` — four full runs of the default scenario (SmolLM2-135M-Instruct, "
        f"15 clients, 5 personas, DP-SGD on), one after another on this machine ({platform.machine()}, 2 cores), differing "
        "only in aggregation; DP noise seeded alike. Round wall time: from the server's first message of a round to its "
        "aggregated training result, clients' training included. Server compute: time inside SecAgg+ "
        "sessions not spent waiting for clients. Upload: every reply a client sends in a round (all SecAgg+ stages, "
        "the training upload), serialized as Flower sends it.",
        "",
        *table(results),
        "",
    ]
    for name, r in results.items():
        if name == "plain":
            continue
        diff = relative_difference(reference, load_adapters(Path(r["run_dir"])))
        lines.append(
            f"- {VARIANTS[name][0]}: adapters differ from plain aggregation by {diff:.2e} (relative L2, all adapters); "
            f"upload holds {r['upload_floats']} numbers per training round."
        )
    secure = results.get("secagg-hiding")
    if secure:
        ratio = statistics.mean(secure["round_seconds"]) / statistics.mean(
            results["plain"]["round_seconds"]
        )
        lines += [
            "",
            f"Target: SecAgg+ adds at most 1.5x to a round's server-side time. Measured (SecAgg+ with persona hiding vs "
            f"plain): {ratio:.2f}x ({'met' if ratio <= 1.5 else 'not met'}).",
        ]
    print_section(lines, args.write, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
