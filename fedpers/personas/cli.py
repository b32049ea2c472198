"""``fedpers route``: route a prompt to a run's persona adapter and answer it."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROUTE_HELP = "route a prompt to the best persona adapter of a run and answer it"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``route`` subcommand."""
    p = subparsers.add_parser(
        "route",
        help=ROUTE_HELP,
        description="Score PROMPT under each persona adapter of RUN_DIR (mean loss of the prompt's tokens; "
        "lower is better), pick the lowest (or the declared --persona) and answer with that adapter. "
        "Falls back to the global adapter when no persona adapter exists.",
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="run directory with run.json and adapters/"
    )
    p.add_argument("prompt", metavar="PROMPT", help="the user's message")
    p.add_argument("--persona", help="declared persona: use its adapter instead of inferring one")
    p.add_argument("--model", help="base model option (default: the run's model from run.json)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="longest answer, in tokens (default: %(default)s)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="prompt tokens scored, keeping the latest (default: %(default)s)",
    )
    p.add_argument("--no-answer", action="store_true", help="route only; do not generate an answer")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run_route)
    return p


def run_route(args: argparse.Namespace) -> int:
    from fedpers.adapters import GLOBAL
    from fedpers.models import PersonalizedLM, attach_lora, load_adapter_arrays, load_base_model
    from fedpers.personas.answer import generate_answer
    from fedpers.personas.routing import LossScorer, Router
    from fedpers.progress import Progress
    from fedpers.rundir import RUN_CONFIG, load_adapters, lora_settings, read_json

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    config = read_json(args.run_dir / RUN_CONFIG)
    missing = [k for k in ("model", "lora", "personas") if k not in config]
    if missing:
        raise ValueError(f"{args.run_dir / RUN_CONFIG}: missing {missing}")
    personas = list(config["personas"])
    # on standard error: standard output keeps the result alone (one JSON object with --json)
    progress = Progress(prefix="route · ")
    name = args.model or config["model"]
    with progress.stage(f"loading {name} and the run's adapters") as stage:
        adapters = load_adapters(args.run_dir)
        base, tokenizer = load_base_model(name)
        model = PersonalizedLM(attach_lora(base, lora_settings(config)))
        stage.summary = f"{len(adapters)} adapters"
    scored = {p: adapters[p] for p in personas if p in adapters}
    with progress.stage(f"scoring the prompt under {len(scored)} persona adapters") as stage:
        scorer = LossScorer(model, tokenizer, scored, args.max_length, progress=stage)
        router = Router(scorer, personas, fallback=GLOBAL, available=adapters, score_declared=True)
        decision = router.route(args.prompt, args.persona)
        stage.summary = f"{decision.persona} ({decision.source})"
    answer = None
    if not args.no_answer:
        if decision.persona not in adapters:
            raise FileNotFoundError(
                f"{args.run_dir}: no '{decision.persona}' adapter to answer with"
            )
        with progress.stage(f"answering with the {decision.persona} adapter"):
            load_adapter_arrays(model.lm, adapters[decision.persona])
            answer = generate_answer(model, tokenizer, args.prompt, args.max_new_tokens)
    if args.json:
        scores = {k: v if math.isfinite(v) else None for k, v in decision.scores.items()}
        print(
            json.dumps(
                {
                    "persona": decision.persona,
                    "source": decision.source,
                    "reason": decision.reason,
                    "scores": scores,
                    "answer": answer,
                },
                indent=1,
            )
        )
        return 0
    print(f"{'persona':<24}{'score (loss)':>14}")
    for name in personas:
        score = decision.scores.get(name)
        mark = "  <-" if name == decision.persona else ""
        print(
            f"  {name:<22}{'no adapter' if name not in adapters else '-' if score is None else f'{score:.4f}':>14}{mark}"
        )
    print(f"adapter: {decision.persona} ({decision.reason})")
    if answer is not None:
        print(f"answer: {answer}")
    return 0
