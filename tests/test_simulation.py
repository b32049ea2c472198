"""The federated simulation end to end on the tiny model, and what crosses the wire."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from peft import PeftModel

from clients.runtime import conversations, model_environment, user_data, user_ids
from clients.wire import payload_bytes, record_replies, scan
from fedpers.federated import FederatedConfig, load_config_file
from fedpers.models import adapter_arrays, load_base_model
from fedpers.privacy import PrivacyLedger
from fedpers.rundir import GLOBAL, load_adapters, read_json
from simulations.simulate import SCENARIOS, simulate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sim")
    config = FederatedConfig(**load_config_file(SCENARIOS / "tiny.toml"), state_dir=str(run_dir / "client-state")).validated()
    metrics = simulate(config, run_dir, client_mods=[record_replies(run_dir / "wire")])
    return config, run_dir, metrics


def test_three_rounds_produce_persona_adapters(run):
    config, run_dir, metrics = run
    users = user_ids(config)
    assert len(users) == 10 and len(metrics["rounds"]) == 3
    for r in metrics["rounds"]:
        assert r["participants"] == 10 and r["failures"] == 0
        assert sorted(r["released"]) == sorted(config.persona_names)  # 2 users each >= min_clients
    adapters = load_adapters(run_dir)
    assert set(adapters) == {GLOBAL, *config.persona_names}
    initial = adapter_arrays(__import__("fedpers.models", fromlist=["attach_lora"]).attach_lora(load_base_model("tiny")[0], config.lora()))
    for name, arrays in adapters.items():
        assert any(not np.array_equal(arrays[k], initial[k]) for k in initial), f"{name} never updated"
    a, b = adapters["leadership"], adapters["field_worker"]
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    base, _ = load_base_model("tiny")
    assert PeftModel.from_pretrained(base, run_dir / "adapters" / "leadership") is not None
    assert (run_dir / "heldout_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = metrics["evaluation"]
    assert set(table["rows"]) == set(config.persona_names)
    for row in table["rows"].values():
        assert all(row[k] is not None for k in ("base", "global", "persona", "persona-embedding"))
    assert "persona + user embedding" in (run_dir / "evaluation.txt").read_text()
    assert read_json(run_dir / "run.json")["personas"] == config.persona_names


def test_privacy_is_accounted_per_client_and_within_budget(run):
    config, run_dir, metrics = run
    for r in metrics["rounds"]:
        assert len(r["epsilon_per_client"]) == 10
        assert all(0 < e <= config.epsilon for e in r["epsilon_per_client"])
    for user in user_ids(config):
        ledger = PrivacyLedger(run_dir / "client-state" / user / "ledger.json", user)
        purposes = [e.purpose for e in ledger.entries]
        assert purposes.count("dp-sgd") == 3 and purposes.count("clip-quantile") == 1
        assert ledger.spent().epsilon <= config.epsilon
    assert metrics["max_epsilon"] <= config.epsilon


def test_nothing_a_client_sends_contains_its_text_or_token_ids(run):
    config, run_dir, _ = run
    wire = run_dir / "wire"
    manifest = [json.loads(line) for line in (wire / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 10 * 3 * 2  # every train and evaluate reply of every client was intercepted
    env = model_environment(config)
    users = user_ids(config)
    for pid, user in enumerate(users):
        payloads = [p.read_bytes() for p in wire.glob(f"{pid}-*.bin")]
        assert len(payloads) == 6
        mine = [c for c in conversations(config) if c.user_id == user]
        texts = [t.text for c in mine for t in c.turns]
        data = user_data(config, user, env)
        ids = [e.input_ids for e in data.train + data.heldout]
        assert scan(payloads, texts, ids) == [], f"user {user} leaked"
    for entry in manifest:
        for array in entry["arrays"]:
            assert "lora_A" in array["name"] or "lora_B" in array["name"]  # adapter deltas only: no embedding
        assert set(entry["metric_keys"]["metrics"]) <= {
            "num-examples", "persona-index", "train-loss", "epsilon", "tokens",
            "loss-sum-global", "loss-sum-persona", "loss-sum-base", "loss-sum-persona-embedding"}
        assert entry["config_keys"] == {}


def test_scan_finds_text_and_token_ids_when_they_are_sent():
    text = "my badge stopped working at the Vienna depot this morning"
    ids = list(range(300, 340))
    leaky = Message(RecordDict({
        "arrays": ArrayRecord({"ids": Array(np.asarray(ids, dtype=np.int64))}),
        "config": ConfigRecord({"note": text}),
        "metrics": MetricRecord({"num-examples": 1}),
    }), dst_node_id=1, message_type="train")
    found = scan([payload_bytes(leaky)], [text], [ids])
    assert any("Vienna depot" in leak.what for leak in found)
    assert any(leak.what.startswith("ids") for leak in found)
    clean = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), dst_node_id=1, message_type="train")
    assert scan([payload_bytes(clean)], [text], [ids]) == []


def test_fedadam_strategy_uses_its_own_learning_rate_by_default():
    from fedpers.aggregation import FedAdamOptimizer, FedAvgOptimizer
    from server.strategy import PersonaFedAvg

    adam = PersonaFedAvg(FederatedConfig(server_optimizer="fedadam"), "run", num_nodes=4)
    assert all(isinstance(o, FedAdamOptimizer) for o in adam.optimizers.values())
    assert adam.optimizers[GLOBAL].server_lr == FedAdamOptimizer().server_lr
    avg = PersonaFedAvg(FederatedConfig(server_lr=0.5), "run", num_nodes=4)
    assert isinstance(avg.optimizers["leadership"], FedAvgOptimizer) and avg.optimizers["leadership"].server_lr == 0.5


def test_flower_app_config_declares_every_setting_with_its_default():
    """`flwr run . --run-config` only accepts declared keys; the declared values must be the real defaults."""
    import dataclasses
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(FederatedConfig)}
    assert {k: v for k, v in declared.items() if k != "run-dir"} == defaults
    from server.app import config_from_context

    class FakeContext:
        run_config = {**declared, "model": "tiny", "run-dir": "/tmp/x"}

    config, run_dir = config_from_context(FakeContext())
    assert config.model == "tiny" and str(run_dir) == "/tmp/x"
