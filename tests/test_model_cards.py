"""Each published adapter has a model card and a portable base-model reference, and still loads."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from peft import PeftModel

from fedpers.adapters import GLOBAL
from fedpers.basemodel import SMOLLM2_GGUF, SMOLLM2_HF_ID, base_model_record, base_reference
from fedpers.federated import FederatedConfig
from fedpers.modelcard import CARD, adapter_card, write_model_cards
from fedpers.models import adapter_arrays, attach_lora, load_base_model
from fedpers.personas.cli import register
from fedpers.releases import SERVER_LEARNS
from fedpers.rundir import load_adapters, read_json
from server.outputs import save_adapters, write_metrics, write_run_config
from server.registry import VERSION_FILE, publish

PERSONAS = ("leadership", "field_worker")


@pytest.fixture
def no_network(monkeypatch):
    """Loading an adapter must not reach for the network (the portable reference is never downloaded)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _rounds() -> list[dict]:
    """Two rounds as the server publishes them: field_worker below the gate of 2 in the second."""
    return [
        {
            "round": 1,
            "participants": 5,
            "failures": 0,
            "released": list(PERSONAS),
            "contributors": {"leadership": 3, "field_worker": 2, GLOBAL: 5},
        },
        {
            "round": 2,
            "participants": 4,
            "failures": 0,
            "released": ["leadership"],
            "contributors": {"leadership": 3, "field_worker": "<2", GLOBAL: 4},
        },
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run's directory, written by the server's own output writers."""
    run_dir = tmp_path_factory.mktemp("run")
    config = FederatedConfig.from_flat(
        {"model": "tiny", "rounds": 2, "lora_layers": 2, "personas": ",".join(PERSONAS)}
    ).validated()
    peft_model = attach_lora(load_base_model("tiny")[0], config.lora())
    write_run_config(run_dir, config, "run-1")
    rng = np.random.default_rng(0)
    adapters = {
        name: {k: v + rng.normal(0, 0.1, v.shape).astype(v.dtype) for k, v in arrays.items()}
        for name, arrays in [(n, adapter_arrays(peft_model)) for n in (GLOBAL, *PERSONAS)]
    }
    save_adapters(run_dir, peft_model, adapters)
    write_metrics(
        run_dir,
        {
            "run_id": "run-1",
            "engine": "simulation",
            "settings": config.to_record(),
            "rounds": _rounds(),
            "max_epsilon": 3.21,
        },
    )
    return run_dir, adapters


# peft's state-dict export looks the portable name up (offline: not found, nothing assumed)
@pytest.mark.filterwarnings("ignore:Could not find a config file in fedpers")
def test_a_published_adapter_has_a_card_and_a_portable_base_and_loads_back(
    tiny_run, tmp_path, no_network, capsys
):
    run_dir, adapters = tiny_run
    version = publish(run_dir, tmp_path / "registry")
    card = (version.path / "adapters" / "leadership" / CARD).read_text()
    assert card == (run_dir / "adapters" / "leadership" / CARD).read_text()
    assert "# fedpers adapter: leadership" in card and "the **leadership** persona" in card
    assert "| rounds | 2 recorded of 2 planned |" in card
    assert "| 1 | 5 | 3 | yes |" in card and "| 2 | 4 | 3 | yes |" in card
    assert (
        "epsilon = 8 at delta = 1e-05" in card and "spent, from the devices' ledgers: 3.21" in card
    )
    assert "User-level DP: off" in card and "Persona hiding: on" in card
    assert SERVER_LEARNS[0] in card
    assert "`fedpers:tiny`" in card and "fedpers route RUN_DIR" in card
    assert "[More Information Needed]" not in card
    # the persona below the gate in round 2: published as such, never as a count of one
    gated = (version.path / "adapters" / "field_worker" / CARD).read_text()
    assert "| 2 | 4 | <2 | no |" in gated and "| 1 | 5 | 2 | yes |" in gated
    assert "| 2 | 4 | 4 | yes |" in (version.path / "adapters" / GLOBAL / CARD).read_text()
    record = json.loads((version.path / VERSION_FILE).read_text())
    assert f"adapters/leadership/{CARD}" in record["files"]

    for name in (GLOBAL, *PERSONAS):
        directory = version.path / "adapters" / name
        config = json.loads((directory / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "fedpers:tiny"
        loaded = adapter_arrays(PeftModel.from_pretrained(load_base_model("tiny")[0], directory))
        assert loaded.keys() == adapters[name].keys()
        assert all(np.array_equal(loaded[k], adapters[name][k]) for k in loaded)
    # fedpers's own readers: the registry version as a run directory, and `fedpers route`
    for name, arrays in load_adapters(version.path).items():
        assert all(np.array_equal(arrays[k], adapters[name][k]) for k in arrays)
    parser = argparse.ArgumentParser(prog="fedpers")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["route", str(version.path), "VPN down", "--no-answer", "--json", "--persona", "leadership"]
    )
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["persona"] == "leadership"


def test_publishing_an_older_run_writes_its_cards_and_drops_the_local_path(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    for adapter in (old / "adapters").iterdir():
        (adapter / CARD).write_text("---\nlibrary_name: peft\n---\n[More Information Needed]\n")
        config = json.loads((adapter / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "/home/someone/.cache/fedpers/models/x-0123"
        (adapter / "adapter_config.json").write_text(json.dumps(config))
    run = read_json(old / "run.json")
    del run["base_model"]  # written before run.json recorded it
    (old / "run.json").write_text(json.dumps(run))
    version = publish(old, tmp_path / "registry")
    for adapter in (version.path / "adapters").iterdir():
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "fedpers:tiny"
        assert "# fedpers adapter" in (adapter / CARD).read_text()


def test_base_references_are_portable(tmp_path):
    assert base_reference("smollm2") == SMOLLM2_HF_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_reference("tiny") == "fedpers:tiny"
    assert base_reference(str(tmp_path / "models" / "my-model")) == "my-model"
    assert base_reference(str(tmp_path / "models" / "my-model") + "/") == "my-model"
    record = base_model_record("smollm2")
    assert record["file"] == SMOLLM2_GGUF and len(record["sha256"]) == 64
    config = FederatedConfig().validated()
    run = {
        "run_id": "r",
        "model": "smollm2",
        "base_model": record,
        "settings": config.to_record(),
    }
    card = adapter_card("leadership", run, {"rounds": _rounds()})
    assert card.startswith(f"---\nbase_model: {SMOLLM2_HF_ID}\n")
    assert SMOLLM2_GGUF in card and record["sha256"] in card
    assert f'AutoModelForCausalLM.from_pretrained("{SMOLLM2_HF_ID}")' in card
    assert str(Path.home()) not in card


def test_the_card_states_user_level_dp_and_its_absence_of_protection(tmp_path):
    settings = FederatedConfig.from_flat(
        {"model": "tiny", "user_dp": True, "dp": False, "secure_aggregation": True}
    ).validated()
    metrics = {
        "rounds": _rounds(),
        "user_level_dp": {"clip": 32.0, "epsilon": {"leadership": 1.5, GLOBAL: 0.9}},
    }
    card = adapter_card("leadership", {"model": "tiny", "settings": settings.to_record()}, metrics)
    assert "Record-level DP: off" in card
    assert "User-level DP (distributed Skellam noise; the unit: one user)" in card
    assert "epsilon = 1.5 at delta = 1e-05" in card
    seeded = FederatedConfig.from_flat({"model": "tiny", "noise_seed": 3}).validated()
    card = adapter_card("leadership", {"model": "tiny", "settings": seeded.to_record()}, {})
    assert "NOT PRIVATE" in card and "No round was recorded" in card
    # a run directory without the run's settings gets no card
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r", "personas": []}))
    assert write_model_cards(tmp_path) == []
