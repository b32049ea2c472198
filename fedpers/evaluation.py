"""Held-out loss and perplexity on assistant tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedpers.models.chat import EncodedExample, collate
from fedpers.models.personalized import PersonalizedLM, token_loss_sums


@dataclass(frozen=True)
class EvalResult:
    """Token-weighted mean cross-entropy (nats) over assistant tokens, and its perplexity."""

    loss: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens}


@torch.no_grad()
def evaluate(
    model: PersonalizedLM,
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    batch_size: int = 16,
) -> EvalResult:
    """Evaluate ``model`` on ``examples`` (each assistant token weighs the same)."""
    if not examples:
        raise ValueError("no evaluation examples")
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            loss_sum, count = token_loss_sums(
                model, collate(examples[start : start + batch_size], pad_token_id)
            )
            total, tokens = total + loss_sum, tokens + count
    finally:
        model.train(was_training)
    return EvalResult(total / max(tokens, 1), tokens)
