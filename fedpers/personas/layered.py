"""Layered personas (global → persona → user): each persona adapter published as a residual on the global one.

A persona trained on a fifth of the data starts each round where its own few users left it, and under DP-SGD
it carries their noise alone; the global adapter saw everyone. A layered persona adapter falls back to what
everyone taught where its persona's own signal is weak. Per LoRA tensor (A and B alike)::

    theta_p(w) = theta_g + w * (theta_p - theta_g),   w in [0, 1]

so ``w = 0`` publishes the global adapter and ``w = 1`` the persona adapter as trained. With A frozen (FFA-LoRA)
``A_p = A_g`` and the weight update is exactly linear in ``w``: ``dW(w) = dW_g + w (dW_p - dW_g)``; with A trained
the family runs from one end to the other through ``(B_g + w dB)(A_g + w dA)``.

The weight ``w_p`` is chosen on public data only (``persona_mix = "auto"``): the held-out part of the public
conversations (:func:`fedpers.warmstart.public_split`) of persona ``p`` — those that declare it, or, with
inferred personas chosen from the prompts, those of the public users the server's clean clustering placed at
``p``'s centroid (:class:`fedpers.personas.prompt_choice.PublicDiscovery`); all public held-out conversations when
none is (IFCA's choice with a public JSONL without personas) — scored, for every ``w`` in
:data:`MIX_GRID`, by token-weighted held-out loss; the smallest loss wins, ties to the smaller ``w`` (towards
the adapter everyone taught). No device's data is touched, so the choice spends no privacy budget and no ledger
records it. Without public data ``auto`` keeps ``w = 1``; a number in ``[0, 1]`` fixes ``w`` for every persona.
The user layer stays on the device: the user embedding, trained on the user's own conversations.

The devices keep training the persona adapters as aggregated (``theta_p``); the layered ones are what the server
publishes, evaluates and the router serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fedpers.adapters import GLOBAL, Adapter, Adapters

MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The persona weights ``w`` the server scores on public held-out data."""
AUTO = "auto"


def mix_weight_setting(value: str) -> float | None:
    """The ``persona_mix`` setting: ``None`` for ``auto``, else the fixed weight (a ValueError outside [0, 1])."""
    if value == AUTO:
        return None
    try:
        weight = float(value)
    except ValueError:
        raise ValueError(
            f"setting persona_mix: 'auto' or a number in [0, 1], got {value!r}"
        ) from None
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"setting persona_mix: a weight in [0, 1], got {weight}")
    return weight


def mixed(global_adapter: Adapter, persona_adapter: Adapter, weight: float) -> Adapter:
    """``theta_g + w (theta_p - theta_g)`` per tensor, in the persona adapter's dtype."""
    if set(global_adapter) != set(persona_adapter):
        raise ValueError("global and persona adapters hold different tensors")
    return {
        k: (g + weight * (persona_adapter[k] - g)).astype(persona_adapter[k].dtype)
        for k, g in global_adapter.items()
    }


@dataclass(frozen=True)
class MixChoice:
    """One persona's weight and why: the public held-out loss of every scored weight (empty when fixed)."""

    weight: float
    losses: dict[float, float] = field(default_factory=dict)
    conversations: int = 0
    source: str = "fixed"

    def to_dict(self) -> dict:
        return {
            "weight": self.weight,
            "source": self.source,
            "conversations": self.conversations,
            "public_heldout_loss": {f"{w:g}": v for w, v in self.losses.items()},
        }


def best_weight(losses: Mapping[float, float]) -> float:
    """The weight of the smallest loss; ties to the smaller weight (towards the global adapter)."""
    if not losses:
        raise ValueError("no weight was scored")
    return min(sorted(losses), key=lambda w: losses[w])


def layered(adapters: Adapters, choices: Mapping[str, MixChoice]) -> Adapters:
    """The adapters to publish: global unchanged, each persona in ``choices`` mixed with its weight."""
    out = dict(adapters)
    for persona, choice in choices.items():
        out[persona] = mixed(adapters[GLOBAL], adapters[persona], choice.weight)
    return out


def choose_weights(
    env,
    adapters: Adapters,
    personas: Iterable[str],
    setting: str,
    public_heldout: Mapping[str | None, Sequence] | None,
    grid: Sequence[float] = MIX_GRID,
) -> dict[str, MixChoice]:
    """Each persona's :class:`MixChoice` under ``setting`` (see the module docstring).

    ``public_heldout`` maps a declared persona (``None``: none declared) to its encoded public held-out examples;
    ``env`` is the server's :class:`fedpers.models.environment.ModelEnvironment` (used only to score)."""
    fixed = mix_weight_setting(setting)
    names = list(personas)
    if fixed is not None:
        return {p: MixChoice(fixed) for p in names}
    examples_all = [e for group in (public_heldout or {}).values() for e in group]
    if not examples_all:
        return {
            p: MixChoice(1.0, source="no public data: the persona adapter as trained")
            for p in names
        }
    choices = {}
    for persona in names:
        own = list((public_heldout or {}).get(persona, ()))
        examples = own or examples_all
        source = (
            f"public held-out conversations of persona {persona}"
            if own
            else "all public held-out conversations (none is of this persona)"
        )
        losses = {
            float(w): _loss(env, mixed(adapters[GLOBAL], adapters[persona], w), examples)
            for w in grid
        }
        choices[persona] = MixChoice(best_weight(losses), losses, len(examples), source)
    return choices


def _loss(env, arrays: Adapter, examples: Sequence) -> float:
    from fedpers.evaluation import evaluate
    from fedpers.models import adapter_arrays, load_adapter_arrays

    model = env.model
    before, embedding = adapter_arrays(model.lm), model.use_user_embedding
    load_adapter_arrays(model.lm, arrays)
    model.use_user_embedding = False
    try:
        return evaluate(model, examples, env.pad_token_id).loss
    finally:
        model.use_user_embedding = embedding
        load_adapter_arrays(model.lm, before)
