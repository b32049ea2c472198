"""The randomness that DP rests on comes from the device, and nothing the server sends can replay it.

Issue 12, points 1 and 7: the Poisson sampler was seeded from ``config.seed * 1000 + round``, a value
the server chooses and sends, so the server knew every batch and the accountant's amplification by
subsampling did not hold; a ledger silently took over the delta stored in its file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from conftest import personalized

from fedpers.local import LocalTrainConfig
from fedpers.models import load_base_model
from fedpers.privacy import DPConfig, PrivacyLedger, TrainConfig, train
from fedpers.privacy.accounting import GaussianEvent
from fedpers.privacy.ledger import LedgerDeltaMismatch, LedgerEntry

DP = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5)


class RecordingExamples(Sequence):
    """The training examples, recording which indices each DP-SGD step reads."""

    def __init__(self, examples) -> None:
        self.examples, self.reads = list(examples), []

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        self.reads.append(int(i))
        return self.examples[i]


def batches(config: TrainConfig, examples, tmp_path, name: str) -> list[int]:
    model, tok = load_base_model("tiny")
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    recorded = RecordingExamples(examples)
    train(
        net, recorded, tok.pad_token_id, config, DP, PrivacyLedger(tmp_path / f"{name}.json", name)
    )
    return recorded.reads


def test_dp_sgd_batches_are_not_a_function_of_the_settings(examples, tmp_path):
    """Two trainings with identical settings draw different Poisson samples (OS CSPRNG per call)."""
    config = TrainConfig(steps=12, batch_size=4, learning_rate=1e-2)
    first = batches(config, examples, tmp_path, "a")
    second = batches(config, examples, tmp_path, "b")
    assert first and second
    assert first != second, (
        "the DP-SGD batches were the same on two calls: the sampler is not seeded from the OS"
    )


def test_the_benchmark_switch_replays_batches(examples, tmp_path):
    """``noise_seed`` (benchmarks only) makes sampling reproducible; distinct seeds, distinct batches."""
    same = [
        batches(TrainConfig(steps=12, batch_size=4, noise_seed=5), examples, tmp_path, n)
        for n in "ab"
    ]
    other = batches(TrainConfig(steps=12, batch_size=4, noise_seed=6), examples, tmp_path, "c")
    assert same[0] == same[1] and same[0] != other


def test_dp_noise_differs_between_calls(examples, tmp_path):
    """With every example in every batch (sample rate 1), two trainings differ only by their noise."""
    results = []
    for name in "ab":
        model, tok = load_base_model("tiny")
        torch.manual_seed(0)
        net = personalized(model, tok)
        net.user_embedding.requires_grad_(False)
        train(
            net,
            examples[:4],
            tok.pad_token_id,
            TrainConfig(steps=2, batch_size=8, learning_rate=1e-2),
            DP,
            PrivacyLedger(tmp_path / f"{name}.json", name),
        )
        results.append({n: p.detach().clone() for n, p in net.named_parameters() if "lora_" in n})
    assert any(not torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_the_client_trains_with_nothing_the_server_sent_as_a_seed(tmp_path, monkeypatch):
    """The client's DP-SGD sampler and noise are unseeded unless the run sets the benchmark switch."""
    import clients.tasks as tasks
    from fedpers.federated import FederatedConfig, load_config_file
    from simulations.simulate import SCENARIOS

    captured: list[LocalTrainConfig] = []

    def capture(model, examples, pad, config, ledger):
        captured.append(config)
        raise RuntimeError("captured")

    monkeypatch.setattr(tasks, "train_local", capture)
    for noise_seed in (-1, 3):
        values = load_config_file(SCENARIOS / "tiny.toml") | {
            "noise_seed": noise_seed,
            "state_dir": str(tmp_path / "state"),
        }
        config = FederatedConfig.from_flat(values).validated()
        raw = _train_instructions(config, server_round=2)
        task = tasks.prepare(raw, {"partition-id": 0})
        with pytest.raises(RuntimeError, match="captured"):
            tasks.train_upload(task)
    private, seeded = captured
    assert private.lora.noise_seed is None and private.embedding.noise_seed is None
    assert (
        isinstance(seeded.lora.noise_seed, int)
        and seeded.lora.noise_seed != seeded.embedding.noise_seed
    )
    assert not hasattr(private.lora, "seed"), "no other seed may reach the sampler"


def _train_instructions(config, server_round: int):
    """The round instructions the server sends for a training round (as the ServerApp builds them)."""
    from fedpers.models import adapter_arrays, attach_lora, load_base_model
    from server.app import initial_adapters
    from server.strategy import PersonaTraining, persona_adapters

    base, _ = load_base_model(config.model.model)
    adapters = initial_adapters(config, adapter_arrays(attach_lora(base, config.lora())))
    return PersonaTraining(
        config,
        "run-x",
        3,
        config.aggregation.secure_aggregation,
        persona_adapters(config, adapters),
    ).instructions(server_round)


def test_a_ledger_refuses_another_delta(tmp_path):
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, "alice", 1e-5).record(LedgerEntry("dp-sgd", [GaussianEvent(1.0, 0.2, 30)]))
    with pytest.raises(LedgerDeltaMismatch, match=r"delta 1e-05.*delta 1e-06"):
        PrivacyLedger(path, "alice", 1e-6)
    assert PrivacyLedger(path, "alice").delta == 1e-5  # None: the stored delta
    assert PrivacyLedger(path, "alice", 1e-5).spent().epsilon > 0
    assert np.isclose(PrivacyLedger(tmp_path / "new.json", "bob").delta, 1e-5)


def test_the_default_run_never_seeds_dp_randomness():
    """``make run`` (the default scenario) and the Flower app config leave the benchmark switch off."""
    import tomllib
    from pathlib import Path

    from fedpers.federated import FederatedConfig, load_config_file
    from simulations.simulate import SCENARIOS

    assert FederatedConfig().privacy.noise_seed < 0
    assert load_config_file(SCENARIOS / "default.toml").get("noise_seed", -1) < 0
    app_config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"][
        "flwr"
    ]["app"]["config"]
    assert app_config["noise-seed"] < 0
    assert "noise" not in (Path(__file__).parents[1] / "Makefile").read_text()
