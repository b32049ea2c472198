"""Public warm start: the global adapter first trained, without DP, on conversations that are public by construction.

Before the first private round the server trains the shared LoRA adapter for ``public_steps`` Adam steps
(expected batch ``batch_size``, the devices' learning rate) on public conversations, and every adapter —
global and persona — starts from the result. Nothing a device holds is involved, so the warm start spends
no privacy budget and no ledger records it; the private rounds then only have to learn what the public data
does not already teach.

Public data, ``public_data``:

- ``synthetic``: the *public split* of the synthetic service desk — the same generator (phrase bank, grammar,
  persona styles) with its own seed, ``derive_seed(data_seed, "public-split")``, and its own invented users
  (ids ``public-…``). No device holds these conversations; anyone with the package can regenerate them.
  ``PUBLIC_USERS_PER_PERSONA`` users per persona, ``conversations_per_user`` conversations each.
- ``shakespeare``: tinyshakespeare's speakers that no device holds — the first ``PUBLIC_SPEAKERS`` speakers, in
  data order, that are not among the run's users, at most
  ``conversations_per_user`` answers each (ids ``public-…``). The play text is public domain; only a run on the
  ``shakespeare`` data may use it (it needs the devices' speakers to leave out).
- a path: a conversation JSONL (the import format) whose conversations the operator declares public.

Each public user's conversations are split into train and held-out like a device's (the data seed, the
held-out fraction; :func:`public_split`): the warm start trains on the train part, and the held-out part is what
the server scores layered persona adapters on (:mod:`fedpers.personas.layered`).

The warm start is deterministic (public data, fixed seed ``derive_seed(seed, "public-warm-start")``): it
protects nothing and needs no OS randomness.

A user-level clip from public data (:func:`public_update_clip`, ``update_clip_public``): every public user ``v``
runs one round of the devices' local training from the warm start, without DP, and the clip is the median of
their deltas' L2 norms, ``U = median_v ||D_v||_2``. A clip near the deltas' own norm keeps the signal of a clipped
delta while the user-level noise, proportional to ``U``, stays as small as the deltas allow; no device's data is
read, so choosing ``U`` spends no budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedpers.federated import FederatedConfig

PUBLIC_USERS_PER_PERSONA = 2
PUBLIC_SPEAKERS = 10


def public_conversations(config: FederatedConfig) -> list:
    """The public conversations ``public_data`` names (see the module docstring)."""
    from fedpers.data.schema import read_jsonl
    from fedpers.data.synthetic import SyntheticConfig, derive_seed, generate

    d = config.dataset
    if d.public_data == "synthetic":
        convs = generate(
            SyntheticConfig(
                users_per_persona=PUBLIC_USERS_PER_PERSONA,
                conversations_per_user=d.conversations_per_user,
                seed=derive_seed(d.data_seed, "public-split"),
                personas=tuple(config.persona_names),
            )
        )
        return [
            replace(
                c,
                user_id=f"public-{c.user_id}",
                conversation_id=f"public-{c.conversation_id}",
            )
            for c in convs
        ]
    if d.public_data == "shakespeare":
        return _public_speakers(config)
    if not d.public_data:
        return []
    return list(read_jsonl(d.public_data, mode="strict").conversations)


def _public_speakers(config: FederatedConfig) -> list:
    from fedpers.data import import_shakespeare
    from fedpers.userdata import user_ids

    d = config.dataset
    if d.data != "shakespeare":
        raise ValueError(
            f"setting public_data 'shakespeare': only for data 'shakespeare' (got data {d.data!r})"
        )
    convs = import_shakespeare()
    order = list(dict.fromkeys(c.user_id for c in convs))
    devices = set(user_ids(config))
    public = set([u for u in order if u not in devices][:PUBLIC_SPEAKERS])
    taken: dict[str, int] = {}
    out = []
    for c in convs:
        if c.user_id in public and taken.get(c.user_id, 0) < d.conversations_per_user:
            taken[c.user_id] = taken.get(c.user_id, 0) + 1
            out.append(
                replace(
                    c, user_id=f"public-{c.user_id}", conversation_id=f"public-{c.conversation_id}"
                )
            )
    return out


def public_split(config: FederatedConfig) -> tuple[list, list]:
    """The public conversations as (train, held-out), split per user with the data seed."""
    from fedpers.data.split import train_heldout_split

    convs = public_conversations(config)
    if not convs:
        return [], []
    d = config.dataset
    return train_heldout_split(convs, d.heldout_fraction, seed=d.data_seed)


def public_heldout_examples(
    config: FederatedConfig, env, by_user: Mapping[str, str] | None = None
) -> dict[str | None, list]:
    """The encoded public held-out examples per persona, each carrying its frozen trunk state when the model has
    one (:mod:`fedpers.models.trunk`): they are scored every round under new adapters, and the layers below the
    first LoRA layer never change.

    The persona of a conversation is its public user's in ``by_user`` when given (inferred personas chosen from
    the prompts: the centroid the server's clustering placed that user at), else the one it declares (``None``:
    none declared, or a user ``by_user`` does not place)."""
    from fedpers.models.chat import encode_conversations

    _, heldout = public_split(config)
    groups: dict[str | None, list] = {}
    for c in heldout:
        key = by_user.get(c.user_id) if by_user is not None else c.persona
        groups.setdefault(key, []).append(c)
    return {
        persona: _with_trunk(
            env, encode_conversations(env.tokenizer, convs, config.dataset.max_length)
        )
        for persona, convs in groups.items()
    }


def _with_trunk(env, examples: list) -> list:
    """``examples`` carrying their frozen trunk states (:mod:`fedpers.models.trunk`), computed once here,
    when the model has a trunk below its first LoRA layer; otherwise as they are."""
    from fedpers.models.trunk import trunk_states, with_trunk

    layer = env.trunk_layer
    if layer is None or not examples:
        return examples
    return with_trunk(
        examples,
        trunk_states(env.model.lm, examples, env.pad_token_id, layer, bf16=env.model.bf16),
        layer,
    )


def public_warm_start(
    config: FederatedConfig, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``arrays`` (the initial adapter) after ``public_steps`` steps on the train part of the public
    conversations (through the LoRA layers only, from their frozen trunk states, when the model has them);
    ``arrays`` unchanged when no warm start is set."""
    if config.dataset.public_steps <= 0:
        return arrays
    from fedpers.data.synthetic import derive_seed
    from fedpers.local import set_trainable
    from fedpers.models import adapter_arrays, load_adapter_arrays
    from fedpers.models.chat import encode_conversations
    from fedpers.models.environment import model_environment
    from fedpers.privacy import DPConfig, TrainConfig, train

    convs, _ = public_split(config)
    if not convs:
        raise ValueError(f"public_data {config.dataset.public_data!r} holds no conversations")
    env = model_environment(config)
    examples = _with_trunk(
        env, encode_conversations(env.tokenizer, convs, config.dataset.max_length)
    )
    model = env.model
    before = adapter_arrays(model.lm)
    load_adapter_arrays(model.lm, arrays)
    try:
        set_trainable(model, lora=True, embedding=False)
        model.use_user_embedding = False
        train(
            model,
            examples,
            env.pad_token_id,
            TrainConfig(
                steps=config.dataset.public_steps,
                batch_size=config.local.batch_size,
                learning_rate=config.local.learning_rate,
                noise_seed=derive_seed(config.model.seed, "public-warm-start") % 2**63,
            ),
            DPConfig(enabled=False),
        )
        return adapter_arrays(model.lm)
    finally:
        set_trainable(model, lora=False, embedding=False)
        model.use_user_embedding = model.user_embedding is not None
        load_adapter_arrays(model.lm, before)


@dataclass(frozen=True)
class PublicClip:
    """The update clip chosen on public data: ``clip`` is the median of ``norms``, one per public user."""

    clip: float
    norms: tuple[float, ...]

    def to_dict(self) -> dict:
        return {
            "update_clip": self.clip,
            "public_users": len(self.norms),
            "norms": list(self.norms),
            "source": "median L2 norm of the public users' deltas after one round of local training from "
            "the warm start (public data only; no budget spent)",
        }


def public_update_clip(
    config: FederatedConfig, start: dict[str, np.ndarray], seed: int | None = None
) -> PublicClip:
    """``U = median_v ||D_v||_2`` over the public users ``v`` (see the module docstring): ``D_v`` is the delta of
    one round of the devices' local training (:func:`fedpers.local.local_round`: ``local_steps`` Adam steps of
    expected batch ``batch_size``, no DP) on ``v``'s train conversations from ``start`` (the warm start).
    Deterministic: user ``v``'s batches come from ``derive_seed(seed, v, "public-clip")`` (``seed`` defaults to
    the model seed). Public data only; a ValueError when there is none."""
    import math

    from fedpers.data.synthetic import derive_seed
    from fedpers.local import local_round
    from fedpers.models import adapter_arrays, load_adapter_arrays
    from fedpers.models.chat import encode_conversations
    from fedpers.models.environment import model_environment
    from fedpers.privacy import DPConfig

    convs, _ = public_split(config)
    if not convs:
        raise ValueError(
            "setting update_clip_public needs public data (public_data): no public conversations"
        )
    seed = config.model.seed if seed is None else seed
    env = model_environment(config)
    by_user: dict[str, list] = {}
    for c in convs:
        by_user.setdefault(c.user_id, []).append(c)
    before = adapter_arrays(env.model.lm)
    norms = []
    try:
        for user in sorted(by_user):
            examples = _with_trunk(
                env, encode_conversations(env.tokenizer, by_user[user], config.dataset.max_length)
            )
            load_adapter_arrays(env.model.lm, start)
            result = local_round(
                env,
                config,
                examples,
                derive_seed(seed, user, "public-clip") % 2**63,
                DPConfig(enabled=False),
                None,
            )
            norms.append(
                math.sqrt(
                    sum(
                        float(np.sum(np.square(v, dtype=np.float64)))
                        for v in result.delta.arrays.values()
                    )
                )
            )
    finally:
        load_adapter_arrays(env.model.lm, before)
    return PublicClip(float(np.median(norms)), tuple(norms))
