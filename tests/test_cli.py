"""The ``fedpers`` command end to end on the tiny model."""

import json

import pytest
from peft import PeftModel

from fedpers.models import load_base_model
from fedpers.privacy import PrivacyLedger
from simulations.cli import main

FAST = [
    "--model",
    "tiny",
    "--conversations",
    "16",
    "--steps",
    "3",
    "--embedding-steps",
    "2",
    "--batch-size",
    "4",
]


def test_train_local_reports_perplexity_and_epsilon(tmp_path, capsys):
    assert main(["train-local", *FAST, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "base model" in out and "+ LoRA (DP-SGD)" in out and "+ LoRA + user embedding" in out
    assert "epsilon RDP" in out and "PRV" in out
    (user_dir,) = tmp_path.iterdir()
    metrics = json.loads((user_dir / "metrics.json").read_text())
    assert metrics["persona"] == "field_worker"
    assert 0 < metrics["epsilon"]["prv"] <= metrics["epsilon"]["epsilon"] <= 8.0
    assert metrics["epsilon"]["epsilon"] == max(
        metrics["epsilon"]["rdp"], metrics["epsilon"]["prv"]
    )
    for key in ("base", "lora", "lora_embedding"):
        assert metrics[key]["perplexity"] > 1 and metrics[key]["tokens"] > 0
    ledger = PrivacyLedger(user_dir / "ledger.json", metrics["user_id"])
    assert [e.purpose for e in ledger.entries] == ["clip-quantile", "dp-sgd"]
    assert ledger.spent().epsilon == pytest.approx(metrics["epsilon"]["epsilon"])
    base, _ = load_base_model("tiny")
    assert PeftModel.from_pretrained(base, user_dir / "adapter") is not None
    assert (user_dir / "user_embedding.safetensors").is_file()
    adapter_config = json.loads((user_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "fedpers:tiny"
    card = (user_dir / "adapter" / "README.md").read_text()
    assert "`fedpers train-local`" in card and "(persona field_worker)" in card
    assert f"epsilon {metrics['epsilon']['epsilon']:.3g} at delta 1e-05" in card


def test_second_run_composes_with_the_ledger_and_refuses_past_budget(tmp_path, capsys):
    args = [
        "train-local",
        *FAST,
        "--out",
        str(tmp_path),
        "--noise-multiplier",
        "1.0",
        "--clip",
        "0.1",
    ]
    assert main([*args, "--epsilon", "100"]) == 0
    first = json.loads(next(tmp_path.iterdir()).joinpath("metrics.json").read_text())["epsilon"][
        "epsilon"
    ]
    assert main([*args, "--epsilon", "100"]) == 0
    second = json.loads(next(tmp_path.iterdir()).joinpath("metrics.json").read_text())["epsilon"][
        "epsilon"
    ]
    assert second > first
    capsys.readouterr()
    assert main(["train-local", *FAST, "--out", str(tmp_path), "--epsilon", str(second / 2)]) == 2
    assert "budget" in capsys.readouterr().err


def test_no_dp_run_says_so(tmp_path, capsys):
    assert main(["train-local", *FAST, "--out", str(tmp_path), "--no-dp"]) == 0
    assert "no DP" in capsys.readouterr().out
    assert not (next(tmp_path.iterdir()) / "ledger.json").exists()


def test_bad_data_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"user_id": "u", "conversation_id": "c", "turns": [{"role": "robot", "text": "hi"}]}\n'
    )
    assert (
        main(
            [
                "train-local",
                *FAST,
                "--data",
                str(bad),
                "--user-id",
                "u",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert f"{bad}:1: turns[0].role" in capsys.readouterr().err


def test_config_files_take_flat_keys_or_section_tables(tmp_path):
    from fedpers.federated import SECTIONS, FederatedConfig, all_settings, load_config_file

    flat, nested = tmp_path / "flat.toml", tmp_path / "nested.toml"
    flat.write_text('epsilon = 4\nrounds = 5\nmodel = "tiny"\n')
    nested.write_text('[privacy]\nepsilon = 4\n[server]\nrounds = 5\n[model]\nmodel = "tiny"\n')
    assert (
        load_config_file(flat)
        == load_config_file(nested)
        == {"epsilon": 4, "rounds": 5, "model": "tiny"}
    )
    config = FederatedConfig.from_flat(load_config_file(nested)).validated()
    assert (config.privacy.epsilon, config.server.rounds, config.model.model) == (4.0, 5, "tiny")
    assert isinstance(config.privacy.epsilon, float)
    (tmp_path / "wrong.toml").write_text("[privacy]\nrounds = 5\n")
    with pytest.raises(ValueError, match=r"wrong.toml: \[privacy\] has no setting 'rounds'"):
        load_config_file(tmp_path / "wrong.toml")
    # every setting is declared once, with help, in exactly one section; the record round-trips
    names = [s.name for s in all_settings()]
    assert (
        len(names) == len(set(names))
        and all(s.help for s in all_settings())
        and set(SECTIONS) == {s.section for s in all_settings()}
    )
    assert FederatedConfig.from_record(config.to_record()) == config
