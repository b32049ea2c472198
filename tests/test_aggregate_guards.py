"""Aggregate guards: honest clipped sums pass, a modified device's or a diverged device's sums are rejected."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fedpers.adapters import GLOBAL
from fedpers.aggregation import clip_delta
from fedpers.aggregation.guards import SumBounds, check_round_sums
from fedpers.aggregation.rounds import PersonaAdapters, RoundSums
from fedpers.aggregation.secure import QuantizationPlan
from fedpers.aggregation.updates import NonFiniteUpdate
from fedpers.federated import FederatedConfig

SHAPES = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4)}
SLOTS = ("p", "q", GLOBAL)
CLIP = 2.0
COUNT = 2.0


def _delta(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    raw = {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
    return clip_delta(raw, CLIP)[0]


def _honest(rng: np.random.Generator, members: dict[str, int], noise_std: float = 0.0):
    """Slot sums and counts (in clients) of clipped uploads, with Gaussian noise of ``noise_std``."""
    sums, counts = {}, {}
    for slot in SLOTS:
        n = members.get(slot, 0)
        total = {k: np.zeros(s) for k, s in SHAPES.items()}
        for _ in range(n):
            for k, v in _delta(rng, scale=3.0).items():
                total[k] += v
        sums[slot] = {k: v + rng.normal(0.0, noise_std, size=v.shape) for k, v in total.items()}
        counts[slot] = n + rng.normal(0.0, noise_std) / COUNT
    return sums, counts, sum(members.values())


def test_honest_clipped_sums_pass_exactly_and_with_the_planned_noise():
    rng = np.random.default_rng(0)
    step = QuantizationPlan.for_bound(CLIP).step
    for trial in range(200):
        members = {"p": int(rng.integers(0, 4)), "q": int(rng.integers(0, 4)), GLOBAL: 1}
        sums, counts, n = _honest(rng, members)
        assert check_round_sums(sums, counts, n, SumBounds(CLIP, COUNT, step)) == [], trial
        noisy = _honest(rng, members, noise_std=5.0)
        assert check_round_sums(*noisy, SumBounds(CLIP, COUNT, step, noise_std=5.0)) == [], trial


def test_updates_all_pointing_one_way_reach_the_bound_and_pass():
    d = _delta(np.random.default_rng(1), scale=10.0)
    assert math.isclose(
        np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in d.values())), CLIP, rel_tol=1e-5
    )
    sums = {s: {k: 3 * v.astype(np.float64) for k, v in d.items()} for s in SLOTS}
    counts = dict.fromkeys(SLOTS, 3.0)
    assert check_round_sums(sums, counts, 9, SumBounds(CLIP, COUNT)) == []


def test_the_modified_device_of_the_report_is_rejected():
    """A device adding 2**36 levels to each quantized coordinate after the honest clip."""
    rng = np.random.default_rng(2)
    plan = QuantizationPlan.for_bound(CLIP)
    sums, counts, n = _honest(rng, {"p": 2, "q": 1})
    shifted = {k: v + 2**36 * plan.step for k, v in sums["p"].items()}
    problems = check_round_sums(
        {**sums, "p": shifted}, counts, n, SumBounds(CLIP, COUNT, plan.step)
    )
    assert len(problems) == 1 and "slot p: sum of norm" in problems[0]
    # a shift a little past what 2 clipped updates allow is caught too
    nudged = {k: v * 0 + (2.2 * CLIP / math.sqrt(64 + 64)) for k, v in sums["p"].items()}
    assert check_round_sums({**sums, "p": nudged}, counts, n, SumBounds(CLIP, COUNT, plan.step))


@pytest.mark.parametrize(
    "change, expected",
    [
        ("nan-sum", "non-finite values"),
        ("inf-count", "non-finite counts"),
        ("count-twice", "add up to"),
        ("negative-count", "not a whole number"),
        ("fractional-count", "not a whole number"),
    ],
)
def test_broken_sums_and_counts_are_rejected_naming_what_failed(change, expected):
    rng = np.random.default_rng(3)
    sums, counts, n = _honest(rng, {"p": 2, "q": 2})
    if change == "nan-sum":
        sums["q"]["a.lora_A.weight"][0, 0] = np.nan
    elif change == "inf-count":
        counts["q"] = math.inf
    elif change == "count-twice":  # one upload marked two slots
        counts[GLOBAL] += 1
    elif change == "negative-count":
        counts["q"], counts[GLOBAL] = -1.0, counts[GLOBAL] + 3
    else:
        counts["q"], counts["p"] = 1.5, 2.5
    problems = check_round_sums(sums, counts, n, SumBounds(CLIP, COUNT))
    assert problems and any(expected in p for p in problems)


def test_a_diverged_update_is_never_clipped_or_sent():
    bad = {"x": np.array([1.0, np.nan], dtype=np.float32), "y": np.ones(2, np.float32)}
    with pytest.raises(NonFiniteUpdate, match="non-finite values in x"):
        clip_delta(bad, 1.0)
    with pytest.raises(NonFiniteUpdate):
        clip_delta({"x": np.array([np.inf], dtype=np.float32)}, 1.0)


def _run(round_sums: RoundSums, registry: str = ""):
    from server.app import ServerRun

    config = FederatedConfig.from_flat(
        {"model": "tiny", "personas": "p,q", "registry": registry, "update_clip": CLIP}
    ).validated()
    adapters = {s: {k: np.zeros(v, np.float32) for k, v in SHAPES.items()} for s in SLOTS}
    state = PersonaAdapters.start(adapters, ("p", "q"), 1, "fedavg")
    mode = SimpleNamespace(collect=lambda grid, context, server_round: round_sums)
    training = SimpleNamespace(count_value=COUNT)
    return ServerRun(config, "r", 3, None, state, training, None, mode, [], {})  # type: ignore[arg-type]


def test_a_rejected_round_applies_nothing_is_recorded_and_blocks_publication(tmp_path, monkeypatch):
    import server.app as app

    rng = np.random.default_rng(4)
    sums, counts, n = _honest(rng, {"p": 2, "q": 1})
    sums["p"] = {k: v + 1e6 for k, v in sums["p"].items()}
    run = _run(RoundSums(1, sums, counts, n, 0), registry=str(tmp_path / "registry"))
    before = {s: {k: v.copy() for k, v in a.items()} for s, a in run.state.adapters.items()}
    app._train(run, None, None, 1)  # type: ignore[arg-type]
    assert all(
        np.array_equal(run.state.adapters[s][k], before[s][k]) for s in before for k in before[s]
    )
    assert run.history[-1]["rejected"] and run.history[-1]["released"] == []
    assert "REJECTED" in run.round_summary
    assert app.rejected_rounds(run)[0]["round"] == 1
    published = []
    monkeypatch.setattr(app, "publish", lambda *a: published.append(a))
    monkeypatch.setattr(app, "save_adapters", lambda *a: None)
    payload = {"rejected_rounds": app.rejected_rounds(run), "evaluation": None}
    app.write_outputs(run, tmp_path / "run", payload, "deployment", None)
    assert published == []
    # the audit says so
    from fedpers.audit.report import aggregate_check_findings

    findings = aggregate_check_findings(payload)
    assert findings[0]["level"] == "problem" and "Round 1 was REJECTED" in findings[0]["text"]
    assert aggregate_check_findings({"rejected_rounds": []})[0]["level"] == "ok"


def test_an_honest_round_is_applied():
    import server.app as app

    rng = np.random.default_rng(5)
    sums, counts, n = _honest(rng, {"p": 2, "q": 1})
    run = _run(RoundSums(1, sums, counts, n, 0))
    app._train(run, None, None, 1)  # type: ignore[arg-type]
    assert "rejected" not in run.history[-1] and run.history[-1]["released"] == ["p", "q"]
    assert not np.array_equal(run.state.adapters["p"]["a.lora_A.weight"], 0)
