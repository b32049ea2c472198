"""The canary attack's training: two more simulations with the audited settings and secret canaries.

Canaries (:mod:`fedpers.audit.canaries`) are drawn for users with a declared persona; the inserted
ones go, ``repeats`` copies each, into ``attack/canaries.jsonl``, which the simulated clients add to
their users' training data. One simulation keeps the run's DP settings, one turns DP off; both
release persona adapters that :class:`fedpers.audit.attack.CanaryScorer` attacks. Per-round
federated evaluation is switched off in these runs: it reads held-out data only and does not change
the adapters. ``attack/attack.json`` receives the settings, the seed and both runs' results (written
after each run, so a long audit shows its first half early).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path

from fedpers.audit.attack import (
    ATTACK,
    ATTACK_FILE,
    AttackConfig,
    CanaryScorer,
    summarize,
    theoretical_epsilon,
)
from fedpers.audit.canaries import make_canaries
from fedpers.data import write_jsonl
from fedpers.federated import FederatedConfig
from fedpers.rundir import load_adapters, write_json


def attack_settings(
    config: FederatedConfig, dp: bool, canaries: Path, run_dir: Path
) -> FederatedConfig:
    """The audited settings with canaries, a fresh state directory, and no evaluation, wire recording or audit of its own."""
    return config.replace(
        dp=dp,
        canaries=str(canaries),
        evaluate=False,
        audit=False,
        audit_attack=False,
        record_wire=False,
        state_dir=str(Path(run_dir) / "client-state"),
    )


def run_attack(
    config: FederatedConfig,
    run_dir: Path,
    attack: AttackConfig | None = None,
    personas: dict[str, str] | None = None,
    runs: tuple[str, ...] = ("dp", "no-dp"),
) -> dict:
    """Run the canary simulations (audited DP settings, and DP off), attack them, write ``attack/attack.json``.

    ``runs`` picks which of the two to train (a DP-off audit has only ``no-dp``)."""
    from fedpers.userdata import conversations
    from simulations.simulate import simulate

    attack = attack or AttackConfig()
    if attack.seed is None:
        attack = dataclasses.replace(attack, seed=secrets.randbits(63))
    personas = personas or {c.user_id: c.persona for c in conversations(config) if c.persona}
    if not personas:
        raise ValueError(
            "the canary audit needs users with a declared persona (the persona field of the data)"
        )
    canaries = make_canaries(personas, attack.canaries, attack.seed)
    root = Path(run_dir) / ATTACK
    root.mkdir(parents=True, exist_ok=True)
    path = root / "canaries.jsonl"
    write_jsonl(path, [copy for c in canaries if c.inserted for copy in c.copies(attack.repeats)])
    result = {
        "settings": dataclasses.asdict(attack),
        "secret_digits": len(canaries[0].secret.split()),
        "inserted": sum(c.inserted for c in canaries),
        "repeats": attack.repeats,
        "runs": {},
    }
    scorer = CanaryScorer(config, canaries, attack)  # the base model's losses: once, for both runs
    result["base_scoring_seconds"] = scorer.base_seconds
    order = ("dp", "no-dp")
    # the power check first: its figures matter even alone
    for name, dp in (
        ("no-dp", False),
        ("dp", config.privacy.dp),
    ):
        if name not in runs or (name == "dp" and not config.privacy.dp):
            continue
        run = root / name
        variant = attack_settings(config, dp, path, run)
        start = time.perf_counter()
        simulate(variant, run, label=f"canary attack ({name} run) · ")
        trained = time.perf_counter()
        scored = scorer.score(load_adapters(run))
        seconds = {"training": trained - start, "scoring": time.perf_counter() - trained}
        result["runs"][name] = {"dp": dp, "run_dir": str(run), "seconds": seconds} | summarize(
            scored, config.privacy.delta, theoretical_epsilon(variant, canaries, attack.repeats)
        )
        result["runs"] = {
            k: result["runs"][k] for k in order if k in result["runs"]
        }  # shown side by side: DP first
        write_json(root / ATTACK_FILE, result)
    return result


def attack_run_dir(run_dir: Path, attack: AttackConfig) -> dict:
    """``fedpers audit RUN_DIR --attack``: the canary attack with the settings the run recorded in ``run.json``."""
    from fedpers.rundir import RUN_CONFIG, read_json

    config = FederatedConfig.from_record(read_json(Path(run_dir) / RUN_CONFIG)["settings"])
    return run_attack(config, run_dir, attack)
