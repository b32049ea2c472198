"""The router's round of a federated run, piece by piece (no Ray): the device's upload, the SecAgg+ mod's handling
of it, and the server's inversion of what SecAgg+ unmasks. The end-to-end run is in ``test_simulation.py``."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.quantization import dequantize

from clients.secagg import _router_levels
from clients.state import UserState
from clients.tasks import answer, router_task
from fedpers.data.schema import Conversation, Turn
from fedpers.federated import FederatedConfig, all_settings, load_config_file
from fedpers.instructions import SECAGG_THRESHOLD, RoundInstructions
from fedpers.personas.encoder import unit_rows
from fedpers.personas.router_round import (
    device_router_upload,
    router_from_round,
    router_layout,
    router_round_off,
    router_sum_problems,
    statistics_from_mean,
)
from fedpers.personas.router_stats import (
    StatsLayout,
    clean_statistics,
    noise_for_epsilon,
    statistics_from_sum,
)
from fedpers.privacy.accounting import BudgetExceededError
from fedpers.privacy.ledger import PrivacyLedger
from fedpers.privacy.user_level import NOISED_QUANTIZATION_BITS
from fedpers.releases import ROUTER_STATS_PURPOSE
from simulations.simulate import SCENARIOS


class HashEncoder:
    """A stand-in for all-MiniLM-L6-v2: a unit row per text, seeded by the text (tests only)."""

    dimension, name = 384, "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=384) for t in texts]
        return unit_rows(np.array(rows))


def _conversations(user: str, persona: str | None, n: int = 3) -> list[Conversation]:
    return [
        Conversation(
            user,
            f"{user}-{i}",
            (Turn("user", f"my badge {i} stopped working"), Turn("assistant", "try again")),
            persona,
            {"device": "iPad Pro", "location": "Leeds"},
        )
        for i in range(n)
    ]


def _config(tmp_path, **changes) -> FederatedConfig:
    values = load_config_file(SCENARIOS / "tiny.toml") | {
        "state_dir": str(tmp_path / "state"),
        "router_epsilon": 8.0,  # the tiny scenario has no router round
    }
    return FederatedConfig.from_flat(values | changes).validated()


def test_the_threshold_key_is_no_setting_and_travels_in_the_instructions(tmp_path):
    """The key once was ``secagg-threshold``, which is the flat name of the setting ``secagg_threshold``: the
    device's integer threshold then failed the setting's check and every router upload was refused."""
    names = {s.name for s in all_settings()}
    assert SECAGG_THRESHOLD.replace("-", "_") not in names
    config = _config(tmp_path)
    record = RoundInstructions(config, "run-1", 3, "router").to_record()
    assert SECAGG_THRESHOLD not in record  # the server sends none
    record[SECAGG_THRESHOLD] = 5  # the device's SecAgg+ mod adds its own
    back = RoundInstructions.from_record(record)
    assert back.secagg_threshold == 5 and back.config == config and back.task == "router"


def test_the_router_round_runs_only_under_secagg_on_data_with_personas(tmp_path):
    assert router_round_off(_config(tmp_path)) is None
    assert "router_epsilon" in router_round_off(_config(tmp_path, router_epsilon=0.0))
    assert "secure aggregation" in router_round_off(_config(tmp_path, secure_aggregation=False))
    assert "personas" in router_round_off(_config(tmp_path, data="shakespeare"))
    assert router_layout(_config(tmp_path, data="shakespeare")).context_dimension == 0
    with pytest.raises(ValueError, match="router_epsilon"):
        _config(tmp_path, router_epsilon=-1.0)


def test_the_device_records_its_release_first_and_a_cap_refuses_before_anything_is_spent(tmp_path):
    layout = StatsLayout(("leadership", "field_worker"), 384, 64)
    encoder = HashEncoder()
    ledger = PrivacyLedger(tmp_path / "u.json", "u", 1e-5)
    levels = device_router_upload(
        _conversations("u", "field_worker"), "field_worker", layout, 4.0, 1e-5, 3, ledger, encoder
    )
    assert levels.dtype == np.int64 and levels.shape == (layout.dimension,)
    (entry,) = ledger.entries
    assert (entry.purpose, entry.status) == (ROUTER_STATS_PURPOSE, "completed")
    assert entry.details["threshold"] == 3 and entry.details["epsilon"] == 4.0
    assert ledger.spent().epsilon == pytest.approx(4.0, rel=0.02)
    # a second release past a cap of 4.5: refused, nothing recorded, no noise drawn
    capped = PrivacyLedger(tmp_path / "u.json", "u", 1e-5, cap=4.5)
    calls = encoder.calls
    with pytest.raises(BudgetExceededError):
        device_router_upload(
            _conversations("u", "field_worker"),
            "field_worker",
            layout,
            4.0,
            1e-5,
            3,
            capped,
            encoder,
        )
    assert len(PrivacyLedger(tmp_path / "u.json", "u").entries) == 1
    assert encoder.calls == calls + 1  # embeddings are computed, no noise drawn, nothing returned
    # a threshold below SecAgg+'s minimum is refused before the ledger is touched
    with pytest.raises(ValueError, match="threshold"):
        device_router_upload([], None, layout, 4.0, 1e-5, 1, ledger, encoder)
    assert len(ledger.entries) == 1


def test_a_device_without_a_slot_sends_a_noised_zero_and_still_pays(tmp_path):
    layout = StatsLayout(("leadership", "field_worker"), 384, 64)
    ledger = PrivacyLedger(tmp_path / "u.json", "u")
    encoder = HashEncoder()
    levels = device_router_upload(
        _conversations("u", None), None, layout, 8.0, 1e-5, 2, ledger, encoder
    )
    assert encoder.calls == 0 and len(ledger.entries) == 1
    centre = layout.levels_per_unit
    noise = noise_for_epsilon(8.0, 1e-5, layout)
    assert abs(levels.mean() - centre) < 6 * np.sqrt(noise.share_variance(2) / layout.dimension)


def test_a_device_without_the_encoder_sends_its_noise_share_and_says_so(
    tmp_path, monkeypatch, caplog
):
    """No ``router`` extra on the device: it still takes part (its noise share over an empty contribution, the
    release in its ledger), so the SecAgg+ session keeps its devices, and its log says why it sent nothing."""
    import logging

    import fedpers.personas.encoder as encoder_module

    def missing():
        raise ImportError("the router's sentence encoder is not installed")

    monkeypatch.setattr(encoder_module, "default_encoder", missing)
    layout = StatsLayout(("leadership", "field_worker"), 384, 64)
    ledger = PrivacyLedger(tmp_path / "u.json", "u")
    with caplog.at_level(logging.WARNING):
        levels = device_router_upload(
            _conversations("u", "field_worker"), "field_worker", layout, 8.0, 1e-5, 2, ledger
        )
    assert levels.shape == (layout.dimension,) and len(ledger.entries) == 1
    assert ledger.entries[0].details["upload"] == "empty: no sentence encoder on the device"
    noise = noise_for_epsilon(8.0, 1e-5, layout)
    centre = layout.levels_per_unit
    assert abs(levels.mean() - centre) < 6 * np.sqrt(noise.share_variance(2) / layout.dimension)
    assert "no sentence encoder" in caplog.text


def test_what_secagg_unmasks_gives_back_the_integer_sum_exactly():
    """Flower's unmask stage hands the strategy ``dequantize(total) - (n - 1) c`` scaled by ``R / q_total``: the
    mean. ``statistics_from_mean`` recovers the same statistics as the integer sum itself."""
    layout = StatsLayout(("a", "b", "c"), 384, 64)
    rng = np.random.default_rng(3)
    n = 7
    uploads = [
        rng.integers(-50, 2**NOISED_QUANTIZATION_BITS + 50, layout.dimension) for _ in range(n)
    ]
    total = np.sum(uploads, axis=0)
    R = 2**NOISED_QUANTIZATION_BITS
    (mean,) = dequantize([total], 1.0, R)
    mean = (mean - (n - 1) * 1.0) * R / (n * R)
    got = statistics_from_mean([mean], n, layout)
    want = statistics_from_sum(total, n, layout)
    for a, b in zip(
        (got.text_sums, got.context_sums, got.counts),
        (want.text_sums, want.context_sums, want.counts),
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="coordinates"):
        statistics_from_mean([mean[:-1]], n, layout)


def test_the_learned_router_records_what_it_cost(tmp_path):
    config = _config(tmp_path, personas="leadership,field_worker", min_clients=2)
    layout = router_layout(config)
    parts = []
    for persona in ("leadership", "leadership", "field_worker"):
        x = np.zeros((2, layout.row))
        k = layout.personas.index(persona)
        x[k, 0], x[k, -1] = 1.0, 1.0
        parts.append(x.ravel())
    model = router_from_round(clean_statistics(parts, layout), layout, config, 3, run_id="r")
    assert model.trained == ("leadership",)  # one field worker: below the gate of 2
    assert model.info["run_id"] == "r" and model.info["devices"] == 3
    assert model.info["epsilon"] <= config.privacy.router_epsilon
    assert model.info["noise_multiplier"] > 0 and "dropout_assumption" in model.info


def test_the_router_task_reads_training_conversations_and_a_retry_resends_the_cached_upload(
    tmp_path, monkeypatch
):
    import fedpers.personas.encoder as encoder_module

    encoder = HashEncoder()
    monkeypatch.setattr(encoder_module, "default_encoder", lambda: encoder)
    config = _config(tmp_path, noise_seed=-1)
    from fedpers.userdata import conversations, user_ids

    user = user_ids(config)[0]
    state = UserState(config.outputs.state_dir, user)
    record = RoundInstructions(config, "run-1", config.server.rounds, "router").to_record()
    record[SECAGG_THRESHOLD] = 4
    task = router_task(RoundInstructions.from_record(record), state)
    mine = [c for c in conversations(config) if c.user_id == user]
    assert task.persona == mine[0].persona
    assert 0 < len(task.conversations) < len(mine)  # the held-out ones stay out
    first = answer(task)
    again = answer(task)  # a SecAgg+ retry: the same levels, no second release
    np.testing.assert_array_equal(first[0][0], again[0][0])
    (entry,) = state.user_level_ledger().entries
    assert entry.purpose == ROUTER_STATS_PURPOSE and entry.details["round"] == config.server.rounds
    assert entry.details["run_id"] == "run-1" and entry.details["threshold"] == 4
    assert encoder.calls == 1


def test_the_mod_masks_only_integer_levels_on_the_routers_grid():
    state = SecAggPlusState(
        clipping_range=1.0, target_range=2**NOISED_QUANTIZATION_BITS, max_weight=1.0
    )
    levels = ndarrays_to_parameters([np.arange(5, dtype=np.int64)])
    (out,) = _router_levels(state, 1, levels)
    np.testing.assert_array_equal(out, np.arange(5))
    with pytest.raises(ValueError, match="integer levels"):
        _router_levels(state, 1, ndarrays_to_parameters([np.ones(5)]))
    with pytest.raises(ValueError, match="weight"):
        _router_levels(state, 2, levels)
    other = SecAggPlusState(clipping_range=32.0, target_range=2**20, max_weight=1.0)
    with pytest.raises(ValueError, match="not the router's"):
        _router_levels(other, 1, levels)


def _honest_parts(layout: StatsLayout, n: int, rng) -> list[np.ndarray]:
    """``n`` honest clean contributions of two personas, alternating: a unit embedding and a count of one."""
    parts = []
    for i in range(n):
        x = np.zeros((2, layout.row))
        x[i % 2, : layout.text_dimension] = unit_rows(rng.normal(size=(1, 384)))[0]
        x[i % 2, -1] = 1.0
        parts.append(x.ravel())
    return parts


def test_a_router_sum_that_honest_uploads_cannot_give_is_rejected():
    layout = StatsLayout(("a", "b"), 384, 64)
    n = 10
    parts = _honest_parts(layout, n, np.random.default_rng(5))
    honest = clean_statistics(parts, layout)
    assert router_sum_problems(honest, n, layout, 8.0, 1e-5) == []
    # one device adding 2**36 levels to its masked upload: 2**36 / s in every coordinate of the sum
    shift = 2**36 / layout.levels_per_unit
    shifted = statistics_from_sum(
        layout.levels_per_unit * (np.sum(parts, axis=0) + n) + 2**36, n, layout
    )
    assert np.allclose(shifted.counts, honest.counts + shift)
    problems = router_sum_problems(shifted, n, layout, 8.0, 1e-5)
    assert any(p.startswith("text sums") for p in problems) and any(
        p.startswith("counts") for p in problems
    )


def test_a_resumed_run_keeps_its_router_and_a_stale_one_never_survives(tmp_path):
    """``router_round`` of the server: a router this run saved (a resume after the router round) is kept and the
    round not run again; one of another run in the same directory is removed, whatever happens next."""
    from types import SimpleNamespace

    from fedpers.personas.centroid import CentroidRouterModel, has_router, save_router
    from fedpers.progress import Progress
    from server.app import router_round

    class NoGrid:
        def __getattr__(self, name):
            raise AssertionError(f"the grid was used ({name})")

    config = _config(tmp_path)
    model = CentroidRouterModel(
        ("leadership",),
        np.ones((1, 4), np.float32) / 2,
        np.zeros((1, 2), np.float32),
        np.array([3.0]),
        info={"run_id": "this-run"},
    )
    save_router(tmp_path / "run", model)
    progress = Progress(live=False)
    run = SimpleNamespace(config=config, run_id="this-run")
    done = router_round(run, NoGrid(), None, tmp_path / "run", None, False, progress)
    assert done == {"status": "saved", "resumed": True} and has_router(tmp_path / "run")
    # another run's router: removed; with the round off, nothing replaces it
    other = SimpleNamespace(config=_config(tmp_path, router_epsilon=0.0), run_id="next-run")
    done = router_round(other, NoGrid(), None, tmp_path / "run", None, False, progress)
    assert done["status"] == "off" and not (tmp_path / "run" / "router").exists()


def test_a_router_round_with_too_few_devices_fails_before_any_public_work(tmp_path, monkeypatch):
    """Fewer than 2 connected devices: the round fails at once, without encoding the public prompts."""
    from types import SimpleNamespace

    import fedpers.personas.router_public as router_public
    from fedpers.progress import Progress
    from server.app import router_round

    class OneNode:
        def get_node_ids(self):
            return [7]

    def no_public_work(config):
        raise AssertionError("the public start was computed for a round that cannot run")

    monkeypatch.setattr(router_public, "public_router_start", no_public_work)
    run = SimpleNamespace(config=_config(tmp_path), run_id="run-1")
    done = router_round(run, OneNode(), None, tmp_path / "run", None, False, Progress(live=False))
    assert done["status"] == "failed" and "at least 2 devices, 1 connected" in done["reason"], done


def test_the_clientapp_and_the_router_round_load_no_encoder_until_a_router_upload_is_computed():
    """Every SecAgg+ stage starts a ClientApp process on the deployment engine: neither the ClientApp nor the
    router round's module may import sentence-transformers (or torch) before a router upload is computed."""
    import subprocess
    import sys

    code = (
        "import sys, clients.app, clients.secagg, fedpers.personas.router_round, server.registry; "
        "print(sorted({'torch', 'transformers', 'sentence_transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_inferred_personas_send_the_persona_the_device_chose_for_this_run(tmp_path):
    config = _config(tmp_path, persona_mode="inferred")
    from fedpers.userdata import user_ids

    user = user_ids(config)[0]
    state = UserState(config.outputs.state_dir, user)
    instructions = RoundInstructions(config, "run-1", config.server.rounds, "router")
    assert router_task(instructions, state).persona is None  # never chose: an all-zero contribution
    state.save_persona_choice("run-0", "admin_hr")  # another run's choice does not count
    assert router_task(instructions, state).persona is None
    state.save_persona_choice("run-1", "admin_hr")
    assert router_task(instructions, state).persona == "admin_hr"


def test_chat_takes_the_versions_learned_router_when_it_has_one(tmp_path, monkeypatch):
    import fedpers.personas.encoder as encoder_module
    from clients.chat import _centroid_scorer
    from fedpers.personas.centroid import CentroidRouterModel, CentroidScorer, save_router

    monkeypatch.setattr(encoder_module, "default_encoder", HashEncoder)
    version = tmp_path / "v0001"
    version.mkdir()
    assert _centroid_scorer(None, ["leadership"]) is None
    assert (
        _centroid_scorer(version, ["leadership"]) is None
    )  # no router/: the loss router, as before
    with pytest.raises(FileNotFoundError, match="no such registry version"):
        _centroid_scorer(tmp_path / "v0002", ["leadership"])
    text = np.zeros((2, 384), np.float32)
    text[:, 0] = 1.0
    save_router(
        version,
        CentroidRouterModel(
            ("leadership", "field_worker"),
            text,
            np.zeros((2, 64), np.float32),
            np.array([3.0, 3.0]),
        ),
    )
    scorer = _centroid_scorer(version, ["leadership", "field_worker"])
    assert isinstance(scorer, CentroidScorer) and scorer.context.hour is not None
    with pytest.raises(ValueError, match="not those of the adapters on this device"):
        _centroid_scorer(version, ["leadership"])


class _Grid:
    def get_node_ids(self):
        return [1, 2, 3, 4]


def _session_giving(mean: np.ndarray, devices: int, weight_shift: int = 0):
    """A stand-in for the SecAgg+ session: hands the strategy ``mean`` from ``devices`` uploads, as Flower's
    unmask stage does, with the unmasked weights off by ``weight_shift``."""
    from flwr.common import Code, FitRes, Status

    class Session:
        def __init__(self, plan, **_):
            self.plan = plan
            self.unmasked_weight = None

        def __call__(self, grid, context):
            self.unmasked_weight = devices * self.plan.quantization_range + weight_shift
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([mean]), 1, {})
            context.strategy.aggregate_fit(3, [(None, res)] * devices, [])

    return Session


@pytest.mark.parametrize("case", ["honest", "weights", "shifted"])
def test_the_server_saves_the_router_of_an_honest_sum_and_rejects_a_changed_one(
    tmp_path, monkeypatch, case
):
    from types import SimpleNamespace

    import server.app as server_app
    from fedpers.personas.centroid import has_router, load_router
    from fedpers.progress import Progress

    config = _config(tmp_path, personas="leadership,field_worker", min_clients=1)
    layout = router_layout(config)
    devices = 4
    parts = _honest_parts(layout, devices, np.random.default_rng(2))
    mean = np.mean(parts, axis=0)
    if case == "shifted":
        mean = mean + 2**36 / layout.levels_per_unit / devices
    monkeypatch.setattr(
        server_app,
        "SecAggPlusRound",
        _session_giving(mean, devices, 7 if case == "weights" else 0),
    )
    run = SimpleNamespace(config=config, run_id="run-9")
    context = SimpleNamespace(strategy="training")
    done = server_app.router_round(
        run, _Grid(), context, tmp_path / "run", None, False, Progress(live=False)
    )
    assert context.strategy == "training"  # the training strategy is back in place
    if case == "honest":
        assert done["status"] == "saved" and done["devices"] == devices, done
        saved = load_router(tmp_path / "run")
        assert saved.info["run_id"] == "run-9" and set(saved.trained) == {
            "leadership",
            "field_worker",
        }
        np.testing.assert_allclose(saved.counts, [2.0, 2.0], atol=1e-9)
    else:
        assert done["status"] == "rejected" and "REJECTED" in done["reason"], done
        assert ("weights add up" in done["reason"]) == (case == "weights")
        assert not has_router(tmp_path / "run")


def test_the_public_start_maps_the_uploads_gives_every_persona_a_centroid_and_calibrates(tmp_path):
    """With public data the server learns a feature map, the public users' statistics and a calibration from
    it alone; the map travels in the router task's instructions; devices sum mapped rows (still within the
    bound); a persona no device speaks for keeps the public centroid."""
    from fedpers.personas.features import FeatureMap
    from fedpers.personas.router_public import public_router_start
    from fedpers.personas.router_stats import secure_sum

    config = _config(tmp_path, public_data="synthetic", public_steps=1, min_clients=2)
    encoder = HashEncoder()
    public = public_router_start(config, encoder)
    personas = tuple(config.persona_names)
    assert public.features.kind == "lda"
    assert public.features.components.shape == (len(personas) - 1, 384)
    assert public.prior is not None and np.all(public.prior.counts >= 1)
    assert public.heldout and {u.persona for u in public.heldout} == set(personas)
    record = RoundInstructions(
        config, "run-1", 3, "router", features_blob=public.features.to_bytes()
    ).to_record()
    features = FeatureMap.from_bytes(RoundInstructions.from_record(record).features_blob)
    np.testing.assert_array_equal(features.components, public.features.components)
    layout = router_layout(config, features)
    assert layout.text_dimension == len(personas) - 1
    # three devices of the first persona, none of the others
    uploads = [
        device_router_upload(
            _conversations(f"u{i}", personas[0]),
            personas[0],
            layout,
            8.0,
            1e-5,
            3,
            PrivacyLedger(tmp_path / f"l{i}.json", f"u{i}"),
            encoder,
            features=features,
        )
        for i in range(3)
    ]
    stats = statistics_from_sum(secure_sum(uploads, layout.grid()), 3, layout)
    model = router_from_round(stats, layout, config, 3, public, run_id="run-1")
    assert model.features.kind == "lda" and set(model.trained) == set(personas)
    assert model.info["calibrated"] is True and model.info["public_users"] >= len(personas)
    assert model.threshold == model.info["calibration"]["threshold"]
    # without public data: the identity map, no prior, not calibrated (the earlier behaviour)
    plain = public_router_start(_config(tmp_path, public_data="", public_steps=0), encoder)
    assert plain.features.kind == "identity" and plain.prior is None and not plain.heldout
