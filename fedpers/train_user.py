"""Private local training of one user, end to end: data, base model, DP LoRA, user embedding, evaluation.

This is what one device does in a round, runnable on its own (``fedpers train-local``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedpers.atomic import write_text
from fedpers.basemodel import base_reference
from fedpers.data import SyntheticConfig, generate, read_jsonl, train_heldout_split
from fedpers.evaluation import EvalResult, evaluate
from fedpers.local import LocalTrainConfig, train_local
from fedpers.modelcard import CARD, local_adapter_card, set_base_reference
from fedpers.models import (
    LoraSettings,
    PersonalizedLM,
    UserEmbedding,
    attach_lora,
    encode_conversations,
    load_base_model,
)
from fedpers.models.trunk import trunk_states, with_trunk
from fedpers.privacy.ledger import PrivacyLedger


@dataclass
class LocalRunConfig:
    """What ``fedpers train-local`` runs; every field has a flag."""

    model: str = "smollm2"
    data: Path | None = None
    user_id: str | None = None
    persona: str = "field_worker"
    synthetic: SyntheticConfig = field(
        default_factory=lambda: SyntheticConfig(users_per_persona=1, conversations_per_user=60)
    )
    heldout_fraction: float = 0.25
    max_length: int = 128
    lora: LoraSettings = field(default_factory=LoraSettings)
    embedding_tokens: int = 8
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    out: Path = Path("runs/local")
    ledger: Path | None = None


@dataclass
class LocalRunReport:
    user_id: str
    persona: str | None
    train_examples: int
    heldout_examples: int
    base: EvalResult
    lora: EvalResult
    lora_embedding: EvalResult
    epsilon: dict | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    seconds: float
    out: str

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("base", "lora", "lora_embedding"):
            d[k] = getattr(self, k).to_dict()
        return d


def _user_conversations(config: LocalRunConfig) -> list:
    if config.data is not None:
        conversations = read_jsonl(config.data, mode="strict").conversations
    else:
        conversations = generate(config.synthetic)
    if config.user_id is None:
        pick = next((c.user_id for c in conversations if c.persona == config.persona), None)
        if pick is None:
            raise ValueError(f"no user with persona {config.persona!r} in the data")
        config.user_id = pick
    mine = [c for c in conversations if c.user_id == config.user_id]
    if not mine:
        raise ValueError(f"no conversations for user {config.user_id!r}")
    return mine


def run_local(config: LocalRunConfig, log=print) -> LocalRunReport:
    """Train one user privately and report held-out loss before and after, and epsilon spent."""
    started = time.perf_counter()
    conversations = _user_conversations(config)
    train_convs, heldout_convs = train_heldout_split(
        conversations, config.heldout_fraction, seed=config.synthetic.seed
    )
    log(
        f"user {config.user_id}: {len(train_convs)} training and {len(heldout_convs)} held-out conversations"
    )
    base_model, tokenizer = load_base_model(config.model)
    train_ex = encode_conversations(tokenizer, train_convs, config.max_length)
    heldout_ex = encode_conversations(tokenizer, heldout_convs, config.max_length)
    peft_model = attach_lora(base_model, config.lora)
    embedding = UserEmbedding.public_init(
        config.embedding_tokens, peft_model.get_input_embeddings(), tokenizer
    )
    model = PersonalizedLM(peft_model, embedding)
    pad = tokenizer.pad_token_id
    if model.trunk_layer is not None:  # LoRA phases run only the layers above the frozen trunk
        states = trunk_states(peft_model, [*train_ex, *heldout_ex], pad, model.trunk_layer)
        train_ex = with_trunk(train_ex, states[: len(train_ex)], model.trunk_layer)
        heldout_ex = with_trunk(heldout_ex, states[len(train_ex) :], model.trunk_layer)

    model.use_user_embedding = False
    base = evaluate(model, heldout_ex, pad)  # LoRA B starts at zero: this is the base model
    log(f"held-out perplexity, base model: {base.perplexity:.2f}")
    out = config.out / str(config.user_id)
    ledger = PrivacyLedger(
        config.ledger or out / "ledger.json", str(config.user_id), config.train.dp.delta
    )
    result = train_local(
        model, train_ex, pad, config.train, ledger if config.train.dp.enabled else None
    )
    model.use_user_embedding = False
    lora = evaluate(model, heldout_ex, pad)
    model.use_user_embedding = True
    both = evaluate(model, heldout_ex, pad)

    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out / "adapter"))
    set_base_reference(out / "adapter", base_reference(config.model))
    embedding.save(out / "user_embedding.safetensors")
    report = LocalRunReport(
        user_id=str(config.user_id),
        persona=conversations[0].persona,
        train_examples=len(train_ex),
        heldout_examples=len(heldout_ex),
        base=base,
        lora=lora,
        lora_embedding=both,
        epsilon=result.lora.epsilon.to_dict() if result.lora.epsilon else None,
        noise_multiplier=result.lora.noise_multiplier,
        max_grad_norm=result.lora.max_grad_norm,
        seconds=time.perf_counter() - started,
        out=str(out),
    )
    (out / "metrics.json").write_text(json.dumps(report.to_dict(), indent=1))
    write_text(
        out / "adapter" / CARD,
        local_adapter_card(report.persona, config.model, report.epsilon, config.train.lora.steps),
    )
    return report
