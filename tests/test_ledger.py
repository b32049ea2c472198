"""The privacy ledger persists spending before training and survives crashes."""

import json

import pytest
from conftest import personalized

from fedpers.privacy import (
    DPConfig,
    GaussianEvent,
    LedgerEntry,
    PrivacyLedger,
    TrainConfig,
    epsilon_report,
    train,
)


class Crash(RuntimeError):
    pass


def test_crash_mid_training_never_under_reports(tiny, examples, tmp_path):
    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    path = tmp_path / "ledger.json"
    config = TrainConfig(steps=10, batch_size=6, learning_rate=1e-2, noise_seed=1)
    dp = DPConfig(noise_multiplier=1.1, max_grad_norm=0.5)

    def crash(step, loss):
        if step == 2:
            raise Crash("device lost power")

    with pytest.raises(Crash):
        train(net, examples, tok.pad_token_id, config, dp, PrivacyLedger(path, "u"), on_step=crash)

    reloaded = PrivacyLedger(path, "u")  # a new process reads what is on disk
    (entry,) = reloaded.entries
    assert entry.status == "started" and entry.events == [GaussianEvent(1.1, 6 / len(examples), 10)]
    actually_spent = epsilon_report([GaussianEvent(1.1, 6 / len(examples), 3)], 1e-5).epsilon
    assert reloaded.spent().epsilon >= actually_spent

    train(net, examples, tok.pad_token_id, config, dp, reloaded)  # the next run composes on top
    again = PrivacyLedger(path, "u")
    assert [e.status for e in again.entries] == ["started", "completed"]
    assert again.spent().epsilon > epsilon_report(entry.events, 1e-5).epsilon


def test_ledger_write_is_atomic_and_composes_across_runs(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, "alice")
    first = ledger.record(LedgerEntry("dp-sgd", [GaussianEvent(1.0, 0.2, 30)]))
    ledger.complete(first, steps_taken=30)
    one = PrivacyLedger(path, "alice").spent().epsilon
    ledger.record(LedgerEntry("dp-sgd", [GaussianEvent(1.0, 0.2, 30)]))
    two = PrivacyLedger(path, "alice").spent().epsilon
    assert two > one
    assert two == pytest.approx(
        epsilon_report([GaussianEvent(1.0, 0.2, 60)], 1e-5).epsilon, rel=1e-6
    )
    # no temp files left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ledger.json-")]
    assert json.loads(path.read_text())["user_id"] == "alice"


def test_corrupt_or_foreign_ledger_is_refused(tmp_path):
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, "alice").record(LedgerEntry("dp-sgd", [GaussianEvent(1.0, 0.2, 30)]))
    with pytest.raises(ValueError, match="belongs to user 'alice'"):
        PrivacyLedger(path, "bob")
    path.write_text(path.read_text()[:-20])
    with pytest.raises(ValueError, match="corrupt"):
        PrivacyLedger(path, "alice")


def test_two_ledger_objects_for_one_user_never_lose_entries(tmp_path):
    path = tmp_path / "ledger.json"
    first, second = PrivacyLedger(path, "alice"), PrivacyLedger(path, "alice")
    a = first.record(LedgerEntry("clip-quantile", [GaussianEvent(4.0, 1.0, 6)]))
    second.record(LedgerEntry("dp-sgd", [GaussianEvent(1.0, 0.2, 30)]))
    first.complete(a)
    on_disk = PrivacyLedger(path, "alice")
    assert [e.purpose for e in on_disk.entries] == ["clip-quantile", "dp-sgd"]
    assert [e.status for e in on_disk.entries] == ["completed", "started"]
    assert first.spent().epsilon == second.spent().epsilon == on_disk.spent().epsilon


def test_a_capped_ledger_refuses_spending_past_the_cap_before_recording_it(tmp_path):
    from fedpers.privacy.accounting import BudgetExceededError

    path = tmp_path / "ledger.json"
    round_ = GaussianEvent(1.0, 0.2, 30)
    one = epsilon_report([round_], 1e-5).epsilon
    ledger = PrivacyLedger(path, "alice", cap=1.05 * one)
    ledger.record(LedgerEntry("dp-sgd", [round_]))
    with pytest.raises(
        BudgetExceededError,
        match=r"'dp-sgd' would bring user alice's epsilon from .* over the consented budget",
    ):
        ledger.record(LedgerEntry("dp-sgd", [round_]))
    assert len(PrivacyLedger(path, "alice").entries) == 1  # the refused entry was never written
    # uncapped: as before
    assert PrivacyLedger(path, "alice", cap=None).record(LedgerEntry("dp-sgd", [round_]))
