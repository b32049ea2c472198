"""DP-SGD (Opacus, hooks mode) on whatever parameters of a model are trainable.

The privacy unit is one training example (one conversation). Each step draws a Poisson sample
(Opacus's ``UniformWithReplacementSampler``), clips every per-sample gradient to
``max_grad_norm`` and adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` to their sum;
an empty sample still takes a noisy step, as the accountant assumes. The spending is written to
the user's ledger before the first step.

Both sources of randomness the guarantee rests on come from the device's OS CSPRNG
(``os.urandom``), fresh for every call: the Poisson sampling (the accountant's amplification by
subsampling assumes nobody else knows which examples a step used) and the Gaussian noise. Nothing
that crosses the wire seeds them. ``TrainConfig.noise_seed`` seeds both for reproducible
benchmarks and tests only; a run that sets it is not private.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.grad_sample.gsm_base import OPACUS_PARAM_MONKEYPATCH_ATTRS
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from tqdm.auto import tqdm

from fedpers.models.chat import EncodedExample, collate
from fedpers.models.personalized import PersonalizedLM
from fedpers.privacy.accounting import EpsilonReport, GaussianEvent, calibrate_noise_multiplier
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger
from fedpers.privacy.plan import DPPlan

# Opacus's hooks fire on module outputs when the (frozen) inputs need no gradient: expected here.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass
class DPConfig:
    """Differential-privacy settings of local training.

    ``noise_multiplier`` is used as given; otherwise it is calibrated so that the user's whole
    ledger, this training included, stays within ``target_epsilon`` at ``delta``.
    ``max_grad_norm=None`` estimates the ``clip_quantile`` of the per-sample gradient norms with a
    differentially private binary search (its cost is recorded in the ledger too): LoRA's
    per-sample gradients are small, and a clipping norm far above them only adds noise.
    """

    enabled: bool = True
    target_epsilon: float | None = 8.0
    delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    clip_quantile: float = 0.5
    quantile_noise_multiplier: float = 5.0
    quantile_range: tuple[float, float] = (1e-4, 1.0)
    quantile_queries: int = 5
    # added to the ledger entries (e.g. run id and round)
    ledger_details: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation settings: ``batch_size`` is the expected Poisson batch size.

    ``noise_seed`` seeds the Poisson sampling and the noise (reproducible benchmarks and tests only:
    whoever knows it knows every batch and every noise draw); ``None``, the default, draws both from
    the OS CSPRNG.
    """

    steps: int = 30
    batch_size: int = 8
    learning_rate: float = 2e-2
    weight_decay: float = 0.0
    noise_seed: int | None = None
    progress: bool = False


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    sample_rate: float = 0.0
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    epsilon: EpsilonReport | None = None


def _fresh_for_opacus(model: torch.nn.Module) -> None:
    """Drop per-sample state an earlier (possibly interrupted) Opacus pass left on modules and parameters.

    A client process trains many users with one model object; stale activations or partial
    per-sample gradients from a failed pass must never leak into the next one.
    """
    for module in model.modules():
        for attr in ("activations", "max_batch_len"):
            if hasattr(module, attr):
                delattr(module, attr)
    for p in model.parameters():
        for attr in (*OPACUS_PARAM_MONKEYPATCH_ATTRS, "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)


def _entropy_seed(seed: int | None) -> int:
    return int.from_bytes(os.urandom(8), "little") if seed is None else seed


def private_seeds(noise_seed: int | None) -> tuple[int, int]:
    """Seeds of the Poisson sampler and of the noise generator: two independent OS CSPRNG draws, or
    two streams derived from ``noise_seed`` (benchmarks only)."""
    if noise_seed is None:
        return _entropy_seed(None), _entropy_seed(None)
    sampling, noise = np.random.SeedSequence(noise_seed).generate_state(2, dtype=np.uint64)
    return int(sampling), int(noise)


def _set_empty_grad_samples(params: Sequence[torch.nn.Parameter]) -> None:
    """An empty Poisson sample contributes no gradient; the optimizer still adds noise."""
    for p in params:
        # Opacus's attribute
        cast(Any, p).grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def per_sample_grad_norms(
    model: PersonalizedLM,
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    batch_size: int = 8,
) -> np.ndarray:
    """Per-example gradient norms of the trainable parameters (never released; used privately)."""
    _fresh_for_opacus(model)
    was_training = model.training
    model.train()  # Opacus captures activations only in training mode
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    params = [p for p in gsm.parameters() if p.requires_grad]
    norms: list[np.ndarray] = []
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_token_id)
            gsm(**batch).sum().backward()
            squared = sum(
                p.grad_sample.reshape(p.grad_sample.shape[0], -1).pow(2).sum(1) for p in params
            )
            norms.append(squared.sqrt().detach().numpy())
            for p in params:
                p.grad_sample = None
                p.grad = None
    finally:
        gsm._close()
        model.train(was_training)
    return np.concatenate(norms) if norms else np.zeros(0)


def private_quantile(
    values: np.ndarray,
    quantile: float,
    low: float,
    high: float,
    queries: int,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> float:
    """A differentially private ``quantile`` of ``values`` by noisy binary search on a log scale.

    Each query releases ``sum_i (1[v_i <= c] - quantile) + N(0, noise_multiplier^2)``; one example
    changes that sum by at most ``max(quantile, 1 - quantile) <= 1``, so each query is a Gaussian
    mechanism of the given noise multiplier and needs no knowledge of the dataset size.
    """
    lo, hi = math.log(low), math.log(high)
    for _ in range(queries):
        mid = (lo + hi) / 2
        noisy = float(np.sum(values <= math.exp(mid)) - quantile * len(values)) + rng.normal(
            0.0, noise_multiplier
        )
        if noisy >= 0:
            hi = mid
        else:
            lo = mid
    return math.exp((lo + hi) / 2)


def clip_estimate_event(dp: DPConfig) -> GaussianEvent:
    """What the private clip estimate spends: ``quantile_queries`` Gaussian queries on the whole data set."""
    return GaussianEvent(dp.quantile_noise_multiplier, 1.0, dp.quantile_queries)


def estimate_clip_norm(
    model: PersonalizedLM,
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    dp: DPConfig,
    ledger: PrivacyLedger,
    seed: int | None = None,
) -> float:
    """Privately estimate a clipping norm; the query's spending is in the ledger before it runs."""
    entry = ledger.record(
        LedgerEntry("clip-quantile", [clip_estimate_event(dp)], {"quantile": dp.clip_quantile})
    )
    norms = per_sample_grad_norms(model, examples, pad_token_id)
    rng = np.random.default_rng(_entropy_seed(seed))
    clip = private_quantile(
        norms,
        dp.clip_quantile,
        *dp.quantile_range,
        dp.quantile_queries,
        dp.quantile_noise_multiplier,
        rng,
    )
    ledger.complete(entry, max_grad_norm=clip)
    return clip


def plan_dp(
    model: PersonalizedLM,
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    dp: DPConfig,
    ledger: PrivacyLedger,
    batch_size: int,
    steps: int,
    seed: int | None = None,
    run_id: str = "",
) -> DPPlan:
    """The clipping norm C and noise multiplier sigma of ``steps`` DP-SGD steps at sample rate q = min(1, B / n).

    C is ``dp.max_grad_norm``, else the private ``dp.clip_quantile`` estimate (:func:`estimate_clip_norm`).
    sigma is ``dp.noise_multiplier``, else the smallest one with which the ledger's events, the clip estimate's
    query (when it runs) and ``steps`` subsampled Gaussian steps (sigma, q) stay within ``dp.target_epsilon``
    at ``dp.delta`` (:func:`fedpers.privacy.accounting.calibrate_noise_multiplier`).

    The whole plan is checked against the budget before anything is spent: sigma is calibrated first, with the
    clip estimate's event counted in, so a budget too small for the run raises
    :class:`~fedpers.privacy.accounting.BudgetExceededError` with the ledger unchanged (a retried round spends
    nothing more); only then does the clip estimate run, its spending recorded before it does."""
    sample_rate = min(1.0, batch_size / len(examples))
    clip = dp.max_grad_norm
    sigma = dp.noise_multiplier
    if sigma is None:
        if dp.target_epsilon is None:
            raise ValueError("DP needs either noise_multiplier or target_epsilon")
        estimate = [clip_estimate_event(dp)] if clip is None else []
        sigma = calibrate_noise_multiplier(
            dp.target_epsilon, dp.delta, sample_rate, steps, [*ledger.events(), *estimate]
        )
    if clip is None:
        clip = estimate_clip_norm(model, examples, pad_token_id, dp, ledger, seed)
    return DPPlan(sigma, clip, sample_rate, steps, run_id)


def train(
    model: PersonalizedLM,
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    config: TrainConfig,
    dp: DPConfig,
    ledger: PrivacyLedger | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the model's trainable parameters on ``examples`` with DP-SGD (or plain SGD if ``dp.enabled`` is false).

    Uses Adam on the privatised gradients. With DP on, ``ledger`` is required and receives the
    full planned spending before the first step, so an interrupted run never under-reports.
    """
    if not examples:
        raise ValueError("no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    n = len(examples)
    sample_rate = min(1.0, config.batch_size / n)
    result = TrainResult(steps=config.steps, sample_rate=sample_rate)
    sampling_seed, noise_seed = private_seeds(config.noise_seed)
    generator = torch.Generator().manual_seed(sampling_seed)
    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=sample_rate, steps=config.steps, generator=generator
    )
    model.train()
    optimizer: torch.optim.Optimizer = torch.optim.Adam(
        params, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    gsm: GradSampleModule | None = None
    entry: LedgerEntry | None = None
    if dp.enabled:
        if ledger is None:
            raise ValueError("DP training needs a privacy ledger to record its spending")
        plan = plan_dp(
            model,
            examples,
            pad_token_id,
            dp,
            ledger,
            config.batch_size,
            config.steps,
            config.noise_seed,
        )
        sigma, clip = plan.noise_multiplier, plan.max_grad_norm
        result.noise_multiplier, result.max_grad_norm = sigma, clip
        entry = ledger.record(
            LedgerEntry(
                "dp-sgd",
                [GaussianEvent(sigma, sample_rate, config.steps)],
                {
                    "max_grad_norm": clip,
                    "batch_size": config.batch_size,
                    "examples": n,
                    "learning_rate": config.learning_rate,
                }
                | dp.ledger_details,
            )
        )
        _fresh_for_opacus(model)
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        noise = torch.Generator().manual_seed(noise_seed)
        optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=sigma,
            max_grad_norm=clip,
            expected_batch_size=config.batch_size,
            loss_reduction="mean",
            generator=noise,
        )
    forward = gsm if gsm is not None else model
    try:
        bar = tqdm(
            sampler,
            total=config.steps,
            desc="DP-SGD" if dp.enabled else "SGD",
            disable=not config.progress,
            leave=False,
        )
        for step, indices in enumerate(bar):
            optimizer.zero_grad(set_to_none=True)
            if len(indices) == 0:
                if gsm is not None:
                    _set_empty_grad_samples(params)
                    optimizer.step()
                result.losses.append(float("nan"))
                continue
            losses = forward(**collate([examples[i] for i in indices], pad_token_id))
            losses.mean().backward()
            optimizer.step()
            result.losses.append(float(losses.detach().mean()))
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
            if on_step is not None:
                on_step(step, result.losses[-1])
    finally:
        if gsm is not None:
            gsm._close()
            _fresh_for_opacus(model)
        for p in params:
            p.grad = None
        model.eval()
    if entry is not None and ledger is not None:
        ledger.complete(entry, steps_taken=config.steps)
        result.epsilon = ledger.spent(dp.delta)
    return result
