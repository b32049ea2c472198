"""The model a process trains with: the base model with its LoRA slots and a user-embedding slot.

A simulation process serves many users one after another, so the (frozen) model is built once per
process and settings; each message only swaps adapter weights and the user embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedpers.federated import FederatedConfig
from fedpers.logs import quiet_libraries
from fedpers.models.base import load_base_model, resolve_model_dir
from fedpers.models.lora import LoraSettings, adapter_arrays, attach_lora
from fedpers.models.personalized import PersonalizedLM
from fedpers.models.precision import resolve_bf16
from fedpers.models.user_embedding import UserEmbedding


@dataclass(eq=False)  # hashed by identity: one per process and settings
class ModelEnvironment:
    model: PersonalizedLM
    tokenizer: PreTrainedTokenizerBase
    public_embedding: torch.Tensor  # data-independent initial user embedding
    model_id: str = ""  # names the base model's weights (what cached trunk states depend on)
    # the user embedding's learning rate factor at its entry layer (1 at the input; see public_prompt)
    embedding_lr_scale: float = 1.0
    # the LoRA weights as attach_lora initialised them (seeded by lora_init_seed, data-independent): where a
    # federation starts, whatever adapter weights the process has loaded into the model since
    initial_adapter: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def embedding_layer(self) -> int:
        """The decoder layer the user embedding's prompt enters (0: the input)."""
        return self.model.embedding_layer

    @property
    def states_id(self) -> str:
        """What cached hidden states depend on: the base model's weights and the precision of the frozen
        layers that computed them (:mod:`fedpers.models.precision`)."""
        return f"{self.model_id}/bf16" if self.model.bf16 else self.model_id

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


def public_prompt(model: PersonalizedLM, embedding: UserEmbedding, layer: int) -> torch.Tensor:
    """The public initial prompt entering ``layer``: the states there of the public initialisation text
    (:data:`fedpers.models.user_embedding.PUBLIC_INIT_TEXT`, whose token embeddings ``embedding`` holds),
    computed without any data, so the initial user embedding stays data-independent at every layer."""
    start = embedding.embedding.weight.detach().clone()
    if layer == 0:
        return start
    from fedpers.models.trunk import causal_lm_parts, run_layers

    backbone, _ = causal_lm_parts(model.lm)
    with torch.no_grad():
        ones = torch.ones((1, start.shape[0]), dtype=torch.long)
        return run_layers(backbone, start.unsqueeze(0), ones, 0, layer)[0].clone()


def check_embedding_layer(model: PersonalizedLM, layer: int) -> None:
    """The entry layer must be the input, or a layer at or below the first LoRA layer of a model whose trunk
    can be run layer by layer (a ValueError naming the setting otherwise)."""
    if layer == 0:
        return
    if layer < 0:
        raise ValueError(f"setting embedding_layer: 0 or more, got {layer}")
    if model.trunk_layer is None:
        raise ValueError(
            f"setting embedding_layer: {layer} needs a model whose frozen layers run on their own "
            "(a Llama-layout decoder with LoRA above layer 0); this one takes the full path only, so use 0"
        )
    if layer > model.trunk_layer:
        raise ValueError(
            f"setting embedding_layer: at most this model's first LoRA layer ({model.trunk_layer}), got "
            f"{layer}; lower it (0: the input)"
        )


@lru_cache(maxsize=2)
def _model(
    model_name: str,
    lora_key: tuple,
    embedding_tokens: int,
    embedding_layer: int = 0,
    bf16: bool = False,
) -> ModelEnvironment:
    r, alpha, targets, layers, seed, train_a = lora_key
    quiet_libraries()
    base, tokenizer = load_base_model(model_name)
    peft_model = attach_lora(
        base,
        LoraSettings(r=r, alpha=alpha, target_modules=targets, top_layers=layers, init_seed=seed),
    )
    initial = adapter_arrays(peft_model)
    embedding = UserEmbedding.public_init(
        embedding_tokens, peft_model.get_input_embeddings(), tokenizer
    )
    model = PersonalizedLM(peft_model, embedding, embedding_layer)
    check_embedding_layer(model, embedding_layer)
    model.train_lora_a = train_a
    model.bf16 = bf16
    at_input = embedding.embedding.weight.detach().clone()
    public = public_prompt(model, embedding, embedding_layer)
    with torch.no_grad():
        embedding.embedding.weight.copy_(public)
    scale = float(public.norm(dim=-1).mean() / at_input.norm(dim=-1).mean())
    return ModelEnvironment(model, tokenizer, public, model_id(model_name), scale, initial)


def model_environment(config: FederatedConfig) -> ModelEnvironment:
    lora = config.lora()
    key = (lora.r, lora.alpha, lora.target_modules, lora.top_layers, lora.init_seed, lora.train_a)
    return _model(
        config.model.model,
        key,
        config.model.embedding_tokens,
        config.model.embedding_layer,
        resolve_bf16(config.model.bf16),
    )


def embedding_learning_rate(config: FederatedConfig, env: ModelEnvironment) -> float:
    """``embedding_lr`` at the prompt's entry layer: scaled by the ratio of the public initial prompt's mean
    norm there to its norm at the input (hidden states grow with depth; Adam's steps do not)."""
    return config.local.embedding_lr * env.embedding_lr_scale
