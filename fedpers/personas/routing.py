"""Routing a prompt to a persona adapter: one ``Scorer`` protocol, several scorers, one ``Router``.

``LossScorer`` runs the model once per candidate adapter (K forward passes of the LLM per prompt);
:class:`fedpers.personas.centroid.CentroidScorer` embeds the prompt once and compares it with per-persona
centroids learned from private statistics. A scorer that also reports a ``confidence`` (a
:class:`ConfidentScorer`) lets the router answer with the global adapter when it is unsure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedpers.adapters import GLOBAL
from fedpers.models.chat import collate, encode_messages
from fedpers.models.lora import adapter_arrays, load_adapter_arrays
from fedpers.models.personalized import PersonalizedLM
from fedpers.personas.assignment import Source, assign_persona, check_known
from fedpers.progress import Stage


@runtime_checkable
class Scorer(Protocol):
    """Scores a prompt against candidate personas; lower is better."""

    def score(self, prompt: str, candidates: Sequence[str]) -> dict[str, float]: ...


@runtime_checkable
class ConfidentScorer(Scorer, Protocol):
    """A scorer whose scores say how sure it is: ``confidence(scores)`` in [0, 1], and the ``threshold``
    below which its choice is not trusted."""

    @property
    def threshold(self) -> float: ...

    def confidence(self, scores: dict[str, float]) -> float: ...


class LossScorer:
    """Mean next-token loss of the prompt's own tokens under each candidate's adapter (user embedding off).

    Scoring swaps adapters in ``model.lm`` and restores the one that was loaded before. ``progress``
    (optional) counts the adapters scored.
    """

    def __init__(
        self,
        model: PersonalizedLM,
        tokenizer: PreTrainedTokenizerBase,
        adapters: Mapping[str, Mapping[str, np.ndarray]],
        max_length: int = 256,
        progress: Stage | None = None,
    ) -> None:
        self.model, self.tokenizer, self.adapters, self.max_length = (
            model,
            tokenizer,
            dict(adapters),
            max_length,
        )
        self.progress = progress

    @torch.no_grad()
    def score(self, prompt: str, candidates: Sequence[str]) -> dict[str, float]:
        missing = [c for c in candidates if c not in self.adapters]
        if missing:
            raise ValueError(f"no adapter to score {missing}; adapters: {sorted(self.adapters)}")
        example = encode_messages(
            self.tokenizer,
            [{"role": "user", "content": prompt}],
            self.max_length,
            target_roles=("user",),
        )
        if example is None:
            raise ValueError("the prompt has no tokens to score")
        batch = collate([example], self.tokenizer.pad_token_id)
        model, lm = self.model, self.model.lm
        saved, use_embedding, training = (
            adapter_arrays(lm),
            model.use_user_embedding,
            model.training,
        )
        model.use_user_embedding = False
        model.eval()
        if self.progress is not None:
            self.progress.step("", len(candidates), "adapters", whole=True)
        try:
            scores = {}
            for name in candidates:
                load_adapter_arrays(lm, dict(self.adapters[name]))
                scores[name] = float(model(**batch)[0])
                if self.progress is not None:
                    self.progress.advance()
            return scores
        finally:
            load_adapter_arrays(lm, saved)
            model.use_user_embedding = use_embedding
            model.train(training)


@dataclass(frozen=True)
class RouteDecision:
    """The adapter that answers, the scores behind the choice (lower is better), why, and (for a scorer
    that reports one) the confidence of the scorer's top choice."""

    persona: str
    scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    source: Source = "inferred"
    confidence: float | None = None


class Router:
    """Routes prompts among ``personas``: a declared persona wins, else the scorer's minimum.

    ``available`` lists the personas that have an adapter (default: all); a declared persona without
    one, or a cold start with none, goes to ``fallback``. ``score_declared`` also scores declared
    prompts, for display. With a :class:`ConfidentScorer`, an inferred choice whose confidence is below
    the scorer's threshold also goes to ``fallback``, and the decision says so.
    """

    def __init__(
        self,
        scorer: Scorer,
        personas: Sequence[str],
        fallback: str = GLOBAL,
        available: Collection[str] | None = None,
        score_declared: bool = False,
    ) -> None:
        self.scorer, self.personas, self.fallback = scorer, list(personas), fallback
        self.available = [p for p in self.personas if available is None or p in available]
        self.score_declared = score_declared

    def route(self, prompt: str, declared: str | None = None) -> RouteDecision:
        if declared is not None:
            check_known(declared, self.personas)
            scores = (
                self.scorer.score(prompt, self.available)
                if self.score_declared and self.available
                else {}
            )
            if declared in self.available:
                return RouteDecision(declared, scores, f"declared persona '{declared}'", "declared")
            reason = f"declared persona '{declared}' has no adapter yet; using '{self.fallback}'"
            return RouteDecision(self.fallback, scores, reason, "global")
        if not self.available:
            return RouteDecision(
                self.fallback,
                {},
                f"no persona adapter yet (cold start); using '{self.fallback}'",
                "global",
            )
        return self._decide(self.scorer.score(prompt, self.available))

    def route_user(
        self, messages: Sequence[str], context=None, declared: str | None = None
    ) -> RouteDecision:
        """Route a user from what it has so far: its context and first ``messages`` (none at a cold start).
        Needs a scorer with ``score_user`` (the centroid scorer); a declared persona wins as in :meth:`route`."""
        score_user = getattr(self.scorer, "score_user", None)
        if score_user is None:
            raise TypeError(f"{type(self.scorer).__name__} cannot route from a user's history")
        if declared is not None or not self.available:
            return self.route(messages[-1] if messages else "", declared)
        return self._decide(score_user(messages, self.available, context))

    def _decide(self, scores: dict[str, float]) -> RouteDecision:
        assignment = assign_persona(None, self.available, scores.__getitem__, self.available)
        if assignment.source == "global":
            return RouteDecision(
                self.fallback, scores, f"no finite score; using '{self.fallback}'", "global"
            )
        name = type(self.scorer).__name__
        if isinstance(self.scorer, ConfidentScorer):
            confidence = float(self.scorer.confidence(scores))
            threshold = float(self.scorer.threshold)
            if confidence < threshold:
                reason = (
                    f"{name} confidence {confidence:.2f} for '{assignment.persona}' is below the "
                    f"threshold {threshold:.2f}; using '{self.fallback}'"
                )
                return RouteDecision(self.fallback, scores, reason, "global", confidence)
            reason = (
                f"lowest {name} score among {len(self.available)} persona adapters "
                f"(confidence {confidence:.2f} >= {threshold:.2f})"
            )
            return RouteDecision(assignment.persona, scores, reason, "inferred", confidence)
        reason = f"lowest {name} score among {len(self.available)} persona adapters"
        return RouteDecision(assignment.persona, scores, reason, "inferred")
