"""The audit's spending figures: our accountants cross-checked against dp-accounting on known settings."""

import pytest

from fedpers.audit.spent import independent_epsilon, spent_from_ledger
from fedpers.privacy.accounting import GaussianEvent
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger


def test_a_ledger_is_accounted_four_ways_and_quoted_at_the_most_conservative(tmp_path):
    ledger = PrivacyLedger(tmp_path / "user7.json", "user7", 1e-5)
    entries = [
        LedgerEntry("clip-quantile", [GaussianEvent(5.0, 1.0, 5)]),
        LedgerEntry("dp-sgd", [GaussianEvent(1.2, 0.25, 24)]),
    ]
    for entry in entries:
        ledger.complete(ledger.record(entry))
    # planned, never completed: still counted
    ledger.record(LedgerEntry("dp-sgd", [GaussianEvent(1.2, 0.25, 8)]))
    spent = spent_from_ledger(tmp_path / "user7.json", budget=12.0)
    assert spent.owner == "user7" and spent.unfinished_entries == 1 and len(spent.entries) == 3
    # stated tolerance: 5 %
    assert spent.epsilon_prv == pytest.approx(spent.independent_pld, rel=0.05)
    # stated tolerance: 10 %
    assert spent.epsilon_rdp == pytest.approx(spent.independent_rdp, rel=0.10)
    assert spent.epsilon == max(
        spent.epsilon_rdp, spent.epsilon_prv, spent.independent_pld, spent.independent_rdp
    )
    assert spent.to_dict()["prv_vs_pld_relative_difference"] < 0.05
    assert not spent.over_budget
    assert spent_from_ledger(tmp_path / "user7.json", budget=0.5).over_budget


def test_independent_accountant_on_a_textbook_case():
    """One Gaussian mechanism, sigma 1, no sampling: epsilon at delta 1e-5 is about 4.4 (analytic Gaussian)."""
    theirs = independent_epsilon([GaussianEvent(1.0, 1.0, 1)], 1e-5)
    assert theirs["pld"] == pytest.approx(4.42, abs=0.05)
    assert theirs["rdp"] >= theirs["pld"]


def test_an_empty_ledger_spends_nothing(tmp_path):
    spent = spent_from_ledger(tmp_path / "nobody.json")
    assert spent.epsilon == 0.0 and not spent.over_budget
