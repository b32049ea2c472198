"""The Skellam mechanism's accounting, checked against computations that do not use it.

* The RDP bound against the exact Rényi divergence of shifted Skellam distributions, summed
  numerically from their probability mass functions.
* The composed epsilon against Google's ``dp-accounting`` RDP accountant for the Gaussian of the
  same variance (the Skellam bound tends to it for large variance, and is never below it).
* The sampler against the moments and the mass function of the Skellam distribution.
"""

import json
import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from fedpers.privacy.accounting import (
    BudgetExceededError,
    GaussianEvent,
    calibrate_noise_multiplier,
    epsilon,
    epsilon_report,
)
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger
from fedpers.privacy.skellam import (
    MAX_VARIANCE,
    ORDERS,
    SkellamEvent,
    noise_variance_for_epsilon,
    sample_skellam,
    skellam_epsilon,
    skellam_rdp,
)

DELTA = 1e-5


# --- the reference: exact Rényi divergences of the Skellam distribution ---------------------------


def skellam_logpmf(x: np.ndarray, variance: float) -> np.ndarray:
    """log P[Z = x] for Z = Poisson(v/2) - Poisson(v/2).

    scipy's ``skellam.logpmf`` where it is accurate; in the far tails (where it underflows to -inf)
    the definition itself, ``P[Z = n] = sum_m Pois(m + |n|; v/2) Pois(m; v/2)``, summed in log space.
    """
    x = np.asarray(x)
    lp = np.array(stats.skellam.logpmf(x, variance / 2, variance / 2), dtype=float)
    tail = ~(lp > -600)
    if tail.any():
        n = np.abs(x[tail]).astype(float)[:, None]
        m = np.arange(int(variance / 2 + 20 * math.sqrt(variance) + 100))[None, :]
        log_rate = math.log(variance / 2)
        terms = (2 * m + n) * log_rate - special.gammaln(m + 1) - special.gammaln(m + n + 1)
        lp[tail] = special.logsumexp(terms, axis=1) - variance
    return lp


def exact_renyi_1d(variance: float, shift: int, order: int) -> float:
    """max of D_alpha(Sk + shift || Sk) and D_alpha(Sk || Sk + shift), summed over the integers.

    ``D_alpha(P || Q) = log(sum_x P(x)^alpha Q(x)^(1 - alpha)) / (alpha - 1)``; the range grows until the
    terms at both ends are e^-50 below the largest one, so the truncation cannot matter.
    """
    if shift == 0:
        return 0.0
    radius = int(20 * math.sqrt(variance) + 10 * abs(shift) + 50)
    while True:
        x = np.arange(-radius, radius + 1)
        lp, lq = skellam_logpmf(x, variance), skellam_logpmf(x - shift, variance)
        forward = order * lq + (1 - order) * lp
        backward = order * lp + (1 - order) * lq
        assert np.isfinite(forward).all() and np.isfinite(backward).all()
        ends = max(forward[0], forward[-1], backward[0], backward[-1])
        if ends < min(forward.max(), backward.max()) - 50:
            break
        radius *= 2
    return max(special.logsumexp(forward), special.logsumexp(backward)) / (order - 1)


def exact_renyi(variance: float, shift: list[int], order: int) -> float:
    """Independent coordinates: the divergences of the coordinates add."""
    return sum(exact_renyi_1d(variance, k, order) for k in shift)


def bound(variance: float, shift: list[int], order: int) -> float:
    k = np.asarray(shift, dtype=float)
    event = SkellamEvent(variance, float(np.linalg.norm(k)), float(np.abs(k).sum()), 1)
    return float(event.rdp([order])[0])


def test_reference_pmf_is_a_distribution_and_its_tail_formula_agrees_with_scipy():
    for v in (2.0, 50.0):
        x = np.arange(0, 150)
        n = x.astype(float)[:, None]
        m = np.arange(400)[None, :]
        series = (
            special.logsumexp(
                (2 * m + n) * math.log(v / 2) - special.gammaln(m + 1) - special.gammaln(m + n + 1),
                axis=1,
            )
            - v
        )
        scipy_lp = stats.skellam.logpmf(x, v / 2, v / 2)
        finite = scipy_lp > -600
        assert np.allclose(series[finite], scipy_lp[finite], rtol=1e-10, atol=1e-9)
        whole = np.arange(-2000, 2001)
        assert special.logsumexp(skellam_logpmf(whole, v)) == pytest.approx(0.0, abs=1e-10)
    # the divergence of Skellam tends to the Gaussian one, alpha k^2 / (2 v), for large variance
    assert exact_renyi(1e4, [3], 8) == pytest.approx(8 * 9 / 2e4, rel=1e-3)


def test_bound_is_the_published_formula():
    """Agarwal, Kairouz & Liu 2021, Theorem 3.5 with mu the variance, evaluated by hand in both branches."""
    # v=10, D2=2, D1=3, alpha=4: 4*4/20 + min((7*4 + 18)/400, 9/20) = 0.8 + 0.115
    assert skellam_rdp(4, 10.0, 2.0, 3.0) == pytest.approx(0.915, rel=1e-12)
    # v=2, D2=D1=1, alpha=64: 64/4 + min((127 + 6)/16, 3/4) = 16 + 0.75
    assert skellam_rdp(64, 2.0, 1.0, 1.0) == pytest.approx(16.75, rel=1e-12)


SMALL_VARIANCE = [
    (v, shift, order)
    for v in (2.0, 10.0, 50.0)
    for shift in ([1], [3], [2, -1, 1])
    for order in (2, 8, 64)
]


@pytest.mark.parametrize("variance,shift,order", SMALL_VARIANCE)
def test_bound_dominates_the_exact_divergence_at_small_variance(variance, shift, order):
    # where the bound's discreteness term, min(((2 alpha - 1) D2^2 + 6 D1) / (4 v^2), 3 D1 / (2 v)), is largest
    assert bound(variance, shift, order) >= exact_renyi(variance, shift, order)


# measured ratios bound / exact (max over the shifts [1], [3], [2, -1, 1], [5]): v=200: 1.01 (alpha 2),
# 1.06 (alpha 20), 1.12 (alpha 32), 1.32 (alpha 64); v=1000: <= 1.01 up to alpha 32, 1.03 at 64;
# v=1e4: <= 1.001. At v=10 the bound is 1.2x at alpha 2 and 7x at alpha 64 (its 3 D1 / (2 mu) branch).
# The exact divergence of an integer shift stayed below the Gaussian term alpha D2^2 / (2 v) in every case
# measured (v 1..1000, shifts up to 20, alpha up to 16): the discreteness term is the proof's margin.
MODERATE_VARIANCE = [
    (200.0, 2, 1.02),
    (200.0, 20, 1.08),
    (200.0, 32, 1.15),
    (1000.0, 8, 1.01),
    (1000.0, 32, 1.02),
    (1000.0, 64, 1.05),
    (1e4, 64, 1.002),
]


@pytest.mark.parametrize("variance,order,max_ratio", MODERATE_VARIANCE)
@pytest.mark.parametrize("shift", [[1], [3], [2, -1, 1], [5]])
def test_bound_is_close_to_the_exact_divergence_at_moderate_variance(
    variance, order, max_ratio, shift
):
    exact = exact_renyi(variance, shift, order)
    assert exact <= bound(variance, shift, order) <= max_ratio * exact


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    log_variance=st.floats(min_value=0.0, max_value=math.log(1e4)),
    shift=st.lists(st.integers(-4, 4), min_size=1, max_size=3).filter(any),
    order=st.integers(2, 40),
)
def test_bound_dominates_the_exact_divergence_on_random_cases(log_variance, shift, order):
    v = math.exp(log_variance)
    assert bound(v, shift, order) >= exact_renyi(v, shift, order), (v, shift, order)


# --- the composed epsilon --------------------------------------------------------------------------


def gaussian_rdp_epsilon(variance: float, l2: float, steps: int) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(math.sqrt(variance) / l2), steps
    )
    return rdp.RdpAccountant().compose(event).get_epsilon(DELTA)


@pytest.mark.parametrize(
    "variance,l2,l1,steps",
    [
        (1e6, 100.0, 1000.0, 50),
        (1e8, 1000.0, 3e4, 20),
        (1e7, 300.0, 3000.0, 200),
        (1e6, 300, 3e3, 1),
    ],
)
def test_large_variance_matches_the_gaussian_of_an_independent_accountant(variance, l2, l1, steps):
    ours = skellam_epsilon([SkellamEvent(variance, l2, l1, steps)], DELTA)
    google = gaussian_rdp_epsilon(variance, l2, steps)
    assert ours >= 0.99 * google  # never cheaper than the Gaussian of the same variance
    assert ours == pytest.approx(google, rel=0.02)
    events = [SkellamEvent(variance, l2, l1, steps)]
    assert epsilon(events, DELTA, "rdp") == ours
    report = epsilon_report(events, DELTA)  # no PRV accountant for Skellam: both are the RDP figure
    assert report.rdp == report.prv == report.epsilon == ours


def test_composition_adds_rdp_and_steps_are_compositions():
    one = SkellamEvent(5e4, 10.0, 40.0, 1)
    three = SkellamEvent(5e4, 10.0, 40.0, 3)
    assert np.allclose(three.rdp(ORDERS), 3 * one.rdp(ORDERS))
    assert skellam_epsilon([one, one, one], DELTA) == pytest.approx(skellam_epsilon([three], DELTA))
    assert skellam_epsilon([one], DELTA) < skellam_epsilon([three], DELTA)
    assert skellam_epsilon([], DELTA) == 0.0 == epsilon([SkellamEvent(1.0, 1.0, 1.0, 0)], DELTA)
    assert skellam_rdp(5, 5e4, 10.0, 40.0) == pytest.approx(one.rdp([5])[0])
    for bad in (1, 2.5, 0):
        with pytest.raises(ValueError):
            skellam_rdp(bad, 5e4, 10.0, 40.0)


def opacus_rdp_epsilon(events):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    return acc.get_epsilon(DELTA)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_mixed_history_is_between_its_parts_and_their_sum():
    gaussian = GaussianEvent(1.1, 0.2, 40)
    skellam = SkellamEvent(2e5, 200.0, 2000.0, 3)
    both = epsilon([gaussian, skellam], DELTA)
    alone = (epsilon([gaussian], DELTA), epsilon([skellam], DELTA))
    assert max(alone) < both <= sum(alone)
    assert epsilon([skellam, gaussian], DELTA) == both  # order does not matter
    assert epsilon([gaussian, skellam], DELTA, "prv") == both  # PRV does not cover Skellam
    # adding a mechanism never lowers the figure, even where the orders' optima differ
    quiet = GaussianEvent(20.0, 1.0, 1)
    tiny = SkellamEvent(1e12, 1.0, 1.0, 1)
    assert epsilon([quiet, tiny], DELTA) >= epsilon([quiet], DELTA)


def test_pure_gaussian_histories_keep_their_old_numbers():
    events = [GaussianEvent(1.0, 0.25, 25), GaussianEvent(4.0, 1.0, 6)]
    assert epsilon(events, DELTA, "rdp") == opacus_rdp_epsilon(events)


def test_calibration_composes_a_skellam_prior():
    prior = [SkellamEvent(2e5, 200.0, 2000.0, 3)]
    spent = epsilon(prior, DELTA)
    sigma = calibrate_noise_multiplier(spent + 4.0, DELTA, 0.25, 30, prior)
    assert epsilon_report([*prior, GaussianEvent(sigma, 0.25, 30)], DELTA).epsilon <= spent + 4.0
    assert epsilon([*prior, GaussianEvent(sigma - 0.02, 0.25, 30)], DELTA) > spent + 4.0
    with pytest.raises(BudgetExceededError):
        calibrate_noise_multiplier(spent * 0.9, DELTA, 0.25, 30, prior)


# --- calibration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,l2,l1,steps", [(0.5, 100.0, 1000.0, 10), (2.0, 1.0, 1.0, 1), (8.0, 30.0, 500.0, 40)]
)
def test_calibrated_variance_is_safe_and_tight(target, l2, l1, steps):
    v = noise_variance_for_epsilon(target, DELTA, l2, l1, steps)
    reached = skellam_epsilon([SkellamEvent(v, l2, l1, steps)], DELTA)
    assert reached <= target
    assert reached == pytest.approx(target, rel=0.01)
    # the smallest such variance: 1% less noise is over the target
    assert skellam_epsilon([SkellamEvent(v * 0.99, l2, l1, steps)], DELTA) > target


def test_calibration_refuses_impossible_and_invalid_inputs():
    with pytest.raises(ValueError, match="2\\*\\*52"):  # below the floor of RDP on these orders
        noise_variance_for_epsilon(0.005, DELTA, 1.0, 1.0)
    for args in [
        (0.0, DELTA, 1.0, 1.0),
        (-1.0, DELTA, 1.0, 1.0),
        (math.inf, DELTA, 1.0, 1.0),
        (1.0, 0.0, 1.0, 1.0),
        (1.0, 1.5, 1.0, 1.0),
        (1.0, DELTA, 0.0, 1.0),
        (1.0, DELTA, 2.0, 1.0),  # an L1 norm below the L2 norm
    ]:
        with pytest.raises(ValueError):
            noise_variance_for_epsilon(*args)
    with pytest.raises(ValueError):
        noise_variance_for_epsilon(1.0, DELTA, 1.0, 1.0, steps=0)


def test_event_validation_and_serialization():
    with pytest.raises(ValueError, match="without noise"):
        SkellamEvent(0.0, 1.0, 1.0, 1)
    for args in [(1.0, 0.0, 1.0, 1), (1.0, 2.0, 1.0, 1), (1.0, 1.0, 1.0, -1), (math.nan, 1, 1, 1)]:
        with pytest.raises(ValueError):
            SkellamEvent(*args)
    event = SkellamEvent(1234.5, 3.0, 7.0, 2)
    data = event.to_dict()
    assert data == {
        "mechanism": "skellam",
        "variance": 1234.5,
        "l2_sensitivity": 3.0,
        "l1_sensitivity": 7.0,
        "steps": 2,
    }
    assert SkellamEvent.from_dict(json.loads(json.dumps(data))) == event


# --- sampling ------------------------------------------------------------------------------------


def assert_skellam_moments(samples: np.ndarray, variance: float) -> None:
    """Mean 0 and variance ``v`` within 5 standard errors (Var of the sample variance: (2 v^2 + v) / n,
    the fourth central moment of the Skellam distribution being 3 v^2 + v)."""
    n = samples.size
    assert abs(samples.mean()) <= 5 * math.sqrt(variance / n)
    assert abs(samples.var() - variance) <= 5 * math.sqrt((2 * variance**2 + variance) / n)


@pytest.mark.parametrize("variance", [0.5, 8.0, 1e6, 1e12])
def test_samples_have_the_skellam_moments(variance):
    samples = sample_skellam((200_000,), variance, np.random.default_rng(7))
    assert samples.dtype == np.int64 and samples.shape == (200_000,)
    assert_skellam_moments(samples, variance)


def test_sums_of_shares_are_skellam_of_the_summed_variance():
    v, shares, n = 6.0, 3, 200_000
    rng = np.random.default_rng(11)
    total = sum(sample_skellam((n,), v / shares, rng) for _ in range(shares))
    assert total.dtype == np.int64
    assert_skellam_moments(total, v)
    # and the whole distribution, not only two moments: chi-square against the Skellam pmf
    values = np.arange(-10, 11)
    observed = np.array([(total == x).sum() for x in values] + [(np.abs(total) > 10).sum()])
    pmf = stats.skellam.pmf(values, v / 2, v / 2)
    expected = n * np.append(pmf, 1 - pmf.sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-4
    # a Gaussian rounded to integers, same variance, is told apart by the same test
    rounded = np.rint(rng.normal(0, math.sqrt(v), n)).astype(np.int64)
    observed = np.array([(rounded == x).sum() for x in values] + [(np.abs(rounded) > 10).sum()])
    assert stats.chisquare(observed, expected).pvalue < 1e-4


def test_sampling_edge_cases():
    rng = np.random.default_rng(0)
    zeros = sample_skellam((3, 4), 0.0, rng)
    assert zeros.dtype == np.int64 and zeros.shape == (3, 4) and not zeros.any()
    assert sample_skellam((2, 5), MAX_VARIANCE, rng).dtype == np.int64
    with pytest.raises(ValueError, match="2\\*\\*52"):
        sample_skellam((2,), 2.0**52 * 1.001, rng)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            sample_skellam((2,), bad, rng)
    a = sample_skellam(1000, 50.0, np.random.default_rng(3))
    b = sample_skellam(1000, 50.0, np.random.default_rng(3))
    assert np.array_equal(a, b)  # a seeded generator reproduces its noise


# --- the ledger ----------------------------------------------------------------------------------


def test_skellam_entries_round_trip_through_the_ledger(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, "alice")
    skellam = SkellamEvent(2e5, 200.0, 2000.0, 1)
    gaussian = GaussianEvent(1.1, 0.2, 40)
    first = ledger.record(LedgerEntry("user-level-dp-skellam", [skellam]))
    ledger.complete(first, round=1)
    ledger.record(LedgerEntry("dp-sgd", [gaussian]))
    stored = json.loads(path.read_text())
    assert stored["entries"][0]["events"][0]["mechanism"] == "skellam"
    assert "mechanism" not in stored["entries"][1]["events"][0]  # Gaussian events as before

    reloaded = PrivacyLedger(path, "alice")
    assert reloaded.events() == [skellam, gaussian]
    assert isinstance(reloaded.events()[0], SkellamEvent)
    assert reloaded.spent().epsilon == epsilon([skellam, gaussian], DELTA)


def test_old_gaussian_ledgers_still_load(tmp_path):
    path = tmp_path / "ledger.json"
    document = {
        "version": 1,
        "user_id": "bob",
        "delta": DELTA,
        "entries": [
            {
                "entry_id": "e1",
                "purpose": "dp-sgd",
                "status": "completed",
                "started_at": 0.0,
                "events": [{"noise_multiplier": 1.0, "sample_rate": 0.2, "steps": 30}],
                "details": {},
            }
        ],
    }
    path.write_text(json.dumps(document))
    ledger = PrivacyLedger(path, "bob")
    assert ledger.events() == [GaussianEvent(1.0, 0.2, 30)]
    assert ledger.spent().epsilon == epsilon_report([GaussianEvent(1.0, 0.2, 30)], DELTA).epsilon
    document["entries"][0]["events"][0]["mechanism"] = "laplace"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="laplace"):
        PrivacyLedger(path, "bob")


def test_cap_refuses_a_skellam_release_over_budget(tmp_path):
    event = SkellamEvent(2e5, 200.0, 2000.0, 1)
    one = epsilon([event], DELTA)
    assert epsilon([event, event], DELTA) > one * 1.2
    ledger = PrivacyLedger(tmp_path / "ledger.json", "carol", cap=one * 1.2)
    ledger.record(LedgerEntry("user-level-dp-skellam", [event]))
    with pytest.raises(BudgetExceededError):
        ledger.record(LedgerEntry("user-level-dp-skellam", [event]))
    assert len(PrivacyLedger(tmp_path / "ledger.json", "carol").entries) == 1


# --- import weight -------------------------------------------------------------------------------


def test_module_imports_without_torch():
    code = (
        "import sys, fedpers.privacy.skellam as s, numpy as np; "
        "s.sample_skellam(4, 2.0, np.random.default_rng(0)); s.SkellamEvent(2.0, 1.0, 1.0, 1).rdp(); "
        "assert 'torch' not in sys.modules and 'opacus' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
