"""What an attacker can still learn: canary statistics, the one-run bound, and the attack on tiny-model runs."""

import json
import math
import shutil

import pytest

from fedpers.audit.canaries import auc, epsilon_lower_bound, exposure, make_canaries, one_run_bound, p_value


def test_canaries_are_split_at_random_and_render_as_conversations():
    canaries = make_canaries({"u1": "leadership", "u2": "field_worker"}, 200, seed=3)
    assert 70 < sum(c.inserted for c in canaries) < 130
    assert len({c.secret for c in canaries}) > 190
    conv = canaries[0].conversation("1 2 3 4 5 6")
    assert conv.user_id == canaries[0].user_id and conv.turns[1].text.endswith("is 1 2 3 4 5 6.")
    assert make_canaries({"u1": "a"}, 10, seed=3) == make_canaries({"u1": "a"}, 10, seed=3)


def test_one_run_bound_matches_the_closed_form_and_is_zero_for_chance():
    # delta = 0 and all r guesses right: the bound solves q^r = p with q = e^eps / (1 + e^eps)
    q = 0.05 ** (1 / 20)
    assert epsilon_lower_bound(40, 20, 20, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)
    assert p_value(40, 20, 20, math.log(q / (1 - q)), 0.0) == pytest.approx(0.05, rel=1e-6)
    assert epsilon_lower_bound(40, 20, 10, 1e-5, 0.05) == 0.0  # half right: no evidence
    assert epsilon_lower_bound(40, 20, 20, 1e-5, 0.05) <= epsilon_lower_bound(40, 20, 20, 0.0, 0.05)
    perfect = one_run_bound(list(range(40)), [i >= 20 for i in range(40)], 1e-5)
    assert perfect["best"]["correct"] == perfect["best"]["guesses"] == 40 and perfect["epsilon"] > 2.0
    assert one_run_bound(list(range(40)), [i % 2 == 0 for i in range(40)], 1e-5)["epsilon"] == 0.0


def test_auc_and_exposure():
    assert auc([3, 4, 1, 2], [True, True, False, False]) == 1.0
    assert auc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auc([1, 1], [True, False]) == 0.5
    candidates = [0.1 * i for i in range(-50, 51)]
    assert exposure(100.0, candidates)["normal_fit"] == pytest.approx(math.log2(10**6))  # capped at the secret space
    assert exposure(0.0, candidates)["normal_fit"] == pytest.approx(1.0, abs=0.05)  # the median: one bit
    assert exposure(0.0, candidates)["rank"] == 52  # 51 candidates score at least as high (ties count against)


def test_attack_runs_keep_the_training_settings_and_never_audit_themselves(tmp_path):
    from fedpers.audit.attack import attack_settings
    from fedpers.federated import FederatedConfig

    config = FederatedConfig(audit_attack=True, epsilon=3.0, rounds=4)
    variant = attack_settings(config, False, tmp_path / "c.jsonl", tmp_path / "no-dp")
    assert not (variant.audit_attack or variant.audit or variant.record_wire or variant.evaluate or variant.dp)
    assert (variant.epsilon, variant.rounds, variant.model) == (3.0, 4, config.model)
    assert variant.state_dir == str(tmp_path / "no-dp" / "client-state") != config.state_dir


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """The tiny scenario with strong DP (epsilon 0.5, fixed clipping) attacked with 64 canaries, and with DP off."""
    from fedpers.audit.attack import AttackConfig, run_attack
    from fedpers.federated import FederatedConfig, load_config_file
    from simulations.simulate import SCENARIOS

    run_dir = tmp_path_factory.mktemp("attack")
    values = load_config_file(SCENARIOS / "tiny.toml") | {"epsilon": 0.5, "clip": 1.0, "noise_seed": 7}
    config = FederatedConfig(**values).validated()
    return run_dir, run_attack(config, run_dir, AttackConfig(canaries=64, candidates=32, seed=1, progress=False))


def test_with_dp_off_the_attack_finds_the_canaries(attacked):
    _, result = attacked
    off = result["runs"]["no-dp"]
    assert off["theoretical_epsilon"] is None
    assert off["auc"] > 0.75
    assert off["exposure"]["inserted_mean"] > 2 * off["exposure"]["held_back_mean"]
    assert off["lower_bound"]["epsilon"] > 0.5


def test_with_strong_dp_it_does_not_and_the_bound_stays_below_the_theory(attacked):
    _, result = attacked
    dp = result["runs"]["dp"]
    assert dp["theoretical_epsilon"] == pytest.approx(0.5, rel=0.05)
    assert dp["auc"] < 0.7
    assert dp["lower_bound"]["epsilon"] <= dp["theoretical_epsilon"] and not dp["bound_exceeds_theory"]
    assert dp["lower_bound"]["epsilon"] < result["runs"]["no-dp"]["lower_bound"]["epsilon"]


def test_the_attack_goes_into_the_report(attacked, tmp_path):
    """The attack's results appear in audit.json (valid against the schema) and as a section of audit.html."""
    import jsonschema

    from fedpers.audit.report import write_audit
    from pathlib import Path

    run_dir, _ = attacked
    config_run = run_dir / "attack" / "dp"  # a complete run directory of its own
    target = tmp_path / "run"
    shutil.copytree(config_run, target)
    shutil.copytree(run_dir / "attack", target / "attack", ignore=shutil.ignore_patterns("dp", "no-dp"))
    audit = write_audit(target, progress=False)
    schema = json.loads((Path(__file__).parent.parent / "docs" / "audit-schema.json").read_text())
    jsonschema.validate(json.loads((target / "audit.json").read_text()), schema, format_checker=jsonschema.FormatChecker())
    assert set(audit["attack"]["runs"]) == {"dp", "no-dp"}
    assert any("Canary attack on DP training" in f["text"] and f["level"] == "ok" for f in audit["findings"])
    html = (target / "audit.html").read_text()
    assert "epsilon lower bound" in html and "Steinke" in html and html.count("data:image/png;base64,") >= 2
