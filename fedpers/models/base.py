"""Loading a frozen base LLM: the packaged SmolLM2 GGUF (cached as safetensors), a local HF directory, or the tiny test model."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedpers.basemodel import (
    DEFAULT_MODEL,
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    TINY_MODEL,
    smollm2_gguf_path,
)
from fedpers.basemodel import file_digest as _file_digest

__all__ = [
    "DEFAULT_MODEL",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACKAGE",
    "cache_gguf",
    "cache_root",
    "is_cached",
    "load_base_model",
    "resolve_model_dir",
    "smollm2_gguf_path",
]

_CACHE_MARKER = "fedpers-cache.json"


def cache_root() -> Path:
    """Where dequantized model weights are cached (``$FEDPERS_CACHE`` or ``~/.cache/fedpers``)."""
    env = os.environ.get("FEDPERS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fedpers"


def is_cached(directory: Path) -> bool:
    """True when ``directory`` holds a complete dequantized copy written by :func:`cache_gguf`."""
    return (directory / _CACHE_MARKER).is_file() and (directory / "config.json").is_file()


def cache_gguf(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Dequantize ``gguf`` once into safetensors under the cache and return that directory.

    The copy is written to a temporary directory and renamed into place, so a crash or a
    concurrent loader never leaves a half-written cache behind.
    """
    digest = _file_digest(gguf)
    target = (cache_dir or cache_root() / "models") / f"{gguf.stem}-{digest[:12]}"
    if is_cached(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # GGUF-loaded models refuse save_pretrained until this is removed
        quantizer.remove_quantization_config(model)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"source": gguf.name, "sha256": digest}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not is_cached(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Map a model option (``smollm2`` or a local Hugging Face directory) to a loadable directory."""
    if name == DEFAULT_MODEL:
        return cache_gguf(smollm2_gguf_path(), cache_dir)
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{name}: not a model option ('{DEFAULT_MODEL}', 'tiny') nor a local Hugging Face model directory"
        )
    return path


def load_base_model(
    name: str = DEFAULT_MODEL, *, cache_dir: Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer: ``smollm2`` (default), ``tiny`` or a local HF directory."""
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if name == TINY_MODEL:
        from fedpers.models.tiny import build_tiny_model

        model, tokenizer = build_tiny_model()
    else:
        directory = resolve_model_dir(name, cache_dir)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer
