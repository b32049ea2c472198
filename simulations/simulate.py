"""``fedpers simulate``: the fedpers ServerApp and ClientApp on Flower's simulation engine (Ray backend).

One simulated SuperNode per user of the data set. Settings come from the defaults, then a TOML
config file, then flags; the run directory receives adapters, metrics, the plot and the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from datetime import datetime
from pathlib import Path

from fedpers.federated import FederatedConfig, load_config_file
from fedpers.rundir import METRICS, read_json, write_json

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

HELP = {
    "model": "'smollm2' (packaged SmolLM2-135M-Instruct), 'tiny' (test model) or a local HF model directory",
    "data": "'synthetic' (IT service desk), 'shakespeare' (../shared/data) or a conversation JSONL path",
    "users_per_persona": "synthetic users per persona",
    "conversations_per_user": "conversations per user (synthetic: generated; other data: at most this many)",
    "max_users": "at most this many users (non-synthetic data)",
    "heldout_fraction": "share of each user's conversations held out for evaluation",
    "max_length": "tokens per training example (keeps the latest context)",
    "personas": "comma-separated persona names",
    "persona_mode": "'declared' (persona field of the data) or 'inferred' (IFCA on the client, chosen privately)",
    "lora_layers": "LoRA on the top N layers (0 = all)",
    "embedding_tokens": "soft-prompt vectors in each user's embedding (stays on the device)",
    "fraction_train": "fraction of users sampled per round",
    "min_clients": "minimum contributors before a persona (or the global) adapter is updated",
    "server_optimizer": "'fedavg' or 'fedadam'",
    "server_lr": "server learning rate; 0 = the optimizer's default (FedAvg 1.0, FedAdam 1e-2)",
    "local_steps": "DP-SGD steps per client per round",
    "batch_size": "expected Poisson batch size",
    "embedding_steps": "user-embedding steps per client per round (0 = none)",
    "dp": "DP-SGD on the shared adapter (false only for comparison)",
    "epsilon": "per-user epsilon budget over all rounds of this run (plus earlier runs in the ledger)",
    "noise_multiplier": "0 = calibrate to --epsilon over all planned rounds",
    "clip": "per-sample clipping norm; 0 = private median of per-sample gradient norms",
    "secure_aggregation": "Flower's SecAgg+ with ChaCha20 masks (false: uploads in clear, for comparisons)",
    "persona_hiding": "upload one slot per persona so that no client sends its persona (the per-slot counts the server "
                      "unmasks can still reveal it; false: persona in clear, one slot)",
    "update_clip": "clients clip their adapter delta to this L2 norm; SecAgg+ quantizes within it",
    "secagg_shares": "fraction of the sampled clients each client shares its secrets with",
    "secagg_threshold": "fraction of those shares needed to rebuild a dropped client's masks",
    "secagg_timeout": "seconds each SecAgg+ stage waits for replies",
    "secagg_retries": "times a failed secure round is run again before the run stops with an error",
    "evaluate": "held-out loss per persona after every round (simulation: the experimenter's evaluator, outside the "
                "federated protocol; devices never send it)",
    "user_dp": "user-level DP (DP-FedAvg): clip each whole upload, add Gaussian noise to the sum; needs persona hiding",
    "user_noise_multiplier": "user-level noise std as a multiple of the upload's clipping norm",
    "noise_seed": "benchmark switch: seeds DP-SGD's sampling and noise on every device, for reproducible comparisons; "
                  "such a run is marked NOT PRIVATE; -1: each device's OS CSPRNG",
    "state_dir": "where clients keep ledgers, user embeddings and plans (default: RUN_DIR/client-state)",
    "record_wire": "record every reply a client sends (RUN_DIR/wire: manifest and payloads) for the audit",
    "keep_payloads": "keep the recorded payloads after the audit's leak scan (the manifest keeps their SHA-256)",
    "audit": "write the signed privacy audit report (audit.html, audit.json) at the end",
    "audit_attack": "add the canary attack to the audit: two more simulations with these settings (DP as set, DP off)",
    "canaries": "conversation JSONL added to its users' training data (the canary attack sets it)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help=f"TOML settings file (see {SCENARIOS.name}/ for examples)")
    p.add_argument("--run-dir", type=Path, help="output directory (default: runs/<timestamp>)")
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per simulated client (parallel clients = CPUs / this)")
    group = p.add_argument_group("settings (override the config file)")
    for f in dataclasses.fields(FederatedConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        helptext = f"{HELP.get(f.name, '')} (default: {f.default})".strip()
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, help=helptext)


def config_from_args(args: argparse.Namespace) -> tuple[FederatedConfig, Path]:
    values = load_config_file(args.config) if args.config else {}
    values |= {f.name: getattr(args, f.name) for f in dataclasses.fields(FederatedConfig) if getattr(args, f.name) is not None}
    run_dir = (args.run_dir or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    if "state_dir" not in values:
        values["state_dir"] = str(run_dir / "client-state")
    config = FederatedConfig(**values).validated()
    config.state_dir = str(Path(config.state_dir).resolve())
    if config.data not in ("synthetic", "shakespeare"):
        config.data = str(Path(config.data).resolve())
    return config, run_dir


def _epsilons(ledgers: dict) -> dict:
    spent = {user: ledger.spent().epsilon if ledger.events() else 0.0 for user, ledger in ledgers.items()}
    return {"epsilon_per_client": spent, "max_epsilon": max(spent.values(), default=0.0)}


def client_privacy(config: FederatedConfig, users: list[str]) -> dict:
    """Each simulated user's epsilon, read from the ledgers on its (simulated) device: sample-level (the unit is one
    conversation) and, with user-level DP, user-level (``user_level``: the unit is the whole user, one Gaussian
    release per round the user uploaded in, composed over every run of the same state directory)."""
    from clients.state import UserState

    states = {user: UserState(config.state_dir, user) for user in users}
    privacy = {"delta": config.delta, **_epsilons({u: s.ledger(config.delta) for u, s in states.items()})}
    if config.user_dp:
        privacy["user_level"] = {"noise_multiplier": config.user_noise_multiplier,
                                 **_epsilons({u: s.user_level_ledger(config.delta) for u, s in states.items()})}
    return privacy


def simulate(config: FederatedConfig, run_dir: Path, client_cpus: float = 1.0, client_mods: list | None = None,
             inner_mods: list | None = None, observer=None) -> dict:
    """Run the federated simulation and return the metrics it wrote.

    ``client_mods`` wrap every client outside secure aggregation (they see what leaves the device),
    ``inner_mods`` inside it (they see the plain upload); ``observer`` sees every reply of a SecAgg+ session.
    With ``record_wire`` every reply is recorded first; with ``audit_attack`` the canary simulations run
    next; with ``audit`` the signed report is written last (then the payloads are pruned unless kept)."""
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # offline: never install at run time
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from clients.app import make_client_app
    from fedpers.userdata import user_ids
    from server.app import make_server_app
    from simulations.evaluator import SimulationEvaluator

    users = user_ids(config)
    if config.record_wire:
        from clients.wire import record_replies

        client_mods = [record_replies(run_dir / "wire"), *(client_mods or [])]  # outermost: sees what leaves the device
    if len(users) < config.min_clients:
        raise ValueError(f"the data holds {len(users)} users, fewer than min_clients={config.min_clients}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False},
    }
    evaluator = SimulationEvaluator(config, users) if config.evaluate else None
    run_simulation(server_app=make_server_app(config, run_dir, len(users), observer, evaluator),
                   client_app=make_client_app(inner_mods, client_mods), num_supernodes=len(users), backend_config=backend)
    metrics_path = run_dir / METRICS
    if not metrics_path.exists():
        raise RuntimeError(f"the simulation ended without writing {metrics_path}: see the log above")
    metrics = read_json(metrics_path)
    if config.dp or config.user_dp:
        metrics["client_privacy"] = client_privacy(config, users)
        if config.dp:
            metrics["max_epsilon"] = metrics["client_privacy"]["max_epsilon"]
        write_json(metrics_path, metrics)
    if config.audit_attack:
        from simulations.attack import run_attack

        run_attack(config, run_dir)
    if config.audit:
        from fedpers.audit.report import write_audit
        from fedpers.audit.wire import prune_payloads

        write_audit(run_dir)
        if not config.keep_payloads:
            prune_payloads(run_dir)
    return metrics
