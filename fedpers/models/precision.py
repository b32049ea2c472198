"""bfloat16 for the frozen computation, float32 for everything privacy rests on.

Setting ``bf16``: ``"off"`` (float32 throughout), ``"on"``, or ``"auto"`` (on where the CPU has native
bfloat16 arithmetic, AVX512-BF16 or AMX; elsewhere torch emulates it and it would be slower). On, two parts
of a pass run in bfloat16 with float32 accumulation:

- the LM head (frozen, tied to the input embeddings): ``logits = bf16(h) @ bf16(W)^T``, cast to float32
  before the softmax; the cross-entropy and its gradient with respect to ``h`` stay float32. It runs at every
  assistant position of every pass, on the trunk and the full path alike.
- the frozen layers, under ``torch.autocast``: the layers below the first LoRA layer wherever they run (the
  cached trunk states, and the full path's lower layers, computed alike so the two paths still agree), and
  every layer when no LoRA parameter requires a gradient: the user-embedding phase (its gradient flows back
  through frozen layers only), evaluation and scoring. Cached states computed this way carry a key of their
  own (:attr:`fedpers.models.environment.ModelEnvironment.states_id`): float32 ones are never mixed with them.

What stays float32: the LoRA layers whenever they train, Opacus's per-sample gradients, their norms, the
clipping and the noise (:mod:`fedpers.privacy.dp_sgd`), and every stored state. DP-SGD's guarantee rests
only on clipping each per-sample gradient to ``C`` before the Gaussian noise; which function of the example
the gradient is (here: one through a head rounded to bfloat16) does not enter it. bfloat16 keeps float32's
exponent range and 8 significant bits: inputs and logits are rounded to about ``2^-8`` of their size, and the
losses stay within 2 % of float32's (``tests/test_precision.py``). The float32 exactness of the
cached path against the full path (``tests/test_trunk.py``, 1e-5) is a property of the float32 computation;
with bf16 the two paths agree to bfloat16's rounding (``tests/test_precision.py``).
"""

from __future__ import annotations

import torch

from fedpers.federated import BF16_SETTINGS


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_bf16(setting: str) -> bool:
    """``bf16`` as on/off on this machine (a ValueError naming the setting for another value)."""
    if setting not in BF16_SETTINGS:
        raise ValueError(f"setting bf16: one of {', '.join(BF16_SETTINGS)}, got {setting!r}")
    if setting == "auto":
        return native_bf16()
    return setting == "on"


class FrozenHead:
    """A bfloat16 copy of a frozen head's weight, made once and remade only if the weight changes."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None

    def weight(self, head: torch.nn.Module) -> torch.Tensor:
        source = head.weight
        if not isinstance(source, torch.Tensor):
            raise TypeError(f"the head's weight is a {type(source).__name__}, not a tensor")
        key = (source.data_ptr(), source._version, source.device, tuple(source.shape))
        if self._weight is None or key != self._key:
            self._weight = source.detach().to(torch.bfloat16)
            self._key = key
        return self._weight

    def logits(self, head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``head(hidden)`` computed in bfloat16, returned in float32 (the gradient reaches ``hidden``)."""
        if getattr(head.weight, "requires_grad", False):
            raise ValueError("the bfloat16 head is for a frozen head; this one is trained")
        logits = torch.nn.functional.linear(hidden.to(torch.bfloat16), self.weight(head)).float()
        bias = getattr(head, "bias", None)
        return logits if bias is None else logits + bias.float()
