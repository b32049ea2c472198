"""LoRA adapter settings and their application with peft; adapter weights as named NumPy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from transformers import PreTrainedModel


@dataclass
class LoraSettings:
    """Rank, scaling and placement of the shared LoRA adapter (``top_layers=None`` means every layer)."""

    r: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    top_layers: int | None = 6
    init_seed: int = 0
    # False: FFA-LoRA (Sun et al., ICLR 2024): A stays at its random initialisation, only B is trained
    train_a: bool = True

    def to_peft(self, num_layers: int) -> LoraConfig:
        layers = None
        if self.top_layers is not None:
            first = max(num_layers - self.top_layers, 0)
            layers = list(range(first, num_layers))
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            target_modules=list(self.target_modules),
            layers_to_transform=layers,
            layers_pattern="layers" if layers is not None else None,
            bias="none",
            task_type="CAUSAL_LM",
        )


def attach_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap a frozen base model with a freshly initialised LoRA adapter (deterministic for ``init_seed``)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(settings.init_seed)
    try:
        peft_model = get_peft_model(model, settings.to_peft(model.config.num_hidden_layers))
    finally:
        torch.random.set_rng_state(state)
    return peft_model


def adapter_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The adapter's weights as NumPy arrays keyed by peft's state-dict names (what travels on the wire)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Overwrite the adapter's weights with ``arrays`` (as produced by :func:`adapter_arrays`)."""
    expected = set(get_peft_model_state_dict(model))
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise ValueError(
            f"adapter arrays do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    result = set_peft_model_state_dict(
        model, {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    )
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"unexpected adapter keys: {unexpected[:3]}")


@dataclass
class AdapterDelta:
    """Difference between two adapter states, keyed like :func:`adapter_arrays`."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def between(cls, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> AdapterDelta:
        return cls({k: after[k] - before[k] for k in before})

    def norm(self) -> float:
        return float(
            np.sqrt(
                sum(float(np.sum(np.square(v, dtype=np.float64))) for v in self.arrays.values())
            )
        )
