"""The frozen trunk: the hidden states entering the first LoRA layer, computed once per example.

Write the decoder as ``h_0 = E[x]``, ``h_{i+1} = f_i(h_i)`` for its N layers, and the loss of a
sequence as ``L = CE(W · norm(h_N), y)`` at its assistant positions. With LoRA only on layers
``k..N-1`` and no user embedding, ``h_k = f_{k-1}(... f_0(E[x]))`` depends on the token ids ``x``
alone (``E`` and ``f_0..f_{k-1}`` are frozen), and no trainable parameter sits below it. So
``h_k`` is computed once per example (:func:`trunk_states`) and training and evaluation run only
layers ``k..N-1`` from it (:func:`run_layers`): the same loss, the same (per-sample) gradients of
the LoRA parameters, for ``N - k`` layers of work instead of ``N``.

Attention is causal and batches are right-padded, so the states at a sequence's real positions do
not depend on its padding or its batch mates: ``h_k`` is kept per example without padding and
re-padded with zeros per batch (padded positions are masked out and carry no label).

The user embedding is a soft prompt entering layer ``m`` (``embedding_layer``, at most ``k``): it
changes every ``h_i`` with ``i > m`` and none below. At ``m = 0`` (the input) any forward pass that uses
it takes the full path from the token ids; above 0 it starts from ``h_m``, cached like ``h_k``
(:func:`layer_states` computes both in one pass, :func:`with_entry` attaches it).
:class:`fedpers.models.personalized.PersonalizedLM` picks the path.

Supported: decoders with Llama's layout (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``,
token embeddings fed unscaled into the first layer); other architectures keep the full path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from fedpers.models.chat import EncodedExample, collate

SUPPORTED_MODEL_TYPES = ("llama",)
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def causal_lm_parts(lm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the output head of a (peft-wrapped) causal LM."""
    model = cast(Any, lm)  # transformers/peft methods, typed as Tensor | Module attributes
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal.base_model, causal.get_output_embeddings()


def first_adapted_layer(lm: nn.Module) -> int | None:
    """The lowest decoder layer holding a LoRA parameter, if the trunk below it can be cached.

    ``None`` when the architecture is not supported, when no layer has LoRA, or when layer 0 has it
    (nothing to cache)."""
    backbone, _ = causal_lm_parts(lm)
    config = getattr(backbone, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return None
    if not all(hasattr(backbone, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return None
    layers = [
        int(m.group(1))
        for name, _ in lm.named_parameters()
        if "lora_" in name and (m := _LAYER.search(name))
    ]
    if not layers or min(layers) == 0:
        return None
    return min(layers)


def run_layers(
    backbone: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    stop: int | None = None,
) -> torch.Tensor:
    """``f_{stop-1}(... f_start(hidden))`` with the causal mask and rotary positions of the full
    forward pass (positions 0.. of a right-padded batch); the final norm when ``stop`` is the end.

    The same steps as ``LlamaModel.forward`` without a KV cache, from layer ``start``."""
    model = cast(Any, backbone)
    stop = len(model.layers) if stop is None else stop
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(
        config=model.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=None,
        position_ids=position_ids,
    )
    rotary = model.rotary_emb(hidden, position_ids=position_ids)
    for layer in model.layers[start:stop]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=rotary,
            position_ids=position_ids,
            use_cache=False,
        )
    if stop == len(model.layers):
        hidden = model.norm(hidden)
    return hidden


def frozen_layers(
    backbone: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    stop: int,
    bf16: bool,
) -> torch.Tensor:
    """:func:`run_layers` for layers that hold no trained parameter: under ``torch.autocast`` to bfloat16
    with ``bf16`` (:mod:`fedpers.models.precision`), the result in float32 either way."""
    with torch.autocast(hidden.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = run_layers(backbone, hidden, attention_mask, start, stop)
    return out.float()


@torch.no_grad()
def trunk_states(
    lm: nn.Module,
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    layer: int,
    batch_size: int = 16,
    bf16: bool = False,
) -> list[torch.Tensor]:
    """``h_layer`` of every example, ``[length, hidden]`` each, without padding (stored in float32;
    computed in bfloat16 with ``bf16``, :mod:`fedpers.models.precision`)."""
    return layer_states(lm, examples, pad_token_id, [layer], batch_size, bf16)[layer]


@torch.no_grad()
def layer_states(
    lm: nn.Module,
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    layers: Sequence[int],
    batch_size: int = 16,
    bf16: bool = False,
) -> dict[int, list[torch.Tensor]]:
    """``h_l`` of every example for each ``l`` in ``layers`` (one pass up to the highest), as
    :func:`trunk_states` gives them."""
    backbone, _ = causal_lm_parts(lm)
    embed = cast(Any, backbone).embed_tokens
    wanted = sorted(set(layers))
    states: dict[int, list[torch.Tensor]] = {layer: [] for layer in wanted}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, pad_token_id)
        hidden, at = embed(batch["input_ids"]), 0
        for layer in wanted:
            hidden = frozen_layers(backbone, hidden, batch["attention_mask"], at, layer, bf16)
            at = layer
            states[layer] += [
                hidden[i, : len(e.input_ids)].float().contiguous() for i, e in enumerate(chunk)
            ]
    return states


def with_trunk(
    examples: Sequence[EncodedExample], states: Sequence[torch.Tensor], layer: int
) -> list[EncodedExample]:
    """The examples carrying their cached ``h_layer``."""
    return _with_states(examples, states, layer, "trunk")


def with_entry(
    examples: Sequence[EncodedExample], states: Sequence[torch.Tensor], layer: int
) -> list[EncodedExample]:
    """The examples carrying their cached ``h_layer`` where the user embedding's prompt enters."""
    return _with_states(examples, states, layer, "entry")


def _with_states(
    examples: Sequence[EncodedExample], states: Sequence[torch.Tensor], layer: int, name: str
) -> list[EncodedExample]:
    if len(examples) != len(states):
        raise ValueError(f"{len(states)} {name} states for {len(examples)} examples")
    out = []
    for example, state in zip(examples, states, strict=True):
        if state.shape[0] != len(example.input_ids):
            raise ValueError(
                f"a {name} state of {state.shape[0]} positions for an example of {len(example.input_ids)} tokens"
            )
        out.append(
            replace(example, trunk=state, trunk_layer=layer)
            if name == "trunk"
            else replace(example, entry=state, entry_layer=layer)
        )
    return out


def trunk_key(model_id: str, layer: int | Sequence[int], examples: Sequence[EncodedExample]) -> str:
    """What a cached set of trunk states depends on: the base model, the layer (or layers) and the token ids."""
    layers = layer if isinstance(layer, int) else ",".join(str(x) for x in sorted(layer))
    h = hashlib.sha256(f"{model_id}\0{layers}\0".encode())
    for e in examples:
        h.update(len(e.input_ids).to_bytes(4, "little"))
        h.update(b"".join(int(t).to_bytes(4, "little") for t in e.input_ids))
    return h.hexdigest()[:32]


def states_to_bytes(states: Sequence[torch.Tensor]) -> bytes:
    """Trunk states as safetensors bytes (no pickle)."""
    from safetensors.torch import save

    return save({f"{i:06d}": s.contiguous() for i, s in enumerate(states)})


def states_from_bytes(data: bytes) -> list[torch.Tensor]:
    from safetensors.torch import load

    stored = load(data)
    return [stored[k] for k in sorted(stored)]


def layers_to_bytes(states: Mapping[int, Sequence[torch.Tensor]]) -> bytes:
    """The states of several layers in one safetensors blob (no pickle): ``<layer>-<index>`` names."""
    from safetensors.torch import save

    return save(
        {
            f"{layer:04d}-{i:06d}": s.contiguous()
            for layer, xs in states.items()
            for i, s in enumerate(xs)
        }
    )


def layers_from_bytes(data: bytes) -> dict[int, list[torch.Tensor]]:
    from safetensors.torch import load

    stored = load(data)
    out: dict[int, list[torch.Tensor]] = {}
    for name in sorted(stored):
        layer, _, _ = name.partition("-")
        if not layer.isdigit():
            raise ValueError(f"cached states: unexpected tensor name {name!r}")
        out.setdefault(int(layer), []).append(stored[name])
    return out
