"""The learned router: nearest centroid (cosine) over prompt embeddings and context, with a confidence.

**Model.** For persona ``p`` the router keeps a text centroid ``m_p`` (unit direction of the per-persona
sum of embeddings) and a context centroid ``k_p``. A user's state is the unit mean ``e`` of the embeddings
of the messages seen so far (none at a cold start) and its context vector ``x``; the logit of ``p`` is

    l_p = (<f(e), m_p> + w <x, k_p>) / T

with ``f`` the router's public feature map (:mod:`fedpers.personas.features`; the identity by default), in
whose space the text centroids live.

and the probabilities are ``softmax(l)`` over the candidate personas. The confidence is the top
probability; below ``threshold`` the router answers with the global adapter. ``T`` (temperature) and
``threshold`` are calibrated on held-out *labelled public* data (:func:`calibrate`), never on users' data;
``w`` (context weight) is a setting.

**Learning.** The centroids are the directions of the private statistics' sums
(:mod:`fedpers.personas.router_stats`); a persona whose (noised) count is below ``min_count`` gets no
centroid and is never chosen.

**Storage** beside a run's (or registry version's) adapters: ``RUN_DIR/router/centroids.safetensors``
(``text``, ``context``, ``counts``) and ``RUN_DIR/router/router.json`` (personas, settings, encoder, what the
statistics cost in privacy). No pickles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fedpers.atomic import write_json
from fedpers.personas.context import CONTEXT_DIMENSION, Context
from fedpers.personas.encoder import ENCODER_MODEL, TextEncoder, unit_rows
from fedpers.personas.features import IDENTITY, FeatureMap
from fedpers.personas.router_stats import RouterStatistics

ROUTER_DIR = "router"
CENTROIDS_FILE = "centroids.safetensors"
METADATA_FILE = "router.json"
FORMAT = "fedpers-centroid-router/1"
DEFAULT_TEMPERATURE = 0.05
DEFAULT_THRESHOLD = 0.5
DEFAULT_CONTEXT_WEIGHT = 0.5


@dataclass(frozen=True)
class CentroidRouterModel:
    """Centroids per persona and the settings of the decision (see the module docstring)."""

    personas: tuple[str, ...]
    text: np.ndarray  # (K, d) unit rows; a zero row: no centroid
    context: np.ndarray  # (K, d_c) unit rows or zeros
    counts: np.ndarray  # (K,) devices behind each centroid (noised under DP)
    temperature: float = DEFAULT_TEMPERATURE
    threshold: float = DEFAULT_THRESHOLD
    context_weight: float = DEFAULT_CONTEXT_WEIGHT
    encoder: str = ENCODER_MODEL
    info: dict = field(default_factory=dict)
    features: FeatureMap = (
        IDENTITY  # the public map applied to an embedding before the text centroids
    )

    def __post_init__(self) -> None:
        k = len(self.personas)
        if self.features.kind != "identity" and self.text.shape[1:] != (
            self.features.components.shape[0],
        ):
            raise ValueError(
                f"text centroids of shape {self.text.shape} do not match the {self.features.kind} "
                f"feature map's {self.features.components.shape[0]} dimensions"
            )
        if k == 0 or len(set(self.personas)) != k:
            raise ValueError(f"a router needs distinct personas, got {self.personas}")
        for name, array, ndim in (("text", self.text, 2), ("context", self.context, 2)):
            if array.ndim != ndim or array.shape[0] != k:
                raise ValueError(f"{name} centroids: expected {k} rows, got shape {array.shape}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} centroids must be finite")
        if self.counts.shape != (k,) or not np.all(np.isfinite(self.counts)):
            raise ValueError(f"counts: expected {k} finite values, got shape {self.counts.shape}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not (self.context_weight >= 0 and math.isfinite(self.context_weight)):
            raise ValueError(f"context_weight must be non-negative, got {self.context_weight}")

    @property
    def trained(self) -> tuple[str, ...]:
        """Personas that have a text or context centroid."""
        has = (np.abs(self.text).sum(1) > 0) | (np.abs(self.context).sum(1) > 0)
        return tuple(p for p, h in zip(self.personas, has) if h)

    def logits(self, text: np.ndarray | None, context: np.ndarray | None) -> np.ndarray:
        """``l_p`` for every persona; ``text``: an encoder embedding (or None; mapped by :attr:`features`
        here), ``context``: a context vector."""
        score = np.zeros(len(self.personas))
        if text is not None:
            score += self.text @ self.features(np.asarray(text, dtype=np.float64)).astype(
                np.float64
            )
        if context is not None and self.context_weight > 0 and self.context.shape[1]:
            score += self.context_weight * (self.context @ np.asarray(context, dtype=np.float64))
        return score / self.temperature

    def probabilities(
        self, text: np.ndarray | None, context: np.ndarray | None, candidates: Sequence[str]
    ) -> dict[str, float]:
        """Softmax of the logits over ``candidates`` (personas without a centroid get probability 0)."""
        logits = self.logits(text, context)
        index = {p: i for i, p in enumerate(self.personas)}
        trained = set(self.trained)
        live = [c for c in candidates if c in trained]
        if not live:
            return {c: 0.0 for c in candidates}
        values = np.array([logits[index[c]] for c in live])
        weights = np.exp(values - values.max())
        probs = dict(zip(live, (weights / weights.sum()).tolist()))
        return {c: probs.get(c, 0.0) for c in candidates}

    def with_settings(self, **changes) -> CentroidRouterModel:
        return replace(self, **changes)


def model_from_statistics(
    stats: RouterStatistics,
    min_count: float = 1.0,
    **settings,
) -> CentroidRouterModel:
    """Centroids from (noised) per-persona sums: each sum's direction; none below ``min_count`` devices.
    The sums are of mapped embeddings when ``settings`` has the ``features`` map they were computed with."""
    keep = stats.counts >= min_count
    text = np.where(keep[:, None], unit_rows(stats.text_sums), 0.0).astype(np.float32)
    context = np.where(keep[:, None], unit_rows(stats.context_sums), 0.0).astype(np.float32)
    return CentroidRouterModel(
        stats.personas, text, context, np.asarray(stats.counts, np.float64), **settings
    )


def user_state(embeddings: np.ndarray) -> np.ndarray | None:
    """The unit mean of a user's message embeddings so far; ``None`` before the first message."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.size == 0:
        return None
    return unit_rows(x.mean(0, keepdims=True))[0]


class CentroidScorer:
    """The :class:`~fedpers.personas.routing.Scorer` of the centroid router: ``-log p`` (lower is better).

    ``score`` embeds one prompt; ``score_user`` routes from what a user has so far (context, then the
    mean of the first messages' embeddings). ``confidence`` turns scores back into the top probability.
    """

    def __init__(
        self, model: CentroidRouterModel, encoder: TextEncoder, context: Context | None = None
    ) -> None:
        if encoder.name != model.encoder:
            raise ValueError(
                f"the router was learned on {model.encoder} embeddings, not {encoder.name}"
            )
        self.model, self.encoder, self.context = model, encoder, context

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def _scores(
        self, text: np.ndarray | None, candidates: Sequence[str], context: Context | None
    ) -> dict[str, float]:
        ctx = context.vector(self.model.context.shape[1]) if context is not None else None
        probs = self.model.probabilities(text, ctx, candidates)
        return {c: -math.log(p) if p > 0 else math.inf for c, p in probs.items()}

    def score(self, prompt: str, candidates: Sequence[str]) -> dict[str, float]:
        return self._scores(self.encoder.encode([prompt])[0], candidates, self.context)

    def score_user(
        self, messages: Sequence[str], candidates: Sequence[str], context: Context | None = None
    ) -> dict[str, float]:
        text = user_state(self.encoder.encode(list(messages))) if messages else None
        return self._scores(text, candidates, context if context is not None else self.context)

    @staticmethod
    def confidence(scores: dict[str, float]) -> float:
        finite = [s for s in scores.values() if math.isfinite(s)]
        return math.exp(-min(finite)) if finite else 0.0


# ------------------------------------------- calibration -------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Temperature and threshold chosen on held-out labelled data, and what they give there."""

    temperature: float
    threshold: float
    accuracy: float  # of the top choice, all prompts
    confident_accuracy: float  # among prompts at or above the threshold
    coverage: float  # share of prompts at or above the threshold

    def to_dict(self) -> dict:
        return dict(self.__dict__)


TEMPERATURES = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)


def calibrate(
    model: CentroidRouterModel,
    texts: np.ndarray,
    contexts: np.ndarray | None,
    labels: Sequence[str],
    target_accuracy: float = 0.95,
) -> Calibration:
    """The temperature minimising held-out negative log-likelihood (grid :data:`TEMPERATURES`), and the
    smallest threshold at which the held-out accuracy of the confident choices reaches ``target_accuracy``
    (1.0 if none does: always the global adapter)."""
    if len(texts) == 0 or len(texts) != len(labels):
        raise ValueError("calibration needs as many labels as held-out prompts, at least one")
    index = {p: i for i, p in enumerate(model.personas)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"calibration labels of unknown personas {unknown}")
    y = np.array([index[label] for label in labels])
    raw = np.stack(
        [
            model.logits(t, None if contexts is None else contexts[i]) * model.temperature
            for i, t in enumerate(texts)
        ]
    )
    raw[:, np.array([p not in set(model.trained) for p in model.personas])] = -np.inf
    best = None
    for temperature in TEMPERATURES:
        z = raw / temperature
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        nll = -float(np.mean(logp[np.arange(len(y)), y]))
        if best is None or nll < best[0]:
            best = (nll, temperature, np.exp(logp))
    assert best is not None
    _, temperature, probs = best
    top, conf = probs.argmax(1), probs.max(1)
    correct = top == y
    threshold = 1.0
    for t in np.sort(np.unique(conf)):
        chosen = conf >= t
        if correct[chosen].mean() >= target_accuracy:
            threshold = float(t)
            break
    chosen = conf >= threshold
    return Calibration(
        temperature,
        threshold,
        float(correct.mean()),
        float(correct[chosen].mean()) if chosen.any() else float("nan"),
        float(chosen.mean()),
    )


# ------------------------------------------- storage -------------------------------------------


def router_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / ROUTER_DIR


def has_router(run_dir: Path | str) -> bool:
    root = router_dir(run_dir)
    return (root / CENTROIDS_FILE).is_file() and (root / METADATA_FILE).is_file()


def save_router(run_dir: Path | str, model: CentroidRouterModel) -> Path:
    """Write the router beside the adapters of ``run_dir`` (safetensors + JSON); returns its directory."""
    root = router_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{CENTROIDS_FILE}.tmp"
    save_file(
        {
            "text": np.ascontiguousarray(model.text, dtype=np.float32),
            "context": np.ascontiguousarray(model.context, dtype=np.float32),
            "counts": np.ascontiguousarray(model.counts, dtype=np.float64),
            **model.features.tensors(),
        },
        str(tmp),
    )
    tmp.replace(root / CENTROIDS_FILE)
    write_json(
        root / METADATA_FILE,
        {
            "format": FORMAT,
            "personas": list(model.personas),
            "temperature": model.temperature,
            "threshold": model.threshold,
            "context_weight": model.context_weight,
            "encoder": model.encoder,
            "context_dimension": int(model.context.shape[1]),
            "features": {"kind": model.features.kind, "source": model.features.source},
            "info": model.info,
        },
    )
    return root


def load_router(run_dir: Path | str) -> CentroidRouterModel:
    """The router saved beside the adapters of ``run_dir``; errors name the file and field."""
    root = router_dir(run_dir)
    meta_path, tensors_path = root / METADATA_FILE, root / CENTROIDS_FILE
    for path in (meta_path, tensors_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (no centroid router saved in {run_dir})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: not JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{meta_path}: field 'format' is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
            f"expected {FORMAT!r}"
        )
    for key, kind in (
        ("personas", list),
        ("temperature", (int, float)),
        ("threshold", (int, float)),
        ("context_weight", (int, float)),
        ("encoder", str),
    ):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"{meta_path}: field {key!r} missing or of the wrong type")
    tensors = load_file(str(tensors_path))
    missing = sorted({"text", "context", "counts"} - set(tensors))
    if missing:
        raise ValueError(f"{tensors_path}: missing tensors {missing}")
    features_meta = meta.get("features") or {"kind": "identity"}
    if not isinstance(features_meta, dict) or not isinstance(features_meta.get("kind"), str):
        raise ValueError(f"{meta_path}: field 'features' must be an object with a 'kind'")
    try:
        features = FeatureMap.from_tensors(
            features_meta["kind"], tensors, str(features_meta.get("source", ""))
        )
    except ValueError as err:
        raise ValueError(f"{tensors_path}: {err}") from err
    try:
        return CentroidRouterModel(
            tuple(str(p) for p in meta["personas"]),
            tensors["text"],
            tensors["context"],
            tensors["counts"].astype(np.float64),
            float(meta["temperature"]),
            float(meta["threshold"]),
            float(meta["context_weight"]),
            meta["encoder"],
            dict(meta.get("info") or {}),
            features,
        )
    except ValueError as err:
        raise ValueError(f"{root}: {err}") from err


__all__ = [
    "CONTEXT_DIMENSION",
    "Calibration",
    "CentroidRouterModel",
    "CentroidScorer",
    "calibrate",
    "has_router",
    "load_router",
    "model_from_statistics",
    "router_dir",
    "save_router",
    "user_state",
]
