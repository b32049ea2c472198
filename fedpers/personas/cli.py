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
        description="Route PROMPT to a persona adapter of RUN_DIR and answer with it. With --router centroid "
        "(the default when RUN_DIR/router/ holds a saved router) the prompt is embedded once (all-MiniLM-L6-v2, "
        "offline) and compared with per-persona centroids learned from private statistics; below the router's "
        "confidence threshold the global adapter answers. With --router loss the prompt is scored under each "
        "persona adapter (mean loss of its tokens, one forward pass per adapter; lower is better). A declared "
        "--persona wins; the global adapter answers when no persona adapter exists.",
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="run directory with run.json and adapters/"
    )
    p.add_argument("prompt", metavar="PROMPT", help="the user's message")
    p.add_argument("--persona", help="declared persona: use its adapter instead of inferring one")
    p.add_argument(
        "--router",
        choices=("centroid", "loss"),
        help="how to infer the persona: 'centroid' (learned router saved in RUN_DIR/router/) or 'loss' "
        "(score under every adapter) (default: centroid when RUN_DIR/router/ exists, else loss)",
    )
    p.add_argument(
        "--context",
        action="append",
        metavar="KEY=VALUE",
        help="what the device knows, for the centroid router: device=..., location=..., hour=H or time=HH:MM "
        "(repeatable)",
    )
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
    from fedpers.personas.centroid import has_router
    from fedpers.personas.context import parse_context
    from fedpers.progress import Progress
    from fedpers.rundir import RUN_CONFIG, load_adapters, read_json

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    config = read_json(args.run_dir / RUN_CONFIG)
    missing = [k for k in ("model", "lora", "personas") if k not in config]
    if missing:
        raise ValueError(f"{args.run_dir / RUN_CONFIG}: missing {missing}")
    personas = list(config["personas"])
    kind = args.router or ("centroid" if has_router(args.run_dir) else "loss")
    context = parse_context(args.context)
    if args.context and kind != "centroid":
        raise ValueError("--context is read by the centroid router only (--router centroid)")
    # on standard error: standard output keeps the result alone (one JSON object with --json)
    progress = Progress(prefix="route · ")
    name = args.model or config["model"]
    adapters = load_adapters(args.run_dir)
    model = tokenizer = None
    if kind == "loss" or not args.no_answer:
        from fedpers.models import PersonalizedLM, attach_lora, load_base_model
        from fedpers.rundir import lora_settings

        with progress.stage(f"loading {name} and the run's adapters") as stage:
            base, tokenizer = load_base_model(name)
            model = PersonalizedLM(attach_lora(base, lora_settings(config)))
            stage.summary = f"{len(adapters)} adapters"
    if kind == "centroid":
        from fedpers.personas.centroid import CentroidScorer, load_router
        from fedpers.personas.encoder import default_encoder
        from fedpers.personas.routing import Router

        with progress.stage("routing the prompt with the centroid router") as stage:
            saved = load_router(args.run_dir)
            unknown = sorted(set(saved.personas) - set(personas))
            if unknown:
                raise ValueError(
                    f"{args.run_dir}/router: personas {unknown} are not the run's {personas}"
                )
            available = [p for p in saved.trained if p in adapters]
            router = Router(
                CentroidScorer(saved, default_encoder(), context),
                personas,
                fallback=GLOBAL,
                available=available,
                score_declared=True,
            )
            decision = router.route(args.prompt, args.persona)
            stage.summary = f"{decision.persona} ({decision.source})"
    else:
        from fedpers.personas.routing import LossScorer, Router

        assert model is not None and tokenizer is not None
        scored = {p: adapters[p] for p in personas if p in adapters}
        with progress.stage(f"scoring the prompt under {len(scored)} persona adapters") as stage:
            router = Router(
                LossScorer(model, tokenizer, scored, args.max_length, progress=stage),
                personas,
                fallback=GLOBAL,
                available=adapters,
                score_declared=True,
            )
            decision = router.route(args.prompt, args.persona)
            stage.summary = f"{decision.persona} ({decision.source})"
    answer = None
    if not args.no_answer:
        from fedpers.models import load_adapter_arrays
        from fedpers.personas.answer import generate_answer

        assert model is not None and tokenizer is not None
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
                    "router": kind,
                    "confidence": decision.confidence,
                    "scores": scores,
                    "answer": answer,
                },
                indent=1,
            )
        )
        return 0
    header = "score (loss)" if kind == "loss" else "probability"
    print(f"{'persona':<24}{header:>14}")
    for name in personas:
        score = decision.scores.get(name)
        if kind == "centroid" and score is not None:
            score = math.exp(-score)
        mark = "  <-" if name == decision.persona else ""
        print(
            f"  {name:<22}{'no adapter' if name not in adapters else '-' if score is None else f'{score:.4f}':>14}{mark}"
        )
    print(f"adapter: {decision.persona} ({decision.reason})")
    if answer is not None:
        print(f"answer: {answer}")
    return 0
