"""Benchmark: the default scenario with DP on and off, and the Shakespeare scenario, in one run.

Each scenario is a full ``fedpers simulate`` run on its own run directory; the evaluation tables
and per-round wall times go into BENCHMARKS.md (``--write``).

    python -m simulations.bench_scenarios --write
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from fedpers.federated import FederatedConfig, load_config_file
from server.outputs import dp_note, format_table
from simulations.bench_dp_step import print_section
from simulations.simulate import SCENARIOS, simulate

MARK = "scenarios"


def scenario(name: str, run_root: Path, **overrides) -> tuple[FederatedConfig, Path]:
    run_dir = (run_root / name).resolve()
    values = load_config_file(SCENARIOS / f"{name.split('-')[0]}.toml")
    config = FederatedConfig.from_flat(
        values | overrides | {"state_dir": str(run_dir / "client-state")}
    ).validated()
    return config, run_dir


def round_seconds(record: dict) -> float:
    """Wall time of a round: its training aggregation plus the experimenter's held-out evaluation."""
    return record["train_seconds"] + record.get("eval_evaluate_seconds", 0.0)


def section(label: str, config: FederatedConfig, metrics: dict) -> list[str]:
    rounds = metrics["rounds"]
    times = ", ".join(f"{round_seconds(r):.0f}" for r in rounds)
    privacy = f"max per-user epsilon {metrics['max_epsilon']:.2f}" if config.privacy.dp else "no DP"
    return [
        f"### {label}",
        "",
        f"{len(rounds)} rounds, {rounds[0]['participants']} clients; per-round wall time (train + evaluate) {times} s; "
        f"whole run {metrics['wall_seconds']:.0f} s; {privacy}.",
        "",
        "```",
        format_table(metrics["evaluation"], dp_note(config)),
        "```",
        "",
    ]


def kept_share(dp: dict, nodp: dict, column: str = "persona") -> float:
    """Share of the non-private gain the DP run keeps: (base - DP) / (base - non-DP), on the mean row."""
    base = dp["evaluation"]["mean"]["base"]
    private = dp["evaluation"]["mean"][column]
    public = nodp["evaluation"]["mean"][column]
    return (base - private) / (base - public)


def kept_lines(config: FederatedConfig, dp: dict, nodp: dict) -> list[str]:
    """The headline: how much of the non-private gain the persona (and global) adapter keeps with DP on."""
    return [
        f"Default scenario: the persona adapter keeps **{100 * kept_share(dp, nodp):.0f} %** of the non-private "
        f"gain at epsilon {config.privacy.epsilon:g} (global adapter: {100 * kept_share(dp, nodp, 'global'):.0f} %); "
        "gain = base-model minus adapter held-out loss, DP and non-DP runs above, same users, seeds and settings.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs", type=Path, default=Path("runs/bench"), help="where the run directories go"
    )
    p.add_argument(
        "--only", help="comma-separated subset of: default-dp, default-nodp, shakespeare"
    )
    p.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    args = p.parse_args(argv)
    plan = {
        "default-dp": ("Synthetic IT service desk, DP on (the default scenario)", {}),
        "default-nodp": (
            "Synthetic IT service desk, DP off (same settings otherwise)",
            {"dp": False},
        ),
        "shakespeare": ("tinyshakespeare, speakers as users, 3 inferred personas, DP on", {}),
    }
    chosen = args.only.split(",") if args.only else list(plan)
    lines = [
        "## Federated simulation: persona adapters, DP on and off",
        "",
        "`python -m simulations.bench_scenarios --write` — each scenario is a full `fedpers simulate` run from "
        f"`simulations/scenarios/` (SmolLM2-135M-Instruct), one after another on this machine ({platform.machine()}, "
        "2 cores). Held-out loss is the token-weighted mean over every user's held-out conversations, per persona.",
        "",
    ]
    results = {}
    for name in chosen:
        label, overrides = plan[name]
        config, run_dir = scenario(name, args.runs, **overrides)
        metrics = simulate(config, run_dir)
        results[name] = (config, metrics)
        lines += section(label, config, metrics)
        print("\n".join(lines[-8:]), flush=True)
    if "default-dp" in results and "default-nodp" in results:
        lines += kept_lines(*results["default-dp"], results["default-nodp"][1])
    print_section(lines, args.write, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
