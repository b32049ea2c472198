"""Inferred personas chosen from the prompts: the device scores its own prompts against public centroids.

When the data declares no personas, every device picks the persona adapter it trains. Scoring its data under
every adapter (IFCA, :mod:`clients.persona`) recovers nothing while the adapters are alike (they all start
from the same public warm start). Here the choice comes from what the prompts are about instead, against K
centroids the server computes from the run's *public* data (:func:`fedpers.personas.discovery.public_start`,
which also chooses K) and sends in the round instructions.

**Scores.** With ``c_1 .. c_K`` the public unit centroids, ``cbar`` their mean and ``D`` the matrix of rows
``c_k - cbar``, a prompt's unit embedding ``e`` is mapped to ``v = D e`` (its cosine to each centroid, less
the part common to all of them, which no argmax sees) and clipped to L2 norm ``B``::

    score = sum_i  v_i * min(1, B / ||v_i||) / B          (one term per conversation's opening prompt)

Adding or removing one conversation moves the score vector by at most 1 in L2 norm (the L2 sensitivity is 1).
``B`` is a public figure: the 90th percentile of ``||v||`` over the public prompts, so most prompts are not
clipped. The device adds Gaussian noise of standard deviation ``sigma`` to every score and takes the argmax
(post-processing): one Gaussian mechanism of noise multiplier ``sigma``, recorded in the device's ledger
before anything leaves (the same event as the loss choice's, whose sensitivity is normalised the same way).
The choice stays on the device; it decides which slot of the masked upload carries the update.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedpers.adapters import safetensors_metadata
from fedpers.personas.discovery import Clustering, public_start
from fedpers.personas.encoder import unit_rows

BOUND_QUANTILE = 0.9
DEFAULT_KS = range(2, 9)
_CENTROIDS, _META = "centroids", "persona_centroids"


@dataclass(frozen=True)
class PromptCentroids:
    """What the instructions carry for a prompt choice: the personas in slot order, their public unit
    centroids (K, d) and the clip bound ``B`` (module docstring); all public."""

    personas: tuple[str, ...]
    centroids: np.ndarray
    bound: float

    def __post_init__(self) -> None:
        c = np.asarray(self.centroids)
        if c.ndim != 2 or c.shape[0] != len(self.personas) or c.shape[0] < 2:
            raise ValueError(
                f"persona centroids: expected ({len(self.personas)}, d) with at least two personas, "
                f"got shape {c.shape}"
            )
        if not np.all(np.isfinite(c)) or not (np.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"persona centroids: non-finite values or bound {self.bound!r} <= 0")

    @property
    def dimension(self) -> int:
        return int(np.asarray(self.centroids).shape[1])

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        meta = {_META: json.dumps({"personas": list(self.personas), "bound": self.bound})}
        return save({_CENTROIDS: np.ascontiguousarray(self.centroids, np.float32)}, metadata=meta)

    @classmethod
    def from_bytes(cls, blob: bytes) -> PromptCentroids:
        """Read what :meth:`to_bytes` wrote (safetensors; no pickle); anything else is a clear error."""
        from safetensors.numpy import load

        try:
            tensors = load(blob)
            meta = json.loads(safetensors_metadata(blob)[_META])
            return cls(tuple(meta["personas"]), tensors[_CENTROIDS], float(meta["bound"]))
        except Exception as err:  # safetensors raises its own error type
            raise ValueError(f"persona centroids in the instructions: unreadable ({err})") from None

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """The clean score vector of the module docstring for prompt embeddings (n, d) (unit rows)."""
        e = np.asarray(embeddings, np.float64)
        if e.ndim != 2 or e.shape[1] != self.dimension:
            raise ValueError(
                f"prompt embeddings: expected (n, {self.dimension}), got shape {e.shape}"
            )
        c = np.asarray(self.centroids, np.float64)
        v = e @ (c - c.mean(0)).T
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        clipped = v * np.minimum(1.0, self.bound / np.maximum(norms, 1e-12))
        return clipped.sum(0) / self.bound

    def noisy_scores(
        self, embeddings: np.ndarray, noise_multiplier: float, rng: np.random.Generator
    ) -> dict[str, float]:
        """The scores plus Gaussian noise of std ``noise_multiplier`` each (L2 sensitivity 1); higher is better."""
        if noise_multiplier <= 0:
            raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}")
        noisy = self.scores(embeddings) + rng.normal(0.0, noise_multiplier, len(self.personas))
        return {p: float(s) for p, s in zip(self.personas, noisy)}


@dataclass(frozen=True)
class PublicDiscovery:
    """The public start of a prompt choice: the centroids sent to the devices, and what justifies K (the centroid
    silhouette of the public clustering for every K tried, the K it favours, the public users it used)."""

    centroids: PromptCentroids
    silhouettes: dict[int, float]
    favoured_k: int
    public_users: int
    # each public user's centroid (by persona name), when the public users' ids were given: the persona whose
    # layered weight their held-out conversations score (fedpers.personas.layered)
    public_groups: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "k": len(self.centroids.personas),
            "personas": list(self.centroids.personas),
            "favoured_k": self.favoured_k,
            "silhouette_by_k": {str(k): round(s, 4) for k, s in self.silhouettes.items()},
            "public_users": self.public_users,
            "public_users_per_persona": {
                p: sum(g == p for g in self.public_groups.values()) for p in self.centroids.personas
            }
            if self.public_groups
            else {},
            "bound": self.centroids.bound,
        }

    def explain(self) -> str:
        """One line for the run's output: K, the silhouettes and the K they favour."""
        k = len(self.centroids.personas)
        table = ", ".join(f"K={j}: {s:.3f}" for j, s in self.silhouettes.items())
        verdict = (
            "the public data favours the same K"
            if k == self.favoured_k
            else f"the public data favours K = {self.favoured_k} (set --personas to {self.favoured_k} names)"
        )
        return (
            f"K = {k} persona centroids from {self.public_users} public users; centroid silhouette "
            f"{table}; {verdict}"
        )


def named_order(
    labels: np.ndarray, public_personas: Sequence[str | None], personas: Sequence[str]
) -> list[int]:
    """Which cluster each of ``personas`` gets: the assignment that puts the most public users under the
    persona they declare (Hungarian method on the clusters x personas counts). Clusters stay in their order
    when the public users declare none of ``personas``. The router's public prior and the layered personas'
    mix weights read the public data by persona name: named this way, a device's slot means what they mean
    by it."""
    k = len(personas)
    counts = np.zeros((k, k))
    index = {p: j for j, p in enumerate(personas)}
    for cluster, declared in zip(np.asarray(labels).tolist(), public_personas):
        if declared is not None and declared in index:
            counts[int(cluster)][index[declared]] += 1
    if not counts.any():
        return list(range(k))
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(counts, maximize=True)
    order = [0] * k
    for cluster, persona in zip(rows, cols):
        order[int(persona)] = int(cluster)
    return order


def discover_public(
    user_means: np.ndarray,
    public_prompts: np.ndarray,
    personas: Sequence[str],
    rng: np.random.Generator,
    ks: Sequence[int] = DEFAULT_KS,
    public_personas: Sequence[str | None] = (),
    public_ids: Sequence[str] = (),
) -> PublicDiscovery:
    """Centroids for ``personas`` (K = their number) from the public users' unit mean prompt embeddings, the
    silhouette of every K in ``ks`` (and K itself) to justify it, and the bound ``B`` from the public prompts'
    embeddings (:data:`BOUND_QUANTILE`). With the personas the public users declare (``public_personas``),
    each centroid is named after the persona most of its public users declare (:func:`named_order`); the
    choice of K never reads them. With the public users' ids (``public_ids``, in the order of ``user_means``)
    each is mapped to the persona of its cluster's centroid (``public_groups``). Nothing private is read."""
    k = len(personas)
    tried = sorted({*(j for j in ks if j <= len(user_means)), k})
    if k > len(user_means):
        raise ValueError(
            f"{k} personas but only {len(user_means)} public users to place their centroids"
        )
    best, found = public_start(user_means, tried, rng)
    by_k: dict[int, Clustering] = {c.k: c for c in found}
    chosen = by_k[k]
    order = (
        named_order(chosen.labels, public_personas, personas)
        if len(public_personas)
        else list(range(k))
    )
    if len(public_ids) and len(public_ids) != len(user_means):
        raise ValueError(f"{len(public_ids)} public user ids for {len(user_means)} public users")
    position = {cluster: i for i, cluster in enumerate(order)}
    groups = {u: personas[position[int(c)]] for u, c in zip(public_ids, chosen.labels)}
    centroids = unit_rows(np.asarray(chosen.centroids, np.float64)[order])
    v = np.asarray(public_prompts, np.float64) @ (centroids - centroids.mean(0)).T
    bound = float(np.quantile(np.linalg.norm(v, axis=1), BOUND_QUANTILE))
    return PublicDiscovery(
        PromptCentroids(tuple(personas), centroids.astype(np.float32), bound),
        {c.k: c.silhouette for c in found},
        best.clusters,
        len(user_means),
        groups,
    )
