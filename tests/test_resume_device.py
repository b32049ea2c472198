"""The device's ledger across a server crash and a resumed run (same fedpers run id).

A device that computed a round before the crash re-sends that same upload when the resumed run asks for
the round again: the same release, charged once. A device whose training of the round was cut short
(charged, no upload kept) trains again and is charged again: over-reported, never under-reported. No
charge is ever skipped for a computation that is sent."""

from __future__ import annotations

import numpy as np
import pytest

import clients.tasks as tasks
from fedpers.federated import FederatedConfig, load_config_file
from simulations.simulate import SCENARIOS


def _instructions(config, server_round: int):
    """What the ServerApp sends for a training round of run ``run-x`` (a resumed run keeps its id)."""
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


def _charged(task, server_round: int) -> list:
    ledger = task.state.ledger(task.config.privacy.delta)
    return [
        e
        for e in ledger.entries
        if e.purpose == "dp-sgd"
        and e.details.get("run_id") == "run-x"
        and e.details.get("round") == server_round
    ]


@pytest.fixture
def device(tmp_path):
    values = load_config_file(SCENARIOS / "tiny.toml") | {
        "noise_seed": -1,  # the device's OS CSPRNG: a second training is a different release
        "state_dir": str(tmp_path / "state"),
        "local_steps": 2,
        "embedding_steps": 1,
    }
    return FederatedConfig.from_flat(values).validated()


def test_a_round_asked_again_after_a_crash_resends_the_charged_upload_or_is_charged_again(device):
    node = {"partition-id": 0}
    first = tasks.answer(tasks.prepare(_instructions(device, 2), node))
    task = tasks.prepare(_instructions(device, 2), node)
    assert len(_charged(task, 2)) == 1
    spent = task.state.ledger(device.privacy.delta).spent().epsilon

    # the resumed run asks for round 2 again: the same upload, no new charge (nothing new is released)
    again = tasks.answer(task)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    assert len(_charged(task, 2)) == 1
    assert task.state.ledger(device.privacy.delta).spent().epsilon == spent

    # a training cut short by the crash: charged, but its upload never kept
    key = "run-x-2-train"
    for path in (task.state.root / "uploads").glob(f"{key}.*"):
        path.unlink()
    assert task.state.upload(key) is None
    retrained = tasks.answer(tasks.prepare(_instructions(device, 2), node))
    assert len(_charged(task, 2)) == 2  # both trainings charged: over-reported, never under
    assert task.state.ledger(device.privacy.delta).spent().epsilon > spent
    assert any(not np.array_equal(a, b) for a, b in zip(first[0], retrained[0], strict=True))
