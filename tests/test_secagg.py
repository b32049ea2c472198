"""Secure aggregation: mask strength, quantization, slot packing, and SecAgg+ rounds with injected dropouts."""

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_secure_round
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_addition,
    parameters_mod,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.primitives.asymmetric import generate_key_pairs

from clients.secagg import quantize_upload, secaggplus_mod
from fedpers.aggregation.secure import QuantizationPlan, keystream_masks
from fedpers.aggregation.slots import SlotLayout
from server.secagg import SecAggPlusRound, SecureAggregationError
from server.strategy import FitOnly, upload_sum

# ---------------------------------------------------------------------------------------------- masks


def test_keystream_masks_are_uniform_keyed_by_the_whole_secret_and_shaped_like_flowers():
    seed = os.urandom(32)
    shapes = [(1,), (64, 32), ()]
    a = keystream_masks(seed, 2**40, shapes)
    assert [m.shape for m in a] == [(1,), (64, 32), ()] and all(m.dtype == np.int64 for m in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, keystream_masks(seed, 2**40, shapes)))
    flipped = bytes([seed[0] ^ 1]) + seed[1:]
    assert not np.array_equal(a[1], keystream_masks(flipped, 2**40, shapes)[1])
    values = keystream_masks(seed, 2**40, [(200_000,)])[0]
    assert values.min() >= 0 and values.max() < 2**40
    # uniform: mean M/2 within 0.5 % (std of mean ~0.06 %)
    assert abs(values.mean() / 2**40 - 0.5) < 0.005
    # Flower's shared keys are 44-byte base64 strings from HKDF: accepted like any byte string
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    assert np.array_equal(
        keystream_masks(generate_shared_key(sk1, pk2), 2**32, [(8,)])[0],
        keystream_masks(generate_shared_key(sk2, pk1), 2**32, [(8,)])[0],
    )
    with pytest.raises(ValueError):
        keystream_masks(seed, 3 * 2**30, shapes)


def _fold32(seed: bytes) -> int:
    out = 0
    for i in range(0, len(seed), 4):
        out ^= int.from_bytes(seed[i : i + 4], "little")
    return out


def test_brute_force_recovers_flowers_masks_but_not_fedpers_masks():
    """A masked upload whose zero slots the server knows: Flower's mask depends on a 32-bit fold of the
    secret only, so searching seeds finds it (here a 2^16 window of the 2^32 space, for speed); the
    same search against ChaCha20 masks keyed by the whole secret finds nothing."""
    mod = 2**32
    # quantized zeros: what the other slots of an upload hold
    known = np.full(256, 2**21, dtype=np.int64)
    secret = os.urandom(32)
    # the attacker's search window: 2^16 candidates containing the true fold
    window = _fold32(secret) & ~0xFFFF

    def search(masked: np.ndarray, generator) -> int | None:
        for candidate in range(window, window + 2**16):
            guess = generator(candidate.to_bytes(4, "little") + bytes(28))
            if np.array_equal((masked - guess) % mod, known):
                return candidate
        return None

    vanilla = (known + pseudo_rand_gen(secret, mod, [known.shape])[0]) % mod
    found = search(vanilla, lambda s: pseudo_rand_gen(s, mod, [known.shape])[0])
    assert found == _fold32(secret)  # mask recovered: the upload is unmasked
    strong = (known + keystream_masks(secret, mod, [known.shape])[0]) % mod
    assert search(strong, lambda s: keystream_masks(s, mod, [known.shape])[0]) is None


# --------------------------------------------------------------------------------------- quantization


def _secagg_sum(vectors: list[list[np.ndarray]], plan: QuantizationPlan) -> list[np.ndarray]:
    """The client's quantization (weight 1 of max_weight 1) and Flower's server dequantization, masks omitted."""
    total = None
    for vec in vectors:
        q = factor_combine(
            plan.quantization_range,
            quantize_upload(vec, 1.0, plan.clipping_range, plan.quantization_range),
        )
        total = q if total is None else parameters_addition(total, q)
    total = parameters_mod(total, plan.modulus_range)
    q_total, rest = total[0][0], total[1:]
    out = dequantize(rest, plan.clipping_range, plan.quantization_range)
    return [
        (v - (len(vectors) - 1) * plan.clipping_range)
        * plan.quantization_range
        / q_total
        * len(vectors)
        for v in out
    ]


def test_quantization_never_truncates_a_clipped_update_and_errs_below_1e_5_relative():
    rng = np.random.default_rng(0)
    bound, clients, dim = 32.0, 15, 30_720
    plan = QuantizationPlan.for_bound(bound)
    vectors = []
    for i in range(clients):
        v = rng.normal(size=dim)
        if i == 0:  # the worst case: all of the norm in one coordinate
            v = np.zeros(dim)
            v[0] = -bound
        # adapters are float32
        vectors.append([(v / max(1.0, np.linalg.norm(v) / bound)).astype(np.float32)])
    exact = np.sum([v[0].astype(np.float64) for v in vectors], axis=0)
    approx = _secagg_sum(vectors, plan)[0]
    rel = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
    assert rel < 1e-5
    # stochastic rounding is unbiased with variance at most step**2 / 4 per coordinate: a 4-sigma bound
    assert np.linalg.norm(approx - exact) < 4.0 * np.sqrt(clients * dim) * plan.step / 2
    # the coordinate at the bound came through whole
    assert abs(approx[0] - exact[0]) < 1e-5 * bound
    assert plan.modulus_range > clients * plan.quantization_range * 2
    flower = [
        np.asarray(a, np.int64)
        for a in quantize(vectors[1], plan.clipping_range, plan.quantization_range)
    ]
    # Flower's own float32 arithmetic: every level a multiple of 32 or 64
    assert np.all(flower[0] % 32 == 0)


# ------------------------------------------------------------------------------------------------ slots


def test_seeded_rounding_is_reproducible_and_follows_flowers_rule():
    """Under the benchmark switch the stochastic rounding draws from a seeded generator: the same seed gives the
    same quantized upload (a seeded run is reproducible end to end), and each value is Flower's floor or ceiling."""
    arrays = [np.random.default_rng(0).normal(0.0, 0.3, size=(40, 8)), np.array([32.0, 0.0])]
    args = (0.5, 32.0, 2**30)
    first = quantize_upload(arrays, *args, np.random.default_rng(11))
    again = quantize_upload(arrays, *args, np.random.default_rng(11))
    other = quantize_upload(arrays, *args, np.random.default_rng(12))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    exact = [(np.clip(a * 0.5, -32.0, 32.0) + 32.0) * 2**30 / 64.0 for a in arrays]
    for q, x in zip(first, exact, strict=True):
        assert q.dtype == np.int64 and np.all((q == np.floor(x)) | (q == np.ceil(x)))
    # unbiased: the mean error of 320 roundings is near 0
    assert abs(float(np.mean(first[0] - exact[0]))) < 0.1


def test_slot_sum_gives_per_persona_sums_and_counts_and_nothing_per_client():
    slots = ("global", "a", "b")
    adapter = {"x.lora_A": np.zeros((2, 3), np.float32), "x.lora_B": np.zeros((3, 2), np.float32)}
    layout = SlotLayout.for_adapter(adapter, slots)
    rng = np.random.default_rng(1)
    clients = [
        ("a", {k: rng.normal(size=v.shape).astype(np.float32) for k, v in adapter.items()})
        for _ in range(2)
    ]
    clients.append(
        ("b", {k: rng.normal(size=v.shape).astype(np.float32) for k, v in adapter.items()})
    )
    uploads = [layout.pack(slot, delta, 4.0) for slot, delta in clients]
    assert all(len(u) == layout.num_arrays for u in uploads)
    assert layout.num_arrays == 3 * 2 + 1 and layout.adapter_size == 12
    assert layout.upload_size == sum(a.size for a in layout.zeros()) == 3 * 12 + 3
    total = [np.sum([u[i] for u in uploads], axis=0) for i in range(layout.num_arrays)]
    sums, counts = layout.unpack(total, 4.0)
    assert counts == {"global": 0.0, "a": 2.0, "b": 1.0}
    for k in adapter:
        np.testing.assert_allclose(sums["a"][k], clients[0][1][k] + clients[1][1][k], rtol=1e-6)
        np.testing.assert_allclose(sums["b"][k], clients[2][1][k], rtol=1e-6)
        assert not sums["global"][k].any()


# ------------------------------------------------------------------------------- SecAgg+ with dropouts

DIM, BOUND = 500, 4.0


def _vector(pid: int) -> list[np.ndarray]:
    rng = np.random.default_rng(pid)
    v = rng.normal(size=DIM)
    return [(v * BOUND * 0.9 / np.linalg.norm(v)).astype(np.float32), np.array([BOUND], np.float32)]


class _SumStrategy(FitOnly):
    """Samples every node and keeps what ``aggregate_fit`` receives (the unmasked mean in every FitRes)."""

    def __init__(self, nodes: int) -> None:
        self.nodes, self.results = nodes, []

    def configure_fit(self, server_round, parameters, client_manager):
        fit_ins = FitIns(ndarrays_to_parameters([]), {})
        return [(c, fit_ins) for c in client_manager.sample(self.nodes, self.nodes)]

    def aggregate_fit(self, server_round, results, failures):
        self.results.append([parameters_to_ndarrays(r.parameters) for _, r in results])
        return None, {}


def _drop_mod(marks: Path, stage: str | None, victims: set[int], times: int, sleep: float = 0.0):
    def mod(msg: Message, ctx: Context, call_next):
        pid = int(ctx.node_config["partition-id"])
        seen = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
        if seen == stage and pid in victims:
            mark = marks / f"{pid}-{stage}"
            done = int(mark.read_text()) if mark.exists() else 0
            if done < times:
                mark.write_text(str(done + 1))
                if sleep:
                    time.sleep(sleep)
                else:
                    raise ConnectionError(f"client {pid} dropped during {stage}")
        return call_next(msg, ctx)

    return mod


def _upload(msg: Message, ctx: Context) -> Message:
    pid = int(ctx.node_config["partition-id"])
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(_vector(pid)), 1, {})
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def _run(
    tmp_path: Path,
    stage: str | None = None,
    victims: set[int] = frozenset(),
    times: int = 1,
    sleep: float = 0.0,
    nodes: int = 4,
    retries: int = 2,
    timeout: float = 60.0,
):
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    strategy = _SumStrategy(nodes)
    observed: list[tuple[str, Message]] = []
    workflow = SecAggPlusRound(
        QuantizationPlan.for_bound(BOUND),
        timeout=timeout,
        retries=retries,
        observer=lambda stage_name, reply: observed.append((stage_name, reply)),
    )
    client_app = ClientApp(
        mods=[_drop_mod(marks, stage, set(victims), times, sleep), secaggplus_mod]
    )
    client_app.train()(_upload)
    outcome = run_secure_round(workflow, strategy, client_app, nodes)
    return strategy, workflow.history, observed, outcome


def _expected(pids) -> np.ndarray:
    return np.sum([_vector(p)[0].astype(np.float64) for p in pids], axis=0)


def _check_sum(strategy: _SumStrategy, pids) -> None:
    (results,) = strategy.results
    first = results[0]
    # only the aggregate arrives
    assert all(all(np.array_equal(a, b) for a, b in zip(first, r)) for r in results)
    total = upload_sum(
        [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(first), 1, {}))] * len(results),
        secure=True,
    )
    expected = _expected(pids)
    assert len(results) == len(pids)
    assert np.linalg.norm(total[0] - expected) / np.linalg.norm(expected) < 1e-5
    assert round(total[1][0] / BOUND) == len(pids)


@pytest.mark.slow  # Ray
def test_secure_sum_equals_plaintext_sum_and_server_never_holds_an_unmasked_update(tmp_path):
    strategy, history, observed, outcome = _run(tmp_path)
    assert not outcome and [h["completed"] for h in history] == [True]
    _check_sum(strategy, range(4))
    plan = QuantizationPlan.for_bound(BOUND)
    stages = [s for s, _ in observed]
    assert stages.count("collect masked vectors") == 4 and len(observed) == 16
    plain = [np.concatenate([v.ravel() for v in _vector(p)]) for p in range(4)]
    for stage_name, reply in observed:
        # no float arrays at all
        assert not any(len(r) for r in reply.content.array_records.values())
        if stage_name != "collect masked vectors":
            continue
        masked = [
            bytes_to_ndarray(b)
            for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        ]
        ints = np.concatenate([m.ravel() for m in masked[1:]])
        assert ints.min() >= 0 and ints.max() < plan.modulus_range
        # looks uniform, not like a quantized update
        assert abs(ints.mean() / plan.modulus_range - 0.5) < 0.05
        for vec in plain:
            q = (np.clip(vec, -BOUND, BOUND) + BOUND) * plan.quantization_range / (2 * BOUND)
            # no coordinate sits at its quantized value
            assert np.mean(np.abs(ints - q) <= 1) < 0.01


@pytest.mark.parametrize(
    "stage, survivors",
    [
        (Stage.SETUP, [0, 2, 3]),
        # Flower's own workflow halts here with no update and no error
        (
            Stage.SHARE_KEYS,
            [0, 2, 3],
        ),
        (Stage.COLLECT_MASKED_VECTORS, [0, 2, 3]),
        # its masked vector was in: its masks are rebuilt from the others' shares
        (
            Stage.UNMASK,
            [0, 1, 2, 3],
        ),
    ],
)
@pytest.mark.slow  # Ray
def test_a_dropout_at_any_stage_gives_the_survivors_aggregate(tmp_path, stage, survivors):
    strategy, history, _, outcome = _run(tmp_path, stage=stage, victims={1})
    assert not outcome
    assert len(history) == 1 and history[0]["completed"] and history[0]["dropped"]
    _check_sum(strategy, survivors)


@pytest.mark.slow  # Ray
def test_too_many_dropouts_fail_loudly_then_retry(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    strategy, history, _, outcome = _run(
        tmp_path, stage=Stage.SHARE_KEYS, victims={0, 1, 2}, times=1
    )
    assert not outcome
    assert [h["completed"] for h in history] == [False, True] and history[0][
        "failed_stage"
    ] == "share keys"
    _check_sum(strategy, range(4))  # the retry aggregates everyone


@pytest.mark.slow  # Ray
def test_a_round_that_keeps_failing_raises_instead_of_returning_nothing(tmp_path):
    strategy, history, _, outcome = _run(
        tmp_path, stage=Stage.SETUP, victims={0, 1, 2}, times=99, retries=1
    )
    assert isinstance(outcome.get("error"), SecureAggregationError)
    assert [h["completed"] for h in history] == [False, False] and strategy.results == []


@pytest.mark.slow  # Ray
def test_a_client_that_hangs_past_the_timeout_counts_as_dropped(tmp_path):
    # the timeout leaves room for Ray to start four client actors on a loaded 2-core machine before the setup stage
    strategy, history, _, outcome = _run(
        tmp_path, stage=Stage.SHARE_KEYS, victims={3}, sleep=75.0, timeout=35.0
    )
    assert not outcome and history[0]["completed"] and history[0]["dropped"] == {"share keys": 1}
    _check_sum(strategy, [0, 1, 2])


def test_mask_seeds_shorter_than_128_bits_are_refused():
    with pytest.raises(ValueError, match="128 bits"):
        keystream_masks(b"short", 2**32, [(1,)])
