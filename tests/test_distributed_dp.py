"""User-level DP with noise added on the devices, inside SecAgg+: what the server unmasks is always noised.

The SecAgg+ rounds below run Flower's simulation engine with the project's client mod and server workflow:
four devices, reconstruction threshold 2 of 4, each adding a Skellam share of variance ``v / 2``. Device 0 is
alone in slot ``a`` (the case where SecAgg+ alone reveals one upload in clear); devices 1-3 share slot ``b``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from conftest import run_secure_round
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from clients.secagg import secaggplus_mod
from fedpers.aggregation.secure import QuantizationPlan, centered_sum
from fedpers.federated import FederatedConfig
from fedpers.instructions import RoundInstructions
from fedpers.privacy.skellam import sample_skellam
from fedpers.privacy.user_level import (
    NOISED_QUANTIZATION_BITS,
    DistributedNoise,
    upload_clip_norm,
)
from server.secagg import SecAggPlusRound, SecureAggregationError
from server.strategy import FitOnly

DIM, CLIP, SIGMA, NODES = 20_000, 4.0, 0.5, 4
THRESHOLD = 2  # round(0.5 * 4 shares)


def _config() -> FederatedConfig:
    return FederatedConfig.from_flat(
        {
            "model": "tiny",
            "personas": "a,b",
            "user_dp": True,
            "user_noise_multiplier": SIGMA,
            "update_clip": CLIP,
            "dp": False,
        }
    ).validated()


def _upload(pid: int) -> list[np.ndarray]:
    """Device 0's delta in slot a, the others' in slot b; each clipped to CLIP, its count entry CLIP."""
    v = np.random.default_rng(pid).normal(size=DIM)
    delta = (v * CLIP * 0.9 / np.linalg.norm(v)).astype(np.float32)
    zero = np.zeros(DIM, np.float32)
    counts = np.array([CLIP, 0.0] if pid == 0 else [0.0, CLIP], np.float32)
    return [delta, zero, counts] if pid == 0 else [zero, delta, counts]


def _exact(pids) -> list[np.ndarray]:
    return [np.sum([_upload(p)[i].astype(np.float64) for p in pids], axis=0) for i in range(3)]


class _NoisedSum(FitOnly):
    """Samples every node with user-level DP instructions; keeps what ``aggregate_fit`` receives."""

    def __init__(self) -> None:
        self.results: list[list[np.ndarray]] = []
        self.record = RoundInstructions.for_round(_config(), "run-x", 1, {}, ()).to_record()

    def configure_fit(self, server_round, parameters, client_manager):
        fit_ins = FitIns(ndarrays_to_parameters([]), self.record)
        return [(c, fit_ins) for c in client_manager.sample(NODES, NODES)]

    def aggregate_fit(self, server_round, results, failures):
        # every FitRes carries the same unmasked mean: n times it is the sum
        mean = parameters_to_ndarrays(results[0][1].parameters)
        self.results.append([np.asarray(a, np.float64) * len(results) for a in mean])
        return None, {}


def _train(msg: Message, ctx: Context) -> Message:
    pid = int(ctx.node_config["partition-id"])
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(_upload(pid)), 1, {})
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def _drop(victim: int | None, stage: str):
    def mod(msg: Message, ctx: Context, call_next):
        seen = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
        if seen == stage and int(ctx.node_config["partition-id"]) == victim:
            raise ConnectionError(f"client {victim} dropped during {stage}")
        return call_next(msg, ctx)

    return mod


def _run(
    plan: QuantizationPlan, victim: int | None = None, stage: str = Stage.COLLECT_MASKED_VECTORS
):
    strategy = _NoisedSum()
    workflow = SecAggPlusRound(plan, reconstruction_threshold=0.5, timeout=120.0, retries=0)
    client_app = ClientApp(mods=[_drop(victim, stage), secaggplus_mod])
    client_app.train()(_train)
    outcome = run_secure_round(workflow, strategy, client_app, NODES)
    return strategy, workflow.history, outcome


def _noised_plan() -> QuantizationPlan:
    return QuantizationPlan.for_bound(CLIP, 1000, NOISED_QUANTIZATION_BITS, noised=True)


def _planned_std() -> float:
    """The noise std the ledger is charged for, in the adapter's units: sigma times the upload's L2 bound."""
    return SIGMA * upload_clip_norm(CLIP)


def _variance_interval(residual: np.ndarray, expected: float) -> tuple[float, float]:
    """Sample variance of ``residual`` and a 5-standard-error half-width for ``expected`` (normal approximation)."""
    return float(np.var(residual)), 5.0 * expected * math.sqrt(2.0 / residual.size)


@pytest.mark.slow  # Ray
@pytest.mark.parametrize("victim", [None, 1])
def test_every_unmasked_sum_carries_at_least_the_planned_noise_even_after_a_dropout(victim):
    strategy, history, outcome = _run(_noised_plan(), victim)
    assert not outcome and history[0]["completed"]
    survivors = [p for p in range(NODES) if p != victim]
    assert history[0]["aggregated"] == len(survivors)
    (total,) = strategy.results
    exact = _exact(survivors)
    planned = _planned_std() ** 2
    # each survivor adds v / t: n / t times the planned variance, never below it (n >= t or nothing unmasks)
    expected = len(survivors) / THRESHOLD * planned
    for slot in (0, 1):  # slot a: device 0 alone; slot b: the others
        residual = total[slot] - exact[slot]
        assert abs(float(np.mean(residual))) < 5 * math.sqrt(expected / DIM)
        variance, half_width = _variance_interval(residual, expected)
        assert abs(variance - expected) < half_width, (slot, variance, expected)
        assert variance > planned
    # the counts are noised with the same variance: the server's count of slot a is not 1
    counts = total[2] / CLIP
    assert np.all(np.abs(counts - exact[2] / CLIP) > 1e-3)


@pytest.mark.slow  # Ray
def test_a_slot_with_one_contributor_unmasks_as_its_update_plus_the_full_noise():
    """Without the devices' noise the server would hold device 0's update exactly; with it, what it holds differs
    from that update by noise of the planned variance, and correlates with it only as much as the signal allows."""
    strategy, _, outcome = _run(_noised_plan())
    assert not outcome
    (total,) = strategy.results
    alone = _upload(0)[0].astype(np.float64)
    residual = total[0] - alone
    assert np.var(residual) > _planned_std() ** 2
    # the update's norm (0.9 * CLIP) against the noise's (about sqrt(2 * DIM) * planned std): hidden
    assert np.linalg.norm(alone) < 0.01 * np.linalg.norm(residual)


@pytest.mark.slow  # Ray
def test_devices_refuse_a_grid_their_ledger_was_not_charged_for():
    """A server offering the fine 2**30 grid (where the noise the ledger was charged for would be 2**13 times too
    small relative to the update) gets no upload from any device: the round fails loudly."""
    strategy, history, outcome = _run(QuantizationPlan.for_bound(CLIP))
    assert strategy.results == []
    assert not history[0]["completed"] and history[0]["failed_stage"] == "collect masked vectors"
    assert isinstance(outcome.get("error"), SecureAggregationError)


def test_the_planned_variance_and_sensitivity_follow_the_grid():
    d = 2 * DIM + 2
    noise = DistributedNoise.for_settings(SIGMA, CLIP, d)
    s = 2**NOISED_QUANTIZATION_BITS / (2 * CLIP)
    assert noise.levels_per_unit == s
    assert noise.variance == pytest.approx((SIGMA * upload_clip_norm(CLIP) * s) ** 2)
    # stochastic rounding moves each coordinate by less than one level
    assert noise.l2_sensitivity == pytest.approx(upload_clip_norm(CLIP) * s + math.sqrt(d))
    assert noise.share_variance(THRESHOLD) * THRESHOLD == pytest.approx(noise.variance)
    event = noise.event()
    assert (event.variance, event.steps) == (noise.variance, 1)
    # the grid refused above is another mechanism: its variance in levels differs
    fine = DistributedNoise.for_round(SIGMA, CLIP, CLIP, 2**30, d)
    assert fine != noise
    with pytest.raises(ValueError, match="threshold"):
        noise.share_variance(0)
    with pytest.raises(ValueError, match="without noise"):
        DistributedNoise.for_settings(0.0, CLIP, d)


def test_the_centred_sum_recovers_sums_the_noise_takes_below_zero_or_past_the_range():
    plan = _noised_plan()
    rng = np.random.default_rng(5)
    n, size = 3, 4096
    quantized = rng.integers(0, plan.quantization_range + 1, size=(n, size))
    quantized[:, :8] = 0  # zero coordinates: the noise takes the sum below zero half the time
    noise = sample_skellam((n, size), 1e10, rng)
    true = (quantized + noise).sum(axis=0)
    assert (true < 0).any() and (true > n * plan.quantization_range).any()
    residue = true % plan.modulus_range
    assert np.array_equal(centered_sum(residue, n, plan), true)
    # without noise the residue is the sum
    plain = quantized.sum(axis=0)
    assert np.array_equal(centered_sum(plain % plan.modulus_range, n, plan), plain)


def test_shares_are_drawn_from_os_entropy_unless_the_run_is_seeded(monkeypatch, task_identity):
    """The Skellam share's generator is seeded from ``os.urandom`` on the device, never from anything the server
    sends: two devices given the same message draw different noise."""
    import clients.secagg as mod

    calls = []
    real = os.urandom
    monkeypatch.setattr(mod.os, "urandom", lambda n: calls.append(n) or real(n))
    record = RoundInstructions.for_round(_config(), "run-x", 1, {}, ()).to_record()
    fit = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([]), record), keep_input=True)
    msg = Message(fit, dst_node_id=1, message_type="train")
    plan = _noised_plan()

    class State:
        clipping_range, target_range, threshold = plan.clipping_range, plan.quantization_range, 2

    upload = ndarrays_to_parameters(_upload(0))
    first = mod._user_level_noise(msg, State(), upload, None)
    second = mod._user_level_noise(msg, State(), upload, None)
    assert first is not None and second is not None and calls == [32, 32]
    expected = DistributedNoise.for_settings(SIGMA, CLIP, 2 * DIM + 2).share_variance(2)
    assert first[0] == pytest.approx(expected)
    a, b = (sample_skellam((1000,), first[0], g) for g in (first[1], second[1]))
    assert not np.array_equal(a, b)
