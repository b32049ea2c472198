"""The router's feature map: a public linear projection of the sentence embeddings before the private sums.

**Why.** Each device's router upload has a user-level L2 bound and the distributed Skellam noise added to it
has the same variance in every coordinate (:mod:`fedpers.personas.router_stats`). In the encoder's 384
dimensions the noise of a persona's sum has norm about ``sigma sqrt(384)``, while the sum itself has norm at
most the number of its devices: with a few devices per persona the centroids are mostly noise. Routing needs
only the few directions that tell the personas apart, so the embeddings are first mapped to ``r`` of them
and the noise of a sum shrinks to ``sigma sqrt(r)``.

**The map**, learned from *public* data only (the scenario's public split, documented as public; never the
devices' data), is ``f(x) = unit(W (x - mu))`` with ``mu`` the public mean embedding and ``W`` (``r x d``):

- ``lda`` when the public data declares the run's personas: Fisher's linear discriminant, the top ``K - 1``
  generalised eigenvectors of ``S_b w = lambda (S_w + rho I) w`` (``S_b`` the between-persona scatter of
  the public persona means, ``S_w`` the summed within-persona covariances, ``rho`` a ridge), each scaled to
  unit length;
- ``pca`` otherwise: the top ``r`` principal directions of the centred public embeddings (no labels);
- ``identity``: no public data; ``f(x) = x``.

Rows are re-normalised after the map (``unit``), so a device's contribution keeps the bound it had, whatever
the map: the map costs no privacy and a map a server chose badly only costs accuracy. Each eigenvector's sign
is fixed (its largest-magnitude coordinate positive) so the same public data gives the same map.

The map is part of the router and is stored with it (``features`` tensors of ``router/centroids.safetensors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedpers.personas.encoder import unit_rows

Kind = Literal["identity", "pca", "lda"]
KINDS: tuple[str, ...] = ("identity", "pca", "lda")
PCA_DIMENSIONS = 8
RIDGE = 1e-3


@dataclass(frozen=True)
class FeatureMap:
    """``f(x) = unit(W (x - mu))``; ``identity`` keeps ``x`` (``W`` and ``mu`` are then empty)."""

    kind: Kind
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (r, d)
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown feature map {self.kind!r}; expected one of {KINDS}")
        if self.kind == "identity":
            return
        if self.components.ndim != 2 or self.components.shape[0] < 1:
            raise ValueError(
                f"components: expected (r, d) with r >= 1, got {self.components.shape}"
            )
        if self.mean.shape != (self.components.shape[1],):
            raise ValueError(
                f"mean: expected shape ({self.components.shape[1]},), got {self.mean.shape}"
            )
        if not (np.all(np.isfinite(self.components)) and np.all(np.isfinite(self.mean))):
            raise ValueError("a feature map must be finite")

    @property
    def input_dimension(self) -> int | None:
        return None if self.kind == "identity" else int(self.components.shape[1])

    def dimension(self, input_dimension: int) -> int:
        """``r``: the dimension of the mapped rows."""
        return input_dimension if self.kind == "identity" else int(self.components.shape[0])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The mapped rows, unit L2 norm each (float32)."""
        x = np.asarray(rows, dtype=np.float64)
        if self.kind == "identity":
            return unit_rows(x)
        if x.ndim not in (1, 2) or x.shape[-1] != self.components.shape[1]:
            raise ValueError(
                f"feature map of {self.components.shape[1]}-dimensional rows got shape {x.shape}"
            )
        return unit_rows((x - self.mean) @ self.components.T)

    def tensors(self) -> dict[str, np.ndarray]:
        """What the router file stores (empty arrays for the identity)."""
        return {
            "features_mean": np.ascontiguousarray(self.mean, dtype=np.float64),
            "features_components": np.ascontiguousarray(self.components, dtype=np.float64),
        }

    @classmethod
    def from_tensors(cls, kind: str, tensors: dict, source: str = "") -> FeatureMap:
        if kind == "identity":
            return IDENTITY
        missing = sorted({"features_mean", "features_components"} - set(tensors))
        if missing:
            raise ValueError(f"feature map {kind!r}: missing tensors {missing}")
        return cls(
            kind,  # type: ignore[arg-type]
            np.asarray(tensors["features_mean"], np.float64),
            np.asarray(tensors["features_components"], np.float64),
            source,
        )

    def to_bytes(self) -> bytes:
        """The map as safetensors (its kind and source in the header's metadata): how it travels to devices."""
        from safetensors.numpy import save

        return save(self.tensors(), metadata={"kind": self.kind, "source": self.source})

    @classmethod
    def from_bytes(cls, blob: bytes) -> FeatureMap:
        """The inverse of :meth:`to_bytes`; an empty blob is the identity. Errors say what is wrong."""
        if not blob:
            return IDENTITY
        from safetensors.numpy import load

        from fedpers.adapters import safetensors_metadata

        try:
            tensors = load(bytes(blob))
            meta = safetensors_metadata(bytes(blob))
        except Exception as err:  # struct, JSON and safetensors each raise their own error types
            raise ValueError(f"router feature map: not a safetensors blob ({err})") from err
        return cls.from_tensors(str(meta.get("kind", "")), tensors, str(meta.get("source", "")))


IDENTITY = FeatureMap("identity", np.zeros(0), np.zeros((0, 0)))


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Each row flipped so that its largest-magnitude coordinate is positive."""
    idx = np.argmax(np.abs(vectors), axis=1)
    signs = np.sign(vectors[np.arange(len(vectors)), idx])
    return vectors * np.where(signs == 0, 1.0, signs)[:, None]


def pca_map(rows: np.ndarray, dimensions: int = PCA_DIMENSIONS, source: str = "") -> FeatureMap:
    """The top ``dimensions`` principal directions of ``rows`` (centred)."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"PCA needs at least two rows, got shape {x.shape}")
    r = min(dimensions, x.shape[1], len(x) - 1)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return FeatureMap("pca", mean, _fix_signs(vt[:r]), source)


def lda_map(
    rows: np.ndarray, labels: list[str] | tuple[str, ...], ridge: float = RIDGE, source: str = ""
) -> FeatureMap:
    """Fisher's discriminant directions of labelled ``rows``: ``K - 1`` for ``K`` labels (see the module)."""
    from scipy.linalg import eigh

    x = np.asarray(rows, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"LDA needs one label per row, got {len(y)} labels for shape {x.shape}")
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise ValueError(f"LDA needs at least two labels, got {classes}")
    mean = x.mean(0)
    d = x.shape[1]
    within = np.zeros((d, d))
    between = np.zeros((d, d))
    for c in classes:
        part = x[y == c]
        centred = part - part.mean(0)
        within += centred.T @ centred / max(len(part) - 1, 1)
        m = part.mean(0) - mean
        between += np.outer(m, m)
    _, vectors = eigh(between, within + ridge * np.eye(d))
    top = vectors[:, ::-1][:, : len(classes) - 1].T
    top = top / np.linalg.norm(top, axis=1, keepdims=True)
    return FeatureMap("lda", mean, _fix_signs(top), source)


def public_feature_map(
    rows: np.ndarray,
    labels: list[str | None] | tuple[str | None, ...],
    personas: tuple[str, ...] | list[str],
    source: str = "",
) -> FeatureMap:
    """The map of the module docstring from public embeddings ``rows`` and their personas (``None``: none):
    LDA over the run's ``personas`` when the public rows declare every one of them, PCA otherwise, the
    identity with no public rows."""
    x = np.asarray(rows, dtype=np.float64)
    if len(x) < 2:
        return IDENTITY
    wanted = set(personas)
    if len(wanted) >= 2 and wanted <= {p for p in labels if p is not None}:
        keep = np.array([p in wanted for p in labels])
        return lda_map(x[keep], [str(p) for p, k in zip(labels, keep) if k], source=source)
    return pca_map(x, source=source)
