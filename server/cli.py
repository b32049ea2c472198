"""The ``fedpers-server`` command: a SuperLink with TLS and SuperNode authentication, node registration,
runs of the fedpers ServerApp on it, and the persona registry.

Typical order (see the README, "Deploy"): ``fedpers certs`` once, ``fedpers-server superlink`` (keeps
running), ``fedpers-server register NODE.pub ...`` for every device, devices ``fedpers-client join``,
then ``fedpers-server run``. Follow a run with ``flwr log RUN_ID fedpers --stream``, stop it with
``flwr stop RUN_ID fedpers``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from server.superlink import CONNECTION

SOURCE_APP = Path(__file__).resolve().parents[1]


def _connection(args: argparse.Namespace) -> str:
    """The ``flwr`` connection to use, written first when ``--superlink`` is given."""
    from server.superlink import write_connection

    if args.superlink:
        if args.root_certificates is None:
            raise ValueError(
                "--superlink needs --root-certificates CA.crt (the CA of the SuperLink's certificate)"
            )
        path = write_connection(args.superlink, args.root_certificates, args.connection)
        print(f"flwr connection '{args.connection}' -> {args.superlink} (in {path})", flush=True)
    return args.connection


def cmd_superlink(args: argparse.Namespace) -> int:
    from fedpers.processes import run_foreground
    from server.superlink import SuperLinkConfig, flwr_env, superlink_command

    command = superlink_command(SuperLinkConfig(args.certs, args.host, args.port, args.database))
    if args.print_command:
        print(" ".join(command))
        return 0
    print(
        f"SuperLink on {args.host}:{args.port} (TLS, SuperNode authentication, no runtime installs); Ctrl+C stops it",
        flush=True,
    )
    return run_foreground(command, flwr_env())


def cmd_register(args: argparse.Namespace) -> int:
    from fedpers.processes import run_foreground
    from server.superlink import flwr_env, register_command

    connection = _connection(args)
    failed = [
        str(key)
        for key in args.public_keys
        if run_foreground(register_command(key, connection), flwr_env()) != 0
    ]
    if failed:
        print(f"fedpers-server: error: not registered: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _settings(args: argparse.Namespace) -> dict:
    """Run settings: --config FILE.toml, then --run-config, then the run and registry directories (absolute)."""

    from flwr.common.config import parse_config_args

    from fedpers.federated import FederatedConfig, all_settings, load_config_file

    settings: dict = dict(load_config_file(args.config)) if args.config else {}
    known = {s.name for s in all_settings()}
    try:
        overrides = parse_config_args([args.run_config] if args.run_config else None)
    except Exception as err:  # click.ClickException: not key=value pairs with TOML values
        raise ValueError(
            f"--run-config {args.run_config!r}: {getattr(err, 'message', err)}"
        ) from None
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in known | {"run_dir"}:
            raise ValueError(f"--run-config: unknown setting {key!r}")
        settings[name] = value
    FederatedConfig.from_flat({k: v for k, v in settings.items() if k != "run_dir"}).validated()
    run_dir = Path(
        args.run_dir or settings.get("run_dir") or f"runs/deploy-{datetime.now():%Y%m%d-%H%M%S}"
    )
    settings["run_dir"] = str(run_dir.resolve())
    settings["registry"] = str(
        Path(args.registry or settings.get("registry") or "runs/registry").resolve()
    )
    return settings


def _resume_settings(args: argparse.Namespace) -> dict:
    """The settings of a resumed run: the checkpoint's, and any given ones must equal them."""
    from fedpers.federated import FederatedConfig
    from server.checkpoint import check_settings, resumable

    run_dir = Path(args.resume).resolve()
    if args.run_dir is not None and Path(args.run_dir).resolve() != run_dir:
        raise ValueError(f"--resume {run_dir} and --run-dir {args.run_dir}: name one run directory")
    checkpoint = resumable(run_dir)
    if args.config or args.run_config:
        given = _settings(args)
        given.pop("run_dir")
        current = {**checkpoint.settings, **given}
        check_settings(
            checkpoint, FederatedConfig.from_flat(current).validated().to_record(), run_dir
        )
    settings = dict(checkpoint.settings)
    if args.registry:
        settings["registry"] = str(Path(args.registry).resolve())
    settings["run_dir"] = str(run_dir)
    print(
        f"resuming run {checkpoint.run_id[:8]} in {run_dir} after round {checkpoint.round} of "
        f"{settings['rounds']}",
        flush=True,
    )
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from fedpers.processes import run_foreground
    from fedpers.rundir import METRICS, read_json
    from server.checkpoint import CHECKPOINT_DIR, request_resume, unfinished
    from server.registry import latest
    from server.superlink import flwr_env, run_command

    settings = _resume_settings(args) if args.resume else _settings(args)
    run_dir = Path(settings["run_dir"])
    if not args.resume and (pending := unfinished(run_dir)) is not None:
        raise ValueError(
            f"{run_dir / CHECKPOINT_DIR}: the checkpoint of an unfinished run"
            + (
                f" ({pending['damaged']})"
                if "damaged" in pending
                else f" (after round {pending.get('round')})"
            )
            + f"; resume it with --resume {run_dir}, or choose another --run-dir"
        )
    command = run_command(args.app, settings, _connection(args), stream=not args.no_stream)
    if args.print_command:
        print(" ".join(command))
        return 0
    if args.resume:
        request_resume(run_dir)
    status = run_foreground(command, flwr_env())
    if status != 0 or args.no_stream:
        return status
    metrics_path = Path(settings["run_dir"]) / METRICS
    if not metrics_path.exists():
        print(
            f"fedpers-server: error: the run ended without {metrics_path}; see `flwr ls {args.connection}` and "
            f"`flwr log RUN_ID {args.connection} --show`",
            file=sys.stderr,
        )
        return 1
    metrics = read_json(metrics_path)
    rounds = [round(r.get("train_seconds", 0.0), 1) for r in metrics.get("rounds", [])]
    print(
        f"run finished in {metrics['wall_seconds']:.0f} s (training seconds per round: {rounds}); outputs in {settings['run_dir']}"
    )
    version = latest(settings["registry"])
    if version is not None:
        print(f"persona adapters published: {version.path}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from server.registry import publish

    version = publish(args.run_dir, args.registry)
    print(f"published {args.run_dir} as {version.path} (now latest)")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from server.registry import VERSION_FILE, latest, versions

    current = latest(args.registry)
    found = versions(args.registry)
    if args.json:
        print(
            json.dumps([json.loads((v.path / VERSION_FILE).read_text()) for v in found], indent=1)
        )
        return 0
    if not found:
        print(f"{args.registry}: no versions yet")
    for v in found:
        record = json.loads((v.path / VERSION_FILE).read_text())
        mark = "  <- latest" if current is not None and current.number == v.number else ""
        print(
            f"{v.name}  {record['published_at']}  run {str(record['run_id'])[:8]}  {', '.join(record['adapters'])}{mark}"
        )
    return 0


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="write the flwr connection for this SuperLink address first",
    )
    p.add_argument(
        "--root-certificates",
        type=Path,
        metavar="CA.crt",
        help="CA certificate of the SuperLink (with --superlink)",
    )
    p.add_argument(
        "--connection",
        default=CONNECTION,
        help="name of the flwr connection (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedpers-server",
        description="The server side of fedpers on Flower's deployment engine: a SuperLink with TLS and SuperNode "
        "authentication, registration of device keys, federated runs of the fedpers ServerApp, and the persona "
        "registry (each run's adapters as a numbered version).",
        epilog="Follow a run: flwr log RUN_ID fedpers --stream. Stop it: flwr stop RUN_ID fedpers. "
        "List runs: flwr ls fedpers. The flwr CLI keeps connections in $FLWR_HOME/config.toml (default ~/.flwr).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "superlink",
        help="run a SuperLink with TLS and SuperNode authentication (foreground)",
        description="Run flower-superlink with the certificates of `fedpers certs DIR` (ca.crt, server.crt, "
        "server.key), SuperNode authentication (only registered node keys connect) and no runtime "
        "dependency installation. One HTTPS port serves SuperNodes and the flwr CLI.",
    )
    p.add_argument(
        "--certs",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory written by `fedpers certs`",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for other machines (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--database", type=Path, help="SQLite file for the SuperLink's state (default: in memory)"
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the flower-superlink command instead of running it",
    )
    p.set_defaults(func=cmd_superlink)

    p = sub.add_parser(
        "register",
        help="register device public keys with the SuperLink",
        description="Register each NODE.pub (OpenSSH ECDSA public key, e.g. from `fedpers certs`) through "
        "the Control API (`flwr supernode register`). Only registered nodes may connect.",
    )
    p.add_argument(
        "public_keys",
        nargs="+",
        type=Path,
        metavar="NODE.pub",
        help="public key of a device's node (OpenSSH ECDSA)",
    )
    _add_connection_args(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser(
        "run",
        help="run the fedpers ServerApp on the SuperLink and publish its adapters",
        description="Submit the fedpers app (`flwr run APP CONNECTION`) with the given settings, follow its "
        "log until it ends, and publish its adapters as the next registry version. Settings: the app's "
        "defaults < --config FILE.toml < --run-config. Set min-nodes to the number of devices to wait for.",
    )
    p.add_argument(
        "--app",
        type=Path,
        default=SOURCE_APP,
        help="the fedpers app directory with pyproject.toml (default: %(default)s)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="settings file, as for `fedpers simulate --config` (examples in simulations/scenarios/)",
    )
    p.add_argument(
        "--run-config",
        metavar="'KEY=VALUE ...'",
        help="settings, e.g. 'rounds=2 model=\"tiny\" min-nodes=3'",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        help="where the ServerApp writes its outputs (default: runs/deploy-<time>, absolute)",
    )
    p.add_argument(
        "--registry",
        type=Path,
        help="persona registry directory (default: runs/registry, absolute)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run of RUN_DIR after its last completed round (its checkpoint), as a new "
        "Flower run with the checkpoint's settings; refused if the checkpoint is damaged or finished, or "
        "if --config/--run-config change a setting",
    )
    p.add_argument(
        "--no-stream",
        action="store_true",
        help="submit the run and return (follow it with flwr log)",
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the flwr run command instead of running it",
    )
    _add_connection_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "publish",
        help="publish a run directory's adapters as the next registry version",
        description="Copy RUN_DIR's adapters, run.json, metrics.json and audit report (if present) into "
        "REGISTRY/vNNNN and point REGISTRY/latest at it (e.g. again after `fedpers audit`).",
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory (with run.json)"
    )
    p.add_argument(
        "--registry",
        type=Path,
        required=True,
        metavar="DIR",
        help="persona registry directory (created if missing)",
    )
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "versions",
        help="list the registry's versions",
        description="List REGISTRY's versions, oldest first.",
    )
    p.add_argument(
        "--registry", type=Path, required=True, metavar="DIR", help="persona registry directory"
    )
    p.add_argument("--json", action="store_true", help="the version records as JSON")
    p.set_defaults(func=cmd_versions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"fedpers-server: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
