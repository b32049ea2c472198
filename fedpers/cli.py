"""The library's commands of ``fedpers``: ``train-local``, ``route``, ``audit``, ``certs`` and ``data``.

The ``fedpers`` executable is :func:`simulations.cli.main`, which adds the commands that run
experiments (``simulate``, the audit's canary attack): the library imports no simulation code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedpers.audit.cli import AttackRunner

os.environ.setdefault(
    "HF_HUB_OFFLINE", "1"
)  # nothing is downloaded: models ship in wheels or local dirs
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to an option's help unless the help already says it, the default is
    None (the help says what happens then) or the option is an on/off flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action) or text


def _add_train_local(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-local",
        help="train one user's LoRA adapter (DP-SGD) and user embedding on their conversations",
        description="Private local training of one user, as one device does it: held-out perplexity "
        "before and after, and the epsilon spent (Opacus RDP and PRV accountants).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (packaged SmolLM2-135M-Instruct), 'tiny' (test model) or a local Hugging Face model directory",
    )
    p.add_argument(
        "--data", type=Path, help="conversation JSONL (default: the synthetic IT service desk)"
    )
    p.add_argument("--user-id", help="user to train (default: the first user of --persona)")
    p.add_argument(
        "--persona", default="field_worker", help="persona of the synthetic user to pick"
    )
    p.add_argument(
        "--conversations", type=int, default=60, help="synthetic conversations of the user"
    )
    p.add_argument("--seed", type=int, default=0, help="data, split and initialisation seed")
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.25,
        help="share of the user's conversations held out for evaluation",
    )
    p.add_argument(
        "--max-length", type=int, default=128, help="tokens per example (keeps the latest context)"
    )
    p.add_argument("--steps", type=int, default=30, help="DP-SGD steps")
    p.add_argument("--batch-size", type=int, default=8, help="expected Poisson batch size")
    p.add_argument("--lr", type=float, default=2e-2, help="Adam learning rate of the LoRA adapter")
    p.add_argument(
        "--epsilon", type=float, default=8.0, help="target epsilon of the user's whole ledger"
    )
    p.add_argument("--delta", type=float, default=1e-5, help="delta of every epsilon reported")
    p.add_argument(
        "--noise-multiplier",
        type=float,
        help="use this noise multiplier instead of calibrating to --epsilon",
    )
    p.add_argument(
        "--clip",
        type=float,
        help="per-sample clipping norm (default: private estimate at --clip-quantile)",
    )
    p.add_argument(
        "--clip-quantile",
        type=float,
        default=0.5,
        help="the quantile of per-sample gradient norms the private clip estimate targets (without --clip)",
    )
    p.add_argument(
        "--no-dp",
        action="store_true",
        help="train without differential privacy (for comparison only)",
    )
    p.add_argument(
        "--scheme",
        choices=["two_phase", "joint_dp"],
        default="two_phase",
        help="how the user embedding is trained (see fedpers.local)",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=8,
        help="LoRA rank r (with alpha = 2 r)",
    )
    p.add_argument("--lora-layers", type=int, default=6, help="adapt the top N layers (0 = all)")
    p.add_argument(
        "--embedding-tokens", type=int, default=8, help="soft-prompt vectors in the user embedding"
    )
    p.add_argument(
        "--embedding-steps",
        type=int,
        default=30,
        help="user-embedding training steps (see --scheme)",
    )
    p.add_argument(
        "--embedding-lr", type=float, default=3e-2, help="Adam learning rate of the user embedding"
    )
    p.add_argument("--out", type=Path, default=Path("runs/local"), help="output directory")
    p.add_argument(
        "--ledger", type=Path, help="privacy ledger to compose with (default: OUT/USER/ledger.json)"
    )
    p.set_defaults(func=_train_local)


def _train_local(args: argparse.Namespace) -> int:
    from fedpers.data import SyntheticConfig
    from fedpers.local import LocalTrainConfig
    from fedpers.models import LoraSettings
    from fedpers.privacy import DPConfig, TrainConfig
    from fedpers.train_user import LocalRunConfig, run_local

    config = LocalRunConfig(
        model=args.model,
        data=args.data,
        user_id=args.user_id,
        persona=args.persona,
        synthetic=SyntheticConfig(
            users_per_persona=1, conversations_per_user=args.conversations, seed=args.seed
        ),
        heldout_fraction=args.heldout_fraction,
        max_length=args.max_length,
        lora=LoraSettings(
            r=args.lora_rank,
            alpha=2 * args.lora_rank,
            top_layers=args.lora_layers or None,
            init_seed=args.seed,
        ),
        embedding_tokens=args.embedding_tokens,
        train=LocalTrainConfig(
            lora=TrainConfig(
                steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, progress=True
            ),
            dp=DPConfig(
                enabled=not args.no_dp,
                target_epsilon=args.epsilon,
                delta=args.delta,
                noise_multiplier=args.noise_multiplier,
                max_grad_norm=args.clip,
                clip_quantile=args.clip_quantile,
            ),
            embedding=TrainConfig(
                steps=args.embedding_steps,
                batch_size=args.batch_size,
                learning_rate=args.embedding_lr,
                progress=True,
            ),
            scheme=args.scheme,
        ),
        out=args.out,
        ledger=args.ledger,
    )
    report = run_local(config)
    print()
    print(
        f"user {report.user_id} ({report.persona}): {report.train_examples} train / {report.heldout_examples} held-out examples"
    )
    print(f"{'held-out perplexity':<34}{'loss':>8}{'ppl':>10}")
    for label, res in (
        ("base model", report.base),
        ("+ LoRA (DP-SGD)" if report.epsilon else "+ LoRA (no DP)", report.lora),
        ("+ LoRA + user embedding", report.lora_embedding),
    ):
        print(f"  {label:<32}{res.loss:>8.3f}{res.perplexity:>10.2f}")
    if report.epsilon:
        e = report.epsilon
        print(
            f"privacy spent (delta={e['delta']:g}): epsilon RDP {e['rdp']:.2f}, PRV {e['prv']:.2f}  "
            f"[noise multiplier {report.noise_multiplier:.3f}, clipping norm {report.max_grad_norm:.3g}]"
        )
    else:
        print("privacy: no DP (epsilon unbounded)")
    print(f"adapter, user embedding, ledger and metrics in {report.out} ({report.seconds:.0f} s)")
    return 0


Register = Callable[[argparse._SubParsersAction], None]


def build_parser(
    commands: Sequence[Register] = (), attack: AttackRunner | None = None
) -> argparse.ArgumentParser:
    """The ``fedpers`` parser: ``commands`` registered first, then the library's; ``attack`` (if given) lets
    ``fedpers audit --attack`` run the canary attack."""
    parser = argparse.ArgumentParser(
        prog="fedpers",
        description="Federated, privacy-preserving personalization of LLM assistants.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in commands:
        register(sub)
    _add_train_local(sub)
    from fedpers.audit.cli import register as register_audit
    from fedpers.certs import register as register_certs
    from fedpers.data.cli import register as register_data
    from fedpers.personas.cli import register as register_route

    register_route(sub)
    register_audit(sub, attack)
    register_certs(sub)

    data = sub.add_parser("data", help="generate, validate and import conversation data")
    register_data(data.add_subparsers(dest="data_command", required=True))
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command (``parser``: :func:`build_parser`'s by default); bad input exits 2 with one line."""
    args = (parser or build_parser()).parse_args(argv)
    from fedpers.logs import quiet_libraries

    quiet_libraries()
    from fedpers.data import DataValidationError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, DataValidationError) as err:
        print(f"fedpers: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
