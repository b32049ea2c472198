"""Benchmark: the default, tinyshakespeare and genre scenarios, each with DP on and off, in one run.

Each scenario is a full ``fedpers simulate`` run on its own run directory; the evaluation tables
and per-round wall times go into BENCHMARKS.md (``--write``). ``--reuse`` takes a scenario's finished run from
its run directory instead of running it again, only when the run's recorded settings are the scenario's
(``metrics.json`` ``settings``; where it wrote aside, a data file named by another path counting as the
same when its bytes are, and a setting the run did not record, being newer than the run, at its default), and
says so in the section. A run directory that holds another run is never run into again (its devices' ledgers
would refuse to train): the benchmark stops and names it.

    python -m simulations.bench_scenarios --write
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from fedpers.federated import FederatedConfig, load_config_file
from server.outputs import dp_note, format_table
from simulations.bench_dp_step import print_section
from simulations.simulate import SCENARIOS, simulate

MARK = "scenarios"


def scenario(name: str, run_root: Path, **overrides) -> tuple[FederatedConfig, Path]:
    run_dir = (run_root / name).resolve()
    values = load_config_file(SCENARIOS / f"{name.split('-')[0]}.toml")
    config = FederatedConfig.from_flat(
        values | overrides | {"state_dir": str(run_dir / "client-state")}
    ).validated()
    return config, run_dir


def genre_files(config: FederatedConfig) -> None:
    """The genre scenario's two JSONL files (``data``, ``public_data``), made as its comment says when absent:
    ``fedpers data import-shakespeare --genres --out DATA --public-out PUBLIC``."""
    from fedpers.data import import_shakespeare, write_jsonl
    from fedpers.data.folio import PUBLIC_PER_GENRE, split_public, with_genres

    data, public = Path(config.dataset.data), Path(config.dataset.public_data)
    if data.is_file() and public.is_file():
        return
    held, shared = split_public(with_genres(import_shakespeare()), PUBLIC_PER_GENRE)
    write_jsonl(public, shared)
    write_jsonl(data, held)


def reusable(config: FederatedConfig, run_dir: Path) -> dict | None:
    """The finished run's metrics in ``run_dir`` when they were made with exactly ``config``'s settings."""
    import json

    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    # a setting added after the run was recorded ran at its default
    wanted = config.to_record()
    recorded = FederatedConfig().to_record() | dict(metrics.get("settings", {}))
    for key in ("run_dir", "state_dir"):  # where the run wrote, not what it ran
        wanted.pop(key, None)
        recorded.pop(key, None)
    # a data file named by another path is the same setting when its bytes are
    for key in ("data", "public_data"):
        if key in wanted and _same_file_bytes(recorded.get(key), wanted[key]):
            recorded[key] = wanted[key]
    if recorded != wanted or metrics.get("evaluation") is None:
        return None
    return metrics


def _same_file_bytes(a, b) -> bool:
    """Whether ``a`` and ``b`` name files with the same bytes (``False`` unless both are files)."""
    import hashlib

    if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
        return False
    paths = [Path(a), Path(b)]
    if not all(p.is_file() for p in paths):
        return False
    return len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 1


def round_seconds(record: dict) -> float:
    """Wall time of a round: its training aggregation plus the experimenter's held-out evaluation."""
    return record["train_seconds"] + record.get("eval_evaluate_seconds", 0.0)


def section(label: str, config: FederatedConfig, metrics: dict) -> list[str]:
    from fedpers.models.precision import resolve_bf16

    rounds = metrics["rounds"]
    times = ", ".join(f"{round_seconds(r):.0f}" for r in rounds)
    privacy = f"max per-user epsilon {metrics['max_epsilon']:.2f}" if config.privacy.dp else "no DP"
    precision = (
        "the frozen computation in bfloat16" if resolve_bf16(config.model.bf16) else "float32"
    )
    return [
        f"### {label}",
        "",
        f"{len(rounds)} rounds, {rounds[0]['participants']} clients; per-round wall time (train + evaluate) {times} s; "
        f'whole run {metrics["wall_seconds"]:.0f} s; {privacy}; `bf16 = "{config.model.bf16}"`: {precision}.',
        "",
        "```",
        format_table(metrics["evaluation"], dp_note(config)),
        "```",
        "",
    ]


def kept_share(dp: dict, nodp: dict, column: str = "persona") -> float:
    """Share of the non-private gain the DP run keeps: (base - DP) / (base - non-DP), on the mean row."""
    base = dp["evaluation"]["mean"]["base"]
    private = dp["evaluation"]["mean"][column]
    public = nodp["evaluation"]["mean"][column]
    return (base - private) / (base - public)


def kept_lines(
    config: FederatedConfig, dp: dict, nodp: dict, label: str = "Default scenario"
) -> list[str]:
    """The headline: how much of the non-private gain the persona (and global) adapter keeps with DP on."""
    return [
        f"{label}: the persona adapter keeps **{100 * kept_share(dp, nodp):.0f} %** of the non-private "
        f"gain at epsilon {config.privacy.epsilon:g} (global adapter: {100 * kept_share(dp, nodp, 'global'):.0f} %); "
        "gain = base-model minus adapter held-out loss, DP and non-DP runs above, same users, seeds and settings.",
        "",
    ]


def persona_vs_global(metrics: dict) -> dict[str, float]:
    """Per persona row: persona adapter minus global adapter held-out loss (negative: the persona adapter is better)."""
    rows = metrics["evaluation"]["rows"]
    return {
        p: r["persona"] - r["global"] for p, r in rows.items() if "persona" in r and "global" in r
    }


def persona_vs_global_lines(name: str, metrics: dict) -> list[str]:
    gaps = persona_vs_global(metrics)
    better = sum(g < 0 for g in gaps.values())
    worst = max(gaps.values()) if gaps else float("nan")
    return [
        f"{name}: the persona adapter beats the global adapter on {better} of {len(gaps)} personas; "
        f"largest excess over global {max(worst, 0.0):.3f} nats.",
        "",
    ]


def add_run_arguments(p: argparse.ArgumentParser, runs: Path, names: str) -> None:
    """The scenario benchmarks' options: ``--runs``, ``--only`` (of ``names``), ``--reuse``, ``--write``."""
    p.add_argument("--runs", type=Path, default=runs, help="where the run directories go")
    p.add_argument("--only", help=f"comma-separated subset of: {names}")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take a scenario's finished run from its run directory when its settings match",
    )
    p.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")


def run_or_reuse(
    name: str, config: FederatedConfig, run_dir: Path, reuse: bool
) -> tuple[dict, bool]:
    """Scenario ``name``'s metrics: its finished run in ``run_dir`` with ``reuse`` when :func:`reusable`, else a
    new ``fedpers simulate`` run there (the genre scenario's files made first); and whether it was reused."""
    if name.startswith("genres"):
        genre_files(config)
    metrics = reusable(config, run_dir) if reuse else None
    if metrics is not None:
        return metrics, True
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise SystemExit(
            f"{run_dir}: holds another run"
            + (" (other settings than the scenario's, or unfinished)" if reuse else "")
            + "; its devices' ledgers would refuse to train again. Remove it, or choose another --runs"
        )
    return simulate(config, run_dir), False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(
        p,
        Path("runs/bench"),
        "default-dp, default-nodp, shakespeare, shakespeare-nodp, genres, genres-nodp",
    )
    args = p.parse_args(argv)
    plan = {
        "default-dp": ("Synthetic IT service desk, DP on (the default scenario)", {}),
        "default-nodp": (
            "Synthetic IT service desk, DP off (same settings otherwise)",
            {"dp": False},
        ),
        "shakespeare": ("tinyshakespeare, speakers as users, 3 inferred personas, DP on", {}),
        "shakespeare-nodp": (
            "tinyshakespeare, DP off (same settings otherwise)",
            {"dp": False},
        ),
        "genres": (
            "tinyshakespeare through the JSONL import, 3 declared genre personas, DP on",
            {},
        ),
        "genres-nodp": ("Genre personas, DP off (same settings otherwise)", {"dp": False}),
    }
    chosen = args.only.split(",") if args.only else list(plan)
    lines = [
        "## Federated simulation: persona adapters, DP on and off",
        "",
        "`python -m simulations.bench_scenarios --write` — each scenario is a full `fedpers simulate` run from "
        f"`simulations/scenarios/` (SmolLM2-135M-Instruct), one after another on this machine ({platform.machine()}, "
        "2 cores). Held-out loss is the token-weighted mean over every user's held-out conversations, per persona.",
        "",
    ]
    results = {}
    for name in chosen:
        label, overrides = plan[name]
        config, run_dir = scenario(name, args.runs, **overrides)
        metrics, reused = run_or_reuse(name, config, run_dir, args.reuse)
        results[name] = (config, metrics)
        lines += section(label, config, metrics)
        if reused:
            lines[-1:-1] = [f"(the finished run in `{run_dir.name}/`, reused: same settings)", ""]
        print("\n".join(lines[-8:]), flush=True)
    if "default-dp" in results and "default-nodp" in results:
        lines += kept_lines(*results["default-dp"], results["default-nodp"][1])
    if "shakespeare" in results and "shakespeare-nodp" in results:
        lines += kept_lines(
            *results["shakespeare"], results["shakespeare-nodp"][1], "tinyshakespeare"
        )
    if "genres" in results and "genres-nodp" in results:
        lines += kept_lines(
            *results["genres"], results["genres-nodp"][1], "Genre personas (JSONL import)"
        )
    for name in ("default", "shakespeare", "genres"):
        for suffix in ("-dp", "-nodp") if name == "default" else ("", "-nodp"):
            if name + suffix in results:
                lines += persona_vs_global_lines(name + suffix, results[name + suffix][1])
    print_section(lines, args.write, MARK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
