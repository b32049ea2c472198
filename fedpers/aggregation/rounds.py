"""One round applied to the persona adapters: per-slot sums and counts in, server-optimizer steps out.

Every aggregation mode (:mod:`server.rounds`) ends in the same :class:`RoundSums`: for each slot
``s`` (a persona, or ``global`` for clients without one) the sum ``S_s`` of the clipped deltas that
landed in it and their count ``n_s`` (noisy under user-level DP). :func:`apply_round` is the only
place where sums become adapters:

    persona p with n_p >= min_clients:   A_p <- opt_p.step(A_p, S_p / n_p)
    global, if N = sum_s max(n_s, 0) >= min_clients:   A_g <- opt_g.step(A_g, (sum_s S_s) / N)

(:func:`fedpers.aggregation.persona.means_from_sums`). Without user-level DP the counts are whole
clients up to the SecAgg+ quantization, so they are rounded first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fedpers.adapters import GLOBAL, Adapters
from fedpers.aggregation.optimizers import ServerOptimizer, make_optimizer
from fedpers.aggregation.persona import PersonaAggregate, means_from_sums
from fedpers.aggregation.updates import Arrays


@dataclass(frozen=True)
class RoundSums:
    """What one round's aggregation yields: per-slot sums of clipped deltas and their counts."""

    server_round: int
    sums: dict[str, Arrays]
    counts: dict[str, float]
    participants: int  # clients whose upload is in the sums
    failures: int  # clients sampled whose upload is not


@dataclass
class PersonaAdapters:
    """The server's adapters (``global`` and one per persona), their optimizers, and the personas trained so far."""

    adapters: Adapters
    personas: tuple[str, ...]
    min_clients: int
    optimizers: dict[str, ServerOptimizer]
    trained: set[str] = field(default_factory=set)
    # tensors no round may change (FFA-LoRA's A): their sums hold only noise (user-level DP) or zeros
    frozen: frozenset[str] = frozenset()

    @classmethod
    def start(
        cls,
        adapters: Adapters,
        personas: Sequence[str],
        min_clients: int,
        optimizer: str,
        server_lr: float = 0.0,
        trained: Iterable[str] = (),
        frozen: Iterable[str] = (),
    ) -> PersonaAdapters:
        """Round 0: ``adapters`` as given, one optimizer per adapter (``server_lr`` 0: the optimizer's default);
        the tensors named in ``frozen`` are never updated."""
        kwargs = {"server_lr": server_lr} if server_lr > 0 else {}
        optimizers = {name: make_optimizer(optimizer, **kwargs) for name in [*personas, GLOBAL]}
        return cls(
            adapters, tuple(personas), min_clients, optimizers, set(trained), frozenset(frozen)
        )

    def without_frozen(self, delta: Arrays) -> Arrays:
        """``delta`` with the frozen tensors' entries set to zero."""
        return {k: v * 0 if k in self.frozen else v for k, v in delta.items()}


def apply_round(
    state: PersonaAdapters, round_sums: RoundSums, exact_counts: bool
) -> PersonaAggregate:
    """Step every persona adapter that reached the gate, and the global adapter (see the module docstring).

    ``exact_counts``: the counts are whole clients (no user-level DP noise), so they are rounded."""
    counts = round_sums.counts
    if exact_counts:
        counts = {k: float(round(v)) for k, v in counts.items()}
    agg = means_from_sums(round_sums.sums, counts, state.personas, state.min_clients)
    for persona, delta in agg.persona_deltas.items():
        if delta is None:  # gated: fewer than min_clients contributors
            continue
        state.adapters[persona] = state.optimizers[persona].step(
            state.adapters[persona], state.without_frozen(delta)
        )
        state.trained.add(persona)
    if agg.global_delta is not None:
        state.adapters[GLOBAL] = state.optimizers[GLOBAL].step(
            state.adapters[GLOBAL], state.without_frozen(agg.global_delta)
        )
    return agg
