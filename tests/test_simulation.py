"""The federated simulation end to end on the tiny model, and what crosses the wire."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from peft import PeftModel

from fedpers.adapters import GLOBAL
from fedpers.audit.scan import scan
from fedpers.federated import FederatedConfig, all_settings, load_config_file
from fedpers.models import adapter_arrays, load_base_model
from fedpers.models.environment import model_environment
from fedpers.privacy import PrivacyLedger
from fedpers.rundir import load_adapters, read_json
from fedpers.userdata import conversations, user_data, user_ids
from fedpers.wire import payload_bytes
from simulations.simulate import SCENARIOS, simulate


def tiny_config(run_dir, **changes) -> FederatedConfig:
    """The tiny scenario with seeded DP noise, so that runs differing only in aggregation are comparable."""
    values = load_config_file(SCENARIOS / "tiny.toml") | {
        "noise_seed": 7,
        "state_dir": str(run_dir / "client-state"),
    }
    return FederatedConfig.from_flat(values | changes).validated()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The default aggregation (SecAgg+ with persona hiding), the router round and the audit: every reply leaving
    a device recorded."""
    run_dir = tmp_path_factory.mktemp("sim")
    # with a public split: the server's public warm start, and the router's public feature map, prior and
    # calibration (the map travels to the devices in the router task's instructions)
    config = tiny_config(
        run_dir, keep_payloads=True, router_epsilon=4.0, public_data="synthetic", public_steps=2
    )
    assert (
        config.aggregation.secure_aggregation
        and config.aggregation.persona_hiding
        and config.outputs.record_wire
        and config.outputs.audit
        and config.privacy.router_epsilon == FederatedConfig().privacy.router_epsilon
    )
    metrics = simulate(config, run_dir)
    return config, run_dir, metrics


@pytest.mark.slow  # Ray
def test_three_rounds_produce_persona_adapters(run):
    config, run_dir, metrics = run
    users = user_ids(config)
    assert len(users) == 10 and len(metrics["rounds"]) == 3
    for r in metrics["rounds"]:
        assert r["participants"] == 10 and r["failures"] == 0
        assert sorted(r["released"]) == sorted(config.persona_names)  # 2 users each >= min_clients
    adapters = load_adapters(run_dir)
    assert set(adapters) == {GLOBAL, *config.persona_names}
    initial = adapter_arrays(
        __import__("fedpers.models", fromlist=["attach_lora"]).attach_lora(
            load_base_model("tiny")[0], config.lora()
        )
    )
    for name, arrays in adapters.items():
        assert any(not np.array_equal(arrays[k], initial[k]) for k in initial), (
            f"{name} never updated"
        )
    a, b = adapters["leadership"], adapters["field_worker"]
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    base, _ = load_base_model("tiny")
    assert PeftModel.from_pretrained(base, run_dir / "adapters" / "leadership") is not None
    # the model card and the portable base reference (tests/test_model_cards.py has the details)
    adapter_config = json.loads(
        (run_dir / "adapters" / "leadership" / "adapter_config.json").read_text()
    )
    assert adapter_config["base_model_name_or_path"] == "fedpers:tiny"
    card = (run_dir / "adapters" / "leadership" / "README.md").read_text()
    assert "the **leadership** persona" in card and "| rounds | 3 recorded of 3 planned |" in card
    assert f"spent, from the devices' ledgers: {metrics['max_epsilon']:.3g}." in card
    assert "| 3 | 10 | 2 | yes |" in card
    assert (run_dir / "heldout_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = metrics["evaluation"]
    assert set(table["rows"]) == set(config.persona_names)
    for row in table["rows"].values():
        assert all(row[k] is not None for k in ("base", "global", "persona", "persona-embedding"))
    assert "persona + user embedding" in (run_dir / "evaluation.txt").read_text()
    assert "outside the federated protocol" in metrics["evaluation_source"]
    assert "outside the federated protocol" in (run_dir / "evaluation.txt").read_text()
    assert read_json(run_dir / "run.json")["personas"] == config.persona_names


@pytest.mark.slow  # Ray
def test_the_run_learns_the_router_through_the_private_path_and_saves_it(run):
    """After the last round one SecAgg+ session (task ``router``) over every device: the router is saved beside
    the adapters, its centroids learned from the noised statistics, what it cost recorded."""
    from fedpers.personas.centroid import has_router, load_router
    from fedpers.personas.router_stats import noise_for_epsilon, privacy_summary

    config, run_dir, metrics = run
    assert has_router(run_dir)
    router = load_router(run_dir)
    assert router.personas == tuple(config.persona_names) and router.context.shape[1] == 64
    assert router.trained  # 2 users per persona, gate 2: noised counts put some at or above it
    assert all(
        c == 0 or c >= config.server.min_clients for c in router.counts
    )  # none below the gate
    info = router.info
    assert info["run_id"] == metrics["run_id"] and info["devices"] == 10 and info["failures"] == 0
    assert (
        info["epsilon"] <= config.privacy.router_epsilon and info["delta"] == config.privacy.delta
    )
    assert "1/t" in info["dropout_assumption"] and info["noise_multiplier"] > 0
    # the public start: the devices summed rows mapped by the public LDA map; calibrated on public prompts
    assert router.features.kind == "lda" and router.text.shape[1] == len(config.persona_names) - 1
    assert info["features"] == "lda" and info["calibrated"] is True and info["public_users"] > 0
    assert set(router.trained) == set(
        config.persona_names
    )  # the public users speak for every persona
    assert metrics["router"]["status"] == "saved" and metrics["router"]["devices"] == 10
    # a centroid is the direction of its persona's noised sum: its own users' prompts are closer to it
    layout_noise = noise_for_epsilon(
        config.privacy.router_epsilon, config.privacy.delta, _router_layout(config, router.features)
    )
    assert info["noise_multiplier"] == pytest.approx(layout_noise.noise_multiplier)
    assert info["epsilon"] == pytest.approx(
        privacy_summary(layout_noise, config.privacy.delta)["epsilon"]
    )


def _router_layout(config, features=None):
    from fedpers.personas.features import IDENTITY
    from fedpers.personas.router_round import router_layout

    return router_layout(config, features or IDENTITY)


@pytest.mark.slow  # Ray
def test_privacy_is_accounted_per_client_and_within_budget(run):
    config, run_dir, metrics = run
    spent = metrics["client_privacy"]["epsilon_per_client"]
    assert len(spent) == 10 and all(0 < e <= config.privacy.epsilon for e in spent.values())
    for user in user_ids(config):
        ledger = PrivacyLedger(run_dir / "client-state" / user / "ledger.json", user)
        purposes = [e.purpose for e in ledger.entries]
        assert purposes.count("dp-sgd") == 3 and purposes.count("clip-quantile") == 1
        assert ledger.spent().epsilon <= config.privacy.epsilon
        # the router's release: once, in the user-level ledger, recorded (and completed) before it left
        user_level = PrivacyLedger(run_dir / "client-state" / user / "user-level-ledger.json", user)
        (entry,) = user_level.entries
        assert entry.purpose == "router-statistics-skellam" and entry.status == "completed"
        assert entry.details["run_id"] == metrics["run_id"] and entry.details["threshold"] >= 2
        assert 0 < user_level.spent().epsilon <= config.privacy.router_epsilon * 1.001
    assert metrics["max_epsilon"] <= config.privacy.epsilon
    # the audit's totals: each user's user-level ledger, the router's release in it
    audit = json.loads((run_dir / "audit.json").read_text())
    router = audit["spent"]["router"]
    assert router["status"] == "saved" and router["ledgers"] == "run"
    assert {c["user_id"] for c in router["clients"]} == set(user_ids(config))
    for client in router["clients"]:
        assert client["router_releases"] == 1 and client["ledger_entries"] == 1
        assert client["epsilon"] == pytest.approx(router["epsilon"], rel=0.02)
    assert router["max_epsilon"] == max(c["epsilon"] for c in router["clients"])
    assert "Learned router (private statistics)" in (run_dir / "audit.html").read_text()


@pytest.mark.slow  # Ray
def test_nothing_a_client_sends_contains_its_text_or_token_ids(run):
    config, run_dir, _ = run
    wire = run_dir / "wire"
    manifest = [json.loads(line) for line in (wire / "manifest.jsonl").read_text().splitlines()]
    # every reply of every client: the 4 SecAgg+ stages of training, 3 rounds and the router's session, 10
    # clients; no evaluation upload
    assert len(manifest) == 10 * (3 + 1) * 4
    router = [e for e in manifest if e["task"] == "router"]
    assert len(router) == 10 and {e["secagg_stage"] for e in router} == {"collect_masked_vectors"}
    from fedpers.audit.scan import find
    from fedpers.personas.encoder import default_encoder
    from fedpers.personas.router_data import user_prompts

    env = model_environment(config)
    users = user_ids(config)
    encoder = default_encoder()
    for pid, user in enumerate(users):
        payloads = [p.read_bytes() for p in wire.glob(f"{pid}-*.bin")]
        assert len(payloads) == 16
        mine = [c for c in conversations(config) if c.user_id == user]
        texts = [t.text for c in mine for t in c.turns]
        data = user_data(config, user, env)
        ids = [e.input_ids for e in data.train + data.heldout]
        assert scan(payloads, texts, ids) == [], f"user {user} leaked"
        # nor the embeddings the router was learned from (any row's leading coordinates, float32 or float64),
        # nor the user's mean embedding
        (prompts,) = user_prompts(mine)
        rows = encoder.encode(list(prompts.prompts))
        rows = np.vstack([rows, rows.mean(0, keepdims=True)])
        patterns = {
            r[:4].astype(dtype).tobytes(): "embedding" for r in rows for dtype in ("<f4", "<f8")
        }
        assert find(payloads, patterns) == {}, f"user {user}: an embedding on the wire"
    for entry in manifest:
        # SecAgg+ clears the plain arrays; only masked integer vectors leave the device, inside its config record
        for tensor in entry["arrays"]:
            assert tensor["record"] == RECORD_KEY_CONFIGS and tensor["name"].startswith(
                "masked_params["
            )
            assert (
                tensor["dtype"] in ("int64", "uint64")
                and entry["secagg_stage"] == "collect_masked_vectors"
            )
        assert set(entry["config_keys"]) <= {RECORD_KEY_CONFIGS, "fitres.status", "fitres.metrics"}
        # no persona index, loss or epsilon in clear
        assert entry["config_keys"].get("fitres.metrics", []) == []
        assert entry["metric_keys"] in ({}, {"fitres.num_examples": ["num_examples"]})
    stages = sorted({e["secagg_stage"] for e in manifest})
    assert stages == ["collect_masked_vectors", "setup", "share_keys", "unmask"]


@pytest.mark.slow  # Ray
def test_every_reply_is_in_the_release_manifest_and_accounted_before_it_left(run):
    """Each field of each recorded reply is a row of the release manifest; each DP field's ledger entry
    (this run, this round) was written on the device before the reply was sent."""
    from fedpers.releases import recorded_fields, recorded_stage, required_ledger, undeclared_fields

    config, run_dir, metrics = run
    users = user_ids(config)
    manifest = [
        json.loads(line) for line in (run_dir / "wire" / "manifest.jsonl").read_text().splitlines()
    ]
    from fedpers.releases import ROUTER_RELEASE, recorded_task, release_of

    accounted = 0
    for entry in manifest:
        fields, stage, task = recorded_fields(entry), recorded_stage(entry), recorded_task(entry)
        assert fields and undeclared_fields(entry["message_type"], stage, fields, task) == [], entry
        needed = required_ledger(
            entry["message_type"],
            stage,
            fields,
            config.privacy.dp,
            config.dataset.persona_mode == "inferred",
            config.privacy.user_dp,
            task,
        )
        if (
            task == "router"
        ):  # the router's upload: its own row of the manifest, its own ledger event
            assert release_of(entry["message_type"], stage, *RECORD_MASKED, task) == ROUTER_RELEASE
            assert ROUTER_RELEASE.mechanism == "distributed DP (Skellam)"
            assert needed == {"router-statistics-skellam"}
        user = users[entry["partition_id"]]
        ledger = PrivacyLedger(
            run_dir
            / "client-state"
            / user
            / ("user-level-ledger.json" if task == "router" else "ledger.json"),
            user,
        )
        for purpose in needed:
            matching = [
                e
                for e in ledger.entries
                if e.purpose == purpose
                and e.details.get("run_id") == metrics["run_id"]
                and e.details.get("round") == entry["round"]
            ]
            assert len(matching) == 1 and matching[0].started_at < entry["sent_at"], (
                purpose,
                entry,
            )
            accounted += 1
    assert (
        accounted == 10 * 3 + 10
    )  # one DP-SGD upload per client and round, one router upload per client


RECORD_MASKED = (RECORD_KEY_CONFIGS, "masked_params")


def test_scan_finds_text_and_token_ids_when_they_are_sent(task_identity):
    text = "my badge stopped working at the Vienna depot this morning"
    ids = list(range(300, 340))
    leaky = Message(
        RecordDict(
            {
                "arrays": ArrayRecord({"ids": Array(np.asarray(ids, dtype=np.int64))}),
                "config": ConfigRecord({"note": text}),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        ),
        dst_node_id=1,
        message_type="train",
    )
    found = scan([payload_bytes(leaky)], [text], [ids])
    assert any("Vienna depot" in leak.what for leak in found)
    assert any(leak.what.startswith("ids") for leak in found)
    clean = Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
        dst_node_id=1,
        message_type="train",
    )
    assert scan([payload_bytes(clean)], [text], [ids]) == []


def test_fedadam_strategy_uses_its_own_learning_rate_by_default():
    from fedpers.aggregation import FedAdamOptimizer, FedAvgOptimizer
    from server.strategy import persona_adapters

    adapters = {
        name: {"w.lora_A": np.zeros((2, 2), np.float32)}
        for name in [GLOBAL, *FederatedConfig().persona_names]
    }
    adam = persona_adapters(FederatedConfig.from_flat({"server_optimizer": "fedadam"}), adapters)
    assert all(isinstance(o, FedAdamOptimizer) for o in adam.optimizers.values())
    assert adam.optimizers[GLOBAL].server_lr == FedAdamOptimizer().server_lr
    avg = persona_adapters(FederatedConfig.from_flat({"server_lr": 0.5}), adapters)
    assert (
        isinstance(avg.optimizers["leadership"], FedAvgOptimizer)
        and avg.optimizers["leadership"].server_lr == 0.5
    )


def test_flower_app_config_declares_every_setting_with_its_default():
    """`flwr run . --run-config` only accepts declared keys; the declared values must be the real defaults."""
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"][
        "flwr"
    ]["app"]["config"]
    defaults = {s.name.replace("_", "-"): s.default for s in all_settings()}
    assert {k: v for k, v in declared.items() if k != "run-dir"} == defaults
    from server.app import config_from_context

    class FakeContext:
        run_config = {**declared, "model": "tiny", "run-dir": "/tmp/x"}

    config, run_dir = config_from_context(FakeContext())
    assert config.model.model == "tiny" and str(run_dir) == "/tmp/x"


def _relative_difference(a: dict, b: dict) -> float:
    num = sum(float(np.sum((a[n][k].astype(np.float64) - b[n][k]) ** 2)) for n in a for k in a[n])
    den = sum(float(np.sum(a[n][k].astype(np.float64) ** 2)) for n in a for k in a[n])
    return (num / den) ** 0.5


@pytest.mark.parametrize("secure, hiding", [(False, False), (True, False)])
@pytest.mark.slow  # Ray
def test_other_aggregation_modes_give_the_same_persona_adapters(run, tmp_path, secure, hiding):
    """Plain aggregation, and SecAgg+ per persona group with personas in clear, on the same seed: the same
    adapters as SecAgg+ with persona hiding, up to SecAgg+'s quantization error."""
    config, run_dir, metrics = run
    other = simulate(
        tiny_config(
            tmp_path,
            secure_aggregation=secure,
            persona_hiding=hiding,
            audit=False,
            public_data=config.dataset.public_data,  # the reference's public warm start
            public_steps=config.dataset.public_steps,
            router_epsilon=0.0,
        ),
        tmp_path,
    )
    assert (
        other["aggregation"]["slots"] == ["update"] and metrics["aggregation"]["slots"][0] == GLOBAL
    )
    assert metrics["aggregation"]["upload_floats"] == 6 * other["aggregation"]["upload_floats"]
    reference, adapters = load_adapters(run_dir), load_adapters(tmp_path)
    assert set(adapters) == set(reference)
    assert _relative_difference(reference, adapters) < 1e-5
    for name in reference:
        assert any(np.any(reference[name][k] != 0) for k in reference[name])
    table, other_table = metrics["evaluation"]["rows"], other["evaluation"]["rows"]
    for persona, row in table.items():
        assert row["persona"] == pytest.approx(other_table[persona]["persona"], rel=1e-4)


@pytest.mark.slow  # Ray
def test_the_update_clip_chosen_on_public_data_is_the_one_every_device_clips_and_noises_with(
    tmp_path,
):
    from fedpers.models import attach_lora
    from fedpers.warmstart import public_update_clip, public_warm_start

    config = tiny_config(
        tmp_path,
        user_dp=True,
        update_clip_public=True,
        public_data="synthetic",
        public_steps=2,
        rounds=1,
        evaluate=False,
        audit=False,
    )
    assert config.aggregation.update_clip == 32.0  # the setting; the run replaces it
    start = public_warm_start(
        config, adapter_arrays(attach_lora(load_base_model("tiny")[0], config.lora()))
    )
    expected = public_update_clip(config, start)
    assert expected.clip < 32.0
    metrics = simulate(config, tmp_path)
    chosen = metrics["update_clip_public"]
    assert chosen["update_clip"] == pytest.approx(expected.clip)
    assert chosen["norms"] == pytest.approx(list(expected.norms))
    assert metrics["settings"]["update_clip"] == pytest.approx(expected.clip)
    assert metrics["aggregation"]["update_clip"] == pytest.approx(expected.clip)
    run_json = json.loads((tmp_path / "run.json").read_text())
    assert run_json["settings"]["update_clip"] == pytest.approx(expected.clip)
    assert metrics["user_level_dp"]["clip"] == pytest.approx(expected.clip * 2**0.5)
    # each device clipped its upload to the chosen clip and calibrated its noise to it
    for user in user_ids(config):
        ledger = PrivacyLedger(tmp_path / "client-state" / user / "user-level-ledger.json", user)
        assert [e.details["clip"] for e in ledger.entries] == [
            pytest.approx(expected.clip * 2**0.5)
        ]


@pytest.mark.slow  # Ray
def test_user_level_dp_clips_the_whole_upload_adds_noise_and_accounts_per_persona(tmp_path):
    import dp_accounting
    from dp_accounting import rdp

    config = tiny_config(
        tmp_path,
        user_dp=True,
        user_noise_multiplier=2.0,
        update_clip=0.5,
        rounds=2,
        evaluate=False,
        audit=False,
    )
    metrics = simulate(config, tmp_path)
    user = metrics["user_level_dp"]
    assert user["clip"] == pytest.approx(0.5 * 2**0.5)
    google = (
        rdp.RdpAccountant()
        .compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 2))
        .get_epsilon(config.privacy.delta)
    )
    for name in [GLOBAL, *config.persona_names]:
        assert user["epsilon"][name] == pytest.approx(google, rel=0.10)
        assert user["epsilon"][name] >= google * 0.99
        ledger = PrivacyLedger(tmp_path / "user-level-dp" / f"{name}.json", f"adapter:{name}")
        assert [e.purpose for e in ledger.entries] == ["user-level-dp-skellam"] * 2
    # the user's guarantee: each device's own user-level ledger, charged before its uploads left
    per_client = metrics["client_privacy"]["user_level"]["epsilon_per_client"]
    assert set(per_client) == set(user_ids(config))
    for user in user_ids(config):
        ledger = PrivacyLedger(tmp_path / "client-state" / user / "user-level-ledger.json", user)
        assert [(e.purpose, e.details["round"]) for e in ledger.entries] == [
            ("user-level-dp-skellam", 1),
            ("user-level-dp-skellam", 2),
        ]
        assert (
            per_client[user] == pytest.approx(ledger.spent().epsilon)
            and per_client[user] >= google * 0.99
        )
    from fedpers.audit.report import build_audit

    audit = build_audit(tmp_path, progress=False)
    jsonschema_validate(audit)
    devices = audit["spent"]["user_level"]
    assert devices["ledgers"] == "run" and {c["user_id"] for c in devices["clients"]} == set(
        user_ids(config)
    )
    assert all(
        c["epsilon"] >= google * 0.99 and c["ledger_entries"] == 2 for c in devices["clients"]
    )
    assert devices["max_epsilon"] == max(c["epsilon"] for c in devices["clients"])
    # noise of std 2 * clip on every coordinate of the sum (and of the counts): the global adapter, a mean
    # over about 10 clients, moves much further than clipped updates alone could move it
    initial = adapter_arrays(
        __import__("fedpers.models", fromlist=["attach_lora"]).attach_lora(
            load_base_model("tiny")[0], config.lora()
        )
    )
    moved = load_adapters(tmp_path)[GLOBAL]
    change = (
        sum(float(np.sum((moved[k].astype(np.float64) - initial[k]) ** 2)) for k in initial) ** 0.5
    )
    assert change > 2 * config.aggregation.update_clip


def _schema():
    from pathlib import Path

    return json.loads((Path(__file__).parent.parent / "docs" / "audit-schema.json").read_text())


def jsonschema_validate(audit: dict) -> None:
    import jsonschema

    jsonschema.validate(audit, _schema(), format_checker=jsonschema.FormatChecker())


@pytest.mark.slow  # Ray
def test_the_run_writes_a_signed_audit_report_that_validates_against_its_schema(run, tmp_path):
    import shutil

    import jsonschema

    from fedpers.audit.signing import verify
    from simulations.cli import main

    config, run_dir, metrics = run
    audit = json.loads((run_dir / "audit.json").read_text())
    jsonschema.validate(audit, _schema(), format_checker=jsonschema.FormatChecker())
    spent = audit["spent"]
    assert len(spent["clients"]) == 10 and spent["budget"] == config.privacy.epsilon
    for client in spent["clients"]:
        # never below the most conservative
        assert client["epsilon"] == max(client["accountants"].values())
        assert client["epsilon"] == pytest.approx(
            metrics["client_privacy"]["epsilon_per_client"][client["user_id"]], rel=0.02
        )
        assert [p["purpose"] for p in client["cumulative"]] == ["clip-quantile"] + ["dp-sgd"] * 3
        assert [p["epsilon"] for p in client["cumulative"]] == sorted(
            p["epsilon"] for p in client["cumulative"]
        )
        assert client["dp_parameters"]["rounds"] == 3 and not client["over_budget"]
    wire = audit["wire"]
    assert (
        wire["secure_aggregation"]
        and wire["persona_hiding"]
        and wire["min_clients_released"] >= config.server.min_clients
    )
    assert wire["summary"]["messages"] == len(wire["manifest"]) == 160
    assert (
        wire["scan"]["payloads_scanned"] == 160
        and wire["scan"]["leaks"] == []
        and wire["scan"]["patterns"] > 1000
    )
    # the run seeds DP randomness (benchmark switch): marked not private, and that is its only problem
    problems = [f["text"] for f in audit["findings"] if f["level"] == "problem"]
    assert (
        len(problems) == 1
        and problems[0].startswith("NOT PRIVATE")
        and "noise_seed = 7" in problems[0]
    )
    assert metrics["private_randomness"]["private"] is False
    assert "NOT PRIVATE" in (run_dir / "evaluation.txt").read_text()
    html = (run_dir / "audit.html").read_text()
    assert "Privacy audit report" in html and html.count("data:image/png;base64,") >= 1
    assert "<script" not in html and 'src="http' not in html  # self-contained: nothing fetched
    assert verify(run_dir).ok
    # one changed byte anywhere in the report breaks the signature
    copy = tmp_path / "copy"
    shutil.copytree(
        run_dir, copy, ignore=shutil.ignore_patterns("wire", "client-state", "adapters")
    )
    assert main(["audit", "verify", str(copy)]) == 0
    data = bytearray((copy / "audit.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "audit.json").write_bytes(bytes(data))
    assert main(["audit", "verify", str(copy)]) == 1


@pytest.mark.slow  # Ray
def test_the_wire_scan_flags_a_deliberately_leaking_client(tmp_path):
    from flwr.app import ConfigRecord

    config = tiny_config(
        tmp_path, rounds=1, evaluate=False, secure_aggregation=False, persona_hiding=False
    )
    leaker = user_ids(config)[0]
    secret_text = [t.text for c in conversations(config) if c.user_id == leaker for t in c.turns][0]

    def leak(msg, context, call_next):
        reply = call_next(msg, context)
        if int(context.node_config["partition-id"]) == 0 and not reply.has_error():
            reply.content.config_records["debug"] = ConfigRecord({"last_prompt": secret_text})
        return reply

    simulate(config, tmp_path, client_mods=[leak])
    audit = json.loads((tmp_path / "audit.json").read_text())
    leaks = audit["wire"]["scan"]["leaks"]
    assert leaks and {x["user_id"] for x in leaks} == {leaker}
    assert any(x["what"] in secret_text for x in leaks)
    assert any(f["level"] == "problem" and "Leak scan" in f["text"] for f in audit["findings"])
    assert any(
        f["level"] == "problem" and "debug/last_prompt" in f["text"] for f in audit["findings"]
    )
    # payloads pruned after the scan; the scan result stays
    assert not list((tmp_path / "wire").glob("*.bin"))
    assert (tmp_path / "wire" / "scan.json").exists()


@pytest.mark.slow  # Ray
def test_a_device_shifting_its_masked_upload_gets_the_round_rejected_and_nothing_published(
    tmp_path,
):
    """The modified device of the report: after the honest clip it adds 2**36 levels to every quantized
    coordinate of its SecAgg+ upload (a shift of the masked vector is a shift of what the server unmasks)."""
    from flwr.common import bytes_to_ndarray as from_bytes
    from flwr.common import ndarray_to_bytes as to_bytes
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        parameters_mod,
    )
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from fedpers.aggregation.secure import QuantizationPlan

    registry = tmp_path / "registry"
    config = tiny_config(tmp_path, rounds=1, evaluate=False, registry=str(registry))
    modulus = QuantizationPlan.for_bound(
        config.aggregation.update_clip, max(1000, len(user_ids(config)))
    ).modulus_range

    def shift(msg, context, call_next):
        reply = call_next(msg, context)
        record = (
            reply.content.config_records.get(RECORD_KEY_CONFIGS) if not reply.has_error() else None
        )
        if (
            int(context.node_config["partition-id"]) == 0
            and record
            and Key.MASKED_PARAMETERS in record
        ):
            arrays = [from_bytes(b) for b in record[Key.MASKED_PARAMETERS]]
            shifted = parameters_mod([a + 2**36 for a in arrays], modulus)
            record[Key.MASKED_PARAMETERS] = [to_bytes(a) for a in shifted]
        return reply

    metrics = simulate(config, tmp_path, client_mods=[shift])
    assert [r["round"] for r in metrics["rejected_rounds"]] == [1]
    problems = metrics["rejected_rounds"][0]["problems"]
    assert any("add up to" in p for p in problems)  # the shift reached the count vector too
    assert metrics["rounds"][0]["released"] == []
    assert not registry.exists() or not any(registry.iterdir())
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert any(f["level"] == "problem" and "REJECTED" in f["text"] for f in audit["findings"])
    assert "REJECTED" in (tmp_path / "run.log").read_text()
