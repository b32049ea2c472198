"""Benchmark: the canary attack's power on the default scenario (DP as set, and DP off), and its scoring cost.

One ``run_attack`` on the default scenario's settings (SmolLM2-135M, 15 users, 3 rounds): both
simulations, then every canary scored on the released adapters. The scoring cost is also measured
the old way on a few canaries (every candidate's whole sequence through the model) against the
prefix-reusing scorer, on the same secret sets. With ``--write`` the section goes into BENCHMARKS.md.

    python -m simulations.bench_attack --write
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from fedpers.audit.attack import AttackConfig, CanaryScorer, read_attack
from fedpers.audit.canaries import make_canaries
from fedpers.audit.scoring import full_secret_losses, secret_losses
from fedpers.federated import FederatedConfig, load_config_file
from simulations.bench_dp_step import print_section
from simulations.simulate import SCENARIOS

MARK = "attack"


def scoring_cost(config: FederatedConfig, attack: AttackConfig, sample: int) -> dict:
    """CPU seconds per canary (true secret and its candidates, base model) scored whole vs with the prefix reused.

    CPU time (all threads) rather than wall time: the machine is shared, and the two ways alternate canary by canary."""
    from fedpers.userdata import conversations

    personas = {c.user_id: c.persona for c in conversations(config) if c.persona}
    canaries = make_canaries(personas, sample, attack.seed or 0)
    scorer = CanaryScorer(
        config,
        canaries,
        AttackConfig(
            canaries=sample, candidates=attack.candidates, seed=attack.seed, progress=False
        ),
    )
    tokenizer_pad = scorer.tokenizer.pad_token_id
    out = {"whole": 0.0, "prefix": 0.0}
    ways = {
        "whole": lambda s: full_secret_losses(scorer.model, s, tokenizer_pad),
        "prefix": lambda s: secret_losses(scorer.model, s, attack.batch_size),
    }
    with scorer.model.lm.disable_adapter():
        for s in scorer.sets:
            for name, way in ways.items():
                start = time.process_time()
                way(s)
                out[name] += (time.process_time() - start) / sample
    s = scorer.sets[0]
    out["tokens_whole"] = len(s.prefix) + len(s.continuations[0])
    out["tokens_scored"] = len(s.continuations[0])
    return out


def lines_for(config: FederatedConfig, attack: AttackConfig, result: dict, cost: dict) -> list[str]:
    runs = result["runs"]
    names = [n for n in ("dp", "no-dp") if n in runs]
    label = {"dp": f"DP as set (epsilon {config.privacy.epsilon:g})", "no-dp": "DP off"}

    def row(title: str, cell) -> str:
        return f"| {title} | " + " | ".join(cell(runs[n]) for n in names) + " |"

    def theory(run: dict) -> str:
        if run["theoretical_epsilon"] is None:
            return "none (no DP)"
        return f"{run['theoretical_epsilon']:.2f} (group of {attack.repeats}); {run['record_epsilon']:.2f} per conversation"

    return [
        "## Canary attack power",
        "",
        "`python -m simulations.bench_attack --write` — the audit's canary attack (`fedpers audit RUN_DIR --attack`) on the "
        f"default scenario's settings (SmolLM2-135M-Instruct, {config.dataset.users_per_persona * len(config.persona_names)} users, "
        f"{config.server.rounds} rounds), on this machine ({platform.machine()}, 2 cores shared with other jobs, so wall times are "
        f"upper figures). {attack.canaries} canaries with {result['secret_digits']}-digit secrets, {result['inserted']} inserted "
        f"(fair coins, seed {attack.seed}), each inserted canary added {attack.repeats} times to its user's data; {attack.candidates} random candidate "
        "secrets per canary. Score: the secret tokens' loss drop (base model minus released persona adapter) against the "
        "candidates', in standard deviations. Lower bound: Steinke, Nasr and Jagielski's one-run audit, 95 % confidence.",
        "",
        "| | " + " | ".join(label[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
        row("membership AUC", lambda r: f"{r['auc']:.3f}"),
        row(
            "epsilon lower bound",
            lambda r: (
                f"{r['lower_bound']['epsilon']:.2f} "
                f"({r['lower_bound']['best']['correct']} of {r['lower_bound']['best']['guesses']} guesses right)"
            ),
        ),
        row(
            "exposure inserted, mean / max (bits)",
            lambda r: f"{r['exposure']['inserted_mean']:.1f} / {r['exposure']['inserted_max']:.1f}",
        ),
        row(
            "exposure never inserted, mean (bits)",
            lambda r: f"{r['exposure']['held_back_mean']:.1f}",
        ),
        row("theoretical epsilon", theory),
        row("training wall time (s)", lambda r: f"{r['seconds']['training']:.0f}"),
        row("scoring wall time (s)", lambda r: f"{r['seconds']['scoring']:.0f}"),
        "",
        f"The base model's losses are computed once for both runs ({result['base_scoring_seconds']:.0f} s). Scoring cost per "
        f"canary (true secret and {attack.candidates} candidates, base model, mean of {cost['sample']}, CPU seconds): every "
        f"whole sequence through the model ({cost['tokens_whole']} tokens each) {cost['whole']:.2f} s; prefix computed once "
        f"and only the {cost['tokens_scored']} tokens from the secret on {cost['prefix']:.2f} s "
        f"({cost['whole'] / cost['prefix']:.1f}x).",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    from simulations.attack import run_attack

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run-dir", type=Path, default=Path("runs/bench-attack"), help="where the attack's runs go"
    )
    p.add_argument("--canaries", type=int, default=AttackConfig.canaries)
    p.add_argument("--repeats", type=int, default=AttackConfig.repeats)
    p.add_argument("--candidates", type=int, default=AttackConfig.candidates)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument(
        "--cost-sample", type=int, default=5, help="canaries timed whole vs prefix-reusing"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take the attack's results from RUN_DIR/attack/attack.json (measure the cost only)",
    )
    p.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = p.parse_args(argv)
    run_dir = args.run_dir.resolve()
    values = load_config_file(SCENARIOS / "default.toml")
    config = FederatedConfig.from_flat(
        values | {"state_dir": str(run_dir / "client-state")}
    ).validated()
    attack = AttackConfig(
        canaries=args.canaries, repeats=args.repeats, candidates=args.candidates, seed=args.seed
    )
    previous = read_attack(run_dir) if args.reuse else None
    if previous is not None:
        attack = AttackConfig(**previous["settings"])
    result = previous or run_attack(config, run_dir, attack)
    cost = scoring_cost(config, attack, args.cost_sample) | {
        "sample": args.cost_sample
    }  # after: the runs matter more
    print_section(lines_for(config, attack, result, cost), args.write, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
