"""One user's local training: a private LoRA update to share, then a user embedding kept on the device.

Why two phases. The LoRA update leaves the device, so it must be a differentially private function
of the user's data. If the user embedding were trained jointly with it *without* DP, every later
LoRA step would be computed on a model state that is a non-private function of the same data, and
the update's guarantee would no longer hold. So (default, ``two_phase``):

1. The LoRA adapter is trained with DP-SGD on the base model plus the received adapter, with the
   user embedding *absent*. Its output depends on the data only through DP-SGD (the received
   adapter is itself a DP aggregate), so the update sent is DP and the ledger accounts for it.
2. The LoRA adapter is frozen and the user embedding is fitted without noise. It never leaves the
   device and nothing that leaves is computed from it: in the next round phase 1 again runs without it.

``joint_dp`` trains both under DP-SGD together (the embedding then carries the same guarantee).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedpers.models.chat import EncodedExample
from fedpers.models.lora import AdapterDelta, adapter_arrays
from fedpers.models.personalized import PersonalizedLM
from fedpers.privacy.dp_sgd import DPConfig, TrainConfig, TrainResult, train
from fedpers.privacy.ledger import PrivacyLedger

SCHEMES = ("two_phase", "joint_dp")


@dataclass
class LocalTrainConfig:
    """Settings of one user's local training (see the module docstring for ``scheme``)."""

    lora: TrainConfig = field(default_factory=TrainConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    embedding: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=30, batch_size=8, learning_rate=3e-2)
    )
    scheme: str = "two_phase"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")


@dataclass
class LocalTrainResult:
    delta: AdapterDelta
    lora: TrainResult
    embedding: TrainResult | None


def set_trainable(model: PersonalizedLM, lora: bool, embedding: bool) -> None:
    """Make exactly the LoRA parameters and/or the user embedding trainable (LoRA's A matrices only when
    ``model.train_lora_a``: FFA-LoRA freezes them)."""
    for name, p in model.lm.named_parameters():
        p.requires_grad_(lora and "lora_" in name and (model.train_lora_a or "lora_A" not in name))
    if model.user_embedding is not None:
        model.user_embedding.requires_grad_(embedding)


def train_local(
    model: PersonalizedLM,
    train_examples: Sequence[EncodedExample],
    pad_token_id: int,
    config: LocalTrainConfig,
    ledger: PrivacyLedger | None,
) -> LocalTrainResult:
    """Train the user's LoRA adapter (privately) and user embedding; return the adapter delta to share."""
    before: dict[str, np.ndarray] = adapter_arrays(model.lm)
    has_embedding = model.user_embedding is not None
    if config.scheme == "joint_dp":
        set_trainable(model, lora=True, embedding=has_embedding)
        model.use_user_embedding = has_embedding
        lora = train(model, train_examples, pad_token_id, config.lora, config.dp, ledger)
        embedding = None
    else:
        set_trainable(model, lora=True, embedding=False)
        model.use_user_embedding = False
        lora = train(model, train_examples, pad_token_id, config.lora, config.dp, ledger)
        embedding = None
        if has_embedding and config.embedding.steps > 0:
            set_trainable(model, lora=False, embedding=True)
            model.use_user_embedding = True
            embedding = train(
                model, train_examples, pad_token_id, config.embedding, DPConfig(enabled=False)
            )
    set_trainable(model, lora=False, embedding=False)
    model.use_user_embedding = has_embedding
    return LocalTrainResult(AdapterDelta.between(before, adapter_arrays(model.lm)), lora, embedding)


def local_round(env, config, examples, noise_seed: int, dp: DPConfig, ledger: PrivacyLedger | None):
    """One device's local LoRA training as a round runs it, from the adapter loaded in ``env.model``:
    ``local_steps`` Adam steps of expected batch ``batch_size`` at the devices' learning rate (``config``, a
    :class:`fedpers.federated.FederatedConfig`), DP-SGD as ``dp`` says (charged to ``ledger``), no user
    embedding; ``lora_train_a`` decides whether A trains. Returns :func:`train_local`'s result."""
    local = config.local
    env.model.train_lora_a = config.model.lora_train_a
    return train_local(
        env.model,
        examples,
        env.pad_token_id,
        LocalTrainConfig(
            lora=TrainConfig(
                steps=local.local_steps,
                batch_size=local.batch_size,
                learning_rate=local.learning_rate,
                noise_seed=noise_seed,
            ),
            dp=dp,
            embedding=TrainConfig(steps=0),
        ),
        ledger,
    )
