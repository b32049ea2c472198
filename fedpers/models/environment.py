"""The model a process trains with: the base model with its LoRA slots and a user-embedding slot.

A simulation process serves many users one after another, so the (frozen) model is built once per
process and settings; each message only swaps adapter weights and the user embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from fedpers.federated import FederatedConfig
from fedpers.logs import quiet_libraries
from fedpers.models.base import load_base_model, resolve_model_dir
from fedpers.models.lora import LoraSettings, attach_lora
from fedpers.models.personalized import PersonalizedLM
from fedpers.models.user_embedding import UserEmbedding


@dataclass(eq=False)  # hashed by identity: one per process and settings
class ModelEnvironment:
    model: PersonalizedLM
    tokenizer: PreTrainedTokenizerBase
    public_embedding: torch.Tensor  # data-independent initial user embedding
    model_id: str = ""  # names the base model's weights (what cached trunk states depend on)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def trunk_layer(self) -> int | None:
        """The first LoRA layer, below which hidden states are cached (``None``: full path only)."""
        return self.model.trunk_layer


def model_id(model_name: str) -> str:
    """A name for the base model's weights: the packaged model's digest-named cache folder, the
    deterministic tiny model, or a local directory's absolute path."""
    if model_name == "tiny":
        return "tiny"
    return str(resolve_model_dir(model_name).resolve())


@lru_cache(maxsize=2)
def _model(model_name: str, lora_key: tuple, embedding_tokens: int) -> ModelEnvironment:
    r, alpha, targets, layers, seed, train_a = lora_key
    quiet_libraries()
    base, tokenizer = load_base_model(model_name)
    peft_model = attach_lora(
        base,
        LoraSettings(r=r, alpha=alpha, target_modules=targets, top_layers=layers, init_seed=seed),
    )
    embedding = UserEmbedding.public_init(
        embedding_tokens, peft_model.get_input_embeddings(), tokenizer
    )
    public = embedding.embedding.weight.detach().clone()
    model = PersonalizedLM(peft_model, embedding)
    model.train_lora_a = train_a
    return ModelEnvironment(model, tokenizer, public, model_id(model_name))


def model_environment(config: FederatedConfig) -> ModelEnvironment:
    lora = config.lora()
    key = (lora.r, lora.alpha, lora.target_modules, lora.top_layers, lora.init_seed, lora.train_a)
    return _model(config.model.model, key, config.model.embedding_tokens)
