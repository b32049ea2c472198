"""A DP-SGD plan: the noise multiplier and clipping norm fixed before the first step they cover.

:func:`fedpers.privacy.dp_sgd.plan_dp` makes one; a device keeps its run's plan in its state, so
that every round of the run trains with the plan that was calibrated for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DPPlan:
    """Noise and clipping of DP-SGD, fixed before the first step of the ``planned_steps`` it covers.

    A device fixes one plan per run at its first round (``run_id``), so that every planned round fits
    the budget; a single training plans its own steps."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    planned_steps: int
    run_id: str = ""
