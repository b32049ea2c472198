"""The ``fedpers`` command: the library's commands (:mod:`fedpers.cli`) and those that run experiments.

``fedpers simulate`` runs the ServerApp and ClientApp on Flower's simulation engine;
``fedpers audit RUN_DIR --attack`` trains the canary attack's simulations first
(:mod:`simulations.attack`).

Building the parser imports no model, training or Flower library: each command imports what it runs,
so that ``fedpers ... --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedpers.cli import build_parser as library_parser
from fedpers.cli import main as run_command

if TYPE_CHECKING:
    from fedpers.audit.attack import AttackConfig


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    from simulations.simulate import add_arguments

    p = sub.add_parser(
        "simulate",
        help="federated simulation: persona adapters learned with DP-SGD on Flower's simulation engine",
        description="Run the fedpers ServerApp and ClientApp on Flower's simulation engine (Ray), one simulated "
        "device per user. Writes persona and global adapters (peft format), metrics.json, heldout_loss.png and the "
        "evaluation table to the run directory. Settings: defaults < --config FILE.toml < flags.",
    )
    add_arguments(p)
    p.set_defaults(func=_simulate)


SIMULATION_MISSING = (
    "`fedpers simulate` needs Flower's simulation engine (Ray), which this installation lacks; "
    "install it with: pip install 'fedpers[simulation]' (a device running fedpers-client does not need it)"
)


def _simulate(args: argparse.Namespace) -> int:
    import importlib.util

    spec = importlib.util.find_spec("ray")
    # absent, or only a namespace (e.g. Ray's temp dir /tmp/ray)
    if spec is None or spec.origin is None:
        print(f"fedpers: error: {SIMULATION_MISSING}", file=sys.stderr)
        return 2
    from fedpers.data import DataValidationError
    from fedpers.data.schema import DataFileError
    from fedpers.rundir import LOG_FILE
    from simulations.simulate import config_from_args, simulate

    config, run_dir = config_from_args(args)
    print(
        f"fedpers simulate: run directory {run_dir} (Flower's log: {run_dir / LOG_FILE})",
        flush=True,
    )
    try:
        metrics = simulate(config, run_dir, client_cpus=args.client_cpus, on_error=args.on_error)
    except DataFileError:
        raise
    except DataValidationError as err:
        lines = len({(i.path, i.line) for i in err.issues})
        print(f"fedpers: error: {err}", file=sys.stderr)
        print(
            f"fedpers: {lines} line(s) of {config.dataset.data} have problems; nothing was run. Run with "
            "--on-error skip to leave them out (reported per reason), or write the valid conversations "
            f"with: fedpers data validate --on-error skip --write-valid OUT.jsonl {config.dataset.data}",
            file=sys.stderr,
        )
        return 2
    table = run_dir / "evaluation.txt"
    coverage = metrics.get("persona_coverage", {})
    if table.exists():
        text = table.read_text().rstrip("\n")
    else:  # the notes are in the table when there is one
        notes = coverage.get("notes", [])
        text = "\n".join(["no evaluation", *(f"  - {note}" for note in notes)])
    print()
    print(text)
    privacy = (
        f"max per-user epsilon {metrics['max_epsilon']:.2f}"
        if config.privacy.dp
        else "DP off: epsilon unbounded"
    )
    print(f"{privacy}; wall time {metrics['wall_seconds']:.0f} s; outputs in {run_dir}")
    if config.outputs.audit:
        findings = json.loads((run_dir / "audit.json").read_text())["findings"]
        for finding in findings:
            print(f"  [{finding['level']}] {finding['text']}")
        print(
            f"privacy audit report: {run_dir / 'audit.html'} (signed; check with: fedpers audit verify {run_dir})"
        )
    return 0


def _attack(run_dir: Path, settings: AttackConfig) -> dict:
    """``fedpers audit --attack``: :func:`simulations.attack.attack_run_dir`, imported when it runs."""
    from simulations.attack import attack_run_dir

    return attack_run_dir(run_dir, settings)


def build_parser() -> argparse.ArgumentParser:
    return library_parser(commands=[_add_simulate], attack=_attack)


def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
