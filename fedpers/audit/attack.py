"""The empirical audit: train with secret canaries, attack the released persona adapters, bound epsilon.

Two extra simulations run with the audited run's settings and the same canaries: one with its DP
settings, one with DP off (to show the attack finds leakage when there is some). Each canary is
scored on the released adapter of its user's persona (see :mod:`fedpers.audit.canaries`); the
result, with the theoretical epsilon of the users holding canaries, goes to ``attack/attack.json``.
Per-round federated evaluation is switched off in these runs: it reads held-out data only and
does not change the adapters.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fedpers.audit.canaries import Canary, auc, exposure, make_canaries, one_run_bound, random_secret
from fedpers.audit.spent import spent_from_ledger
from fedpers.data import write_jsonl
from fedpers.federated import FederatedConfig
from fedpers.models import PersonalizedLM, attach_lora, load_adapter_arrays, load_base_model
from fedpers.models.chat import IGNORE_INDEX, collate, conversation_messages, encode_messages
from fedpers.rundir import load_adapters, read_json, write_json

ATTACK = "attack"
ATTACK_FILE = "attack.json"


@dataclass
class AttackConfig:
    """How many canaries, how many random candidates per canary for exposure, and the canary seed."""

    canaries: int = 40
    candidates: int = 64
    seed: int | None = None  # None: fresh randomness (recorded in attack.json)
    batch_size: int = 32
    progress: bool = True


def _sequence_losses(model: PersonalizedLM, tokenizer, conversations: Sequence, max_length: int, batch_size: int,
                     progress: str | None) -> np.ndarray:
    """Summed reply-token loss (nats) of each conversation."""
    encoded = [encode_messages(tokenizer, conversation_messages(c), max_length) for c in conversations]
    out = np.zeros(len(encoded))
    starts = range(0, len(encoded), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=progress, disable=progress is None, leave=False):
            batch = collate(encoded[start : start + batch_size], tokenizer.pad_token_id)
            counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
            out[start : start + len(counts)] = (model(**batch) * counts).numpy()
    return out


def score_canaries(config: FederatedConfig, adapters: dict[str, dict[str, np.ndarray]], canaries: Sequence[Canary],
                   attack: AttackConfig) -> list[dict]:
    """Membership score and exposure of every canary on the adapter of its persona."""
    base, tokenizer = load_base_model(config.model)
    peft_model = attach_lora(base, config.lora())
    model = PersonalizedLM(peft_model).eval()
    rng = random.Random(f"candidates-{attack.seed}")
    texts, owners = [], []  # each canary, then its candidates
    for i, c in enumerate(canaries):
        texts.append(c.conversation())
        owners.append(i)
        for _ in range(attack.candidates):
            secret = random_secret(rng)
            while secret == c.secret:
                secret = random_secret(rng)
            texts.append(c.conversation(secret))
            owners.append(i)
    bar = "canary scores (base model)" if attack.progress else None
    with peft_model.disable_adapter():
        base_loss = _sequence_losses(model, tokenizer, texts, config.max_length, attack.batch_size, bar)
    adapter_loss = np.zeros(len(texts))
    owners_arr = np.asarray(owners)
    for persona in sorted({c.persona for c in canaries}):
        load_adapter_arrays(peft_model, adapters[persona])
        rows = np.flatnonzero(np.isin(owners_arr, [i for i, c in enumerate(canaries) if c.persona == persona]))
        bar = f"canary scores ({persona})" if attack.progress else None
        adapter_loss[rows] = _sequence_losses(model, tokenizer, [texts[r] for r in rows], config.max_length,
                                              attack.batch_size, bar)
    scores = base_loss - adapter_loss
    out = []
    for i, c in enumerate(canaries):
        rows = np.flatnonzero(owners_arr == i)
        own, candidates = scores[rows[0]], scores[rows[1:]]
        out.append(c.to_dict() | {"score": float(own), "base_loss": float(base_loss[rows[0]]),
                                  "adapter_loss": float(adapter_loss[rows[0]]), "exposure": exposure(own, candidates)})
    return out


def summarize(scored: list[dict], delta: float, theoretical: float | None) -> dict:
    """AUC, exposure of inserted vs held-back canaries, the one-run lower bound and its check against theory."""
    inserted = [s["inserted"] for s in scored]
    scores = [s["score"] for s in scored]
    exp_in = [s["exposure"]["normal_fit"] for s in scored if s["inserted"]]
    exp_out = [s["exposure"]["normal_fit"] for s in scored if not s["inserted"]]
    bound = one_run_bound(scores, inserted, delta)
    return {
        "auc": auc(scores, inserted),
        "exposure": {"inserted_mean": float(np.mean(exp_in)) if exp_in else None,
                     "inserted_max": float(np.max(exp_in)) if exp_in else None,
                     "held_back_mean": float(np.mean(exp_out)) if exp_out else None},
        "lower_bound": bound,
        "theoretical_epsilon": theoretical,
        "bound_exceeds_theory": theoretical is not None and bound["epsilon"] > theoretical,
        "canaries": scored,
    }


def _theoretical_epsilon(config: FederatedConfig, canaries: Sequence[Canary]) -> float | None:
    """Largest sample-level epsilon (most conservative accountant) among the users holding inserted canaries."""
    if not config.dp:
        return None
    users = sorted({c.user_id for c in canaries if c.inserted})
    return max(spent_from_ledger(Path(config.state_dir) / u / "ledger.json").epsilon for u in users)


def attack_settings(config: FederatedConfig, dp: bool, canaries: Path, run_dir: Path) -> FederatedConfig:
    """The audited settings with canaries, a fresh state directory, and no evaluation, wire recording or audit of its own."""
    return dataclasses.replace(config, dp=dp, canaries=str(canaries), evaluate=False, audit=False, audit_attack=False,
                               record_wire=False, state_dir=str(Path(run_dir) / "client-state"))


def run_attack(config: FederatedConfig, run_dir: Path, attack: AttackConfig | None = None,
               personas: dict[str, str] | None = None) -> dict:
    """Run the canary simulations (audited DP settings, and DP off), attack them, write ``attack/attack.json``."""
    from clients.runtime import conversations
    from simulations.simulate import simulate

    attack = attack or AttackConfig()
    if attack.seed is None:
        attack = dataclasses.replace(attack, seed=random.SystemRandom().randrange(2**31))
    personas = personas or {c.user_id: c.persona for c in conversations(config) if c.persona}
    if not personas:
        raise ValueError("the canary audit needs users with a declared persona (the persona field of the data)")
    canaries = make_canaries(personas, attack.canaries, attack.seed)
    root = Path(run_dir) / ATTACK
    root.mkdir(parents=True, exist_ok=True)
    path = root / "canaries.jsonl"
    write_jsonl(path, [c.conversation() for c in canaries if c.inserted])
    result = {"settings": dataclasses.asdict(attack), "secret_digits": len(canaries[0].secret.split()),
              "inserted": sum(c.inserted for c in canaries), "runs": {}}
    for name, dp in (("dp", config.dp), ("no-dp", False)):
        if name == "dp" and not config.dp:
            continue
        run = root / name
        variant = attack_settings(config, dp, path, run)
        simulate(variant, run)
        scored = score_canaries(variant, load_adapters(run), canaries, attack)
        result["runs"][name] = {"dp": dp, "run_dir": str(run)} | summarize(scored, config.delta, _theoretical_epsilon(variant, canaries))
        write_json(root / ATTACK_FILE, result)
    return result


def read_attack(run_dir: Path) -> dict | None:
    path = Path(run_dir) / ATTACK / ATTACK_FILE
    return read_json(path) if path.exists() else None
