"""Answering on the device: the persona adapter the router picks among those received, plus the user embedding.

The adapters and the run settings (model, LoRA shape, personas) are the ones the ClientApp kept in
the store; the user embedding is the one it trained. A declared persona is used when the run has
an adapter for it, otherwise the router picks one: the learned centroid router of a persona registry version
(``version``: its ``router/``, learned from the devices' private statistics, :mod:`fedpers.personas.router_round`)
when that version has one, else the prompt is scored under each trained persona adapter
(:mod:`fedpers.personas.routing`). A rating of the answer is kept in the store as feedback.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from clients.device import DeviceStore
from fedpers.data.schema import Conversation, Feedback, Turn


@dataclass(frozen=True)
class ChatAnswer:
    prompt: str
    answer: str
    persona: str
    reason: str
    with_embedding: bool
    scores: dict[str, float] = field(default_factory=dict)


def _declared(device: DeviceStore, personas: list[str]) -> str | None:
    declared = device.declared_persona() or next(
        (c.persona for c in device.conversations() if c.persona), None
    )
    return declared if declared in personas else None


def chat(
    device: DeviceStore,
    prompt: str,
    max_new_tokens: int = 64,
    use_embedding: bool = True,
    version: Path | str | None = None,
) -> ChatAnswer:
    """Route ``prompt`` to a persona adapter received from the server and answer it greedily; with ``version``
    (a registry version or run directory) holding a learned router, that router picks the adapter."""
    import torch

    from fedpers.adapters import GLOBAL
    from fedpers.federated import FederatedConfig
    from fedpers.models import (
        PersonalizedLM,
        UserEmbedding,
        attach_lora,
        load_adapter_arrays,
        load_base_model,
    )
    from fedpers.personas.answer import generate_answer
    from fedpers.personas.routing import LossScorer, Router

    if not prompt.strip():
        raise ValueError("the prompt is empty")
    info = device.adapters_info()
    if info is None:
        raise FileNotFoundError(
            f"{device.directory}: no adapters received yet (take part in a run: fedpers-client join)"
        )
    config = FederatedConfig.from_record(info["settings"])
    adapters = device.adapters()
    base, tokenizer = load_base_model(config.model.model)
    lm = attach_lora(base, config.lora())
    stored = device.embedding() if use_embedding else None
    embedding, layer = None, 0
    if stored is not None:
        # layer: where its prompt was trained to enter
        weight, layer = UserEmbedding.from_bytes(stored)
        embedding = UserEmbedding(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            embedding.embedding.weight.copy_(weight)
    model = PersonalizedLM(lm, embedding, layer)
    trained = set(info.get("trained_personas", []))
    available = [p for p in config.persona_names if p in adapters and p in trained]
    declared = _declared(device, config.persona_names)
    # a declared persona with an adapter answers without scoring: no encoder to load
    centroid = None if declared in available else _centroid_scorer(version, config.persona_names)
    if centroid is not None:
        router = Router(
            centroid,
            config.persona_names,
            fallback=GLOBAL,
            available=[p for p in available if p in centroid.model.trained],
        )
    else:
        scorer = LossScorer(model, tokenizer, {p: adapters[p] for p in available})
        router = Router(scorer, config.persona_names, fallback=GLOBAL, available=available)
    decision = router.route(prompt, declared)
    load_adapter_arrays(model.lm, adapters[decision.persona])
    model.use_user_embedding = embedding is not None
    text = generate_answer(model, tokenizer, prompt, max_new_tokens)
    return ChatAnswer(
        prompt,
        text,
        decision.persona,
        decision.reason,
        embedding is not None,
        dict(decision.scores),
    )


def _centroid_scorer(version: Path | str | None, personas: list[str]):
    """The learned router of ``version`` (its ``router/``) as a scorer, with the hour as context; ``None`` when
    no version is given or it has no router."""
    if version is None:
        return None
    from fedpers.personas.centroid import CentroidScorer, has_router, load_router
    from fedpers.personas.context import Context
    from fedpers.personas.encoder import default_encoder

    if not Path(version).is_dir():
        raise FileNotFoundError(f"{version}: no such registry version or run directory")
    if not has_router(version):
        return None
    saved = load_router(version)
    unknown = sorted(set(saved.personas) - set(personas))
    if unknown:
        raise ValueError(
            f"{version}/router: personas {unknown} are not those of the adapters on this device {personas}"
        )
    return CentroidScorer(saved, default_encoder(), Context(hour=datetime.now().hour))


def record_rating(device: DeviceStore, reply: ChatAnswer, rating: int) -> Conversation:
    """Keep the exchange in the store's feedback, the assistant turn rated ``rating`` (1-5)."""
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise ValueError(f"rating: an integer from 1 to 5, got {rating!r}")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    conversation = Conversation(
        user_id=device.user_id,
        conversation_id=f"chat-{uuid.uuid4().hex[:12]}",
        persona=reply.persona if reply.persona != "global" else None,
        turns=(
            Turn("user", reply.prompt, now),
            Turn(
                "assistant", reply.answer or "(empty answer)", now, Feedback(rating=float(rating))
            ),
        ),
    )
    device.add_feedback(conversation)
    return conversation
