"""Benchmark: the most any layered weight takes a persona adapter past the global one (a ceiling, not a method).

Scored on the devices' own held-out conversations: the experimenter's ceiling for ``persona_mix``, not a way to
choose it.

Each scenario (tinyshakespeare's inferred voices and the genre import's declared genres, DP on and off) runs as
``bench_scenarios`` runs it, but with ``persona_mix = 1``: the persona adapters are published as trained,
``theta_p``, next to the global adapter ``theta_g``. Every user's held-out conversations are then scored as the
evaluator scores them (:mod:`simulations.evaluator`: token-weighted, users grouped by the persona their device
trained) under the layered adapter (:mod:`fedpers.personas.layered`)::

    L_p(w) = loss of persona p's users' held-out conversations under theta_g + w (theta_p - theta_g),
    w in MIX_GRID = {0, 0.25, 0.5, 0.75, 1}

``L_p(0)`` is the global adapter's row, ``L_p(1)`` the persona adapter as trained. A persona's ceiling is
``min_w L_p(w) - L_p(0)``: the weights are chosen here on the very conversations that score them, so no weight
chosen on any other data — the public held-out conversations (``persona_mix = "auto"``), or the devices' own
under a private release — can beat the global adapter by more on them. The weight ``auto`` would choose, scored
on the public held-out conversations of the same run's adapters, is shown beside it.

    python -m simulations.bench_layers --write
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from fedpers.adapters import GLOBAL
from fedpers.federated import FederatedConfig
from fedpers.personas.layered import MIX_GRID, MixChoice, choose_weights, mixed
from simulations.bench_dp_step import print_section
from simulations.bench_scenarios import add_run_arguments, run_or_reuse, scenario

MARK = "layers"
PLAN = {
    "shakespeare": "tinyshakespeare, 3 inferred voices, DP on (epsilon 8)",
    "shakespeare-nodp": "tinyshakespeare, 3 inferred voices, DP off",
    "genres": "genre import, 3 declared genres, DP on (epsilon 8)",
    "genres-nodp": "genre import, 3 declared genres, DP off",
}


def weight_sweep(
    config: FederatedConfig, adapters: dict, run_id: str, grid=MIX_GRID
) -> tuple[dict[str, dict[float, float]], dict[str, int]]:
    """``L_p(w)`` for every trained persona with at least ``min_clients`` users holding held-out conversations
    (the evaluator's gate) and ``w`` in ``grid`` (see the module docstring), and each such persona's user count;
    ``adapters`` are the run's published ones (``persona_mix = 1``: as trained)."""
    from clients.state import UserState
    from fedpers.models.environment import model_environment
    from fedpers.userdata import attach_trunk, user_data, user_ids
    from simulations.evaluator import SimulationEvaluator

    env = model_environment(config)
    users = user_ids(config)
    evaluator = SimulationEvaluator(config, users)
    trained = set(adapters) - {GLOBAL}
    sums: dict[str, dict[float, list[float]]] = {}
    counts: dict[str, int] = {}
    for user in users:
        state = UserState(config.outputs.state_dir, user)
        data = attach_trunk(user_data(config, user, env), env, state)
        if not data.heldout:
            continue
        persona = evaluator.persona(user, data.declared_persona, trained, run_id)
        if persona == GLOBAL:
            continue
        counts[persona] = counts.get(persona, 0) + 1
        row = sums.setdefault(persona, {})
        for w in grid:  # scored as the evaluator scores an adapter
            loss_sum, tokens = evaluator._losses(
                env, mixed(adapters[GLOBAL], adapters[persona], w), data.heldout
            )
            total = row.setdefault(float(w), [0.0, 0.0])
            total[0] += loss_sum
            total[1] += tokens
    gate = config.server.min_clients  # the outputs show no persona below the gate
    losses = {
        p: {w: s / max(t, 1.0) for w, (s, t) in row.items()}
        for p, row in sums.items()
        if counts[p] >= gate
    }
    return losses, {p: counts[p] for p in losses}


def public_choice(config: FederatedConfig, adapters: dict, personas) -> dict[str, MixChoice]:
    """What ``persona_mix = "auto"`` would publish for these adapters: each persona's weight scored on the public
    held-out conversations (grouped as the server groups them)."""
    from fedpers.models.environment import model_environment
    from fedpers.warmstart import public_heldout_examples

    env = model_environment(config)
    groups = None
    if config.prompt_choice:
        from fedpers.personas.router_public import public_persona_discovery

        groups = public_persona_discovery(config).public_groups
    heldout = public_heldout_examples(config, env, groups)
    return choose_weights(env, adapters, personas, "auto", heldout)


def table(
    losses: dict[str, dict[float, float]],
    counts: dict[str, int],
    public: dict[str, MixChoice],
) -> list[str]:
    """One row per persona: users, ``L_p(w)`` for every weight, the best weight and its margin over global, and
    ``auto``'s weight with its margin; the last line counts the personas any weight takes past global."""
    grid = sorted(next(iter(losses.values())))
    head = f"{'persona':<12}{'users':>6}" + "".join(f"{'w=' + format(w, 'g'):>9}" for w in grid)
    head += f"{'best w':>8}{'best - global':>15}{'auto w':>8}{'auto - global':>15}"
    lines = [head, "-" * len(head)]
    better = 0
    for persona, row in losses.items():
        best = min(grid, key=lambda w: (row[w], w))
        margin = row[best] - row[0.0]
        better += margin < 0
        auto = public[persona].weight if persona in public else None
        auto_text = (
            f"{auto:>8g}{row[auto] - row[0.0]:>+15.4f}" if auto in row else f"{'—':>8}{'—':>15}"
        )
        lines.append(
            f"{persona:<12}{counts[persona]:>6}"
            + "".join(f"{row[w]:>9.4f}" for w in grid)
            + f"{best:>8g}{margin:>+15.4f}"
            + auto_text
        )
    lines.append(
        f"some weight takes the persona adapter below the global one for {better} of {len(losses)} personas"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, Path("runs/bench-layers"), ", ".join(PLAN))
    args = p.parse_args(argv)
    from fedpers.rundir import load_adapters

    chosen = args.only.split(",") if args.only else list(PLAN)
    unknown = [n for n in chosen if n not in PLAN]
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(PLAN)}")
    lines = [
        "## Layered personas: the best any weight can do on the devices' own held-out conversations",
        "",
        "`python -m simulations.bench_layers --write` — each scenario as `bench_scenarios` runs it but with "
        "`persona-mix = 1` (persona adapters published as trained), then every persona's users' held-out loss "
        "under global + w (persona − global) for each weight; the best weight is chosen on the conversations that "
        "score it (a ceiling, not a method). `auto w`: the weight the public held-out conversations choose for the "
        f"same adapters. SmolLM2-135M-Instruct, this machine ({platform.machine()}, 2 cores).",
        "",
    ]
    for name in chosen:
        overrides: dict = {"persona_mix": "1"}
        if name.endswith("-nodp"):
            overrides["dp"] = False
        config, run_dir = scenario(name, args.runs, **overrides)
        metrics, reused = run_or_reuse(name, config, run_dir, args.reuse)
        adapters = load_adapters(run_dir)
        losses, counts = weight_sweep(config, adapters, metrics["run_id"])
        public = public_choice(config, adapters, list(losses)) if config.dataset.public_data else {}
        lines += [f"### {PLAN[name]}", "", "```", *table(losses, counts, public), "```"]
        if reused:
            lines.append(f"(the finished run in `{run_dir.name}/`, reused: same settings)")
        lines.append("")
        print("\n".join(lines[-(len(losses) + 6) :]), flush=True)
    print_section(lines, args.write, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
