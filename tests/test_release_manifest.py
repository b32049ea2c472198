"""The release manifest (:mod:`fedpers.releases`) and the client's guard that holds every reply to it.

The end-to-end checks (every reply of a tiny simulation and of a tiny deployment) are in
``test_simulation.py`` and ``test_deploy.py``; these are the guard's refusals.
"""

from __future__ import annotations

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters

from clients.app import UnaccountedRelease, release_guard
from clients.state import UserState
from fedpers.federated import FederatedConfig, load_config_file
from fedpers.privacy.accounting import GaussianEvent
from fedpers.privacy.ledger import LedgerEntry
from fedpers.releases import (
    RELEASES,
    ROUTER_RELEASE,
    ROUTER_STATS_PURPOSE,
    manifest_table,
    recorded_task,
    release_of,
    required_ledger,
    undeclared_fields,
)
from fedpers.userdata import user_ids
from simulations.simulate import SCENARIOS


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages made outside a Flower process need the identity Flower gives each task."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _config(tmp_path, **changes) -> FederatedConfig:
    values = load_config_file(SCENARIOS / "tiny.toml") | {
        "state_dir": str(tmp_path / "state"),
        "secure_aggregation": False,
        "persona_hiding": False,
    }
    return FederatedConfig.from_flat(values | changes).validated()


def _exchange(config: FederatedConfig, extra: dict | None = None, trained: str = ""):
    """A plain training message of round 1, and the client's reply carrying an update (plus ``extra`` records)."""
    raw = config.to_record() | {
        "run-id": "run-1",
        "server-round": 1,
        "task": "train",
        "trained-personas": trained,
    }
    msg = Message(
        compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([]), raw), keep_input=True),
        dst_node_id=1,
        message_type="train",
        group_id="1",
    )
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )

    def call_next(message, ctx):
        content = compat.fitres_to_recorddict(
            FitRes(
                Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(3)]), 1, {"persona-index": 0}
            ),
            keep_input=True,
        )
        for name, values in (extra or {}).items():
            content.config_records[name] = ConfigRecord(values)
        return Message(content, reply_to=message)

    return msg, context, call_next


def _charge(config: FederatedConfig, purpose: str = "dp-sgd", **details) -> None:
    state = UserState(config.outputs.state_dir, user_ids(config)[0])
    user_level = purpose == "user-level-dp-skellam"
    ledger = (
        state.user_level_ledger(config.privacy.delta)
        if user_level
        else state.ledger(config.privacy.delta)
    )
    ledger.complete(ledger.record(LedgerEntry(purpose, [GaussianEvent(1.0, 0.1, 8)], details)))


def test_the_guard_reads_the_settings_it_checks(tmp_path):
    """The guard used to read ``persona-mode`` and ``user-dp`` from the record, keys no record has (settings travel
    with underscores), so an inferred persona's choice and a user-level release were never required."""
    inferred = _config(tmp_path, persona_mode="inferred")
    _charge(inferred, run_id="run-1", round=1)
    with pytest.raises(UnaccountedRelease, match="no ledger entry persona-choice"):
        release_guard(*_exchange(inferred, trained="leadership,field_worker"))
    assert not release_guard(
        *_exchange(inferred)
    ).has_error()  # cold start: the global slot, nothing was chosen
    _charge(inferred, "persona-choice", run_id="run-1")
    assert not release_guard(*_exchange(inferred, trained="leadership,field_worker")).has_error()

    user_dp = _config(
        tmp_path / "u",
        user_dp=True,
        secure_aggregation=True,
        persona_hiding=True,
        persona_mode="declared",
    )
    _charge(user_dp, run_id="run-1", round=1)
    with pytest.raises(UnaccountedRelease, match="no ledger entry user-level-dp-skellam"):
        release_guard(*_exchange(user_dp))
    _charge(user_dp, "user-level-dp-skellam", run_id="run-1", round=1)
    assert not release_guard(*_exchange(user_dp)).has_error()


def test_an_update_without_its_ledger_entry_never_leaves(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(UnaccountedRelease, match="no ledger entry dp-sgd"):
        release_guard(*_exchange(config))
    _charge(config, run_id="run-1", round=2)  # another round's entry does not cover this one
    with pytest.raises(UnaccountedRelease, match="no ledger entry dp-sgd"):
        release_guard(*_exchange(config))
    _charge(config, run_id="run-1", round=1)
    reply = release_guard(*_exchange(config))
    assert not reply.has_error() and "fitres.parameters" in reply.content.array_records


def test_a_field_outside_the_manifest_never_leaves(tmp_path):
    config = _config(tmp_path, dp=False)
    assert not release_guard(
        *_exchange(config)
    ).has_error()  # no DP: nothing to account, every field declared
    with pytest.raises(UnaccountedRelease, match="outside the release manifest: debug/last_prompt"):
        release_guard(*_exchange(config, {"debug": {"last_prompt": "my badge stopped working"}}))


def test_every_row_names_its_mechanism_and_dp_rows_their_ledger_event():
    mechanisms = {
        "DP-SGD",
        "private choice",
        "SecAgg+ masking",
        "public",
        "distributed DP (Skellam)",
    }
    assert {r.mechanism for r in RELEASES} <= mechanisms
    for release in RELEASES:
        assert (release.mechanism == "DP-SGD") == ("dp-sgd" in release.ledger), release
        assert ("dp-sgd" in release.ledger) == ("user-level-dp-skellam" in release.ledger), release
        assert (release.mechanism == "distributed DP (Skellam)") == (
            release.ledger == (ROUTER_STATS_PURPOSE,)
        ), release
        assert release.content
    assert len(manifest_table()) == len(RELEASES)
    upload = [("secaggplus_configs", "masked_params")]
    assert undeclared_fields("train", "collect_masked_vectors", upload) == []
    # wrong stage
    assert undeclared_fields("train", "setup", upload) == ["secaggplus_configs/masked_params"]
    assert required_ledger("train", "collect_masked_vectors", upload, dp=True, inferred=True) == {
        "dp-sgd",
        "persona-choice",
    }
    assert (
        required_ledger("train", "collect_masked_vectors", upload, dp=False, inferred=False)
        == set()
    )
    assert required_ledger(
        "train", "collect_masked_vectors", upload, dp=False, inferred=False, user_dp=True
    ) == {"user-level-dp-skellam"}
    # the router's upload: its own row, its own ledger event, whatever the training settings
    assert ROUTER_RELEASE in RELEASES
    assert (
        release_of("train", "collect_masked_vectors", *upload[0], task="router") == ROUTER_RELEASE
    )
    for dp, inferred, user_dp in [(True, True, True), (False, False, False)]:
        assert required_ledger(
            "train", "collect_masked_vectors", upload, dp, inferred, user_dp, task="router"
        ) == {ROUTER_STATS_PURPOSE}
    # a router upload in clear (no SecAgg+) is declared by no row
    assert undeclared_fields("train", None, [("fitres.parameters", "0")], task="router") == [
        "fitres.parameters/0"
    ]
    assert recorded_task({"task": "router"}) == "router"
    assert recorded_task({"task": None, "session": "router"}) == "router"
    assert recorded_task({"task": None, "session": "training"}) == "train"
