"""Greedy answer generation with the currently loaded adapter (and the user embedding if enabled)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import cast

import torch
from transformers import PreTrainedTokenizerBase

from fedpers.models.personalized import PersonalizedLM
from fedpers.models.trunk import causal_lm_parts


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The chat-template tokens of a one-message user chat, ending with the assistant header."""
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def stop_ids(model: PersonalizedLM, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence and end-of-turn token ids of the tokenizer and the model's generation config."""
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_of_turn != tokenizer.unk_token_id:  # unknown tokens map to unk
        ids.add(end_of_turn)
    eos = getattr(getattr(model.lm, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if isinstance(i, int)}


@torch.no_grad()
def greedy_ids(
    model: PersonalizedLM, input_ids: list[int], max_new_tokens: int, stop: Collection[int]
) -> list[int]:
    """Greedy decoding (full recompute each step, no KV cache); returns new tokens, without the stop token."""
    _, head = causal_lm_parts(model.lm)
    was_training = model.training
    model.eval()
    ids = torch.tensor([input_ids], dtype=torch.long)
    new: list[int] = []
    try:
        for _ in range(max_new_tokens):
            hidden = model.hidden_states(ids, torch.ones_like(ids))
            token = int(head(hidden[:, -1, :]).argmax(dim=-1))
            if token in stop:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    finally:
        model.train(was_training)
    return new


def generate_answer(
    model: PersonalizedLM, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 64
) -> str:
    """The model's greedy reply to ``prompt`` (at most ``max_new_tokens`` tokens, stopping at end of turn)."""
    new = greedy_ids(
        model, prompt_ids(tokenizer, prompt), max_new_tokens, stop_ids(model, tokenizer)
    )
    # one sequence of ids decodes to one string (transformers types decode's result as str | list[str])
    return cast(str, tokenizer.decode(new, skip_special_tokens=True)).strip()
