"""A causal LM (with LoRA) plus an optional user embedding, and the per-sequence assistant-token loss.

Two paths to the same loss. The *full* path runs every decoder layer from the token ids (with the
user embedding prepended when it is in use). The *trunk* path starts from the cached hidden states
entering the first LoRA layer (:mod:`fedpers.models.trunk`) and runs only the layers above; it is
taken whenever the batch carries them and the user embedding is not in use, which is the case for
DP-SGD on the LoRA adapter, the private clipping estimate, the private persona choice and LoRA-only
evaluation. The user-embedding phase and evaluation with the embedding take the full path when the
prompt enters at the input (``embedding_layer = 0``); with a deeper entry layer ``m`` they start from
the cached states entering ``m`` (or compute them, without gradient: nothing below ``m`` depends on
the prompt or trains) and run layers ``m..N-1`` with the prompt prepended there.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from fedpers.models.chat import IGNORE_INDEX
from fedpers.models.precision import FrozenHead
from fedpers.models.trunk import (
    causal_lm_parts,
    first_adapted_layer,
    frozen_layers,
    run_layers,
)
from fedpers.models.user_embedding import UserEmbedding

FULL, TRUNK, ENTRY = "full", "trunk", "entry"


class PersonalizedLM(nn.Module):
    """``lm`` (a peft model or plain causal LM) with ``user_embedding`` prepended when present.

    ``forward`` returns one mean assistant-token loss per sequence. Logits are computed only at
    target positions, so padding and prompts cost no vocabulary projection and every sequence
    weighs the same regardless of its length or its batch mates (unlike ``labels=`` in transformers).
    """

    def __init__(
        self, lm: nn.Module, user_embedding: UserEmbedding | None = None, embedding_layer: int = 0
    ) -> None:
        super().__init__()
        self.lm = lm
        self.user_embedding = user_embedding
        # the decoder layer the user embedding's prompt enters (0: prepended to the input embeddings)
        self.embedding_layer = embedding_layer
        self.use_user_embedding = user_embedding is not None
        # the LoRA placement is fixed once attached
        self.trunk_layer = first_adapted_layer(lm)
        self.last_path = ""
        # False: FFA-LoRA, only the B matrices are ever trained (fedpers.local.set_trainable)
        self.train_lora_a = True
        # bfloat16 for the frozen computation (fedpers.models.precision; the ``bf16`` setting)
        self.bf16 = False
        self.frozen_head = FrozenHead()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        trunk: torch.Tensor | None = None,
        trunk_layer: int | None = None,
        entry: torch.Tensor | None = None,
        entry_layer: int | None = None,
    ) -> torch.Tensor:
        backbone, head = causal_lm_parts(self.lm)
        with torch.autocast(
            input_ids.device.type, dtype=torch.bfloat16, enabled=self.bf16 and self.frozen()
        ):
            if trunk is not None and not self.use_user_embedding:
                if (
                    self.trunk_layer is None
                    or trunk_layer is None
                    or trunk_layer > self.trunk_layer
                ):
                    raise ValueError(
                        f"trunk states of layer {trunk_layer} do not fit this model "
                        f"(first LoRA layer {self.trunk_layer})"
                    )
                self.last_path = TRUNK
                hidden = run_layers(backbone, trunk.to(labels.device), attention_mask, trunk_layer)
            else:
                hidden = self.hidden_states(input_ids, attention_mask, entry, entry_layer)
        return sequence_losses(
            hidden.float(), labels, head, self.frozen_head if self.bf16 else None
        )

    def frozen(self) -> bool:
        """No parameter of the language model requires a gradient (its LoRA layers do not train)."""
        return not any(p.requires_grad for p in self.lm.parameters())

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        entry: torch.Tensor | None = None,
        entry_layer: int | None = None,
    ) -> torch.Tensor:
        """The final normed hidden states at the sequence's positions (the user embedding's prompt, when in
        use, enters at ``embedding_layer``; ``entry``: the cached states entering it, if ``entry_layer`` is it)."""
        backbone, _ = causal_lm_parts(self.lm)
        m = self.embedding_layer
        if self.use_user_embedding and self.user_embedding is not None and m > 0:
            self.last_path = ENTRY
            if entry is not None and entry_layer == m:
                hidden = entry.to(attention_mask.device)
            else:
                with torch.no_grad():
                    embeds = cast(Any, self.lm).get_input_embeddings()(input_ids)
                    hidden = frozen_layers(backbone, embeds, attention_mask, 0, m, self.bf16)
            soft = self.user_embedding(input_ids.shape[0]).to(hidden.dtype)
            prefix = soft.shape[1]
            ones = torch.ones(
                (input_ids.shape[0], prefix),
                dtype=attention_mask.dtype,
                device=attention_mask.device,
            )
            joined = torch.cat([soft, hidden], dim=1)
            out = run_layers(backbone, joined, torch.cat([ones, attention_mask], dim=1), m)
            return out[:, prefix:, :]
        self.last_path = FULL
        embeds = cast(Any, self.lm).get_input_embeddings()(input_ids)
        k = self.trunk_layer
        if self.bf16 and k is not None and not self.use_user_embedding:
            # the layers below the first LoRA layer in bfloat16, as the cached trunk states are computed
            lower = frozen_layers(backbone, embeds, attention_mask, 0, k, True)
            return run_layers(backbone, lower, attention_mask, k)
        prefix = 0
        if self.use_user_embedding and self.user_embedding is not None:
            soft = self.user_embedding(input_ids.shape[0]).to(embeds.dtype)
            prefix = soft.shape[1]
            embeds = torch.cat([soft, embeds], dim=1)
            ones = torch.ones(
                (input_ids.shape[0], prefix),
                dtype=attention_mask.dtype,
                device=attention_mask.device,
            )
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        out = backbone(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state[:, prefix:, :]


def sequence_losses(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    frozen_head: FrozenHead | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over each sequence's target tokens; shape ``[batch]``.

    With ``frozen_head`` the logits are computed in bfloat16 (:mod:`fedpers.models.precision`)."""
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    rows, cols = mask.nonzero(as_tuple=True)
    positions = hidden[:, :-1, :][rows, cols]
    logits = head(positions) if frozen_head is None else frozen_head.logits(head, positions)
    token_loss = F.cross_entropy(logits.float(), target[rows, cols], reduction="none")
    totals = torch.zeros(labels.shape[0], dtype=token_loss.dtype, device=labels.device).index_add(
        0, rows, token_loss
    )
    counts = mask.sum(dim=1).clamp(min=1)
    return totals / counts


def token_loss_sums(model: PersonalizedLM, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Summed assistant-token loss and token count of a batch (for token-weighted evaluation)."""
    losses = model(**batch)
    counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
    return float((losses * counts).sum()), int(counts.sum())
