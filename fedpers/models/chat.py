"""Chat-template encoding with the loss on assistant tokens only, and right-padded batching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
Message = Mapping[str, str]


@dataclass(frozen=True)
class EncodedExample:
    """One training sequence: token ids and labels (``IGNORE_INDEX`` outside assistant replies).

    ``trunk``, when set, is the frozen hidden state entering decoder layer ``trunk_layer``
    (``[len(input_ids), hidden]``, see :mod:`fedpers.models.trunk`); it lets the forward pass start there."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    trunk: torch.Tensor | None = field(default=None, compare=False, repr=False)
    trunk_layer: int | None = field(default=None, compare=False)
    # the frozen hidden state entering the layer the user embedding's prompt enters (below the trunk's)
    entry: torch.Tensor | None = field(default=None, compare=False, repr=False)
    entry_layer: int | None = field(default=None, compare=False)


def conversation_messages(conversation, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Turn a :class:`fedpers.data.Conversation` (anything with ``.turns`` of ``role``/``text``) into chat messages."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": turn.role, "content": turn.text} for turn in conversation.turns]
    return messages


def _template_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool
) -> list[int]:
    out = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=True, add_generation_prompt=generation_prompt
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def encode_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    max_length: int,
    target_roles: tuple[str, ...] = ("assistant",),
) -> EncodedExample | None:
    """Encode a chat; only messages of ``target_roles`` (assistant replies by default) carry labels,
    each with its end-of-turn token.

    Assistant spans are found by templating growing prefixes, so any template whose rendering of a
    prefix is a prefix of the full rendering works. Sequences longer than ``max_length`` keep their
    latest tokens (the context nearest the last reply). Returns ``None`` if no target token survives.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for k, message in enumerate(messages):
        if message["role"] in target_roles:
            full = _template_ids(tokenizer, messages[: k + 1], generation_prompt=False)
            header = _header_ids(tokenizer, messages, k, full)
            _check_prefix(input_ids, header)
            labels += [IGNORE_INDEX] * (len(header) - len(input_ids)) + full[len(header) :]
        else:
            full = _template_ids(tokenizer, messages[: k + 1], generation_prompt=False)
            _check_prefix(input_ids, full)
            labels += [IGNORE_INDEX] * (len(full) - len(input_ids))
        input_ids = full
    input_ids, labels = input_ids[-max_length:], labels[-max_length:]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return EncodedExample(tuple(input_ids), tuple(labels))


def _header_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], k: int, full: list[int]
) -> list[int]:
    """Tokens of ``messages[:k+1]`` up to where message ``k``'s content starts (its role header)."""
    if messages[k]["role"] == "assistant":
        return _template_ids(tokenizer, messages[:k], generation_prompt=True)
    probe = [*messages[:k], {**messages[k], "content": ""}]
    rendered = _template_ids(tokenizer, probe, generation_prompt=False)
    # the empty message renders as header + end-of-turn; the header is what it shares with the full rendering
    n = 0
    while n < min(len(rendered), len(full)) and rendered[n] == full[n]:
        n += 1
    return full[:n]


def _check_prefix(prefix: list[int], ids: list[int]) -> None:
    if ids[: len(prefix)] != prefix:
        raise ValueError(
            "chat template does not render prefixes of a conversation as token prefixes"
        )


def encode_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence,
    max_length: int,
    system_prompt: str | None = None,
) -> list[EncodedExample]:
    """Encode conversations into training examples, dropping those left without target tokens."""
    encoded = (
        encode_messages(tokenizer, conversation_messages(c, system_prompt), max_length)
        for c in conversations
    )
    return [e for e in encoded if e is not None]


def collate(examples: Sequence[EncodedExample], pad_token_id: int) -> dict:
    """Right-pad a batch; padded positions get attention 0 and label ``IGNORE_INDEX``.

    When every example carries its trunk state from the same layer, the batch also holds them
    (``trunk``, zero-padded, and ``trunk_layer``); likewise the user embedding's entry states
    (``entry``, ``entry_layer``)."""
    length = max((len(e.input_ids) for e in examples), default=1)
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    batch_out: dict = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    for name in ("trunk", "entry"):
        states = [getattr(e, name) for e in examples]
        layers = {getattr(e, f"{name}_layer") for e in examples}
        if examples and len(layers) == 1 and None not in layers:
            present = [t for t in states if t is not None]
            if len(present) == len(examples):
                padded = torch.zeros((batch, length, present[0].shape[-1]), dtype=present[0].dtype)
                for row, state in enumerate(present):
                    padded[row, : state.shape[0]] = state
                batch_out[name], batch_out[f"{name}_layer"] = padded, layers.pop()
    return batch_out
