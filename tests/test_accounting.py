"""Accounting cross-checked against Google's dp-accounting, an implementation independent of Opacus."""

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedpers.privacy.accounting import (
    BudgetExceededError,
    GaussianEvent,
    calibrate_noise_multiplier,
    epsilon,
    epsilon_report,
)

SETTINGS = [(1.0, 0.25, 25), (0.8, 0.1, 100), (2.0, 0.05, 300)]
DELTA = 1e-5


def google_event(events):
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
                ),
                e.steps,
            )
            for e in events
        ]
    )


@pytest.mark.parametrize("sigma,q,steps", SETTINGS)
def test_rdp_agrees_with_dp_accounting_rdp(sigma, q, steps):
    events = [GaussianEvent(sigma, q, steps)]
    google = rdp.RdpAccountant().compose(google_event(events)).get_epsilon(DELTA)
    assert epsilon(events, DELTA, "rdp") == pytest.approx(google, rel=0.10)


@pytest.mark.parametrize("sigma,q,steps", SETTINGS)
def test_prv_agrees_with_dp_accounting_pld(sigma, q, steps):
    events = [GaussianEvent(sigma, q, steps)]
    google = (
        pld.PLDAccountant(value_discretization_interval=1e-3)
        .compose(google_event(events))
        .get_epsilon(DELTA)
    )
    assert epsilon(events, DELTA, "prv") == pytest.approx(google, rel=0.05)
    assert epsilon(events, DELTA, "prv") >= google * 0.99  # an upper bound, never optimistic


def test_heterogeneous_composition_matches_and_report_is_conservative():
    events = [GaussianEvent(4.0, 1.0, 6), GaussianEvent(1.0, 0.2, 30), GaussianEvent(1.2, 0.2, 30)]
    google = (
        pld.PLDAccountant(value_discretization_interval=1e-3)
        .compose(google_event(events))
        .get_epsilon(DELTA)
    )
    report = epsilon_report(events, DELTA)
    assert report.prv == pytest.approx(google, rel=0.05)
    assert report.epsilon == max(report.rdp, report.prv) >= google * 0.99
    assert epsilon_report(events[:2], DELTA).epsilon < report.epsilon  # more spending, more epsilon


def test_calibration_is_tight_and_accounts_prior_spending():
    sigma = calibrate_noise_multiplier(8.0, DELTA, 0.25, 30)
    assert epsilon_report([GaussianEvent(sigma, 0.25, 30)], DELTA).epsilon <= 8.0
    assert epsilon_report([GaussianEvent(sigma - 0.02, 0.25, 30)], DELTA).epsilon > 8.0
    prior = [GaussianEvent(sigma, 0.25, 30)]
    second = calibrate_noise_multiplier(12.0, DELTA, 0.25, 30, prior)
    assert epsilon_report([*prior, GaussianEvent(second, 0.25, 30)], DELTA).epsilon <= 12.0
    # less budget left, more noise
    assert second > calibrate_noise_multiplier(12.0, DELTA, 0.25, 30)
    with pytest.raises(BudgetExceededError):
        calibrate_noise_multiplier(5.0, DELTA, 0.25, 30, prior)


def test_a_calibrated_plan_stays_within_the_target_for_every_accountant_of_the_report():
    """The ledger of a tinyshakespeare device (inferred persona, private clip estimate, 3 rounds of 8 steps planned
    at its first round): calibrated against Opacus's accountants alone, dp-accounting's PLD (pessimistic by its
    discretization) found 8.002 > 8 and the report flagged every device over budget."""
    from fedpers.audit.spent import account

    prior = [GaussianEvent(1.0, 1.0, 1), GaussianEvent(5.0, 1.0, 5)]
    sigma = calibrate_noise_multiplier(8.0, DELTA, 2 / 15, 24, prior)
    events = (*prior, GaussianEvent(sigma, 2 / 15, 24))
    assert account(events, DELTA).epsilon <= 8.0


def test_no_events_spend_nothing_and_noise_is_required():
    assert epsilon([], DELTA) == 0.0
    with pytest.raises(ValueError):
        GaussianEvent(0.0, 0.1, 10)
