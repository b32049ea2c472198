"""``fedpers audit RUN_DIR`` (write the signed report) and ``fedpers audit verify RUN_DIR`` (check it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the attack's module loads the model stack; the command's help should not
    from fedpers.audit.attack import AttackConfig

DESCRIPTION = """Privacy audit report of a run directory: audit.html (self-contained, open it in a browser),
audit.json (the same facts; schema in docs/audit-schema.json), optionally audit.pdf, all signed
with Ed25519 in audit.sig.json. `fedpers simulate` writes it at the end of every run.

  fedpers audit RUN_DIR                  (re)write the report
  fedpers audit RUN_DIR --attack         also run the canary attack (two more simulations)
  fedpers audit verify RUN_DIR           check the signature and that no covered file changed"""


AttackRunner = Callable[[Path, "AttackConfig"], object]
"""``attack(run_dir, settings)``: run the canary attack against the run's settings, writing
``RUN_DIR/attack/attack.json`` (:func:`simulations.attack.attack_run_dir`)."""


def register(sub: argparse._SubParsersAction, attack: AttackRunner | None = None) -> None:
    """``fedpers audit``; with ``attack`` it also offers ``--attack`` (which runs simulations)."""
    description = (
        DESCRIPTION
        if attack is not None
        else "\n".join(line for line in DESCRIPTION.splitlines() if "--attack" not in line)
    )
    p = sub.add_parser(
        "audit",
        help="write or verify the privacy audit report of a run",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target", nargs="+", metavar="RUN_DIR", help="the run directory, or 'verify RUN_DIR'"
    )
    if attack is not None:
        p.add_argument(
            "--attack",
            action="store_true",
            help="run the canary attack first (DP as the run had it, and DP off)",
        )
        p.add_argument(
            "--canaries",
            type=int,
            default=40,
            help="canaries for the attack (each inserted with probability 1/2)",
        )
        p.add_argument(
            "--repeats",
            type=int,
            default=24,
            help="copies of each inserted canary (the bound is then compared to the group epsilon of that many records)",
        )
        p.add_argument(
            "--candidates",
            type=int,
            default=32,
            help="random secrets per canary for its score and exposure",
        )
        p.add_argument(
            "--seed",
            type=int,
            help="canary seed (default: fresh randomness, recorded in the report)",
        )
    p.set_defaults(attack_runner=attack)
    p.add_argument("--pdf", action="store_true", help="also print audit.pdf (needs Chromium)")
    p.add_argument(
        "--screenshot", type=Path, help="also save a PNG of the page as Chromium renders it"
    )
    p.add_argument(
        "--key",
        type=Path,
        help="Ed25519 signing key (default: $FEDPERS_AUDIT_KEY or ~/.config/fedpers/audit-signing-key.pem)",
    )
    p.add_argument(
        "--public-key",
        help="verify: the signer's public key (hex) to trust; default: report who signed",
    )
    p.set_defaults(func=run)


def _verify(run_dir: Path, public_key: str | None) -> int:
    from fedpers.audit.signing import verify

    result = verify(run_dir, bytes.fromhex(public_key) if public_key else None)
    if result.ok:
        print(
            f"{run_dir}: signature valid; signed by Ed25519 key {result.signer}; no covered file changed"
        )
        return 0
    for problem in result.problems:
        print(f"fedpers audit verify: {problem}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    if args.target[0] == "verify":
        if len(args.target) != 2:
            raise ValueError("usage: fedpers audit verify RUN_DIR")
        return _verify(Path(args.target[1]), args.public_key)
    if len(args.target) != 1:
        raise ValueError("usage: fedpers audit RUN_DIR (or: fedpers audit verify RUN_DIR)")
    from fedpers.audit.html import screenshot
    from fedpers.audit.report import AUDIT_HTML, write_audit

    run_dir = Path(args.target[0])
    if getattr(args, "attack", False):
        from fedpers.audit.attack import AttackConfig

        args.attack_runner(
            run_dir,
            AttackConfig(
                canaries=args.canaries,
                candidates=args.candidates,
                repeats=args.repeats,
                seed=args.seed,
            ),
        )
    audit = write_audit(run_dir, pdf=args.pdf, key_path=args.key)
    if args.screenshot:
        screenshot(run_dir / AUDIT_HTML, args.screenshot)
    for finding in audit["findings"]:
        print(f"[{finding['level']}] {finding['text']}")
    print(f"report: {run_dir / AUDIT_HTML} (and audit.json, audit.sig.json)")
    return 0
