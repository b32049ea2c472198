"""The learned (centroid) router: its accuracy, its fallback, its private statistics, its storage and CLI,
and persona discovery (adjusted Rand index, private k-means, the choice of K)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
from safetensors.numpy import save as save_tensors
from safetensors.numpy import save_file

from fedpers.adapters import GLOBAL
from fedpers.atomic import write_json
from fedpers.audit.scan import find, text_patterns
from fedpers.data.split import train_heldout_split
from fedpers.data.synthetic import SyntheticConfig, generate
from fedpers.federated import load_config_file
from fedpers.personas.centroid import (
    CentroidRouterModel,
    CentroidScorer,
    calibrate,
    has_router,
    load_router,
    model_from_statistics,
    save_router,
)
from fedpers.personas.cli import register
from fedpers.personas.context import Context, parse_context
from fedpers.personas.discovery import (
    adjusted_rand_index,
    centroid_silhouette,
    choose_k,
    spherical_kmeans,
)
from fedpers.personas.encoder import unit_rows
from fedpers.personas.router_data import encode_users, learn_router, user_prompts
from fedpers.personas.router_stats import (
    ROUTER_RELEASE,
    ROUTER_STATS_PURPOSE,
    StatsLayout,
    clean_statistics,
    device_contribution,
    noise_for_epsilon,
    private_upload,
    router_noise,
    secure_sum,
    statistics_from_sum,
    stochastic_round,
)
from fedpers.personas.routing import ConfidentScorer, Router
from fedpers.privacy.accounting import BudgetExceededError
from fedpers.privacy.ledger import PrivacyLedger
from simulations.simulate import SCENARIOS

DELTA = 1e-5


class TableEncoder:
    """A stand-in encoder: fixed unit vectors for known texts (for the decision logic, not the model)."""

    name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = {k: unit_rows(np.asarray(v, np.float64)[None])[0] for k, v in table.items()}
        self.dimension = len(next(iter(self.table.values())))

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _clusters(rng, k: int, per: int, d: int, spread: float = 0.35):
    centres = unit_rows(rng.normal(size=(k, d)))
    points = unit_rows(
        np.repeat(centres, per, 0) + spread * rng.normal(size=(k * per, d)) / math.sqrt(d)
    )
    return points.astype(np.float64), np.repeat(np.arange(k), per)


# ------------------------------------------- the router on real embeddings -------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    from fedpers.personas.encoder import default_encoder

    return default_encoder()


@pytest.fixture(scope="module")
def tiny_desk(encoder):
    """The tiny scenario's synthetic desk (its users, conversations and held-out split), embedded."""
    scenario = load_config_file(SCENARIOS / "tiny.toml")
    config = SyntheticConfig(
        users_per_persona=int(scenario["users_per_persona"]),
        conversations_per_user=int(scenario["conversations_per_user"]),
    )
    train, heldout = train_heldout_split(generate(config), 0.25, 0)
    return (
        config.personas,
        encode_users(user_prompts(train), encoder),
        encode_users(user_prompts(heldout), encoder),
    )


def test_the_encoder_is_offline_and_gives_unit_rows(encoder):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    rows = encoder.encode(["my VPN drops at the depot", "reset my payroll password"])
    assert rows.shape == (2, 384) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_the_direct_path_gives_sentence_transformers_rows(encoder):
    """Texts of different lengths in one batch (padding), one over the 128-piece limit (truncation)."""
    texts = [
        "VPN",
        "my VPN drops at the depot every morning",
        "please approve the quarterly budget variance report " * 40,
        "",
        "how do I get access to the onboarding drive?",
    ]
    reference = encoder.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    for batch_size in (1, 2, 64):
        encoder.batch_size = batch_size
        try:
            rows = encoder.encode(texts)
        finally:
            encoder.batch_size = 64
        assert np.abs(rows - reference).max() < 1e-5, batch_size


def test_a_router_learned_on_the_tiny_scenario_beats_chance_by_half(tiny_desk):
    """Five personas (chance 20 %): text alone routes at least 70 % of held-out prompts right."""
    personas, train, heldout = tiny_desk
    model = learn_router(train, personas, use_context=False)
    prompts = np.concatenate([u.text for u in heldout])
    truth = [u.persona for u in heldout for _ in u.text]
    chosen = [personas[int(np.argmax(model.logits(x, None)))] for x in prompts]
    accuracy = float(np.mean([a == b for a, b in zip(chosen, truth)]))
    assert accuracy >= 1 / len(personas) + 0.5, accuracy
    # the calibrated confidence is informative: confident choices are at least as accurate as all choices
    calibration = calibrate(model, prompts, None, truth, target_accuracy=0.9)
    assert calibration.accuracy == pytest.approx(accuracy)
    assert calibration.coverage > 0 and calibration.confident_accuracy >= accuracy


def test_cold_start_firms_up_as_messages_arrive(tiny_desk):
    """0 messages: context only; then the mean of the first messages' embeddings."""
    personas, train, heldout = tiny_desk
    model = learn_router(train, personas)
    right = {0: 0, 1: 0, 3: 0}
    for u in heldout:
        for n in right:
            text = unit_rows(u.text[:n].mean(0, keepdims=True))[0] if n else None
            right[n] += personas[int(np.argmax(model.logits(text, u.context[0])))] == u.persona
    assert right[3] >= right[1] >= 1 and right[3] >= len(heldout) * 0.7, right


# ------------------------------------------- the decision -------------------------------------------


def _two_persona_model(threshold: float) -> CentroidRouterModel:
    text = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    return CentroidRouterModel(
        ("a", "b"), text, np.zeros((2, 4), np.float32), np.array([5.0, 5.0]), 0.05, threshold
    )


def test_low_confidence_falls_back_to_the_global_adapter_and_says_so():
    encoder = TableEncoder({"clear": [1.0, 0.05, 0.0], "between": [1.0, 1.0, 0.3]})
    scorer = CentroidScorer(_two_persona_model(0.8), encoder)
    assert isinstance(scorer, ConfidentScorer)
    router = Router(scorer, ["a", "b"])
    sure = router.route("clear")
    assert (sure.persona, sure.source) == ("a", "inferred") and sure.confidence > 0.99
    unsure = router.route("between")
    assert (unsure.persona, unsure.source) == (GLOBAL, "global")
    assert unsure.confidence == pytest.approx(0.5, abs=1e-6)
    assert "below the threshold 0.80" in unsure.reason and "using 'global'" in unsure.reason
    assert set(unsure.scores) == {"a", "b"}
    # a declared persona still wins; no adapters yet: cold start
    assert router.route("between", declared="b").persona == "b"
    assert Router(scorer, ["a", "b"], available=set()).route("clear").persona == GLOBAL
    # a router learned on other embeddings is refused
    other = dataclasses.replace(_two_persona_model(0.8), encoder="another/encoder")
    with pytest.raises(ValueError, match="another/encoder"):
        CentroidScorer(other, encoder)


def test_route_user_uses_context_then_messages():
    encoder = TableEncoder({"m1": [0.0, 1.0, 0.0], "m2": [0.1, 1.0, 0.0]})
    office, field = Context(device="ThinkPad"), Context(device="Toughbook 33")
    context = np.stack([office.vector(4), field.vector(4)])
    model = dataclasses.replace(
        _two_persona_model(0.6), context=context.astype(np.float32), context_weight=1.0
    )
    router = Router(CentroidScorer(model, encoder), ["a", "b"])
    assert router.route_user([], context=office).persona == "a"
    assert router.route_user([], context=field).persona == "b"
    assert router.route_user([], context=None).persona == GLOBAL  # nothing to go on: 50/50
    assert router.route_user(["m1", "m2"], context=office).source in ("inferred", "global")
    assert router.route_user(["m1", "m2"], context=None).persona == "b"


def test_context_features_and_their_arguments():
    ctx = Context.of(
        {"device": "iPad Pro", "location": "Leeds", "name": "x"}, "2024-03-01T14:05:00Z"
    )
    assert ctx == Context("iPad Pro", "Leeds", 14)
    assert ctx.features == ("device=iPad Pro", "location=Leeds", "time=afternoon")
    assert np.linalg.norm(ctx.vector()) == pytest.approx(1.0)
    assert not Context().vector().any()
    assert parse_context(["device=iPad Pro", "time=14:05"]) == Context("iPad Pro", None, 14)
    with pytest.raises(ValueError, match="unknown key 'os'"):
        parse_context(["os=linux"])
    with pytest.raises(ValueError, match="not ISO 8601"):
        Context.of({}, "yesterday")


# ------------------------------------------- private statistics -------------------------------------------


def test_a_device_sends_integer_noised_sums_never_its_embeddings(tmp_path):
    rng = np.random.default_rng(1)
    layout = StatsLayout(("a", "b", "c"), 384, 64)
    prompts = ["my badge stopped working at the north gate", "outlook keeps asking for my password"]
    text = unit_rows(rng.normal(size=(2, 384)))
    context = np.stack([Context("iPad Pro", "Leeds", 9).vector()] * 2)
    contribution = device_contribution(layout, {"b": text}, {"b": context})
    assert np.linalg.norm(contribution) <= layout.clip + 1e-9
    noise = router_noise(2.0, layout)
    threshold = 4
    ledger = PrivacyLedger(tmp_path / "ledger.json", "user-1")
    upload = private_upload(contribution, layout, noise, threshold, ledger)
    assert upload.dtype == np.int64 and upload.shape == (layout.dimension,)
    clean = layout.levels_per_unit * (contribution + 1.0)
    residual = upload - clean
    planned = math.sqrt(noise.share_variance(threshold))
    assert residual.std() == pytest.approx(planned, rel=0.05)
    assert abs(residual.mean()) < 4 * planned / math.sqrt(layout.dimension)
    # the ledger holds the release, completed, recorded under the router's purpose
    (entry,) = ledger.entries
    assert (entry.purpose, entry.status) == (ROUTER_STATS_PURPOSE, "completed")
    # the wire scan finds neither the prompts nor any embedding's bytes in what leaves the device
    blob = save_tensors({"masked_params": upload})
    patterns = dict(text_patterns(prompts, words=3))
    patterns |= {row[:4].astype(np.float32).tobytes(): "embedding" for row in text}
    patterns |= {row[:4].astype(np.float64).tobytes(): "embedding" for row in text}
    assert patterns and find([blob], patterns) == {}
    # the manifest row for this upload names its mechanism and its ledger purpose
    assert (
        ROUTER_RELEASE.ledger == (ROUTER_STATS_PURPOSE,) and "Skellam" in ROUTER_RELEASE.mechanism
    )


def test_the_accountants_epsilon_matches_an_independent_computation(tmp_path):
    layout = StatsLayout(tuple("abcde"), 384, 64)
    noise = noise_for_epsilon(4.0, DELTA, layout)
    ledger = PrivacyLedger(tmp_path / "ledger.json", "u", delta=DELTA)
    private_upload(np.zeros(layout.dimension), layout, noise, 3, ledger)
    spent = ledger.spent().epsilon
    # independently: the Skellam RDP bound of Agarwal et al. (2021) on integer orders, Balle et al.'s conversion
    s, clip, d = 2**17 / 2, math.sqrt(3), layout.dimension
    mu = (noise.noise_multiplier * clip * s) ** 2
    l2 = s * clip + math.sqrt(d)
    l1 = math.sqrt(d) * l2
    best = math.inf
    for a in [*range(2, 64), *range(64, 513, 8)]:
        rdp = a * l2**2 / (2 * mu) + min(
            ((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu)
        )
        eps = rdp - (math.log(DELTA) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        best = min(best, eps)
    assert spent == pytest.approx(best, rel=1e-9)
    assert 3.99 <= spent <= 4.0  # calibrated to the target, never above it


def test_a_ledger_cap_refuses_the_upload(tmp_path):
    layout = StatsLayout(("a", "b"), 8, 0)
    ledger = PrivacyLedger(tmp_path / "ledger.json", "u", cap=1.0)
    with pytest.raises(BudgetExceededError, match="router-statistics-skellam"):
        private_upload(np.zeros(layout.dimension), layout, router_noise(0.5, layout), 2, ledger)
    assert PrivacyLedger(tmp_path / "ledger.json", "u").entries == []
    with pytest.raises(ValueError, match="L2 norm at most sqrt"):
        private_upload(np.full(layout.dimension, 1.0), layout, router_noise(0.5, layout), 2, ledger)


def test_the_stochastic_rounding_is_secaggs():
    from clients.secagg import quantize_upload

    x = np.random.default_rng(0).uniform(-1, 1, 1000)
    ours = stochastic_round(x, 2**17 / 2, np.random.default_rng(7))
    theirs = quantize_upload([x], 1.0, 1.0, 2**17, np.random.default_rng(7))[0]
    assert np.array_equal(ours, theirs)


def test_the_private_path_recovers_the_sums_and_routes_with_many_devices(tmp_path):
    """300 devices in 5 clusters at epsilon 4: the SecAgg+ sum of noised uploads is the clean sum plus
    the planned noise, and its centroids route held-out points as well as the clean ones, nearly."""
    rng = np.random.default_rng(3)
    personas = tuple("abcde")
    points, labels = _clusters(rng, 5, 80, 32)
    layout = StatsLayout(personas, 32, 0)
    train = np.arange(len(points)) % 4 != 0
    parts = [
        device_contribution(layout, {personas[y]: x[None]})
        for x, y in zip(points[train], labels[train])
    ]
    noise = noise_for_epsilon(4.0, DELTA, layout)
    uploads = [
        private_upload(p, layout, noise, len(parts), PrivacyLedger(tmp_path / f"{i}.json", str(i)))
        for i, p in enumerate(parts)
    ]
    private = statistics_from_sum(secure_sum(uploads, layout.grid()), len(parts), layout)
    clean = clean_statistics(parts, layout)
    err = private.text_sums - clean.text_sums
    std = noise.noise_multiplier * layout.clip
    assert err.std() == pytest.approx(std, rel=0.2)
    assert np.allclose(private.counts, clean.counts, atol=6 * std)
    model = model_from_statistics(private)
    held = points[~train]
    chosen = np.argmax(held @ model.text.T, axis=1)
    assert np.mean(chosen == labels[~train]) >= 0.9


# ------------------------------------------- storage and the CLI -------------------------------------------


def test_save_and_load_round_trip_and_errors(tmp_path):
    model = dataclasses.replace(
        _two_persona_model(0.7), info={"privacy": {"epsilon": 4.0}}, context_weight=0.25
    )
    assert not has_router(tmp_path)
    save_router(tmp_path, model)
    assert has_router(tmp_path)
    back = load_router(tmp_path)
    assert back.personas == model.personas and back.info == model.info
    assert (back.temperature, back.threshold, back.context_weight) == (0.05, 0.7, 0.25)
    assert np.array_equal(back.text, model.text) and np.array_equal(back.counts, model.counts)
    meta = tmp_path / "router" / "router.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps(data | {"threshold": "high"}))
    with pytest.raises(ValueError, match=r"router\.json: field 'threshold'"):
        load_router(tmp_path)
    meta.write_text(json.dumps(data | {"personas": ["a"]}))
    with pytest.raises(ValueError, match="expected 1 rows"):
        load_router(tmp_path)


def route(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedpers")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["route", *argv]).func(parser.parse_args(["route", *argv]))


def test_route_cli_uses_a_saved_centroid_router_without_the_llm(tiny_desk, tmp_path, capsys):
    personas, train, heldout = tiny_desk
    run = tmp_path / "run"
    write_json(
        run / "run.json",
        {"model": "no-such-model", "lora": {"r": 1}, "personas": list(personas)},
    )
    for name in [GLOBAL, *personas]:
        (run / "adapters" / name).mkdir(parents=True)
        save_file(
            {"w": np.zeros(1, np.float32)},
            str(run / "adapters" / name / "adapter_model.safetensors"),
        )
    save_router(run, learn_router(train, personas, use_context=False, threshold=0.0))
    conversations = generate(SyntheticConfig(users_per_persona=1, conversations_per_user=1, seed=9))
    prompt = next(t.text for t in conversations[2].turns if t.role == "user")
    # the base model is never loaded: its name does not exist
    assert route([str(run), prompt, "--no-answer", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["router"] == "centroid" and out["persona"] in personas
    assert out["confidence"] == pytest.approx(math.exp(-min(out["scores"].values())))
    assert route([str(run), prompt, "--no-answer", "--context", "device=iPad Pro"]) == 0
    assert "probability" in capsys.readouterr().out
    with pytest.raises(ValueError, match="centroid router only"):
        route([str(run), prompt, "--router", "loss", "--context", "device=x", "--no-answer"])


# ------------------------------------------- persona discovery -------------------------------------------


def test_adjusted_rand_index_known_values():
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.5714285714285714)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index(["a", "a", "a"], [1, 1, 1]) == 1.0
    rng = np.random.default_rng(0)
    truth, found = rng.integers(0, 5, 3000), rng.integers(0, 5, 3000)
    assert abs(adjusted_rand_index(truth, found)) < 0.01
    with pytest.raises(ValueError, match="different lengths"):
        adjusted_rand_index([0, 1], [0])


def test_the_centroid_silhouette_chooses_the_true_k_and_kmeans_recovers_the_clusters():
    rng = np.random.default_rng(5)
    points, labels = _clusters(rng, 4, 60, 32, spread=0.5)

    def clean_round(k):
        def run(assign):
            sums = np.zeros((k, points.shape[1]))
            np.add.at(sums, assign, points)
            return sums, np.bincount(assign, minlength=k).astype(float)

        return run

    mean = points.mean(0)
    found = [
        spherical_kmeans(points, k, clean_round(k), mean, np.random.default_rng(k), rounds=8)
        for k in range(2, 8)
    ]
    best = choose_k(found)
    assert best.clusters == 4, [(c.k, c.clusters, round(c.silhouette, 3)) for c in found]
    assert adjusted_rand_index(labels, best.labels) > 0.9
    sums = np.stack([points[labels == j].sum(0) for j in range(4)])
    assert centroid_silhouette(sums, np.bincount(labels).astype(float)) > 0.3


def test_a_public_start_chooses_k_on_public_data_and_starts_the_private_rounds_there():
    """Public users from the same clusters as the devices: K and the centroids come from them alone; one
    noised private round at that K recovers the devices' clusters; a wrong-shaped start is refused."""
    from fedpers.personas.discovery import clean_sums, public_start

    rng = np.random.default_rng(8)
    centres = unit_rows(rng.normal(size=(4, 32)))

    def draw(per):
        points = unit_rows(
            np.repeat(centres, per, 0) + 0.5 * rng.normal(size=(4 * per, 32)) / 32**0.5
        )
        return points.astype(np.float64), np.repeat(np.arange(4), per)

    public, _ = draw(10)
    devices, labels = draw(60)
    best, found = public_start(public, range(2, 8), np.random.default_rng(0))
    assert best.clusters == 4 and [c.k for c in found] == list(range(2, 8))
    noisy_round = clean_sums(devices, 4)

    def one_noised_round(assign):
        sums, counts = noisy_round(assign)
        return sums + rng.normal(scale=1.0, size=sums.shape), counts + rng.normal(scale=1.0, size=4)

    got = spherical_kmeans(devices, 4, one_noised_round, None, rng, rounds=1, start=best.centroids)
    assert adjusted_rand_index(labels, got.labels) > 0.9
    with pytest.raises(ValueError, match="expected 3 centroids of dimension 32"):
        spherical_kmeans(devices, 3, one_noised_round, None, rng, rounds=1, start=best.centroids)
    with pytest.raises(ValueError, match="at least two public users"):
        public_start(public[:1], range(2, 4), rng)


def test_a_public_start_from_two_users_per_persona_finds_them_and_no_singleton_wins():
    """The desk's public split has two users per persona. A singleton cluster is perfectly "tight", so
    without the convention that a singleton's silhouette is 0 (Rousseeuw, 1987) K = n would win; and one
    random start per K can merge two personas: the best of several clean starts is kept."""
    from fedpers.personas.discovery import public_start

    rng = np.random.default_rng(3)
    centres = unit_rows(rng.normal(size=(5, 48)))
    public = unit_rows(np.repeat(centres, 2, 0) + 0.3 * rng.normal(size=(10, 48)) / 48**0.5)
    truth = np.repeat(np.arange(5), 2)
    best, found = public_start(public, range(2, 10), np.random.default_rng(0))
    assert best.clusters == 5, [(c.k, c.clusters, round(c.silhouette, 3)) for c in found]
    assert adjusted_rand_index(truth, best.labels) == 1.0
    singletons = np.eye(10) @ public
    assert centroid_silhouette(singletons, np.ones(10)) == 0.0


def test_learn_router_runs_the_private_path_with_one_ledger_entry_per_device(tmp_path):
    from fedpers.personas.router_data import EncodedUser

    rng = np.random.default_rng(11)
    personas = ("a", "b", "c")
    points, labels = _clusters(rng, 3, 60, 24)
    users = [
        EncodedUser(f"u{i}", personas[y], x[None], np.zeros((1, 8), np.float32))
        for i, (x, y) in enumerate(zip(points, labels))
    ]
    layout = StatsLayout(personas, 24, 0)
    noise = noise_for_epsilon(8.0, DELTA, layout)
    model = learn_router(users, personas, noise=noise, ledger_dir=tmp_path, use_context=False)
    assert model.context_weight == 0.0 and model.context.shape == (3, 0)
    assert np.mean(np.argmax(points @ model.text.T, axis=1) == labels) >= 0.9
    for i in (0, 59, 179):
        ledger = PrivacyLedger(tmp_path / f"u{i}" / "router-ledger.json", f"u{i}")
        assert [e.purpose for e in ledger.entries] == [ROUTER_STATS_PURPOSE]
        assert ledger.spent().epsilon == pytest.approx(8.0, rel=2e-3)
    with pytest.raises(ValueError, match="ledger directory"):
        learn_router(users, personas, noise=noise)


def test_the_silhouette_of_noised_sums_is_debiased():
    """Noise inflates the norm of a sum: uncorrected, every cluster looks perfectly tight (silhouette 1)."""
    rng = np.random.default_rng(2)
    points, labels = _clusters(rng, 3, 10, 64, spread=0.8)
    sums = np.stack([points[labels == j].sum(0) for j in range(3)])
    counts = np.bincount(labels).astype(float)
    clean = centroid_silhouette(sums, counts)
    sigma = 1.5
    noised = sums + sigma * rng.normal(size=sums.shape)
    assert centroid_silhouette(noised, counts) > clean + 0.1  # biased up
    assert centroid_silhouette(noised, counts, sigma**2) == pytest.approx(clean, abs=0.15)
