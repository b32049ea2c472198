"""Choosing the persona adapter a client trains: declared, or inferred under DP.

Inferred choice is a release that depends on the user's data (it decides which adapter the update
goes to), so it is made privately, once per run, and recorded in the user's ledger (purpose
``persona-choice``) before anything leaves:

- from the prompts (:func:`private_prompt_choice`, when the instructions carry public persona centroids):
  the clipped score vector of :mod:`fedpers.personas.prompt_choice` (L2 sensitivity 1) plus Gaussian noise
  of std ``noise_multiplier``, argmax;
- IFCA (:func:`private_persona_choice`): the per-adapter sums of clipped per-example losses get Gaussian
  noise (each example moves each sum by at most ``loss_clip``, so the vector has L2 sensitivity
  ``sqrt(K) * loss_clip``, and the noise std is ``noise_multiplier`` times that), argmin.

Both are one Gaussian mechanism of noise multiplier ``noise_multiplier`` on a unit-sensitivity query.
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
from fedpers.personas.prompt_choice import PromptCentroids
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
    seed: int | None = None,
) -> dict[str, float]:
    """Noisy clipped loss sums of each candidate adapter (lower is better); the spending is recorded first.
    ``seed``: the benchmark switch only (``None``: the OS CSPRNG).

    Scored with the user embedding off: it is trained without DP, so a score computed through it would
    not be covered by this mechanism's guarantee (and would depend on whatever embedding is loaded).
    """
    entry = ledger.record(
        LedgerEntry(
            "persona-choice",
            [GaussianEvent(noise_multiplier, 1.0, 1)],
            {"method": LOSS_METHOD, "candidates": candidates, "loss_clip": LOSS_CLIP}
            | (details or {}),
        )
    )
    rng = _rng(seed)
    std = noise_multiplier * math.sqrt(len(candidates)) * LOSS_CLIP
    scores = {}
    model.use_user_embedding = False
    for name in candidates:
        load_adapter_arrays(model.lm, adapters[name])
        total = float(np.clip(example_losses(model, examples, pad_token_id), 0.0, LOSS_CLIP).sum())
        scores[name] = total + float(rng.normal(0.0, std))
    ledger.complete(entry)
    return scores


def _rng(seed: int | None) -> np.random.Generator:
    """The noise's generator: the OS CSPRNG, unless the run's benchmark switch ``noise_seed`` gives a seed."""
    return np.random.default_rng(int.from_bytes(os.urandom(8), "little") if seed is None else seed)


PROMPT_METHOD = "prompt centroids"
LOSS_METHOD = "adapter losses (IFCA)"
NO_ENCODER_METHOD = "adapter losses (IFCA): no sentence encoder on the device"


def private_prompt_choice(
    prompts: list[str],
    centroids: PromptCentroids,
    candidates: list[str],
    ledger: PrivacyLedger,
    noise_multiplier: float = SELECTION_NOISE,
    details: dict | None = None,
    seed: int | None = None,
) -> dict[str, float] | None:
    """Noisy prompt scores of each candidate persona, as *losses* (negated: lower is better, like
    :func:`private_persona_choice`); the spending is recorded first. ``None`` when the device has no sentence
    encoder (the ``router`` extra): nothing is recorded and the caller falls back to the loss choice.
    ``seed``: the benchmark switch only (``None``: the OS CSPRNG)."""
    try:
        from fedpers.personas.encoder import default_encoder

        encoder = default_encoder()
    except ImportError:
        return None
    unknown = set(candidates) - set(centroids.personas)
    if unknown:
        raise ValueError(f"persona centroids: no centroid for {sorted(unknown)}")
    entry = ledger.record(
        LedgerEntry(
            "persona-choice",
            [GaussianEvent(noise_multiplier, 1.0, 1)],
            {
                "method": PROMPT_METHOD,
                "candidates": candidates,
                "prompts": len(prompts),
                "clip_bound": centroids.bound,
            }
            | (details or {}),
        )
    )
    rng = _rng(seed)
    rows = encoder.encode(prompts) if prompts else np.zeros((0, centroids.dimension), np.float32)
    scores = centroids.noisy_scores(rows, noise_multiplier, rng)
    ledger.complete(entry)
    return {p: -scores[p] for p in candidates}


def choose_persona(
    declared: str | None,
    personas: list[str],
    trained: list[str],
    scores: dict[str, float] | None,
) -> Assignment:
    """The declared persona, else the best (noisy) score among trained adapters, else the global adapter."""
    return assign_persona(declared, personas, (lambda p: scores[p]) if scores else None, trained)
