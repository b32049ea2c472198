"""The user embedding: k soft-prompt vectors owned by one user, prepended to the input embeddings, or to the
hidden states entering a deeper layer (``embedding_layer``, :class:`fedpers.models.personalized.PersonalizedLM`).

It never leaves the device. It is a plain ``nn.Embedding`` looked up with contiguous indices
expanded per batch, so Opacus's hooks see a batch-first input and compute per-sample gradients
(peft's PromptTuning embeds the prompt once and repeats it, which breaks them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PUBLIC_INIT_TEXT = "The assistant answers this user in the way this user prefers."


class UserEmbedding(nn.Module):
    """``num_tokens`` trainable vectors of the model's hidden size."""

    def __init__(self, num_tokens: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, hidden_size)

    @property
    def num_tokens(self) -> int:
        return self.embedding.num_embeddings

    def forward(self, batch_size: int) -> torch.Tensor:
        index = torch.arange(self.num_tokens, device=self.embedding.weight.device)
        return self.embedding(index.unsqueeze(0).expand(batch_size, -1))

    @classmethod
    def public_init(
        cls, num_tokens: int, token_embeddings: nn.Embedding, tokenizer
    ) -> UserEmbedding:
        """Initialise from the token embeddings of a fixed public text: data-independent by construction."""
        ids = tokenizer(PUBLIC_INIT_TEXT, add_special_tokens=False)["input_ids"]
        ids = [ids[i % len(ids)] for i in range(num_tokens)]
        module = cls(num_tokens, token_embeddings.embedding_dim)
        with torch.no_grad():
            module.embedding.weight.copy_(token_embeddings.weight[torch.tensor(ids)])
        return module

    def to_bytes(self, layer: int) -> bytes:
        """The vectors and the layer they were trained to enter, as a device stores them (safetensors)."""
        from safetensors.torch import save

        return save(
            {
                "embedding": self.embedding.weight.detach().contiguous(),
                "layer": torch.tensor([layer], dtype=torch.int64),
            }
        )

    @staticmethod
    def from_bytes(data: bytes) -> tuple[torch.Tensor, int]:
        """``(vectors, entry layer)`` of :meth:`to_bytes`'s output; one saved without a layer entered the input."""
        from safetensors.torch import load

        tensors = load(data)
        return tensors["embedding"], int(tensors["layer"].item()) if "layer" in tensors else 0

    def save(self, path: Path) -> None:
        save_file({"embedding": self.embedding.weight.detach().contiguous()}, str(path))

    @classmethod
    def load(cls, path: Path) -> UserEmbedding:
        weight = load_file(str(path))["embedding"]
        module = cls(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            module.embedding.weight.copy_(weight)
        return module
