"""The ``fedpers-client`` command: the on-device side of fedpers.

A device keeps one user's conversations, consent, privacy ledger, user embedding and the adapters
it received in an encrypted store (``--store``, default ``$FEDPERS_STORE`` or ``~/.fedpers/store``),
unlocked with a key file (``--key-file`` or ``$FEDPERS_STORE_KEY_FILE``) or a passphrase
(``$FEDPERS_STORE_PASSPHRASE``, else asked for).

Building the parser imports neither the device's state nor any training library: each command imports
what it runs, so that ``fedpers-client ... --help`` answers at once.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from clients.consent import DEFAULT_BUDGET, Consent, ParticipationRefused
from clients.store import StoreError, create_key_file
from clients.unlock import KEY_FILE_ENV, PASSPHRASE_ENV
from fedpers.data.schema import DataValidationError, read_jsonl

if TYPE_CHECKING:
    from clients.device import DeviceStore

STORE_ENV = "FEDPERS_STORE"
DEFAULT_STORE = Path("~/.fedpers/store")


def _store_dir(args: argparse.Namespace) -> Path:
    return Path(args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


def _key(args: argparse.Namespace, new: bool = False) -> dict:
    """``{"key_file": ...}`` or ``{"passphrase": ...}``: flag, environment, then a prompt (twice for a new store)."""
    key_file = args.key_file or os.environ.get(KEY_FILE_ENV)
    if key_file:
        path = Path(key_file).expanduser().resolve()
        if new and not path.exists():
            create_key_file(path)
            print(f"created key file {path} (keep it safe: without it the store cannot be opened)")
        return {"key_file": path}
    if os.environ.get(PASSPHRASE_ENV):
        return {"passphrase": os.environ[PASSPHRASE_ENV]}
    if not sys.stdin.isatty():
        raise StoreError(
            f"no key: pass --key-file, or set {PASSPHRASE_ENV} or {KEY_FILE_ENV} (no terminal to ask on)"
        )
    passphrase = getpass.getpass("store passphrase: ")
    if new and getpass.getpass("repeat the passphrase: ") != passphrase:
        raise StoreError("the two passphrases differ")
    return {"passphrase": passphrase}


def _open(args: argparse.Namespace, key: dict | None = None) -> DeviceStore:
    """The store of ``args``, unlocked with ``key`` (default: :func:`_key`'s)."""
    from clients.device import DeviceStore

    return DeviceStore.open(_store_dir(args), **(key if key is not None else _key(args)))


def cmd_init(args: argparse.Namespace) -> int:
    from clients.device import DeviceStore

    directory = _store_dir(args)
    device = DeviceStore.create(directory, args.user_id, args.persona, **_key(args, new=True))
    print(
        f"created store {device.directory} for user {args.user_id}"
        + (f" (persona {args.persona})" if args.persona else "")
    )
    print(
        "consent is not given yet: `fedpers-client consent --opt-in` to take part in federated training"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    # The file's own problems (not a file, a bad line) are reported before the store's key is asked for;
    # main prints them (DataValidationError) as one error, never a traceback.
    read_jsonl(args.file, mode="strict")
    device = _open(args)
    added = device.import_jsonl(args.file)
    print(
        f"imported {added} conversation(s) from {args.file}; the store holds {len(device.conversations())}"
    )
    return 0


def _spent(ledger) -> float:
    """Epsilon of a ledger's composition (0 for an empty one)."""
    return ledger.spent().epsilon if ledger.events() else 0.0


def _readable(read, default=None):
    """``read()``, or ``default`` when the store refuses it (a damaged item: ``integrity`` says which)."""
    try:
        return read()
    except StoreError:
        return default


def _ledger_status(device: DeviceStore, item: str) -> dict:
    """Spend of ledger ``item``, or, when it cannot be read, the error and the spend the store records."""
    from fedpers.privacy.ledger import LedgerIntegrityError

    recorded = _readable(lambda: device.recorded_spend(item))
    try:
        ledger = device.ledger() if item == "ledger" else device.user_level_ledger()
        if recorded is not None and (recorded.count, recorded.head) != (
            len(ledger.entries),
            ledger.head,
        ):  # e.g. the whole store rolled back: its anchor records a longer chain
            raise StoreError(
                f"the ledger {item!r} ends at entry {len(ledger.entries)}, the store records "
                f"{recorded.count} entries"
            )
        return {"epsilon": _spent(ledger), "delta": ledger.delta, "entries": len(ledger.entries)}
    except (StoreError, LedgerIntegrityError) as err:
        return {
            "epsilon": None,
            "delta": None if recorded is None else recorded.delta,
            "entries": None,
            "error": str(err),
            "recorded_epsilon": None if recorded is None else recorded.epsilon,
            "recorded_entries": None if recorded is None else recorded.count,
        }


def status(device: DeviceStore) -> dict:
    """What the store holds, for ``status``; ``integrity`` lists what was found damaged (then the ledgers'
    spend is the one the store's manifest records, never 0)."""
    problems = device.integrity()
    consent = _readable(device.consent)
    record, user_level = (
        _ledger_status(device, "ledger"),
        _ledger_status(device, "user-level-ledger"),
    )
    info = _readable(device.adapters_info)
    conversations, feedback = _readable(device.conversations), _readable(device.feedback)
    return {
        "store": str(device.directory),
        "user_id": _readable(lambda: device.user_id),
        "persona": _readable(device.declared_persona),
        "conversations": None if conversations is None else len(conversations),
        "rated_answers": None if feedback is None else len(feedback),
        "consent": None if consent is None else consent.to_dict(),
        "integrity": {
            "ok": not problems,
            "problems": [p.to_dict() for p in problems],
            "generation": device.store.generation,
        },
        "privacy": {
            "epsilon_spent": record["epsilon"],
            "budget": None if consent is None else consent.budget,
            "delta": record["delta"],
            "ledger_entries": record["entries"],
            "recorded_epsilon": record.get("recorded_epsilon"),
            "recorded_entries": record.get("recorded_entries"),
            "user_level_epsilon_spent": user_level["epsilon"],
            "user_level_delta": user_level["delta"],
            "user_level_ledger_entries": user_level["entries"],
            "user_level_recorded_epsilon": user_level.get("recorded_epsilon"),
            "user_level_recorded_entries": user_level.get("recorded_entries"),
        },
        "adapters": None
        if info is None
        else {
            "run_id": info["run_id"],
            "server_round": info["server_round"],
            "names": info["adapters"],
        },
        "user_embedding": _readable(device.embedding) is not None,
    }


def _spend_line(spent, delta, entries, recorded, recorded_entries, budget, unit: str) -> str:
    of = "?" if budget is None else f"{budget:g}"
    if spent is not None:
        return f"epsilon {spent:.3f} spent of {of} (delta {delta:g}, {entries} {unit})"
    if recorded is None:
        return "TAMPERED: the ledger cannot be read and the store records no spend for it"
    return (
        f"TAMPERED: the ledger cannot be read; the store's manifest records epsilon {recorded:.3f} "
        f"spent in {recorded_entries} entries (delta {delta:g}) of {of}"
    )


def _open_for_repair(args: argparse.Namespace) -> DeviceStore:
    """The store, opened even if it is older than its anchor (the rollback is then one of its problems)."""
    from clients.device import DeviceStore

    return DeviceStore.open(_store_dir(args), recover=True, **_key(args))


def cmd_status(args: argparse.Namespace) -> int:
    report = status(_open_for_repair(args))
    tampered = not report["integrity"]["ok"]
    if args.json:
        print(json.dumps(report, indent=1))
        return 2 if tampered else 0
    privacy, adapters = report["privacy"], report["adapters"]
    print(f"store          {report['store']}")
    if tampered:
        problems = report["integrity"]["problems"]
        print(
            f"integrity      TAMPERED: {len(problems)} problem(s); this device refuses to train or upload "
            "until `fedpers-client repair` (which never lowers the recorded spend)"
        )
        for problem in problems:
            print(f"               - {problem['message']}")
    else:
        print(f"integrity      intact (generation {report['integrity']['generation']})")
    print(f"user           {report['user_id'] or 'unreadable'}")
    print(f"persona        {report['persona'] or 'none declared'}")
    if report["conversations"] is None:
        print("conversations  unreadable")
    else:
        print(f"conversations  {report['conversations']} ({report['rated_answers']} rated answers)")
    consent = report["consent"]
    print(
        f"consent        {'unreadable' if consent is None else Consent.from_dict(consent).describe()}"
    )
    print(
        "privacy        "
        + _spend_line(
            privacy["epsilon_spent"],
            privacy["delta"],
            privacy["ledger_entries"],
            privacy["recorded_epsilon"],
            privacy["recorded_entries"],
            privacy["budget"],
            "ledger entries; the unit: one conversation",
        )
    )
    print(
        "user-level     "
        + _spend_line(
            privacy["user_level_epsilon_spent"],
            privacy["user_level_delta"],
            privacy["user_level_ledger_entries"],
            privacy["user_level_recorded_epsilon"],
            privacy["user_level_recorded_entries"],
            privacy["budget"],
            "rounds under user-level DP; the unit: the whole user",
        )
    )
    print(
        "adapters       "
        + (
            "none received yet"
            if adapters is None
            else f"{', '.join(adapters['names'])} (run {adapters['run_id'][:8]}, round {adapters['server_round']})"
        )
    )
    print(f"user embedding {'trained' if report['user_embedding'] else 'none'}")
    return 2 if tampered else 0


def cmd_repair(args: argparse.Namespace) -> int:
    from clients.device import LEDGERS

    device = _open_for_repair(args)
    problems = device.integrity()
    if not problems and args.anchor is None:
        print(
            f"store {device.directory} is intact (generation {device.store.generation}); nothing to repair"
        )
        return 0
    for problem in problems:
        print(f"found: {problem.message}")
        if problem.item in LEDGERS:
            recorded = device.recorded_spend(problem.item)
            print(
                f"  will restore item {problem.item!r} "
                + (
                    "(impossible: the store records no spend for it)"
                    if recorded is None
                    else f"at the highest spend the store records: epsilon {recorded.epsilon:.3f} of "
                    f"{recorded.count} entries"
                )
            )
        elif problem.item is None and problem.kind == "rolled-back":
            print("  will take the ledgers' newer record from the anchor and withdraw consent")
        elif problem.item is None:
            print(f"  will write the anchor again at {args.anchor or problem.path}")
        else:
            print(f"  will drop item {problem.item!r}")
    if args.anchor is not None:
        print(f"will keep the store's anchor at {args.anchor}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("repair changes the store: confirm with --yes")
        if input("repair the store? [y/N] ").strip().lower() != "y":
            print("nothing changed")
            return 1
    for action in device.repair():
        print(action)
    anchor = args.anchor if args.anchor is not None else device.store.anchor
    if anchor is not None and (
        args.anchor is not None or any(p.kind == "anchor" for p in problems)
    ):
        device.store.set_anchor(anchor)
        print(f"the store's anchor is kept at {Path(anchor).expanduser().resolve()}")
    remaining = device.integrity()
    for problem in remaining:
        print(f"still: {problem.message}")
    return 2 if remaining else 0


def cmd_consent(args: argparse.Namespace) -> int:
    device = _open(args)
    current = device.consent()
    opted_in = current.opted_in if args.opt_in is None else args.opt_in
    consent = Consent(
        opted_in=opted_in, budget=current.budget if args.budget is None else args.budget
    )
    device.set_consent(consent)
    spent, user_level = _spent(device.ledger()), _spent(device.user_level_ledger())
    print(
        f"consent: {consent.describe()}; epsilon spent so far {spent:.3f} (user-level {user_level:.3f})"
    )
    if consent.opted_in and max(spent, user_level) >= consent.budget:
        print("note: the budget is already spent, so this device will refuse to train")
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    from clients.consent import check_participation
    from clients.join import SUPEREXEC_POLL_SECONDS, JoinConfig, run_supernode, supernode_command
    from fedpers.processes import child_env

    join = JoinConfig(
        args.superlink,
        args.root_certificates,
        args.auth_key,
        args.insecure,
        args.runtime_port,
        args.max_retries,
        args.max_wait_time,
        args.max_retry_delay,
    )
    key = _key(args)
    device = _open(args, key)
    check_participation(device.user_id, device.consent(), _spent(device.ledger()))
    if not device.conversations():
        raise ValueError(
            f"{device.directory}: no conversations to train on (fedpers-client import FILE.jsonl)"
        )
    command = supernode_command(join, device.directory, device.user_id)
    if args.print_command:
        print(" ".join(command))
        return 0
    if "key_file" in key:
        env = child_env({KEY_FILE_ENV: str(key["key_file"])}, drop=[PASSPHRASE_ENV])
    else:
        env = child_env({PASSPHRASE_ENV: key["passphrase"]}, drop=[KEY_FILE_ENV])
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", SUPEREXEC_POLL_SECONDS)
    print(
        f"user {device.user_id} joins the federation at {args.superlink} (Ctrl+C to leave)",
        flush=True,
    )
    return run_supernode(command, env, None if args.no_worker else device.directory, os.getpid())


def cmd_chat(args: argparse.Namespace) -> int:
    from clients.chat import chat, record_rating

    device = _open(args)
    reply = chat(
        device,
        args.prompt,
        args.max_new_tokens,
        use_embedding=not args.no_embedding,
        version=args.version,
    )
    print(
        f"adapter: {reply.persona} ({reply.reason}){' + your user embedding' if reply.with_embedding else ''}"
    )
    print(f"answer: {reply.answer}")
    rating = args.rating
    if rating is None and sys.stdin.isatty():
        raw = input("rate this answer 1-5 (Enter to skip): ").strip()
        rating = int(raw) if raw else None
    if rating is not None:
        record_rating(device, reply, rating)
        print(f"rating {rating} kept in the store")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    device = _open(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("forget deletes this user's data: confirm with --yes")
        if (
            input(f"delete all data of user {device.user_id} except the privacy ledgers? [y/N] ")
            .strip()
            .lower()
            != "y"
        ):
            print("nothing deleted")
            return 1
    deleted = device.forget()
    print(
        f"deleted {len(deleted)} item(s): {', '.join(deleted) or 'none'}; kept: the privacy ledgers"
    )
    print("consent is withdrawn with the data; this device no longer trains")
    return 0


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedpers-client",
        description="The on-device side of fedpers: keep one user's conversations in an encrypted store, take part "
        "in federated training (Flower SuperNode with TLS and node authentication) within the user's consented "
        "privacy budget, and answer with the persona adapters received.",
        epilog=f"The store is unlocked with --key-file (or ${KEY_FILE_ENV}) or a passphrase (${PASSPHRASE_ENV}, "
        "else asked for). The key never leaves the device and never enters the run configuration.",
    )
    parser.add_argument(
        "--store",
        metavar="DIR",
        help=f"the encrypted store (default: ${STORE_ENV} or {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        type=Path,
        help="unlock with this key file (32 random bytes) instead of a passphrase",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="create the encrypted store for one user",
        description="Create an empty encrypted store for USER_ID (with --key-file: a new key file is "
        "created if FILE does not exist). Consent is not given until `consent --opt-in`.",
    )
    p.add_argument(
        "--user-id",
        required=True,
        help="the user this device serves (the user_id of their conversations)",
    )
    p.add_argument(
        "--persona",
        help="the persona the user declares (default: from the data, or inferred privately)",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "import",
        help="add conversations from a JSONL file (all or nothing)",
        description="Validate FILE strictly (the conversation JSONL format, docs/data-format.md) and add "
        "its conversations to the store. Any problem (printed as FILE:LINE: FIELD: MESSAGE), a "
        "conversation of another user or one already held: nothing is stored.",
    )
    p.add_argument(
        "file",
        type=Path,
        metavar="FILE.jsonl",
        help="conversations of this store's user, one JSON object a line",
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "status",
        help="what the store holds: conversations, persona, epsilon spent, consent",
        description="Conversations held, declared persona, consent, epsilon spent against the consented "
        "budget (record-level: from the privacy ledger; user-level: from the user-level ledger of the "
        "rounds under user-level DP), and the adapters received. A damaged or rolled-back store is "
        "reported as tampered (exit status 2), with the spend its manifest records.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "repair",
        help="after tampering (a ledger deleted or rolled back): restore the recorded spend",
        description="Check every file of the store against its authenticated manifest and say what is "
        "damaged. With --yes: rebuild a damaged privacy ledger at the highest spend the store records "
        "(never lower, never zero), drop other damaged items, and after a rollback of the whole store "
        "(detected against its anchor) take the ledgers' newer record from the anchor and withdraw consent. "
        "The device refuses to train or upload until the store is repaired.",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--anchor",
        type=Path,
        metavar="FILE",
        help="keep a copy of the store's manifest at FILE, outside the store directory (e.g. in "
        "~/.config/fedpers/): every later open detects a rollback of the whole store against it",
    )
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser(
        "consent",
        help="opt in or out of federated training, set the epsilon budget",
        description="Record the user's decision. The device trains only when opted in, and refuses any "
        "training that would take its privacy ledgers (record-level and user-level) past the budget (epsilon, all "
        "runs together).",
    )
    choice = p.add_mutually_exclusive_group()
    choice.add_argument(
        "--opt-in",
        dest="opt_in",
        action="store_true",
        default=None,
        help="take part in federated training",
    )
    choice.add_argument(
        "--opt-out",
        dest="opt_in",
        action="store_false",
        help="stop taking part (nothing is trained or sent)",
    )
    p.add_argument(
        "--budget",
        type=_positive_float,
        metavar="EPS",
        help=f"the largest total epsilon the user accepts (default: {DEFAULT_BUDGET:g})",
    )
    p.set_defaults(func=cmd_consent)

    p = sub.add_parser(
        "join",
        help="take part in federated training: run a Flower SuperNode for this store",
        description="Run flower-supernode against the SuperLink at HOST:PORT over TLS, authenticated with "
        "this device's node key (the server must have registered NODE.pub). The ClientApp reads this "
        "store; the store's key reaches it through the environment only. Runs until stopped (Ctrl+C).",
    )
    p.add_argument(
        "--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address"
    )
    p.add_argument(
        "--root-certificates",
        type=Path,
        metavar="CA.crt",
        help="CA certificate that signed the SuperLink's certificate",
    )
    p.add_argument(
        "--auth-key",
        type=Path,
        metavar="NODE.key",
        help="this node's private key (OpenSSH format, ECDSA)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no node authentication: local tests only",
    )
    p.add_argument(
        "--runtime-port",
        type=int,
        default=0,
        help="local port of the SuperNode's Runtime API (default: a free one)",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        help="give up after this many failed connection attempts (default: no limit; see --max-wait-time)",
    )
    p.add_argument(
        "--max-wait-time",
        type=float,
        metavar="SECONDS",
        help="give up once the SuperLink has been unreachable this long; the SuperNode, its app processes "
        "and the worker then stop (default: 900)",
    )
    p.add_argument(
        "--max-retry-delay",
        type=float,
        metavar="SECONDS",
        help="longest wait between two tries to reach the SuperLink (exponential backoff; default: 20)",
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the flower-supernode command instead of running it",
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="no worker process keeping the model loaded: each training message loads it again",
    )
    p.set_defaults(func=cmd_join)

    p = sub.add_parser(
        "chat",
        help="answer a prompt with the routed persona adapter and your user embedding",
        description="Route PROMPT to the persona adapter received from the server (the declared persona, "
        "else the one the learned router of --version picks, or the adapter with the lowest loss on the prompt), answer with it and the user embedding "
        "trained on this device, and keep your rating (1-5) as feedback in the store.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the message to answer")
    p.add_argument(
        "--rating",
        type=int,
        choices=range(1, 6),
        metavar="1-5",
        help="rate the answer without being asked",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="longest answer in tokens (default: %(default)s)",
    )
    p.add_argument("--no-embedding", action="store_true", help="answer without the user embedding")
    p.add_argument(
        "--version",
        type=Path,
        metavar="DIR",
        help="a persona registry version (or run directory): when it holds a learned router (router/), that "
        "router picks the adapter (default: the adapter with the lowest loss on the prompt)",
    )
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "forget",
        help="delete the user's data, embedding and adapters; keep only the privacy ledgers",
        description="Delete every item of the store except the privacy ledgers, record-level and "
        "user-level (which must keep counting what was spent). Consent goes with the data.",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_forget)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParticipationRefused as err:
        print(f"fedpers-client: error: {err.detail}", file=sys.stderr)
        return 2
    except (DataValidationError, StoreError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"fedpers-client: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
