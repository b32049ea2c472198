"""Which conversations a run's data set holds, and one user's encoded train / held-out examples.

The same selection serves the simulated devices, the experimenter's evaluator and the audit's leak
scan: the data set named by the settings, split per user with the data seed. Synthetic data is generated
to size; tinyshakespeare keeps the ``max_users`` speakers with the most answers and the first
``conversations_per_user`` answers of each; a JSONL file's users are chosen per declared persona and its
conversations sampled, both seeded with the data seed (:mod:`fedpers.data.select`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from fedpers.data import (
    Conversation,
    SyntheticConfig,
    generate,
    import_shakespeare,
    read_jsonl,
    train_heldout_split,
)
from fedpers.data.select import Selection, select_conversations
from fedpers.federated import FederatedConfig
from fedpers.models.chat import EncodedExample, encode_conversations
from fedpers.models.environment import ModelEnvironment
from fedpers.models.trunk import (
    layer_states,
    layers_from_bytes,
    layers_to_bytes,
    states_from_bytes,
    states_to_bytes,
    trunk_key,
    with_entry,
    with_trunk,
)


@dataclass
class UserData:
    user_id: str
    declared_persona: str | None
    train: list[EncodedExample]
    heldout: list[EncodedExample]

    @property
    def has_trunk(self) -> bool:
        return all(e.trunk is not None for e in (*self.train, *self.heldout))

    def has_entry(self, layer: int) -> bool:
        """Every example carries the states entering ``layer`` (the user embedding's entry; 0 needs none)."""
        return layer == 0 or all(e.entry_layer == layer for e in (*self.train, *self.heldout))


class ActivationCache(Protocol):
    """Where a user's cached trunk states are kept between messages and runs (the simulated device's
    files, or a device's encrypted store): bytes under a key that names what they depend on."""

    def activations(self, key: str) -> bytes | None: ...

    def save_activations(self, key: str, data: bytes) -> None: ...


def attach_trunk(
    data: UserData, env: ModelEnvironment, cache: ActivationCache | None = None
) -> UserData:
    """``data`` with every example carrying its frozen trunk state (:mod:`fedpers.models.trunk`), and the
    states entering the user embedding's entry layer when that is above the input.

    Computed once per user, model and LoRA placement: kept on ``data`` itself (the process's cached
    copy), and in ``cache`` when given, keyed by the base model, the layer and the token ids, so a
    changed model or data set never reuses stale states. Without a cacheable trunk (an unsupported
    architecture, LoRA on layer 0) ``data`` is returned unchanged and every pass takes the full path.
    """
    layer, entry = env.trunk_layer, env.embedding_layer
    if layer is None or (data.has_trunk and data.has_entry(entry)):
        return data
    examples = [*data.train, *data.heldout]
    layers = sorted({layer} | ({entry} if 0 < entry < layer else set()))
    # one cached item per user and setting (a device's store keeps one): the trunk's states alone, or
    # the entry layer's and the trunk's together under a key naming both
    key = trunk_key(env.states_id, layer if len(layers) == 1 else layers, examples)
    stored = cache.activations(key) if cache is not None else None
    states: dict[int, list] | None = None
    if stored is not None:
        states = (
            {layer: states_from_bytes(stored)} if len(layers) == 1 else layers_from_bytes(stored)
        )
        if sorted(states) != layers or any(len(s) != len(examples) for s in states.values()):
            states = None
    if states is None:
        states = layer_states(env.model.lm, examples, env.pad_token_id, layers, bf16=env.model.bf16)
        if cache is not None:
            blob = states_to_bytes(states[layer]) if len(layers) == 1 else layers_to_bytes(states)
            cache.save_activations(key, blob)
    cut = len(data.train)
    data.train = with_trunk(data.train, states[layer][:cut], layer)
    data.heldout = with_trunk(data.heldout, states[layer][cut:], layer)
    if entry > 0:
        data.train = with_entry(data.train, states[entry][:cut], entry)
        data.heldout = with_entry(data.heldout, states[entry][cut:], entry)
    return data


def _data_key(config: FederatedConfig) -> tuple:
    """The settings that decide which conversations the data set holds (the cache key)."""
    return (
        config.dataset.data,
        config.dataset.users_per_persona,
        config.dataset.conversations_per_user,
        config.dataset.data_seed,
        config.dataset.personas,
        config.dataset.max_users,
    )


@lru_cache(maxsize=2)
def _conversations(
    data: str,
    users_per_persona: int,
    conversations_per_user: int,
    seed: int,
    personas: str,
    max_users: int,
) -> tuple:
    if data == "synthetic":
        names = tuple(p for p in personas.split(",") if p)
        convs = generate(
            SyntheticConfig(
                users_per_persona=users_per_persona,
                conversations_per_user=conversations_per_user,
                seed=seed,
                personas=names,
            )
        )
    elif data == "shakespeare":
        convs = import_shakespeare(max_users=max_users or None)
    else:
        return _selection(
            *_selection_key(
                data, personas, users_per_persona, conversations_per_user, max_users, seed
            )
        ).conversations
    order = list(dict.fromkeys(c.user_id for c in convs))
    keep = set(order[:max_users]) if max_users and data != "synthetic" else set(order)
    taken: dict[str, int] = {}
    kept = []
    for c in convs:  # at most conversations_per_user each, in data order
        if c.user_id in keep and taken.get(c.user_id, 0) < conversations_per_user:
            taken[c.user_id] = taken.get(c.user_id, 0) + 1
            kept.append(c)
    return tuple(kept)


def _selection_key(
    data: str,
    personas: str,
    users_per_persona: int,
    conversations_per_user: int,
    max_users: int,
    seed: int,
) -> tuple:
    return (
        data,
        tuple(p for p in personas.split(",") if p),
        users_per_persona,
        conversations_per_user,
        max_users,
        seed,
    )


@lru_cache(maxsize=2)
def _selection(
    data: str,
    personas: tuple[str, ...],
    users_per_persona: int,
    conversations_per_user: int,
    max_users: int,
    seed: int,
) -> Selection:
    return select_conversations(
        read_jsonl(data, mode="strict").conversations,
        personas,
        users_per_persona,
        conversations_per_user,
        max_users,
        seed,
    )


def data_selection(config: FederatedConfig) -> Selection | None:
    """What the run takes from its JSONL file and what it leaves out; ``None`` for the built-in sources."""
    d = config.dataset
    if d.data in ("synthetic", "shakespeare"):
        return None
    return _selection(
        *_selection_key(
            d.data,
            d.personas,
            d.users_per_persona,
            d.conversations_per_user,
            d.max_users,
            d.data_seed,
        )
    )


def conversations(config: FederatedConfig) -> tuple:
    return _conversations(*_data_key(config))


def user_ids(config: FederatedConfig) -> list[str]:
    """Users in data order; simulated node ``partition-id`` i is user ``user_ids[i]``."""
    return list(dict.fromkeys(c.user_id for c in conversations(config)))


def user_data(config: FederatedConfig, user_id: str, env: ModelEnvironment) -> UserData:
    """The user's encoded train / held-out examples (cached per process and settings)."""
    return _user_data(
        _data_key(config),
        config.dataset.heldout_fraction,
        config.dataset.max_length,
        config.dataset.persona_mode,
        config.dataset.canaries,
        user_id,
        env,
    )


@lru_cache(maxsize=4)
def _canaries(path: str) -> tuple:
    return tuple(read_jsonl(path, mode="strict").conversations) if path else ()


@lru_cache(maxsize=64)
def _user_data(
    data_key: tuple,
    heldout_fraction: float,
    max_length: int,
    persona_mode: str,
    canaries: str,
    user_id: str,
    env: ModelEnvironment,
) -> UserData:
    mine = [c for c in _conversations(*data_key) if c.user_id == user_id]
    # privacy audit only: never held out
    extra = [c for c in _canaries(canaries) if c.user_id == user_id]
    declared = mine[0].persona if mine else None
    return encode_user(
        user_id,
        mine,
        declared if persona_mode == "declared" else None,
        heldout_fraction,
        data_key[3],
        max_length,
        env,
        extra,
    )


def encode_user(
    user_id: str,
    conversations: list,
    declared_persona: str | None,
    heldout_fraction: float,
    seed: int,
    max_length: int,
    env: ModelEnvironment,
    extra_train: Sequence[Conversation] = (),
) -> UserData:
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
