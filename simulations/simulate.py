"""``fedpers simulate``: the fedpers ServerApp and ClientApp on Flower's simulation engine (Ray backend).

One simulated SuperNode per user of the data set. Settings come from the defaults, then a TOML
config file, then flags; the run directory receives adapters, metrics, the plot and the table.

The terminal shows the run's stages (:mod:`fedpers.progress`), warnings and errors; Flower's own log
(every message of the server and of each simulated client, SecAgg+ DEBUG lines included) goes to
``RUN_DIR/run.log`` (:mod:`simulations.logs`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING

from fedpers.data.issues import dropped_lines
from fedpers.data.schema import DataValidationError, ReadMode, read_jsonl, write_jsonl
from fedpers.federated import SECTIONS, FederatedConfig, all_settings, load_config_file
from fedpers.progress import Progress, Stage
from fedpers.rundir import LOG_FILE, METRICS, read_json, write_json

if TYPE_CHECKING:
    from fedpers.data.select import Selection

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SHOWN_DEFAULTS = {"state_dir": "RUN_DIR/client-state"}
"""Defaults ``fedpers simulate`` chooses itself, as its help shows them (see :func:`config_from_args`)."""


def _shown_default(name: str, default: object) -> str:
    if name in SHOWN_DEFAULTS:
        return SHOWN_DEFAULTS[name]
    return "none" if default == "" else str(default)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help=f"TOML settings file (examples in {SCENARIOS.parent.name}/{SCENARIOS.name}/)",
    )
    p.add_argument("--run-dir", type=Path, help="output directory (default: runs/<timestamp>)")
    p.add_argument(
        "--on-error",
        choices=("strict", "skip"),
        default="strict",
        help="a JSONL file's bad lines: strict: any problem stops the run before it starts, every one "
        "listed; skip: they are left out and reported (lines per reason, the first few as file:line, "
        "in metrics.json too), and the run reads a copy of the valid lines, RUN_DIR/data/valid.jsonl",
    )
    p.add_argument(
        "--client-cpus",
        type=float,
        default=1.0,
        help="CPUs per simulated client (parallel clients = CPUs / this)",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    # one group per section of FederatedConfig, help from the field metadata
    for s in all_settings():
        if s.section not in groups:
            doc = (SECTIONS[s.section].__doc__ or "").strip().splitlines()[0]
            groups[s.section] = p.add_argument_group(
                f"{s.section} settings (override the config file)", doc
            )
        flag = "--" + s.name.replace("_", "-")
        helptext = f"{s.help} (default: {_shown_default(s.name, s.default)})"
        if s.kind is bool:
            groups[s.section].add_argument(
                flag,
                dest=s.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=helptext,
            )
        else:
            groups[s.section].add_argument(
                flag, dest=s.name, type=s.kind, default=None, help=helptext
            )


def config_from_args(args: argparse.Namespace) -> tuple[FederatedConfig, Path]:
    values = load_config_file(args.config) if args.config else {}
    values |= {
        s.name: getattr(args, s.name) for s in all_settings() if getattr(args, s.name) is not None
    }
    run_dir = (args.run_dir or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    if "state_dir" not in values:
        values["state_dir"] = str(run_dir / "client-state")
    config = FederatedConfig.from_flat(values).validated()
    config.outputs.state_dir = str(Path(config.outputs.state_dir).resolve())
    if config.dataset.data not in ("synthetic", "shakespeare"):
        config.dataset.data = str(Path(config.dataset.data).resolve())
    return config, run_dir


def _epsilons(ledgers: dict, progress: Stage | None = None, step: str = "") -> dict:
    if progress is not None:
        progress.step(step, len(ledgers), "users")
    spent = {}
    for user, ledger in ledgers.items():
        spent[user] = ledger.spent().epsilon if ledger.events() else 0.0
        if progress is not None:
            progress.advance()
    return {"epsilon_per_client": spent, "max_epsilon": max(spent.values(), default=0.0)}


def client_privacy(
    config: FederatedConfig, users: list[str], progress: Stage | None = None
) -> dict:
    """Each simulated user's epsilon, read from the ledgers on its (simulated) device: sample-level (the unit is one
    conversation) and, with user-level DP, user-level (``user_level``: the unit is the whole user, one Skellam
    release per round the user uploaded in, composed over every run of the same state directory).
    ``progress`` counts the ledgers accounted."""
    from clients.state import UserState

    states = {user: UserState(config.outputs.state_dir, user) for user in users}
    privacy = {
        "delta": config.privacy.delta,
        **_epsilons(
            {u: s.ledger(config.privacy.delta) for u, s in states.items()}, progress, "ledgers"
        ),
    }
    if config.privacy.user_dp:
        privacy["user_level"] = {
            "noise_multiplier": config.privacy.user_noise_multiplier,
            **_epsilons(
                {u: s.user_level_ledger(config.privacy.delta) for u, s in states.items()},
                progress,
                "user-level ledgers",
            ),
        }
    return privacy


def client_log(path: str) -> Callable:
    """A client mod: the simulated client's process writes its log to the run's log file (``path``), and only
    its errors to the terminal (Ray forwards the actors' output there)."""

    def mod(msg, context, call_next):
        from simulations.logs import log_to_file

        log_to_file(path, f"client pid {os.getpid()}")
        return call_next(msg, context)

    return mod


VALID_COPY = Path("data") / "valid.jsonl"
"""Where a run that skipped bad lines keeps the valid ones it reads (relative to the run directory)."""


def prepare_data(
    config: FederatedConfig, run_dir: Path, on_error: ReadMode = "strict"
) -> tuple[FederatedConfig, dict | None]:
    """Read a JSONL data file once, every line validated: the settings the run uses, and what was read.

    ``strict``: any bad line raises :class:`fedpers.data.DataValidationError` listing every issue.
    ``skip``: the bad lines are left out; if there are any, the valid conversations are written to
    ``RUN_DIR/data/valid.jsonl`` and the returned settings name that copy, so that the simulated devices,
    the evaluator and the audit all read the same valid lines. The record (``metrics.json``'s ``data``)
    holds the lines dropped per reason and the first few as ``file:line``, without the issues' text.
    The built-in sources return ``(config, None)``."""
    data = config.dataset.data
    if data in ("synthetic", "shakespeare"):
        return config, None
    result = read_jsonl(data, mode="skip")
    if result.issues and on_error == "strict":
        raise DataValidationError(result.issues)
    dropped = dropped_lines(result.issues)
    record: dict = {
        "source": data,
        "on_error": on_error,
        "lines_read": result.lines_read,
        "conversations": len(result.conversations),
        "dropped_lines": dropped.lines,
        "dropped_by_reason": dropped.by_reason,
        "first_dropped": list(dropped.first),
    }
    if result.issues:
        copy = run_dir / VALID_COPY
        write_jsonl(copy, result.conversations)
        record["valid_copy"] = str(copy)
        config = config.replace(data=str(copy))
    return config, record


def data_lines(record: dict | None, config: FederatedConfig) -> list[str]:
    """What the terminal shows of the data read and chosen, before the run starts."""
    if record is None:
        return []
    lines = [
        f"data: {record['source']}: {record['conversations']:,} valid conversations of "
        f"{record['lines_read']:,} lines"
    ]
    lines += [f"  {line}" for line in dropped_lines_text(record)]
    if "valid_copy" in record:
        lines.append(f"  the run reads the valid ones, copied to {record['valid_copy']}")
    from fedpers.userdata import data_selection

    selection = data_selection(config)
    if selection is not None:
        from fedpers.aggregation import published_count

        gate = config.server.min_clients
        chosen = (  # as every output of the run: no count below the gate
            ", ".join(f"{p} {published_count(n, gate)}" for p, n in selection.counts().items())
            if selection.personas
            else f"{len(selection.users)} (the file declares no persona)"
        )
        lines.append(
            f"  users chosen (data_seed {selection.seed}): {chosen}; at most "
            f"{selection.conversations_per_user} conversations each"
        )
    return lines


def dropped_lines_text(record: dict) -> list[str]:
    if not record["dropped_lines"]:
        return []
    out = [f"{record['dropped_lines']:,} line(s) dropped (--on-error {record['on_error']}):"]
    out += [f"  {n:,} × {r}" for r, n in record["dropped_by_reason"].items()]
    more = record["dropped_lines"] - len(record["first_dropped"])
    out.append(
        f"  first: {', '.join(record['first_dropped'])}" + (f" (and {more:,} more)" if more else "")
    )
    return out


def _echo(text: str) -> None:
    from flwr.common.logger import log

    log(INFO, "%s", text)


def simulate(
    config: FederatedConfig,
    run_dir: Path,
    client_cpus: float = 1.0,
    client_mods: list | None = None,
    inner_mods: list | None = None,
    observer=None,
    label: str = "",
    on_error: ReadMode = "strict",
) -> dict:
    """Run the federated simulation and return the metrics it wrote.

    ``client_mods`` wrap every client outside secure aggregation (they see what leaves the device),
    ``inner_mods`` inside it (they see the plain upload); ``observer`` sees every reply of a SecAgg+ session.
    With ``record_wire`` every reply is recorded first; with ``audit_attack`` the canary simulations run
    next; with ``audit`` the signed report is written last (then the payloads are pruned unless kept).

    A JSONL data file is read first (:func:`prepare_data`, ``on_error`` for its bad lines); after the run,
    ``metrics.json`` gets ``data`` (what was read and dropped) and ``persona_coverage``
    (:func:`simulations.evaluator.persona_coverage`), and ``evaluation.txt`` a row for every declared
    persona the table lacks.

    Standard error shows the stages (each ``label`` first); Flower's log goes to ``RUN_DIR/run.log``."""
    # offline: never install at run time
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from fedpers.userdata import user_ids
    from simulations.logs import run_log

    progress = Progress(echo=_echo, prefix=label)
    config, data_record = prepare_data(config, run_dir, on_error)
    for line in data_lines(data_record, config):
        progress.write(line)
    users = user_ids(config)
    if config.outputs.record_wire:
        from clients.wire import record_replies

        # outermost: sees what leaves the device
        client_mods = [
            record_replies(run_dir / "wire"),
            *(client_mods or []),
        ]
    if len(users) < config.server.min_clients:
        raise ValueError(
            f"the data holds {len(users)} users, fewer than min_clients={config.server.min_clients}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = run_dir / LOG_FILE
    with run_log(log_file, write=progress.write, colored=progress.live):
        return _simulate(
            config,
            run_dir,
            users,
            client_cpus,
            [client_log(str(log_file)), *(client_mods or [])],
            inner_mods,
            observer,
            progress,
            data_record,
        )


def record_coverage(
    config: FederatedConfig, run_dir: Path, metrics: dict, data_record: dict | None
) -> None:
    """Add ``data`` and ``persona_coverage`` to ``metrics`` (and ``metrics.json``), and the rows and notes
    of :func:`simulations.evaluator.amend_table` to ``evaluation.txt``."""
    from fedpers.userdata import data_selection
    from simulations.evaluator import amend_table, persona_coverage

    selection = data_selection(config)
    if data_record is not None:
        metrics["data"] = data_record | ({} if selection is None else selection_record(selection))
    coverage = persona_coverage(config, metrics, selection)
    metrics["persona_coverage"] = coverage
    write_json(run_dir / METRICS, metrics)
    table = run_dir / "evaluation.txt"
    if table.exists():
        table.write_text(amend_table(table.read_text().rstrip("\n"), coverage) + "\n")


def selection_record(selection: Selection) -> dict:
    """The choice of users and conversations as ``metrics.json`` keeps it; per-persona counts are in
    ``persona_coverage``, as the minimum-clients gate allows them."""
    return {
        "users_available": selection.available_users,
        "users_chosen": len(selection.users),
        "conversations_chosen": len(selection.conversations),
        "users_per_persona": selection.users_per_persona,
        "conversations_per_user": selection.conversations_per_user,
        "max_users": selection.max_users,
        "max_users_capped": selection.capped,
        "data_seed": selection.seed,
        "unlisted_personas": dict(selection.unlisted),
        "users_without_persona": selection.unlabelled,
        "conversations_of_another_persona": selection.conflicting,
    }


def _simulate(
    config: FederatedConfig,
    run_dir: Path,
    users: list[str],
    client_cpus: float,
    client_mods: list,
    inner_mods: list | None,
    observer,
    progress: Progress,
    data_record: dict | None = None,
) -> dict:
    from flwr.simulation import run_simulation

    from clients.app import make_client_app
    from fedpers.modelcard import write_model_cards
    from server.app import make_server_app
    from simulations.evaluator import SimulationEvaluator

    cpus = os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False},
    }
    evaluator = SimulationEvaluator(config, users) if config.outputs.evaluate else None
    run_simulation(
        server_app=make_server_app(config, run_dir, len(users), observer, evaluator, progress),
        client_app=make_client_app(inner_mods, client_mods),
        num_supernodes=len(users),
        backend_config=backend,
    )
    metrics_path = run_dir / METRICS
    if not metrics_path.exists():
        raise RuntimeError(
            f"the simulation ended without writing {metrics_path}: see the errors above and "
            f"{run_dir / LOG_FILE}"
        )
    metrics = read_json(metrics_path)
    record_coverage(config, run_dir, metrics, data_record)
    if config.privacy.dp or config.privacy.user_dp:
        with progress.stage("privacy accounting · each client's epsilon", "accounting") as stage:
            metrics["client_privacy"] = client_privacy(config, users, stage)
            if config.privacy.dp:
                stage.summary = f"largest epsilon {metrics['client_privacy']['max_epsilon']:.2f}"
        if config.privacy.dp:
            metrics["max_epsilon"] = metrics["client_privacy"]["max_epsilon"]
        write_json(metrics_path, metrics)
        write_model_cards(run_dir)  # with the epsilon the simulated devices spent
    if config.outputs.audit_attack:
        from simulations.attack import run_attack

        run_attack(config, run_dir)
    if config.outputs.audit:
        from fedpers.audit.report import write_audit
        from fedpers.audit.wire import prune_payloads

        with progress.stage("privacy audit report", "audit") as stage:
            audit = write_audit(run_dir, progress=False)
            problems = sum(f["level"] == "problem" for f in audit["findings"])
            stage.summary = f"{problems} problem(s)"
        if not config.outputs.keep_payloads:
            prune_payloads(run_dir)
    return metrics
