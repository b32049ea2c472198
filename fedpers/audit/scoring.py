"""Loss of a canary's secret and of its random candidates, computing their shared prefix once.

A canary and its candidates are the same conversation up to the secret: the system prompt, the
question and the start of the reply (``The door code for room 417 is``). Only the tokens from the
first one where they differ onward can tell them apart, so the attack scores exactly those:

    secret_loss(s) = sum over reply tokens t at positions i >= L of  -log p(t_i | t_<i),

where ``L`` is the length of the longest token prefix that the canary and all its candidates share
(the secret and the end of the reply after it; the shared part of the reply is left out, since it
adds the same loss to every candidate and only noise across canaries).

Prefix reuse: the prefix ``t_<L`` goes through the model once, with its key/value cache; the
continuations of all candidates then run as one batch attending to that cache (repeated along the
batch). The token at position ``L`` is predicted from the prefix's last hidden state, later ones from
the continuation's. This is the same arithmetic as a full forward pass of each sequence (causal
attention: position ``i`` sees only ``t_<=i``), up to floating-point reassociation; the test suite
checks it against :func:`full_secret_losses`. For SmolLM2 and the default canaries (12 digits, kept
within the 64-token training window) each candidate costs its 26 tokens from the secret on instead of
all 64; measured, about half the CPU time per canary (BENCHMARKS.md, *Canary attack power*).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from fedpers.models.chat import (
    IGNORE_INDEX,
    EncodedExample,
    collate,
    conversation_messages,
    encode_messages,
)
from fedpers.models.personalized import PersonalizedLM
from fedpers.models.trunk import causal_lm_parts


@dataclass(frozen=True)
class SecretSet:
    """One canary's true secret and its candidates, as token ids: the shared prefix and each continuation.

    ``continuations[0]`` is the true secret's. ``targets[k][j]`` says whether token ``j`` of continuation
    ``k`` is a scored reply token (false for the role header or padding a truncated template may leave).
    """

    prefix: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    targets: tuple[tuple[bool, ...], ...]


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def secret_set(tokenizer, conversations: Sequence, max_length: int) -> SecretSet:
    """Encode a canary's conversations (true secret first, then its candidates) as one :class:`SecretSet`.

    The encoding is the training one (:func:`fedpers.models.chat.encode_messages`), so the tokens scored
    are the tokens trained on. The prefix keeps at least one token, which predicts the first scored one.
    """
    encoded = []
    for c in conversations:
        e = encode_messages(tokenizer, conversation_messages(c), max_length)
        if e is None:
            raise ValueError("a canary conversation keeps no reply token within max_length")
        encoded.append(e)
    length = max(1, _common_prefix([e.input_ids for e in encoded]))
    return SecretSet(
        encoded[0].input_ids[:length],
        tuple(e.input_ids[length:] for e in encoded),
        tuple(tuple(label != IGNORE_INDEX for label in e.labels[length:]) for e in encoded),
    )


@torch.no_grad()
def secret_losses(model: PersonalizedLM, secrets: SecretSet, batch_size: int = 128) -> np.ndarray:
    """Summed loss (nats) of the scored tokens of every continuation, with the prefix's cache computed once."""
    backbone, head = causal_lm_parts(model.lm)
    prefix = torch.tensor([secrets.prefix], dtype=torch.long)
    out = backbone(input_ids=prefix, use_cache=True)
    cache, last = out.cache, out.last_hidden_state[:, -1:, :]
    result = np.zeros(len(secrets.continuations))
    for start in range(0, len(secrets.continuations), batch_size):
        chunk = secrets.continuations[start : start + batch_size]
        flags = secrets.targets[start : start + batch_size]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), 0, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        scored = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (c, f) in enumerate(zip(chunk, flags)):
            ids[row, : len(c)] = torch.tensor(c)
            mask[row, : len(c)] = 1
            scored[row, : len(c)] = torch.tensor(f)
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(chunk))
        attention = torch.cat(
            [torch.ones((len(chunk), prefix.shape[1]), dtype=torch.long), mask], dim=1
        )
        hidden = backbone(
            input_ids=ids, attention_mask=attention, cache=batch_cache, use_cache=True
        ).last_hidden_state
        # the state predicting continuation token j: the prefix's last for j = 0, else continuation token j - 1
        predictors = torch.cat([last.expand(len(chunk), -1, -1), hidden[:, :-1, :]], dim=1)
        rows, cols = scored.nonzero(as_tuple=True)
        token_loss = F.cross_entropy(
            head(predictors[rows, cols]).float(), ids[rows, cols], reduction="none"
        )
        totals = torch.zeros(len(chunk), dtype=torch.float64).index_add(
            0, rows, token_loss.double()
        )
        result[start : start + len(chunk)] = totals.numpy()
    return result


@torch.no_grad()
def full_secret_losses(model: PersonalizedLM, secrets: SecretSet, pad_token_id: int) -> np.ndarray:
    """The same losses from a full forward pass of every sequence (the reference :func:`secret_losses` must match)."""
    backbone, head = causal_lm_parts(model.lm)
    length = len(secrets.prefix)
    examples = [
        EncodedExample(
            secrets.prefix + c,
            (IGNORE_INDEX,) * length + tuple(t if f else IGNORE_INDEX for t, f in zip(c, flags)),
        )
        for c, flags in zip(secrets.continuations, secrets.targets)
    ]
    batch = collate(examples, pad_token_id)
    hidden = backbone(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    target = batch["labels"][:, 1:]
    rows, cols = (target != IGNORE_INDEX).nonzero(as_tuple=True)
    token_loss = F.cross_entropy(
        head(hidden[:, :-1, :][rows, cols]).float(), target[rows, cols], reduction="none"
    )
    return (
        torch.zeros(len(examples), dtype=torch.float64)
        .index_add(0, rows, token_loss.double())
        .numpy()
    )
