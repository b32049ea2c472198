"""Base models, chat encoding, LoRA adapters and the on-device user embedding."""

from fedpers.models.base import DEFAULT_MODEL, cache_gguf, load_base_model, smollm2_gguf_path
from fedpers.models.chat import (
    IGNORE_INDEX,
    EncodedExample,
    collate,
    encode_conversations,
    encode_messages,
)
from fedpers.models.lora import (
    AdapterDelta,
    LoraSettings,
    adapter_arrays,
    attach_lora,
    load_adapter_arrays,
)
from fedpers.models.personalized import PersonalizedLM, sequence_losses
from fedpers.models.user_embedding import UserEmbedding

__all__ = [
    "DEFAULT_MODEL",
    "IGNORE_INDEX",
    "AdapterDelta",
    "EncodedExample",
    "LoraSettings",
    "PersonalizedLM",
    "UserEmbedding",
    "adapter_arrays",
    "attach_lora",
    "cache_gguf",
    "collate",
    "encode_conversations",
    "encode_messages",
    "load_adapter_arrays",
    "load_base_model",
    "sequence_losses",
    "smollm2_gguf_path",
]
