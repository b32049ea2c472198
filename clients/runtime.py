"""Per-process client environment: the base model with its LoRA slots, and the users' data.

A simulation process serves many users one after another, so the (frozen) model is built once per
process and settings; each message only swaps adapter weights and the user embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from fedpers.data import SyntheticConfig, generate, import_shakespeare, read_jsonl, train_heldout_split
from fedpers.federated import FederatedConfig
from fedpers.logs import quiet_libraries
from fedpers.models import LoraSettings, PersonalizedLM, UserEmbedding, attach_lora, encode_conversations, load_base_model
from fedpers.models.chat import EncodedExample


@dataclass(eq=False)  # hashed by identity: one per process and settings
class ModelEnvironment:
    model: PersonalizedLM
    tokenizer: object
    public_embedding: torch.Tensor  # data-independent initial user embedding

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id


@dataclass
class UserData:
    user_id: str
    declared_persona: str | None
    train: list[EncodedExample]
    heldout: list[EncodedExample]


@lru_cache(maxsize=2)
def _model(model_name: str, lora_key: tuple, embedding_tokens: int) -> ModelEnvironment:
    r, alpha, targets, layers, seed = lora_key
    quiet_libraries()
    base, tokenizer = load_base_model(model_name)
    peft_model = attach_lora(base, LoraSettings(r=r, alpha=alpha, target_modules=targets, top_layers=layers, init_seed=seed))
    embedding = UserEmbedding.public_init(embedding_tokens, peft_model.get_input_embeddings(), tokenizer)
    public = embedding.embedding.weight.detach().clone()
    return ModelEnvironment(PersonalizedLM(peft_model, embedding), tokenizer, public)


def model_environment(config: FederatedConfig) -> ModelEnvironment:
    lora = config.lora()
    key = (lora.r, lora.alpha, lora.target_modules, lora.top_layers, lora.init_seed)
    return _model(config.model, key, config.embedding_tokens)


def _data_key(config: FederatedConfig) -> tuple:
    """The settings that decide which conversations the data set holds (the cache key)."""
    return (config.data, config.users_per_persona, config.conversations_per_user, config.data_seed,
            config.personas, config.max_users)


@lru_cache(maxsize=2)
def _conversations(data: str, users_per_persona: int, conversations_per_user: int, seed: int, personas: str, max_users: int) -> tuple:
    if data == "synthetic":
        names = tuple(p for p in personas.split(",") if p)
        convs = generate(SyntheticConfig(users_per_persona=users_per_persona, conversations_per_user=conversations_per_user,
                                         seed=seed, personas=names))
    elif data == "shakespeare":
        convs = import_shakespeare(max_users=max_users or None)
    else:
        convs = read_jsonl(data, mode="strict").conversations
    order = list(dict.fromkeys(c.user_id for c in convs))
    keep = set(order[:max_users]) if max_users and data != "synthetic" else set(order)
    taken: dict[str, int] = {}
    kept = []
    for c in convs:  # at most conversations_per_user each, in data order
        if c.user_id in keep and taken.get(c.user_id, 0) < conversations_per_user:
            taken[c.user_id] = taken.get(c.user_id, 0) + 1
            kept.append(c)
    return tuple(kept)


def conversations(config: FederatedConfig) -> tuple:
    return _conversations(*_data_key(config))


def user_ids(config: FederatedConfig) -> list[str]:
    """Users in data order; simulated node ``partition-id`` i is user ``user_ids[i]``."""
    return list(dict.fromkeys(c.user_id for c in conversations(config)))


def user_data(config: FederatedConfig, user_id: str, env: ModelEnvironment) -> UserData:
    """The user's encoded train / held-out examples (cached per process and settings)."""
    return _user_data(_data_key(config), config.heldout_fraction, config.max_length, config.persona_mode, config.canaries,
                      user_id, env)


@lru_cache(maxsize=4)
def _canaries(path: str) -> tuple:
    return tuple(read_jsonl(path, mode="strict").conversations) if path else ()


@lru_cache(maxsize=64)
def _user_data(data_key: tuple, heldout_fraction: float, max_length: int, persona_mode: str, canaries: str, user_id: str,
               env: ModelEnvironment) -> UserData:
    mine = [c for c in _conversations(*data_key) if c.user_id == user_id]
    extra = [c for c in _canaries(canaries) if c.user_id == user_id]  # privacy audit only: never held out
    declared = mine[0].persona if mine else None
    return encode_user(user_id, mine, declared if persona_mode == "declared" else None, heldout_fraction, data_key[3],
                       max_length, env, extra)


def encode_user(user_id: str, conversations: list, declared_persona: str | None, heldout_fraction: float, seed: int,
                max_length: int, env: ModelEnvironment, extra_train: list = ()) -> UserData:
    """Split one user's conversations into train / held-out and encode both for ``env``'s tokenizer."""
    if not conversations:
        raise ValueError(f"no conversations for user {user_id!r}")
    train, heldout = train_heldout_split(conversations, heldout_fraction, seed=seed)
    return UserData(
        user_id=user_id,
        declared_persona=declared_persona,
        train=encode_conversations(env.tokenizer, train + list(extra_train), max_length),
        heldout=encode_conversations(env.tokenizer, heldout, max_length),
    )


def device_user_data(config: FederatedConfig, device, env: ModelEnvironment) -> UserData:
    """The user's encoded data from a device's encrypted store (:class:`clients.device.DeviceStore`).

    The declared persona is the profile's, else the conversations' (``persona_mode='declared'`` only)."""
    conversations = device.conversations()
    declared = device.declared_persona() or next((c.persona for c in conversations if c.persona), None)
    return encode_user(device.user_id, conversations, declared if config.persona_mode == "declared" else None,
                       config.heldout_fraction, config.data_seed, config.max_length, env)
