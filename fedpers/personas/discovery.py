"""Persona discovery when the data declares none: private spherical k-means on the router's statistics,
the choice of K, and the adjusted Rand index that measures a clustering against known personas.

**Private k-means.** Each device holds the unit mean ``u`` of its prompt embeddings. A round: the server
broadcasts K centroids; every device puts ``u`` in the slot of its nearest centroid (cosine) and uploads
it as a router-statistics upload (:mod:`fedpers.personas.router_stats`: noised on the device, summed by
SecAgg+); the directions of the unmasked sums are the next centroids. Each round is one Skellam release
per device, so ``rounds`` rounds for each K tried compose (the accountant adds them up). Starting
centroids: the private global mean (the first release) plus independent Gaussian directions of scale
``spread`` (public randomness), so no device's data picks them.

**Choosing K: the centroid silhouette.** From the same sums alone, for cluster ``k`` with sum ``S_k`` of
its ``n_k`` members (unit vectors) and centroid ``c_j = S_j / ||S_j||``::

    a_k = 1 - ||S_k|| / n_k          mean cosine distance of the members to their own centroid
    b_k = 1 - max_{j != k} <S_k, c_j> / n_k     ... to the nearest other centroid
    s(K) = sum_k n_k (b_k - a_k) / max(a_k, b_k)  /  sum_k n_k

(the simplified silhouette of Hruschka et al., 2004, aggregated per cluster because only sums are
released). A cluster of fewer than two members has silhouette 0 (Rousseeuw's convention, 1987): a singleton is
trivially "tight", and without it K = n would win on a handful of public users. The K with the largest
``s(K)`` is chosen: tight clusters far from each other. It needs no
labels and no data beyond the private sums. Noise of per-coordinate variance ``sigma^2`` inflates
``||S_k||^2`` by ``d sigma^2`` on average, so with noise ``||S_k||`` is estimated as
``sqrt(max(||S_k||^2 - d sigma^2, 0))`` (``<S_k, c_j>`` needs no correction: the noises of two slots are
independent).

**Public start** (:func:`public_start`). Every round for every K tried is a release, so at a fixed epsilon the
noise of each grows with ``1 + rounds * len(ks)``. Where the run has public data (public by construction, see
:mod:`fedpers.warmstart`), K and the starting centroids come from it instead, at no privacy cost: clean
spherical k-means of the public users' unit means for each K (the best of ``restarts`` random starts by the
k-means objective ``sum_k ||S_k||``: with two public users per persona one start often merges two personas),
the K of the largest centroid silhouette, and its centroids start the private rounds at that K only
(``rounds`` releases in all; no global-mean release).
Public personas, if the public data declares any, are not used: the choice is the silhouette's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedpers.personas.encoder import unit_rows


def adjusted_rand_index(truth: Sequence[object], found: Sequence[object]) -> float:
    """Adjusted Rand index of two labelings of the same items (Hubert & Arabie, 1985): 1 for identical
    partitions (up to renaming), about 0 for independent ones. Two single-cluster labelings give 1."""
    if len(truth) != len(found):
        raise ValueError(f"labelings of different lengths: {len(truth)} and {len(found)}")
    n = len(truth)
    if n < 2:
        raise ValueError("the adjusted Rand index needs at least two items")
    _, a = np.unique(np.asarray(truth, dtype=object).astype(str), return_inverse=True)
    _, b = np.unique(np.asarray(found, dtype=object).astype(str), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if maximum == expected:  # both labelings trivial in the same way
        return 1.0
    return (index - expected) / (maximum - expected)


def centroid_silhouette(sums: np.ndarray, counts: np.ndarray, noise_variance: float = 0.0) -> float:
    """``s(K)`` of the module docstring from per-cluster sums (K, d) and counts (K,), noised with
    per-coordinate variance ``noise_variance`` (0: clean); clusters with a count below one are ignored, those
    below two score 0; fewer than two clusters left give ``-1``."""
    keep = counts >= 1
    sums, counts = np.asarray(sums, np.float64)[keep], np.asarray(counts, np.float64)[keep]
    if len(sums) < 2:
        return -1.0
    centroids = unit_rows(sums).astype(np.float64)
    squared = (sums**2).sum(1) - sums.shape[1] * noise_variance
    a = 1.0 - np.clip(np.sqrt(np.maximum(squared, 0.0)) / counts, 0.0, 1.0)
    cross = (sums @ centroids.T) / counts[:, None]
    np.fill_diagonal(cross, -np.inf)
    b = 1.0 - np.clip(cross.max(1), -1.0, 1.0)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    s = np.where(counts < 2, 0.0, s)  # a singleton's silhouette is 0
    return float((counts * s).sum() / counts.sum())


# what one round of the private path returns: per-slot sums (K, d) and counts (K,)
SumRound = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Clustering:
    """The outcome of private k-means: assignments (as the devices would compute them from the final
    centroids), centroids, the last round's sums and counts, the silhouette and the rounds run."""

    k: int
    labels: np.ndarray
    centroids: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    silhouette: float
    rounds: int

    @property
    def clusters(self) -> int:
        """Clusters that ended with a (noised) count of at least one: the K actually found."""
        return int((np.asarray(self.counts) >= 1).sum())


def nearest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest centroid (cosine) of each row."""
    return np.argmax(np.asarray(vectors) @ np.asarray(centroids).T, axis=1)


def spherical_kmeans(
    vectors: np.ndarray,
    k: int,
    sum_round: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    global_mean: np.ndarray | None,
    rng: np.random.Generator,
    rounds: int = 6,
    spread: float = 1.0,
    noise_variance: float = 0.0,
    start: np.ndarray | None = None,
) -> Clustering:
    """Private k-means (module docstring). ``vectors`` are the devices' unit means: they are used only
    *on the devices' side* (each device's nearest centroid); ``sum_round(labels)`` stands for one private
    round and returns what the server unmasks (noised per-slot sums and counts, per-coordinate noise
    variance ``noise_variance`` in the sums' units). ``rng`` draws the public starting directions; ``start``
    (K, d), public centroids (:func:`public_start`), replaces them (``global_mean`` is then unused)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    d = vectors.shape[1]
    if start is not None:
        if np.shape(start) != (k, d):
            raise ValueError(
                f"start: expected {k} centroids of dimension {d}, got shape {np.shape(start)}"
            )
        centroids = unit_rows(np.asarray(start, np.float64))
    elif global_mean is None:
        raise ValueError("spherical_kmeans needs global_mean or start")
    else:
        mean = unit_rows(np.asarray(global_mean, np.float64)[None])[0].astype(np.float64)
        centroids = unit_rows(mean[None] + spread * rng.normal(size=(k, d)) / math.sqrt(d))
    sums, counts = np.zeros((k, d)), np.zeros(k)
    for _ in range(rounds):
        labels = nearest(vectors, centroids)
        sums, counts = sum_round(labels)
        fresh = unit_rows(sums)
        empty = (counts < 1) | (np.linalg.norm(sums, axis=1) == 0)
        centroids = np.where(empty[:, None], centroids, fresh)
    labels = nearest(vectors, centroids)
    return Clustering(
        k,
        labels,
        np.asarray(centroids),
        sums,
        counts,
        centroid_silhouette(sums, counts, noise_variance),
        rounds,
    )


def choose_k(clusterings: Sequence[Clustering], tolerance: float = 1e-9) -> Clustering:
    """The clustering with the largest centroid silhouette; among those within ``tolerance`` of it, the one
    with the fewest non-empty clusters (a K whose extra clusters stayed empty found the same partition)."""
    if not clusterings:
        raise ValueError("no clusterings to choose from")
    top = max(c.silhouette for c in clusterings)
    return min(
        (c for c in clusterings if c.silhouette >= top - tolerance),
        key=lambda c: (c.clusters, c.k),
    )


def clean_sums(vectors: np.ndarray, k: int) -> SumRound:
    """One round's per-slot sums and counts of ``vectors`` without noise (public data, or a reference)."""
    x = np.asarray(vectors, np.float64)

    def run(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        onehot = np.eye(k)[np.asarray(labels)]
        return onehot.T @ x, onehot.sum(0)

    return run


def objective(clustering: Clustering) -> float:
    """The spherical k-means objective of a clean clustering: ``sum_k ||S_k||`` (the summed cosine of the members
    to their centroids), larger is better."""
    return float(np.linalg.norm(clustering.sums, axis=1).sum())


def public_start(
    public_vectors: np.ndarray,
    ks: Sequence[int],
    rng: np.random.Generator,
    rounds: int = 8,
    restarts: int = 20,
) -> tuple[Clustering, list[Clustering]]:
    """K and starting centroids from public data (module docstring): clean spherical k-means of the public
    users' unit means ``public_vectors`` for each K in ``ks`` (the best of ``restarts`` starts by
    :func:`objective`), chosen by the centroid silhouette (:func:`choose_k`); the chosen clustering and all of
    them. Spends no privacy: nothing private is read."""
    x = unit_rows(np.asarray(public_vectors, np.float64)).astype(np.float64)
    if len(x) < 2:
        raise ValueError(f"a public start needs at least two public users, got {len(x)}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    mean = x.mean(0)
    found = [
        max(
            (
                spherical_kmeans(x, k, clean_sums(x, k), mean, rng, rounds=rounds)
                for _ in range(restarts)
            ),
            key=objective,
        )
        for k in ks
        if k <= len(x)
    ]
    return choose_k(found), found
