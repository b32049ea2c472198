"""``fedpers`` data subcommands: generate, validate, import-shakespeare."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from fedpers.data.folio import PUBLIC_PER_GENRE
from fedpers.data.issues import dropped_lines
from fedpers.data.schema import (
    Conversation,
    DataFileError,
    DataValidationError,
    printable,
    read_jsonl,
    write_jsonl,
)
from fedpers.data.shakespeare import import_shakespeare
from fedpers.data.synthetic import PERSONAS, SyntheticConfig, generate


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data subcommands to an argparse subparsers object; each sets ``func(args) -> int``."""
    gen = subparsers.add_parser(
        "generate",
        help="write the synthetic IT service-desk dataset as conversation JSONL",
        description="Generate synthetic service-desk conversations (five personas, per-user quirks) as JSONL.",
    )
    defaults = SyntheticConfig()
    gen.add_argument(
        "--users-per-persona",
        type=int,
        default=defaults.users_per_persona,
        help=f"users generated for each persona (default {defaults.users_per_persona})",
    )
    gen.add_argument(
        "--conversations-per-user",
        type=int,
        default=defaults.conversations_per_user,
        help=f"conversations per user (default {defaults.conversations_per_user})",
    )
    gen.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"random seed; same seed, same file (default {defaults.seed})",
    )
    gen.add_argument(
        "--personas",
        nargs="+",
        choices=PERSONAS,
        default=list(PERSONAS),
        help="personas to include (default: all five)",
    )
    gen.add_argument(
        "--out", type=Path, required=True, help="output JSONL path (written atomically)"
    )
    gen.set_defaults(func=run_generate)

    val = subparsers.add_parser(
        "validate",
        help="check a conversation JSONL file against the schema",
        description="Validate every line of a conversation JSONL file; prints each problem as "
        "'file:line: field: message' on standard output, and on standard error the lines dropped per "
        "reason and the users declaring each persona.",
    )
    val.add_argument("file", type=Path, help="JSONL file to check")
    val.add_argument(
        "--mode",
        "--on-error",
        dest="mode",
        choices=("strict", "skip"),
        default="strict",
        help="strict: any problem fails the file; skip: report problems and count the valid lines "
        "(exit code is 1 in both modes if any problem is found)",
    )
    val.add_argument(
        "--write-valid",
        type=Path,
        metavar="OUT.jsonl",
        help="write the valid conversations to OUT.jsonl (atomically): with --mode skip those of the "
        "valid lines; with strict only a file without problems is written",
    )
    val.set_defaults(func=run_validate)

    imp = subparsers.add_parser(
        "import-shakespeare",
        help="convert tinyshakespeare into conversation JSONL (one user per speaker)",
        description="Turn tinyshakespeare into conversations: each answer of speaker S to another speaker's speech "
        "is one conversation of user S (user turn: the prompt, assistant turn: S's answer).",
    )
    imp.add_argument(
        "--src",
        type=Path,
        default=None,
        help="tinyshakespeare text file, plain or .gz (default: $FEDPERS_SHAKESPEARE, else the copy "
        "shipped with fedpers)",
    )
    imp.add_argument(
        "--min-speeches",
        type=int,
        default=30,
        help="keep speakers with at least this many answers (default 30)",
    )
    imp.add_argument(
        "--max-users",
        type=int,
        default=None,
        help="keep only the speakers with the most answers (default: all)",
    )
    imp.add_argument(
        "--out", type=Path, required=True, help="output JSONL path (written atomically)"
    )
    imp.add_argument(
        "--genres",
        action="store_true",
        help="declare each speaker's First Folio genre (history, tragedy, comedy) as the persona of its "
        "conversations; speakers of no single play (First Citizen, Servant, Messenger) are left out",
    )
    imp.add_argument(
        "--public-out",
        type=Path,
        default=None,
        help="with --genres: write the --public-per-genre speakers of each genre with the fewest answers "
        "to this JSONL instead of --out (public data for `public-data`, held by no device)",
    )
    imp.add_argument(
        "--public-per-genre",
        type=int,
        default=PUBLIC_PER_GENRE,
        help=f"speakers per genre set aside by --public-out (default {PUBLIC_PER_GENRE})",
    )
    imp.set_defaults(func=run_import_shakespeare)


def run_generate(args: argparse.Namespace) -> int:
    try:
        config = SyntheticConfig(
            users_per_persona=args.users_per_persona,
            conversations_per_user=args.conversations_per_user,
            seed=args.seed,
            personas=tuple(args.personas),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = write_jsonl(args.out, generate(config))
    users = config.users_per_persona * len(config.personas)
    print(f"wrote {n} conversations ({users} users, {len(config.personas)} personas) to {args.out}")
    return 0


def persona_counts(conversations: Iterable[Conversation]) -> str:
    """``users per persona: a 8, b 3; no persona 2``, most users first (a user counts under its first
    conversation's persona)."""
    persona: dict[str, str | None] = {}
    for conv in conversations:
        persona.setdefault(conv.user_id, conv.persona)
    counts = Counter(p for p in persona.values() if p is not None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    text = ", ".join(f"{printable(p)} {n}" for p, n in ranked) or "none"
    unlabelled = sum(1 for p in persona.values() if p is None)
    return f"users per persona: {text}" + (f"; no persona {unlabelled}" if unlabelled else "")


def run_validate(args: argparse.Namespace) -> int:
    try:
        result = read_jsonl(args.file, mode=args.mode)
    except DataFileError as exc:  # missing, a directory, unreadable: exit 2, as for a bad argument
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataValidationError as exc:
        issues, valid = exc.issues, None
    else:
        issues, valid = result.issues, result.conversations
    for issue in issues:
        print(issue)
    if valid is not None:
        print(persona_counts(valid), file=sys.stderr)
    if args.write_valid is not None:
        if valid is None:
            print(
                f"{args.write_valid}: nothing written (strict: the file has problems; "
                "--mode skip writes the valid lines)",
                file=sys.stderr,
            )
        else:
            n = write_jsonl(args.write_valid, valid)
            print(f"wrote {n} valid conversations to {args.write_valid}", file=sys.stderr)
    if issues:
        lines = len({issue.line for issue in issues})
        kept = "" if valid is None else f"; {len(valid)} valid conversations kept"
        print(f"{args.file}: {len(issues)} issue(s) on {lines} line(s){kept}", file=sys.stderr)
        what = "dropped" if valid is not None else "with problems"
        for line in dropped_lines(issues).describe(what):
            print(line, file=sys.stderr)
        return 1
    print(f"{args.file}: OK, {len(valid or [])} conversations")
    return 0


def run_import_shakespeare(args: argparse.Namespace) -> int:
    if args.public_out is not None and not args.genres:
        print("error: --public-out needs --genres", file=sys.stderr)
        return 2
    if args.public_per_genre < 0:
        print(
            f"error: --public-per-genre must be >= 0, got {args.public_per_genre}", file=sys.stderr
        )
        return 2
    try:
        conversations = import_shakespeare(
            args.src, min_speeches=args.min_speeches, max_users=args.max_users
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.genres:
        from fedpers.data.folio import split_public, with_genres

        conversations = with_genres(conversations)
        if args.public_out is not None:
            conversations, shared = split_public(conversations, args.public_per_genre)
            n = write_jsonl(args.public_out, shared)
            speakers = len({c.user_id for c in shared})
            print(
                f"wrote {n} public conversations ({speakers} speakers: {persona_counts(shared)}) "
                f"to {args.public_out}"
            )
    n = write_jsonl(args.out, conversations)
    speakers = len({c.user_id for c in conversations})
    declared = f": {persona_counts(conversations)}" if args.genres else ""
    print(f"wrote {n} conversations ({speakers} speakers{declared}) to {args.out}")
    return 0
