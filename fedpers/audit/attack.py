"""The empirical audit: score secret canaries on released persona adapters, summarize, bound epsilon.

:mod:`simulations.attack` trains two extra simulations with the audited run's settings and the same
canaries (one with its DP settings, one with DP off, to show the attack finds leakage when there is
some); this module holds what the attacker computes from their released adapters. Each canary is
scored on the adapter of its user's persona (the statistics are in :mod:`fedpers.audit.canaries`,
the prefix-reusing loss in :mod:`fedpers.audit.scoring`); the result, with the theoretical epsilon
the bound is compared to, goes to ``attack/attack.json``.

Cost. Only the secret's tokens are scored (the membership score needs nothing else), the shared
prefix of a canary and its candidates runs once per model, and the base model's losses are computed
once for both runs (they do not depend on training).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
from peft import PeftModel
from tqdm.auto import tqdm

from fedpers.audit.canaries import (
    Canary,
    auc,
    exposure,
    membership_score,
    one_run_bound,
    random_secret,
)
from fedpers.audit.scoring import SecretSet, secret_losses, secret_set
from fedpers.audit.spent import group_epsilon, ledger_events, spent_from_ledger
from fedpers.federated import FederatedConfig
from fedpers.models import PersonalizedLM, attach_lora, load_adapter_arrays, load_base_model
from fedpers.rundir import read_json

ATTACK = "attack"
ATTACK_FILE = "attack.json"


@dataclass(frozen=True)
class AttackConfig:
    """How many canaries, how often an inserted one repeats, candidates per canary, and the canary seed.

    The defaults give the attack its power on the default scenario (DP off: AUC 0.93, BENCHMARKS.md): a
    device sees about 96 examples in a run, so a few canaries repeated often are learned, many are not."""

    canaries: int = 40
    candidates: int = 32
    repeats: int = 24  # copies of each inserted canary in its user's data (the bound speaks of groups this size)
    seed: int | None = None  # None: fresh randomness from the OS (recorded in attack.json)
    batch_size: int = 128
    progress: bool = True

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.candidates < 2:
            raise ValueError("the attack needs repeats >= 1 and at least 2 candidates per canary")


@dataclass(frozen=True)
class CanaryScore:
    """One canary's result on one run: membership score, the true secret's losses (nats) and its exposure."""

    canary: Canary
    score: float
    base_loss: float
    adapter_loss: float
    exposure: dict

    def to_dict(self) -> dict:
        return self.canary.to_dict() | {
            "score": self.score,
            "base_loss": self.base_loss,
            "adapter_loss": self.adapter_loss,
            "exposure": self.exposure,
        }


@dataclass
class CanaryScorer:
    """The attacker: the base model with an empty LoRA slot, each canary's secret set and its base-model losses."""

    config: FederatedConfig
    canaries: Sequence[Canary]
    attack: AttackConfig
    model: PersonalizedLM = field(init=False)
    tokenizer: object = field(init=False)
    sets: list[SecretSet] = field(init=False)
    base: list[np.ndarray] = field(init=False)
    base_seconds: float = field(init=False)

    def __post_init__(self) -> None:
        base, self.tokenizer = load_base_model(self.config.model.model)
        self.model = PersonalizedLM(attach_lora(base, self.config.lora())).eval()
        rng = random.Random(f"candidates-{self.attack.seed}")
        self.sets = [
            secret_set(
                self.tokenizer,
                [
                    c.conversation(),
                    *(c.conversation(s) for s in _candidates(c, rng, self.attack.candidates)),
                ],
                self.config.dataset.max_length,
            )
            for c in self.canaries
        ]
        start = time.perf_counter()
        with cast(PeftModel, self.model.lm).disable_adapter():  # the LoRA of attach_lora
            self.base = self._losses(range(len(self.canaries)), "canary losses (base model)")
        self.base_seconds = time.perf_counter() - start

    def _losses(self, rows: Sequence[int], label: str) -> list[np.ndarray]:
        bar = tqdm(rows, desc=label, disable=not self.attack.progress, leave=False)
        return [secret_losses(self.model, self.sets[i], self.attack.batch_size) for i in bar]

    def score(self, adapters: dict[str, dict[str, np.ndarray]]) -> list[CanaryScore]:
        """Every canary scored on the released adapter of its persona."""
        adapter: dict[int, np.ndarray] = {}
        for persona in sorted({c.persona for c in self.canaries}):
            load_adapter_arrays(self.model.lm, adapters[persona])
            rows = [i for i, c in enumerate(self.canaries) if c.persona == persona]
            adapter |= dict(zip(rows, self._losses(rows, f"canary losses ({persona})")))
        out = []
        for i, c in enumerate(self.canaries):
            drops = self.base[i] - adapter[i]
            out.append(
                CanaryScore(
                    c,
                    membership_score(drops),
                    float(self.base[i][0]),
                    float(adapter[i][0]),
                    exposure(float(drops[0]), drops[1:]),
                )
            )
        return out


def _candidates(canary: Canary, rng: random.Random, count: int) -> list[str]:
    """``count`` random secrets of the canary's format, all different from its own."""
    out: list[str] = []
    while len(out) < count:
        secret = random_secret(rng)
        if secret != canary.secret:
            out.append(secret)
    return out


def summarize(scored: Sequence[CanaryScore], delta: float, theory: dict | None) -> dict:
    """AUC, exposure of inserted vs held-back canaries, the one-run lower bound and its check against ``theory``."""
    inserted = [s.canary.inserted for s in scored]
    scores = [s.score for s in scored]
    exp_in = [s.exposure["normal_fit"] for s in scored if s.canary.inserted]
    exp_out = [s.exposure["normal_fit"] for s in scored if not s.canary.inserted]
    bound = one_run_bound(scores, inserted, delta)
    theoretical = None if theory is None else theory["group_epsilon"]
    return {
        "auc": auc(scores, inserted),
        "exposure": {
            "inserted_mean": float(np.mean(exp_in)) if exp_in else None,
            "inserted_max": float(np.max(exp_in)) if exp_in else None,
            "held_back_mean": float(np.mean(exp_out)) if exp_out else None,
        },
        "lower_bound": bound,
        "theoretical_epsilon": theoretical,
        "record_epsilon": None if theory is None else theory["record_epsilon"],
        "bound_exceeds_theory": theoretical is not None and bound["epsilon"] > theoretical,
        "canaries": [s.to_dict() for s in scored],
    }


def theoretical_epsilon(
    config: FederatedConfig, canaries: Sequence[Canary], repeats: int
) -> dict | None:
    """What the bound is compared to, over the users holding inserted canaries (None without DP).

    ``record_epsilon``: the largest quoted sample-level epsilon (most conservative of four accountants);
    ``group_epsilon``: the largest epsilon for a group of ``repeats`` copies of one conversation
    (:func:`fedpers.audit.spent.group_epsilon`; with one copy, the sample-level figure)."""
    if not config.privacy.dp:
        return None
    paths = [
        Path(config.outputs.state_dir) / u / "ledger.json"
        for u in sorted({c.user_id for c in canaries if c.inserted})
    ]
    record = max(spent_from_ledger(p).epsilon for p in paths)
    group = (
        record
        if repeats == 1
        else max(group_epsilon(ledger_events(p), config.privacy.delta, repeats) for p in paths)
    )
    return {"record_epsilon": record, "group_epsilon": group}


def read_attack(run_dir: Path) -> dict | None:
    path = Path(run_dir) / ATTACK / ATTACK_FILE
    return read_json(path) if path.exists() else None
