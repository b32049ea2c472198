"""Choosing the persona adapter a client trains: declared, or inferred IFCA-style under DP.

Inferred choice is a release that depends on the user's data (it decides which adapter the update
goes to), so it is made privately: the per-adapter sums of clipped per-example losses get Gaussian
noise (each example moves each sum by at most ``loss_clip``, so the vector has L2 sensitivity
``sqrt(K) * loss_clip``) and the argmin is post-processing. It is made once per run and recorded
in the user's ledger like any other mechanism.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from fedpers.models import collate, load_adapter_arrays
from fedpers.models.chat import EncodedExample
from fedpers.models.personalized import PersonalizedLM
from fedpers.personas.assignment import Assignment, assign_persona
from fedpers.privacy.accounting import GaussianEvent
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger

LOSS_CLIP = 8.0
SELECTION_NOISE = 1.0


@torch.no_grad()
def example_losses(
    model: PersonalizedLM, examples: list[EncodedExample], pad_token_id: int, batch_size: int = 16
) -> np.ndarray:
    """Mean assistant-token loss of each example under the currently loaded adapter."""
    model.eval()
    out = [
        model(**collate(examples[i : i + batch_size], pad_token_id)).numpy()
        for i in range(0, len(examples), batch_size)
    ]
    return np.concatenate(out)


def private_persona_choice(
    model: PersonalizedLM,
    adapters: dict[str, dict[str, np.ndarray]],
    candidates: list[str],
    examples: list[EncodedExample],
    pad_token_id: int,
    ledger: PrivacyLedger,
    noise_multiplier: float = SELECTION_NOISE,
    details: dict | None = None,
) -> dict[str, float]:
    """Noisy clipped loss sums of each candidate adapter (lower is better); the spending is recorded first.

    Scored with the user embedding off: it is trained without DP, so a score computed through it would
    not be covered by this mechanism's guarantee (and would depend on whatever embedding is loaded).
    """
    entry = ledger.record(
        LedgerEntry(
            "persona-choice",
            [GaussianEvent(noise_multiplier, 1.0, 1)],
            {"candidates": candidates, "loss_clip": LOSS_CLIP} | (details or {}),
        )
    )
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    std = noise_multiplier * math.sqrt(len(candidates)) * LOSS_CLIP
    scores = {}
    model.use_user_embedding = False
    for name in candidates:
        load_adapter_arrays(model.lm, adapters[name])
        total = float(np.clip(example_losses(model, examples, pad_token_id), 0.0, LOSS_CLIP).sum())
        scores[name] = total + float(rng.normal(0.0, std))
    ledger.complete(entry)
    return scores


def choose_persona(
    declared: str | None,
    personas: list[str],
    trained: list[str],
    scores: dict[str, float] | None,
) -> Assignment:
    """The declared persona, else the best (noisy) score among trained adapters, else the global adapter."""
    return assign_persona(declared, personas, (lambda p: scores[p]) if scores else None, trained)
