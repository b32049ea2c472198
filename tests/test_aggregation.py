"""Aggregation math: compatibility checks, the persona gate, clipping and the server optimizers."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam

from fedpers.aggregation import (
    FedAdamOptimizer,
    FedAvgOptimizer,
    clip_delta,
    delta_norm,
    make_optimizer,
    means_from_sums,
)
from fedpers.aggregation.updates import check_compatible


def delta(a: float, b: float, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"lora_A": np.full((2, 3), a, dtype=dtype), "lora_B": np.full((3,), b, dtype=dtype)}


def random_arrays(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "x.lora_A.weight": rng.normal(0, scale, (4, 8)),
        "x.lora_B.weight": rng.normal(0, scale, (8, 4)),
    }


def test_incompatible_arrays_are_refused_clearly():
    check_compatible(delta(1, 1), delta(2, 2))
    with pytest.raises(ValueError, match=r"delta keys do not match: missing \['lora_B'\]"):
        check_compatible(delta(1, 1), {"lora_A": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        check_compatible(delta(1, 1), {**delta(1, 1), "extra": np.zeros(1)})
    with pytest.raises(
        ValueError, match=r"mean delta 'lora_A' has shape \(3, 2\), expected \(2, 3\)"
    ):
        check_compatible(
            delta(1, 1), {**delta(1, 1), "lora_A": np.zeros((3, 2))}, what="mean delta"
        )


def test_persona_gate_releases_at_min_clients_and_never_partially():
    sums = {
        "field": {k: v * 2 for k, v in delta(2, 0).items()},
        "exec": delta(100, 100),
        "global": delta(0, 0),
    }
    agg = means_from_sums(
        sums, {"field": 2, "exec": 1, "global": 0}, ["field", "exec", "intern"], min_clients=2
    )
    np.testing.assert_allclose(agg.persona_deltas["field"]["lora_A"], 2.0)
    assert agg.persona_deltas["field"]["lora_A"].dtype == np.float32
    assert agg.persona_deltas["exec"] is None and agg.persona_deltas["intern"] is None
    assert agg.gated == ("exec",) and agg.released == ("field",)
    assert agg.contributors == {"field": 2, "exec": 1, "intern": 0, "global": 0}
    # the global mean covers every contributor, the gated persona's included
    np.testing.assert_allclose(agg.global_delta["lora_A"], (4 + 100) / 3, rtol=1e-6)
    assert agg.global_contributors == 3


def test_global_gate_and_clients_without_a_persona():
    agg = means_from_sums({"global": delta(3, 3)}, {"global": 1}, ["field"], min_clients=2)
    assert agg.global_delta is None and agg.released == ()
    agg = means_from_sums(
        {"global": delta(3, 3), "field": delta(1, 1)},
        {"global": 1, "field": 1},
        ["field"],
        min_clients=2,
    )
    np.testing.assert_allclose(agg.global_delta["lora_B"], 2.0)
    assert agg.persona_deltas["field"] is None
    empty = means_from_sums({}, {}, ["field"], min_clients=1)
    assert empty.global_delta is None and empty.gated == ()


def test_means_reject_unknown_personas_and_bad_settings():
    with pytest.raises(ValueError, match=r"unknown personas \['ghost'\]"):
        means_from_sums({"ghost": delta(1, 1)}, {"ghost": 1}, ["field"], min_clients=1)
    with pytest.raises(ValueError, match="min_clients"):
        means_from_sums({}, {}, ["field"], min_clients=0)


def test_clip_delta_bounds_the_norm_and_is_a_noop_below():
    rng = np.random.default_rng(0)
    d = {k: v.astype(np.float32) for k, v in random_arrays(rng).items()}
    norm = delta_norm(d)
    assert norm == pytest.approx(
        np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in d.values()))
    )
    clipped, scale = clip_delta(d, norm / 4)
    assert delta_norm(clipped) <= norm / 4
    assert delta_norm(clipped) == pytest.approx(norm / 4, rel=1e-5) and scale == pytest.approx(
        0.25, rel=1e-5
    )
    assert clipped["x.lora_A.weight"].dtype == np.float32
    same, one = clip_delta(d, norm * 2)
    assert one == 1.0 and all(np.array_equal(same[k], d[k]) for k in d)
    assert same["x.lora_A.weight"] is not d["x.lora_A.weight"]
    with pytest.raises(ValueError, match="max_norm"):
        clip_delta(d, 0.0)


def test_fedavg_optimizer_adds_the_mean_delta_without_mutating():
    rng = np.random.default_rng(1)
    params, mean = random_arrays(rng), random_arrays(rng)
    before = {k: v.copy() for k, v in params.items()}
    new = FedAvgOptimizer().step(params, mean)
    for k in params:
        np.testing.assert_array_equal(new[k], before[k] + mean[k])
        np.testing.assert_array_equal(params[k], before[k])
    half = make_optimizer("fedavg", server_lr=0.5).step(params, mean)
    np.testing.assert_allclose(
        half["x.lora_B.weight"], params["x.lora_B.weight"] + 0.5 * mean["x.lora_B.weight"]
    )
    with pytest.raises(ValueError, match="missing"):
        FedAvgOptimizer().step(params, {"x.lora_A.weight": mean["x.lora_A.weight"]})


def reference_fedadam(params, deltas, eta, beta_1, beta_2, tau):
    """Flower's FedAdam update written out by hand (rounds numbered from 1)."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for server_round, d in enumerate(deltas, start=1):
        m = {k: beta_1 * m[k] + (1 - beta_1) * d[k] for k in params}
        v = {k: beta_2 * v[k] + (1 - beta_2) * d[k] ** 2 for k in params}
        eta_norm = (
            eta * np.sqrt(1 - beta_2 ** (server_round + 1.0)) / (1 - beta_1 ** (server_round + 1.0))
        )
        params = {k: params[k] + eta_norm * m[k] / (np.sqrt(v[k]) + tau) for k in params}
    return params


class _Reply:
    """The two things Flower's strategies read from a reply Message."""

    def __init__(self, arrays: dict[str, np.ndarray], num_examples: int) -> None:
        self.content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                "metrics": MetricRecord({"num-examples": num_examples}),
            }
        )

    def has_error(self) -> bool:
        return False


def test_fedadam_matches_flower_for_three_rounds():
    rng = np.random.default_rng(2)
    settings = {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    params = random_arrays(rng)
    ours = make_optimizer("fedadam", server_lr=settings["eta"], beta_1=0.9, beta_2=0.99, tau=1e-3)
    flower = FedAdam(**settings)
    ours_params, flower_params, round_deltas = params, params, []
    for server_round in (1, 2, 3):
        updates = [(random_arrays(rng, 0.01), n) for n in (3, 5, 9)]
        mean = {k: sum(n * d[k] for d, n in updates) / sum(n for _, n in updates) for k in params}
        round_deltas.append(mean)
        ours_params = ours.step(ours_params, mean)
        # Flower averages the clients' adapters (params + delta) and takes delta_t against its current arrays
        flower.current_arrays = {k: v.copy() for k, v in flower_params.items()}
        replies = [_Reply({k: flower_params[k] + d[k] for k in params}, n) for d, n in updates]
        record, _ = flower.aggregate_train(server_round, replies)
        flower_params = {k: a.numpy() for k, a in record.items()}
        for k in params:
            np.testing.assert_allclose(ours_params[k], flower_params[k], rtol=1e-9, atol=1e-12)
    expected = reference_fedadam(params, round_deltas, **settings)
    for k in params:
        np.testing.assert_allclose(ours_params[k], expected[k], rtol=1e-12, atol=1e-15)
        assert not np.allclose(ours_params[k], params[k])


def test_fedadam_keeps_the_input_dtype_and_unknown_optimizers_are_refused():
    rng = np.random.default_rng(3)
    params = {k: v.astype(np.float32) for k, v in random_arrays(rng).items()}
    step = {k: v.astype(np.float32) for k, v in random_arrays(rng, 0.01).items()}
    p = FedAdamOptimizer().step(params, step)
    assert p["x.lora_A.weight"].dtype == np.float32
    with pytest.raises(ValueError, match="unknown server optimizer"):
        make_optimizer("fedsgd")
